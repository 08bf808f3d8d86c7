//! The MQTT API of one server, through the embedded broker and a real client.

mod common;

use std::time::{Duration, Instant};

use common::{is_server_id, running_client, server_made, TestServer};
use serde_json::json;

const EMU: &str = r#"emu: { model: "emulator", measure_period_ms: 0, security_max_voltage: 30, security_max_current: 3 }"#;

#[tokio::test]
async fn every_command_gets_its_read_back_with_its_pza_id() {
    let server = TestServer::start(EMU).await;
    let mut c = running_client(&server, "emu").await;

    c.publish(
        "power-supply/emu/voltage/cmd",
        r#"{"pza_id":"v1","voltage":"12.5"}"#,
    )
    .await;
    let reply = c.wait_reply("v1").await;
    assert_eq!(reply.topic, "power-supply/emu/voltage");
    assert_eq!(reply.json(), json!({"pza_id": "v1", "voltage": "12.50"}));

    c.publish(
        "power-supply/emu/voltage/cmd",
        r#"{"pza_id":"v2","voltage":3}"#,
    )
    .await;
    assert_eq!(
        c.wait_reply("v2").await.json(),
        json!({"pza_id": "v2", "voltage": "3.00"})
    );

    c.publish(
        "power-supply/emu/current/cmd",
        r#"{"pza_id":"c1","current":"0.25"}"#,
    )
    .await;
    let reply = c.wait_reply("c1").await;
    assert_eq!(reply.topic, "power-supply/emu/current");
    assert_eq!(reply.json(), json!({"pza_id": "c1", "current": "0.250"}));

    c.publish(
        "power-supply/emu/state/cmd",
        r#"{"pza_id":"s1","state":"ON"}"#,
    )
    .await;
    let reply = c.wait_reply("s1").await;
    assert_eq!(reply.topic, "power-supply/emu/state");
    assert_eq!(reply.json(), json!({"pza_id": "s1", "state": "ON"}));

    c.publish(
        "power-supply/emu/state/cmd",
        r#"{"pza_id":"s2","state":"OFF"}"#,
    )
    .await;
    assert_eq!(
        c.wait_reply("s2").await.json(),
        json!({"pza_id": "s2", "state": "OFF"})
    );

    let device = server.emulator.device("emu").expect("device exists");
    assert_eq!(
        (
            device.voltage_setpoint,
            device.current_limit,
            device.output_enabled
        ),
        (3.0, 0.25, false)
    );
    server.stop().await;
}

