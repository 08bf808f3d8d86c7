//! Runners and their supervision.
//!
//! - [`runner`]: one device on one MQTT connection.
//! - [`limits`]: the security limits guard, the one place limits are checked.
//! - [`restart`]: the restart decisions of one runner, without I/O.
//! - [`service`]: the `RunnersService`, which starts every runner and
//!   restarts the ones that crash.
//! - [`link`]: an MQTT connection with its own event-loop task.
//! - [`refuser`]: answers the commands sent to a `Failed` runner.

pub mod limits;
pub mod link;
pub mod refuser;
pub mod restart;
pub mod runner;
pub mod service;

pub use limits::SecurityLimits;
pub use runner::{Runner, RunnerControl, RunnerReport, RunnerSettings};
pub use service::RunnersService;
