//! The one MQTT connection of a client: its event loop runs in a task of its
//! own, which keeps the state of every power supply, answers the commands
//! waiting for their reply, and broadcasts updates.
//!
//! Subscriptions are made once per connection, one filter per topic kind over
//! every runner (`power-supply/+/status`, `power-supply/+/voltage`, …), not
//! per device: a command never waits for a subscription of its own, and every
//! handle is ready the moment the client is. After the subscription is
//! acknowledged, the client publishes a marker to a topic only it listens to;
//! the broker sends the retained messages of a subscription before it routes
//! the publishes that came after it, so when the marker comes back the state
//! is complete, and only then is the connection reported ready.
//!
//! Reconnection: after a connection error the task waits, from
//! `RECONNECT_FIRST` doubling up to `RECONNECT_MAX` (each delay shortened by a
//! random fraction of up to `RECONNECT_JITTER`), then lets rumqttc connect
//! again, subscribes again and waits for the marker again.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use pza_power_supply_protocol::decode::{self, Kind, Message};
use pza_power_supply_protocol::Status;
use rumqttc::{AsyncClient, ConnectionError, Event, EventLoop, Packet, QoS, SubscribeFilter};
use serde_json::Value;
use tokio::sync::{broadcast, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::error::{Error, Result};
use crate::state::{Store, Update};

const RECONNECT_FIRST: Duration = Duration::from_millis(100);
const RECONNECT_MAX: Duration = Duration::from_secs(5);

/// Fraction of a reconnection delay that jitter may take off, so that many
/// clients cut off together do not come back in lockstep.
const RECONNECT_JITTER: f64 = 0.5;

/// Updates kept for a watcher that falls behind; beyond, it misses some
/// (and counts them).
pub(crate) const UPDATE_CAPACITY: usize = 4096;

/// Where the connection stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum LinkState {
    /// Not (yet) connected and subscribed; the last connection error, if any.
    Connecting { last_error: Option<String> },
    /// Connected, subscribed, and the retained state received.
    Ready,
    /// The broker refused the connection (e.g. bad credentials).
    Refused(String),
}

/// How a command waiting for its reply ends.
enum Answer {
    Reply(Message),
    /// The message on `P/error`.
    Refused(String),
    /// The connection dropped: the broker does not keep replies for a
    /// client that is away (clean sessions), so none will come.
    Lost,
}

/// A command waiting for its reply.
struct Pending {
    runner: String,
    /// The topic its reply comes on (besides `P/error`).
    expect: Kind,
    reply: oneshot::Sender<Answer>,
}

/// What the handles and the event loop task share.
pub(crate) struct Shared {
    pub(crate) mqtt: AsyncClient,
    pub(crate) namespace: Option<String>,
    /// `host:port`, for messages.
    pub(crate) broker: String,
    store: Mutex<Store>,
    pending: Mutex<HashMap<String, Pending>>,
    pub(crate) updates: broadcast::Sender<Update>,
    link: watch::Sender<LinkState>,
    /// Makes this client's `pza_id`s unique among clients.
    id_prefix: String,
    next_id: AtomicU64,
    /// Where the readiness marker goes; only this client subscribes to it.
    marker_topic: String,
}

