//! The SCPI dialects: command lines and reply parsing, pure code over
//! strings with no I/O.
//!
//! Each dialect names the channel its own way:
//! - Rigol selects it first (`:INST:NSEL 2`), then sets `:VOLT 5.000` on the
//!   selected channel; queries name it (`:APPL? CH2`, `:MEAS:VOLT? CH2`);
//! - Siglent prefixes it (`CH2:VOLT 5.000`) or passes it (`MEAS:VOLT? CH2`),
//!   and reports the outputs as bits of `SYST:STAT?`;
//! - Keysight appends a channel list (`VOLT 5.000,(@2)`).
//!
//! A set is never answered, so the driver reads every setting back.
//! Lines carry no terminator here; the transport adds it.

use std::fmt;

use super::super::{DriverError, ErrorKind, Range};

/// A command dialect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Rigol,
    Siglent,
    Keysight,
}

/// A setting of a channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Setting {
    Voltage,
    Current,
}

impl Setting {
    pub fn unit(self) -> &'static str {
        match self {
            Setting::Voltage => "V",
            Setting::Current => "A",
        }
    }

    fn mnemonic(self) -> &'static str {
        match self {
            Setting::Voltage => "VOLT",
            Setting::Current => "CURR",
        }
    }
}

impl fmt::Display for Setting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Setting::Voltage => "voltage",
            Setting::Current => "current",
        })
    }
}

/// `SYST:STAT?` bit of CH1's output on a Siglent; CH2's is the next one.
const SIGLENT_CH1_OUTPUT_BIT: u32 = 4;

/// Longest `*IDN?` reply accepted, and longest reply of any kind: real
/// answers are well under 100 characters.
pub const MAX_REPLY_LEN: usize = 256;

/// SCPI's "not a number" (9.91E37) and the overflow values near it: an
/// instrument answers them when it has no value to give.
const SCPI_NAN_THRESHOLD: f64 = 9.0e37;

/// An error of the codec: a value out of range, or a reply that cannot be
/// understood.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ProtocolError {
    #[error("{value} {unit} is outside the channel range {range} {unit}")]
    OutOfRange {
        value: f64,
        unit: &'static str,
        range: Range,
    },
    #[error("reply to {query} is not {expected}: {reply:?}")]
    BadReply {
        query: String,
        expected: &'static str,
        reply: String,
    },
    #[error("reply to *IDN? is not \"maker,model,serial,firmware\": {reply:?}")]
    BadIdentity { reply: String },
}

impl From<ProtocolError> for DriverError {
    fn from(e: ProtocolError) -> Self {
        let kind = match e {
            ProtocolError::OutOfRange { .. } => ErrorKind::OutOfRange,
            _ => ErrorKind::Protocol,
        };
        DriverError::new(kind, e.to_string())
    }
}

/// The answer to `*IDN?`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub manufacturer: String,
    pub model: String,
    pub serial: String,
    pub firmware: String,
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} (serial {}, firmware {})",
            self.manufacturer, self.model, self.serial, self.firmware
        )
    }
}

/// `*IDN?`: every model answers it.
pub const IDENTITY_QUERY: &str = "*IDN?";

/// Parses `maker,model,serial,firmware` (Siglent adds a fifth field, the
/// hardware version, kept in `firmware`).
pub fn parse_identity(reply: &str) -> Result<Identity, ProtocolError> {
    let fields: Vec<&str> = reply.trim().splitn(4, ',').map(str::trim).collect();
    match fields.as_slice() {
        [manufacturer, model, serial, firmware]
            if !manufacturer.is_empty() && !model.is_empty() =>
        {
            Ok(Identity {
                manufacturer: manufacturer.to_string(),
                model: model.to_string(),
                serial: serial.to_string(),
                firmware: firmware.to_string(),
            })
        }
        _ => Err(ProtocolError::BadIdentity {
            reply: reply.to_string(),
        }),
    }
}

/// Checks `value` against the channel range and formats it at `decimals`.
fn value(
    value: f64,
    setting: Setting,
    range: Range,
    decimals: usize,
) -> Result<String, ProtocolError> {
    // `contains` is false for NaN, so a NaN never reaches the formatter.
    if range.contains(value) {
        // Rounded as `same_setting` rounds, so that the read-back compares
        // equal: the formatter alone would print 1.2345 as 1.234 (its binary
        // value is just below the half).
        Ok(format!("{:.decimals$}", round(value, decimals)))
    } else {
        Err(ProtocolError::OutOfRange {
            value,
            unit: setting.unit(),
            range,
        })
    }
}

