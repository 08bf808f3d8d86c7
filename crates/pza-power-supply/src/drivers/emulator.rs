//! The `emulator` model: a virtual supply with a resistive load and
//! deterministic fault injection, for demos and tests.
//!
//! The device state (output, setpoints, how many initializations were asked)
//! lives in the model, per runner name, not in the driver: like a real bench
//! supply, the emulated device keeps its setpoints when its runner restarts
//! with a fresh driver, and `fail_initialize` counts across restarts.
//!
//! Load model: a resistor of `load_resistance_ohm` on the output. While the
//! output is on, the supply regulates the voltage (CV) as long as the load
//! draws no more than the current limit, and regulates the current (CC) at the
//! limit otherwise; while it is off, both measurements are 0.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use serde::Deserialize;

use super::model::{parse_settings, DriverModel, DriverSettings, SettingsError};
use super::{Amps, DriverError, DriverManifest, PowerSupplyDriver, Range, Volts};

/// Load on the output when `load_resistance_ohm` is not set.
pub const DEFAULT_LOAD_OHMS: f64 = 10.0;

/// Current limit of a fresh emulated device when `initial_current` is not set.
pub const DEFAULT_INITIAL_CURRENT: f64 = 1.0;

const MANIFEST: DriverManifest = DriverManifest {
    model: "emulator",
    aliases: &[],
    description: "Virtual power supply with a resistive load and fault injection",
    voltage_range: Range::new(0.0, 30.0),
    current_range: Range::new(0.0, 5.0),
    voltage_decimals: 2,
    current_decimals: 3,
    settings: &[
        "load_resistance_ohm",
        "initial_voltage",
        "initial_current",
        "faults",
    ],
};

/// Faults to inject, all off by default. Voltages compare exactly with the
/// requested setpoint.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Faults {
    /// Setting this voltage panics inside the driver.
    pub panic_on_voltage: Option<f64>,
    /// Setting this voltage fails with an I/O error (a fatal error: the
    /// runner answers it, then ends with an error and is restarted).
    pub error_on_voltage: Option<f64>,
    /// Setting this voltage never returns.
    pub hang_on_voltage: Option<f64>,
    /// Setting this voltage ends the session on purpose (`ErrorKind::Closed`):
    /// the runner ends cleanly and is not restarted.
    pub exit_on_voltage: Option<f64>,
    /// The driver's `shutdown` never returns (a device that cannot be closed).
    #[serde(default)]
    pub hang_on_shutdown: bool,
    /// The first N initializations of this runner fail, counted across
    /// restarts.
    #[serde(default)]
    pub fail_initialize: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct EmulatorSettings {
    load_resistance_ohm: Option<f64>,
    initial_voltage: Option<f64>,
    initial_current: Option<f64>,
    #[serde(default)]
    faults: Faults,
}

impl EmulatorSettings {
    fn parse(settings: &DriverSettings) -> Result<Self, SettingsError> {
        let parsed: EmulatorSettings = parse_settings(settings)?;
        let check =
            |key: &str, value: Option<f64>, ok: &dyn Fn(f64) -> bool, rule: &str| match value {
                Some(v) if !v.is_finite() || !ok(v) => Err(SettingsError {
                    key: key.into(),
                    message: format!("{v} is not valid: {rule}"),
                }),
                _ => Ok(()),
            };
        check(
            "load_resistance_ohm",
            parsed.load_resistance_ohm,
            &|v| v > 0.0,
            "must be a finite number > 0",
        )?;
        check(
            "initial_voltage",
            parsed.initial_voltage,
            &|v| MANIFEST.voltage_range.contains(v),
            "must lie in the model's range 0..=30 V",
        )?;
        check(
            "initial_current",
            parsed.initial_current,
            &|v| MANIFEST.current_range.contains(v),
            "must lie in the model's range 0..=5 A",
        )?;
        Ok(parsed)
    }
}

/// The state of one emulated device.
#[derive(Debug, Clone, PartialEq)]
pub struct EmulatedDevice {
    pub output_enabled: bool,
    pub voltage_setpoint: f64,
    pub current_limit: f64,
    pub load_ohms: f64,
    /// How many times a driver asked this device to initialize.
    pub initializations: u32,
}

impl EmulatedDevice {
    /// Voltage and current at the terminals, from the load model.
    pub fn measure(&self) -> (f64, f64) {
        if !self.output_enabled {
            return (0.0, 0.0);
        }
        let cv_current = self.voltage_setpoint / self.load_ohms;
        if cv_current <= self.current_limit {
            (self.voltage_setpoint, cv_current)
        } else {
            (self.current_limit * self.load_ohms, self.current_limit)
        }
    }
}

type SharedDevice = Arc<Mutex<EmulatedDevice>>;

