//! One reconnecting MQTT client connection, with its event loop polled by a
//! task of its own, so that a slow owner (a device call in progress) never
//! stalls keep-alives and acknowledgements.
//!
//! The pump task resubscribes after every (re)connection and then reports
//! `LinkEvent::Connected`. Reconnection delays back off from
//! `RECONNECT_FIRST` to `RECONNECT_MAX`, each shortened by a random fraction
//! of up to a half, so that many clients do not reconnect in lockstep.
//!
//! While the broker is out of reach, rumqttc keeps requests in its channel
//! until it reconnects, and a full channel would block the publisher (a
//! task in the middle of its work, unable to see its stop token). So a
//! publish made while disconnected never waits: at most `OFFLINE_QUEUE_MAX`
//! of them are queued, to go out after the reconnection, and the rest are
//! dropped. Nothing that matters is lost by that: the sessions are clean (the
//! broker forgets subscriptions and queued messages anyway), and the owner of
//! the link republishes its retained state when it sees
//! `Connected { first: false }`.
//!
//! A link may be shared by several owners (the runners of a server on one
//! connection): a [`Dispatch`] given to [`MqttLink::open_dispatched`] takes
//! the messages meant for others before the link's owner sees them, in the
//! pump task, and the others publish through a [`Publisher`] and learn of
//! reconnections from [`Readiness::connections`].

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rumqttc::{
    AsyncClient, Event, EventLoop, MqttOptions, Outgoing, Packet, Publish, QoS, SubscribeFilter,
    SubscribeReasonCode,
};
use tokio::sync::{mpsc, watch, Notify};
use tokio::task::JoinHandle;

/// Capacity of the client's request channel.
const REQUEST_CAPACITY: usize = 1024;

/// Capacity of the channel of received messages.
const EVENT_CAPACITY: usize = 1024;

/// Most publishes queued while disconnected; well below `REQUEST_CAPACITY`,
/// so that the subscription made at reconnection always finds room.
const OFFLINE_QUEUE_MAX: usize = 256;

const RECONNECT_FIRST: Duration = Duration::from_millis(100);
const RECONNECT_MAX: Duration = Duration::from_secs(5);

/// Fraction of a reconnection delay that jitter may take off.
const RECONNECT_JITTER: f64 = 0.5;

/// During a long outage, one warning every this many failed attempts (the
/// others are logged at debug level).
const WARN_EVERY_FAILURES: u32 = 60;

/// Flushes that ended on their timeout while connected, in this process:
/// each one is a stall (a restart waiting for acknowledgements that will
/// not come), so it is counted to be seen by tests and diagnostics.
static FLUSH_TIMEOUTS: AtomicU64 = AtomicU64::new(0);

/// How many flushes, on any link of this process, waited for their whole
/// timeout while connected.
pub fn flush_timeouts() -> u64 {
    FLUSH_TIMEOUTS.load(Ordering::Relaxed)
}

/// What the link reports to its owner.
#[derive(Debug)]
pub enum LinkEvent {
    /// Connected and subscribed; `first` is false after a reconnection.
    Connected {
        first: bool,
    },
    Message(Publish),
}

/// Takes some of a link's incoming messages, in the pump task, before the
/// link's owner sees them. It must not wait: every message of the link
/// passes through it.
pub trait Dispatch: Send + Sync + 'static {
    /// `Ok` when the message was taken; `Err` gives it back to the owner.
    fn dispatch(&self, publish: Publish) -> Result<(), Publish>;
}

/// State shared by the link and its pump.
struct Shared {
    /// QoS 1 publishes queued, and those acknowledged or given up for lost.
    /// `acked <= sent` always. A publish is counted in `sent` before it is
    /// handed to the client, never after: its acknowledgement may be handled
    /// by the pump before the publisher runs again, and an ack counted
    /// against a `sent` that does not include its publish yet would be
    /// clamped away, leaving every later `flush` to wait for its timeout.
    sent: AtomicU64,
    acked: AtomicU64,
    /// Wakes `flush` when `acked` moves or the connection drops.
    changed: Notify,
    /// Between a CONNACK and the next connection error.
    connected: AtomicBool,
    /// Publishes queued since the connection dropped.
    offline_queued: AtomicUsize,
    /// Connected and subscribed: `Connected` was reported for this connection.
    ready: AtomicBool,
    /// How many times the link was connected and subscribed.
    connections: watch::Sender<u64>,
}

