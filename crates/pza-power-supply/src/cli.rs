//! The command line: `run`, `list`, `version`, `simulate`, `ctl`, `tui`.

use std::io::IsTerminal as _;
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
    /// Watch and drive the power supplies of a running server in the terminal.
    Tui(TuiArgs),
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
    /// Do not show the terminal UI (it is shown when tui.enable is true and stdout is a terminal).
    #[arg(long)]
    pub no_tui: bool,
}

#[derive(Debug, Args)]
pub struct TuiArgs {
    #[command(flatten)]
    pub connect: crate::connect::ConnectArgs,
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

/// Wait for the server's own broker no longer than this.
const DEFAULT_TIMEOUT: std::time::Duration = pza_power_supply_client::DEFAULT_TIMEOUT;

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
