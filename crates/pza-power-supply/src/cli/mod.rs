//! The command line: `run`, `tui` and `version` here; `list` in [`list`],
//! `simulate` in [`simulate`], the signals they stop on in [`signals`];
//! `ctl` and `mcp` are [`crate::ctl`] and [`crate::mcp`].

mod list;
mod signals;
mod simulate;

use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use tokio::sync::Mutex;

use crate::config::{self, ConfigPath, ServerConfig};
use crate::drivers::DriverFactory;
use crate::server::{Server, ServerOptions};
pub use list::{list, ListArgs};
pub(crate) use signals::Signals;
pub use simulate::{
    simulate, Kd3005pSimulateArgs, ScpiSimulateArgs, SimulateArgs, SimulatedDevice,
};

/// Exit status after a second signal during shutdown.
const EXIT_SECOND_SIGNAL: u8 = 130;

/// Wait for the server's own broker no longer than this.
const DEFAULT_TIMEOUT: Duration = pza_power_supply_client::DEFAULT_TIMEOUT;

/// `duration` in whole milliseconds, for the `--…-ms` flags' defaults.
pub(crate) fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

#[derive(Debug, Parser)]
#[command(
    name = "pza-power-supply",
    about = "Control bench power supplies over MQTT",
    disable_version_flag = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server until SIGINT or SIGTERM.
    Run(RunArgs),
    /// List the driver models, the configured runners and the MCP servers.
    List(ListArgs),
    /// Print the version.
    Version,
    /// Simulate a device (a KD3005P on a pty, an SCPI instrument on TCP), to run the server without hardware.
    Simulate(SimulateArgs),
    /// One-shot commands to the power supplies of a running server.
    Ctl(crate::ctl::CtlArgs),
    /// Watch and drive the power supplies of a running server in the terminal.
    Tui(TuiArgs),
    /// The MCP server on stdin/stdout, for AI assistants that launch a command.
    Mcp(crate::mcp::McpArgs),
}

#[derive(Debug, Args)]
pub struct ConfigArg {
    /// The config file [default: $PZA_POWER_SUPPLY_CONFIG, else ~/.panduza/pza-power-supply.json5]
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// Do not start the embedded broker (use one already running).
    #[arg(long)]
    pub no_broker: bool,
    /// Do not start the runners.
    #[arg(long)]
    pub no_runners: bool,
    /// Do not start the MCP server, even if the config enables it.
    #[arg(long)]
    pub no_mcp: bool,
    /// Do not show the terminal UI (it is shown when tui.enable is true and stdout is a terminal).
    #[arg(long)]
    pub no_tui: bool,
}

#[derive(Debug, Args)]
pub struct TuiArgs {
    #[command(flatten)]
    pub connect: crate::connect::ConnectArgs,
}

/// Resolves and loads the config named on the command line.
fn load_config(arg: &ConfigArg, factory: &DriverFactory) -> anyhow::Result<ServerConfig> {
    let path: ConfigPath = config::resolve_config_path(
        arg.config.clone(),
        std::env::var_os(config::CONFIG_ENV),
        config::home_dir(),
    )
    .map_err(anyhow::Error::msg)?;
    Ok(config::load(&path, factory)?)
}

