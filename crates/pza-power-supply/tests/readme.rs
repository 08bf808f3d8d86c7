//! The README's mosquitto examples, run as written against the default
//! config (on a free port instead of 1883), with the real mosquitto clients.

mod common;

use std::path::Path;
use std::process::Command;

use common::Client;

const README: &str = include_str!("../../../README.md");

/// The `mosquitto_pub` lines of the README's "Try it with mosquitto" section.
fn readme_commands() -> Vec<Vec<String>> {
    let section = README
        .split("## Try it with mosquitto")
        .nth(1)
        .and_then(|s| s.split("\n## ").next())
        .expect("the README has a 'Try it with mosquitto' section");
    section
        .lines()
        .filter(|l| l.starts_with("mosquitto_pub "))
        .map(shell_words)
        .collect()
}

/// Splits a shell line on spaces, honouring single quotes (enough for the README).
fn shell_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut quoted = false;
    let mut in_word = false;
    for c in line.chars() {
        match c {
            '\'' => {
                quoted = !quoted;
                in_word = true;
            }
            ' ' if !quoted => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            c => {
                word.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        words.push(word);
    }
    words
}

#[tokio::test]
async fn the_readme_examples_work_against_the_default_config() {
    let commands = readme_commands();
    assert_eq!(commands.len(), 6, "{commands:?}");
    if Command::new("mosquitto_pub")
        .arg("--help")
        .output()
        .is_err()
    {
        panic!("mosquitto_pub is missing: run the tests with ./scripts/test, which installs it");
    }

    let port = pza_toolkit::mqtt::probe_free_port().unwrap();
    let text =
        pza_power_supply::config::DEFAULT_CONFIG.replace("port: 1883", &format!("port: {port}"));
    assert_ne!(text, pza_power_supply::config::DEFAULT_CONFIG);
    let (factory, _) = common::factory();
    let config =
        pza_power_supply::config::parse(Path::new("default.json5"), &text, &factory).unwrap();
    let server = pza_power_supply::server::Server::start(
        config,
        std::sync::Arc::new(tokio::sync::Mutex::new(factory)),
        Default::default(),
    )
    .await
    .unwrap();

    let mut c = Client::connect(port).await;
    c.subscribe("power-supply/emulator/#").await;
    c.wait_status("emulator", "Running").await;
    let expected = [
        (
            "a1",
            "power-supply/emulator/voltage",
            r#"{"pza_id":"a1","voltage":"5.00"}"#,
        ),
        (
            "a2",
            "power-supply/emulator/current",
            r#"{"pza_id":"a2","current":"0.500"}"#,
        ),
        (
            "a3",
            "power-supply/emulator/state",
            r#"{"pza_id":"a3","state":"ON"}"#,
        ),
        (
            "a4",
            "power-supply/emulator/error",
            r#"{"pza_id":"a4","message":"voltage 31 exceeds security_max_voltage 30"}"#,
        ),
        (
            "a5",
            "power-supply/emulator/measure",
            r#"{"pza_id":"a5","voltage":"5.00","current":"0.500"}"#,
        ),
        (
            "a6",
            "power-supply/emulator/status",
            r#"{"pza_id":"a6","status":"Restarting","restarts":0,"next_restart_ms":0}"#,
        ),
    ];
    for (words, (id, topic, payload)) in commands.into_iter().zip(expected) {
        // The server runs on this test's runtime: run the client off it.
        let shown = format!("{words:?}");
        let status = tokio::task::spawn_blocking(move || {
            Command::new(&words[0])
                .args(&words[1..])
                .args(["-p", &port.to_string()])
                .status()
        })
        .await
        .unwrap()
        .unwrap();
        assert!(status.success(), "{shown}");
        let reply = c.wait_reply(id).await;
        assert_eq!(reply.topic, topic, "{shown}");
        assert_eq!(String::from_utf8_lossy(&reply.payload), payload, "{shown}");
        let line = format!("{topic} {payload}");
        assert!(README.contains(&line), "the README shows `{line}`");
    }
    let running = c.wait_status("emulator", "Running").await;
    assert_eq!(running["restarts"], 1);
    c.wait_for("power-supply/emulator/measure/current", |v| {
        v["current"] == "0.500"
    })
    .await;
    server.shutdown().await.unwrap();
}
