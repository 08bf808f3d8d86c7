//! What a model offers, as data: name, ranges, display precision, settings.

use std::fmt;

/// A closed interval of values a device can take.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Range {
    pub min: f64,
    pub max: f64,
}

impl Range {
    pub const fn new(min: f64, max: f64) -> Self {
        Range { min, max }
    }

    pub fn contains(&self, value: f64) -> bool {
        self.min <= value && value <= self.max
    }
}

impl fmt::Display for Range {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}..={}", self.min, self.max)
    }
}

/// The description of one driver model, registered with the `DriverFactory`.
#[derive(Debug, Clone, PartialEq)]
pub struct DriverManifest {
    /// The `model` value of the config file.
    pub model: &'static str,
    /// Other names accepted for `model`.
    pub aliases: &'static [&'static str],
    pub description: &'static str,
    /// What the device can regulate to, in volts; security limits must lie inside.
    pub voltage_range: Range,
    /// What the device can limit to, in amperes; security limits must lie inside.
    pub current_range: Range,
    /// Decimals of voltages on MQTT (the device's resolution).
    pub voltage_decimals: usize,
    /// Decimals of currents on MQTT.
    pub current_decimals: usize,
    /// The model-specific keys a runner of this model accepts.
    pub settings: &'static [&'static str],
}
