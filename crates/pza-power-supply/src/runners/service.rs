//! The `RunnersService`: starts one runner per configured supply, restarts
//! the ones that crash under their restart policy, and stops them all on
//! shutdown.
//!
//! One supervisor task owns a slot per runner and `select!`s over the
//! `TaskMonitor` events, the runners' reports, restart commands from MQTT,
//! the earliest restart deadline and the shutdown token. Nothing in it sleeps
//! inline: a runner in backoff is only a deadline in its slot, so it never
//! delays another runner, another event or the shutdown.
//!
//! The supervisor publishes every runner's `P/status` on its own MQTT
//! connection, so one connection orders each runner's status messages and
//! `Stopped` is the last of them.
//!
//! Before it starts a runner, the supervisor claims it on the broker (see
//! [`crate::protocol::ownership`]), so that two servers configured with the
//! same namespace and runner name do not fight over its topics: once
//! connected, it publishes its liveness record and waits for it to come
//! back (by then the broker has delivered every retained record), then
//! claims each runner that no other online instance holds, and starts it
//! when its claim comes back. A runner held by another online instance is
//! not started: the conflict is logged and reported on `P/error`, naming
//! that instance, and nothing is published on its `P/status` (that topic is
//! the owner's). If the owner releases the runner (clean shutdown) or
//! vanishes (its liveness record is deleted by its last will), the runner
//! is claimed and started here.
//!
//! A broker outage is not a crash: the runners keep running, their links
//! reconnect on their own, and after the supervisor reconnects it publishes
//! its liveness record, every status and every claim again.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use pza_toolkit::mqtt::{client_options, BrokerEndpoint, ClientTls};
use pza_toolkit::task_monitor::{Event, TaskHandleSender, TaskMonitor};
use tokio::sync::{mpsc, Mutex};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::link::{LinkEvent, MqttLink, Readiness};
use super::refuser::Refuser;
use super::restart::{Decision, RestartTracker};
use super::runner::{open_link, Runner, RunnerControl, RunnerReport, RunnerSettings, SharedLink};
use super::SecurityLimits;
use crate::config::{RestartPolicy, ServerConfig};
use crate::drivers::{DriverFactory, DriverSettings, PowerSupplyDriver};
use crate::protocol::ownership::{
    owner_runner, server_instance, server_topic, servers_filter, OwnerRecord, ServerRecord,
};
use crate::protocol::payload::{error_reply, parse_restart};
use crate::protocol::topics::{restart_command_filter, restart_command_runner};
use crate::protocol::{InfoReport, Status, StatusReport, Topics};

/// How long the supervisor waits for its last status messages to be
/// acknowledged and its connection to close.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// Supervises the runners. Dropping it does not stop them: call `shutdown`.
pub struct RunnersService {
    /// The monitor of the runner tasks, kept alive here; `None` once the
    /// supervisor has stopped.
    pub monitor: Arc<Mutex<Option<TaskMonitor>>>,
    shutdown: CancellationToken,
}

impl RunnersService {
    /// Instantiates a driver for every configured runner, starts the runners
    /// and their supervisor. Errors (an unknown model, a driver that cannot
    /// be built) name the runner, and nothing is started then. The handle
    /// resolves when the service has stopped, after `shutdown`.
    pub async fn start(
        server_config: ServerConfig,
        drivers_factory: Arc<Mutex<DriverFactory>>,
    ) -> anyhow::Result<(RunnersService, JoinHandle<anyhow::Result<()>>)> {
        Self::start_with_shutdown(server_config, drivers_factory, CancellationToken::new()).await
    }

