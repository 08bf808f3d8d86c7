//! Figure 4: the real server binary, started with 1, 100 and 1000 emulator
//! runners: the time from process start until every runner is `Running`
//! (as seen by a client), and the peak resident set size (`VmHWM`). The
//! 1-runner case is the baseline.
//!
//! The runners keep the default `measure_period_ms` of 1000, so the peak RSS
//! includes the steady state of periodic measurements: it is read after
//! `SETTLE` more time once all are `Running`. The watching client connects as
//! soon as the broker accepts, and subscribes to each runner's status topic
//! (retained) rather than to a wildcard, for the reason given in
//! [`late_wildcard_subscriber`], whose result is reported too.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use pza_toolkit::mqtt::probe_free_port;

use super::{Context, Counts};
use crate::client::BenchClient;
use crate::inproc::{config_text, emulator_runner, status_topic, wait_all_status, Broker};
use crate::process::{peak_rss, server_binary, wait_listening, ChildGuard, TempDir};
use crate::report::{Row, Verdict};
use crate::stats::{duration, median_f64, megabytes, times};

const CASES: [usize; 3] = [1, 100, 1000];
const SMOKE_CASES: [usize; 2] = [1, 100];

/// Processes started per case.
const REPEATS: Counts = Counts { full: 3, smoke: 1 };

/// The runners' measurement period: the default of the config file.
const MEASURE_PERIOD_MS: u64 = 1000;

/// How long the server runs, all runners `Running`, before its peak RSS is read.
const SETTLE: Counts = Counts {
    full: 2_000,
    smoke: 200,
};

/// Targets of figure 4, for 1000 runners.
const TARGET_RUNNERS: usize = 1000;
const TARGET_TIME: Duration = Duration::from_secs(3);
const TARGET_RSS: u64 = 200_000_000;

/// Longest wait for a start, and for the shutdown after SIGTERM.
const START_TIMEOUT: Duration = Duration::from_secs(60);
const STOP_TIMEOUT: Duration = Duration::from_secs(15);

/// How long a late wildcard subscriber collects retained messages.
const RETAINED_WAIT: Duration = Duration::from_millis(1_500);

/// Retained topics per runner once it has measured, at least: status, state,
/// voltage, current, measure/voltage, measure/current.
const RETAINED_PER_RUNNER: usize = 6;

/// One start of the server.
#[derive(Debug, Clone, Copy)]
struct Start {
    broker_up: Duration,
    all_running: Duration,
    peak_rss: u64,
    /// Retained messages a late `power-supply/#` subscriber received.
    wildcard_retained: Option<usize>,
    stop_time: Duration,
}

pub async fn run(ctx: &mut Context) -> anyhow::Result<Vec<Row>> {
    let binary = server_binary(ctx.server_bin.clone()).await?;
    let cases: &[usize] = if ctx.smoke { &SMOKE_CASES } else { &CASES };
    let mut rows = Vec::new();
    let mut baseline: Option<(f64, f64)> = None;
    for &runners in cases {
        let mut starts = Vec::new();
        for repeat in 0..REPEATS.get(ctx.smoke) {
            let start = start_once(&binary, runners, repeat == 0, ctx.smoke)
                .await
                .with_context(|| format!("{runners} runners, start {}", repeat + 1))?;
            starts.push(start);
        }
        let times_s: Vec<f64> = starts.iter().map(|s| s.all_running.as_secs_f64()).collect();
        let rss: Vec<f64> = starts.iter().map(|s| s.peak_rss as f64).collect();
        let broker: Vec<f64> = starts.iter().map(|s| s.broker_up.as_secs_f64()).collect();
        let stop: Vec<f64> = starts.iter().map(|s| s.stop_time.as_secs_f64()).collect();
        let (time, peak) = (median_f64(&times_s), median_f64(&rss));
        let max_time = times_s.iter().copied().fold(0.0, f64::max);
        let max_rss = rss.iter().copied().fold(0.0, f64::max);
        let measured = format!(
            "all Running {} (max {}); peak RSS {} (max {}); broker up {}; SIGTERM → exit {}",
            duration(Duration::from_secs_f64(time)),
            duration(Duration::from_secs_f64(max_time)),
            megabytes(peak as u64),
            megabytes(max_rss as u64),
            duration(Duration::from_secs_f64(median_f64(&broker))),
            duration(Duration::from_secs_f64(median_f64(&stop))),
        );
        let case = format!(
            "{runners} runner{}, measure_period_ms {MEASURE_PERIOD_MS} (median of {})",
            if runners == 1 { "" } else { "s" },
            starts.len()
        );
        let mut row = match baseline {
            None => {
                baseline = Some((time, peak));
                Row::new("4 scale", format!("{case} (baseline)"), measured)
            }
            Some((base_time, base_rss)) => {
                let per_runner = (peak - base_rss) / (runners as f64 - 1.0);
                Row::new("4 scale", case, measured).baseline(
                    format!(
                        "{}, {}",
                        duration(Duration::from_secs_f64(base_time)),
                        megabytes(base_rss as u64)
                    ),
                    format!(
                        "time {} · RSS {} (+{:.1} kB/runner)",
                        times(time / base_time),
                        times(peak / base_rss),
                        per_runner / 1e3
                    ),
                )
            }
        };
        if runners == TARGET_RUNNERS {
            row = row.target(
                format!(
                    "≤ {} and < {}",
                    duration(TARGET_TIME),
                    megabytes(TARGET_RSS)
                ),
                Verdict::from_met(
                    time <= TARGET_TIME.as_secs_f64() && max_rss < TARGET_RSS as f64,
                    ctx.smoke,
                ),
            );
        }
        rows.push(row);
        if let Some(received) = starts[0].wildcard_retained {
            rows.push(Row::new(
                "4 scale",
                format!(
                    "{runners} runner{}: a client subscribing to power-supply/# once all run",
                    if runners == 1 { "" } else { "s" }
                ),
                format!(
                    "received {received} retained messages (expected ≥ {})",
                    runners * RETAINED_PER_RUNNER
                ),
            ));
        }
    }
    Ok(rows)
}

