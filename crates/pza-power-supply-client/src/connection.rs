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
use rumqttc::{
    AsyncClient, ConnectionError, Event, EventLoop, Outgoing, Packet, QoS, SubscribeFilter,
};
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

/// The start of every `pza_id` this client makes, apart from the server's
/// own (`srv-…`).
pub const ID_PREFIX: &str = "cli-";

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
    /// Closed by [`Client::close`](crate::Client::close): the event loop
    /// task has ended.
    Closed,
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

    /// Waits until the event loop task has sent the MQTT `DISCONNECT` and
    /// stopped, at most `timeout`; `false` if it did not in time.
    pub(crate) async fn wait_closed(&self, timeout: Duration) -> bool {
        let mut link = self.link.subscribe();
        tokio::time::timeout(timeout, async {
            link.wait_for(|state| *state == LinkState::Closed)
                .await
                .is_ok()
        })
        .await
        .unwrap_or(false)
    }

    /// A `pza_id` no other command of any client uses.
    pub(crate) fn next_id(&self) -> String {
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        format!("{ID_PREFIX}{}-{n}", self.id_prefix)
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
                    LinkState::Closed => return Err(Error::Closed),
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
            LinkState::Closed => "the client was closed".into(),
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

/// Polls the event loop until the client disconnects (or the task is
/// aborted, when the last handle goes).
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
            Ok(Event::Outgoing(Outgoing::Disconnect)) => {
                shared.link.send_replace(LinkState::Closed);
                shared.connection_lost();
                return;
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

#[cfg(test)]
mod tests {
    use super::*;
    use rumqttc::MqttOptions;

    const T: Duration = Duration::from_secs(2);

    /// A `Shared` whose event loop is never polled: requests stay queued,
    /// and the test plays the broker by calling `dispatch`.
    fn shared(ready: bool) -> (Arc<Shared>, EventLoop) {
        let (mqtt, eventloop) = AsyncClient::new(MqttOptions::new("t", "127.0.0.1", 1), 16);
        let shared = Arc::new(Shared::new(mqtt, None, "127.0.0.1:1".into(), "t"));
        if ready {
            shared.link.send_replace(LinkState::Ready);
        }
        (shared, eventloop)
    }

    /// Starts a voltage command to `a`; returns its future's task and its id.
    fn voltage_command(shared: &Arc<Shared>) -> (JoinHandle<Result<Message>>, String) {
        let id = format!("{ID_PREFIX}{}-1", shared.id_prefix);
        let shared = shared.clone();
        let task = tokio::spawn(async move {
            shared
                .command(
                    "a",
                    "power-supply/a/voltage/cmd".into(),
                    serde_json::Map::new(),
                    Kind::Voltage,
                    T,
                )
                .await
        });
        (task, id)
    }

    async fn registered(shared: &Shared, id: &str) {
        while !lock(&shared.pending).contains_key(id) {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_reply_with_the_commands_id_answers_it() {
        let (shared, _eventloop) = shared(true);
        let (task, id) = voltage_command(&shared);
        registered(&shared, &id).await;
        shared.dispatch(
            "power-supply/a/voltage",
            format!(r#"{{"pza_id":"{id}","voltage":"5.00"}}"#).as_bytes(),
        );
        assert_eq!(task.await.unwrap().unwrap(), Message::Voltage(5.0));
        assert!(lock(&shared.pending).is_empty());
        assert_eq!(
            shared.with_store(|s| s.get("a").and_then(|s| s.voltage)),
            Some(5.0)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_error_with_the_commands_id_refuses_it() {
        let (shared, _eventloop) = shared(true);
        let (task, id) = voltage_command(&shared);
        registered(&shared, &id).await;
        shared.dispatch(
            "power-supply/a/error",
            format!(
                r#"{{"pza_id":"{id}","message":"voltage 31 exceeds security_max_voltage 30"}}"#
            )
            .as_bytes(),
        );
        match task.await.unwrap() {
            Err(Error::Rejected { message }) => {
                assert_eq!(message, "voltage 31 exceeds security_max_voltage 30")
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn replies_of_another_runner_or_topic_are_not_taken_and_the_command_times_out() {
        let (shared, _eventloop) = shared(true);
        shared.dispatch("power-supply/a/status", br#"{"status":"Running"}"#);
        let (task, id) = voltage_command(&shared);
        registered(&shared, &id).await;
        for topic in [
            "power-supply/b/voltage",
            "power-supply/a/measure/voltage",
            "power-supply/a/current",
        ] {
            let field = if topic.ends_with("current") {
                "current"
            } else {
                "voltage"
            };
            shared.dispatch(
                topic,
                format!(r#"{{"pza_id":"{id}","{field}":"1"}}"#).as_bytes(),
            );
        }
        shared.dispatch(
            "power-supply/b/error",
            format!(r#"{{"pza_id":"{id}","message":"x"}}"#).as_bytes(),
        );
        match task.await.unwrap() {
            Err(Error::Timeout {
                device,
                after,
                last_status,
            }) => {
                assert_eq!((device.as_str(), after), ("a", T));
                assert_eq!(last_status, Some(Status::Running));
            }
            other => panic!("{other:?}"),
        }
        assert!(lock(&shared.pending).is_empty(), "forgotten on timeout");
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_loss_ends_the_waiting_commands_at_once() {
        let (shared, _eventloop) = shared(true);
        let (task, id) = voltage_command(&shared);
        registered(&shared, &id).await;
        let before = Instant::now();
        shared.connection_lost();
        assert!(matches!(
            task.await.unwrap(),
            Err(Error::ConnectionLost { device }) if device == "a"
        ));
        assert!(before.elapsed() < T);
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_connection_a_command_says_the_broker_did_not_answer() {
        let (shared, _eventloop) = shared(false);
        shared.link.send_replace(LinkState::Connecting {
            last_error: Some("I/O: connection refused".into()),
        });
        let (task, _) = voltage_command(&shared);
        match task.await.unwrap() {
            Err(e @ Error::BrokerUnreachable { .. }) => assert_eq!(
                e.to_string(),
                "broker 127.0.0.1:1 did not answer within 2000 ms (I/O: connection refused)"
            ),
            other => panic!("{other:?}"),
        }
        shared
            .link
            .send_replace(LinkState::Refused("BadUserNamePassword".into()));
        let (task, _) = voltage_command(&shared);
        assert!(matches!(
            task.await.unwrap(),
            Err(Error::ConnectionRefused { .. })
        ));
    }
}
