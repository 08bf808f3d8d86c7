//! Figure 5: what a crash-looping runner costs its neighbours. A healthy
//! runner's command round trip while another runner of the same server
//! crash-loops (it panics on a command, is restarted at once, and is sent
//! the fatal command again as soon as it is `Running`), against the same
//! round trip with no crash loop; and the server process's CPU per crash
//! against its CPU per sequential command.
//!
//! The server is the binary, a process of its own ([`ServerProcess`]), so
//! that the CPU read from `/proc/<pid>/task/*/schedstat` is the server's
//! (its broker included) and none of the harness's. Four kinds of block
//! alternate, their order rotating from one round to the next:
//! - quiet: round trips to the healthy runner alone;
//! - loaded: the same round trips, with the crash loop running;
//! - busy neighbour: the same round trips, while a third runner is sent
//!   commands one at a time, each as soon as the previous one is answered
//!   (a reference: what any busy neighbour costs, crash or not);
//! - crash loop alone: no round trips.
//!
//! The p99 of the loaded blocks is compared with the quiet ones', and so is
//! the busy neighbour blocks' (a reference, without a target). CPU per
//! command is the server's CPU over the quiet blocks divided by the round
//! trips answered in them, CPU per crash its CPU over the crash-loop-alone
//! blocks divided by the crashes in them: neither includes the other's work.
//! Every crash is checked to go through `Panicking → Restarting →
//! Initializing → Running` with `restarts` + 1, in a smoke run too.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

use super::{ratio_text, Budget, Context, Counts};
use crate::client::BenchClient;
use crate::inproc::{
    crashing_runner, emulator_runner, status_topic, wait_all_status, CRASH_STATUSES, CRASH_VOLTAGE,
};
use crate::pinger::{Pinger, Target};
use crate::process::{server_binary, thread_cpu_times, ServerProcess, ThreadTime};
use crate::report::{Row, Verdict};
use crate::stats::{duration, rate, thousands, times, Summary};

/// Rounds (one block of each kind per round), round trips per quiet or
/// loaded block, crashes per crash-loop-alone block.
const ROUNDS: Counts = Counts { full: 10, smoke: 2 };
const BLOCK_SAMPLES: Counts = Counts {
    full: 500,
    smoke: 20,
};
const BLOCK_CRASHES: Counts = Counts {
    full: 500,
    smoke: 5,
};
const WARMUP: Counts = Counts {
    full: 200,
    smoke: 10,
};
const WARMUP_CRASHES: Counts = Counts { full: 50, smoke: 2 };
const BLOCK_BUDGET: Budget = Budget::secs(4, 1);

/// A pause before each block, counted in none: the server finishes what the
/// previous block left it (the publishes that follow a `Running`, the last
/// acknowledgements) before the next block's CPU reading starts.
const BETWEEN_BLOCKS: Duration = Duration::from_millis(20);

/// How long the server's idle CPU is measured, once, before the blocks.
const IDLE: Duration = Duration::from_millis(500);

/// Targets of figure 5 (issue 16): the healthy runner's p99 during the
/// crash loop under this multiple of its quiet p99, and the server's CPU per
/// crash under this multiple of its CPU per sequential command.
const TARGET_P99_RATIO: f64 = 1.2;
const TARGET_CPU_RATIO: f64 = 2.0;

const HEALTHY: &str = "healthy";
const CRASHING: &str = "crashy";
const BUSY: &str = "busy";

/// Longest wait for the server to accept connections and its runners to be
/// `Running`, for one step of a crash, and for the exit after SIGTERM.
const START_TIMEOUT: Duration = Duration::from_secs(30);
const STEP_TIMEOUT: Duration = Duration::from_secs(10);
const STOP_TIMEOUT: Duration = Duration::from_secs(15);

/// rumqttd names its router thread `router-<id>`.
const ROUTER_THREAD: &str = "router-";

