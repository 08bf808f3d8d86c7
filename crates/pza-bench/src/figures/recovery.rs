//! Figure 3: how fast a runner that panics is `Running` again, with
//! `initial_delay_ms: 0`, and how fast its `Panicking` status comes out.
//!
//! The clock starts inside the driver: the instrumented emulator
//! ([`crate::probe`]) notes the instant it is about to panic, which ends the
//! runner task. It stops when the harness's client receives the status, so
//! each figure includes one delivery from the server to a client through the
//! broker (about half an echo round trip, measured alongside). As a cross
//! check that needs no instrumentation, command → `Panicking` is reported
//! against the command round trip: their difference estimates the detection
//! time, since both include one trip to the runner and one back.

use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use pza_toolkit::mqtt::probe_free_port;
use tokio::sync::mpsc;

use super::{ratio_text, Budget, Context, Counts};
use crate::client::BenchClient;
use crate::echo::Echo;
use crate::inproc::{
    crashing_runner, emulator_runner, status_topic, wait_all_status, Broker, InProcessServer,
    CRASH_STATUSES, CRASH_VOLTAGE,
};
use crate::pinger::{Pinger, Target};
use crate::probe::PanicProbe;
use crate::report::{Row, Verdict};
use crate::stats::{duration, Summary};

/// Crashes measured (at least 200 in a full run), after the warm-up ones.
const CRASHES: Counts = Counts {
    full: 300,
    smoke: 5,
};
const WARMUP_CRASHES: Counts = Counts { full: 10, smoke: 1 };

/// Round trips per target for the baselines.
const BASELINE_SAMPLES: Counts = Counts {
    full: 1_000,
    smoke: 20,
};
const BASELINE_BUDGET: Budget = Budget::secs(10, 2);

/// Target of figure 3.
const TARGET_P99: Duration = Duration::from_millis(10);

/// The runner that crashes, and a healthy one for the command round trip.
const CRASHING: &str = "crashy";
const HEALTHY: &str = "bench";

/// Longest wait for one step of a crash (the panic, a status).
const STEP_TIMEOUT: Duration = Duration::from_secs(10);

pub async fn run(ctx: &mut Context) -> anyhow::Result<Vec<Row>> {
    let port = probe_free_port().context("probing a free port")?;
    let (factory, mut panics) = PanicProbe::factory();
    let server = InProcessServer::start(
        Broker::Embedded(port),
        &[crashing_runner(CRASHING), emulator_runner(HEALTHY, 0)],
        factory,
    )
    .await?;
    let result = measure_on(port, &mut panics, ctx.smoke).await;
    server.stop().await?;
    let m = result?;

    let figure = "3 recovery";
    let n = m.recovery.count;
    Ok(vec![
        Row::new(
            figure,
            format!("MQTT echo round trip (baseline, n={})", m.echo.count),
            m.echo.text(),
        ),
        Row::new(
            figure,
            format!("voltage command round trip (n={})", m.command.count),
            m.command.text(),
        )
        .baseline(m.echo.text(), ratio_text(&m.command, &m.echo)),
        Row::new(
            figure,
            format!("panic → Running received, initial_delay_ms 0 ({n} crashes)"),
            m.recovery.text(),
        )
        .baseline(m.echo.text(), ratio_text(&m.recovery, &m.echo))
        .target(
            format!("p99 < {}", duration(TARGET_P99)),
            Verdict::from_met(m.recovery.p99 < TARGET_P99, ctx.smoke),
        ),
        Row::new(
            figure,
            format!("panic → Panicking received ({n} crashes)"),
            m.detection.text(),
        )
        .baseline(m.echo.text(), ratio_text(&m.detection, &m.echo)),
        Row::new(
            figure,
            format!("command → Panicking received, no instrumentation ({n} crashes)"),
            m.outside.text(),
        )
        .baseline(m.command.text(), ratio_text(&m.outside, &m.command)),
    ])
}

struct Measured {
    echo: Summary,
    command: Summary,
    recovery: Summary,
    detection: Summary,
    outside: Summary,
}