    /// `start`, stopping when `shutdown` is cancelled.
    pub async fn start_with_shutdown(
        server_config: ServerConfig,
        drivers_factory: Arc<Mutex<DriverFactory>>,
        shutdown: CancellationToken,
    ) -> anyhow::Result<(RunnersService, JoinHandle<anyhow::Result<()>>)> {
        let instance = format!("pza-ps-{:08x}", rand::random::<u32>());
        let tls = match &server_config.broker.tls {
            Some(tls) => Some(ClientTls::load(&tls.files()).context("broker.tls")?),
            None => None,
        };
        let endpoint = BrokerEndpoint {
            host: server_config.broker.tcp.addr.clone(),
            port: server_config.broker.tcp.port,
            username: server_config.broker.username.clone(),
            password: server_config.broker.password.clone(),
            tls,
        };
        let namespace = server_config.broker.namespace.clone();

        let mut slots = BTreeMap::new();
        {
            let factory = drivers_factory.lock().await;
            for (name, runner) in &server_config.runners {
                let model = factory.model(&runner.model).with_context(|| {
                    format!(
                        "runner '{name}': unknown model '{}' (available: {})",
                        runner.model,
                        factory.model_names().join(", ")
                    )
                })?;
                // The ranges and decimals of the channel this runner drives.
                let manifest = &model.runner_manifest(&runner.driver_settings);
                let policy = server_config
                    .restart
                    .merged(&runner.restart)
                    .resolve()
                    .map_err(|(key, message)| {
                        anyhow::anyhow!("runner '{name}': restart.{key}: {message}")
                    })?;
                let driver = model
                    .instantiate(name, &runner.driver_settings)
                    .with_context(|| {
                        format!(
                            "runner '{name}': cannot build its {} driver",
                            manifest.model
                        )
                    })?;
                let limits = SecurityLimits::resolve(&runner.limits, manifest);
                let info = InfoReport {
                    model: manifest.model.to_string(),
                    // The user's words for this supply, else the model's.
                    description: if runner.description.is_empty() {
                        manifest.description.to_string()
                    } else {
                        runner.description.clone()
                    },
                    security_min_voltage: limits.voltage.min,
                    security_max_voltage: limits.voltage.max,
                    security_min_current: limits.current.min,
                    security_max_current: limits.current.max,
                    voltage_decimals: manifest.voltage_decimals,
                    current_decimals: manifest.current_decimals,
                };
                let settings = RunnerSettings {
                    name: name.clone(),
                    client_id: String::new(),
                    endpoint: endpoint.clone(),
                    topics: Topics::new(namespace.as_deref(), name),
                    limits,
                    info,
                    voltage_decimals: manifest.voltage_decimals,
                    current_decimals: manifest.current_decimals,
                    measure_period: Duration::from_millis(runner.measure_period_ms),
                    command_timeout: Duration::from_millis(runner.command_timeout_ms),
                    on_shutdown: runner.on_shutdown,
                };
                slots.insert(
                    name.clone(),
                    Slot {
                        settings,
                        model: runner.model.clone(),
                        driver_settings: runner.driver_settings.clone(),
                        policy,
                        tracker: RestartTracker::new(),
                        restarts: 0,
                        generation: 0,
                        state: SlotState::Stopped,
                        stop: None,
                        restart_requested: false,
                        last_cause: None,
                        last_status: None,
                        first_driver: std::sync::Mutex::new(Some(driver)),
                        link: None,
                        link_ready: None,
                        refuser: None,
                        ownership: Ownership::Unclaimed,
                    },
                );
            }
        }

        let (monitor, monitor_events) = TaskMonitor::new("runners");
        let handles = monitor.handle_sender();
        let monitor = Arc::new(Mutex::new(Some(monitor)));
        let (reports_tx, reports) = mpsc::unbounded_channel();
        let me = ServerRecord {
            instance: instance.clone(),
            host: nix::unistd::gethostname()
                .map(|h| h.to_string_lossy().into_owned())
                .unwrap_or_else(|_| "?".into()),
            pid: std::process::id(),
        };
        let liveness_topic = server_topic(namespace.as_deref(), &instance);
        let mut subscriptions = vec![
            restart_command_filter(namespace.as_deref()),
            servers_filter(namespace.as_deref()),
        ];
        subscriptions.extend(slots.values().map(|s: &Slot| s.settings.topics.owner()));
        // The last will deletes the liveness record if this server vanishes.
        let link = MqttLink::open(
            client_options(
                &format!("{instance}-supervisor"),
                &endpoint,
                Some((liveness_topic.clone(), Vec::new())),
            ),
            subscriptions,
        );

        let supervisor = Supervisor {
            instance,
            me,
            liveness_topic,
            synced: false,
            online: BTreeMap::new(),
            owners: BTreeMap::new(),
            namespace,
            slots,
            factory: drivers_factory,
            monitor: monitor.clone(),
            handles,
            monitor_events,
            reports_tx,
            reports,
            link,
            shutdown: shutdown.clone(),
            shutdown_timeout: Duration::from_millis(server_config.shutdown_timeout_ms),
        };
        let handle = tokio::spawn(supervisor.run());
        Ok((RunnersService { monitor, shutdown }, handle))
    }

