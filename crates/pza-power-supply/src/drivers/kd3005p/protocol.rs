//! The KD3005P command codec: command strings and reply parsing, pure code
//! over bytes with no I/O.
//!
//! The device speaks ASCII with no terminator in either direction (some units
//! ignore a command that ends in `\n`). Sets are never acknowledged, so the
//! driver verifies each one with a query. Value replies are exactly 5
//! characters (`05.00`, `1.000`); `STATUS?` answers one byte; `*IDN?` answers a
//! string of variable length, framed by the transport with an idle timeout.

use super::super::{Amps, DriverError, ErrorKind, Range, Volts};

/// Length of a value reply (`VSET1?`, `ISET1?`, `VOUT1?`, `IOUT1?`).
pub const VALUE_REPLY_LEN: usize = 5;

/// Length of the `STATUS?` reply.
pub const STATUS_REPLY_LEN: usize = 1;

/// Longest `*IDN?` reply accepted; real answers are about 20 characters.
pub const IDENTITY_MAX_LEN: usize = 64;

/// Decimals of a voltage on the wire (`VSET1:%05.2f`).
pub const VOLTAGE_DECIMALS: usize = 2;

/// Decimals of a current on the wire (`ISET1:%05.3f`).
pub const CURRENT_DECIMALS: usize = 3;

/// Voltages the device can regulate to.
pub const VOLTAGE_RANGE: Range = Range::new(0.0, 30.0);

/// Currents the device can limit to.
pub const CURRENT_RANGE: Range = Range::new(0.0, 5.0);

/// `STATUS?` bit 0: channel 1 regulates its voltage (CV) when set, its
/// current (CC) when clear.
const STATUS_CV_BIT: u8 = 1 << 0;

/// `STATUS?` bit 6: the output is on.
const STATUS_OUTPUT_BIT: u8 = 1 << 6;

/// An error of the codec: a value the device cannot take, or a reply that
/// cannot be understood.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ProtocolError {
    #[error("{value} {unit} is outside the device range {range} {unit}")]
    OutOfRange {
        value: f64,
        unit: &'static str,
        range: Range,
    },
    #[error("reply to {query} is {found} bytes long, expected {expected}: {reply:?}")]
    ReplyLength {
        query: &'static str,
        expected: usize,
        found: usize,
        reply: String,
    },
    #[error("reply to {query} is not a value: {reply:?}")]
    NotAValue { query: &'static str, reply: String },
    #[error("empty reply to *IDN?")]
    EmptyIdentity,
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

/// A request that the device answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Query {
    /// `VSET1?`: the voltage setpoint.
    VoltageSetpoint,
    /// `ISET1?`: the current limit.
    CurrentLimit,
    /// `VOUT1?`: the voltage measured at the output.
    OutputVoltage,
    /// `IOUT1?`: the current measured at the output.
    OutputCurrent,
    /// `STATUS?`: the status byte.
    Status,
    /// `*IDN?`: the identity string.
    Identity,
}

/// How the transport knows that a reply is complete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// Exactly `len` bytes, possibly followed by up to `stray` bytes of junk
    /// that must be drained before the next request.
    Fixed { len: usize, stray: usize },
    /// Up to `max_len` bytes, ended by an idle line.
    UntilIdle { max_len: usize },
}

