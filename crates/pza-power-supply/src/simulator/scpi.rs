//! A simulated SCPI instrument on TCP, one per profile: point a runner's
//! `tcp` at [`ScpiSimulator::addr`]. For a model with an RS-232 port,
//! [`ScpiPtySimulator`] serves the same instrument on a pseudo-terminal.
//!
//! It behaves like the instrument, as far as the driver can see:
//! - the model's dialect (Rigol channel selection and `:APPL?`, Siglent
//!   `CHn:` prefixes and `SYST:STAT?` bits, Keysight `(@n)` channel lists),
//!   long and short mnemonics, any case; `*IDN?` as the maker's firmware
//!   answers it; `SYST:ERR?` with the error queue;
//! - its channels, each with its range and a resistive load (CV below the
//!   current limit, CC at it, as in the `emulator`);
//! - sets are never answered; a set outside the channel range is ignored
//!   (and queued as error -222), an unknown command queued as error -113;
//! - the Siglent pacing quirk: a command that arrives less than
//!   [`ScpiSimulatorOptions::drop_window`] after the previous served one is
//!   dropped without a word, and counted in [`ScpiSimulator::dropped_commands`];
//! - one control connection at a time: a second connection is closed at
//!   once, and counted in [`ScpiSimulator::refused_connections`].
//!
//! For tests, [`ScpiSimulator::drop_connection`] closes the connection being
//! served (a cable pulled and put back), and
//! [`ScpiSimulator::set_online`]`(false)` also closes every new connection
//! until it is set back online (an instrument switched off); its settings are
//! kept either way.

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::kd3005p::SimulatedState;
use crate::drivers::emulator::{EmulatedDevice, DEFAULT_INITIAL_CURRENT, DEFAULT_LOAD_OHMS};
use crate::drivers::scpi::profile::{ChannelSpec, Profile};
use crate::drivers::scpi::protocol::{parse_number, round, Dialect};

/// The window in which the simulated SPD3303X drops a second command. Users
/// report commands lost when sent back to back, and none with 50 ms between
/// them; the driver paces at 100 ms (the programming guide's advice), so it
/// keeps a margin over the unit's need, as one would with a real unit.
pub const SIGLENT_DROP_WINDOW: Duration = Duration::from_millis(50);

/// Longest command line kept; a longer one is discarded as garbage.
const MAX_LINE: usize = 1024;

/// SCPI error -113: a header no command has.
const UNDEFINED_HEADER: &str = "-113,\"Undefined header\"";
/// SCPI error -222: a value outside the channel's range.
const DATA_OUT_OF_RANGE: &str = "-222,\"Data out of range\"";
/// SCPI error -224: a parameter that is not one the command takes.
const ILLEGAL_PARAMETER: &str = "-224,\"Illegal parameter value\"";
/// Longest error queue, as on the instruments; older errors are lost.
const ERROR_QUEUE_LEN: usize = 16;

/// How the simulated instrument behaves.
#[derive(Debug, Clone, PartialEq)]
pub struct ScpiSimulatorOptions {
    pub profile: &'static Profile,
    /// Address to listen on; port 0 takes a free one.
    pub addr: SocketAddr,
    /// Commands closer than this to the previous served one are dropped:
    /// the Siglent's quirk ([`ScpiSimulatorOptions::new`] sets it to
    /// [`SIGLENT_DROP_WINDOW`] for the Siglent, to zero for the others).
    pub drop_window: Duration,
    /// Resistance of the load on every output, in ohms (finite, > 0).
    pub load_ohms: f64,
    /// The `*IDN?` answer; `None` for the maker's own.
    pub idn: Option<String>,
}

impl ScpiSimulatorOptions {
    /// The instrument of `profile` on 127.0.0.1, on a free port.
    pub fn new(profile: &'static Profile) -> Self {
        ScpiSimulatorOptions {
            profile,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            drop_window: match profile.dialect {
                Dialect::Siglent => SIGLENT_DROP_WINDOW,
                Dialect::Rigol | Dialect::Keysight => Duration::ZERO,
            },
            load_ohms: DEFAULT_LOAD_OHMS,
            idn: None,
        }
    }
}

/// The `*IDN?` answer of a unit of `profile`.
pub fn default_idn(profile: &Profile) -> String {
    let model = profile.idn_models.first().copied().unwrap_or(profile.model);
    match profile.dialect {
        Dialect::Rigol => format!("RIGOL TECHNOLOGIES,{model},DP8C000000001,00.01.16"),
        Dialect::Siglent => {
            format!("Siglent Technologies,{model},SPD3XSIM000001,1.01.01.02.07,V3.0")
        }
        Dialect::Keysight => format!("Keysight Technologies,{model},MY00000001,1.0.4-1.0.0-1.06"),
    }
}

