//! Child processes of the harness (the server binary, mosquitto), the
//! temporary directory their files live in, and what `/proc` says of them.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

use crate::inproc::{config_text, Broker};

/// Pause between two looks at a child that is expected to exit.
const EXIT_POLL: Duration = Duration::from_millis(5);

/// Lines of a server's log quoted in an error.
const LOG_TAIL_LINES: usize = 5;

/// Longest wait for `cargo build` of the server binary (it only links the
/// binary when the harness itself was just built).
const BUILD_TIMEOUT: Duration = Duration::from_secs(900);

/// The harness's folders (configs, logs): the workspace's one temp-folder
/// guard, removed when dropped.
pub use pza_toolkit::temp::TempDir;

/// A child process, killed when dropped if it is still running.
pub struct ChildGuard {
    name: String,
    child: Option<Child>,
}

impl ChildGuard {
    pub fn spawn(name: &str, command: &mut Command) -> anyhow::Result<ChildGuard> {
        let child = command
            .spawn()
            .with_context(|| format!("starting {name} ({command:?})"))?;
        Ok(ChildGuard {
            name: name.to_string(),
            child: Some(child),
        })
    }

    pub fn id(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// The exit status, if the child has exited.
    pub fn try_wait(&mut self) -> anyhow::Result<Option<ExitStatus>> {
        match self.child.as_mut() {
            Some(child) => child
                .try_wait()
                .with_context(|| format!("waiting for {}", self.name)),
            None => bail!("{} was already reaped", self.name),
        }
    }

    /// Sends SIGTERM and waits up to `timeout` for the exit; kills it after.
    /// Returns the exit status and how long the exit took.
    pub async fn terminate(mut self, timeout: Duration) -> anyhow::Result<(ExitStatus, Duration)> {
        let pid = self.id().to_string();
        let start = Instant::now();
        // A failure means the process is already gone: it is reaped below.
        let _ = Command::new("kill")
            .args(["-TERM", &pid])
            .stderr(Stdio::null())
            .status()
            .context("running kill -TERM")?;
        let deadline = start + timeout;
        loop {
            if let Some(status) = self.try_wait()? {
                self.child = None;
                return Ok((status, start.elapsed()));
            }
            if Instant::now() >= deadline {
                if let Some(mut child) = self.child.take() {
                    let _ = child.kill();
                    let _ = child.wait();
                }
                bail!(
                    "{} did not exit within {timeout:?} of SIGTERM: killed",
                    self.name
                );
            }
            tokio::time::sleep(EXIT_POLL).await;
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The server binary, `run --config <tmp> --no-mcp --no-tui`, with its
/// embedded broker on a free port and the runners given; its log (stderr)
/// goes to a file next to the config. Killed when dropped.
pub struct ServerProcess {
    pub port: u16,
    /// The instant just before the process was spawned.
    pub started: Instant,
    child: ChildGuard,
    log: PathBuf,
    /// Dropped after `child`, which is killed first.
    dir: TempDir,
}

impl ServerProcess {
    /// Writes the config for `runners` (config entries) and spawns `binary`
    /// on it. `RUST_LOG` and `RUST_BACKTRACE` are removed from its
    /// environment, so that it logs at its default level and a panic does
    /// not symbolize a backtrace.
    pub fn spawn(binary: &Path, label: &str, runners: &[String]) -> anyhow::Result<ServerProcess> {
        let dir = TempDir::new(label)?;
        let port = pza_toolkit::mqtt::probe_free_port().context("probing a free port")?;
        let config = dir.path().join("pza-power-supply.json5");
        std::fs::write(&config, config_text(Broker::Embedded(port), runners))
            .with_context(|| format!("writing {}", config.display()))?;
        let log = dir.path().join("server.log");
        let log_file =
            std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let started = Instant::now();
        let child = ChildGuard::spawn(
            "the server",
            Command::new(binary)
                .arg("run")
                .arg("--config")
                .arg(&config)
                .args(["--no-mcp", "--no-tui"])
                .env_remove("RUST_LOG")
                .env_remove("RUST_BACKTRACE")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log_file),
        )?;
        Ok(ServerProcess {
            port,
            started,
            child,
            log,
            dir,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits until the broker accepts connections.
    pub async fn wait_listening(&mut self, timeout: Duration) -> anyhow::Result<()> {
        wait_listening(&mut self.child, self.port, timeout).await
    }

    /// An error if the server has exited on its own.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        match self.child.try_wait()? {
            Some(status) => bail!("the server exited on its own ({status})"),
            None => Ok(()),
        }
    }

    /// `error`, with the end of the server's log.
    pub fn annotate(&self, error: anyhow::Error) -> anyhow::Error {
        error.context(format!("server log: {}", log_tail(&self.log)))
    }

    /// Sends SIGTERM and waits up to `timeout` for the exit, which must be
    /// a success; returns how long it took.
    pub async fn stop(self, timeout: Duration) -> anyhow::Result<Duration> {
        let ServerProcess {
            child, log, dir, ..
        } = self;
        let result = match child.terminate(timeout).await {
            Ok((status, took)) if status.success() => Ok(took),
            Ok((status, _)) => Err(anyhow::anyhow!(
                "the server exited with {status} after SIGTERM"
            )),
            Err(e) => Err(e),
        };
        let result = result.map_err(|e| e.context(format!("server log: {}", log_tail(&log))));
        drop(dir);
        result
    }
}

/// The last lines of a log file, for an error message.
fn log_tail(path: &Path) -> String {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let lines: Vec<&str> = text.lines().collect();
            let tail = lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join(" | ");
            if tail.is_empty() {
                "(empty)".into()
            } else {
                tail
            }
        }
        Err(e) => format!("(unreadable: {e})"),
    }
}

/// One thread of a process, as `/proc/<pid>/task/<tid>` describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThreadTime {
    /// The thread's name (`comm`).
    pub name: String,
    /// Time it has spent on a CPU so far (`schedstat`, in nanoseconds).
    pub cpu: Duration,
}

/// The CPU time each thread of process `pid` has used so far, by thread id,
/// from `/proc/<pid>/task/*/schedstat`: nanoseconds, finer than the clock
/// ticks of `/proc/<pid>/stat`. Threads that have ended are not listed, so
/// their time is lost to a difference of two readings; compare the thread
/// ids of the two to know.
pub fn thread_cpu_times(pid: u32) -> anyhow::Result<HashMap<u32, ThreadTime>> {
    let dir = format!("/proc/{pid}/task");
    let tasks = std::fs::read_dir(&dir).with_context(|| format!("reading {dir}"))?;
    let mut times = HashMap::new();
    for task in tasks.flatten() {
        let Some(tid) = task.file_name().to_str().and_then(|t| t.parse().ok()) else {
            continue;
        };
        let path = task.path();
        // A thread that ends between the listing and these reads is skipped.
        let Ok(schedstat) = std::fs::read_to_string(path.join("schedstat")) else {
            continue;
        };
        let Some(cpu) = parse_schedstat(&schedstat) else {
            bail!("{}: not a schedstat line: {schedstat:?}", path.display());
        };
        let name = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
        times.insert(
            tid,
            ThreadTime {
                name: name.trim().to_string(),
                cpu,
            },
        );
    }
    Ok(times)
}

/// The first field of a `schedstat` line: nanoseconds spent on a CPU.
fn parse_schedstat(text: &str) -> Option<Duration> {
    let ns = text.split_whitespace().next()?.parse().ok()?;
    Some(Duration::from_nanos(ns))
}

/// Peak resident set size of process `pid` (`VmHWM`), in bytes.
pub fn peak_rss(pid: u32) -> anyhow::Result<u64> {
    status_kib(pid, "VmHWM:").map(|kib| kib * 1024)
}

fn status_kib(pid: u32, key: &str) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    parse_status_kib(&text, key).with_context(|| format!("{path}: no {key} line in kB"))
}

