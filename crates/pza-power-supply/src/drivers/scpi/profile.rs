//! What each SCPI model is, as data: channels with their ranges and
//! decimals, the command dialect, the `*IDN?` answers it is known by, its
//! default TCP port, its serial port if it has one, and its pacing.
//!
//! # Sources
//!
//! - Rigol DP832: libsigrok `src/hardware/scpi-pps/profiles.c`
//!   (`rigol_dp832_ch`: CH1/CH2 0–30 V 0–3 A, CH3 0–5 V 0–3 A, 1 mV and 1 mA
//!   steps; `rigol_dp800_cmd`: `:INST:NSEL %s`, `:SOUR:VOLT`, `:MEAS:VOLT?`,
//!   `:OUTP`; IDN model `^(DP832|DP832A)$`), and the Rigol DP800 Programming
//!   Guide (`:APPLy? CH1` answers `CH1:30V/3A,<volts>,<amps>`,
//!   `:OUTPut? CH1` answers `ON`/`OFF`, `:MEASure:VOLTage? CH1`, raw socket
//!   on TCP port 5555, RS-232 with CR LF terminators).
//! - Siglent SPD3303X: not in libsigrok; the Siglent SPD3303X/X-E
//!   Programming Guide (`CH1:VOLTage`, `CH1:CURRent`, `MEASure:VOLTage? CH1`,
//!   `OUTPut CH1,ON`, `SYSTem:STATus?` in hex with bit 4 = CH1 on and bit 5 =
//!   CH2 on, raw socket on TCP port 5025, USB as USBTMC only, no RS-232).
//!   Users report that the unit drops a command sent right after another;
//!   the guide's examples wait about 100 ms between commands.
//! - Keysight E36312A: libsigrok `keysight_e36312a_ch` (the maxima read from
//!   a unit are 6.18 V / 5.15 A and 25.75 V / 1.03 A; we keep the rated
//!   6 V / 5 A and 25 V / 1 A of the data sheet, steps of 1 mV and 1 mA),
//!   and the Keysight E36300 Series Programming Guide (channel lists
//!   `VOLT 5,(@1)`, `VOLT? (@1)` answering `+5.00000E+00`, `OUTP ON,(@1)`,
//!   `OUTP? (@1)` answering `1`/`0`, raw socket on TCP port 5025 — not 5555,
//!   which is Rigol's).

use std::time::Duration;

use super::super::Range;
use super::protocol::Dialect;

/// One output channel of an instrument.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ChannelSpec {
    pub voltage: Range,
    pub current: Range,
    /// Decimals the instrument resolves (and MQTT shows).
    pub voltage_decimals: usize,
    pub current_decimals: usize,
}

/// An RS-232 port of an instrument.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SerialSpec {
    /// The instrument's factory setting.
    pub default_baud_rate: u32,
    /// What ends a command on this port.
    pub terminator: &'static str,
}

/// One SCPI model.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Profile {
    /// The `model` value of the config file.
    pub model: &'static str,
    pub aliases: &'static [&'static str],
    /// Maker and model, as people name it.
    pub name: &'static str,
    pub description: &'static str,
    /// The model field (second) of `*IDN?` answers this profile accepts.
    pub idn_models: &'static [&'static str],
    pub dialect: Dialect,
    /// Channel `n` is `channels[n - 1]`.
    pub channels: &'static [ChannelSpec],
    /// The raw SCPI socket of its LAN port.
    pub tcp_port: u16,
    /// `None`: the model has no serial port.
    pub serial: Option<SerialSpec>,
    /// Time to leave between the end of one exchange and the next command.
    pub pacing: Duration,
}

/// What ends a command on TCP, for every model.
pub const TCP_TERMINATOR: &str = "\n";

const fn channel(max_volts: f64, max_amps: f64) -> ChannelSpec {
    ChannelSpec {
        voltage: Range::new(0.0, max_volts),
        current: Range::new(0.0, max_amps),
        voltage_decimals: 3,
        current_decimals: 3,
    }
}

pub const RIGOL_DP832: Profile = Profile {
    model: "rigol-dp832",
    aliases: &["dp832"],
    name: "Rigol DP832",
    description: "Rigol DP832 / DP832A over LAN (SCPI, port 5555) or RS-232: CH1, CH2 0-30 V 0-3 A; CH3 0-5 V 0-3 A",
    idn_models: &["DP832", "DP832A"],
    dialect: Dialect::Rigol,
    channels: &[channel(30.0, 3.0), channel(30.0, 3.0), channel(5.0, 3.0)],
    tcp_port: 5555,
    serial: Some(SerialSpec {
        default_baud_rate: 9600,
        terminator: "\r\n",
    }),
    // A few milliseconds are enough for the DP800 parser; 10 ms is what
    // published LAN wrappers for the DP832A wait between writes.
    pacing: Duration::from_millis(10),
};

