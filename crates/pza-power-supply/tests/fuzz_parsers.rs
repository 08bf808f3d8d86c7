//! Property tests (proptest) of the two parsers that take bytes from
//! outside: the MQTT command payload parser and the KD3005P reply parser.
//! They never panic, and what they accept is finite and plain.
//!
//! Each property runs `PROPTEST_CASES` cases (default 1000 here, a second or
//! two in all); a longer run: `PROPTEST_CASES=200000 cargo test -p
//! pza-power-supply --test fuzz_parsers --release`.

use proptest::prelude::*;
use proptest::test_runner::Config;
use pza_power_supply::drivers::kd3005p::protocol::{
    parse_identity, parse_status, parse_value, Query, VALUE_REPLY_LEN,
};
use pza_power_supply::drivers::{Amps, Volts};
use pza_power_supply::protocol::payload::{parse_command, parse_restart};
use pza_power_supply::protocol::{Attribute, Request};
use serde_json::{json, Value};

fn config() -> Config {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    Config {
        cases,
        // Failures are reported with their minimal input; no files are
        // written into the source tree.
        failure_persistence: None,
        ..Config::default()
    }
}

fn attribute() -> impl Strategy<Value = Attribute> {
    prop::sample::select(Attribute::ALL.to_vec())
}

/// Strings from an alphabet that makes numbers and near-numbers likely.
fn numberish() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop::sample::select(vec![
            '0', '1', '5', '9', '.', '-', '+', 'e', 'E', ' ', 'V', 'x', 'N', 'a', 'I', 'n', 'f',
            ',', '_',
        ]),
        0..24,
    )
    .prop_map(String::from_iter)
}

/// Arbitrary JSON values, nested a few levels.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>().prop_map(|f| json!(f)),
        numberish().prop_map(Value::String),
        prop::sample::select(vec!["ON", "OFF", "on", "", "5.0"]).prop_map(|s| json!(s)),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-z_]{0,8}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// JSON object payloads built from likely and unlikely keys, duplicates
/// possible (written by hand, as a map could not hold them).
fn object_payload() -> impl Strategy<Value = String> {
    let key = prop_oneof![
        Just("pza_id".to_string()),
        Just("state".to_string()),
        Just("voltage".to_string()),
        Just("current".to_string()),
        "[a-z_]{0,6}",
    ];
    prop::collection::vec((key, json_value()), 0..5).prop_map(|fields| {
        let body: Vec<String> = fields
            .iter()
            .map(|(k, v)| format!("{}:{}", json!(k), v))
            .collect();
        format!("{{{}}}", body.join(","))
    })
}