/// The instrument: its channels and its answers.
#[derive(Debug)]
struct Instrument {
    profile: &'static Profile,
    channels: Vec<EmulatedDevice>,
    /// Rigol: the channel that `:VOLT`, `:CURR` and `:OUTP ON` address.
    selected: u8,
    errors: VecDeque<&'static str>,
    idn: String,
}

impl Instrument {
    fn new(options: &ScpiSimulatorOptions) -> Self {
        let channels = options
            .profile
            .channels
            .iter()
            .map(|spec| EmulatedDevice {
                output_enabled: false,
                voltage_setpoint: 0.0,
                current_limit: DEFAULT_INITIAL_CURRENT.min(spec.current.max),
                load_ohms: options.load_ohms,
                initializations: 0,
            })
            .collect();
        Instrument {
            profile: options.profile,
            channels,
            selected: 1,
            errors: VecDeque::new(),
            idn: options
                .idn
                .clone()
                .unwrap_or_else(|| default_idn(options.profile)),
        }
    }

    fn push_error(&mut self, error: &'static str) {
        if self.errors.len() == ERROR_QUEUE_LEN {
            self.errors.pop_front();
        }
        self.errors.push_back(error);
    }

    fn spec(&self, channel: u8) -> Option<&'static ChannelSpec> {
        self.profile.channel(channel)
    }

    fn device(&mut self, channel: u8) -> &mut EmulatedDevice {
        // Callers check the channel against the profile first.
        &mut self.channels[usize::from(channel) - 1]
    }

    /// Applies one command line; returns its reply, if it has one.
    fn handle(&mut self, line: &str) -> Option<String> {
        let command = Command::parse(line)?;
        let result = match command.header.as_str() {
            "*IDN?" => Ok(Some(self.idn.clone())),
            _ if command.is(&["SYSTem", "ERRor?"]) || command.is(&["SYSTem", "ERRor", "NEXT?"]) => {
                Ok(Some(
                    self.errors
                        .pop_front()
                        .unwrap_or("0,\"No error\"")
                        .to_string(),
                ))
            }
            _ => match self.profile.dialect {
                Dialect::Rigol => self.rigol(&command),
                Dialect::Siglent => self.siglent(&command),
                Dialect::Keysight => self.keysight(&command),
            },
        };
        match result {
            Ok(reply) => reply,
            Err(error) => {
                tracing::debug!(line, error, "scpi simulator: command refused");
                self.push_error(error);
                None
            }
        }
    }

    /// Sets `setting` of `channel` to the value in `text`.
    fn set(&mut self, channel: u8, voltage: bool, text: &str) -> Reply {
        let spec = self.spec(channel).ok_or(ILLEGAL_PARAMETER)?;
        let value = parse_number(text).ok_or(ILLEGAL_PARAMETER)?;
        let (range, decimals) = if voltage {
            (spec.voltage, spec.voltage_decimals)
        } else {
            (spec.current, spec.current_decimals)
        };
        if !range.contains(value) {
            return Err(DATA_OUT_OF_RANGE);
        }
        let value = round(value, decimals);
        let device = self.device(channel);
        if voltage {
            device.voltage_setpoint = value;
        } else {
            device.current_limit = value;
        }
        Ok(None)
    }

    fn setpoint(&mut self, channel: u8, voltage: bool) -> Result<f64, &'static str> {
        self.spec(channel).ok_or(ILLEGAL_PARAMETER)?;
        let device = self.device(channel);
        Ok(if voltage {
            device.voltage_setpoint
        } else {
            device.current_limit
        })
    }

    fn measure(&mut self, channel: u8, voltage: bool) -> Result<f64, &'static str> {
        self.spec(channel).ok_or(ILLEGAL_PARAMETER)?;
        let (volts, amps) = self.device(channel).measure();
        Ok(if voltage { volts } else { amps })
    }

    fn output(&mut self, channel: u8, state: &str) -> Reply {
        self.spec(channel).ok_or(ILLEGAL_PARAMETER)?;
        let on = match state.trim().to_ascii_uppercase().as_str() {
            "ON" | "1" => true,
            "OFF" | "0" => false,
            _ => return Err(ILLEGAL_PARAMETER),
        };
        self.device(channel).output_enabled = on;
        Ok(None)
    }

    fn rigol(&mut self, c: &Command) -> Reply {
        let selected = self.selected;
        let channel_arg = |text: &str| rigol_channel(text).ok_or(ILLEGAL_PARAMETER);
        if c.is(&["INSTrument", "NSELect"]) {
            let n = c.args.trim().parse::<u8>().map_err(|_| ILLEGAL_PARAMETER)?;
            self.spec(n).ok_or(ILLEGAL_PARAMETER)?;
            self.selected = n;
            Ok(None)
        } else if c.is(&["INSTrument"]) || c.is(&["INSTrument", "SELect"]) {
            let n = channel_arg(&c.args)?;
            self.spec(n).ok_or(ILLEGAL_PARAMETER)?;
            self.selected = n;
            Ok(None)
        } else if c.is(&["INSTrument", "NSELect?"]) {
            Ok(Some(selected.to_string()))
        } else if c.is(&["VOLTage"]) || c.is(&["SOURce", "VOLTage"]) {
            self.set(selected, true, &c.args)
        } else if c.is(&["CURRent"]) || c.is(&["SOURce", "CURRent"]) {
            self.set(selected, false, &c.args)
        } else if c.is(&["VOLTage?"]) || c.is(&["SOURce", "VOLTage?"]) {
            Ok(Some(format!("{:.3}", self.setpoint(selected, true)?)))
        } else if c.is(&["CURRent?"]) || c.is(&["SOURce", "CURRent?"]) {
            Ok(Some(format!("{:.3}", self.setpoint(selected, false)?)))
        } else if c.is(&["APPLy"]) {
            let mut args = c.args.split(',');
            let n = channel_arg(args.next().unwrap_or(""))?;
            let volts = args.next();
            let amps = args.next();
            if args.next().is_some() {
                return Err(ILLEGAL_PARAMETER);
            }
            if let Some(v) = volts {
                self.set(n, true, v)?;
            }
            if let Some(a) = amps {
                self.set(n, false, a)?;
            }
            Ok(None)
        } else if c.is(&["APPLy?"]) {
            let n = if c.args.trim().is_empty() {
                selected
            } else {
                channel_arg(&c.args)?
            };
            let spec = self.spec(n).ok_or(ILLEGAL_PARAMETER)?;
            let volts = self.setpoint(n, true)?;
            let amps = self.setpoint(n, false)?;
            Ok(Some(format!(
                "CH{n}:{}V/{}A,{volts:.3},{amps:.3}",
                spec.voltage.max, spec.current.max
            )))
        } else if c.is(&["MEASure?"]) || c.is(&["MEASure", "VOLTage?"]) {
            let n = if c.args.trim().is_empty() {
                selected
            } else {
                channel_arg(&c.args)?
            };
            Ok(Some(format!("{:.3}", self.measure(n, true)?)))
        } else if c.is(&["MEASure", "CURRent?"]) {
            let n = if c.args.trim().is_empty() {
                selected
            } else {
                channel_arg(&c.args)?
            };
            Ok(Some(format!("{:.3}", self.measure(n, false)?)))
        } else if c.is(&["OUTPut"]) || c.is(&["OUTPut", "STATe"]) {
            match c.args.split_once(',') {
                Some((channel, state)) => {
                    let n = channel_arg(channel)?;
                    self.output(n, state)
                }
                None => self.output(selected, &c.args),
            }
        } else if c.is(&["OUTPut?"]) || c.is(&["OUTPut", "STATe?"]) {
            let n = if c.args.trim().is_empty() {
                selected
            } else {
                channel_arg(&c.args)?
            };
            self.spec(n).ok_or(ILLEGAL_PARAMETER)?;
            let on = self.device(n).output_enabled;
            Ok(Some(if on { "ON" } else { "OFF" }.to_string()))
        } else {
            Err(UNDEFINED_HEADER)
        }
    }

    fn siglent(&mut self, c: &Command) -> Reply {
        // `CH2:VOLT 5`: the channel is the first node of the header.
        let prefixed = c
            .nodes
            .first()
            .and_then(|node| rigol_channel(node))
            .map(|n| (n, Command::from_nodes(&c.nodes[1..], &c.args)));
        if let Some((n, rest)) = prefixed {
            return if rest.is(&["VOLTage"]) {
                self.set(n, true, &rest.args)
            } else if rest.is(&["CURRent"]) {
                self.set(n, false, &rest.args)
            } else if rest.is(&["VOLTage?"]) {
                Ok(Some(format!("{:.3}", self.setpoint(n, true)?)))
            } else if rest.is(&["CURRent?"]) {
                Ok(Some(format!("{:.3}", self.setpoint(n, false)?)))
            } else {
                Err(UNDEFINED_HEADER)
            };
        }
        let channel_arg = |text: &str| rigol_channel(text).ok_or(ILLEGAL_PARAMETER);
        if c.is(&["MEASure", "VOLTage?"]) {
            Ok(Some(format!(
                "{:.3}",
                self.measure(channel_arg(&c.args)?, true)?
            )))
        } else if c.is(&["MEASure", "CURRent?"]) {
            Ok(Some(format!(
                "{:.3}",
                self.measure(channel_arg(&c.args)?, false)?
            )))
        } else if c.is(&["OUTPut"]) {
            let (channel, state) = c.args.split_once(',').ok_or(ILLEGAL_PARAMETER)?;
            self.output(channel_arg(channel)?, state)
        } else if c.is(&["SYSTem", "STATus?"]) {
            Ok(Some(format!("0x{:04X}", self.siglent_status())))
        } else {
            Err(UNDEFINED_HEADER)
        }
    }

    /// Bits 0 and 1: CH1 and CH2 in CC; bits 2-3: 01, independent mode;
    /// bits 4 and 5: CH1 and CH2 on.
    fn siglent_status(&self) -> u32 {
        let mut word = 0b01 << 2;
        for (i, device) in self.channels.iter().enumerate().take(2) {
            let cc = device.output_enabled
                && device.voltage_setpoint / device.load_ohms > device.current_limit;
            if cc {
                word |= 1 << i;
            }
            if device.output_enabled {
                word |= 1 << (4 + i);
            }
        }
        word
    }

    fn keysight(&mut self, c: &Command) -> Reply {
        // `VOLT 5,(@1)` or `VOLT? (@1)`: the channel list ends the arguments.
        let (value, channel) = match c.args.rsplit_once("(@") {
            Some((before, list)) => {
                let n = list
                    .strip_suffix(')')
                    .and_then(|n| n.trim().parse::<u8>().ok())
                    .ok_or(ILLEGAL_PARAMETER)?;
                (before.trim().trim_end_matches(',').trim(), n)
            }
            None => return Err(ILLEGAL_PARAMETER),
        };
        let nr3 = |v: f64| Some(scpi_nr3(v));
        if c.is(&["VOLTage"]) || c.is(&["SOURce", "VOLTage"]) {
            self.set(channel, true, value)
        } else if c.is(&["CURRent"]) || c.is(&["SOURce", "CURRent"]) {
            self.set(channel, false, value)
        } else if c.is(&["VOLTage?"]) || c.is(&["SOURce", "VOLTage?"]) {
            Ok(nr3(self.setpoint(channel, true)?))
        } else if c.is(&["CURRent?"]) || c.is(&["SOURce", "CURRent?"]) {
            Ok(nr3(self.setpoint(channel, false)?))
        } else if c.is(&["MEASure", "VOLTage?"]) || c.is(&["MEASure", "SCALar", "VOLTage?"]) {
            Ok(nr3(self.measure(channel, true)?))
        } else if c.is(&["MEASure", "CURRent?"]) || c.is(&["MEASure", "SCALar", "CURRent?"]) {
            Ok(nr3(self.measure(channel, false)?))
        } else if c.is(&["OUTPut"]) || c.is(&["OUTPut", "STATe"]) {
            self.output(channel, value)
        } else if c.is(&["OUTPut?"]) || c.is(&["OUTPut", "STATe?"]) {
            self.spec(channel).ok_or(ILLEGAL_PARAMETER)?;
            Ok(Some(
                if self.device(channel).output_enabled {
                    "1"
                } else {
                    "0"
                }
                .to_string(),
            ))
        } else {
            Err(UNDEFINED_HEADER)
        }
    }

    fn state(&self, channel: u8) -> Option<SimulatedState> {
        self.spec(channel)?;
        let device = &self.channels[usize::from(channel) - 1];
        Some(SimulatedState {
            output_enabled: device.output_enabled,
            voltage_setpoint: device.voltage_setpoint,
            current_limit: device.current_limit,
        })
    }
}

