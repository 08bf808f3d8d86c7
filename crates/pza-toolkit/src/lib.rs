//! # pza_toolkit
//!
//! Reusable building blocks for Panduza servers. Nothing here knows about
//! power supplies.
//!
//! ## Layout
//! - [`task_monitor`]: named tokio tasks turned into lifecycle events, the
//!   moment each task ends.
//! - [`mqtt`]: the embedded MQTT broker (rumqttd), MQTT client options, TLS
//!   to an external broker, and a reconnecting client connection (`link`).
//! - [`config`]: JSON5 files read with file, key-path and line/column errors;
//!   a key given twice in an object is refused (found by `json5_keys`).
//! - [`temp`]: a temporary folder removed when its guard is dropped (tests
//!   and the benchmark harness).

pub mod config;
mod json5_keys;
pub mod mqtt;
pub mod task_monitor;
pub mod temp;
