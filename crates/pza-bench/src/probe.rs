//! An instrumented `emulator` model: the real emulator, whose drivers note
//! the instant they are about to hit the `panic_on_voltage` fault. That
//! instant is the end of the runner task as closely as it can be known (the
//! panic unwinds the task right after), so the recovery figure can start its
//! clock there instead of guessing it from outside.

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use pza_power_supply::drivers::emulator::EmulatorModel;
use pza_power_supply::drivers::{
    Amps, DriverError, DriverFactory, DriverManifest, DriverModel, DriverSettings,
    PowerSupplyDriver, SettingsError, Volts,
};
use tokio::sync::mpsc;

/// The emulator, registered under its own name, reporting injected panics.
pub struct PanicProbe {
    inner: EmulatorModel,
    panics: mpsc::UnboundedSender<Instant>,
}

impl PanicProbe {
    /// A factory with the built-in models, whose `emulator` is instrumented;
    /// the receiver gets the instant of every injected panic.
    pub fn factory() -> (DriverFactory, mpsc::UnboundedReceiver<Instant>) {
        let (panics, receiver) = mpsc::unbounded_channel();
        let mut factory = DriverFactory::with_builtin_models();
        factory.register(Arc::new(PanicProbe {
            inner: EmulatorModel::new(),
            panics,
        }));
        (factory, receiver)
    }
}

impl DriverModel for PanicProbe {
    fn manifest(&self) -> &DriverManifest {
        self.inner.manifest()
    }

    fn check_settings(&self, settings: &DriverSettings) -> Result<(), SettingsError> {
        self.inner.check_settings(settings)
    }

    fn instantiate(
        &self,
        runner: &str,
        settings: &DriverSettings,
    ) -> Result<Box<dyn PowerSupplyDriver>, DriverError> {
        let panic_on_voltage = settings
            .get("faults")
            .and_then(|f| f.get("panic_on_voltage"))
            .and_then(serde_json::Value::as_f64);
        Ok(Box::new(ProbeDriver {
            inner: self.inner.instantiate(runner, settings)?,
            panic_on_voltage,
            panics: self.panics.clone(),
        }))
    }
}

struct ProbeDriver {
    inner: Box<dyn PowerSupplyDriver>,
    panic_on_voltage: Option<f64>,
    panics: mpsc::UnboundedSender<Instant>,
}

#[async_trait]
impl PowerSupplyDriver for ProbeDriver {
    async fn initialize(&mut self) -> Result<(), DriverError> {
        self.inner.initialize().await
    }

    async fn shutdown(&mut self) -> Result<(), DriverError> {
        self.inner.shutdown().await
    }

    async fn output_enabled(&mut self) -> Result<bool, DriverError> {
        self.inner.output_enabled().await
    }

    async fn set_output_enabled(&mut self, enabled: bool) -> Result<(), DriverError> {
        self.inner.set_output_enabled(enabled).await
    }

    async fn voltage_setpoint(&mut self) -> Result<Volts, DriverError> {
        self.inner.voltage_setpoint().await
    }

    async fn set_voltage_setpoint(&mut self, voltage: Volts) -> Result<(), DriverError> {
        if Some(voltage.0) == self.panic_on_voltage {
            let _ = self.panics.send(Instant::now());
        }
        self.inner.set_voltage_setpoint(voltage).await
    }

    async fn current_limit(&mut self) -> Result<Amps, DriverError> {
        self.inner.current_limit().await
    }

    async fn set_current_limit(&mut self, current: Amps) -> Result<(), DriverError> {
        self.inner.set_current_limit(current).await
    }

    async fn measure_voltage(&mut self) -> Result<Volts, DriverError> {
        self.inner.measure_voltage().await
    }

    async fn measure_current(&mut self) -> Result<Amps, DriverError> {
        self.inner.measure_current().await
    }
}

/// Keeps the messages of the injected panics off stderr (hundreds of them
/// would drown the table); every other panic still goes to the default hook.
/// The server binary uses the default hook, which prints one line per panic
/// (and a backtrace when `RUST_BACKTRACE` is set): see docs/benchmarks.md.
pub fn silence_injected_panics() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let text = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied());
        if !text.is_some_and(|t| t.starts_with("emulator fault:")) {
            default(info);
        }
    }));
}