/// The `emulator` model. Keep an `Arc` of it to look at a device's state.
#[derive(Default)]
pub struct EmulatorModel {
    devices: Mutex<HashMap<String, SharedDevice>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic injected by a fault happens outside every lock, so a poisoned
    // lock still guards consistent data.
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

impl EmulatorModel {
    pub fn new() -> Self {
        Self::default()
    }

    /// A copy of the emulated device of `runner`, once a driver was built for it.
    pub fn device(&self, runner: &str) -> Option<EmulatedDevice> {
        lock(&self.devices).get(runner).map(|d| lock(d).clone())
    }
}

impl DriverModel for EmulatorModel {
    fn manifest(&self) -> &DriverManifest {
        &MANIFEST
    }

    fn check_settings(&self, settings: &DriverSettings) -> Result<(), SettingsError> {
        EmulatorSettings::parse(settings).map(|_| ())
    }

    fn instantiate(
        &self,
        runner: &str,
        settings: &DriverSettings,
    ) -> Result<Box<dyn PowerSupplyDriver>, DriverError> {
        let settings = EmulatorSettings::parse(settings)
            .map_err(|e| DriverError::new(super::ErrorKind::Config, e.to_string()))?;
        let device = lock(&self.devices)
            .entry(runner.to_string())
            .or_insert_with(|| {
                Arc::new(Mutex::new(EmulatedDevice {
                    output_enabled: false,
                    voltage_setpoint: settings.initial_voltage.unwrap_or(0.0),
                    current_limit: settings.initial_current.unwrap_or(DEFAULT_INITIAL_CURRENT),
                    load_ohms: settings.load_resistance_ohm.unwrap_or(DEFAULT_LOAD_OHMS),
                    initializations: 0,
                }))
            })
            .clone();
        Ok(Box::new(EmulatorDriver {
            device,
            faults: settings.faults,
            initialized: false,
        }))
    }
}

/// A driver bound to one emulated device.
pub struct EmulatorDriver {
    device: SharedDevice,
    faults: Faults,
    initialized: bool,
}

impl EmulatorDriver {
    fn device(&self) -> Result<MutexGuard<'_, EmulatedDevice>, DriverError> {
        if !self.initialized {
            return Err(DriverError::new(
                super::ErrorKind::NotConnected,
                "emulator not initialized",
            ));
        }
        Ok(lock(&self.device))
    }
}

#[async_trait]
impl PowerSupplyDriver for EmulatorDriver {
    async fn initialize(&mut self) -> Result<(), DriverError> {
        let attempt = {
            let mut device = lock(&self.device);
            device.initializations += 1;
            device.initializations
        };
        if attempt <= self.faults.fail_initialize {
            return Err(DriverError::io(format!(
                "injected initialization failure {attempt} of {}",
                self.faults.fail_initialize
            )));
        }
        self.initialized = true;
        Ok(())
    }

    async fn shutdown(&mut self) -> Result<(), DriverError> {
        if self.faults.hang_on_shutdown {
            std::future::pending::<()>().await;
        }
        self.initialized = false;
        Ok(())
    }

    async fn output_enabled(&mut self) -> Result<bool, DriverError> {
        Ok(self.device()?.output_enabled)
    }

    async fn set_output_enabled(&mut self, enabled: bool) -> Result<(), DriverError> {
        self.device()?.output_enabled = enabled;
        Ok(())
    }

    async fn voltage_setpoint(&mut self) -> Result<Volts, DriverError> {
        Ok(Volts(self.device()?.voltage_setpoint))
    }

    async fn set_voltage_setpoint(&mut self, voltage: Volts) -> Result<(), DriverError> {
        drop(self.device()?);
        let requested = Some(voltage.0);
        if requested == self.faults.panic_on_voltage {
            panic!("emulator fault: panic_on_voltage {}", voltage.0);
        }
        if requested == self.faults.error_on_voltage {
            return Err(DriverError::io(format!(
                "emulator fault: error_on_voltage {}",
                voltage.0
            )));
        }
        if requested == self.faults.exit_on_voltage {
            return Err(DriverError::new(
                super::ErrorKind::Closed,
                format!("emulator fault: exit_on_voltage {}", voltage.0),
            ));
        }
        if requested == self.faults.hang_on_voltage {
            std::future::pending::<()>().await;
        }
        self.device()?.voltage_setpoint = voltage.0;
        Ok(())
    }

    async fn current_limit(&mut self) -> Result<Amps, DriverError> {
        Ok(Amps(self.device()?.current_limit))
    }

    async fn set_current_limit(&mut self, current: Amps) -> Result<(), DriverError> {
        self.device()?.current_limit = current.0;
        Ok(())
    }

    async fn measure_voltage(&mut self) -> Result<Volts, DriverError> {
        Ok(Volts(self.device()?.measure().0))
    }