fn parse_status_kib(text: &str, key: &str) -> Option<u64> {
    let rest = text.lines().find_map(|l| l.strip_prefix(key))?;
    let mut words = rest.split_whitespace();
    let value = words.next()?.parse().ok()?;
    (words.next() == Some("kB")).then_some(value)
}

/// The server binary to spawn: `explicit`, else the `pza-power-supply` next
/// to this executable. Under `cargo run` (env `CARGO` set) it is built first
/// with the same profile, so that it is never older than the library the
/// in-process figures use.
pub async fn server_binary(explicit: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    if let Some(path) = explicit {
        if !path.is_file() {
            bail!("--server-bin {}: no such file", path.display());
        }
        return Ok(path);
    }
    let exe = std::env::current_exe().context("locating the harness executable")?;
    let dir = exe
        .parent()
        .context("the harness executable has no parent directory")?;
    let path = dir.join("pza-power-supply");
    if let Some(cargo) = std::env::var_os("CARGO") {
        let workspace = std::env::var_os("CARGO_MANIFEST_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
        let mut command = Command::new(cargo);
        // `cargo run` describes the harness package in these variables; a
        // build script that tracks one (ring's does) would be rebuilt, with
        // everything above it, whenever they come and go.
        for (key, _) in std::env::vars_os() {
            if key.to_str().is_some_and(is_package_variable) {
                command.env_remove(key);
            }
        }
        command
            .args([
                "build",
                "--quiet",
                "-p",
                "pza-power-supply",
                "--bin",
                "pza-power-supply",
            ])
            .current_dir(workspace)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        if !cfg!(debug_assertions) {
            command.arg("--release");
        }
        let mut build = ChildGuard::spawn("cargo build of the server binary", &mut command)?;
        let deadline = Instant::now() + BUILD_TIMEOUT;
        let status = loop {
            if let Some(status) = build.try_wait()? {
                build.child = None;
                break status;
            }
            if Instant::now() >= deadline {
                bail!("cargo build of the server binary took over {BUILD_TIMEOUT:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        if !status.success() {
            bail!("cargo build of the server binary failed ({status})");
        }
    }
    if !path.is_file() {
        bail!(
            "no server binary at {}: build it with `cargo build --release -p pza-power-supply`, or pass --server-bin",
            path.display()
        );
    }
    Ok(path)
}

/// The variables `cargo run` sets to describe the package it runs.
fn is_package_variable(key: &str) -> bool {
    key.starts_with("CARGO_PKG_")
        || matches!(
            key,
            "CARGO_MANIFEST_DIR"
                | "CARGO_MANIFEST_PATH"
                | "CARGO_MANIFEST_LINKS"
                | "CARGO_CRATE_NAME"
                | "CARGO_BIN_NAME"
                | "CARGO_PRIMARY_PACKAGE"
                | "CARGO_RUSTC_CURRENT_DIR"
        )
}

/// The mosquitto executable, if installed (Debian puts it in /usr/sbin,
/// which is not on every user's PATH).
pub fn find_mosquitto() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("mosquitto"))
            .find(|p| p.is_file())
    });
    on_path.or_else(|| {
        let sbin = PathBuf::from("/usr/sbin/mosquitto");
        sbin.is_file().then_some(sbin)
    })
}

