//! Figure 5: the command round trip on a healthy runner while another runner
//! crash-loops (it panics on a command, is restarted at once, and is sent the
//! fatal command again as soon as it is `Running`), against the same round
//! trip with no crash loop. Quiet and crash-loop blocks alternate in the same
//! run, on the same server.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use pza_power_supply::drivers::DriverFactory;
use pza_toolkit::mqtt::probe_free_port;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::{ratio_text, Budget, Context, Counts};
use crate::client::BenchClient;
use crate::inproc::{
    crashing_runner, emulator_runner, status_topic, wait_all_status, Broker, InProcessServer,
    CRASH_VOLTAGE,
};
use crate::pinger::{Pinger, Target};
use crate::process::thread_cpu_times;
use crate::report::{Row, Verdict};
use crate::stats::{duration, rate, thousands, Summary};

/// Blocks of each kind, and round trips per block.
const BLOCKS: Counts = Counts { full: 10, smoke: 2 };
const BLOCK_SAMPLES: Counts = Counts {
    full: 500,
    smoke: 20,
};
const WARMUP: Counts = Counts {
    full: 200,
    smoke: 10,
};
const BLOCK_BUDGET: Budget = Budget::secs(4, 1);

/// Target of figure 5: p99 degraded by less than this fraction.
const TARGET_DEGRADATION: f64 = 0.20;

const HEALTHY: &str = "healthy";
const CRASHING: &str = "crashy";

/// Longest wait for the crashing runner to be `Running` again.
const STEP_TIMEOUT: Duration = Duration::from_secs(10);

pub async fn run(ctx: &mut Context) -> anyhow::Result<Vec<Row>> {
    let port = probe_free_port().context("probing a free port")?;
    let server = InProcessServer::start(
        Broker::Embedded(port),
        &[emulator_runner(HEALTHY, 0), crashing_runner(CRASHING)],
        DriverFactory::with_builtin_models(),
    )
    .await?;
    let result = measure_on(port, ctx.smoke).await;
    server.stop().await?;
    let m = result?;

    let (_, r99) = m.loaded.ratio_to(&m.quiet);
    let figure = "5 isolation";
    // The CPU the crash loop adds, shared out over its crashes.
    let extra = |loaded: Duration, quiet: Duration| {
        let quiet_rate = quiet.as_secs_f64() / m.quiet_cpu.wall.as_secs_f64().max(1e-9);
        let extra = loaded.as_secs_f64() - quiet_rate * m.loaded_cpu.wall.as_secs_f64();
        Duration::from_secs_f64((extra / m.crashes.max(1) as f64).max(0.0))
    };
    let cpu = format!(
        "CPU {:.2} → {:.2} cores; {} CPU per crash, {} of it in the broker's router thread",
        m.quiet_cpu.cores(),
        m.loaded_cpu.cores(),
        duration(extra(m.loaded_cpu.all, m.quiet_cpu.all)),
        duration(extra(m.loaded_cpu.router, m.quiet_cpu.router)),
    );
    Ok(vec![
        Row::new(
            figure,
            format!(
                "healthy runner, no crash loop (baseline, n={})",
                m.quiet.count
            ),
            m.quiet.text(),
        ),
        Row::new(
            figure,
            format!(
                "healthy runner, other runner crash-looping (n={}; {} crashes, {})",
                m.loaded.count,
                thousands(m.crashes as u64),
                rate(m.crashes as f64 / m.crash_time.as_secs_f64().max(1e-9))
            ),
            format!("{}; {cpu}", m.loaded.text()),
        )
        .baseline(m.quiet.text(), ratio_text(&m.loaded, &m.quiet))
        .target(
            format!("p99 degraded < {:.0} %", TARGET_DEGRADATION * 100.0),
            Verdict::from_met(r99 < 1.0 + TARGET_DEGRADATION, ctx.smoke),
        ),
    ])
}

struct Measured {
    quiet: Summary,
    loaded: Summary,
    crashes: usize,
    crash_time: Duration,
    quiet_cpu: Cpu,
    loaded_cpu: Cpu,
}

/// CPU time of this process (harness and server) over some blocks.
#[derive(Debug, Clone, Copy, Default)]
struct Cpu {
    wall: Duration,
    all: Duration,
    /// rumqttd's router thread.
    router: Duration,
}

