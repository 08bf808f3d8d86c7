//! Figure 2: sustained voltage commands per second at QoS 1 over 1, 10 and
//! 100 runners, every reply counted by its `pza_id`. The baseline is the
//! same load on as many bare echoes through the same broker, measured in
//! turn with the runners (echo, runners, echo, runners, ...).
//!
//! The load is a closed loop: every runner (or echo) has `WINDOW` commands
//! in flight, and each reply releases the next command to the same runner,
//! until each has received its quota. Commands/s is the replies counted over
//! the time from the first command to the last reply.

use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use pza_power_supply::drivers::DriverFactory;
use pza_toolkit::mqtt::probe_free_port;

use super::{Budget, Context, Counts};
use crate::client::BenchClient;
use crate::echo::{echo_in, echo_out, Echo};
use crate::inproc::{emulator_runner, status_topic, wait_all_status, Broker, InProcessServer};
use crate::report::{Row, Verdict};
use crate::stats::{median_f64, rate, thousands, times};

/// The numbers of runners measured.
const RUNNERS: [usize; 3] = [1, 10, 100];

/// Commands per measurement (rounded down to a multiple of the runners).
const COMMANDS: Counts = Counts {
    full: 200_000,
    smoke: 300,
};

/// Commands per runner in the warm-up before the first measurement.
const WARMUP_PER_LANE: Counts = Counts {
    full: 200,
    smoke: 2,
};

/// Measurements of each side, taken in turn.
const REPEATS: Counts = Counts { full: 3, smoke: 1 };

/// Commands in flight per runner (or echo).
const WINDOW: usize = 16;

/// Most load-generating connections; runners are shared out between them.
const MAX_LOADERS: usize = 4;

/// Target of figure 2, for 10 runners.
const TARGET_RUNNERS: usize = 10;
const TARGET_RATE: f64 = 20_000.0;

/// Time after which a measurement sends no new command (it then waits for
/// the replies still due): fewer commands rather than a run of hours.
const SEND_BUDGET: Budget = Budget::secs(10, 2);

/// Longest wait for one measurement; what is missing then is counted lost.
const DRIVE_TIMEOUT: Budget = Budget::secs(60, 20);

const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Where the commands of one runner (or echo) go, and where replies come.
#[derive(Debug, Clone)]
struct Lane {
    request: String,
    reply: String,
    error: Option<String>,
}

impl Lane {
    fn runner(name: &str) -> Lane {
        Lane {
            request: format!("power-supply/{name}/voltage/cmd"),
            reply: format!("power-supply/{name}/voltage"),
            error: Some(format!("power-supply/{name}/error")),
        }
    }

    fn echo(index: usize) -> Lane {
        Lane {
            request: echo_in(index),
            reply: echo_out(index),
            error: None,
        }
    }
}

/// What one measurement counted.
#[derive(Debug, Clone, Copy, Default)]
struct Outcome {
    commands: usize,
    ok: usize,
    errors: usize,
    duplicates: usize,
    elapsed: Duration,
}

impl Outcome {
    fn lost(&self) -> usize {
        self.commands.saturating_sub(self.ok + self.errors)
    }

    fn per_second(&self) -> f64 {
        if self.elapsed.is_zero() {
            0.0
        } else {
            self.ok as f64 / self.elapsed.as_secs_f64()
        }
    }

    fn add(&mut self, other: &Outcome) {
        self.commands += other.commands;
        self.ok += other.ok;
        self.errors += other.errors;
        self.duplicates += other.duplicates;
    }
}

pub async fn run(ctx: &mut Context) -> anyhow::Result<Vec<Row>> {
    let mut rows = Vec::new();
    for runners in RUNNERS {
        rows.extend(measure(runners, ctx.smoke).await?);
    }
    Ok(rows)
}

