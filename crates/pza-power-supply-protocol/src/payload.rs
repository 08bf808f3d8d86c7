//! JSON payloads: parsing commands (strictly, with one clear message per
//! rejection) and formatting replies and statuses.
//!
//! Every payload built here carries `pza_id` as a JSON string: the command's
//! id for a reply, a fresh server-made one ([`crate::ids`]) otherwise.

use std::cell::RefCell;
use std::fmt;

use serde::de::{IgnoredAny, MapAccess, Visitor};
use serde_json::{json, Value};

use super::Attribute;
use crate::ids::or_fresh;
use crate::units::{Amps, Volts};

/// A valid command, before the security limits are checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Command {
    pub pza_id: Option<String>,
    pub request: Request,
}

/// What a command asks.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Request {
    SetOutput(bool),
    SetVoltage(Volts),
    SetCurrent(Amps),
}

/// A command that was refused: answered on `P/error`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// The command's `pza_id`, when it carried a string one.
    pub pza_id: Option<String>,
    pub message: String,
}

impl Rejection {
    pub fn new(pza_id: Option<String>, message: impl Into<String>) -> Self {
        Rejection {
            pza_id,
            message: message.into(),
        }
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// One field of a JSON object.
type Field = (String, Value);

/// The fields of a JSON object, in order, duplicates kept (serde_json's own
/// maps keep only the last of duplicate keys, which would hide them).
struct Fields(Vec<Field>);

impl<'de> serde::Deserialize<'de> for Fields {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct FieldsVisitor;
        impl<'de> Visitor<'de> for FieldsVisitor {
            type Value = Fields;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Fields, A::Error> {
                let mut fields = Vec::new();
                while let Some((key, value)) = map.next_entry::<String, Value>()? {
                    fields.push((key, value));
                }
                Ok(Fields(fields))
            }
        }
        deserializer.deserialize_map(FieldsVisitor)
    }
}

/// Parses a payload into its fields, checking the keys: every key of
/// `allowed` must be present once, and no other key may be. `pza_id` is
/// always allowed and required. On failure, the rejection carries the
/// `pza_id` when a string one was found.
fn parse_fields(
    payload: &[u8],
    allowed: &[&str],
) -> Result<(Option<String>, Vec<Field>), Rejection> {
    let text = std::str::from_utf8(payload)
        .map_err(|e| Rejection::new(None, format!("payload is not valid UTF-8 ({e})")))?;
    if text.trim().is_empty() {
        return Err(Rejection::new(
            None,
            "payload is empty: expected a JSON object",
        ));
    }
    let mut deserializer = serde_json::Deserializer::from_str(text);
    let fields = match serde::Deserialize::deserialize(&mut deserializer).and_then(|f: Fields| {
        deserializer.end()?;
        Ok(f)
    }) {
        Ok(Fields(fields)) => fields,
        Err(e) if e.is_data() => {
            return Err(Rejection::new(
                recover_pza_id(text),
                "payload must be a JSON object",
            ));
        }
        Err(e) => {
            return Err(Rejection::new(
                recover_pza_id(text),
                format!("payload is not valid JSON: {e}"),
            ))
        }
    };

    let pza_id = fields.iter().find_map(|(k, v)| match (k.as_str(), v) {
        ("pza_id", Value::String(id)) => Some(id.clone()),
        _ => None,
    });
    let reject = |message: String| Err(Rejection::new(pza_id.clone(), message));

    for (i, (key, _)) in fields.iter().enumerate() {
        if fields[..i].iter().any(|(k, _)| k == key) {
            return reject(format!("duplicate field `{}`", printable(key)));
        }
        if key != "pza_id" && !allowed.contains(&key.as_str()) {
            let expected = std::iter::once("pza_id")
                .chain(allowed.iter().copied())
                .collect::<Vec<_>>()
                .join(", ");
            return reject(format!(
                "unknown field `{}` (expected: {expected})",
                printable(key)
            ));
        }
    }
    match fields.iter().find(|(k, _)| k == "pza_id") {
        None => return reject("missing field `pza_id`".into()),
        Some((_, Value::String(_))) => {}
        Some((_, other)) => {
            return reject(format!(
                "field `pza_id` must be a string, not {}",
                kind(other)
            ));
        }
    }
    for field in allowed {
        if !fields.iter().any(|(k, _)| k == field) {
            return reject(format!("missing field `{field}`"));
        }
    }
    Ok((pza_id, fields))
}

/// The first string `pza_id` of a payload that could not be read whole (a
/// number out of range such as `1e400`, a broken value after the id), so
/// that its rejection still reaches its sender. Values are skipped without
/// being converted, and the id found before a syntax error is kept.
fn recover_pza_id(text: &str) -> Option<String> {
    struct Scan<'a>(&'a RefCell<Option<String>>);

