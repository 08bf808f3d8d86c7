//! The whole stack with a simulated KD3005P: MQTT command → runner → driver →
//! pseudo-terminal → simulator, and back.

mod common;

use std::time::Duration;

use common::{running_client, TestServer};
use pza_power_supply::simulator::{Simulator, SimulatorOptions};
use serde_json::json;

/// A simulator with a short pacing window, so the tests stay quick; the
/// driver paces a little above it. (Pacing itself is tested against the
/// default 80 ms in `kd3005p_driver.rs`.)
async fn simulator() -> Simulator {
    Simulator::start(SimulatorOptions {
        pacing: Duration::from_millis(15),
        load_ohms: 10.0,
        ..Default::default()
    })
    .await
    .expect("simulator starts")
}

fn runner(sim: &Simulator, extra: &str) -> String {
    format!(
        r#"bench: {{ model: "kd3005p", serial_port: {{ name: "{}" }}, pacing_ms: 20, settle_ms: 5,
                    read_timeout_ms: 200, {extra} }}"#,
        sim.path().display()
    )
}

#[tokio::test]
async fn every_command_and_measurement_through_the_simulator() {
    let sim = simulator().await;
    let server = TestServer::start(&runner(&sim, "measure_period_ms: 50")).await;
    let mut c = running_client(&server, "bench").await;

    c.publish(
        "power-supply/bench/voltage/cmd",
        r#"{"pza_id":"v","voltage":"12.34"}"#,
    )
    .await;
    assert_eq!(
        c.wait_reply("v").await.json(),
        json!({"pza_id": "v", "voltage": "12.34"})
    );
    c.publish(
        "power-supply/bench/current/cmd",
        r#"{"pza_id":"c","current":0.5}"#,
    )
    .await;
    assert_eq!(
        c.wait_reply("c").await.json(),
        json!({"pza_id": "c", "current": "0.500"})
    );
    c.publish(
        "power-supply/bench/state/cmd",
        r#"{"pza_id":"on","state":"ON"}"#,
    )
    .await;
    assert_eq!(
        c.wait_reply("on").await.json(),
        json!({"pza_id": "on", "state": "ON"})
    );

    // 12.34 V on 10 Ω would draw 1.234 A: the 0.5 A limit holds it at 5 V (CC).
    c.wait_for("power-supply/bench/measure/current", |v| {
        v["current"] == "0.500"
    })
    .await;
    c.wait_for("power-supply/bench/measure/voltage", |v| {
        v["voltage"] == "5.00"
    })
    .await;

    c.publish(
        "power-supply/bench/current/cmd",
        r#"{"pza_id":"c2","current":"2"}"#,
    )
    .await;
    c.wait_reply("c2").await;
    // Now CV: 12.34 V and 1.234 A.
    c.wait_for("power-supply/bench/measure/voltage", |v| {
        v["voltage"] == "12.34"
    })
    .await;
    c.wait_for("power-supply/bench/measure/current", |v| {
        v["current"] == "1.234"
    })
    .await;

    c.publish(
        "power-supply/bench/state/cmd",
        r#"{"pza_id":"off","state":"OFF"}"#,
    )
    .await;
    assert_eq!(
        c.wait_reply("off").await.json(),
        json!({"pza_id": "off", "state": "OFF"})
    );
    c.wait_for("power-supply/bench/measure/voltage", |v| {
        v["voltage"] == "0.00"
    })
    .await;

    let state = sim.state();
    assert_eq!(
        (
            state.output_enabled,
            state.voltage_setpoint,
            state.current_limit
        ),
        (false, 12.34, 2.0)
    );
    assert_eq!(sim.dropped_requests(), 0, "the driver paces its requests");
    server.stop().await;
    sim.stop().await.unwrap();
}

#[tokio::test]
async fn the_model_limits_and_security_limits_hold_before_the_device() {
    let sim = simulator().await;
    let server = TestServer::start(&runner(
        &sim,
        "measure_period_ms: 0, security_max_voltage: 24",
    ))
    .await;
    let mut c = running_client(&server, "bench").await;
    c.publish(
        "power-supply/bench/voltage/cmd",
        r#"{"pza_id":"hi","voltage":"24.01"}"#,
    )
    .await;
    let error = c.wait_reply("hi").await;
    assert_eq!(error.topic, "power-supply/bench/error");
    assert_eq!(
        error.json()["message"],
        "voltage 24.01 exceeds security_max_voltage 24"
    );
    assert_eq!(
        sim.state().voltage_setpoint,
        0.0,
        "nothing reached the device"
    );
    server.stop().await;
    sim.stop().await.unwrap();
}