pub async fn run(ctx: &mut Context) -> anyhow::Result<Vec<Row>> {
    let binary = server_binary(ctx.server_bin.clone()).await?;
    ctx.server_bin = Some(binary.clone());
    let mut server = ServerProcess::spawn(
        &binary,
        "isolation",
        &[
            emulator_runner(HEALTHY, 0),
            crashing_runner(CRASHING),
            emulator_runner(BUSY, 0),
        ],
    )?;
    let m = measure_on(&mut server, ctx.smoke)
        .await
        .map_err(|e| server.annotate(e))?;
    server.stop(STOP_TIMEOUT).await?;

    let figure = "5 isolation";
    let (_, r99) = m.loaded.ratio_to(&m.quiet);
    let per_command = m.quiet_cpu.per(m.quiet.count);
    let per_crash = m.alone_cpu.per(m.alone_crashes);
    let cpu_ratio = per_crash.all.as_secs_f64() / per_command.all.as_secs_f64().max(1e-12);
    let ended = m.idle_cpu.ended
        + m.quiet_cpu.ended
        + m.loaded_cpu.ended
        + m.busy_cpu.ended
        + m.alone_cpu.ended;
    let ended = if ended == 0 {
        String::new()
    } else {
        format!("; {ended} server threads ended during blocks (their last CPU is not counted)")
    };
    Ok(vec![
        Row::new(
            figure,
            format!(
                "healthy runner, no crash loop (baseline, n={})",
                m.quiet.count
            ),
            format!(
                "{}; server {:.2} cores (idle {:.3})",
                m.quiet.text(),
                m.quiet_cpu.cores(),
                m.idle_cpu.cores()
            ),
        ),
        Row::new(
            figure,
            format!(
                "healthy runner, other runner crash-looping (n={}; {} crashes, {})",
                m.loaded.count,
                thousands(m.loaded_crashes as u64),
                rate(m.loaded_crashes as f64 / m.loaded_cpu.wall.as_secs_f64().max(1e-9))
            ),
            format!(
                "{}; server {:.2} cores",
                m.loaded.text(),
                m.loaded_cpu.cores()
            ),
        )
        .baseline(m.quiet.text(), ratio_text(&m.loaded, &m.quiet))
        .target(
            format!("p99 < {} quiet", times(TARGET_P99_RATIO)),
            Verdict::from_met(r99 < TARGET_P99_RATIO, ctx.smoke),
        ),
        Row::new(
            figure,
            format!(
                "healthy runner, other runner busy with commands (reference, n={}; {} commands, {})",
                m.busy.count,
                thousands(m.busy_commands as u64),
                rate(m.busy_commands as f64 / m.busy_cpu.wall.as_secs_f64().max(1e-9))
            ),
            format!("{}; server {:.2} cores", m.busy.text(), m.busy_cpu.cores()),
        )
        .baseline(m.quiet.text(), ratio_text(&m.busy, &m.quiet)),
        Row::new(
            figure,
            format!(
                "server CPU: per crash, crash loop alone ({} crashes, {}); per command, quiet blocks ({} commands)",
                thousands(m.alone_crashes as u64),
                rate(m.alone_crashes as f64 / m.alone_cpu.wall.as_secs_f64().max(1e-9)),
                thousands(m.quiet.count as u64),
            ),
            format!(
                "CPU per crash {} ({} in the broker's router thread) · per command {} ({} in the router) · ratio {}; server {:.2} cores{ended}",
                duration(per_crash.all),
                duration(per_crash.router),
                duration(per_command.all),
                duration(per_command.router),
                times(cpu_ratio),
                m.alone_cpu.cores(),
            ),
        )
        .baseline(
            format!("per command {}", duration(per_command.all)),
            times(cpu_ratio),
        )
        .target(
            format!("per crash < {} per command", times(TARGET_CPU_RATIO)),
            Verdict::from_met(cpu_ratio < TARGET_CPU_RATIO, ctx.smoke),
        ),
    ])
}

struct Measured {
    quiet: Summary,
    loaded: Summary,
    busy: Summary,
    loaded_crashes: usize,
    busy_commands: usize,
    alone_crashes: usize,
    idle_cpu: Cpu,
    quiet_cpu: Cpu,
    loaded_cpu: Cpu,
    busy_cpu: Cpu,
    alone_cpu: Cpu,
}