async fn measure(runners: usize, smoke: bool) -> anyhow::Result<Vec<Row>> {
    let port = probe_free_port().context("probing a free port")?;
    let names: Vec<String> = (0..runners).map(|i| format!("r{i:03}")).collect();
    let entries: Vec<String> = names.iter().map(|n| emulator_runner(n, 0)).collect();
    let server = InProcessServer::start(
        Broker::Embedded(port),
        &entries,
        DriverFactory::with_builtin_models(),
    )
    .await?;
    let result = measure_on(port, &names, smoke).await;
    server.stop().await?;
    let (echo, commands) = result?;

    let echo_rates: Vec<f64> = echo.iter().map(Outcome::per_second).collect();
    let command_rates: Vec<f64> = commands.iter().map(Outcome::per_second).collect();
    let (echo_rate, command_rate) = (median_f64(&echo_rates), median_f64(&command_rates));
    let mut echo_total = Outcome::default();
    echo.iter().for_each(|o| echo_total.add(o));
    let mut total = Outcome::default();
    commands.iter().for_each(|o| total.add(o));
    for (what, o) in [("echo", &echo_total), ("commands", &total)] {
        if smoke && (o.lost() > 0 || o.errors > 0 || o.duplicates > 0) {
            bail!(
                "{runners} runners, {what}: {} lost, {} rejected, {} duplicated of {}",
                o.lost(),
                o.errors,
                o.duplicates,
                o.commands
            );
        }
    }
    let none_lost = total.lost() == 0 && total.errors == 0;
    let spread = |rates: &[f64]| {
        let min = rates.iter().copied().fold(f64::INFINITY, f64::min);
        format!("{} (min {})", rate(median_f64(rates)), rate(min))
    };
    let figure = "2 throughput";
    let case = format!(
        "{runners} runner{}, {WINDOW} in flight each, {} runs",
        if runners == 1 { "" } else { "s" },
        commands.len()
    );
    let lost_text = format!(
        "{} commands: lost {}, rejected {}, duplicated {}",
        thousands(total.commands as u64),
        total.lost(),
        total.errors,
        total.duplicates
    );
    let (target, met) = if runners == TARGET_RUNNERS {
        (
            format!("≥ {}/s, none lost", thousands(TARGET_RATE as u64)),
            none_lost && command_rate >= TARGET_RATE,
        )
    } else {
        ("none lost".to_string(), none_lost)
    };
    Ok(vec![
        Row::new(
            figure,
            format!("{case}: MQTT echo (baseline)"),
            format!(
                "{}; {} messages: lost {}",
                spread(&echo_rates),
                thousands(echo_total.commands as u64),
                echo_total.lost()
            ),
        ),
        Row::new(
            figure,
            format!("{case}: voltage commands"),
            format!("{}; {lost_text}", spread(&command_rates)),
        )
        .baseline(rate(echo_rate), times(command_rate / echo_rate))
        .target(target, Verdict::from_met(met, smoke)),
    ])
}

/// Measures echoes and runners in turn; returns the outcomes of each side.
async fn measure_on(
    port: u16,
    names: &[String],
    smoke: bool,
) -> anyhow::Result<(Vec<Outcome>, Vec<Outcome>)> {
    let mut watcher = BenchClient::connect(port, "pza-bench-tp-watch").await?;
    let topics: Vec<String> = names.iter().map(|n| status_topic(n)).collect();
    watcher.subscribe(&topics).await?;
    wait_all_status(&mut watcher, names, "Running", READY_TIMEOUT).await?;
    let mut echoes = Vec::with_capacity(names.len());
    for i in 0..names.len() {
        echoes.push(Echo::start(port, i).await?);
    }
    let echo_lanes: Vec<Lane> = (0..names.len()).map(Lane::echo).collect();
    let runner_lanes: Vec<Lane> = names.iter().map(|n| Lane::runner(n)).collect();
    let quota = (COMMANDS.get(smoke) / names.len()).max(1);
    let limits = Limits {
        send: SEND_BUDGET.get(smoke),
        timeout: DRIVE_TIMEOUT.get(smoke),
    };
    let warmup = WARMUP_PER_LANE.get(smoke);
    drive(port, &echo_lanes, warmup, "we-", limits).await?;
    drive(port, &runner_lanes, warmup, "wr-", limits).await?;
    let mut echo = Vec::new();
    let mut commands = Vec::new();
    for i in 0..REPEATS.get(smoke) {
        echo.push(drive(port, &echo_lanes, quota, &format!("e{i}-"), limits).await?);
        commands.push(drive(port, &runner_lanes, quota, &format!("c{i}-"), limits).await?);
    }
    Ok((echo, commands))
}

/// How long a measurement may send, and wait.
#[derive(Debug, Clone, Copy)]
struct Limits {
    send: Duration,
    timeout: Duration,
}