/// A command's outcome: its reply, if any, or the SCPI error it queues.
type Reply = Result<Option<String>, &'static str>;

/// `CH2` (or `ch2`, ` CH2 `) as channel 2.
fn rigol_channel(text: &str) -> Option<u8> {
    let text = text.trim();
    let digits = text
        .get(..2)
        .filter(|p| p.eq_ignore_ascii_case("CH"))
        .map(|_| &text[2..])?;
    digits.parse::<u8>().ok()
}

/// One command line, its header split into nodes.
struct Command {
    /// Uppercase, without the leading `:`.
    header: String,
    nodes: Vec<String>,
    args: String,
}

impl Command {
    fn parse(line: &str) -> Option<Command> {
        let line = line.trim();
        if line.is_empty() {
            return None;
        }
        let (header, args) = match line.find(char::is_whitespace) {
            Some(at) => (&line[..at], line[at..].trim()),
            None => (line, ""),
        };
        let header = header.trim_start_matches(':').to_ascii_uppercase();
        let nodes = header.split(':').map(str::to_string).collect();
        Some(Command {
            header,
            nodes,
            args: args.to_string(),
        })
    }

    fn from_nodes(nodes: &[String], args: &str) -> Command {
        Command {
            header: nodes.join(":"),
            nodes: nodes.to_vec(),
            args: args.to_string(),
        }
    }

