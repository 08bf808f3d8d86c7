//! Server-made `pza_id`s, for the messages that answer no command (periodic
//! measurements, the retained state published at start-up, statuses,
//! errors for payloads whose id cannot be read, clamp reports).
//!
//! Clients of the original Panduza server read `pza_id` as a required
//! string, so the server never publishes `null` there. An id is a prefix
//! unique to this process and a counter: no lock, one atomic increment.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

/// What every server-made id starts with, so a reader can tell it from the
/// ids clients choose.
pub const SERVER_ID_PREFIX: &str = "srv-";

static COUNTER: AtomicU64 = AtomicU64::new(0);
static PROCESS: OnceLock<String> = OnceLock::new();

/// The part that tells this process from others on the same broker: the
/// process id and the start time, so that a restarted server does not
/// repeat the ids of the previous one.
fn process_tag() -> &'static str {
    PROCESS.get_or_init(|| {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        // Low bits only: they change between starts, the high ones do not.
        let nanos = (nanos & u128::from(u32::MAX)) as u32;
        format!("{SERVER_ID_PREFIX}{:x}-{nanos:08x}", std::process::id())
    })
}

/// A fresh id, unique within this process and unlikely to repeat across
/// processes: `srv-<pid>-<start>-<n>`.
pub fn fresh_id() -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{}-{n}", process_tag())
}

/// The command's id when there is one, else a fresh server-made one.
pub fn or_fresh(pza_id: Option<&str>) -> String {
    match pza_id {
        Some(id) => id.to_string(),
        None => fresh_id(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_ids_are_distinct_strings_with_the_prefix() {
        let ids: std::collections::BTreeSet<String> = (0..1000).map(|_| fresh_id()).collect();
        assert_eq!(ids.len(), 1000);
        assert!(ids.iter().all(|id| id.starts_with(SERVER_ID_PREFIX)));
        assert_eq!(or_fresh(Some("a1")), "a1");
        assert!(or_fresh(None).starts_with(SERVER_ID_PREFIX));
    }

    #[test]
    fn fresh_ids_are_distinct_across_threads() {
        let threads: Vec<_> = (0..4)
            .map(|_| std::thread::spawn(|| (0..500).map(|_| fresh_id()).collect::<Vec<_>>()))
            .collect();
        let mut all = std::collections::BTreeSet::new();
        for t in threads {
            for id in t.join().expect("no panic in the id threads") {
                assert!(all.insert(id));
            }
        }
        assert_eq!(all.len(), 2000);
    }
}
