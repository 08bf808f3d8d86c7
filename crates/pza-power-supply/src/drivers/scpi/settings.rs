//! The model-specific settings of an SCPI runner, read and checked against
//! its model's profile.
//!
//! ```json5
//! channel: 2,                                   // required: which output
//! tcp: { addr: "192.168.1.50", port: 5555 },    // port defaults to the model's
//! // or, on a model with an RS-232 port:
//! serial_port: { name: "/dev/ttyUSB0" }, baud_rate: 9600,
//! pacing_ms: 10, read_timeout_ms: 1000,         // optional
//! ```

use std::fmt;

use serde::Deserialize;

use super::super::kd3005p::settings::RawSerialPort;
use super::super::kd3005p::transport::PortSelector;
use super::super::model::{millis, parse_settings, DriverSettings, SettingsError};
use super::profile::Profile;
use super::transport::{Timing, DEFAULT_READ_TIMEOUT};

/// The keys an SCPI runner accepts besides the common ones.
pub const KEYS: &[&str] = &[
    "channel",
    "tcp",
    "serial_port",
    "baud_rate",
    "pacing_ms",
    "read_timeout_ms",
];

/// Baud rates of the DP800's RS-232 port (DP800 Programming Guide,
/// `:SYST:COMM:RS232:BAUD`).
const BAUD_RATES: &[u32] = &[4800, 9600, 19200, 38400, 57600, 115200];

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSettings {
    channel: Option<u64>,
    tcp: Option<RawTcp>,
    serial_port: Option<RawSerialPort>,
    baud_rate: Option<u32>,
    pacing_ms: Option<u64>,
    read_timeout_ms: Option<u64>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTcp {
    addr: String,
    port: Option<u16>,
}

/// Where an instrument is. Two runners naming the same endpoint (as
/// displayed: the baud rate aside) share one session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// A raw SCPI socket. `addr` is kept lowercase, so `Lab-PSU` and
    /// `lab-psu` are one instrument.
    Tcp {
        addr: String,
        port: u16,
    },
    Serial {
        port: PortSelector,
        baud_rate: u32,
    },
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Tcp { addr, port } if addr.contains(':') => write!(f, "tcp [{addr}]:{port}"),
            Endpoint::Tcp { addr, port } => write!(f, "tcp {addr}:{port}"),
            Endpoint::Serial {
                port: PortSelector::Name(name),
                ..
            } => write!(f, "serial {name}"),
            Endpoint::Serial {
                port:
                    PortSelector::Usb {
                        vid,
                        pid,
                        serial_number,
                    },
                ..
            } => {
                write!(f, "serial USB {vid:04x}:{pid:04x}")?;
                if let Some(s) = serial_number {
                    write!(f, " ({s})")?;
                }
                Ok(())
            }
        }
    }
}

/// Checked settings of an SCPI runner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScpiSettings {
    /// From 1; checked against the profile.
    pub channel: u8,
    pub endpoint: Endpoint,
    pub timing: Timing,
}

