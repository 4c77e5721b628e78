//! Loading guest components: read a source, compile a `.wasm` (through the
//! artifact cache) or map a precompiled artifact, then type-check it against
//! the `guest` world by pre-instantiating it with the linker the caller
//! gives (the host's, over its `GuestCtx`). A component that imports
//! something the host does not provide, or lacks `init`/`run`, is rejected
//! here with a message that says so, before it can be scheduled.

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;

use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::{Component, Linker};

use super::artifact_cache::ArtifactCache;
pub use super::compiler::ComponentError;
use super::compiler::{compile, deserialize};
use super::digests::{self, Stamp};
use crate::bindings::GuestPre;

/// Where a guest's component comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ComponentSource {
    /// One of the guests compiled into this binary (`builtin:watttime`).
    Builtin(String),
    /// A `.wasm` component or a precompiled artifact on disk.
    File(PathBuf),
    /// A component in an OCI registry: the running host resolves it to a
    /// verified local file first (`crate::fleet`).
    Oci(crate::oci::OciReference),
}

/// A compiled, type-checked component, ready to instantiate in a store
/// whose data is `T` (the host's `GuestCtx`; the linker decides).
pub struct LoadedComponent<T: 'static> {
    pub pre: GuestPre<T>,
    /// sha256 hex of the bytes it was loaded from.
    pub version: String,
    /// Where it came from, for messages.
    pub source_name: String,
    /// Quick code standing in until the optimized code is compiled (see
    /// [`ArtifactCache::starting_quick`]).
    pub provisional: bool,
}

// By hand: a derive would demand `T: Clone`, which the store data is not.
impl<T: 'static> Clone for LoadedComponent<T> {
    fn clone(&self) -> Self {
        LoadedComponent {
            pre: self.pre.clone(),
            version: self.version.clone(),
            source_name: self.source_name.clone(),
            provisional: self.provisional,
        }
    }
}

/// The bytes of `source`: borrowed from the binary for a built-in guest.
pub fn read_source(source: &ComponentSource) -> Result<(String, Cow<'static, [u8]>), ComponentError> {
    match source {
        ComponentSource::Builtin(name) => {
            let bytes = crate::builtin::component(name).ok_or_else(|| ComponentError::Read {
                source_name: format!("builtin:{name}"),
                error: std::io::Error::new(std::io::ErrorKind::NotFound, "no such built-in guest"),
            })?;
            Ok((format!("builtin:{name}"), Cow::Borrowed(bytes)))
        }
        ComponentSource::File(path) => {
            let source_name = path.display().to_string();
            let bytes = std::fs::read(path)
                .map_err(|error| ComponentError::Read { source_name: source_name.clone(), error })?;
            Ok((source_name, Cow::Owned(bytes)))
        }
        ComponentSource::Oci(reference) => Err(ComponentError::Unresolved(Box::new(reference.clone()))),
    }
}

/// The version of a component: the sha256 of its bytes, in hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Compiles (or deserializes) and type-checks `bytes`, whose sha256 is
/// `version`; CPU-heavy, so call it from a blocking thread. A `.wasm`
/// component's compiled code comes from `cache` when it has it (and is
/// stored there when it does not). A precompiled artifact read from `file` is
/// mapped from that file rather than copied, so its code is file-backed
/// memory the kernel can share and drop.
pub fn load_cached<T: 'static>(
    engine: &Engine,
    linker: &Linker<T>,
    source_name: &str,
    bytes: &[u8],
    version: &str,
    cache: Option<&ArtifactCache>,
    file: Option<&Path>,
) -> Result<LoadedComponent<T>, ComponentError> {
    let mut provisional = false;
    let component = if bytes.starts_with(b"\0asm") {
        match cache {
            Some(cache) => {
                let cached = cache.load(engine, source_name, version, bytes)?;
                provisional = cached.provisional;
                cached.component
            }
            // Uncached compiles only type-check (`check`, tests): quick will do.
            None => compile(engine, source_name, bytes)?,
        }
    } else if Engine::detect_precompiled(bytes).is_some() {
        deserialize(engine, source_name, bytes, file)?
    } else {
        return Err(ComponentError::NotWasm {
            source_name: source_name.into(),
            magic: bytes.iter().take(4).copied().collect(),
        });
    };
    type_check(linker, source_name, &component, version, provisional)
}

/// Type-checks `component` against the `guest` world of `linker`.
fn type_check<T: 'static>(
    linker: &Linker<T>,
    source_name: &str,
    component: &Component,
    version: &str,
    provisional: bool,
) -> Result<LoadedComponent<T>, ComponentError> {
    let world = |e: wasmtime::Error| ComponentError::World { source_name: source_name.into(), error: format!("{e:#}") };
    let pre = GuestPre::new(linker.instantiate_pre(component).map_err(world)?).map_err(world)?;
    Ok(LoadedComponent { pre, version: version.to_string(), source_name: source_name.into(), provisional })
}

/// How often [`load_file`] loads a file that changes while it is loaded
/// before it gives up (the file watcher tries again once it settles).
const LOAD_ATTEMPTS: usize = 3;

