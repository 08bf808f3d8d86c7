//! Figure 1: the command round trip, against a bare MQTT echo through the
//! same broker in the same run; figure 6: the same through mosquitto, with
//! the server in `use_builtin: false` mode.
//!
//! Figure 6 runs mosquitto with `set_tcp_nodelay true`, then briefly with its
//! defaults (Nagle's algorithm on, as `mosquitto -p PORT` runs), to show what
//! that setting costs.

use std::time::Duration;

use anyhow::Context as _;
use pza_power_supply::drivers::DriverFactory;
use pza_toolkit::mqtt::probe_free_port;

use super::{ratio_text, Budget, Context, Counts};
use crate::client::BenchClient;
use crate::echo::Echo;
use crate::inproc::{emulator_runner, status_topic, wait_all_status, Broker, InProcessServer};
use crate::pinger::{Pinger, Target};
use crate::process::{find_mosquitto, Mosquitto};
use crate::report::{Row, Verdict};
use crate::stats::Summary;

/// How many round trips a measurement makes, and for how long at most.
#[derive(Debug, Clone, Copy)]
struct Plan {
    warmup: Counts,
    warmup_budget: Budget,
    count: Counts,
    budget: Budget,
}

/// Figures 1 and 6.
const PLAN: Plan = Plan {
    warmup: Counts {
        full: 500,
        smoke: 10,
    },
    warmup_budget: Budget::secs(5, 1),
    count: Counts {
        full: 5_000,
        smoke: 50,
    },
    budget: Budget::secs(30, 2),
};

/// Mosquitto with its defaults: a glimpse is enough.
const DEFAULTS_PLAN: Plan = Plan {
    warmup: Counts { full: 5, smoke: 2 },
    warmup_budget: Budget::secs(1, 1),
    count: Counts {
        full: 100,
        smoke: 10,
    },
    budget: Budget::secs(5, 1),
};

/// Target of figure 1: median command round trip within this many echo ones.
const TARGET_RATIO: f64 = 1.5;

/// The runner the round trips go to.
const RUNNER: &str = "bench";

/// Longest wait for the runner to be `Running`.
const READY_TIMEOUT: Duration = Duration::from_secs(15);

/// Both sides of a round-trip figure.
#[derive(Debug, Clone, Copy)]
pub struct RoundTrip {
    pub echo: Summary,
    pub command: Summary,
}

/// Starts a server with one emulator runner (no periodic measurements) on
/// `broker`, an echo on the same broker, and times both, interleaved.
async fn measure(broker: Broker, plan: Plan, smoke: bool) -> anyhow::Result<RoundTrip> {
    let server = InProcessServer::start(
        broker,
        &[emulator_runner(RUNNER, 0)],
        DriverFactory::with_builtin_models(),
    )
    .await?;
    let result = measure_on(server.port, plan, smoke).await;
    server.stop().await?;
    result
}

async fn measure_on(port: u16, plan: Plan, smoke: bool) -> anyhow::Result<RoundTrip> {
    let mut watcher = BenchClient::connect(port, "pza-bench-rt-watch").await?;
    let names = [RUNNER.to_string()];
    watcher.subscribe(&[status_topic(RUNNER)]).await?;
    wait_all_status(&mut watcher, &names, "Running", READY_TIMEOUT).await?;
    let _echo = Echo::start(port, 0).await?;
    let targets = [Target::Echo(0), Target::Runner(RUNNER.into())];
    let mut pinger = Pinger::connect(port, "rt", &targets).await?;
    pinger
        .interleaved(
            &targets,
            plan.warmup.get(smoke),
            plan.warmup_budget.get(smoke),
        )
        .await?;
    let samples = pinger
        .interleaved(&targets, plan.count.get(smoke), plan.budget.get(smoke))
        .await?;
    Ok(RoundTrip {
        echo: Summary::of(&samples[0]).context("no echo sample")?,
        command: Summary::of(&samples[1]).context("no command sample")?,
    })
}

/// Figure 1.
pub async fn embedded(ctx: &mut Context) -> anyhow::Result<Vec<Row>> {
    let port = probe_free_port().context("probing a free port")?;
    let rt = measure(Broker::Embedded(port), PLAN, ctx.smoke).await?;
    ctx.embedded_round_trip = Some(rt);
    let (r50, _) = rt.command.ratio_to(&rt.echo);
    Ok(vec![
        Row::new(
            "1 round trip",
            format!("MQTT echo, embedded broker (baseline, n={})", rt.echo.count),
            rt.echo.text(),
        ),
        Row::new(
            "1 round trip",
            format!("voltage command, embedded broker (n={})", rt.command.count),
            rt.command.text(),
        )
        .baseline(rt.echo.text(), ratio_text(&rt.command, &rt.echo))
        .target(
            format!("p50 ≤ {TARGET_RATIO}× echo"),
            Verdict::from_met(r50 <= TARGET_RATIO, ctx.smoke),
        ),
    ])
}

/// Figure 6.
pub async fn external(ctx: &mut Context) -> anyhow::Result<Vec<Row>> {
    let figure = "6 external broker";
    let Some(executable) = find_mosquitto() else {
        anyhow::ensure!(
            ctx.smoke,
            "figure 6 needs mosquitto (Debian package `mosquitto`), which is not installed"
        );
        println!("figure 6 skipped: mosquitto is not installed (Debian package `mosquitto`)");
        return Ok(vec![Row::new(figure, "skipped", "mosquitto not installed")]);
    };
    let rt = with_mosquitto(&executable, true, PLAN, ctx.smoke).await?;
    let defaults = with_mosquitto(&executable, false, DEFAULTS_PLAN, ctx.smoke).await?;
    let mut rows = vec![
        Row::new(
            figure,
            format!(
                "MQTT echo, mosquitto set_tcp_nodelay true (baseline, n={})",
                rt.echo.count
            ),
            rt.echo.text(),
        ),
        Row::new(
            figure,
            format!(
                "voltage command, mosquitto set_tcp_nodelay true (n={})",
                rt.command.count
            ),
            rt.command.text(),
        )
        .baseline(rt.echo.text(), ratio_text(&rt.command, &rt.echo)),
    ];
    if let Some(embedded) = ctx.embedded_round_trip {
        rows.push(
            Row::new(
                figure,
                "voltage command: embedded broker vs mosquitto",
                format!("embedded {}", embedded.command.text()),
            )
            .baseline(
                rt.command.text(),
                ratio_text(&embedded.command, &rt.command),
            ),
        );
        rows.push(
            Row::new(
                figure,
                "MQTT echo: embedded broker vs mosquitto",
                format!("embedded {}", embedded.echo.text()),
            )
            .baseline(rt.echo.text(), ratio_text(&embedded.echo, &rt.echo)),
        );
    }
    rows.push(
        Row::new(
            figure,
            format!(
                "mosquitto defaults (Nagle on): echo (n={}) / command",
                defaults.echo.count
            ),
            format!(
                "echo {} / command {}",
                defaults.echo.text(),
                defaults.command.text()
            ),
        )
        .baseline(rt.echo.text(), ratio_text(&defaults.echo, &rt.echo)),
    );
    Ok(rows)
}

/// Measures through a mosquitto started for the purpose.
async fn with_mosquitto(
    executable: &std::path::Path,
    tcp_nodelay: bool,
    plan: Plan,
    smoke: bool,
) -> anyhow::Result<RoundTrip> {
    let mosquitto = Mosquitto::start(executable, tcp_nodelay).await?;
    let result = measure(Broker::External(mosquitto.port), plan, smoke).await;
    mosquitto.stop().await?;
    result
}