#[tokio::test]
async fn each_rejection_gets_one_error_and_leaves_the_attribute_alone() {
    let server = TestServer::start(EMU).await;
    let mut c = running_client(&server, "emu").await;
    c.publish(
        "power-supply/emu/voltage/cmd",
        r#"{"pza_id":"init","voltage":"4"}"#,
    )
    .await;
    c.wait_reply("init").await;

    let cases: &[(&str, &[u8], serde_json::Value, &str)] = &[
        (
            "voltage",
            b"{not json",
            json!(null),
            "payload is not valid JSON",
        ),
        (
            "voltage",
            &[0xc3, 0x28],
            json!(null),
            "payload is not valid UTF-8",
        ),
        (
            "voltage",
            br#"{"pza_id":"e1","voltage":"5","volts":1}"#,
            json!("e1"),
            "unknown field `volts`",
        ),
        (
            "voltage",
            br#"{"pza_id":"e2"}"#,
            json!("e2"),
            "missing field `voltage`",
        ),
        (
            "voltage",
            br#"{"voltage":"5"}"#,
            json!(null),
            "missing field `pza_id`",
        ),
        (
            "voltage",
            br#"{"pza_id":"e3","voltage":[5]}"#,
            json!("e3"),
            "field `voltage` must be a number",
        ),
        (
            "state",
            br#"{"pza_id":"e4","state":"MAYBE"}"#,
            json!("e4"),
            "field `state` must be \"ON\" or \"OFF\"",
        ),
        (
            "voltage",
            br#"{"pza_id":"e5","voltage":"NaN"}"#,
            json!("e5"),
            "is not a plain decimal number",
        ),
        (
            "voltage",
            br#"{"pza_id":"e6","voltage":"5V"}"#,
            json!("e6"),
            "\"5V\" is not a plain decimal number",
        ),
        (
            "voltage",
            br#"{"pza_id":"e7","voltage":"31"}"#,
            json!("e7"),
            "voltage 31 exceeds security_max_voltage 30",
        ),
        (
            "voltage",
            br#"{"pza_id":"e8","voltage":-1}"#,
            json!("e8"),
            "voltage -1 is below security_min_voltage 0",
        ),
        (
            "current",
            br#"{"pza_id":"e9","current":"3.5"}"#,
            json!("e9"),
            "current 3.5 exceeds security_max_current 3",
        ),
        (
            "voltage",
            br#"{"pza_id":5,"voltage":"5"}"#,
            json!(null),
            "field `pza_id` must be a string",
        ),
        (
            "voltage",
            br#"{"pza_id":"e10","voltage":"1","voltage":"2"}"#,
            json!("e10"),
            "duplicate field `voltage`",
        ),
    ];
    for (i, (attribute, payload, pza_id, message)) in cases.iter().enumerate() {
        c.publish(
            &format!("power-supply/emu/{attribute}/cmd"),
            payload.to_vec(),
        )
        .await;
        let error = c.wait_for("power-supply/emu/error", |_| true).await;
        // `null` in the cases: the payload has no readable id, so the
        // error carries a server-made one.
        if pza_id.is_null() {
            assert!(is_server_id(&error["pza_id"]), "case {i}: {error}");
        } else {
            assert_eq!(error["pza_id"], *pza_id, "case {i}");
        }
        let text = error["message"].as_str().unwrap_or_default();
        assert!(
            text.contains(message),
            "case {i}: {text:?} lacks {message:?}"
        );
        // A valid command on another attribute, as a marker: everything the
        // runner published for the bad command comes before its reply.
        let marker = format!("m{i}");
        c.publish(
            "power-supply/emu/current/cmd",
            format!(r#"{{"pza_id":"{marker}","current":"1"}}"#),
        )
        .await;
        let (_, between) = c
            .wait_for_collect("power-supply/emu/current", |v| {
                v["pza_id"] == marker.as_str()
            })
            .await;
        let stray: Vec<_> = between
            .iter()
            .filter(|m| {
                m.topic.starts_with("power-supply/emu/")
                    && !m.topic.ends_with("/cmd")
                    && !m.topic.ends_with("/status")
            })
            .collect();
        assert!(
            stray.is_empty(),
            "case {i}: more than one answer, or an attribute changed: {stray:?}"
        );
    }
    assert_eq!(server.emulator.device("emu").unwrap().voltage_setpoint, 4.0);
    server.stop().await;
}

#[tokio::test]
async fn a_late_subscriber_gets_the_retained_state() {
    let server = TestServer::start(EMU).await;
    let mut c = running_client(&server, "emu").await;
    c.publish(
        "power-supply/emu/voltage/cmd",
        r#"{"pza_id":"v","voltage":"7.5"}"#,
    )
    .await;
    c.wait_reply("v").await;
    c.publish(
        "power-supply/emu/state/cmd",
        r#"{"pza_id":"s","state":"ON"}"#,
    )
    .await;
    c.wait_reply("s").await;

    let mut late = server.client().await;
    late.subscribe("power-supply/emu/+").await;
    let mut seen = std::collections::BTreeMap::new();
    let wanted = ["voltage", "state", "current", "status"].map(|t| format!("power-supply/emu/{t}"));
    while !wanted.iter().all(|t| seen.contains_key(t)) {
        let m = late.next().await;
        assert!(m.retain, "{} should come retained", m.topic);
        seen.insert(m.topic.clone(), m.json());
    }
    assert_eq!(seen["power-supply/emu/voltage"]["voltage"], "7.50");
    assert_eq!(seen["power-supply/emu/state"]["state"], "ON");
    assert_eq!(seen["power-supply/emu/current"]["current"], "1.000");
    assert_eq!(seen["power-supply/emu/status"]["status"], "Running");
    server.stop().await;
}

#[tokio::test]
async fn two_runners_never_see_each_others_commands() {
    let server = TestServer::start(
        r#"a: { model: "emulator", measure_period_ms: 0 }, b: { model: "emulator", measure_period_ms: 0 }"#,
    )
    .await;
    let mut c = running_client(&server, "a").await;
    c.subscribe("power-supply/b/#").await;
    c.wait_status("b", "Running").await;

    c.publish(
        "power-supply/a/voltage/cmd",
        r#"{"pza_id":"to-a","voltage":"1.5"}"#,
    )
    .await;
    assert_eq!(c.wait_reply("to-a").await.topic, "power-supply/a/voltage");
    c.publish(
        "power-supply/b/voltage/cmd",
        r#"{"pza_id":"to-b","voltage":"2.5"}"#,
    )
    .await;
    let (reply, between) = c
        .wait_for_collect("power-supply/b/voltage", |v| v["pza_id"] == "to-b")
        .await;
    assert_eq!(reply["voltage"], "2.50");
    assert!(
        between.iter().all(|m| m.topic != "power-supply/a/voltage"),
        "{between:?}"
    );

    assert_eq!(server.emulator.device("a").unwrap().voltage_setpoint, 1.5);
    assert_eq!(server.emulator.device("b").unwrap().voltage_setpoint, 2.5);
    server.stop().await;
}

#[tokio::test]
async fn measurements_arrive_every_period_and_follow_the_load() {
    const PERIOD_MS: u64 = 100;
    let server = TestServer::start(&format!(
        r#"m: {{ model: "emulator", measure_period_ms: {PERIOD_MS}, load_resistance_ohm: 4, initial_voltage: 2, initial_current: 1 }}"#
    ))
    .await;
    let mut c = running_client(&server, "m").await;
    c.publish(
        "power-supply/m/state/cmd",
        r#"{"pza_id":"on","state":"ON"}"#,
    )
    .await;
    c.wait_reply("on").await;

    // 2 V on 4 Ω draws 0.5 A, under the 1 A limit: constant voltage.
    let first = Instant::now();
    c.wait_for("power-supply/m/measure/current", |v| {
        v["current"] == "0.500"
    })
    .await;
    let mut arrivals = vec![Instant::now()];
    while arrivals.len() < 6 {
        let v = c.wait_for("power-supply/m/measure/voltage", |_| true).await;
        assert_eq!(server_made(v), json!({"pza_id": "srv", "voltage": "2.00"}));
        arrivals.push(Instant::now());
    }
    // Five periods cannot pass faster than the period allows (with room for
    // delivery jitter); no upper bound is asserted on a shared machine.
    let span = arrivals[5] - arrivals[1];
    assert!(
        span >= Duration::from_millis(3 * PERIOD_MS),
        "4 periods took only {span:?}"
    );
    assert!(first.elapsed() < common::WAIT);

    // 12 V on 4 Ω would draw 3 A: the 1 A limit holds it at 4 V (constant current).
    c.publish(
        "power-supply/m/voltage/cmd",
        r#"{"pza_id":"cc","voltage":"12"}"#,
    )
    .await;
    c.wait_reply("cc").await;
    c.wait_for("power-supply/m/measure/voltage", |v| v["voltage"] == "4.00")
        .await;
    c.wait_for("power-supply/m/measure/current", |v| {
        v["current"] == "1.000"
    })
    .await;
    server.stop().await;
}

#[tokio::test]
async fn a_hung_driver_call_times_out_with_an_error_then_the_runner_restarts() {
    const TIMEOUT_MS: u64 = 300;
    let server = TestServer::start(&format!(
        r#"h: {{ model: "emulator", measure_period_ms: 0, command_timeout_ms: {TIMEOUT_MS},
               faults: {{ hang_on_voltage: 9 }}, restart: {{ initial_delay_ms: 10, jitter: 0 }} }}"#
    ))
    .await;
    let mut c = running_client(&server, "h").await;
    let sent = Instant::now();
    c.publish(
        "power-supply/h/voltage/cmd",
        r#"{"pza_id":"hang","voltage":"9"}"#,
    )
    .await;
    let reply = c.wait_reply("hang").await;
    let waited = sent.elapsed();
    assert_eq!(reply.topic, "power-supply/h/error");
    assert_eq!(
        reply.json()["message"],
        format!("voltage: timeout: the device did not answer within {TIMEOUT_MS} ms (command_timeout_ms)")
    );
    assert!(
        waited >= Duration::from_millis(TIMEOUT_MS),
        "answered after {waited:?}"
    );

    // The link to the device is in an unknown state: the runner is restarted.
    let panicking = c.wait_status("h", "Panicking").await;
    assert!(
        panicking["panic_message"]
            .as_str()
            .unwrap()
            .contains("did not answer"),
        "{panicking}"
    );
    c.wait_status("h", "Running").await;
    c.publish(
        "power-supply/h/voltage/cmd",
        r#"{"pza_id":"ok","voltage":"5"}"#,
    )
    .await;
    assert_eq!(c.wait_reply("ok").await.json()["voltage"], "5.00");
    server.stop().await;
}

