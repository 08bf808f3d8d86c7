//! MQTT plumbing: the embedded broker (rumqttd) and client options.
//!
//! rumqttd's own `Broker::start` blocks a thread forever and only logs a bind
//! failure, so it is driven here from its parts: the router runs on its own
//! thread, and the v4 listener runs as a task of the caller's runtime. That
//! gives three things a server needs: a clear error when the port is taken,
//! a start that returns only once the broker accepts connections, and a
//! `stop` that closes the listener.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener as StdTcpListener};
use std::time::Duration;

use rumqttc::{LastWill, MqttOptions, QoS};
use rumqttd::protocol::v4::V4;
use rumqttd::{LinkType, Router, Server};
use tokio::task::JoinHandle;

/// How long `EmbeddedBroker::start` waits for the listener to accept.
const READY_TIMEOUT: Duration = Duration::from_secs(5);

/// First pause between two readiness probes; it doubles up to `READY_PROBE_MAX`.
const READY_PROBE_FIRST: Duration = Duration::from_millis(1);
const READY_PROBE_MAX: Duration = Duration::from_millis(50);

/// Longest wait for the broker to route messages already received, at stop.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(1);

/// Time left to the broker's connection tasks after the drain, at stop.
const DRAIN_LINGER: Duration = Duration::from_millis(100);

/// Largest MQTT payload the embedded broker takes. Larger publishes close the
/// sender's connection (rumqttd's rule); 2 MiB leaves room for hostile tests.
pub const MAX_PAYLOAD_SIZE: usize = 2 * 1024 * 1024;

/// Most simultaneous client connections of the embedded broker.
const MAX_CONNECTIONS: usize = 20_000;

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("cannot start the embedded MQTT broker on {addr}: address already in use")]
    AddrInUse { addr: SocketAddr },
    #[error("cannot start the embedded MQTT broker on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("the embedded MQTT broker on {addr} stopped before accepting connections: {reason}")]
    Died { addr: SocketAddr, reason: String },
    #[error("the embedded MQTT broker on {addr} did not accept connections within {timeout:?}")]
    NotReady { addr: SocketAddr, timeout: Duration },
}

/// A running embedded MQTT broker (MQTT 3.1.1, plain TCP).
pub struct EmbeddedBroker {
    addr: SocketAddr,
    listener: JoinHandle<()>,
}

impl EmbeddedBroker {
    /// Starts the broker on `addr` and returns once it accepts TCP connections.
    /// `credentials`, when given, are the only (username, password) pairs accepted.
    pub async fn start(
        addr: SocketAddr,
        credentials: Option<(String, String)>,
    ) -> Result<EmbeddedBroker, BrokerError> {
        // rumqttd binds inside its listener task and only logs a failure, so
        // find out first whether the port is free, to fail with a clear cause.
        match StdTcpListener::bind(addr) {
            Ok(probe) => drop(probe),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                return Err(BrokerError::AddrInUse { addr })
            }
            Err(source) => return Err(BrokerError::Bind { addr, source }),
        }

        let router_config = rumqttd::RouterConfig {
            max_connections: MAX_CONNECTIONS,
            max_outgoing_packet_count: 200,
            max_segment_size: 100 * 1024 * 1024,
            max_segment_count: 10,
            ..Default::default()
        };
        let router_tx = Router::new(0, router_config).spawn();
        let settings = rumqttd::ServerSettings {
            name: format!("embedded-{addr}"),
            listen: addr,
            tls: None,
            next_connection_delay_ms: 0,
            connections: rumqttd::ConnectionSettings {
                connection_timeout_ms: 60_000,
                max_payload_size: MAX_PAYLOAD_SIZE,
                max_inflight_count: 500,
                auth: credentials.map(|(user, pass)| HashMap::from([(user, pass)])),
                external_auth: None,
                dynamic_filters: true,
            },
        };
        let mut server = Server::new(settings, router_tx, V4);
        let mut listener = tokio::spawn(async move {
            if let Err(e) = server.start(LinkType::Remote).await {
                tracing::error!(%addr, error = %e, "embedded MQTT broker stopped");
            }
        });