impl Dialect {
    /// The lines that set `setting` of `channel` to `requested`, after a
    /// check against the channel's `range`.
    pub fn set(
        self,
        channel: u8,
        setting: Setting,
        requested: f64,
        range: Range,
        decimals: usize,
    ) -> Result<Vec<String>, ProtocolError> {
        let value = value(requested, setting, range, decimals)?;
        let name = setting.mnemonic();
        Ok(match self {
            Dialect::Rigol => vec![format!(":INST:NSEL {channel}"), format!(":{name} {value}")],
            Dialect::Siglent => vec![format!("CH{channel}:{name} {value}")],
            Dialect::Keysight => vec![format!("{name} {value},(@{channel})")],
        })
    }

    /// The query that reads `setting` of `channel` back.
    pub fn setpoint_query(self, channel: u8, setting: Setting) -> String {
        let name = setting.mnemonic();
        match self {
            // Names the channel, so it needs no selection, and reads both
            // setpoints at once.
            Dialect::Rigol => format!(":APPL? CH{channel}"),
            Dialect::Siglent => format!("CH{channel}:{name}?"),
            Dialect::Keysight => format!("{name}? (@{channel})"),
        }
    }

    /// Parses the reply to [`Dialect::setpoint_query`].
    pub fn parse_setpoint(
        self,
        channel: u8,
        setting: Setting,
        reply: &str,
    ) -> Result<f64, ProtocolError> {
        let query = self.setpoint_query(channel, setting);
        match self {
            // `CH1:30V/3A,5.000,1.000`: the channel's rating, the voltage
            // setpoint, the current limit.
            Dialect::Rigol => {
                let fields: Vec<&str> = reply.trim().split(',').collect();
                let expected = "\"CHn:rating,volts,amps\"";
                let [head, volts, amps] = fields.as_slice() else {
                    return Err(bad_reply(&query, expected, reply));
                };
                if !head.trim().starts_with(&format!("CH{channel}:")) {
                    return Err(bad_reply(&query, expected, reply));
                }
                let field = match setting {
                    Setting::Voltage => volts,
                    Setting::Current => amps,
                };
                parse_number(field).ok_or_else(|| bad_reply(&query, expected, reply))
            }
            Dialect::Siglent | Dialect::Keysight => {
                parse_number(reply).ok_or_else(|| bad_reply(&query, "a number", reply))
            }
        }
    }

    /// The lines that switch the output of `channel`.
    pub fn set_output(self, channel: u8, enabled: bool) -> Vec<String> {
        let state = if enabled { "ON" } else { "OFF" };
        vec![match self {
            Dialect::Rigol => format!(":OUTP CH{channel},{state}"),
            Dialect::Siglent => format!("OUTP CH{channel},{state}"),
            Dialect::Keysight => format!("OUTP {state},(@{channel})"),
        }]
    }

    /// The query that reads the output state of `channel`.
    pub fn output_query(self, channel: u8) -> String {
        match self {
            Dialect::Rigol => format!(":OUTP? CH{channel}"),
            // The SPD3303X has no output query: its status word carries
            // one bit per channel.
            Dialect::Siglent => "SYST:STAT?".to_string(),
            Dialect::Keysight => format!("OUTP? (@{channel})"),
        }
    }

    /// Parses the reply to [`Dialect::output_query`].
    pub fn parse_output(self, channel: u8, reply: &str) -> Result<bool, ProtocolError> {
        let query = self.output_query(channel);
        let text = reply.trim();
        match self {
            Dialect::Rigol | Dialect::Keysight => match text.to_ascii_uppercase().as_str() {
                "ON" | "1" => Ok(true),
                "OFF" | "0" => Ok(false),
                _ => Err(bad_reply(&query, "ON, OFF, 1 or 0", reply)),
            },
            Dialect::Siglent => {
                let digits = text
                    .strip_prefix("0x")
                    .or_else(|| text.strip_prefix("0X"))
                    .unwrap_or(text);
                let hex = !digits.is_empty()
                    && digits.len() <= 8
                    && digits.chars().all(|c| c.is_ascii_hexdigit());
                let word = hex
                    .then(|| u32::from_str_radix(digits, 16).ok())
                    .flatten()
                    .ok_or_else(|| bad_reply(&query, "a hexadecimal status word", reply))?;
                let bit = SIGLENT_CH1_OUTPUT_BIT + u32::from(channel) - 1;
                Ok(word & (1 << bit) != 0)
            }
        }
    }

