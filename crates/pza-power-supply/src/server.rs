//! The server: the embedded broker (unless an external one is used), the
//! runners and the MCP server, started in that order and stopped in the
//! reverse order.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use pza_toolkit::mqtt::EmbeddedBroker;
use tokio::sync::Mutex;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::ServerConfig;
use crate::drivers::DriverFactory;
use crate::mcp::McpHttp;
use crate::runners::RunnersService;

/// What to leave out, from the command line.
#[derive(Debug, Clone, Copy, Default)]
pub struct ServerOptions {
    /// Do not start the embedded broker, even if the config asks for it.
    pub no_broker: bool,
    /// Do not start the runners.
    pub no_runners: bool,
    /// Do not start the MCP server, even if the config enables it.
    pub no_mcp: bool,
}

/// A running server.
pub struct Server {
    broker: Option<EmbeddedBroker>,
    runners: Option<(RunnersService, JoinHandle<anyhow::Result<()>>)>,
    mcp: Option<McpHttp>,
    shutdown: CancellationToken,
    shutdown_timeout: Duration,
}

impl Server {
    /// Starts the broker, waits until it accepts connections, binds the MCP
    /// server, then starts the runners, all as `config`'s plan says. The
    /// driver models are those `config` was loaded with, already in its
    /// plan: `factory` is not read again (the parameter stays for the
    /// callers of the seed's signature).
    pub async fn start(
        config: ServerConfig,
        _factory: Arc<Mutex<DriverFactory>>,
        options: ServerOptions,
    ) -> anyhow::Result<Server> {
        let shutdown = CancellationToken::new();
        let plan = config.plan;
        let broker = match &plan.embedded_broker {
            Some(embedded) if !options.no_broker => {
                Some(EmbeddedBroker::start(embedded.addr, embedded.credentials.clone()).await?)
            }
            _ => None,
        };
        // Bound before the runners start, so that a port in use stops the
        // start-up before any device is touched.
        let mcp = match plan.mcp {
            Some(addr) if !options.no_mcp => {
                match McpHttp::start(addr, &config.mcp, &config.broker, shutdown.clone()).await {
                    Ok(mcp) => Some(mcp),
                    Err(e) => {
                        if let Some(broker) = broker {
                            broker.stop().await;
                        }
                        return Err(e);
                    }
                }
            }
            _ => None,
        };
        let shutdown_timeout = plan.shutdown_timeout;
        let runners = if options.no_runners {
            None
        } else {
            match RunnersService::start_plan(plan, shutdown.clone()).await {
                Ok(started) => Some(started),
                Err(e) => {
                    shutdown.cancel();
                    if let Some(mcp) = mcp {
                        mcp.stop(shutdown_timeout).await;
                    }
                    if let Some(broker) = broker {
                        broker.stop().await;
                    }
                    return Err(e);
                }
            }
        };
        Ok(Server {
            broker,
            runners,
            mcp,
            shutdown,
            shutdown_timeout,
        })
    }

    /// Where the MCP server listens, when it runs.
    pub fn mcp_addr(&self) -> Option<SocketAddr> {
        self.mcp.as_ref().map(McpHttp::local_addr)
    }

    /// The token that starts the graceful shutdown when cancelled.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Waits for the shutdown to be asked, then for the MCP server and the
    /// runners to stop, and stops the broker last.
    pub async fn wait(self) -> anyhow::Result<()> {
        self.shutdown.cancelled().await;
        if let Some(mcp) = self.mcp {
            mcp.stop(self.shutdown_timeout).await;
        }
        let result = match self.runners {
            Some((_service, handle)) => match handle.await {
                Ok(result) => result,
                Err(e) => Err(anyhow::anyhow!("the runners service failed: {e}")),
            },
            None => Ok(()),
        };
        if let Some(broker) = self.broker {
            broker.stop().await;
        }
        result
    }

    /// Asks for the shutdown and waits for it.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        self.wait().await
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use pza_power_supply_client::{Client, ClientOptions, Status};
    use pza_toolkit::mqtt::probe_free_port;

