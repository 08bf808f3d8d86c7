//! `pza-power-supply`: parses the command line, sets up logging, and turns
//! errors into a one-line message and an exit status.

use std::io::IsTerminal as _;
use std::process::ExitCode;

use clap::Parser;
use pza_power_supply::cli::{self, Cli, Command};
use pza_power_supply::drivers::DriverFactory;
use pza_power_supply::{ctl, mcp, stdout};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::EnvFilter;

/// Logs without `RUST_LOG`: ours at info; rumqttd's are left out, as it logs
/// every ordinary disconnection as an error (`RUST_LOG=info` shows them).
const DEFAULT_LOG_FILTER: &str = "info,rumqttd=off";

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| anyhow::anyhow!("cannot start the async runtime: {e}"))
}

/// Exit status of a usage error (clap's own is 2, which `ctl` gives to a
/// command the server refused).
const EXIT_USAGE: u8 = 1;

/// Success, also when the reader of stdout has gone before the end.
fn printed(written: std::io::Result<bool>) -> anyhow::Result<ExitCode> {
    written
        .map(|_| ExitCode::SUCCESS)
        .map_err(stdout::unwritable)
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // Help and version requests are not errors.
            let code = if e.use_stderr() {
                ExitCode::from(EXIT_USAGE)
            } else {
                ExitCode::SUCCESS
            };
            // Nothing better to do if the terminal is gone.
            let _ = e.print();
            return code;
        }
    };
    // Logs go to stderr, or to the terminal UI's log pane while it is shown.
    let stderr = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    tracing_subscriber::registry()
        .with(
            EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| EnvFilter::new(DEFAULT_LOG_FILTER)),
        )
        .with(pza_power_supply::tui::log::layers(stderr))
        .init();

    let factory = DriverFactory::with_builtin_models();
    let outcome = match cli.command {
        Command::Version => printed(stdout::line(cli::version())),
        Command::List(args) => {
            cli::list(args, &factory).and_then(|text| printed(stdout::print(&text)))
        }
        Command::Run(args) => runtime().and_then(|rt| rt.block_on(cli::run(args, factory))),
        Command::Simulate(args) => runtime().and_then(|rt| rt.block_on(cli::simulate(args))),
        Command::Ctl(args) => runtime().map(|rt| rt.block_on(ctl::run(args, &factory))),
        Command::Tui(args) => runtime().and_then(|rt| rt.block_on(cli::tui(args, &factory))),
        Command::Mcp(args) => runtime().and_then(|rt| rt.block_on(mcp::stdio(args, &factory))),
    };
    match outcome {
        Ok(code) => code,
        Err(e) => {
            eprintln!("pza-power-supply: {e:#}");
            ExitCode::FAILURE
        }
    }
}