/// Loads the component file at `path`. Its version comes from the digests
/// remembered in `cache` when the file has not changed since it was hashed
/// ([`digests`]), else from hashing it; a precompiled artifact is mapped,
/// never read whole. The file's stamp is checked again once it is loaded,
/// so the version is always that of the bytes loaded, even when the file
/// was replaced meanwhile.
///
/// `hashed` is the file's version and stamp when they were taken already
/// ([`start_load_when`]); the check after the load holds for them too.
fn load_file<T: 'static>(
    engine: &Engine,
    linker: &Linker<T>,
    path: &Path,
    cache: Option<&ArtifactCache>,
    mut hashed: Option<Hashed>,
) -> Result<LoadedComponent<T>, ComponentError> {
    let source_name = path.display().to_string();
    let read_error = |error| ComponentError::Read { source_name: source_name.clone(), error };
    let digests = cache.map(ArtifactCache::digests);
    for _ in 0..LOAD_ATTEMPTS {
        let hashed = hashed.take().unwrap_or_else(|| digests::of_file(path, digests.as_ref()));
        let (version, stamp) = hashed.map_err(read_error)?;
        let loaded = load_hashed(engine, linker, &source_name, path, &version, cache)?;
        if Stamp::of(path).is_ok_and(|now| now == stamp) {
            return Ok(loaded);
        }
    }
    Err(read_error(std::io::Error::other(
        "the file kept changing while it was loaded; it is tried again once it settles",
    )))
}

/// Loads the file at `path`, whose sha256 is `version`: a `.wasm` is read
/// (to compile it, or find its code in `cache`), an artifact mapped.
fn load_hashed<T: 'static>(
    engine: &Engine,
    linker: &Linker<T>,
    source_name: &str,
    path: &Path,
    version: &str,
    cache: Option<&ArtifactCache>,
) -> Result<LoadedComponent<T>, ComponentError> {
    let read_error = |error| ComponentError::Read { source_name: source_name.into(), error };
    let magic = magic(path).map_err(read_error)?;
    if magic == *b"\0asm" {
        let bytes = std::fs::read(path).map_err(read_error)?;
        return load_cached(engine, linker, source_name, &bytes, version, cache, Some(path));
    }
    if !matches!(Engine::detect_precompiled_file(path), Ok(Some(_))) {
        return Err(ComponentError::NotWasm { source_name: source_name.into(), magic });
    }
    let component = deserialize(engine, source_name, &[], Some(path))?;
    type_check(linker, source_name, &component, version, false)
}

/// The first four bytes of the file at `path` (fewer if it is shorter).
fn magic(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read as _;
    let mut magic = Vec::with_capacity(4);
    std::fs::File::open(path)?.take(4).read_to_end(&mut magic)?;
    Ok(magic)
}

/// A load under way on a blocking thread (see [`start_load_when`]).
pub type PendingLoad<T> = Pin<Box<dyn Future<Output = Result<LoadedComponent<T>, ComponentError>> + Send>>;

/// Reads and loads `source` on a blocking thread, through `cache` if given.
pub async fn load_source<T: Send + 'static>(
    engine: Engine,
    linker: Arc<Linker<T>>,
    source: ComponentSource,
    cache: Option<ArtifactCache>,
) -> Result<LoadedComponent<T>, ComponentError> {
    pending(crate::blocking::start(move || load_on(&engine, &linker, &source, cache.as_ref(), None))).await
}

/// A file's sha256 (hex) and its stamp before it was hashed, or why it
/// could not be read ([`digests::of_file`]).
pub type Hashed = std::io::Result<(String, Stamp)>;

/// Starts loading `source` at once, before the engine exists: the host
/// starts its guests' loads while its engine is built and its stores
/// opened (README, "Where a cold start goes"). A file is hashed first (its
/// version needs no engine), then `machine` is waited for (it blocks until
/// the engine is built; `None` when it could not be) and the load goes on.
pub fn start_load_when<T: Send + 'static>(
    machine: impl FnOnce() -> Option<(Engine, Arc<Linker<T>>)> + Send + 'static,
    source: ComponentSource,
    cache: Option<ArtifactCache>,
) -> PendingLoad<T> {
    pending(crate::blocking::start(move || {
        let hashed = match &source {
            ComponentSource::File(path) => {
                Some(digests::of_file(path, cache.as_ref().map(ArtifactCache::digests).as_ref()))
            }
            _ => None,
        };
        let Some((engine, linker)) = machine() else {
            let error = "the engine could not be built".to_string();
            return Err(ComponentError::Compile { source_name: "component".into(), error });
        };
        load_on(&engine, &linker, &source, cache.as_ref(), hashed)
    }))
}

/// Loads `source` on `engine`, through `cache` if given; a file's version
/// is `hashed` when it was taken already.
fn load_on<T: 'static>(
    engine: &Engine,
    linker: &Linker<T>,
    source: &ComponentSource,
    cache: Option<&ArtifactCache>,
    hashed: Option<Hashed>,
) -> Result<LoadedComponent<T>, ComponentError> {
    match source {
        ComponentSource::File(path) => load_file(engine, linker, path, cache, hashed),
        ComponentSource::Oci(reference) => Err(ComponentError::Unresolved(Box::new(reference.clone()))),
        ComponentSource::Builtin(name) => {
            let (source_name, bytes) = read_source(source)?;
            // A built-in guest's digest comes from build.rs: with a warm cache its
            // bytes are never read, so they are never paged in.
            let version = crate::builtin::digest(name).map_or_else(|| sha256_hex(&bytes), str::to_string);
            load_cached(engine, linker, &source_name, &bytes, &version, cache, None)
        }
    }
}

/// A blocking job's load as a [`PendingLoad`] (a job that panicked is a
/// failed load).
fn pending<T: 'static>(
    job: impl Future<Output = Result<Result<LoadedComponent<T>, ComponentError>, tokio::task::JoinError>> + Send + 'static,
) -> PendingLoad<T> {
    Box::pin(async move {
        job.await
            .unwrap_or_else(|e| Err(ComponentError::Compile { source_name: "component".into(), error: e.to_string() }))
    })
}
