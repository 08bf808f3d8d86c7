//! Figure 4: the real server binary, started with 1, 100 and 1000 emulator
//! runners: the time from process start until every runner is `Running`
//! (as seen by a client), and the peak resident set size (`VmHWM`). The
//! 1-runner case is the baseline.
//!
//! The runners keep the default `measure_period_ms` of 1000, so the peak RSS
//! includes the steady state of periodic measurements: it is read after
//! `SETTLE` more time once all are `Running`. The watching client connects as
//! soon as the broker accepts, and subscribes once to `power-supply/+/status`.
//!
//! Then late subscribers check the retained state, as a verdict: one to
//! `power-supply/+/status` and one to `power-supply/#`, at QoS 0 and at
//! QoS 1, must each receive every runner's retained topics
//! ([`late_subscribers`]). rumqttd 0.20 as published handed a new
//! subscription at most 100 of them at QoS 1.

use std::collections::HashSet;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rumqttc::QoS;

use super::{Context, Counts};
use crate::client::BenchClient;
use crate::inproc::{emulator_runner, wait_all_status};
use crate::process::{peak_rss, server_binary, ServerProcess};
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

/// Targets of figure 4, for 1000 runners (issue 16): all `Running` in under
/// `TARGET_TIME` (median of the starts), a peak RSS under `TARGET_RSS` (in
/// every start).
const TARGET_RUNNERS: usize = 1000;
const TARGET_TIME: Duration = Duration::from_secs(1);
const TARGET_RSS: u64 = 100_000_000;

/// Longest wait for a start, and for the shutdown after SIGTERM.
const START_TIMEOUT: Duration = Duration::from_secs(60);
const STOP_TIMEOUT: Duration = Duration::from_secs(15);

/// How long a late subscriber waits for one more retained message before it
/// gives up on those still missing. Only reached when some are, so it can be
/// long: on a loaded machine the broker's router thread may pause that long.
const RETAINED_QUIET: Duration = Duration::from_secs(5);

/// The retained topics of every runner once it has measured (the first
/// measurement is taken as it starts), below `power-supply/<runner>/`.
const RETAINED_LEAVES: [&str; 7] = [
    "status",
    "state",
    "voltage",
    "current",
    "owner",
    "measure/voltage",
    "measure/current",
];

/// Every runner's status topic, in one filter.
const STATUS_FILTER: &str = "power-supply/+/status";

/// The late subscriptions checked, each by a new client: filter and QoS.
const LATE_SUBSCRIPTIONS: [(&str, QoS); 4] = [
    (STATUS_FILTER, QoS::AtMostOnce),
    (STATUS_FILTER, QoS::AtLeastOnce),
    ("power-supply/#", QoS::AtMostOnce),
    ("power-supply/#", QoS::AtLeastOnce),
];

/// What one late subscription received of what it should have.
#[derive(Debug, Clone)]
struct LateCount {
    filter: &'static str,
    qos: QoS,
    received: usize,
    expected: usize,
}

/// One start of the server.
#[derive(Debug, Clone)]
struct Start {
    broker_up: Duration,
    all_running: Duration,
    peak_rss: u64,
    /// What the late subscribers received, on the first start of a case.
    late: Option<Vec<LateCount>>,
    stop_time: Duration,
}

pub async fn run(ctx: &mut Context) -> anyhow::Result<Vec<Row>> {
    let binary = server_binary(ctx.server_bin.clone()).await?;
    // Built (under cargo run) once for the figures that spawn it.
    ctx.server_bin = Some(binary.clone());
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
                    "< {} and < {}",
                    duration(TARGET_TIME),
                    megabytes(TARGET_RSS)
                ),
                Verdict::from_met(
                    time < TARGET_TIME.as_secs_f64() && max_rss < TARGET_RSS as f64,
                    ctx.smoke,
                ),
            );
        }
        rows.push(row);
        if let Some(late) = &starts[0].late {
            rows.push(late_row(runners, late));
        }
    }
    Ok(rows)
}

