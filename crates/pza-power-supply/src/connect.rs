//! `CONNECT`: the flags by which `ctl`, `tui` (and later `mcp`) reach the
//! broker of a running server, resolved over its config file.
//!
//! Each flag beats the config file, which beats the defaults
//! (`127.0.0.1:1883`, no namespace, no credentials, plain TCP). The config
//! file is found as `run` finds it (`--config`, `PZA_POWER_SUPPLY_CONFIG`,
//! `~/.panduza/pza-power-supply.json5`) but never created: a missing default
//! file is no error, a missing explicit one is.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use pza_power_supply_client::{ClientOptions, TlsFiles};

use crate::config::{self, BrokerConfig, ConfigPath, ServerConfig};
use crate::drivers::DriverFactory;

/// The environment variable holding the broker password, so that it need
/// not appear in the process list.
pub const PASSWORD_ENV: &str = "PZA_MQTT_PASSWORD";

/// The broker when neither a flag nor a config file names one.
pub const DEFAULT_HOST: &str = "127.0.0.1";
pub const DEFAULT_PORT: u16 = 1883;

#[derive(Debug, Clone, Default, Args)]
pub struct ConnectArgs {
    /// The broker [default: the config file's, else 127.0.0.1:1883]
    #[arg(long, value_name = "HOST:PORT", global = true)]
    pub broker: Option<String>,
    /// The server's topic namespace [default: the config file's, else none]
    #[arg(long, value_name = "NS", global = true)]
    pub namespace: Option<String>,
    #[arg(long, value_name = "U", global = true)]
    pub username: Option<String>,
    /// The broker password [default: $PZA_MQTT_PASSWORD, else the config file's]
    #[arg(long, value_name = "P", global = true)]
    pub password: Option<String>,
    /// Connect with TLS, verifying the broker against this CA certificate (PEM)
    #[arg(long, value_name = "FILE", global = true)]
    pub tls_ca: Option<PathBuf>,
    /// The config file to take the broker from [default: $PZA_POWER_SUPPLY_CONFIG, else ~/.panduza/pza-power-supply.json5]
    #[arg(long, value_name = "PATH", global = true)]
    pub config: Option<PathBuf>,
}

/// Where the values come from, besides the flags.
pub struct Environment {
    pub config_env: Option<OsString>,
    pub password_env: Option<String>,
    pub home: Option<PathBuf>,
}

impl Environment {
    /// The process's own environment.
    pub fn current() -> Environment {
        Environment {
            config_env: std::env::var_os(config::CONFIG_ENV),
            password_env: std::env::var(PASSWORD_ENV).ok().filter(|p| !p.is_empty()),
            home: config::home_dir(),
        }
    }
}

/// Resolves the flags over the config file into client options with `timeout`.
pub fn resolve(
    args: &ConnectArgs,
    env: &Environment,
    factory: &DriverFactory,
    timeout: Duration,
) -> anyhow::Result<ClientOptions> {
    Ok(resolve_with_config(args, env, factory, timeout)?.0)
}

/// As [`resolve`], and the config file read, if there is one (the `tui`
/// takes its `power_toggle_key` from it).
pub fn resolve_with_config(
    args: &ConnectArgs,
    env: &Environment,
    factory: &DriverFactory,
    timeout: Duration,
) -> anyhow::Result<(ClientOptions, Option<ServerConfig>)> {
    let path = config::resolve_config_path(
        args.config.clone(),
        env.config_env.clone(),
        env.home.clone(),
    );
    let file = match path {
        Ok(ConfigPath {
            path,
            is_default: true,
        }) if !path.exists() => None,
        // Without a home folder there is no default file to read either.
        Err(_) if args.config.is_none() => None,
        Ok(path) => Some(config::load(&path, factory)?),
        Err(message) => anyhow::bail!(message),
    };
    let options = merge(
        args,
        env.password_env.as_deref(),
        file.as_ref().map(|f| &f.broker),
        timeout,
    )?;
    Ok((options, file))
}

/// The options of a client of the server's own broker (the MCP server and
/// the TUI inside `run`): the config's broker section alone.
pub fn own_broker(broker: &BrokerConfig, timeout: Duration) -> anyhow::Result<ClientOptions> {
    merge(&ConnectArgs::default(), None, Some(broker), timeout)
}

