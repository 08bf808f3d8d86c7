//! Measures the command round trip through each simulated SCPI instrument:
//! a client publishes `voltage/cmd` and waits for the read-back, through the
//! embedded broker, the runner, the shared session and TCP. First one
//! channel, one command at a time; then two channels of the same instrument
//! driven at once (both commands published together, both replies awaited:
//! the session serves one, then the other).
//!
//! `cargo run --release -p pza-power-supply --example scpi_round_trip [N]`
//!
//! The floor is the instrument's pacing: a voltage command is its set lines
//! (the Rigol selects the channel first: two lines) and one read-back query,
//! each followed by the pacing before the next line, so back-to-back
//! commands cannot be faster than `(set lines + 1) × pacing`. The Keysight
//! needs no pacing: its floor is the bare round trip, and it is the baseline
//! the others are compared with.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use pza_power_supply::config;
use pza_power_supply::drivers::scpi::profile::{Profile, PROFILES};
use pza_power_supply::drivers::scpi::protocol::Setting;
use pza_power_supply::drivers::{DriverFactory, Range};
use pza_power_supply::server::{Server, ServerOptions};
use pza_power_supply::simulator::{ScpiSimulator, ScpiSimulatorOptions};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::sync::mpsc;

const DEFAULT_COMMANDS: usize = 50;

/// Bound on any single wait, so a broken setup ends instead of hanging.
const WAIT: Duration = Duration::from_secs(10);

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let commands: usize = match std::env::args().nth(1) {
        Some(n) => n
            .parse()
            .context("the argument is the number of commands")?,
        None => DEFAULT_COMMANDS,
    };
    println!("SCPI round trip through the simulators, {commands} voltage commands per run (set + read-back)");
    let mut baseline: Option<Duration> = None;
    // The Keysight (no pacing) first: it is the baseline.
    let mut profiles: Vec<&'static Profile> = PROFILES.to_vec();
    profiles.sort_by_key(|p| p.pacing);
    for profile in profiles {
        let single = run(profile, commands, &[1]).await?;
        let pair = run(profile, commands, &[1, 2]).await?;
        let set_lines = profile
            .dialect
            .set(1, Setting::Voltage, 1.0, Range::new(0.0, 100.0), 3)
            .map(|lines| lines.len())
            .unwrap_or(1) as u32;
        let floor = profile.pacing * (set_lines + 1);
        let base = *baseline.get_or_insert(median(&single.rounds));
        println!(
            "{} (pacing {} ms, floor {:.1} ms = ({} set lines + 1 query) x pacing):",
            profile.model,
            profile.pacing.as_millis(),
            ms(floor),
            set_lines
        );
        report("one channel             ", &single.rounds, floor, base);
        report("two channels, 1st reply ", &pair.firsts, floor, base);
        report("two channels, both      ", &pair.rounds, floor * 2, base);
        println!(
            "  connections opened: {} and {}; commands dropped by the simulator: {}",
            single.connections,
            pair.connections,
            single.dropped + pair.dropped
        );
    }
    Ok(())
}

struct Samples {
    /// Publish to the first read-back of a round (one command per channel,
    /// published together): the command served first.
    firsts: Vec<Duration>,
    /// Publish to the last read-back of a round: the whole round.
    rounds: Vec<Duration>,
    connections: u64,
    dropped: u64,
}

async fn run(
    profile: &'static Profile,
    commands: usize,
    channels: &[u8],
) -> anyhow::Result<Samples> {
    let sim = ScpiSimulator::start(ScpiSimulatorOptions::new(profile)).await?;
    let port = pza_toolkit::mqtt::probe_free_port()?;
    let runners: String = channels
        .iter()
        .map(|n| {
            format!(
                r#""ch{n}": {{ model: "{}", channel: {n}, tcp: {{ addr: "127.0.0.1", port: {} }}, measure_period_ms: 0 }},"#,
                profile.model,
                sim.addr().port()
            )
        })
        .collect();
    let text = format!(r#"{{ broker: {{ tcp: {{ port: {port} }} }}, runners: {{ {runners} }} }}"#);
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
    client.subscribe("power-supply/#", QoS::AtLeastOnce).await?;
    for n in channels {
        wait_for(
            &mut rx,
            &format!("power-supply/ch{n}/status"),
            "\"Running\"",
        )
        .await?;
    }

    let mut firsts = Vec::with_capacity(commands);
    let mut rounds = Vec::with_capacity(commands);
    for i in 0..commands {
        let volts = format!("{}.{:03}", 1 + i % 4, i % 1000);
        let started = Instant::now();
        for n in channels {
            client
                .publish(
                    format!("power-supply/ch{n}/voltage/cmd"),
                    QoS::AtLeastOnce,
                    false,
                    format!(r#"{{"pza_id":"rt{i}-{n}","voltage":"{volts}"}}"#),
                )
                .await?;
        }
        let mut waiting: Vec<String> = channels.iter().map(|n| format!("\"rt{i}-{n}\"")).collect();
        while !waiting.is_empty() {
            let (topic, payload) = tokio::time::timeout(WAIT, rx.recv())
                .await
                .context("no reply in time")?
                .context("the client stopped")?;
            let payload = String::from_utf8_lossy(&payload);
            if topic.ends_with("/voltage") {
                if let Some(at) = waiting.iter().position(|id| payload.contains(id.as_str())) {
                    waiting.remove(at);
                    if waiting.len() + 1 == channels.len() {
                        firsts.push(started.elapsed());
                    }
                }
            } else if topic.ends_with("/error") {
                anyhow::bail!("refused: {payload}");
            }
        }
        rounds.push(started.elapsed());
    }
    let samples = Samples {
        firsts,
        rounds,
        connections: sim.accepted_connections(),
        dropped: sim.dropped_commands(),
    };
    pump.abort();
    server.shutdown().await?;
    sim.stop().await?;
    Ok(samples)
}

fn report(label: &str, samples: &[Duration], floor: Duration, baseline: Duration) {
    let mut sorted = samples.to_vec();
    sorted.sort();
    let at = |q: f64| sorted[((sorted.len() as f64 - 1.0) * q).round() as usize];
    let vs_floor = |d: Duration| {
        if floor.is_zero() {
            "no pacing floor".to_string()
        } else {
            format!("{:.2}x floor", ms(d) / ms(floor))
        }
    };
    println!(
        "  {label}: median {:>7.2} ms ({}, {:.1}x baseline)   p99 {:>7.2} ms ({})",
        ms(at(0.5)),
        vs_floor(at(0.5)),
        ms(at(0.5)) / ms(baseline),
        ms(at(0.99)),
        vs_floor(at(0.99)),
    );
}

fn median(samples: &[Duration]) -> Duration {
    let mut sorted = samples.to_vec();
    sorted.sort();
    sorted[sorted.len() / 2]
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
