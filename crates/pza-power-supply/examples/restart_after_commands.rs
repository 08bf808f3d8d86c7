//! Measures how long a runner takes from a panic to `Running` again, before
//! and after a long run of ordinary commands on the same connection (past
//! the MQTT packet-id wrap-around at 65,535): a restart must stay as fast as
//! the first one, with no flush waiting for an acknowledgement that was
//! lost.
//!
//! `cargo run --release -p pza-power-supply --example restart_after_commands [COMMANDS] [PANICS]`
//!
//! Defaults: 70,000 commands, 20 panics before and 20 after. A panic is
//! timed from the moment its command is published to the `Running` status
//! that follows; the panicking command's answer on `P/error` is checked on
//! the way.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use pza_power_supply::config;
use pza_power_supply::drivers::DriverFactory;
use pza_power_supply::server::{Server, ServerOptions};
use pza_toolkit::mqtt::link::flush_timeouts;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::Value;
use tokio::sync::mpsc;

const DEFAULT_COMMANDS: usize = 70_000;
const DEFAULT_PANICS: usize = 20;

/// Commands in flight at once during the long run.
const WINDOW: usize = 64;

/// Bound on any single wait, so a broken setup ends instead of hanging.
const WAIT: Duration = Duration::from_secs(30);

/// The voltage at which the emulator panics.
const PANIC_VOLTS: &str = "13";

type Messages = mpsc::UnboundedReceiver<(String, Value)>;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let arg = |n: usize, default: usize| -> anyhow::Result<usize> {
        match std::env::args().nth(n) {
            Some(v) => v.parse().with_context(|| format!("argument {n}: a count")),
            None => Ok(default),
        }
    };
    // The emulator's panics are the point of the run: do not print each.
    std::panic::set_hook(Box::new(|_| {}));
    let commands = arg(1, DEFAULT_COMMANDS)?;
    let panics = arg(2, DEFAULT_PANICS)?.max(1);

    let port = pza_toolkit::mqtt::probe_free_port()?;
    let text = format!(
        r#"{{ broker: {{ tcp: {{ port: {port} }} }},
             restart: {{ initial_delay_ms: 0, jitter: 0, max_retries: 1000000 }},
             runners: {{ emu: {{ model: "emulator", measure_period_ms: 0,
                                 faults: {{ panic_on_voltage: {PANIC_VOLTS} }} }} }} }}"#
    );
    let factory = DriverFactory::with_builtin_models();
    let config = config::parse(Path::new("restart.json5"), &text, &factory)?;
    let server = Server::start(
        config,
        Arc::new(tokio::sync::Mutex::new(factory)),
        ServerOptions::default(),
    )
    .await?;

    let (client, mut eventloop) = AsyncClient::new(
        MqttOptions::new("restart-after-commands", "127.0.0.1", port),
        1024,
    );
    let mut network = rumqttc::NetworkOptions::new();
    network.set_tcp_nodelay(true);
    eventloop.set_network_options(network);
    let (tx, mut rx) = mpsc::unbounded_channel();
    let pump = tokio::spawn(async move {
        while let Ok(event) = eventloop.poll().await {
            if let Event::Incoming(Packet::Publish(p)) = event {
                let Ok(value) = serde_json::from_slice::<Value>(&p.payload) else {
                    continue;
                };
                if tx.send((p.topic.clone(), value)).is_err() {
                    return;
                }
            }
        }
    });
    client
        .subscribe("power-supply/emu/status", QoS::AtLeastOnce)
        .await?;
    client
        .subscribe("power-supply/emu/voltage", QoS::AtLeastOnce)
        .await?;
    client
        .subscribe("power-supply/emu/error", QoS::AtLeastOnce)
        .await?;
    wait(&mut rx, |t, v| {
        t.ends_with("/status") && v["status"] == "Running"
    })
    .await?;

    let before = time_panics(&client, &mut rx, panics, "before").await?;
    let started = Instant::now();
    send_commands(&client, &mut rx, commands).await?;
    let long_run = started.elapsed();
    let after = time_panics(&client, &mut rx, panics, "after").await?;

    let (b_median, b_p99) = summary(before);
    let (a_median, a_p99) = summary(after);
    println!("panic -> Running on an emulator runner (initial_delay_ms 0), {panics} panics each");
    println!("  before any command:        median {b_median:>8.2} ms   p99 {b_p99:>8.2} ms");
    println!(
        "  after {commands} commands: median {a_median:>8.2} ms   p99 {a_p99:>8.2} ms   ({:.2}x / {:.2}x the first)",
        a_median / b_median,
        a_p99 / b_p99
    );
    println!(
        "  the {commands} commands took {:.1} s ({:.0} per second); flushes that hit their timeout: {}",
        long_run.as_secs_f64(),
        commands as f64 / long_run.as_secs_f64(),
        flush_timeouts()
    );
    pump.abort();
    server.shutdown().await?;
    Ok(())
}

