//! The terminal UI end to end: the real binary's `tui` in a real terminal
//! (tmux, 80×24, on a private tmux server), attached to a running server on a
//! free port, driven with keys; what it does is checked on MQTT with a real
//! client, and on the screen with `tmux capture-pane`.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use common::{TestServer, WAIT};
use pza_toolkit::temp::TempDir;

const BIN: &str = env!("CARGO_BIN_EXE_pza-power-supply");

/// How often the screen (or the exit-status file) is read while waiting for
/// something to appear: neither tmux nor the shell gives notice of a change.
/// The waits are bounded by `WAIT`.
const POLL: Duration = Duration::from_millis(100);

/// A tmux server of its own (`tmux -L`), killed with everything in it on drop.
struct Tmux {
    socket: String,
    /// HOME of the UI, and its exit status; removed after the tmux server
    /// is killed (fields drop after `drop`).
    dir: TempDir,
}

impl Tmux {
    fn new(tag: &str) -> Tmux {
        let socket = format!(
            "pza-tui-{tag}-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        );
        let dir = TempDir::new("tui").expect("a temp folder");
        Tmux { socket, dir }
    }

    fn tmux(&self, args: &[&str]) -> Output {
        let output = Command::new("tmux")
            .arg("-L")
            .arg(&self.socket)
            .args(args)
            .output()
            .unwrap_or_else(|e| {
                panic!("cannot run tmux ({e}): the end-to-end UI test needs it; ./scripts/test installs it")
            });
        assert!(
            output.status.success(),
            "tmux {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        output
    }

    /// Runs `command` (a shell command line) in a detached 80×24 session.
    fn start(&self, command: &str) {
        self.tmux(&[
            "new-session",
            "-d",
            "-s",
            "ui",
            "-x",
            "80",
            "-y",
            "24",
            command,
        ]);
    }

    fn screen(&self) -> String {
        String::from_utf8_lossy(&self.tmux(&["capture-pane", "-p", "-t", "ui"]).stdout).into_owned()
    }

    fn keys(&self, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", "ui"];
        args.extend_from_slice(keys);
        self.tmux(&args);
    }

    fn text(&self, text: &str) {
        self.tmux(&["send-keys", "-t", "ui", "-l", text]);
    }

    /// Waits until the screen satisfies `pred`; the screen then.
    async fn wait_screen(&self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let screen = self.screen();
            if pred(&screen) {
                return screen;
            }
            if tokio::time::Instant::now() > deadline {
                panic!("timed out waiting for {what}; the screen:\n{screen}");
            }
            tokio::time::sleep(POLL).await;
        }
    }

    fn status_file(&self) -> PathBuf {
        self.dir.join("exit-status")
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        // Ends the session and the UI in it, whatever happened.
        let _ = Command::new("tmux")
            .args(["-L", &self.socket, "kill-server"])
            .output();
    }
}

fn shell_quote(path: &Path) -> String {
    format!("'{}'", path.display().to_string().replace('\'', r"'\''"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tui_shows_the_runners_toggles_output_shows_refusals_and_quits() {
    let server = TestServer::start(
        r#""psu-1": { model: "emulator", measure_period_ms: 200 },
           "psu-2": { model: "emulator", measure_period_ms: 200, security_max_voltage: 12 },"#,
    )
    .await;
    let mut mqtt = server.client().await;
    mqtt.subscribe("power-supply/+/status").await;
    mqtt.wait_all_status(&["psu-1", "psu-2"], "Running").await;
    mqtt.subscribe("power-supply/psu-1/state").await;

    let tmux = Tmux::new("e2e");
    // A home without a config file: the flags alone say where the server is.
    let command = format!(
        "env -u PZA_POWER_SUPPLY_CONFIG -u RUST_LOG HOME={home} {bin} tui --broker 127.0.0.1:{port}; echo $? > {status}",
        home = shell_quote(tmux.dir.path()),
        bin = shell_quote(Path::new(BIN)),
        port = server.port,
        status = shell_quote(&tmux.status_file()),
    );
    tmux.start(&command);

    // The table shows both runners, Running, with their values and units.
    let screen = tmux
        .wait_screen("both runners Running", |s| {
            s.lines()
                .any(|l| l.contains("▶ psu-1") && l.contains("Running"))
                && s.lines()
                    .any(|l| l.contains(" psu-2 ") && l.contains("Running"))
        })
        .await;
    assert!(screen.contains("Power supplies (2)"), "{screen}");
    assert!(
        screen.contains("OFF") && screen.contains(" V ") && screen.contains(" A"),
        "{screen}"
    );
    assert_eq!(screen.lines().count(), 24, "{screen}");

    // `p` turns psu-1's output on: seen on MQTT, then on the screen.
    tmux.keys(&["p"]);
    mqtt.wait_for("power-supply/psu-1/state", |v| v["state"] == "ON")
        .await;
    tmux.wait_screen("output ON", |s| {
        s.lines()
            .any(|l| l.contains("▶ psu-1") && l.contains(" ON "))
            && s.contains("psu-1: output ON")
    })
    .await;

    // `v` with an out-of-range value: the server's refusal is shown.
    tmux.keys(&["v"]);
    tmux.wait_screen("the input field", |s| s.contains("psu-1 voltage (V):"))
        .await;
    tmux.text("31");
    tmux.keys(&["Enter"]);
    tmux.wait_screen("the refusal", |s| {
        s.contains("psu-1: voltage 31 V refused: voltage 31 exceeds security_max_voltage 30")
    })
    .await;

    // Text that is no number is refused in the field, nothing is sent.
    tmux.keys(&["v"]);
    tmux.text("abc");
    tmux.keys(&["Enter"]);
    tmux.wait_screen("the field's refusal", |s| {
        s.contains("\"abc\" is not a number of volts")
    })
    .await;
    // Wait for Esc to be taken alone: an Esc followed at once by `q` reads
    // as Alt+q in any terminal.
    tmux.keys(&["Escape"]);
    tmux.wait_screen("the field closed", |s| {
        s.contains("psu-1: voltage unchanged")
    })
    .await;

    // `q` quits with status 0, and the terminal is given back.
    tmux.keys(&["q"]);
    let status_file = tmux.status_file();
    let deadline = tokio::time::Instant::now() + WAIT;
    let status = loop {
        if let Ok(text) = std::fs::read_to_string(&status_file) {
            if text.ends_with('\n') {
                break text;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "tui did not exit; the screen:\n{}",
            tmux.screen()
        );
        tokio::time::sleep(POLL).await;
    };
    assert_eq!(status.trim(), "0");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_shows_the_tui_with_its_logs_in_the_pane_and_q_shuts_down() {
    let port = pza_toolkit::mqtt::probe_free_port().expect("a free port");
    let tmux = Tmux::new("run");
    let config = tmux.dir.join("config.json5");
    std::fs::write(
        &config,
        common::config_text(
            port,
            r#""psu-1": { model: "emulator", measure_period_ms: 200 },"#,
            r#"tui: { enable: true, power_toggle_key: "o" },"#,
        ),
    )
    .unwrap();
    let command = format!(
        "env -u PZA_POWER_SUPPLY_CONFIG -u RUST_LOG HOME={home} {bin} run --config {config}; echo $? > {status}",
        home = shell_quote(tmux.dir.path()),
        bin = shell_quote(Path::new(BIN)),
        config = shell_quote(&config),
        status = shell_quote(&tmux.status_file()),
    );
    tmux.start(&command);

    // The server's own logs, from its start, are in the pane.
    let screen = tmux
        .wait_screen("the runner Running and the logs", |s| {
            s.lines()
                .any(|l| l.contains("▶ psu-1") && l.contains("Running"))
                && s.contains("INFO embedded MQTT broker accepts connections")
        })
        .await;
    // Nothing printed across the screen: the title is still the first line.
    assert!(
        screen.starts_with(" pza-power-supply · 127.0.0.1:"),
        "{screen}"
    );
    assert!(screen.contains("o output") && screen.contains("q quit (stops the server)"));

    let mut mqtt = common::Client::connect_until(port, WAIT)
        .await
        .expect("the server's broker");
    mqtt.subscribe("power-supply/psu-1/#").await;
    tmux.keys(&["o"]);
    mqtt.wait_for("power-supply/psu-1/state", |v| v["state"] == "ON")
        .await;

    // `q`: the graceful shutdown, exit status 0.
    tmux.keys(&["q"]);
    mqtt.wait_status("psu-1", "Stopped").await;
    let deadline = tokio::time::Instant::now() + WAIT;
    let status = loop {
        if let Ok(text) = std::fs::read_to_string(tmux.status_file()) {
            if text.ends_with('\n') {
                break text;
            }
        }
        assert!(tokio::time::Instant::now() < deadline, "run did not exit");
        tokio::time::sleep(POLL).await;
    };
    assert_eq!(status.trim(), "0");
}

#[test]
fn tui_without_a_terminal_says_so() {
    let output = Command::new(BIN)
        .args(["tui", "--broker", "127.0.0.1:1"])
        .env_remove("PZA_POWER_SUPPLY_CONFIG")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        stderr.trim(),
        "pza-power-supply: tui needs a terminal: stdout is not one"
    );
}
