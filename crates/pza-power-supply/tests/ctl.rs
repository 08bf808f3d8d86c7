//! `pza-power-supply ctl` against the real server binary: every subcommand,
//! text and JSON output, the safe order of `set`, and the exit statuses.

mod served;

use std::io::{BufRead, BufReader};
use std::process::{Output, Stdio};

use pza_power_supply_client::{Change, Status};
use pza_toolkit::temp::TempDir;
use serde_json::Value;
use served::{free_port, wait_running, Served, BIN, WAIT};

const RUNNERS: &str = r#"psu: { model: "emulator", measure_period_ms: 0, description: "bench" },
                         low: { model: "emulator", measure_period_ms: 0, security_max_voltage: 12 }"#;

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn json(o: &Output) -> Value {
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("not one JSON object ({e}): {}", stdout(o)))
}

/// Runs `ctl ARGS` against `served` off the async runtime's threads.
async fn ctl(served: &Served, args: &[&str]) -> Output {
    let mut command = served.ctl(args);
    tokio::task::spawn_blocking(move || command.output().expect("run ctl"))
        .await
        .expect("ctl thread")
}

async fn started() -> Served {
    let served = Served::start(RUNNERS);
    let client = served.client().await;
    wait_running(&client, "psu").await;
    wait_running(&client, "low").await;
    served
}