/// The flags over the broker section of the config file.
fn merge(
    args: &ConnectArgs,
    password_env: Option<&str>,
    file: Option<&BrokerConfig>,
    timeout: Duration,
) -> anyhow::Result<ClientOptions> {
    let (host, port) = match (&args.broker, file) {
        (Some(broker), _) => parse_broker(broker)?,
        (None, Some(file)) => (config::client_host(&file.tcp.addr), file.tcp.port),
        (None, None) => (DEFAULT_HOST.to_owned(), DEFAULT_PORT),
    };
    let mut options = ClientOptions::new(host, port).timeout(timeout);
    if let Some(ns) = args
        .namespace
        .clone()
        .or_else(|| file.and_then(|f| f.namespace.clone()))
    {
        options = options.namespace(ns);
    }
    let username = args
        .username
        .clone()
        .or_else(|| file.and_then(|f| f.username.clone()));
    let password = args
        .password
        .clone()
        .or_else(|| password_env.map(str::to_owned))
        .or_else(|| file.and_then(|f| f.password.clone()));
    match (username, password) {
        (Some(u), p) => options = options.credentials(u, p.unwrap_or_default()),
        (None, Some(_)) if args.password.is_some() => {
            anyhow::bail!("--password is given without a username: add --username")
        }
        // A password from the environment or the file alone is unused.
        (None, _) => {}
    }
    options.tls = match (&args.tls_ca, file.and_then(|f| f.tls.as_ref())) {
        (Some(ca), _) => Some(TlsFiles {
            ca_file: ca.clone(),
            client_cert_file: None,
            client_key_file: None,
        }),
        (None, Some(tls)) => Some(TlsFiles {
            ca_file: tls.ca_file.clone(),
            client_cert_file: tls.client_cert_file.clone(),
            client_key_file: tls.client_key_file.clone(),
        }),
        (None, None) => None,
    };
    Ok(options)
}

/// `HOST:PORT`, `[V6]:PORT`.
fn parse_broker(text: &str) -> anyhow::Result<(String, u16)> {
    let bad = |why: &str| anyhow::anyhow!("--broker \"{text}\": {why} (expected HOST:PORT)");
    let (host, port) = text.rsplit_once(':').ok_or_else(|| bad("no port"))?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if host.is_empty() {
        return Err(bad("no host"));
    }
    if host.contains(':') && !text.starts_with('[') {
        return Err(bad("an IPv6 address goes in brackets, e.g. [::1]:1883"));
    }
    let port = port
        .parse::<u16>()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| bad("the port is not a number from 1 to 65535"))?;
    Ok((host.to_owned(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Duration = Duration::from_secs(5);

    #[test]
    fn brokers_are_parsed() {
        assert_eq!(
            parse_broker("lab-pc:1884").unwrap(),
            ("lab-pc".into(), 1884)
        );
        assert_eq!(parse_broker("[::1]:1883").unwrap(), ("::1".into(), 1883));
        for (bad, why) in [
            ("lab-pc", "no port"),
            (":1883", "no host"),
            ("h:0", "the port is not"),
            ("h:x", "the port is not"),
            ("::1:1883", "brackets"),
        ] {
            let err = parse_broker(bad).unwrap_err().to_string();
            assert!(
                err.contains(why) && err.starts_with("--broker"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn flags_beat_the_environment_beats_the_file() {
        let file = BrokerConfig {
            tcp: config::TcpConfig {
                addr: "0.0.0.0".into(),
                port: 2000,
            },
            username: Some("lab".into()),
            password: Some("file".into()),
            namespace: Some("bench-3".into()),
            ..BrokerConfig::default()
        };
        let none = ConnectArgs::default();
        let o = merge(&none, None, Some(&file), T).unwrap();
        assert_eq!((o.host.as_str(), o.port), ("127.0.0.1", 2000));
        assert_eq!(o.namespace.as_deref(), Some("bench-3"));
        assert_eq!(o.username.as_deref(), Some("lab"));
        assert_eq!(o.password.as_deref(), Some("file"));

        let o = merge(&none, Some("env"), Some(&file), T).unwrap();
        assert_eq!(o.password.as_deref(), Some("env"));

        let flags = ConnectArgs {
            broker: Some("remote:1999".into()),
            namespace: Some("other".into()),
            password: Some("flag".into()),
            tls_ca: Some("ca.pem".into()),
            ..ConnectArgs::default()
        };
        let o = merge(&flags, Some("env"), Some(&file), T).unwrap();
        assert_eq!((o.host.as_str(), o.port), ("remote", 1999));
        assert_eq!(o.namespace.as_deref(), Some("other"));
        assert_eq!(o.password.as_deref(), Some("flag"));
        assert_eq!(o.tls.unwrap().ca_file, PathBuf::from("ca.pem"));

        let o = merge(&none, None, None, T).unwrap();
        assert_eq!((o.host.as_str(), o.port), (DEFAULT_HOST, DEFAULT_PORT));
        assert_eq!(o.namespace, None);
        assert_eq!(merge(&none, Some("p"), None, T).unwrap().username, None);
        let password_only = ConnectArgs {
            password: Some("p".into()),
            ..ConnectArgs::default()
        };
        assert!(merge(&password_only, None, None, T).is_err());
    }
}
