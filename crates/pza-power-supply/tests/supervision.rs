//! Supervision through the whole stack: crashes injected with the emulator's
//! faults, statuses read on MQTT, delays given by the policy (jitter 0).

mod common;

use std::time::{Duration, Instant};

use common::{running_client, server_made, Client, LogCapture, Message, TestServer, WAIT};
use pza_power_supply::runners::refuser::FAILED_REASON;
use serde_json::{json, Value};

/// Collects the statuses of `runner` until one equals `last`.
async fn statuses_until(c: &mut Client, runner: &str, last: &str) -> Vec<Value> {
    let topic = format!("power-supply/{runner}/status");
    let mut seen = Vec::new();
    loop {
        let m = c.next().await;
        if m.topic == topic {
            let v = m.json();
            let done = v["status"] == last;
            seen.push(v);
            if done {
                return seen;
            }
        }
    }
}

/// Publishes a voltage command to `runner` (its answers are read by the caller).
async fn send_voltage(c: &Client, runner: &str, pza_id: &str, volts: &str) {
    c.publish(
        &format!("power-supply/{runner}/voltage/cmd"),
        format!(r#"{{"pza_id":"{pza_id}","voltage":"{volts}"}}"#),
    )
    .await;
}

fn names(statuses: &[Value]) -> Vec<&str> {
    statuses
        .iter()
        .map(|s| s["status"].as_str().unwrap_or("?"))
        .collect()
}

const FAST: &str = "restart: { initial_delay_ms: 20, multiplier: 2, jitter: 0 }";

#[tokio::test]
async fn a_panic_restarts_the_runner_and_commands_work_again() {
    let server = TestServer::start(&format!(
        r#"p: {{ model: "emulator", measure_period_ms: 0, faults: {{ panic_on_voltage: 13 }}, {FAST} }}"#
    ))
    .await;
    let mut c = running_client(&server, "p").await;
    send_voltage(&c, "p", "boom", "13").await;
    let seen = statuses_until(&mut c, "p", "Running").await;
    assert_eq!(
        names(&seen),
        ["Panicking", "Restarting", "Initializing", "Running"]
    );
    assert!(
        seen[0]["panic_message"]
            .as_str()
            .unwrap()
            .contains("emulator fault: panic_on_voltage 13"),
        "{}",
        seen[0]
    );
    // It says where the driver panicked (noted by the server's panic hook;
    // the path's separators are the platform's).
    let message = seen[0]["panic_message"].as_str().unwrap();
    let at = message.split(" (at ").nth(1).unwrap_or_default();
    assert!(at.contains("emulator.rs:"), "{message}");
    assert_eq!(seen[1]["next_restart_ms"], 20);
    assert_eq!(
        server_made(seen[3].clone()),
        json!({"pza_id": "srv", "status": "Running", "restarts": 1})
    );

    send_voltage(&c, "p", "after", "5").await;
    assert_eq!(
        c.wait_reply("after").await.json(),
        json!({"pza_id": "after", "voltage": "5.00"})
    );
    server.stop().await;
}

#[tokio::test]
async fn an_error_exit_restarts_the_runner_after_answering_the_command() {
    let server = TestServer::start(&format!(
        r#"e: {{ model: "emulator", measure_period_ms: 0, faults: {{ error_on_voltage: 6 }}, {FAST} }}"#
    ))
    .await;
    let mut c = running_client(&server, "e").await;
    send_voltage(&c, "e", "err", "6").await;
    let reply = c.wait_reply("err").await;
    assert_eq!(reply.topic, "power-supply/e/error");
    assert_eq!(
        reply.json()["message"],
        "voltage: I/O error: emulator fault: error_on_voltage 6"
    );
    let seen = statuses_until(&mut c, "e", "Running").await;
    assert_eq!(
        names(&seen),
        ["Panicking", "Restarting", "Initializing", "Running"]
    );
    assert!(seen[0]["panic_message"]
        .as_str()
        .unwrap()
        .contains("error_on_voltage 6"));
    send_voltage(&c, "e", "ok", "5").await;
    assert_eq!(c.wait_reply("ok").await.json()["voltage"], "5.00");
    server.stop().await;
}

#[tokio::test]
async fn a_clean_exit_is_not_restarted() {
    let server = TestServer::start(&format!(
        r#"x: {{ model: "emulator", measure_period_ms: 0, faults: {{ exit_on_voltage: 2 }}, {FAST} }},
           witness: {{ model: "emulator", measure_period_ms: 0 }}"#
    ))
    .await;
    let mut c = running_client(&server, "x").await;
    send_voltage(&c, "x", "bye", "2").await;
    assert_eq!(c.wait_reply("bye").await.topic, "power-supply/x/error");
    let stopped = c.wait_status("x", "Stopped").await;
    assert_eq!(stopped["restarts"], 0);
    // Ask another runner something, long after a restart would have come:
    // nothing more was published for `x`.
    c.subscribe("power-supply/witness/#").await;
    for i in 0..5 {
        let id = format!("w{i}");
        c.publish(
            "power-supply/witness/voltage/cmd",
            format!(r#"{{"pza_id":"{id}","voltage":"1"}}"#),
        )
        .await;
        let (_, between) = c
            .wait_for_collect("power-supply/witness/voltage", |v| {
                v["pza_id"] == id.as_str()
            })
            .await;
        assert!(
            between
                .iter()
                .all(|m| !m.topic.starts_with("power-supply/x/")),
            "{between:?}"
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn a_crash_loop_fails_after_exactly_max_retries_with_the_policy_delays() {
    // Every initialization fails: a crash loop that never reaches Running.
    let server = TestServer::start(
        r#"loop: { model: "emulator", measure_period_ms: 0, faults: { fail_initialize: 100 },
                  restart: { initial_delay_ms: 10, multiplier: 2, max_delay_ms: 50, jitter: 0, max_retries: 4 } }"#,
    )
    .await;
    let mut c = server.client().await;
    c.subscribe("power-supply/loop/status").await;
    let seen = statuses_until(&mut c, "loop", "Failed").await;
    let delays: Vec<u64> = seen
        .iter()
        .filter_map(|s| s["next_restart_ms"].as_u64())
        .collect();
    assert_eq!(delays, [10, 20, 40, 50]);
    let failed = seen.last().unwrap();
    assert_eq!(failed["restarts"], 4);
    assert!(
        failed["panic_message"]
            .as_str()
            .unwrap()
            .contains("injected initialization failure 5 of 100"),
        "{failed}"
    );
    assert_eq!(server.emulator.device("loop").unwrap().initializations, 5);
    server.stop().await;
}

#[tokio::test]
async fn max_retries_zero_never_restarts_and_restart_cmd_revives() {
    let server = TestServer::start(
        r#"f: { model: "emulator", measure_period_ms: 0, faults: { panic_on_voltage: 1 },
               restart: { max_retries: 0 } }"#,
    )
    .await;
    let mut c = running_client(&server, "f").await;
    send_voltage(&c, "f", "p", "1").await;
    let seen = statuses_until(&mut c, "f", "Failed").await;
    assert_eq!(names(&seen), ["Panicking", "Failed"]);
    assert_eq!(seen[1]["restarts"], 0);
    // No runner will serve a command now: each is answered at once.
    for (topic, payload, id) in [
        ("voltage/cmd", r#"{"pza_id":"f1","voltage":"2"}"#, "f1"),
        ("measure/cmd", r#"{"pza_id":"f2"}"#, "f2"),
        ("state/cmd", r#"{"pza_id":"f3","state":1e400}"#, "f3"),
    ] {
        c.publish(&format!("power-supply/f/{topic}"), payload).await;
        let reply = c.wait_reply(id).await;
        assert_eq!(reply.topic, "power-supply/f/error");
        assert_eq!(reply.json()["message"], FAILED_REASON);
    }

    c.publish("power-supply/f/restart/cmd", r#"{"pza_id":"again"}"#)
        .await;
    let reply = c.wait_reply("again").await;
    assert_eq!(reply.topic, "power-supply/f/status");
    assert_eq!(reply.json()["status"], "Restarting");
    assert_eq!(reply.json()["next_restart_ms"], 0);
    let running = c.wait_status("f", "Running").await;
    assert_eq!(running["restarts"], 1);
    send_voltage(&c, "f", "v", "2").await;
    assert_eq!(c.wait_reply("v").await.json()["voltage"], "2.00");

    c.publish("power-supply/f/restart/cmd", r#"{"pza_id":7}"#)
        .await;
    let error = c.wait_for("power-supply/f/error", |_| true).await;
    assert_eq!(
        server_made(error),
        json!({"pza_id": "srv", "message": "field `pza_id` must be a string, not a number"})
    );
    server.stop().await;
}

#[tokio::test]
async fn restart_cmd_restarts_a_running_runner_keeping_the_device() {
    let server = TestServer::start(r#"r: { model: "emulator", measure_period_ms: 0 }"#).await;
    let mut c = running_client(&server, "r").await;
    send_voltage(&c, "r", "v", "3.3").await;
    c.wait_reply("v").await;
    c.publish("power-supply/r/restart/cmd", r#"{"pza_id":"rs"}"#)
        .await;
    let seen = statuses_until(&mut c, "r", "Running").await;
    assert_eq!(names(&seen), ["Restarting", "Initializing", "Running"]);
    assert_eq!(seen[0]["pza_id"], "rs");
    assert_eq!(seen[2]["restarts"], 1);
    // The new runner found the device as the old one left it. The value is
    // unchanged and the broker holds it on the same connection, so it is not
    // published again (issue 16): the retained message is still the reply.
    let mut late = server.client().await;
    late.subscribe("power-supply/r/voltage").await;
    assert_eq!(
        late.next().await.json(),
        json!({"pza_id": "v", "voltage": "3.30"})
    );
    server.stop().await;
}

#[tokio::test]
async fn healthy_running_for_reset_after_restarts_from_the_first_delay() {
    // reset_after_ms: 0 — any time spent Running counts as healthy.
    let server = TestServer::start(
        r#"h: { model: "emulator", measure_period_ms: 0, faults: { panic_on_voltage: 1 },
               restart: { initial_delay_ms: 10, multiplier: 3, jitter: 0, reset_after_ms: 0 } },
           n: { model: "emulator", measure_period_ms: 0, faults: { panic_on_voltage: 1 },
               restart: { initial_delay_ms: 10, multiplier: 3, jitter: 0, reset_after_ms: 3600000 } }"#,
    )
    .await;
    let mut c = running_client(&server, "h").await;
    c.subscribe("power-supply/n/#").await;
    c.wait_status("n", "Running").await;
    for runner in ["h", "n"] {
        let mut delays = Vec::new();
        for round in 0..3 {
            c.publish(
                &format!("power-supply/{runner}/voltage/cmd"),
                format!(r#"{{"pza_id":"{round}","voltage":"1"}}"#),
            )
            .await;
            let seen = statuses_until(&mut c, runner, "Running").await;
            delays.extend(seen.iter().filter_map(|s| s["next_restart_ms"].as_u64()));
        }
        let expected: &[u64] = if runner == "h" {
            &[10, 10, 10]
        } else {
            &[10, 30, 90]
        };
        assert_eq!(delays, expected, "runner {runner}");
    }
    server.stop().await;
}

#[tokio::test]
async fn a_runner_in_long_backoff_does_not_hold_up_another() {
    let server = TestServer::start(
        r#"slow: { model: "emulator", measure_period_ms: 0, faults: { panic_on_voltage: 1 },
                  restart: { initial_delay_ms: 3600000, max_delay_ms: 3600000, jitter: 0 } },
           fast: { model: "emulator", measure_period_ms: 0, faults: { panic_on_voltage: 1 },
                  restart: { initial_delay_ms: 10, jitter: 0 } }"#,
    )
    .await;
    let mut c = running_client(&server, "slow").await;
    c.subscribe("power-supply/fast/#").await;
    c.wait_status("fast", "Running").await;

    send_voltage(&c, "slow", "a", "1").await;
    let restarting = c.wait_status("slow", "Restarting").await;
    assert_eq!(restarting["next_restart_ms"], 3_600_000);

    for round in 0..3 {
        c.publish(
            "power-supply/fast/voltage/cmd",
            format!(r#"{{"pza_id":"b{round}","voltage":"1"}}"#),
        )
        .await;
        let (_, between) = c
            .wait_for_collect("power-supply/fast/status", |v| v["status"] == "Running")
            .await;
        assert!(
            between
                .iter()
                .all(|m| !m.topic.starts_with("power-supply/slow/")),
            "{between:?}"
        );
        c.publish(
            "power-supply/fast/voltage/cmd",
            format!(r#"{{"pza_id":"ok{round}","voltage":"2"}}"#),
        )
        .await;
        assert_eq!(
            c.wait_reply(&format!("ok{round}")).await.json()["voltage"],
            "2.00"
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn shutdown_during_a_backoff_cancels_the_restart_promptly() {
    let mut server = TestServer::start(
        r#"b: { model: "emulator", measure_period_ms: 0, faults: { panic_on_voltage: 1 },
               restart: { initial_delay_ms: 3600000, max_delay_ms: 3600000, jitter: 0 } }"#,
    )
    .await;
    let mut c = running_client(&server, "b").await;
    send_voltage(&c, "b", "a", "1").await;
    c.wait_status("b", "Restarting").await;

    // The pending restart is an hour away: ending within the wait bound
    // shows the shutdown did not wait for it.
    let running = server.take();
    tokio::time::timeout(WAIT, running.shutdown())
        .await
        .expect("prompt shutdown")
        .unwrap();
    let stopped = c.wait_status("b", "Stopped").await;
    assert_eq!(stopped["restarts"], 0);
    assert_eq!(
        server.emulator.device("b").unwrap().initializations,
        1,
        "no restart happened"
    );
}

#[tokio::test]
async fn shutdown_aborts_a_hung_runner_after_the_timeout() {
    let mut server = TestServer::start_with(
        r#"hung: { model: "emulator", measure_period_ms: 0, command_timeout_ms: 3600000, faults: { hang_on_voltage: 9 } },
           fine: { model: "emulator", measure_period_ms: 0, on_shutdown: "output_off" }"#,
        "shutdown_timeout_ms: 300,",
    )
    .await;
    let mut c = running_client(&server, "hung").await;
    c.subscribe("power-supply/fine/#").await;
    c.wait_status("fine", "Running").await;
    send_voltage(&c, "hung", "h", "9").await;
    // The command is in progress once the runner stops answering others.
    c.publish(
        "power-supply/fine/state/cmd",
        r#"{"pza_id":"on","state":"ON"}"#,
    )
    .await;
    c.wait_reply("on").await;

    let started = Instant::now();
    tokio::time::timeout(WAIT, server.take().shutdown())
        .await
        .expect("service ends")
        .unwrap();
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(300),
        "aborted before the timeout: {took:?}"
    );
    c.wait_status("hung", "Stopped").await;
    assert!(!server.emulator.device("fine").unwrap().output_enabled);
}

#[tokio::test]
async fn output_off_on_shutdown_turns_the_output_off_before_stopped() {
    let mut server = TestServer::start(
        r#"off: { model: "emulator", measure_period_ms: 0, on_shutdown: "output_off" },
           keep: { model: "emulator", measure_period_ms: 0 }"#,
    )
    .await;
    let mut c = running_client(&server, "off").await;
    c.subscribe("power-supply/keep/#").await;
    c.wait_status("keep", "Running").await;
    for runner in ["off", "keep"] {
        c.publish(
            &format!("power-supply/{runner}/state/cmd"),
            format!(r#"{{"pza_id":"{runner}","state":"ON"}}"#),
        )
        .await;
        c.wait_reply(runner).await;
    }
    server.take().shutdown().await.unwrap();
    let (_, before) = c
        .wait_for_collect("power-supply/off/status", |v| v["status"] == "Stopped")
        .await;
    let off = before
        .iter()
        .find(|m| m.topic == "power-supply/off/state")
        .expect("state published before Stopped");
    assert_eq!(off.json()["state"], "OFF");
    assert!(!server.emulator.device("off").unwrap().output_enabled);
    assert!(server.emulator.device("keep").unwrap().output_enabled);
}

#[tokio::test]
async fn commands_queued_behind_a_crash_still_get_one_answer_each() {
    let server = TestServer::start(
        r#"q: { model: "emulator", measure_period_ms: 0, command_timeout_ms: 500,
               faults: { hang_on_voltage: 9 }, restart: { initial_delay_ms: 10, jitter: 0 } }"#,
    )
    .await;
    let mut c = running_client(&server, "q").await;
    send_voltage(&c, "q", "hang", "9").await;
    for i in 0..3 {
        c.publish(
            "power-supply/q/current/cmd",
            format!(r#"{{"pza_id":"queued{i}","current":"1"}}"#),
        )
        .await;
    }
    let hang = c.wait_reply("hang").await;
    assert!(hang.json()["message"]
        .as_str()
        .unwrap()
        .contains("did not answer within 500 ms"));
    for i in 0..3 {
        let reply = c.wait_reply(&format!("queued{i}")).await;
        assert_eq!(reply.topic, "power-supply/q/error");
        assert_eq!(
            reply.json()["message"],
            "not applied: the runner is restarting"
        );
    }
    c.wait_status("q", "Running").await;
    server.stop().await;
}

/// The panicking command gets its one answer, with its id, before the
/// restart; the commands behind it get one answer each, like behind an
/// error: refused if the runner had received them when it crashed, served
/// by the restarted runner if they arrived after.
#[tokio::test]
async fn a_panic_answers_its_command_once_and_each_queued_command_once() {
    let server = TestServer::start(
        r#"p: { model: "emulator", measure_period_ms: 0, faults: { panic_on_voltage: 13 },
               restart: { initial_delay_ms: 0, jitter: 0 } }"#,
    )
    .await;
    let mut c = running_client(&server, "p").await;
    send_voltage(&c, "p", "boom", "13").await;
    for i in 0..3 {
        c.publish(
            "power-supply/p/current/cmd",
            format!(r#"{{"pza_id":"after{i}","current":"0.{}"}}"#, i + 1),
        )
        .await;
    }
    let (_, mut before) = c
        .wait_for_collect("power-supply/p/status", |v| v["status"] == "Running")
        .await;
    let panicking = before
        .iter()
        .find(|m| m.topic == "power-supply/p/status")
        .map(Message::json)
        .expect("a Panicking status");
    assert_eq!(panicking["status"], "Panicking");
    assert!(panicking["panic_message"]
        .as_str()
        .is_some_and(|m| m.contains("emulator fault: panic_on_voltage 13")));
    // A fence: everything about the earlier commands comes before its reply.
    c.publish(
        "power-supply/p/state/cmd",
        r#"{"pza_id":"fence","state":"OFF"}"#,
    )
    .await;
    let (_, rest) = c
        .wait_for_collect("power-supply/p/state", |v| v["pza_id"] == "fence")
        .await;
    before.extend(rest);
    let answers = |id: &str| -> Vec<Message> {
        before
            .iter()
            .filter(|m| !m.topic.ends_with("/cmd"))
            .filter(|m| m.json()["pza_id"] == id)
            .cloned()
            .collect()
    };
    let boom = answers("boom");
    assert_eq!(boom.len(), 1, "{boom:?}");
    assert_eq!(boom[0].topic, "power-supply/p/error");
    assert_eq!(
        boom[0].json()["message"],
        "voltage: the driver panicked: emulator fault: panic_on_voltage 13"
    );
    for i in 0..3 {
        let answer = answers(&format!("after{i}"));
        assert_eq!(answer.len(), 1, "after{i}: {answer:?}");
        let json = answer[0].json();
        match answer[0].topic.as_str() {
            "power-supply/p/error" => {
                assert_eq!(json["message"], "not applied: the runner is restarting")
            }
            "power-supply/p/current" => assert_eq!(json["current"], format!("0.{}00", i + 1)),
            other => panic!("after{i} answered on {other}: {json}"),
        }
    }
    server.stop().await;
}

/// A server whose runner is `Failed` (its connection held by the stand-in
/// that answers its commands) still shuts down cleanly, with `Stopped` last.
#[tokio::test]
async fn a_failed_runner_does_not_hold_up_the_shutdown() {
    let server = TestServer::start(
        r#"f: { model: "emulator", measure_period_ms: 0, faults: { panic_on_voltage: 1 },
               restart: { max_retries: 0 } }"#,
    )
    .await;
    let mut c = running_client(&server, "f").await;
    send_voltage(&c, "f", "p", "1").await;
    c.wait_status("f", "Failed").await;
    server.stop().await;
    c.wait_status("f", "Stopped").await;
}

/// Every restart is logged with the runner, attempt, delay and cause, also
/// when the delay is zero and the runner starts again in the same turn.
#[tokio::test]
async fn a_restart_with_no_delay_is_logged_with_its_attempt_and_cause() {
    let mut logs = LogCapture::install();
    let server = TestServer::start(
        r#"z: { model: "emulator", measure_period_ms: 0, faults: { panic_on_voltage: 13 },
               restart: { initial_delay_ms: 0, jitter: 0 } }"#,
    )
    .await;
    let mut c = running_client(&server, "z").await;
    for round in 1..=2 {
        c.publish(
            "power-supply/z/voltage/cmd",
            format!(r#"{{"pza_id":"b{round}","voltage":"13"}}"#),
        )
        .await;
        let seen = statuses_until(&mut c, "z", "Running").await;
        assert_eq!(seen[1]["next_restart_ms"], 0);
        let attempt = format!("attempt={round}");
        logs.wait_for(
            &[
                "runner crashed; restarting",
                "runner=\"z\"",
                &attempt,
                "delay_ms=0",
                "panic_on_voltage 13",
            ],
            1,
        )
        .await;
    }
    server.stop().await;
}

/// A restart on the same connection publishes only the retained values that
/// changed: the broker still holds the others, so a crash costs no broker
/// work for them. The device kept its state through the crash (the
/// emulated device outlives its driver), so nothing is published again
/// between `Panicking` and `Running`, and the broker still holds the values.
#[tokio::test]
async fn a_restart_republishes_only_what_changed() {
    let server = TestServer::start(&format!(
        r#"p: {{ model: "emulator", measure_period_ms: 0, faults: {{ panic_on_voltage: 13 }}, {FAST} }}"#
    ))
    .await;
    let mut c = running_client(&server, "p").await;
    send_voltage(&c, "p", "v", "4.5").await;
    c.wait_reply("v").await;
    send_voltage(&c, "p", "boom", "13").await;
    // One subscription to P/# on the embedded broker sees the server's
    // messages in the order they were published.
    let mut between = Vec::new();
    loop {
        let m = c.next().await;
        if m.topic == "power-supply/p/status" && m.json()["status"] == "Running" {
            break;
        }
        // The test's own command comes back to it too.
        if !m.topic.ends_with("/cmd") {
            between.push(m.topic);
        }
    }
    assert_eq!(
        between,
        [
            "power-supply/p/error",
            "power-supply/p/status",
            "power-supply/p/status",
            "power-supply/p/status",
        ],
        "only the error reply and Panicking, Restarting, Initializing"
    );
    let mut late = server.client().await;
    late.subscribe("power-supply/p/+").await;
    let mut held = std::collections::BTreeMap::new();
    let wanted = ["status", "info", "state", "voltage", "current"]
        .map(|leaf| format!("power-supply/p/{leaf}"));
    while !wanted.iter().all(|t| held.contains_key(t)) {
        let m = late.next().await;
        assert!(m.retain, "{} not retained", m.topic);
        held.insert(m.topic.clone(), m.json());
    }
    assert_eq!(held["power-supply/p/voltage"]["voltage"], "4.50");
    assert_eq!(held["power-supply/p/state"]["state"], "OFF");
    assert_eq!(held["power-supply/p/status"]["status"], "Running");
    assert_eq!(held["power-supply/p/info"]["model"], "emulator");
    assert!(held.contains_key("power-supply/p/current"));
    server.stop().await;
}

/// A runner holds at most `MAILBOX_CAPACITY` commands waiting; one more is
/// answered at once, and every command still gets exactly one answer (the
/// ones waiting behind a command that hangs until its timeout are answered
/// when the runner restarts).
#[tokio::test]
async fn a_full_mailbox_answers_at_once_and_every_command_gets_one_answer() {
    use pza_power_supply::runners::mailbox::{full_reason, MAILBOX_CAPACITY};
    let server = TestServer::start(&format!(
        r#"p: {{ model: "emulator", measure_period_ms: 0, command_timeout_ms: 3000, faults: {{ hang_on_voltage: 7 }}, {FAST} }}"#
    ))
    .await;
    let mut c = running_client(&server, "p").await;
    send_voltage(&c, "p", "hang", "7").await;
    let extra = 20;
    let total = MAILBOX_CAPACITY + extra;
    for i in 0..total {
        c.publish(
            "power-supply/p/voltage/cmd",
            format!(r#"{{"pza_id":"q{i}","voltage":"1"}}"#),
        )
        .await;
    }
    let mut answers = std::collections::BTreeMap::new();
    let mut full = 0;
    while answers.len() < total + 1 {
        let m = c.next().await;
        if !m.topic.ends_with("/error") && !m.topic.ends_with("/voltage") {
            continue;
        }
        let v = m.json();
        let Some(id) = v["pza_id"].as_str() else {
            continue;
        };
        if id != "hang" && !id.starts_with('q') {
            continue;
        }
        if v["message"] == full_reason("p") {
            full += 1;
        }
        assert!(
            answers.insert(id.to_string(), v.clone()).is_none(),
            "{id} answered twice: {v}"
        );
    }
    // The ones beyond the capacity find it full; one more if the hanging
    // command was still waiting in the mailbox when the burst arrived.
    assert!(
        full == extra || full == extra + 1,
        "{full} full: {answers:?}"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_command_waiting_through_a_backoff_is_refused_if_the_next_start_fails_too() {
    // The first two initializations fail: a command sent during the first
    // backoff waits for the second start, which fails and answers it; one
    // sent during the second backoff is served by the third start.
    let server = TestServer::start(
        r#"w: { model: "emulator", measure_period_ms: 0, faults: { fail_initialize: 2 },
               restart: { initial_delay_ms: 300, multiplier: 1, jitter: 0, max_retries: 5 } }"#,
    )
    .await;
    let mut c = server.client().await;
    c.subscribe("power-supply/w/#").await;
    statuses_until(&mut c, "w", "Restarting").await;
    send_voltage(&c, "w", "c1", "3").await;
    let refused = c.wait_reply("c1").await;
    assert_eq!(refused.topic, "power-supply/w/error");
    assert_eq!(
        refused.json()["message"],
        "not applied: the runner is restarting"
    );
    send_voltage(&c, "w", "c2", "3").await;
    let served = c.wait_reply("c2").await;
    assert_eq!(served.topic, "power-supply/w/voltage");
    assert_eq!(served.json()["voltage"], "3.00");
    assert_eq!(server.emulator.device("w").unwrap().initializations, 3);
    server.stop().await;
}
