//! Named tokio tasks turned into lifecycle events, the moment each task ends.
//!
//! A [`TaskMonitor`] owns one background task that awaits every registered
//! `JoinHandle` at once (a `FuturesUnordered` of the handles, polled by that
//! task itself: no task is spawned per monitored task). There is no polling
//! interval: the event for a task is sent as soon as its handle
//! resolves. Events come out of the `mpsc::Receiver<Event>` returned by
//! [`TaskMonitor::new`], in the order the monitor saw them; for one task,
//! `TaskCreated` always comes before the event that ends it.
//!
//! Ending events:
//! - `TaskStopProperly`: the task returned `Ok(())`;
//! - `TaskStopWithPain`: the task returned `Err(e)` (`error_message` holds `e`
//!   with its causes) or was aborted;
//! - `TaskPanicOMG`: the task panicked (`error_message` holds the panic text).
//!
//! `NoMoreTask` follows the ending event that leaves no task monitored.
//! `TaskMonitorError` reports a problem of the monitor itself: a task handed
//! over after [`TaskMonitor::cancel_all_monitored_tasks`] is aborted at once
//! and reported that way.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::sync::mpsc;
use tokio::task::{AbortHandle, JoinError, JoinHandle};

/// The handle type the monitor watches.
pub type TaskHandle = JoinHandle<anyhow::Result<()>>;

/// Where tasks are handed over to a monitor: send `(task name, handle)`.
pub type TaskHandleSender = mpsc::Sender<(String, TaskHandle)>;

/// Capacity of the channel of events. The monitor waits when it is full, so no
/// event is ever dropped while the receiver is alive.
const EVENT_CHANNEL_CAPACITY: usize = 1024;

/// Capacity of the channel through which handles are handed over.
const HANDLE_CHANNEL_CAPACITY: usize = 256;

/// What the monitor knows about one task when it reports on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventBody {
    /// The name given when the task was handed over.
    pub task_name: String,
    /// A number unique within this monitor, given in hand-over order from 1.
    pub task_id: u64,
    /// The error or panic text, for the events that have one.
    pub error_message: Option<String>,
}

/// A lifecycle event of a monitored task, or of the monitor itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    TaskCreated(EventBody),
    TaskStopProperly(EventBody),
    TaskStopWithPain(EventBody),
    TaskPanicOMG(EventBody),
    TaskMonitorError(String),
    NoMoreTask,
}

/// State shared between the monitor handle and its background task.
#[derive(Default)]
struct Shared {
    /// Abort handles of the tasks still running, by task id.
    running: Mutex<HashMap<u64, AbortHandle>>,
    /// Number of tasks handed over and not yet ended.
    count: AtomicUsize,
    /// Set by `cancel_all_monitored_tasks`: later tasks are aborted on arrival.
    cancelled: AtomicBool,
}

impl Shared {
    fn running(&self) -> std::sync::MutexGuard<'_, HashMap<u64, AbortHandle>> {
        // The lock is only held for map operations that cannot panic, so a
        // poisoned lock still holds a consistent map: take it.
        self.running
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Watches named tasks and reports their lifecycle as [`Event`]s.
pub struct TaskMonitor {
    name: String,
    handle_tx: TaskHandleSender,
    shared: Arc<Shared>,
}

impl TaskMonitor {
    /// Creates a monitor and the receiver of its events. Must be called within
    /// a tokio runtime: it spawns the monitor's background task, which lives
    /// until every handle sender is dropped and every task has ended.
    pub fn new(name: impl Into<String>) -> (TaskMonitor, mpsc::Receiver<Event>) {
        let name = name.into();
        let (handle_tx, handle_rx) = mpsc::channel(HANDLE_CHANNEL_CAPACITY);
        let (event_tx, event_rx) = mpsc::channel(EVENT_CHANNEL_CAPACITY);
        let shared = Arc::new(Shared::default());
        tokio::spawn(watch(name.clone(), handle_rx, event_tx, shared.clone()));
        (
            TaskMonitor {
                name,
                handle_tx,
                shared,
            },
            event_rx,
        )
    }

    /// The monitor's name, as given to [`TaskMonitor::new`].
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A sender through which tasks are handed over to this monitor.
    pub fn handle_sender(&self) -> TaskHandleSender {
        self.handle_tx.clone()
    }

    /// Aborts every monitored task. Each aborted task is then reported as
    /// `TaskStopWithPain` (unless it had ended already), and any task handed
    /// over from now on is aborted on arrival and reported as
    /// `TaskMonitorError`.
    pub fn cancel_all_monitored_tasks(&self) {
        self.shared.cancelled.store(true, Ordering::SeqCst);
        for abort in self.shared.running().values() {
            abort.abort();
        }
    }