    /// Starts the graceful shutdown of every runner; the service handle
    /// resolves when it is done.
    pub fn shutdown(&self) {
        self.shutdown.cancel();
    }

    /// The token whose cancellation shuts the service down.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }
}

enum SlotState {
    /// A runner task is alive (initializing or running).
    Live,
    /// Waiting to restart at `deadline`.
    Backoff { deadline: Instant },
    /// The policy gave up.
    Failed,
    /// Ended cleanly, or stopped by the shutdown.
    Stopped,
}

struct Slot {
    settings: RunnerSettings,
    model: String,
    driver_settings: DriverSettings,
    policy: RestartPolicy,
    tracker: RestartTracker,
    /// Restarts since the server started.
    restarts: u32,
    /// Starts of this runner so far; tells stale reports apart.
    generation: u64,
    state: SlotState,
    /// Stops the live runner task.
    stop: Option<CancellationToken>,
    /// A restart command is waiting for the live task to end.
    restart_requested: bool,
    /// The cause of the last crash, shown until the runner runs again.
    last_cause: Option<String>,
    /// Republished after the supervisor reconnects to the broker.
    last_status: Option<StatusReport>,
    /// The driver built at start-up, used by the first start. In a mutex
    /// only to make the slot `Sync` (drivers need not be), so that the
    /// supervisor can hold `&self` across awaits.
    first_driver: std::sync::Mutex<Option<Box<dyn PowerSupplyDriver>>>,
    /// Whether this server serves the runner (see the module doc).
    ownership: Ownership,
    /// The runner's MQTT connection, kept across crashes; `None` until the
    /// first start and after a clean end.
    link: Option<SharedLink>,
    /// Whether that connection is subscribed now: `Running` is republished
    /// after a broker outage only once it is.
    link_ready: Option<Readiness>,
    /// While `Failed`: answers the commands that reach the connection.
    refuser: Option<Refuser>,
}

/// Whether this server instance serves a runner.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Ownership {
    /// Not claimed yet: waiting for the broker's retained records.
    Unclaimed,
    /// Claim published; the runner starts when it comes back.
    Pending(OwnerRecord),
    /// This server serves the runner.
    Owned(OwnerRecord),
    /// Another online instance serves it; this one leaves it alone.
    Conflict { owner: String },
}

impl Ownership {
    fn mine(&self) -> Option<&OwnerRecord> {
        match self {
            Ownership::Pending(claim) | Ownership::Owned(claim) => Some(claim),
            _ => None,
        }
    }
}

/// How a runner task ended.
enum Ending {
    Clean,
    Crashed { cause: String },
}

struct Supervisor {
    instance: String,
    /// This instance, as its liveness record tells it.
    me: ServerRecord,
    liveness_topic: String,
    /// This connection's liveness record came back: every retained record
    /// was delivered before it.
    synced: bool,
    /// Other instances online on this broker and namespace.
    online: BTreeMap<String, ServerRecord>,
    /// The last claim of another instance seen on each runner's owner topic.
    owners: BTreeMap<String, OwnerRecord>,
    namespace: Option<String>,
    slots: BTreeMap<String, Slot>,
    factory: Arc<Mutex<DriverFactory>>,
    monitor: Arc<Mutex<Option<TaskMonitor>>>,
    handles: TaskHandleSender,
    monitor_events: mpsc::Receiver<Event>,
    reports_tx: mpsc::UnboundedSender<RunnerReport>,
    reports: mpsc::UnboundedReceiver<RunnerReport>,
    link: MqttLink,
    shutdown: CancellationToken,
    shutdown_timeout: Duration,
}

