//! The `RunnersService`: starts one runner per configured supply, restarts
//! the ones that crash under their restart policy, and stops them all on
//! shutdown.
//!
//! Split as rumqttc splits `state.rs` from `eventloop.rs`:
//! - `slot`: one runner's supervision as a pure state machine (`Live`,
//!   `Backoff`, `Failed`, `Stopped`) whose transitions return actions;
//! - `ownership`: the multi-server claim protocol, returning decisions
//!   (`Claim`, `Keep`, `Yield`, `Start`);
//! - `shell`: the one task that `select!`s over the monitor's events, the
//!   runners' reports, the MQTT messages, the earliest restart deadline and
//!   the shutdown, and carries the actions out.
//!
//! The supervisor and every runner share one MQTT connection (see
//! [`super::mailbox`]). A broker outage is not a crash: the runners keep
//! running, the connection comes back on its own, and then the supervisor
//! publishes its liveness record, every status and every claim again, and
//! each runner its retained state.

mod ownership;
mod shell;
mod slot;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use pza_toolkit::mqtt::{client_options, BrokerEndpoint, ClientTls};
use pza_toolkit::task_monitor::TaskMonitor;
use tokio::sync::Mutex;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::mailbox::Mailboxes;
use super::runner::RunnerSettings;
use super::SecurityLimits;
use crate::config::ServerConfig;
use crate::drivers::DriverFactory;
use crate::protocol::ownership::{owners_filter, server_topic, servers_filter, ServerRecord};
use crate::protocol::topics::commands_filter;
use crate::protocol::{InfoReport, Topics};
use ownership::Claims;
use pza_toolkit::mqtt::link::Dispatch;
use pza_toolkit::mqtt::MqttLink;

/// Most QoS 1 publishes of the server's connection waiting for their
/// acknowledgement (rumqttc's default is 100): every runner of the server
/// publishes on it, and a start of 1000 runners queues about 8000 messages.
const SERVER_INFLIGHT: u16 = 1000;
use shell::{Supervised, Supervisor};
use slot::Slot;

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

        let mut runners = BTreeMap::new();
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
                    topics: Topics::new(namespace.as_deref(), name),
                    limits,
                    info,
                    voltage_decimals: manifest.voltage_decimals,
                    current_decimals: manifest.current_decimals,
                    measure_period: Duration::from_millis(runner.measure_period_ms),
                    command_timeout: Duration::from_millis(runner.command_timeout_ms),
                    on_shutdown: runner.on_shutdown,
                };
                runners.insert(
                    name.clone(),
                    Supervised::new(
                        Slot::new(policy),
                        settings,
                        runner.model.clone(),
                        runner.driver_settings.clone(),
                        driver,
                    ),
                );
            }
        }

        let (monitor, monitor_events) = TaskMonitor::new("runners");
        let handles = monitor.handle_sender();
        let monitor = Arc::new(Mutex::new(Some(monitor)));
        let me = ServerRecord {
            instance: instance.clone(),
            host: nix::unistd::gethostname()
                .map(|h| h.to_string_lossy().into_owned())
                .unwrap_or_else(|_| "?".into()),
            pid: std::process::id(),
        };
        let liveness_topic = server_topic(namespace.as_deref(), &instance);
        // Three filters whatever the number of runners: the broker matches
        // every new topic against every filter.
        let subscriptions = vec![
            commands_filter(namespace.as_deref()),
            owners_filter(namespace.as_deref()),
            servers_filter(namespace.as_deref()),
        ];
        // The last will deletes the liveness record if this server vanishes.
        let mut options = client_options(
            &instance,
            &endpoint,
            Some((liveness_topic.clone(), Vec::new())),
        );
        options.set_inflight(SERVER_INFLIGHT);
        let mailboxes = Mailboxes::new(namespace.clone());
        let dispatch: Arc<dyn Dispatch> = mailboxes.clone();
        let link = MqttLink::open_dispatched(options, subscriptions, Some(dispatch));
        mailboxes.attach(link.publisher());

        let supervisor = Supervisor::new(shell::Parts {
            claims: Claims::new(me, runners.keys()),
            liveness_topic,
            namespace,
            runners,
            factory: drivers_factory,
            monitor: monitor.clone(),
            handles,
            monitor_events,
            link,
            mailboxes,
            shutdown: shutdown.clone(),
            shutdown_timeout: Duration::from_millis(server_config.shutdown_timeout_ms),
        });
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