/// The kinds of block, in the order of the first round.
#[derive(Debug, Clone, Copy)]
enum Block {
    Quiet,
    Loaded,
    BusyNeighbour,
    CrashLoopAlone,
}

const BLOCK_ORDER: [Block; 4] = [
    Block::Quiet,
    Block::Loaded,
    Block::BusyNeighbour,
    Block::CrashLoopAlone,
];

/// The server process's CPU time over some blocks, and their wall time.
#[derive(Debug, Clone, Copy, Default)]
struct Cpu {
    wall: Duration,
    all: Duration,
    /// rumqttd's router thread.
    router: Duration,
    /// Threads seen at the start of a block and gone at its end: what they
    /// used in between is missing from `all`.
    ended: usize,
}

/// CPU time per unit of work: all threads, and the router thread.
struct PerUnit {
    all: Duration,
    router: Duration,
}

impl Cpu {
    /// Runs `block` and adds its wall time and the CPU time process `pid`
    /// used meanwhile.
    async fn add<T>(
        &mut self,
        pid: u32,
        block: impl std::future::Future<Output = anyhow::Result<T>>,
    ) -> anyhow::Result<T> {
        let before = thread_cpu_times(pid)?;
        let start = Instant::now();
        let out = block.await?;
        let after = thread_cpu_times(pid)?;
        self.wall += start.elapsed();
        for (tid, thread) in &after {
            let used = thread
                .cpu
                .saturating_sub(before.get(tid).map_or(Duration::ZERO, |t| t.cpu));
            self.all += used;
            if thread.name.starts_with(ROUTER_THREAD) {
                self.router += used;
            }
        }
        self.ended += ended_threads(&before, &after);
        Ok(out)
    }

    fn cores(&self) -> f64 {
        self.all.as_secs_f64() / self.wall.as_secs_f64().max(1e-9)
    }

    /// The CPU time per unit, over `units` units of work.
    fn per(&self, units: usize) -> PerUnit {
        let units = units.max(1) as u32;
        PerUnit {
            all: self.all / units,
            router: self.router / units,
        }
    }
}

/// How many threads of `before` are not in `after`.
fn ended_threads(before: &HashMap<u32, ThreadTime>, after: &HashMap<u32, ThreadTime>) -> usize {
    before.keys().filter(|tid| !after.contains_key(tid)).count()
}

