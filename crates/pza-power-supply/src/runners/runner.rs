//! One runner: one device on one MQTT connection.
//!
//! The runner task initializes the driver, waits until its connection is
//! subscribed, reads the device state (clamping a setpoint found outside the
//! security limits), publishes it retained and reports `Running`. Then it
//! serves commands one at a time, and measures every `measure_period`, so a
//! command waits behind at most one measurement. Every driver call runs
//! under `command_timeout`.
//!
//! The task ends with `Ok` when it is stopped, and with `Err` when the driver
//! reports a fatal error (the link to the device is in an unknown state): the
//! supervisor then restarts it with a fresh driver. A panic in the driver
//! unwinds through the task and is reported by the `TaskMonitor`.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use pza_toolkit::mqtt::{client_options, BrokerEndpoint};
use pza_toolkit::task_monitor::TaskHandle;
use rumqttc::Publish;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::limits::SecurityLimits;
use super::link::{LinkEvent, MqttLink};
use crate::config::OnShutdown;
use crate::drivers::{DriverError, ErrorKind, PowerSupplyDriver};
use crate::protocol::payload::{error_reply, parse_command, state_reply, value_reply};
use crate::protocol::{Attribute, Request, Topics};

/// How long the runner waits for its last messages to be acknowledged and
/// for its connection to close.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// Everything a runner needs to know, resolved from the config.
#[derive(Debug, Clone)]
pub struct RunnerSettings {
    pub name: String,
    /// MQTT client id, unique per server, runner and start.
    pub client_id: String,
    pub endpoint: BrokerEndpoint,
    pub topics: Topics,
    pub limits: SecurityLimits,
    pub voltage_decimals: usize,
    pub current_decimals: usize,
    /// `Duration::ZERO`: no periodic measurements.
    pub measure_period: Duration,
    pub command_timeout: Duration,
    pub on_shutdown: OnShutdown,
}

/// What a runner tells its supervisor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunnerReport {
    pub runner: String,
    /// Which start of the runner this is about (stale reports are ignored).
    pub generation: u64,
}

/// How a runner is stopped, and where it reports.
#[derive(Debug, Clone)]
pub struct RunnerControl {
    /// Stops this runner (a restart, or a shutdown).
    pub stop: CancellationToken,
    /// The server's shutdown: `on_shutdown` is applied only when it is cancelled.
    pub shutdown: CancellationToken,
    /// Where the runner says it reached `Running`.
    pub reports: mpsc::UnboundedSender<RunnerReport>,
    pub generation: u64,
    /// The runner's MQTT connection, lent by the supervisor. It outlives a
    /// runner that crashes (the next one takes it over, already connected and
    /// subscribed, with the commands still waiting in it), and is closed by a
    /// runner that ends cleanly.
    pub link: SharedLink,
}

/// A runner's MQTT connection, kept by the supervisor across restarts.
pub type SharedLink = Arc<tokio::sync::Mutex<MqttLink>>;

/// Opens the connection of a runner, subscribed to its command topics.
pub fn open_link(settings: &RunnerSettings) -> SharedLink {
    Arc::new(tokio::sync::Mutex::new(MqttLink::open(
        client_options(&settings.client_id, &settings.endpoint, None),
        vec![settings.topics.command_filter()],
    )))
}

/// A driver operation borrowed for one call.
type DriverFuture<'a, T> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<T, DriverError>> + Send + 'a>>;

/// Starts runners.
pub struct Runner;

impl Runner {
    /// Spawns the task of one runner. Can be called again and again for the
    /// same runner name, with a fresh driver each time.
    pub fn start(
        settings: RunnerSettings,
        driver: Box<dyn PowerSupplyDriver>,
        control: RunnerControl,
    ) -> TaskHandle {
        tokio::spawn(async move {
            let name = settings.name.clone();
            run(settings, driver, control)
                .await
                .with_context(|| format!("runner '{name}'"))
        })
    }
}

/// Why a command or a measurement could not complete.
enum Failure {
    /// Answered on `P/error`; the runner goes on.
    Answered,
    /// Answered on `P/error`; the runner must end with this error.
    Fatal(anyhow::Error),
}

struct Session {
    settings: RunnerSettings,
    /// Held for the runner's whole life; a panic releases it with the link
    /// still inside, for the next runner.
    link: tokio::sync::OwnedMutexGuard<MqttLink>,
}

/// The driver, held apart from the `Session` so that the session can be
/// shared across awaits while the driver (which need not be `Sync`) is not.
type Driver = Box<dyn PowerSupplyDriver>;

