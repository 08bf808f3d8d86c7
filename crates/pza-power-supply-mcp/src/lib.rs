//! # pza-power-supply-mcp
//!
//! The Model Context Protocol server of pza-power-supply: AI assistants
//! operate the bench power supplies with seven tools (`list_power_supplies`,
//! `get_state`, `set_voltage`, `set_current`, `set_output`, `measure`,
//! `restart`), over streamable HTTP or stdio.
//!
//! The tools are clients of the runners through `pza-power-supply-client`
//! only: this crate does not depend on the server, so every setpoint passes
//! the runner's limits guard, and a refusal is a tool result with
//! `isError: true` carrying the server's own message.
//!
//! ## Layout
//! - [`tools`]: the handler and its tools, [`Scope`] (every supply or one).
//! - [`args`], [`results`]: the tools' typed arguments and structured results.
//! - [`security`]: the `Host`, `Origin` and bearer-token checks.
//! - [`http`]: `/mcp` and `/power-supply/<name>` on axum.
//! - [`stdio`]: the same tools on stdin/stdout.

pub mod args;
pub mod http;
pub mod results;
pub mod security;
pub mod stdio;
pub mod tools;

pub use http::{router, serve, urls};
pub use security::{Refusal, Security};
pub use stdio::serve_stdio;
pub use tools::{PowerSupplyTools, Scope};
