//! The model-specific settings of a `kd3005p` runner, read and checked.
//!
//! ```json5
//! serial_port: { name: "/dev/ttyACM0" },   // or just "/dev/ttyACM0"
//! // or, found by USB id (numbers, or hex strings as lsusb prints them):
//! serial_port: { usb_vid: 0x0416, usb_pid: "5011", serial_number: "ABC123" },
//! pacing_ms: 80, settle_ms: 50, read_timeout_ms: 500,   // optional
//! ```

use serde::Deserialize;

use super::super::model::{millis, parse_settings, DriverSettings, SettingsError};
use super::transport::{PortSelector, Timing};

/// The keys a `kd3005p` runner accepts besides the common ones.
pub const KEYS: &[&str] = &["serial_port", "pacing_ms", "settle_ms", "read_timeout_ms"];

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSettings {
    serial_port: RawSerialPort,
    pacing_ms: Option<u64>,
    settle_ms: Option<u64>,
    read_timeout_ms: Option<u64>,
}

/// The `serial_port` key as written; the SCPI models read it too. Its object
/// form, or a string, short for `{ name: ... }`.
#[derive(Debug, Clone)]
pub(crate) struct RawSerialPort(SerialPortFields);

/// The object form of `serial_port`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SerialPortFields {
    name: Option<String>,
    usb_vid: Option<UsbId>,
    usb_pid: Option<UsbId>,
    serial_number: Option<String>,
}

impl<'de> Deserialize<'de> for RawSerialPort {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Form;
        impl<'de> serde::de::Visitor<'de> for Form {
            type Value = RawSerialPort;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str(
                    "a port name (\"/dev/ttyACM0\", \"COM3\"), { name }, \
                     or { usb_vid, usb_pid, serial_number }",
                )
            }

            fn visit_str<E: serde::de::Error>(self, name: &str) -> Result<RawSerialPort, E> {
                Ok(RawSerialPort(SerialPortFields {
                    name: Some(name.to_owned()),
                    ..SerialPortFields::default()
                }))
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<RawSerialPort, A::Error> {
                // Through the map as given, so that an error inside names
                // its key (`serial_port.nam`).
                SerialPortFields::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(RawSerialPort)
            }
        }
        deserializer.deserialize_any(Form)
    }
}

/// A USB vendor or product id: a number (JSON5 allows `0x0416`) or a string
/// of hex digits (`"0416"`, `"0x0416"`), as `lsusb` prints it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct UsbId(u16);

impl<'de> Deserialize<'de> for UsbId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(u64),
            Text(String),
        }
        let expected = "a USB id: a number up to 0xFFFF or a string of 1 to 4 hex digits";
        let id = match Raw::deserialize(deserializer)
            .map_err(|_| serde::de::Error::custom(format!("expected {expected}")))?
        {
            Raw::Number(n) => u16::try_from(n).ok(),
            Raw::Text(s) => {
                let digits = s.strip_prefix("0x").or(s.strip_prefix("0X")).unwrap_or(&s);
                let hex = !digits.is_empty()
                    && digits.len() <= 4
                    && digits.chars().all(|c| c.is_ascii_hexdigit());
                hex.then(|| u16::from_str_radix(digits, 16).ok()).flatten()
            }
        };
        id.map(UsbId)
            .ok_or_else(|| serde::de::Error::custom(format!("expected {expected}")))
    }
}

impl RawSerialPort {
    /// Which port the key names: a path, or a USB id.
    pub(crate) fn selector(self) -> Result<PortSelector, SettingsError> {
        Ok(match self.0 {
        SerialPortFields {
            name: Some(name),
            usb_vid: None,
            usb_pid: None,
            serial_number: None,
        } => {
            if name.trim().is_empty() {
                return Err(error("serial_port.name", "must not be empty"));
            }
            PortSelector::Name(name)
        }
        SerialPortFields { name: Some(_), .. } => {
            return Err(error(
                "serial_port",
                "give either name, or usb_vid and usb_pid (with an optional serial_number), not both",
            ))
        }
        SerialPortFields {
            name: None,
            usb_vid: Some(vid),
            usb_pid: Some(pid),
            serial_number,
        } => PortSelector::Usb {
            vid: vid.0,
            pid: pid.0,
            serial_number,
        },
        SerialPortFields { name: None, .. } => {
            return Err(error(
                "serial_port",
                "needs name (e.g. \"/dev/ttyACM0\"), or usb_vid and usb_pid (e.g. 0x0416 and 0x5011)",
            ))
        }
    })
    }
}

/// Checked settings of a `kd3005p` runner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kd3005pSettings {
    pub port: PortSelector,
    pub timing: Timing,
}

