//! One request at a time, timed: a voltage command to a runner, or the same
//! payload to an echo, and the wait for the reply carrying its `pza_id`.

use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

use crate::client::BenchClient;
use crate::echo::{echo_in, echo_out};

/// Longest wait for one reply.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// What a round trip goes to.
#[derive(Debug, Clone)]
pub enum Target {
    /// `power-supply/<name>/voltage/cmd`, answered on `.../voltage` (or `.../error`).
    Runner(String),
    /// Echo number `index`.
    Echo(usize),
}

impl Target {
    fn request_topic(&self) -> String {
        match self {
            Target::Runner(name) => format!("power-supply/{name}/voltage/cmd"),
            Target::Echo(index) => echo_in(*index),
        }
    }

    fn reply_topic(&self) -> String {
        match self {
            Target::Runner(name) => format!("power-supply/{name}/voltage"),
            Target::Echo(index) => echo_out(*index),
        }
    }

    fn error_topic(&self) -> Option<String> {
        match self {
            Target::Runner(name) => Some(format!("power-supply/{name}/error")),
            Target::Echo(_) => None,
        }
    }
}

/// A client that times round trips to its targets.
pub struct Pinger {
    client: BenchClient,
    tag: String,
    seq: u64,
}

impl Pinger {
    /// Connects to the broker on `port` and subscribes to the replies of
    /// `targets`.
    pub async fn connect(port: u16, tag: &str, targets: &[Target]) -> anyhow::Result<Pinger> {
        let mut client =
            BenchClient::connect(port, &format!("pza-bench-{tag}-{}", std::process::id())).await?;
        let mut filters = Vec::new();
        for t in targets {
            filters.push(t.reply_topic());
            filters.extend(t.error_topic());
        }
        client.subscribe(&filters).await?;
        // Let the retained replies of earlier commands arrive and drop them,
        // so that they are not mistaken for replies.
        tokio::time::sleep(Duration::from_millis(20)).await;
        while client.try_recv().is_some() {}
        Ok(Pinger {
            client,
            tag: tag.to_string(),
            seq: 0,
        })
    }

    /// One timed round trip: publish, then wait for the reply with the same
    /// `pza_id`. A rejection on the error topic is an error.
    pub async fn round_trip(&mut self, target: &Target) -> anyhow::Result<Duration> {
        self.seq += 1;
        let id = format!("{}{}", self.tag, self.seq);
        // Alternate two setpoints, so that every command changes the device.
        let voltage = if self.seq % 2 == 0 { "5.00" } else { "6.00" };
        let payload = format!("{{\"pza_id\":\"{id}\",\"voltage\":\"{voltage}\"}}").into_bytes();
        let reply_topic = target.reply_topic();
        let error_topic = target.error_topic();
        let start = Instant::now();
        self.client
            .publish(&target.request_topic(), payload)
            .await?;
        let deadline = start + REPLY_TIMEOUT;
        loop {
            let m = self
                .client
                .recv_until(deadline)
                .await
                .with_context(|| format!("no reply to {id} on {reply_topic}"))?;
            if m.topic != reply_topic && Some(&m.topic) != error_topic.as_ref() {
                continue;
            }
            if m.field("pza_id").as_deref() != Some(id.as_str()) {
                continue;
            }
            if m.topic == reply_topic {
                return Ok(m.at.saturating_duration_since(start));
            }
            bail!(
                "{id} rejected: {}",
                m.field("message").unwrap_or_else(|| "(no message)".into())
            );
        }
    }

    /// `count` round trips to each target, interleaved (a b, b a, a b, ...)
    /// so that all see the same conditions, or fewer if `budget` runs out
    /// first (at least one each); returns the samples of each.
    pub async fn interleaved(
        &mut self,
        targets: &[Target],
        count: usize,
        budget: Duration,
    ) -> anyhow::Result<Vec<Vec<Duration>>> {
        let mut samples = vec![Vec::with_capacity(count); targets.len()];
        let end = Instant::now() + budget;
        for i in 0..count {
            if i > 0 && Instant::now() >= end {
                break;
            }
            for k in 0..targets.len() {
                let k = if i % 2 == 0 { k } else { targets.len() - 1 - k };
                let sample = self.round_trip(&targets[k]).await?;
                samples[k].push(sample);
            }
        }
        Ok(samples)
    }
}