/// Locks a mutex whose data stays consistent even if a holder panicked
/// (every critical section is a single insert, remove or apply).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Shared {
    pub(crate) fn new(
        mqtt: AsyncClient,
        namespace: Option<String>,
        broker: String,
        client_id: &str,
    ) -> Shared {
        let (updates, _) = broadcast::channel(UPDATE_CAPACITY);
        let (link, _) = watch::channel(LinkState::Connecting { last_error: None });
        Shared {
            mqtt,
            marker_topic: format!("pza-power-supply-client/{client_id}/ready"),
            namespace,
            broker,
            store: Mutex::new(Store::default()),
            pending: Mutex::new(HashMap::new()),
            updates,
            link,
            id_prefix: format!("{:08x}", rand::random::<u32>()),
            next_id: AtomicU64::new(1),
        }
    }

    fn filters(&self) -> Vec<SubscribeFilter> {
        Kind::ALL
            .into_iter()
            .map(|k| k.filter(self.namespace.as_deref()))
            .chain(std::iter::once(self.marker_topic.clone()))
            .map(|path| SubscribeFilter::new(path, QoS::AtLeastOnce))
            .collect()
    }

    pub(crate) fn link_state(&self) -> LinkState {
        self.link.borrow().clone()
    }

    /// A `pza_id` no other command of any client uses.
    pub(crate) fn next_id(&self) -> String {
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        format!("c{}-{n}", self.id_prefix)
    }

    pub(crate) fn with_store<R>(&self, f: impl FnOnce(&Store) -> R) -> R {
        f(&lock(&self.store))
    }

    /// Waits until connected and in sync, at most until `deadline`.
    pub(crate) async fn wait_ready(&self, deadline: Instant, after: Duration) -> Result<()> {
        let mut link = self.link.subscribe();
        let outcome = tokio::time::timeout_at(deadline, async {
            loop {
                match &*link.borrow_and_update() {
                    LinkState::Ready => return Ok(()),
                    LinkState::Refused(reason) => {
                        return Err(Error::ConnectionRefused {
                            broker: self.broker.clone(),
                            reason: reason.clone(),
                        })
                    }
                    LinkState::Connecting { .. } => {}
                }
                if link.changed().await.is_err() {
                    return Err(Error::Closed);
                }
            }
        })
        .await;
        match outcome {
            Ok(result) => result,
            Err(_) => Err(self.unreachable(after)),
        }
    }

    fn unreachable(&self, after: Duration) -> Error {
        let cause = match self.link_state() {
            LinkState::Connecting {
                last_error: Some(e),
            } => e,
            LinkState::Connecting { last_error: None } => {
                "connected, but the subscription was not acknowledged".into()
            }
            LinkState::Ready => "the connection was lost".into(),
            LinkState::Refused(reason) => reason,
        };
        Error::BrokerUnreachable {
            broker: self.broker.clone(),
            after,
            cause,
        }
    }

    /// Sends a command to `runner` on `topic` and waits for its one reply:
    /// on the topic of `expect` or on `P/error`, carrying the command's
    /// `pza_id`. `fields` are the payload's fields besides `pza_id`.
    pub(crate) async fn command(
        &self,
        runner: &str,
        topic: String,
        fields: serde_json::Map<String, Value>,
        expect: Kind,
        timeout: Duration,
    ) -> Result<Message> {
        let deadline = Instant::now() + timeout;
        self.wait_ready(deadline, timeout).await?;
        let id = self.next_id();
        let (reply, answer) = oneshot::channel();
        lock(&self.pending).insert(
            id.clone(),
            Pending {
                runner: runner.to_owned(),
                expect,
                reply,
            },
        );
        // Removes the entry however this future ends: answered, timed out,
        // failed or dropped by the caller.
        let _forget = Forget {
            shared: self,
            id: &id,
        };
        let mut payload = serde_json::Map::new();
        payload.insert("pza_id".into(), Value::String(id.clone()));
        payload.extend(fields);
        let bytes = Value::Object(payload).to_string().into_bytes();
        self.mqtt
            .publish(topic, QoS::AtLeastOnce, false, bytes)
            .await?;
        match tokio::time::timeout_at(deadline, answer).await {
            Ok(Ok(Answer::Reply(message))) => Ok(message),
            Ok(Ok(Answer::Refused(message))) => Err(Error::Rejected { message }),
            Ok(Ok(Answer::Lost)) => Err(Error::ConnectionLost {
                device: runner.to_owned(),
            }),
            Ok(Err(_)) => Err(Error::Closed),
            Err(_) if self.link_state() != LinkState::Ready => Err(self.unreachable(timeout)),
            Err(_) => Err(Error::Timeout {
                device: runner.to_owned(),
                after: timeout,
                last_status: self.last_status(runner),
            }),
        }
    }

    fn last_status(&self, runner: &str) -> Option<Status> {
        lock(&self.store).get(runner).and_then(|s| s.status)
    }

    /// A message from the broker.
    fn dispatch(&self, topic: &str, payload: &[u8]) {
        let Some((runner, kind)) = decode::parse_topic(self.namespace.as_deref(), topic) else {
            return;
        };
        let decoded = match decode::decode(kind, payload) {
            Ok(decoded) => decoded,
            Err(e) => {
                tracing::debug!("{topic}: {e}");
                return;
            }
        };
        let waiting = decoded.pza_id.as_ref().and_then(|id| {
            let mut pending = lock(&self.pending);
            let matches = pending
                .get(id)
                .is_some_and(|p| p.runner == runner && (p.expect == kind || kind == Kind::Error));
            matches.then(|| pending.remove(id)).flatten()
        });
        let answer = waiting.map(|p| {
            let answer = match &decoded.message {
                Message::Error { message } => Answer::Refused(message.clone()),
                other => Answer::Reply(other.clone()),
            };
            (p, answer)
        });
        // The state is updated before the command is answered, so that a
        // snapshot taken after a command returns shows its value.
        let update = lock(&self.store).apply(runner, decoded);
        if let Some((p, answer)) = answer {
            // The caller may have given up meanwhile.
            let _ = p.reply.send(answer);
        }
        // No watcher is not an error.
        let _ = self.updates.send(update);
    }

    /// The connection dropped: every command waiting ends now rather than
    /// at its deadline.
    fn connection_lost(&self) {
        for (_, pending) in lock(&self.pending).drain() {
            // The caller may have given up meanwhile.
            let _ = pending.reply.send(Answer::Lost);
        }
    }
}

