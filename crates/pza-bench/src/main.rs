//! # pza-bench
//!
//! The benchmark harness of pza-power-supply: how fast it is, how far it
//! scales, how fast it recovers. Every figure is measured against a baseline
//! taken in the same run, because the machines it runs on are noisy; it
//! reports medians, p99 and the ratio to the baseline, as one table.
//!
//! ```text
//! cargo run --release -p pza-bench -- [--smoke] [--markdown PATH] [FIGURE...]
//! ```
//!
//! `--smoke` uses tiny counts and gives no verdict on timings, but still
//! fails on a lost reply or a wrong status sequence, so CI keeps the harness
//! working. docs/benchmarks.md explains each figure and holds the results.
//!
//! ## Layout
//! - [`figures`]: the seven figures, one file each (figures 1 and 6 share one).
//! - [`client`]: the harness's MQTT client, stamping messages on arrival.
//! - [`echo`]: the bare MQTT echo, the floor every command is compared with.
//! - [`pinger`]: timed request/reply round trips.
//! - [`inproc`]: a server in the harness's own runtime, and its config text.
//! - [`probe`]: the emulator, instrumented to note when it panics.
//! - [`process`]: child processes (the server binary, mosquitto), `/proc`.
//! - [`stats`], [`report`]: summaries and the table.

mod client;
mod echo;
mod figures;
mod inproc;
mod pinger;
mod probe;
mod process;
mod report;
mod stats;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use clap::Parser;
use tracing_subscriber::EnvFilter;

use figures::{Context, Figure};
use report::Row;

/// The server binary's log filter when `RUST_LOG` is not set.
const SERVER_LOG_FILTER: &str = "info,rumqttd=off";

#[derive(Debug, Parser)]
#[command(
    name = "pza-bench",
    about = "Benchmarks of pza-power-supply, each against a baseline taken in the same run"
)]
struct Args {
    /// Tiny counts, no timing verdicts; correctness is still checked (for CI).
    #[arg(long)]
    smoke: bool,
    /// Also write the machine facts and the table as markdown to PATH.
    #[arg(long, value_name = "PATH")]
    markdown: Option<PathBuf>,
    /// The server binary for figure 4 [default: pza-power-supply next to
    /// pza-bench, built first when run by cargo].
    #[arg(long, value_name = "PATH")]
    server_bin: Option<PathBuf>,
    /// Figures to run, by number or name: 1 roundtrip, 2 throughput,
    /// 3 recovery, 4 scale, 5 isolation, 6 external, 7 client [default: all].
    #[arg(value_name = "FIGURE", value_parser = Figure::parse)]
    figures: Vec<Figure>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    init_logging();
    probe::silence_injected_panics();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("pza-bench: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("pza-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The in-process servers log as the server binary does (same filter, same
/// formatting cost), into a sink; with `RUST_LOG` set, to stderr.
fn init_logging() {
    match EnvFilter::try_from_default_env() {
        Ok(filter) => tracing_subscriber::fmt()
            .with_writer(std::io::stderr)
            .with_env_filter(filter)
            .init(),
        Err(_) => tracing_subscriber::fmt()
            .with_writer(std::io::sink)
            .with_ansi(false)
            .with_env_filter(EnvFilter::new(SERVER_LOG_FILTER))
            .init(),
    }
}

/// Runs the figures; `Ok(false)` when one of them failed.
async fn run(args: Args) -> anyhow::Result<bool> {
    let mut figures = if args.figures.is_empty() {
        Figure::ALL.to_vec()
    } else {
        args.figures.clone()
    };
    figures.sort();
    figures.dedup();

    let facts = machine_facts(&args);
    print!("{facts}");
    println!();
    let mut ctx = Context {
        smoke: args.smoke,
        server_bin: args.server_bin.clone(),
        embedded_round_trip: None,
    };
    let mut rows: Vec<Row> = Vec::new();
    let mut failed = Vec::new();
    let whole = Instant::now();
    for figure in figures {
        let started = Instant::now();
        println!("figure {} ({}) ...", figure.number(), figure.name());
        match figure.run(&mut ctx).await {
            Ok(figure_rows) => rows.extend(figure_rows),
            Err(e) => {
                eprintln!("pza-bench: figure {} failed: {e:#}", figure.number());
                rows.push(Row::new(
                    &format!("{} {}", figure.number(), figure.name()),
                    "FAILED",
                    format!("{e:#}"),
                ));
                failed.push(figure.number());
            }
        }
        println!("  done in {}", stats::duration(started.elapsed()));
    }
    let load_after = load_average();
    println!();
    print!("{}", report::text_table(&rows));
    println!();
    println!(
        "total {}; load average after: {load_after}",
        stats::duration(whole.elapsed())
    );
    if let Some(path) = &args.markdown {
        let text = format!(
            "{}- load average after: {load_after}\n\n{}",
            markdown_facts(&facts),
            report::markdown_table(&rows)
        );
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
        println!("markdown written to {}", path.display());
    }
    if failed.is_empty() {
        Ok(true)
    } else {
        eprintln!("pza-bench: figures {failed:?} failed");
        Ok(false)
    }
}

/// What the numbers depend on: the machine, the build, the command.
fn machine_facts(args: &Args) -> String {
    let nproc = std::thread::available_parallelism().map_or(0, usize::from);
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|l| l.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into());
    let command: Vec<String> = std::env::args().skip(1).collect();
    let profile = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    let release_flag = if cfg!(debug_assertions) {
        ""
    } else {
        " --release"
    };
    format!(
        "pza-bench{}\n\
         - date: {}\n\
         - machine: {nproc} CPUs (nproc), {cpu}, Linux {kernel}\n\
         - build: {profile}\n\
         - command: cargo run{release_flag} -p pza-bench --{}{}\n\
         - load average before: {}\n",
        if args.smoke {
            " (smoke run: tiny counts, no timing verdicts)"
        } else {
            ""
        },
        utc_now(),
        if command.is_empty() { "" } else { " " },
        command.join(" "),
        load_average(),
    )
}

/// The facts as markdown (they already are a list, but for the title).
fn markdown_facts(facts: &str) -> String {
    let mut lines = facts.lines();
    let title = lines.next().unwrap_or_default();
    let rest: Vec<&str> = lines.collect();
    format!("**{title}**\n\n{}\n", rest.join("\n"))
}

/// `/proc/loadavg`'s three averages.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|t| t.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

/// The date and time now, in UTC: "2025-01-31 14:05 UTC".
fn utc_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rest) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02} UTC",
        rest / 3600,
        rest % 3600 / 60
    )
}

/// Days since 1970-01-01 to (year, month, day), after Howard Hinnant's
/// `civil_from_days`.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = (if mp < 10 { mp + 3 } else { mp - 9 }) as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
        assert_eq!(civil_from_days(20_089), (2025, 1, 1));
    }

    #[test]
    fn arguments() {
        let args = Args::try_parse_from(["pza-bench", "--smoke", "3", "roundtrip"]).unwrap();
        assert!(args.smoke);
        assert_eq!(args.figures, vec![Figure::Recovery, Figure::RoundTrip]);
        assert!(Args::try_parse_from(["pza-bench", "9"]).is_err());
    }
}
