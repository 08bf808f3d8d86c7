//! Latency samples and their summary: median, p99 and the ratio of two
//! summaries, plus the formatting of durations and rates.

use std::time::Duration;

/// The summary of a set of latency samples.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    pub count: usize,
    pub p50: Duration,
    pub p99: Duration,
    pub max: Duration,
}

impl Summary {
    /// Summarizes `samples`; `None` when there are none.
    pub fn of(samples: &[Duration]) -> Option<Summary> {
        if samples.is_empty() {
            return None;
        }
        let mut sorted = samples.to_vec();
        sorted.sort_unstable();
        Some(Summary {
            count: sorted.len(),
            p50: percentile(&sorted, 0.50),
            p99: percentile(&sorted, 0.99),
            max: sorted[sorted.len() - 1],
        })
    }

    /// "p50 182 µs · p99 410 µs".
    pub fn text(&self) -> String {
        format!("p50 {} · p99 {}", duration(self.p50), duration(self.p99))
    }

    /// The ratios of this summary's median and p99 to `baseline`'s.
    pub fn ratio_to(&self, baseline: &Summary) -> (f64, f64) {
        (ratio(self.p50, baseline.p50), ratio(self.p99, baseline.p99))
    }
}

/// Nearest-rank percentile of sorted, non-empty `sorted`.
fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// `a / b`, as a float; infinite when `b` is zero.
pub fn ratio(a: Duration, b: Duration) -> f64 {
    if b.is_zero() {
        f64::INFINITY
    } else {
        a.as_secs_f64() / b.as_secs_f64()
    }
}

/// The median of non-empty `values`.
pub fn median_f64(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_unstable_by(f64::total_cmp);
    sorted[(sorted.len() - 1) / 2]
}

/// A duration with three significant digits: "87.4 µs", "1.23 ms", "2.41 s".
pub fn duration(d: Duration) -> String {
    let us = d.as_secs_f64() * 1e6;
    if us < 1_000.0 {
        format!("{} µs", significant(us))
    } else if us < 1_000_000.0 {
        format!("{} ms", significant(us / 1e3))
    } else {
        format!("{} s", significant(us / 1e6))
    }
}

/// "1.30×".
pub fn times(r: f64) -> String {
    format!("{r:.2}×")
}

/// A rate with thousands separated: "23,412/s".
pub fn rate(per_second: f64) -> String {
    format!("{}/s", thousands(per_second.round() as u64))
}

/// "1,234,567".
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Bytes in megabytes (10^6 bytes): "41.2 MB".
pub fn megabytes(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

fn significant(x: f64) -> String {
    if x >= 100.0 {
        format!("{x:.0}")
    } else if x >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn us(n: u64) -> Duration {
        Duration::from_micros(n)
    }

    #[test]
    fn nearest_rank_percentiles() {
        let samples: Vec<Duration> = (1..=100).rev().map(us).collect();
        let s = Summary::of(&samples).unwrap();
        assert_eq!(s.count, 100);
        assert_eq!(s.p50, us(50));
        assert_eq!(s.p99, us(99));
        assert_eq!(s.max, us(100));
        let one = Summary::of(&[us(7)]).unwrap();
        assert_eq!((one.p50, one.p99), (us(7), us(7)));
        assert!(Summary::of(&[]).is_none());
    }

    #[test]
    fn ratios_and_formats() {
        let a = Summary::of(&[us(150)]).unwrap();
        let b = Summary::of(&[us(100)]).unwrap();
        let (r50, r99) = a.ratio_to(&b);
        assert!((r50 - 1.5).abs() < 1e-9 && (r99 - 1.5).abs() < 1e-9);
        assert_eq!(duration(us(87)), "87.0 µs");
        assert_eq!(duration(us(1234)), "1.23 ms");
        assert_eq!(duration(Duration::from_millis(2410)), "2.41 s");
        assert_eq!(thousands(1_234_567), "1,234,567");
        assert_eq!(thousands(999), "999");
        assert_eq!(rate(23_411.6), "23,412/s");
        assert_eq!(times(1.304), "1.30×");
        assert_eq!(median_f64(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median_f64(&[4.0, 1.0, 2.0, 3.0]), 2.0);
        assert_eq!(megabytes(41_234_567), "41.2 MB");
    }
}
