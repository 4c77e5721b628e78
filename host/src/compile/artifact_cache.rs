//! A cache of compiled guests under `state_dir/cache`, so only the first
//! start after an install or upgrade pays for Cranelift: later starts map
//! the compiled code from disk (fast, and file-backed rather than
//! anonymous memory, which matters on a 512 MiB board).
//!
//! Entries are keyed by the component's sha256, wasmtime's
//! engine-compatibility hash of the runtime engine (its tunables, such as
//! the memory reservation, its wasm features and wasmtime's version) and the
//! compile mode, so a changed engine setting or wasmtime never loads a stale
//! artifact. The runtime engine has no compiler, so Cranelift's own flags
//! are not in the hash: wasmtime checks them against the host on load, and
//! an artifact it refuses, like a corrupt one, is recompiled and replaced. The directory lives in the host's private
//! state dir: whoever can write there can already replace the host's data,
//! which is why deserializing from it is acceptable, and why the cache and
//! every artifact in it must be owned by the host's user and writable by no
//! one else (see [`crate::private_dir`]): a planted `.cwasm` is native code.

#[cfg(not(target_arch = "arm"))]
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use wasmtime::Engine;
use wasmtime::component::Component;

use super::compiler::ComponentError;
use super::engine::{CompileMode, EngineLimits};
#[cfg(not(target_arch = "arm"))]
use super::worker::{self, WorkerError, WorkerInput};
use super::worker::{CompileIn, Priority};

/// Most artifacts kept; the least recently written are removed beyond it.
const MAX_ENTRIES: usize = 16;

/// The file of remembered component digests, next to the artifacts.
const DIGESTS_FILE: &str = "digests";

/// The cache directory, and where its misses are compiled.
#[derive(Debug, Clone)]
pub struct ArtifactCache {
    dir: PathBuf,
    compile_in: CompileIn,
    /// The settings of the engine the artifacts are for, which a worker
    /// process must compile with (none on 32-bit ARM).
    #[cfg_attr(target_arch = "arm", allow(dead_code))]
    limits: EngineLimits,
    /// How hard the compiler works on misses (part of the key).
    mode: CompileMode,
    /// Whether a miss in optimized mode is first compiled quick (see
    /// [`ArtifactCache::starting_quick`]).
    start_quick: bool,
    /// The CPU priority of its worker processes.
    #[cfg_attr(target_arch = "arm", allow(dead_code))]
    priority: Priority,
}

/// A component from the cache.
pub struct Cached {
    pub component: Component,
    /// Quick code standing in for the optimized code not compiled yet (see
    /// [`ArtifactCache::starting_quick`]).
    pub provisional: bool,
}

impl ArtifactCache {
    /// A cache in `dir` (created on first write) of artifacts for an engine
    /// built with `limits`, whose misses are compiled in-process.
    pub fn new(dir: PathBuf, limits: EngineLimits) -> ArtifactCache {
        ArtifactCache {
            dir,
            compile_in: CompileIn::ThisProcess,
            limits,
            mode: CompileMode::default(),
            start_quick: false,
            priority: Priority::Normal,
        }
    }

    /// This cache, for a guest compiled in `mode`.
    pub fn for_mode(&self, mode: CompileMode) -> ArtifactCache {
        ArtifactCache { mode, ..self.clone() }
    }

    /// This cache, answering an optimized-mode miss that worker processes
    /// would compile with quick code first ([`Cached::provisional`]): it
    /// compiles in about half the time (README, "Compiling guests"), so a
    /// first start is ready sooner. The caller then gets the optimized code
    /// with [`ArtifactCache::in_background`] and replaces the quick code.
    pub fn starting_quick(self) -> ArtifactCache {
        ArtifactCache { start_quick: true, ..self }
    }

    /// This cache, compiling its misses at the lowest CPU priority.
    pub fn in_background(self) -> ArtifactCache {
        ArtifactCache { priority: Priority::Background, ..self }
    }

    /// Removes the quick artifact of `digest` that optimized code replaced.
    pub fn remove_provisional(&self, engine: &Engine, digest: &str) {
        let _ = std::fs::remove_file(self.for_mode(CompileMode::Quick).path_for(engine, digest));
    }

    /// The component files' digests remembered in this cache's directory
    /// (see [`super::digests`]).
    pub fn digests(&self) -> super::digests::Digests {
        super::digests::Digests::new(self.dir.join(DIGESTS_FILE))
    }

    /// This cache, compiling its misses where `compile_in` says.
    pub fn compiling_in(self, compile_in: CompileIn) -> ArtifactCache {
        ArtifactCache { compile_in, ..self }
    }