/// Publishes `commands` voltage commands, at most `WINDOW` unanswered.
async fn send_commands(
    client: &AsyncClient,
    rx: &mut Messages,
    commands: usize,
) -> anyhow::Result<()> {
    let (mut sent, mut answered) = (0usize, 0usize);
    // Every command is answered once, by its own id.
    let mut seen = vec![false; commands + 1];
    while answered < commands {
        while sent < commands && sent - answered < WINDOW {
            sent += 1;
            let volts = 1 + sent % 10;
            client
                .publish(
                    "power-supply/emu/voltage/cmd",
                    QoS::AtLeastOnce,
                    false,
                    format!(r#"{{"pza_id":"c{sent}","voltage":{volts}}}"#),
                )
                .await?;
        }
        let (topic, value) = next(rx).await?;
        if topic != "power-supply/emu/voltage" {
            continue;
        }
        let Some(n) = value["pza_id"]
            .as_str()
            .and_then(|id| id.strip_prefix('c'))
            .and_then(|n| n.parse::<usize>().ok())
        else {
            continue;
        };
        anyhow::ensure!(
            n >= 1 && n <= commands && !seen[n],
            "reply c{n}: unexpected or repeated"
        );
        seen[n] = true;
        answered += 1;
    }
    Ok(())
}

/// Times `count` panics, each from its command to the next `Running`.
async fn time_panics(
    client: &AsyncClient,
    rx: &mut Messages,
    count: usize,
    tag: &str,
) -> anyhow::Result<Vec<Duration>> {
    let mut samples = Vec::with_capacity(count);
    for i in 0..count {
        let id = format!("{tag}{i}");
        let started = Instant::now();
        client
            .publish(
                "power-supply/emu/voltage/cmd",
                QoS::AtLeastOnce,
                false,
                format!(r#"{{"pza_id":"{id}","voltage":{PANIC_VOLTS}}}"#),
            )
            .await?;
        let mut answered = false;
        loop {
            let (topic, value) = next(rx).await?;
            if topic.ends_with("/error") && value["pza_id"] == id.as_str() {
                answered = true;
            }
            if topic.ends_with("/status") && value["status"] == "Running" {
                break;
            }
        }
        samples.push(started.elapsed());
        if std::env::var_os("VERBOSE").is_some() {
            eprintln!("{id}: {:?}", started.elapsed());
        }
        anyhow::ensure!(answered, "the panicking command {id} got no answer");
    }
    Ok(samples)
}

async fn next(rx: &mut Messages) -> anyhow::Result<(String, Value)> {
    tokio::time::timeout(WAIT, rx.recv())
        .await
        .context("no message in time")?
        .context("the client stopped")
}

async fn wait(rx: &mut Messages, pred: impl Fn(&str, &Value) -> bool) -> anyhow::Result<()> {
    loop {
        let (topic, value) = next(rx).await?;
        if pred(&topic, &value) {
            return Ok(());
        }
    }
}

/// Median and p99 in milliseconds.
fn summary(mut samples: Vec<Duration>) -> (f64, f64) {
    samples.sort();
    let at = |q: f64| {
        samples[((samples.len() as f64 - 1.0) * q).round() as usize].as_secs_f64() * 1000.0
    };
    (at(0.5), at(0.99))
}