pub const SIGLENT_SPD3303X: Profile = Profile {
    model: "siglent-spd3303x",
    aliases: &["spd3303x"],
    name: "Siglent SPD3303X",
    description: "Siglent SPD3303X over LAN (SCPI, port 5025): CH1, CH2 0-32 V 0-3.2 A",
    // Not the SPD3303X-E: it resolves 10 mV / 10 mA, so its read-backs
    // would not match 3-decimal setpoints.
    idn_models: &["SPD3303X"],
    dialect: Dialect::Siglent,
    channels: &[channel(32.0, 3.2), channel(32.0, 3.2)],
    tcp_port: 5025,
    serial: None,
    pacing: Duration::from_millis(100),
};

pub const KEYSIGHT_E36312A: Profile = Profile {
    model: "keysight-e36312a",
    aliases: &["e36312a"],
    name: "Keysight E36312A",
    description:
        "Keysight E36312A over LAN (SCPI, port 5025): CH1 0-6 V 0-5 A; CH2, CH3 0-25 V 0-1 A",
    idn_models: &["E36312A"],
    dialect: Dialect::Keysight,
    channels: &[channel(6.0, 5.0), channel(25.0, 1.0), channel(25.0, 1.0)],
    tcp_port: 5025,
    serial: None,
    // The E36300 buffers its input and executes commands in order.
    pacing: Duration::ZERO,
};

/// Every SCPI model.
pub const PROFILES: &[&Profile] = &[&RIGOL_DP832, &SIGLENT_SPD3303X, &KEYSIGHT_E36312A];

impl Profile {
    /// The profile called `name`, by model name or alias.
    pub fn find(name: &str) -> Option<&'static Profile> {
        PROFILES
            .iter()
            .copied()
            .find(|p| p.model == name || p.aliases.contains(&name))
    }

    /// Channel `n` (from 1), if the model has it.
    pub fn channel(&self, n: u8) -> Option<&ChannelSpec> {
        usize::from(n)
            .checked_sub(1)
            .and_then(|i| self.channels.get(i))
    }

    /// The smallest ranges holding every channel's, for listings.
    pub fn envelope(&self) -> (Range, Range) {
        let widest = |pick: fn(&ChannelSpec) -> Range| {
            self.channels
                .iter()
                .map(pick)
                .fold(Range::new(f64::INFINITY, f64::NEG_INFINITY), |acc, r| {
                    Range::new(acc.min.min(r.min), acc.max.max(r.max))
                })
        };
        (widest(|c| c.voltage), widest(|c| c.current))
    }

    /// True when an `*IDN?` model field names this model.
    pub fn accepts(&self, idn_model: &str) -> bool {
        self.idn_models
            .iter()
            .any(|m| m.eq_ignore_ascii_case(idn_model.trim()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_aliases_are_unique() {
        let mut names: Vec<&str> = PROFILES
            .iter()
            .flat_map(|p| std::iter::once(p.model).chain(p.aliases.iter().copied()))
            .collect();
        let count = names.len();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), count);
        assert_eq!(Profile::find("dp832"), Some(&RIGOL_DP832));
        assert_eq!(Profile::find("siglent-spd3303x"), Some(&SIGLENT_SPD3303X));
        assert_eq!(Profile::find("e36312a"), Some(&KEYSIGHT_E36312A));
        assert_eq!(Profile::find("dp831"), None);
    }

    #[test]
    fn channels_as_the_sources_give_them() {
        let ranges = |p: &Profile| -> Vec<(f64, f64)> {
            p.channels
                .iter()
                .map(|c| (c.voltage.max, c.current.max))
                .collect()
        };
        assert_eq!(ranges(&RIGOL_DP832), [(30.0, 3.0), (30.0, 3.0), (5.0, 3.0)]);
        assert_eq!(ranges(&SIGLENT_SPD3303X), [(32.0, 3.2), (32.0, 3.2)]);
        assert_eq!(
            ranges(&KEYSIGHT_E36312A),
            [(6.0, 5.0), (25.0, 1.0), (25.0, 1.0)]
        );
        assert_eq!(RIGOL_DP832.channel(0), None);
        assert_eq!(RIGOL_DP832.channel(4), None);
        assert_eq!(RIGOL_DP832.channel(3).unwrap().voltage.max, 5.0);
        let (v, a) = KEYSIGHT_E36312A.envelope();
        assert_eq!((v.min, v.max, a.min, a.max), (0.0, 25.0, 0.0, 5.0));
    }

    #[test]
    fn identity_models() {
        assert!(RIGOL_DP832.accepts("DP832A"));
        assert!(RIGOL_DP832.accepts("dp832"));
        assert!(!RIGOL_DP832.accepts("DP831"));
        assert!(!SIGLENT_SPD3303X.accepts("SPD3303X-E"));
        assert!(KEYSIGHT_E36312A.accepts("E36312A"));
    }
}