impl Default for Shared {
    fn default() -> Shared {
        Shared {
            sent: AtomicU64::new(0),
            acked: AtomicU64::new(0),
            changed: Notify::new(),
            connected: AtomicBool::new(false),
            offline_queued: AtomicUsize::new(0),
            ready: AtomicBool::new(false),
            connections: watch::Sender::new(0),
        }
    }
}

impl Shared {
    /// One more publish about to be queued.
    fn queued(&self) {
        self.sent.fetch_add(1, Ordering::SeqCst);
    }

    /// One more publish acknowledged (or lost), never counting past `sent`.
    fn ack(&self) {
        let sent = self.sent.load(Ordering::SeqCst);
        let _ = self
            .acked
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |a| {
                Some((a + 1).min(sent))
            });
        self.changed.notify_waiters();
    }

    /// The connection dropped: with a clean session, every publish queued or
    /// in flight until now is gone (rumqttc clears them at reconnection).
    fn disconnected(&self) {
        self.connected.store(false, Ordering::SeqCst);
        self.ready.store(false, Ordering::SeqCst);
        self.offline_queued.store(0, Ordering::SeqCst);
        self.acked
            .store(self.sent.load(Ordering::SeqCst), Ordering::SeqCst);
        self.changed.notify_waiters();
    }
}

/// A reconnecting MQTT connection, with one owner that receives on it.
pub struct MqttLink {
    client: AsyncClient,
    events: mpsc::Receiver<LinkEvent>,
    shared: Arc<Shared>,
    pump: AbortOnDrop,
}

impl std::fmt::Debug for MqttLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MqttLink")
            .field("connected", &self.is_connected())
            .field("ready", &self.is_ready())
            .finish_non_exhaustive()
    }
}