/// Waits until something accepts TCP connections on 127.0.0.1:`port`,
/// checking that `child` is still alive meanwhile.
pub async fn wait_listening(
    child: &mut ChildGuard,
    port: u16,
    timeout: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return Ok(());
        }
        if let Some(status) = child.try_wait()? {
            bail!(
                "{} exited before listening on port {port} ({status})",
                child.name
            );
        }
        if Instant::now() >= deadline {
            bail!(
                "{} not listening on port {port} within {timeout:?}",
                child.name
            );
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// A mosquitto broker on 127.0.0.1, stopped when dropped.
pub struct Mosquitto {
    pub port: u16,
    child: ChildGuard,
    _dir: TempDir,
}

impl Mosquitto {
    /// Starts `executable` on a free port, listening on 127.0.0.1 only, and
    /// waits until it accepts connections. A config file is used rather than
    /// `-p PORT` to bind to 127.0.0.1 and allow anonymous clients explicitly,
    /// and to set `set_tcp_nodelay` (off by default, as with `-p PORT`).
    pub async fn start(executable: &Path, tcp_nodelay: bool) -> anyhow::Result<Mosquitto> {
        let port = pza_toolkit::mqtt::probe_free_port().context("probing a free port")?;
        let dir = TempDir::new("mosquitto")?;
        let conf = dir.path().join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nset_tcp_nodelay {tcp_nodelay}\n"
            ),
        )
        .with_context(|| format!("writing {}", conf.display()))?;
        let mut child = ChildGuard::spawn(
            "mosquitto",
            Command::new(executable)
                .arg("-c")
                .arg(&conf)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        )?;
        wait_listening(&mut child, port, Duration::from_secs(10)).await?;
        Ok(Mosquitto {
            port,
            child,
            _dir: dir,
        })
    }

    pub async fn stop(self) -> anyhow::Result<()> {
        self.child
            .terminate(Duration::from_secs(5))
            .await
            .map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_kib_lines() {
        let text = "Name:\tx\nVmHWM:\t  41230 kB\nVmRSS:\t  40000 kB\n";
        assert_eq!(parse_status_kib(text, "VmHWM:"), Some(41230));
        assert_eq!(parse_status_kib(text, "VmRSS:"), Some(40000));
        assert_eq!(parse_status_kib(text, "VmPeak:"), None);
        assert_eq!(parse_status_kib("VmHWM: 12 MB\n", "VmHWM:"), None);
    }

    #[test]
    fn package_variables() {
        assert!(is_package_variable("CARGO_MANIFEST_DIR"));
        assert!(is_package_variable("CARGO_PKG_VERSION"));
        assert!(!is_package_variable("CARGO_HOME"));
        assert!(!is_package_variable("CARGO_TARGET_DIR"));
    }

    #[test]
    fn reads_schedstat_lines() {
        assert_eq!(
            parse_schedstat("38123510 41804810 130\n"),
            Some(Duration::from_nanos(38_123_510))
        );
        assert_eq!(parse_schedstat(""), None);
        assert_eq!(parse_schedstat("x 1 2"), None);
    }

    #[test]
    fn own_threads_have_cpu_times() {
        let own = thread_cpu_times(std::process::id()).unwrap();
        let main = own
            .get(&std::process::id())
            .expect("the main thread is listed");
        assert!(!main.name.is_empty());
        assert!(own.values().any(|t| !t.cpu.is_zero()));
    }

    #[test]
    fn own_peak_rss_is_readable() {
        assert!(peak_rss(std::process::id()).unwrap() > 0);
    }
}
