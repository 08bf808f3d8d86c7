//! The MCP server over stdin/stdout, for assistants that launch a command:
//! stdout carries only the protocol (logs go to stderr).

use std::future::Future;

use pza_power_supply_client::Client;
use rmcp::ServiceExt as _;

use crate::tools::{PowerSupplyTools, Scope};

/// Serves on stdin/stdout until the peer closes them or `shutdown` resolves.
pub async fn serve_stdio(
    client: Client,
    scope: Scope,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let running = PowerSupplyTools::new(client, scope)
        .serve(rmcp::transport::stdio())
        .await
        .map_err(|e| anyhow::anyhow!("MCP over stdio: the handshake failed: {e}"))?;
    let cancel = running.cancellation_token();
    tokio::select! {
        outcome = running.waiting() => {
            outcome.map_err(|e| anyhow::anyhow!("MCP over stdio stopped: {e}"))?;
        }
        () = shutdown => cancel.cancel(),
    }
    Ok(())
}
