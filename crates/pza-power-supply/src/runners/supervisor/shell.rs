//! The supervisor's I/O shell: one task that `select!`s over the
//! `TaskMonitor` events, the runners' reports, the MQTT messages, the
//! earliest restart deadline and the shutdown token, asks the state
//! machines ([`super::slot`], [`super::ownership`]) what to do, and does it.
//!
//! Nothing in the loop sleeps or waits on the network: a runner in backoff
//! is only a deadline in its slot, and a publish never waits. It goes
//! straight into the MQTT client's request channel when that has room and
//! nothing is waiting before it; otherwise it is handed to a publisher task
//! that waits out the back-pressure, and every later publish queues behind
//! it until that task has caught up. So the supervisor's messages leave in
//! the order they were made (each runner's statuses in order, `Stopped`
//! last: the shutdown waits for the publisher task to drain before it
//! closes the connection). The runners publish on the same connection; a
//! runner started is given a mark on the supervisor's messages, and
//! publishes nothing before they are queued on the connection, so that its
//! `Restarting` and `Initializing` go out before its `P/info`.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use pza_toolkit::task_monitor::{Event, TaskHandleSender, TaskMonitor};
use tokio::sync::{mpsc, watch, Mutex};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::ownership::{Claims, Decision, Step};
use super::slot::{Action, Ending, Slot, State};
use crate::config::DriverPlan;
use crate::drivers::PowerSupplyDriver;
use crate::protocol::ownership::{owner_runner, server_instance, OwnerRecord, ServerRecord};
use crate::protocol::payload::{error_reply, parse_restart};
use crate::protocol::topics::restart_command_runner;
use crate::protocol::Status;
use crate::runners::mailbox::{Mailboxes, SharedMailbox};
use crate::runners::refuser::Refuser;
use crate::runners::runner::{Announced, Runner, RunnerControl, RunnerReport, RunnerSettings};
use pza_toolkit::mqtt::link::{LinkEvent, MqttLink, Publisher};

/// How long the supervisor waits for its last messages to be acknowledged
/// and for a connection to close.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// One runner: its state machine and the I/O resources the shell holds
/// for it.
pub struct Supervised {
    slot: Slot,
    pub settings: RunnerSettings,
    /// Builds a fresh driver for each restart.
    driver: DriverPlan,
    /// The driver built at start-up, used by the first start.
    first_driver: Option<Box<dyn PowerSupplyDriver>>,
    /// Stops the live runner task; `Some` while it is alive.
    stop: Option<CancellationToken>,
    /// The runner's mailbox, kept across crashes and restarts; `None` until
    /// the first start and after a clean end.
    mailbox: Option<SharedMailbox>,
    /// While `Failed`: answers the commands that reach the mailbox.
    refuser: Option<Refuser>,
}

impl Supervised {
    pub fn new(
        slot: Slot,
        settings: RunnerSettings,
        driver: DriverPlan,
        first_driver: Box<dyn PowerSupplyDriver>,
    ) -> Supervised {
        Supervised {
            slot,
            settings,
            driver,
            first_driver: Some(first_driver),
            stop: None,
            mailbox: None,
            refuser: None,
        }
    }
}

/// What the supervisor is built from.
pub struct Parts {
    pub claims: Claims,
    pub liveness_topic: String,
    pub namespace: Option<String>,
    pub runners: BTreeMap<String, Supervised>,
    pub monitor: Arc<Mutex<Option<TaskMonitor>>>,
    pub handles: TaskHandleSender,
    pub monitor_events: mpsc::Receiver<Event>,
    /// The server's connection, whose commands `mailboxes` sort out.
    pub link: MqttLink,
    pub mailboxes: Arc<Mailboxes>,
    pub shutdown: CancellationToken,
    pub shutdown_timeout: Duration,
}

/// A message for the publisher task.
struct Outgoing {
    topic: String,
    retain: bool,
    payload: Vec<u8>,
}