    /// The query that measures `what` at the output of `channel`.
    pub fn measure_query(self, channel: u8, what: Setting) -> String {
        let name = what.mnemonic();
        match self {
            Dialect::Rigol => format!(":MEAS:{name}? CH{channel}"),
            Dialect::Siglent => format!("MEAS:{name}? CH{channel}"),
            Dialect::Keysight => format!("MEAS:{name}? (@{channel})"),
        }
    }

    /// Parses the reply to [`Dialect::measure_query`].
    pub fn parse_measure(
        self,
        channel: u8,
        what: Setting,
        reply: &str,
    ) -> Result<f64, ProtocolError> {
        parse_number(reply)
            .ok_or_else(|| bad_reply(&self.measure_query(channel, what), "a number", reply))
    }
}

fn bad_reply(query: &str, expected: &'static str, reply: &str) -> ProtocolError {
    ProtocolError::BadReply {
        query: query.to_string(),
        expected,
        reply: reply.to_string(),
    }
}

/// Parses an SCPI number (`5`, `5.000`, `+5.00000E+00`, `-0.5e-3`): finite,
/// plain digits, not SCPI's "not a number". Rust's own parser would also take
/// `inf` and `NaN`, which no instrument means.
pub fn parse_number(text: &str) -> Option<f64> {
    let text = text.trim();
    let (mantissa, exponent) = match text.find(['e', 'E']) {
        Some(at) => (&text[..at], Some(&text[at + 1..])),
        None => (text, None),
    };
    let unsigned = |s: &str| s.strip_prefix(['+', '-']).unwrap_or(s).to_string();
    let digits = unsigned(mantissa);
    let mantissa_ok = digits.chars().any(|c| c.is_ascii_digit())
        && digits.chars().all(|c| c.is_ascii_digit() || c == '.')
        && digits.matches('.').count() <= 1;
    let exponent_ok = exponent.is_none_or(|e| {
        let e = unsigned(e);
        !e.is_empty() && e.chars().all(|c| c.is_ascii_digit())
    });
    if !(mantissa_ok && exponent_ok) {
        return None;
    }
    text.parse::<f64>()
        .ok()
        .filter(|v| v.is_finite() && v.abs() < SCPI_NAN_THRESHOLD)
}

/// `value` at `decimals` decimals, halves away from zero.
pub fn round(value: f64, decimals: usize) -> f64 {
    let scale = 10f64.powi(decimals as i32);
    (value * scale).round() / scale
}

/// True when `read_back` is what the instrument shows for `requested` at
/// `decimals` decimals.
pub fn same_setting(requested: f64, read_back: f64, decimals: usize) -> bool {
    let scale = 10f64.powi(decimals as i32);
    (requested * scale).round() == (read_back * scale).round()
}

#[cfg(test)]
mod tests {
    use super::*;

    const RANGE_30: Range = Range::new(0.0, 30.0);

    #[test]
    fn rigol_selects_the_channel_before_a_set_and_names_it_in_queries() {
        let d = Dialect::Rigol;
        assert_eq!(
            d.set(2, Setting::Voltage, 5.0, RANGE_30, 3).unwrap(),
            [":INST:NSEL 2", ":VOLT 5.000"]
        );
        assert_eq!(
            d.set(3, Setting::Current, 0.1234, RANGE_30, 3).unwrap(),
            [":INST:NSEL 3", ":CURR 0.123"]
        );
        // Rounded as the read-back is compared, not as the formatter would.
        assert_eq!(
            d.set(1, Setting::Voltage, 1.2345, RANGE_30, 3).unwrap(),
            [":INST:NSEL 1", ":VOLT 1.235"]
        );
        assert_eq!(d.setpoint_query(2, Setting::Voltage), ":APPL? CH2");
        assert_eq!(d.set_output(1, true), [":OUTP CH1,ON"]);
        assert_eq!(d.output_query(1), ":OUTP? CH1");
        assert_eq!(d.measure_query(3, Setting::Current), ":MEAS:CURR? CH3");
    }

    #[test]
    fn rigol_replies() {
        let d = Dialect::Rigol;
        let apply = "CH2:30V/3A,12.500,1.250\n";
        assert_eq!(d.parse_setpoint(2, Setting::Voltage, apply).unwrap(), 12.5);
        assert_eq!(d.parse_setpoint(2, Setting::Current, apply).unwrap(), 1.25);
        // The answer of another channel is refused, not misread.
        assert!(d.parse_setpoint(1, Setting::Voltage, apply).is_err());
        assert!(d.parse_setpoint(2, Setting::Voltage, "12.500").is_err());
        assert!(d
            .parse_setpoint(2, Setting::Voltage, "CH2:30V/3A,x,1")
            .is_err());
        assert!(d.parse_output(1, "ON").unwrap());
        assert!(!d.parse_output(1, "OFF\r").unwrap());
        assert!(d.parse_output(1, "MAYBE").is_err());
        assert_eq!(
            d.parse_measure(1, Setting::Voltage, "5.0012").unwrap(),
            5.0012
        );
    }

