//! The runners' share of the server's one MQTT connection.
//!
//! All the runners of a server, and their supervisor, use one connection:
//! one subscription (`P/+/+/cmd` over every runner) instead of one per
//! runner, so that the broker's work per message does not grow with the
//! number of runners (see docs/benchmarks.md, "One connection per server").
//! [`Mailboxes`] sorts the commands by runner in the connection's pump task:
//! each runner served here has a bounded mailbox, kept by its supervisor
//! across crashes and lent to each start of the runner (or to the stand-in
//! of a `Failed` one), so that commands sent during a restart wait for the
//! restarted runner. A command for a runner whose mailbox is full is
//! answered at once on `P/error`; one for a runner not served here is left
//! to the server that serves it. Restart commands and everything else go to
//! the supervisor.
//!
//! A runner publishes on the same connection ([`RunnerLink`]), so what the
//! supervisor queued before a runner's messages reaches the broker first.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock, RwLock};

use rumqttc::Publish;
use tokio::sync::{mpsc, watch, Mutex, OwnedMutexGuard};

use crate::protocol::payload::{command_id, error_reply};
use crate::protocol::topics::{command_target, Topics};
use pza_toolkit::mqtt::link::{Dispatch, LinkClosed, LinkEvent, Publisher, Readiness};

/// Commands that may wait for one runner; beyond, they are answered at
/// once with [`full_reason`].
pub const MAILBOX_CAPACITY: usize = 1024;

/// The answer to a command that finds its runner's mailbox full.
pub fn full_reason(runner: &str) -> String {
    format!("not applied: {MAILBOX_CAPACITY} commands already wait for runner '{runner}'")
}

/// The leaf of the restart command, which the supervisor answers.
const RESTART_LEAF: &str = "restart";

/// The mailboxes of the runners served here, by runner name.
pub struct Mailboxes {
    namespace: Option<String>,
    open: RwLock<HashMap<String, mpsc::Sender<Publish>>>,
    /// Answers the commands that find a mailbox full; set once the
    /// connection is open.
    publisher: OnceLock<Publisher>,
}

impl Mailboxes {
    pub fn new(namespace: Option<String>) -> Arc<Mailboxes> {
        Arc::new(Mailboxes {
            namespace,
            open: RwLock::new(HashMap::new()),
            publisher: OnceLock::new(),
        })
    }

    /// The connection the mailboxes are filled from, to answer on.
    pub fn attach(&self, publisher: Publisher) {
        // Set once, by the service that opens the connection.
        let _ = self.publisher.set(publisher);
    }

    /// Opens the mailbox of `runner`: its commands are kept from now on.
    pub fn open(&self, runner: &str, readiness: Readiness) -> SharedMailbox {
        let (tx, rx) = mpsc::channel(MAILBOX_CAPACITY);
        let mut open = self.open.write().unwrap_or_else(|e| e.into_inner());
        open.insert(runner.to_string(), tx);
        Arc::new(Mutex::new(Mailbox {
            connections: readiness.connections(),
            readiness,
            commands: rx,
            retained: std::sync::Mutex::new(Retained::default()),
        }))
    }

    /// Closes the mailbox of `runner`: its commands are no longer taken
    /// (another server serves it, or it ended for good). What it holds is
    /// still read by whoever holds it.
    pub fn close(&self, runner: &str) {
        let mut open = self.open.write().unwrap_or_else(|e| e.into_inner());
        open.remove(runner);
    }

    fn answer_full(&self, runner: &str, publish: &Publish) {
        let Some(publisher) = self.publisher.get() else {
            return;
        };
        let topics = Topics::new(self.namespace.as_deref(), runner);
        let reply = error_reply(
            command_id(&publish.payload).as_deref(),
            &full_reason(runner),
        );
        if !publisher.try_publish(&topics.error(), false, &reply) {
            tracing::warn!(
                runner,
                "a command found its runner's mailbox full, and its answer could not be queued"
            );
        }
    }
}

impl Dispatch for Mailboxes {
    fn dispatch(&self, publish: Publish) -> Result<(), Publish> {
        let namespace = self.namespace.as_deref();
        let mailbox = match command_target(namespace, &publish.topic) {
            Some((runner, leaf)) if leaf != RESTART_LEAF => {
                let open = self.open.read().unwrap_or_else(|e| e.into_inner());
                open.get(runner).cloned()
            }
            _ => return Err(publish),
        };
        // Not served here (yet, or any more): the serving server answers.
        let Some(mailbox) = mailbox else {
            return Ok(());
        };
        match mailbox.try_send(publish) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(publish)) => {
                if let Some((runner, _)) = command_target(namespace, &publish.topic) {
                    self.answer_full(runner, &publish);
                }
            }
            // Being closed: as if not served here.
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
        Ok(())
    }
}

