//! One driver model, as the factory sees it: the `DriverModel` trait, the
//! settings a model reads, and their errors. The models implement it and the
//! factory collects them; neither imports the other.

use std::time::Duration;

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
            message: pza_toolkit::config::plain_message(&e.into_inner().to_string()),
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

/// Longest accepted for a model's timing settings (pacing, settle, read
/// timeout): beyond that the runner's `command_timeout_ms` fires first anyway.
const MAX_TIMING_MS: u64 = 60_000;

/// A timing setting in milliseconds: `default` when absent, else a value in
/// `min..=MAX_TIMING_MS`, refused with a message naming `key` otherwise.
pub(crate) fn millis(
    key: &str,
    value: Option<u64>,
    default: Duration,
    min: u64,
) -> Result<Duration, SettingsError> {
    match value {
        None => Ok(default),
        Some(ms) if (min..=MAX_TIMING_MS).contains(&ms) => Ok(Duration::from_millis(ms)),
        Some(ms) => Err(SettingsError {
            key: key.into(),
            message: format!("{ms} is not valid: must lie in {min}..={MAX_TIMING_MS}"),
        }),
    }
}
