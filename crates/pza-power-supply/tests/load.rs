//! Load: 10,000 commands at QoS 1, sent as fast as the client can, to 10
//! runners of the real binary. Every command gets exactly one reply, in
//! order per runner, and the server's memory comes back to its baseline.
//!
//! The server uses a mosquitto broker of its own, so that the memory
//! measured is the server's alone: the embedded broker (rumqttd) keeps a
//! log of recent messages per subscription, which grows by design until it
//! reaches its bound (see docs/reliability.md).

mod common;
mod mosquitto;

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::Client;
use pza_toolkit::temp::TempDir;
use serde_json::Value;

const RUNNERS: usize = 10;
const COMMANDS: usize = 10_000;

/// Growth of the resident set allowed between two identical rounds, after a
/// warm-up round: allocator pools and the broker's buffers settle in the
/// warm-up; a leak of even 100 bytes per command would show as 1 MB here.
const RSS_TOLERANCE_KIB: u64 = 4 * 1024;

/// The longest one round may take; far above what it takes (a few seconds
/// in a debug build).
const ROUND_LIMIT: Duration = Duration::from_secs(40);

struct ServerProcess {
    child: Child,
    /// Its config; removed after the process is killed (fields drop last).
    _dir: TempDir,
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/<pid>/status")
}

/// Sends `COMMANDS` voltage commands, spread over the runners, and checks
/// that each gets exactly one reply, in order per runner. Returns how long
/// it took.
async fn round(c: &mut Client, tag: &str) -> Duration {
    let started = Instant::now();
    for n in 0..COMMANDS {
        let runner = n % RUNNERS;
        let seq = n / RUNNERS;
        let volts = (seq % 3000) as f64 / 100.0;
        c.publish(
            &format!("power-supply/psu{runner}/voltage/cmd"),
            format!(r#"{{"pza_id":"{tag}-{runner}-{seq}","voltage":"{volts:.2}"}}"#),
        )
        .await;
    }
    let deadline = tokio::time::Instant::now() + ROUND_LIMIT;
    let mut next: BTreeMap<usize, usize> = (0..RUNNERS).map(|r| (r, 0)).collect();
    let mut received = 0;
    while received < COMMANDS {
        let m = c.next_before(deadline).await.unwrap_or_else(|| {
            panic!("{tag}: {received} of {COMMANDS} replies within {ROUND_LIMIT:?}")
        });
        let v: Value = m.json();
        assert!(!m.topic.ends_with("/error"), "{tag}: unexpected error {v}");
        let id = v["pza_id"].as_str().expect("pza_id");
        let mut parts = id.rsplitn(3, '-');
        let seq: usize = parts.next().and_then(|s| s.parse().ok()).expect("seq");
        let runner: usize = parts.next().and_then(|s| s.parse().ok()).expect("runner");
        assert_eq!(parts.next(), Some(tag), "a reply from another round: {id}");
        assert_eq!(m.topic, format!("power-supply/psu{runner}/voltage"));
        let expected = next.get_mut(&runner).expect("known runner");
        assert_eq!(
            seq, *expected,
            "psu{runner}: reply {seq} out of order or twice"
        );
        *expected += 1;
        assert_eq!(v["voltage"], format!("{:.2}", (seq % 3000) as f64 / 100.0));
        received += 1;
    }
    // Nothing more: every command had exactly one reply.
    assert!(next.values().all(|n| *n == COMMANDS / RUNNERS));
    started.elapsed()
}

#[tokio::test]
async fn ten_thousand_commands_one_reply_each_in_order_and_memory_comes_back() {
    let broker = mosquitto::Mosquitto::plain().await;
    let port = broker.port();
    let dir = TempDir::new("load").expect("a temp folder");
    let runners: String = (0..RUNNERS)
        .map(|i| format!(r#"psu{i}: {{ model: "emulator", measure_period_ms: 0 }},"#))
        .collect();
    let config = dir.join("config.json5");
    std::fs::write(&config, mosquitto::external_config(port, "", &runners, ""))
        .expect("write config");
    let child = Command::new(env!("CARGO_BIN_EXE_pza-power-supply"))
        .args(["run", "--config"])
        .arg(&config)
        .env("HOME", dir.path())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("the server starts");
    let server = ServerProcess { child, _dir: dir };
    let pid = server.child.id();

    let mut status = Client::connect(port).await;
    status.subscribe("power-supply/+/status").await;
    let names: Vec<String> = (0..RUNNERS).map(|i| format!("psu{i}")).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    status.wait_all_status(&names, "Running").await;
    drop(status);

    let mut c = Client::connect(port).await;
    c.subscribe("power-supply/+/voltage").await;
    c.subscribe("power-supply/+/error").await;
    // The retained voltages of the start-up come first: drain them.
    let mut retained = 0;
    while retained < RUNNERS {
        let m = c.next().await;
        assert!(m.topic.ends_with("/voltage"), "{m:?}");
        retained += 1;
    }

    let warm_up = round(&mut c, "warm").await;
    let before = rss_kib(pid);
    let measured = round(&mut c, "load").await;
    let after = rss_kib(pid);
    eprintln!(
        "load: warm-up {COMMANDS} commands in {warm_up:?}, measured {COMMANDS} in {measured:?} ({:.0}/s); VmRSS {before} KiB -> {after} KiB",
        COMMANDS as f64 / measured.as_secs_f64()
    );
    assert!(
        after <= before + RSS_TOLERANCE_KIB,
        "resident memory grew from {before} KiB to {after} KiB over {COMMANDS} commands"
    );
    drop(server);
}
