//! The client library and `ctl` through a real mosquitto: credentials (and a
//! refused login), TLS with `--tls-ca`, the password from the environment.

mod common;
mod mosquitto;

use std::process::{Command, Output};
use std::sync::Arc;
use std::time::Duration;

use mosquitto::{ExternalServer, Listener, Mosquitto, TestCerts};
use pza_power_supply_client::{Client, ClientOptions, Error, Status};
use pza_toolkit::temp::TempDir;

const BIN: &str = env!("CARGO_BIN_EXE_pza-power-supply");
const RUNNERS: &str = r#"psu: { model: "emulator", measure_period_ms: 0 }"#;

/// Runs a command off the runtime's thread: the server under test runs on
/// this runtime, and must go on while the command waits for it.
async fn output(mut command: Command) -> Output {
    tokio::task::spawn_blocking(move || command.output().expect("run ctl"))
        .await
        .expect("ctl thread")
}

/// Waits until `psu` is Running, seen through `client`.
async fn wait_running(client: &Client) {
    let psu = client.power_supply("psu");
    let mut updates = psu.watch();
    if psu
        .snapshot()
        .await
        .is_ok_and(|s| s.status == Some(Status::Running))
    {
        return;
    }
    tokio::time::timeout(common::WAIT, async {
        while let Some(u) = updates.next().await {
            if u.snapshot.status == Some(Status::Running) {
                return;
            }
        }
    })
    .await
    .expect("psu Running in time");
}

#[tokio::test]
async fn credentials_tls_and_a_refused_login() {
    let certs = Arc::new(TestCerts::generate());
    let broker = Mosquitto::start(&[
        Listener::Anonymous,
        Listener::Password(vec![("lab".into(), "s3cret".into())]),
        Listener::Tls {
            certs: certs.clone(),
            require_client_cert: false,
        },
    ])
    .await;
    let (plain, auth, tls) = (broker.ports[0], broker.ports[1], broker.ports[2]);
    let files = certs.write(broker.dir.path());
    let server = ExternalServer::start(plain, "", RUNNERS, "").await;

    let options = |port: u16| ClientOptions::new("127.0.0.1", port).timeout(common::WAIT);
    let client = Client::connect(options(auth).credentials("lab", "s3cret"))
        .await
        .expect("the right credentials are accepted");
    wait_running(&client).await;
    assert_eq!(
        client.power_supply("psu").set_voltage(4.5).await.unwrap(),
        4.5
    );
    match Client::connect(options(auth).credentials("lab", "wrong")).await {
        Err(e @ Error::ConnectionRefused { .. }) => {
            assert!(e.to_string().contains("refused the connection"), "{e}")
        }
        other => panic!("{other:?}"),
    }

    let client = Client::connect(options(tls).tls_ca(&files.ca))
        .await
        .expect("TLS with the CA");
    wait_running(&client).await;
    assert_eq!(
        client.power_supply("psu").set_current(1.5).await.unwrap(),
        1.5
    );

    let home = TempDir::new("ctl-home").expect("a temp folder");
    let ctl = |port: u16, args: &[&str]| {
        let mut c = Command::new(BIN);
        c.arg("ctl")
            .arg("--broker")
            .arg(format!("127.0.0.1:{port}"))
            .args(args)
            .env("HOME", home.path())
            .env_remove("PZA_POWER_SUPPLY_CONFIG")
            .env_remove("PZA_MQTT_PASSWORD");
        c
    };
    let ca = files.ca.to_str().expect("a UTF-8 temp path");
    let out = output(ctl(tls, &["--tls-ca", ca, "set", "psu", "--voltage", "3"])).await;
    assert_eq!(
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).as_ref()
        ),
        (Some(0), "psu: voltage 3.00 V\n"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut with_env = ctl(auth, &["--username", "lab", "get", "psu"]);
    with_env.env("PZA_MQTT_PASSWORD", "s3cret");
    let out = output(with_env).await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = output(ctl(
        auth,
        &["--username", "lab", "--password", "wrong", "list"],
    ))
    .await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("refused the connection"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A TLS listener spoken to without TLS never completes a connection.
    let out = output(ctl(tls, &["--timeout-ms", "500", "list"])).await;
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let took = server.stop().await;
    assert!(took < Duration::from_secs(10));
}