async fn run(
    settings: RunnerSettings,
    driver: Box<dyn PowerSupplyDriver>,
    control: RunnerControl,
) -> anyhow::Result<()> {
    let link = control.link.clone().lock_owned().await;
    let mut driver = driver;
    let mut session = Session { settings, link };

    let served = session.serve(&mut driver, &control).await;
    let reason = match &served {
        Ok(()) if control.shutdown.is_cancelled() => "not applied: the server is shutting down",
        Err(e) if closed_by_device(e) => "not applied: the device ended the session",
        _ => "not applied: the runner is restarting",
    };
    if let Err(e) = session.refuse_pending(reason).await {
        tracing::warn!(runner = %session.settings.name, error = %e, "cannot answer the pending commands");
    }
    let outcome = match served {
        Ok(()) => session.stop(&mut driver, &control).await,
        Err(e) if closed_by_device(&e) => {
            tracing::info!(runner = %session.settings.name, cause = %e, "the device ended the session");
            Ok(())
        }
        Err(e) => {
            // The link stays up for the next runner; the error reply must be
            // on the broker first.
            session.link.flush(CLOSE_TIMEOUT).await;
            return Err(e);
        }
    };
    session.link.shut(CLOSE_TIMEOUT).await;
    outcome
}

/// True when `error` is the device ending the session on purpose.
fn closed_by_device(error: &anyhow::Error) -> bool {
    error
        .downcast_ref::<DriverError>()
        .is_some_and(|e| e.kind() == ErrorKind::Closed)
}

