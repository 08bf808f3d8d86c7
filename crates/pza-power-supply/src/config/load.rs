//! Loading: JSON5 text into a checked `ServerConfig` and its [`Plan`].
//!
//! Stage one maps the text onto serde types (syntax errors with line and
//! column, type and unknown-key errors with the key path). Stage two checks
//! what serde cannot: names, models, limits against each model's range,
//! restart rules, addresses, TLS files and each model's own settings, and
//! keeps what each check resolves (the model, the policy, the limits, the
//! socket addresses, the TLS configuration) in the plan. The first failure
//! is returned, as one line naming the file, the key path and the reason.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use pza_toolkit::config::{from_value, invalid, parse_json5_value, ConfigFileError};
use pza_toolkit::mqtt::{BrokerEndpoint, ClientTls, TlsError};
use serde::Deserialize;
use serde_json::Value;

use super::plan::{bind_ip, runner_settings, DriverPlan, EmbeddedBrokerPlan, RunnerPlan};
use super::types::{
    DEFAULT_COMMAND_TIMEOUT_MS, DEFAULT_MEASURE_PERIOD_MS, DEFAULT_SHUTDOWN_TIMEOUT_MS,
};
use super::{
    client_host, BrokerConfig, ConfigPath, McpConfig, OnShutdown, Plan, RestartSettings,
    RunnerConfig, SecurityLimitsConfig, ServerConfig, TlsConfig, TuiConfig,
};
use crate::drivers::{DriverFactory, DriverSettings, Range};
use crate::runners::SecurityLimits;

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

/// Longest runner name: names become MQTT topic levels.
const MAX_RUNNER_NAME: usize = 64;

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
            endpoint: &endpoint,
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

/// Checks the MCP section; returns the address to bind.
fn check_mcp(path: &Path, mcp: &McpConfig) -> Result<SocketAddr, ConfigFileError> {
    let Some(ip) = bind_ip(&mcp.host) else {
        return Err(invalid(
            path,
            "mcp.host",
            format!(
                "\"{}\" is not an IP address to bind the MCP server to",
                mcp.host
            ),
        ));
    };
    for (i, host) in mcp.allowed_hosts.iter().enumerate() {
        if host.trim().is_empty() || host.contains(['/', ' ']) {
            return Err(invalid(
                path,
                format!("mcp.allowed_hosts[{i}]"),
                format!("\"{host}\" is not a host name or host:port"),
            ));
        }
    }
    for (i, origin) in mcp.allowed_origins.iter().enumerate() {
        if !(origin.starts_with("http://") || origin.starts_with("https://")) {
            return Err(invalid(
                path,
                format!("mcp.allowed_origins[{i}]"),
                format!("\"{origin}\" is not an origin (scheme://host[:port], e.g. http://localhost:6274)"),
            ));
        }
    }
    if mcp.token.as_deref().is_some_and(|t| t.trim().is_empty()) {
        return Err(invalid(
            path,
            "mcp.token",
            "must not be empty (leave it out, or null, for no token)",
        ));
    }
    Ok(SocketAddr::new(ip, mcp.port))
}