pub struct Supervisor {
    claims: Claims,
    liveness_topic: String,
    namespace: Option<String>,
    runners: BTreeMap<String, Supervised>,
    monitor: Arc<Mutex<Option<TaskMonitor>>>,
    handles: TaskHandleSender,
    monitor_events: mpsc::Receiver<Event>,
    reports_tx: mpsc::UnboundedSender<RunnerReport>,
    reports: mpsc::UnboundedReceiver<RunnerReport>,
    link: MqttLink,
    mailboxes: Arc<Mailboxes>,
    /// Publishes on `link` without waiting, when it can.
    publisher: Publisher,
    /// Messages made by `send` so far.
    made: AtomicU64,
    /// Of those, how many are queued on the connection.
    queued: watch::Sender<u64>,
    /// To the publisher task. Unbounded, so that the loop never waits: what
    /// it holds is bounded by the events, a few statuses each.
    outbox: mpsc::UnboundedSender<Outgoing>,
    /// Messages handed to the publisher task and not published yet.
    backlog: Arc<AtomicUsize>,
    publisher_task: JoinHandle<()>,
    shutdown: CancellationToken,
    shutdown_timeout: Duration,
}

impl Supervisor {
    pub fn new(parts: Parts) -> Supervisor {
        let (reports_tx, reports) = mpsc::unbounded_channel();
        let (outbox, outgoing) = mpsc::unbounded_channel();
        let backlog = Arc::new(AtomicUsize::new(0));
        let queued = watch::Sender::new(0);
        let publisher = parts.link.publisher();
        let publisher_task = tokio::spawn(publish_all(
            publisher.clone(),
            outgoing,
            backlog.clone(),
            queued.clone(),
        ));
        Supervisor {
            claims: parts.claims,
            liveness_topic: parts.liveness_topic,
            namespace: parts.namespace,
            runners: parts.runners,
            monitor: parts.monitor,
            handles: parts.handles,
            monitor_events: parts.monitor_events,
            reports_tx,
            reports,
            link: parts.link,
            mailboxes: parts.mailboxes,
            publisher,
            made: AtomicU64::new(0),
            queued,
            outbox,
            backlog,
            publisher_task,
            shutdown: parts.shutdown,
            shutdown_timeout: parts.shutdown_timeout,
        }
    }

