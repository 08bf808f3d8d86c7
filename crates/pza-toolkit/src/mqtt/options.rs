//! Where a client connects ([`BrokerEndpoint`]) and the rumqttc options made
//! from it: keep-alive, clean session, credentials, last will and TLS.

use std::time::Duration;

use rumqttc::{LastWill, MqttOptions, QoS, TlsConfiguration, Transport};

use super::tls::ClientTls;
use super::MAX_PAYLOAD_SIZE;

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