    /// Number of tasks handed over to the monitor that have not ended yet.
    pub fn task_count(&self) -> usize {
        self.shared.count.load(Ordering::SeqCst)
    }
}

async fn watch(
    monitor_name: String,
    mut handle_rx: mpsc::Receiver<(String, TaskHandle)>,
    event_tx: mpsc::Sender<Event>,
    shared: Arc<Shared>,
) {
    // Polled by this task itself: a task's end wakes the monitor directly,
    // with no watcher task spawned per monitored task.
    let mut watchers = FuturesUnordered::new();
    let mut next_id: u64 = 1;
    let mut handles_open = true;
    // A failed send only means nobody listens to events any more; the
    // monitor goes on watching so that `task_count` stays right.
    loop {
        tokio::select! {
            received = handle_rx.recv(), if handles_open => {
                let Some((task_name, handle)) = received else {
                    handles_open = false;
                    continue;
                };
                let task_id = next_id;
                next_id += 1;
                shared.count.fetch_add(1, Ordering::SeqCst);
                shared.running().insert(task_id, handle.abort_handle());
                if shared.cancelled.load(Ordering::SeqCst) {
                    handle.abort();
                    let _ = event_tx
                        .send(Event::TaskMonitorError(format!(
                            "monitor '{monitor_name}' is cancelled: task '{task_name}' was aborted on arrival"
                        )))
                        .await;
                } else {
                    let body = EventBody { task_name: task_name.clone(), task_id, error_message: None };
                    let _ = event_tx.send(Event::TaskCreated(body)).await;
                }
                watchers.push(async move { (task_id, task_name, handle.await) });
            }
            Some((task_id, task_name, outcome)) = watchers.next(), if !watchers.is_empty() => {
                shared.running().remove(&task_id);
                let event = outcome_event(task_name, task_id, outcome);
                let remaining = shared.count.fetch_sub(1, Ordering::SeqCst) - 1;
                let _ = event_tx.send(event).await;
                if remaining == 0 {
                    let _ = event_tx.send(Event::NoMoreTask).await;
                }
            }
            else => break,
        }
    }
}

fn outcome_event(
    task_name: String,
    task_id: u64,
    outcome: Result<anyhow::Result<()>, JoinError>,
) -> Event {
    let body = |error_message| EventBody {
        task_name,
        task_id,
        error_message,
    };
    match outcome {
        Ok(Ok(())) => Event::TaskStopProperly(body(None)),
        Ok(Err(e)) => Event::TaskStopWithPain(body(Some(format!("{e:#}")))),
        Err(e) if e.is_panic() => Event::TaskPanicOMG(body(Some(panic_text(e.into_panic())))),
        Err(_) => Event::TaskStopWithPain(body(Some("task was aborted".to_string()))),
    }
}

/// The text of a panic payload: `panic!` gives a `&str` or a `String`.
pub fn panic_text(payload: Box<dyn std::any::Any + Send>) -> String {
    match payload.downcast::<String>() {
        Ok(s) => *s,
        Err(payload) => match payload.downcast::<&'static str>() {
            Ok(s) => (*s).to_string(),
            Err(_) => "panic with a non-text payload".to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    async fn next(rx: &mut mpsc::Receiver<Event>) -> Event {
        tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("an event within 5 s")
            .expect("the event channel is open")
    }

    fn task(result: anyhow::Result<()>) -> TaskHandle {
        tokio::spawn(async move { result })
    }

    #[tokio::test]
    async fn clean_exit_is_reported_then_no_more_task() {
        let (monitor, mut rx) = TaskMonitor::new("m");
        monitor
            .handle_sender()
            .send(("a".into(), task(Ok(()))))
            .await
            .unwrap();
        let created = next(&mut rx).await;
        assert_eq!(
            created,
            Event::TaskCreated(EventBody {
                task_name: "a".into(),
                task_id: 1,
                error_message: None
            })
        );
        assert_eq!(
            next(&mut rx).await,
            Event::TaskStopProperly(EventBody {
                task_name: "a".into(),
                task_id: 1,
                error_message: None
            })
        );
        assert_eq!(next(&mut rx).await, Event::NoMoreTask);
        assert_eq!(monitor.task_count(), 0);
    }

    #[tokio::test]
    async fn error_exit_carries_the_error_chain() {
        let (monitor, mut rx) = TaskMonitor::new("m");
        let err = anyhow::anyhow!("device gone").context("runner psu1");
        monitor
            .handle_sender()
            .send(("psu1".into(), task(Err(err))))
            .await
            .unwrap();
        assert!(matches!(next(&mut rx).await, Event::TaskCreated(_)));
        match next(&mut rx).await {
            Event::TaskStopWithPain(body) => {
                assert_eq!(body.task_name, "psu1");
                assert_eq!(
                    body.error_message.as_deref(),
                    Some("runner psu1: device gone")
                );
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[tokio::test]
    async fn panic_keeps_its_message() {
        let (monitor, mut rx) = TaskMonitor::new("m");
        let handle: TaskHandle = tokio::spawn(async {
            let voltage = 13.5;
            panic!("injected panic at {voltage} V");
        });
        monitor
            .handle_sender()
            .send(("p".into(), handle))
            .await
            .unwrap();
        assert!(matches!(next(&mut rx).await, Event::TaskCreated(_)));
        match next(&mut rx).await {
            Event::TaskPanicOMG(body) => {
                assert_eq!(
                    body.error_message.as_deref(),
                    Some("injected panic at 13.5 V")
                )
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[tokio::test]
    async fn static_str_panic_is_kept_too() {
        let (monitor, mut rx) = TaskMonitor::new("m");
        let handle: TaskHandle = tokio::spawn(async { panic!("plain") });
        monitor
            .handle_sender()
            .send(("p".into(), handle))
            .await
            .unwrap();
        next(&mut rx).await;
        match next(&mut rx).await {
            Event::TaskPanicOMG(body) => assert_eq!(body.error_message.as_deref(), Some("plain")),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn end_is_reported_when_it_happens_not_on_a_tick() {
        let (monitor, mut rx) = TaskMonitor::new("m");
        let handle: TaskHandle = tokio::spawn(async {
            tokio::time::sleep(Duration::from_millis(1234)).await;
            Ok(())
        });
        let start = tokio::time::Instant::now();
        monitor
            .handle_sender()
            .send(("slow".into(), handle))
            .await
            .unwrap();
        assert!(matches!(next(&mut rx).await, Event::TaskCreated(_)));
        assert!(matches!(next(&mut rx).await, Event::TaskStopProperly(_)));
        assert_eq!(start.elapsed(), Duration::from_millis(1234));
    }

    #[tokio::test]
    async fn cancel_aborts_running_tasks_and_refuses_new_ones() {
        let (monitor, mut rx) = TaskMonitor::new("m");
        let sender = monitor.handle_sender();
        let forever: TaskHandle = tokio::spawn(async {
            std::future::pending::<()>().await;
            Ok(())
        });
        sender.send(("forever".into(), forever)).await.unwrap();
        assert!(matches!(next(&mut rx).await, Event::TaskCreated(_)));
        assert_eq!(monitor.task_count(), 1);

        monitor.cancel_all_monitored_tasks();
        match next(&mut rx).await {
            Event::TaskStopWithPain(body) => {
                assert_eq!(body.task_name, "forever");
                assert_eq!(body.error_message.as_deref(), Some("task was aborted"));
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(next(&mut rx).await, Event::NoMoreTask);

        let late: TaskHandle = tokio::spawn(async {
            std::future::pending::<()>().await;
            Ok(())
        });
        sender.send(("late".into(), late)).await.unwrap();
        match next(&mut rx).await {
            Event::TaskMonitorError(message) => assert!(message.contains("late"), "{message}"),
            other => panic!("unexpected {other:?}"),
        }
        assert!(matches!(next(&mut rx).await, Event::TaskStopWithPain(_)));
        assert_eq!(next(&mut rx).await, Event::NoMoreTask);
    }

    #[tokio::test]
    async fn ids_are_unique_and_count_follows_tasks() {
        let (monitor, mut rx) = TaskMonitor::new("m");
        let sender = monitor.handle_sender();
        let (release_tx, release_rx) = tokio::sync::oneshot::channel::<()>();
        let held: TaskHandle = tokio::spawn(async move {
            let _ = release_rx.await;
            Ok(())
        });
        sender.send(("held".into(), held)).await.unwrap();
        sender.send(("quick".into(), task(Ok(())))).await.unwrap();
        // `held` was handed over first, and a task's creation is always
        // reported before its end.
        let mut ids = Vec::new();
        loop {
            match next(&mut rx).await {
                Event::TaskCreated(b) => ids.push(b.task_id),
                Event::TaskStopProperly(b) => {
                    assert_eq!(b.task_name, "quick");
                    break;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(ids, vec![1, 2]);
        assert_eq!(monitor.task_count(), 1);
        release_tx.send(()).unwrap();
        assert!(matches!(next(&mut rx).await, Event::TaskStopProperly(_)));
        assert_eq!(next(&mut rx).await, Event::NoMoreTask);
        assert_eq!(monitor.task_count(), 0);
    }
}
