//! The `DriverFactory`: the models this server knows by name, each with its
//! manifest and a way to check its settings and build drivers.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::model::{DriverModel, DriverSettings};
use super::{DriverError, DriverManifest, PowerSupplyDriver};

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

    /// The model called `name`, or an error listing the models there are.
    pub fn find(&self, name: &str) -> Result<Arc<dyn DriverModel>, UnknownModel> {
        self.model(name).ok_or_else(|| UnknownModel {
            name: name.to_string(),
            available: self.models.keys().copied().collect::<Vec<_>>().join(", "),
        })
    }

    /// Builds a fresh driver of `model` for `runner`.
    pub fn instantiate(
        &self,
        runner: &str,
        model: &str,
        settings: &DriverSettings,
    ) -> Result<Box<dyn PowerSupplyDriver>, DriverError> {
        let found = self
            .find(model)
            .map_err(|e| DriverError::new(super::ErrorKind::Config, e.to_string()))?;
        found.instantiate(runner, settings)
    }
}

/// A model name the factory does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown model \"{name}\" (available: {available})")]
pub struct UnknownModel {
    pub name: String,
    /// The known model names, comma-separated.
    pub available: String,
}