/// Checks the broker section; returns the embedded broker to start, if any,
/// and how the server's own connections reach the broker.
fn check_broker(
    path: &Path,
    broker: &BrokerConfig,
) -> Result<(Option<EmbeddedBrokerPlan>, BrokerEndpoint), ConfigFileError> {
    let embedded = if broker.use_builtin {
        let Some(ip) = bind_ip(&broker.tcp.addr) else {
            return Err(invalid(
                path,
                "broker.tcp.addr",
                format!(
                    "\"{}\" is not an IP address to bind the embedded broker to",
                    broker.tcp.addr
                ),
            ));
        };
        Some(EmbeddedBrokerPlan {
            addr: SocketAddr::new(ip, broker.tcp.port),
            credentials: broker
                .username
                .clone()
                .map(|u| (u, broker.password.clone().unwrap_or_default())),
        })
    } else {
        None
    };
    if broker.tcp.addr.is_empty() {
        return Err(invalid(path, "broker.tcp.addr", "must not be empty"));
    }
    if broker.password.is_some() && broker.username.is_none() {
        return Err(invalid(
            path,
            "broker.password",
            "is set without broker.username",
        ));
    }
    if let Some(namespace) = &broker.namespace {
        check_namespace(namespace).map_err(|m| invalid(path, "broker.namespace", m))?;
    }
    let tls = match &broker.tls {
        Some(tls) => Some(check_tls(path, broker, tls)?),
        None => None,
    };
    let endpoint = BrokerEndpoint {
        host: client_host(&broker.tcp.addr),
        port: broker.tcp.port,
        username: broker.username.clone(),
        password: broker.password.clone(),
        tls,
    };
    Ok((embedded, endpoint))
}

/// TLS is for an external broker; its files must be readable PEM, and a
/// client certificate comes with its key. Returns the files loaded.
fn check_tls(
    path: &Path,
    broker: &BrokerConfig,
    tls: &TlsConfig,
) -> Result<ClientTls, ConfigFileError> {
    if broker.use_builtin {
        return Err(invalid(
            path,
            "broker.tls",
            "TLS is for an external broker (use_builtin: false); the embedded broker speaks plain TCP",
        ));
    }
    match (&tls.client_cert_file, &tls.client_key_file) {
        (Some(_), None) => {
            return Err(invalid(
                path,
                "broker.tls.client_cert_file",
                "is set without broker.tls.client_key_file",
            ))
        }
        (None, Some(_)) => {
            return Err(invalid(
                path,
                "broker.tls.client_key_file",
                "is set without broker.tls.client_cert_file",
            ))
        }
        _ => {}
    }
    let key_of = |file: &Path| {
        if Some(file) == tls.client_key_file.as_deref() {
            "broker.tls.client_key_file"
        } else if Some(file) == tls.client_cert_file.as_deref() {
            "broker.tls.client_cert_file"
        } else {
            "broker.tls.ca_file"
        }
    };
    match ClientTls::load(&tls.files()) {
        Ok(loaded) => Ok(loaded),
        Err(TlsError::Read { path: file, source }) => Err(invalid(
            path,
            key_of(&file),
            format!("cannot read {}: {source}", file.display()),
        )),
        Err(TlsError::Pem { path: file, what }) => Err(invalid(
            path,
            key_of(&file),
            format!("{}: {what}", file.display()),
        )),
        Err(TlsError::Rejected { path: file, source }) => Err(invalid(
            path,
            key_of(&file),
            format!("{}: rejected: {source}", file.display()),
        )),
        Err(e @ TlsError::Unpaired) => Err(invalid(path, "broker.tls", e.to_string())),
    }
}

/// A namespace is one or more topic levels of `[A-Za-z0-9_-]`, joined by `/`.
fn check_namespace(namespace: &str) -> Result<(), String> {
    if namespace.is_empty() {
        return Err("must not be empty (leave it out for no namespace)".into());
    }
    for level in namespace.split('/') {
        if level.is_empty() || !level.bytes().all(is_name_byte) {
            return Err(format!(
                "\"{namespace}\" must be topic levels of A-Z, a-z, 0-9, '_' or '-', joined by '/'"
            ));
        }
    }
    Ok(())
}

fn is_name_byte(b: u8) -> bool {
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
struct ResolveRunner<'a> {
    path: &'a Path,
    server_restart: &'a RestartSettings,
    factory: &'a DriverFactory,
    endpoint: &'a BrokerEndpoint,
    namespace: Option<&'a str>,
}

impl ResolveRunner<'_> {
    /// Checks runner `name`'s entry; returns it as written, and resolved.
    fn check(
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
            self.endpoint,
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
fn check_instrument_uses(
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