/// What every accepted command must satisfy.
fn check_accepted(attribute: Attribute, payload: &[u8]) {
    if let Ok(command) = parse_command(attribute, payload) {
        assert!(command.pza_id.is_some(), "accepted without a pza_id");
        match command.request {
            Request::SetVoltage(Volts(v)) | Request::SetCurrent(Amps(v)) => {
                assert!(v.is_finite(), "{v}");
                // Negative zero is turned into zero.
                assert!(v != 0.0 || v.is_sign_positive(), "negative zero");
            }
            Request::SetOutput(_) => assert_eq!(attribute, Attribute::State),
        }
        // The payload was a JSON object with exactly pza_id and the field.
        let value: Value = serde_json::from_slice(payload).expect("accepted payloads are JSON");
        let object = value.as_object().expect("accepted payloads are objects");
        assert_eq!(object.len(), 2, "{value}");
        assert!(object.contains_key("pza_id") && object.contains_key(attribute.name()));
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn any_bytes_never_panic(attribute in attribute(), payload in prop::collection::vec(any::<u8>(), 0..256)) {
        check_accepted(attribute, &payload);
        let _ = parse_restart(&payload);
    }

    #[test]
    fn any_json_object_never_panics(attribute in attribute(), payload in object_payload()) {
        check_accepted(attribute, payload.as_bytes());
        let _ = parse_restart(payload.as_bytes());
    }

    #[test]
    fn number_strings_are_accepted_only_when_plain_decimals(text in numberish()) {
        let payload = json!({"pza_id": "p", "voltage": text}).to_string();
        match parse_command(Attribute::Voltage, payload.as_bytes()) {
            Ok(command) => {
                let unsigned = text.strip_prefix('-').unwrap_or(&text);
                prop_assert!(unsigned.bytes().all(|b| b.is_ascii_digit() || b == b'.'), "{text:?} accepted");
                prop_assert!(unsigned.bytes().filter(|b| *b == b'.').count() <= 1);
                let expected: f64 = text.parse().expect("plain decimals parse");
                let expected = if expected == 0.0 { 0.0 } else { expected };
                prop_assert_eq!(command.request, Request::SetVoltage(Volts(expected)));
            }
            Err(rejection) => {
                prop_assert_eq!(rejection.pza_id.as_deref(), Some("p"));
                prop_assert!(rejection.message.starts_with("field `voltage`"), "{}", rejection.message);
            }
        }
    }

    #[test]
    fn finite_numbers_round_trip(v in any::<f64>().prop_filter("normal or zero", |v| v.is_normal() || *v == 0.0), decimals in 0usize..6) {
        let as_number = format!(r#"{{"pza_id":"n","current":{}}}"#, json!(v));
        let command = parse_command(Attribute::Current, as_number.as_bytes()).expect("a finite JSON number");
        // serde_json reads floats to within one unit in the last place
        // (exact round trips need its `float_roundtrip` feature); subnormal
        // numbers, read less precisely still, are left out.
        match command.request {
            Request::SetCurrent(Amps(read)) => {
                prop_assert!((read - v).abs() <= v.abs() * 1e-15, "{v} read as {read}");
                prop_assert!(read != 0.0 || read.is_sign_positive());
            }
            other => prop_assert!(false, "{other:?}"),
        }
        let text = format!("{:.*}", decimals, v);
        let as_string = json!({"pza_id": "s", "current": text}).to_string();
        let command = parse_command(Attribute::Current, as_string.as_bytes()).expect("a plain decimal");
        let expected: f64 = text.parse().expect("parses");
        prop_assert_eq!(command.request, Request::SetCurrent(Amps(if expected == 0.0 { 0.0 } else { expected })));
    }

    #[test]
    fn kd3005p_replies_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..80)) {
        for query in [Query::VoltageSetpoint, Query::CurrentLimit, Query::OutputVoltage, Query::OutputCurrent, Query::Status, Query::Identity] {
            if let Ok(v) = parse_value(query, &bytes) {
                prop_assert!(v.is_finite() && v >= 0.0, "{query:?} {bytes:?} -> {v}");
                prop_assert!(bytes[..VALUE_REPLY_LEN.min(bytes.len())].iter().all(|b| b.is_ascii_digit() || *b == b'.'));
            }
        }
        if parse_status(&bytes).is_ok() {
            prop_assert_eq!(bytes.len(), 1);
        }
        if let Ok(identity) = parse_identity(&bytes) {
            prop_assert!(!identity.is_empty());
            prop_assert!(!identity.chars().any(char::is_control));
            prop_assert_eq!(identity.trim(), identity.as_str());
        }
    }

    #[test]
    fn kd3005p_value_replies_of_five_characters(reply in prop::collection::vec(prop::sample::select(b"0123456789.-+ e".to_vec()), 5..=6)) {
        let result = parse_value(Query::CurrentLimit, &reply);
        let value = &reply[..5];
        let well_formed = value.iter().all(|b| b.is_ascii_digit() || *b == b'.')
            && value.iter().filter(|b| **b == b'.').count() <= 1
            && value.iter().any(u8::is_ascii_digit);
        prop_assert_eq!(result.is_ok(), well_formed, "{:?}", String::from_utf8_lossy(&reply));
        // Only ISET1? tolerates the stray sixth byte.
        if reply.len() == 6 {
            prop_assert!(parse_value(Query::VoltageSetpoint, &reply).is_err());
        }
    }

    #[test]
    fn kd3005p_setpoints_read_back_as_formatted(centivolts in 0u32..=3000, milliamps in 0u32..=5000) {
        let volts = f64::from(centivolts) / 100.0;
        let amps = f64::from(milliamps) / 1000.0;
        let v = parse_value(Query::VoltageSetpoint, format!("{volts:05.2}").as_bytes()).expect("a voltage reply");
        prop_assert!((v - volts).abs() < 1e-9);
        let a = parse_value(Query::CurrentLimit, format!("{amps:05.3}").as_bytes()).expect("a current reply");
        prop_assert!((a - amps).abs() < 1e-9);
    }
}
