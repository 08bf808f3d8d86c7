//! The harness's MQTT client (rumqttc): its event loop runs in a task of its
//! own and hands every received message over with the instant it arrived, so
//! that a latency is stamped when the message leaves the socket, not when the
//! harness gets round to it.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use pza_toolkit::mqtt::{client_options, BrokerEndpoint};
use rumqttc::{AsyncClient, Event, NetworkOptions, Packet, QoS, SubscribeFilter};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Capacity of the client's request channel: the runners' links use 1024.
const REQUEST_CAPACITY: usize = 1024;

/// Longest wait for the broker to accept the connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Pause between two connection attempts while the broker is not up yet.
const CONNECT_RETRY: Duration = Duration::from_millis(2);

/// Longest wait for a subscription to be acknowledged.
const SUBACK_TIMEOUT: Duration = Duration::from_secs(10);

/// A message received, stamped on arrival.
#[derive(Debug, Clone)]
pub struct Received {
    pub at: Instant,
    pub topic: String,
    pub payload: Vec<u8>,
    pub retain: bool,
}

impl Received {
    pub fn json(&self) -> Option<Value> {
        serde_json::from_slice(&self.payload).ok()
    }

    /// The string field `key` of the JSON payload.
    pub fn field(&self, key: &str) -> Option<String> {
        self.json()?.get(key)?.as_str().map(str::to_string)
    }
}

enum PumpEvent {
    Connected,
    SubAck,
    Message(Received),
    Failed(String),
}

/// An MQTT connection of the harness, at QoS 1.
pub struct BenchClient {
    client: AsyncClient,
    events: mpsc::UnboundedReceiver<PumpEvent>,
    /// Messages that arrived while waiting for something else.
    pending: VecDeque<Received>,
    pump: JoinHandle<()>,
}

impl Drop for BenchClient {
    fn drop(&mut self) {
        self.pump.abort();
    }
}

/// Network options with Nagle's algorithm off (`TCP_NODELAY`).
///
/// rumqttc leaves Nagle's algorithm on by default and writes the PUBACK of a
/// received message and the publish that follows in two writes: the second
/// then waits for the peer's delayed ACK, about 40 ms on Linux. The harness's
/// clients turn it off so that what they measure is the server.
pub fn no_delay() -> NetworkOptions {
    let mut options = NetworkOptions::new();
    options.set_tcp_nodelay(true);
    options
}

/// The endpoint of a broker on 127.0.0.1:`port`, without credentials.
pub fn local_endpoint(port: u16) -> BrokerEndpoint {
    BrokerEndpoint::tcp("127.0.0.1", port)
}

impl BenchClient {
    /// Connects to the broker on 127.0.0.1:`port` with the client options the
    /// server's own connections use.
    pub async fn connect(port: u16, id: &str) -> anyhow::Result<BenchClient> {
        Self::connect_with(port, id, None).await
    }

