//! One runner: one device, served through its mailbox on the server's MQTT
//! connection (see [`super::mailbox`]).
//!
//! The runner task initializes the driver, waits until the connection is
//! subscribed and until the supervisor's `Initializing` for this start is
//! queued on it (so that what the runner publishes comes after it), reads the
//! device state (clamping a setpoint found outside the
//! security limits), publishes `P/info` and the state retained and reports
//! `Running`. Then it serves commands one at a time, and measures every
//! `measure_period` in two steps (voltage, then current) with commands
//! served in between, so that a command waits behind at most one device
//! request of a measurement. Every driver call runs under `command_timeout`.
//!
//! The task ends with `Ok` when it is stopped, and with a [`RunnerError`]
//! (the runner's name over a [`Cause`], which wraps the `DriverError`) when
//! the driver reports a fatal error (the link to the device is in an unknown
//! state): the supervisor then restarts it with a fresh driver. A panic in a driver call
//! is caught, answered on `P/error` like a fatal error, and then resumed, so
//! that the `TaskMonitor` still sees (and the supervisor counts) a panic.
//!
//! In both cases the commands received but not served yet are answered on
//! `P/error` with `not applied: the runner is restarting`; commands that
//! arrive after the crash wait in the mailbox (which the supervisor keeps)
//! and are served by the restarted runner once it is `Running`.

use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use pza_toolkit::task_monitor::TaskHandle;
use rumqttc::Publish;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::error::{Cause, DriverPanic, RunnerError};
use super::limits::SecurityLimits;
use super::mailbox::{RunnerLink, SharedMailbox};
use super::panics;
use crate::config::OnShutdown;
use crate::drivers::{DriverError, PowerSupplyDriver};
use crate::protocol::payload::{
    command_id, error_reply, format_value, measure_reply, parse_command, parse_measure,
    state_reply, value_reply, Measurement,
};
use crate::protocol::{Amps, Attribute, InfoReport, Request, Topics, Volts};
use pza_toolkit::mqtt::link::{LinkEvent, Publisher};

/// Period of the measurement ticker when periodic measurements are off
/// (`measure_period_ms: 0`): `interval` refuses a zero period, and the ticker
/// is then never polled (its branch is disabled), so any long period will do.
const IDLE_TICKER_PERIOD: Duration = Duration::from_secs(3600);

/// Everything a runner needs to know, resolved from the config.
#[derive(Debug, Clone)]
pub struct RunnerSettings {
    pub name: String,
    pub topics: Topics,
    pub limits: SecurityLimits,
    /// Published retained on `P/info` before `Running`.
    pub info: InfoReport,
    pub voltage_decimals: usize,
    pub current_decimals: usize,
    /// `Duration::ZERO`: no periodic measurements.
    pub measure_period: Duration,
    pub command_timeout: Duration,
    pub on_shutdown: OnShutdown,
}

/// What a runner tells its supervisor: it takes commands, so its status
/// may say `Running`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunnerReport {
    pub runner: String,
    /// Which start of the runner this is about (stale reports are ignored).
    pub generation: u64,
    /// False when the runner has just reached `Running`; true when its
    /// connection came back after a broker outage and is subscribed again.
    pub reconnected: bool,
}

/// How a runner is stopped, and where it reports.
#[derive(Clone)]
pub struct RunnerControl {
    /// Stops this runner (a restart, or a shutdown).
    pub stop: CancellationToken,
    /// The server's shutdown: `on_shutdown` is applied only when it is cancelled.
    pub shutdown: CancellationToken,
    /// Where the runner says it reached `Running`.
    pub reports: mpsc::UnboundedSender<RunnerReport>,
    pub generation: u64,
    /// The runner's mailbox, lent by the supervisor. It outlives a runner
    /// that crashes: the next one takes it over, with the commands still
    /// waiting in it.
    pub mailbox: SharedMailbox,
    /// Publishes on the server's connection.
    pub publisher: Publisher,
    /// The supervisor's `Initializing` for this start: the runner publishes
    /// nothing before it is queued on the connection, so that its `P/info`
    /// and state come after that status (`None`: no wait).
    pub announced: Option<Announced>,
}

/// A mark on the supervisor's messages: reached once that many of them are
/// queued on the connection.
#[derive(Debug, Clone)]
pub struct Announced {
    pub queued: watch::Receiver<u64>,
    pub mark: u64,
}

