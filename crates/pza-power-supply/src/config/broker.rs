//! Checks of the server-side sections (broker, its TLS files, MCP) that
//! resolve them: the embedded broker's bind address, the endpoint with the
//! TLS configuration loaded, the MCP bind address.

use std::net::SocketAddr;
use std::path::Path;

use pza_toolkit::config::{invalid, ConfigFileError};
use pza_toolkit::mqtt::{BrokerEndpoint, ClientTls, TlsError};

use super::plan::{bind_ip, EmbeddedBrokerPlan};
use super::runner::is_name_byte;
use super::{client_host, BrokerConfig, McpConfig, TlsConfig};

/// Checks the MCP section; returns the address to bind.
pub(super) fn check_mcp(path: &Path, mcp: &McpConfig) -> Result<SocketAddr, ConfigFileError> {
    let Some(ip) = bind_ip(&mcp.host) else {
        return Err(invalid(
            path,
            "mcp.host",
            format!(
                "\"{}\" is not an IP address to bind the MCP server to",
                mcp.host
            ),
        ));
    };
    for (i, host) in mcp.allowed_hosts.iter().enumerate() {
        if host.trim().is_empty() || host.contains(['/', ' ']) {
            return Err(invalid(
                path,
                format!("mcp.allowed_hosts[{i}]"),
                format!("\"{host}\" is not a host name or host:port"),
            ));
        }
    }
    for (i, origin) in mcp.allowed_origins.iter().enumerate() {
        if !(origin.starts_with("http://") || origin.starts_with("https://")) {
            return Err(invalid(
                path,
                format!("mcp.allowed_origins[{i}]"),
                format!("\"{origin}\" is not an origin (scheme://host[:port], e.g. http://localhost:6274)"),
            ));
        }
    }
    if mcp.token.as_deref().is_some_and(|t| t.trim().is_empty()) {
        return Err(invalid(
            path,
            "mcp.token",
            "must not be empty (leave it out, or null, for no token)",
        ));
    }
    Ok(SocketAddr::new(ip, mcp.port))
}

/// Checks the broker section; returns the embedded broker to start, if any,
/// and how the server's own connections reach the broker.
pub(super) fn check_broker(
    path: &Path,
    broker: &BrokerConfig,
) -> Result<(Option<EmbeddedBrokerPlan>, BrokerEndpoint), ConfigFileError> {
    let embedded = if broker.use_builtin {
        let Some(ip) = bind_ip(&broker.tcp.addr) else {
            return Err(invalid(
                path,
                "broker.tcp.addr",
                format!(
                    "\"{}\" is not an IP address to bind the embedded broker to",
                    broker.tcp.addr
                ),
            ));
        };
        Some(EmbeddedBrokerPlan {
            addr: SocketAddr::new(ip, broker.tcp.port),
            credentials: broker
                .username
                .clone()
                .map(|u| (u, broker.password.clone().unwrap_or_default())),
        })
    } else {
        None
    };
    if broker.tcp.addr.is_empty() {
        return Err(invalid(path, "broker.tcp.addr", "must not be empty"));
    }
    if broker.password.is_some() && broker.username.is_none() {
        return Err(invalid(
            path,
            "broker.password",
            "is set without broker.username",
        ));
    }
    if let Some(namespace) = &broker.namespace {
        check_namespace(namespace).map_err(|m| invalid(path, "broker.namespace", m))?;
    }
    let tls = match &broker.tls {
        Some(tls) => Some(check_tls(path, broker, tls)?),
        None => None,
    };
    let endpoint = BrokerEndpoint {
        host: client_host(&broker.tcp.addr),
        port: broker.tcp.port,
        username: broker.username.clone(),
        password: broker.password.clone(),
        tls,
    };
    Ok((embedded, endpoint))
}

/// TLS is for an external broker; its files must be readable PEM, and a
/// client certificate comes with its key. Returns the files loaded.
fn check_tls(
    path: &Path,
    broker: &BrokerConfig,
    tls: &TlsConfig,
) -> Result<ClientTls, ConfigFileError> {
    if broker.use_builtin {
        return Err(invalid(
            path,
            "broker.tls",
            "TLS is for an external broker (use_builtin: false); the embedded broker speaks plain TCP",
        ));
    }
    match (&tls.client_cert_file, &tls.client_key_file) {
        (Some(_), None) => {
            return Err(invalid(
                path,
                "broker.tls.client_cert_file",
                "is set without broker.tls.client_key_file",
            ))
        }
        (None, Some(_)) => {
            return Err(invalid(
                path,
                "broker.tls.client_key_file",
                "is set without broker.tls.client_cert_file",
            ))
        }
        _ => {}
    }
    let key_of = |file: &Path| {
        if Some(file) == tls.client_key_file.as_deref() {
            "broker.tls.client_key_file"
        } else if Some(file) == tls.client_cert_file.as_deref() {
            "broker.tls.client_cert_file"
        } else {
            "broker.tls.ca_file"
        }
    };
    match ClientTls::load(&tls.files()) {
        Ok(loaded) => Ok(loaded),
        Err(TlsError::Read { path: file, source }) => Err(invalid(
            path,
            key_of(&file),
            format!("cannot read {}: {source}", file.display()),
        )),
        Err(TlsError::Pem { path: file, what }) => Err(invalid(
            path,
            key_of(&file),
            format!("{}: {what}", file.display()),
        )),
        Err(TlsError::Rejected { path: file, source }) => Err(invalid(
            path,
            key_of(&file),
            format!("{}: rejected: {source}", file.display()),
        )),
        Err(e @ TlsError::Unpaired) => Err(invalid(path, "broker.tls", e.to_string())),
    }
}

/// A namespace is one or more topic levels of `[A-Za-z0-9_-]`, joined by `/`.
fn check_namespace(namespace: &str) -> Result<(), String> {
    if namespace.is_empty() {
        return Err("must not be empty (leave it out for no namespace)".into());
    }
    for level in namespace.split('/') {
        if level.is_empty() || !level.bytes().all(is_name_byte) {
            return Err(format!(
                "\"{namespace}\" must be topic levels of A-Z, a-z, 0-9, '_' or '-', joined by '/'"
            ));
        }
    }
    Ok(())
}
