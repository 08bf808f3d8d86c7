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

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use pza_toolkit::mqtt::{client_options, BrokerEndpoint};
use pza_toolkit::task_monitor::{Event, TaskHandleSender, TaskMonitor};
use tokio::sync::{mpsc, Mutex};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::link::{LinkEvent, MqttLink};
use super::restart::{Decision, RestartTracker};
use super::runner::{Runner, RunnerControl, RunnerReport, RunnerSettings};
use super::SecurityLimits;
use crate::config::{RestartPolicy, ServerConfig};
use crate::drivers::{DriverFactory, DriverSettings, PowerSupplyDriver};
use crate::protocol::payload::{error_reply, parse_restart};
use crate::protocol::topics::{restart_command_filter, restart_command_runner};
use crate::protocol::{Status, StatusReport, Topics};

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
        let endpoint = BrokerEndpoint {
            host: server_config.broker.tcp.addr.clone(),
            port: server_config.broker.tcp.port,
            username: server_config.broker.username.clone(),
            password: server_config.broker.password.clone(),
        };
        let namespace = server_config.broker.namespace.clone();

        let mut slots = BTreeMap::new();
        let mut first_drivers = Vec::new();
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
                let manifest = model.manifest();
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
                first_drivers.push((name.clone(), driver));
                let settings = RunnerSettings {
                    name: name.clone(),
                    client_id: String::new(),
                    endpoint: endpoint.clone(),
                    topics: Topics::new(namespace.as_deref(), name),
                    limits: SecurityLimits::resolve(&runner.limits, manifest),
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
                    },
                );
            }
        }

        let (monitor, monitor_events) = TaskMonitor::new("runners");
        let handles = monitor.handle_sender();
        let monitor = Arc::new(Mutex::new(Some(monitor)));
        let (reports_tx, reports) = mpsc::unbounded_channel();
        let link = MqttLink::open(
            client_options(&format!("{instance}-supervisor"), &endpoint, None),
            vec![restart_command_filter(namespace.as_deref())],
        );

        let mut supervisor = Supervisor {
            instance,
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
        for (name, driver) in first_drivers {
            supervisor.launch(&name, driver, false).await?;
        }
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
}

/// How a runner task ended.
enum Ending {
    Clean,
    Crashed { cause: String },
}

struct Supervisor {
    instance: String,
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

    async fn publish_status(&mut self, name: &str, report: StatusReport) {
        let Some(slot) = self.slots.get_mut(name) else {
            return;
        };
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
        slot.generation += 1;
        if restart {
            slot.restarts += 1;
        }
        let stop = self.shutdown.child_token();
        let mut settings = slot.settings.clone();
        settings.client_id = format!("{}-{name}-{}", self.instance, slot.generation);
        let control = RunnerControl {
            stop: stop.clone(),
            shutdown: self.shutdown.clone(),
            reports: self.reports_tx.clone(),
            generation: slot.generation,
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
            LinkEvent::Connected { first: true } => {}
            LinkEvent::Connected { first: false } => {
                // The broker may have lost its retained messages: say again
                // where every runner stands.
                let statuses: Vec<(String, StatusReport)> = self
                    .slots
                    .iter()
                    .filter_map(|(name, s)| s.last_status.clone().map(|r| (name.clone(), r)))
                    .collect();
                for (name, report) in statuses {
                    self.publish_status(&name, report).await;
                }
            }
            LinkEvent::Message(publish) => {
                let Some(name) = restart_command_runner(self.namespace.as_deref(), &publish.topic)
                    .map(str::to_string)
                else {
                    tracing::warn!(topic = %publish.topic, "ignoring a message on an unknown topic");
                    return;
                };
                self.on_restart_command(&name, &publish.payload).await;
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
        self.link.close(CLOSE_TIMEOUT).await;
        self.monitor.lock().await.take();
        tracing::info!("all runners stopped");
        Ok(())
    }

    async fn stopped(&mut self, name: &str) {
        if let Some(slot) = self.slots.get_mut(name) {
            slot.state = SlotState::Stopped;
        }
        let report = self.status(name, Status::Stopped);
        self.publish_status(name, report).await;
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
