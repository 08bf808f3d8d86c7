//! The whole stack with simulated SCPI instruments: MQTT command → runner →
//! shared session → TCP → simulator, and back; two channels of one
//! instrument driven at once; a lost connection; a wrong model.

mod common;

use common::{running_client, Client, Message, TestServer, WAIT};
use pza_power_supply::drivers::scpi::profile::{Profile, RIGOL_DP832, SIGLENT_SPD3303X};
use pza_power_supply::simulator::{ScpiSimulator, ScpiSimulatorOptions};
use serde_json::json;

/// Quick restarts, so that the recovery tests do not wait for the default
/// backoff.
const FAST_RESTART: &str =
    "restart: { initial_delay_ms: 50, multiplier: 1, max_delay_ms: 50, jitter: 0, max_retries: 1000 }";

async fn simulator(profile: &'static Profile) -> ScpiSimulator {
    ScpiSimulator::start(ScpiSimulatorOptions::new(profile))
        .await
        .expect("simulator starts")
}

fn runner(name: &str, model: &str, channel: u8, sim: &ScpiSimulator, extra: &str) -> String {
    format!(
        r#""{name}": {{ model: "{model}", channel: {channel},
                       tcp: {{ addr: "127.0.0.1", port: {} }}, read_timeout_ms: 300, {extra} }},"#,
        sim.addr().port()
    )
}