#[tokio::test]
async fn list_and_get_in_text_and_json() {
    let served = started().await;
    let out = ctl(&served, &["list"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let lines: Vec<Vec<String>> = stdout(&out)
        .lines()
        .map(|l| l.split_whitespace().map(str::to_owned).collect())
        .collect();
    assert_eq!(
        lines,
        [
            ["low", "emulator", "Running"],
            ["psu", "emulator", "Running"]
        ]
    );

    let out = ctl(&served, &["--json", "list"]).await;
    assert_eq!(
        json(&out)["power_supplies"][1],
        serde_json::json!({"name": "psu", "model": "emulator", "status": "Running"})
    );

    let out = ctl(&served, &["get", "low"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    for line in [
        "name: low",
        "status: Running (restarts 0)",
        "limits: 0.00..12.00 V, 0.000..5.000 A",
    ] {
        assert!(text.lines().any(|l| l == line), "{line:?} not in:\n{text}");
    }
    let out = ctl(&served, &["get", "psu", "--json"]).await;
    let v = json(&out);
    assert_eq!(v["name"], "psu");
    assert_eq!(v["status"], "Running");
    assert_eq!(v["info"]["security_max_voltage"], 30.0);
    assert_eq!(v["info"]["voltage_decimals"], 2);
    assert!(v["voltage"].is_number() && v["output"].is_boolean(), "{v}");
}

#[tokio::test]
async fn set_applies_the_safe_order_whatever_the_order_of_the_flags() {
    let served = started().await;
    let client = served.client().await;
    let mut updates = client.power_supply("psu").watch();
    let out = ctl(
        &served,
        &[
            "set",
            "psu",
            "--voltage",
            "5",
            "--output",
            "on",
            "--current",
            "0.5",
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "psu: current 0.500 A\npsu: voltage 5.00 V\npsu: output ON\n"
    );
    let mut changes = Vec::new();
    tokio::time::timeout(WAIT, async {
        while changes.len() < 3 {
            let u = updates.next().await.expect("updates");
            if u.pza_id
                .as_deref()
                .is_some_and(|id| id.starts_with(pza_power_supply_client::ID_PREFIX))
            {
                changes.push(u.change);
            }
        }
    })
    .await
    .expect("three replies seen");
    assert_eq!(
        changes,
        [
            Change::Current(0.5),
            Change::Voltage(5.0),
            Change::Output(true)
        ]
    );

    let out = ctl(
        &served,
        &[
            "--json",
            "set",
            "psu",
            "--output",
            "off",
            "--voltage",
            "-0",
            "--current",
            "1",
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "{\"name\":\"psu\",\"output\":false,\"current\":1.0,\"voltage\":0.0}\n"
    );
}

#[tokio::test]
async fn a_refusal_exits_2_with_the_servers_message() {
    let served = started().await;
    let out = ctl(&served, &["set", "low", "--voltage", "13"]).await;
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        stderr(&out),
        "pza-power-supply: voltage 13 exceeds security_max_voltage 12\n"
    );
    assert_eq!(stdout(&out), "");
}

#[tokio::test]
async fn an_unknown_device_exits_3_saying_the_device_did_not_answer() {
    let served = started().await;
    let out = ctl(
        &served,
        &["--timeout-ms", "300", "set", "ghost", "--voltage", "1"],
    )
    .await;
    assert_eq!(out.status.code(), Some(3));
    let err = stderr(&out);
    assert!(
        err.starts_with("pza-power-supply: power supply `ghost` did not answer within 300 ms"),
        "{err}"
    );
    assert!(err.contains("never seen on the broker"), "{err}");
    for args in [
        &["get", "ghost"][..],
        &["restart", "ghost", "--timeout-ms", "300"],
    ] {
        let out = ctl(&served, args).await;
        assert_eq!(out.status.code(), Some(3), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains("`ghost`"), "{}", stderr(&out));
    }
}

#[tokio::test]
async fn an_unreachable_broker_exits_3_naming_the_broker() {
    let port = free_port();
    let home = TempDir::new("ctl-home").expect("a temp folder");
    let out = std::process::Command::new(BIN)
        .args(["ctl", "--timeout-ms", "300", "--broker"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("list")
        .env("HOME", home.path())
        .env_remove("PZA_POWER_SUPPLY_CONFIG")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert!(
        stderr(&out).starts_with(&format!(
            "pza-power-supply: broker 127.0.0.1:{port} did not answer within 300 ms"
        )),
        "{}",
        stderr(&out)
    );
    // ctl never writes the default config file.
    assert!(!home.join(".panduza").exists());
}

#[tokio::test]
async fn usage_errors_exit_1() {
    let served = started().await;
    for args in [
        &["set", "psu"][..],
        &["set", "psu", "--output", "maybe"],
        &["set", "psu", "--voltage", "five"],
        &["watch"],
        &["get"],
        &["--timeout-ms", "0", "list"],
    ] {
        let out = ctl(&served, args).await;
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", stderr(&out));
        assert!(!stderr(&out).is_empty(), "{args:?}");
    }
    let out = std::process::Command::new(BIN)
        .args(["ctl", "--broker", "nowhere", "list"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("--broker \"nowhere\": no port"),
        "{}",
        stderr(&out)
    );
    let out = ctl(&served, &["set", "psu", "--voltage", "NaN"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("invalid voltage: NaN is not a finite number"));
}

#[tokio::test]
async fn the_broker_and_namespace_come_from_the_config_file() {
    let served = Served::start_with(RUNNERS, r#"namespace: "bench-3","#);
    let client = pza_power_supply_client::Client::connect(served.options().namespace("bench-3"))
        .await
        .unwrap();
    wait_running(&client, "psu").await;
    // The default config path, under HOME: the server's own config.
    let home = TempDir::new("ctl-config").expect("a temp folder");
    std::fs::create_dir_all(home.join(".panduza")).unwrap();
    std::fs::copy(&served.config, home.join(".panduza/pza-power-supply.json5")).unwrap();
    let run = |args: &[&str]| {
        std::process::Command::new(BIN)
            .arg("ctl")
            .args(args)
            .env("HOME", home.path())
            .env_remove("PZA_POWER_SUPPLY_CONFIG")
            .output()
            .unwrap()
    };
    let out = run(&["set", "psu", "--voltage", "7"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out), "psu: voltage 7.00 V\n");
    // A flag beats the file: no such namespace, nothing listed.
    let out = run(&["--namespace", "elsewhere", "list"]);
    assert_eq!((out.status.code(), stdout(&out)), (Some(0), String::new()));
}

async fn next(lines: &mut tokio::sync::mpsc::UnboundedReceiver<Value>) -> Value {
    tokio::time::timeout(WAIT, lines.recv())
        .await
        .expect("a line in time")
        .expect("ctl alive")
}

#[tokio::test]
async fn watch_prints_a_crash_and_the_restart_then_exits_0_on_interrupt() {
    let served = Served::start(
        r#"p: { model: "emulator", measure_period_ms: 0, faults: { panic_on_voltage: 13 },
               restart: { initial_delay_ms: 50, jitter: 0 } }"#,
    );
    let client = served.client().await;
    wait_running(&client, "p").await;
    let mut child = served
        .ctl(&["--json", "watch", "p"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (lines_tx, mut lines) = tokio::sync::mpsc::unbounded_channel::<Value>();
    let pipe = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            let value = serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
            if lines_tx.send(value).is_err() {
                break;
            }
        }
    });
    let first = next(&mut lines).await;
    assert_eq!(first["event"], "snapshot");
    assert_eq!(first["status"], "Running");

    let refused = client.power_supply("p").set_voltage(13.0).await;
    assert!(refused.is_err());
    let mut statuses = Vec::new();
    loop {
        let line = next(&mut lines).await;
        assert_eq!(line["name"], "p");
        if line["event"] == "status" {
            statuses.push(line["status"].as_str().unwrap_or_default().to_owned());
            if line["status"] == Status::Running.as_str() {
                assert_eq!(line["restarts"], 1);
                break;
            }
            if line["status"] == "Panicking" {
                assert!(line["panic_message"]
                    .as_str()
                    .is_some_and(|m| m.contains("panic_on_voltage")));
            }
        }
    }
    assert_eq!(
        statuses,
        ["Panicking", "Restarting", "Initializing", "Running"]
    );
    let kill = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert_eq!(status.code(), Some(0));
}

#[tokio::test]
async fn restart_is_answered() {
    let served = started().await;
    let client = served.client().await;
    let mut updates = client.power_supply("low").watch();
    let out = ctl(&served, &["restart", "low"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out), "low: restart scheduled\n");
    // The restarted runner's own messages (info, state...) travel on its
    // connection and may arrive before the supervisor's `Restarting`: MQTT
    // orders messages per topic, not across connections. The statuses come
    // in order, `Restarting` first.
    let first_status = tokio::time::timeout(WAIT, async {
        while let Some(u) = updates.next().await {
            if let Change::Status(r) = &u.change {
                return r.status;
            }
        }
        panic!("updates ended")
    })
    .await
    .expect("a status in time");
    assert_eq!(first_status, Status::Restarting);
}

#[tokio::test]
async fn watch_all_starts_with_a_line_per_device() {
    let served = started().await;
    let mut child = served
        .ctl(&["watch", "--all"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pipe = child.stdout.take().unwrap();
    let first_two = tokio::task::spawn_blocking(move || {
        BufReader::new(pipe)
            .lines()
            .take(2)
            .map_while(Result::ok)
            .collect::<Vec<_>>()
    });
    let first_two = tokio::time::timeout(WAIT, first_two)
        .await
        .expect("two lines in time")
        .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(first_two.len(), 2);
    assert!(
        first_two[0].starts_with("low Running (restarts 0), output ")
            && first_two[1].starts_with("psu Running (restarts 0), output "),
        "{first_two:?}"
    );
}

const README: &str = include_str!("../../../README.md");

/// The `ctl` command lines of the README's ctl section, as argument lists
/// after `ctl`.
fn readme_ctl_commands() -> Vec<Vec<String>> {
    const PREFIX: &str = "cargo run -q --release -- ctl ";
    let section = README
        .split("\n## ")
        .find(|s| s.starts_with("ctl: one-shot commands"))
        .expect("the README has a ctl section");
    section
        .lines()
        .filter_map(|l| l.strip_prefix(PREFIX))
        .map(|rest| rest.split_whitespace().map(str::to_owned).collect())
        .collect()
}

#[tokio::test]
async fn the_readme_ctl_commands_work_as_written() {
    // The default config's runner, and the default config path under HOME:
    // the commands carry no connection flag, as in the README.
    let served = Served::start(r#"emulator: { model: "emulator" }"#);
    let client = served.client().await;
    wait_running(&client, "emulator").await;
    let home = TempDir::new("ctl-readme").expect("a temp folder");
    std::fs::create_dir_all(home.join(".panduza")).unwrap();
    std::fs::copy(&served.config, home.join(".panduza/pza-power-supply.json5")).unwrap();
    let command = |args: &[String]| {
        let mut c = std::process::Command::new(BIN);
        c.arg("ctl")
            .args(args)
            .env("HOME", home.path())
            .env_remove("PZA_POWER_SUPPLY_CONFIG");
        c
    };
    let commands = readme_ctl_commands();
    assert_eq!(commands.len(), 7, "{commands:?}");
    for args in commands {
        if args[0] == "watch" {
            let mut child = command(&args).stdout(Stdio::piped()).spawn().unwrap();
            let pipe = child.stdout.take().unwrap();
            let first = tokio::task::spawn_blocking(move || {
                BufReader::new(pipe).lines().next().and_then(Result::ok)
            });
            let first = tokio::time::timeout(WAIT, first).await.unwrap().unwrap();
            let _ = child.kill();
            let _ = child.wait();
            let first = first.expect("a first line");
            // The measured values depend on when the last measurement was.
            let (state, _) = first.split_once(", measured").expect("measured values");
            assert!(README.contains(state), "README lacks {first:?}");
            continue;
        }
        let out = tokio::task::spawn_blocking({
            let mut c = command(&args);
            move || c.output().unwrap()
        })
        .await
        .unwrap();
        let refused = args.contains(&"31".to_string());
        assert_eq!(
            out.status.code(),
            Some(if refused { 2 } else { 0 }),
            "{args:?}: {}",
            stderr(&out)
        );
        let shown = if refused { stderr(&out) } else { stdout(&out) };
        for line in shown.lines() {
            // Measurements come every second: the value shown depends on when.
            if line.starts_with("measured:") {
                continue;
            }
            let line = match line.split_once(",\"output\"") {
                Some((json_head, _)) if line.starts_with('{') => json_head,
                _ => line,
            };
            assert!(README.contains(line), "{args:?}: README lacks {line:?}");
        }
    }
}

/// The write end of a pipe whose reader has already gone, as when `ctl` is
/// piped into `head` and `head` has exited: a write on it fails with
/// `BrokenPipe`.
#[cfg(unix)]
fn reader_gone() -> Stdio {
    let mut reader = std::process::Command::new("true")
        .stdin(Stdio::piped())
        .spawn()
        .expect("run true");
    let write_end = reader.stdin.take().expect("a pipe");
    assert!(reader.wait().expect("true ends").success());
    Stdio::from(write_end)
}

/// `ctl ARGS` with stdout on a pipe whose reader has gone: the exit status
/// and stderr.
#[cfg(unix)]
async fn ctl_into_a_closed_pipe(served: &Served, args: &[&str]) -> (Option<i32>, String) {
    let mut command = served.ctl(args);
    command.stdout(reader_gone()).stderr(Stdio::piped());
    let out = tokio::time::timeout(
        WAIT,
        tokio::task::spawn_blocking(move || command.output().expect("run ctl")),
    )
    .await
    .expect("ctl ends in time")
    .expect("ctl thread");
    (out.status.code(), stderr(&out))
}

#[cfg(unix)]
#[tokio::test]
async fn a_reader_that_has_gone_ends_ctl_quietly_with_0() {
    let served = started().await;
    // `watch` stops at its first line instead of running until Ctrl+C;
    // `set` still applies every value, in the safe order.
    for args in [
        &["watch", "psu"][..],
        &["--json", "watch", "--all"],
        &["get", "psu"],
        &["--json", "get", "psu"],
        &["list"],
        &["restart", "low"],
        &["set", "psu", "--voltage", "4", "--output", "on"],
    ] {
        let (code, err) = ctl_into_a_closed_pipe(&served, args).await;
        assert_eq!(code, Some(0), "{args:?}: {err}");
        assert_eq!(err, "", "{args:?}");
    }
    let out = ctl(&served, &["--json", "get", "psu"]).await;
    let after = json(&out);
    assert_eq!(after["voltage"], 4.0, "{after}");
    assert_eq!(after["output"], true, "{after}");
}
