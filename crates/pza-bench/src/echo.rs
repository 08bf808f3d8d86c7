//! The baseline: a bare MQTT echo, a client that republishes every message
//! it receives. A command can go no faster than this through the same broker,
//! so it is the floor of the architecture.
//!
//! The echo uses the client options of the runners' own connections and
//! republishes from inside its event loop, with no task hop: it is what a
//! runner would cost if it did no work at all. Its replies are not retained
//! (a runner's are), so the broker's retained store is part of what the
//! ratio to this baseline measures.

use std::collections::VecDeque;
use std::time::Duration;

use anyhow::Context as _;
use pza_toolkit::mqtt::client_options;
use rumqttc::{AsyncClient, ClientError, Event, Packet, QoS, Request};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::client::{local_endpoint, no_delay};

/// Capacity of the echo's request channel, as for a runner's link.
const REQUEST_CAPACITY: usize = 1024;

/// Longest wait for the echo to be connected and subscribed.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// The topic an echo listens on, for echo number `index`.
pub fn echo_in(index: usize) -> String {
    format!("bench/echo/{index}/in")
}

/// The topic an echo republishes on.
pub fn echo_out(index: usize) -> String {
    format!("bench/echo/{index}/out")
}

/// A running echo; stopped when dropped.
pub struct Echo {
    task: JoinHandle<()>,
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Echo {
    /// Starts echo number `index` on the broker at 127.0.0.1:`port` and waits
    /// until it is subscribed.
    pub async fn start(port: u16, index: usize) -> anyhow::Result<Echo> {
        let id = format!("pza-bench-echo-{index}-{}", std::process::id());
        let options = client_options(&id, &local_endpoint(port), None);
        let (client, mut eventloop) = AsyncClient::new(options, REQUEST_CAPACITY);
        eventloop.set_network_options(no_delay());
        let (ready_tx, ready) = oneshot::channel();
        let input = echo_in(index);
        let output = echo_out(index);
        let task = tokio::spawn(async move {
            let mut ready_tx = Some(ready_tx);
            // Replies that did not fit in the request channel yet.
            let mut backlog: VecDeque<Vec<u8>> = VecDeque::new();
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        if client
                            .try_subscribe(input.clone(), QoS::AtLeastOnce)
                            .is_err()
                        {
                            return;
                        }
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        if let Some(tx) = ready_tx.take() {
                            let _ = tx.send(());
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        backlog.push_back(p.payload.to_vec())
                    }
                    Ok(_) => {}
                    Err(_) if ready_tx.is_some() => {
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                    // A lost connection ends the echo: the figure then times
                    // out waiting for replies and says so.
                    Err(_) => return,
                }
                while let Some(payload) = backlog.pop_front() {
                    match client.try_publish(output.clone(), QoS::AtLeastOnce, false, payload) {
                        Ok(()) => {}
                        // The request channel is full: keep the reply for the
                        // next turn of the loop.
                        Err(ClientError::TryRequest(Request::Publish(p))) => {
                            backlog.push_front(p.payload.to_vec());
                            break;
                        }
                        Err(_) => return,
                    }
                }
            }
        });
        let echo = Echo { task };
        tokio::time::timeout(READY_TIMEOUT, ready)
            .await
            .with_context(|| format!("echo {index}: not subscribed within {READY_TIMEOUT:?}"))?
            .with_context(|| format!("echo {index}: its event loop ended"))?;
        Ok(echo)
    }
}
