//! The `DriverFactory`: models by name, each with its manifest and a way to
//! check its settings and build drivers.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::{DriverError, DriverManifest, PowerSupplyDriver};

/// Model-specific settings of one runner: the keys of its config entry other
/// than the common ones (`serial_port`, `faults`, ...).
pub type DriverSettings = serde_json::Map<String, serde_json::Value>;

/// A model-specific setting that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct SettingsError {
    /// Key path relative to the runner entry (`faults.fail_initialize`).
    pub key: String,
    pub message: String,
}

impl SettingsError {
    /// Maps a serde error found while reading settings into a `SettingsError`.
    pub fn from_path_error(e: serde_path_to_error::Error<serde_json::Error>) -> Self {
        let key = e.path().to_string();
        SettingsError {
            key: if key.is_empty() { ".".into() } else { key },
            message: e.into_inner().to_string(),
        }
    }
}

/// Reads model-specific settings into the model's own settings type, which
/// should `deny_unknown_fields`.
pub fn parse_settings<T: serde::de::DeserializeOwned>(
    settings: &DriverSettings,
) -> Result<T, SettingsError> {
    serde_path_to_error::deserialize(serde_json::Value::Object(settings.clone()))
        .map_err(SettingsError::from_path_error)
}

/// The part of a physical instrument one runner drives, for the config check
/// that two runners do not drive the same thing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstrumentUse {
    /// The instrument, as runners name it (`tcp 192.168.1.50:5555`).
    pub instrument: String,
    /// The part of it this runner drives (`channel 2`).
    pub part: String,
    /// Settings of the instrument as a whole, which every runner of the
    /// instrument must give alike (they share one connection).
    pub shared_settings: String,
}

/// One driver model.
pub trait DriverModel: Send + Sync {
    fn manifest(&self) -> &DriverManifest;
    /// Checks the model-specific settings of a runner, at config load.
    fn check_settings(&self, settings: &DriverSettings) -> Result<(), SettingsError>;
    /// The manifest as it applies to a runner with these (checked) settings:
    /// the ranges and decimals of the channel it drives, on a multi-channel
    /// instrument.
    fn runner_manifest(&self, _settings: &DriverSettings) -> DriverManifest {
        self.manifest().clone()
    }
    /// What owns the ranges of [`DriverModel::runner_manifest`], for
    /// messages (`rigol-dp832 channel 3`).
    fn range_owner(&self, _settings: &DriverSettings) -> String {
        self.manifest().model.to_string()
    }
    /// The instrument a runner with these (checked) settings drives, when
    /// the model can tell.
    fn instrument_use(&self, _settings: &DriverSettings) -> Option<InstrumentUse> {
        None
    }
    /// Builds a fresh driver for `runner`. Called again on every restart of
    /// that runner; the driver is initialized later, by the runner.
    fn instantiate(
        &self,
        runner: &str,
        settings: &DriverSettings,
    ) -> Result<Box<dyn PowerSupplyDriver>, DriverError>;
}

/// The models this server knows, by model name.
#[derive(Default, Clone)]
pub struct DriverFactory {
    models: BTreeMap<&'static str, Arc<dyn DriverModel>>,
}

impl DriverFactory {
    /// A factory with no model.
    pub fn new() -> Self {
        Self::default()
    }

    /// A factory with every model built into this server.
    pub fn with_builtin_models() -> Self {
        let mut factory = Self::new();
        factory.register(Arc::new(super::emulator::EmulatorModel::new()));
        factory.register(Arc::new(super::kd3005p::Kd3005pModel::new()));
        for model in super::scpi::models() {
            factory.register(model);
        }
        factory
    }

    /// Adds a model, or replaces the one with the same name.
    pub fn register(&mut self, model: Arc<dyn DriverModel>) {
        self.models.insert(model.manifest().model, model);
    }

    /// The model called `name`, by its name or one of its aliases.
    pub fn model(&self, name: &str) -> Option<Arc<dyn DriverModel>> {
        self.models.get(name).cloned().or_else(|| {
            self.models
                .values()
                .find(|m| m.manifest().aliases.contains(&name))
                .cloned()
        })
    }

    /// Every registered manifest, ordered by model name.
    pub fn manifests(&self) -> Vec<DriverManifest> {
        self.models.values().map(|m| m.manifest().clone()).collect()
    }

    /// The model names, ordered, for error messages.
    pub fn model_names(&self) -> Vec<&'static str> {
        self.models.keys().copied().collect()
    }

    /// Builds a fresh driver of `model` for `runner`.
    pub fn instantiate(
        &self,
        runner: &str,
        model: &str,
        settings: &DriverSettings,
    ) -> Result<Box<dyn PowerSupplyDriver>, DriverError> {
        let found = self.model(model).ok_or_else(|| {
            DriverError::new(
                super::ErrorKind::Config,
                format!(
                    "unknown model '{model}' (available: {})",
                    self.model_names().join(", ")
                ),
            )
        })?;
        found.instantiate(runner, settings)
    }
}
