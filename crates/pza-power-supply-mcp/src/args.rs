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
    #[serde(default, deserialize_with = "device")]
    pub device: Option<String>,
}

/// A voltage setpoint.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VoltageArgs {
    /// The power supply's name, as `list_power_supplies` gives it.
    #[serde(default, deserialize_with = "device")]
    pub device: Option<String>,
    /// The voltage setpoint, in volts (V). The server refuses a value outside the supply's security limits rather than clamping it.
    #[serde(deserialize_with = "volts")]
    pub volts: f64,
}

/// A current limit.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CurrentArgs {
    /// The power supply's name, as `list_power_supplies` gives it.
    #[serde(default, deserialize_with = "device")]
    pub device: Option<String>,
    /// The current limit, in amps (A). The server refuses a value outside the supply's security limits rather than clamping it.
    #[serde(deserialize_with = "amps")]
    pub amps: f64,
}

/// The output state.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OutputArgs {
    /// The power supply's name, as `list_power_supplies` gives it.
    #[serde(default, deserialize_with = "device")]
    pub device: Option<String>,
    /// `true` turns the output on (the load is powered), `false` turns it off.
    #[serde(deserialize_with = "on")]
    pub on: bool,
}

// The arguments are read with messages that name them: serde's own say only
// the Rust type expected (`invalid type: string "x", expected f64`), not
// which argument was wrong.

fn volts<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<f64, D::Error> {
    deserializer.deserialize_f64(NumberArg("volts"))
}

fn amps<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<f64, D::Error> {
    deserializer.deserialize_f64(NumberArg("amps"))
}

fn on<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<bool, D::Error> {
    deserializer.deserialize_bool(BoolArg("on"))
}

/// `null` reads as left out.
fn device<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<String>, D::Error> {
    deserializer.deserialize_option(OptionalText("device"))
}

/// A JSON number, for the argument it names.
struct NumberArg(&'static str);

impl serde::de::Visitor<'_> for NumberArg {
    type Value = f64;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "`{}` as a number", self.0)
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

/// A JSON boolean, for the argument it names.
struct BoolArg(&'static str);

impl serde::de::Visitor<'_> for BoolArg {
    type Value = bool;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "`{}` as a boolean (true or false)", self.0)
    }

    fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<bool, E> {
        Ok(v)
    }
}

/// A JSON string, for the argument it names.
struct TextArg(&'static str);

impl serde::de::Visitor<'_> for TextArg {
    type Value = String;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "`{}` as a string", self.0)
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<String, E> {
        Ok(v.to_owned())
    }
}

/// An optional JSON string, for the argument it names.
struct OptionalText(&'static str);

impl<'de> serde::de::Visitor<'de> for OptionalText {
    type Value = Option<String>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "`{}` as a string", self.0)
    }

    fn visit_none<E: serde::de::Error>(self) -> Result<Option<String>, E> {
        Ok(None)
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<Option<String>, E> {
        Ok(None)
    }

    fn visit_some<D: serde::Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> Result<Option<String>, D::Error> {
        deserializer.deserialize_string(TextArg(self.0)).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn error<T: serde::de::DeserializeOwned + std::fmt::Debug>(args: serde_json::Value) -> String {
        serde_json::from_value::<T>(args).unwrap_err().to_string()
    }

    #[test]
    fn a_wrong_type_names_the_argument() {
        assert_eq!(
            error::<VoltageArgs>(json!({"device": "psu", "volts": "five"})),
            "invalid type: string \"five\", expected `volts` as a number"
        );
        assert_eq!(
            error::<CurrentArgs>(json!({"device": "psu", "amps": true})),
            "invalid type: boolean `true`, expected `amps` as a number"
        );
        assert_eq!(
            error::<OutputArgs>(json!({"device": "psu", "on": "yes"})),
            "invalid type: string \"yes\", expected `on` as a boolean (true or false)"
        );
        assert_eq!(
            error::<DeviceArgs>(json!({"device": 5})),
            "invalid type: integer `5`, expected `device` as a string"
        );
    }

    #[test]
    fn good_arguments_are_read() {
        let v: VoltageArgs = serde_json::from_value(json!({"device": "psu", "volts": 5})).unwrap();
        assert_eq!((v.device.as_deref(), v.volts), (Some("psu"), 5.0));
        let c: CurrentArgs = serde_json::from_value(json!({"amps": 0.25})).unwrap();
        assert_eq!((c.device, c.amps), (None, 0.25));
        let o: OutputArgs = serde_json::from_value(json!({"device": "psu", "on": false})).unwrap();
        assert!(!o.on);
        let d: DeviceArgs = serde_json::from_value(json!({})).unwrap();
        assert_eq!(d.device, None);
        let d: DeviceArgs = serde_json::from_value(json!({"device": null})).unwrap();
        assert_eq!(d.device, None);
    }
}
