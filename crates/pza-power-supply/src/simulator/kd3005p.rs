//! A simulated Korad KD3005P on a pseudo-terminal: open [`Simulator::path`]
//! as the `serial_port.name` of a `kd3005p` runner.
//!
//! It behaves like the device, quirks included:
//! - commands come with no terminator and are framed by their grammar
//!   (`VSET1:dd.dd`, `ISET1:d.ddd`, `OUT1`, `OUT0`, and the queries that end
//!   in `?`); a stray `\r` or `\n` is ignored;
//! - sets are never answered; value queries answer 5 characters and
//!   `STATUS?` one byte, with no terminator; `*IDN?` answers
//!   [`SimulatorOptions::idn`], or nothing when it is empty;
//! - `ISET1?` sends a sixth, stray byte ([`STRAY_ISET_BYTE`]) when
//!   [`SimulatorOptions::stray_iset_byte`] is set, as some firmware does;
//! - `VOUT1?` and `IOUT1?` come from a resistive load (CV below the current
//!   limit, CC at it), the same model as the `emulator`;
//! - a request that arrives less than [`SimulatorOptions::pacing`] after the
//!   previous *served* request is dropped without an answer, as slow units
//!   do, and counted in [`Simulator::dropped_requests`].
//!
//! # Stopping and resuming
//!
//! A pty cannot be recreated on the same path, so a simulator that must
//! "go away and come back" for a driver does not stop: it stops answering.
//! [`Simulator::set_responsive`]`(false)` makes it read and discard every
//! byte, like a hung unit, so the driver times out; `set_responsive(true)`
//! brings it back on the same path with its setpoints kept, as a power
//! supply keeps them. [`Simulator::stop`] ends it for good and removes the
//! pty.

use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::{sleep, timeout, Instant};

use super::pty::Pty;
use crate::drivers::emulator::{EmulatedDevice, DEFAULT_INITIAL_CURRENT, DEFAULT_LOAD_OHMS};
use crate::drivers::kd3005p::protocol::{CURRENT_RANGE, VOLTAGE_RANGE};

/// Time the simulated unit needs after a request before it takes the next
/// one; the same 80 ms as libsigrok's `DEVICE_PROCESSING_TIME_MS`.
pub const DEFAULT_PACING: Duration = Duration::from_millis(80);

/// What `*IDN?` answers by default.
pub const DEFAULT_IDN: &str = "KORAD KD3005P V2.0";

/// The sixth byte sent after an `ISET1?` reply when the quirk is on. It is
/// not a digit nor white space, so a driver that leaves it in the buffer
/// reads the next reply shifted by one byte and fails to parse it, rather
/// than reading a plausible wrong value.
pub const STRAY_ISET_BYTE: u8 = 0x00;

/// Silence after which an incomplete command is ended: a value command with
/// at least one digit (`VSET1:5`) is served, anything else is discarded. The
/// driver always sends whole commands, so this only serves people typing.
pub const INCOMPLETE_COMMAND_TIMEOUT: Duration = Duration::from_millis(200);

/// How long a reply may wait for room in the pty. Replies nobody reads
/// (no driver has the port open) pile up in the pty; once it is full they
/// are dropped instead of stalling the simulator.
const REPLY_WRITE_TIMEOUT: Duration = Duration::from_millis(500);

/// How the simulated unit behaves.
#[derive(Debug, Clone, PartialEq)]
pub struct SimulatorOptions {
    /// Requests closer than this to the previous served one are dropped.
    pub pacing: Duration,
    /// Send [`STRAY_ISET_BYTE`] after every `ISET1?` reply.
    pub stray_iset_byte: bool,
    /// Resistance of the load on the output, in ohms (finite, > 0).
    pub load_ohms: f64,
    /// The `*IDN?` answer; empty for a unit that does not answer it.
    pub idn: String,
    /// A symbolic link to create to the pty, for a stable path in a config
    /// file. An existing symbolic link there is replaced; any other file is
    /// an error. The link is removed when the simulator stops.
    pub link: Option<PathBuf>,
}

impl Default for SimulatorOptions {
    fn default() -> Self {
        SimulatorOptions {
            pacing: DEFAULT_PACING,
            stray_iset_byte: true,
            load_ohms: DEFAULT_LOAD_OHMS,
            idn: DEFAULT_IDN.to_string(),
            link: None,
        }
    }
}

