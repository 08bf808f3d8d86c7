//! Checks of one runner's entry against its driver model, and of the
//! runners together (one instrument's parts), resolving each into a
//! [`RunnerPlan`]: the model, the merged restart policy, the limits with the
//! model's bounds filled in, and the runner's settings.

use std::collections::BTreeMap;
use std::path::Path;

use pza_toolkit::config::{from_value, invalid, ConfigFileError};
use serde::Deserialize;
use serde_json::Value;

use super::plan::{runner_settings, DriverPlan, RunnerPlan};
use super::types::{DEFAULT_COMMAND_TIMEOUT_MS, DEFAULT_MEASURE_PERIOD_MS};
use super::{OnShutdown, RestartSettings, RunnerConfig, SecurityLimitsConfig};
use crate::drivers::{DriverFactory, DriverSettings, Range};
use crate::runners::SecurityLimits;

/// Longest runner name: names become MQTT topic levels.
const MAX_RUNNER_NAME: usize = 64;

/// The keys every runner accepts, whatever its model.
const RUNNER_KEYS: &[&str] = &[
    "model",
    "description",
    "security_min_voltage",
    "security_max_voltage",
    "security_min_current",
    "security_max_current",
    "measure_period_ms",
    "command_timeout_ms",
    "on_shutdown",
    "restart",
];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RunnerFile {
    model: String,
    #[serde(default)]
    description: String,
    security_min_voltage: Option<f64>,
    security_max_voltage: Option<f64>,
    security_min_current: Option<f64>,
    security_max_current: Option<f64>,
    #[serde(default = "default_measure_period")]
    measure_period_ms: u64,
    #[serde(default = "default_command_timeout")]
    command_timeout_ms: u64,
    #[serde(default)]
    on_shutdown: OnShutdown,
    #[serde(default)]
    restart: RestartSettings,
}

fn default_measure_period() -> u64 {
    DEFAULT_MEASURE_PERIOD_MS
}

fn default_command_timeout() -> u64 {
    DEFAULT_COMMAND_TIMEOUT_MS
}

/// A byte of a runner name or of a namespace level: `[A-Za-z0-9_-]`.
pub(super) fn is_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'-'
}

fn check_runner_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_RUNNER_NAME {
        return Err(format!(
            "a runner name has 1 to {MAX_RUNNER_NAME} characters"
        ));
    }
    if !name.bytes().all(is_name_byte) {
        return Err("a runner name may hold only A-Z, a-z, 0-9, '_' and '-' (it becomes an MQTT topic level)".into());
    }
    Ok(())
}

/// What checking a runner's entry needs besides the entry.
pub(super) struct ResolveRunner<'a> {
    pub path: &'a Path,
    pub server_restart: &'a RestartSettings,
    pub factory: &'a DriverFactory,
    pub namespace: Option<&'a str>,
}

