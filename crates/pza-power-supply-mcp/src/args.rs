//! The tools' arguments: typed, with units, as their input schemas show them.
//! (A doc comment here is a description in the schema: a line break in it
//! would reach the assistant, so each is one line.)
//!
//! `device` is optional in these types because one handler serves both
//! endpoints; the schema each endpoint lists makes it required on `/mcp` and
//! leaves it out on `/power-supply/<name>` (see `tools::scoped`).

use rmcp::schemars;
use serde::Deserialize;

/// The power supply a tool acts on.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DeviceArgs {
    /// The power supply's name, as `list_power_supplies` gives it.
    pub device: Option<String>,
}

/// A voltage setpoint.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VoltageArgs {
    /// The power supply's name, as `list_power_supplies` gives it.
    pub device: Option<String>,
    /// The voltage setpoint, in volts (V). The server refuses a value outside the supply's security limits rather than clamping it.
    pub volts: f64,
}

/// A current limit.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CurrentArgs {
    /// The power supply's name, as `list_power_supplies` gives it.
    pub device: Option<String>,
    /// The current limit, in amps (A). The server refuses a value outside the supply's security limits rather than clamping it.
    pub amps: f64,
}

/// The output state.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OutputArgs {
    /// The power supply's name, as `list_power_supplies` gives it.
    pub device: Option<String>,
    /// `true` turns the output on (the load is powered), `false` turns it off.
    pub on: bool,
}