impl Supervisor {
    async fn run(mut self) -> anyhow::Result<()> {
        loop {
            let next_deadline = self
                .slots
                .values()
                .filter_map(|s| match s.state {
                    SlotState::Backoff { deadline } => Some(deadline),
                    _ => None,
                })
                .min();
            tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => break,
                Some(event) = self.monitor_events.recv() => self.on_monitor_event(event).await,
                Some(report) = self.reports.recv() => self.on_running(report).await,
                Some(event) = self.link.recv() => self.on_link_event(event).await,
                _ = sleep_until(next_deadline), if next_deadline.is_some() => self.restart_due().await,
            }
        }
        self.stop_all().await
    }

    /// Publishes a runner's status, only while this server serves it.
    async fn publish_status(&mut self, name: &str, report: StatusReport) {
        let Some(slot) = self.slots.get_mut(name) else {
            return;
        };
        if !matches!(slot.ownership, Ownership::Owned(_)) {
            return;
        }
        let topic = slot.settings.topics.status();
        slot.last_status = Some(report.clone());
        if let Err(e) = self.link.publish(topic, true, report.to_payload()).await {
            tracing::error!(runner = name, error = %e, "cannot publish the status");
        }
    }

    fn status(&self, name: &str, status: Status) -> StatusReport {
        let mut report = StatusReport::new(status, self.slots.get(name).map_or(0, |s| s.restarts));
        if matches!(
            status,
            Status::Panicking | Status::Restarting | Status::Failed
        ) {
            report.panic_message = self.slots.get(name).and_then(|s| s.last_cause.clone());
        }
        report
    }

    /// Starts runner `name` with `driver`. `restart` counts it as a restart.
    async fn launch(
        &mut self,
        name: &str,
        driver: Box<dyn PowerSupplyDriver>,
        restart: bool,
    ) -> anyhow::Result<()> {
        let Some(slot) = self.slots.get_mut(name) else {
            return Ok(());
        };
        if let Some(refuser) = slot.refuser.take() {
            // The connection goes back to a runner.
            refuser.stop().await;
        }
        slot.generation += 1;
        if restart {
            slot.restarts += 1;
        }
        let stop = self.shutdown.child_token();
        let mut settings = slot.settings.clone();
        settings.client_id = format!("{}-{name}-{}", self.instance, slot.generation);
        // A crashed runner's connection is lent to the next one: no new
        // connection, subscription and broker work per restart.
        let link = match &slot.link {
            Some(link) => link.clone(),
            None => {
                let (link, readiness) = open_link(&settings);
                slot.link = Some(link.clone());
                slot.link_ready = Some(readiness);
                link
            }
        };
        let control = RunnerControl {
            stop: stop.clone(),
            shutdown: self.shutdown.clone(),
            reports: self.reports_tx.clone(),
            generation: slot.generation,
            link,
        };
        slot.stop = Some(stop);
        slot.state = SlotState::Live;
        let report = self.status(name, Status::Initializing);
        self.publish_status(name, report).await;
        let handle = Runner::start(settings, driver, control);
        self.handles
            .send((name.to_string(), handle))
            .await
            .map_err(|_| anyhow::anyhow!("the task monitor stopped"))
    }

    /// Builds a fresh driver and starts runner `name` again; a driver that
    /// cannot be built counts as a crash.
    async fn relaunch(&mut self, name: &str) {
        let Some(slot) = self.slots.get(name) else {
            return;
        };
        let built = self
            .factory
            .lock()
            .await
            .instantiate(name, &slot.model, &slot.driver_settings);
        match built {
            Ok(driver) => {
                if let Err(e) = self.launch(name, driver, true).await {
                    tracing::error!(runner = name, error = %e, "cannot start the runner");
                }
            }
            Err(e) => {
                let cause = format!("cannot build the driver: {e}");
                // The restart is counted: the attempt was made.
                if let Some(slot) = self.slots.get_mut(name) {
                    slot.restarts += 1;
                }
                self.on_crash(name, cause).await;
            }
        }
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
        let Some(slot) = self.slots.get_mut(&name) else {
            return;
        };
        slot.stop = None;
        let restart_requested = std::mem::take(&mut slot.restart_requested);
        if matches!(ending, Ending::Clean) && !restart_requested {
            // A runner that ends for good gives up its connection. One
            // stopped by the supervisor left it open (it may have been for a
            // restart), so it is closed here, off the supervisor's loop.
            if let Some(link) = slot.link.take() {
                tokio::spawn(async move { link.lock().await.shut(CLOSE_TIMEOUT).await });
            }
            slot.link_ready = None;
        }
        if !matches!(slot.ownership, Ownership::Owned(_)) {
            tracing::info!(runner = %name, "runner stopped: another server instance serves it");
            slot.state = SlotState::Stopped;
            return;
        }
        match ending {
            _ if restart_requested => {
                tracing::info!(runner = %name, "restarting on request");
                self.relaunch(&name).await;
            }
            Ending::Clean => {
                tracing::info!(runner = %name, "runner ended cleanly; not restarted");
                slot.state = SlotState::Stopped;
                let report = self.status(&name, Status::Stopped);
                self.publish_status(&name, report).await;
            }
            Ending::Crashed { cause } => self.on_crash(&name, cause).await,
        }
    }

    /// Publishes `Panicking`, then schedules a restart or gives up.
    async fn on_crash(&mut self, name: &str, cause: String) {
        let now = Instant::now();
        let Some(slot) = self.slots.get_mut(name) else {
            return;
        };
        slot.last_cause = Some(cause.clone());
        let decision = slot
            .tracker
            .crashed(&slot.policy, now, rand::random::<f64>());
        let report = self.status(name, Status::Panicking);
        self.publish_status(name, report).await;
        let Some(slot) = self.slots.get_mut(name) else {
            return;
        };
        match decision {
            Decision::Restart { attempt, delay } => {
                tracing::warn!(runner = name, attempt, delay_ms = delay.as_millis() as u64, cause = %cause, "runner crashed; restarting");
                slot.state = SlotState::Backoff {
                    deadline: now + delay,
                };
                let mut report = self.status(name, Status::Restarting);
                report.next_restart_ms = Some(delay.as_millis() as u64);
                self.publish_status(name, report).await;
            }
            Decision::GiveUp => {
                tracing::error!(runner = name, restarts = slot.tracker.consecutive(), cause = %cause, "runner crashed; restart policy gave up");
                slot.state = SlotState::Failed;
                if let Some(link) = &slot.link {
                    slot.refuser = Some(Refuser::start(link.clone(), slot.settings.topics.clone()));
                }
                let report = self.status(name, Status::Failed);
                self.publish_status(name, report).await;
            }
        }
    }

    async fn on_running(&mut self, report: RunnerReport) {
        let Some(slot) = self.slots.get_mut(&report.runner) else {
            return;
        };
        if slot.generation != report.generation || !matches!(slot.state, SlotState::Live) {
            return;
        }
        if report.reconnected {
            // Subscribed again after an outage: say `Running` again (the
            // broker may have lost it), unless the runner is not running.
            let last = slot.last_status.clone();
            if let Some(mut last) = last.filter(|r| r.status == Status::Running) {
                last.pza_id = None;
                self.publish_status(&report.runner, last).await;
            }
            return;
        }
        slot.tracker.running(Instant::now());
        slot.last_cause = None;
        let status = self.status(&report.runner, Status::Running);
        self.publish_status(&report.runner, status).await;
    }

    async fn restart_due(&mut self) {
        let now = Instant::now();
        let due: Vec<String> = self
            .slots
            .iter()
            .filter(|(_, s)| matches!(s.state, SlotState::Backoff { deadline } if deadline <= now))
            .map(|(name, _)| name.clone())
            .collect();
        for name in due {
            self.relaunch(&name).await;
        }
    }

    async fn on_link_event(&mut self, event: LinkEvent) {
        match event {
            LinkEvent::Connected { first } => {
                // Every retained record is delivered before this one comes
                // back: claims wait for it.
                self.synced = false;
                let runners: Vec<&str> = self.slots.keys().map(String::as_str).collect();
                let record = self.me.to_payload(&runners);
                let topic = self.liveness_topic.clone();
                if let Err(e) = self.link.publish(topic, true, record).await {
                    tracing::error!(error = %e, "cannot publish the liveness record");
                }
                if !first {
                    // The broker may have lost its retained messages: say
                    // again where every runner stands. `Running` means the
                    // runner takes commands: a runner whose own connection
                    // is not subscribed again yet says it itself, once it is
                    // (see `on_running`), lest a command sent on seeing
                    // `Running` reach no subscriber.
                    let statuses: Vec<(String, StatusReport)> = self
                        .slots
                        .iter()
                        .filter(|(_, s)| {
                            s.last_status
                                .as_ref()
                                .is_some_and(|r| r.status != Status::Running)
                                || s.link_ready.as_ref().is_some_and(Readiness::is_ready)
                        })
                        .filter_map(|(name, s)| {
                            // Said again, it answers no command.
                            let mut report = s.last_status.clone()?;
                            report.pza_id = None;
                            Some((name.clone(), report))
                        })
                        .collect();
                    for (name, report) in statuses {
                        self.publish_status(&name, report).await;
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
                    self.on_server_record(&instance, &publish.payload).await;
                } else {
                    tracing::warn!(topic = %publish.topic, "ignoring a message on an unknown topic");
                }
            }
        }
    }

    /// A liveness record: this instance's own coming back ends the wait for
    /// the retained records; another's tells whether it is online.
    async fn on_server_record(&mut self, instance: &str, payload: &[u8]) {
        let record = ServerRecord::parse(payload);
        if instance == self.instance {
            match record {
                Some(_) if !self.synced => {
                    self.synced = true;
                    self.reconcile().await;
                }
                Some(_) => {}
                None => {
                    // Deleted by someone else: this instance is online.
                    let runners: Vec<&str> = self.slots.keys().map(String::as_str).collect();
                    let record = self.me.to_payload(&runners);
                    let topic = self.liveness_topic.clone();
                    if let Err(e) = self.link.publish(topic, true, record).await {
                        tracing::error!(error = %e, "cannot publish the liveness record");
                    }
                }
            }
            return;
        }
        match record {
            Some(record) => {
                self.online.insert(instance.to_string(), record);
            }
            None => {
                if self.online.remove(instance).is_some() {
                    tracing::info!(%instance, "server instance went offline");
                }
                if self.synced {
                    // Runners it held are free now.
                    self.reconcile().await;
                }
            }
        }
    }

    /// A record on a runner's owner topic.
    async fn on_owner_record(&mut self, runner: &str, payload: &[u8]) {
        if !self.slots.contains_key(runner) {
            return;
        }
        let record = match OwnerRecord::parse(payload) {
            Ok(record) => record,
            Err(message) => {
                tracing::warn!(runner, %message, "ignoring an unreadable owner record");
                return;
            }
        };
        match record {
            Some(record) if record.instance == self.instance => {
                self.owners.remove(runner);
                let Some(slot) = self.slots.get_mut(runner) else {
                    return;
                };
                if slot.ownership == Ownership::Pending(record.clone()) {
                    slot.ownership = Ownership::Owned(record);
                    self.start_owned(runner).await;
                }
            }
            Some(record) => {
                self.owners.insert(runner.to_string(), record);
                if self.synced {
                    self.judge(runner).await;
                }
            }
            None => {
                self.owners.remove(runner);
                if self.synced {
                    self.judge(runner).await;
                }
            }
        }
    }

    /// The claim of another online instance on `runner`, if any.
    fn rival(&self, runner: &str) -> Option<&OwnerRecord> {
        self.owners
            .get(runner)
            .filter(|r| self.online.contains_key(&r.instance))
    }

    /// Decides again, from the records seen, what to do with every runner.
    async fn reconcile(&mut self) {
        let names: Vec<String> = self.slots.keys().cloned().collect();
        for name in names {
            self.judge(&name).await;
        }
    }

    /// Decides, from the records seen, whether this server serves `runner`:
    /// claims it, keeps it (publishing the claim again), or leaves it to the
    /// instance whose claim wins.
    async fn judge(&mut self, runner: &str) {
        let Some(slot) = self.slots.get(runner) else {
            return;
        };
        let rival = self.rival(runner).cloned();
        let mine = slot.ownership.mine().cloned();
        match (&slot.ownership, rival) {
            (Ownership::Conflict { .. }, None) => {
                tracing::info!(
                    runner,
                    "runner released by the other server instance: claiming it"
                );
                self.claim(runner, None).await;
            }
            (Ownership::Conflict { owner }, Some(rival)) => {
                if *owner != rival.instance {
                    self.conflict(runner, &rival.instance).await;
                }
            }
            (Ownership::Unclaimed, rival) => {
                let claim = OwnerRecord {
                    instance: self.instance.clone(),
                    claimed_at_ms: now_ms(),
                };
                match rival {
                    Some(rival) if rival.wins_over(&claim) => {
                        self.conflict(runner, &rival.instance).await
                    }
                    _ => self.claim(runner, Some(claim)).await,
                }
            }
            (Ownership::Pending(_) | Ownership::Owned(_), rival) => {
                let mine = mine.unwrap_or_else(|| OwnerRecord {
                    instance: self.instance.clone(),
                    claimed_at_ms: now_ms(),
                });
                match rival {
                    Some(rival) if rival.wins_over(&mine) => {
                        self.conflict(runner, &rival.instance).await
                    }
                    Some(rival) => {
                        tracing::warn!(runner, other = %rival.instance, "another server instance claims this runner too; this one's claim is older and stands");
                        self.claim(runner, Some(mine)).await;
                    }
                    None => self.claim(runner, Some(mine)).await,
                }
            }
        }
    }

    /// Publishes this instance's claim on `runner` (retained), a new one when
    /// `claim` is `None`. The runner starts when a new claim comes back.
    async fn claim(&mut self, runner: &str, claim: Option<OwnerRecord>) {
        let Some(slot) = self.slots.get_mut(runner) else {
            return;
        };
        let claim = claim.unwrap_or_else(|| OwnerRecord {
            instance: self.instance.clone(),
            claimed_at_ms: now_ms(),
        });
        if !matches!(slot.ownership, Ownership::Owned(_)) {
            slot.ownership = Ownership::Pending(claim.clone());
        }
        let topic = slot.settings.topics.owner();
        if let Err(e) = self.link.publish(topic, true, claim.to_payload()).await {
            tracing::error!(runner, error = %e, "cannot publish the owner record");
        }
    }

    /// Leaves `runner` to `owner`: stops it if it runs here, and reports the
    /// conflict in the log and on `P/error`.
    async fn conflict(&mut self, runner: &str, owner: &str) {
        let Some(slot) = self.slots.get_mut(runner) else {
            return;
        };
        let was_owned = matches!(slot.ownership, Ownership::Owned(_));
        if let Some(refuser) = slot.refuser.take() {
            // The runner's commands are the other server's to answer now.
            refuser.stop().await;
        }
        slot.ownership = Ownership::Conflict {
            owner: owner.to_string(),
        };
        if let Some(stop) = &slot.stop {
            stop.cancel();
        }
        if matches!(slot.state, SlotState::Backoff { .. } | SlotState::Failed) {
            slot.state = SlotState::Stopped;
        }
        let other = self
            .online
            .get(owner)
            .map(ServerRecord::describe)
            .unwrap_or_else(|| format!("instance {owner}"));
        let message = format!(
            "conflict: runner '{runner}' is served by another server, {other}, on this broker and namespace; this server ({}) {}",
            self.me.describe(),
            if was_owned { "stops serving it" } else { "does not start it" },
        );
        tracing::error!(runner, "{message}");
        let topic = slot.settings.topics.error();
        if let Err(e) = self
            .link
            .publish(topic, false, error_reply(None, &message))
            .await
        {
            tracing::error!(runner, error = %e, "cannot publish an error");
        }
    }

    /// Starts a runner this server has just come to own, with the driver
    /// built at start-up or a fresh one; not counted as a restart.
    async fn start_owned(&mut self, name: &str) {
        let Some(slot) = self.slots.get_mut(name) else {
            return;
        };
        if self.shutdown.is_cancelled() {
            return;
        }
        if slot.stop.is_some() {
            // The task stopped when the runner was lost has not ended yet:
            // start again once it has.
            slot.restart_requested = true;
            return;
        }
        let first = slot
            .first_driver
            .get_mut()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        let driver = match first {
            Some(driver) => Ok(driver),
            None => self
                .factory
                .lock()
                .await
                .instantiate(name, &slot.model, &slot.driver_settings),
        };
        match driver {
            Ok(driver) => {
                if let Err(e) = self.launch(name, driver, false).await {
                    tracing::error!(runner = name, error = %e, "cannot start the runner");
                }
            }
            Err(e) => {
                self.on_crash(name, format!("cannot build the driver: {e}"))
                    .await
            }
        }
    }

    /// `P/restart/cmd`: restart now, from the first delay; revives a `Failed`
    /// runner. The one reply is a `Restarting` status with the command's
    /// `pza_id` and `next_restart_ms: 0`.
    async fn on_restart_command(&mut self, name: &str, payload: &[u8]) {
        let Some(slot) = self.slots.get_mut(name) else {
            tracing::warn!(
                runner = name,
                "restart command for an unknown runner ignored"
            );
            return;
        };
        if !matches!(slot.ownership, Ownership::Owned(_)) {
            tracing::info!(
                runner = name,
                "restart command ignored: this server does not serve the runner"
            );
            return;
        }
        let pza_id = match parse_restart(payload) {
            Ok(pza_id) => pza_id,
            Err(rejection) => {
                let topic = slot.settings.topics.error();
                let reply = error_reply(rejection.pza_id.as_deref(), &rejection.message);
                if let Err(e) = self.link.publish(topic, false, reply).await {
                    tracing::error!(runner = name, error = %e, "cannot publish an error");
                }
                return;
            }
        };
        tracing::info!(runner = name, "restart requested");
        slot.tracker.reset();
        let live = match (&slot.state, &slot.stop) {
            (SlotState::Live, Some(stop)) => {
                slot.restart_requested = true;
                stop.cancel();
                true
            }
            _ => false,
        };
        let mut report = self.status(name, Status::Restarting);
        report.pza_id = pza_id;
        report.next_restart_ms = Some(0);
        self.publish_status(name, report).await;
        if !live {
            self.relaunch(name).await;
        }
    }

    /// The shutdown: every runner stops (their tokens are children of the
    /// shutdown token), pending restarts are dropped, stragglers are aborted
    /// after the shutdown timeout, and every runner ends `Stopped`.
    async fn stop_all(mut self) -> anyhow::Result<()> {
        tracing::info!("stopping the runners");
        let idle: Vec<String> = self
            .slots
            .iter()
            .filter(|(_, s)| s.stop.is_none() && !matches!(s.state, SlotState::Stopped))
            .map(|(name, _)| name.clone())
            .collect();
        for name in idle {
            self.stopped(&name).await;
        }
        let deadline = Instant::now() + self.shutdown_timeout;
        let mut aborted = false;
        while self.slots.values().any(|s| s.stop.is_some()) {
            tokio::select! {
                event = self.monitor_events.recv() => match event {
                    Some(Event::TaskStopProperly(body) | Event::TaskStopWithPain(body) | Event::TaskPanicOMG(body)) => {
                        if let Some(cause) = body.error_message {
                            tracing::warn!(runner = %body.task_name, %cause, "runner ended with an error during shutdown");
                        }
                        if let Some(slot) = self.slots.get_mut(&body.task_name) {
                            slot.stop = None;
                        }
                        self.stopped(&body.task_name).await;
                    }
                    Some(_) => {}
                    None => break,
                },
                _ = tokio::time::sleep_until(deadline), if !aborted => {
                    let late: Vec<&str> = self.slots.iter().filter(|(_, s)| s.stop.is_some()).map(|(n, _)| n.as_str()).collect();
                    tracing::warn!(runners = ?late, timeout_ms = self.shutdown_timeout.as_millis() as u64, "runners still alive after the shutdown timeout: aborting them");
                    if let Some(monitor) = self.monitor.lock().await.as_ref() {
                        monitor.cancel_all_monitored_tasks();
                    }
                    aborted = true;
                }
            }
        }
        self.release().await;
        // Connections left by runners that crashed and were not restarted.
        for slot in self.slots.values_mut() {
            if let Some(refuser) = slot.refuser.take() {
                refuser.stop().await;
            }
            if let Some(link) = slot.link.take() {
                link.lock().await.shut(CLOSE_TIMEOUT).await;
            }
        }
        self.link.close(CLOSE_TIMEOUT).await;
        self.monitor.lock().await.take();
        tracing::info!("all runners stopped");
        Ok(())
    }

    /// Deletes this instance's claims and liveness record, so that another
    /// server may take its runners over at once.
    async fn release(&mut self) {
        let claims: Vec<String> = self
            .slots
            .values()
            .filter(|s| s.ownership.mine().is_some())
            .map(|s| s.settings.topics.owner())
            .collect();
        for topic in claims {
            if let Err(e) = self.link.publish(topic, true, Vec::new()).await {
                tracing::error!(error = %e, "cannot release a claim");
            }
        }
        let topic = self.liveness_topic.clone();
        if let Err(e) = self.link.publish(topic, true, Vec::new()).await {
            tracing::error!(error = %e, "cannot delete the liveness record");
        }
    }

    async fn stopped(&mut self, name: &str) {
        if let Some(slot) = self.slots.get_mut(name) {
            slot.state = SlotState::Stopped;
        }
        let report = self.status(name, Status::Stopped);
        self.publish_status(name, report).await;
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
