//! The server configuration: load -> validate -> resolve, once. Types
//! (`types`, `restart`), loading in two stages (JSON5 text into typed values,
//! then checks: `load`, with the checks of the broker and MCP sections in
//! `broker` and of the runners against their driver models in `runner`),
//! the [`Plan`] those checks resolve (`plan`), default file and path
//! resolution (`paths`).

mod broker;
mod load;
mod paths;
mod plan;
mod restart;
mod runner;
mod types;

pub use load::{load, parse, DEFAULT_CONFIG};
pub use paths::{home_dir, resolve_config_path, ConfigPath, CONFIG_ENV, DEFAULT_FILE_NAME};
pub use plan::{client_host, DriverPlan, EmbeddedBrokerPlan, Plan, RunnerPlan};
pub use restart::{RestartPolicy, RestartSettings};
pub use types::{
    BrokerConfig, McpConfig, OnShutdown, RunnerConfig, SecurityLimitsConfig, ServerConfig,
    TcpConfig, TlsConfig, TuiConfig,
};