impl Session {
    /// Brings the runner up, then serves until stopped (`Ok`) or a fatal error.
    /// A stop interrupts the bring-up, but never a command in progress.
    async fn serve(&mut self, driver: &mut Driver, control: &RunnerControl) -> anyhow::Result<()> {
        tokio::select! {
            _ = control.stop.cancelled() => return Ok(()),
            ready = self.bring_up(driver, control) => ready?,
        }
        let measuring = !self.settings.measure_period.is_zero();
        let mut ticker = tokio::time::interval(if measuring {
            self.settings.measure_period
        } else {
            Duration::from_secs(3600)
        });
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                _ = control.stop.cancelled() => return Ok(()),
                event = self.link.recv() => match event {
                    Some(LinkEvent::Message(publish)) => self.handle(driver, publish).await?,
                    Some(LinkEvent::Connected { .. }) => self.publish_state(driver, None).await?,
                    None => anyhow::bail!("MQTT connection closed"),
                },
                _ = ticker.tick(), if measuring => self.measure(driver).await?,
            }
        }
    }

    /// Initializes the driver, waits for the connection, publishes the state
    /// and reports `Running`.
    async fn bring_up(
        &mut self,
        driver: &mut Driver,
        control: &RunnerControl,
    ) -> anyhow::Result<()> {
        let timeout = self.settings.command_timeout;
        match tokio::time::timeout(timeout, driver.initialize()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(anyhow::Error::new(e).context("driver initialization failed")),
            Err(_) => anyhow::bail!(
                "driver initialization did not finish within {} ms",
                timeout.as_millis()
            ),
        }
        while !self.link.is_ready() {
            match self.link.recv().await {
                Some(LinkEvent::Connected { .. }) => break,
                Some(LinkEvent::Message(_)) => {}
                None => anyhow::bail!("MQTT connection closed before it was ready"),
            }
        }
        self.clamp_setpoints(driver).await?;
        self.publish_state(driver, None).await?;
        // Make sure the retained state is on the broker before `Running` is
        // announced (by the supervisor, on another connection).
        self.link.flush(timeout).await;
        let _ = control.reports.send(RunnerReport {
            runner: self.settings.name.clone(),
            generation: control.generation,
        });
        tracing::info!(runner = %self.settings.name, "running");
        Ok(())
    }

    /// Answers the commands received but not served when the runner is
    /// stopped, so that each gets its one answer: an error saying it was
    /// not applied.
    async fn refuse_pending(&mut self, reason: &str) -> anyhow::Result<()> {
        while let Some(event) = self.link.try_recv() {
            let LinkEvent::Message(publish) = event else {
                continue;
            };
            let Some(attribute) = self.settings.topics.command_attribute(&publish.topic) else {
                continue;
            };
            let pza_id = match parse_command(attribute, &publish.payload) {
                Ok(command) => command.pza_id,
                Err(rejection) => rejection.pza_id,
            };
            self.publish_error(pza_id.as_deref(), reason).await?;
        }
        Ok(())
    }

    /// Applies `on_shutdown` when the server shuts down, and closes the driver.
    async fn stop(&mut self, driver: &mut Driver, control: &RunnerControl) -> anyhow::Result<()> {
        let timeout = self.settings.command_timeout;
        if control.shutdown.is_cancelled() && self.settings.on_shutdown == OnShutdown::OutputOff {
            let off = async {
                driver.set_output_enabled(false).await?;
                driver.output_enabled().await
            };
            match tokio::time::timeout(timeout, off).await {
                Ok(Ok(enabled)) => {
                    tracing::info!(runner = %self.settings.name, "output turned off for shutdown");
                    self.publish(
                        self.settings.topics.attribute(Attribute::State),
                        true,
                        state_reply(None, enabled),
                    )
                    .await?;
                }
                Ok(Err(e)) => {
                    tracing::error!(runner = %self.settings.name, error = %e, "cannot turn the output off")
                }
                Err(_) => {
                    tracing::error!(runner = %self.settings.name, "turning the output off timed out")
                }
            }
        }
        match tokio::time::timeout(timeout, driver.shutdown()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(runner = %self.settings.name, error = %e, "driver shutdown failed")
            }
            Err(_) => tracing::warn!(runner = %self.settings.name, "driver shutdown timed out"),
        }
        Ok(())
    }

    async fn publish(&self, topic: String, retain: bool, payload: Vec<u8>) -> anyhow::Result<()> {
        self.link.publish(topic, retain, payload).await
    }

    async fn publish_error(&self, pza_id: Option<&str>, message: &str) -> anyhow::Result<()> {
        tracing::debug!(runner = %self.settings.name, pza_id, message, "command rejected");
        self.publish(
            self.settings.topics.error(),
            false,
            error_reply(pza_id, message),
        )
        .await
    }

    /// Runs one driver operation under the command timeout, turning its
    /// failure into one message on `P/error` (with `pza_id`).
    async fn call<T>(
        &mut self,
        driver: &mut Driver,
        what: &str,
        pza_id: Option<&str>,
        operation: impl for<'a> FnOnce(&'a mut dyn PowerSupplyDriver) -> DriverFuture<'a, T>,
    ) -> anyhow::Result<Result<T, Failure>> {
        let timeout = self.settings.command_timeout;
        let outcome = tokio::time::timeout(timeout, operation(driver.as_mut())).await;
        let error = match outcome {
            Ok(Ok(value)) => return Ok(Ok(value)),
            Ok(Err(e)) => e,
            Err(_) => DriverError::timeout(format!(
                "the device did not answer within {} ms (command_timeout_ms)",
                timeout.as_millis()
            )),
        };
        self.publish_error(pza_id, &format!("{what}: {error}"))
            .await?;
        if error.kind().ends_session() {
            Ok(Err(Failure::Fatal(
                anyhow::Error::new(error).context(format!("{what} failed")),
            )))
        } else {
            Ok(Err(Failure::Answered))
        }
    }

    async fn handle(&mut self, driver: &mut Driver, publish: Publish) -> anyhow::Result<()> {
        let Some(attribute) = self.settings.topics.command_attribute(&publish.topic) else {
            // The restart command is the supervisor's.
            if publish.topic != self.settings.topics.restart_command() {
                tracing::warn!(runner = %self.settings.name, topic = %publish.topic, "ignoring a command for an unknown attribute");
            }
            return Ok(());
        };
        let command = match parse_command(attribute, &publish.payload) {
            Ok(command) => command,
            Err(rejection) => {
                return self
                    .publish_error(rejection.pza_id.as_deref(), &rejection.message)
                    .await
            }
        };
        let pza_id = command.pza_id.as_deref();
        let request = match self.settings.limits.check(command.request) {
            Ok(request) => request,
            Err(message) => return self.publish_error(pza_id, &message).await,
        };
        let topic = self.settings.topics.attribute(attribute);
        let (vd, cd) = (
            self.settings.voltage_decimals,
            self.settings.current_decimals,
        );
        let reply = match request {
            Request::SetOutput(on) => self
                .call(driver, "state", pza_id, |d| {
                    Box::pin(async move {
                        d.set_output_enabled(on).await?;
                        d.output_enabled().await
                    })
                })
                .await?
                .map(|enabled| state_reply(pza_id, enabled)),
            Request::SetVoltage(v) => self
                .call(driver, "voltage", pza_id, |d| {
                    Box::pin(async move {
                        d.set_voltage_setpoint(v).await?;
                        d.voltage_setpoint().await
                    })
                })
                .await?
                .map(|v| value_reply(pza_id, "voltage", v.0, vd)),
            Request::SetCurrent(a) => self
                .call(driver, "current", pza_id, |d| {
                    Box::pin(async move {
                        d.set_current_limit(a).await?;
                        d.current_limit().await
                    })
                })
                .await?
                .map(|a| value_reply(pza_id, "current", a.0, cd)),
        };
        match reply {
            Ok(payload) => self.publish(topic, true, payload).await,
            Err(Failure::Answered) => Ok(()),
            Err(Failure::Fatal(e)) => Err(e),
        }
    }

    async fn measure(&mut self, driver: &mut Driver) -> anyhow::Result<()> {
        let measured = self
            .call(driver, "measure", None, |d| {
                Box::pin(async move {
                    let voltage = d.measure_voltage().await?;
                    let current = d.measure_current().await?;
                    Ok((voltage, current))
                })
            })
            .await?;
        match measured {
            Ok((voltage, current)) => {
                let topics = &self.settings.topics;
                self.publish(
                    topics.measure(Attribute::Voltage),
                    true,
                    value_reply(None, "voltage", voltage.0, self.settings.voltage_decimals),
                )
                .await?;
                self.publish(
                    topics.measure(Attribute::Current),
                    true,
                    value_reply(None, "current", current.0, self.settings.current_decimals),
                )
                .await
            }
            Err(Failure::Answered) => Ok(()),
            Err(Failure::Fatal(e)) => Err(e),
        }
    }

    /// A setpoint found outside the security limits at start-up is set to the
    /// nearest limit, and the clamp is reported on `P/error`.
    async fn clamp_setpoints(&mut self, driver: &mut Driver) -> anyhow::Result<()> {
        let limits = self.settings.limits;
        let found = self
            .call(driver, "start-up", None, |d| {
                Box::pin(async move { Ok((d.voltage_setpoint().await?, d.current_limit().await?)) })
            })
            .await?;
        let (voltage, current) = match found {
            Ok(values) => values,
            Err(Failure::Answered) => anyhow::bail!("cannot read the setpoints at start-up"),
            Err(Failure::Fatal(e)) => return Err(e),
        };
        if let Some(clamped) = limits.clamp_voltage(voltage) {
            let outcome = self
                .call(driver, "start-up", None, |d| {
                    Box::pin(async move { d.set_voltage_setpoint(clamped).await })
                })
                .await?;
            self.report_clamp("voltage", voltage.0, clamped.0, "V", outcome)
                .await?;
        }
        if let Some(clamped) = limits.clamp_current(current) {
            let outcome = self
                .call(driver, "start-up", None, |d| {
                    Box::pin(async move { d.set_current_limit(clamped).await })
                })
                .await?;
            self.report_clamp("current", current.0, clamped.0, "A", outcome)
                .await?;
        }
        Ok(())
    }

    async fn report_clamp(
        &self,
        quantity: &str,
        found: f64,
        clamped: f64,
        unit: &str,
        outcome: Result<(), Failure>,
    ) -> anyhow::Result<()> {
        match outcome {
            Ok(()) => {
                let message = format!("{quantity} setpoint {found} {unit} found outside the security limits at start-up: clamped to {clamped} {unit}");
                tracing::warn!(runner = %self.settings.name, "{message}");
                self.publish_error(None, &message).await
            }
            Err(Failure::Answered) => {
                anyhow::bail!("cannot clamp the {quantity} setpoint into the security limits")
            }
            Err(Failure::Fatal(e)) => Err(e),
        }
    }

    /// Publishes output state, voltage setpoint and current limit, retained.
    async fn publish_state(
        &mut self,
        driver: &mut Driver,
        pza_id: Option<&str>,
    ) -> anyhow::Result<()> {
        let read = self
            .call(driver, "state", pza_id, |d| {
                Box::pin(async move {
                    Ok((
                        d.output_enabled().await?,
                        d.voltage_setpoint().await?,
                        d.current_limit().await?,
                    ))
                })
            })
            .await?;
        let (enabled, voltage, current) = match read {
            Ok(values) => values,
            Err(Failure::Answered) => return Ok(()),
            Err(Failure::Fatal(e)) => return Err(e),
        };
        let topics = self.settings.topics.clone();
        self.publish(
            topics.attribute(Attribute::State),
            true,
            state_reply(pza_id, enabled),
        )
        .await?;
        self.publish(
            topics.attribute(Attribute::Voltage),
            true,
            value_reply(pza_id, "voltage", voltage.0, self.settings.voltage_decimals),
        )
        .await?;
        self.publish(
            topics.attribute(Attribute::Current),
            true,
            value_reply(pza_id, "current", current.0, self.settings.current_decimals),
        )
        .await
    }
}