async fn command(
    c: &mut Client,
    runner: &str,
    attribute: &str,
    id: &str,
    body: &str,
) -> serde_json::Value {
    c.publish(
        &format!("power-supply/{runner}/{attribute}/cmd"),
        format!(r#"{{"pza_id":"{id}",{body}}}"#),
    )
    .await;
    let reply = c.wait_reply(id).await;
    assert_eq!(
        reply.topic,
        format!("power-supply/{runner}/{attribute}"),
        "{:?}",
        String::from_utf8_lossy(&reply.payload)
    );
    reply.json()
}

/// The replies carrying `ids`, in the order of `ids`, whatever order they
/// come in.
async fn replies(c: &mut Client, ids: &[String]) -> Vec<Message> {
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut found: Vec<Option<Message>> = vec![None; ids.len()];
    while found.iter().any(Option::is_none) {
        let m = c
            .next_before(deadline)
            .await
            .unwrap_or_else(|| panic!("no reply to all of {ids:?} within {WAIT:?}: {found:?}"));
        if m.topic.ends_with("/cmd") {
            continue;
        }
        let id = serde_json::from_slice::<serde_json::Value>(&m.payload)
            .ok()
            .and_then(|v| v["pza_id"].as_str().map(str::to_string));
        if let Some(at) = ids.iter().position(|i| Some(i) == id.as_ref()) {
            found[at] = Some(m);
        }
    }
    found.into_iter().flatten().collect()
}

#[tokio::test]
async fn two_channels_of_one_instrument_driven_at_once() {
    let sim = simulator(&RIGOL_DP832).await;
    let runners = format!(
        "{}{}",
        runner("dut-5v", "rigol-dp832", 1, &sim, "measure_period_ms: 20"),
        runner("dut-12v", "dp832", 2, &sim, "measure_period_ms: 20")
    );
    let server = TestServer::start(&runners).await;
    let mut c = server.client().await;
    c.subscribe("power-supply/#").await;
    c.wait_all_status(&["dut-5v", "dut-12v"], "Running").await;

    // Both runners' commands in flight together, many times over, while both
    // measure every 20 ms on the same connection.
    for round in 0..10 {
        let v1 = format!("{}.{:03}", 1 + round, round);
        let v2 = format!("{}.500", 12 + round);
        c.publish(
            "power-supply/dut-5v/voltage/cmd",
            format!(r#"{{"pza_id":"a{round}","voltage":"{v1}"}}"#),
        )
        .await;
        c.publish(
            "power-supply/dut-12v/voltage/cmd",
            format!(r#"{{"pza_id":"b{round}","voltage":"{v2}"}}"#),
        )
        .await;
        // The session serves them in either order.
        let mut replies = replies(&mut c, &[format!("a{round}"), format!("b{round}")]).await;
        let b = replies.pop().unwrap();
        let a = replies.pop().unwrap();
        assert_eq!(a.topic, "power-supply/dut-5v/voltage");
        assert_eq!(b.topic, "power-supply/dut-12v/voltage");
        assert_eq!(a.json()["voltage"], v1.as_str(), "{a:?}");
        assert_eq!(b.json()["voltage"], v2.as_str(), "{b:?}");
        assert_eq!(
            sim.state(1).unwrap().voltage_setpoint,
            v1.parse::<f64>().unwrap()
        );
        assert_eq!(
            sim.state(2).unwrap().voltage_setpoint,
            v2.parse::<f64>().unwrap()
        );
    }
    assert_eq!(
        command(&mut c, "dut-5v", "current", "i1", r#""current":"0.2""#).await,
        json!({"pza_id": "i1", "current": "0.200"})
    );
    assert_eq!(
        command(&mut c, "dut-12v", "state", "on2", r#""state":"ON""#).await,
        json!({"pza_id": "on2", "state": "ON"})
    );
    // 21.5 V on 10 Ω with channel 2's 1 A limit: CC at 1 A, 10 V; channel 1
    // stays off.
    c.wait_for("power-supply/dut-12v/measure/current", |v| {
        v["current"] == "1.000"
    })
    .await;
    c.wait_for("power-supply/dut-12v/measure/voltage", |v| {
        v["voltage"] == "10.000"
    })
    .await;
    c.wait_for("power-supply/dut-5v/measure/voltage", |v| {
        v["voltage"] == "0.000"
    })
    .await;
    assert!(!sim.state(1).unwrap().output_enabled);
    assert_eq!(
        sim.accepted_connections(),
        1,
        "one connection for both runners"
    );
    assert_eq!(sim.refused_connections(), 0);
    server.stop().await;
    sim.stop().await.unwrap();
}

#[tokio::test]
async fn each_runner_is_limited_to_its_channel() {
    let sim = simulator(&RIGOL_DP832).await;
    let runners = runner("logic", "rigol-dp832", 3, &sim, "measure_period_ms: 0");
    let server = TestServer::start(&runners).await;
    let mut c = running_client(&server, "logic").await;
    // Channel 3 is 0-5 V: without security limits, its range is the bound.
    c.publish(
        "power-supply/logic/voltage/cmd",
        r#"{"pza_id":"hi","voltage":"5.5"}"#,
    )
    .await;
    let error = c.wait_reply("hi").await;
    assert_eq!(error.topic, "power-supply/logic/error");
    assert_eq!(
        error.json()["message"],
        "voltage 5.5 exceeds security_max_voltage 5"
    );
    assert_eq!(
        command(&mut c, "logic", "voltage", "ok", r#""voltage":"3.3""#).await,
        json!({"pza_id": "ok", "voltage": "3.300"})
    );
    assert_eq!(sim.state(3).unwrap().voltage_setpoint, 3.3);
    server.stop().await;
    sim.stop().await.unwrap();
}

#[tokio::test]
async fn a_lost_connection_restarts_both_runners_and_they_come_back() {
    let sim = simulator(&SIGLENT_SPD3303X).await;
    let runners = format!(
        "{}{}",
        runner(
            "ch1",
            "siglent-spd3303x",
            1,
            &sim,
            &format!("measure_period_ms: 50, {FAST_RESTART}")
        ),
        runner(
            "ch2",
            "spd3303x",
            2,
            &sim,
            &format!("measure_period_ms: 50, {FAST_RESTART}")
        )
    );
    let server = TestServer::start(&runners).await;
    let mut c = server.client().await;
    c.subscribe("power-supply/+/status").await;
    c.wait_all_status(&["ch1", "ch2"], "Running").await;
    let mut commands = server.client().await;
    commands.subscribe("power-supply/+/voltage").await;
    assert_eq!(
        command(&mut commands, "ch1", "voltage", "v1", r#""voltage":"4.2""#).await["voltage"],
        "4.200"
    );

    // The instrument goes away: both runners lose it, and keep failing to
    // come back while it is away.
    sim.set_online(false);
    c.wait_all_status(&["ch1", "ch2"], "Panicking").await;
    c.wait_all_status(&["ch1", "ch2"], "Restarting").await;
    c.wait_all_status(&["ch1", "ch2"], "Panicking").await;

    sim.set_online(true);
    c.wait_all_status(&["ch1", "ch2"], "Running").await;
    // The instrument kept its settings, and both channels answer again.
    assert_eq!(
        command(&mut commands, "ch1", "voltage", "v2", r#""voltage":"5""#).await["voltage"],
        "5.000"
    );
    assert_eq!(
        command(&mut commands, "ch2", "voltage", "v3", r#""voltage":"6""#).await["voltage"],
        "6.000"
    );
    assert!(sim.accepted_connections() >= 2);
    assert_eq!(sim.state(1).unwrap().voltage_setpoint, 5.0);
    server.stop().await;
    sim.stop().await.unwrap();
}

#[tokio::test]
async fn another_model_at_the_address_is_refused_with_both_names() {
    let sim = simulator(&SIGLENT_SPD3303X).await;
    let runners = runner("psu", "rigol-dp832", 1, &sim, FAST_RESTART);
    let server = TestServer::start(&runners).await;
    let mut c = server.client().await;
    c.subscribe("power-supply/psu/status").await;
    let panicking = c.wait_status("psu", "Panicking").await;
    let message = panicking["panic_message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        message.contains("Siglent Technologies SPD3303X"),
        "{message}"
    );
    assert!(
        message.contains("not a Rigol DP832 (model rigol-dp832)"),
        "{message}"
    );
    server.stop().await;
    sim.stop().await.unwrap();
}

#[tokio::test]
async fn the_connection_outlives_one_runners_restart() {
    let sim = simulator(&RIGOL_DP832).await;
    let runners = format!(
        "{}{}",
        runner("a", "rigol-dp832", 1, &sim, "measure_period_ms: 20"),
        runner("b", "rigol-dp832", 2, &sim, "measure_period_ms: 20")
    );
    let server = TestServer::start(&runners).await;
    let mut c = server.client().await;
    c.subscribe("power-supply/#").await;
    c.wait_all_status(&["a", "b"], "Running").await;

    c.publish("power-supply/a/restart/cmd", r#"{"pza_id":"r"}"#)
        .await;
    c.wait_status("a", "Restarting").await;
    let running = c.wait_status("a", "Running").await;
    assert_eq!(running["restarts"], 1);
    // Runner b measured on through a's restart, on the same connection.
    c.wait_for("power-supply/b/measure/voltage", |_| true).await;
    assert_eq!(
        command(&mut c, "a", "voltage", "v", r#""voltage":"2.5""#).await["voltage"],
        "2.500"
    );
    assert_eq!(sim.accepted_connections(), 1);
    server.stop().await;
    sim.stop().await.unwrap();
}
