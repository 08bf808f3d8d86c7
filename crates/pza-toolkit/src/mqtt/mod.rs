//! MQTT plumbing: the embedded broker (rumqttd), client options, TLS to an
//! external broker, and a reconnecting client connection.
//!
//! - [`broker`]: the embedded broker, with a clear error on a taken port and
//!   a stop that drains.
//! - [`options`]: where a client connects, and its rumqttc options.
//! - [`tls`]: the PEM files of a TLS connection, loaded once.
//! - [`link`]: one client connection polled by a task of its own, that
//!   reconnects, resubscribes and accounts for acknowledgements.

use std::net::TcpListener as StdTcpListener;

pub mod broker;
pub mod link;
pub mod options;
pub mod tls;

pub use broker::{BrokerError, EmbeddedBroker};
pub use link::{LinkClosed, LinkEvent, MqttLink};
pub use options::{client_options, BrokerEndpoint, KEEP_ALIVE};
pub use tls::{ClientTls, TlsError, TlsFiles};

/// Largest MQTT payload the embedded broker takes. Larger publishes close the
/// sender's connection (rumqttd's rule); 2 MiB leaves room for hostile tests.
pub const MAX_PAYLOAD_SIZE: usize = 2 * 1024 * 1024;

/// A free TCP port on 127.0.0.1, for tests and benchmarks: the OS picks it,
/// and it is released before returning, so a race with another process is
/// possible but unlikely.
pub fn probe_free_port() -> std::io::Result<u16> {
    let listener = StdTcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}
