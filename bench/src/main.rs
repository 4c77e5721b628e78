//! `wattedge-bench`: measures wattedge against its targets in one run and
//! prints a markdown table (also written to `target/bench/report.md`).
//!
//! `cargo run --release -p wattedge-bench` for real figures;
//! `cargo run -p wattedge-bench -- --quick` (what CI runs) only proves the
//! harness works: fewer repetitions, smaller inputs, a debug build.
//! Timings are medians of repeated runs with their spread; the machine is
//! shared and noisy, so compare figures measured in the same run.

mod inproc;
mod process;
mod report;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail};
use report::Figure;

/// Sizes of one run of the harness.
struct Plan {
    quick: bool,
    cold_starts: usize,
    idle: Duration,
    swaps: usize,
    events: usize,
    readings: usize,
    calls: u64,
    points: u64,
    repeats: usize,
}

impl Plan {
    fn from_args() -> Plan {
        let quick = std::env::args().any(|a| a == "--quick");
        if quick {
            Plan {
                quick,
                cold_starts: 2,
                idle: Duration::from_secs(5),
                swaps: 10,
                events: 1_000,
                readings: 10_000,
                calls: 10_000,
                points: 2_000,
                repeats: 1,
            }
        } else {
            Plan {
                quick,
                cold_starts: 7,
                idle: Duration::from_secs(60),
                swaps: 50,
                events: 10_000,
                readings: 100_000,
                calls: 1_000_000,
                points: 50_000,
                repeats: 5,
            }
        }
    }
}

fn profile() -> &'static str {
    if cfg!(debug_assertions) { "debug" } else { "release" }
}

/// Builds the `wattedge` binary in this harness's profile; returns its path.
fn build_host(root: &Path) -> anyhow::Result<PathBuf> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut command = Command::new(cargo);
    command.current_dir(root).args(["build", "-p", "wattedge", "--bin", "wattedge"]);
    if profile() == "release" {
        command.arg("--release");
    }
    if !command.status().context("running cargo build")?.success() {
        bail!("building the wattedge binary failed");
    }
    Ok(root.join("target").join(profile()).join("wattedge"))
}

fn not_measured_yet() -> Vec<Figure> {
    vec![
        Figure::missing(
            "guest write of one point into the outbox, amortised",
            "≤ 20 µs",
            "the outbox (issue 4) is not part of this harness yet",
        ),
        Figure::missing(
            "end-to-end write throughput vs raw influxd ingest",
            "≥ 0.7",
            "the InfluxDB v1 backend is not part of this harness yet",
        ),
        Figure::missing(
            "outbox replay after a 100k-point outage",
            "≥ 100k points/s",
            "the outbox (issue 4) is not part of this harness yet",
        ),
    ]
}

async fn measure(plan: &Plan, binary: &Path, root: &Path) -> Vec<Figure> {
    let mut figures = process::sizes(root, profile());
    let steps: Vec<(&str, anyhow::Result<Vec<Figure>>)> = vec![
        ("idle", process::idle(binary, plan.idle)),
        ("cold start", process::cold_start(binary, plan.cold_starts).map(|f| vec![f])),
        ("cold start, precompiled", process::cold_start_precompiled(binary, plan.cold_starts).map(|f| vec![f])),
        ("swap latency, precompiled", inproc::swap_latency_precompiled(plan.swaps).await.map(|f| vec![f])),
        ("swap latency", inproc::swap_latency(plan.swaps).await),
        ("correlator", inproc::correlator(plan.events, plan.readings).await),
        ("guest calls and writes", inproc::guest_calls(plan.calls, plan.points, plan.repeats).await),
    ];
    for (name, result) in steps {
        match result {
            Ok(mut f) => figures.append(&mut f),
            Err(e) => figures.push(Figure::missing(name, "—", &format!("failed: {e:#}"))),
        }
    }
    figures.extend(not_measured_yet());
    figures
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let plan = Plan::from_args();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").canonicalize()?;
    let binary = build_host(&root)?;
    let figures = measure(&plan, &binary, &root).await;
    let mode =
        if plan.quick { "quick mode (proves the harness works; figures are not comparable)" } else { "full run" };
    let header = format!("# wattedge benchmark — {mode}, {} build", profile());
    let text = report::render(&figures, &header);
    println!("{text}");
    let out = root.join("target/bench/report.md");
    std::fs::create_dir_all(out.parent().expect("has a parent"))?;
    std::fs::write(&out, &text)?;
    eprintln!("written to {}", out.display());
    let failed = figures.iter().any(|f| f.note.starts_with("failed:"));
    if failed {
        bail!("some measurements failed to run (see the table)");
    }
    Ok(())
}