/// A publish refused because the MQTT client is closed: the link is gone.
#[derive(Debug, thiserror::Error)]
#[error("MQTT client closed: {0}")]
pub struct LinkClosed(#[from] rumqttc::ClientError);

/// Publishes on a link it does not own (see [`MqttLink::publisher`]).
#[derive(Clone)]
pub struct Publisher {
    client: AsyncClient,
    shared: Arc<Shared>,
}

impl Publisher {
    /// Publishes at QoS 1. While connected, waits while the request channel
    /// is full (back-pressure); while disconnected, never waits (see the
    /// module doc).
    pub async fn publish(
        &self,
        topic: String,
        retain: bool,
        payload: Vec<u8>,
    ) -> Result<(), LinkClosed> {
        if !self.shared.connected.load(Ordering::SeqCst) {
            self.publish_offline(topic, retain, payload);
            return Ok(());
        }
        self.shared.queued();
        let queued = self
            .client
            .publish(topic, QoS::AtLeastOnce, retain, payload)
            .await;
        if let Err(e) = queued {
            // Never sent, so never acknowledged: given up for lost.
            self.shared.ack();
            return Err(LinkClosed(e));
        }
        Ok(())
    }

    /// `publish` without ever waiting: false, and nothing sent, when the
    /// request channel is full or closed.
    pub fn try_publish(&self, topic: &str, retain: bool, payload: &[u8]) -> bool {
        if !self.shared.connected.load(Ordering::SeqCst) {
            self.publish_offline(topic.to_string(), retain, payload.to_vec());
            return true;
        }
        self.shared.queued();
        let queued = self
            .client
            .try_publish(topic, QoS::AtLeastOnce, retain, payload.to_vec());
        if queued.is_err() {
            self.shared.ack();
            return false;
        }
        true
    }

    /// While disconnected: queued for the reconnection, or dropped beyond
    /// `OFFLINE_QUEUE_MAX`.
    fn publish_offline(&self, topic: String, retain: bool, payload: Vec<u8>) {
        if self.shared.offline_queued.fetch_add(1, Ordering::SeqCst) >= OFFLINE_QUEUE_MAX {
            tracing::debug!(%topic, "MQTT broker out of reach: message dropped");
            return;
        }
        self.shared.queued();
        if let Err(e) = self
            .client
            .try_publish(topic.clone(), QoS::AtLeastOnce, retain, payload)
        {
            self.shared.ack();
            tracing::debug!(%topic, error = %e, "MQTT broker out of reach: message dropped");
        }
    }
}

/// Aborts the task when dropped, so that an owner that panics does not leave
/// its connection behind.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Whether a link is subscribed on its present connection, readable by
/// someone who does not hold the link (a supervisor, while the task it
/// lent the link to has it).
#[derive(Clone)]
pub struct Readiness(Arc<Shared>);

impl Readiness {
    /// Connected and subscribed on the present connection.
    pub fn is_ready(&self) -> bool {
        self.0.ready.load(Ordering::SeqCst)
    }

    /// How many times the link has been connected and subscribed; it moves
    /// at every (re)connection, just before the owner's `Connected`.
    pub fn connections(&self) -> watch::Receiver<u64> {
        self.0.connections.subscribe()
    }
}

impl MqttLink {
    /// A handle telling whether this link is subscribed, at any time.
    pub fn readiness(&self) -> Readiness {
        Readiness(self.shared.clone())
    }

    /// Starts connecting with `options`; `subscriptions` are (re)made at QoS 1
    /// after every connection.
    pub fn open(options: MqttOptions, subscriptions: Vec<String>) -> MqttLink {
        Self::open_dispatched(options, subscriptions, None)
    }

    /// `open`, with `dispatch` taking the messages meant for others.
    pub fn open_dispatched(
        options: MqttOptions,
        subscriptions: Vec<String>,
        dispatch: Option<Arc<dyn Dispatch>>,
    ) -> MqttLink {
        let (client, mut eventloop) = AsyncClient::new(options, REQUEST_CAPACITY);
        let mut network = rumqttc::NetworkOptions::new();
        network.set_tcp_nodelay(true);
        eventloop.set_network_options(network);
        let (events_tx, events) = mpsc::channel(EVENT_CAPACITY);
        let shared = Arc::new(Shared::default());
        let pump = tokio::spawn(pump(
            eventloop,
            client.clone(),
            subscriptions,
            Pipes {
                events: events_tx,
                dispatch,
            },
            shared.clone(),
        ));
        MqttLink {
            client,
            events,
            shared,
            pump: AbortOnDrop(pump),
        }
    }

    /// The next event already received, without waiting.
    pub fn try_recv(&mut self) -> Option<LinkEvent> {
        self.events.try_recv().ok()
    }

    /// The next event; `None` once the connection is closed for good.
    pub async fn recv(&mut self) -> Option<LinkEvent> {
        self.events.recv().await
    }

    /// Connected and subscribed (its `Connected` event was sent), so that a
    /// new owner of a link already up need not wait for that event.
    pub fn is_ready(&self) -> bool {
        self.shared.ready.load(Ordering::SeqCst)
    }

    /// Whether the link is connected to the broker now.
    pub fn is_connected(&self) -> bool {
        self.shared.connected.load(Ordering::SeqCst)
    }

    /// Publishes at QoS 1. While connected, waits while the request channel
    /// is full (back-pressure); while disconnected, never waits (see the
    /// module doc).
    pub async fn publish(
        &self,
        topic: String,
        retain: bool,
        payload: Vec<u8>,
    ) -> Result<(), LinkClosed> {
        self.publisher().publish(topic, retain, payload).await
    }

    /// A handle that publishes on this link from another task, while the
    /// owner of the link keeps receiving on it.
    pub fn publisher(&self) -> Publisher {
        Publisher {
            client: self.client.clone(),
            shared: self.shared.clone(),
        }
    }

    /// Waits until every publish made so far was acknowledged by the broker,
    /// for at most `timeout`. Returns whether they all were; returns `false`
    /// at once while disconnected, as nothing can be acknowledged then.
    pub async fn flush(&self, timeout: Duration) -> bool {
        let all_acked = async {
            loop {
                let notified = self.shared.changed.notified();
                if !self.is_connected() {
                    return false;
                }
                if self.shared.acked.load(Ordering::SeqCst)
                    >= self.shared.sent.load(Ordering::SeqCst)
                {
                    return true;
                }
                notified.await;
            }
        };
        match tokio::time::timeout(timeout, all_acked).await {
            Ok(all) => all,
            Err(_) => {
                if self.is_connected() {
                    FLUSH_TIMEOUTS.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        sent = self.shared.sent.load(Ordering::SeqCst),
                        acked = self.shared.acked.load(Ordering::SeqCst),
                        timeout_ms = timeout.as_millis() as u64,
                        "MQTT publishes not acknowledged in time"
                    );
                }
                false
            }
        }
    }

    /// Flushes, then disconnects, each step for at most `timeout`, and stops
    /// the pump. While disconnected, the connection is simply dropped.
    pub async fn close(mut self, timeout: Duration) {
        self.flush(timeout).await;
        if self.is_connected() && self.client.try_disconnect().is_ok() {
            // The pump ends once the DISCONNECT packet is written.
            let events = &mut self.events;
            let _ = tokio::time::timeout(timeout, async { while events.recv().await.is_some() {} })
                .await;
        }
        self.pump.0.abort();
    }
}

