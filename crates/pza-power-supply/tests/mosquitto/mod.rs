//! A real mosquitto broker for the tests (the Debian package; `scripts/test`
//! installs it): started on free ports with a generated config file, killed
//! (and its folder removed) when the guard is dropped. Also: test
//! certificates, and servers that use an external broker.

#![allow(dead_code)]

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use pza_power_supply::drivers::emulator::EmulatorModel;
use pza_power_supply::server::{Server, ServerOptions};
use pza_toolkit::mqtt::probe_free_port;
use pza_toolkit::temp::TempDir;
use tokio::sync::Mutex;

/// How long mosquitto may take to accept connections after it is started.
const START_LIMIT: Duration = Duration::from_secs(10);

/// mosquitto's log is a file, which gives no notice of a new line, and its
/// ports give none when they start accepting: both are looked at again this
/// often while waiting for a line (or for the ports), up to the wait's bound.
const LOG_POLL: Duration = Duration::from_millis(20);

/// One listener of the broker.
#[derive(Debug, Clone)]
pub enum Listener {
    /// Plain TCP, anyone may connect.
    Anonymous,
    /// Plain TCP, only these (user, password) pairs may connect.
    Password(Vec<(String, String)>),
    /// TLS with this server certificate; `require_client_cert` asks every
    /// client for a certificate signed by the CA.
    Tls {
        certs: Arc<TestCerts>,
        require_client_cert: bool,
    },
}

/// A mosquitto process; killed on drop, and then its folder removed.
pub struct Mosquitto {
    /// Its config, log and password files; the tests may add theirs.
    pub dir: TempDir,
    /// The port of each listener, in the order given.
    pub ports: Vec<u16>,
    conf: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

/// The mosquitto binary: on the PATH, or where Debian puts it.
fn binary() -> PathBuf {
    for candidate in ["/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto"] {
        if Path::new(candidate).exists() {
            return candidate.into();
        }
    }
    "mosquitto".into()
}

/// How many times a broker is started on fresh ports when one was taken.
const START_ATTEMPTS: usize = 5;

/// One of mosquitto's ports was taken by another process before it bound it.
struct PortTaken;

/// How many times the log says that mosquitto started.
fn running_lines(log: &str) -> usize {
    log.lines().filter(|l| l.ends_with(" running")).count()
}

fn distinct_free_ports(n: usize) -> Vec<u16> {
    let mut ports: Vec<u16> = Vec::new();
    while ports.len() < n {
        let port = probe_free_port().expect("a free port");
        if !ports.contains(&port) {
            ports.push(port);
        }
    }
    ports
}

impl Mosquitto {
    /// One anonymous plain listener.
    pub async fn plain() -> Mosquitto {
        Self::start(&[Listener::Anonymous]).await
    }