    impl<'de> Visitor<'de> for Scan<'_> {
        type Value = ();
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
            while let Some(key) = map.next_key::<String>()? {
                if key == "pza_id" && self.0.borrow().is_none() {
                    if let Value::String(id) = map.next_value::<Value>()? {
                        *self.0.borrow_mut() = Some(id);
                    }
                } else {
                    map.next_value::<IgnoredAny>()?;
                }
            }
            Ok(())
        }
    }

    let found = RefCell::new(None);
    let mut deserializer = serde_json::Deserializer::from_str(text);
    // The error is the one already reported; only the id matters here.
    let _ = serde::Deserializer::deserialize_map(&mut deserializer, Scan(&found));
    found.into_inner()
}

/// A key as it can be quoted in a one-line message.
fn printable(key: &str) -> String {
    const MAX: usize = 64;
    let escaped: String = key.chars().flat_map(char::escape_default).collect();
    if escaped.chars().count() > MAX {
        format!("{}...", escaped.chars().take(MAX).collect::<String>())
    } else {
        escaped
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn field<'a>(fields: &'a [Field], name: &str) -> &'a Value {
    // parse_fields checked that every allowed field is present.
    fields
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v)
        .unwrap_or(&Value::Null)
}

/// Parses a command received on the command topic of `attribute`.
pub fn parse_command(attribute: Attribute, payload: &[u8]) -> Result<Command, Rejection> {
    let name = attribute.name();
    let (pza_id, fields) = parse_fields(payload, &[name])?;
    let value = field(&fields, name);
    let request = match attribute {
        Attribute::State => match value {
            Value::String(s) if s == "ON" => Request::SetOutput(true),
            Value::String(s) if s == "OFF" => Request::SetOutput(false),
            other => {
                let shown = match other {
                    Value::String(s) => format!("\"{}\"", printable(s)),
                    other => kind(other).to_string(),
                };
                return Err(Rejection::new(
                    pza_id,
                    format!("field `state` must be \"ON\" or \"OFF\", not {shown}"),
                ));
            }
        },
        Attribute::Voltage => Request::SetVoltage(Volts(
            number(name, value).map_err(|m| Rejection::new(pza_id.clone(), m))?,
        )),
        Attribute::Current => Request::SetCurrent(Amps(
            number(name, value).map_err(|m| Rejection::new(pza_id.clone(), m))?,
        )),
    };
    Ok(Command { pza_id, request })
}

/// Parses a restart command: `{"pza_id": "..."}`. Returns its `pza_id`.
pub fn parse_restart(payload: &[u8]) -> Result<Option<String>, Rejection> {
    parse_fields(payload, &[]).map(|(pza_id, _)| pza_id)
}

/// Parses a measure command (`P/measure/cmd`): `{"pza_id": "..."}`.
/// Returns its `pza_id`.
pub fn parse_measure(payload: &[u8]) -> Result<Option<String>, Rejection> {
    parse_fields(payload, &[]).map(|(pza_id, _)| pza_id)
}

/// The `pza_id` of a command payload, whatever else is wrong with it: the
/// id a "not applied" answer carries.
pub fn command_id(payload: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(payload).ok()?;
    recover_pza_id(text)
}