impl Query {
    /// The bytes to send, with no terminator.
    pub fn command(self) -> &'static [u8] {
        self.name().as_bytes()
    }

    /// The command as text, for messages.
    pub fn name(self) -> &'static str {
        match self {
            Query::VoltageSetpoint => "VSET1?",
            Query::CurrentLimit => "ISET1?",
            Query::OutputVoltage => "VOUT1?",
            Query::OutputCurrent => "IOUT1?",
            Query::Status => "STATUS?",
            Query::Identity => "*IDN?",
        }
    }

    pub fn framing(self) -> Framing {
        match self {
            // Some firmware sends a sixth byte after the 5 characters of the
            // current limit; left in the buffer, it would shift every later
            // reply by one byte.
            Query::CurrentLimit => Framing::Fixed {
                len: VALUE_REPLY_LEN,
                stray: 1,
            },
            Query::VoltageSetpoint | Query::OutputVoltage | Query::OutputCurrent => {
                Framing::Fixed {
                    len: VALUE_REPLY_LEN,
                    stray: 0,
                }
            }
            Query::Status => Framing::Fixed {
                len: STATUS_REPLY_LEN,
                stray: 0,
            },
            Query::Identity => Framing::UntilIdle {
                max_len: IDENTITY_MAX_LEN,
            },
        }
    }
}

/// `VSET1:%05.2f`: sets the voltage.
pub fn set_voltage(voltage: Volts) -> Result<Vec<u8>, ProtocolError> {
    check_range(voltage.0, "V", VOLTAGE_RANGE)?;
    let volts = rounded(voltage.0, VOLTAGE_DECIMALS);
    Ok(format!("VSET1:{volts:05.VOLTAGE_DECIMALS$}").into_bytes())
}

/// `ISET1:%05.3f`: sets the current limit.
pub fn set_current(current: Amps) -> Result<Vec<u8>, ProtocolError> {
    check_range(current.0, "A", CURRENT_RANGE)?;
    let amps = rounded(current.0, CURRENT_DECIMALS);
    Ok(format!("ISET1:{amps:05.CURRENT_DECIMALS$}").into_bytes())
}

/// `OUT1` / `OUT0`: switches the output on or off.
pub fn set_output(enabled: bool) -> &'static [u8] {
    if enabled {
        b"OUT1"
    } else {
        b"OUT0"
    }
}

/// `value` at `decimals` decimals, halves away from zero, as [`same_setting`]
/// rounds: the formatter alone prints 1.115 as 1.11 (its binary value is
/// just below the half), and the read-back would then not match.
fn rounded(value: f64, decimals: usize) -> f64 {
    let scale = 10f64.powi(decimals as i32);
    (value * scale).round() / scale
}

fn check_range(value: f64, unit: &'static str, range: Range) -> Result<(), ProtocolError> {
    // `contains` is false for NaN, so a NaN never reaches the formatter.
    if range.contains(value) {
        Ok(())
    } else {
        Err(ProtocolError::OutOfRange { value, unit, range })
    }
}

/// Parses the reply to a value query (`VSET1?`, `ISET1?`, `VOUT1?`,
/// `IOUT1?`): 5 characters of digits with one decimal point, plus the stray
/// byte that [`Query::framing`] allows.
pub fn parse_value(query: Query, reply: &[u8]) -> Result<f64, ProtocolError> {
    let value = fixed_part(query, reply)?;
    let text = std::str::from_utf8(value).ok();
    let well_formed = value.iter().all(|b| b.is_ascii_digit() || *b == b'.')
        && value.iter().filter(|b| **b == b'.').count() <= 1
        && value.iter().any(u8::is_ascii_digit);
    match text
        .filter(|_| well_formed)
        .and_then(|t| t.parse::<f64>().ok())
    {
        Some(v) => Ok(v),
        None => Err(ProtocolError::NotAValue {
            query: query.name(),
            reply: String::from_utf8_lossy(reply).into_owned(),
        }),
    }
}

/// The decoded `STATUS?` byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Status(pub u8);

/// What channel 1 regulates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Regulation {
    ConstantVoltage,
    ConstantCurrent,
}

impl Status {
    pub fn output_enabled(self) -> bool {
        self.0 & STATUS_OUTPUT_BIT != 0
    }

    pub fn regulation(self) -> Regulation {
        if self.0 & STATUS_CV_BIT != 0 {
            Regulation::ConstantVoltage
        } else {
            Regulation::ConstantCurrent
        }
    }
}

