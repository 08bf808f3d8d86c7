//! SCPI runners in the config file: what loads, and what is refused with one
//! line naming the file, the key path and the reason.

use std::path::Path;

use pza_power_supply::config;
use pza_power_supply::drivers::DriverFactory;

fn parse(runners: &str) -> Result<config::ServerConfig, String> {
    let text = format!("{{ runners: {{ {runners} }} }}");
    config::parse(
        Path::new("bench.json5"),
        &text,
        &DriverFactory::with_builtin_models(),
    )
    .map_err(|e| e.to_string())
}

#[test]
fn the_spec_example_loads() {
    let config = parse(
        r#"
        "dut-5v":  { model: "rigol-dp832", channel: 1, tcp: { addr: "192.168.1.50", port: 5555 } },
        "dut-12v": { model: "rigol-dp832", channel: 2, tcp: { addr: "192.168.1.50", port: 5555 } },
        "logic":   { model: "dp832", channel: 3, tcp: { addr: "192.168.1.50" }, security_max_voltage: 3.6 },
        "rail":    { model: "keysight-e36312a", channel: 1, tcp: { addr: "192.168.1.51" } },
        "aux":     { model: "spd3303x", channel: 2, tcp: { addr: "192.168.1.52" }, pacing_ms: 150 },
        "serial":  { model: "dp832", channel: 1, serial_port: { name: "/dev/ttyUSB0" }, baud_rate: 115200 },
        "#,
    )
    .unwrap();
    assert_eq!(config.runners.len(), 6);
    assert_eq!(config.runners["logic"].limits.max_voltage, Some(3.6));
}

#[test]
fn bad_scpi_runners_are_refused_naming_the_key() {
    let dp832 = |extra: &str| format!(r#"psu: {{ model: "rigol-dp832", {extra} }}"#);
    let cases = [
        (
            dp832(r#"channel: 4, tcp: { addr: "10.0.0.1" }"#),
            "bench.json5: runners.psu.channel: 4 is not a channel of the rigol-dp832: it has channels 1 to 3",
        ),
        (
            dp832(r#"tcp: { addr: "10.0.0.1" }"#),
            "bench.json5: runners.psu.channel: is required: the output this runner drives (1 to 3 on a rigol-dp832)",
        ),
        (
            dp832("channel: 1"),
            "bench.json5: runners.psu: needs tcp: { addr: \"192.168.1.50\" } (port defaults to 5555) or serial_port: { name: \"/dev/ttyUSB0\" }",
        ),
        (
            dp832(r#"channel: 3, tcp: { addr: "10.0.0.1" }, security_max_voltage: 6"#),
            "bench.json5: runners.psu.security_max_voltage: 6 V is outside the rigol-dp832 channel 3 range 0..5 V",
        ),
        (
            r#"psu: { model: "e36312a", channel: 2, tcp: { addr: "10.0.0.1" }, security_max_current: 2 }"#.to_string(),
            "bench.json5: runners.psu.security_max_current: 2 A is outside the keysight-e36312a channel 2 range 0..1 A",
        ),
        (
            r#"psu: { model: "spd3303x", channel: 1, serial_port: { name: "/dev/ttyUSB0" } }"#.to_string(),
            "bench.json5: runners.psu.serial_port: the siglent-spd3303x has no serial port (its USB port is USBTMC, which is not a serial port): use tcp",
        ),
        (
            dp832(r#"channel: 1, tcp: { addr: "10.0.0.1", hostname: "x" }"#),
            "bench.json5: runners.psu.tcp.hostname: unknown field `hostname`, expected `addr` or `port`",
        ),
        (
            dp832(r#"channel: 1, tcp: { addr: "10.0.0.1" }, faults: {}"#),
            "bench.json5: runners.psu.faults: unknown key for model rigol-dp832 (known keys: model, description, security_min_voltage, security_max_voltage, security_min_current, security_max_current, measure_period_ms, command_timeout_ms, on_shutdown, restart, channel, tcp, serial_port, baud_rate, pacing_ms, read_timeout_ms)",
        ),
    ];
    for (runners, expected) in cases {
        assert_eq!(parse(&runners).unwrap_err(), expected, "{runners}");
    }
}

#[test]
fn runners_of_one_instrument_drive_distinct_channels_with_the_same_settings() {
    let err = parse(
        r#"
        a: { model: "rigol-dp832", channel: 1, tcp: { addr: "10.0.0.1" } },
        b: { model: "dp832", channel: 1, tcp: { addr: "10.0.0.1", port: 5555 } },
        "#,
    )
    .unwrap_err();
    assert_eq!(
        err,
        "bench.json5: runners.b: channel 1 of tcp 10.0.0.1:5555 is already driven by runner a"
    );
    let err = parse(
        r#"
        a: { model: "rigol-dp832", channel: 1, tcp: { addr: "10.0.0.1" } },
        b: { model: "keysight-e36312a", channel: 2, tcp: { addr: "10.0.0.1", port: 5555 } },
        "#,
    )
    .unwrap_err();
    assert!(err.starts_with("bench.json5: runners.b: tcp 10.0.0.1:5555 is also driven by runner a with other settings"), "{err}");
    assert!(
        err.contains("model rigol-dp832") && err.contains("model keysight-e36312a"),
        "{err}"
    );
    let err = parse(
        r#"
        a: { model: "spd3303x", channel: 1, tcp: { addr: "10.0.0.1" } },
        b: { model: "spd3303x", channel: 2, tcp: { addr: "10.0.0.1" }, pacing_ms: 50 },
        "#,
    )
    .unwrap_err();
    assert!(
        err.contains("pacing_ms 100") && err.contains("pacing_ms 50"),
        "{err}"
    );
    // The same channel number on two instruments is fine.
    parse(
        r#"
        a: { model: "spd3303x", channel: 1, tcp: { addr: "10.0.0.1" } },
        b: { model: "spd3303x", channel: 1, tcp: { addr: "10.0.0.2" } },
        "#,
    )
    .unwrap();
}

#[test]
fn the_readme_example_loads() {
    const README: &str = include_str!("../../../README.md");
    let section = README
        .split("### Model `rigol-dp832` / `siglent-spd3303x` / `keysight-e36312a`")
        .nth(1)
        .expect("the README has the SCPI section");
    let example = section
        .split("```json5\n")
        .nth(1)
        .and_then(|s| s.split("```").next())
        .expect("the SCPI section has a json5 example");
    let text = format!("{{ {example} }}");
    let config = config::parse(
        Path::new("readme.json5"),
        &text,
        &DriverFactory::with_builtin_models(),
    )
    .unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_eq!(config.runners.len(), 4);
}
