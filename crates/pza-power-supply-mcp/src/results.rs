//! The tools' structured results (`structuredContent`, described by each
//! tool's `outputSchema`): the values the server read back from the device.

use pza_power_supply_client::{InfoReport as Info, Snapshot};
use rmcp::schemars;
use serde::Serialize;

/// The security limits of a power supply: its runner refuses any setpoint
/// outside them.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, schemars::JsonSchema)]
pub struct Limits {
    /// Lowest voltage setpoint accepted, in volts.
    pub min_volts: f64,
    /// Highest voltage setpoint accepted, in volts.
    pub max_volts: f64,
    /// Lowest current limit accepted, in amps.
    pub min_amps: f64,
    /// Highest current limit accepted, in amps.
    pub max_amps: f64,
}

impl From<&Info> for Limits {
    fn from(info: &Info) -> Limits {
        Limits {
            min_volts: info.security_min_voltage,
            max_volts: info.security_max_voltage,
            min_amps: info.security_min_current,
            max_amps: info.security_max_current,
        }
    }
}

/// One power supply as the broker shows it.
#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
pub struct PowerSupplySummary {
    /// Its name: the `device` argument of the other tools.
    pub name: String,
    /// The driver model, e.g. `kd3005p`; absent until the server published it.
    pub model: Option<String>,
    /// The description from the server's config.
    pub description: Option<String>,
    /// The runner's status: `Running` takes commands; `Initializing`,
    /// `Panicking`, `Restarting`, `Failed` and `Stopped` do not.
    pub status: Option<String>,
    /// The security limits; absent until the server published them.
    pub limits: Option<Limits>,
}

impl From<&Snapshot> for PowerSupplySummary {
    fn from(s: &Snapshot) -> PowerSupplySummary {
        PowerSupplySummary {
            name: s.name.clone(),
            model: s.info.as_ref().map(|i| i.model.clone()),
            description: s.info.as_ref().map(|i| i.description.clone()),
            status: s.status.map(|status| status.as_str().to_owned()),
            limits: s.info.as_ref().map(Limits::from),
        }
    }
}

/// The power supplies this endpoint serves.
#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
pub struct PowerSupplyList {
    pub power_supplies: Vec<PowerSupplySummary>,
}

/// Everything known of one power supply. Setpoints are what the device read
/// back; a setpoint is not a measurement (use `measure` for fresh values).
#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
pub struct State {
    pub device: String,
    /// The runner's status (`Running` takes commands).
    pub status: Option<String>,
    /// Restarts of its runner since the server started.
    pub restarts: u32,
    /// Why the runner last crashed, while it is not `Running`.
    pub panic_message: Option<String>,
    /// The output: `true` on, `false` off.
    pub output: Option<bool>,
    /// The voltage setpoint, in volts.
    pub volts: Option<f64>,
    /// The current limit, in amps.
    pub amps: Option<f64>,
    /// The last measured output voltage, in volts.
    pub measured_volts: Option<f64>,
    /// The last measured output current, in amps.
    pub measured_amps: Option<f64>,
    /// The security limits.
    pub limits: Option<Limits>,
    pub model: Option<String>,
    /// The last message the server published on its error topic (a refused
    /// command, a device error).
    pub last_error: Option<String>,
}

impl From<&Snapshot> for State {
    fn from(s: &Snapshot) -> State {
        State {
            device: s.name.clone(),
            status: s.status.map(|status| status.as_str().to_owned()),
            restarts: s.restarts,
            panic_message: s.panic_message.clone(),
            output: s.output,
            volts: s.voltage,
            amps: s.current,
            measured_volts: s.measured_voltage,
            measured_amps: s.measured_current,
            limits: s.info.as_ref().map(Limits::from),
            model: s.info.as_ref().map(|i| i.model.clone()),
            last_error: s.last_error.clone(),
        }
    }
}

/// A voltage setpoint, as the device read it back.
#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
pub struct VoltageSet {
    pub device: String,
    /// The setpoint read back, in volts (rounded to the device's resolution).
    pub volts: f64,
}

/// A current limit, as the device read it back.
#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
pub struct CurrentSet {
    pub device: String,
    /// The limit read back, in amps (rounded to the device's resolution).
    pub amps: f64,
}

/// The output state, as the device read it back.
#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
pub struct OutputSet {
    pub device: String,
    /// `true` on, `false` off.
    pub on: bool,
}

/// A fresh measurement of the output.
#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
pub struct Measurement {
    pub device: String,
    /// The measured output voltage, in volts.
    pub volts: f64,
    /// The measured output current, in amps.
    pub amps: f64,
}

/// The runner after a restart.
#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
pub struct Restarted {
    pub device: String,
    /// Its status when the tool returned: `Running` once it is back.
    pub status: Option<String>,
    /// Restarts of its runner since the server started.
    pub restarts: u32,
}
