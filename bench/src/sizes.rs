//! Stripped size of the host binary per target: x86_64 in the harness's
//! profile, the boards as `cargo board` builds them (the size-tuned `board`
//! profile, no built-in guests). A full run builds the board binaries when
//! the cross linker is installed; otherwise, and in quick mode, a binary
//! older than the sources it is built from is reported as missing, never
//! measured. Also the board-like x86_64 binary whose idle RSS
//! [`crate::process::board_idle`] measures ([`board_like`]).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::SystemTime;

use crate::report::Figure;

/// A board target: triple, size limit in MiB, what it carries, its cross
/// linker and the Debian package that has it.
const BOARDS: [(&str, f64, &str, &str, &str); 2] = [
    ("aarch64-unknown-linux-gnu", 8.0, "Cranelift, HTTP, TLS", "aarch64-linux-gnu-gcc", "gcc-aarch64-linux-gnu"),
    (
        "armv7-unknown-linux-gnueabihf",
        4.5,
        "Pulley, runtime only",
        "arm-linux-gnueabihf-gcc",
        "gcc-arm-linux-gnueabihf",
    ),
];

/// The size figures; `build_boards` builds the board binaries first.
pub fn sizes(root: &Path, profile: &str, build_boards: bool) -> Vec<Figure> {
    let target = crate::target_dir(root);
    let host = target.join(profile).join("wattedge");
    let mut figures = vec![match std::fs::metadata(&host) {
        Ok(meta) => Figure::info("binary size, x86_64", mib(meta.len()), format!("{profile} profile")),
        Err(_) => Figure::missing("binary size, x86_64", "—", "not built"),
    }];
    for (triple, limit, what, linker, package) in BOARDS {
        let name = format!("binary size, {triple}");
        let bound = format!("≤ {limit} MiB");
        let binary = target.join(triple).join("board").join("wattedge");
        if build_boards && let Err(why) = build_board(root, triple, linker, package) {
            figures.push(Figure::missing(&name, &bound, &why));
            continue;
        }
        let figure = match std::fs::metadata(&binary) {
            Err(_) => Figure::missing(&name, &bound, &format!("not built: cargo board --target {triple}")),
            Ok(_) if is_stale(root, &binary, &[]) => Figure::missing(
                &name,
                &bound,
                &format!("stale: built before the last source change; cargo board --target {triple}"),
            ),
            Ok(meta) => Figure::bounded(
                &name,
                meta.len() as f64 / 1048576.0,
                "MiB",
                limit,
                false,
                format!("{what}; board profile"),
            ),
        };
        figures.push(figure);
    }
    figures
}

fn mib(bytes: u64) -> String {
    format!("{:.2} MiB", bytes as f64 / 1048576.0)
}

/// Runs `cargo board --target triple` (the alias in .cargo/config.toml).
fn build_board(root: &Path, triple: &str, linker: &str, package: &str) -> Result<(), String> {
    let has_linker = Command::new(linker).arg("--version").stdout(Stdio::null()).status().is_ok_and(|s| s.success());
    if !has_linker {
        return Err(format!("{linker} is not installed (apt-get install {package}); not built"));
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let built = Command::new(cargo).current_dir(root).args(["board", "--target", triple]).status();
    match built {
        Ok(status) if status.success() => Ok(()),
        Ok(status) => Err(format!("cargo board --target {triple} failed ({status})")),
        Err(e) => Err(format!("cannot run cargo: {e}")),
    }
}

/// Whether `binary` is older than a file it is built from: the host's
/// sources, and `extra` (the built-in guests, for a binary that embeds them).
pub fn is_stale(root: &Path, binary: &Path, extra: &[&str]) -> bool {
    let built = std::fs::metadata(binary).and_then(|m| m.modified());
    let sources = ["host/src", "host/Cargo.toml", "wit", "targets", "Cargo.toml", "Cargo.lock"];
    let newest = sources.iter().chain(extra).filter_map(|r| newest_in(&root.join(r))).max();
    matches!((built, newest), (Ok(built), Some(newest)) if built < newest)
}

fn newest_in(path: &Path) -> Option<SystemTime> {
    let meta = std::fs::metadata(path).ok()?;
    if !meta.is_dir() {
        return meta.modified().ok();
    }
    let children: Vec<PathBuf> = std::fs::read_dir(path).ok()?.filter_map(|e| e.ok().map(|e| e.path())).collect();
    children.iter().filter_map(|c| newest_in(c)).max()
}

/// The board-like build's own target directory (under the workspace's).
const BOARD_LIKE_DIR: &str = "bench-board";

/// The `cargo board` arguments, for the host triple, into `target/bench-board`.
const BOARD_LIKE_ARGS: [&str; 8] =
    ["build", "--profile", "board", "-p", "wattedge", "--no-default-features", "--features", "influx-v2"];

/// The board-like x86_64 binary (what `cargo board` builds, for this
/// machine): built now when `build`, else taken only when it is newer than
/// its sources. The error says why there is none.
pub fn board_like(root: &Path, build: bool) -> Result<PathBuf, String> {
    let dir = crate::target_dir(root).join(BOARD_LIKE_DIR);
    let binary = dir.join("board").join("wattedge");
    if build {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let built = Command::new(cargo).current_dir(root).args(BOARD_LIKE_ARGS).arg("--target-dir").arg(&dir).status();
        match built {
            Ok(status) if status.success() => {}
            Ok(status) => return Err(format!("cargo {} failed ({status})", BOARD_LIKE_ARGS.join(" "))),
            Err(e) => return Err(format!("cannot run cargo: {e}")),
        }
    }
    if !binary.exists() {
        return Err(format!("not built: cargo {} --target-dir {}", BOARD_LIKE_ARGS.join(" "), dir.display()));
    }
    if is_stale(root, &binary, &[]) {
        return Err("stale: built before the last source change; run without --no-build".into());
    }
    Ok(binary)
}
