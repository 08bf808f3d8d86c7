//! The one error type of the client, with a variant per way a command can end
//! without the value it asked for.

use std::time::Duration;

use pza_power_supply_protocol::Status;

/// Why a client call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The server refused the command: its `P/error` message, e.g.
    /// `voltage 31 exceeds security_max_voltage 30`.
    #[error("{message}")]
    Rejected { message: String },

    /// The broker was reached, but the power supply did not answer in time.
    #[error("power supply `{device}` did not answer within {} ms ({})", after.as_millis(), device_hint(last_status))]
    Timeout {
        device: String,
        after: Duration,
        /// Its last status seen on the broker; `None` if it was never seen
        /// (an unknown name, or the wrong namespace).
        last_status: Option<Status>,
    },

    /// The connection to the broker dropped while the command waited for its
    /// reply: it may or may not have been applied.
    #[error("the connection to the broker was lost while waiting for the answer of power supply `{device}` (the command may or may not have been applied)")]
    ConnectionLost { device: String },

    /// No connection to the broker within the time allowed.
    #[error("broker {broker} did not answer within {} ms ({cause})", after.as_millis())]
    BrokerUnreachable {
        broker: String,
        after: Duration,
        /// The last connection error, or what was still awaited.
        cause: String,
    },

    /// The broker answered but refused the connection (e.g. bad credentials).
    #[error("broker {broker} refused the connection: {reason}")]
    ConnectionRefused { broker: String, reason: String },

    /// No power supply of this name has been seen on the broker.
    #[error("power supply `{name}` is not on the broker (no retained status: an unknown name, or the wrong namespace)")]
    UnknownDevice { name: String },

    /// An argument that cannot be sent: the field and the reason.
    #[error("invalid {field}: {reason}")]
    InvalidArgument { field: &'static str, reason: String },

    /// The TLS files could not be used.
    #[error("TLS: {0}")]
    Tls(String),

    /// A reply that does not fit the command.
    #[error("protocol: {0}")]
    Protocol(String),

    /// The MQTT client could not queue a request.
    #[error("MQTT: {0}")]
    Mqtt(#[from] rumqttc::ClientError),

    /// The client's connection task has stopped.
    #[error("the client's connection has been closed")]
    Closed,
}

fn device_hint(last_status: &Option<Status>) -> String {
    match last_status {
        None => "never seen on the broker: an unknown name, or the wrong namespace".into(),
        Some(status) => format!("its last status is {status}"),
    }
}

/// The result of a client call.
pub type Result<T, E = Error> = std::result::Result<T, E>;