/// The verdict row of the late subscribers of one case: met only if each
/// received every runner's retained topics. A correctness check, so it
/// holds in a smoke run too.
fn late_row(runners: usize, late: &[LateCount]) -> Row {
    let measured = late
        .iter()
        .map(|c| {
            let qos = match c.qos {
                QoS::AtMostOnce => 0,
                QoS::AtLeastOnce => 1,
                QoS::ExactlyOnce => 2,
            };
            format!("{} QoS {qos}: {}/{}", c.filter, c.received, c.expected)
        })
        .collect::<Vec<_>>()
        .join("; ");
    let met = late.iter().all(|c| c.received == c.expected);
    Row::new(
        "4 scale",
        format!(
            "{runners} runner{}: late subscribers, retained topics received",
            if runners == 1 { "" } else { "s" }
        ),
        measured,
    )
    .target(
        format!("all ({} per runner under #)", RETAINED_LEAVES.len()),
        if met { Verdict::Met } else { Verdict::Missed },
    )
}

/// Starts the server with `runners` emulator runners and measures it.
async fn start_once(
    binary: &Path,
    runners: usize,
    check_late: bool,
    smoke: bool,
) -> anyhow::Result<Start> {
    let names: Vec<String> = (0..runners).map(|i| format!("r{i:04}")).collect();
    let entries: Vec<String> = names
        .iter()
        .map(|n| emulator_runner(n, MEASURE_PERIOD_MS))
        .collect();
    let mut server = ServerProcess::spawn(binary, "scale", &entries)?;
    let mut start = measure_running(&mut server, &names, check_late, smoke)
        .await
        .map_err(|e| server.annotate(e))?;
    start.stop_time = server.stop(STOP_TIMEOUT).await?;
    Ok(start)
}

async fn measure_running(
    server: &mut ServerProcess,
    names: &[String],
    check_late: bool,
    smoke: bool,
) -> anyhow::Result<Start> {
    let started = server.started;
    server.wait_listening(START_TIMEOUT).await?;
    let broker_up = started.elapsed();
    let mut watcher = BenchClient::connect(server.port, "pza-bench-scale-watch").await?;
    // One wildcard filter, as a real client would use: one exact filter per
    // runner would cost the broker's router O(filters × topics) on the
    // harness's behalf (docs/benchmarks.md, "Method").
    watcher.subscribe(&[STATUS_FILTER.to_string()]).await?;
    let remaining = START_TIMEOUT.saturating_sub(started.elapsed());
    let at = wait_all_status(&mut watcher, names, "Running", remaining).await?;
    let all_running = at.saturating_duration_since(started);
    tokio::time::sleep(Duration::from_millis(SETTLE.get(smoke) as u64)).await;
    server.check_alive()?;
    // Read before the late subscribers add their own buffers.
    let peak_rss = peak_rss(server.pid())?;
    let late = if check_late {
        Some(late_subscribers(server.port, names).await?)
    } else {
        None
    };
    Ok(Start {
        broker_up,
        all_running,
        peak_rss,
        late,
        stop_time: Duration::ZERO,
    })
}

/// Subscribes, once every runner is `Running`, with each of
/// [`LATE_SUBSCRIPTIONS`] in turn, and counts the retained topics received
/// among those expected of `names`.
async fn late_subscribers(port: u16, names: &[String]) -> anyhow::Result<Vec<LateCount>> {
    let mut counts = Vec::new();
    for (n, (filter, qos)) in LATE_SUBSCRIPTIONS.into_iter().enumerate() {
        let leaves: &[&str] = if filter.ends_with("/status") {
            &["status"]
        } else {
            &RETAINED_LEAVES
        };
        let expected: HashSet<String> = names
            .iter()
            .flat_map(|name| {
                leaves
                    .iter()
                    .map(move |leaf| format!("power-supply/{name}/{leaf}"))
            })
            .collect();
        let mut client = BenchClient::connect(port, &format!("pza-bench-scale-late-{n}")).await?;
        client.subscribe_at(&[filter.to_string()], qos).await?;
        let mut received = HashSet::new();
        while received.len() < expected.len() {
            match client.recv_until(Instant::now() + RETAINED_QUIET).await {
                Ok(m) if m.retain && expected.contains(&m.topic) => {
                    received.insert(m.topic);
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
        counts.push(LateCount {
            filter,
            qos,
            received: received.len(),
            expected: expected.len(),
        });
    }
    Ok(counts)
}