async fn measure_on(server: &mut ServerProcess, smoke: bool) -> anyhow::Result<Measured> {
    server.wait_listening(START_TIMEOUT).await?;
    let port = server.port;
    let pid = server.pid();
    let mut watcher = BenchClient::connect(port, "pza-bench-iso-watch").await?;
    let names = [HEALTHY.to_string(), CRASHING.to_string(), BUSY.to_string()];
    watcher
        .subscribe(&[
            status_topic(HEALTHY),
            status_topic(CRASHING),
            status_topic(BUSY),
        ])
        .await?;
    wait_all_status(&mut watcher, &names, "Running", START_TIMEOUT).await?;
    drop(watcher);

    let targets = [Target::Runner(HEALTHY.into())];
    let mut pinger = Pinger::connect(port, "iso", &targets).await?;
    let mut crasher = Crasher::connect(port).await?;
    let busy_targets = [Target::Runner(BUSY.into())];
    let mut neighbour = Pinger::connect(port, "iso-busy", &busy_targets).await?;
    let budget = BLOCK_BUDGET.get(smoke);
    pinger
        .interleaved(&targets, WARMUP.get(smoke), budget)
        .await?;
    neighbour
        .interleaved(&busy_targets, WARMUP.get(smoke), budget)
        .await?;
    crasher
        .run(WARMUP_CRASHES.get(smoke), Instant::now() + budget, || false)
        .await?;

    tokio::time::sleep(BETWEEN_BLOCKS).await;
    let mut idle_cpu = Cpu::default();
    idle_cpu
        .add(pid, async {
            tokio::time::sleep(IDLE).await;
            Ok(())
        })
        .await?;

    let mut quiet = Vec::new();
    let mut loaded = Vec::new();
    let mut busy = Vec::new();
    let (mut loaded_crashes, mut alone_crashes, mut busy_commands) = (0, 0, 0);
    let mut quiet_cpu = Cpu::default();
    let mut loaded_cpu = Cpu::default();
    let mut busy_cpu = Cpu::default();
    let mut alone_cpu = Cpu::default();
    let per_block = BLOCK_SAMPLES.get(smoke);
    for round in 0..ROUNDS.get(smoke) {
        for k in 0..BLOCK_ORDER.len() {
            tokio::time::sleep(BETWEEN_BLOCKS).await;
            match BLOCK_ORDER[(round + k) % BLOCK_ORDER.len()] {
                Block::Quiet => {
                    let samples = quiet_cpu
                        .add(pid, pinger.interleaved(&targets, per_block, budget))
                        .await?;
                    quiet.extend(samples.into_iter().flatten());
                }
                Block::Loaded => {
                    // The crash loop runs until the round trips are done.
                    let done = AtomicBool::new(false);
                    let crashes =
                        crasher.run(usize::MAX, safety(budget), || done.load(Ordering::Relaxed));
                    let round_trips = pinger.interleaved(&targets, per_block, budget);
                    let (samples, crashes) = loaded_cpu
                        .add(pid, alongside(round_trips, &done, crashes))
                        .await?;
                    loaded.extend(samples.into_iter().flatten());
                    loaded_crashes += crashes;
                }
                Block::BusyNeighbour => {
                    // The neighbour's commands go on until the round trips
                    // are done.
                    let done = AtomicBool::new(false);
                    let safety = safety(budget);
                    let commands = async {
                        let mut answered = 0;
                        loop {
                            neighbour.round_trip(&busy_targets[0]).await?;
                            answered += 1;
                            if done.load(Ordering::Relaxed) || Instant::now() >= safety {
                                return anyhow::Ok(answered);
                            }
                        }
                    };
                    let round_trips = pinger.interleaved(&targets, per_block, budget);
                    let (samples, commands) = busy_cpu
                        .add(pid, alongside(round_trips, &done, commands))
                        .await?;
                    busy.extend(samples.into_iter().flatten());
                    busy_commands += commands;
                }
                Block::CrashLoopAlone => {
                    let limit = BLOCK_CRASHES.get(smoke);
                    alone_crashes += alone_cpu
                        .add(pid, crasher.run(limit, Instant::now() + budget, || false))
                        .await?;
                }
            }
        }
    }
    Ok(Measured {
        quiet: Summary::of(&quiet).context("no quiet sample")?,
        loaded: Summary::of(&loaded).context("no loaded sample")?,
        busy: Summary::of(&busy).context("no busy-neighbour sample")?,
        loaded_crashes,
        busy_commands,
        alone_crashes,
        idle_cpu,
        quiet_cpu,
        loaded_cpu,
        busy_cpu,
        alone_cpu,
    })
}

/// The end of a block whose round trips share the server with a load: the
/// round trips end within their budget, or fail within a reply's timeout,
/// so this deadline is only a safety net for the load.
fn safety(budget: Duration) -> Instant {
    Instant::now() + budget + 2 * STEP_TIMEOUT
}

