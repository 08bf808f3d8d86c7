//! `simulate`: a simulated device (a KD3005P on a pty, an SCPI instrument
//! on TCP) served until a signal, to run the server without hardware.

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};

use super::millis;
use super::signals::Signals;
use crate::drivers::emulator::DEFAULT_LOAD_OHMS;
use crate::simulator::kd3005p::DEFAULT_PACING;

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
    #[arg(long, value_name = "MS", default_value_t = millis(DEFAULT_PACING))]
    pub pacing_ms: u64,
    /// Resistance of the load on the output, in ohms.
    #[arg(long, value_name = "OHMS", default_value_t = DEFAULT_LOAD_OHMS)]
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
    #[arg(long, value_name = "IP", default_value_t = IpAddr::V4(Ipv4Addr::LOCALHOST))]
    pub addr: IpAddr,
    /// Port to listen on [default: the model's SCPI port; 0 takes a free one].
    #[arg(long, value_name = "N")]
    pub port: Option<u16>,
    /// Resistance of the load on every output, in ohms.
    #[arg(long, value_name = "OHMS", default_value_t = DEFAULT_LOAD_OHMS)]
    pub load_ohms: f64,
    /// Commands closer than this to the previous one are dropped [default:
    /// 50 for the Siglent, 0 for the others].
    #[arg(long, value_name = "MS")]
    pub drop_window_ms: Option<u64>,
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
