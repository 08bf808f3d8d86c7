//! # pza-power-supply-client
//!
//! Drive the power supplies of pza-power-supply servers from Rust, over
//! MQTT: one connection per [`Client`], shared by every [`PowerSupply`]
//! handle; typed values; every command answered by the value the device read
//! back, or by the server's refusal.
//!
//! ```no_run
//! use pza_power_supply_client::{Client, ClientOptions, Error};
//!
//! # async fn demo() -> Result<(), Error> {
//! let client = Client::connect(ClientOptions::new("127.0.0.1", 1883)).await?;
//! let names: Vec<String> = client.list().await?;
//! let psu = client.power_supply("emulator");       // a handle, no I/O
//! let v: f64 = psu.set_voltage(5.0).await?;        // the value read back
//! psu.set_current(0.5).await?;
//! psu.enable_output().await?;
//! let m = psu.measure().await?;                    // m.voltage, m.current (fresh)
//! let s = psu.snapshot().await?;                   // status, restarts, setpoints, info…
//! let mut updates = psu.watch();                   // a Stream of updates
//! # Ok(())
//! # }
//! ```
//!
//! ## Layout
//! - [`client`]: [`Client`], the connection and the list of power supplies.
//! - [`power_supply`]: [`PowerSupply`], the commands and the state of one.
//! - [`watch`]: [`Watch`], the stream of [`Update`]s.
//! - [`state`]: [`Snapshot`], [`Update`], [`Change`]: pure, no I/O.
//! - [`options`], [`error`]: [`ClientOptions`], [`Error`].
//! - `connection`: the event loop task (subscriptions, reconnection,
//!   replies matched to their commands by `pza_id`).
//!
//! The topics and payloads are those of the `pza-power-supply-protocol` crate;
//! this crate depends on neither the server nor a broker.

pub mod client;
mod connection;
pub mod error;
pub mod options;
pub mod power_supply;
pub mod state;
mod tls;
pub mod watch;

pub use client::Client;
pub use connection::ID_PREFIX;
pub use error::{Error, Result};
pub use options::{ClientOptions, TlsFiles, DEFAULT_TIMEOUT};
pub use power_supply::{Measurement, PowerSupply};
pub use pza_power_supply_protocol::{InfoReport, Status, StatusReport};
pub use state::{Change, Snapshot, Update};
pub use watch::Watch;