    /// True when the header is `pattern`, each node in its short form (the
    /// capitals) or its long form, and a final `?` on both or neither.
    fn is(&self, pattern: &[&str]) -> bool {
        self.nodes.len() == pattern.len()
            && self.nodes.iter().zip(pattern).all(|(node, p)| {
                let (p, query) = match p.strip_suffix('?') {
                    Some(p) => (p, true),
                    None => (*p, false),
                };
                let (node, node_query) = match node.strip_suffix('?') {
                    Some(n) => (n, true),
                    None => (node.as_str(), false),
                };
                let short: String = p.chars().filter(char::is_ascii_uppercase).collect();
                query == node_query && (node == short || node == p.to_ascii_uppercase())
            })
    }
}

/// `+1.20000E+01`: the NR3 format of the E36300's replies.
fn scpi_nr3(value: f64) -> String {
    if value == 0.0 {
        return "+0.00000E+00".to_string();
    }
    let sign = if value < 0.0 { '-' } else { '+' };
    let magnitude = value.abs();
    let mut exponent = magnitude.log10().floor() as i32;
    let mut mantissa = magnitude / 10f64.powi(exponent);
    // 9.999999 rounds to 10.00000 at 5 decimals: carry into the exponent.
    if (mantissa * 1e5).round() >= 1e6 {
        exponent += 1;
        mantissa /= 10.0;
    }
    let exponent_sign = if exponent < 0 { '-' } else { '+' };
    format!("{sign}{mantissa:.5}E{exponent_sign}{:02}", exponent.abs())
}