    use super::*;
    use crate::drivers::emulator::EmulatorModel;
    use crate::drivers::{
        DriverError, DriverManifest, DriverModel, DriverSettings, ErrorKind, PowerSupplyDriver,
        SettingsError,
    };

    /// Long enough for a loaded machine; a passing run takes milliseconds.
    const WAIT: Duration = Duration::from_secs(10);

    /// The seed's `RunnersService::start(config, factory)` starts the runners
    /// from the config's plan, and stops them on `shutdown`.
    #[tokio::test]
    async fn runners_service_start_keeps_the_seed_signature() {
        let port = probe_free_port().expect("a free port");
        let factory = DriverFactory::with_builtin_models();
        let text = format!(
            r#"{{ broker: {{ tcp: {{ port: {port} }} }},
                 runners: {{ psu: {{ model: "emulator", measure_period_ms: 0 }} }} }}"#
        );
        let config = crate::config::parse(Path::new("seed.json5"), &text, &factory)
            .unwrap_or_else(|e| panic!("{e}"));
        let embedded = config
            .plan
            .embedded_broker
            .clone()
            .expect("the embedded broker");
        let broker = EmbeddedBroker::start(embedded.addr, embedded.credentials)
            .await
            .expect("the broker starts");

        let (service, handle) = RunnersService::start(config, Arc::new(Mutex::new(factory)))
            .await
            .expect("the runners start");
        let client = Client::connect(ClientOptions::new("127.0.0.1", port))
            .await
            .expect("a client connects");
        let psu = client.power_supply("psu");
        let mut updates = psu.watch();
        let running = async {
            if psu
                .snapshot()
                .await
                .is_ok_and(|s| s.status == Some(Status::Running))
            {
                return;
            }
            while let Some(update) = updates.next().await {
                if update.snapshot.status == Some(Status::Running) {
                    return;
                }
            }
        };
        tokio::time::timeout(WAIT, running)
            .await
            .expect("psu Running");
        assert_eq!(psu.set_voltage(3.3).await.expect("a command"), 3.3);

        service.shutdown();
        tokio::time::timeout(WAIT, handle)
            .await
            .expect("the service stops")
            .expect("the service task")
            .expect("a clean stop");
        assert!(service.monitor.lock().await.is_none());
        let _ = client.close().await;
        broker.stop().await;
    }

    /// The emulator, whose drivers cannot be built.
    struct Unbuildable(EmulatorModel);

    impl DriverModel for Unbuildable {
        fn manifest(&self) -> &DriverManifest {
            self.0.manifest()
        }

        fn check_settings(&self, settings: &DriverSettings) -> Result<(), SettingsError> {
            self.0.check_settings(settings)
        }

        fn instantiate(
            &self,
            _runner: &str,
            _settings: &DriverSettings,
        ) -> Result<Box<dyn PowerSupplyDriver>, DriverError> {
            Err(DriverError::new(ErrorKind::Config, "no such device"))
        }
    }

    /// A driver that cannot be built at start-up stops the start with an
    /// error naming the runner, and the embedded broker is stopped again.
    #[tokio::test]
    async fn a_driver_that_cannot_be_built_stops_the_start_naming_the_runner() {
        let port = probe_free_port().expect("a free port");
        let mut factory = DriverFactory::new();
        factory.register(Arc::new(Unbuildable(EmulatorModel::new())));
        let text = format!(
            r#"{{ broker: {{ tcp: {{ port: {port} }} }}, runners: {{ psu: {{ model: "emulator" }} }} }}"#
        );
        let config = crate::config::parse(Path::new("unbuildable.json5"), &text, &factory)
            .unwrap_or_else(|e| panic!("{e}"));
        let outcome = Server::start(
            config,
            Arc::new(Mutex::new(factory)),
            ServerOptions::default(),
        )
        .await;
        let Err(e) = outcome else {
            panic!("the server started");
        };
        let message = format!("{e:#}");
        assert!(
            message.contains("runner 'psu': cannot build its emulator driver")
                && message.contains("no such device"),
            "{message}"
        );
        std::net::TcpListener::bind(("127.0.0.1", port)).expect("the broker's port is free again");
    }
}
