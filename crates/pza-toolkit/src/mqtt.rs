//! MQTT plumbing: the embedded broker (rumqttd) and client options,
//! including TLS to an external broker.
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
use std::fmt;
use std::net::{SocketAddr, TcpListener as StdTcpListener};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rumqttc::{LastWill, MqttOptions, QoS, TlsConfiguration, Transport};
use rumqttd::protocol::v4::V4;
use rumqttd::{LinkType, Router, Server};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::task::JoinHandle;

/// Longest wait for the broker to route messages already received, at stop.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(1);

/// Time left to the broker's connection tasks after the drain, at stop.
const DRAIN_LINGER: Duration = Duration::from_millis(100);

/// Largest MQTT payload the embedded broker takes. Larger publishes close the
/// sender's connection (rumqttd's rule); 2 MiB leaves room for hostile tests.
pub const MAX_PAYLOAD_SIZE: usize = 2 * 1024 * 1024;

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
    async fn drain(&self) -> bool {
        let topic = format!("pza-toolkit/drain/{:016x}", rand::random::<u64>());
        let endpoint = BrokerEndpoint::tcp(self.addr.ip().to_string(), self.addr.port());
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

/// Where and how a client connects to a broker.
#[derive(Debug, Clone, PartialEq)]
pub struct BrokerEndpoint {
    pub host: String,
    pub port: u16,
    pub username: Option<String>,
    pub password: Option<String>,
    /// TLS to the broker; `None` is plain TCP.
    pub tls: Option<ClientTls>,
}

impl BrokerEndpoint {
    /// Plain TCP to `host:port`, with no credentials.
    pub fn tcp(host: impl Into<String>, port: u16) -> Self {
        BrokerEndpoint {
            host: host.into(),
            port,
            username: None,
            password: None,
            tls: None,
        }
    }
}

/// The PEM files of a TLS connection to a broker: the CA certificates that
/// the broker's certificate must chain to, and an optional client
/// certificate with its private key (for brokers that require one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub ca_file: PathBuf,
    pub client_cert_file: Option<PathBuf>,
    pub client_key_file: Option<PathBuf>,
}

/// Why a TLS client configuration cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {what}", path.display())]
    Pem { path: PathBuf, what: String },
    #[error("a client certificate needs its private key, and a key its certificate")]
    Unpaired,
    #[error("{}: {source}", path.display())]
    Rejected {
        path: PathBuf,
        source: rustls::Error,
    },
}

/// A TLS client configuration (rustls with the `ring` provider), loaded once
/// from [`TlsFiles`] and shared by every connection to the broker.
#[derive(Clone)]
pub struct ClientTls(Arc<rustls::ClientConfig>);

impl ClientTls {
    /// Reads and checks the files. The broker's certificate is then verified
    /// against the CA, for the host name or IP address the client connects to.
    pub fn load(files: &TlsFiles) -> Result<ClientTls, TlsError> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in read_certificates(&files.ca_file)? {
            roots.add(cert).map_err(|source| TlsError::Rejected {
                path: files.ca_file.clone(),
                source,
            })?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|source| TlsError::Rejected {
                path: files.ca_file.clone(),
                source,
            })?
            .with_root_certificates(roots);
        let config = match (&files.client_cert_file, &files.client_key_file) {
            (None, None) => builder.with_no_client_auth(),
            (Some(cert_file), Some(key_file)) => {
                let certs = read_certificates(cert_file)?;
                let key = read_private_key(key_file)?;
                builder
                    .with_client_auth_cert(certs, key)
                    .map_err(|source| TlsError::Rejected {
                        path: key_file.clone(),
                        source,
                    })?
            }
            _ => return Err(TlsError::Unpaired),
        };
        Ok(ClientTls(Arc::new(config)))
    }
}

impl fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClientTls")
    }
}

impl PartialEq for ClientTls {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

fn read_pem_file(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Every certificate of a PEM file; at least one.
fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read_pem_file(path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            path: path.to_path_buf(),
            what: format!("not a PEM certificate file ({e})"),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            path: path.to_path_buf(),
            what: "no PEM certificate in the file".into(),
        });
    }
    Ok(certs)
}

/// The first private key of a PEM file (PKCS#8, PKCS#1 or SEC1).
fn read_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read_pem_file(path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| TlsError::Pem {
        path: path.to_path_buf(),
        what: match e {
            rustls::pki_types::pem::Error::NoItemsFound => "no PEM private key in the file".into(),
            other => format!("not a PEM private key file ({other})"),
        },
    })
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
    if let Some(tls) = &endpoint.tls {
        options.set_transport(Transport::Tls(TlsConfiguration::Rustls(tls.0.clone())));
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

    #[test]
    fn tls_files_are_checked() {
        let dir = std::env::temp_dir().join(format!("pza-tls-{:08x}", rand::random::<u32>()));
        std::fs::create_dir_all(&dir).unwrap();
        let text = dir.join("text.pem");
        std::fs::write(&text, "not a certificate\n").unwrap();
        let files = |ca: &Path, cert: Option<&Path>, key: Option<&Path>| TlsFiles {
            ca_file: ca.to_path_buf(),
            client_cert_file: cert.map(Path::to_path_buf),
            client_key_file: key.map(Path::to_path_buf),
        };
        let missing = dir.join("missing.pem");
        let err = ClientTls::load(&files(&missing, None, None)).unwrap_err();
        assert!(
            matches!(err, TlsError::Read { ref path, .. } if *path == missing),
            "{err}"
        );
        let err = ClientTls::load(&files(&text, None, None)).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("{}: no PEM certificate in the file", text.display())
        );
        let err = ClientTls::load(&files(&text, Some(&text), None)).unwrap_err();
        assert!(matches!(err, TlsError::Pem { .. }), "{err}");
        let _ = std::fs::remove_dir_all(dir);
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
