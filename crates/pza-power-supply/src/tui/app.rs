//! The terminal UI's state, and how each event changes it: keys, updates from
//! the client, command outcomes, log lines and clock ticks. Pure code: no
//! terminal, no network, the time is passed in; the keys that act on a power
//! supply return an [`Action`] that the event loop carries out.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use pza_power_supply_client::{Snapshot, Status, Update};

/// The span of the measured voltage and current shown for the selected supply.
pub const HISTORY_WINDOW: Duration = Duration::from_secs(180);

/// Samples kept per value: one every 100 ms over the whole window, a bound on
/// the memory of a fast runner.
const HISTORY_CAPACITY: usize = 1800;

/// Log lines kept for the log pane.
pub const LOG_CAPACITY: usize = 1000;

/// How far back a command's refusal looks for its `P/error` line in the log.
const LOG_ECHO_WINDOW: usize = 20;

/// Longest text accepted in the input field: enough for any setpoint.
const INPUT_MAX_CHARS: usize = 24;

/// The keys the UI reserves, which `power_toggle_key` must not take.
pub const RESERVED_KEYS: [char; 7] = ['j', 'k', 'v', 'c', 'r', 'q', '?'];

/// Decimals shown before a power supply has published its info.
pub const DEFAULT_VOLTAGE_DECIMALS: usize = 2;
pub const DEFAULT_CURRENT_DECIMALS: usize = 3;

/// A command for one power supply, sent by the event loop through the client.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Command {
    SetOutput(bool),
    SetVoltage(f64),
    SetCurrent(f64),
    Restart,
}

/// What a key asks of the event loop.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Send { name: String, command: Command },
    Quit,
}

/// What the server read back after a command.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Outcome {
    Output(bool),
    Voltage(f64),
    Current(f64),
    Restarted,
}

/// The setpoint being typed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    Voltage,
    Current,
}

impl Field {
    pub fn label(self) -> &'static str {
        match self {
            Field::Voltage => "voltage",
            Field::Current => "current",
        }
    }

    pub fn unit(self) -> &'static str {
        match self {
            Field::Voltage => "V",
            Field::Current => "A",
        }
    }

    fn unit_name(self) -> &'static str {
        match self {
            Field::Voltage => "volts",
            Field::Current => "amps",
        }
    }
}

/// The input field of `v` / `c`.
#[derive(Debug, Clone, PartialEq)]
pub struct Input {
    pub field: Field,
    /// The power supply it was opened for (the selection may not move while
    /// it is open, but the name says where the value goes).
    pub name: String,
    pub text: String,
    /// Why the text was refused, shown until the next key.
    pub error: Option<String>,
}

/// What the keys currently drive.
#[derive(Debug, Clone, PartialEq)]
pub enum Mode {
    Normal,
    Help,
    Input(Input),
}

/// The one-line message under the panes.
#[derive(Debug, Clone, PartialEq)]
pub struct Notice {
    pub text: String,
    pub kind: NoticeKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoticeKind {
    Info,
    /// A command sent, its answer awaited.
    Pending,
    Error,
}

/// Timed samples of one measured value.
#[derive(Debug, Clone, Default)]
pub struct History {
    samples: VecDeque<(Instant, f64)>,
}

impl History {
    pub fn push(&mut self, at: Instant, value: f64) {
        self.samples.push_back((at, value));
        while self.samples.len() > HISTORY_CAPACITY {
            self.samples.pop_front();
        }
        self.prune(at);
    }

    fn prune(&mut self, now: Instant) {
        while let Some(&(at, _)) = self.samples.front() {
            if now.saturating_duration_since(at) > HISTORY_WINDOW {
                self.samples.pop_front();
            } else {
                break;
            }
        }
    }

    pub fn len(&self) -> usize {
        self.samples.len()
    }

    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// The window ending at `now` cut into `columns` equal spans, oldest
    /// first: the highest value of each span (a short peak stays visible),
    /// `None` for a span without samples.
    pub fn columns(&self, now: Instant, columns: usize) -> Vec<Option<f64>> {
        let mut out = vec![None; columns];
        if columns == 0 {
            return out;
        }
        let span = HISTORY_WINDOW.as_secs_f64() / columns as f64;
        for &(at, value) in &self.samples {
            let age = now.saturating_duration_since(at).as_secs_f64();
            if age > HISTORY_WINDOW.as_secs_f64() {
                continue;
            }
            // The newest span is the last column; an age of exactly the
            // window falls in the first.
            let from_end = ((age / span) as usize).min(columns - 1);
            let slot = &mut out[columns - 1 - from_end];
            *slot = Some(slot.map_or(value, |v: f64| v.max(value)));
        }
        out
    }