    /// Starts mosquitto with `listeners`, each on a free port of 127.0.0.1,
    /// and returns once every listener accepts connections.
    pub async fn start(listeners: &[Listener]) -> Mosquitto {
        // A port found free may be taken by someone else before mosquitto
        // binds it (tests run in parallel): then mosquitto says so and
        // exits, and the broker is started again on other ports.
        for _ in 0..START_ATTEMPTS {
            // Each attempt has a folder of its own, removed with its broker.
            let dir = TempDir::new("mosquitto").expect("a folder for the broker");
            let ports = distinct_free_ports(listeners.len());
            // mosquitto started as root drops to user `mosquitto`, which could
            // not read the files here; `user root` keeps it (ignored otherwise).
            // No limit on queued QoS 1 messages per client (the default, 1000,
            // drops messages under the load test).
            let mut conf = String::from("per_listener_settings true\npersistence false\nuser root\nlog_dest stderr\nlog_type all\nlog_timestamp false\nmax_queued_messages 0\n");
            for (i, (listener, port)) in listeners.iter().zip(&ports).enumerate() {
                conf.push_str(&format!("\nlistener {port} 127.0.0.1\n"));
                match listener {
                    Listener::Anonymous => conf.push_str("allow_anonymous true\n"),
                    Listener::Password(users) => {
                        let file = dir.join(format!("passwd-{i}"));
                        for (n, (user, password)) in users.iter().enumerate() {
                            let mut cmd = Command::new("mosquitto_passwd");
                            if n == 0 {
                                cmd.arg("-c");
                            }
                            let status = cmd
                                .arg("-b")
                                .arg(&file)
                                .arg(user)
                                .arg(password)
                                .stdout(Stdio::null())
                                .stderr(Stdio::null())
                                .status()
                                .expect("mosquitto_passwd runs (scripts/test installs mosquitto)");
                            assert!(status.success(), "mosquitto_passwd failed");
                        }
                        conf.push_str(&format!(
                            "allow_anonymous false\npassword_file {}\n",
                            file.display()
                        ));
                    }
                    Listener::Tls {
                        certs,
                        require_client_cert,
                    } => {
                        let files = certs.write(dir.path());
                        conf.push_str(&format!(
                            "allow_anonymous true\ncafile {}\ncertfile {}\nkeyfile {}\nrequire_certificate {}\n",
                            files.ca.display(),
                            files.server_cert.display(),
                            files.server_key.display(),
                            require_client_cert
                        ));
                    }
                }
            }
            let conf_path = dir.join("mosquitto.conf");
            std::fs::write(&conf_path, conf).expect("write mosquitto.conf");
            let mut broker = Mosquitto {
                log: dir.join("mosquitto.log"),
                dir,
                ports,
                conf: conf_path,
                child: None,
            };
            match broker.spawn().await {
                Ok(()) => return broker,
                Err(PortTaken) => broker.kill(),
            }
        }
        panic!("mosquitto found its ports taken {START_ATTEMPTS} times in a row");
    }

    /// The port of the first listener.
    pub fn port(&self) -> u16 {
        self.ports[0]
    }

    /// Starts mosquitto and waits until it has opened all its listeners
    /// (its log says `running`) and each accepts; `PortTaken` when one of
    /// its ports was taken by another process first.
    async fn spawn(&mut self) -> Result<(), PortTaken> {
        let runs_before = running_lines(&self.log());
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open the mosquitto log");
        let child = Command::new(binary())
            .arg("-c")
            .arg(&self.conf)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .spawn()
            .expect("mosquitto starts (scripts/test installs the Debian package)");
        self.child = Some(child);
        let deadline = tokio::time::Instant::now() + START_LIMIT;
        loop {
            let log = self.log();
            if running_lines(&log) > runs_before
                && self
                    .ports
                    .iter()
                    .all(|port| TcpStream::connect(("127.0.0.1", *port)).is_ok())
            {
                return Ok(());
            }
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    if log.contains("Address already in use") {
                        return Err(PortTaken);
                    }
                    panic!("mosquitto exited ({status}) at start:\n{log}");
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "mosquitto does not accept on its ports {:?} within {START_LIMIT:?}:\n{log}",
                self.ports
            );
            tokio::time::sleep(LOG_POLL).await;
        }
    }

    /// Kills the broker at once (SIGKILL: no will is sent, nothing saved).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the broker again on the same ports, with the same config.
    pub async fn restart(&mut self) {
        self.kill();
        if self.spawn().await.is_err() {
            panic!(
                "mosquitto's port was taken while it was stopped:\n{}",
                self.log()
            );
        }
    }

    /// What mosquitto logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the log holds `count` lines containing every one of
    /// `needles`; the wait is bounded by `limit`.
    pub async fn wait_log(&self, needles: &[&str], count: usize, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let log = self.log();
            let found = log
                .lines()
                .filter(|l| needles.iter().all(|n| l.contains(n)))
                .count();
            if found >= count {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "mosquitto did not log {count} lines with {needles:?} within {limit:?}:\n{log}"
            );
            tokio::time::sleep(LOG_POLL).await;
        }
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        // Before the folder goes (the `dir` field, dropped after this).
        self.kill();
    }
}