/// Starts the server with `runners` emulator runners and measures it.
async fn start_once(
    binary: &Path,
    runners: usize,
    check_wildcard: bool,
    smoke: bool,
) -> anyhow::Result<Start> {
    let dir = TempDir::new("scale")?;
    let port = probe_free_port().context("probing a free port")?;
    let names: Vec<String> = (0..runners).map(|i| format!("r{i:04}")).collect();
    let entries: Vec<String> = names
        .iter()
        .map(|n| emulator_runner(n, MEASURE_PERIOD_MS))
        .collect();
    let config = dir.path().join("pza-power-supply.json5");
    std::fs::write(&config, config_text(Broker::Embedded(port), &entries))
        .with_context(|| format!("writing {}", config.display()))?;
    let log_path = dir.path().join("server.log");
    let log = std::fs::File::create(&log_path)
        .with_context(|| format!("creating {}", log_path.display()))?;

    let started = Instant::now();
    let mut child = ChildGuard::spawn(
        "the server",
        Command::new(binary)
            .arg("run")
            .arg("--config")
            .arg(&config)
            .args(["--no-mcp", "--no-tui"])
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log),
    )?;
    let result = measure_running(&mut child, port, &names, started, check_wildcard, smoke).await;
    let result = match result {
        Ok(mut start) => match child.terminate(STOP_TIMEOUT).await {
            Ok((status, stop_time)) if status.success() => {
                start.stop_time = stop_time;
                Ok(start)
            }
            Ok((status, _)) => Err(anyhow::anyhow!(
                "the server exited with {status} after SIGTERM"
            )),
            Err(e) => Err(e),
        },
        Err(e) => Err(e),
    };
    result.map_err(|e| e.context(format!("server log: {}", log_tail(&log_path))))
}

async fn measure_running(
    child: &mut ChildGuard,
    port: u16,
    names: &[String],
    started: Instant,
    check_wildcard: bool,
    smoke: bool,
) -> anyhow::Result<Start> {
    wait_listening(child, port, START_TIMEOUT).await?;
    let broker_up = started.elapsed();
    let mut watcher = BenchClient::connect(port, "pza-bench-scale-watch").await?;
    let topics: Vec<String> = names.iter().map(|n| status_topic(n)).collect();
    watcher.subscribe(&topics).await?;
    let remaining = START_TIMEOUT.saturating_sub(started.elapsed());
    let at = wait_all_status(&mut watcher, names, "Running", remaining).await?;
    let all_running = at.saturating_duration_since(started);
    tokio::time::sleep(Duration::from_millis(SETTLE.get(smoke) as u64)).await;
    if let Some(status) = child.try_wait()? {
        bail!("the server exited on its own ({status})");
    }
    let wildcard_retained = if check_wildcard {
        Some(late_wildcard_subscriber(port).await?)
    } else {
        None
    };
    Ok(Start {
        broker_up,
        all_running,
        peak_rss: peak_rss(child.id())?,
        wildcard_retained,
        stop_time: Duration::ZERO,
    })
}

/// How many retained messages a client subscribing to `power-supply/#`
/// receives once every runner is `Running`. rumqttd 0.20 hands a new
/// subscription at most as many retained messages as the connection has
/// free in-flight slots (a constant 100, `MAX_INFLIGHT` in its
/// `router/iobufs.rs`) and drops the rest, so a wildcard subscriber does not
/// see the present state of every runner.
async fn late_wildcard_subscriber(port: u16) -> anyhow::Result<usize> {
    let mut client = BenchClient::connect(port, "pza-bench-scale-late").await?;
    client.subscribe(&["power-supply/#".to_string()]).await?;
    let deadline = Instant::now() + RETAINED_WAIT;
    let mut received = std::collections::HashSet::new();
    while let Ok(m) = client.recv_until(deadline).await {
        if m.retain {
            received.insert(m.topic);
        }
    }
    Ok(received.len())
}

/// The last lines of the server's log, for an error message.
fn log_tail(path: &Path) -> String {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let lines: Vec<&str> = text.lines().collect();
            let tail = lines[lines.len().saturating_sub(5)..].join(" | ");
            if tail.is_empty() {
                "(empty)".into()
            } else {
                tail
            }
        }
        Err(e) => format!("(unreadable: {e})"),
    }
}