    /// The lowest and highest value in the window.
    pub fn range(&self) -> Option<(f64, f64)> {
        self.samples.iter().fold(None, |acc, &(_, v)| match acc {
            None => Some((v, v)),
            Some((lo, hi)) => Some((lo.min(v), hi.max(v))),
        })
    }
}

/// What the UI knows of one power supply.
#[derive(Debug, Clone, Default)]
pub struct Device {
    pub snapshot: Snapshot,
    /// When the scheduled restart is due, while `Restarting`.
    pub restart_at: Option<Instant>,
    /// The last panic message, kept after the runner recovers.
    pub last_panic: Option<String>,
    pub voltage_history: History,
    pub current_history: History,
}

impl Device {
    pub fn voltage_decimals(&self) -> usize {
        self.snapshot
            .info
            .as_ref()
            .map_or(DEFAULT_VOLTAGE_DECIMALS, |i| i.voltage_decimals)
    }

    pub fn current_decimals(&self) -> usize {
        self.snapshot
            .info
            .as_ref()
            .map_or(DEFAULT_CURRENT_DECIMALS, |i| i.current_decimals)
    }

    /// Seconds left before the scheduled restart, rounded up.
    pub fn restart_in_secs(&self, now: Instant) -> Option<u64> {
        let left = self.restart_at?.saturating_duration_since(now);
        Some(left.as_millis().div_ceil(1000) as u64)
    }
}

/// Settings that do not change while the UI runs.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The key that toggles the output (`tui.power_toggle_key`).
    pub toggle_key: char,
    /// Where the UI is attached, for the title: the broker and namespace.
    pub source: String,
    /// `run` with the UI: quitting shuts the server down.
    pub embedded: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            toggle_key: 'p',
            source: String::new(),
            embedded: false,
        }
    }
}

/// The whole state of the terminal UI.
#[derive(Debug)]
pub struct App {
    pub settings: Settings,
    pub devices: BTreeMap<String, Device>,
    selected: Option<String>,
    pub mode: Mode,
    pub notice: Option<Notice>,
    pub log: VecDeque<String>,
    pub connected: bool,
    /// The time of the last event, which the drawing uses.
    pub now: Instant,
    quit: bool,
}

impl App {
    pub fn new(settings: Settings, now: Instant) -> App {
        App {
            settings,
            devices: BTreeMap::new(),
            selected: None,
            mode: Mode::Normal,
            notice: None,
            log: VecDeque::new(),
            connected: true,
            now,
            quit: false,
        }
    }

    pub fn should_quit(&self) -> bool {
        self.quit
    }

    /// The selected power supply's name.
    pub fn selected(&self) -> Option<&str> {
        self.selected.as_deref()
    }

    /// The selected power supply's row in the table.
    pub fn selected_index(&self) -> Option<usize> {
        let name = self.selected.as_deref()?;
        self.devices.keys().position(|n| n == name)
    }

    pub fn selected_device(&self) -> Option<&Device> {
        self.devices.get(self.selected.as_deref()?)
    }

    /// A power supply's state from the client's store: before the first
    /// update, and again after updates were missed.
    pub fn on_snapshot(&mut self, snapshot: Snapshot, now: Instant) {
        self.now = now;
        let device = self.devices.entry(snapshot.name.clone()).or_default();
        let already_restarting = device.snapshot.status == Some(Status::Restarting)
            && device.snapshot.restarts == snapshot.restarts;
        if snapshot.status != Some(Status::Restarting) {
            device.restart_at = None;
        } else if !already_restarting {
            // The delay counts from when the status was published; a status
            // found in the store is at most that old, so this is the latest
            // the restart can be.
            device.restart_at = snapshot
                .next_restart_ms
                .map(|ms| now + Duration::from_millis(ms));
        }
        if let Some(message) = &snapshot.panic_message {
            device.last_panic = Some(message.clone());
        }
        if let Some(v) = snapshot.measured_voltage {
            device.voltage_history.push(now, v);
        }
        if let Some(a) = snapshot.measured_current {
            device.current_history.push(now, a);
        }
        device.snapshot = snapshot;
        self.keep_a_selection();
    }

