//! One MQTT connection, with its event loop polled by a task of its own, so
//! that a slow driver call never stalls keep-alives and acknowledgements.
//!
//! The pump task resubscribes after every (re)connection and then reports
//! `LinkEvent::Connected`. Reconnection delays back off from
//! `RECONNECT_FIRST` to `RECONNECT_MAX`, each shortened by a random fraction
//! of up to a half, so that many runners do not reconnect in lockstep.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rumqttc::{
    AsyncClient, Event, EventLoop, MqttOptions, Outgoing, Packet, Publish, QoS, SubscribeFilter,
};
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinHandle;

/// Capacity of the client's request channel.
const REQUEST_CAPACITY: usize = 1024;

/// Capacity of the channel of received messages.
const EVENT_CAPACITY: usize = 1024;

const RECONNECT_FIRST: Duration = Duration::from_millis(100);
const RECONNECT_MAX: Duration = Duration::from_secs(5);

/// Fraction of a reconnection delay that jitter may take off.
const RECONNECT_JITTER: f64 = 0.5;

/// What the link reports to its owner.
#[derive(Debug)]
pub enum LinkEvent {
    /// Connected and subscribed; `first` is false after a reconnection.
    Connected {
        first: bool,
    },
    Message(Publish),
}

/// Counts of QoS 1 publishes sent and acknowledged, to wait for delivery.
#[derive(Default)]
struct Acks {
    sent: AtomicU64,
    acked: AtomicU64,
    changed: Notify,
}

/// An MQTT connection owned by one runner or by the supervisor.
pub struct MqttLink {
    client: AsyncClient,
    events: mpsc::Receiver<LinkEvent>,
    acks: Arc<Acks>,
    pump: AbortOnDrop,
}

/// Aborts the task when dropped, so that a runner that panics does not leave
/// its connection behind.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl MqttLink {
    /// Starts connecting with `options`; `subscriptions` are (re)made at QoS 1
    /// after every connection.
    pub fn open(options: MqttOptions, subscriptions: Vec<String>) -> MqttLink {
        let (client, eventloop) = AsyncClient::new(options, REQUEST_CAPACITY);
        let (events_tx, events) = mpsc::channel(EVENT_CAPACITY);
        let acks = Arc::new(Acks::default());
        let pump = tokio::spawn(pump(
            eventloop,
            client.clone(),
            subscriptions,
            events_tx,
            acks.clone(),
        ));
        MqttLink {
            client,
            events,
            acks,
            pump: AbortOnDrop(pump),
        }
    }

    /// The next event; `None` once the connection is closed for good.
    pub async fn recv(&mut self) -> Option<LinkEvent> {
        self.events.recv().await
    }

    /// Publishes at QoS 1. Waits while the request channel is full.
    pub async fn publish(
        &self,
        topic: String,
        retain: bool,
        payload: Vec<u8>,
    ) -> anyhow::Result<()> {
        self.acks.sent.fetch_add(1, Ordering::SeqCst);
        self.client
            .publish(topic, QoS::AtLeastOnce, retain, payload)
            .await
            .map_err(|e| anyhow::anyhow!("MQTT client closed: {e}"))
    }

    /// Waits until every publish made so far was acknowledged by the broker,
    /// for at most `timeout`. Returns whether they all were.
    pub async fn flush(&self, timeout: Duration) -> bool {
        let all_acked = async {
            loop {
                let notified = self.acks.changed.notified();
                if self.acks.acked.load(Ordering::SeqCst) >= self.acks.sent.load(Ordering::SeqCst) {
                    return;
                }
                notified.await;
            }
        };
        tokio::time::timeout(timeout, all_acked).await.is_ok()
    }

    /// Flushes, then disconnects, each step for at most `timeout`.
    pub async fn close(self, timeout: Duration) {
        self.flush(timeout).await;
        let MqttLink {
            client,
            mut events,
            pump,
            ..
        } = self;
        if client.try_disconnect().is_ok() {
            // The pump ends once the DISCONNECT packet is written.
            let _ = tokio::time::timeout(timeout, async { while events.recv().await.is_some() {} })
                .await;
        }
        drop(pump);
    }
}

async fn pump(
    mut eventloop: EventLoop,
    client: AsyncClient,
    subscriptions: Vec<String>,
    events: mpsc::Sender<LinkEvent>,
    acks: Arc<Acks>,
) {
    let client_id = eventloop.mqtt_options.client_id();
    let mut connections = 0u64;
    let mut failures = 0u32;
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                failures = 0;
                if subscriptions.is_empty() {
                    connections += 1;
                    if events
                        .send(LinkEvent::Connected {
                            first: connections == 1,
                        })
                        .await
                        .is_err()
                    {
                        return;
                    }
                } else {
                    let filters = subscriptions
                        .iter()
                        .map(|t| SubscribeFilter::new(t.clone(), QoS::AtLeastOnce));
                    if let Err(e) = client.try_subscribe_many(filters) {
                        tracing::error!(%client_id, error = %e, "cannot subscribe");
                    }
                }
            }
            Ok(Event::Incoming(Packet::SubAck(_))) => {
                connections += 1;
                if events
                    .send(LinkEvent::Connected {
                        first: connections == 1,
                    })
                    .await
                    .is_err()
                {
                    return;
                }
            }
            Ok(Event::Incoming(Packet::Publish(publish))) => {
                if events.send(LinkEvent::Message(publish)).await.is_err() {
                    return;
                }
            }
            Ok(Event::Incoming(Packet::PubAck(_))) => {
                acks.acked.fetch_add(1, Ordering::SeqCst);
                acks.changed.notify_waiters();
            }
            Ok(Event::Outgoing(Outgoing::Disconnect)) => return,
            Ok(_) => {}
            Err(e) => {
                failures = failures.saturating_add(1);
                let delay = reconnect_delay(failures, rand::random::<f64>());
                if failures == 1 {
                    tracing::warn!(%client_id, error = %e, "MQTT connection lost; reconnecting");
                } else {
                    tracing::debug!(%client_id, error = %e, ?delay, "MQTT reconnection failed");
                }
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// The pause after the `failures`-th consecutive connection failure.
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
    fn reconnect_delays_back_off_with_jitter() {
        assert_eq!(reconnect_delay(1, 0.0), RECONNECT_FIRST);
        assert_eq!(reconnect_delay(2, 0.0), RECONNECT_FIRST * 2);
        assert_eq!(reconnect_delay(30, 0.0), RECONNECT_MAX);
        assert_eq!(reconnect_delay(1, 1.0), RECONNECT_FIRST / 2);
    }
}
