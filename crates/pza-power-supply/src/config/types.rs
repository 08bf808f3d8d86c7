//! The configuration as typed values, after loading and checking.

use std::collections::BTreeMap;
use std::path::PathBuf;

use pza_toolkit::mqtt::TlsFiles;
use serde::Deserialize;

use super::{Plan, RestartSettings};
use crate::drivers::DriverSettings;

/// The whole server configuration, checked: the sections as written, and
/// the [`Plan`] resolved from them, which the server starts from.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The file it came from, for messages.
    pub source: PathBuf,
    pub broker: BrokerConfig,
    pub mcp: McpConfig,
    pub tui: TuiConfig,
    /// The server-wide restart settings, merged over the built-in defaults.
    pub restart: RestartSettings,
    pub shutdown_timeout_ms: u64,
    pub runners: BTreeMap<String, RunnerConfig>,
    /// The same, resolved once at load.
    pub plan: Plan,
}

pub(super) const DEFAULT_SHUTDOWN_TIMEOUT_MS: u64 = 5000;
pub(super) const DEFAULT_MEASURE_PERIOD_MS: u64 = 1000;
pub(super) const DEFAULT_COMMAND_TIMEOUT_MS: u64 = 2000;

/// The MQTT broker: the embedded one, or an external one.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerConfig {
    #[serde(default = "yes")]
    pub use_builtin: bool,
    #[serde(default)]
    pub tcp: TcpConfig,
    pub username: Option<String>,
    pub password: Option<String>,
    /// Topic prefix, for several servers on one broker.
    pub namespace: Option<String>,
    /// TLS to an external broker; `None` is plain TCP.
    pub tls: Option<TlsConfig>,
}

/// TLS to an external broker, as PEM files. Relative paths are taken from
/// the folder of the config file (resolved when the file is loaded).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The CA certificate(s) the broker's certificate must chain to.
    pub ca_file: PathBuf,
    /// A client certificate, for brokers that require one; goes with
    /// `client_key_file`.
    pub client_cert_file: Option<PathBuf>,
    pub client_key_file: Option<PathBuf>,
}

impl TlsConfig {
    /// The files, as the MQTT client options take them.
    pub fn files(&self) -> TlsFiles {
        TlsFiles {
            ca_file: self.ca_file.clone(),
            client_cert_file: self.client_cert_file.clone(),
            client_key_file: self.client_key_file.clone(),
        }
    }
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            use_builtin: true,
            tcp: TcpConfig::default(),
            username: None,
            password: None,
            namespace: None,
            tls: None,
        }
    }
}

fn yes() -> bool {
    true
}

/// Bind address of the embedded broker, or address of the external one.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TcpConfig {
    #[serde(default = "default_addr")]
    pub addr: String,
    #[serde(default = "default_port")]
    pub port: u16,
}

impl Default for TcpConfig {
    fn default() -> Self {
        TcpConfig {
            addr: default_addr(),
            port: default_port(),
        }
    }
}

fn default_addr() -> String {
    "127.0.0.1".into()
}

fn default_port() -> u16 {
    1883
}

/// The MCP server (HTTP), for AI assistants.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct McpConfig {
    #[serde(default)]
    pub enable: bool,
    /// The address to bind; the loopback by default, so that only this
    /// machine reaches it.
    #[serde(default = "default_addr")]
    pub host: String,
    #[serde(default = "default_mcp_port")]
    pub port: u16,
    /// `Host` headers accepted besides localhost, 127.0.0.1, [::1] and `host`.
    #[serde(default)]
    pub allowed_hosts: Vec<String>,
    /// `Origin` headers accepted (browser clients); none by default.
    #[serde(default)]
    pub allowed_origins: Vec<String>,
    /// If set, requests need `Authorization: Bearer <token>`.
    #[serde(default)]
    pub token: Option<String>,
}

impl Default for McpConfig {
    fn default() -> Self {
        McpConfig {
            enable: false,
            host: default_addr(),
            port: default_mcp_port(),
            allowed_hosts: Vec::new(),
            allowed_origins: Vec::new(),
            token: None,
        }
    }
}

fn default_mcp_port() -> u16 {
    50051
}

/// The terminal UI of `run`, shown when enabled and stdout is a terminal.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TuiConfig {
    #[serde(default = "default_true")]
    pub enable: bool,
    /// The key that switches the selected output on and off.
    #[serde(default = "default_toggle_key")]
    pub power_toggle_key: String,
}

impl Default for TuiConfig {
    fn default() -> Self {
        TuiConfig {
            enable: true,
            power_toggle_key: default_toggle_key(),
        }
    }
}

fn default_true() -> bool {
    true
}

fn default_toggle_key() -> String {
    "p".into()
}

/// What a runner does to the output when the server shuts down.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnShutdown {
    /// Leave the output as it is.
    #[default]
    Keep,
    /// Turn the output off.
    OutputOff,
}

/// Security limits as configured; a missing bound takes the model's own.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SecurityLimitsConfig {
    pub min_voltage: Option<f64>,
    pub max_voltage: Option<f64>,
    pub min_current: Option<f64>,
    pub max_current: Option<f64>,
}

/// One configured power supply.
#[derive(Debug, Clone, PartialEq)]
pub struct RunnerConfig {
    /// The model name as written (an alias is kept as written).
    pub model: String,
    pub description: String,
    pub limits: SecurityLimitsConfig,
    /// 0 turns periodic measurements off.
    pub measure_period_ms: u64,
    pub command_timeout_ms: u64,
    pub on_shutdown: OnShutdown,
    /// This runner's restart settings, merged over the server-wide ones.
    pub restart: RestartSettings,
    /// The model-specific keys (`serial_port`, `faults`, ...).
    pub driver_settings: DriverSettings,
}