    async fn measure_current(&mut self) -> Result<Amps, DriverError> {
        Ok(Amps(self.device()?.measure().1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn settings(value: serde_json::Value) -> DriverSettings {
        value.as_object().cloned().unwrap_or_default()
    }

    async fn driver(
        model: &EmulatorModel,
        runner: &str,
        s: serde_json::Value,
    ) -> Box<dyn PowerSupplyDriver> {
        let mut d = model.instantiate(runner, &settings(s)).unwrap();
        d.initialize().await.unwrap();
        d
    }

    #[tokio::test]
    async fn constant_voltage_below_the_limit() {
        let model = EmulatorModel::new();
        let mut d = driver(&model, "a", json!({"load_resistance_ohm": 10.0})).await;
        d.set_voltage_setpoint(Volts(5.0)).await.unwrap();
        d.set_current_limit(Amps(1.0)).await.unwrap();
        assert_eq!(d.measure_voltage().await.unwrap(), Volts(0.0), "off");
        d.set_output_enabled(true).await.unwrap();
        assert_eq!(d.measure_voltage().await.unwrap(), Volts(5.0));
        assert_eq!(d.measure_current().await.unwrap(), Amps(0.5));
    }

    #[tokio::test]
    async fn constant_current_at_the_limit() {
        let model = EmulatorModel::new();
        let mut d = driver(&model, "a", json!({"load_resistance_ohm": 2.0})).await;
        d.set_voltage_setpoint(Volts(12.0)).await.unwrap();
        d.set_current_limit(Amps(1.5)).await.unwrap();
        d.set_output_enabled(true).await.unwrap();
        assert_eq!(d.measure_current().await.unwrap(), Amps(1.5));
        assert_eq!(d.measure_voltage().await.unwrap(), Volts(3.0));
    }

    #[tokio::test]
    async fn device_state_survives_a_new_driver() {
        let model = EmulatorModel::new();
        let mut d = driver(&model, "a", json!({})).await;
        d.set_voltage_setpoint(Volts(7.5)).await.unwrap();
        drop(d);
        let mut again = driver(&model, "a", json!({})).await;
        assert_eq!(again.voltage_setpoint().await.unwrap(), Volts(7.5));
        let mut other = driver(&model, "b", json!({})).await;
        assert_eq!(other.voltage_setpoint().await.unwrap(), Volts(0.0));
    }

    #[tokio::test]
    async fn fail_initialize_counts_across_instances() {
        let model = EmulatorModel::new();
        let s = settings(json!({"faults": {"fail_initialize": 2}}));
        for attempt in 1..=2 {
            let mut d = model.instantiate("a", &s).unwrap();
            let err = d.initialize().await.unwrap_err();
            assert_eq!(err.kind(), super::super::ErrorKind::Io);
            assert!(
                err.message().contains(&format!("failure {attempt} of 2")),
                "{err}"
            );
        }
        let mut d = model.instantiate("a", &s).unwrap();
        d.initialize().await.unwrap();
        assert_eq!(model.device("a").unwrap().initializations, 3);
    }

    #[tokio::test]
    async fn error_fault_is_fatal_and_leaves_the_setpoint() {
        let model = EmulatorModel::new();
        let mut d = driver(&model, "a", json!({"faults": {"error_on_voltage": 13.0}})).await;
        let err = d.set_voltage_setpoint(Volts(13.0)).await.unwrap_err();
        assert!(err.kind().is_fatal());
        assert_eq!(d.voltage_setpoint().await.unwrap(), Volts(0.0));
    }

    #[tokio::test]
    async fn panic_fault_panics() {
        let model = EmulatorModel::new();
        let mut d = driver(&model, "a", json!({"faults": {"panic_on_voltage": 6.0}})).await;
        let handle = tokio::spawn(async move { d.set_voltage_setpoint(Volts(6.0)).await });
        assert!(handle.await.unwrap_err().is_panic());
    }

    #[tokio::test(start_paused = true)]
    async fn hang_fault_never_returns() {
        let model = EmulatorModel::new();
        let mut d = driver(&model, "a", json!({"faults": {"hang_on_voltage": 9.0}})).await;
        let late = tokio::time::timeout(
            std::time::Duration::from_secs(3600),
            d.set_voltage_setpoint(Volts(9.0)),
        )
        .await;
        assert!(late.is_err());
    }

    #[test]
    fn settings_are_checked() {
        let model = EmulatorModel::new();
        let err = model
            .check_settings(&settings(json!({"load_resistance_ohm": 0.0})))
            .unwrap_err();
        assert_eq!(err.key, "load_resistance_ohm");
        let err = model
            .check_settings(&settings(json!({"faults": {"panic_on": 1.0}})))
            .unwrap_err();
        assert_eq!(err.key, "faults.panic_on");
        assert!(err.message.contains("unknown field `panic_on`"), "{err}");
        let err = model
            .check_settings(&settings(json!({"initial_voltage": 31.0})))
            .unwrap_err();
        assert_eq!(err.key, "initial_voltage");
    }
}
