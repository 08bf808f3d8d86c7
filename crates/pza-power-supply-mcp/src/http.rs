//! The streamable-HTTP endpoints: `/mcp` for every power supply and
//! `/power-supply/<name>` for one, behind the [`Security`] checks, stopped by
//! a cancellation token.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::Router;
use pza_power_supply_client::Client;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower_service::Service as _;

use crate::security::{Refusal, Security};
use crate::tools::{PowerSupplyTools, Scope};

/// The largest request body taken (a tool call takes a few hundred bytes).
const MAX_BODY_BYTES: usize = 1 << 20;

/// The path serving every power supply.
pub const ALL_PATH: &str = "/mcp";
/// The path prefix serving one power supply: `/power-supply/<name>`.
pub const DEVICE_PREFIX: &str = "/power-supply/";

type McpService = StreamableHttpService<PowerSupplyTools, LocalSessionManager>;

/// What the routes share.
struct App {
    client: Client,
    shutdown: CancellationToken,
    /// One service per power supply, made on its first request: each keeps
    /// its sessions. Only names seen on the broker get one, so the map stays
    /// as small as the bench.
    devices: Mutex<HashMap<String, McpService>>,
}

/// The URLs served at `host:port`, as `list --mcps` prints them.
pub fn urls(host: &str, port: u16, devices: &[String]) -> Vec<String> {
    let host = if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host.to_owned()
    };
    std::iter::once(format!("http://{host}:{port}{ALL_PATH}"))
        .chain(
            devices
                .iter()
                .map(|d| format!("http://{host}:{port}{DEVICE_PREFIX}{d}")),
        )
        .collect()
}

/// The routes, each behind `security`; sessions end when `shutdown` is
/// cancelled.
pub fn router(client: Client, security: Security, shutdown: CancellationToken) -> Router {
    let all = service(client.clone(), Scope::All, &shutdown);
    let app = Arc::new(App {
        client,
        shutdown,
        devices: Mutex::new(HashMap::new()),
    });
    Router::new()
        .route_service(ALL_PATH, all)
        .route(&format!("{DEVICE_PREFIX}:name"), any(device))
        .with_state(app)
        .layer(middleware::from_fn_with_state(Arc::new(security), guard))
}

/// Serves on `listener` until `shutdown` is cancelled.
pub async fn serve(
    listener: TcpListener,
    client: Client,
    security: Security,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let app = router(client, security, shutdown.clone());
    // Without TCP_NODELAY a response written in two parts (head, then the
    // SSE event) waits for the client's delayed ACK: 40 ms per call on Linux.
    axum::serve(listener, app)
        .tcp_nodelay(true)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}

fn service(client: Client, scope: Scope, shutdown: &CancellationToken) -> McpService {
    // The `Host` and `Origin` checks are done by `guard`, in front of every
    // route, with the config's lists; rmcp's own (loopback only) would
    // refuse the hosts the config allows.
    let config = StreamableHttpServerConfig::default()
        .disable_allowed_hosts()
        .with_cancellation_token(shutdown.child_token());
    StreamableHttpService::new(
        move || Ok(PowerSupplyTools::new(client.clone(), scope.clone())),
        LocalSessionManager::default().into(),
        config,
    )
}

/// In front of every route: the `Host`, `Origin` and token checks, then a
/// posted body that is not JSON is answered here, as JSON-RPC says (400 and
/// a parse error, -32700, naming where it failed), rather than by rmcp's
/// "415 Unsupported Media Type" for a body whose media type was right.
async fn guard(State(security): State<Arc<Security>>, request: Request, next: Next) -> Response {
    match security.check(request.headers()) {
        Ok(()) => {}
        Err(Refusal::Forbidden(why)) => {
            tracing::warn!("MCP request refused: {why}");
            return (StatusCode::FORBIDDEN, format!("Forbidden: {why}\n")).into_response();
        }
        Err(Refusal::Unauthorized) => return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            "Unauthorized: this MCP server needs \"Authorization: Bearer <token>\" (mcp.token)\n",
        )
            .into_response(),
    }
    if request.method() != Method::POST {
        return next.run(request).await;
    }
    let (parts, body) = request.into_parts();
    let bytes = match axum::body::to_bytes(body, MAX_BODY_BYTES).await {
        Ok(bytes) => bytes,
        Err(e) => {
            return parse_error(format!(
                "cannot read the request body (at most {MAX_BODY_BYTES} bytes): {e}"
            ))
        }
    };
    if let Err(e) = serde_json::from_slice::<serde_json::Value>(&bytes) {
        return parse_error(format!("the request body is not JSON: {e}"));
    }
    next.run(Request::from_parts(parts, Body::from(bytes)))
        .await
}

/// A JSON-RPC parse error, with no id (none could be read).
fn parse_error(message: String) -> Response {
    let body = serde_json::json!({
        "jsonrpc": "2.0",
        "id": null,
        "error": { "code": -32700, "message": format!("Parse error: {message}") },
    });
    (
        StatusCode::BAD_REQUEST,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

async fn device(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
    request: Request<Body>,
) -> Response {
    let known = match app.client.list().await {
        Ok(names) => names.contains(&name),
        Err(e) => {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("the MCP server cannot reach the broker: {e}\n"),
            )
                .into_response()
        }
    };
    if !known {
        return (
            StatusCode::NOT_FOUND,
            format!("power supply `{name}` is not on the broker (list_power_supplies on {ALL_PATH} gives the names)\n"),
        )
            .into_response();
    }
    let mut service = {
        // A poisoned lock only means another request panicked while holding
        // it; the map itself is still whole.
        let mut devices = app.devices.lock().unwrap_or_else(|e| e.into_inner());
        devices
            .entry(name.clone())
            .or_insert_with(|| service(app.client.clone(), Scope::One(name), &app.shutdown))
            .clone()
    };
    match service.call(request).await {
        Ok(response) => response.into_response(),
        Err(never) => match never {},
    }
}
