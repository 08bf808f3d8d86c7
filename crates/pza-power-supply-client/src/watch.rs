//! [`Watch`]: a stream of the updates of one power supply, or of all.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_core::Stream;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
use tokio_stream::wrappers::BroadcastStream;

use crate::client::Inner;
use crate::state::Update;

/// The updates of a power supply ([`PowerSupply::watch`](crate::PowerSupply::watch))
/// or of all ([`Client::watch_all`](crate::Client::watch_all)), from the moment
/// it is made. It keeps the client's connection open while it lives, and ends
/// only if the connection task stops.
///
/// A watcher that falls more than a few thousand updates behind skips the
/// oldest; [`missed`](Watch::missed) counts them. Each update carries the
/// whole state after it, so the next one received is complete anyway.
///
/// ```no_run
/// # async fn demo(client: pza_power_supply_client::Client) {
/// use pza_power_supply_client::Change;
///
/// let mut updates = client.power_supply("psu-1").watch();
/// while let Some(update) = updates.next().await {
///     if let Change::Status(report) = &update.change {
///         println!("{}: {} (restarts {})", update.name, report.status, report.restarts);
///     }
/// }
/// # }
/// ```
pub struct Watch {
    _inner: Arc<Inner>,
    name: Option<String>,
    updates: BroadcastStream<Update>,
    missed: u64,
}

impl Watch {
    pub(crate) fn new(inner: Arc<Inner>, name: Option<String>) -> Watch {
        let updates = BroadcastStream::new(inner.shared.updates.subscribe());
        Watch {
            _inner: inner,
            name,
            updates,
            missed: 0,
        }
    }

    /// The next update; `None` once the connection task has stopped.
    pub async fn next(&mut self) -> Option<Update> {
        std::future::poll_fn(|cx| Pin::new(&mut *self).poll_next(cx)).await
    }

    /// Updates skipped because this watcher fell behind.
    pub fn missed(&self) -> u64 {
        self.missed
    }
}

impl Stream for Watch {
    type Item = Update;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Update>> {
        loop {
            match Pin::new(&mut self.updates).poll_next(cx) {
                Poll::Ready(Some(Ok(update))) => {
                    if self.name.as_deref().map_or(true, |n| n == update.name) {
                        return Poll::Ready(Some(update));
                    }
                }
                Poll::Ready(Some(Err(BroadcastStreamRecvError::Lagged(n)))) => {
                    self.missed += n;
                }
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}
