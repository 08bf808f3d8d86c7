//! Runners and their supervision.
//!
//! - [`runner`]: one device, served through its mailbox.
//! - [`mailbox`]: the runners' share of the server's one MQTT connection:
//!   commands sorted by runner into bounded mailboxes.
//! - [`error`]: why a runner ended, typed, with the runner's name.
//! - [`limits`]: the security limits guard, the one place limits are checked.
//! - [`restart`]: the restart decisions of one runner, without I/O.
//! - [`supervisor`]: the `RunnersService`, which starts every runner and
//!   restarts the ones that crash: a pure state machine per runner, the
//!   multi-server ownership protocol, and the I/O shell that carries out
//!   their decisions.
//! - [`refuser`]: answers the commands sent to a `Failed` runner.
//! - [`panics`]: the panic hook that keeps a driver's (handled) panics out
//!   of stderr, noting where they happened for the runner's log.

pub mod error;
pub mod limits;
pub mod mailbox;
pub mod panics;
pub mod refuser;
pub mod restart;
pub mod runner;
pub mod supervisor;

pub use error::{Cause, RunnerError};
pub use limits::SecurityLimits;
pub use runner::{Runner, RunnerControl, RunnerReport, RunnerSettings};
pub use supervisor::RunnersService;