        let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
        let mut pause = READY_PROBE_FIRST;
        loop {
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                tracing::info!(%addr, "embedded MQTT broker accepts connections");
                return Ok(EmbeddedBroker { addr, listener });
            }
            if tokio::time::Instant::now() >= deadline {
                listener.abort();
                return Err(BrokerError::NotReady {
                    addr,
                    timeout: READY_TIMEOUT,
                });
            }
            tokio::select! {
                ended = &mut listener => {
                    let reason = match ended {
                        Ok(()) => "its listener ended (see the log)".to_string(),
                        Err(e) => e.to_string(),
                    };
                    return Err(BrokerError::Died { addr, reason });
                }
                _ = tokio::time::sleep(pause) => {}
            }
            pause = (pause * 2).min(READY_PROBE_MAX);
        }
    }

    /// Sends one message through the broker to itself. The router handles
    /// messages in order, so once it comes back, every message received
    /// before it has been handed to its subscribers' connections. Without
    /// this, a process that exits right after its last publish (a `Stopped`
    /// status) could take those messages with it.
    async fn drain(&self) -> bool {
        let topic = format!("pza-toolkit/drain/{:016x}", rand::random::<u64>());
        let endpoint = BrokerEndpoint {
            host: self.addr.ip().to_string(),
            port: self.addr.port(),
            username: None,
            password: None,
        };
        let options = client_options(
            &format!("pza-drain-{:08x}", rand::random::<u32>()),
            &endpoint,
            None,
        );
        let (client, mut eventloop) = rumqttc::AsyncClient::new(options, 10);
        let round_trip = async {
            loop {
                match eventloop.poll().await {
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_))) => {
                        client.try_subscribe(topic.clone(), QoS::AtLeastOnce).ok()?;
                    }
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_))) => {
                        client
                            .try_publish(topic.clone(), QoS::AtLeastOnce, false, Vec::new())
                            .ok()?;
                    }
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p)))
                        if p.topic == topic =>
                    {
                        let _ = client.try_disconnect();
                        return Some(());
                    }
                    Ok(_) => {}
                    Err(_) => return None,
                }
            }
        };
        let drained = tokio::time::timeout(DRAIN_TIMEOUT, round_trip)
            .await
            .ok()
            .flatten()
            .is_some();
        // The router serves connections in its own order, and rumqttd does not
        // tell when a connection task has written what it was handed: leave
        // them a moment to do so.
        tokio::time::sleep(DRAIN_LINGER).await;
        drained
    }

    /// The address the broker listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting connections, once the messages already received are
    /// on their way to their subscribers. Connections still open end when
    /// their clients disconnect, or with the process; rumqttd offers no way to
    /// cut them from outside.
    pub async fn stop(self) {
        if !self.drain().await {
            tracing::warn!(addr = %self.addr, "the embedded MQTT broker did not drain in time");
        }
        self.listener.abort();
        let _ = self.listener.await;
        tracing::info!(addr = %self.addr, "embedded MQTT broker stopped");
    }
}

/// Where and how a client connects to a broker.
#[derive(Debug, Clone, PartialEq)]
pub struct BrokerEndpoint {
    pub host: String,
    pub port: u16,
    pub username: Option<String>,
    pub password: Option<String>,
}

/// Keep-alive interval of the clients made by [`client_options`].
pub const KEEP_ALIVE: Duration = Duration::from_secs(10);

/// Client options for `endpoint`, with a clean session and the given id.
/// `will`, when given, is published by the broker if the client vanishes.
pub fn client_options(
    client_id: &str,
    endpoint: &BrokerEndpoint,
    will: Option<(String, Vec<u8>)>,
) -> MqttOptions {
    let mut options = MqttOptions::new(client_id, endpoint.host.clone(), endpoint.port);
    options.set_keep_alive(KEEP_ALIVE);
    options.set_clean_session(true);
    options.set_max_packet_size(MAX_PAYLOAD_SIZE + 1024, MAX_PAYLOAD_SIZE + 1024);
    if let Some(user) = &endpoint.username {
        options.set_credentials(user.clone(), endpoint.password.clone().unwrap_or_default());
    }
    if let Some((topic, payload)) = will {
        options.set_last_will(LastWill::new(topic, payload, QoS::AtLeastOnce, true));
    }
    options
}

/// A free TCP port on 127.0.0.1, for tests and benchmarks: the OS picks it,
/// and it is released before returning, so a race with another process is
/// possible but unlikely.
pub fn probe_free_port() -> std::io::Result<u16> {
    let listener = StdTcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rumqttc::{AsyncClient, Event, Packet};

    #[tokio::test]
    async fn starts_and_routes_a_retained_message() {
        let port = probe_free_port().unwrap();
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let broker = EmbeddedBroker::start(addr, None).await.unwrap();
        let endpoint = BrokerEndpoint {
            host: "127.0.0.1".into(),
            port,
            username: None,
            password: None,
        };
        let (publisher, mut publisher_loop) =
            AsyncClient::new(client_options("pub", &endpoint, None), 10);
        publisher
            .publish("t/x", QoS::AtLeastOnce, true, "hello")
            .await
            .unwrap();
        // Drive the publisher until its publish is acknowledged.
        loop {
            if let Event::Incoming(Packet::PubAck(_)) = publisher_loop.poll().await.unwrap() {
                break;
            }
        }
        let (subscriber, mut subscriber_loop) =
            AsyncClient::new(client_options("sub", &endpoint, None), 10);
        subscriber.subscribe("t/#", QoS::AtLeastOnce).await.unwrap();
        let received = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                if let Event::Incoming(Packet::Publish(p)) = subscriber_loop.poll().await.unwrap() {
                    return p;
                }
            }
        })
        .await
        .unwrap();
        assert_eq!(received.topic, "t/x");
        assert_eq!(&received.payload[..], b"hello");
        broker.stop().await;
    }

    #[tokio::test]
    async fn port_in_use_is_a_clear_error() {
        let taken = StdTcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap();
        let err = EmbeddedBroker::start(addr, None).await.err().unwrap();
        assert!(matches!(err, BrokerError::AddrInUse { .. }), "{err}");
        assert_eq!(
            err.to_string(),
            format!("cannot start the embedded MQTT broker on {addr}: address already in use")
        );
    }
}
