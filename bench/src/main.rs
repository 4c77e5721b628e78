//! `wattedge-bench`: measures wattedge against its targets in one run and
//! prints a markdown table (also written to `target/bench/report.md`).
//!
//! `cargo run --release -p wattedge-bench` for real figures;
//! `cargo run -p wattedge-bench -- --quick` (what CI runs) only proves the
//! harness works: fewer repetitions, smaller inputs, a debug build.
//! `--only correlator` (or `swap`, `calls`) runs one in-process figure
//! group alone, without building the host binary; `--only cold` builds it
//! and times the two cold starts alone; `--only board` builds the board-like
//! binary (`target/bench-board`) and measures its idle RSS alone (report:
//! `report-GROUP.md`).
//! Timings are medians of repeated runs with their spread; the machine is
//! shared and noisy, so compare figures measured in the same run.

mod influx;
mod influx_server;
mod inproc;
mod native;
mod process;
mod report;
mod sizes;

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
    /// Restarts (and board-like starts) whose idle RSS is measured.
    restarts: usize,
    swaps: usize,
    events: usize,
    readings: usize,
    calls: u64,
    points: u64,
    /// Points per repeat of the end-to-end throughput figure.
    throughput_points: u64,
    /// Points written during each outage of the replay figure.
    outage_points: u64,
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
                restarts: 1,
                swaps: 10,
                events: 1_000,
                readings: 10_000,
                // Enough calls to stand out of one invoke's noise (10 000
                // took 3.5 ms against an empty run's 4.1 ms once on a
                // loaded machine, and the figure refused to count that).
                calls: 200_000,
                points: 2_000,
                throughput_points: 20_000,
                outage_points: 10_000,
                repeats: 1,
            }
        } else {
            Plan {
                quick,
                cold_starts: 7,
                idle: Duration::from_secs(60),
                restarts: 5,
                swaps: 50,
                events: 10_000,
                readings: 100_000,
                calls: 1_000_000,
                points: 50_000,
                throughput_points: 200_000,
                outage_points: 100_000,
                repeats: 5,
            }
        }
    }
}

fn profile() -> &'static str {
    if cfg!(debug_assertions) { "debug" } else { "release" }
}

/// Cargo's target directory: `CARGO_TARGET_DIR`, or `target/` in the workspace.
pub(crate) fn target_dir(root: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root.join("target"))
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
    Ok(target_dir(root).join(profile()).join("wattedge"))
}

/// `--only GROUP`: the in-process figure group to run alone (for profiling one figure).
fn only_group() -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == "--only").map(|i| args.get(i + 1).cloned().unwrap_or_default())
}

/// The one group `--only` runs that needs the host binary.
const COLD_GROUP: &str = "cold";

/// The group that builds (unless `--no-build`) and measures the board-like
/// binary alone, even with `--quick` (fewer starts).
const BOARD_GROUP: &str = "board";

/// Runs one figure group; only [`COLD_GROUP`] uses `binary`.
async fn measure_only(plan: &Plan, group: &str, binary: &Path, root: &Path) -> Vec<Figure> {
    let result = match group {
        BOARD_GROUP => {
            let no_build = std::env::args().any(|a| a == "--no-build");
            let full = Plan { quick: false, ..Plan::from_args() };
            return board_like_idle(&full, root, !no_build);
        }
        "correlator" => inproc::correlator(plan.events, plan.readings, plan.repeats).await,
        "swap" => inproc::swap_latency(plan.swaps).await,
        "calls" => inproc::guest_calls(plan.calls, plan.points, plan.repeats).await,
        INFLUX_GROUP => return influx_figures(plan).await,
        COLD_GROUP => process::cold_start(binary, plan.cold_starts)
            .and_then(|wasm| Ok(vec![wasm, process::cold_start_precompiled(binary, plan.cold_starts)?])),
        other => {
            Err(anyhow::anyhow!("--only {other:?}: unknown group; use correlator, swap, calls, influx, cold or board"))
        }
    };
    result.unwrap_or_else(|e| vec![Figure::missing(group, "—", &format!("failed: {e:#}"))])
}