/// Parses the one-byte reply to `STATUS?`.
pub fn parse_status(reply: &[u8]) -> Result<Status, ProtocolError> {
    let byte = fixed_part(Query::Status, reply)?;
    Ok(Status(byte[0]))
}

/// Parses the reply to `*IDN?`: printable text, trimmed. Empty is an error,
/// since a silent line does not identify anything.
pub fn parse_identity(reply: &[u8]) -> Result<String, ProtocolError> {
    let text: String = String::from_utf8_lossy(reply)
        .chars()
        .filter(|c| !c.is_control())
        .collect();
    let text = text.trim();
    if text.is_empty() {
        Err(ProtocolError::EmptyIdentity)
    } else {
        Ok(text.to_string())
    }
}

/// The part of a fixed-length reply that carries the answer, once its length
/// was checked against the query's framing.
fn fixed_part(query: Query, reply: &[u8]) -> Result<&[u8], ProtocolError> {
    let (len, stray) = match query.framing() {
        Framing::Fixed { len, stray } => (len, stray),
        Framing::UntilIdle { max_len } => (max_len, 0),
    };
    if reply.len() < len || reply.len() > len + stray {
        return Err(ProtocolError::ReplyLength {
            query: query.name(),
            expected: len,
            found: reply.len(),
            reply: String::from_utf8_lossy(reply).into_owned(),
        });
    }
    Ok(&reply[..len])
}