/// What the serving tasks and the [`ScpiSimulator`] handle share.
struct Shared {
    instrument: Mutex<Instrument>,
    drop_window: Duration,
    online: AtomicBool,
    busy: AtomicBool,
    /// Cancels the connection being served.
    current: Mutex<Option<CancellationToken>>,
    served: AtomicU64,
    dropped: AtomicU64,
    accepted: AtomicU64,
    refused: AtomicU64,
}

impl Shared {
    fn new(options: &ScpiSimulatorOptions) -> Self {
        Shared {
            instrument: Mutex::new(Instrument::new(options)),
            drop_window: options.drop_window,
            online: AtomicBool::new(true),
            busy: AtomicBool::new(false),
            current: Mutex::new(None),
            served: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            accepted: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        }
    }

    fn instrument(&self) -> MutexGuard<'_, Instrument> {
        // No code panics while holding this lock, so a poisoned lock still
        // guards consistent data.
        self.instrument.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn current(&self) -> MutexGuard<'_, Option<CancellationToken>> {
        self.current.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A running simulated instrument. Dropping it stops it.
pub struct ScpiSimulator {
    addr: SocketAddr,
    profile: &'static Profile,
    shared: Arc<Shared>,
    stop: CancellationToken,
    task: Option<JoinHandle<io::Result<()>>>,
}

impl ScpiSimulator {
    /// Binds the address and starts serving.
    pub async fn start(options: ScpiSimulatorOptions) -> io::Result<ScpiSimulator> {
        check_load(options.load_ohms)?;
        let listener = TcpListener::bind(options.addr).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::new(&options));
        let stop = CancellationToken::new();
        let task = tokio::spawn(accept(listener, Arc::clone(&shared), stop.clone()));
        tracing::info!(%addr, model = options.profile.model, "scpi simulator started");
        Ok(ScpiSimulator {
            addr,
            profile: options.profile,
            shared,
            stop,
            task: Some(task),
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn profile(&self) -> &'static Profile {
        self.profile
    }

    /// Channel `n`'s settings now; `None` for a channel the model lacks.
    pub fn state(&self, channel: u8) -> Option<SimulatedState> {
        self.shared.instrument().state(channel)
    }

    /// Sets the load on channel `n`, in ohms (finite, > 0; others are ignored).
    pub fn set_load(&self, channel: u8, ohms: f64) {
        let mut instrument = self.shared.instrument();
        if ohms.is_finite() && ohms > 0.0 && instrument.spec(channel).is_some() {
            instrument.device(channel).load_ohms = ohms;
        }
    }

    /// Closes the connection being served, if any; the next one is served.
    pub fn drop_connection(&self) {
        if let Some(token) = self.shared.current().take() {
            token.cancel();
        }
    }

    /// Offline, it closes the connection being served and every new one,
    /// like an instrument switched off; online again, it serves as before,
    /// with its settings kept.
    pub fn set_online(&self, online: bool) {
        self.shared.online.store(online, Ordering::SeqCst);
        if !online {
            self.drop_connection();
        }
    }

    /// Commands served (answered, or applied).
    pub fn served_commands(&self) -> u64 {
        self.shared.served.load(Ordering::SeqCst)
    }

    /// Commands dropped for coming inside the drop window.
    pub fn dropped_commands(&self) -> u64 {
        self.shared.dropped.load(Ordering::SeqCst)
    }

    /// Connections served since the start.
    pub fn accepted_connections(&self) -> u64 {
        self.shared.accepted.load(Ordering::SeqCst)
    }

    /// Connections closed at once: a second connection, or one while offline.
    pub fn refused_connections(&self) -> u64 {
        self.shared.refused.load(Ordering::SeqCst)
    }

    /// Stops serving and closes the listener.
    pub async fn stop(mut self) -> io::Result<()> {
        self.stop.cancel();
        match self.task.take() {
            Some(task) => joined(task.await),
            None => Ok(()),
        }
    }

    /// Serves until `shutdown` completes, then stops; or until the listener
    /// fails, with its error.
    pub async fn run_until(mut self, shutdown: impl Future<Output = ()>) -> io::Result<()> {
        let ended = match self.task.as_mut() {
            None => return Ok(()),
            Some(task) => tokio::select! {
                _ = shutdown => None,
                ended = task => Some(ended),
            },
        };
        match ended {
            None => self.stop().await,
            Some(ended) => {
                self.task = None;
                joined(ended)
            }
        }
    }
}

impl Drop for ScpiSimulator {
    fn drop(&mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

fn check_load(ohms: f64) -> io::Result<()> {
    if ohms.is_finite() && ohms > 0.0 {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("load_ohms {ohms} must be a finite number > 0"),
        ))
    }
}

fn joined(result: Result<io::Result<()>, tokio::task::JoinError>) -> io::Result<()> {
    result.unwrap_or_else(|e| Err(io::Error::other(format!("simulator task failed: {e}"))))
}

/// Accepts connections: serves one at a time, closes the others at once.
async fn accept(
    listener: TcpListener,
    shared: Arc<Shared>,
    stop: CancellationToken,
) -> io::Result<()> {
    loop {
        let (stream, peer) = tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            accepted = listener.accept() => accepted?,
        };
        let free = shared.online.load(Ordering::SeqCst)
            && shared
                .busy
                .compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok();
        if !free {
            shared.refused.fetch_add(1, Ordering::SeqCst);
            tracing::debug!(%peer, "scpi simulator: connection closed at once (busy or offline)");
            drop(stream);
            continue;
        }
        shared.accepted.fetch_add(1, Ordering::SeqCst);
        let token = stop.child_token();
        *shared.current() = Some(token.clone());
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            if let Err(e) = serve(stream, &shared, token).await {
                tracing::debug!(%peer, "scpi simulator: connection ended: {e}");
            }
            shared.busy.store(false, Ordering::SeqCst);
        });
    }
}

