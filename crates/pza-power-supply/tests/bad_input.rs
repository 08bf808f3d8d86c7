//! Malformed and hostile MQTT payloads, over a real broker and a real client:
//! each gets exactly the answer SPEC.md gives (one error with the right
//! `pza_id`, or, for unknown topics, nothing), and the runner goes on
//! answering normal commands.

mod common;

use common::{running_client, Client, Message, TestServer};
use pza_power_supply::protocol::ids::SERVER_ID_PREFIX;
use serde_json::Value;

const EMU: &str = r#"emu: { model: "emulator", measure_period_ms: 0, security_max_voltage: 30, security_max_current: 3 }"#;
const P: &str = "power-supply/emu";

/// What a case must get.
#[derive(Debug)]
enum Expect {
    /// Exactly one message on `P/error`, with this `pza_id` (`None`: a
    /// fresh server-made one, as the payload has no readable id) and a
    /// message containing this text; no attribute changes.
    Error(Option<&'static str>, &'static str),
    /// Exactly one reply on `P/<attribute>` with this value of the field,
    /// and no error.
    Reply(&'static str, &'static str),
    /// Nothing at all.
    Ignored,
}

struct Case {
    name: &'static str,
    /// Topic after `P/`.
    topic: &'static str,
    payload: Vec<u8>,
    expect: Expect,
}

fn case(name: &'static str, topic: &'static str, payload: &str, expect: Expect) -> Case {
    Case {
        name,
        topic,
        payload: payload.as_bytes().to_vec(),
        expect,
    }
}

fn voltage(name: &'static str, payload: &str, expect: Expect) -> Case {
    case(name, "voltage/cmd", payload, expect)
}

use Expect::{Error, Ignored, Reply};

