//! The embedded MQTT broker (rumqttd), started on a socket bound here and
//! stopped once the messages it received are on their way.
//!
//! rumqttd's own `Broker::start` blocks a thread forever and only logs a bind
//! failure, so it is driven here from its parts: the router runs on its own
//! thread, and the v4 server runs as a task of the caller's runtime on a
//! listening socket bound here. That gives three things a server needs: a
//! clear error when the port is taken, a start that returns only once the
//! broker accepts connections, and a `stop` that closes the listener. The
//! rumqttd used is a patched copy (vendor/rumqttd/PATCHES.md): it hands a new
//! subscription every retained message, and serves a listener bound here.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener as StdTcpListener};
use std::time::Duration;

use rumqttc::QoS;
use rumqttd::protocol::v4::V4;
use rumqttd::{LinkType, Router, Server};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::task::JoinHandle;

use super::options::{client_options, BrokerEndpoint};
use super::MAX_PAYLOAD_SIZE;

/// Longest wait for the broker to route messages already received, at stop.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(1);

/// Pause before the drain's round trip is tried again after an error.
const DRAIN_RETRY: Duration = Duration::from_millis(10);

/// Time left to the broker's connection tasks after the drain, at stop.
const DRAIN_LINGER: Duration = Duration::from_millis(100);

/// Packets the router hands a connection per round (rumqttd's
/// `max_outgoing_packet_count`); the patched copy hands a new subscription
/// every retained message past it all the same (vendor/rumqttd/PATCHES.md).
const MAX_OUTGOING_PACKET_COUNT: u64 = 200;

/// Size of one segment of the router's commit log, and the number of
/// segments it keeps per filter before dropping the oldest.
const MAX_SEGMENT_SIZE: usize = 100 * 1024 * 1024;
const MAX_SEGMENT_COUNT: usize = 10;

/// Time a new TCP connection has to send its CONNECT packet, in ms.
const CONNECTION_TIMEOUT_MS: u16 = 60_000;

/// rumqttd's `max_inflight_count`: despite its name, the most packets a
/// connection's network buffer takes in one read (`max_connection_buffer_len`).
const MAX_INFLIGHT_COUNT: usize = 500;

/// Most simultaneous client connections of the embedded broker.
const MAX_CONNECTIONS: usize = 20_000;

/// Backlog of the embedded broker's listening socket. Tokio's `bind` listens
/// with 128: a thousand runners connecting at once overflow it, and the
/// dropped SYNs are retried after 1 s, then 3 s. The kernel caps it to its
/// own limit (`somaxconn` on Linux, 4096 by default).
const LISTEN_BACKLOG: i32 = 4096;

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("cannot start the embedded MQTT broker on {addr}: address already in use")]
    AddrInUse { addr: SocketAddr },
    #[error("cannot start the embedded MQTT broker on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// A running embedded MQTT broker (MQTT 3.1.1, plain TCP).
pub struct EmbeddedBroker {
    addr: SocketAddr,
    listener: JoinHandle<()>,
}

