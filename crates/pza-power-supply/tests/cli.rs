//! The binary itself: exit statuses, messages, signals.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};

use common::{Client, WAIT};
use pza_toolkit::mqtt::probe_free_port;
use pza_toolkit::temp::TempDir;

const BIN: &str = env!("CARGO_BIN_EXE_pza-power-supply");

fn write_config(dir: &TempDir, text: &str) -> PathBuf {
    let path = dir.join("config.json5");
    std::fs::write(&path, text).unwrap();
    path
}

fn run(args: &[&str], home: &Path) -> Output {
    Command::new(BIN)
        .args(args)
        .env("HOME", home)
        .env_remove("PZA_POWER_SUPPLY_CONFIG")
        .env_remove("RUST_LOG")
        .output()
        .unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn spawn_server(config: &Path) -> Child {
    Command::new(BIN)
        .args(["run", "--config", config.to_str().unwrap()])
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn signal(child: &Child, name: &str) {
    let status = Command::new("kill")
        .args([&format!("-{name}"), &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// Waits for the child to exit, at most `WAIT` (then kills it), and reads
/// what it wrote on stderr.
async fn exit_status(mut child: Child) -> (ExitStatus, String) {
    let pid = child.id().to_string();
    let pipe = child.stderr.take();
    // std's blocking `wait`, on a thread of its own: the exit itself is the
    // event waited for. The pipe is read to its end there first, so that a
    // talkative child never blocks on a full pipe.
    let exited = tokio::task::spawn_blocking(move || {
        let mut err = String::new();
        if let Some(mut pipe) = pipe {
            let _ = std::io::Read::read_to_string(&mut pipe, &mut err);
        }
        (child.wait(), err)
    });
    match tokio::time::timeout(WAIT, exited).await {
        Ok(Ok((Ok(status), err))) => (status, err),
        Ok(Ok((Err(e), _))) => panic!("cannot wait for the server: {e}"),
        Ok(Err(e)) => panic!("the waiting thread failed: {e}"),
        Err(_) => {
            let _ = Command::new("kill").args(["-KILL", &pid]).status();
            panic!("the server did not exit within {WAIT:?}");
        }
    }
}

#[test]
fn version_prints_name_and_version() {
    let out = run(
        &["version"],
        TempDir::new("version").expect("a temp folder").path(),
    );
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("pza-power-supply {}\n", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn list_drivers_needs_no_config() {
    let home = TempDir::new("drivers").expect("a temp folder");
    let out = run(&["list", "--drivers"], home.path());
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("emulator: Virtual power supply"), "{text}");
    assert!(
        !home.join(".panduza").exists(),
        "no config written for --drivers"
    );
}

#[test]
fn the_default_config_is_written_on_first_use_only_at_the_default_path() {
    let home = TempDir::new("default").expect("a temp folder");
    let out = run(&["list", "--runners"], home.path());
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout)
        .contains("emulator: model emulator, \"Virtual supply\""));
    let written = home.join(".panduza").join("pza-power-supply.json5");
    assert!(written.exists());

    let missing = home.join("nowhere.json5");
    let out = run(
        &["list", "--runners", "--config", missing.to_str().unwrap()],
        home.path(),
    );
    assert!(!out.status.success());
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("nowhere.json5: cannot read"), "{err}");
    assert!(!missing.exists());
}

#[test]
fn the_config_path_comes_from_the_environment_too() {
    let home = TempDir::new("env").expect("a temp folder");
    let config = write_config(
        &home,
        r#"{ runners: { "from-env": { model: "emulator" } } }"#,
    );
    let out = Command::new(BIN)
        .args(["list", "--runners"])
        .env("HOME", home.path())
        .env("PZA_POWER_SUPPLY_CONFIG", &config)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("from-env: model emulator"));
}

#[test]
fn a_bad_config_is_one_line_naming_file_key_and_reason() {
    let home = TempDir::new("bad").expect("a temp folder");
    let config = write_config(
        &home,
        r#"{ runners: { psu: { model: "emulator", security_max_voltage: 31 } } }"#,
    );
    let out = run(&["run", "--config", config.to_str().unwrap()], home.path());
    assert!(!out.status.success());
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("config.json5: runners.psu.security_max_voltage: 31 V is outside the emulator range 0..30 V"),
        "{err}"
    );
}

#[test]
fn a_port_in_use_is_one_line_and_non_zero() {
    let home = TempDir::new("port").expect("a temp folder");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let config = write_config(
        &home,
        &format!("{{ broker: {{ tcp: {{ port: {port} }} }}, runners: {{}} }}"),
    );
    let out = run(&["run", "--config", config.to_str().unwrap()], home.path());
    assert!(!out.status.success());
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains(&format!("127.0.0.1:{port}: address already in use")),
        "{err}"
    );
}