/// Commands framed from a byte stream, and the Siglent drop window.
#[derive(Default)]
struct LineFeed {
    pending: Vec<u8>,
    last_served: Option<Instant>,
}

impl LineFeed {
    /// Takes `bytes` received now; returns the replies to write back.
    fn feed(&mut self, bytes: &[u8], shared: &Shared) -> Vec<u8> {
        self.pending.extend_from_slice(bytes);
        // Every command framed from this read arrived now: the second of two
        // commands sent back to back falls inside the drop window.
        let now = Instant::now();
        let mut replies = Vec::new();
        while let Some(end) = self.pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.pending.drain(..=end).collect();
            let line = String::from_utf8_lossy(&line);
            if line.trim().is_empty() {
                continue;
            }
            if !shared.drop_window.is_zero()
                && self
                    .last_served
                    .is_some_and(|last| now.duration_since(last) < shared.drop_window)
            {
                shared.dropped.fetch_add(1, Ordering::SeqCst);
                tracing::debug!(line = %line.trim(), "scpi simulator: command inside the drop window dropped");
                continue;
            }
            self.last_served = Some(now);
            shared.served.fetch_add(1, Ordering::SeqCst);
            if let Some(reply) = shared.instrument().handle(&line) {
                replies.extend_from_slice(reply.as_bytes());
                replies.push(b'\n');
            }
        }
        if self.pending.len() > MAX_LINE {
            self.pending.clear();
        }
        replies
    }
}

