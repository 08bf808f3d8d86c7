//! The real server binary, run with a config of our own on a free port, and
//! clients of the client library connected to it.

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use pza_power_supply_client::{Client, ClientOptions, Status};
use pza_toolkit::temp::TempDir;

/// Upper bound for any single wait: far above any normal latency, it only
/// turns a hang into a failure.
pub const WAIT: Duration = Duration::from_secs(15);

pub const BIN: &str = env!("CARGO_BIN_EXE_pza-power-supply");

/// A free port on 127.0.0.1 (released before returning: the OS hands it
/// out again only after cycling through the others).
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind port 0");
    listener.local_addr().expect("local address").port()
}

/// `pza-power-supply run` with the embedded broker on a free port.
pub struct Served {
    pub port: u16,
    /// Its config and log; removed with the guard.
    pub dir: TempDir,
    pub config: PathBuf,
    child: Option<Child>,
}

impl Served {
    /// Runners as a JSON5 object body; `broker_extra` goes into `broker: {}`.
    pub fn start(runners: &str) -> Served {
        Self::start_with(runners, "")
    }

    pub fn start_with(runners: &str, broker_extra: &str) -> Served {
        let port = free_port();
        let dir = TempDir::new("served").expect("a temp folder");
        let config = dir.join("config.json5");
        std::fs::write(
            &config,
            format!(
                "{{ broker: {{ use_builtin: true, tcp: {{ addr: \"127.0.0.1\", port: {port} }}, {broker_extra} }}, runners: {{ {runners} }} }}"
            ),
        )
        .expect("write config");
        let mut served = Served {
            port,
            dir,
            config,
            child: None,
        };
        served.launch();
        served
    }

    /// Starts the server process (again, after `kill`).
    pub fn launch(&mut self) {
        // The server's log, shown when a test fails (see Drop).
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("server.log"))
            .expect("server log file");
        let child = Command::new(BIN)
            .args(["run", "--no-tui", "--config"])
            .arg(&self.config)
            .env("RUST_LOG", "debug,rumqttd=warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn the server");
        self.child = Some(child);
    }

    /// Kills the server process at once (no graceful shutdown).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn options(&self) -> ClientOptions {
        ClientOptions::new("127.0.0.1", self.port).timeout(WAIT)
    }

    /// A client, once the broker accepts connections.
    pub async fn client(&self) -> Client {
        Client::connect(self.options())
            .await
            .expect("the client connects to the served broker")
    }

    /// A `ctl` command line against this server: `ctl --broker ... ARGS`.
    pub fn ctl(&self, args: &[&str]) -> Command {
        let mut command = Command::new(BIN);
        command
            .arg("ctl")
            .args(["--broker", &format!("127.0.0.1:{}", self.port)])
            .args(args)
            // No config file: the flags say everything.
            .env("HOME", self.dir.path())
            .env_remove("PZA_POWER_SUPPLY_CONFIG")
            .env_remove("PZA_MQTT_PASSWORD")
            .env_remove("RUST_LOG");
        command
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        self.kill();
        // The folder goes with the guard, so a failed test shows the log
        // now (the test harness prints it with the failure).
        if std::thread::panicking() {
            let log = std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default();
            eprintln!("server log:\n{log}");
        }
    }
}

/// Waits until `name` is `Running` (seen through `client`).
pub async fn wait_running(client: &Client, name: &str) {
    wait_status(client, name, Status::Running).await;
}

/// Waits until `name` reports `status`.
pub async fn wait_status(client: &Client, name: &str, status: Status) {
    let psu = client.power_supply(name);
    let mut updates = psu.watch();
    if psu.snapshot().await.is_ok_and(|s| s.status == Some(status)) {
        return;
    }
    tokio::time::timeout(WAIT, async {
        while let Some(update) = updates.next().await {
            if update.snapshot.status == Some(status) {
                return;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{name} not {status} within {WAIT:?}"));
}
