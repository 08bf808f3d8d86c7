//! Who may call the HTTP endpoints: the `Host` check (DNS-rebinding
//! defence), the `Origin` check (browser pages of other sites), and the
//! optional bearer token. Pure code over the request headers, so every case
//! is tested without a server; `http` puts it in front of every route.

use axum::http::header::{AUTHORIZATION, HOST, ORIGIN};
use axum::http::HeaderMap;

/// The `Host` names always accepted: the loopback, which a DNS-rebinding
/// page cannot take.
pub const LOOPBACK_HOSTS: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

/// The scheme of the `Authorization` header the token goes in.
const BEARER: &str = "Bearer ";

/// Why a request is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// 403: the `Host` or the `Origin` is not allowed; says which.
    Forbidden(String),
    /// 401: the bearer token is missing or wrong.
    Unauthorized,
}

/// The rules, from the `mcp` section of the config.
#[derive(Debug, Clone, Default)]
pub struct Security {
    /// Lower-case host names, or `host:port` authorities, without brackets.
    allowed_hosts: Vec<String>,
    /// Lower-case origins without a trailing `/`.
    allowed_origins: Vec<String>,
    token: Option<String>,
}

impl Security {
    /// Accepts `Host` = the loopback names, `bind_host` (unless it is a
    /// wildcard address) and `allowed_hosts`; an `Origin`, when present, only
    /// from `allowed_origins`; with `token`, only requests that carry it.
    pub fn new(
        bind_host: &str,
        allowed_hosts: &[String],
        allowed_origins: &[String],
        token: Option<String>,
    ) -> Security {
        let mut hosts: Vec<String> = LOOPBACK_HOSTS.iter().map(|h| (*h).to_owned()).collect();
        let bind = normalize_host(bind_host);
        if !matches!(bind.as_str(), "0.0.0.0" | "::") {
            hosts.push(bind);
        }
        hosts.extend(allowed_hosts.iter().map(|h| normalize_host(h)));
        Security {
            allowed_hosts: hosts,
            allowed_origins: allowed_origins
                .iter()
                .map(|o| normalize_origin(o))
                .collect(),
            token: token.filter(|t| !t.is_empty()),
        }
    }

    /// Whether a token is required.
    pub fn has_token(&self) -> bool {
        self.token.is_some()
    }

    /// Checks a request's headers: `Host`, then `Origin`, then the token.
    pub fn check(&self, headers: &HeaderMap) -> Result<(), Refusal> {
        let host = headers
            .get(HOST)
            .and_then(|h| h.to_str().ok())
            .ok_or_else(|| Refusal::Forbidden("the Host header is missing or not text".into()))?;
        if !self.host_allowed(host) {
            return Err(Refusal::Forbidden(format!(
                "Host \"{host}\" is not allowed (add it to mcp.allowed_hosts)"
            )));
        }
        if let Some(origin) = headers.get(ORIGIN) {
            let origin = origin.to_str().unwrap_or_default();
            if !self.allowed_origins.contains(&normalize_origin(origin)) {
                return Err(Refusal::Forbidden(format!(
                    "Origin \"{origin}\" is not allowed (add it to mcp.allowed_origins)"
                )));
            }
        }
        if let Some(token) = &self.token {
            let given = headers
                .get(AUTHORIZATION)
                .and_then(|h| h.to_str().ok())
                .and_then(|h| h.strip_prefix(BEARER))
                .unwrap_or_default();
            if !same_secret(given.trim().as_bytes(), token.as_bytes()) {
                return Err(Refusal::Unauthorized);
            }
        }
        Ok(())
    }

    fn host_allowed(&self, authority: &str) -> bool {
        let authority = authority.trim().to_ascii_lowercase();
        let host = split_port(&authority);
        let bare = normalize_host(host);
        let with_port = match authority.strip_prefix(host) {
            Some(port) if !port.is_empty() => format!("{bare}{port}"),
            _ => bare.clone(),
        };
        self.allowed_hosts
            .iter()
            .any(|allowed| *allowed == bare || *allowed == with_port)
    }
}

/// The host part of `host[:port]` or `[v6][:port]`.
fn split_port(authority: &str) -> &str {
    if authority.starts_with('[') {
        match authority.find(']') {
            Some(end) => &authority[..=end],
            None => authority,
        }
    } else {
        match authority.rsplit_once(':') {
            // A bare IPv6 address without brackets has several colons.
            Some((host, port)) if !host.contains(':') && port.parse::<u16>().is_ok() => host,
            _ => authority,
        }
    }
}

/// Lower case, IPv6 brackets removed from the host part.
fn normalize_host(host: &str) -> String {
    let host = host.trim().to_ascii_lowercase();
    if let Some(rest) = host.strip_prefix('[') {
        if let Some((inner, port)) = rest.split_once(']') {
            return format!("{inner}{port}");
        }
    }
    host
}