    #[test]
    fn siglent_prefixes_the_channel_and_reads_outputs_from_the_status_word() {
        let d = Dialect::Siglent;
        assert_eq!(
            d.set(1, Setting::Voltage, 32.0, Range::new(0.0, 32.0), 3)
                .unwrap(),
            ["CH1:VOLT 32.000"]
        );
        assert_eq!(d.setpoint_query(2, Setting::Current), "CH2:CURR?");
        assert_eq!(d.set_output(2, false), ["OUTP CH2,OFF"]);
        assert_eq!(d.output_query(2), "SYST:STAT?");
        assert_eq!(d.measure_query(1, Setting::Voltage), "MEAS:VOLT? CH1");
        // The guide's own example: 0x0224 = CH1 off, CH2 on.
        assert!(!d.parse_output(1, "0x0224").unwrap());
        assert!(d.parse_output(2, "0x0224").unwrap());
        assert!(d.parse_output(1, "0x0014").unwrap());
        assert!(!d.parse_output(2, "14").unwrap());
        for bad in ["", "0x", "0xZZ", "on", "0x123456789"] {
            assert!(d.parse_output(1, bad).is_err(), "{bad:?}");
        }
        assert_eq!(d.parse_setpoint(1, Setting::Voltage, "5.000").unwrap(), 5.0);
    }

    #[test]
    fn keysight_uses_channel_lists() {
        let d = Dialect::Keysight;
        assert_eq!(
            d.set(1, Setting::Current, 5.0, Range::new(0.0, 5.0), 3)
                .unwrap(),
            ["CURR 5.000,(@1)"]
        );
        assert_eq!(d.setpoint_query(3, Setting::Voltage), "VOLT? (@3)");
        assert_eq!(d.set_output(2, true), ["OUTP ON,(@2)"]);
        assert_eq!(d.output_query(2), "OUTP? (@2)");
        assert_eq!(d.measure_query(2, Setting::Voltage), "MEAS:VOLT? (@2)");
        assert_eq!(
            d.parse_setpoint(3, Setting::Voltage, "+1.20000E+01")
                .unwrap(),
            12.0
        );
        assert!(d.parse_output(2, "1").unwrap());
        assert!(!d.parse_output(2, "0").unwrap());
    }

    #[test]
    fn sets_outside_the_channel_range_are_refused_before_formatting() {
        for v in [-0.001, 30.001, f64::NAN, f64::INFINITY] {
            for d in [Dialect::Rigol, Dialect::Siglent, Dialect::Keysight] {
                let err = d.set(1, Setting::Voltage, v, RANGE_30, 3).unwrap_err();
                assert_eq!(DriverError::from(err).kind(), ErrorKind::OutOfRange);
            }
        }
    }

    #[test]
    fn numbers() {
        for (text, value) in [
            ("5", 5.0),
            ("5.000", 5.0),
            (" +5.00000E+00\r\n", 5.0),
            ("-0.5e-3", -0.0005),
            (".5", 0.5),
        ] {
            assert_eq!(parse_number(text), Some(value), "{text:?}");
        }
        for text in [
            "", "inf", "NaN", "9.91E37", "5V", "5..0", "1e", "e5", "--1", "0x10",
        ] {
            assert_eq!(parse_number(text), None, "{text:?}");
        }
    }

    #[test]
    fn identities() {
        let id = parse_identity("RIGOL TECHNOLOGIES,DP832,DP8C1234,00.01.14\n").unwrap();
        assert_eq!(
            (id.manufacturer.as_str(), id.model.as_str()),
            ("RIGOL TECHNOLOGIES", "DP832")
        );
        let id = parse_identity("Siglent Technologies,SPD3303X,SPD3X1,1.01.01.02.05,V3.0").unwrap();
        assert_eq!(id.model, "SPD3303X");
        assert_eq!(id.firmware, "1.01.01.02.05,V3.0");
        for bad in ["", "KORAD KD3005P V2.0", ",DP832,x,y", "a,b,c"] {
            assert!(parse_identity(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn read_back_compares_at_the_resolution() {
        assert!(same_setting(3.3, 3.300, 3));
        assert!(same_setting(0.1234, 0.123, 3));
        assert!(!same_setting(5.0, 4.999, 3));
    }
}