/// A finite number from a JSON number or a string holding a plain decimal
/// (`5`, `5.0`, `-0.5`, `.5`); `-0` becomes `0`.
fn number(name: &str, value: &Value) -> Result<f64, String> {
    let parsed = match value {
        Value::Number(n) => n
            .as_f64()
            .ok_or_else(|| format!("field `{name}`: {n} is not a representable number"))?,
        Value::String(s) => {
            if !is_plain_decimal(s) {
                return Err(format!(
                    "field `{name}`: \"{}\" is not a plain decimal number",
                    printable(s)
                ));
            }
            s.parse::<f64>()
                .map_err(|e| format!("field `{name}`: \"{}\": {e}", printable(s)))?
        }
        other => {
            return Err(format!(
                "field `{name}` must be a number or a string holding a decimal number, not {}",
                kind(other)
            ))
        }
    };
    if !parsed.is_finite() {
        return Err(format!("field `{name}`: value is not a finite number"));
    }
    // -0.0 == 0.0, so this turns a negative zero into a positive one.
    Ok(if parsed == 0.0 { 0.0 } else { parsed })
}

/// `-?digits[.digits]` or `-?.digits`: no exponent, no sign `+`, no unit, no
/// spaces, no hexadecimal, no `NaN`/`inf`.
fn is_plain_decimal(s: &str) -> bool {
    let unsigned = s.strip_prefix('-').unwrap_or(s);
    let (int, frac) = match unsigned.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (unsigned, None),
    };
    let digits = |p: &str| p.bytes().all(|b| b.is_ascii_digit());
    match frac {
        None => !int.is_empty() && digits(int),
        Some(f) => (!int.is_empty() || !f.is_empty()) && !f.is_empty() && digits(int) && digits(f),
    }
}

/// A value with `decimals` decimals, never `-0.00`.
pub fn format_value(value: f64, decimals: usize) -> String {
    let text = format!("{value:.decimals$}");
    match text.strip_prefix('-') {
        Some(rest) if rest.bytes().all(|b| b == b'0' || b == b'.') => rest.to_string(),
        _ => text,
    }
}

/// `{"pza_id", "state": "ON"|"OFF"}`. For every reply builder, `pza_id` is
/// the command's id, `None` for a message that answers no command (a fresh
/// server-made id is used then).
pub fn state_reply(pza_id: Option<&str>, enabled: bool) -> Vec<u8> {
    json!({"pza_id": or_fresh(pza_id), "state": if enabled { "ON" } else { "OFF" }})
        .to_string()
        .into_bytes()
}

/// `{"pza_id", "<field>": "<value with decimals>"}`, for setpoints and measurements.
pub fn value_reply(pza_id: Option<&str>, field: &str, value: f64, decimals: usize) -> Vec<u8> {
    let mut object = serde_json::Map::new();
    object.insert("pza_id".into(), json!(or_fresh(pza_id)));
    object.insert(field.into(), Value::String(format_value(value, decimals)));
    Value::Object(object).to_string().into_bytes()
}

/// Both measured values, formatted like the `P/measure/*` topics.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Measurement {
    pub voltage: Volts,
    pub current: Amps,
    pub voltage_decimals: usize,
    pub current_decimals: usize,
}

/// `{"pza_id", "voltage", "current"}`: the one reply to `P/measure/cmd`.
pub fn measure_reply(pza_id: Option<&str>, measurement: &Measurement) -> Vec<u8> {
    json!({
        "pza_id": or_fresh(pza_id),
        "voltage": format_value(measurement.voltage.0, measurement.voltage_decimals),
        "current": format_value(measurement.current.0, measurement.current_decimals),
    })
    .to_string()
    .into_bytes()
}

/// `{"pza_id", "message"}`.
pub fn error_reply(pza_id: Option<&str>, message: &str) -> Vec<u8> {
    json!({"pza_id": or_fresh(pza_id), "message": message})
        .to_string()
        .into_bytes()
}