impl Announced {
    /// Waits until the mark is reached, for at most `timeout`; whether it was.
    async fn wait(&self, timeout: Duration) -> bool {
        let mut queued = self.queued.clone();
        let mark = self.mark;
        let reached = async move { queued.wait_for(|queued| *queued >= mark).await.is_ok() };
        matches!(tokio::time::timeout(timeout, reached).await, Ok(true))
    }
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
            run(settings, driver, control).await.map_err(|cause| {
                RunnerError {
                    runner: name,
                    cause,
                }
                .into()
            })
        })
    }
}

/// Which retained values a runner publishes when it reaches `Running`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Republish {
    /// All: after a reconnection, the broker may have lost them.
    All,
    /// Those the broker does not have yet: after a restart on the same
    /// connection, a value this runner (or its previous start) published
    /// and that has not changed is on the broker already, so a crash
    /// costs no broker work for it.
    Changed,
}

/// The output state as published, and its retained payload.
fn state_value(pza_id: Option<&str>, enabled: bool) -> (String, Vec<u8>) {
    let value = if enabled { "ON" } else { "OFF" };
    (value.to_string(), state_reply(pza_id, enabled))
}

/// A setpoint as published (with the model's decimals), and its retained
/// payload.
fn setpoint_value(
    pza_id: Option<&str>,
    field: &str,
    value: f64,
    decimals: usize,
) -> (String, Vec<u8>) {
    (
        format_value(value, decimals),
        value_reply(pza_id, field, value, decimals),
    )
}

/// Why a command or a measurement could not complete.
enum Failure {
    /// Answered on `P/error`; the runner goes on.
    Answered,
    /// Answered on `P/error` (when it could be); the runner must end.
    Fatal(Cause),
}

impl From<Cause> for Failure {
    fn from(cause: Cause) -> Failure {
        Failure::Fatal(cause)
    }
}

/// Polls a future, turning a panic inside it into `Err(payload)`.
struct CatchUnwind<F>(Pin<Box<F>>);

impl<F: Future> Future for CatchUnwind<F> {
    type Output = Result<F::Output, Box<dyn Any + Send>>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let inner = self.0.as_mut();
        // Unwind safety: after a panic the driver the future borrows is
        // never called again; the runner answers its commands and resumes
        // the panic, which drops the driver.
        let poll = || panics::guarded(|| inner.poll(cx));
        match std::panic::catch_unwind(AssertUnwindSafe(poll)) {
            Ok(Poll::Ready(value)) => Poll::Ready(Ok(value)),
            Ok(Poll::Pending) => Poll::Pending,
            Err(payload) => Poll::Ready(Err(payload)),
        }
    }
}

struct Session {
    settings: RunnerSettings,
    /// Held for the runner's whole life; a panic releases the mailbox, with
    /// the commands still inside, for the next runner.
    link: RunnerLink,
}

/// The driver, held apart from the `Session` so that the session can be
/// shared across awaits while the driver (which need not be `Sync`) is not.
type Driver = Box<dyn PowerSupplyDriver>;

async fn run(
    settings: RunnerSettings,
    driver: Box<dyn PowerSupplyDriver>,
    control: RunnerControl,
) -> Result<(), Cause> {
    let link = RunnerLink::lend(control.mailbox.clone(), control.publisher.clone()).await;
    let mut driver = driver;
    let mut session = Session { settings, link };

    let served = session.serve(&mut driver, &control).await;
    // Commands received and not served get their one answer. After a panic
    // as after an error: both restart the runner.
    let reason = match &served {
        Ok(()) if control.shutdown.is_cancelled() => "not applied: the server is shutting down",
        Err(e) if e.closed_by_device() => "not applied: the device ended the session",
        _ => "not applied: the runner is restarting",
    };
    if let Err(e) = session.refuse_pending(reason).await {
        tracing::warn!(runner = %session.settings.name, error = %e, "cannot answer the pending commands");
    }
    let outcome = match served {
        Ok(()) => session.stop(&mut driver, &control).await,
        Err(e) if e.closed_by_device() => {
            tracing::info!(runner = %session.settings.name, cause = %e, "the device ended the session");
            Ok(())
        }
        Err(e) => {
            // The mailbox goes back to the supervisor, for the next runner.
            // The error replies are queued on the connection already, before
            // anything the supervisor publishes about this crash.
            drop(session);
            if let Cause::Panic(panic) = &e {
                if let Some(payload) = panic.take_payload() {
                    // Ends the task as the panic it is, released mailbox
                    // and all, so that the supervisor counts it as one.
                    drop(driver);
                    std::panic::resume_unwind(payload);
                }
            }
            return Err(e);
        }
    };
    // The supervisor decides what becomes of the mailbox, and closes the
    // connection last at shutdown, after everything queued on it is sent.
    outcome
}