impl ScpiSettings {
    pub fn parse(profile: &Profile, settings: &DriverSettings) -> Result<Self, SettingsError> {
        let raw: RawSettings = parse_settings(settings)?;
        let count = profile.channels.len();
        let channel = match raw.channel {
            None => {
                return Err(error(
                    "channel",
                    format!(
                        "is required: the output this runner drives (1 to {count} on a {})",
                        profile.model
                    ),
                ))
            }
            Some(n) => u8::try_from(n)
                .ok()
                .filter(|n| profile.channel(*n).is_some())
                .ok_or_else(|| {
                    error(
                        "channel",
                        format!(
                            "{n} is not a channel of the {}: it has channels 1 to {count}",
                            profile.model
                        ),
                    )
                })?,
        };
        let endpoint = match (raw.tcp, raw.serial_port) {
            (Some(_), Some(_)) => {
                return Err(error(
                    "serial_port",
                    "give either tcp or serial_port, not both",
                ))
            }
            (None, None) => {
                return Err(error(
                    ".",
                    format!(
                        "needs tcp: {{ addr: \"192.168.1.50\" }} (port defaults to {}){}",
                        profile.tcp_port,
                        if profile.serial.is_some() {
                            " or serial_port: { name: \"/dev/ttyUSB0\" }"
                        } else {
                            ""
                        }
                    ),
                ))
            }
            (Some(tcp), None) => {
                if raw.baud_rate.is_some() {
                    return Err(error("baud_rate", "is for serial_port, not tcp"));
                }
                let addr = tcp.addr.trim().to_ascii_lowercase();
                if addr.is_empty() {
                    return Err(error("tcp.addr", "must not be empty"));
                }
                let port = tcp.port.unwrap_or(profile.tcp_port);
                if port == 0 {
                    return Err(error("tcp.port", "must lie in 1..=65535"));
                }
                Endpoint::Tcp { addr, port }
            }
            (None, Some(serial)) => {
                let Some(spec) = profile.serial else {
                    return Err(error(
                        "serial_port",
                        format!(
                            "the {} has no serial port (its USB port is USBTMC, which is not a serial port): use tcp",
                            profile.model
                        ),
                    ));
                };
                let baud_rate = raw.baud_rate.unwrap_or(spec.default_baud_rate);
                if !BAUD_RATES.contains(&baud_rate) {
                    return Err(error(
                        "baud_rate",
                        format!("{baud_rate} is not one of {BAUD_RATES:?}"),
                    ));
                }
                Endpoint::Serial {
                    port: serial.selector()?,
                    baud_rate,
                }
            }
        };
        let timing = Timing {
            pacing: millis("pacing_ms", raw.pacing_ms, profile.pacing, 0)?,
            read_timeout: millis(
                "read_timeout_ms",
                raw.read_timeout_ms,
                DEFAULT_READ_TIMEOUT,
                1,
            )?,
        };
        Ok(ScpiSettings {
            channel,
            endpoint,
            timing,
        })
    }
}

