//! [`Client`]: one connection to a broker, shared by every handle made from it.

use std::sync::Arc;
use std::time::Duration;

use rumqttc::{AsyncClient, MqttOptions, TlsConfiguration, Transport};
use tokio::time::Instant;

use crate::connection::{self, AbortOnDrop, LinkState, Shared};
use crate::error::{Error, Result};
use crate::options::ClientOptions;
use crate::power_supply::PowerSupply;
use crate::state::Snapshot;
use crate::watch::Watch;

/// Keep-alive interval: a dead connection is noticed within about 1.5 times it.
const KEEP_ALIVE: Duration = Duration::from_secs(10);

/// Capacity of rumqttc's request channel: room for many commands in flight.
const REQUEST_CAPACITY: usize = 1024;

/// Largest packet accepted or sent; far above any message of the API.
const MAX_PACKET_SIZE: usize = 1024 * 1024;

/// What every handle of one client holds: the shared state, and the event
/// loop task, stopped when the last handle goes.
pub(crate) struct Inner {
    pub(crate) shared: Arc<Shared>,
    pub(crate) timeout: Duration,
    _task: AbortOnDrop,
}

/// A connection to the broker of one or more pza-power-supply servers.
///
/// Cheap to clone: clones, [`PowerSupply`] handles and [`Watch`] streams share
/// the one MQTT connection, which closes when the last of them is dropped.
///
/// ```no_run
/// use pza_power_supply_client::{Client, ClientOptions};
///
/// # async fn demo() -> Result<(), pza_power_supply_client::Error> {
/// let client = Client::connect(ClientOptions::new("127.0.0.1", 1883)).await?;
/// for name in client.list().await? {
///     println!("{name}");
/// }
/// let v = client.power_supply("emulator").set_voltage(5.0).await?;
/// println!("read back: {v} V");
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("broker", &self.inner.shared.broker)
            .field("namespace", &self.inner.shared.namespace)
            .field("connected", &self.is_connected())
            .finish()
    }
}

impl Client {
    /// Connects, subscribes, and receives the retained state of every power
    /// supply, all within `options.timeout`. Later connection losses are
    /// repaired in the background (with backoff).
    ///
    /// Fails with [`Error::BrokerUnreachable`] if the broker does not answer
    /// in time, [`Error::ConnectionRefused`] if it refuses the connection,
    /// [`Error::InvalidArgument`] or [`Error::Tls`] for bad options.
    pub async fn connect(options: ClientOptions) -> Result<Client> {
        check_namespace(options.namespace.as_deref())?;
        if options.timeout.is_zero() {
            return Err(Error::InvalidArgument {
                field: "timeout",
                reason: "must be more than 0".into(),
            });
        }
        let client_id = options
            .client_id
            .clone()
            .unwrap_or_else(|| format!("pza-client-{:016x}", rand::random::<u64>()));
        let mut mqtt_options = MqttOptions::new(&client_id, options.host.clone(), options.port);
        mqtt_options.set_keep_alive(KEEP_ALIVE);
        mqtt_options.set_clean_session(true);
        mqtt_options.set_max_packet_size(MAX_PACKET_SIZE, MAX_PACKET_SIZE);
        if let Some(user) = &options.username {
            mqtt_options
                .set_credentials(user.clone(), options.password.clone().unwrap_or_default());
        }
        if let Some(files) = &options.tls {
            let config = crate::tls::client_config(files)?;
            mqtt_options.set_transport(Transport::Tls(TlsConfiguration::Rustls(config)));
        }
        let (mqtt, mut eventloop) = AsyncClient::new(mqtt_options, REQUEST_CAPACITY);
        // Without it, a command written right after another one waits for
        // the broker's delayed ACK (40 ms on Linux).
        let mut network = rumqttc::NetworkOptions::new();
        network.set_tcp_nodelay(true);
        network.set_connection_timeout(options.timeout.as_secs().max(1));
        eventloop.set_network_options(network);

        let shared = Arc::new(Shared::new(
            mqtt,
            options.namespace.clone(),
            options.broker(),
            &client_id,
        ));
        let task = tokio::spawn(connection::run(eventloop, shared.clone()));
        let client = Client {
            inner: Arc::new(Inner {
                shared,
                timeout: options.timeout,
                _task: AbortOnDrop(task),
            }),
        };
        client
            .inner
            .shared
            .wait_ready(Instant::now() + options.timeout, options.timeout)
            .await?;
        Ok(client)
    }