    /// One message from the server about a power supply.
    pub fn on_update(&mut self, update: Update, now: Instant) {
        use pza_power_supply_client::Change;
        self.now = now;
        let snapshot = &update.snapshot;
        // A power supply is listed once it has published its status or its
        // info, as `ctl list` does; a stray error alone does not make one.
        if !self.devices.contains_key(&update.name)
            && snapshot.status.is_none()
            && snapshot.info.is_none()
        {
            return;
        }
        let device = self.devices.entry(update.name.clone()).or_default();
        let mut line = None;
        match &update.change {
            Change::Status(report) => {
                device.restart_at = match (report.status, report.next_restart_ms) {
                    (Status::Restarting, Some(ms)) => Some(now + Duration::from_millis(ms)),
                    _ => None,
                };
                if let Some(message) = &report.panic_message {
                    device.last_panic = Some(message.clone());
                }
                if device.snapshot.status != Some(report.status) {
                    let cause = report
                        .panic_message
                        .as_deref()
                        .map(|m| format!(": {m}"))
                        .unwrap_or_default();
                    line = Some(format!("{}: {}{cause}", update.name, report.status));
                }
            }
            Change::MeasuredVoltage(v) => device.voltage_history.push(now, *v),
            Change::MeasuredCurrent(a) => device.current_history.push(now, *a),
            Change::Measured { voltage, current } => {
                device.voltage_history.push(now, *voltage);
                device.current_history.push(now, *current);
            }
            Change::Error(message) => {
                // A refusal of our own command may have been logged first,
                // from the command's answer: one line says it all.
                let prefix = format!("{}: ", update.name);
                let suffix = format!(" refused: {message}");
                let logged = self
                    .log
                    .iter()
                    .rev()
                    .take(LOG_ECHO_WINDOW)
                    .any(|l| l.starts_with(&prefix) && l.ends_with(&suffix));
                if !logged {
                    line = Some(format!("{}: error: {message}", update.name));
                }
            }
            Change::Output(_) | Change::Voltage(_) | Change::Current(_) | Change::Info(_) => {}
        }
        device.snapshot = update.snapshot;
        if let Some(line) = line {
            self.on_log(line);
        }
        self.keep_a_selection();
    }

    /// A clock tick: the countdowns and the history move on.
    pub fn on_tick(&mut self, now: Instant, connected: bool) {
        self.now = now;
        if connected != self.connected {
            self.connected = connected;
            self.on_log(if connected {
                "connection to the broker restored".to_owned()
            } else {
                "connection to the broker lost: retrying".to_owned()
            });
        }
        for device in self.devices.values_mut() {
            device.voltage_history.prune(now);
            device.current_history.prune(now);
        }
    }

    pub fn on_log(&mut self, line: String) {
        self.log.push_back(line);
        while self.log.len() > LOG_CAPACITY {
            self.log.pop_front();
        }
    }

    /// The answer to a command sent for a key.
    pub fn on_done(&mut self, name: &str, command: Command, result: Result<Outcome, String>) {
        let (text, kind) = match result {
            Ok(outcome) => {
                let device = self.devices.get(name);
                let vd = device.map_or(DEFAULT_VOLTAGE_DECIMALS, Device::voltage_decimals);
                let cd = device.map_or(DEFAULT_CURRENT_DECIMALS, Device::current_decimals);
                let text = match outcome {
                    Outcome::Output(on) => format!("{name}: output {}", on_off(on)),
                    Outcome::Voltage(v) => format!("{name}: voltage set to {v:.vd$} V"),
                    Outcome::Current(a) => format!("{name}: current set to {a:.cd$} A"),
                    Outcome::Restarted => format!("{name}: restarting"),
                };
                (text, NoticeKind::Info)
            }
            Err(message) => {
                // The refusal also comes as a P/error update, which may have
                // been logged just before: one line says it all.
                let echo = format!("{name}: error: {message}");
                if let Some(at) = self
                    .log
                    .iter()
                    .rev()
                    .take(LOG_ECHO_WINDOW)
                    .position(|l| *l == echo)
                {
                    self.log.remove(self.log.len() - 1 - at);
                }
                (
                    format!("{name}: {} refused: {message}", describe(command)),
                    NoticeKind::Error,
                )
            }
        };
        self.on_log(text.clone());
        self.notice = Some(Notice { text, kind });
    }

