//! Figure 7: the client library. A `set_voltage` through
//! `pza-power-supply-client` against the bare MQTT echo and the hand-made
//! voltage command of figure 1, interleaved in one run; then the commands per
//! second with 100 in flight over the client's one connection, against one
//! at a time.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use pza_power_supply::drivers::DriverFactory;
use pza_power_supply_client::{Client, ClientOptions, PowerSupply, Snapshot, Status};
use pza_toolkit::mqtt::probe_free_port;
use tokio::task::JoinSet;

use super::{ratio_text, Budget, Context, Counts};
use crate::echo::Echo;
use crate::inproc::{emulator_runner, Broker, InProcessServer};
use crate::pinger::{Pinger, Target};
use crate::report::{Row, Verdict};
use crate::stats::{rate, times, Summary};

const FIGURE: &str = "7 client library";

/// The runner the commands go to.
const RUNNER: &str = "bench";

/// Round trips of each kind, in rounds of `ROUND` of each in turn, so that
/// all three see the same conditions.
const ROUND_TRIPS: Counts = Counts {
    full: 5_000,
    smoke: 40,
};
const ROUND: usize = 10;
const WARMUP: Counts = Counts {
    full: 200,
    smoke: 10,
};
const BUDGET: Budget = Budget::secs(60, 5);

/// Commands for the throughput, at each concurrency.
const COMMANDS: Counts = Counts {
    full: 20_000,
    smoke: 200,
};
const IN_FLIGHT: usize = 100;

/// Target: the client adds little to the hand-made command's round trip.
const TARGET_RATIO: f64 = 1.2;

/// Voltages cycled through, all inside the emulator's default limits, so
/// that every command is applied and read back.
fn volts(i: usize) -> f64 {
    1.0 + (i % 200) as f64 * 0.05
}

/// Checks that the value read back is the one asked: a reply matched to the
/// wrong command would show here.
fn check(asked: f64, read: f64) -> anyhow::Result<()> {
    anyhow::ensure!(
        (asked - read).abs() < 1e-6,
        "asked {asked} V, read back {read} V: a reply went to the wrong command"
    );
    Ok(())
}

pub async fn run(ctx: &mut Context) -> anyhow::Result<Vec<Row>> {
    let port = probe_free_port().context("probing a free port")?;
    let server = InProcessServer::start(
        Broker::Embedded(port),
        &[emulator_runner(RUNNER, 0)],
        DriverFactory::with_builtin_models(),
    )
    .await?;
    let result = measure(port, ctx.smoke).await;
    server.stop().await?;
    result
}

async fn measure(port: u16, smoke: bool) -> anyhow::Result<Vec<Row>> {
    let client = Client::connect(ClientOptions::new("127.0.0.1", port))
        .await
        .context("the client connects")?;
    let psu = client.power_supply(RUNNER);
    wait_running(&psu).await?;
    let _echo = Echo::start(port, 0).await?;
    let targets = [Target::Echo(0), Target::Runner(RUNNER.into())];
    let mut pinger = Pinger::connect(port, "client", &targets).await?;

    let mut samples: [Vec<Duration>; 3] = Default::default();
    for warmup in [true, false] {
        let count = if warmup { WARMUP } else { ROUND_TRIPS }.get(smoke);
        let end = Instant::now() + BUDGET.get(smoke);
        let mut done = 0;
        while done < count && (done == 0 || Instant::now() < end) {
            let bare = pinger
                .interleaved(&targets, ROUND, BUDGET.get(smoke))
                .await?;
            let mut library = Vec::with_capacity(ROUND);
            for i in 0..ROUND {
                let asked = volts(done + i);
                let start = Instant::now();
                let read = psu.set_voltage(asked).await?;
                library.push(start.elapsed());
                check(asked, read)?;
            }
            if !warmup {
                samples[0].extend(&bare[0]);
                samples[1].extend(&bare[1]);
                samples[2].extend(library);
            }
            done += ROUND;
        }
    }
    let echo = Summary::of(&samples[0]).context("no echo sample")?;
    let raw = Summary::of(&samples[1]).context("no hand-made command sample")?;
    let lib = Summary::of(&samples[2]).context("no client sample")?;

    let total = COMMANDS.get(smoke);
    let one = throughput(&psu, total, 1).await?;
    let hundred = throughput(&psu, total, IN_FLIGHT).await?;
    client.close().await.ok();

    let (r50, _) = lib.ratio_to(&raw);
    Ok(vec![
        Row::new(
            FIGURE,
            format!("MQTT echo (baseline, n={})", echo.count),
            echo.text(),
        ),
        Row::new(
            FIGURE,
            format!("voltage command by hand, as figure 1 (n={})", raw.count),
            raw.text(),
        )
        .baseline(echo.text(), ratio_text(&raw, &echo)),
        Row::new(
            FIGURE,
            format!("set_voltage through the client (n={})", lib.count),
            lib.text(),
        )
        .baseline(echo.text(), ratio_text(&lib, &echo)),
        Row::new(
            FIGURE,
            "set_voltage through the client vs by hand",
            lib.text(),
        )
        .baseline(raw.text(), ratio_text(&lib, &raw))
        .target(
            format!("p50 ≤ {TARGET_RATIO}× by hand"),
            Verdict::from_met(r50 <= TARGET_RATIO, smoke),
        ),
        Row::new(
            FIGURE,
            format!("set_voltage, 1 in flight (baseline, n={total})"),
            rate(one),
        ),
        Row::new(
            FIGURE,
            format!("set_voltage, {IN_FLIGHT} in flight on one connection (n={total})"),
            rate(hundred),
        )
        .baseline(rate(one), times(hundred / one)),
    ])
}

/// Waits until the runner is `Running`.
async fn wait_running(psu: &PowerSupply) -> anyhow::Result<()> {
    const READY_TIMEOUT: Duration = Duration::from_secs(15);
    let running = |s: &Snapshot| s.status == Some(Status::Running);
    let mut updates = psu.watch();
    if psu.snapshot().await.is_ok_and(|s| running(&s)) {
        return Ok(());
    }
    tokio::time::timeout(READY_TIMEOUT, async {
        while let Some(update) = updates.next().await {
            if running(&update.snapshot) {
                return;
            }
        }
    })
    .await
    .with_context(|| format!("{RUNNER} not Running within {READY_TIMEOUT:?}"))
}

/// `total` commands with at most `in_flight` awaiting their reply at any
/// time; returns the commands per second.
async fn throughput(psu: &PowerSupply, total: usize, in_flight: usize) -> anyhow::Result<f64> {
    let start = Instant::now();
    let mut running = JoinSet::new();
    let mut sent = 0;
    let mut answered = 0;
    while answered < total {
        while sent < total && running.len() < in_flight {
            let psu = psu.clone();
            let asked = volts(sent);
            running.spawn(async move { (asked, psu.set_voltage(asked).await) });
            sent += 1;
        }
        let Some(joined) = running.join_next().await else {
            break;
        };
        let (asked, read) = joined.context("a command task")?;
        check(
            asked,
            read.with_context(|| format!("set_voltage({asked})"))?,
        )?;
        answered += 1;
    }
    anyhow::ensure!(answered == total, "{answered} of {total} commands answered");
    Ok(total as f64 / start.elapsed().as_secs_f64())
}
