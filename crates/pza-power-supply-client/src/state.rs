//! The state the client keeps of every power supply, from what the server
//! publishes: pure code, no I/O, so it is tested without a broker.

use std::collections::BTreeMap;

use pza_power_supply_protocol::decode::{Decoded, Message};
use pza_power_supply_protocol::{InfoReport, Status, StatusReport};

/// The latest known state of one power supply. Setpoints are the values read
/// back by the server; measured values are what the device last measured.
/// `None` means not published yet.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    pub name: String,
    pub status: Option<Status>,
    /// Restarts of its runner since the server started.
    pub restarts: u32,
    /// Why the runner last crashed, while `Panicking`/`Restarting`/`Failed`.
    pub panic_message: Option<String>,
    /// The delay before the next restart, while `Restarting`.
    pub next_restart_ms: Option<u64>,
    /// The output, `true` for on.
    pub output: Option<bool>,
    /// The voltage setpoint, in volts.
    pub voltage: Option<f64>,
    /// The current limit, in amps.
    pub current: Option<f64>,
    pub measured_voltage: Option<f64>,
    pub measured_current: Option<f64>,
    /// Model, description, security limits and decimals.
    pub info: Option<InfoReport>,
    /// The last message the server published on `P/error` for it.
    pub last_error: Option<String>,
}

/// What changed in one update.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    Status(StatusReport),
    Output(bool),
    Voltage(f64),
    Current(f64),
    MeasuredVoltage(f64),
    MeasuredCurrent(f64),
    /// Both values, from a measurement asked with `measure()`.
    Measured {
        voltage: f64,
        current: f64,
    },
    Info(InfoReport),
    /// A message on `P/error` (a refused command, a clamp at start-up…).
    Error(String),
}

/// One message from the server about a power supply, with its state after it.
#[derive(Debug, Clone, PartialEq)]
pub struct Update {
    /// The power supply's name.
    pub name: String,
    /// The message's correlation id: a command's own id on its reply.
    pub pza_id: Option<String>,
    pub change: Change,
    /// The whole state once this change is applied.
    pub snapshot: Snapshot,
}

/// The snapshots of every power supply seen, by name.
#[derive(Debug, Default)]
pub(crate) struct Store {
    devices: BTreeMap<String, Snapshot>,
}

impl Store {
    /// Applies a decoded message about `name`; returns the update to broadcast.
    pub(crate) fn apply(&mut self, name: &str, decoded: Decoded) -> Update {
        let snapshot = self
            .devices
            .entry(name.to_owned())
            .or_insert_with(|| Snapshot {
                name: name.to_owned(),
                ..Snapshot::default()
            });
        let change = match decoded.message {
            Message::Status(report) => {
                snapshot.status = Some(report.status);
                snapshot.restarts = report.restarts;
                snapshot.panic_message = report.panic_message.clone();
                snapshot.next_restart_ms = report.next_restart_ms;
                Change::Status(report)
            }
            Message::Error { message } => {
                snapshot.last_error = Some(message.clone());
                Change::Error(message)
            }
            Message::Info(info) => {
                snapshot.info = Some(info.clone());
                Change::Info(info)
            }
            Message::State(on) => {
                snapshot.output = Some(on);
                Change::Output(on)
            }
            Message::Voltage(v) => {
                snapshot.voltage = Some(v);
                Change::Voltage(v)
            }
            Message::Current(a) => {
                snapshot.current = Some(a);
                Change::Current(a)
            }
            Message::MeasuredVoltage(v) => {
                snapshot.measured_voltage = Some(v);
                Change::MeasuredVoltage(v)
            }
            Message::MeasuredCurrent(a) => {
                snapshot.measured_current = Some(a);
                Change::MeasuredCurrent(a)
            }
            Message::Measure { voltage, current } => {
                snapshot.measured_voltage = Some(voltage);
                snapshot.measured_current = Some(current);
                Change::Measured { voltage, current }
            }
        };
        Update {
            name: name.to_owned(),
            pza_id: decoded.pza_id,
            change,
            snapshot: snapshot.clone(),
        }
    }

    pub(crate) fn get(&self, name: &str) -> Option<&Snapshot> {
        self.devices.get(name)
    }

    /// Every power supply that published a status or its info, by name.
    pub(crate) fn listed(&self) -> impl Iterator<Item = &Snapshot> {
        self.devices
            .values()
            .filter(|s| s.status.is_some() || s.info.is_some())
    }

    /// Forgets everything: after a reconnection, the broker sends the
    /// retained state again, and what is no longer retained must not stay.
    pub(crate) fn clear(&mut self) {
        self.devices.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pza_power_supply_protocol::decode::{decode, Kind};

    fn apply(store: &mut Store, name: &str, kind: Kind, payload: &str) -> Update {
        store.apply(name, decode(kind, payload.as_bytes()).unwrap())
    }

    #[test]
    fn every_message_lands_in_the_snapshot() {
        let mut store = Store::default();
        apply(
            &mut store,
            "a",
            Kind::Status,
            r#"{"pza_id":"s","status":"Running","restarts":1}"#,
        );
        apply(
            &mut store,
            "a",
            Kind::State,
            r#"{"pza_id":"s","state":"ON"}"#,
        );
        apply(
            &mut store,
            "a",
            Kind::Voltage,
            r#"{"pza_id":"s","voltage":"5.00"}"#,
        );
        apply(
            &mut store,
            "a",
            Kind::Current,
            r#"{"pza_id":"s","current":"0.500"}"#,
        );
        apply(
            &mut store,
            "a",
            Kind::MeasuredVoltage,
            r#"{"pza_id":"s","voltage":"4.98"}"#,
        );
        let last = apply(
            &mut store,
            "a",
            Kind::Error,
            r#"{"pza_id":"e","message":"no"}"#,
        );
        assert_eq!(last.change, Change::Error("no".into()));
        assert_eq!(last.pza_id.as_deref(), Some("e"));
        let s = &last.snapshot;
        assert_eq!(s.status, Some(Status::Running));
        assert_eq!(s.restarts, 1);
        assert_eq!(s.output, Some(true));
        assert_eq!(s.voltage, Some(5.0));
        assert_eq!(s.current, Some(0.5));
        assert_eq!(s.measured_voltage, Some(4.98));
        assert_eq!(s.measured_current, None);
        assert_eq!(s.last_error.as_deref(), Some("no"));
        assert_eq!(store.get("a"), Some(s));
    }

    #[test]
    fn a_crash_and_its_recovery() {
        let mut store = Store::default();
        let u = apply(
            &mut store,
            "a",
            Kind::Status,
            r#"{"status":"Restarting","panic_message":"boom","restarts":2,"next_restart_ms":400}"#,
        );
        assert_eq!(u.snapshot.panic_message.as_deref(), Some("boom"));
        assert_eq!(u.snapshot.next_restart_ms, Some(400));
        let u = apply(
            &mut store,
            "a",
            Kind::Status,
            r#"{"status":"Running","restarts":2}"#,
        );
        assert_eq!(u.snapshot.panic_message, None);
        assert_eq!(u.snapshot.next_restart_ms, None);
    }

    #[test]
    fn listed_are_those_with_a_status_or_info() {
        let mut store = Store::default();
        apply(&mut store, "b", Kind::Status, r#"{"status":"Running"}"#);
        apply(&mut store, "c", Kind::Error, r#"{"message":"x"}"#);
        apply(&mut store, "a", Kind::Status, r#"{"status":"Failed"}"#);
        let names: Vec<_> = store.listed().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        store.clear();
        assert_eq!(store.listed().count(), 0);
    }
}
