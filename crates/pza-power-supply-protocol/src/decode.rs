//! Decoding what the server publishes, for clients: which runner and which
//! topic a message is on, and its payload as typed values.
//!
//! The server's own parser ([`crate::payload`]) is strict, because it guards
//! the devices. This side is tolerant instead: unknown extra fields are
//! ignored (a newer server may add some), a `pza_id` that is not a string is
//! read as absent, and a value may be a JSON number or a string holding a
//! decimal, so that a client keeps working across versions of the server.

use std::fmt;

use serde_json::{Map, Value};

use crate::payload::{InfoReport, Status, StatusReport};
use crate::topics::{namespace_prefix, ROOT};

/// The server-to-client topics of one runner.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// `P/status`
    Status,
    /// `P/error`
    Error,
    /// `P/info`
    Info,
    /// `P/state`
    State,
    /// `P/voltage`: the voltage setpoint read back.
    Voltage,
    /// `P/current`: the current limit read back.
    Current,
    /// `P/measure/voltage`
    MeasuredVoltage,
    /// `P/measure/current`
    MeasuredCurrent,
    /// `P/measure`: the reply to `P/measure/cmd`.
    Measure,
}

impl Kind {
    pub const ALL: [Kind; 9] = [
        Kind::Status,
        Kind::Error,
        Kind::Info,
        Kind::State,
        Kind::Voltage,
        Kind::Current,
        Kind::MeasuredVoltage,
        Kind::MeasuredCurrent,
        Kind::Measure,
    ];

    /// The topic levels after `P/`.
    pub fn suffix(self) -> &'static str {
        match self {
            Kind::Status => "status",
            Kind::Error => "error",
            Kind::Info => "info",
            Kind::State => "state",
            Kind::Voltage => "voltage",
            Kind::Current => "current",
            Kind::MeasuredVoltage => "measure/voltage",
            Kind::MeasuredCurrent => "measure/current",
            Kind::Measure => "measure",
        }
    }

    /// The filter matching this topic of every runner under `namespace`,
    /// e.g. `power-supply/+/status`.
    pub fn filter(self, namespace: Option<&str>) -> String {
        format!("{}{ROOT}/+/{}", namespace_prefix(namespace), self.suffix())
    }
}

/// The runner and the kind of a server-to-client topic under `namespace`;
/// `None` for any other topic (commands included).
pub fn parse_topic<'a>(namespace: Option<&str>, topic: &'a str) -> Option<(&'a str, Kind)> {
    let rest = topic.strip_prefix(namespace_prefix(namespace).as_str())?;
    let rest = rest.strip_prefix(ROOT)?.strip_prefix('/')?;
    let (runner, suffix) = rest.split_once('/')?;
    if runner.is_empty() {
        return None;
    }
    let kind = Kind::ALL.into_iter().find(|k| k.suffix() == suffix)?;
    Some((runner, kind))
}

/// A decoded server-to-client message.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    Status(StatusReport),
    Error {
        message: String,
    },
    Info(InfoReport),
    /// The output, `true` for `ON`.
    State(bool),
    Voltage(f64),
    Current(f64),
    MeasuredVoltage(f64),
    MeasuredCurrent(f64),
    Measure {
        voltage: f64,
        current: f64,
    },
}

/// A message and the `pza_id` it carried, when that was a string.
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded {
    pub pza_id: Option<String>,
    pub message: Message,
}

/// Why a payload could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError {
    pub kind: Kind,
    pub reason: String,
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "bad `{}` payload: {}", self.kind.suffix(), self.reason)
    }
}

impl std::error::Error for DecodeError {}

/// Decodes the payload of a message on a topic of `kind`.
pub fn decode(kind: Kind, payload: &[u8]) -> Result<Decoded, DecodeError> {
    let fail = |reason: String| DecodeError { kind, reason };
    let object = match serde_json::from_slice::<Value>(payload) {
        Ok(Value::Object(object)) => object,
        Ok(_) => return Err(fail("not a JSON object".into())),
        Err(e) => return Err(fail(format!("not valid JSON ({e})"))),
    };
    let pza_id = match object.get("pza_id") {
        Some(Value::String(id)) => Some(id.clone()),
        _ => None,
    };
    let message = match kind {
        Kind::Status => Message::Status(status(&object, pza_id.clone()).map_err(fail)?),
        Kind::Error => Message::Error {
            message: string(&object, "message").map_err(fail)?,
        },
        Kind::Info => Message::Info(info(&object).map_err(fail)?),
        Kind::State => Message::State(match string(&object, "state").map_err(fail)?.as_str() {
            "ON" => true,
            "OFF" => false,
            other => return Err(fail(format!("`state` is \"{other}\", not ON or OFF"))),
        }),
        Kind::Voltage => Message::Voltage(number(&object, "voltage").map_err(fail)?),
        Kind::Current => Message::Current(number(&object, "current").map_err(fail)?),
        Kind::MeasuredVoltage => {
            Message::MeasuredVoltage(number(&object, "voltage").map_err(fail)?)
        }
        Kind::MeasuredCurrent => {
            Message::MeasuredCurrent(number(&object, "current").map_err(fail)?)
        }
        Kind::Measure => Message::Measure {
            voltage: number(&object, "voltage").map_err(fail)?,
            current: number(&object, "current").map_err(fail)?,
        },
    };
    Ok(Decoded { pza_id, message })
}