impl ResolveRunner<'_> {
    /// Checks runner `name`'s entry; returns it as written, and resolved.
    pub fn check(
        &self,
        name: &str,
        entry: serde_json::Map<String, Value>,
    ) -> Result<(RunnerConfig, RunnerPlan), ConfigFileError> {
        let path = self.path;
        let key = |k: &str| format!("runners.{name}.{k}");
        check_runner_name(name).map_err(|m| invalid(path, format!("runners.{name}"), m))?;

        let (common, driver_settings): (DriverSettings, DriverSettings) = entry
            .into_iter()
            .partition(|(k, _)| RUNNER_KEYS.contains(&k.as_str()));
        let runner: RunnerFile =
            from_value(path, Value::Object(common), &format!("runners.{name}"))?;

        let model = self
            .factory
            .find(&runner.model)
            .map_err(|e| invalid(path, key("model"), e.to_string()))?;
        let manifest = model.manifest();

        for extra in driver_settings.keys() {
            if !manifest.settings.contains(&extra.as_str()) {
                let mut known: Vec<&str> = RUNNER_KEYS.to_vec();
                known.extend(manifest.settings);
                return Err(invalid(
                    path,
                    key(extra),
                    format!(
                        "unknown key for model {} (known keys: {})",
                        manifest.model,
                        known.join(", ")
                    ),
                ));
            }
        }
        model.check_settings(&driver_settings).map_err(|e| {
            // "." is the runner entry itself (a missing model-specific key).
            let at = if e.key == "." {
                format!("runners.{name}")
            } else {
                key(&e.key)
            };
            invalid(path, at, e.message)
        })?;

        // Limits are checked against what this runner drives: one channel of
        // a multi-channel instrument.
        let scoped = model.runner_manifest(&driver_settings);
        let owner = model.range_owner(&driver_settings);
        let limits = SecurityLimitsConfig {
            min_voltage: runner.security_min_voltage,
            max_voltage: runner.security_max_voltage,
            min_current: runner.security_min_current,
            max_current: runner.security_max_current,
        };
        let voltage = check_limits(
            ("voltage", "V"),
            limits.min_voltage,
            limits.max_voltage,
            scoped.voltage_range,
            &owner,
        )
        .map_err(|(k, m)| invalid(path, key(&k), m))?;
        let current = check_limits(
            ("current", "A"),
            limits.min_current,
            limits.max_current,
            scoped.current_range,
            &owner,
        )
        .map_err(|(k, m)| invalid(path, key(&k), m))?;

        if runner.command_timeout_ms == 0 {
            return Err(invalid(
                path,
                key("command_timeout_ms"),
                "must be greater than 0",
            ));
        }
        let policy = self
            .server_restart
            .merged(&runner.restart)
            .resolve()
            .map_err(|(k, m)| invalid(path, key(&format!("restart.{k}")), m))?;

        let config = RunnerConfig {
            model: runner.model,
            description: runner.description,
            limits,
            measure_period_ms: runner.measure_period_ms,
            command_timeout_ms: runner.command_timeout_ms,
            on_shutdown: runner.on_shutdown,
            restart: runner.restart,
            driver_settings,
        };
        let settings = runner_settings(
            name,
            &config,
            &scoped,
            SecurityLimits { voltage, current },
            self.namespace,
        );
        let plan = RunnerPlan {
            driver: DriverPlan::new(model, config.driver_settings.clone()),
            policy,
            settings,
        };
        Ok((config, plan))
    }
}

/// Runners that name one instrument share its connection: each must drive
/// its own part of it (its own channel), with the same instrument settings.
pub(super) fn check_instrument_uses(
    path: &Path,
    runners: &BTreeMap<String, RunnerPlan>,
) -> Result<(), ConfigFileError> {
    let mut seen: Vec<(&str, crate::drivers::InstrumentUse)> = Vec::new();
    for (name, runner) in runners {
        let Some(used) = runner.driver.instrument_use() else {
            continue;
        };
        for (other, earlier) in &seen {
            if earlier.instrument != used.instrument {
                continue;
            }
            if earlier.shared_settings != used.shared_settings {
                return Err(invalid(
                    path,
                    format!("runners.{name}"),
                    format!(
                        "{} is also driven by runner {other} with other settings; runners of one instrument share its connection and must agree ({other}: {}; {name}: {})",
                        used.instrument, earlier.shared_settings, used.shared_settings
                    ),
                ));
            }
            if earlier.part == used.part {
                return Err(invalid(
                    path,
                    format!("runners.{name}"),
                    format!(
                        "{} of {} is already driven by runner {other}",
                        used.part, used.instrument
                    ),
                ));
            }
        }
        seen.push((name, used));
    }
    Ok(())
}

/// Checks one pair of security limits against the model's range; returns
/// the limits with the model's bound for any left out, or the offending key
/// and the reason.
fn check_limits(
    (quantity, unit): (&str, &str),
    min: Option<f64>,
    max: Option<f64>,
    range: Range,
    model: &str,
) -> Result<Range, (String, String)> {
    let min_key = format!("security_min_{quantity}");
    let max_key = format!("security_max_{quantity}");
    for (key, value) in [(&min_key, min), (&max_key, max)] {
        if let Some(v) = value {
            if !v.is_finite() {
                return Err((key.clone(), format!("must be a finite number, not {v}")));
            }
            if !range.contains(v) {
                return Err((
                    key.clone(),
                    format!(
                        "{v} {unit} is outside the {model} range {}..{} {unit}",
                        range.min, range.max
                    ),
                ));
            }
        }
    }
    let (lo, hi) = (min.unwrap_or(range.min), max.unwrap_or(range.max));
    if lo > hi {
        return Err((
            min_key,
            format!("{lo} {unit} is greater than {max_key} {hi} {unit}"),
        ));
    }
    Ok(Range::new(lo, hi))
}
