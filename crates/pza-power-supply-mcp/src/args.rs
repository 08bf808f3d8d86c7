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
    #[serde(deserialize_with = "number")]
    pub volts: f64,
}

/// A current limit.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CurrentArgs {
    /// The power supply's name, as `list_power_supplies` gives it.
    pub device: Option<String>,
    /// The current limit, in amps (A). The server refuses a value outside the supply's security limits rather than clamping it.
    #[serde(deserialize_with = "number")]
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

/// A JSON number, refused otherwise with "expected a number" (serde's own
/// message says "expected f64", a Rust type, to the assistant).
fn number<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<f64, D::Error> {
    struct Number;
    impl serde::de::Visitor<'_> for Number {
        type Value = f64;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a number")
        }

        fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<f64, E> {
            Ok(v)
        }

        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<f64, E> {
            Ok(v as f64)
        }

        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<f64, E> {
            Ok(v as f64)
        }
    }
    deserializer.deserialize_f64(Number)
}