    /// Same, allowing `inflight` unacknowledged QoS 1 publishes (rumqttc's
    /// default is 100), for load generators.
    pub async fn connect_with(
        port: u16,
        id: &str,
        inflight: Option<u16>,
    ) -> anyhow::Result<BenchClient> {
        let mut options = client_options(id, &local_endpoint(port), None);
        if let Some(inflight) = inflight {
            options.set_inflight(inflight);
        }
        let (client, mut eventloop) = AsyncClient::new(options, REQUEST_CAPACITY);
        eventloop.set_network_options(no_delay());
        let (tx, events) = mpsc::unbounded_channel();
        let pump = tokio::spawn(async move {
            let mut connected = false;
            loop {
                let event = match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        connected = true;
                        PumpEvent::Connected
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => PumpEvent::SubAck,
                    Ok(Event::Incoming(Packet::Publish(p))) => PumpEvent::Message(Received {
                        at: Instant::now(),
                        topic: p.topic,
                        payload: p.payload.to_vec(),
                        retain: p.retain,
                    }),
                    Ok(_) => continue,
                    // Until the first CONNACK the broker may still be starting:
                    // the caller bounds the attempts with CONNECT_TIMEOUT.
                    Err(_) if !connected => {
                        tokio::time::sleep(CONNECT_RETRY).await;
                        continue;
                    }
                    Err(e) => {
                        let _ = tx.send(PumpEvent::Failed(e.to_string()));
                        return;
                    }
                };
                if tx.send(event).is_err() {
                    return;
                }
            }
        });
        let mut me = BenchClient {
            client,
            events,
            pending: VecDeque::new(),
            pump,
        };
        let connected = tokio::time::timeout(CONNECT_TIMEOUT, async {
            loop {
                match me.events.recv().await {
                    Some(PumpEvent::Connected) => return Ok(()),
                    Some(PumpEvent::Failed(e)) => bail!("{e}"),
                    Some(_) => {}
                    None => bail!("the client's event loop ended"),
                }
            }
        })
        .await;
        match connected {
            Ok(Ok(())) => Ok(me),
            Ok(Err(e)) => Err(e.context(format!("MQTT client {id} on port {port}"))),
            Err(_) => bail!(
                "MQTT client {id}: no connection to 127.0.0.1:{port} within {CONNECT_TIMEOUT:?}"
            ),
        }
    }

    /// Subscribes to `filters` at QoS 1, in one SUBSCRIBE packet, and waits
    /// for the acknowledgement.
    pub async fn subscribe(&mut self, filters: &[String]) -> anyhow::Result<()> {
        self.subscribe_at(filters, QoS::AtLeastOnce).await
    }

    /// Same, at `qos`.
    pub async fn subscribe_at(&mut self, filters: &[String], qos: QoS) -> anyhow::Result<()> {
        if filters.is_empty() {
            return Ok(());
        }
        self.client
            .subscribe_many(filters.iter().map(|f| SubscribeFilter::new(f.clone(), qos)))
            .await
            .context("MQTT subscribe")?;
        let deadline = Instant::now() + SUBACK_TIMEOUT;
        loop {
            match self.next_event(deadline).await? {
                PumpEvent::SubAck => return Ok(()),
                PumpEvent::Message(m) => self.pending.push_back(m),
                PumpEvent::Connected => {}
                PumpEvent::Failed(e) => bail!("MQTT connection lost: {e}"),
            }
        }
    }

    /// Publishes at QoS 1, not retained.
    pub async fn publish(&self, topic: &str, payload: Vec<u8>) -> anyhow::Result<()> {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .await
            .with_context(|| format!("MQTT publish on {topic}"))
    }

    /// The next message, or an error at `deadline`.
    pub async fn recv_until(&mut self, deadline: Instant) -> anyhow::Result<Received> {
        if let Some(m) = self.pending.pop_front() {
            return Ok(m);
        }
        loop {
            match self.next_event(deadline).await? {
                PumpEvent::Message(m) => return Ok(m),
                PumpEvent::Failed(e) => bail!("MQTT connection lost: {e}"),
                PumpEvent::Connected | PumpEvent::SubAck => {}
            }
        }
    }

    /// The next message if one is already there.
    pub fn try_recv(&mut self) -> Option<Received> {
        if let Some(m) = self.pending.pop_front() {
            return Some(m);
        }
        while let Ok(event) = self.events.try_recv() {
            if let PumpEvent::Message(m) = event {
                return Some(m);
            }
        }
        None
    }

    async fn next_event(&mut self, deadline: Instant) -> anyhow::Result<PumpEvent> {
        match tokio::time::timeout_at(deadline.into(), self.events.recv()).await {
            Ok(Some(event)) => Ok(event),
            Ok(None) => bail!("the MQTT client's event loop ended"),
            Err(_) => bail!("timed out waiting for an MQTT message"),
        }
    }
}