fn cases() -> Vec<Case> {
    let mib = 1024 * 1024;
    let deep_objects = format!("{}1{}", r#"{"a":"#.repeat(100_000), "}".repeat(100_000));
    let deep_arrays = format!("{}{}", "[".repeat(200_000), "]".repeat(200_000));
    let big_pad = format!(
        r#"{{"pza_id":"big1","voltage":"5","pad":"{}"}}"#,
        "x".repeat(mib)
    );
    let big_number = format!(r#"{{"pza_id":"big2","voltage":"{}"}}"#, "1".repeat(mib));
    let long_id = "i".repeat(10_000);
    let long_id_payload = format!(r#"{{"pza_id":"{long_id}","voltage":true}}"#);
    vec![
        // Truncated or broken JSON: no pza_id can be trusted.
        voltage("truncated value", r#"{"pza_id":"t1","voltage":"5"#, Error(Some("t1"), "payload is not valid JSON")),
        voltage("truncated object", r#"{"pza_id":"t2""#, Error(Some("t2"), "payload is not valid JSON")),
        voltage("lone brace", "{", Error(None, "payload is not valid JSON")),
        voltage("trailing garbage", r#"{"pza_id":"t3","voltage":"5"} x"#, Error(Some("t3"), "payload is not valid JSON")),
        voltage("two objects", r#"{"pza_id":"t4","voltage":"5"}{}"#, Error(Some("t4"), "payload is not valid JSON")),
        voltage("single quotes", r#"{'pza_id':'t5','voltage':'5'}"#, Error(None, "payload is not valid JSON")),
        voltage("comment", r#"{"pza_id":"t6", /* c */ "voltage":"5"}"#, Error(Some("t6"), "payload is not valid JSON")),
        // Not an object.
        voltage("array", r#"["pza_id","a"]"#, Error(None, "payload must be a JSON object")),
        voltage("string", r#""voltage""#, Error(None, "payload must be a JSON object")),
        voltage("null", "null", Error(None, "payload must be a JSON object")),
        voltage("number", "5", Error(None, "payload must be a JSON object")),
        // Wrong types.
        voltage("bool value", r#"{"pza_id":"w1","voltage":true}"#, Error(Some("w1"), "field `voltage` must be a number or a string holding a decimal number, not a boolean")),
        voltage("null value", r#"{"pza_id":"w2","voltage":null}"#, Error(Some("w2"), "not null")),
        voltage("array value", r#"{"pza_id":"w3","voltage":[5]}"#, Error(Some("w3"), "not an array")),
        voltage("object value", r#"{"pza_id":"w4","voltage":{"v":5}}"#, Error(Some("w4"), "not an object")),
        // Not finite, spelled in strings and as numbers.
        voltage("NaN string", r#"{"pza_id":"n1","voltage":"NaN"}"#, Error(Some("n1"), "\"NaN\" is not a plain decimal number")),
        voltage("nan string", r#"{"pza_id":"n2","voltage":"nan"}"#, Error(Some("n2"), "is not a plain decimal number")),
        voltage("Infinity string", r#"{"pza_id":"n3","voltage":"Infinity"}"#, Error(Some("n3"), "is not a plain decimal number")),
        voltage("-inf string", r#"{"pza_id":"n4","voltage":"-inf"}"#, Error(Some("n4"), "is not a plain decimal number")),
        voltage("NaN bare", r#"{"pza_id":"n5","voltage":NaN}"#, Error(Some("n5"), "payload is not valid JSON")),
        voltage("1e309", r#"{"pza_id":"n6","voltage":1e309}"#, Error(Some("n6"), "payload is not valid JSON")),
        voltage("-1e309", r#"{"pza_id":"n7","voltage":-1e309}"#, Error(Some("n7"), "payload is not valid JSON")),
        voltage("1e309 string", r#"{"pza_id":"n8","voltage":"1e309"}"#, Error(Some("n8"), "is not a plain decimal number")),
        voltage("400 nines", &format!(r#"{{"pza_id":"n9","voltage":"{}"}}"#, "9".repeat(400)), Error(Some("n9"), "value is not a finite number")),
        // Negative zero is zero.
        voltage("negative zero number", r#"{"pza_id":"z1","voltage":-0}"#, Reply("voltage", "0.00")),
        voltage("negative zero string", r#"{"pza_id":"z2","voltage":"-0.0"}"#, Reply("voltage", "0.00")),
        // Huge numbers: finite, so the security limit answers.
        voltage("1e300", r#"{"pza_id":"h1","voltage":1e300}"#, Error(Some("h1"), "exceeds security_max_voltage 30")),
        voltage("u64 overflow", r#"{"pza_id":"h2","voltage":18446744073709551616}"#, Error(Some("h2"), "exceeds security_max_voltage 30")),
        voltage("huge string", r#"{"pza_id":"h3","voltage":"99999999999999999999"}"#, Error(Some("h3"), "exceeds security_max_voltage 30")),
        voltage("just above", r#"{"pza_id":"h4","voltage":"30.001"}"#, Error(Some("h4"), "voltage 30.001 exceeds security_max_voltage 30")),
        voltage("negative", r#"{"pza_id":"h5","voltage":-1}"#, Error(Some("h5"), "voltage -1 is below security_min_voltage 0")),
        // Units, signs and other spellings.
        voltage("unit", r#"{"pza_id":"u1","voltage":"5V"}"#, Error(Some("u1"), "\"5V\" is not a plain decimal number")),
        voltage("unit with space", r#"{"pza_id":"u2","voltage":"5 V"}"#, Error(Some("u2"), "is not a plain decimal number")),
        voltage("leading space", r#"{"pza_id":"u3","voltage":" 5"}"#, Error(Some("u3"), "is not a plain decimal number")),
        voltage("plus sign", r#"{"pza_id":"u4","voltage":"+5"}"#, Error(Some("u4"), "is not a plain decimal number")),
        voltage("hex", r#"{"pza_id":"u5","voltage":"0x10"}"#, Error(Some("u5"), "is not a plain decimal number")),
        voltage("comma", r#"{"pza_id":"u6","voltage":"5,0"}"#, Error(Some("u6"), "is not a plain decimal number")),
        voltage("empty string", r#"{"pza_id":"u7","voltage":""}"#, Error(Some("u7"), "\"\" is not a plain decimal number")),
        voltage("lone dot", r#"{"pza_id":"u8","voltage":"."}"#, Error(Some("u8"), "is not a plain decimal number")),
        // Keys.
        voltage("unknown key", r#"{"pza_id":"k1","voltage":"5","unit":"V"}"#, Error(Some("k1"), "unknown field `unit` (expected: pza_id, voltage)")),
        voltage("duplicate value key", r#"{"pza_id":"k2","voltage":"5","voltage":"6"}"#, Error(Some("k2"), "duplicate field `voltage`")),
        voltage("duplicate pza_id", r#"{"pza_id":"k3","pza_id":"k4","voltage":"5"}"#, Error(Some("k3"), "duplicate field `pza_id`")),
        voltage("missing value", r#"{"pza_id":"k5"}"#, Error(Some("k5"), "missing field `voltage`")),
        voltage("wrong attribute field", r#"{"pza_id":"k6","current":"1"}"#, Error(Some("k6"), "unknown field `current`")),
        voltage("key with control chars", "{\"pza_id\":\"k7\",\"volt\\u0000age\":\"5\"}", Error(Some("k7"), "unknown field `volt\\u{0}age`")),
        // pza_id.
        voltage("missing pza_id", r#"{"voltage":"5"}"#, Error(None, "missing field `pza_id`")),
        voltage("numeric pza_id", r#"{"pza_id":7,"voltage":"5"}"#, Error(None, "field `pza_id` must be a string, not a number")),
        voltage("null pza_id", r#"{"pza_id":null,"voltage":"5"}"#, Error(None, "field `pza_id` must be a string, not null")),
        voltage("object pza_id", r#"{"pza_id":{"id":"x"},"voltage":"5"}"#, Error(None, "field `pza_id` must be a string, not an object")),
        Case { name: "10 kB pza_id", topic: "voltage/cmd", payload: long_id_payload.into_bytes(), expect: Error(None, "__long_id__") },
        // Empty, not UTF-8, huge, deep.
        voltage("empty payload", "", Error(None, "payload is empty: expected a JSON object")),
        voltage("blank payload", " \n\t ", Error(None, "payload is empty: expected a JSON object")),
        Case { name: "not UTF-8", topic: "voltage/cmd", payload: vec![0xff, 0xfe, 0xfd], expect: Error(None, "payload is not valid UTF-8") },
        Case { name: "UTF-8 then garbage", topic: "voltage/cmd", payload: [br#"{"pza_id":"x8","voltage":"5"#.as_slice(), &[0xc3, 0x28], b"\"}"].concat(), expect: Error(None, "payload is not valid UTF-8") },
        Case { name: "byte order mark", topic: "voltage/cmd", payload: [&[0xef, 0xbb, 0xbf][..], br#"{"pza_id":"b1","voltage":"5"}"#].concat(), expect: Error(None, "payload is not valid JSON") },
        Case { name: "1 MiB unknown field", topic: "voltage/cmd", payload: big_pad.into_bytes(), expect: Error(Some("big1"), "unknown field `pad`") },
        Case { name: "1 MiB of digits", topic: "voltage/cmd", payload: big_number.into_bytes(), expect: Error(Some("big2"), "value is not a finite number") },
        Case { name: "100k nested objects", topic: "voltage/cmd", payload: deep_objects.into_bytes(), expect: Error(None, "recursion limit exceeded") },
        Case { name: "200k nested arrays", topic: "voltage/cmd", payload: deep_arrays.into_bytes(), expect: Error(None, "payload must be a JSON object") },
        // The other attributes.
        case("state lower case", "state/cmd", r#"{"pza_id":"s1","state":"on"}"#, Error(Some("s1"), "field `state` must be \"ON\" or \"OFF\", not \"on\"")),
        case("state bool", "state/cmd", r#"{"pza_id":"s2","state":true}"#, Error(Some("s2"), "not a boolean")),
        case("state number", "state/cmd", r#"{"pza_id":"s3","state":1}"#, Error(Some("s3"), "not a number")),
        case("state padded", "state/cmd", r#"{"pza_id":"s4","state":"ON "}"#, Error(Some("s4"), "not \"ON \"")),
        case("current negative", "current/cmd", r#"{"pza_id":"c1","current":"-0.5"}"#, Error(Some("c1"), "current -0.5 is below security_min_current 0")),
        case("current over", "current/cmd", r#"{"pza_id":"c2","current":3.5}"#, Error(Some("c2"), "current 3.5 exceeds security_max_current 3")),
        case("current text", "current/cmd", r#"{"pza_id":"c3","current":"one"}"#, Error(Some("c3"), "\"one\" is not a plain decimal number")),
        // The supervisor's restart command answers alone (the runner ignores it).
        case("restart unknown key", "restart/cmd", r#"{"pza_id":"r1","now":true}"#, Error(Some("r1"), "unknown field `now` (expected: pza_id)")),
        case("restart broken JSON", "restart/cmd", r#"{"pza_id":"r2""#, Error(Some("r2"), "payload is not valid JSON")),
        // Measure commands: a reply on `P/measure`, or one error.
        case("measure command with a value", "measure/cmd", r#"{"pza_id":"x2","voltage":"5"}"#, Error(Some("x2"), "unknown field `voltage` (expected: pza_id)")),
        case("measure command", "measure/cmd", r#"{"pza_id":"x3"}"#, Reply("pza_id", "x3")),
        case("measure command without id", "measure/cmd", "{}", Error(None, "missing field `pza_id`")),
        // Unknown topics: ignored (and logged).
        case("unknown attribute", "power/cmd", r#"{"pza_id":"x1","power":"5"}"#, Ignored),
        case("upper-case attribute", "VOLTAGE/cmd", r#"{"pza_id":"x3","voltage":"5"}"#, Ignored),
        case("deeper command topic", "voltage/cmd/now", r#"{"pza_id":"x4","voltage":"5"}"#, Ignored),
        case("command without attribute", "cmd", r#"{"pza_id":"x5","voltage":"5"}"#, Ignored),
        case("garbage on unknown topic", "foo/cmd", "\u{0}\u{1}not json", Ignored),
    ]
}

/// Publishes a normal command and returns every message seen before its
/// reply (excluding commands, which the client sees as it subscribes to
/// `P/#`). The runner handles commands in order, so the answer to anything
/// sent before is among them.
async fn until_fence(c: &mut Client, n: usize) -> Vec<Message> {
    let id = format!("fence-{n}");
    c.publish(
        &format!("{P}/state/cmd"),
        format!(r#"{{"pza_id":"{id}","state":"OFF"}}"#),
    )
    .await;
    let (_, seen) = c
        .wait_for_collect(&format!("{P}/state"), |v| v["pza_id"] == id.as_str())
        .await;
    seen.into_iter()
        .filter(|m| !m.topic.ends_with("/cmd") && !m.topic.ends_with("/cmd/now"))
        .collect()
}

#[tokio::test]
async fn every_hostile_payload_gets_the_answer_the_spec_gives() {
    let cases = cases();
    assert!(cases.len() >= 40, "{} cases", cases.len());
    let server = TestServer::start(EMU).await;
    let mut c = running_client(&server, "emu").await;

    for (n, case) in cases.iter().enumerate() {
        c.publish(&format!("{P}/{}", case.topic), case.payload.clone())
            .await;
        let mut seen = until_fence(&mut c, n).await;
        if case.topic == "restart/cmd" {
            // The supervisor answers, not the runner: its reply may come
            // after the fence, wait for it.
            if seen.iter().all(|m| m.topic != format!("{P}/error")) {
                let error = c.wait_for(&format!("{P}/error"), |_| true).await;
                seen.push(Message {
                    topic: format!("{P}/error"),
                    payload: error.to_string().into_bytes(),
                    retain: false,
                });
            }
        }
        let errors: Vec<Value> = seen
            .iter()
            .filter(|m| m.topic == format!("{P}/error"))
            .map(Message::json)
            .collect();
        let replies: Vec<&Message> = seen
            .iter()
            .filter(|m| m.topic != format!("{P}/error") && !m.topic.ends_with("/status"))
            .collect();
        let name = case.name;
        match &case.expect {
            Error(pza_id, text) => {
                assert_eq!(errors.len(), 1, "{name}: errors {errors:?}");
                assert!(replies.is_empty(), "{name}: replies {replies:?}");
                let error = &errors[0];
                match pza_id {
                    Some(id) => assert_eq!(error["pza_id"], *id, "{name}: {error}"),
                    None if *text == "__long_id__" => {}
                    None => assert!(
                        error["pza_id"]
                            .as_str()
                            .is_some_and(|id| id.starts_with(SERVER_ID_PREFIX)),
                        "{name}: {error}"
                    ),
                }
                let message = error["message"].as_str().expect("message is a string");
                if *text == "__long_id__" {
                    // A long string pza_id is echoed as it came.
                    assert_eq!(error["pza_id"].as_str().map(str::len), Some(10_000));
                    assert!(message.contains("not a boolean"), "{name}: {message}");
                } else {
                    assert!(message.contains(text), "{name}: {message:?} lacks {text:?}");
                }
                assert!(
                    message.len() < 400,
                    "{name}: message of {} bytes",
                    message.len()
                );
            }
            Reply(field, value) => {
                assert!(errors.is_empty(), "{name}: errors {errors:?}");
                assert_eq!(replies.len(), 1, "{name}: replies {replies:?}");
                assert_eq!(replies[0].json()[*field], *value, "{name}");
            }
            Ignored => {
                assert!(errors.is_empty(), "{name}: errors {errors:?}");
                assert!(replies.is_empty(), "{name}: replies {replies:?}");
            }
        }
    }

    // Still serving, never restarted, and nothing rejected reached the device.
    c.publish(
        &format!("{P}/voltage/cmd"),
        r#"{"pza_id":"after","voltage":"12"}"#,
    )
    .await;
    assert_eq!(c.wait_reply("after").await.json()["voltage"], "12.00");
    let device = server.emulator.device("emu").expect("device");
    assert_eq!(device.voltage_setpoint, 12.0);
    let mut late = server.client().await;
    late.subscribe(&format!("{P}/status")).await;
    let status = late.wait_for(&format!("{P}/status"), |_| true).await;
    assert_eq!(status["status"], "Running");
    assert_eq!(status["restarts"], 0);
    server.stop().await;
}
