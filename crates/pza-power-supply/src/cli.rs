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
    /// Simulate a device (a KD3005P on a pty, an SCPI instrument on TCP), to run the server without hardware.
    Simulate(SimulateArgs),
    /// One-shot commands to the power supplies of a running server.
    Ctl(crate::ctl::CtlArgs),
    /// The MCP server on stdin/stdout, for AI assistants that launch a command.
    Mcp(crate::mcp::McpArgs),
}

/// The devices that can be simulated.
#[derive(Debug, Subcommand)]
pub enum SimulatedDevice {
    /// Korad KD3005P / KA3005P, on a pseudo-terminal.
    Kd3005p(Kd3005pSimulateArgs),
    /// An SCPI instrument (rigol-dp832, siglent-spd3303x, keysight-e36312a), on TCP.
    Scpi(ScpiSimulateArgs),
}

#[derive(Debug, Args)]
pub struct SimulateArgs {
    #[command(subcommand)]
    pub device: SimulatedDevice,
}

#[derive(Debug, Args)]
pub struct Kd3005pSimulateArgs {
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
pub struct ScpiSimulateArgs {
    /// The model (or alias): rigol-dp832, siglent-spd3303x, keysight-e36312a.
    #[arg(long, value_name = "MODEL")]
    pub model: String,
    /// Address to listen on.
    #[arg(long, value_name = "IP", default_value = "127.0.0.1")]
    pub addr: std::net::IpAddr,
    /// Port to listen on [default: the model's SCPI port; 0 takes a free one].
    #[arg(long, value_name = "N")]
    pub port: Option<u16>,
    /// Resistance of the load on every output, in ohms.
    #[arg(long, value_name = "OHMS", default_value_t = 10.0)]
    pub load_ohms: f64,
    /// Commands closer than this to the previous one are dropped [default:
    /// 50 for the Siglent, 0 for the others].
    #[arg(long, value_name = "MS")]
    pub drop_window_ms: Option<u64>,
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

/// Runs a simulated device until SIGINT or SIGTERM, printing where to reach
/// it first.
pub async fn simulate(args: SimulateArgs) -> anyhow::Result<ExitCode> {
    match args.device {
        SimulatedDevice::Kd3005p(args) => simulate_kd3005p(args).await,
        SimulatedDevice::Scpi(args) => simulate_scpi(args).await,
    }
}

async fn simulate_kd3005p(args: Kd3005pSimulateArgs) -> anyhow::Result<ExitCode> {
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

/// Prints the bound address (`127.0.0.1:5555`) on stdout, a config hint on
/// stderr, and serves until a signal.
async fn simulate_scpi(args: ScpiSimulateArgs) -> anyhow::Result<ExitCode> {
    use crate::drivers::scpi::profile::{Profile, PROFILES};
    let profile = Profile::find(&args.model).ok_or_else(|| {
        let names: Vec<&str> = PROFILES.iter().map(|p| p.model).collect();
        anyhow::anyhow!(
            "--model: unknown SCPI model \"{}\" (available: {})",
            args.model,
            names.join(", ")
        )
    })?;
    let mut signals = Signals::new()?;
    let mut options = crate::simulator::ScpiSimulatorOptions::new(profile);
    options.addr = std::net::SocketAddr::new(args.addr, args.port.unwrap_or(profile.tcp_port));
    options.load_ohms = args.load_ohms;
    if let Some(ms) = args.drop_window_ms {
        options.drop_window = std::time::Duration::from_millis(ms);
    }
    let simulator = crate::simulator::ScpiSimulator::start(options)
        .await
        .map_err(|e| anyhow::anyhow!("cannot start the {} simulator: {e}", profile.model))?;
    let addr = simulator.addr();
    println!("{addr}");
    eprintln!(
        "{} simulator ready: use model: \"{}\", channel: 1, tcp: {{ addr: \"{}\", port: {} }} in a runner; Ctrl+C stops it",
        profile.name,
        profile.model,
        addr.ip(),
        addr.port()
    );
    simulator
        .run_until(async move { signals.recv().await })
        .await
        .map_err(|e| anyhow::anyhow!("{} simulator failed: {e}", profile.model))?;
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
