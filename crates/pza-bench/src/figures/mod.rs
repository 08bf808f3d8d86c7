//! The seven figures of the benchmark, each measured against a baseline taken
//! in the same run.

mod client;
mod isolation;
mod recovery;
mod roundtrip;
mod scale;
mod throughput;

use std::path::PathBuf;
use std::time::Duration;

use crate::report::Row;
use crate::stats::{times, Summary};

/// What the figures share: the run's mode, and results that later figures
/// compare with.
pub struct Context {
    pub smoke: bool,
    /// The server binary to spawn, if given on the command line or already
    /// built (under `cargo run`) by an earlier figure.
    pub server_bin: Option<PathBuf>,
    /// Figure 1's result, for figure 6 to compare with.
    pub embedded_round_trip: Option<roundtrip::RoundTrip>,
}

/// A count for a full run and for a smoke run.
#[derive(Debug, Clone, Copy)]
pub struct Counts {
    pub full: usize,
    pub smoke: usize,
}

impl Counts {
    pub fn get(self, smoke: bool) -> usize {
        if smoke {
            self.smoke
        } else {
            self.full
        }
    }
}

/// A time budget for a full and a smoke run: a figure takes fewer samples
/// than its count rather than run past it (a server with 40 ms stalls would
/// otherwise take an hour).
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    pub full: Duration,
    pub smoke: Duration,
}

impl Budget {
    pub const fn secs(full: u64, smoke: u64) -> Budget {
        Budget {
            full: Duration::from_secs(full),
            smoke: Duration::from_secs(smoke),
        }
    }

    pub fn get(self, smoke: bool) -> Duration {
        if smoke {
            self.smoke
        } else {
            self.full
        }
    }
}

/// "p50 1.30× · p99 1.37×".
pub fn ratio_text(measured: &Summary, baseline: &Summary) -> String {
    let (r50, r99) = measured.ratio_to(baseline);
    format!("p50 {} · p99 {}", times(r50), times(r99))
}

/// One figure of the benchmark.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Figure {
    RoundTrip,
    Throughput,
    Recovery,
    Scale,
    Isolation,
    External,
    ClientLibrary,
}

impl Figure {
    pub const ALL: [Figure; 7] = [
        Figure::RoundTrip,
        Figure::Throughput,
        Figure::Recovery,
        Figure::Scale,
        Figure::Isolation,
        Figure::External,
        Figure::ClientLibrary,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Figure::RoundTrip => "roundtrip",
            Figure::Throughput => "throughput",
            Figure::Recovery => "recovery",
            Figure::Scale => "scale",
            Figure::Isolation => "isolation",
            Figure::External => "external",
            Figure::ClientLibrary => "client",
        }
    }

    pub fn number(self) -> usize {
        Figure::ALL.iter().position(|f| *f == self).unwrap_or(0) + 1
    }

    /// A figure by name or number ("roundtrip", "1").
    pub fn parse(text: &str) -> Result<Figure, String> {
        Figure::ALL
            .into_iter()
            .find(|f| f.name() == text || f.number().to_string() == text)
            .ok_or_else(|| {
                let names: Vec<String> = Figure::ALL
                    .iter()
                    .map(|f| format!("{} ({})", f.number(), f.name()))
                    .collect();
                format!(
                    "unknown figure '{text}'; the figures are {}",
                    names.join(", ")
                )
            })
    }

    /// Measures this figure.
    pub async fn run(self, ctx: &mut Context) -> anyhow::Result<Vec<Row>> {
        match self {
            Figure::RoundTrip => roundtrip::embedded(ctx).await,
            Figure::Throughput => throughput::run(ctx).await,
            Figure::Recovery => recovery::run(ctx).await,
            Figure::Scale => scale::run(ctx).await,
            Figure::Isolation => isolation::run(ctx).await,
            Figure::External => roundtrip::external(ctx).await,
            Figure::ClientLibrary => client::run(ctx).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_by_name_or_number() {
        assert_eq!(Figure::parse("1"), Ok(Figure::RoundTrip));
        assert_eq!(Figure::parse("external"), Ok(Figure::External));
        assert_eq!(Figure::External.number(), 6);
        assert_eq!(Figure::parse("7"), Ok(Figure::ClientLibrary));
        let err = Figure::parse("8").unwrap_err();
        assert!(err.contains("7 (client)"), "{err}");
    }
}