    /// The names of the power supplies seen on the broker (a retained
    /// status or info), sorted.
    pub async fn list(&self) -> Result<Vec<String>> {
        Ok(self
            .snapshots()
            .await?
            .into_iter()
            .map(|s| s.name)
            .collect())
    }

    /// The state of every power supply seen on the broker, sorted by name.
    pub async fn snapshots(&self) -> Result<Vec<Snapshot>> {
        self.ready().await?;
        Ok(self
            .inner
            .shared
            .with_store(|store| store.listed().cloned().collect()))
    }

    /// A handle on the power supply `name`; no I/O. Its commands use the
    /// client's timeout ([`PowerSupply::with_timeout`] changes it).
    pub fn power_supply(&self, name: impl Into<String>) -> PowerSupply {
        PowerSupply::new(self.inner.clone(), name.into())
    }

    /// Every update of every power supply, from now on.
    pub fn watch_all(&self) -> Watch {
        Watch::new(self.inner.clone(), None)
    }

    /// Connected, subscribed and in sync with the retained state.
    pub fn is_connected(&self) -> bool {
        self.inner.shared.link_state() == LinkState::Ready
    }

    /// The namespace given in the options.
    pub fn namespace(&self) -> Option<&str> {
        self.inner.shared.namespace.as_deref()
    }

    /// Disconnects cleanly (an MQTT `DISCONNECT`, then the connection task
    /// stops), for this client and every handle made from it: their calls
    /// then fail with [`Error::Closed`], and commands still waiting end with
    /// [`Error::ConnectionLost`]. Dropping the last handle closes the
    /// connection too, without the `DISCONNECT`.
    ///
    /// While the broker is out of reach there is nothing to disconnect: the
    /// connection task is then left to stop with the last handle.
    pub async fn close(self) -> Result<()> {
        if self.inner.shared.link_state() != LinkState::Ready {
            return Ok(());
        }
        self.inner.shared.mqtt.disconnect().await?;
        if !self.inner.shared.wait_closed(self.inner.timeout).await {
            tracing::debug!(
                "the DISCONNECT to {} was not sent in time",
                self.inner.shared.broker
            );
        }
        Ok(())
    }

    async fn ready(&self) -> Result<()> {
        let timeout = self.inner.timeout;
        self.inner
            .shared
            .wait_ready(Instant::now() + timeout, timeout)
            .await
    }
}

/// A namespace is one or more topic levels, without wildcards.
fn check_namespace(namespace: Option<&str>) -> Result<()> {
    let Some(ns) = namespace else { return Ok(()) };
    let reason = if ns.contains(['+', '#']) {
        "must not contain the MQTT wildcards + or #"
    } else if ns.starts_with('/') || ns.ends_with('/') || ns.contains("//") {
        "must not start or end with /, nor have an empty level"
    } else if ns.contains('\0') {
        "must not contain a NUL character"
    } else {
        return Ok(());
    };
    Err(Error::InvalidArgument {
        field: "namespace",
        reason: format!("\"{ns}\" {reason}"),
    })
}

/// A power supply name is one topic level: 1 to 64 characters of
/// `[A-Za-z0-9_-]`, as the server's config requires.
pub(crate) fn check_name(name: &str) -> Result<()> {
    const MAX_NAME_LEN: usize = 64;
    let valid = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if valid {
        Ok(())
    } else {
        Err(Error::InvalidArgument {
            field: "name",
            reason: format!(
                "\"{}\" is not a power supply name (1 to {MAX_NAME_LEN} of A-Z a-z 0-9 _ -)",
                name.escape_default()
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_namespaces_are_checked() {
        assert!(check_name("psu-1_A").is_ok());
        for bad in ["", "a/b", "a+", "#", "é", &"x".repeat(65)] {
            let err = check_name(bad).unwrap_err();
            assert!(err.to_string().starts_with("invalid name: "), "{err}");
        }
        assert!(check_namespace(None).is_ok());
        assert!(check_namespace(Some("lab/bench-3")).is_ok());
        for bad in ["a/+", "#", "/a", "a/", "a//b"] {
            let err = check_namespace(Some(bad)).unwrap_err();
            assert!(err.to_string().starts_with("invalid namespace: "), "{err}");
        }
    }
}