/// What `P/info` tells about a runner (retained): what it is and the
/// limits it enforces, so that clients can show and explain them.
#[derive(Debug, Clone, PartialEq)]
pub struct InfoReport {
    pub model: String,
    pub description: String,
    pub security_min_voltage: f64,
    pub security_max_voltage: f64,
    pub security_min_current: f64,
    pub security_max_current: f64,
    pub voltage_decimals: usize,
    pub current_decimals: usize,
}

impl InfoReport {
    /// The payload, limits as JSON numbers, with a fresh server-made `pza_id`.
    pub fn to_payload(&self) -> Vec<u8> {
        json!({
            "pza_id": or_fresh(None),
            "model": self.model,
            "description": self.description,
            "security_min_voltage": self.security_min_voltage,
            "security_max_voltage": self.security_max_voltage,
            "security_min_current": self.security_min_current,
            "security_max_current": self.security_max_current,
            "voltage_decimals": self.voltage_decimals,
            "current_decimals": self.current_decimals,
        })
        .to_string()
        .into_bytes()
    }
}

/// The lifecycle of a runner, as published on `P/status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Initializing,
    Running,
    Panicking,
    Restarting,
    Failed,
    Stopped,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Initializing => "Initializing",
            Status::Running => "Running",
            Status::Panicking => "Panicking",
            Status::Restarting => "Restarting",
            Status::Failed => "Failed",
            Status::Stopped => "Stopped",
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One `P/status` message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusReport {
    /// The restart command's id for its reply; `None` for every other
    /// status, which gets a fresh server-made id when it is published.
    pub pza_id: Option<String>,
    pub status: Status,
    pub panic_message: Option<String>,
    pub restarts: u32,
    pub next_restart_ms: Option<u64>,
}

impl StatusReport {
    pub fn new(status: Status, restarts: u32) -> Self {
        StatusReport {
            pza_id: None,
            status,
            panic_message: None,
            restarts,
            next_restart_ms: None,
        }
    }