/// Runs `round_trips` and `load` together, setting `done` once the round
/// trips are over, which the load watches to stop.
async fn alongside<T>(
    round_trips: impl std::future::Future<Output = anyhow::Result<Vec<Vec<Duration>>>>,
    done: &AtomicBool,
    load: impl std::future::Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<(Vec<Vec<Duration>>, T)> {
    let round_trips = async {
        let samples = round_trips.await;
        done.store(true, Ordering::Relaxed);
        samples
    };
    tokio::try_join!(round_trips, load)
}

/// Crashes the crashing runner, as fast as it restarts, over one connection
/// kept for the whole figure (a connection per block would add its own cost
/// to the server's CPU), and checks each crash's statuses.
struct Crasher {
    client: BenchClient,
    topic: String,
    command: String,
    /// Crash commands sent so far, for their `pza_id`.
    sent: usize,
    /// The runner's `restarts` when last `Running`.
    restarts: u64,
}

impl Crasher {
    /// Connects and waits for the crashing runner's retained `Running`.
    async fn connect(port: u16) -> anyhow::Result<Crasher> {
        let mut client = BenchClient::connect(port, "pza-bench-crash-loop").await?;
        let topic = status_topic(CRASHING);
        client.subscribe(std::slice::from_ref(&topic)).await?;
        let deadline = Instant::now() + STEP_TIMEOUT;
        let restarts = loop {
            let m = client
                .recv_until(deadline)
                .await
                .with_context(|| format!("no retained Running on {topic}"))?;
            let json = m.json().unwrap_or_default();
            if m.topic == topic && json["status"].as_str() == Some("Running") {
                break json["restarts"].as_u64().unwrap_or_default();
            }
        };
        Ok(Crasher {
            client,
            topic,
            command: format!("power-supply/{CRASHING}/voltage/cmd"),
            sent: 0,
            restarts,
        })
    }

    /// Crashes the runner (which is `Running`) again and again, until it has
    /// crashed `limit` times, `deadline` has passed or `stop` says so (both
    /// checked each time it is `Running` again; at least one crash). Returns
    /// the number of crashes.
    async fn run(
        &mut self,
        limit: usize,
        deadline: Instant,
        stop: impl Fn() -> bool,
    ) -> anyhow::Result<usize> {
        let mut crashes = 0;
        loop {
            self.crash_once()
                .await
                .with_context(|| format!("crash {} of {CRASHING}", self.sent))?;
            crashes += 1;
            if crashes >= limit || Instant::now() >= deadline || stop() {
                return Ok(crashes);
            }
        }
    }

    /// Sends the fatal voltage and follows the runner back to `Running`:
    /// the statuses must be [`CRASH_STATUSES`] in order, `restarts` + 1.
    async fn crash_once(&mut self) -> anyhow::Result<()> {
        self.sent += 1;
        let payload = format!(
            "{{\"pza_id\":\"loop{}\",\"voltage\":\"{CRASH_VOLTAGE}\"}}",
            self.sent
        );
        self.client
            .publish(&self.command, payload.into_bytes())
            .await?;
        let deadline = Instant::now() + STEP_TIMEOUT;
        let mut seen = Vec::with_capacity(CRASH_STATUSES.len());
        loop {
            let m = self
                .client
                .recv_until(deadline)
                .await
                .with_context(|| format!("statuses seen so far: {seen:?}"))?;
            if m.topic != self.topic {
                continue;
            }
            let json = m.json().context("a status that is not JSON")?;
            let status = json["status"].as_str().unwrap_or_default().to_string();
            seen.push(status.clone());
            if CRASH_STATUSES.get(seen.len() - 1) != Some(&status.as_str()) {
                bail!("unexpected status sequence {seen:?}, expected {CRASH_STATUSES:?}");
            }
            if status == "Running" {
                let restarts = json["restarts"].as_u64().unwrap_or_default();
                if restarts != self.restarts + 1 {
                    bail!("restarts went from {} to {restarts}", self.restarts);
                }
                self.restarts = restarts;
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn thread(name: &str, ms: u64) -> ThreadTime {
        ThreadTime {
            name: name.into(),
            cpu: Duration::from_millis(ms),
        }
    }

    #[test]
    fn ended_threads_are_counted() {
        let before = HashMap::from([(1, thread("main", 5)), (2, thread("router-0", 3))]);
        let after = HashMap::from([(1, thread("main", 9)), (3, thread("tokio", 1))]);
        assert_eq!(ended_threads(&before, &after), 1);
        assert_eq!(ended_threads(&before, &before), 0);
    }

    #[test]
    fn cpu_per_unit() {
        let cpu = Cpu {
            wall: Duration::from_secs(2),
            all: Duration::from_millis(300),
            router: Duration::from_millis(100),
            ended: 0,
        };
        let per = cpu.per(100);
        assert_eq!(per.all, Duration::from_millis(3));
        assert_eq!(per.router, Duration::from_millis(1));
        assert!((cpu.cores() - 0.15).abs() < 1e-9);
        assert_eq!(Cpu::default().per(0).all, Duration::ZERO);
    }
}
