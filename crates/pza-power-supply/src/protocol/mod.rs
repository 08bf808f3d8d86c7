//! The MQTT contract, as pure code: topic names and payloads. Shared by the
//! runners, the supervisor, the tests and the benchmarks; no I/O here.

pub mod ownership;
pub mod payload;
pub mod topics;

pub use payload::{Command, Rejection, Request, Status, StatusReport};
pub use topics::{Attribute, Topics};
