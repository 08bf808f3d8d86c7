//! Bad config files, written to disk and loaded as the server loads them:
//! each is refused with one line naming the file, the key path and the
//! reason. Also the TLS keys: paths relative to the config file, and a bad
//! TLS file refused by the real binary before anything starts.

mod common;
mod mosquitto;

use std::path::{Path, PathBuf};

use mosquitto::TestCerts;
use pza_power_supply::config::{self, ConfigPath, ServerConfig};
use pza_toolkit::temp::TempDir;

fn load(path: &Path) -> Result<ServerConfig, String> {
    let (factory, _) = common::factory();
    config::load(
        &ConfigPath {
            path: path.to_path_buf(),
            is_default: false,
        },
        &factory,
    )
    .map_err(|e| e.to_string())
}

/// Where a message must point.
enum At {
    /// A key path, e.g. `runners.psu.model`.
    Key(&'static str),
    /// A JSON5 syntax error, at this line.
    Line(usize),
}

struct Case {
    name: &'static str,
    text: String,
    at: At,
    reason: String,
}

fn case(name: &'static str, text: &str, at: At, reason: &str) -> Case {
    Case {
        name,
        text: text.to_string(),
        at,
        reason: reason.to_string(),
    }
}

/// A config with an external broker and `tls` as the body of `broker.tls`.
fn tls_config(tls: &str) -> String {
    format!(
        r#"{{ broker: {{ use_builtin: false, tcp: {{ addr: "broker.lab", port: 8883 }}, tls: {{ {tls} }} }} }}"#
    )
}

fn emu(keys: &str) -> String {
    format!(r#"{{ runners: {{ psu: {{ model: "emulator", {keys} }} }} }}"#)
}

fn cases(dir: &Path) -> Vec<Case> {
    let files = TestCerts::generate().write(dir);
    let not_pem = dir.join("not-pem.txt");
    std::fs::write(&not_pem, "hello\n").expect("write");
    let (ca, cert, key) = (
        files.ca.display().to_string(),
        files.client_cert.display().to_string(),
        files.client_key.display().to_string(),
    );
    let missing = dir.join("missing.pem").display().to_string();
    use At::{Key, Line};
    vec![
        case("syntax error", "{\n  broker: {\n    use_builtin: true,\n  \n", Line(5), "JSON5 syntax error"),
        case("missing comma", "{\n  broker: { use_builtin: true }\n  runners: {}\n}", Line(2), "JSON5 syntax error"),
        case("unknown top-level key", "{ brokr: {} }", Key("brokr"), "unknown field `brokr`"),
        case("unknown broker key", "{ broker: { host: \"x\" } }", Key("broker.host"), "unknown field `host`"),
        case("port as a string", r#"{ broker: { tcp: { port: "1883" } } }"#, Key("broker.tcp.port"), "invalid type: string \"1883\", expected a whole number from 0 to 65535"),
        case("broker as a number", "{ broker: 5 }", Key("broker"), "invalid type: integer `5`, expected an object ({ ... })"),
        case("runners as an array", "{ runners: [] }", Key("runners"), "invalid type: array, expected an object ({ ... })"),
        case("port out of range", "{ broker: { tcp: { port: 70000 } } }", Key("broker.tcp.port"), "70000"),
        case("embedded broker on a host name", r#"{ broker: { use_builtin: true, tcp: { addr: "broker.lab" } } }"#, Key("broker.tcp.addr"), "\"broker.lab\" is not an IP address to bind the embedded broker to"),
        case("password without user", r#"{ broker: { use_builtin: false, password: "x" } }"#, Key("broker.password"), "is set without broker.username"),
        case("namespace wildcard", r#"{ broker: { namespace: "lab/+" } }"#, Key("broker.namespace"), "\"lab/+\" must be topic levels of A-Z, a-z, 0-9, '_' or '-', joined by '/'"),
        case("namespace empty level", r#"{ broker: { namespace: "lab//3" } }"#, Key("broker.namespace"), "must be topic levels"),
        case("namespace empty", r#"{ broker: { namespace: "" } }"#, Key("broker.namespace"), "must not be empty (leave it out for no namespace)"),
        case("TLS on the embedded broker", &format!(r#"{{ broker: {{ use_builtin: true, tls: {{ ca_file: "{ca}" }} }} }}"#), Key("broker.tls"), "TLS is for an external broker (use_builtin: false); the embedded broker speaks plain TCP"),
        case("TLS without ca_file", &tls_config(""), Key("broker.tls"), "missing field `ca_file`"),
        case("TLS unknown key", &tls_config(&format!(r#"ca_file: "{ca}", verify: false"#)), Key("broker.tls.verify"), "unknown field `verify`"),
        case("TLS CA missing", &tls_config(&format!(r#"ca_file: "{missing}""#)), Key("broker.tls.ca_file"), &format!("cannot read {missing}: No such file or directory")),
        case("TLS CA not PEM", &tls_config(&format!(r#"ca_file: "{}""#, not_pem.display())), Key("broker.tls.ca_file"), "no PEM certificate in the file"),
        case("TLS CA is a key", &tls_config(&format!(r#"ca_file: "{key}""#)), Key("broker.tls.ca_file"), "no PEM certificate in the file"),
        case("TLS cert without key", &tls_config(&format!(r#"ca_file: "{ca}", client_cert_file: "{cert}""#)), Key("broker.tls.client_cert_file"), "is set without broker.tls.client_key_file"),
        case("TLS key without cert", &tls_config(&format!(r#"ca_file: "{ca}", client_key_file: "{key}""#)), Key("broker.tls.client_key_file"), "is set without broker.tls.client_cert_file"),
        case("TLS key is a certificate", &tls_config(&format!(r#"ca_file: "{ca}", client_cert_file: "{cert}", client_key_file: "{cert}""#)), Key("broker.tls.client_key_file"), "no PEM private key in the file"),
        case("TLS relative path", &tls_config(r#"ca_file: "certs/ca.pem""#), Key("broker.tls.ca_file"), &format!("cannot read {}: No such file or directory", dir.join("certs/ca.pem").display())),
        case("toggle key of two characters", r#"{ tui: { power_toggle_key: "pp" } }"#, Key("tui.power_toggle_key"), "must be exactly one character"),
        case("toggle key taken by the UI", r#"{ tui: { power_toggle_key: "q" } }"#, Key("tui.power_toggle_key"), "\"q\" is taken by the terminal UI"),
        case("restart multiplier below 1", "{ restart: { multiplier: 0.5 } }", Key("restart.multiplier"), "must be a finite number >= 1, not 0.5"),
        case("restart delays inverted", "{ restart: { initial_delay_ms: 5000, max_delay_ms: 10 } }", Key("restart.initial_delay_ms"), "5000 is greater than max_delay_ms 10"),
        case("negative retries", "{ restart: { max_retries: -1 } }", Key("restart.max_retries"), "invalid value: integer `-1`, expected a whole number from 0 to 4294967295"),
        case("runner name with a space", r#"{ runners: { "psu 1": { model: "emulator" } } }"#, Key("runners.psu 1"), "a runner name may hold only A-Z, a-z, 0-9, '_' and '-' (it becomes an MQTT topic level)"),
        case("runner name with a slash", r#"{ runners: { "a/b": { model: "emulator" } } }"#, Key("runners.a/b"), "a runner name may hold only"),
        case("runner name too long", &format!(r#"{{ runners: {{ "{}": {{ model: "emulator" }} }} }}"#, "n".repeat(65)), Key("runners.nnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnn"), "a runner name has 1 to 64 characters"),
        case("runner without a model", r#"{ runners: { psu: { description: "x" } } }"#, Key("runners.psu"), "missing field `model`"),
        case("unknown model", r#"{ runners: { psu: { model: "kd9999" } } }"#, Key("runners.psu.model"), "unknown model \"kd9999\" (available: "),
        case("unknown runner key", &emu("colour: \"red\""), Key("runners.psu.colour"), "unknown key for model emulator (known keys: model, description,"),
        case("limit not finite", &emu("security_max_voltage: Infinity"), Key("runners.psu.security_max_voltage"), "must not be null, NaN or Infinity (leave the key out for its default)"),
        case("limit NaN", &emu("security_min_current: NaN"), Key("runners.psu.security_min_current"), "must not be null, NaN or Infinity (leave the key out for its default)"),
        case("limits inverted", &emu("security_min_voltage: 10, security_max_voltage: 5"), Key("runners.psu.security_min_voltage"), "10 V is greater than security_max_voltage 5 V"),
        case("limit outside the model", &emu("security_max_current: 6"), Key("runners.psu.security_max_current"), "6 A is outside the emulator range 0..5 A"),
        case("limit as a string", &emu("security_max_voltage: \"5\""), Key("runners.psu.security_max_voltage"), "invalid type: string \"5\", expected a number"),
        case("zero command timeout", &emu("command_timeout_ms: 0"), Key("runners.psu.command_timeout_ms"), "must be greater than 0"),
        case("unknown on_shutdown", &emu("on_shutdown: \"explode\""), Key("runners.psu.on_shutdown"), "unknown variant `explode`, expected `keep` or `output_off`"),
        case("runner jitter above 1", &emu("restart: { jitter: 2 }"), Key("runners.psu.restart.jitter"), "must lie between 0 and 1, not 2"),
        case("restart jitter NaN", "{ restart: { jitter: NaN } }", Key("restart.jitter"), "must not be null, NaN or Infinity"),
        case("null namespace", "{ broker: { namespace: null } }", Key("broker.namespace"), "must not be null"),
        case("runner restart unknown key", &emu("restart: { retries: 2 }"), Key("runners.psu.restart.retries"), "unknown field `retries`"),
        case("kd3005p limit beyond the device", r#"{ runners: { k: { model: "kd3005p", serial_port: { name: "/dev/ttyACM0" }, security_max_current: 6 } } }"#, Key("runners.k.security_max_current"), "6 A is outside the kd3005p range 0..5 A"),
        case("kd3005p without a port", r#"{ runners: { k: { model: "ka3005p" } } }"#, Key("runners.k"), "missing field `serial_port`"),
        case("kd3005p port as a number", r#"{ runners: { k: { model: "kd3005p", serial_port: 5 } } }"#, Key("runners.k.serial_port"), "invalid type: integer `5`, expected a port name (\"/dev/ttyACM0\", \"COM3\"), { name }, or { usb_vid, usb_pid, serial_number }"),
        case("SCPI tcp as a string", r#"{ runners: { d: { model: "dp832", channel: 1, tcp: "x" } } }"#, Key("runners.d.tcp"), "invalid type: string \"x\", expected an object ({ ... })"),
        case("kd3005p key on the emulator", &emu("serial_port: { name: \"/dev/ttyACM0\" }"), Key("runners.psu.serial_port"), "unknown key for model emulator"),
        case("runner given twice", "{\n  runners: {\n    psu: { model: \"emulator\", security_max_voltage: 5 },\n    other: { model: \"emulator\" },\n    psu: { model: \"emulator\", security_max_voltage: 30 },\n  },\n}\n", Key("runners.psu"), "duplicate key (lines 3 and 5)"),
        case("limit given twice, once quoted", "{ runners: { psu: { model: \"emulator\",\n  security_max_voltage: 5,\n  \"security_max_voltage\": 30 } } }", Key("runners.psu.security_max_voltage"), "duplicate key (lines 2 and 3)"),
        case("top-level key given twice", "{ broker: { namespace: \"a\" },\n  // broker: {} in a comment does not count\n  restart: {},\n  broker: { namespace: \"b\" } }", Key("broker"), "duplicate key (lines 1 and 4)"),
        case("top level an empty array", "[]", Key("."), "the file must hold an object ({ ... }), not an array"),
        case("top level a number", "5", Key("."), "not a number"),
        case("top level a string", "\"x\"", Key("."), "not a string"),
    ]
}

#[test]
fn every_bad_config_file_is_one_line_naming_file_key_and_reason() {
    let dir = TempDir::new("bad-config").expect("a temp folder");
    let cases = cases(dir.path());
    assert!(cases.len() >= 15);
    let mut wrong = Vec::new();
    for (n, case) in cases.iter().enumerate() {
        let path = dir.join(format!("case-{n}.json5"));
        std::fs::write(&path, &case.text).expect("write the config");
        let message = match load(&path) {
            Ok(_) => panic!("{}: accepted:\n{}", case.name, case.text),
            Err(message) => message,
        };
        let name = case.name;
        let head = match case.at {
            At::Key(key) => format!("{}: {key}: ", path.display()),
            At::Line(line) => format!("{}:{line}:", path.display()),
        };
        if message.lines().count() != 1
            || !message.starts_with(&head)
            || !message.contains(&case.reason)
        {
            wrong.push(format!(
                "{name}: got {message:?}, expected {head:?} ... {:?}",
                case.reason
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn tls_paths_are_taken_from_the_config_folder() {
    let dir = TempDir::new("tls-config").expect("a temp folder");
    let certs_dir = dir.join("certs");
    std::fs::create_dir_all(&certs_dir).expect("mkdir");
    TestCerts::generate().write(&certs_dir);
    let path = dir.join("config.json5");
    std::fs::write(
        &path,
        tls_config(r#"ca_file: "certs/ca.pem", client_cert_file: "certs/client.pem", client_key_file: "certs/client.key""#),
    )
    .expect("write");
    let config = load(&path).unwrap_or_else(|e| panic!("{e}"));
    let tls = config.broker.tls.expect("tls kept");
    assert_eq!(tls.ca_file, certs_dir.join("ca.pem"));
    assert_eq!(tls.client_cert_file, Some(certs_dir.join("client.pem")));
    assert_eq!(tls.client_key_file, Some(certs_dir.join("client.key")));
    assert!(!config.broker.use_builtin);
}

#[test]
fn the_binary_refuses_a_bad_tls_file_before_starting() {
    let dir = TempDir::new("tls-cli").expect("a temp folder");
    let path: PathBuf = dir.join("config.json5");
    std::fs::write(&path, tls_config(r#"ca_file: "nowhere/ca.pem""#)).expect("write");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pza-power-supply"))
        .args(["run", "--config"])
        .arg(&path)
        .env("HOME", dir.path())
        .output()
        .expect("the binary runs");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(
        lines[0].contains(&format!(
            "{}: broker.tls.ca_file: cannot read {}",
            path.display(),
            dir.join("nowhere/ca.pem").display()
        )),
        "{err}"
    );
    // Nothing was written next to the config.
    let entries: Vec<_> = std::fs::read_dir(&dir)
        .expect("read dir")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(entries, vec![std::ffi::OsString::from("config.json5")]);
}