impl Session {
    /// Brings the runner up, then serves until stopped (`Ok`) or a fatal error.
    /// A stop interrupts the bring-up, but never a command in progress.
    async fn serve(&mut self, driver: &mut Driver, control: &RunnerControl) -> Result<(), Cause> {
        tokio::select! {
            _ = control.stop.cancelled() => return Ok(()),
            ready = self.bring_up(driver, control) => ready?,
        }
        let measuring = !self.settings.measure_period.is_zero();
        let mut ticker = tokio::time::interval(if measuring {
            self.settings.measure_period
        } else {
            IDLE_TICKER_PERIOD
        });
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The second step of a periodic measurement is due. Commands go
        // first (the select is biased), so that one waits behind at most
        // the one device request in progress.
        let mut current_due = false;
        loop {
            tokio::select! {
                biased;
                _ = control.stop.cancelled() => return Ok(()),
                event = self.link.recv() => match event {
                    Some(LinkEvent::Message(publish)) => self.handle(driver, publish).await?,
                    Some(LinkEvent::Connected { .. }) => {
                        // The broker may have lost them: all of them again.
                        self.publish_info(Republish::All).await?;
                        self.publish_state(driver, Republish::All).await?;
                        // Subscribed again: `Running` may be said again.
                        let _ = control.reports.send(RunnerReport {
                            runner: self.settings.name.clone(),
                            generation: control.generation,
                            reconnected: true,
                        });
                    }
                    None => return Err(Cause::ConnectionClosed),
                },
                _ = std::future::ready(()), if current_due => {
                    current_due = false;
                    self.measure_step(driver, Attribute::Current).await?;
                }
                _ = ticker.tick(), if measuring => {
                    self.measure_step(driver, Attribute::Voltage).await?;
                    current_due = true;
                }
            }
        }
    }

    /// Initializes the driver, waits for the connection, publishes the state
    /// and reports `Running`.
    async fn bring_up(
        &mut self,
        driver: &mut Driver,
        control: &RunnerControl,
    ) -> Result<(), Cause> {
        let timeout = self.settings.command_timeout;
        match tokio::time::timeout(timeout, driver.initialize()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(Cause::Initialization(e)),
            Err(_) => {
                return Err(Cause::InitializationTimeout {
                    timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
                })
            }
        }
        if !self.link.wait_ready().await {
            return Err(Cause::ConnectionClosedBeforeReady);
        }
        if let Some(announced) = &control.announced {
            if !announced.wait(timeout).await {
                tracing::debug!(runner = %self.settings.name, "the supervisor's Initializing was not queued in time");
            }
        }
        self.clamp_setpoints(driver).await?;
        self.publish_info(Republish::Changed).await?;
        self.publish_state(driver, Republish::Changed).await?;
        // The retained state is queued on the connection before the
        // supervisor's `Running`, which is queued after this report.
        let _ = control.reports.send(RunnerReport {
            runner: self.settings.name.clone(),
            generation: control.generation,
            reconnected: false,
        });
        if control.generation == 1 {
            tracing::info!(runner = %self.settings.name, "running");
        } else {
            // A restart is logged by the supervisor, with its cause.
            tracing::debug!(runner = %self.settings.name, generation = control.generation, "running again");
        }
        Ok(())
    }

    /// Answers the commands received but not served when the runner is
    /// stopped, so that each gets its one answer: an error saying it was
    /// not applied.
    async fn refuse_pending(&mut self, reason: &str) -> Result<(), Cause> {
        while let Some(publish) = self.link.try_recv() {
            if !self.settings.topics.is_runner_command(&publish.topic) {
                continue;
            }
            self.publish_error(command_id(&publish.payload).as_deref(), reason)
                .await?;
        }
        Ok(())
    }

