//! The MCP server's two ways in: inside `run` (HTTP on `mcp.host:mcp.port`,
//! a client of the server's own broker) and `pza-power-supply mcp --stdio`
//! (a client of any server, reached with the CONNECT flags). The tools
//! themselves are in the `pza-power-supply-mcp` crate.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use pza_power_supply_client::{Client, ClientOptions, DEFAULT_TIMEOUT};
use pza_power_supply_mcp::{Scope, Security};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::{BrokerConfig, McpConfig};
use crate::connect::{self, ConnectArgs, Environment};
use crate::drivers::DriverFactory;

/// The wait between two attempts to reach an external broker that did not
/// answer at start-up (the embedded one answers at once).
const BROKER_RETRY: Duration = Duration::from_secs(2);

#[derive(Debug, Args)]
pub struct McpArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// Serve on stdin/stdout (the only transport of this command; HTTP is
    /// served by `run` when mcp.enable is set)
    #[arg(long, required = true)]
    pub stdio: bool,
    /// Serve only this power supply: the tools then take no `device`
    #[arg(long, value_name = "NAME")]
    pub device: Option<String>,
    /// The time allowed to connect, and for each reply
    #[arg(long, value_name = "MS", default_value_t = crate::cli::millis(DEFAULT_TIMEOUT))]
    pub timeout_ms: u64,
}

/// `pza-power-supply mcp --stdio`: serves until the assistant closes stdin
/// or a signal comes.
pub async fn stdio(args: McpArgs, factory: &DriverFactory) -> anyhow::Result<ExitCode> {
    let timeout = Duration::from_millis(args.timeout_ms);
    let options = connect::resolve(&args.connect, &Environment::current(), factory, timeout)?;
    let client = Client::connect(options).await?;
    let scope = match args.device {
        Some(name) => Scope::One(name),
        None => Scope::All,
    };
    // Without a signal handler the assistant's stdin closing still ends it.
    let signals = crate::cli::Signals::new().ok();
    let signal = async {
        match signals {
            Some(mut signals) => signals.recv().await,
            None => std::future::pending::<()>().await,
        }
    };
    pza_power_supply_mcp::serve_stdio(client, scope, signal).await?;
    Ok(ExitCode::SUCCESS)
}

/// The MCP HTTP server inside `run`.
pub struct McpHttp {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl McpHttp {
    /// Binds `bind` (`mcp.host:mcp.port`, resolved at config load) now (a
    /// port in use is an error at start-up) and serves once the client
    /// reaches the server's broker, until `shutdown` is cancelled.
    pub async fn start(
        bind: SocketAddr,
        mcp: &McpConfig,
        broker: &BrokerConfig,
        shutdown: CancellationToken,
    ) -> anyhow::Result<McpHttp> {
        let listener = TcpListener::bind(bind)
            .await
            .map_err(|e| anyhow::anyhow!("mcp: cannot listen on {bind}: {e}"))?;
        let addr = listener
            .local_addr()
            .map_err(|e| anyhow::anyhow!("mcp: {bind}: {e}"))?;
        let security = Security::new(
            &mcp.host,
            &mcp.allowed_hosts,
            &mcp.allowed_origins,
            mcp.token.clone(),
        );
        let options = connect::own_broker(broker, DEFAULT_TIMEOUT)?;
        let task = tokio::spawn(async move {
            let Some(client) = connect_until(options, &shutdown).await else {
                return;
            };
            tracing::info!("MCP server on http://{addr}/mcp");
            if let Err(e) = pza_power_supply_mcp::serve(listener, client, security, shutdown).await
            {
                tracing::error!("MCP server stopped: {e}");
            }
        });
        Ok(McpHttp { addr, task })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Waits, after the shutdown was asked, up to `timeout` for the open
    /// requests to end; then drops them.
    pub async fn stop(self, timeout: Duration) {
        let mut task = self.task;
        if tokio::time::timeout(timeout, &mut task).await.is_err() {
            tracing::warn!("MCP server: requests still open after {timeout:?}, dropped");
            task.abort();
        }
    }
}

/// The client of the server's own broker: an external broker that does not
/// answer yet is retried, as the runners retry it.
async fn connect_until(options: ClientOptions, shutdown: &CancellationToken) -> Option<Client> {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return None,
            outcome = Client::connect(options.clone()) => match outcome {
                Ok(client) => return Some(client),
                Err(e) => tracing::warn!("MCP server: {e}; retrying in {BROKER_RETRY:?}"),
            },
        }
        tokio::select! {
            () = shutdown.cancelled() => return None,
            () = tokio::time::sleep(BROKER_RETRY) => {}
        }
    }
}