/// The board-like build's idle RSS: built in a full run; in quick mode
/// not built (reported missing), with `--no-build` measured only when fresh.
fn board_like_idle(plan: &Plan, root: &Path, build: bool) -> Vec<Figure> {
    const NAME: &str = "idle RSS, board-like build";
    const TARGET: &str = "≤ 10 MiB";
    if plan.quick {
        return vec![Figure::missing(NAME, TARGET, "not built in quick mode")];
    }
    match sizes::board_like(root, build) {
        Ok(binary) => process::board_idle(&binary, plan.restarts, Duration::from_secs(2))
            .unwrap_or_else(|e| vec![Figure::missing(NAME, TARGET, &format!("failed: {e:#}"))]),
        Err(why) => vec![Figure::missing(NAME, TARGET, &why)],
    }
}

async fn measure(plan: &Plan, binary: &Path, root: &Path, build_boards: bool) -> Vec<Figure> {
    let mut figures = sizes::sizes(root, profile(), build_boards);
    figures.extend(board_like_idle(plan, root, build_boards));
    let steps: Vec<(&str, anyhow::Result<Vec<Figure>>)> = vec![
        ("idle", process::idle(binary, plan.idle, plan.restarts)),
        ("cold start", process::cold_start(binary, plan.cold_starts).map(|f| vec![f])),
        ("cold start, precompiled", process::cold_start_precompiled(binary, plan.cold_starts).map(|f| vec![f])),
        ("swap latency, precompiled", inproc::swap_latency_precompiled(plan.swaps).await.map(|f| vec![f])),
        ("swap latency", inproc::swap_latency(plan.swaps).await),
        ("correlator", inproc::correlator(plan.events, plan.readings, plan.repeats).await),
        ("guest calls and writes", inproc::guest_calls(plan.calls, plan.points, plan.repeats).await),
    ];
    for (name, result) in steps {
        match result {
            Ok(mut f) => figures.append(&mut f),
            Err(e) => figures.push(Figure::missing(name, "—", &format!("failed: {e:#}"))),
        }
    }
    figures.append(&mut influx_figures(plan).await);
    figures
}

/// The group of the figures against a real influxd (outbox write, end-to-end
/// share of influxd's ceiling, outage replay): `--only influx`.
const INFLUX_GROUP: &str = "influx";

/// The figures against a real influxd; a piece that fails is reported as such.
async fn influx_figures(plan: &Plan) -> Vec<Figure> {
    let sizes = influx::Sizes {
        outbox_points: plan.points,
        throughput_points: plan.throughput_points,
        outage_points: plan.outage_points,
        repeats: plan.repeats,
    };
    let mut figures = Vec::new();
    for (name, result) in influx::measure(&sizes).await {
        match result {
            Ok(mut f) => figures.append(&mut f),
            Err(e) => figures.push(Figure::missing(name, "—", &format!("failed: {e:#}"))),
        }
    }
    figures
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let plan = Plan::from_args();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").canonicalize()?;
    let only = only_group();
    let no_build = std::env::args().any(|a| a == "--no-build");
    let binary = if only.as_deref().is_some_and(|g| g != COLD_GROUP) {
        PathBuf::new()
    } else if no_build {
        // CI: reuse the binary the test run built (same features; a `-p wattedge`
        // build would resolve features differently and rebuild wasmtime).
        let path = target_dir(&root).join(profile()).join("wattedge");
        anyhow::ensure!(path.exists(), "--no-build: {} does not exist; build the workspace first", path.display());
        anyhow::ensure!(
            !sizes::is_stale(&root, &path, &["guests"]),
            "--no-build: {} is older than the sources it is built from (host, wit, guests); \
             build it (cargo build --release -p wattedge) or run without --no-build",
            path.display()
        );
        path
    } else {
        build_host(&root)?
    };
    let figures = match &only {
        Some(group) => measure_only(&plan, group, &binary, &root).await,
        None => measure(&plan, &binary, &root, !plan.quick && !no_build).await,
    };
    let mode =
        if plan.quick { "quick mode (proves the harness works; figures are not comparable)" } else { "full run" };
    let header = format!("# wattedge benchmark — {mode}, {} build", profile());
    let text = report::render(&figures, &header);
    println!("{text}");
    // A partial run must not overwrite the full report.
    let file = only.as_ref().map_or_else(|| "report.md".to_string(), |g| format!("report-{g}.md"));
    let out = root.join("target/bench").join(file);
    std::fs::create_dir_all(out.parent().expect("has a parent"))?;
    std::fs::write(&out, &text)?;
    eprintln!("written to {}", out.display());
    let failed = figures.iter().any(|f| f.note.starts_with("failed:"));
    if failed {
        bail!("some measurements failed to run (see the table)");
    }
    Ok(())
}
