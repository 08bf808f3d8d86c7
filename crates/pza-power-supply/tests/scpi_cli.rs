//! The binary's SCPI side: `simulate scpi` prints its address and serves
//! the model's dialect until a signal; `list --drivers` shows the models.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_pza-power-supply");

/// Upper bound for any wait: it only turns a hang into a failure.
const WAIT: Duration = Duration::from_secs(15);

#[test]
fn simulate_scpi_prints_its_address_and_serves_the_model() {
    let mut child = Command::new(BIN)
        .args(["simulate", "scpi", "--model", "e36312a", "--port", "0"])
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let addr = rx.recv_timeout(WAIT).expect("the address is printed");
    let addr = addr.trim();
    assert!(addr.starts_with("127.0.0.1:"), "{addr:?}");

    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    stream
        .write_all(b"VOLT 12,(@2)\nVOLT? (@2)\n*IDN?\n")
        .unwrap();
    let mut replies = String::new();
    let mut chunk = [0u8; 256];
    while replies.lines().count() < 2 {
        let n = stream.read(&mut chunk).unwrap();
        assert!(n > 0, "closed early: {replies:?}");
        replies.push_str(&String::from_utf8_lossy(&chunk[..n]));
    }
    let lines: Vec<&str> = replies.lines().collect();
    assert_eq!(lines[0], "+1.20000E+01");
    assert!(
        lines[1].starts_with("Keysight Technologies,E36312A,"),
        "{replies}"
    );

    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let output = rx.recv_timeout(WAIT).expect("exits on SIGINT").unwrap();
    assert!(output.status.success(), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr
            .contains("model: \"keysight-e36312a\", channel: 1, tcp: { addr: \"127.0.0.1\", port:"),
        "{stderr}"
    );
}

#[test]
fn simulate_scpi_refuses_an_unknown_model() {
    let out = Command::new(BIN)
        .args(["simulate", "scpi", "--model", "dp831", "--port", "0"])
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "pza-power-supply: --model: unknown SCPI model \"dp831\" (available: rigol-dp832, siglent-spd3303x, keysight-e36312a)\n"
    );
}

#[test]
fn list_drivers_shows_the_scpi_models() {
    // A HOME of its own: nothing is written, and if it were, not in /tmp.
    let home = pza_toolkit::temp::TempDir::new("scpi-drivers").expect("a temp folder");
    let out = Command::new(BIN)
        .args(["list", "--drivers"])
        .env("HOME", home.path())
        .env_remove("PZA_POWER_SUPPLY_CONFIG")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for line in [
        "  rigol-dp832 (alias: dp832): Rigol DP832 / DP832A over LAN (SCPI, port 5555) or RS-232: CH1, CH2 0-30 V 0-3 A; CH3 0-5 V 0-3 A;",
        "  siglent-spd3303x (alias: spd3303x): Siglent SPD3303X over LAN (SCPI, port 5025): CH1, CH2 0-32 V 0-3.2 A;",
        "  keysight-e36312a (alias: e36312a): Keysight E36312A over LAN (SCPI, port 5025): CH1 0-6 V 0-5 A; CH2, CH3 0-25 V 0-1 A;",
    ] {
        assert!(text.contains(line), "{line}\n{text}");
    }
}
