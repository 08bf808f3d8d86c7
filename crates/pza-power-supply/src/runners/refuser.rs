//! The stand-in for a `Failed` runner: it holds the runner's mailbox and
//! answers every command that reaches it on `P/error`, so that each
//! still gets its one answer while no runner will serve it, until a
//! `restart/cmd` revives the runner (or the server shuts down).

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::mailbox::{RunnerLink, SharedMailbox};
use crate::protocol::payload::{command_id, error_reply};
use crate::protocol::Topics;
use pza_toolkit::mqtt::link::Publisher;
use pza_toolkit::mqtt::LinkEvent;

/// What a command sent to a `Failed` runner is answered.
pub const FAILED_REASON: &str =
    "not applied: the runner has failed (its restart policy gave up); send restart/cmd to revive it";

/// A running stand-in; `stop` hands the mailbox back.
pub struct Refuser {
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Refuser {
    /// Starts answering the commands that reach `mailbox` with `FAILED_REASON`.
    pub fn start(mailbox: SharedMailbox, publisher: Publisher, topics: Topics) -> Refuser {
        let stop = CancellationToken::new();
        let task = tokio::spawn(refuse(mailbox, publisher, topics, stop.clone()));
        Refuser { stop, task }
    }

    /// Stops answering and waits until the mailbox is free again.
    pub async fn stop(self) {
        self.stop.cancel();
        if let Err(e) = self.task.await {
            tracing::error!(error = %e, "the stand-in of a failed runner ended badly");
        }
    }
}

async fn refuse(
    mailbox: SharedMailbox,
    publisher: Publisher,
    topics: Topics,
    stop: CancellationToken,
) {
    let mut link = tokio::select! {
        _ = stop.cancelled() => return,
        link = RunnerLink::lend(mailbox, publisher) => link,
    };
    loop {
        let event = tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            event = link.recv() => event,
        };
        match event {
            Some(LinkEvent::Message(publish)) if topics.is_runner_command(&publish.topic) => {
                let reply = error_reply(command_id(&publish.payload).as_deref(), FAILED_REASON);
                if let Err(e) = link.publish(topics.error(), false, reply).await {
                    tracing::warn!(error = %e, "cannot answer a command sent to a failed runner");
                }
            }
            Some(_) => {}
            None => return,
        }
    }
}