/// Runs the server until a signal; a second signal exits at once with 130.
pub async fn run(args: RunArgs, factory: DriverFactory) -> anyhow::Result<ExitCode> {
    let config = load_config(&args.config, &factory)?;
    let tui = if config.tui.enable && !args.no_tui && std::io::stdout().is_terminal() {
        let options = crate::connect::own_broker(&config.broker, DEFAULT_TIMEOUT)?;
        // From now on, logs wait for the UI's pane rather than print on
        // the screen it is about to take.
        let capture = crate::tui::log::Capture::start();
        Some((
            options,
            tui_settings(&config.tui.power_toggle_key, true),
            capture,
        ))
    } else {
        None
    };
    // Listen before starting anything: a signal that comes early must still
    // start a graceful shutdown rather than kill the process.
    let mut signals = Signals::new()?;
    let options = ServerOptions {
        no_broker: args.no_broker,
        no_runners: args.no_runners,
        no_mcp: args.no_mcp,
    };
    let server = match Server::start(config, Arc::new(Mutex::new(factory)), options).await {
        Ok(server) => server,
        Err(e) => {
            if let Some((_, _, capture)) = tui {
                capture.release();
            }
            return Err(e);
        }
    };
    let shutdown = server.shutdown_token();
    let tui = tui.map(|(options, settings, capture)| {
        tokio::spawn(run_embedded_tui(
            options,
            settings,
            capture,
            shutdown.clone(),
        ))
    });
    tokio::spawn(async move {
        // The shutdown starts with a signal, or with `q` in the terminal UI.
        tokio::select! {
            _ = signals.recv() => tracing::info!("shutting down (a second signal exits at once)"),
            _ = shutdown.cancelled() => {}
        }
        shutdown.cancel();
        signals.recv().await;
        eprintln!("pza-power-supply: second signal during shutdown: exiting now");
        std::process::exit(i32::from(EXIT_SECOND_SIGNAL));
    });
    let result = server.wait().await;
    // The UI has seen the shutdown and given the terminal back (or does so
    // now): wait, so that nothing is printed on its screen.
    if let Some(tui) = tui {
        let _ = tui.await;
    }
    result?;
    tracing::info!("stopped");
    Ok(ExitCode::SUCCESS)
}

fn tui_settings(toggle_key: &str, embedded: bool) -> crate::tui::Settings {
    crate::tui::Settings {
        // The config check makes it one character.
        toggle_key: toggle_key.chars().next().unwrap_or('p'),
        embedded,
        ..crate::tui::Settings::default()
    }
}

/// The terminal UI inside `run`: quitting it shuts the server down. If it
/// cannot start, the server runs on with its logs on stderr.
async fn run_embedded_tui(
    options: pza_power_supply_client::ClientOptions,
    mut settings: crate::tui::Settings,
    capture: crate::tui::log::Capture,
    shutdown: tokio_util::sync::CancellationToken,
) {
    settings.source = source(&options);
    let client = tokio::select! {
        _ = shutdown.cancelled() => {
            capture.release();
            return;
        }
        client = pza_power_supply_client::Client::connect(options) => client,
    };
    let client = match client {
        Ok(client) => client,
        Err(e) => {
            capture.release();
            tracing::error!("no terminal UI: cannot reach the server's broker: {e}");
            return;
        }
    };
    let outcome = crate::tui::run(client, settings, shutdown.clone(), capture).await;
    if !shutdown.is_cancelled() {
        tracing::info!("shutting down (quit from the terminal UI)");
    }
    if let Err(e) = outcome {
        tracing::error!("terminal UI: {e:#}");
    }
    shutdown.cancel();
}

/// `127.0.0.1:1883 ns bench-3`, for the UI's title.
fn source(options: &pza_power_supply_client::ClientOptions) -> String {
    match &options.namespace {
        Some(ns) => format!("{} ns {ns}", options.broker()),
        None => options.broker(),
    }
}

/// `tui [CONNECT]`: the terminal UI attached to a running server.
pub async fn tui(args: TuiArgs, factory: &DriverFactory) -> anyhow::Result<ExitCode> {
    if !std::io::stdout().is_terminal() {
        anyhow::bail!("tui needs a terminal: stdout is not one");
    }
    let (options, config) = crate::connect::resolve_with_config(
        &args.connect,
        &crate::connect::Environment::current(),
        factory,
        DEFAULT_TIMEOUT,
    )?;
    let toggle_key = config.map_or_else(|| "p".to_owned(), |c| c.tui.power_toggle_key);
    let mut settings = tui_settings(&toggle_key, false);
    settings.source = source(&options);
    let mut signals = Signals::new()?;
    let client = pza_power_supply_client::Client::connect(options).await?;
    // Ctrl+C is a key in raw mode; SIGTERM (or SIGINT sent by another
    // process) must still give the terminal back.
    let stop = tokio_util::sync::CancellationToken::new();
    let stop_on_signal = stop.clone();
    let signal_task = tokio::spawn(async move {
        signals.recv().await;
        stop_on_signal.cancel();
    });
    let outcome = crate::tui::run(client, settings, stop, crate::tui::log::Capture::start()).await;
    signal_task.abort();
    outcome?;
    Ok(ExitCode::SUCCESS)
}

/// `pza-power-supply 0.1.0`.
pub fn version() -> String {
    format!("{} {}", env!("CARGO_PKG_NAME"), env!("CARGO_PKG_VERSION"))
}
