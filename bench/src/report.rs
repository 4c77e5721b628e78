//! The report: one row per figure with the measured value, the target and
//! PASS / MISS, printed as a markdown table and written to a file.

use std::fmt::Write as _;

/// How a figure compares with its target.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Verdict {
    Pass,
    Miss,
    /// No target (reported for reference).
    Info,
    /// Could not be measured in this build; the note says why.
    NotMeasured,
}

/// One line of the report.
#[derive(Debug, Clone)]
pub struct Figure {
    pub name: String,
    pub value: String,
    pub target: String,
    pub verdict: Verdict,
    pub note: String,
}

impl Figure {
    /// A figure with a numeric target: `value <= max` (or `>=` when `at_least`).
    pub fn bounded(name: &str, value: f64, unit: &str, bound: f64, at_least: bool, note: String) -> Figure {
        let pass = if at_least { value >= bound } else { value <= bound };
        let cmp = if at_least { "≥" } else { "≤" };
        Figure {
            name: name.into(),
            value: format!("{} {unit}", human(value)),
            target: format!("{cmp} {} {unit}", human(bound)),
            verdict: if pass { Verdict::Pass } else { Verdict::Miss },
            note,
        }
    }

    /// A figure reported for reference only.
    pub fn info(name: &str, value: String, note: String) -> Figure {
        Figure { name: name.into(), value, target: "—".into(), verdict: Verdict::Info, note }
    }

    /// A figure this build cannot measure, with the reason.
    pub fn missing(name: &str, target: &str, why: &str) -> Figure {
        Figure {
            name: name.into(),
            value: "not measured".into(),
            target: target.into(),
            verdict: Verdict::NotMeasured,
            note: why.into(),
        }
    }
}

fn human(v: f64) -> String {
    if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

/// The markdown table.
pub fn render(figures: &[Figure], header: &str) -> String {
    let mut out = format!("{header}\n\n| figure | measured | target | verdict | notes |\n|---|---|---|---|---|\n");
    for f in figures {
        let verdict = match f.verdict {
            Verdict::Pass => "PASS",
            Verdict::Miss => "MISS",
            Verdict::Info => "info",
            Verdict::NotMeasured => "MISSING",
        };
        let _ = writeln!(out, "| {} | {} | {} | {} | {} |", f.name, f.value, f.target, verdict, f.note);
    }
    let count = |v: Verdict| figures.iter().filter(|f| f.verdict == v).count();
    let _ = writeln!(
        out,
        "\n{} passed, {} missed, {} not measured",
        count(Verdict::Pass),
        count(Verdict::Miss),
        count(Verdict::NotMeasured)
    );
    out
}

/// Median and spread (min–max) of samples.
pub fn median_spread(samples: &mut [f64]) -> (f64, f64, f64) {
    samples.sort_by(f64::total_cmp);
    let n = samples.len();
    let median = if n % 2 == 1 { samples[n / 2] } else { (samples[n / 2 - 1] + samples[n / 2]) / 2.0 };
    (median, samples[0], samples[n - 1])
}

/// The `q` quantile (0..=1) of sorted samples.
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    let idx = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}
