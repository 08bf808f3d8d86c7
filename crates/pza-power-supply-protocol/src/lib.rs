//! # pza-power-supply-protocol
//!
//! The MQTT contract of pza-power-supply, as pure code: topic names, command
//! parsing, reply and status payloads. The server, the client library and
//! the tests share it, so both ends of a topic agree by construction. No I/O
//! here.
//!
//! ## Layout
//! - [`topics`]: `[<namespace>/]power-supply/<runner>/...` topic names.
//! - [`payload`]: parsing commands strictly, formatting replies and statuses.
//! - [`decode`]: reading what the server publishes, tolerantly (for clients).
//! - [`ids`]: the `pza_id`s the server makes for messages that answer no
//!   command.
//! - [`ownership`]: the records that let several servers share one broker.
//! - [`units`]: volts and amps as distinct types.

pub mod decode;
pub mod ids;
pub mod ownership;
pub mod payload;
pub mod topics;
pub mod units;

pub use payload::{Command, InfoReport, Measurement, Rejection, Request, Status, StatusReport};
pub use topics::{Attribute, Topics};
pub use units::{Amps, Volts};