/// The settings of the simulated unit, as its front panel would show them.
#[derive(Debug, Clone, PartialEq)]
pub struct SimulatedState {
    pub output_enabled: bool,
    pub voltage_setpoint: f64,
    pub current_limit: f64,
}

/// One command, as framed from the byte stream.
#[derive(Debug, Clone, PartialEq)]
enum Request {
    SetVoltage(f64),
    SetCurrent(f64),
    Output(bool),
    VoltageSetpoint,
    CurrentLimit,
    OutputVoltage,
    OutputCurrent,
    Status,
    Identity,
}

/// What the head of the input buffer holds.
#[derive(Debug, Clone, PartialEq)]
enum Framed {
    /// A whole request, taking this many bytes.
    Request(Request, usize),
    /// The start of a request: wait for more bytes.
    Incomplete,
    /// This many bytes that are no request (a terminator, garbage).
    Skip(usize),
}

/// Longest value of a set command: `dd.dd` or `d.ddd`.
const VALUE_LEN: usize = 5;

enum Grammar {
    Plain(Request),
    Value(fn(f64) -> Request),
}

const COMMANDS: &[(&[u8], Grammar)] = &[
    (b"VSET1:", Grammar::Value(Request::SetVoltage)),
    (b"ISET1:", Grammar::Value(Request::SetCurrent)),
    (b"VSET1?", Grammar::Plain(Request::VoltageSetpoint)),
    (b"ISET1?", Grammar::Plain(Request::CurrentLimit)),
    (b"VOUT1?", Grammar::Plain(Request::OutputVoltage)),
    (b"IOUT1?", Grammar::Plain(Request::OutputCurrent)),
    (b"STATUS?", Grammar::Plain(Request::Status)),
    (b"*IDN?", Grammar::Plain(Request::Identity)),
    (b"OUT1", Grammar::Plain(Request::Output(true))),
    (b"OUT0", Grammar::Plain(Request::Output(false))),
];

/// Frames the request at the head of `buf`. With `at_idle`, the line has
/// been silent for [`INCOMPLETE_COMMAND_TIMEOUT`]: nothing more will come to
/// complete the head.
fn frame(buf: &[u8], at_idle: bool) -> Framed {
    match buf.first() {
        None => return Framed::Incomplete,
        Some(b'\r' | b'\n') => return Framed::Skip(1),
        Some(_) => {}
    }
    let mut could_grow = false;
    for (keyword, grammar) in COMMANDS {
        if let Some(rest) = buf.strip_prefix(*keyword) {
            match grammar {
                Grammar::Plain(request) => return Framed::Request(request.clone(), keyword.len()),
                Grammar::Value(make) => {
                    let digits = rest
                        .iter()
                        .take(VALUE_LEN)
                        .take_while(|b| b.is_ascii_digit() || **b == b'.')
                        .count();
                    let ended = digits == VALUE_LEN || digits < rest.len() || at_idle;
                    if !ended {
                        return Framed::Incomplete;
                    }
                    let used = keyword.len() + digits;
                    return match std::str::from_utf8(&rest[..digits])
                        .ok()
                        .and_then(|t| t.parse::<f64>().ok())
                    {
                        Some(value) => Framed::Request(make(value), used),
                        None => Framed::Skip(used),
                    };
                }
            }
        }
        could_grow |= keyword.starts_with(buf);
    }
    match (could_grow, at_idle) {
        (true, false) => Framed::Incomplete,
        (true, true) => Framed::Skip(buf.len()),
        (false, _) => Framed::Skip(1),
    }
}

/// The simulated unit: its settings and its answers.
#[derive(Debug, Clone)]
struct Device {
    load: EmulatedDevice,
    stray_iset_byte: bool,
    idn: String,
}

impl Device {
    fn new(options: &SimulatorOptions) -> Self {
        Device {
            load: EmulatedDevice {
                output_enabled: false,
                voltage_setpoint: 0.0,
                current_limit: DEFAULT_INITIAL_CURRENT,
                load_ohms: options.load_ohms,
                initializations: 0,
            },
            stray_iset_byte: options.stray_iset_byte,
            idn: options.idn.clone(),
        }
    }

