//! Ownership records: how several servers on one broker tell which of them
//! serves a runner, as pure code over topics and JSON.
//!
//! - `[<ns>/]pza-power-supply/servers/<instance>` (retained): a server
//!   instance that is online. Its last will is an empty retained message,
//!   which deletes the record when the server vanishes; a clean shutdown
//!   deletes it too. No record means offline.
//! - `[<ns>/]power-supply/<runner>/owner` (retained): the instance that
//!   serves the runner, and when it claimed it.
//!
//! Two online instances claiming one runner is a conflict. The older claim
//! wins (`claimed_at_ms`, then the instance id, so that both sides agree
//! without talking); the other instance leaves the runner alone and reports
//! the conflict.

use serde_json::{json, Value};

use crate::topics::namespace_prefix;

/// The level that holds the liveness records, after the namespace.
pub const SERVERS_ROOT: &str = "pza-power-supply/servers";

/// The liveness topic of `instance`.
pub fn server_topic(namespace: Option<&str>, instance: &str) -> String {
    format!("{}{SERVERS_ROOT}/{instance}", namespace_prefix(namespace))
}

/// The filter of every liveness record under `namespace`.
pub fn servers_filter(namespace: Option<&str>) -> String {
    format!("{}{SERVERS_ROOT}/+", namespace_prefix(namespace))
}

/// The instance whose liveness topic `topic` is, under `namespace`.
pub fn server_instance<'a>(namespace: Option<&str>, topic: &'a str) -> Option<&'a str> {
    let root = format!("{}{SERVERS_ROOT}/", namespace_prefix(namespace));
    let instance = topic.strip_prefix(&root)?;
    (!instance.is_empty() && !instance.contains('/')).then_some(instance)
}

/// The filter of every runner's owner record under `namespace`.
pub fn owners_filter(namespace: Option<&str>) -> String {
    format!(
        "{}{}/+/owner",
        namespace_prefix(namespace),
        super::topics::ROOT
    )
}

/// The runner whose owner topic `topic` is, under `namespace`.
pub fn owner_runner<'a>(namespace: Option<&str>, topic: &'a str) -> Option<&'a str> {
    let root = format!("{}{}/", namespace_prefix(namespace), super::topics::ROOT);
    let runner = topic.strip_prefix(&root)?.strip_suffix("/owner")?;
    (!runner.is_empty() && !runner.contains('/')).then_some(runner)
}

/// Where a server instance runs, for messages that name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerRecord {
    pub instance: String,
    pub host: String,
    pub pid: u32,
}

impl ServerRecord {
    /// The retained liveness record, listing the runners it is configured with.
    pub fn to_payload(&self, runners: &[&str]) -> Vec<u8> {
        json!({
            "online": true,
            "instance": self.instance,
            "host": self.host,
            "pid": self.pid,
            "runners": runners,
        })
        .to_string()
        .into_bytes()
    }

    /// A liveness record; `None` when it is empty (deleted), says offline, or
    /// cannot be read.
    pub fn parse(payload: &[u8]) -> Option<ServerRecord> {
        let value: Value = serde_json::from_slice(payload).ok()?;
        if value.get("online") != Some(&Value::Bool(true)) {
            return None;
        }
        Some(ServerRecord {
            instance: value.get("instance")?.as_str()?.to_string(),
            host: value
                .get("host")
                .and_then(Value::as_str)
                .unwrap_or("?")
                .to_string(),
            pid: value
                .get("pid")
                .and_then(Value::as_u64)
                .and_then(|p| u32::try_from(p).ok())
                .unwrap_or(0),
        })
    }

    /// `instance pza-ps-1234abcd (host lab-3, pid 4242)`.
    pub fn describe(&self) -> String {
        format!(
            "instance {} (host {}, pid {})",
            self.instance, self.host, self.pid
        )
    }
}

/// A claim on a runner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnerRecord {
    pub instance: String,
    /// Wall-clock time of the claim, in milliseconds since the Unix epoch.
    pub claimed_at_ms: u64,
}

impl OwnerRecord {
    pub fn to_payload(&self) -> Vec<u8> {
        json!({"instance": self.instance, "claimed_at_ms": self.claimed_at_ms})
            .to_string()
            .into_bytes()
    }

    /// An owner record; `Ok(None)` when it is empty (the claim was released),
    /// `Err` when it cannot be read.
    pub fn parse(payload: &[u8]) -> Result<Option<OwnerRecord>, String> {
        if payload.is_empty() {
            return Ok(None);
        }
        let value: Value = serde_json::from_slice(payload)
            .map_err(|e| format!("owner record is not JSON: {e}"))?;
        let instance = value
            .get("instance")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .ok_or("owner record without a string `instance`")?;
        let claimed_at_ms = value
            .get("claimed_at_ms")
            .and_then(Value::as_u64)
            .ok_or("owner record without an integer `claimed_at_ms`")?;
        Ok(Some(OwnerRecord {
            instance: instance.to_string(),
            claimed_at_ms,
        }))
    }

    /// Whether this claim wins over `other`: the older one, and on a tie the
    /// smaller instance id. Both servers compute the same answer.
    pub fn wins_over(&self, other: &OwnerRecord) -> bool {
        (self.claimed_at_ms, &self.instance) < (other.claimed_at_ms, &other.instance)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics() {
        assert_eq!(
            server_topic(Some("lab"), "pza-ps-1"),
            "lab/pza-power-supply/servers/pza-ps-1"
        );
        assert_eq!(servers_filter(None), "pza-power-supply/servers/+");
        assert_eq!(
            server_instance(None, "pza-power-supply/servers/pza-ps-1"),
            Some("pza-ps-1")
        );
        assert_eq!(
            server_instance(Some("x"), "pza-power-supply/servers/a"),
            None
        );
        assert_eq!(owner_runner(None, "power-supply/psu/owner"), Some("psu"));
        assert_eq!(
            owner_runner(Some("ns"), "ns/power-supply/psu/owner"),
            Some("psu")
        );
        assert_eq!(owner_runner(None, "power-supply/psu/status"), None);
    }

    #[test]
    fn records_round_trip() {
        let server = ServerRecord {
            instance: "pza-ps-1".into(),
            host: "lab".into(),
            pid: 42,
        };
        assert_eq!(
            ServerRecord::parse(&server.to_payload(&["a"])),
            Some(server.clone())
        );
        assert_eq!(ServerRecord::parse(b""), None);
        assert_eq!(
            ServerRecord::parse(br#"{"online":false,"instance":"x"}"#),
            None
        );
        let owner = OwnerRecord {
            instance: "pza-ps-1".into(),
            claimed_at_ms: 7,
        };
        assert_eq!(OwnerRecord::parse(&owner.to_payload()), Ok(Some(owner)));
        assert_eq!(OwnerRecord::parse(b""), Ok(None));
        assert!(OwnerRecord::parse(b"{").is_err());
        assert!(OwnerRecord::parse(br#"{"instance":"a"}"#).is_err());
    }

    #[test]
    fn the_older_claim_wins_and_ties_break_on_the_id() {
        let claim = |instance: &str, at| OwnerRecord {
            instance: instance.into(),
            claimed_at_ms: at,
        };
        assert!(claim("b", 1).wins_over(&claim("a", 2)));
        assert!(!claim("a", 2).wins_over(&claim("b", 1)));
        assert!(claim("a", 5).wins_over(&claim("b", 5)));
        assert!(!claim("b", 5).wins_over(&claim("a", 5)));
    }
}