/// Serves one connection until it closes or is dropped.
async fn serve(mut stream: TcpStream, shared: &Shared, token: CancellationToken) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let mut lines = LineFeed::default();
    let mut chunk = [0u8; 512];
    loop {
        let n = tokio::select! {
            _ = token.cancelled() => return Ok(()),
            read = stream.read(&mut chunk) => read?,
        };
        if n == 0 {
            return Ok(());
        }
        let replies = lines.feed(&chunk[..n], shared);
        if !replies.is_empty() {
            stream.write_all(&replies).await?;
        }
    }
}

/// A simulated instrument on a pseudo-terminal, for the models with an
/// RS-232 port: open [`ScpiPtySimulator::path`] as the runner's
/// `serial_port.name`. The same instrument as on TCP; the baud rate does
/// not matter on a pty. Dropping it stops it.
pub struct ScpiPtySimulator {
    path: std::path::PathBuf,
    shared: Arc<Shared>,
    stop: CancellationToken,
    task: Option<JoinHandle<io::Result<()>>>,
}

impl ScpiPtySimulator {
    /// Creates the pty and starts answering on it (`options.addr` is not used).
    pub async fn start(options: ScpiSimulatorOptions) -> io::Result<ScpiPtySimulator> {
        check_load(options.load_ohms)?;
        let pty = super::pty::Pty::open()?;
        let path = pty.path().to_path_buf();
        let shared = Arc::new(Shared::new(&options));
        let stop = CancellationToken::new();
        let task = tokio::spawn(serve_pty(pty, Arc::clone(&shared), stop.clone()));
        Ok(ScpiPtySimulator {
            path,
            shared,
            stop,
            task: Some(task),
        })
    }

    /// The pty's slave side, to open as the serial port.
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// Channel `n`'s settings now; `None` for a channel the model lacks.
    pub fn state(&self, channel: u8) -> Option<SimulatedState> {
        self.shared.instrument().state(channel)
    }

    /// Stops answering and closes the pty.
    pub async fn stop(mut self) -> io::Result<()> {
        self.stop.cancel();
        match self.task.take() {
            Some(task) => joined(task.await),
            None => Ok(()),
        }
    }
}