fn normalize_origin(origin: &str) -> String {
    origin.trim().trim_end_matches('/').to_ascii_lowercase()
}

/// Compares in a time that does not depend on where the first difference
/// is, so the token cannot be guessed byte by byte from response times.
fn same_secret(given: &[u8], expected: &[u8]) -> bool {
    let mut difference = given.len() ^ expected.len();
    for (i, e) in expected.iter().enumerate() {
        let g = given.get(i).copied().unwrap_or(0);
        difference |= usize::from(g ^ e);
    }
    difference == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    fn default_rules() -> Security {
        Security::new("127.0.0.1", &[], &[], None)
    }

    #[test]
    fn loopback_hosts_pass_with_or_without_port() {
        let rules = default_rules();
        for host in [
            "localhost",
            "localhost:50051",
            "127.0.0.1:50051",
            "LOCALHOST:1",
            "[::1]:50051",
            "[::1]",
        ] {
            assert_eq!(rules.check(&headers(&[("host", host)])), Ok(()), "{host}");
        }
    }

    #[test]
    fn other_hosts_are_forbidden() {
        let rules = default_rules();
        for host in [
            "evil.example",
            "evil.example:50051",
            "192.168.1.10:50051",
            "localhost.evil.example",
        ] {
            match rules.check(&headers(&[("host", host)])) {
                Err(Refusal::Forbidden(why)) => assert!(why.contains(host), "{why}"),
                other => panic!("{host}: {other:?}"),
            }
        }
        assert!(matches!(
            rules.check(&HeaderMap::new()),
            Err(Refusal::Forbidden(_))
        ));
    }

    #[test]
    fn bind_host_and_allowed_hosts_pass() {
        let rules = Security::new(
            "192.168.1.10",
            &["bench-3.lab".into(), "gw.lab:8080".into()],
            &[],
            None,
        );
        for host in [
            "192.168.1.10:50051",
            "bench-3.lab",
            "bench-3.lab:50051",
            "gw.lab:8080",
        ] {
            assert_eq!(rules.check(&headers(&[("host", host)])), Ok(()), "{host}");
        }
        assert!(rules.check(&headers(&[("host", "gw.lab:9090")])).is_err());
    }

    #[test]
    fn a_wildcard_bind_address_is_not_a_host_name() {
        let rules = Security::new("0.0.0.0", &[], &[], None);
        assert!(rules.check(&headers(&[("host", "0.0.0.0:50051")])).is_err());
    }

    #[test]
    fn origins_pass_only_when_listed() {
        let rules = Security::new("127.0.0.1", &[], &["http://localhost:6274".into()], None);
        let host = ("host", "127.0.0.1:50051");
        assert_eq!(rules.check(&headers(&[host])), Ok(()));
        assert_eq!(
            rules.check(&headers(&[host, ("origin", "http://localhost:6274")])),
            Ok(())
        );
        assert_eq!(
            rules.check(&headers(&[host, ("origin", "HTTP://LOCALHOST:6274/")])),
            Ok(())
        );
        for origin in ["http://evil.example", "http://localhost:6275", "null"] {
            match rules.check(&headers(&[host, ("origin", origin)])) {
                Err(Refusal::Forbidden(why)) => assert!(why.contains("Origin"), "{why}"),
                other => panic!("{origin}: {other:?}"),
            }
        }
        assert!(default_rules()
            .check(&headers(&[host, ("origin", "http://localhost:6274")]))
            .is_err());
    }

    #[test]
    fn the_token_is_required_when_set() {
        let rules = Security::new("127.0.0.1", &[], &[], Some("s3cret".into()));
        let host = ("host", "localhost");
        assert_eq!(
            rules.check(&headers(&[host, ("authorization", "Bearer s3cret")])),
            Ok(())
        );
        for auth in [
            None,
            Some("Bearer s3cre"),
            Some("Bearer s3cret2"),
            Some("s3cret"),
            Some("Basic s3cret"),
        ] {
            let mut h = headers(&[host]);
            if let Some(auth) = auth {
                h.insert(AUTHORIZATION, HeaderValue::from_str(auth).unwrap());
            }
            assert_eq!(rules.check(&h), Err(Refusal::Unauthorized), "{auth:?}");
        }
    }

    #[test]
    fn host_and_origin_are_checked_before_the_token() {
        let rules = Security::new("127.0.0.1", &[], &[], Some("s3cret".into()));
        assert!(matches!(
            rules.check(&headers(&[("host", "evil.example")])),
            Err(Refusal::Forbidden(_))
        ));
    }

    #[test]
    fn an_empty_token_means_none() {
        let rules = Security::new("127.0.0.1", &[], &[], Some(String::new()));
        assert!(!rules.has_token());
        assert_eq!(rules.check(&headers(&[("host", "localhost")])), Ok(()));
    }
}