    /// Applies `on_shutdown` when the server shuts down, and closes the driver.
    async fn stop(&mut self, driver: &mut Driver, control: &RunnerControl) -> Result<(), Cause> {
        let timeout = self.settings.command_timeout;
        if control.shutdown.is_cancelled() && self.settings.on_shutdown == OnShutdown::OutputOff {
            let off = async {
                driver.set_output_enabled(false).await?;
                driver.output_enabled().await
            };
            match tokio::time::timeout(timeout, off).await {
                Ok(Ok(enabled)) => {
                    tracing::info!(runner = %self.settings.name, "output turned off for shutdown");
                    let (value, payload) = state_value(None, enabled);
                    self.link
                        .publish_value(
                            self.settings.topics.attribute(Attribute::State),
                            &value,
                            payload,
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

    async fn publish(&self, topic: String, retain: bool, payload: Vec<u8>) -> Result<(), Cause> {
        Ok(self.link.publish(topic, retain, payload).await?)
    }

    /// Publishes a retained value, or with `Republish::Changed` leaves it
    /// out when the broker has it already (see [`Republish`]).
    async fn publish_retained(
        &self,
        topic: String,
        (value, payload): (String, Vec<u8>),
        republish: Republish,
    ) -> Result<(), Cause> {
        if republish == Republish::Changed && self.link.has_value(&topic, &value) {
            return Ok(());
        }
        Ok(self.link.publish_value(topic, &value, payload).await?)
    }

    async fn publish_error(&self, pza_id: Option<&str>, message: &str) -> Result<(), Cause> {
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
    ) -> Result<T, Failure> {
        let timeout = self.settings.command_timeout;
        let guarded = CatchUnwind(Box::pin(operation(driver.as_mut())));
        let outcome = tokio::time::timeout(timeout, guarded).await;
        let error = match outcome {
            Ok(Ok(Ok(value))) => return Ok(value),
            Ok(Ok(Err(e))) => e,
            Ok(Err(payload)) => {
                let panic = DriverPanic::new(payload, panics::take_location());
                // Logged once, by the supervisor, with where it happened:
                // the resumed panic carries the location.
                tracing::debug!(runner = %self.settings.name, pza_id, "{what}: {panic}");
                self.publish_error(pza_id, &format!("{what}: {panic}"))
                    .await?;
                return Err(Failure::Fatal(Cause::Panic(panic)));
            }
            Err(_) => DriverError::timeout(format!(
                "the device did not answer within {} ms (command_timeout_ms)",
                timeout.as_millis()
            )),
        };
        self.publish_error(pza_id, &format!("{what}: {error}"))
            .await?;
        if error.kind().ends_session() {
            Err(Failure::Fatal(Cause::Driver {
                what: what.to_string(),
                source: error,
            }))
        } else {
            Err(Failure::Answered)
        }
    }

    async fn handle(&mut self, driver: &mut Driver, publish: Publish) -> Result<(), Cause> {
        if publish.topic == self.settings.topics.measure_command() {
            return self.measure_now(driver, &publish.payload).await;
        }
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
                .await
                .map(|enabled| state_value(pza_id, enabled)),
            Request::SetVoltage(v) => self
                .call(driver, "voltage", pza_id, |d| {
                    Box::pin(async move {
                        d.set_voltage_setpoint(v).await?;
                        d.voltage_setpoint().await
                    })
                })
                .await
                .map(|v| setpoint_value(pza_id, "voltage", v.0, vd)),
            Request::SetCurrent(a) => self
                .call(driver, "current", pza_id, |d| {
                    Box::pin(async move {
                        d.set_current_limit(a).await?;
                        d.current_limit().await
                    })
                })
                .await
                .map(|a| setpoint_value(pza_id, "current", a.0, cd)),
        };
        match reply {
            Ok((value, payload)) => Ok(self.link.publish_value(topic, &value, payload).await?),
            Err(Failure::Answered) => Ok(()),
            Err(Failure::Fatal(e)) => Err(e),
        }
    }

    /// One step of a periodic measurement: one device request, published
    /// retained on `P/measure/<quantity>` with a fresh server-made id.
    async fn measure_step(
        &mut self,
        driver: &mut Driver,
        quantity: Attribute,
    ) -> Result<(), Cause> {
        let measured = match quantity {
            Attribute::Current => {
                self.call(driver, "measure", None, |d| {
                    Box::pin(async move { Ok(d.measure_current().await?.0) })
                })
                .await
            }
            _ => {
                self.call(driver, "measure", None, |d| {
                    Box::pin(async move { Ok(d.measure_voltage().await?.0) })
                })
                .await
            }
        };
        let decimals = match quantity {
            Attribute::Current => self.settings.current_decimals,
            _ => self.settings.voltage_decimals,
        };
        match measured {
            Ok(value) => {
                let topic = self.settings.topics.measure(quantity);
                let payload = value_reply(None, quantity.name(), value, decimals);
                self.publish(topic, true, payload).await
            }
            Err(Failure::Answered) => Ok(()),
            Err(Failure::Fatal(e)) => Err(e),
        }
    }

    /// `P/measure/cmd`: measures both values now and answers on `P/measure`
    /// with the command's id.
    async fn measure_now(&mut self, driver: &mut Driver, payload: &[u8]) -> Result<(), Cause> {
        let pza_id = match parse_measure(payload) {
            Ok(pza_id) => pza_id,
            Err(rejection) => {
                return self
                    .publish_error(rejection.pza_id.as_deref(), &rejection.message)
                    .await
            }
        };
        let pza_id = pza_id.as_deref();
        let measured = self
            .call(driver, "measure", pza_id, |d| {
                Box::pin(async move {
                    let voltage: Volts = d.measure_voltage().await?;
                    let current: Amps = d.measure_current().await?;
                    Ok((voltage, current))
                })
            })
            .await;
        match measured {
            Ok((voltage, current)) => {
                let measurement = Measurement {
                    voltage,
                    current,
                    voltage_decimals: self.settings.voltage_decimals,
                    current_decimals: self.settings.current_decimals,
                };
                let topic = self.settings.topics.measure_reply();
                self.publish(topic, false, measure_reply(pza_id, &measurement))
                    .await
            }
            Err(Failure::Answered) => Ok(()),
            Err(Failure::Fatal(e)) => Err(e),
        }
    }

    /// `P/info`, retained.
    async fn publish_info(&self, republish: Republish) -> Result<(), Cause> {
        // The info of a runner never changes while the server runs.
        let info = (String::new(), self.settings.info.to_payload());
        self.publish_retained(self.settings.topics.info(), info, republish)
            .await
    }

    /// A setpoint found outside the security limits at start-up is set to the
    /// nearest limit, and the clamp is reported on `P/error`.
    async fn clamp_setpoints(&mut self, driver: &mut Driver) -> Result<(), Cause> {
        let limits = self.settings.limits;
        let found = self
            .call(driver, "start-up", None, |d| {
                Box::pin(async move { Ok((d.voltage_setpoint().await?, d.current_limit().await?)) })
            })
            .await;
        let (voltage, current) = match found {
            Ok(values) => values,
            Err(Failure::Answered) => return Err(Cause::SetpointsUnread),
            Err(Failure::Fatal(e)) => return Err(e),
        };
        if let Some(clamped) = limits.clamp_voltage(voltage) {
            let outcome = self
                .call(driver, "start-up", None, |d| {
                    Box::pin(async move { d.set_voltage_setpoint(clamped).await })
                })
                .await;
            self.report_clamp("voltage", voltage.0, clamped.0, "V", outcome)
                .await?;
        }
        if let Some(clamped) = limits.clamp_current(current) {
            let outcome = self
                .call(driver, "start-up", None, |d| {
                    Box::pin(async move { d.set_current_limit(clamped).await })
                })
                .await;
            self.report_clamp("current", current.0, clamped.0, "A", outcome)
                .await?;
        }
        Ok(())
    }

    async fn report_clamp(
        &self,
        quantity: &'static str,
        found: f64,
        clamped: f64,
        unit: &str,
        outcome: Result<(), Failure>,
    ) -> Result<(), Cause> {
        match outcome {
            Ok(()) => {
                let message = format!("{quantity} setpoint {found} {unit} found outside the security limits at start-up: clamped to {clamped} {unit}");
                tracing::warn!(runner = %self.settings.name, "{message}");
                self.publish_error(None, &message).await
            }
            Err(Failure::Answered) => Err(Cause::ClampFailed { quantity }),
            Err(Failure::Fatal(e)) => Err(e),
        }
    }

    /// Publishes output state, voltage setpoint and current limit, retained.
    async fn publish_state(
        &mut self,
        driver: &mut Driver,
        republish: Republish,
    ) -> Result<(), Cause> {
        let read = self
            .call(driver, "state", None, |d| {
                Box::pin(async move {
                    Ok((
                        d.output_enabled().await?,
                        d.voltage_setpoint().await?,
                        d.current_limit().await?,
                    ))
                })
            })
            .await;
        let (enabled, voltage, current) = match read {
            Ok(values) => values,
            Err(Failure::Answered) => return Ok(()),
            Err(Failure::Fatal(e)) => return Err(e),
        };
        let topics = self.settings.topics.clone();
        self.publish_retained(
            topics.attribute(Attribute::State),
            state_value(None, enabled),
            republish,
        )
        .await?;
        self.publish_retained(
            topics.attribute(Attribute::Voltage),
            setpoint_value(None, "voltage", voltage.0, self.settings.voltage_decimals),
            republish,
        )
        .await?;
        self.publish_retained(
            topics.attribute(Attribute::Current),
            setpoint_value(None, "current", current.0, self.settings.current_decimals),
            republish,
        )
        .await
    }
}
