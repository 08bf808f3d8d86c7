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

use anyhow::Context as _;
use pza_toolkit::mqtt::client_options;
use pza_toolkit::task_monitor::TaskMonitor;
use tokio::sync::Mutex;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::mailbox::Mailboxes;
use crate::config::{Plan, ServerConfig};
use crate::drivers::DriverFactory;
use crate::protocol::ownership::{owners_filter, server_topic, servers_filter, ServerRecord};
use crate::protocol::topics::commands_filter;
use ownership::Claims;
use pza_toolkit::mqtt::link::Dispatch;
use pza_toolkit::mqtt::MqttLink;
use shell::{Supervised, Supervisor};
use slot::Slot;

/// Most QoS 1 publishes of the server's connection waiting for their
/// acknowledgement (rumqttc's default is 100): every runner of the server
/// publishes on it, and a start of 1000 runners queues about 8000 messages.
const SERVER_INFLIGHT: u16 = 1000;

/// Supervises the runners. Dropping it does not stop them: call `shutdown`.
pub struct RunnersService {
    /// The monitor of the runner tasks, kept alive here; `None` once the
    /// supervisor has stopped.
    pub monitor: Arc<Mutex<Option<TaskMonitor>>>,
    shutdown: CancellationToken,
}

impl RunnersService {
    /// Instantiates a driver for every configured runner, starts the runners
    /// and their supervisor. A driver that cannot be built stops the start
    /// with an error naming the runner, and nothing is started then. The
    /// handle resolves when the service has stopped, after `shutdown`.
    ///
    /// The seed's signature (SPEC): the driver models are those
    /// `server_config` was loaded with, already resolved into its plan, so
    /// the factory is not read again.
    pub async fn start(
        server_config: ServerConfig,
        _drivers_factory: Arc<Mutex<DriverFactory>>,
    ) -> anyhow::Result<(RunnersService, JoinHandle<anyhow::Result<()>>)> {
        Self::start_plan(server_config.plan, CancellationToken::new()).await
    }

    /// Starts the runners of `plan`, stopping when `shutdown` is cancelled.
    pub async fn start_plan(
        plan: Plan,
        shutdown: CancellationToken,
    ) -> anyhow::Result<(RunnersService, JoinHandle<anyhow::Result<()>>)> {
        super::panics::install();
        let instance = format!("pza-ps-{:08x}", rand::random::<u32>());
        let Plan {
            endpoint,
            namespace,
            shutdown_timeout,
            runners: runner_plans,
            ..
        } = plan;

        let mut runners = BTreeMap::new();
        for (name, runner) in runner_plans {
            // Built now, so that a driver that cannot be built stops the
            // start-up; each restart builds a fresh one.
            let driver = runner.driver.build(&name).with_context(|| {
                format!(
                    "runner '{name}': cannot build its {} driver",
                    runner.driver.model_name()
                )
            })?;
            let slot = Slot::new(runner.policy);
            let supervised = Supervised::new(slot, runner.settings, runner.driver, driver);
            runners.insert(name, supervised);
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
            monitor: monitor.clone(),
            handles,
            monitor_events,
            link,
            mailboxes,
            shutdown: shutdown.clone(),
            shutdown_timeout,
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
