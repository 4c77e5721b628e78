//! `wattedge compile --target PROFILE`: precompiles guests on the build
//! machine into artifacts a board loads without compiling (the only way on
//! 32-bit ARM, whose build has no compiler; on 64-bit boards it saves start-up
//! time and the compiler's memory).
//!
//! Board profiles live in `targets/*.toml` and are compiled into the binary.
//! An artifact only loads into an engine with the same settings and target;
//! wasmtime checks this and the host's error says how to rebuild.

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Deserialize;

use crate::component::read_source;
use crate::config::ComponentSource;
use crate::engine::{self, EngineLimits};

/// The board profiles shipped with this build: (name, TOML).
const PROFILES: &[(&str, &str)] = &[
    ("pi-zero-2w", include_str!("../../targets/pi-zero-2w.toml")),
    ("pi3", include_str!("../../targets/pi3.toml")),
    ("pi4", include_str!("../../targets/pi4.toml")),
    ("pi5", include_str!("../../targets/pi5.toml")),
    ("armv7", include_str!("../../targets/armv7.toml")),
];

/// Why precompiling failed.
#[derive(Debug, thiserror::Error)]
pub enum PrecompileError {
    #[error("no board profile named {0:?}; profiles: {list}", list = profile_names())]
    UnknownProfile(String),
    #[error("profile {name}: {message}")]
    BadProfile { name: String, message: String },
    #[error(transparent)]
    Component(#[from] crate::component::ComponentError),
    #[error("{guest}: compiling for {target} failed: {message}")]
    Compile { guest: String, target: String, message: String },
    #[error("{path}: cannot write artifact: {error}")]
    Write { path: String, error: std::io::Error },
}

/// One board profile (`targets/NAME.toml`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    #[serde(skip)]
    pub name: String,
    /// The Rust target the host binary is built for.
    pub rust_target: String,
    /// `aarch64` (Cranelift) or `pulley32` (interpreter).
    pub engine: String,
    pub default_memory_limit: String,
    pub default_run_timeout: String,
}

impl Profile {
    /// The wasmtime compilation target for this board.
    pub fn compiler_target(&self) -> &str {
        match self.engine.as_str() {
            "aarch64" => "aarch64-unknown-linux-gnu",
            other => other,
        }
    }

    fn pointer_bits(&self) -> u32 {
        if self.engine.ends_with("32") || self.rust_target.starts_with("armv7") { 32 } else { 64 }
    }
}

fn profile_names() -> String {
    PROFILES.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
}

/// Looks up a shipped profile by name.
pub fn profile(name: &str) -> Result<Profile, PrecompileError> {
    let (_, text) =
        PROFILES.iter().find(|(n, _)| *n == name).ok_or_else(|| PrecompileError::UnknownProfile(name.into()))?;
    let mut profile: Profile = toml::from_str(text)
        .map_err(|e| PrecompileError::BadProfile { name: name.into(), message: e.message().to_string() })?;
    profile.name = name.to_string();
    Ok(profile)
}

/// One artifact written by [`compile`].
#[derive(Debug)]
pub struct Artifact {
    pub guest: String,
    pub path: PathBuf,
    pub input_bytes: usize,
    pub output_bytes: usize,
    pub seconds: f64,
}

/// Progress of [`compile`], for the CLI's display.
pub enum Progress<'a> {
    /// Guest `index` of `total` is being compiled.
    Start { index: usize, total: usize, guest: &'a str },
    /// An artifact was written.
    Done(&'a Artifact),
}

/// Precompiles each `(guest, source)` for `profile` into `out_dir`,
/// reporting each step to `progress`.
pub fn compile(
    profile: &Profile,
    guests: &[(String, ComponentSource)],
    out_dir: &Path,
    mut progress: impl FnMut(Progress<'_>),
) -> Result<Vec<Artifact>, PrecompileError> {
    let target = profile.compiler_target().to_string();
    let limits = EngineLimits::for_pointer_width(profile.pointer_bits());
    let engine = engine::build_for_target(&target, limits)
        .map_err(|e| PrecompileError::BadProfile { name: profile.name.clone(), message: format!("{e:#}") })?;
    std::fs::create_dir_all(out_dir)
        .map_err(|error| PrecompileError::Write { path: out_dir.display().to_string(), error })?;
    let mut artifacts = Vec::new();
    for (index, (guest, source)) in guests.iter().enumerate() {
        progress(Progress::Start { index, total: guests.len(), guest });
        let started = Instant::now();
        let (_, bytes) = read_source(source)?;
        let compiled = engine.precompile_component(&bytes).map_err(|e| PrecompileError::Compile {
            guest: guest.clone(),
            target: target.clone(),
            message: format!("{e:#}"),
        })?;
        let path = out_dir.join(format!("{guest}.{}.cwasm", profile.name));
        crate::secrets::write_atomic(&path, &compiled)
            .map_err(|error| PrecompileError::Write { path: path.display().to_string(), error })?;
        let seconds = started.elapsed().as_secs_f64();
        let artifact =
            Artifact { guest: guest.clone(), path, input_bytes: bytes.len(), output_bytes: compiled.len(), seconds };
        progress(Progress::Done(&artifact));
        artifacts.push(artifact);
    }
    Ok(artifacts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_shipped_profile_parses_and_names_a_known_engine() {
        for (name, _) in PROFILES {
            let p = profile(name).unwrap();
            assert!(["aarch64", "pulley32"].contains(&p.engine.as_str()), "{name}: {}", p.engine);
            assert!(crate::config::parse_size(&p.default_memory_limit).is_ok(), "{name}");
        }
        let err = profile("pi9").unwrap_err().to_string();
        assert!(err.contains("pi4") && err.contains("armv7"), "{err}");
    }

    #[test]
    #[cfg(feature = "builtin-guests")]
    fn artifacts_for_pulley32_are_refused_by_this_host_with_a_rebuild_hint() {
        let dir = tempfile::tempdir().unwrap();
        let guests = vec![("probe".to_string(), ComponentSource::File(crate::builtin::probe_path()))];
        let mut seen = Vec::new();
        let artifacts = compile(&profile("armv7").unwrap(), &guests, dir.path(), |p| match p {
            Progress::Start { index, total, guest } => seen.push(format!("{index}/{total} {guest}")),
            Progress::Done(a) => seen.push(format!("done {}", a.guest)),
        })
        .unwrap();
        assert_eq!(seen, ["0/1 probe", "done probe"]);
        let bytes = std::fs::read(&artifacts[0].path).unwrap();
        assert!(wasmtime::Engine::detect_precompiled(&bytes).is_some(), "a wasmtime artifact");
        let native = engine::build(EngineLimits::native()).unwrap();
        let linker = crate::capabilities::linker(&native).unwrap();
        let version = crate::component::sha256_hex(&bytes);
        let err = crate::component::load_cached(&native, &linker, "probe.armv7.cwasm", &bytes, &version, None, None)
            .err()
            .expect("wrong target refused");
        assert!(err.to_string().contains("wattedge compile"), "{err}");
    }
}