fn status(object: &Map<String, Value>, pza_id: Option<String>) -> Result<StatusReport, String> {
    let name = string(object, "status")?;
    let status = [
        Status::Initializing,
        Status::Running,
        Status::Panicking,
        Status::Restarting,
        Status::Failed,
        Status::Stopped,
    ]
    .into_iter()
    .find(|s| s.as_str() == name)
    .ok_or_else(|| format!("unknown status \"{name}\""))?;
    let restarts = match object.get("restarts") {
        None | Some(Value::Null) => 0,
        Some(value) => value
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| "`restarts` is not a count".to_string())?,
    };
    Ok(StatusReport {
        pza_id,
        status,
        panic_message: object
            .get("panic_message")
            .and_then(Value::as_str)
            .map(str::to_owned),
        restarts,
        next_restart_ms: object.get("next_restart_ms").and_then(Value::as_u64),
    })
}

fn info(object: &Map<String, Value>) -> Result<InfoReport, String> {
    let decimals = |name: &str| -> Result<usize, String> {
        object
            .get(name)
            .and_then(Value::as_u64)
            .and_then(|n| usize::try_from(n).ok())
            .ok_or_else(|| format!("`{name}` is missing or not a count"))
    };
    Ok(InfoReport {
        model: string(object, "model")?,
        description: object
            .get("description")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned(),
        security_min_voltage: number(object, "security_min_voltage")?,
        security_max_voltage: number(object, "security_max_voltage")?,
        security_min_current: number(object, "security_min_current")?,
        security_max_current: number(object, "security_max_current")?,
        voltage_decimals: decimals("voltage_decimals")?,
        current_decimals: decimals("current_decimals")?,
    })
}

fn string(object: &Map<String, Value>, name: &str) -> Result<String, String> {
    match object.get(name) {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(format!("`{name}` is not a string")),
        None => Err(format!("`{name}` is missing")),
    }
}

