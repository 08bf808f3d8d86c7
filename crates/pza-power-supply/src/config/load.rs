//! Loading: JSON5 text into a checked `ServerConfig` and its [`Plan`].
//!
//! Stage one maps the text onto serde types (syntax errors with line and
//! column, type and unknown-key errors with the key path). Stage two checks
//! what serde cannot: names, models, limits against each model's range,
//! restart rules, addresses, TLS files and each model's own settings
//! (`broker`, `runner`), and keeps what each check resolves (the model, the
//! policy, the limits, the socket addresses, the TLS configuration) in the
//! plan. The first failure is returned, as one line naming the file, the
//! key path and the reason.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use pza_toolkit::config::{from_value, invalid, parse_json5_value, ConfigFileError};
use serde::Deserialize;
use serde_json::Value;

use super::broker::{check_broker, check_mcp};
use super::runner::{check_instrument_uses, ResolveRunner};
use super::types::DEFAULT_SHUTDOWN_TIMEOUT_MS;
use super::{BrokerConfig, ConfigPath, McpConfig, Plan, RestartSettings, ServerConfig, TuiConfig};
use crate::drivers::DriverFactory;

/// The config written at the default path on first run: the embedded broker
/// on 127.0.0.1:1883 and one emulated supply.
pub const DEFAULT_CONFIG: &str = r#"// pza-power-supply configuration (JSON5). Every key is described in the
// README, section "Configuration".
{
  broker: {
    use_builtin: true,
    tcp: { addr: "127.0.0.1", port: 1883 },
  },
  // The terminal UI, shown by `run` when stdout is a terminal (--no-tui hides it).
  tui: { enable: true, power_toggle_key: "p" },
  runners: {
    emulator: {
      model: "emulator",
      description: "Virtual supply",
      security_min_voltage: 0.0, security_max_voltage: 30.0,
      security_min_current: 0.0, security_max_current: 5.0,
      measure_period_ms: 1000,
    },
  },
}
"#;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    #[serde(default)]
    broker: BrokerConfig,
    #[serde(default)]
    mcp: McpConfig,
    #[serde(default)]
    tui: TuiConfig,
    #[serde(default)]
    restart: RestartSettings,
    #[serde(default = "default_shutdown_timeout")]
    shutdown_timeout_ms: u64,
    #[serde(default)]
    runners: BTreeMap<String, serde_json::Map<String, Value>>,
}

fn default_shutdown_timeout() -> u64 {
    DEFAULT_SHUTDOWN_TIMEOUT_MS
}

/// Loads the config at `config_path`, writing the default config first when
/// the default path does not exist yet.
pub fn load(
    config_path: &ConfigPath,
    factory: &DriverFactory,
) -> Result<ServerConfig, ConfigFileError> {
    let path = &config_path.path;
    if config_path.is_default && !path.exists() {
        pza_toolkit::config::write_file(path, DEFAULT_CONFIG)?;
        tracing::info!(path = %path.display(), "wrote the default config");
    }
    let text = std::fs::read_to_string(path).map_err(|source| ConfigFileError::Read {
        path: path.clone(),
        source,
    })?;
    parse(path, &text, factory)
}

/// Parses and checks config `text`, read from `path` (used in messages).
pub fn parse(
    path: &Path,
    text: &str,
    factory: &DriverFactory,
) -> Result<ServerConfig, ConfigFileError> {
    let value = parse_json5_value(path, text)?;
    if let Some(key) = first_null(&value, "").filter(|key| key != NULLABLE_TOKEN) {
        return Err(invalid(
            path,
            key,
            "must not be null, NaN or Infinity (leave the key out for its default)",
        ));
    }
    let mut file: FileConfig = from_value(path, value, "")?;

    if let Some(tls) = &mut file.broker.tls {
        let folder = path.parent().unwrap_or(Path::new(""));
        for file_path in [
            Some(&mut tls.ca_file),
            tls.client_cert_file.as_mut(),
            tls.client_key_file.as_mut(),
        ]
        .into_iter()
        .flatten()
        {
            if file_path.is_relative() {
                *file_path = folder.join(&*file_path);
            }
        }
    }
    let (embedded_broker, endpoint) = check_broker(path, &file.broker)?;
    let toggle_key = &file.tui.power_toggle_key;
    if toggle_key.chars().count() != 1 {
        return Err(invalid(
            path,
            "tui.power_toggle_key",
            "must be exactly one character",
        ));
    }
    if let Some(taken) = toggle_key
        .chars()
        .find(|c| crate::tui::app::RESERVED_KEYS.contains(c) || c.is_control() || *c == ' ')
    {
        let reserved: Vec<String> = crate::tui::app::RESERVED_KEYS
            .iter()
            .map(char::to_string)
            .collect();
        return Err(invalid(
            path,
            "tui.power_toggle_key",
            format!(
                "\"{}\" is taken by the terminal UI (its keys are {}) or is not a printable key",
                taken.escape_default(),
                reserved.join(" ")
            ),
        ));
    }
    let mcp_addr = check_mcp(path, &file.mcp)?;
    file.restart
        .resolve()
        .map_err(|(key, message)| invalid(path, format!("restart.{key}"), message))?;

    let namespace = file.broker.namespace.clone();
    let mut runners = BTreeMap::new();
    let mut runner_plans = BTreeMap::new();
    for (name, entry) in file.runners {
        let resolve = ResolveRunner {
            path,
            server_restart: &file.restart,
            factory,
            namespace: namespace.as_deref(),
        };
        let (runner, plan) = resolve.check(&name, entry)?;
        runners.insert(name.clone(), runner);
        runner_plans.insert(name, plan);
    }
    check_instrument_uses(path, &runner_plans)?;

    let plan = Plan {
        embedded_broker,
        endpoint,
        namespace,
        mcp: file.mcp.enable.then_some(mcp_addr),
        shutdown_timeout: Duration::from_millis(file.shutdown_timeout_ms),
        runners: runner_plans,
    };
    Ok(ServerConfig {
        source: path.to_path_buf(),
        broker: file.broker,
        mcp: file.mcp,
        tui: file.tui,
        restart: file.restart,
        shutdown_timeout_ms: file.shutdown_timeout_ms,
        runners,
        plan,
    })
}

/// The one key that may be null: `token: null` reads as "no token", as the
/// documented example writes it, and cannot weaken a limit.
const NULLABLE_TOKEN: &str = "mcp.token";

/// The key path of the first `null` in `value`. The JSON5 reader turns NaN
/// and Infinity into null (JSON has no such numbers), and an optional key
/// set to null would silently read as left out (a security limit as "no
/// limit"), so no key of the config may be null.
fn first_null(value: &Value, at: &str) -> Option<String> {
    let join = |key: &str| {
        if at.is_empty() {
            key.to_string()
        } else {
            format!("{at}.{key}")
        }
    };
    match value {
        Value::Null => Some(if at.is_empty() { ".".into() } else { at.into() }),
        Value::Object(map) => map.iter().find_map(|(k, v)| first_null(v, &join(k))),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, v)| first_null(v, &format!("{at}[{i}]"))),
        _ => None,
    }
}