    /// Applies `request`; returns the reply, if the request has one.
    fn handle(&mut self, request: Request) -> Option<Vec<u8>> {
        // Like the unit, a set outside the range is ignored: the driver's
        // read-back then sees the old value.
        match request {
            Request::SetVoltage(v) => {
                if VOLTAGE_RANGE.contains(v) {
                    self.load.voltage_setpoint = round(v, 2);
                }
                None
            }
            Request::SetCurrent(a) => {
                if CURRENT_RANGE.contains(a) {
                    self.load.current_limit = round(a, 3);
                }
                None
            }
            Request::Output(on) => {
                self.load.output_enabled = on;
                None
            }
            Request::VoltageSetpoint => Some(fixed_width(self.load.voltage_setpoint, 2)),
            Request::CurrentLimit => {
                let mut reply = fixed_width(self.load.current_limit, 3);
                if self.stray_iset_byte {
                    reply.push(STRAY_ISET_BYTE);
                }
                Some(reply)
            }
            Request::OutputVoltage => Some(fixed_width(self.load.measure().0, 2)),
            Request::OutputCurrent => Some(fixed_width(self.load.measure().1, 3)),
            Request::Status => Some(vec![self.status()]),
            Request::Identity => (!self.idn.is_empty()).then(|| self.idn.clone().into_bytes()),
        }
    }

    /// Bit 6: output on; bit 0: CV (set) or CC (clear). An output that is
    /// off draws nothing and reports CV.
    fn status(&self) -> u8 {
        let load = &self.load;
        let cc = load.output_enabled && load.voltage_setpoint / load.load_ohms > load.current_limit;
        let mut byte = 0;
        if load.output_enabled {
            byte |= 1 << 6;
        }
        if !cc {
            byte |= 1 << 0;
        }
        byte
    }

    fn state(&self) -> SimulatedState {
        SimulatedState {
            output_enabled: self.load.output_enabled,
            voltage_setpoint: self.load.voltage_setpoint,
            current_limit: self.load.current_limit,
        }
    }
}

fn round(value: f64, decimals: i32) -> f64 {
    let scale = 10f64.powi(decimals);
    (value * scale).round() / scale
}

/// `value` in exactly 5 characters, as the unit prints it (`05.00`,
/// `1.000`), kept inside what 5 characters can show.
fn fixed_width(value: f64, decimals: usize) -> Vec<u8> {
    let max = if decimals == 2 { 99.99 } else { 9.999 };
    format!("{:05.1$}", value.clamp(0.0, max), decimals).into_bytes()
}

/// What the serving task and the [`Simulator`] handle share.
struct Shared {
    device: Mutex<Device>,
    responsive: AtomicBool,
    served: AtomicU64,
    dropped: AtomicU64,
}

impl Shared {
    fn device(&self) -> MutexGuard<'_, Device> {
        // No code panics while holding this lock, so a poisoned lock still
        // guards consistent data.
        self.device.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A running simulated KD3005P. Dropping it stops it, like [`Simulator::stop`]
/// without waiting.
pub struct Simulator {
    path: PathBuf,
    link: Option<PathBuf>,
    shared: Arc<Shared>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<io::Result<()>>>,
}

impl Simulator {
    /// Creates the pty and starts answering on it.
    pub async fn start(options: SimulatorOptions) -> io::Result<Simulator> {
        if !(options.load_ohms.is_finite() && options.load_ohms > 0.0) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "load_ohms {} must be a finite number > 0",
                    options.load_ohms
                ),
            ));
        }
        let pty = Pty::open()?;
        let path = pty.path().to_path_buf();
        if let Some(link) = &options.link {
            make_link(&path, link)?;
        }
        let shared = Arc::new(Shared {
            device: Mutex::new(Device::new(&options)),
            responsive: AtomicBool::new(true),
            served: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        });
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(serve(pty, Arc::clone(&shared), options.pacing, stopped));
        tracing::info!(path = %path.display(), link = ?options.link, "kd3005p simulator started");
        Ok(Simulator {
            path,
            link: options.link,
            shared,
            stop: Some(stop),
            task: Some(task),
        })
    }

    /// The pty's slave side, to open as the serial port.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The symbolic link to [`Simulator::path`], when one was asked for.
    pub fn link(&self) -> Option<&Path> {
        self.link.as_deref()
    }

    /// Stops (`false`) or resumes (`true`) answering; see the module doc.
    pub fn set_responsive(&self, responsive: bool) {
        self.shared.responsive.store(responsive, Ordering::SeqCst);
    }

    pub fn is_responsive(&self) -> bool {
        self.shared.responsive.load(Ordering::SeqCst)
    }

    /// The unit's settings now.
    pub fn state(&self) -> SimulatedState {
        self.shared.device().state()
    }

    /// Requests served since the start (answered, or applied for a set).
    pub fn served_requests(&self) -> u64 {
        self.shared.served.load(Ordering::SeqCst)
    }

    /// Requests dropped because they came inside the pacing window.
    pub fn dropped_requests(&self) -> u64 {
        self.shared.dropped.load(Ordering::SeqCst)
    }

    /// Stops answering, closes the pty and removes the link. Returns the
    /// error that ended the simulator, if one did.
    pub async fn stop(mut self) -> io::Result<()> {
        if let Some(stop) = self.stop.take() {
            // The task may have ended already; then there is nobody to tell.
            let _ = stop.send(());
        }
        let result = match self.task.take() {
            Some(task) => joined(task.await),
            None => Ok(()),
        };
        self.remove_link();
        result
    }

    /// Serves until `shutdown` completes, then stops; or until the
    /// simulator fails, with its error.
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
                self.remove_link();
                joined(ended)
            }
        }
    }

    fn remove_link(&mut self) {
        if let Some(link) = self.link.take() {
            // Only our own link: another simulator may have replaced it.
            if std::fs::read_link(&link).ok().as_deref() == Some(self.path.as_path()) {
                if let Err(e) = std::fs::remove_file(&link) {
                    tracing::warn!(link = %link.display(), "cannot remove the simulator link: {e}");
                }
            }
        }
    }
}