/// A test CA, a server certificate it signed (for 127.0.0.1 and localhost)
/// and a client certificate it signed, as PEM text.
#[derive(Debug)]
pub struct TestCerts {
    pub ca_pem: String,
    pub server_cert_pem: String,
    pub server_key_pem: String,
    pub client_cert_pem: String,
    pub client_key_pem: String,
}

/// Where `TestCerts::write` put the files.
pub struct CertFiles {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

impl TestCerts {
    pub fn generate() -> TestCerts {
        use rcgen::{
            BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair,
            KeyUsagePurpose, SanType,
        };
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "pza test CA");
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("CA key"))
            .expect("CA certificate");

        let server_key = KeyPair::generate().expect("server key");
        let mut server_params =
            CertificateParams::new(vec!["localhost".to_string()]).expect("server params");
        server_params
            .subject_alt_names
            .push(SanType::IpAddress([127, 0, 0, 1].into()));
        server_params
            .distinguished_name
            .push(DnType::CommonName, "127.0.0.1");
        let server_cert = server_params
            .signed_by(&server_key, &ca)
            .expect("server certificate");

        let client_key = KeyPair::generate().expect("client key");
        let mut client_params = CertificateParams::new(Vec::<String>::new()).expect("params");
        client_params
            .distinguished_name
            .push(DnType::CommonName, "pza-power-supply");
        let client_cert = client_params
            .signed_by(&client_key, &ca)
            .expect("client certificate");

        TestCerts {
            ca_pem: ca.pem(),
            server_cert_pem: server_cert.pem(),
            server_key_pem: server_key.serialize_pem(),
            client_cert_pem: client_cert.pem(),
            client_key_pem: client_key.serialize_pem(),
        }
    }

    /// Writes the PEM files into `dir`.
    pub fn write(&self, dir: &Path) -> CertFiles {
        let files = CertFiles {
            ca: dir.join("ca.pem"),
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server.key"),
            client_cert: dir.join("client.pem"),
            client_key: dir.join("client.key"),
        };
        for (path, text) in [
            (&files.ca, &self.ca_pem),
            (&files.server_cert, &self.server_cert_pem),
            (&files.server_key, &self.server_key_pem),
            (&files.client_cert, &self.client_cert_pem),
            (&files.client_key, &self.client_key_pem),
        ] {
            std::fs::write(path, text).expect("write a PEM file");
        }
        files
    }
}

/// A server with no embedded broker, on the external broker at `port`.
/// `broker_keys` are more keys of `broker` (`username: "u",`), `runners` the
/// body of `runners`, `extra` more top-level keys.
pub struct ExternalServer {
    pub emulator: Arc<EmulatorModel>,
    server: Option<Server>,
}

/// The config text of an `ExternalServer`.
pub fn external_config(port: u16, broker_keys: &str, runners: &str, extra: &str) -> String {
    format!(
        "{{ broker: {{ use_builtin: false, tcp: {{ addr: \"127.0.0.1\", port: {port} }}, {broker_keys} }}, {extra} runners: {{ {runners} }} }}"
    )
}

impl ExternalServer {
    pub async fn start(port: u16, broker_keys: &str, runners: &str, extra: &str) -> ExternalServer {
        let (factory, emulator) = crate::common::factory();
        let text = external_config(port, broker_keys, runners, extra);
        let config = pza_power_supply::config::parse(Path::new("test.json5"), &text, &factory)
            .unwrap_or_else(|e| panic!("test config rejected: {e}"));
        let server = Server::start(
            config,
            Arc::new(Mutex::new(factory)),
            ServerOptions::default(),
        )
        .await
        .expect("a server on an external broker starts, reachable or not");
        ExternalServer {
            emulator,
            server: Some(server),
        }
    }

    /// Shuts down; returns how long it took.
    pub async fn stop(mut self) -> Duration {
        let started = std::time::Instant::now();
        if let Some(server) = self.server.take() {
            tokio::time::timeout(crate::common::WAIT, server.shutdown())
                .await
                .expect("shutdown within the wait bound")
                .expect("clean shutdown");
        }
        started.elapsed()
    }
}