    pub fn to_payload(&self) -> Vec<u8> {
        let mut object = serde_json::Map::new();
        object.insert("pza_id".into(), json!(or_fresh(self.pza_id.as_deref())));
        object.insert("status".into(), json!(self.status.as_str()));
        if let Some(message) = &self.panic_message {
            object.insert("panic_message".into(), json!(message));
        }
        object.insert("restarts".into(), json!(self.restarts));
        if let Some(ms) = self.next_restart_ms {
            object.insert("next_restart_ms".into(), json!(ms));
        }
        Value::Object(object).to_string().into_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn voltage(payload: &str) -> Result<Command, Rejection> {
        parse_command(Attribute::Voltage, payload.as_bytes())
    }

    #[test]
    fn accepts_strings_and_numbers() {
        for (payload, expected) in [
            (r#"{"pza_id":"a","voltage":"5.0"}"#, 5.0),
            (r#"{"pza_id":"a","voltage":5}"#, 5.0),
            (r#"{"voltage":"12","pza_id":"a"}"#, 12.0),
            (r#"{"pza_id":"a","voltage":".5"}"#, 0.5),
            (r#"{"pza_id":"a","voltage":"-0"}"#, 0.0),
            (r#"{"pza_id":"a","voltage":-0.0}"#, 0.0),
            (r#" {"pza_id":"a","voltage":1.25} "#, 1.25),
        ] {
            let command = voltage(payload).unwrap();
            assert_eq!(command.pza_id.as_deref(), Some("a"));
            match command.request {
                Request::SetVoltage(Volts(v)) => {
                    assert_eq!(v, expected, "{payload}");
                    assert!(v.is_sign_positive(), "{payload}");
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn state_commands() {
        let on = parse_command(Attribute::State, br#"{"pza_id":"x","state":"ON"}"#).unwrap();
        assert_eq!(on.request, Request::SetOutput(true));
        let off = parse_command(Attribute::State, br#"{"pza_id":"x","state":"OFF"}"#).unwrap();
        assert_eq!(off.request, Request::SetOutput(false));
        let bad = parse_command(Attribute::State, br#"{"pza_id":"x","state":"on"}"#).unwrap_err();
        assert_eq!(
            bad,
            Rejection::new(
                Some("x".into()),
                "field `state` must be \"ON\" or \"OFF\", not \"on\""
            )
        );
    }

    #[test]
    fn rejections_name_the_field_and_keep_the_pza_id() {
        let cases = [
            (r#"{"pza_id":"a","voltage":"5V"}"#, Some("a"), "field `voltage`: \"5V\" is not a plain decimal number"),
            (r#"{"pza_id":"a","voltage":"NaN"}"#, Some("a"), "field `voltage`: \"NaN\" is not a plain decimal number"),
            (r#"{"pza_id":"a","voltage":"1e3"}"#, Some("a"), "field `voltage`: \"1e3\" is not a plain decimal number"),
            (r#"{"pza_id":"a","voltage":true}"#, Some("a"), "field `voltage` must be a number or a string holding a decimal number, not a boolean"),
            (r#"{"pza_id":"a"}"#, Some("a"), "missing field `voltage`"),
            (r#"{"pza_id":"a","voltage":1,"x":2}"#, Some("a"), "unknown field `x` (expected: pza_id, voltage)"),
            (r#"{"pza_id":"a","voltage":1,"voltage":2}"#, Some("a"), "duplicate field `voltage`"),
            (r#"{"voltage":1}"#, None, "missing field `pza_id`"),
            (r#"{"pza_id":7,"voltage":1}"#, None, "field `pza_id` must be a string, not a number"),
            (r#"[1,2]"#, None, "payload must be a JSON object"),
            ("", None, "payload is empty: expected a JSON object"),
        ];
        for (payload, pza_id, message) in cases {
            let rejection = voltage(payload).unwrap_err();
            assert_eq!(rejection.pza_id.as_deref(), pza_id, "{payload}");
            assert_eq!(rejection.message, message, "{payload}");
        }
    }

    #[test]
    fn huge_and_broken_inputs() {
        let long = format!(r#"{{"pza_id":"a","voltage":"{}"}}"#, "9".repeat(400));
        assert_eq!(
            voltage(&long).unwrap_err().message,
            "field `voltage`: value is not a finite number"
        );
        let overflow = voltage(r#"{"pza_id":"a","voltage":1e309}"#).unwrap_err();
        assert!(overflow.message.starts_with("payload is not valid JSON"));
        assert_eq!(overflow.pza_id.as_deref(), Some("a"));
        assert!(voltage(r#"{"pza_id":"a","#)
            .unwrap_err()
            .message
            .starts_with("payload is not valid JSON"));
        let nested = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        assert!(voltage(&nested).is_err());
        let err = parse_command(Attribute::Voltage, &[0xff, 0xfe]).unwrap_err();
        assert!(
            err.message.starts_with("payload is not valid UTF-8"),
            "{err}"
        );
        assert!(voltage(r#"{"pza_id":"a","voltage":1} x"#)
            .unwrap_err()
            .message
            .starts_with("payload is not valid JSON"));
    }

    /// The id is recovered from any object holding a string `pza_id`,
    /// wherever the unreadable part lies.
    #[test]
    fn the_id_survives_an_unreadable_field() {
        for (payload, expected) in [
            (r#"{"pza_id":"h5","voltage":1e400}"#, Some("h5")),
            (r#"{"voltage":1e400,"pza_id":"h6"}"#, Some("h6")),
            (
                r#"{"voltage":-1e400,"x":[1,{"y":1e999}],"pza_id":"h7"}"#,
                Some("h7"),
            ),
            (r#"{"pza_id":"h8","voltage":"#, Some("h8")),
            (r#"{"pza_id":"h9","voltage":1} trailing"#, Some("h9")),
            (r#"{"pza_id":1e400,"voltage":1e400}"#, None),
            (r#"{"voltage":1e400}"#, None),
            (r#"["pza_id","h10"]"#, None),
        ] {
            assert_eq!(
                voltage(payload).unwrap_err().pza_id.as_deref(),
                expected,
                "{payload}"
            );
            assert_eq!(
                command_id(payload.as_bytes()).as_deref(),
                expected,
                "{payload}"
            );
        }
    }

    #[test]
    fn measure_payload() {
        assert_eq!(
            parse_measure(br#"{"pza_id":"m"}"#).unwrap(),
            Some("m".into())
        );
        let bad = parse_measure(br#"{"pza_id":"m","voltage":1}"#).unwrap_err();
        assert_eq!(bad.pza_id.as_deref(), Some("m"));
        assert_eq!(bad.message, "unknown field `voltage` (expected: pza_id)");
        let m = Measurement {
            voltage: Volts(4.981),
            current: Amps(0.12),
            voltage_decimals: 2,
            current_decimals: 3,
        };
        assert_eq!(
            String::from_utf8(measure_reply(Some("m"), &m)).unwrap(),
            r#"{"pza_id":"m","voltage":"4.98","current":"0.120"}"#
        );
    }

    #[test]
    fn info_payload_has_numbers_and_a_string_id() {
        let info = InfoReport {
            model: "kd3005p".into(),
            description: "Korad KD3005P".into(),
            security_min_voltage: 0.0,
            security_max_voltage: 12.5,
            security_min_current: 0.0,
            security_max_current: 3.0,
            voltage_decimals: 2,
            current_decimals: 3,
        };
        let v: Value = serde_json::from_slice(&info.to_payload()).unwrap();
        assert!(v["pza_id"]
            .as_str()
            .unwrap()
            .starts_with(crate::ids::SERVER_ID_PREFIX));
        assert_eq!(v["security_max_voltage"], json!(12.5));
        assert_eq!(v["security_max_current"], json!(3.0));
        assert_eq!(v["voltage_decimals"], json!(2));
        assert_eq!(v["model"], json!("kd3005p"));
        assert_eq!(v.as_object().unwrap().len(), 9);
    }

    #[test]
    fn restart_payload() {
        assert_eq!(
            parse_restart(br#"{"pza_id":"r"}"#).unwrap(),
            Some("r".into())
        );
        assert_eq!(
            parse_restart(br#"{"pza_id":"r","now":true}"#)
                .unwrap_err()
                .pza_id,
            Some("r".into())
        );
    }

    #[test]
    fn replies() {
        assert_eq!(
            String::from_utf8(value_reply(Some("a1"), "voltage", 5.0, 2)).unwrap(),
            r#"{"pza_id":"a1","voltage":"5.00"}"#
        );
        let state: Value = serde_json::from_slice(&state_reply(None, true)).unwrap();
        assert!(
            state["pza_id"].as_str().unwrap().starts_with("srv-"),
            "{state}"
        );
        assert_eq!(state["state"], "ON");
        let error: Value = serde_json::from_slice(&error_reply(None, "x")).unwrap();
        assert!(error["pza_id"].is_string(), "{error}");
        assert_eq!(format_value(-0.0001, 3), "0.000");
        assert_eq!(format_value(-1.5, 1), "-1.5");
        let mut report = StatusReport::new(Status::Restarting, 2);
        report.next_restart_ms = Some(400);
        report.panic_message = Some("boom".into());
        report.pza_id = Some("r1".into());
        assert_eq!(
            String::from_utf8(report.to_payload()).unwrap(),
            r#"{"pza_id":"r1","status":"Restarting","panic_message":"boom","restarts":2,"next_restart_ms":400}"#
        );
        report.pza_id = None;
        let fresh: Value = serde_json::from_slice(&report.to_payload()).unwrap();
        assert!(
            fresh["pza_id"].as_str().unwrap().starts_with("srv-"),
            "{fresh}"
        );
    }
}
