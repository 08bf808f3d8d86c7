//! External broker mode against a real mosquitto, started by the tests on
//! free ports: credentials, namespaces, TLS (with and without a client
//! certificate), broker outages, and several servers on one broker.

mod common;
mod mosquitto;

use std::time::Duration;

use common::{is_server_id, Client, LogCapture, Message, WAIT};
use mosquitto::{ExternalServer, Listener, Mosquitto, TestCerts};
use pza_toolkit::temp::TempDir;
use serde_json::{json, Value};

const EMU: &str = r#"model: "emulator", measure_period_ms: 0"#;

fn runners(names: &[&str], keys: &str) -> String {
    names
        .iter()
        .map(|n| format!("{n}: {{ {keys} }},"))
        .collect()
}

/// Every message on the broker up to a probe published now: the retained
/// messages of `filter`, then whatever arrived before the probe. The broker
/// sends them in this order, so nothing retained can come after the probe.
async fn retained(port: u16, filter: &str) -> Vec<Message> {
    let mut c = Client::connect(port).await;
    c.subscribe(filter).await;
    let probe = format!("pza-test/probe/{:08x}", rand::random::<u32>());
    c.subscribe(&probe).await;
    c.publish(&probe, "probe").await;
    let mut seen = Vec::new();
    loop {
        let m = c.next().await;
        if m.topic == probe {
            return seen;
        }
        seen.push(m);
    }
}

/// Waits until every `(topic, payload)` of `expected` was seen, in any order.
/// A `pza_id` of `"srv"` in `expected` stands for any server-made id.
async fn wait_all(c: &mut Client, mut expected: Vec<(String, Value)>) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !expected.is_empty() {
        let m = c
            .next_before(deadline)
            .await
            .unwrap_or_else(|| panic!("not seen within {WAIT:?}: {expected:?}"));
        if let Ok(mut v) = serde_json::from_slice::<Value>(&m.payload) {
            if is_server_id(&v["pza_id"]) {
                v["pza_id"] = json!("srv");
            }
            expected.retain(|(topic, payload)| !(*topic == m.topic && *payload == v));
        }
    }
}

/// The instance named by the retained owner record of `runner`.
async fn owner_of(port: u16, runner: &str) -> Option<String> {
    retained(port, &format!("power-supply/{runner}/owner"))
        .await
        .first()
        .and_then(|m| m.json()["instance"].as_str().map(str::to_string))
}

/// Waits until the server's MQTT connection, which all its runners share,
/// has seen the broker go away and has then failed to reconnect once: from
/// the loss on, whatever the runners publish is queued for the
/// reconnection, and the failed attempt shows the outage lasted at least
/// one reconnection delay. The connection's client id is the server
/// instance, `pza-ps-<hex>`.
async fn wait_outage_seen(logs: &mut LogCapture) {
    logs.wait_for(&["MQTT connection lost", "pza-ps-"], 1).await;
    logs.wait_for(&["MQTT reconnection failed", "pza-ps-"], 1)
        .await;
}

