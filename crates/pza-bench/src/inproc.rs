//! A server started inside the harness's own runtime, with its config written
//! as JSON5 text and parsed by the server's own config loader.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use pza_power_supply::config;
use pza_power_supply::drivers::DriverFactory;
use pza_power_supply::server::{Server, ServerOptions};
use tokio::sync::Mutex;

use crate::client::BenchClient;

/// The voltage that makes a crashing runner's emulator panic.
pub const CRASH_VOLTAGE: &str = "13";

/// The statuses a crash of a runner goes through, in order.
pub const CRASH_STATUSES: [&str; 4] = ["Panicking", "Restarting", "Initializing", "Running"];

/// Longest wait for a server's graceful shutdown.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(15);

/// The restart policy of a crashing runner: restart at once, forever.
const CRASH_LOOP_RESTART: &str =
    "restart: { initial_delay_ms: 0, jitter: 0, max_retries: 1000000, reset_after_ms: 0 }";

/// Where the server's broker is.
#[derive(Debug, Clone, Copy)]
pub enum Broker {
    /// The embedded broker, started by the server on this port.
    Embedded(u16),
    /// A broker already listening on this port (`use_builtin: false`).
    External(u16),
}

impl Broker {
    pub fn port(self) -> u16 {
        match self {
            Broker::Embedded(port) | Broker::External(port) => port,
        }
    }
}

/// A config entry for an emulator runner called `name`, with
/// `measure_period_ms` (0: no periodic measurements).
pub fn emulator_runner(name: &str, measure_period_ms: u64) -> String {
    format!("\"{name}\": {{ model: \"emulator\", measure_period_ms: {measure_period_ms} }}")
}

/// A config entry for an emulator runner that panics when asked for
/// `CRASH_VOLTAGE` and is restarted at once, with no limit.
pub fn crashing_runner(name: &str) -> String {
    format!(
        "\"{name}\": {{ model: \"emulator\", measure_period_ms: 0, faults: {{ panic_on_voltage: {CRASH_VOLTAGE} }}, {CRASH_LOOP_RESTART} }}"
    )
}

/// The whole config file.
pub fn config_text(broker: Broker, runners: &[String]) -> String {
    let (builtin, port) = match broker {
        Broker::Embedded(port) => (true, port),
        Broker::External(port) => (false, port),
    };
    format!(
        "{{\n  broker: {{ use_builtin: {builtin}, tcp: {{ addr: \"127.0.0.1\", port: {port} }} }},\n  runners: {{\n    {}\n  }},\n}}\n",
        runners.join(",\n    ")
    )
}

/// The status topic of runner `name`.
pub fn status_topic(name: &str) -> String {
    format!("power-supply/{name}/status")
}

/// A server running in this process.
pub struct InProcessServer {
    pub port: u16,
    server: Option<Server>,
}

impl Drop for InProcessServer {
    fn drop(&mut self) {
        // Dropped without `stop` (an error on the way): at least stop the
        // runners. The broker stays until the process exits.
        if let Some(server) = &self.server {
            server.shutdown_token().cancel();
        }
    }
}

impl InProcessServer {
    /// Starts a server with `runners` (config entries) and `factory`.
    pub async fn start(
        broker: Broker,
        runners: &[String],
        factory: DriverFactory,
    ) -> anyhow::Result<InProcessServer> {
        let text = config_text(broker, runners);
        let config = config::parse(Path::new("pza-bench.json5"), &text, &factory)
            .context("the harness's server config")?;
        let server = Server::start(
            config,
            Arc::new(Mutex::new(factory)),
            ServerOptions::default(),
        )
        .await
        .context("starting the server in-process")?;
        Ok(InProcessServer {
            port: broker.port(),
            server: Some(server),
        })
    }

    /// Shuts the server down and waits for it, within `SHUTDOWN_TIMEOUT`.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        let Some(server) = self.server.take() else {
            return Ok(());
        };
        match tokio::time::timeout(SHUTDOWN_TIMEOUT, server.shutdown()).await {
            Ok(result) => result.context("server shutdown"),
            Err(_) => bail!("the server did not shut down within {SHUTDOWN_TIMEOUT:?}"),
        }
    }
}

/// Waits until every runner of `names` has `status` as its latest status,
/// as seen by `client` (subscribed to their status topics). Returns the
/// instant the last of them was seen.
pub async fn wait_all_status(
    client: &mut BenchClient,
    names: &[String],
    status: &str,
    timeout: Duration,
) -> anyhow::Result<Instant> {
    let deadline = Instant::now() + timeout;
    let mut latest: std::collections::HashMap<String, bool> =
        names.iter().map(|n| (status_topic(n), false)).collect();
    let mut missing = latest.len();
    let mut at = Instant::now();
    while missing > 0 {
        let m = client.recv_until(deadline).await.with_context(|| {
            format!(
                "{missing} of {} runners not {status} within {timeout:?}",
                names.len()
            )
        })?;
        let Some(reached) = latest.get_mut(&m.topic) else {
            continue;
        };
        let now = m.field("status").as_deref() == Some(status);
        match (*reached, now) {
            (false, true) => missing -= 1,
            (true, false) => missing += 1,
            _ => {}
        }
        *reached = now;
        at = m.at;
    }
    Ok(at)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_generated_config_is_accepted_by_the_server() {
        let text = config_text(
            Broker::Embedded(1883),
            &[emulator_runner("a", 0), crashing_runner("b")],
        );
        let factory = DriverFactory::with_builtin_models();
        let parsed = config::parse(Path::new("test.json5"), &text, &factory);
        let parsed = parsed.unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(parsed.runners.len(), 2);
        let external = config_text(Broker::External(1884), &[emulator_runner("a", 1000)]);
        let parsed = config::parse(Path::new("test.json5"), &external, &factory);
        assert!(!parsed.unwrap_or_else(|e| panic!("{e}")).broker.use_builtin);
    }
}
