//! Shared sessions: one connection per instrument, whatever the number of
//! runners (channels) that drive it.
//!
//! Instruments take one control connection at a time, so the runners of one
//! instrument share a [`Session`], found in the [`Sessions`] registry by the
//! instrument's [`Endpoint`]. The session:
//! - serializes exchanges: one runner's set (the Rigol's select-then-set)
//!   and its read-back are never split by another runner's command;
//! - opens the connection when a driver attaches and none is open, and checks
//!   the instrument's `*IDN?` against the profile;
//! - drops the connection after an I/O error or a timeout (its state is then
//!   unknown), and reopens it when a driver attaches again;
//! - outlives its drivers: a runner that restarts finds the connection open,
//!   and the other runners of the instrument go on meanwhile.
//!
//! Every opening of the connection starts a new *generation*. A driver
//! attached to an older one gets `NotConnected` (a fatal error) on its next
//! call, so after a lost connection every runner of the instrument restarts
//! and reads the instrument's state afresh: the instrument may have been
//! power-cycled while it was away, and its setpoints with it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpStream;

use super::super::kd3005p::transport::open_serial_at;
use super::super::{DriverError, ErrorKind};
use super::profile::{Profile, TCP_TERMINATOR};
use super::protocol::{parse_identity, Identity, IDENTITY_QUERY};
use super::settings::Endpoint;
use super::transport::{Stream, Timing, Transport};

/// Longest wait for a TCP connection: an address that does not answer
/// (instrument off, wrong subnet) fails at this bound, with a message that
/// says so, rather than at the operating system's (minutes). A LAN
/// instrument accepts within milliseconds; with the `*IDN?` read that
/// follows, this stays within a runner's default `command_timeout_ms`
/// (2000), which bounds the whole initialization.
pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(1000);

/// The sessions of one server, by instrument.
#[derive(Default)]
pub struct Sessions {
    /// By [`Endpoint`] as displayed, which leaves the baud rate out: one
    /// serial port is one instrument, whatever the rate runners give.
    sessions: Mutex<HashMap<String, Arc<Session>>>,
}

impl Sessions {
    pub fn new() -> Self {
        Self::default()
    }

    /// The session of the instrument at `endpoint`, created on first use.
    /// An instrument is one model: a second model naming it is refused.
    pub fn session(
        &self,
        profile: &'static Profile,
        endpoint: &Endpoint,
        timing: Timing,
    ) -> Result<Arc<Session>, DriverError> {
        // No code panics while holding this lock, so a poisoned lock still
        // guards a consistent map.
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        let key = endpoint.to_string();
        if let Some(session) = sessions.get(&key) {
            if session.profile.model != profile.model {
                return Err(DriverError::new(
                    ErrorKind::Config,
                    format!(
                        "{endpoint} is driven as a {} by another runner, not as a {}",
                        session.profile.model, profile.model
                    ),
                ));
            }
            return Ok(Arc::clone(session));
        }
        let session = Arc::new(Session {
            profile,
            endpoint: endpoint.clone(),
            timing,
            users: AtomicUsize::new(0),
            link: tokio::sync::Mutex::new(Link::default()),
        });
        sessions.insert(key, Arc::clone(&session));
        Ok(session)
    }
}

/// One instrument's connection, shared by its drivers.
pub struct Session {
    profile: &'static Profile,
    endpoint: Endpoint,
    timing: Timing,
    /// Drivers attached now.
    users: AtomicUsize,
    link: tokio::sync::Mutex<Link>,
}

#[derive(Default)]
struct Link {
    transport: Option<Transport>,
    /// How many times the connection was opened.
    generation: u64,
}

/// A driver's hold on a session: counted while it lives, and tied to the
/// connection it was made on.
pub struct Attachment {
    session: Arc<Session>,
    generation: u64,
}

