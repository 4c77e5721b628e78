//! `wattedge compile --target PROFILE`: precompiles guests on the build
//! machine into artifacts a board loads without compiling (the only way on
//! 32-bit ARM, whose build has no compiler; on 64-bit boards it saves start-up
//! time and the compiler's memory).
//!
//! Board profiles ([`super::board`]) give the target and the engine settings.
//! An artifact only loads into an engine with the same settings and target;
//! wasmtime checks this and the host's error says how to rebuild.

use std::path::{Path, PathBuf};
use std::time::Instant;

use super::board::Profile;
use super::component::{ComponentSource, read_source};
use super::engine;

/// Why precompiling failed.
#[derive(Debug, thiserror::Error)]
pub enum PrecompileError {
    #[error("board profile {name}: {message}")]
    Engine { name: String, message: String },
    #[error(transparent)]
    Component(#[from] super::component::ComponentError),
    #[error("{guest}: compiling for {target} failed: {message}")]
    Compile { guest: String, target: String, message: String },
    #[error("{path}: cannot write artifact: {error}")]
    Write { path: String, error: std::io::Error },
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
    let engine = engine::build(profile.limits, engine::Purpose::Target(&target))
        .map_err(|e| PrecompileError::Engine { name: profile.name.clone(), message: format!("{e:#}") })?;
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
    #[cfg(feature = "builtin-guests")]
    fn artifacts_for_pulley32_are_refused_by_this_host_with_a_rebuild_hint() {
        let dir = tempfile::tempdir().unwrap();
        let guests = vec![("probe".to_string(), ComponentSource::File(crate::builtin::probe_path()))];
        let mut seen = Vec::new();
        let artifacts = compile(&crate::compile::board::profile("armv7").unwrap(), &guests, dir.path(), |p| match p {
            Progress::Start { index, total, guest } => seen.push(format!("{index}/{total} {guest}")),
            Progress::Done(a) => seen.push(format!("done {}", a.guest)),
        })
        .unwrap();
        assert_eq!(seen, ["0/1 probe", "done probe"]);
        let bytes = std::fs::read(&artifacts[0].path).unwrap();
        assert!(wasmtime::Engine::detect_precompiled(&bytes).is_some(), "a wasmtime artifact");
        let native = engine::build(engine::EngineLimits::native(), engine::Purpose::Native).unwrap();
        // The artifact is refused before its imports are looked at: no host functions needed.
        let linker = wasmtime::component::Linker::<()>::new(&native);
        let version = crate::compile::component::sha256_hex(&bytes);
        let err =
            crate::compile::component::load_cached(&native, &linker, "probe.armv7.cwasm", &bytes, &version, None, None)
                .err()
                .expect("wrong target refused");
        assert!(err.to_string().contains("wattedge compile"), "{err}");
    }
}
