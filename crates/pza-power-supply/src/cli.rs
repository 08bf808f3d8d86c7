//! The command line: `run`, `list`, `version`, `simulate`, `ctl`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, Parser, Subcommand};
use tokio::sync::Mutex;

use crate::config::{self, ConfigPath, ServerConfig};
use crate::drivers::DriverFactory;
use crate::server::{Server, ServerOptions};

/// Exit status after a second signal during shutdown.
pub const EXIT_SECOND_SIGNAL: u8 = 130;

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
    /// Simulate a device on a pseudo-terminal, to run the server without hardware.
    Simulate(SimulateArgs),
    /// One-shot commands to the power supplies of a running server.
    Ctl(crate::ctl::CtlArgs),
    /// The MCP server on stdin/stdout, for AI assistants that launch a command.
    Mcp(crate::mcp::McpArgs),
}

/// The devices that can be simulated.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum SimulatedModel {
    /// Korad KD3005P / KA3005P.
    Kd3005p,
}

#[derive(Debug, Args)]
pub struct SimulateArgs {
    /// The device to simulate.
    #[arg(value_enum)]
    pub model: SimulatedModel,
    /// Also make a symbolic link to the pty here, for a stable path in a config file.
    #[arg(long, value_name = "PATH")]
    pub link: Option<PathBuf>,
    /// Requests closer than this to the previous one are dropped, as slow units do.
    #[arg(long, value_name = "MS", default_value_t = 80)]
    pub pacing_ms: u64,
    /// Resistance of the load on the output, in ohms.
    #[arg(long, value_name = "OHMS", default_value_t = 10.0)]
    pub load_ohms: f64,
    /// Do not send the stray byte after `ISET1?` (some firmware does).
    #[arg(long)]
    pub no_stray_byte: bool,
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
    /// Do not start the terminal UI (no terminal UI exists yet).
    #[arg(long)]
    pub no_tui: bool,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// List the driver models.
    #[arg(long)]
    pub drivers: bool,
    /// List the configured runners.
    #[arg(long)]
    pub runners: bool,
    /// List the MCP servers.
    #[arg(long)]
    pub mcps: bool,
}

/// Resolves and loads the config named on the command line.
pub fn load_config(arg: &ConfigArg, factory: &DriverFactory) -> anyhow::Result<ServerConfig> {
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
    // Listen before starting anything: a signal that comes early must still
    // start a graceful shutdown rather than kill the process.
    let mut signals = Signals::new()?;
    let options = ServerOptions {
        no_broker: args.no_broker,
        no_runners: args.no_runners,
        no_mcp: args.no_mcp,
    };
    let server = Server::start(config, Arc::new(Mutex::new(factory)), options).await?;
    let shutdown = server.shutdown_token();
    tokio::spawn(async move {
        signals.recv().await;
        tracing::info!("shutting down (a second signal exits at once)");
        shutdown.cancel();
        signals.recv().await;
        eprintln!("pza-power-supply: second signal during shutdown: exiting now");
        std::process::exit(i32::from(EXIT_SECOND_SIGNAL));
    });
    server.wait().await?;
    tracing::info!("stopped");
    Ok(ExitCode::SUCCESS)
}

/// SIGINT and SIGTERM on Unix; Ctrl+C elsewhere. Created once, so that no
/// signal is missed between two waits.
struct Signals {
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> anyhow::Result<Signals> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let listen =
                |kind| signal(kind).map_err(|e| anyhow::anyhow!("cannot listen for signals: {e}"));
            Ok(Signals {
                terminate: listen(SignalKind::terminate())?,
                interrupt: listen(SignalKind::interrupt())?,
            })
        }
        #[cfg(not(unix))]
        {
            Ok(Signals {})
        }
    }

    async fn recv(&mut self) {
        #[cfg(unix)]
        {
            tokio::select! {
                _ = self.terminate.recv() => {}
                _ = self.interrupt.recv() => {}
            }
        }
        #[cfg(not(unix))]
        {
            if tokio::signal::ctrl_c().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }
}

/// Runs a simulated device until SIGINT or SIGTERM, printing its path first.
pub async fn simulate(args: SimulateArgs) -> anyhow::Result<ExitCode> {
    let SimulatedModel::Kd3005p = args.model;
    let mut signals = Signals::new()?;
    let options = crate::simulator::SimulatorOptions {
        pacing: std::time::Duration::from_millis(args.pacing_ms),
        stray_iset_byte: !args.no_stray_byte,
        load_ohms: args.load_ohms,
        link: args.link,
        ..Default::default()
    };
    let simulator = crate::simulator::Simulator::start(options)
        .await
        .map_err(|e| anyhow::anyhow!("cannot start the kd3005p simulator: {e}"))?;
    let shown = simulator
        .link()
        .unwrap_or(simulator.path())
        .display()
        .to_string();
    println!("{}", simulator.path().display());
    eprintln!("kd3005p simulator ready: use serial_port: {{ name: \"{shown}\" }} in a kd3005p runner; Ctrl+C stops it");
    simulator
        .run_until(async move { signals.recv().await })
        .await
        .map_err(|e| anyhow::anyhow!("kd3005p simulator failed: {e}"))?;
    Ok(ExitCode::SUCCESS)
}

/// Prints what `list` asks; all sections when no flag is given.
pub fn list(args: ListArgs, factory: &DriverFactory) -> anyhow::Result<String> {
    let all = !(args.drivers || args.runners || args.mcps);
    let mut out = String::new();
    if all || args.drivers {
        out.push_str("drivers:\n");
        for m in factory.manifests() {
            let aliases = if m.aliases.is_empty() {
                String::new()
            } else {
                format!(" (alias: {})", m.aliases.join(", "))
            };
            out.push_str(&format!(
                "  {}{aliases}: {}; {}..{} V, {}..{} A\n",
                m.model,
                m.description,
                m.voltage_range.min,
                m.voltage_range.max,
                m.current_range.min,
                m.current_range.max
            ));
        }
    }
    if all || args.runners || args.mcps {
        let config = load_config(&args.config, factory)?;
        if all || args.runners {
            out.push_str(&format!("runners ({}):\n", config.source.display()));
            for (name, runner) in &config.runners {
                out.push_str(&format!("  {name}: model {}", runner.model));
                if !runner.description.is_empty() {
                    out.push_str(&format!(", \"{}\"", runner.description));
                }
                out.push('\n');
            }
        }
        if all || args.mcps {
            let mcp = &config.mcp;
            out.push_str("mcps:\n");
            let names: Vec<String> = config.runners.keys().cloned().collect();
            let state = if mcp.enable {
                ""
            } else {
                " (disabled: set mcp.enable)"
            };
            for url in pza_power_supply_mcp::urls(&mcp.host, mcp.port, &names) {
                out.push_str(&format!("  {url}{state}\n"));
            }
        }
    }
    Ok(out)
}

/// `pza-power-supply 0.1.0`.
pub fn version() -> String {
    format!("{} {}", env!("CARGO_PKG_NAME"), env!("CARGO_PKG_VERSION"))
}