async fn measure_on(
    port: u16,
    panics: &mut mpsc::UnboundedReceiver<Instant>,
    smoke: bool,
) -> anyhow::Result<Measured> {
    let mut watcher = BenchClient::connect(port, "pza-bench-recovery").await?;
    let names = [CRASHING.to_string(), HEALTHY.to_string()];
    watcher
        .subscribe(&[status_topic(CRASHING), status_topic(HEALTHY)])
        .await?;
    wait_all_status(&mut watcher, &names, "Running", STEP_TIMEOUT).await?;

    let _echo = Echo::start(port, 0).await?;
    let targets = [Target::Echo(0), Target::Runner(HEALTHY.into())];
    let mut pinger = Pinger::connect(port, "rec", &targets).await?;
    let count = BASELINE_SAMPLES.get(smoke);
    let budget = BASELINE_BUDGET.get(smoke);
    pinger
        .interleaved(&targets, count / 10 + 1, budget / 10)
        .await?;
    let samples = pinger.interleaved(&targets, count, budget).await?;
    let echo = Summary::of(&samples[0]).context("no echo sample")?;
    let command = Summary::of(&samples[1]).context("no command sample")?;

    let warmup = WARMUP_CRASHES.get(smoke);
    let crashes = CRASHES.get(smoke);
    let mut recovery = Vec::with_capacity(crashes);
    let mut detection = Vec::with_capacity(crashes);
    let mut outside = Vec::with_capacity(crashes);
    let mut restarts = None;
    for i in 0..warmup + crashes {
        let crash = crash_once(&mut watcher, panics, i)
            .await
            .with_context(|| format!("crash {}", i + 1))?;
        if let Some(previous) = restarts {
            if crash.restarts != previous + 1 {
                bail!(
                    "crash {}: restarts went from {previous} to {}",
                    i + 1,
                    crash.restarts
                );
            }
        }
        restarts = Some(crash.restarts);
        if i >= warmup {
            recovery.push(crash.running.saturating_duration_since(crash.panic));
            detection.push(crash.panicking.saturating_duration_since(crash.panic));
            outside.push(crash.panicking.saturating_duration_since(crash.command));
        }
    }
    Ok(Measured {
        echo,
        command,
        recovery: Summary::of(&recovery).context("no crash measured")?,
        detection: Summary::of(&detection).context("no crash measured")?,
        outside: Summary::of(&outside).context("no crash measured")?,
    })
}

/// The instants of one crash.
struct Crash {
    command: Instant,
    panic: Instant,
    panicking: Instant,
    running: Instant,
    restarts: u64,
}

/// Sends the fatal voltage to the crashing runner (which is `Running`) and
/// follows it through its lifecycle back to `Running`.
async fn crash_once(
    watcher: &mut BenchClient,
    panics: &mut mpsc::UnboundedReceiver<Instant>,
    i: usize,
) -> anyhow::Result<Crash> {
    while panics.try_recv().is_ok() {}
    let payload = format!("{{\"pza_id\":\"crash{i}\",\"voltage\":\"{CRASH_VOLTAGE}\"}}");
    let command = Instant::now();
    watcher
        .publish(
            &format!("power-supply/{CRASHING}/voltage/cmd"),
            payload.into_bytes(),
        )
        .await?;
    let panic = tokio::time::timeout(STEP_TIMEOUT, panics.recv())
        .await
        .ok()
        .flatten()
        .context("the emulator did not panic")?;
    let deadline = Instant::now() + STEP_TIMEOUT;
    let topic = status_topic(CRASHING);
    let mut seen = Vec::with_capacity(CRASH_STATUSES.len());
    let mut panicking = None;
    loop {
        let m = watcher
            .recv_until(deadline)
            .await
            .with_context(|| format!("statuses seen so far: {seen:?}"))?;
        if m.topic != topic {
            bail!(
                "{} changed during a crash of {CRASHING}: {}",
                m.topic,
                String::from_utf8_lossy(&m.payload)
            );
        }
        let json = m.json().context("a status that is not JSON")?;
        let status = json["status"].as_str().unwrap_or_default().to_string();
        seen.push(status.clone());
        if CRASH_STATUSES.get(seen.len() - 1) != Some(&status.as_str()) {
            bail!("unexpected status sequence {seen:?}, expected {CRASH_STATUSES:?}");
        }
        if status == "Panicking" {
            panicking = Some(m.at);
        }
        if status == "Running" {
            return Ok(Crash {
                command,
                panic,
                panicking: panicking.unwrap_or(m.at),
                running: m.at,
                restarts: json["restarts"].as_u64().unwrap_or_default(),
            });
        }
    }
}