    /// A key press; what it asks the event loop to do, if anything.
    pub fn on_key(&mut self, key: KeyEvent) -> Option<Action> {
        // Terminals that report releases (Windows) would act twice.
        if key.kind == KeyEventKind::Release {
            return None;
        }
        if key.modifiers.contains(KeyModifiers::CONTROL) && key.code == KeyCode::Char('c') {
            self.quit = true;
            return Some(Action::Quit);
        }
        match std::mem::replace(&mut self.mode, Mode::Normal) {
            Mode::Normal => self.on_normal_key(key),
            Mode::Help => self.on_help_key(key),
            Mode::Input(input) => self.on_input_key(input, key),
        }
    }

    fn on_normal_key(&mut self, key: KeyEvent) -> Option<Action> {
        match key.code {
            KeyCode::Up | KeyCode::Char('k') => self.move_selection(-1),
            KeyCode::Down | KeyCode::Char('j') => self.move_selection(1),
            KeyCode::Home => self.selected = self.devices.keys().next().cloned(),
            KeyCode::End => self.selected = self.devices.keys().next_back().cloned(),
            KeyCode::Char('q') => {
                self.quit = true;
                return Some(Action::Quit);
            }
            KeyCode::Char('?') => self.mode = Mode::Help,
            KeyCode::Esc => self.notice = None,
            KeyCode::Char(c) if c == self.settings.toggle_key => return self.toggle_output(),
            KeyCode::Char('v') => self.open_input(Field::Voltage),
            KeyCode::Char('c') => self.open_input(Field::Current),
            KeyCode::Char('r') => {
                let name = self.selected_or_notice()?;
                return Some(self.send(name, Command::Restart));
            }
            _ => {}
        }
        None
    }

    fn on_help_key(&mut self, key: KeyEvent) -> Option<Action> {
        match key.code {
            KeyCode::Char('q') => {
                self.quit = true;
                Some(Action::Quit)
            }
            // Any other key closes the help.
            _ => None,
        }
    }

    fn on_input_key(&mut self, mut input: Input, key: KeyEvent) -> Option<Action> {
        input.error = None;
        match key.code {
            KeyCode::Esc => {
                self.notice = Some(Notice {
                    text: format!("{}: {} unchanged", input.name, input.field.label()),
                    kind: NoticeKind::Info,
                });
                return None;
            }
            KeyCode::Enter => match parse_setpoint(&input.text, input.field) {
                Ok(value) => {
                    let command = match input.field {
                        Field::Voltage => Command::SetVoltage(value),
                        Field::Current => Command::SetCurrent(value),
                    };
                    return Some(self.send(input.name, command));
                }
                Err(reason) => input.error = Some(reason),
            },
            KeyCode::Backspace => {
                input.text.pop();
            }
            KeyCode::Char(c) if !c.is_control() => {
                if input.text.chars().count() < INPUT_MAX_CHARS {
                    input.text.push(c);
                } else {
                    input.error = Some(format!("at most {INPUT_MAX_CHARS} characters"));
                }
            }
            _ => {}
        }
        self.mode = Mode::Input(input);
        None
    }

    fn open_input(&mut self, field: Field) {
        if let Some(name) = self.selected_or_notice() {
            self.notice = None;
            self.mode = Mode::Input(Input {
                field,
                name,
                text: String::new(),
                error: None,
            });
        }
    }

    fn toggle_output(&mut self) -> Option<Action> {
        let name = self.selected_or_notice()?;
        let output = self.devices.get(&name).and_then(|d| d.snapshot.output);
        match output {
            Some(on) => Some(self.send(name, Command::SetOutput(!on))),
            None => {
                self.notice = Some(Notice {
                    text: format!("{name}: its output state is not known yet"),
                    kind: NoticeKind::Error,
                });
                None
            }
        }
    }

    fn send(&mut self, name: String, command: Command) -> Action {
        let text = match command {
            Command::SetOutput(on) => format!("{name}: switching the output {}…", on_off(on)),
            Command::SetVoltage(v) => format!("{name}: setting the voltage to {v} V…"),
            Command::SetCurrent(a) => format!("{name}: setting the current to {a} A…"),
            Command::Restart => format!("{name}: restart asked…"),
        };
        self.notice = Some(Notice {
            text,
            kind: NoticeKind::Pending,
        });
        Action::Send { name, command }
    }