impl Drop for Attachment {
    fn drop(&mut self) {
        self.session.users.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Session {
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// Drivers attached now.
    pub fn users(&self) -> usize {
        self.users.load(Ordering::SeqCst)
    }

    /// Attaches a driver: opens the connection (checking `*IDN?`) unless
    /// one is open already. Returns the identity when it was checked now.
    pub async fn attach(self: &Arc<Self>) -> Result<(Attachment, Option<Identity>), DriverError> {
        let mut link = self.link.lock().await;
        let identity = match link.transport {
            Some(_) => None,
            None => {
                let (transport, identity) = self.open().await?;
                link.transport = Some(transport);
                link.generation += 1;
                Some(identity)
            }
        };
        self.users.fetch_add(1, Ordering::SeqCst);
        Ok((
            Attachment {
                session: Arc::clone(self),
                generation: link.generation,
            },
            identity,
        ))
    }

    /// Detaches a driver; the connection closes with its last driver.
    pub async fn release(&self, attachment: Attachment) {
        drop(attachment);
        let mut link = self.link.lock().await;
        if self.users() == 0 && link.transport.take().is_some() {
            tracing::info!(instrument = %self.endpoint, "connection closed: no runner uses it");
        }
    }

    /// Sends `query` and returns its reply.
    pub async fn query(&self, attachment: &Attachment, query: &str) -> Result<String, DriverError> {
        self.send_then_query(attachment, &[], query).await
    }

    /// Sends `lines` (which the instrument does not answer), then `query`,
    /// and returns its reply: a set and its read-back, with no other
    /// runner's command in between, so another channel's command waits for
    /// one whole command, not half of one.
    pub async fn send_then_query(
        &self,
        attachment: &Attachment,
        lines: &[String],
        query: &str,
    ) -> Result<String, DriverError> {
        let mut link = self.link.lock().await;
        let generation = link.generation;
        let transport = match link.transport.as_mut() {
            Some(transport) if generation == attachment.generation => transport,
            _ => {
                return Err(DriverError::new(
                    ErrorKind::NotConnected,
                    format!(
                        "the connection to {} was lost since this runner started",
                        self.endpoint
                    ),
                ))
            }
        };
        let result = async {
            for line in lines {
                transport.send(line).await?;
            }
            transport.query(query).await
        }
        .await;
        if let Err(e) = &result {
            if e.kind().is_fatal() {
                tracing::warn!(instrument = %self.endpoint, error = %e, "connection dropped");
                link.transport = None;
            }
        }
        result
    }

    /// Opens the connection and checks the instrument's identity.
    async fn open(&self) -> Result<(Transport, Identity), DriverError> {
        let name = self.endpoint.to_string();
        let (stream, terminator): (Box<dyn Stream>, &'static str) = match &self.endpoint {
            Endpoint::Tcp { addr, port } => {
                let connect = TcpStream::connect((addr.as_str(), *port));
                let stream = tokio::time::timeout(CONNECT_TIMEOUT, connect)
                    .await
                    .map_err(|_| {
                        DriverError::new(
                            ErrorKind::NotConnected,
                            format!(
                                "{name} did not accept a connection within {} ms",
                                CONNECT_TIMEOUT.as_millis()
                            ),
                        )
                    })?
                    .map_err(|e| {
                        DriverError::new(
                            ErrorKind::NotConnected,
                            format!("cannot connect to {name}: {e}"),
                        )
                    })?;
                // Commands are single short lines: without it, a command
                // written right after another waits for the instrument's
                // delayed acknowledgement.
                stream
                    .set_nodelay(true)
                    .map_err(|e| DriverError::io(format!("{name}: cannot set TCP_NODELAY: {e}")))?;
                (Box::new(stream), TCP_TERMINATOR)
            }
            Endpoint::Serial { port, baud_rate } => {
                let (_, stream) = open_serial_at(port, *baud_rate).await?;
                let terminator = self.profile.serial.map_or(TCP_TERMINATOR, |s| s.terminator);
                (Box::new(stream), terminator)
            }
        };
        let mut transport = Transport::new(stream, name.clone(), self.timing, terminator);
        let reply = transport.query(IDENTITY_QUERY).await?;
        let identity = parse_identity(&reply)?;
        if !self.profile.accepts(&identity.model) {
            return Err(DriverError::new(
                ErrorKind::Config,
                format!(
                    "{name} is a {} {} (*IDN? {reply:?}), not a {} (model {}): check the runner's model and address",
                    identity.manufacturer,
                    identity.model,
                    self.profile.name,
                    self.profile.model
                ),
            ));
        }
        tracing::info!(instrument = %name, %identity, "connected");
        Ok((transport, identity))
    }
}