#[tokio::test]
async fn a_setpoint_outside_the_limits_is_clamped_at_start_up_and_reported() {
    let server = TestServer::start(
        r#"k: { model: "emulator", measure_period_ms: 0, initial_voltage: 24, security_max_voltage: 12 }"#,
    )
    .await;
    let mut c = server.client().await;
    c.subscribe("power-supply/k/#").await;
    let error = c.wait_for("power-supply/k/error", |_| true).await;
    assert!(is_server_id(&error["pza_id"]), "{error}");
    assert_eq!(
        error["message"],
        "voltage setpoint 24 V found outside the security limits at start-up: clamped to 12 V"
    );
    let voltage = c.wait_for("power-supply/k/voltage", |_| true).await;
    assert_eq!(voltage["voltage"], "12.00");
    server.stop().await;
}

#[tokio::test]
async fn namespaces_prefix_every_topic() {
    let port = pza_toolkit::mqtt::probe_free_port().unwrap();
    let text = format!(
        r#"{{ broker: {{ tcp: {{ port: {port} }}, namespace: "lab/bench-3" }}, runners: {{ n: {{ model: "emulator", measure_period_ms: 0 }} }} }}"#
    );
    let (factory, _) = common::factory();
    let config =
        pza_power_supply::config::parse(std::path::Path::new("ns.json5"), &text, &factory).unwrap();
    let server = pza_power_supply::server::Server::start(
        config,
        std::sync::Arc::new(tokio::sync::Mutex::new(factory)),
        Default::default(),
    )
    .await
    .unwrap();
    let mut c = common::Client::connect(port).await;
    c.subscribe("lab/bench-3/power-supply/n/#").await;
    c.wait_for("lab/bench-3/power-supply/n/status", |v| {
        v["status"] == "Running"
    })
    .await;
    c.publish(
        "lab/bench-3/power-supply/n/voltage/cmd",
        r#"{"pza_id":"ns","voltage":"1"}"#,
    )
    .await;
    assert_eq!(
        c.wait_reply("ns").await.topic,
        "lab/bench-3/power-supply/n/voltage"
    );
    server.shutdown().await.unwrap();
}

