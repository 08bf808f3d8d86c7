//! Where and how a [`Client`](crate::Client) connects.

use std::path::PathBuf;
use std::time::Duration;

/// The time allowed to connect, and to each command for its reply, unless
/// set otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// The PEM files of a TLS connection: the CA the broker's certificate must
/// chain to, and an optional client certificate with its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub ca_file: PathBuf,
    pub client_cert_file: Option<PathBuf>,
    pub client_key_file: Option<PathBuf>,
}

/// Connection options, built from [`ClientOptions::new`] and the setters.
///
/// ```
/// use std::time::Duration;
/// use pza_power_supply_client::ClientOptions;
///
/// let options = ClientOptions::new("127.0.0.1", 1883)
///     .namespace("bench-3")
///     .credentials("lab", "secret")
///     .timeout(Duration::from_secs(2));
/// assert_eq!(options.broker(), "127.0.0.1:1883");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientOptions {
    pub host: String,
    pub port: u16,
    /// Topic prefix of the server (`namespace` in its config).
    pub namespace: Option<String>,
    pub username: Option<String>,
    pub password: Option<String>,
    /// TLS to the broker; `None` is plain TCP.
    pub tls: Option<TlsFiles>,
    /// The time allowed to connect, and to each command for its reply.
    pub timeout: Duration,
    /// The MQTT client id; a random `pza-client-…` one when `None`.
    pub client_id: Option<String>,
}

impl ClientOptions {
    /// Plain TCP to `host:port`, no namespace, no credentials,
    /// [`DEFAULT_TIMEOUT`].
    pub fn new(host: impl Into<String>, port: u16) -> Self {
        ClientOptions {
            host: host.into(),
            port,
            namespace: None,
            username: None,
            password: None,
            tls: None,
            timeout: DEFAULT_TIMEOUT,
            client_id: None,
        }
    }

    /// The server's topic prefix; an empty one means none.
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        let namespace = namespace.into();
        self.namespace = (!namespace.is_empty()).then_some(namespace);
        self
    }

    pub fn credentials(mut self, username: impl Into<String>, password: impl Into<String>) -> Self {
        self.username = Some(username.into());
        self.password = Some(password.into());
        self
    }

    /// TLS, verifying the broker against the CA certificate(s) of `ca_file`.
    pub fn tls_ca(mut self, ca_file: impl Into<PathBuf>) -> Self {
        let files = self.tls.get_or_insert_with(|| TlsFiles {
            ca_file: PathBuf::new(),
            client_cert_file: None,
            client_key_file: None,
        });
        files.ca_file = ca_file.into();
        self
    }

    /// TLS with a client certificate (for brokers that require one); needs
    /// [`tls_ca`](Self::tls_ca) too.
    pub fn tls_client_auth(
        mut self,
        cert_file: impl Into<PathBuf>,
        key_file: impl Into<PathBuf>,
    ) -> Self {
        let files = self.tls.get_or_insert_with(|| TlsFiles {
            ca_file: PathBuf::new(),
            client_cert_file: None,
            client_key_file: None,
        });
        files.client_cert_file = Some(cert_file.into());
        files.client_key_file = Some(key_file.into());
        self
    }

    /// The time allowed to connect, and to each command for its reply.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    pub fn client_id(mut self, client_id: impl Into<String>) -> Self {
        self.client_id = Some(client_id.into());
        self
    }

    /// `host:port`, for messages.
    pub fn broker(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}