/// Sends `quota` commands to every lane, `WINDOW` at a time per lane, from up
/// to `MAX_LOADERS` connections at once, and counts the replies.
async fn drive(
    port: u16,
    lanes: &[Lane],
    quota: usize,
    tag: &str,
    limits: Limits,
) -> anyhow::Result<Outcome> {
    let loaders = lanes.len().clamp(1, MAX_LOADERS);
    let mut groups: Vec<Vec<Lane>> = vec![Vec::new(); loaders];
    for (i, lane) in lanes.iter().enumerate() {
        groups[i % loaders].push(lane.clone());
    }
    let mut connected = Vec::with_capacity(loaders);
    for (i, group) in groups.into_iter().enumerate() {
        connected.push(Loader::connect(port, i, group, tag).await?);
    }
    let now = Instant::now();
    let (send_until, deadline) = (now + limits.send, now + limits.timeout);
    let tasks: Vec<_> = connected
        .into_iter()
        .map(|loader| tokio::spawn(loader.run(quota, send_until, deadline)))
        .collect();
    let mut total = Outcome::default();
    let mut first: Option<Instant> = None;
    let mut last: Option<Instant> = None;
    for task in tasks {
        let (outcome, started, ended) = task.await.context("a load generator failed")??;
        total.add(&outcome);
        first = Some(first.map_or(started, |f| f.min(started)));
        last = Some(last.map_or(ended, |l| l.max(ended)));
    }
    if let (Some(first), Some(last)) = (first, last) {
        total.elapsed = last.saturating_duration_since(first);
    }
    Ok(total)
}

/// One load-generating connection and the lanes it drives.
struct Loader {
    client: BenchClient,
    lanes: Vec<Lane>,
    tag: String,
}

impl Loader {
    async fn connect(
        port: u16,
        index: usize,
        lanes: Vec<Lane>,
        tag: &str,
    ) -> anyhow::Result<Loader> {
        let inflight = u16::try_from(lanes.len() * WINDOW)
            .unwrap_or(u16::MAX)
            .max(100);
        let id = format!("pza-bench-load-{tag}{index}-{}", std::process::id());
        let mut client = BenchClient::connect_with(port, &id, Some(inflight)).await?;
        let mut filters = Vec::new();
        for lane in &lanes {
            filters.push(lane.reply.clone());
            filters.extend(lane.error.clone());
        }
        client.subscribe(&filters).await?;
        Ok(Loader {
            client,
            lanes,
            tag: tag.to_string(),
        })
    }

    /// Drives the lanes until every command is answered (sending none after
    /// `send_until`) or `deadline`; returns the counts, the first send and
    /// the last reply.
    async fn run(
        mut self,
        quota: usize,
        send_until: Instant,
        deadline: Instant,
    ) -> anyhow::Result<(Outcome, Instant, Instant)> {
        let total = self.lanes.len() * quota;
        // Command `seq` goes to lane `seq / quota`.
        let mut answered = vec![false; total];
        let mut next = vec![0usize; self.lanes.len()];
        let mut outcome = Outcome::default();
        let started = Instant::now();
        let mut last = started;
        for lane in 0..self.lanes.len() {
            for _ in 0..WINDOW.min(quota) {
                self.send(lane, quota, &mut next).await?;
            }
        }
        let mut done = 0;
        loop {
            let sent: usize = next.iter().sum();
            if done == sent && (sent == total || Instant::now() >= send_until) {
                break;
            }
            let Ok(m) = self.client.recv_until(deadline).await else {
                // Out of time: what is missing is counted lost.
                break;
            };
            let Some(seq) = m
                .field("pza_id")
                .and_then(|id| id.strip_prefix(self.tag.as_str())?.parse::<usize>().ok())
                .filter(|seq| *seq < total)
            else {
                continue;
            };
            if answered[seq] {
                outcome.duplicates += 1;
                continue;
            }
            answered[seq] = true;
            done += 1;
            last = m.at;
            let lane = seq / quota;
            if Some(&m.topic) == self.lanes[lane].error.as_ref() {
                outcome.errors += 1;
            } else {
                outcome.ok += 1;
            }
            if next[lane] < quota && Instant::now() < send_until {
                self.send(lane, quota, &mut next).await?;
            }
        }
        outcome.commands = next.iter().sum();
        Ok((outcome, started, last))
    }

    async fn send(&self, lane: usize, quota: usize, next: &mut [usize]) -> anyhow::Result<()> {
        let seq = lane * quota + next[lane];
        next[lane] += 1;
        let voltage = if seq % 2 == 0 { "5.00" } else { "6.00" };
        let payload = format!(
            "{{\"pza_id\":\"{}{seq}\",\"voltage\":\"{voltage}\"}}",
            self.tag
        );
        self.client
            .publish(&self.lanes[lane].request, payload.into_bytes())
            .await
    }
}