/// `P/info` is retained with the model, the resolved limits (as numbers) and
/// the decimals, and a restarted runner publishes it again before `Running`.
#[tokio::test]
async fn info_is_retained_and_kept_across_a_restart() {
    let server = TestServer::start(
        r#"i: { model: "emulator", measure_period_ms: 0, security_min_voltage: 1,
               security_max_voltage: 12.5, security_min_current: 0.1, security_max_current: 2 }"#,
    )
    .await;
    let mut c = running_client(&server, "i").await;
    let mut late = server.client().await;
    late.subscribe("power-supply/i/info").await;
    let info = late.next().await;
    assert!(info.retain);
    let info_payload = info.json();
    assert_eq!(
        server_made(info_payload.clone()),
        json!({
            "pza_id": "srv",
            "model": "emulator",
            "description": "Virtual power supply with a resistive load and fault injection",
            "security_min_voltage": 1.0,
            "security_max_voltage": 12.5,
            "security_min_current": 0.1,
            "security_max_current": 2.0,
            "voltage_decimals": 2,
            "current_decimals": 3,
        })
    );
    c.publish("power-supply/i/restart/cmd", r#"{"pza_id":"r"}"#)
        .await;
    let (_, before) = c
        .wait_for_collect("power-supply/i/status", |v| {
            v["status"] == "Running" && v["restarts"] == 1
        })
        .await;
    // The restarted runner's info is the same, and the broker holds it on
    // the same connection: it is not published again (issue 16: a restart
    // republishes only the retained values that changed).
    assert!(
        !before.iter().any(|m| m.topic == "power-supply/i/info"),
        "info published again though unchanged: {before:?}"
    );
    let mut later = server.client().await;
    later.subscribe("power-supply/i/info").await;
    let held = later.next().await;
    assert!(held.retain);
    assert_eq!(held.json(), info_payload, "the broker still holds the info");
    server.stop().await;
}