impl Cpu {
    /// Runs `block` and adds its wall and CPU time.
    async fn add<T>(&mut self, block: impl std::future::Future<Output = T>) -> T {
        let (before, start) = (cpu_now(), Instant::now());
        let out = block.await;
        let after = cpu_now();
        self.wall += start.elapsed();
        self.all += after.0.saturating_sub(before.0);
        self.router += after.1.saturating_sub(before.1);
        out
    }

    fn cores(&self) -> f64 {
        self.all.as_secs_f64() / self.wall.as_secs_f64().max(1e-9)
    }
}

/// (all threads, router thread) CPU time so far.
fn cpu_now() -> (Duration, Duration) {
    let times = thread_cpu_times();
    let router = times
        .iter()
        .filter(|(name, _)| name.starts_with(ROUTER_THREAD))
        .map(|(_, t)| *t)
        .sum();
    (times.values().sum(), router)
}

/// rumqttd names its router thread `router-<id>`.
const ROUTER_THREAD: &str = "router-";

async fn measure_on(port: u16, smoke: bool) -> anyhow::Result<Measured> {
    let mut watcher = BenchClient::connect(port, "pza-bench-iso-watch").await?;
    let names = [HEALTHY.to_string(), CRASHING.to_string()];
    watcher
        .subscribe(&[status_topic(HEALTHY), status_topic(CRASHING)])
        .await?;
    wait_all_status(&mut watcher, &names, "Running", STEP_TIMEOUT).await?;
    drop(watcher);

    let targets = [Target::Runner(HEALTHY.into())];
    let mut pinger = Pinger::connect(port, "iso", &targets).await?;
    let budget = BLOCK_BUDGET.get(smoke);
    pinger
        .interleaved(&targets, WARMUP.get(smoke), budget)
        .await?;
    let mut quiet = Vec::new();
    let mut loaded = Vec::new();
    let mut crashes = 0;
    let mut crash_time = Duration::ZERO;
    let mut quiet_cpu = Cpu::default();
    let mut loaded_cpu = Cpu::default();
    let per_block = BLOCK_SAMPLES.get(smoke);
    for block in 0..BLOCKS.get(smoke) {
        // Alternate which kind of block comes first.
        for loaded_block in [block % 2 == 1, block % 2 == 0] {
            if loaded_block {
                let crash_loop = CrashLoop::start(port).await?;
                let samples = loaded_cpu
                    .add(pinger.interleaved(&targets, per_block, budget))
                    .await;
                let (n, time) = crash_loop.stop().await?;
                loaded.extend(samples?.remove(0));
                crashes += n;
                crash_time += time;
            } else {
                let samples = quiet_cpu
                    .add(pinger.interleaved(&targets, per_block, budget))
                    .await?;
                quiet.extend(samples.into_iter().next().unwrap_or_default());
            }
        }
    }
    Ok(Measured {
        quiet: Summary::of(&quiet).context("no sample")?,
        loaded: Summary::of(&loaded).context("no sample")?,
        crashes,
        crash_time,
        quiet_cpu,
        loaded_cpu,
    })
}

/// Keeps the crashing runner crashing, as fast as it restarts.
struct CrashLoop {
    stop: watch::Sender<bool>,
    task: JoinHandle<anyhow::Result<(usize, Duration)>>,
}

impl CrashLoop {
    async fn start(port: u16) -> anyhow::Result<CrashLoop> {
        let mut client = BenchClient::connect(port, "pza-bench-crash-loop").await?;
        let topic = status_topic(CRASHING);
        // The retained `Running` arrives right after: the first crash.
        client.subscribe(std::slice::from_ref(&topic)).await?;
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(async move {
            let started = Instant::now();
            let command = format!("power-supply/{CRASHING}/voltage/cmd");
            let mut crashes = 0;
            loop {
                let m = client
                    .recv_until(Instant::now() + STEP_TIMEOUT)
                    .await
                    .context("the crash-looping runner is not Running again")?;
                if m.topic != topic || m.field("status").as_deref() != Some("Running") {
                    continue;
                }
                if *stopped.borrow() {
                    return Ok((crashes, started.elapsed()));
                }
                let payload =
                    format!("{{\"pza_id\":\"loop{crashes}\",\"voltage\":\"{CRASH_VOLTAGE}\"}}");
                client.publish(&command, payload.into_bytes()).await?;
                crashes += 1;
            }
        });
        Ok(CrashLoop { stop, task })
    }

    /// Stops crashing once the runner is `Running` again; returns the crashes
    /// caused and for how long.
    async fn stop(self) -> anyhow::Result<(usize, Duration)> {
        let _ = self.stop.send(true);
        self.task.await.context("the crash loop failed")?
    }
}