/// One runner's mailbox, lent by the supervisor to each start of the runner.
pub struct Mailbox {
    commands: mpsc::Receiver<Publish>,
    readiness: Readiness,
    /// Moves at every (re)connection of the server's connection.
    connections: watch::Receiver<u64>,
    /// The retained values published through this mailbox's runner.
    retained: std::sync::Mutex<Retained>,
}

/// The values a runner published retained on the present connection, by
/// topic (as formatted in the payload, e.g. `"5.00"` or `"ON"`): what the
/// broker holds for it, unless the connection changed since.
#[derive(Default)]
struct Retained {
    connection: u64,
    values: HashMap<String, String>,
}

/// A mailbox kept by the supervisor and lent to one task at a time.
pub type SharedMailbox = Arc<Mutex<Mailbox>>;

impl Mailbox {
    /// The next command, or `Connected { first: false }` when the server's
    /// connection has been connected and subscribed again since the last
    /// call (the broker may have lost the retained state); `None` once the
    /// mailbox is closed and empty.
    pub async fn recv(&mut self) -> Option<LinkEvent> {
        tokio::select! {
            biased;
            changed = self.connections.changed() => match changed {
                Ok(()) => Some(LinkEvent::Connected { first: false }),
                Err(_) => self.commands.recv().await.map(LinkEvent::Message),
            },
            command = self.commands.recv() => command.map(LinkEvent::Message),
        }
    }

    /// The next command already received, without waiting.
    pub fn try_recv(&mut self) -> Option<Publish> {
        self.commands.try_recv().ok()
    }

    /// Notes that `value` is the last one published retained on `topic`.
    fn note_value(&self, topic: &str, value: &str) {
        let connection = *self.connections.borrow();
        let mut retained = self.retained.lock().unwrap_or_else(|e| e.into_inner());
        if retained.connection != connection {
            retained.values.clear();
            retained.connection = connection;
        }
        match retained.values.get_mut(topic) {
            Some(last) => value.clone_into(last),
            None => {
                retained.values.insert(topic.to_string(), value.to_string());
            }
        }
    }

    /// Whether the broker holds `value` on `topic` already: the last value
    /// published there through this mailbox, on the present connection.
    fn has_value(&self, topic: &str, value: &str) -> bool {
        let connection = *self.connections.borrow();
        let retained = self.retained.lock().unwrap_or_else(|e| e.into_inner());
        retained.connection == connection && retained.values.get(topic).is_some_and(|v| v == value)
    }

    /// Whether the server's connection is connected and subscribed now.
    pub fn is_ready(&self) -> bool {
        self.readiness.is_ready()
    }

    /// Waits until the server's connection is connected and subscribed,
    /// leaving the commands in the mailbox; false if the connection is gone
    /// for good. The (re)connection waited for is not reported again by
    /// `recv`.
    pub async fn wait_ready(&mut self) -> bool {
        while !self.is_ready() {
            if self.connections.changed().await.is_err() {
                return false;
            }
        }
        self.connections.borrow_and_update();
        true
    }
}

/// What a runner task holds of the connection: its mailbox, and a way to
/// publish.
pub struct RunnerLink {
    mailbox: OwnedMutexGuard<Mailbox>,
    publisher: Publisher,
}

impl RunnerLink {
    /// Takes `mailbox` for as long as the returned link lives.
    pub async fn lend(mailbox: SharedMailbox, publisher: Publisher) -> RunnerLink {
        RunnerLink {
            mailbox: mailbox.lock_owned().await,
            publisher,
        }
    }

    /// See [`Mailbox::recv`].
    pub async fn recv(&mut self) -> Option<LinkEvent> {
        self.mailbox.recv().await
    }

    /// See [`Mailbox::try_recv`].
    pub fn try_recv(&mut self) -> Option<Publish> {
        self.mailbox.try_recv()
    }

    /// See [`Mailbox::wait_ready`].
    pub async fn wait_ready(&mut self) -> bool {
        self.mailbox.wait_ready().await
    }

    /// Publishes at QoS 1, after everything queued on the connection before.
    pub async fn publish(
        &self,
        topic: String,
        retain: bool,
        payload: Vec<u8>,
    ) -> Result<(), LinkClosed> {
        self.publisher.publish(topic, retain, payload).await
    }

    /// Publishes `payload`, carrying `value`, retained on `topic`, and notes
    /// it as the value the broker holds there. Every retained publish of a
    /// runner's state and info goes through here.
    pub async fn publish_value(
        &self,
        topic: String,
        value: &str,
        payload: Vec<u8>,
    ) -> Result<(), LinkClosed> {
        self.mailbox.note_value(&topic, value);
        self.publisher.publish(topic, true, payload).await
    }

    /// See [`Mailbox::has_value`].
    pub fn has_value(&self, topic: &str, value: &str) -> bool {
        self.mailbox.has_value(topic, value)
    }
}