/// A finite number, from a JSON number or a string holding one.
fn number(object: &Map<String, Value>, name: &str) -> Result<f64, String> {
    let value = match object.get(name) {
        Some(Value::Number(n)) => n.as_f64(),
        Some(Value::String(s)) => s.trim().parse::<f64>().ok(),
        Some(_) => None,
        None => return Err(format!("`{name}` is missing")),
    };
    value
        .filter(|v| v.is_finite())
        .ok_or_else(|| format!("`{name}` is not a finite number"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_name_their_runner_and_kind() {
        assert_eq!(
            parse_topic(None, "power-supply/psu-1/status"),
            Some(("psu-1", Kind::Status))
        );
        assert_eq!(
            parse_topic(Some("lab"), "lab/power-supply/a/measure/current"),
            Some(("a", Kind::MeasuredCurrent))
        );
        assert_eq!(
            parse_topic(Some("lab"), "lab/power-supply/a/measure"),
            Some(("a", Kind::Measure))
        );
        assert_eq!(parse_topic(None, "power-supply/a/voltage/cmd"), None);
        assert_eq!(parse_topic(None, "power-supply/a/measure/cmd"), None);
        assert_eq!(parse_topic(None, "power-supply/a/owner"), None);
        assert_eq!(parse_topic(Some("lab"), "power-supply/a/status"), None);
        assert_eq!(parse_topic(None, "power-supply//status"), None);
        assert_eq!(
            Kind::MeasuredVoltage.filter(Some("lab")),
            "lab/power-supply/+/measure/voltage"
        );
    }

    #[test]
    fn values_as_strings_or_numbers_and_extra_fields_ignored() {
        let d = decode(Kind::Voltage, br#"{"pza_id":"c-1","voltage":"5.00","x":1}"#).unwrap();
        assert_eq!(d.pza_id.as_deref(), Some("c-1"));
        assert_eq!(d.message, Message::Voltage(5.0));
        let d = decode(Kind::Current, br#"{"pza_id":7,"current":0.5}"#).unwrap();
        assert_eq!(d.pza_id, None);
        assert_eq!(d.message, Message::Current(0.5));
        let d = decode(
            Kind::Measure,
            br#"{"pza_id":"m","voltage":"4.98","current":"0.120"}"#,
        )
        .unwrap();
        assert_eq!(
            d.message,
            Message::Measure {
                voltage: 4.98,
                current: 0.12
            }
        );
        assert_eq!(
            decode(Kind::State, br#"{"pza_id":null,"state":"ON"}"#)
                .unwrap()
                .message,
            Message::State(true)
        );
    }

    #[test]
    fn statuses_and_info() {
        let d = decode(
            Kind::Status,
            br#"{"pza_id":"s","status":"Restarting","panic_message":"boom","restarts":2,"next_restart_ms":400}"#,
        )
        .unwrap();
        let Message::Status(report) = d.message else {
            panic!("{d:?}")
        };
        assert_eq!(report.status, Status::Restarting);
        assert_eq!(report.panic_message.as_deref(), Some("boom"));
        assert_eq!(report.restarts, 2);
        assert_eq!(report.next_restart_ms, Some(400));
        assert_eq!(report.pza_id.as_deref(), Some("s"));

        let d = decode(
            Kind::Info,
            br#"{"pza_id":"i","model":"emulator","description":"Virtual","security_min_voltage":0,
                "security_max_voltage":30.0,"security_min_current":0,"security_max_current":5,
                "voltage_decimals":2,"current_decimals":3,"channel":1}"#,
        )
        .unwrap();
        let Message::Info(info) = d.message else {
            panic!("{d:?}")
        };
        assert_eq!(info.model, "emulator");
        assert_eq!(info.security_max_voltage, 30.0);
        assert_eq!(info.current_decimals, 3);
    }

    #[test]
    fn what_the_server_encodes_decodes_to_the_same() {
        use crate::payload::{measure_reply, state_reply, value_reply, Measurement};
        use crate::units::{Amps, Volts};

        let info = InfoReport {
            model: "kd3005p".into(),
            description: "bench".into(),
            security_min_voltage: 0.5,
            security_max_voltage: 12.0,
            security_min_current: 0.0,
            security_max_current: 1.5,
            voltage_decimals: 2,
            current_decimals: 3,
        };
        let d = decode(Kind::Info, &info.to_payload()).unwrap();
        assert_eq!(d.message, Message::Info(info));
        assert!(d.pza_id.is_some(), "the server makes a fresh id");

        let mut report = StatusReport::new(Status::Restarting, 3);
        report.pza_id = Some("r-1".into());
        report.panic_message = Some("boom".into());
        report.next_restart_ms = Some(250);
        let d = decode(Kind::Status, &report.to_payload()).unwrap();
        assert_eq!(d.message, Message::Status(report));

        let d = decode(Kind::Voltage, &value_reply(Some("v"), "voltage", 5.0, 2)).unwrap();
        assert_eq!(
            (d.pza_id.as_deref(), d.message),
            (Some("v"), Message::Voltage(5.0))
        );
        let d = decode(Kind::State, &state_reply(Some("s"), false)).unwrap();
        assert_eq!(d.message, Message::State(false));
        let m = Measurement {
            voltage: Volts(4.98),
            current: Amps(0.12),
            voltage_decimals: 2,
            current_decimals: 3,
        };
        let d = decode(Kind::Measure, &measure_reply(Some("m"), &m)).unwrap();
        assert_eq!(
            d.message,
            Message::Measure {
                voltage: 4.98,
                current: 0.12
            }
        );
    }

    #[test]
    fn bad_payloads_say_why() {
        for (kind, payload, reason) in [
            (Kind::Voltage, &b"[1]"[..], "not a JSON object"),
            (Kind::Voltage, br#"{"pza_id":"a"}"#, "`voltage` is missing"),
            (
                Kind::Voltage,
                br#"{"voltage":"5V"}"#,
                "`voltage` is not a finite number",
            ),
            (
                Kind::State,
                br#"{"state":"on"}"#,
                "`state` is \"on\", not ON or OFF",
            ),
            (
                Kind::Status,
                br#"{"status":"Sleeping"}"#,
                "unknown status \"Sleeping\"",
            ),
            (
                Kind::Error,
                br#"{"message":3}"#,
                "`message` is not a string",
            ),
        ] {
            let err = decode(kind, payload).unwrap_err();
            assert_eq!(err.reason, reason, "{}", String::from_utf8_lossy(payload));
        }
        assert!(decode(Kind::Status, b"{")
            .unwrap_err()
            .to_string()
            .starts_with("bad `status` payload: not valid JSON"));
    }
}