/// A runner's configured `description` is the one `P/info` carries (the
/// model's own is only the default).
#[tokio::test]
async fn info_carries_the_configured_description() {
    let server = TestServer::start(
        r#"d: { model: "emulator", measure_period_ms: 0, description: "DUT 5 V rail" }"#,
    )
    .await;
    let _c = running_client(&server, "d").await;
    let mut late = server.client().await;
    late.subscribe("power-supply/d/info").await;
    assert_eq!(late.next().await.json()["description"], "DUT 5 V rail");
    server.stop().await;
}

/// `P/measure/cmd` gets exactly one reply on `P/measure`, measured now, with
/// both values formatted like the measure topics; a bad one gets one error.
#[tokio::test]
async fn a_measure_command_gets_one_reply_with_both_values() {
    let server = TestServer::start(
        r#"m: { model: "emulator", measure_period_ms: 0, load_resistance_ohm: 4 }"#,
    )
    .await;
    let mut c = running_client(&server, "m").await;
    for (id, cmd) in [
        ("v", r#"{"pza_id":"v","voltage":"2"}"#),
        ("c", r#"{"pza_id":"c","current":"1"}"#),
    ] {
        let topic = if id == "v" { "voltage" } else { "current" };
        c.publish(&format!("power-supply/m/{topic}/cmd"), cmd).await;
        c.wait_reply(id).await;
    }
    c.publish("power-supply/m/measure/cmd", r#"{"pza_id":"off"}"#)
        .await;
    let reply = c.wait_reply("off").await;
    assert_eq!(reply.topic, "power-supply/m/measure");
    assert!(!reply.retain);
    assert_eq!(
        reply.json(),
        json!({"pza_id": "off", "voltage": "0.00", "current": "0.000"})
    );

    c.publish(
        "power-supply/m/state/cmd",
        r#"{"pza_id":"on","state":"ON"}"#,
    )
    .await;
    c.wait_reply("on").await;
    c.publish("power-supply/m/measure/cmd", r#"{"pza_id":"now"}"#)
        .await;
    // 2 V on 4 Ω: 0.5 A, under the 1 A limit. Exactly one reply: the
    // fence's reply comes after everything published for the command.
    let (reply, between) = c
        .wait_for_collect("power-supply/m/measure", |v| v["pza_id"] == "now")
        .await;
    assert_eq!(
        reply,
        json!({"pza_id": "now", "voltage": "2.00", "current": "0.500"})
    );
    c.publish(
        "power-supply/m/measure/cmd",
        r#"{"pza_id":"bad","voltage":1}"#,
    )
    .await;
    c.publish(
        "power-supply/m/voltage/cmd",
        r#"{"pza_id":"fence","voltage":"2"}"#,
    )
    .await;
    let (_, after) = c
        .wait_for_collect("power-supply/m/voltage", |v| v["pza_id"] == "fence")
        .await;
    let about = |id: &str| -> Vec<String> {
        between
            .iter()
            .chain(after.iter())
            .filter(|m| !m.topic.ends_with("/cmd") && m.json()["pza_id"] == id)
            .map(|m| m.topic.clone())
            .collect()
    };
    assert!(about("now").is_empty(), "{:?}", about("now"));
    assert_eq!(about("bad"), ["power-supply/m/error"]);
    server.stop().await;
}