    fn selected_or_notice(&mut self) -> Option<String> {
        let name = self.selected.clone();
        if name.is_none() {
            self.notice = Some(Notice {
                text: "no power supply to act on".to_owned(),
                kind: NoticeKind::Error,
            });
        }
        name
    }

    fn move_selection(&mut self, step: isize) {
        let count = self.devices.len();
        if count == 0 {
            return;
        }
        let index = self.selected_index().unwrap_or(0) as isize;
        let next = (index + step).clamp(0, count as isize - 1) as usize;
        self.selected = self.devices.keys().nth(next).cloned();
    }

    fn keep_a_selection(&mut self) {
        if self.selected_index().is_none() {
            self.selected = self.devices.keys().next().cloned();
        }
    }
}

/// The text of the input field as a setpoint: a finite decimal number,
/// optionally followed by the field's unit (`5`, `5.0`, `5 V`).
pub fn parse_setpoint(text: &str, field: Field) -> Result<f64, String> {
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err(format!(
            "type the {} in {}, or Esc to cancel",
            field.label(),
            field.unit_name()
        ));
    }
    let number = trimmed
        .strip_suffix(field.unit())
        .or_else(|| trimmed.strip_suffix(&field.unit().to_ascii_lowercase()))
        .unwrap_or(trimmed)
        .trim_end();
    let not_a_number = || {
        format!(
            "\"{trimmed}\" is not a number of {}: type e.g. 5 or 0.25",
            field.unit_name()
        )
    };
    // Rust also reads `inf`, `NaN` and `1e3`: only plain decimals are
    // setpoints, as on MQTT.
    if !number
        .chars()
        .all(|c| c.is_ascii_digit() || c == '.' || c == '-' || c == '+')
    {
        return Err(not_a_number());
    }
    let value: f64 = number.parse().map_err(|_| not_a_number())?;
    if !value.is_finite() {
        return Err(not_a_number());
    }
    Ok(value)
}

pub fn on_off(on: bool) -> &'static str {
    if on {
        "ON"
    } else {
        "OFF"
    }
}

fn describe(command: Command) -> String {
    match command {
        Command::SetOutput(on) => format!("output {}", on_off(on)),
        Command::SetVoltage(v) => format!("voltage {v} V"),
        Command::SetCurrent(a) => format!("current {a} A"),
        Command::Restart => "restart".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn setpoints_are_plain_decimals_with_an_optional_unit() {
        for (text, value) in [
            ("5", 5.0),
            (" 5.5 ", 5.5),
            ("0.25V", 0.25),
            ("12 v", 12.0),
            ("-1", -1.0),
        ] {
            assert_eq!(parse_setpoint(text, Field::Voltage), Ok(value), "{text}");
        }
        assert_eq!(parse_setpoint("0.5 A", Field::Current), Ok(0.5));
        for bad in ["", "abc", "5 A", "NaN", "inf", "1e400", "5..0", "--1"] {
            let err = parse_setpoint(bad, Field::Voltage).unwrap_err();
            assert!(err.contains("volts"), "{bad}: {err}");
        }
    }

    #[test]
    fn history_columns_cover_the_window_newest_last() {
        let start = Instant::now();
        let mut h = History::default();
        let now = start + HISTORY_WINDOW;
        h.push(start, 9.0); // exactly the window old: the first column
        h.push(now - Duration::from_secs(1), 1.0);
        h.push(now, 2.0); // same newest column: the highest wins
        let cols = h.columns(now, 6);
        assert_eq!(cols, [Some(9.0), None, None, None, None, Some(2.0)]);
        assert_eq!(h.range(), Some((1.0, 9.0)));
        assert!(h.columns(now, 0).is_empty());

        // Older samples are dropped as time passes.
        h.push(now + Duration::from_secs(2), 3.0);
        assert_eq!(h.len(), 3);
        assert_eq!(h.range(), Some((1.0, 3.0)));
    }

    #[test]
    fn history_is_bounded() {
        let start = Instant::now();
        let mut h = History::default();
        for i in 0..(HISTORY_CAPACITY as u64 * 2) {
            h.push(start + Duration::from_millis(i), 1.0);
        }
        assert_eq!(h.len(), HISTORY_CAPACITY);
    }
}
