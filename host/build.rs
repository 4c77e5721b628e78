//! Builds the guest components (`guests/*`, and the test probe) for
//! `wasm32-wasip2` whenever the host is built, so a fresh clone's
//! `cargo run --release -- run` needs no separate build step.
//!
//! The nested cargo uses its own target directory (`target/guests`): sharing
//! the outer build's directory would deadlock on its lock.

use std::path::{Path, PathBuf};
use std::process::Command;

const GUEST_PACKAGES: &[&str] = &["wattedge-watttime", "wattedge-wattivahti", "wattedge-correlator", "wattedge-probe"];

fn main() {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let root = manifest_dir.parent().expect("host/ lives in the workspace root").to_path_buf();
    for watched in ["guests", "crates", "wit", "tests/probe", "Cargo.lock"] {
        println!("cargo:rerun-if-changed={}", root.join(watched).display());
    }
    println!("cargo:rerun-if-env-changed=WATTEDGE_GUEST_DIR");
    link_for_16k_pages();
    // Board builds (`--no-default-features`) carry no built-in guests.
    if std::env::var_os("CARGO_FEATURE_BUILTIN_GUESTS").is_none() {
        return;
    }
    // Packagers (and cross builds) may supply prebuilt guests instead.
    if let Some(dir) = std::env::var_os("WATTEDGE_GUEST_DIR") {
        let dir = PathBuf::from(dir);
        println!("cargo:rustc-env=WATTEDGE_GUEST_DIR={}", dir.display());
        emit_digests(&dir);
        return;
    }
    // A relative CARGO_TARGET_DIR is taken from the workspace root, where the
    // nested cargo runs: this script itself runs in `host/`.
    let target_dir = root.join(std::env::var_os("CARGO_TARGET_DIR").unwrap_or_else(|| "target".into())).join("guests");
    build_guests(&root, &target_dir);
    let out = target_dir.join("wasm32-wasip2").join("release");
    println!("cargo:rustc-env=WATTEDGE_GUEST_DIR={}", out.display());
    emit_digests(&out);
}

/// 64-bit ARM: align the binary's segments to 16 KiB, not GNU ld's default
/// 64 KiB. Every Raspberry Pi kernel uses 4 KiB or (Pi 5) 16 KiB pages, so
/// the binary loads on all of them with less padding in the file. A kernel
/// with 64 KiB pages could not load it.
fn link_for_16k_pages() {
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    if arch == "aarch64" && os == "linux" {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,max-page-size=16384");
    }
}

/// The sha256 of each built-in guest, computed here so that a start with a
/// warm artifact cache never reads (and so never pages in) the embedded bytes.
fn emit_digests(dir: &Path) {
    use sha2::{Digest, Sha256};
    for name in ["watttime", "wattivahti", "correlator"] {
        let path = dir.join(format!("wattedge_{name}.wasm"));
        println!("cargo:rerun-if-changed={}", path.display());
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
        let digest: String = Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect();
        println!("cargo:rustc-env=WATTEDGE_SHA256_{}={digest}", name.to_uppercase());
    }
}

fn build_guests(root: &Path, target_dir: &Path) {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut command = Command::new(cargo);
    command.current_dir(root).args(["build", "--release", "--target", "wasm32-wasip2", "--target-dir"]).arg(target_dir);
    for package in GUEST_PACKAGES {
        command.args(["-p", package]);
    }
    // Flags meant for the host build (cross linkers, target features) must not
    // leak into the wasm build.
    for var in [
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTFLAGS",
        "CARGO_BUILD_TARGET",
        "CARGO_TARGET_DIR",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_PRIMARY_PACKAGE",
    ] {
        command.env_remove(var);
    }
    // Profile overrides for the host (say CARGO_PROFILE_RELEASE_STRIP=false to
    // read its symbols) must not put debug info into the embedded guests.
    for (var, _) in std::env::vars_os() {
        if var.to_str().is_some_and(|v| v.starts_with("CARGO_PROFILE_")) {
            command.env_remove(var);
        }
    }
    let status = command.status().expect("failed to start cargo for the guest build");
    if !status.success() {
        panic!(
            "building the guest components failed (see above). If the error says the \
             wasm32-wasip2 target is missing, run: rustup target add wasm32-wasip2"
        );
    }
}