impl EmbeddedBroker {
    /// Starts the broker on `addr` and returns once it accepts TCP connections.
    /// `credentials`, when given, are the only (username, password) pairs accepted.
    /// Port 0 picks a free port: [`EmbeddedBroker::addr`] tells which.
    pub async fn start(
        addr: SocketAddr,
        credentials: Option<(String, String)>,
    ) -> Result<EmbeddedBroker, BrokerError> {
        let bind_error = |source: std::io::Error| {
            if source.kind() == std::io::ErrorKind::AddrInUse {
                BrokerError::AddrInUse { addr }
            } else {
                BrokerError::Bind { addr, source }
            }
        };
        let listener = listen(addr).map_err(bind_error)?;
        let addr = listener.local_addr().map_err(bind_error)?;

        let router_config = rumqttd::RouterConfig {
            max_connections: MAX_CONNECTIONS,
            max_outgoing_packet_count: MAX_OUTGOING_PACKET_COUNT,
            max_segment_size: MAX_SEGMENT_SIZE,
            max_segment_count: MAX_SEGMENT_COUNT,
            ..Default::default()
        };
        let router_tx = Router::new(0, router_config).spawn();
        let settings = rumqttd::ServerSettings {
            name: format!("embedded-{addr}"),
            listen: addr,
            tls: None,
            next_connection_delay_ms: 0,
            connections: rumqttd::ConnectionSettings {
                connection_timeout_ms: CONNECTION_TIMEOUT_MS,
                max_payload_size: MAX_PAYLOAD_SIZE,
                max_inflight_count: MAX_INFLIGHT_COUNT,
                auth: credentials.map(|(user, pass)| HashMap::from([(user, pass)])),
                external_auth: None,
                dynamic_filters: true,
            },
        };
        let mut server = Server::new(settings, router_tx, V4);
        // The socket listens already: a connection made from now on waits in
        // its backlog until the server task accepts it.
        let listener = tokio::spawn(async move {
            if let Err(e) = server.serve(listener, LinkType::Remote).await {
                tracing::error!(%addr, error = %e, "embedded MQTT broker stopped");
            }
        });
        tracing::info!(%addr, "embedded MQTT broker accepts connections");
        Ok(EmbeddedBroker { addr, listener })
    }

    /// Sends one message through the broker to itself. The router handles
    /// messages in order, so once it comes back, every message received
    /// before it has been handed to its subscribers' connections. Without
    /// this, a process that exits right after its last publish (a `Stopped`
    /// status) could take those messages with it.
    async fn drain(&self) -> Result<(), String> {
        let topic = format!("pza-toolkit/drain/{:016x}", rand::random::<u64>());
        let endpoint = BrokerEndpoint::tcp(self.addr.ip().to_string(), self.addr.port());
        let options = client_options(
            &format!("pza-drain-{:08x}", rand::random::<u32>()),
            &endpoint,
            None,
        );
        let (client, mut eventloop) = rumqttc::AsyncClient::new(options, 10);
        let mut failure = None;
        let round_trip = async {
            loop {
                let failed = match eventloop.poll().await {
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_))) => client
                        .try_subscribe(topic.clone(), QoS::AtLeastOnce)
                        .err()
                        .map(|e| e.to_string()),
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_))) => client
                        .try_publish(topic.clone(), QoS::AtLeastOnce, false, Vec::new())
                        .err()
                        .map(|e| e.to_string()),
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p)))
                        if p.topic == topic =>
                    {
                        let _ = client.try_disconnect();
                        return;
                    }
                    Ok(_) => None,
                    Err(e) => Some(e.to_string()),
                };
                // Tried again (the next poll reconnects) until the timeout,
                // a moment later so that a lasting failure does not spin.
                if let Some(cause) = failed {
                    failure = Some(cause);
                    tokio::time::sleep(DRAIN_RETRY).await;
                }
            }
        };
        let drained = tokio::time::timeout(DRAIN_TIMEOUT, round_trip).await;
        // The router serves connections in its own order, and rumqttd does not
        // tell when a connection task has written what it was handed: leave
        // them a moment to do so.
        tokio::time::sleep(DRAIN_LINGER).await;
        match (drained, failure) {
            (Ok(()), _) => Ok(()),
            (Err(_), Some(cause)) => Err(format!(
                "no round trip within {DRAIN_TIMEOUT:?}, last error: {cause}"
            )),
            (Err(_), None) => Err(format!("no round trip within {DRAIN_TIMEOUT:?}")),
        }
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
        if let Err(cause) = self.drain().await {
            tracing::warn!(addr = %self.addr, %cause, "the embedded MQTT broker did not drain");
        }
        self.listener.abort();
        let _ = self.listener.await;
        tracing::info!(addr = %self.addr, "embedded MQTT broker stopped");
    }
}