impl Drop for ScpiPtySimulator {
    fn drop(&mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

async fn serve_pty(
    pty: super::pty::Pty,
    shared: Arc<Shared>,
    stop: CancellationToken,
) -> io::Result<()> {
    let mut lines = LineFeed::default();
    let mut chunk = [0u8; 512];
    loop {
        let n = tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            read = pty.read(&mut chunk) => read?,
        };
        let replies = lines.feed(&chunk[..n], &shared);
        if !replies.is_empty() {
            pty.write_all(&replies).await?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::drivers::scpi::profile::{KEYSIGHT_E36312A, RIGOL_DP832, SIGLENT_SPD3303X};

    fn instrument(profile: &'static Profile) -> Instrument {
        Instrument::new(&ScpiSimulatorOptions::new(profile))
    }

    #[test]
    fn rigol_dialect() {
        let mut i = instrument(&RIGOL_DP832);
        assert_eq!(
            i.handle("*IDN?").unwrap(),
            "RIGOL TECHNOLOGIES,DP832,DP8C000000001,00.01.16"
        );
        assert_eq!(i.handle(":INST:NSEL 2"), None);
        assert_eq!(i.handle(":VOLT 12.5"), None);
        assert_eq!(i.handle(":source:current 0.5"), None);
        assert_eq!(i.handle(":APPL? CH2").unwrap(), "CH2:30V/3A,12.500,0.500");
        assert_eq!(i.handle(":APPL? CH1").unwrap(), "CH1:30V/3A,0.000,1.000");
        assert_eq!(i.handle(":INSTrument:NSELect?").unwrap(), "2");
        assert_eq!(i.handle(":OUTP CH2,ON"), None);
        assert_eq!(i.handle(":OUTP? CH2").unwrap(), "ON");
        assert_eq!(i.handle(":OUTP? CH1").unwrap(), "OFF");
        // 12.5 V on 10 Ω draws 1.25 A: the 0.5 A limit holds it at 5 V.
        assert_eq!(i.handle(":MEAS:VOLT? CH2").unwrap(), "5.000");
        assert_eq!(i.handle(":MEAS:CURR? CH2").unwrap(), "0.500");
        assert_eq!(i.handle(":APPL CH3,3.3,2"), None);
        assert_eq!(i.handle(":APPL? CH3").unwrap(), "CH3:5V/3A,3.300,2.000");
        assert_eq!(i.handle("SYST:ERR?").unwrap(), "0,\"No error\"");
    }

    #[test]
    fn sets_outside_the_channel_range_are_ignored_and_queued_as_errors() {
        let mut i = instrument(&RIGOL_DP832);
        i.handle(":INST:NSEL 3");
        i.handle(":VOLT 6");
        assert_eq!(i.state(3).unwrap().voltage_setpoint, 0.0);
        assert_eq!(i.handle("SYST:ERR?").unwrap(), DATA_OUT_OF_RANGE);
        assert_eq!(i.handle(":INST:NSEL 4"), None);
        assert_eq!(i.handle("SYST:ERR?").unwrap(), ILLEGAL_PARAMETER);
        assert_eq!(i.handle(":BOGUS?"), None);
        assert_eq!(i.handle("SYST:ERR?").unwrap(), UNDEFINED_HEADER);
    }

    #[test]
    fn siglent_dialect_and_status_word() {
        let mut i = instrument(&SIGLENT_SPD3303X);
        assert!(i
            .handle("*IDN?")
            .unwrap()
            .starts_with("Siglent Technologies,SPD3303X,"));
        i.handle("CH1:VOLT 5");
        i.handle("CH1:CURR 1");
        i.handle("CH2:VOLTage 32");
        i.handle("OUTP CH1,ON");
        assert_eq!(i.handle("CH1:VOLT?").unwrap(), "5.000");
        assert_eq!(i.handle("ch2:volt?").unwrap(), "32.000");
        assert_eq!(i.handle("MEAS:CURR? CH1").unwrap(), "0.500");
        assert_eq!(i.handle("SYST:STAT?").unwrap(), "0x0014");
        i.handle("OUTP CH2,ON");
        // CH2: 32 V on 10 Ω would draw 3.2 A, above its 1 A limit: CC.
        assert_eq!(i.handle("SYSTem:STATus?").unwrap(), "0x0036");
        i.handle("CH3:VOLT 1");
        assert_eq!(i.handle("SYST:ERR?").unwrap(), ILLEGAL_PARAMETER);
    }

    #[test]
    fn keysight_dialect_with_channel_lists() {
        let mut i = instrument(&KEYSIGHT_E36312A);
        i.handle("VOLT 3.3,(@1)");
        i.handle("CURR 0.25,(@2)");
        i.handle("OUTP ON,(@1)");
        assert_eq!(i.handle("VOLT? (@1)").unwrap(), "+3.30000E+00");
        assert_eq!(i.handle("CURR? (@2)").unwrap(), "+2.50000E-01");
        assert_eq!(i.handle("OUTP? (@1)").unwrap(), "1");
        assert_eq!(i.handle("OUTP? (@2)").unwrap(), "0");
        assert_eq!(i.handle("MEAS:VOLT? (@1)").unwrap(), "+3.30000E+00");
        i.handle("VOLT 7,(@1)");
        assert_eq!(i.handle("SYST:ERR?").unwrap(), DATA_OUT_OF_RANGE);
    }

    #[test]
    fn nr3_numbers() {
        assert_eq!(scpi_nr3(12.0), "+1.20000E+01");
        assert_eq!(scpi_nr3(0.0), "+0.00000E+00");
        assert_eq!(scpi_nr3(-0.001), "-1.00000E-03");
        assert_eq!(scpi_nr3(9.9999999), "+1.00000E+01");
        for v in [0.001, 0.5, 3.3, 25.0, 5.123] {
            assert_eq!(parse_number(&scpi_nr3(v)), Some(v));
        }
    }
}