/// True when `read_back` is what the device shows for `requested` at
/// `decimals` decimals: the device rounds to its resolution, so an exact
/// comparison of floats would fail for values like 3.3.
pub fn same_setting(requested: f64, read_back: f64, decimals: usize) -> bool {
    let scale = 10f64.powi(decimals as i32);
    (requested * scale).round() == (read_back * scale).round()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_commands_are_zero_padded_with_no_terminator() {
        assert_eq!(set_voltage(Volts(5.0)).unwrap(), b"VSET1:05.00");
        assert_eq!(set_voltage(Volts(30.0)).unwrap(), b"VSET1:30.00");
        assert_eq!(set_voltage(Volts(3.3)).unwrap(), b"VSET1:03.30");
        assert_eq!(set_voltage(Volts(0.0)).unwrap(), b"VSET1:00.00");
        assert_eq!(set_current(Amps(1.0)).unwrap(), b"ISET1:1.000");
        assert_eq!(set_current(Amps(0.1234)).unwrap(), b"ISET1:0.123");
        assert_eq!(set_current(Amps(5.0)).unwrap(), b"ISET1:5.000");
        // Rounded as the read-back is compared, not as the formatter would.
        assert_eq!(set_voltage(Volts(1.115)).unwrap(), b"VSET1:01.12");
        assert!(same_setting(1.115, 1.12, VOLTAGE_DECIMALS));
        assert_eq!(set_current(Amps(1.2345)).unwrap(), b"ISET1:1.235");
        assert_eq!(set_output(true), b"OUT1");
        assert_eq!(set_output(false), b"OUT0");
    }

    #[test]
    fn values_outside_the_device_range_are_refused_before_formatting() {
        for v in [-0.01, 30.01, 100.0, f64::NAN, f64::INFINITY] {
            let err = set_voltage(Volts(v)).unwrap_err();
            assert!(matches!(err, ProtocolError::OutOfRange { .. }), "{v}");
            assert_eq!(DriverError::from(err).kind(), ErrorKind::OutOfRange);
        }
        assert!(set_current(Amps(5.001)).is_err());
        assert!(set_current(Amps(-1.0)).is_err());
    }

    #[test]
    fn query_commands() {
        let all = [
            (Query::VoltageSetpoint, &b"VSET1?"[..]),
            (Query::CurrentLimit, b"ISET1?"),
            (Query::OutputVoltage, b"VOUT1?"),
            (Query::OutputCurrent, b"IOUT1?"),
            (Query::Status, b"STATUS?"),
            (Query::Identity, b"*IDN?"),
        ];
        for (query, bytes) in all {
            assert_eq!(query.command(), bytes);
        }
    }

    #[test]
    fn five_character_values() {
        assert_eq!(parse_value(Query::VoltageSetpoint, b"05.00").unwrap(), 5.0);
        assert_eq!(parse_value(Query::VoltageSetpoint, b"30.00").unwrap(), 30.0);
        assert_eq!(parse_value(Query::OutputVoltage, b"04.98").unwrap(), 4.98);
        assert_eq!(parse_value(Query::OutputCurrent, b"0.120").unwrap(), 0.12);
        assert_eq!(parse_value(Query::CurrentLimit, b"1.000").unwrap(), 1.0);
    }

    #[test]
    fn the_stray_sixth_byte_after_iset_is_accepted_and_ignored() {
        assert_eq!(parse_value(Query::CurrentLimit, b"1.500\x00").unwrap(), 1.5);
        assert_eq!(parse_value(Query::CurrentLimit, b"2.000\n").unwrap(), 2.0);
        assert_eq!(parse_value(Query::CurrentLimit, b"2.0009").unwrap(), 2.0);
        // Only `ISET1?` has the quirk; elsewhere a sixth byte means the
        // replies are out of step.
        let err = parse_value(Query::VoltageSetpoint, b"05.00\x00").unwrap_err();
        assert!(matches!(err, ProtocolError::ReplyLength { found: 6, .. }));
        // Never more than one stray byte.
        assert!(parse_value(Query::CurrentLimit, b"1.000XY").is_err());
    }

    #[test]
    fn malformed_values_are_protocol_errors() {
        for reply in [
            &b"05.0"[..],
            b"",
            b"5V.00",
            b"-5.00",
            b"05..0",
            b".....",
            b"\x005.00",
            b" 5.00",
            b"5.0e1",
        ] {
            let err = parse_value(Query::OutputVoltage, reply).unwrap_err();
            assert_eq!(
                DriverError::from(err).kind(),
                ErrorKind::Protocol,
                "{reply:?}"
            );
        }
    }

    #[test]
    fn status_byte_bits() {
        let off_cc = parse_status(&[0x00]).unwrap();
        assert!(!off_cc.output_enabled());
        assert_eq!(off_cc.regulation(), Regulation::ConstantCurrent);
        let on_cv = parse_status(&[0b0100_0001]).unwrap();
        assert!(on_cv.output_enabled());
        assert_eq!(on_cv.regulation(), Regulation::ConstantVoltage);
        // Other bits (tracking, beep, lock) do not change the two we read.
        let on_cc_beep = parse_status(&[0b0101_0000]).unwrap();
        assert!(on_cc_beep.output_enabled());
        assert_eq!(on_cc_beep.regulation(), Regulation::ConstantCurrent);
        assert!(parse_status(b"").is_err());
        assert!(parse_status(b"AB").is_err());
    }

    #[test]
    fn identity_is_trimmed_text() {
        assert_eq!(
            parse_identity(b"KORAD KD3005P V2.0").unwrap(),
            "KORAD KD3005P V2.0"
        );
        assert_eq!(
            parse_identity(b"RND 320-KA3005P V5.5\r\n\x00").unwrap(),
            "RND 320-KA3005P V5.5"
        );
        assert_eq!(parse_identity(b""), Err(ProtocolError::EmptyIdentity));
        assert_eq!(
            parse_identity(b" \r\n\x00"),
            Err(ProtocolError::EmptyIdentity)
        );
    }

    #[test]
    fn read_back_compares_at_the_device_resolution() {
        assert!(same_setting(3.3, 3.30, VOLTAGE_DECIMALS));
        assert!(same_setting(0.1234, 0.123, CURRENT_DECIMALS));
        assert!(!same_setting(5.0, 4.99, VOLTAGE_DECIMALS));
        assert!(!same_setting(1.0, 1.001, CURRENT_DECIMALS));
    }
}