fn error(key: &str, message: impl Into<String>) -> SettingsError {
    SettingsError {
        key: key.into(),
        message: message.into(),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::drivers::scpi::profile::{KEYSIGHT_E36312A, RIGOL_DP832, SIGLENT_SPD3303X};
    use serde_json::json;

    fn parse(profile: &Profile, value: serde_json::Value) -> Result<ScpiSettings, SettingsError> {
        ScpiSettings::parse(profile, value.as_object().unwrap())
    }

    #[test]
    fn tcp_port_defaults_to_the_models() {
        let s = parse(
            &RIGOL_DP832,
            json!({"channel": 3, "tcp": {"addr": "Lab-PSU"}}),
        )
        .unwrap();
        assert_eq!(s.channel, 3);
        assert_eq!(
            s.endpoint,
            Endpoint::Tcp {
                addr: "lab-psu".into(),
                port: 5555
            }
        );
        assert_eq!(s.endpoint.to_string(), "tcp lab-psu:5555");
        assert_eq!(s.timing.pacing, Duration::from_millis(10));
        assert_eq!(s.timing.read_timeout, DEFAULT_READ_TIMEOUT);
        let s = parse(
            &SIGLENT_SPD3303X,
            json!({"channel": 1, "tcp": {"addr": "10.0.0.2"}}),
        )
        .unwrap();
        assert_eq!(s.endpoint.to_string(), "tcp 10.0.0.2:5025");
        assert_eq!(s.timing.pacing, Duration::from_millis(100));
        let s = parse(
            &KEYSIGHT_E36312A,
            json!({"channel": 2, "tcp": {"addr": "::1", "port": 6000}, "pacing_ms": 0, "read_timeout_ms": 50}),
        )
        .unwrap();
        assert_eq!(s.endpoint.to_string(), "tcp [::1]:6000");
        assert_eq!(s.timing.read_timeout, Duration::from_millis(50));
    }

    #[test]
    fn serial_on_the_model_that_has_one() {
        let s = parse(
            &RIGOL_DP832,
            json!({"channel": 1, "serial_port": {"name": "/dev/ttyUSB0"}}),
        )
        .unwrap();
        assert_eq!(
            s.endpoint,
            Endpoint::Serial {
                port: PortSelector::Name("/dev/ttyUSB0".into()),
                baud_rate: 9600
            }
        );
        let s = parse(
            &RIGOL_DP832,
            json!({"channel": 1, "serial_port": {"name": "/dev/ttyUSB0"}, "baud_rate": 115200}),
        )
        .unwrap();
        assert!(matches!(
            s.endpoint,
            Endpoint::Serial {
                baud_rate: 115200,
                ..
            }
        ));
    }

    #[test]
    fn bad_settings_name_their_key() {
        let cases = [
            (
                &RIGOL_DP832,
                json!({"tcp": {"addr": "a"}}),
                "channel",
                "is required",
            ),
            (
                &RIGOL_DP832,
                json!({"channel": 4, "tcp": {"addr": "a"}}),
                "channel",
                "channels 1 to 3",
            ),
            (
                &RIGOL_DP832,
                json!({"channel": 0, "tcp": {"addr": "a"}}),
                "channel",
                "not a channel",
            ),
            (
                &SIGLENT_SPD3303X,
                json!({"channel": 3, "tcp": {"addr": "a"}}),
                "channel",
                "channels 1 to 2",
            ),
            (
                &RIGOL_DP832,
                json!({"channel": -1, "tcp": {"addr": "a"}}),
                "channel",
                "",
            ),
            (&RIGOL_DP832, json!({"channel": 1}), ".", "needs tcp"),
            (
                &RIGOL_DP832,
                json!({"channel": 1, "tcp": {"addr": " "}}),
                "tcp.addr",
                "empty",
            ),
            (
                &RIGOL_DP832,
                json!({"channel": 1, "tcp": {"addr": "a", "port": 0}}),
                "tcp.port",
                "",
            ),
            (
                &RIGOL_DP832,
                json!({"channel": 1, "tcp": {"addr": "a", "port": 70000}}),
                "tcp.port",
                "",
            ),
            (
                &RIGOL_DP832,
                json!({"channel": 1, "tcp": {"adr": "a"}}),
                "tcp.adr",
                "",
            ),
            (
                &RIGOL_DP832,
                json!({"channel": 1, "tcp": {"addr": "a"}, "serial_port": {"name": "/dev/x"}}),
                "serial_port",
                "not both",
            ),
            (
                &SIGLENT_SPD3303X,
                json!({"channel": 1, "serial_port": {"name": "/dev/x"}}),
                "serial_port",
                "has no serial port",
            ),
            (
                &RIGOL_DP832,
                json!({"channel": 1, "serial_port": {"name": "/dev/x"}, "baud_rate": 1234}),
                "baud_rate",
                "not one of",
            ),
            (
                &RIGOL_DP832,
                json!({"channel": 1, "tcp": {"addr": "a"}, "baud_rate": 9600}),
                "baud_rate",
                "serial_port",
            ),
            (
                &RIGOL_DP832,
                json!({"channel": 1, "tcp": {"addr": "a"}, "read_timeout_ms": 0}),
                "read_timeout_ms",
                "",
            ),
            (
                &RIGOL_DP832,
                json!({"channel": 1, "tcp": {"addr": "a"}, "pacing_ms": 60_001}),
                "pacing_ms",
                "",
            ),
            (
                &RIGOL_DP832,
                json!({"channel": 1, "serial_port": {}}),
                "serial_port",
                "needs name",
            ),
        ];
        for (profile, value, key, text) in cases {
            let err = parse(profile, value.clone()).unwrap_err();
            assert_eq!(err.key, key, "{value}: {err}");
            assert!(err.message.contains(text), "{value}: {err}");
        }
    }
}
