//! The plan: the configuration resolved once, while it is checked, into
//! what the server starts from: socket addresses, the TLS configuration
//! loaded, and for each runner its driver model, restart policy, limits and
//! settings. Nothing downstream parses or resolves the config again.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use pza_toolkit::mqtt::BrokerEndpoint;

use super::{RestartPolicy, RunnerConfig};
use crate::drivers::{
    DriverError, DriverManifest, DriverModel, DriverSettings, InstrumentUse, PowerSupplyDriver,
};
use crate::protocol::{InfoReport, Topics};
use crate::runners::{RunnerSettings, SecurityLimits};

/// What the server starts from, resolved from a checked config.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The embedded broker to start; `None` with an external broker.
    pub embedded_broker: Option<EmbeddedBrokerPlan>,
    /// How the server's own MQTT connections (the supervisor's, the
    /// runners') reach the broker, TLS loaded.
    pub endpoint: BrokerEndpoint,
    /// The topic prefix, for several servers on one broker.
    pub namespace: Option<String>,
    /// Where the MCP server listens; `None` when it is disabled.
    pub mcp: Option<SocketAddr>,
    pub shutdown_timeout: Duration,
    pub runners: BTreeMap<String, RunnerPlan>,
}

/// The embedded broker: where it listens and whom it lets in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmbeddedBrokerPlan {
    pub addr: SocketAddr,
    /// The one user it accepts, `(username, password)`; anyone when `None`.
    pub credentials: Option<(String, String)>,
}

/// One runner, ready to start.
#[derive(Debug, Clone)]
pub struct RunnerPlan {
    /// Builds its driver, at every start.
    pub driver: DriverPlan,
    /// Its restart settings merged over the server's and resolved.
    pub policy: RestartPolicy,
    /// Topics, limits, info, decimals and periods.
    pub settings: RunnerSettings,
}

/// A driver model and the runner's settings for it: what builds a fresh
/// driver for each start of the runner.
#[derive(Clone)]
pub struct DriverPlan {
    model: Arc<dyn DriverModel>,
    settings: DriverSettings,
}

impl DriverPlan {
    pub(super) fn new(model: Arc<dyn DriverModel>, settings: DriverSettings) -> DriverPlan {
        DriverPlan { model, settings }
    }

    /// The model's name (an alias in the config resolves to it).
    pub fn model_name(&self) -> &'static str {
        self.model.manifest().model
    }

    /// Builds a fresh driver for `runner`; it does no I/O until initialized.
    pub fn build(&self, runner: &str) -> Result<Box<dyn PowerSupplyDriver>, DriverError> {
        self.model.instantiate(runner, &self.settings)
    }

    /// The part of an instrument this runner drives, when the model can tell.
    pub(super) fn instrument_use(&self) -> Option<InstrumentUse> {
        self.model.instrument_use(&self.settings)
    }
}

impl fmt::Debug for DriverPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DriverPlan")
            .field("model", &self.model_name())
            .field("settings", &self.settings)
            .finish()
    }
}

/// The IP address to bind for `addr`: an IP address, or `localhost` (the
/// IPv4 loopback, as on every platform); `None` for anything else.
pub(super) fn bind_ip(addr: &str) -> Option<IpAddr> {
    match addr {
        "localhost" => Some(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        other => other.parse().ok(),
    }
}

/// The address a client uses for a broker bound to `addr`: a wildcard bind
/// address is reached on the loopback.
pub fn client_host(addr: &str) -> String {
    match addr {
        "0.0.0.0" => "127.0.0.1".into(),
        "::" | "[::]" => "::1".into(),
        other => other.into(),
    }
}

/// The settings of runner `name` as its runner task takes them.
pub(super) fn runner_settings(
    name: &str,
    runner: &RunnerConfig,
    manifest: &DriverManifest,
    limits: SecurityLimits,
    namespace: Option<&str>,
) -> RunnerSettings {
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
    RunnerSettings {
        name: name.to_string(),
        topics: Topics::new(namespace, name),
        limits,
        info,
        voltage_decimals: manifest.voltage_decimals,
        current_decimals: manifest.current_decimals,
        measure_period: Duration::from_millis(runner.measure_period_ms),
        command_timeout: Duration::from_millis(runner.command_timeout_ms),
        on_shutdown: runner.on_shutdown,
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::drivers::{DriverFactory, Range};

    fn plan(text: &str) -> Plan {
        let factory = DriverFactory::with_builtin_models();
        match crate::config::parse(Path::new("plan.json5"), text, &factory) {
            Ok(config) => config.plan,
            Err(e) => panic!("config rejected: {e}"),
        }
    }

    #[test]
    fn addresses_are_resolved_at_load() {
        let p = plan(
            r#"{ broker: { tcp: { addr: "localhost", port: 1999 }, username: "lab" },
                 mcp: { enable: true, host: "::1", port: 5000 } }"#,
        );
        let embedded = p.embedded_broker.expect("the embedded broker");
        assert_eq!(embedded.addr, "127.0.0.1:1999".parse().unwrap());
        assert_eq!(embedded.credentials, Some(("lab".into(), String::new())));
        assert_eq!(p.mcp, Some("[::1]:5000".parse().unwrap()));
        assert_eq!(
            (p.endpoint.host.as_str(), p.endpoint.port),
            ("localhost", 1999)
        );

        let p = plan(r#"{ broker: { tcp: { addr: "0.0.0.0" } }, mcp: { enable: false } }"#);
        assert_eq!(
            p.endpoint.host, "127.0.0.1",
            "a wildcard is reached on the loopback"
        );
        assert_eq!(p.mcp, None, "a disabled MCP server has no address");

        let p = plan(r#"{ broker: { use_builtin: false, tcp: { addr: "broker.lab" } } }"#);
        assert_eq!(p.embedded_broker, None);
        assert_eq!(p.endpoint.host, "broker.lab");
    }

    #[test]
    fn runners_are_resolved_at_load() {
        let p = plan(
            r#"{ restart: { initial_delay_ms: 10, max_retries: 5 }, shutdown_timeout_ms: 700,
                 broker: { namespace: "bench-3" },
                 runners: { psu: { model: "emulator", security_max_voltage: 12,
                                   measure_period_ms: 0, restart: { max_retries: 2 } } } }"#,
        );
        assert_eq!(p.shutdown_timeout, Duration::from_millis(700));
        let psu = &p.runners["psu"];
        assert_eq!(psu.policy.initial_delay, Duration::from_millis(10));
        assert_eq!(
            psu.policy.max_retries, 2,
            "the runner's key over the server's"
        );
        assert_eq!(psu.driver.model_name(), "emulator");
        let emulator = DriverFactory::with_builtin_models()
            .model("emulator")
            .expect("built in")
            .manifest()
            .clone();
        assert_eq!(
            psu.settings.limits.voltage,
            Range::new(emulator.voltage_range.min, 12.0),
            "a bound left out is the model's"
        );
        assert_eq!(psu.settings.limits.current, emulator.current_range);
        assert_eq!(psu.settings.info.security_max_voltage, 12.0);
        assert_eq!(psu.settings.measure_period, Duration::ZERO);
        assert_eq!(
            psu.settings.topics,
            Topics::new(Some("bench-3"), "psu"),
            "topics under the namespace"
        );
        assert!(psu.driver.build("psu").is_ok());
    }
}
