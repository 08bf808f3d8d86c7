//! The server configuration: types, loading in two stages (JSON5 text into
//! typed values, then checks that need the driver models), default file and
//! path resolution.

mod load;
mod paths;
mod restart;
mod types;

pub use load::{load, parse, DEFAULT_CONFIG};
pub use paths::{home_dir, resolve_config_path, ConfigPath, CONFIG_ENV, DEFAULT_FILE_NAME};
pub use restart::{RestartPolicy, RestartSettings};
pub use types::{
    BrokerConfig, McpConfig, OnShutdown, RunnerConfig, SecurityLimitsConfig, ServerConfig,
    TcpConfig, TlsConfig, TuiConfig,
};