/// Marks the link ready and reports the `connections`-th connection;
/// false once nobody listens any more.
async fn report_ready(shared: &Shared, events: &mpsc::Sender<LinkEvent>, connections: u64) -> bool {
    shared.ready.store(true, Ordering::SeqCst);
    shared.connections.send_replace(connections);
    events
        .send(LinkEvent::Connected {
            first: connections == 1,
        })
        .await
        .is_ok()
}

/// Where the pump hands what it receives.
struct Pipes {
    /// To the link's owner.
    events: mpsc::Sender<LinkEvent>,
    /// Takes the messages meant for others first.
    dispatch: Option<Arc<dyn Dispatch>>,
}

async fn pump(
    mut eventloop: EventLoop,
    client: AsyncClient,
    subscriptions: Vec<String>,
    pipes: Pipes,
    shared: Arc<Shared>,
) {
    let Pipes { events, dispatch } = pipes;
    let client_id = eventloop.mqtt_options.client_id();
    let (host, port) = eventloop.mqtt_options.broker_address();
    let mut connections = 0u64;
    let mut failures = 0u32;
    let mut ever_connected = false;
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                if failures > 0 {
                    tracing::info!(%client_id, "MQTT connection back");
                }
                failures = 0;
                ever_connected = true;
                shared.connected.store(true, Ordering::SeqCst);
                shared.offline_queued.store(0, Ordering::SeqCst);
                if subscriptions.is_empty() {
                    connections += 1;
                    if !report_ready(&shared, &events, connections).await {
                        return;
                    }
                } else {
                    subscribe(&client, &subscriptions, &client_id);
                }
            }
            Ok(Event::Incoming(Packet::SubAck(ack))) => {
                if ack
                    .return_codes
                    .iter()
                    .any(|c| matches!(c, SubscribeReasonCode::Failure))
                {
                    tracing::error!(%client_id, filters = ?subscriptions, "the MQTT broker refused a subscription (check its access control list)");
                }
                connections += 1;
                if !report_ready(&shared, &events, connections).await {
                    return;
                }
            }
            Ok(Event::Incoming(Packet::Publish(publish))) => {
                let publish = match &dispatch {
                    Some(dispatch) => match dispatch.dispatch(publish) {
                        Ok(()) => continue,
                        Err(publish) => publish,
                    },
                    None => publish,
                };
                if events.send(LinkEvent::Message(publish)).await.is_err() {
                    return;
                }
            }
            Ok(Event::Incoming(Packet::PubAck(_))) => shared.ack(),
            Ok(Event::Outgoing(Outgoing::Disconnect)) => return,
            Ok(_) => {}
            Err(e) => {
                shared.disconnected();
                failures = failures.saturating_add(1);
                let delay = reconnect_delay(failures, rand::random::<f64>());
                if failures == 1 && ever_connected {
                    tracing::warn!(%client_id, error = %e, "MQTT connection lost; reconnecting");
                } else if failures == 1 || failures % WARN_EVERY_FAILURES == 0 {
                    tracing::warn!(%client_id, broker = %format!("{host}:{port}"), error = %e, attempts = failures, "cannot connect to the MQTT broker; retrying");
                } else {
                    tracing::debug!(%client_id, error = %e, ?delay, "MQTT reconnection failed");
                }
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// Queues the subscription of every filter. The request channel has room
/// for it (see `OFFLINE_QUEUE_MAX`); if it is full all the same, the request
/// waits for room in a task of its own, as the pump must go on polling to
/// make that room.
fn subscribe(client: &AsyncClient, subscriptions: &[String], client_id: &str) {
    let filters = || {
        subscriptions
            .iter()
            .map(|t| SubscribeFilter::new(t.clone(), QoS::AtLeastOnce))
            .collect::<Vec<_>>()
    };
    if client.try_subscribe_many(filters()).is_err() {
        let client = client.clone();
        let filters = filters();
        let client_id = client_id.to_string();
        tokio::spawn(async move {
            if let Err(e) = client.subscribe_many(filters).await {
                tracing::error!(%client_id, error = %e, "cannot subscribe");
            }
        });
    }
}

/// The pause after the `failures`-th consecutive connection failure:
/// `RECONNECT_FIRST * 2^(failures-1)`, at most `RECONNECT_MAX`, shortened by
/// `RECONNECT_JITTER * random`, where `random` lies in `[0, 1)`.
fn reconnect_delay(failures: u32, random: f64) -> Duration {
    let exponent = failures.saturating_sub(1).min(16);
    let base = RECONNECT_FIRST
        .saturating_mul(1 << exponent)
        .min(RECONNECT_MAX);
    base.mul_f64(1.0 - RECONNECT_JITTER * random.clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconnect_delays_back_off_then_cap() {
        let bases: Vec<Duration> = (1..=8).map(|n| reconnect_delay(n, 0.0)).collect();
        let ms = Duration::from_millis;
        assert_eq!(
            bases,
            vec![
                ms(100),
                ms(200),
                ms(400),
                ms(800),
                ms(1600),
                ms(3200),
                ms(5000),
                ms(5000)
            ]
        );
        assert_eq!(reconnect_delay(u32::MAX, 0.0), RECONNECT_MAX);
        assert_eq!(reconnect_delay(0, 0.0), RECONNECT_FIRST);
    }

    #[test]
    fn jitter_only_shortens_by_at_most_half() {
        for failures in 1..=10 {
            let base = reconnect_delay(failures, 0.0);
            assert_eq!(reconnect_delay(failures, 1.0), base / 2);
            for i in 0..100 {
                let d = reconnect_delay(failures, f64::from(i) / 100.0);
                assert!(d <= base && d >= base / 2, "{failures}: {d:?}");
            }
        }
        // Out-of-range draws are clamped.
        assert_eq!(reconnect_delay(1, -3.0), RECONNECT_FIRST);
        assert_eq!(reconnect_delay(1, 7.0), RECONNECT_FIRST / 2);
    }

    /// 100 runners that lose the broker at the same moment draw their own
    /// delays: they spread over the jitter window instead of reconnecting
    /// all at once, at every step of the back-off.
    #[test]
    fn a_hundred_runners_do_not_reconnect_in_lockstep() {
        for failures in [1, 3, 10] {
            let base = reconnect_delay(failures, 0.0);
            let mut delays: Vec<Duration> = (0..100)
                .map(|_| reconnect_delay(failures, rand::random::<f64>()))
                .collect();
            delays.sort();
            delays.dedup();
            assert!(delays.len() >= 95, "{} distinct delays", delays.len());
            let spread = delays[delays.len() - 1] - delays[0];
            // 100 uniform draws all within a quarter of the window: odds
            // below 1e-28.
            assert!(
                spread >= base.mul_f64(RECONNECT_JITTER / 2.0),
                "spread {spread:?} of base {base:?}"
            );
            // About 5 of the 100 fall in any 5% slice of the window; 25 or
            // more in one slice has odds below 1e-8.
            let slice = base.mul_f64(RECONNECT_JITTER * 0.05);
            for (i, start) in delays.iter().enumerate() {
                let within = delays[i..]
                    .iter()
                    .take_while(|d| **d - *start <= slice)
                    .count();
                assert!(within < 25, "{within} delays within {slice:?} of {start:?}");
            }
        }
    }

    /// The pump may handle a publish's acknowledgement before the publisher
    /// runs again after queueing it: the ack must count all the same.
    #[test]
    fn an_ack_handled_before_the_publisher_resumes_is_kept() {
        let shared = Shared::default();
        for _ in 0..70_000 {
            shared.queued();
            shared.ack();
        }
        assert_eq!(shared.acked.load(Ordering::SeqCst), 70_000);
        assert_eq!(shared.sent.load(Ordering::SeqCst), 70_000);
    }

    #[test]
    fn lost_publishes_do_not_hold_up_flush_accounting() {
        let shared = Shared::default();
        shared.sent.store(5, Ordering::SeqCst);
        shared.ack();
        assert_eq!(shared.acked.load(Ordering::SeqCst), 1);
        shared.disconnected();
        assert_eq!(shared.acked.load(Ordering::SeqCst), 5);
        // A late acknowledgement never counts past what was sent.
        shared.ack();
        assert_eq!(shared.acked.load(Ordering::SeqCst), 5);
    }
}