#[tokio::test]
async fn a_silent_device_times_out_restarts_and_comes_back_on_the_same_path() {
    let sim = simulator().await;
    let server = TestServer::start(&runner(
        &sim,
        "measure_period_ms: 0, restart: { initial_delay_ms: 50, multiplier: 1, max_delay_ms: 50, jitter: 0, max_retries: 1000 }",
    ))
    .await;
    let mut c = running_client(&server, "bench").await;
    c.publish(
        "power-supply/bench/voltage/cmd",
        r#"{"pza_id":"v1","voltage":"3"}"#,
    )
    .await;
    c.wait_reply("v1").await;

    sim.set_responsive(false);
    c.publish(
        "power-supply/bench/voltage/cmd",
        r#"{"pza_id":"lost","voltage":"4"}"#,
    )
    .await;
    let error = c.wait_reply("lost").await;
    assert_eq!(error.topic, "power-supply/bench/error");
    let message = error.json()["message"].as_str().unwrap().to_string();
    assert!(message.starts_with("voltage: timeout:"), "{message}");

    // The runner is restarted, and its initialization keeps failing (no
    // answer to *IDN?) while the device is silent.
    c.wait_status("bench", "Panicking").await;
    let restarting = c.wait_status("bench", "Restarting").await;
    assert_eq!(restarting["next_restart_ms"], 50);
    let failing_again = c.wait_status("bench", "Panicking").await;
    assert!(
        failing_again["panic_message"]
            .as_str()
            .unwrap()
            .contains("initialization"),
        "{failing_again}"
    );

    sim.set_responsive(true);
    let running = c.wait_status("bench", "Running").await;
    assert!(running["restarts"].as_u64().unwrap() >= 2, "{running}");
    c.publish(
        "power-supply/bench/voltage/cmd",
        r#"{"pza_id":"v2","voltage":"6"}"#,
    )
    .await;
    assert_eq!(
        c.wait_reply("v2").await.json(),
        json!({"pza_id": "v2", "voltage": "6.00"})
    );
    assert_eq!(sim.state().voltage_setpoint, 6.0);
    server.stop().await;
    sim.stop().await.unwrap();
}

/// Commands sent one after another while the runner measures: each waits
/// behind at most one device request of a measurement. Counted on the
/// simulator: the requests it served between a command's publish and its
/// reply are the command's own plus at most one (the measurement request in
/// progress). The default 80 ms pacing keeps the next request from being
/// served before the counter is read at the reply.
#[tokio::test]
async fn a_command_waits_behind_at_most_one_measurement_request() {
    /// A measurement (two steps) every 1.5 s, a command every ~250 ms:
    /// some commands meet a step, most do not.
    const COMMANDS: usize = 24;
    let sim = Simulator::start(SimulatorOptions::default())
        .await
        .expect("simulator starts");
    let server = TestServer::start(&format!(
        r#"bench: {{ model: "kd3005p", serial_port: {{ name: "{}" }}, measure_period_ms: 1500 }}"#,
        sim.path().display()
    ))
    .await;
    let mut c = running_client(&server, "bench").await;
    // Not counted: it meets the first measurement, due at once, and the
    // start-up.
    c.publish(
        "power-supply/bench/voltage/cmd",
        r#"{"pza_id":"warm-up","voltage":"1"}"#,
    )
    .await;
    c.wait_reply("warm-up").await;
    let mut served = Vec::with_capacity(COMMANDS);
    for i in 0..COMMANDS {
        let id = format!("w{i}");
        let before = sim.served_requests();
        c.publish(
            "power-supply/bench/voltage/cmd",
            format!(r#"{{"pza_id":"{id}","voltage":"{}"}}"#, 1 + i),
        )
        .await;
        c.wait_reply(&id).await;
        served.push(sim.served_requests() - before);
    }
    let own = *served.iter().min().expect("commands were sent");
    let waited: Vec<u64> = served.iter().map(|n| n - own).collect();
    assert!(
        waited.iter().all(|&n| n <= 1),
        "requests waited behind, per command: {waited:?}"
    );
    assert!(
        waited.contains(&1),
        "no command met a measurement, the test proved nothing: {waited:?}"
    );
    server.stop().await;
    sim.stop().await.expect("simulator stops");
}
