//! # pza-power-supply
//!
//! Controls bench power supplies over MQTT. For every configured supply one
//! supervised **runner** owns the device driver and serves the device's MQTT
//! topics; a runner that panics or fails is restarted under a backoff policy.
//!
//! ## Layout
//! - [`config`]: the config file, loaded, checked and resolved once into a
//!   [`config::ServerConfig`] and its [`config::Plan`], which the server starts from.
//! - [`protocol`]: the MQTT contract (topics, payloads), pure code: the
//!   `pza-power-supply-protocol` crate, shared with the client library.
//! - [`drivers`]: the `PowerSupplyDriver` trait, the `DriverFactory` and the models.
//! - [`runners`]: one runner per supply, the security limits guard, the
//!   restart policy and the `RunnersService` that supervises them.
//! - [`server`]: assembles the embedded broker and the runners, and shuts down.
//! - [`simulator`]: simulated devices on pseudo-terminals (a KD3005P), to run
//!   and test the whole stack without hardware.
//! - [`tui`]: the terminal UI, a client of the runners like `ctl`.
//! - [`mcp`]: the MCP server for AI assistants, inside `run` (HTTP) and as
//!   `mcp --stdio`; its tools are the `pza-power-supply-mcp` crate.
//! - [`cli`]: the command line; [`ctl`] its one-shot client commands, and
//!   [`connect`] the `CONNECT` flags that reach a running server's broker;
//!   [`stdout`] prints their results, quietly stopping when the reader has
//!   gone.

pub mod cli;
pub mod config;
pub mod connect;
pub mod ctl;
pub mod drivers;
pub mod mcp;
pub mod runners;
pub mod server;
pub mod simulator;
pub mod stdout;
pub mod tui;

pub use pza_power_supply_protocol as protocol;
