//! The server configuration: load -> validate -> resolve, once. Types
//! (`types`, `restart`), loading in two stages (JSON5 text into typed values,
//! then checks that need the driver models: `load`), the [`Plan`] those
//! checks resolve (`plan`), default file and path resolution (`paths`).

mod load;
mod paths;
mod plan;
mod restart;
mod types;

pub use load::{load, parse, DEFAULT_CONFIG};
pub use paths::{home_dir, resolve_config_path, ConfigPath, CONFIG_ENV, DEFAULT_FILE_NAME};
pub use plan::{client_host, DriverPlan, EmbeddedBrokerPlan, Plan, RunnerPlan};
pub use restart::{RestartPolicy, RestartSettings};
pub use types::{
    BrokerConfig, McpConfig, OnShutdown, RunnerConfig, SecurityLimitsConfig, ServerConfig,
    TcpConfig, TlsConfig, TuiConfig,
};