impl Kd3005pSettings {
    pub fn parse(settings: &DriverSettings) -> Result<Self, SettingsError> {
        let raw: RawSettings = parse_settings(settings)?;
        let port = raw.serial_port.selector()?;
        let defaults = Timing::default();
        let timing = Timing {
            pacing: millis("pacing_ms", raw.pacing_ms, defaults.pacing, 0)?,
            settle_after_set: millis("settle_ms", raw.settle_ms, defaults.settle_after_set, 0)?,
            read_timeout: millis(
                "read_timeout_ms",
                raw.read_timeout_ms,
                defaults.read_timeout,
                1,
            )?,
        };
        Ok(Kd3005pSettings { port, timing })
    }
}

fn error(key: &str, message: &str) -> SettingsError {
    SettingsError {
        key: key.into(),
        message: message.into(),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use serde_json::json;

    fn parse(value: serde_json::Value) -> Result<Kd3005pSettings, SettingsError> {
        Kd3005pSettings::parse(value.as_object().unwrap())
    }

    #[test]
    fn port_by_name_with_default_timing() {
        let s = parse(json!({"serial_port": {"name": "/dev/ttyACM0"}})).unwrap();
        assert_eq!(s.port, PortSelector::Name("/dev/ttyACM0".into()));
        assert_eq!(s.timing, Timing::default());
        assert_eq!(s.timing.pacing, Duration::from_millis(80));
    }

    #[test]
    fn a_string_is_short_for_a_port_name() {
        let s = parse(json!({"serial_port": "/dev/ttyACM0"})).unwrap();
        assert_eq!(s.port, PortSelector::Name("/dev/ttyACM0".into()));
        let s = parse(json!({"serial_port": "COM3"})).unwrap();
        assert_eq!(s.port, PortSelector::Name("COM3".into()));
        let err = parse(json!({"serial_port": ""})).unwrap_err();
        assert_eq!(err.key, "serial_port.name", "{err}");
        let err = parse(json!({"serial_port": 3})).unwrap_err();
        assert_eq!(err.key, "serial_port", "{err}");
        assert!(
            err.to_string()
                .contains("a port name (\"/dev/ttyACM0\", \"COM3\"), { name }"),
            "{err}"
        );
    }

    #[test]
    fn port_by_usb_id_as_number_or_hex_string() {
        let s = parse(json!({"serial_port": {"usb_vid": 0x0416, "usb_pid": "5011"}})).unwrap();
        assert_eq!(
            s.port,
            PortSelector::Usb {
                vid: 0x0416,
                pid: 0x5011,
                serial_number: None
            }
        );
        let s = parse(json!({"serial_port": {
            "usb_vid": "0x0416", "usb_pid": 20497, "serial_number": "A1"
        }}))
        .unwrap();
        assert_eq!(
            s.port,
            PortSelector::Usb {
                vid: 0x0416,
                pid: 0x5011,
                serial_number: Some("A1".into())
            }
        );
    }

    #[test]
    fn timing_keys() {
        let s = parse(json!({
            "serial_port": {"name": "/dev/x"}, "pacing_ms": 0, "settle_ms": 10, "read_timeout_ms": 200
        }))
        .unwrap();
        assert_eq!(s.timing.pacing, Duration::ZERO);
        assert_eq!(s.timing.settle_after_set, Duration::from_millis(10));
        assert_eq!(s.timing.read_timeout, Duration::from_millis(200));
        let err =
            parse(json!({"serial_port": {"name": "/dev/x"}, "read_timeout_ms": 0})).unwrap_err();
        assert_eq!(err.key, "read_timeout_ms");
        let err = parse(json!({"serial_port": {"name": "/dev/x"}, "pacing_ms": -1})).unwrap_err();
        assert_eq!(err.key, "pacing_ms");
    }

    #[test]
    fn bad_settings_name_their_key() {
        let cases = [
            (json!({}), "."),
            (json!({"serial_port": {}}), "serial_port"),
            (json!({"serial_port": {"name": ""}}), "serial_port.name"),
            (
                json!({"serial_port": {"name": "/dev/x", "usb_vid": 1}}),
                "serial_port",
            ),
            (json!({"serial_port": {"usb_vid": 0x0416}}), "serial_port"),
            (
                json!({"serial_port": {"usb_vid": 0x10000, "usb_pid": 1}}),
                "serial_port.usb_vid",
            ),
            (
                json!({"serial_port": {"usb_vid": "04x6", "usb_pid": 1}}),
                "serial_port.usb_vid",
            ),
            (
                json!({"serial_port": {"usb_vid": 1, "usb_pid": "12345"}}),
                "serial_port.usb_pid",
            ),
            (json!({"serial_port": {"nam": "/dev/x"}}), "serial_port.nam"),
            (
                json!({"serial_port": {"name": "/dev/x"}, "faults": {}}),
                "faults",
            ),
            (
                json!({"serial_port": {"name": "/dev/x"}, "pacing_ms": 60_001}),
                "pacing_ms",
            ),
        ];
        for (value, key) in cases {
            let err = parse(value.clone()).unwrap_err();
            assert_eq!(err.key, key, "{value}: {err}");
        }
    }
}