    pub async fn run(mut self) -> anyhow::Result<()> {
        loop {
            let next_deadline = self
                .runners
                .values()
                .filter_map(|r| r.slot.deadline())
                .min();
            tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => break,
                Some(event) = self.monitor_events.recv() => self.on_monitor_event(event).await,
                Some(report) = self.reports.recv() => {
                    let actions = match self.runners.get_mut(&report.runner) {
                        Some(r) => r.slot.on_running(report.generation, report.reconnected, Instant::now()),
                        None => Vec::new(),
                    };
                    self.apply(&report.runner, actions).await;
                }
                Some(event) = self.link.recv() => self.on_link_event(event).await,
                _ = sleep_until(next_deadline), if next_deadline.is_some() => self.restart_due().await,
            }
        }
        self.stop_all().await
    }

    /// Publishes without waiting: at once if the client has room and no
    /// earlier message waits, else through the publisher task (see the
    /// module doc).
    fn send(&self, topic: String, retain: bool, payload: Vec<u8>) {
        self.made.fetch_add(1, Ordering::SeqCst);
        if self.backlog.load(Ordering::SeqCst) == 0
            && self.publisher.try_publish(&topic, retain, &payload)
        {
            self.queued.send_modify(|queued| *queued += 1);
            return;
        }
        self.backlog.fetch_add(1, Ordering::SeqCst);
        let outgoing = Outgoing {
            topic,
            retain,
            payload,
        };
        if self.outbox.send(outgoing).is_err() {
            tracing::error!("the supervisor's publisher stopped: message dropped");
        }
    }

    /// Carries out `actions` for runner `name`, in order.
    async fn apply(&mut self, name: &str, actions: Vec<Action>) {
        let mut queue = VecDeque::from(actions);
        while let Some(action) = queue.pop_front() {
            if let Action::Launch { restart } = action {
                let more = self.launch(name, restart).await;
                for action in more.into_iter().rev() {
                    queue.push_front(action);
                }
            } else {
                self.apply_now(name, action);
            }
        }
    }

    /// The actions that need no waiting.
    fn apply_now(&mut self, name: &str, action: Action) {
        let serves = self.claims.serves(name);
        let Some(runner) = self.runners.get_mut(name) else {
            return;
        };
        match action {
            Action::Publish(report) => {
                // A status is published only while this server serves the
                // runner: the topic is the owner's.
                if serves {
                    let topic = runner.settings.topics.status();
                    self.send(topic, true, report.to_payload());
                }
            }
            Action::Stop => {
                if let Some(stop) = &runner.stop {
                    stop.cancel();
                }
            }
            Action::Refuse => {
                if let (None, Some(mailbox)) = (&runner.refuser, &runner.mailbox) {
                    runner.refuser = Some(Refuser::start(
                        mailbox.clone(),
                        self.publisher.clone(),
                        runner.settings.topics.clone(),
                    ));
                }
            }
            Action::StopRefusing => {
                if let Some(refuser) = runner.refuser.take() {
                    // Whoever takes the mailbox next waits for its lock,
                    // which the stand-in gives back as it ends.
                    tokio::spawn(refuser.stop());
                }
            }
            Action::CloseMailbox => {
                if runner.mailbox.take().is_some() {
                    self.mailboxes.close(name);
                }
            }
            Action::Launch { .. } => {}
        }
    }

    /// Builds a driver (the one built at start-up for the first start) and
    /// starts runner `name`; returns what follows (a driver that cannot be
    /// built is a crash).
    async fn launch(&mut self, name: &str, restart: bool) -> Vec<Action> {
        if !restart && self.shutdown.is_cancelled() {
            return Vec::new();
        }
        let Some(runner) = self.runners.get_mut(name) else {
            return Vec::new();
        };
        let built = match runner.first_driver.take() {
            Some(driver) => Ok(driver),
            None => runner.driver.build(name),
        };
        let driver = match built {
            Ok(driver) => driver,
            Err(e) => {
                let cause = format!("cannot build the driver: {e}");
                let actions = runner.slot.launch_failed(
                    restart,
                    cause.clone(),
                    Instant::now(),
                    rand::random::<f64>(),
                );
                self.log_crash(name, &cause, &actions);
                return actions;
            }
        };
        let (generation, actions) = runner.slot.launched(restart);
        let stop = self.shutdown.child_token();
        let settings = runner.settings.clone();
        // A runner's mailbox is lent to the next start: the commands sent
        // during a restart wait in it.
        let mailbox = match &runner.mailbox {
            Some(mailbox) => mailbox.clone(),
            None => {
                let mailbox = self.mailboxes.open(name, self.link.readiness());
                runner.mailbox = Some(mailbox.clone());
                mailbox
            }
        };
        let control = RunnerControl {
            stop: stop.clone(),
            shutdown: self.shutdown.clone(),
            reports: self.reports_tx.clone(),
            generation,
            mailbox,
            publisher: self.publisher.clone(),
            announced: None,
        };
        runner.stop = Some(stop);
        for action in actions {
            self.apply_now(name, action);
        }
        // Reached once every message made so far, this start's
        // `Initializing` included, is queued on the connection.
        let control = RunnerControl {
            announced: Some(Announced {
                queued: self.queued.subscribe(),
                mark: self.made.load(Ordering::SeqCst),
            }),
            ..control
        };
        let handle = Runner::start(settings, driver, control);
        if self.handles.send((name.to_string(), handle)).await.is_err() {
            tracing::error!(
                runner = name,
                "cannot start the runner: the task monitor stopped"
            );
        }
        Vec::new()
    }

    async fn on_monitor_event(&mut self, event: Event) {
        let (name, ending) = match event {
            Event::TaskStopProperly(body) => (body.task_name, Ending::Clean),
            Event::TaskStopWithPain(body) | Event::TaskPanicOMG(body) => {
                let cause = body.error_message.unwrap_or_else(|| "unknown cause".into());
                (body.task_name, Ending::Crashed { cause })
            }
            Event::TaskCreated(body) => {
                tracing::debug!(runner = %body.task_name, task_id = body.task_id, "runner task started");
                return;
            }
            Event::TaskMonitorError(message) => {
                tracing::error!("{message}");
                return;
            }
            Event::NoMoreTask => return,
        };
        let serves = self.claims.serves(&name);
        let Some(runner) = self.runners.get_mut(&name) else {
            return;
        };
        runner.stop = None;
        let cause = match &ending {
            _ if !serves => {
                tracing::info!(runner = %name, "runner stopped: another server instance serves it");
                None
            }
            Ending::Clean => {
                tracing::info!(runner = %name, "runner ended");
                None
            }
            Ending::Crashed { cause } => Some(cause.clone()),
        };
        let actions = runner
            .slot
            .on_ended(ending, serves, Instant::now(), rand::random::<f64>());
        if let Some(cause) = cause {
            self.log_crash(&name, &cause, &actions);
        }
        self.apply(&name, actions).await;
    }

    /// Logs a crash with what follows, as `actions` (the slot's answer to
    /// it) say: a restart (attempt, delay), or the policy giving up.
    fn log_crash(&self, name: &str, cause: &str, actions: &[Action]) {
        let Some(runner) = self.runners.get(name) else {
            return;
        };
        let restarting = actions.iter().find_map(|action| match action {
            Action::Publish(report) if report.status == Status::Restarting => Some(report),
            _ => None,
        });
        if let Some(report) = restarting {
            let attempt = runner.slot.attempt();
            let delay_ms = report.next_restart_ms.unwrap_or(0);
            tracing::warn!(runner = name, attempt, delay_ms, %cause, "runner crashed; restarting");
        } else if runner.slot.state() == State::Failed {
            tracing::error!(runner = name, %cause, "runner crashed; restart policy gave up")
        }
    }

    async fn restart_due(&mut self) {
        let now = Instant::now();
        let names: Vec<String> = self.runners.keys().cloned().collect();
        for name in names {
            let actions = match self.runners.get_mut(&name) {
                Some(runner) => runner.slot.due(now),
                None => continue,
            };
            self.apply(&name, actions).await;
        }
    }

    async fn on_link_event(&mut self, event: LinkEvent) {
        match event {
            LinkEvent::Connected { first } => {
                // Every retained record is delivered before this one comes
                // back: claims wait for it.
                self.claims.on_connected();
                self.announce();
                if !first {
                    // The broker may have lost its retained messages: say
                    // again where every runner stands (a running runner says
                    // `Running` again itself, after its retained state).
                    let names: Vec<String> = self.runners.keys().cloned().collect();
                    for name in names {
                        let Some(runner) = self.runners.get_mut(&name) else {
                            continue;
                        };
                        let actions = runner.slot.on_reconnected();
                        self.apply(&name, actions).await;
                    }
                }
            }
            LinkEvent::Message(publish) => {
                let namespace = self.namespace.as_deref();
                if let Some(name) = restart_command_runner(namespace, &publish.topic) {
                    let name = name.to_string();
                    self.on_restart_command(&name, &publish.payload).await;
                } else if let Some(runner) = owner_runner(namespace, &publish.topic) {
                    let runner = runner.to_string();
                    self.on_owner_record(&runner, &publish.payload).await;
                } else if let Some(instance) = server_instance(namespace, &publish.topic) {
                    let instance = instance.to_string();
                    let steps = self.claims.on_server_record(
                        &instance,
                        ServerRecord::parse(&publish.payload),
                        now_ms(),
                    );
                    for step in steps {
                        match step {
                            Step::Announce => self.announce(),
                            Step::Decide { runner, decision } => {
                                self.decide(&runner, decision).await
                            }
                        }
                    }
                } else {
                    tracing::warn!(topic = %publish.topic, "ignoring a message on an unknown topic");
                }
            }
        }
    }

    /// Publishes this instance's liveness record (retained).
    fn announce(&self) {
        self.send(
            self.liveness_topic.clone(),
            true,
            self.claims.liveness_payload(),
        );
    }

    /// A record on a runner's owner topic.
    async fn on_owner_record(&mut self, runner: &str, payload: &[u8]) {
        if !self.runners.contains_key(runner) {
            return;
        }
        let record = match OwnerRecord::parse(payload) {
            Ok(record) => record,
            Err(message) => {
                tracing::warn!(runner, %message, "ignoring an unreadable owner record");
                return;
            }
        };
        if let Some(decision) = self.claims.on_owner_record(runner, record, now_ms()) {
            self.decide(runner, decision).await;
        }
    }

    /// Carries out an ownership decision on `runner`.
    async fn decide(&mut self, name: &str, decision: Decision) {
        let Some(runner) = self.runners.get_mut(name) else {
            return;
        };
        match decision {
            Decision::Claim(claim) | Decision::Keep(claim) => {
                let topic = runner.settings.topics.owner();
                self.send(topic, true, claim.to_payload());
            }
            Decision::Yield { message, .. } => {
                let actions = runner.slot.on_lost();
                let topic = runner.settings.topics.error();
                tracing::error!(runner = name, "{message}");
                self.apply(name, actions).await;
                self.send(topic, false, error_reply(None, &message));
            }
            Decision::Start => {
                let actions = runner.slot.on_owned();
                self.apply(name, actions).await;
            }
        }
    }

    /// `P/restart/cmd`, for a runner this server serves.
    async fn on_restart_command(&mut self, name: &str, payload: &[u8]) {
        let serves = self.claims.serves(name);
        let Some(runner) = self.runners.get_mut(name) else {
            tracing::warn!(
                runner = name,
                "restart command for an unknown runner ignored"
            );
            return;
        };
        if !serves {
            tracing::info!(
                runner = name,
                "restart command ignored: this server does not serve the runner"
            );
            return;
        }
        match parse_restart(payload) {
            Ok(pza_id) => {
                tracing::info!(runner = name, "restart requested");
                let actions = runner.slot.on_restart_cmd(pza_id);
                self.apply(name, actions).await;
            }
            Err(rejection) => {
                let topic = runner.settings.topics.error();
                let reply = error_reply(rejection.pza_id.as_deref(), &rejection.message);
                self.send(topic, false, reply);
            }
        }
    }

    /// The shutdown: every runner stops (their tokens are children of the
    /// shutdown token), pending restarts are dropped, stragglers are aborted
    /// after the shutdown timeout, and every runner ends `Stopped`.
    async fn stop_all(mut self) -> anyhow::Result<()> {
        tracing::info!("stopping the runners");
        let names: Vec<String> = self.runners.keys().cloned().collect();
        for name in &names {
            let actions = match self.runners.get_mut(name) {
                Some(runner) => runner.slot.on_shutdown(),
                None => continue,
            };
            self.apply(name, actions).await;
        }
        let deadline = Instant::now() + self.shutdown_timeout;
        let mut aborted = false;
        while self.runners.values().any(|r| r.stop.is_some()) {
            tokio::select! {
                event = self.monitor_events.recv() => match event {
                    Some(Event::TaskStopProperly(body) | Event::TaskStopWithPain(body) | Event::TaskPanicOMG(body)) => {
                        if let Some(cause) = body.error_message {
                            tracing::warn!(runner = %body.task_name, %cause, "runner ended with an error during shutdown");
                        }
                        let actions = match self.runners.get_mut(&body.task_name) {
                            Some(runner) => {
                                runner.stop = None;
                                runner.slot.on_ended_in_shutdown()
                            }
                            None => continue,
                        };
                        self.apply(&body.task_name, actions).await;
                    }
                    Some(_) => {}
                    None => break,
                },
                _ = tokio::time::sleep_until(deadline), if !aborted => {
                    let late: Vec<&str> = self.runners.iter().filter(|(_, r)| r.stop.is_some()).map(|(n, _)| n.as_str()).collect();
                    tracing::warn!(runners = ?late, timeout_ms = self.shutdown_timeout.as_millis() as u64, "runners still alive after the shutdown timeout: aborting them");
                    if let Some(monitor) = self.monitor.lock().await.as_ref() {
                        monitor.cancel_all_monitored_tasks();
                    }
                    aborted = true;
                }
            }
        }
        // Deletes this instance's claims and liveness record, so that
        // another server may take its runners over at once.
        let claims: Vec<String> = self
            .claims
            .claimed()
            .filter_map(|name| self.runners.get(name))
            .map(|r| r.settings.topics.owner())
            .collect();
        for topic in claims {
            self.send(topic, true, Vec::new());
        }
        self.send(self.liveness_topic.clone(), true, Vec::new());
        // The stand-ins of runners that failed.
        for runner in self.runners.values_mut() {
            if let Some(refuser) = runner.refuser.take() {
                refuser.stop().await;
            }
        }
        let Supervisor {
            outbox,
            publisher_task,
            link,
            monitor,
            ..
        } = self;
        // Every message handed over goes out before the connection closes.
        drop(outbox);
        if let Err(e) = publisher_task.await {
            tracing::error!(error = %e, "the supervisor's publisher ended badly");
        }
        link.close(CLOSE_TIMEOUT).await;
        monitor.lock().await.take();
        tracing::info!("all runners stopped");
        Ok(())
    }
}

/// The publisher task: sends the supervisor's messages in order, waiting
/// out the connection's back-pressure so that the loop does not.
async fn publish_all(
    publisher: Publisher,
    mut outgoing: mpsc::UnboundedReceiver<Outgoing>,
    backlog: Arc<AtomicUsize>,
    queued: watch::Sender<u64>,
) {
    while let Some(message) = outgoing.recv().await {
        let topic = message.topic.clone();
        if let Err(e) = publisher
            .publish(message.topic, message.retain, message.payload)
            .await
        {
            tracing::error!(%topic, error = %e, "cannot publish");
        }
        queued.send_modify(|queued| *queued += 1);
        // Only now may a later message skip this task: this one is in the
        // client's channel before it.
        backlog.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Wall-clock milliseconds since the Unix epoch (0 if the clock is before it).
fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
