//! The results table: one row per measurement, printed as aligned text and,
//! on request, written as a markdown table.

use std::fmt::Write as _;

/// Whether a row meets its target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Met,
    Missed,
    /// No target for this row (a baseline, or a figure given for information).
    None,
    /// A smoke run: counts are too small for the verdict to mean anything.
    Smoke,
}

impl Verdict {
    pub fn from_met(met: bool, smoke: bool) -> Verdict {
        match (smoke, met) {
            (true, _) => Verdict::Smoke,
            (false, true) => Verdict::Met,
            (false, false) => Verdict::Missed,
        }
    }

    fn text(self) -> &'static str {
        match self {
            Verdict::Met => "met",
            Verdict::Missed => "MISSED",
            Verdict::None => "",
            Verdict::Smoke => "(smoke)",
        }
    }
}

/// One measurement, against its baseline.
#[derive(Debug, Clone)]
pub struct Row {
    pub figure: String,
    pub case: String,
    pub measured: String,
    pub baseline: String,
    pub ratio: String,
    pub target: String,
    pub verdict: Verdict,
}

impl Row {
    /// A row with no baseline, ratio or target yet.
    pub fn new(figure: &str, case: impl Into<String>, measured: impl Into<String>) -> Row {
        Row {
            figure: figure.to_string(),
            case: case.into(),
            measured: measured.into(),
            baseline: String::new(),
            ratio: String::new(),
            target: String::new(),
            verdict: Verdict::None,
        }
    }

    pub fn baseline(mut self, baseline: impl Into<String>, ratio: impl Into<String>) -> Row {
        self.baseline = baseline.into();
        self.ratio = ratio.into();
        self
    }

    pub fn target(mut self, target: impl Into<String>, verdict: Verdict) -> Row {
        self.target = target.into();
        self.verdict = verdict;
        self
    }

    fn cells(&self) -> [&str; 7] {
        [
            &self.figure,
            &self.case,
            &self.measured,
            &self.baseline,
            &self.ratio,
            &self.target,
            self.verdict.text(),
        ]
    }
}

const HEADER: [&str; 7] = [
    "figure", "case", "measured", "baseline", "ratio", "target", "verdict",
];

/// The rows as aligned text columns.
pub fn text_table(rows: &[Row]) -> String {
    let mut widths = HEADER.map(|h| h.chars().count());
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row.cells()) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: [&str; 7]| {
        let mut out = String::new();
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            if i > 0 {
                out.push_str("  ");
            }
            out.push_str(cell);
            if i + 1 < cells.len() {
                out.push_str(&" ".repeat(w - cell.chars().count()));
            }
        }
        out.truncate(out.trim_end().len());
        out.push('\n');
        out
    };
    let mut out = line(HEADER);
    let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
    out.push_str(&line(std::array::from_fn(|i| rule[i].as_str())));
    for row in rows {
        out.push_str(&line(row.cells()));
    }
    out
}

/// The rows as a markdown table.
pub fn markdown_table(rows: &[Row]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "| {} |", HEADER.join(" | "));
    let _ = writeln!(out, "|{}", "---|".repeat(HEADER.len()));
    for row in rows {
        let cells: Vec<String> = row.cells().iter().map(|c| c.replace('|', "\\|")).collect();
        let _ = writeln!(out, "| {} |", cells.join(" | "));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_have_every_cell() {
        let rows = vec![
            Row::new("1 round trip", "echo", "p50 10 µs")
                .target("≤ 1.5×", Verdict::from_met(true, false)),
            Row::new("2 throughput", "10 runners", "20,000/s").baseline("a|b", "1.00×"),
        ];
        let text = text_table(&rows);
        assert_eq!(text.lines().count(), 4);
        assert!(text.lines().nth(2).unwrap().ends_with("met"));
        let md = markdown_table(&rows);
        assert!(md.contains("| 2 throughput | 10 runners | 20,000/s | a\\|b | 1.00× |  |  |"));
        assert_eq!(Verdict::from_met(false, true), Verdict::Smoke);
    }
}
