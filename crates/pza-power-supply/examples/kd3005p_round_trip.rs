//! Measures the command round trip through a simulated KD3005P: a client
//! publishes `voltage/cmd` and waits for the read-back, one command at a
//! time, through the embedded broker, the runner, the driver and the pty.
//!
//! `cargo run --release -p pza-power-supply --example kd3005p_round_trip [N] [PERIODS]`
//!
//! `PERIODS` is a comma-separated list of `measure_period_ms` values, one
//! run each (default `0,500`): with periodic measurements, a command waits
//! behind at most one device request of a measurement, so its round trip
//! grows by at most one paced request. The ratios are against the first run
//! of the same invocation.
//!
//! The floor is set by the device's pacing: a set is followed by the pacing
//! and settle time before its verifying query, and the next command's set
//! waits for the pacing after that query: `2 × pacing + settle`.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use pza_power_supply::config;
use pza_power_supply::drivers::kd3005p::transport::{DEFAULT_PACING, DEFAULT_SETTLE_AFTER_SET};
use pza_power_supply::drivers::DriverFactory;
use pza_power_supply::server::{Server, ServerOptions};
use pza_power_supply::simulator::{Simulator, SimulatorOptions};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::sync::mpsc;

const DEFAULT_COMMANDS: usize = 100;

/// The `measure_period_ms` values measured when none are given.
const DEFAULT_PERIODS: &[u64] = &[0, 500];

/// Bound on any single wait, so a broken setup ends instead of hanging.
const WAIT: Duration = Duration::from_secs(10);

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let commands: usize = match std::env::args().nth(1) {
        Some(n) => n
            .parse()
            .context("the first argument is the number of commands")?,
        None => DEFAULT_COMMANDS,
    };
    if commands == 0 {
        anyhow::bail!("the number of commands must be at least 1");
    }
    let periods: Vec<u64> = match std::env::args().nth(2) {
        Some(list) => list
            .split(',')
            .map(|p| p.trim().parse::<u64>())
            .collect::<Result<_, _>>()
            .context("the second argument is a comma-separated list of measure_period_ms")?,
        None => DEFAULT_PERIODS.to_vec(),
    };
    let floor = DEFAULT_PACING * 2 + DEFAULT_SETTLE_AFTER_SET;
    println!(
        "kd3005p round trip through the simulator, {commands} commands per run (voltage set + read-back)"
    );
    println!(
        "  floor {:.1} ms (2 x pacing {} ms + settle {} ms)",
        ms(floor),
        DEFAULT_PACING.as_millis(),
        DEFAULT_SETTLE_AFTER_SET.as_millis()
    );
    let mut baseline: Option<(f64, f64)> = None;
    for period in periods {
        let (mut samples, dropped) = run(commands, period).await?;
        samples.sort();
        let at = |q: f64| ms(samples[((samples.len() as f64 - 1.0) * q).round() as usize]);
        let (median, p99) = (at(0.5), at(0.99));
        let (base_median, base_p99) = *baseline.get_or_insert((median, p99));
        println!(
            "  measure_period_ms {period:>5}: median {median:>7.1} ms ({:.3}x the first run, {:.3}x the floor)   p99 {p99:>7.1} ms ({:.3}x the first run)   max {:>7.1} ms   dropped requests {dropped}",
            median / base_median,
            median / ms(floor),
            p99 / base_p99,
            ms(samples[samples.len() - 1]),
        );
    }
    Ok(())
}

/// One run: a simulator, a server with one runner measuring every
/// `period_ms` (0: never), and `commands` voltage commands one at a time.
/// Returns the round trips and the requests the simulator dropped.
async fn run(commands: usize, period_ms: u64) -> anyhow::Result<(Vec<Duration>, u64)> {
    let sim = Simulator::start(SimulatorOptions::default()).await?;
    let port = pza_toolkit::mqtt::probe_free_port()?;
    let text = format!(
        r#"{{ broker: {{ tcp: {{ port: {port} }} }},
             runners: {{ bench: {{ model: "kd3005p", serial_port: {{ name: "{}" }}, measure_period_ms: {period_ms} }} }} }}"#,
        sim.path().display()
    );
    let factory = DriverFactory::with_builtin_models();
    let config = config::parse(Path::new("round-trip.json5"), &text, &factory)?;
    let server = Server::start(
        config,
        Arc::new(tokio::sync::Mutex::new(factory)),
        ServerOptions::default(),
    )
    .await?;

    let (client, mut eventloop) =
        AsyncClient::new(MqttOptions::new("round-trip", "127.0.0.1", port), 100);
    let mut network = rumqttc::NetworkOptions::new();
    network.set_tcp_nodelay(true);
    eventloop.set_network_options(network);
    let (tx, mut rx) = mpsc::unbounded_channel();
    let pump = tokio::spawn(async move {
        while let Ok(event) = eventloop.poll().await {
            if let Event::Incoming(Packet::Publish(p)) = event {
                if tx.send((p.topic.clone(), p.payload.to_vec())).is_err() {
                    return;
                }
            }
        }
    });
    client
        .subscribe("power-supply/bench/#", QoS::AtLeastOnce)
        .await?;
    wait_for(&mut rx, "power-supply/bench/status", "\"Running\"").await?;

    let mut samples = Vec::with_capacity(commands);
    for i in 0..commands {
        let volts = format!("{}.{:02}", 1 + i % 20, i % 100);
        let id = format!("rt{i}");
        let started = Instant::now();
        client
            .publish(
                "power-supply/bench/voltage/cmd",
                QoS::AtLeastOnce,
                false,
                format!(r#"{{"pza_id":"{id}","voltage":"{volts}"}}"#),
            )
            .await?;
        wait_for(&mut rx, "power-supply/bench/voltage", &format!("\"{id}\"")).await?;
        samples.push(started.elapsed());
    }
    let dropped = sim.dropped_requests();
    pump.abort();
    server.shutdown().await?;
    sim.stop().await?;
    Ok((samples, dropped))
}

/// Waits for a message on `topic` whose payload contains `needle`.
async fn wait_for(
    rx: &mut mpsc::UnboundedReceiver<(String, Vec<u8>)>,
    topic: &str,
    needle: &str,
) -> anyhow::Result<()> {
    tokio::time::timeout(WAIT, async {
        while let Some((t, payload)) = rx.recv().await {
            if t == topic && String::from_utf8_lossy(&payload).contains(needle) {
                return Ok(());
            }
        }
        anyhow::bail!("the client stopped")
    })
    .await
    .context("no reply in time")?
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