impl Drop for Simulator {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
        self.remove_link();
    }
}

fn joined(result: Result<io::Result<()>, tokio::task::JoinError>) -> io::Result<()> {
    result.unwrap_or_else(|e| Err(io::Error::other(format!("simulator task failed: {e}"))))
}

fn make_link(target: &Path, link: &Path) -> io::Result<()> {
    match std::fs::symlink_metadata(link) {
        Ok(meta) if meta.file_type().is_symlink() => std::fs::remove_file(link)?,
        Ok(_) => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} exists and is not a symbolic link", link.display()),
            ))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    std::os::unix::fs::symlink(target, link)
}

/// The serving loop: frames requests, drops those inside the pacing window,
/// answers the others, until `stop` fires or the pty fails.
async fn serve(
    pty: Pty,
    shared: Arc<Shared>,
    pacing: Duration,
    mut stop: oneshot::Receiver<()>,
) -> io::Result<()> {
    let mut pending: Vec<u8> = Vec::new();
    let mut last_served: Option<Instant> = None;
    let mut chunk = [0u8; 256];
    loop {
        let at_idle = tokio::select! {
            _ = &mut stop => return Ok(()),
            read = pty.read(&mut chunk) => {
                let n = read?;
                if !shared.responsive.load(Ordering::SeqCst) {
                    // A hung unit: whatever comes is lost, including the
                    // start of a command that was pending.
                    pending.clear();
                    continue;
                }
                pending.extend_from_slice(&chunk[..n]);
                false
            }
            _ = sleep(INCOMPLETE_COMMAND_TIMEOUT), if !pending.is_empty() => true,
        };
        // Every request framed from this read arrived now: the second of
        // two requests sent back to back is dropped.
        let now = Instant::now();
        loop {
            let (request, used) = match frame(&pending, at_idle) {
                Framed::Incomplete => break,
                Framed::Skip(n) => {
                    pending.drain(..n);
                    continue;
                }
                Framed::Request(request, used) => (request, used),
            };
            pending.drain(..used);
            if last_served.is_some_and(|last| now.duration_since(last) < pacing) {
                shared.dropped.fetch_add(1, Ordering::SeqCst);
                tracing::debug!(
                    ?request,
                    "kd3005p simulator: request inside the pacing window dropped"
                );
                continue;
            }
            last_served = Some(now);
            shared.served.fetch_add(1, Ordering::SeqCst);
            let reply = shared.device().handle(request);
            if let Some(reply) = reply {
                if timeout(REPLY_WRITE_TIMEOUT, pty.write_all(&reply))
                    .await
                    .is_err()
                {
                    tracing::warn!("kd3005p simulator: reply dropped, nobody reads the pty");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(mut buf: &[u8]) -> Vec<Request> {
        let mut out = Vec::new();
        loop {
            match frame(buf, false) {
                Framed::Incomplete => return out,
                Framed::Skip(n) => buf = &buf[n..],
                Framed::Request(r, n) => {
                    out.push(r);
                    buf = &buf[n..];
                }
            }
        }
    }

    #[test]
    fn commands_are_framed_by_their_grammar_without_terminators() {
        assert_eq!(
            frames(b"VSET1:05.00VSET1?ISET1:1.500ISET1?OUT1OUT0VOUT1?IOUT1?STATUS?*IDN?"),
            vec![
                Request::SetVoltage(5.0),
                Request::VoltageSetpoint,
                Request::SetCurrent(1.5),
                Request::CurrentLimit,
                Request::Output(true),
                Request::Output(false),
                Request::OutputVoltage,
                Request::OutputCurrent,
                Request::Status,
                Request::Identity,
            ]
        );
    }

    #[test]
    fn terminators_and_garbage_are_skipped() {
        assert_eq!(
            frames(b"OUT1\r\nxyzSTATUS?\n"),
            vec![Request::Output(true), Request::Status]
        );
    }

    #[test]
    fn partial_commands_wait_for_more_bytes() {
        assert_eq!(frame(b"VSET1", false), Framed::Incomplete);
        assert_eq!(frame(b"VSET1:05.", false), Framed::Incomplete);
        assert_eq!(frame(b"STAT", false), Framed::Incomplete);
        // A short value ends at the next non-digit, or when the line idles.
        assert_eq!(
            frame(b"VSET1:5VSET1?", false),
            Framed::Request(Request::SetVoltage(5.0), 7)
        );
        assert_eq!(
            frame(b"VSET1:5", true),
            Framed::Request(Request::SetVoltage(5.0), 7)
        );
        assert_eq!(frame(b"STAT", true), Framed::Skip(4));
        assert_eq!(frame(b"VSET1:..", true), Framed::Skip(8));
    }

    #[test]
    fn replies_are_fixed_width_with_no_terminator() {
        let mut device = Device::new(&SimulatorOptions {
            stray_iset_byte: false,
            ..SimulatorOptions::default()
        });
        assert_eq!(device.handle(Request::SetVoltage(5.0)), None);
        assert_eq!(device.handle(Request::VoltageSetpoint).unwrap(), b"05.00");
        assert_eq!(device.handle(Request::CurrentLimit).unwrap(), b"1.000");
        assert_eq!(device.handle(Request::OutputVoltage).unwrap(), b"00.00");
        assert_eq!(device.handle(Request::Status).unwrap(), [0b0000_0001]);
        assert_eq!(
            device.handle(Request::Identity).unwrap(),
            DEFAULT_IDN.as_bytes()
        );
    }

    #[test]
    fn the_stray_byte_follows_iset_when_enabled() {
        let mut device = Device::new(&SimulatorOptions::default());
        assert_eq!(device.handle(Request::CurrentLimit).unwrap(), b"1.000\x00");
        assert_eq!(device.handle(Request::VoltageSetpoint).unwrap(), b"00.00");
    }

    #[test]
    fn load_model_and_status_in_cv_and_cc() {
        let mut device = Device::new(&SimulatorOptions {
            load_ohms: 10.0,
            ..SimulatorOptions::default()
        });
        device.handle(Request::SetVoltage(5.0));
        device.handle(Request::SetCurrent(1.0));
        device.handle(Request::Output(true));
        assert_eq!(device.handle(Request::OutputVoltage).unwrap(), b"05.00");
        assert_eq!(device.handle(Request::OutputCurrent).unwrap(), b"0.500");
        assert_eq!(device.handle(Request::Status).unwrap(), [0b0100_0001]);
        device.handle(Request::SetCurrent(0.2));
        assert_eq!(device.handle(Request::OutputVoltage).unwrap(), b"02.00");
        assert_eq!(device.handle(Request::OutputCurrent).unwrap(), b"0.200");
        assert_eq!(device.handle(Request::Status).unwrap(), [0b0100_0000]);
    }

    #[test]
    fn out_of_range_sets_are_ignored() {
        let mut device = Device::new(&SimulatorOptions::default());
        device.handle(Request::SetVoltage(12.0));
        device.handle(Request::SetVoltage(31.0));
        device.handle(Request::SetCurrent(5.5));
        assert_eq!(device.state().voltage_setpoint, 12.0);
        assert_eq!(device.state().current_limit, DEFAULT_INITIAL_CURRENT);
    }

    #[test]
    fn an_empty_idn_is_not_answered() {
        let mut device = Device::new(&SimulatorOptions {
            idn: String::new(),
            ..SimulatorOptions::default()
        });
        assert_eq!(device.handle(Request::Identity), None);
    }
}