/// Forgets a pending command when dropped.
struct Forget<'a> {
    shared: &'a Shared,
    id: &'a str,
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        lock(&self.shared.pending).remove(self.id);
    }
}

/// Aborts the event loop task when the last handle goes.
pub(crate) struct AbortOnDrop(pub(crate) JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Polls the event loop for ever (until aborted).
pub(crate) async fn run(mut eventloop: EventLoop, shared: Arc<Shared>) {
    let mut delay = RECONNECT_FIRST;
    // Counts connections; the marker carries it, so that a marker from an
    // earlier connection is not taken for this one's.
    let mut generation: u64 = 0;
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                delay = RECONNECT_FIRST;
                generation += 1;
                if generation > 1 {
                    lock(&shared.store).clear();
                }
                let (mqtt, filters) = (shared.mqtt.clone(), shared.filters());
                // Not awaited here: this task drains the request channel,
                // so it must never wait for room in it.
                tokio::spawn(async move {
                    if let Err(e) = mqtt.subscribe_many(filters).await {
                        tracing::debug!("cannot subscribe: {e}");
                    }
                });
            }
            Ok(Event::Incoming(Packet::SubAck(_))) => {
                let (mqtt, topic) = (shared.mqtt.clone(), shared.marker_topic.clone());
                tokio::spawn(async move {
                    if let Err(e) = mqtt
                        .publish(topic, QoS::AtLeastOnce, false, generation.to_string())
                        .await
                    {
                        tracing::debug!("cannot publish the readiness marker: {e}");
                    }
                });
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                if p.topic == shared.marker_topic {
                    if p.payload.as_ref() == generation.to_string().as_bytes() {
                        shared.link.send_replace(LinkState::Ready);
                    }
                } else {
                    shared.dispatch(&p.topic, &p.payload);
                }
            }
            Ok(_) => {}
            Err(e) => {
                let state = match &e {
                    ConnectionError::ConnectionRefused(code) => {
                        LinkState::Refused(format!("{code:?}"))
                    }
                    other => LinkState::Connecting {
                        last_error: Some(other.to_string()),
                    },
                };
                tracing::debug!("connection to {}: {e}", shared.broker);
                shared.link.send_replace(state);
                shared.connection_lost();
                let jitter = 1.0 - RECONNECT_JITTER * rand::random::<f64>();
                tokio::time::sleep(delay.mul_f64(jitter)).await;
                delay = (delay * 2).min(RECONNECT_MAX);
            }
        }
    }
}