/// A listening socket on `addr` with a backlog of [`LISTEN_BACKLOG`],
/// registered with the caller's runtime.
fn listen(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    // As tokio's `bind` does: a restarted server takes its port back while
    // the previous one's connections are in TIME_WAIT. On Windows the option
    // would let two listeners share the port instead, so it stays off there.
    #[cfg(not(windows))]
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    tokio::net::TcpListener::from_std(StdTcpListener::from(socket))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mqtt::probe_free_port;
    use rumqttc::{AsyncClient, Event, Packet};

    #[tokio::test]
    async fn starts_and_routes_a_retained_message() {
        let port = probe_free_port().unwrap();
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let broker = EmbeddedBroker::start(addr, None).await.unwrap();
        let endpoint = BrokerEndpoint::tcp("127.0.0.1", port);
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

    /// Drives `eventloop` until `wanted` PUBACKs came back.
    async fn wait_pubacks(eventloop: &mut rumqttc::EventLoop, wanted: usize) {
        let mut acked = 0;
        while acked < wanted {
            if let Event::Incoming(Packet::PubAck(_)) = eventloop.poll().await.unwrap() {
                acked += 1;
            }
        }
    }

    /// The distinct retained topics a new subscription to `filter` at `qos`
    /// receives, until `expected` arrived or nothing came for a while.
    async fn retained_received(port: u16, filter: &str, qos: QoS, expected: usize) -> usize {
        let endpoint = BrokerEndpoint::tcp("127.0.0.1", port);
        let id = format!("sub-{:08x}", rand::random::<u32>());
        let (client, mut eventloop) = AsyncClient::new(client_options(&id, &endpoint, None), 10);
        client.subscribe(filter, qos).await.unwrap();
        let mut topics = std::collections::HashSet::new();
        // Only a bound on a hang: every message is expected, so the loop
        // ends on the count; a missing one ends it on this silence instead.
        let quiet = Duration::from_secs(2);
        while topics.len() < expected {
            match tokio::time::timeout(quiet, eventloop.poll()).await {
                Ok(Ok(Event::Incoming(Packet::Publish(p)))) => {
                    assert!(p.retain, "{} came without the retain flag", p.topic);
                    topics.insert(p.topic);
                }
                Ok(Ok(_)) => {}
                Ok(Err(e)) => panic!("subscriber to {filter}: {e}"),
                Err(_) => break,
            }
        }
        let _ = client.disconnect().await;
        topics.len()
    }

    /// rumqttd 0.20 as published handed a new subscription at most 100
    /// retained messages at QoS 1 (its in-flight window) and 200 at QoS 0
    /// (`max_outgoing_packet_count`): the patched copy hands all of them.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_new_subscription_receives_every_retained_message() {
        const DEVICES: usize = 600;
        let addr: SocketAddr = ([127, 0, 0, 1], 0).into();
        let broker = EmbeddedBroker::start(addr, None).await.unwrap();
        let port = broker.addr().port();
        let endpoint = BrokerEndpoint::tcp("127.0.0.1", port);
        let (publisher, mut publisher_loop) =
            AsyncClient::new(client_options("retainer", &endpoint, None), 10);
        let publishing = tokio::spawn(async move {
            for i in 0..DEVICES {
                for leaf in ["status", "state"] {
                    publisher
                        .publish(format!("dev/{i:04}/{leaf}"), QoS::AtLeastOnce, true, "x")
                        .await
                        .unwrap();
                }
            }
            publisher
        });
        wait_pubacks(&mut publisher_loop, 2 * DEVICES).await;
        let _publisher = publishing.await.unwrap();
        for qos in [QoS::AtMostOnce, QoS::AtLeastOnce] {
            assert_eq!(
                retained_received(port, "dev/+/status", qos, DEVICES).await,
                DEVICES,
                "dev/+/status at {qos:?}"
            );
            assert_eq!(
                retained_received(port, "dev/#", qos, 2 * DEVICES).await,
                2 * DEVICES,
                "dev/# at {qos:?}"
            );
        }
        broker.stop().await;
    }

    #[tokio::test]
    async fn port_zero_picks_a_free_port() {
        let addr: SocketAddr = ([127, 0, 0, 1], 0).into();
        let broker = EmbeddedBroker::start(addr, None).await.unwrap();
        assert_ne!(broker.addr().port(), 0);
        tokio::net::TcpStream::connect(broker.addr()).await.unwrap();
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
