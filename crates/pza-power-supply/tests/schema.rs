//! Every message the server publishes on the topics of SPEC.md's table,
//! during a scripted session (start-up with a clamp, commands, rejections,
//! measurements, a measure command, a crash, a restart command, a shutdown),
//! decodes with the payload types of the original Panduza client: `pza_id`
//! a required string, values as strings. Unknown fields are refused too, so
//! the shapes are exactly those of the contract.

mod common;

use std::collections::BTreeMap;

use common::{is_server_id, Client, Message, TestServer};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::Value;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct VoltagePayload {
    pza_id: String,
    voltage: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct CurrentPayload {
    pza_id: String,
    current: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct PowerStatePayload {
    pza_id: String,
    state: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct ErrorPayload {
    pza_id: String,
    message: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct StatusPayload {
    pza_id: String,
    status: String,
    panic_message: Option<String>,
    restarts: u32,
    next_restart_ms: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct MeasurePayload {
    pza_id: String,
    voltage: String,
    current: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct InfoPayload {
    pza_id: String,
    model: String,
    description: String,
    security_min_voltage: f64,
    security_max_voltage: f64,
    security_min_current: f64,
    security_max_current: f64,
    voltage_decimals: u32,
    current_decimals: u32,
}

const P: &str = "power-supply/s";

/// Waits for a message on `topic` matching `pred`, keeping it and every
/// message before it in `seen`.
async fn collect_until(
    c: &mut Client,
    seen: &mut Vec<Message>,
    topic: &str,
    pred: impl Fn(&Value) -> bool,
) {
    let (matched, skipped) = c.wait_for_collect(topic, pred).await;
    seen.extend(skipped);
    seen.push(Message {
        topic: topic.to_string(),
        payload: matched.to_string().into_bytes(),
        retain: false,
    });
}

/// Decodes `m` as `T`, naming the topic and payload on failure.
fn decode<T: DeserializeOwned>(m: &Message) -> Result<(), String> {
    serde_json::from_slice::<T>(&m.payload)
        .map(|_| ())
        .map_err(|e| format!("{}: {e}: {}", m.topic, String::from_utf8_lossy(&m.payload)))
}

/// The payload type of a topic of the table; `None` for the commands (the
/// test's own) and the server's bookkeeping records.
fn check(m: &Message) -> Option<Result<(), String>> {
    let leaf = m.topic.strip_prefix(&format!("{P}/"))?;
    Some(match leaf {
        "status" => decode::<StatusPayload>(m),
        "error" => decode::<ErrorPayload>(m),
        "state" => decode::<PowerStatePayload>(m),
        "voltage" | "measure/voltage" => decode::<VoltagePayload>(m),
        "current" | "measure/current" => decode::<CurrentPayload>(m),
        "measure" => decode::<MeasurePayload>(m),
        "info" => decode::<InfoPayload>(m),
        "owner" => return None,
        cmd if cmd.ends_with("/cmd") => return None,
        other => Err(format!("{P}/{other}: a topic the contract does not list")),
    })
}

#[tokio::test]
async fn every_message_of_a_session_decodes_with_the_original_client_types() {
    let mut server = TestServer::start(
        r#"s: { model: "emulator", measure_period_ms: 20, initial_voltage: 24,
               security_max_voltage: 20, security_max_current: 3,
               faults: { panic_on_voltage: 13 }, restart: { initial_delay_ms: 0, jitter: 0 } }"#,
    )
    .await;
    let mut c = server.client().await;
    c.subscribe("power-supply/#").await;
    let mut seen: Vec<Message> = Vec::new();
    collect_until(&mut c, &mut seen, &format!("{P}/status"), |v| {
        v["status"] == "Running"
    })
    .await;

    let script: &[(&str, &str)] = &[
        ("state/cmd", r#"{"pza_id":"a1","state":"ON"}"#),
        ("voltage/cmd", r#"{"pza_id":"a2","voltage":"5"}"#),
        ("current/cmd", r#"{"pza_id":"a3","current":0.5}"#),
        ("measure/cmd", r#"{"pza_id":"a4"}"#),
        ("voltage/cmd", r#"{"pza_id":"e1","voltage":31}"#),
        ("voltage/cmd", r#"{"pza_id":"e2","voltage":1e400}"#),
        ("voltage/cmd", r#"{"voltage":"5"}"#),
        ("voltage/cmd", "not json"),
        ("state/cmd", r#"{"pza_id":"e3","state":"on"}"#),
        ("measure/cmd", r#"{"pza_id":"e4","now":true}"#),
        ("restart/cmd", r#"{"pza_id":7}"#),
        ("voltage/cmd", r#"{"pza_id":"boom","voltage":13}"#),
    ];
    for (topic, payload) in script {
        c.publish(&format!("{P}/{topic}"), *payload).await;
    }
    // The crash and its restart, then a restart command and a last command.
    for status in ["Panicking", "Restarting", "Initializing", "Running"] {
        collect_until(&mut c, &mut seen, &format!("{P}/status"), |v| {
            v["status"] == status
        })
        .await;
    }
    c.publish(&format!("{P}/restart/cmd"), r#"{"pza_id":"r1"}"#)
        .await;
    collect_until(&mut c, &mut seen, &format!("{P}/status"), |v| {
        v["status"] == "Running" && v["restarts"] == 2
    })
    .await;
    c.publish(
        &format!("{P}/voltage/cmd"),
        r#"{"pza_id":"last","voltage":"2"}"#,
    )
    .await;
    collect_until(&mut c, &mut seen, &format!("{P}/voltage"), |v| {
        v["pza_id"] == "last"
    })
    .await;
    // Measurements keep coming meanwhile; make sure some were seen.
    collect_until(&mut c, &mut seen, &format!("{P}/measure/current"), |_| true).await;

    let server = server.take();
    let stopping = tokio::spawn(server.shutdown());
    collect_until(&mut c, &mut seen, &format!("{P}/status"), |v| {
        v["status"] == "Stopped"
    })
    .await;
    stopping
        .await
        .expect("the shutdown task ends")
        .expect("clean shutdown");

    let mut per_topic: BTreeMap<String, usize> = BTreeMap::new();
    let mut failures = Vec::new();
    for m in &seen {
        if let Some(result) = check(m) {
            *per_topic.entry(m.topic.clone()).or_default() += 1;
            if let Err(e) = result {
                failures.push(e);
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
    // Every kind of message of the table was among them.
    for leaf in [
        "status",
        "error",
        "state",
        "voltage",
        "current",
        "measure/voltage",
        "measure/current",
        "measure",
        "info",
    ] {
        assert!(
            per_topic.contains_key(&format!("{P}/{leaf}")),
            "no message on {P}/{leaf}: {per_topic:?}"
        );
    }
    // The errors: the clamp at start-up and 3 payloads with no readable id
    // (server-made ids), 4 with one, and the panic.
    let mut ids: Vec<String> = seen
        .iter()
        .filter(|m| m.topic == format!("{P}/error"))
        .map(|m| {
            let id = m.json()["pza_id"].clone();
            if is_server_id(&id) {
                "srv".to_string()
            } else {
                id.as_str().unwrap_or_default().to_string()
            }
        })
        .collect();
    ids.sort();
    assert_eq!(
        ids,
        ["boom", "e1", "e2", "e3", "e4", "srv", "srv", "srv", "srv"],
        "errors"
    );
}