    /// Where the artifact for the component with sha256 `digest` (hex)
    /// lives for `engine`, compiled in this cache's mode.
    pub fn path_for(&self, engine: &Engine, digest: &str) -> PathBuf {
        let short = digest.get(..32).unwrap_or(digest);
        self.dir.join(format!("{short}-{:016x}-{}.cwasm", engine_hash(engine), self.mode.as_str()))
    }

    /// [`get_or_compile`](Self::get_or_compile), or the quick code when
    /// this cache starts quick and the optimized code is not cached yet.
    pub fn load(
        &self,
        engine: &Engine,
        source_name: &str,
        digest: &str,
        wasm: &[u8],
    ) -> Result<Cached, ComponentError> {
        let in_workers = matches!(self.compile_in, CompileIn::ChildProcess(_));
        let provisional = self.start_quick
            && in_workers
            && self.mode == CompileMode::Optimized
            && !self.path_for(engine, digest).exists();
        let cache = if provisional { self.for_mode(CompileMode::Quick) } else { self.clone() };
        Ok(Cached { component: cache.get_or_compile(engine, source_name, digest, wasm)?, provisional })
    }

    /// The cached component with sha256 `digest`, or compile `wasm`, store the
    /// artifact and map it from the cache. Mapping (rather than keeping the
    /// freshly compiled code) makes the first start's code file-backed too,
    /// so it costs what a restart costs.
    pub fn get_or_compile(
        &self,
        engine: &Engine,
        source_name: &str,
        digest: &str,
        wasm: &[u8],
    ) -> Result<Component, ComponentError> {
        let path = self.path_for(engine, digest);
        self.check_private(source_name, &path)?;
        if path.exists() {
            match map(engine, &path) {
                Ok(component) => return Ok(component),
                Err(e) => {
                    tracing::warn!(component = source_name, file = %path.display(), error = %e, "cached artifact unusable; recompiling");
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        // No compiler on 32-bit ARM (Pulley runs artifacts precompiled on the
        // build machine): no worker to start, and the board binary (budget
        // 4 MiB) carries no process-spawning code for it.
        #[cfg(not(target_arch = "arm"))]
        if let CompileIn::ChildProcess(exe) = &self.compile_in {
            match self.compile_in_child(exe, source_name, digest, wasm, &path) {
                Ok(()) => return map(engine, &path).map_err(|e| ComponentError::compile(source_name, e)),
                Err(WorkerError::Failed(error)) => {
                    return Err(ComponentError::Compile { source_name: source_name.into(), error });
                }
                Err(e @ (WorkerError::Spawn { .. } | WorkerError::CannotWrite(_))) => {
                    tracing::warn!(component = source_name, error = %e, "compiling in the host process instead");
                }
            }
        }
        self.compile_here(engine, source_name, wasm, &path)
    }

    /// Refuses the cache (creating it, 0700, if missing) or the artifact at
    /// `path` when another user owns it or could write it. A cache that
    /// cannot be created at all is no risk: nothing is mapped from it, and
    /// the guest is compiled in-process and runs uncached.
    fn check_private(&self, source_name: &str, path: &Path) -> Result<(), ComponentError> {
        let unsafe_cache = |error| ComponentError::UnsafeCache { source_name: source_name.into(), error };
        match crate::private_dir::ensure_dir(&self.dir) {
            Ok(())
            | Err(crate::private_dir::UnsafePath::Io { .. } | crate::private_dir::UnsafePath::NotDirectory { .. }) => {}
            Err(e) => return Err(unsafe_cache(e)),
        }
        match std::fs::symlink_metadata(path) {
            Ok(meta) => crate::private_dir::check(path, &meta).map_err(unsafe_cache),
            Err(_) => Ok(()),
        }
    }

    #[cfg(not(target_arch = "arm"))]
    fn compile_in_child(
        &self,
        exe: &Path,
        source_name: &str,
        digest: &str,
        wasm: &[u8],
        path: &Path,
    ) -> Result<(), WorkerError> {
        crate::private_dir::create_dir(&self.dir)
            .map_err(|e| WorkerError::CannotWrite(format!("{}: cannot create the cache: {e}", self.dir.display())))?;
        // Same digest, same bytes: the worker compiles its own embedded copy.
        let input = match source_name.strip_prefix("builtin:") {
            Some(name) if crate::builtin::digest(name) == Some(digest) => WorkerInput::Builtin(name),
            _ => WorkerInput::Bytes(wasm),
        };
        worker::compile_in_child(exe, input, (self.limits, self.mode, self.priority), path)?;
        self.prune();
        Ok(())
    }

    /// Compiles in this process (with a throwaway compiler engine), stores
    /// the artifact and maps it back.
    fn compile_here(
        &self,
        engine: &Engine,
        source_name: &str,
        wasm: &[u8],
        path: &Path,
    ) -> Result<Component, ComponentError> {
        let artifact = super::compiler::precompile(engine, source_name, wasm, self.mode)?;
        let stored = self.store(path, &artifact);
        let mapped = match stored {
            Ok(()) => map(engine, path).ok(),
            Err(e) => {
                tracing::warn!(component = source_name, error = %e, "could not cache the compiled component");
                None
            }
        };
        match mapped {
            Some(component) => Ok(component),
            // SAFETY: `artifact` was produced with this engine's settings a moment ago.
            None => unsafe { Component::deserialize(engine, &artifact) }
                .map_err(|e| ComponentError::compile(source_name, e)),
        }
    }

    fn store(&self, path: &Path, artifact: &[u8]) -> std::io::Result<()> {
        crate::private_dir::create_dir(&self.dir)?;
        crate::secrets::write_atomic(path, artifact)?;
        self.prune();
        Ok(())
    }

    /// Keeps the newest [`MAX_ENTRIES`] artifacts, and removes temp files
    /// an interrupted write left (older than an hour: not a write in progress).
    fn prune(&self) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else { return };
        let mut files: Vec<(std::time::SystemTime, PathBuf)> = entries
            .filter_map(Result::ok)
            .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
            .filter(|(modified, path)| !remove_if_stale_temp(path, *modified))
            .filter(|(_, path)| path.extension().is_some_and(|x| x == "cwasm"))
            .collect();
        files.sort();
        let excess = files.len().saturating_sub(MAX_ENTRIES);
        for (_, path) in files.into_iter().take(excess) {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Removes `path` if it is a temp file of `write_atomic` (`.NAME.tmp-...`)
/// last written over an hour ago; whether it did.
fn remove_if_stale_temp(path: &Path, modified: std::time::SystemTime) -> bool {
    let is_temp = crate::secrets::is_atomic_temp(path);
    let stale = modified.elapsed().is_ok_and(|age| age > std::time::Duration::from_secs(3600));
    is_temp && stale && std::fs::remove_file(path).is_ok()
}

/// Maps a cached artifact.
fn map(engine: &Engine, path: &Path) -> wasmtime::Result<Component> {
    // SAFETY: the file was written by this host into its private state dir
    // (see the module docs); wasmtime checks its header and settings.
    unsafe { Component::deserialize_file(engine, path) }
}

/// wasmtime's engine-compatibility hash, folded to 64 bits.
#[cfg(not(target_arch = "arm"))]
fn engine_hash(engine: &Engine) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut hasher);
    hasher.finish()
}

/// 32-bit ARM builds have no compiler, so nothing is ever cached there.
#[cfg(target_arch = "arm")]
fn engine_hash(_: &Engine) -> u64 {
    0
}

/// Returns memory freed by start-up compilation to the operating system
/// (glibc keeps freed heap pages otherwise).
pub fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks glibc's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prune_removes_temp_files_an_interrupted_write_left() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ArtifactCache::new(dir.path().to_path_buf(), EngineLimits::native());
        let stale = dir.path().join(".abc-1.cwasm.tmp-7-0");
        let fresh = dir.path().join(".abc-2.cwasm.tmp-7-1");
        for path in [&stale, &fresh] {
            std::fs::write(path, b"half an artifact").unwrap();
        }
        let two_hours_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(7200);
        std::fs::File::options().write(true).open(&stale).unwrap().set_modified(two_hours_ago).unwrap();
        cache.prune();
        assert!(!stale.exists(), "an old temp file is removed");
        assert!(fresh.exists(), "a write in progress is left alone");
    }

    #[test]
    fn a_cache_others_can_write_or_a_planted_artifact_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("cache");
        let cache = ArtifactCache::new(dir.clone(), EngineLimits::native());
        let engine =
            crate::compile::engine::build(EngineLimits::native(), crate::compile::engine::Purpose::Native).unwrap();
        let wasm = crate::builtin::component("correlator").expect("built-in guests");
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        let Err(err) = cache.get_or_compile(&engine, "builtin:correlator", "abcd", wasm) else { panic!("refused") };
        let text = err.to_string();
        assert!(text.contains(&dir.display().to_string()) && text.contains("chmod go-w"), "{text}");
        // A private cache, but an artifact others can write: refused too.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        let planted = cache.path_for(&engine, "abcd");
        std::fs::write(&planted, b"native code").unwrap();
        std::fs::set_permissions(&planted, std::fs::Permissions::from_mode(0o666)).unwrap();
        let Err(err) = cache.get_or_compile(&engine, "builtin:correlator", "abcd", wasm) else { panic!("refused") };
        assert!(err.to_string().contains(&planted.display().to_string()), "{err}");
        assert_eq!(std::fs::read(&planted).unwrap(), b"native code", "never mapped nor replaced");
    }
}