#[tokio::test]
async fn sigterm_stops_cleanly_and_stopped_is_the_last_status() {
    let home = TempDir::new("sigterm").expect("a temp folder");
    let port = probe_free_port().unwrap();
    let config = write_config(
        &home,
        &format!(
            r#"{{ broker: {{ tcp: {{ port: {port} }} }}, runners: {{ a: {{ model: "emulator", measure_period_ms: 50 }}, b: {{ model: "emulator" }} }} }}"#
        ),
    );
    let child = spawn_server(&config);
    let mut c = connect_when_up(port).await;
    c.subscribe("power-supply/#").await;
    c.wait_all_status(&["a", "b"], "Running").await;
    signal(&child, "TERM");
    let mut last_a = None;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let m = match c.next_before(deadline).await {
            Some(m) => m,
            None => {
                let (status, err) = exit_status(child).await;
                panic!("no Stopped in time; server {status:?}: {err}");
            }
        };
        if m.topic.starts_with("power-supply/a/") && !m.topic.ends_with("/cmd") {
            last_a = Some(m.clone());
        }
        if m.topic == "power-supply/a/status" && m.json()["status"] == "Stopped" {
            break;
        }
    }
    let (status, err) = exit_status(child).await;
    assert_eq!(status.code(), Some(0), "{err}");
    assert_eq!(last_a.unwrap().topic, "power-supply/a/status");
    // The broker went away with the server.
    assert!(tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err());
}

#[tokio::test]
async fn a_second_signal_exits_at_once_with_130() {
    let home = TempDir::new("second").expect("a temp folder");
    let port = probe_free_port().unwrap();
    let config = write_config(
        &home,
        &format!(
            r#"{{ broker: {{ tcp: {{ port: {port} }} }}, shutdown_timeout_ms: 3600000,
                 runners: {{ stuck: {{ model: "emulator", command_timeout_ms: 3600000, faults: {{ hang_on_shutdown: true }} }},
                             quick: {{ model: "emulator" }} }} }}"#
        ),
    );
    let mut child = spawn_server(&config);
    let mut c = connect_when_up(port).await;
    c.subscribe("power-supply/+/status").await;
    c.wait_all_status(&["stuck", "quick"], "Running").await;
    signal(&child, "INT");
    // `quick` stopping shows the shutdown has begun; `stuck` never closes
    // its device, so the server waits for it (for an hour).
    c.wait_all_status(&["quick"], "Stopped").await;
    assert!(
        child.try_wait().unwrap().is_none(),
        "still waiting for the stuck runner"
    );
    signal(&child, "INT");
    let (status, err) = exit_status(child).await;
    assert_eq!(status.code(), Some(130), "{err}");
    assert!(err.contains("second signal"), "{err}");
}

async fn connect_when_up(port: u16) -> Client {
    match Client::connect_until(port, WAIT).await {
        Some(c) => c,
        None => panic!("the server did not come up on port {port}"),
    }
}

/// `version` and `list` with stdout on a pipe whose reader has gone (as in
/// `pza-power-supply list --drivers | head -1` once `head` has exited): exit
/// 0, nothing on stderr, no panic.
#[cfg(unix)]
#[test]
fn a_reader_that_has_gone_is_not_an_error() {
    let home = TempDir::new("closed-stdout").expect("a temp folder");
    for args in [&["version"][..], &["list", "--drivers"]] {
        let mut reader = Command::new("true")
            .stdin(Stdio::piped())
            .spawn()
            .expect("run true");
        let write_end = reader.stdin.take().expect("a pipe");
        assert!(reader.wait().expect("true ends").success());
        let out = Command::new(BIN)
            .args(args)
            .env("HOME", home.path())
            .env_remove("PZA_POWER_SUPPLY_CONFIG")
            .env_remove("RUST_LOG")
            .stdout(write_end)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{args:?}: {}", stderr(&out));
        assert_eq!(stderr(&out), "", "{args:?}");
    }
}