/// Sends a voltage command and returns the one reply.
async fn set_voltage(c: &mut Client, prefix: &str, id: &str, volts: &str) -> Value {
    c.publish(
        &format!("{prefix}/voltage/cmd"),
        format!(r#"{{"pza_id":"{id}","voltage":"{volts}"}}"#),
    )
    .await;
    let reply = c.wait_reply(id).await;
    assert_eq!(reply.topic, format!("{prefix}/voltage"));
    reply.json()
}

#[tokio::test]
async fn credentials_and_namespace_on_mosquitto() {
    let broker = Mosquitto::start(&[
        Listener::Anonymous,
        Listener::Password(vec![("lab".into(), "s3cret".into())]),
    ])
    .await;
    let (observer_port, auth_port) = (broker.ports[0], broker.ports[1]);
    let server = ExternalServer::start(
        auth_port,
        r#"username: "lab", password: "s3cret", namespace: "bench-3/rack-1""#,
        &runners(&["psu"], EMU),
        "",
    )
    .await;
    let mut c = Client::connect(observer_port).await;
    let prefix = "bench-3/rack-1/power-supply/psu";
    c.subscribe(&format!("{prefix}/#")).await;
    c.wait_for(&format!("{prefix}/status"), |v| v["status"] == "Running")
        .await;
    assert_eq!(
        set_voltage(&mut c, prefix, "n1", "4.5").await,
        json!({"pza_id": "n1", "voltage": "4.50"})
    );
    // Nothing of this server lives outside its namespace.
    let outside = retained(observer_port, "power-supply/#").await;
    assert!(outside.is_empty(), "{outside:?}");
    server.stop().await;
}

#[tokio::test]
async fn a_refused_login_is_retried_not_fatal() {
    let broker =
        Mosquitto::start(&[Listener::Password(vec![("lab".into(), "s3cret".into())])]).await;
    let server = ExternalServer::start(
        broker.port(),
        r#"username: "lab", password: "wrong""#,
        &runners(&["psu"], EMU),
        "",
    )
    .await;
    // The server's connection is refused, then tried again.
    broker.wait_log(&["not authorised"], 2, WAIT).await;
    let took = server.stop().await;
    assert!(took < Duration::from_secs(5), "shutdown took {took:?}");
}

#[tokio::test]
async fn tls_with_a_ca_and_a_client_certificate() {
    let certs = std::sync::Arc::new(TestCerts::generate());
    let broker = Mosquitto::start(&[
        Listener::Anonymous,
        Listener::Tls {
            certs: certs.clone(),
            require_client_cert: true,
        },
        Listener::Tls {
            certs: certs.clone(),
            require_client_cert: false,
        },
    ])
    .await;
    let files = certs.write(broker.dir.path());
    let with_client_cert = ExternalServer::start(
        broker.ports[1],
        &format!(
            r#"namespace: "mtls", tls: {{ ca_file: "{}", client_cert_file: "{}", client_key_file: "{}" }}"#,
            files.ca.display(),
            files.client_cert.display(),
            files.client_key.display()
        ),
        &runners(&["psu"], EMU),
        "",
    )
    .await;
    let ca_only = ExternalServer::start(
        broker.ports[2],
        &format!(
            r#"namespace: "tls", tls: {{ ca_file: "{}" }}"#,
            files.ca.display()
        ),
        &runners(&["psu"], EMU),
        "",
    )
    .await;
    let mut c = Client::connect(broker.ports[0]).await;
    for ns in ["mtls", "tls"] {
        let prefix = format!("{ns}/power-supply/psu");
        c.subscribe(&format!("{prefix}/#")).await;
        c.wait_for(&format!("{prefix}/status"), |v| v["status"] == "Running")
            .await;
        assert_eq!(
            set_voltage(&mut c, &prefix, &format!("{ns}-1"), "12").await["voltage"],
            "12.00"
        );
    }
    with_client_cert.stop().await;
    ca_only.stop().await;
}

#[tokio::test]
async fn two_servers_with_their_own_namespaces_one_client_controls_both() {
    let broker = Mosquitto::plain().await;
    let a = ExternalServer::start(
        broker.port(),
        r#"namespace: "bench-a""#,
        &runners(&["psu"], EMU),
        "",
    )
    .await;
    let b = ExternalServer::start(
        broker.port(),
        r#"namespace: "bench-b""#,
        &runners(&["psu"], EMU),
        "",
    )
    .await;
    let mut c = Client::connect(broker.port()).await;
    c.subscribe("+/power-supply/psu/#").await;
    c.wait_all_status_at(
        &["bench-a/power-supply/psu", "bench-b/power-supply/psu"],
        "Running",
    )
    .await;
    assert_eq!(
        set_voltage(&mut c, "bench-a/power-supply/psu", "a1", "3").await["voltage"],
        "3.00"
    );
    assert_eq!(
        set_voltage(&mut c, "bench-b/power-supply/psu", "b1", "9").await["voltage"],
        "9.00"
    );
    let device_a = a.emulator.device("psu").expect("device a");
    let device_b = b.emulator.device("psu").expect("device b");
    assert_eq!(
        (device_a.voltage_setpoint, device_b.voltage_setpoint),
        (3.0, 9.0)
    );
    a.stop().await;
    b.stop().await;
}

/// A small extension of the common client for namespaced status topics.
trait WaitAll {
    async fn wait_all_status_at(&mut self, prefixes: &[&str], status: &str);
}

impl WaitAll for Client {
    async fn wait_all_status_at(&mut self, prefixes: &[&str], status: &str) {
        let deadline = tokio::time::Instant::now() + WAIT;
        let mut missing: Vec<String> = prefixes.iter().map(|p| format!("{p}/status")).collect();
        while !missing.is_empty() {
            let m = self
                .next_before(deadline)
                .await
                .unwrap_or_else(|| panic!("{missing:?} not {status} within {WAIT:?}"));
            if serde_json::from_slice::<Value>(&m.payload).is_ok_and(|v| v["status"] == status) {
                missing.retain(|t| *t != m.topic);
            }
        }
    }
}

#[tokio::test]
async fn after_a_broker_outage_every_runner_comes_back_without_a_restart() {
    const N: usize = 10;
    let mut logs = LogCapture::install();
    let mut broker = Mosquitto::plain().await;
    let names: Vec<String> = (0..N).map(|i| format!("psu{i}")).collect();
    let name_refs: Vec<&str> = names.iter().map(String::as_str).collect();
    // Measurements every 20 ms: the runners publish during the outage too.
    let server = ExternalServer::start(
        broker.port(),
        "",
        &runners(&name_refs, r#"model: "emulator", measure_period_ms: 20"#),
        "shutdown_timeout_ms: 3000,",
    )
    .await;
    {
        let mut c = Client::connect(broker.port()).await;
        c.subscribe("power-supply/+/status").await;
        c.wait_all_status(&name_refs, "Running").await;
        let mut c = Client::connect(broker.port()).await;
        c.subscribe("power-supply/+/voltage").await;
        for (i, name) in names.iter().enumerate() {
            let prefix = format!("power-supply/{name}");
            let v = set_voltage(&mut c, &prefix, &format!("pre{i}"), &format!("{i}.5")).await;
            assert_eq!(v["voltage"], format!("{i}.50"));
        }
    }

    broker.kill();
    // The runners notice and go on measuring into the void (every 20 ms)
    // while they try to reconnect.
    wait_outage_seen(&mut logs).await;
    broker.restart().await;

    // mosquitto kept nothing (no persistence): what a client sees now was
    // published again after the reconnection.
    let mut c = Client::connect(broker.port()).await;
    c.subscribe("power-supply/#").await;
    let mut expected = Vec::new();
    for (i, name) in names.iter().enumerate() {
        // Running, and no restart counted: an outage is not a crash.
        expected.push((
            format!("power-supply/{name}/status"),
            json!({"pza_id": "srv", "status": "Running", "restarts": 0}),
        ));
        expected.push((
            format!("power-supply/{name}/voltage"),
            json!({"pza_id": "srv", "voltage": format!("{i}.50")}),
        ));
    }
    wait_all(&mut c, expected).await;
    // Resubscribed: every runner answers commands again, exactly once.
    for (i, name) in names.iter().enumerate() {
        let prefix = format!("power-supply/{name}");
        let v = set_voltage(&mut c, &prefix, &format!("post{i}"), "1.25").await;
        assert_eq!(v, json!({"pza_id": format!("post{i}"), "voltage": "1.25"}));
    }
    // A late subscriber finds the retained state and statuses again.
    let late = retained(broker.port(), "power-supply/+/status").await;
    assert_eq!(late.len(), N, "{late:?}");
    assert!(late.iter().all(|m| m.json()["status"] == "Running"));
    server.stop().await;
}

/// Rounds of broker restarts: `Running` after an outage is a promise that
/// the runner takes commands, so a command sent the moment it is seen must
/// be answered, every time.
const OUTAGE_ROUNDS: usize = 12;

/// After each broker restart, a client waits for both runners' `Running`
/// and sends each a command at once: every command gets its reply.
#[tokio::test]
async fn running_after_an_outage_means_the_runner_takes_commands() {
    let mut broker = Mosquitto::plain().await;
    let names = ["a", "b"];
    let server = ExternalServer::start(broker.port(), "", &runners(&names, EMU), "").await;
    {
        let mut c = Client::connect(broker.port()).await;
        c.subscribe("power-supply/+/status").await;
        c.wait_all_status(&names, "Running").await;
    }
    for round in 0..OUTAGE_ROUNDS {
        broker.restart().await;
        let mut c = Client::connect(broker.port()).await;
        c.subscribe("power-supply/+/status").await;
        c.subscribe("power-supply/+/voltage").await;
        c.subscribe("power-supply/+/error").await;
        c.wait_all_status(&names, "Running").await;
        for name in names {
            c.publish(
                &format!("power-supply/{name}/voltage/cmd"),
                format!(r#"{{"pza_id":"{name}{round}","voltage":"{round}"}}"#),
            )
            .await;
        }
        // Replies in any order: each id answered once.
        let mut waiting: Vec<String> = names.iter().map(|n| format!("{n}{round}")).collect();
        let deadline = tokio::time::Instant::now() + WAIT;
        while !waiting.is_empty() {
            let m = c.next_before(deadline).await.unwrap_or_else(|| {
                panic!("round {round}: no reply for {waiting:?} within {WAIT:?}")
            });
            let v = m.json();
            if let Some(i) = waiting.iter().position(|id| v["pza_id"] == id.as_str()) {
                assert_eq!(
                    v["voltage"],
                    format!("{round}.00"),
                    "round {round}: {} {v}",
                    m.topic
                );
                waiting.remove(i);
            }
        }
    }
    server.stop().await;
}

#[tokio::test]
async fn shutdown_during_an_outage_stays_within_the_shutdown_timeout() {
    let mut logs = LogCapture::install();
    let mut broker = Mosquitto::plain().await;
    let server = ExternalServer::start(
        broker.port(),
        "",
        &runners(
            &["a", "b", "c"],
            r#"model: "emulator", measure_period_ms: 10"#,
        ),
        "shutdown_timeout_ms: 2000,",
    )
    .await;
    {
        let mut c = Client::connect(broker.port()).await;
        c.subscribe("power-supply/+/status").await;
        c.wait_all_status(&["a", "b", "c"], "Running").await;
    }
    broker.kill();
    // Shut down once the runners have publishes queued for a reconnection
    // that will not come (measurements every 10 ms since the loss).
    wait_outage_seen(&mut logs).await;
    let took = server.stop().await;
    assert!(
        took < Duration::from_millis(2000),
        "shutdown during an outage took {took:?}"
    );
}

#[tokio::test]
async fn a_server_started_before_its_broker_comes_up_with_it() {
    let mut broker = Mosquitto::plain().await;
    let port = broker.port();
    broker.kill();
    let server = ExternalServer::start(port, "", &runners(&["late"], EMU), "").await;
    broker.restart().await;
    let mut c = Client::connect(port).await;
    c.subscribe("power-supply/late/#").await;
    c.wait_status("late", "Running").await;
    assert_eq!(
        set_voltage(&mut c, "power-supply/late", "l1", "2").await["voltage"],
        "2.00"
    );
    server.stop().await;
}

#[tokio::test]
async fn two_servers_claiming_one_runner_report_the_conflict_and_do_not_fight() {
    let broker = Mosquitto::plain().await;
    let port = broker.port();
    let mut c = Client::connect(port).await;
    c.subscribe("power-supply/#").await;

    let first = ExternalServer::start(port, "", &runners(&["psu"], EMU), "").await;
    c.wait_status("psu", "Running").await;
    let first_instance = owner_of(port, "psu").await.expect("psu has an owner");

    let second = ExternalServer::start(
        port,
        "",
        &format!("{}{}", runners(&["psu"], EMU), runners(&["other"], EMU)),
        "",
    )
    .await;
    let error = c
        .wait_for("power-supply/psu/error", |v| {
            v["message"]
                .as_str()
                .is_some_and(|m| m.contains("conflict"))
        })
        .await;
    let message = error["message"].as_str().expect("message");
    assert!(message.contains(&first_instance), "{message}");
    assert!(message.contains("does not start it"), "{message}");
    // The second server's other runner is not held up.
    c.wait_status("other", "Running").await;

    // One command, one reply: only the first server serves psu.
    c.publish(
        "power-supply/psu/voltage/cmd",
        r#"{"pza_id":"once","voltage":"6"}"#,
    )
    .await;
    c.wait_reply("once").await;
    c.publish(
        "power-supply/psu/voltage/cmd",
        r#"{"pza_id":"fence","voltage":"7"}"#,
    )
    .await;
    let (_, between) = c
        .wait_for_collect("power-supply/psu/voltage", |v| v["pza_id"] == "fence")
        .await;
    assert!(
        !between
            .iter()
            .any(|m| m.topic.ends_with("/voltage") && m.json()["pza_id"] == "once"),
        "a second reply: {between:?}"
    );
    assert_eq!(
        first
            .emulator
            .device("psu")
            .expect("device")
            .voltage_setpoint,
        7.0
    );
    assert!(second
        .emulator
        .device("psu")
        .is_none_or(|d| d.voltage_setpoint != 7.0));
    // The status stays the first server's.
    let statuses = retained(port, "power-supply/psu/status").await;
    assert_eq!(statuses.len(), 1);
    assert_eq!(statuses[0].json()["status"], "Running");

    // The first server leaves cleanly: the second takes psu over.
    first.stop().await;
    c.wait_status("psu", "Stopped").await;
    c.wait_status("psu", "Running").await;
    let second_instance = owner_of(port, "psu").await.expect("psu has an owner");
    assert_ne!(second_instance, first_instance);
    assert_eq!(
        set_voltage(&mut c, "power-supply/psu", "taken", "8").await["voltage"],
        "8.00"
    );

    // A clean shutdown leaves no claim and no liveness record behind.
    second.stop().await;
    let left = retained(port, "#").await;
    assert!(
        !left.iter().any(
            |m| m.topic.ends_with("/owner") || m.topic.starts_with("pza-power-supply/servers/")
        ),
        "{left:?}"
    );
}

#[tokio::test]
async fn a_vanished_server_is_offline_through_its_last_will() {
    let broker = Mosquitto::plain().await;
    let port = broker.port();
    let mut c = Client::connect(port).await;
    c.subscribe("pza-power-supply/servers/+").await;
    // A server in a child process, killed without a chance to clean up.
    let dir = TempDir::new("will").expect("a temp folder");
    let config = dir.join("config.json5");
    std::fs::write(
        &config,
        mosquitto::external_config(port, "", &runners(&["psu"], EMU), ""),
    )
    .expect("write config");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_pza-power-supply"))
        .args(["run", "--config"])
        .arg(&config)
        .env("HOME", dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("server starts");
    let online = c
        .wait_for_raw(|m| m.topic.starts_with("pza-power-supply/servers/") && !m.payload.is_empty())
        .await;
    assert_eq!(online.json()["online"], true);
    assert_eq!(online.json()["runners"], json!(["psu"]));
    child.kill().expect("kill");
    let _ = child.wait();
    // The broker publishes the will: an empty retained record, which
    // deletes the liveness record.
    let gone = c
        .wait_for_raw(|m| m.topic == online.topic && m.payload.is_empty())
        .await;
    assert!(gone.payload.is_empty());
    let left = retained(port, "pza-power-supply/servers/+").await;
    assert!(left.is_empty(), "{left:?}");
}

/// Waiting on raw messages (payloads that may be empty or not JSON).
trait WaitRaw {
    async fn wait_for_raw(&mut self, pred: impl Fn(&Message) -> bool) -> Message;
}

impl WaitRaw for Client {
    async fn wait_for_raw(&mut self, pred: impl Fn(&Message) -> bool) -> Message {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let m = self
                .next_before(deadline)
                .await
                .unwrap_or_else(|| panic!("no matching message within {WAIT:?}"));
            if pred(&m) {
                return m;
            }
        }
    }
}
