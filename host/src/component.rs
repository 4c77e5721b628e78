//! Loading guest components: compile a `.wasm` or deserialize a precompiled
//! artifact, then type-check it against the `guest` world by pre-instantiating
//! it with the host's linker. A component that imports something the host
//! does not provide, or lacks `init`/`run`, is rejected here with a message
//! that says so, before it can be scheduled.

use std::borrow::Cow;
use std::path::Path;
use std::sync::Arc;

use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::{Component, Linker};

use crate::artifact_cache::ArtifactCache;
use crate::bindings::GuestPre;
use crate::capabilities::GuestCtx;
use crate::config::ComponentSource;

/// Why a component could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ComponentError {
    #[error("{source_name}: cannot read component: {error}")]
    Read { source_name: String, error: std::io::Error },
    #[error(
        "{source_name}: not a WebAssembly component or wattedge artifact (it starts with {magic:02x?}); build it with `cargo build --target wasm32-wasip2`"
    )]
    NotWasm { source_name: String, magic: Vec<u8> },
    #[error("{source_name}: invalid component: {error}")]
    Compile { source_name: String, error: String },
    #[error("{source_name}: does not match the wattedge `guest` world: {error}")]
    World { source_name: String, error: String },
    /// The artifact cache (native code the host runs) could be written by
    /// someone else.
    #[error("{source_name}: refusing the artifact cache: {error}")]
    UnsafeCache { source_name: String, error: crate::private_dir::UnsafePath },
    /// An `oci://` reference: the host resolves it to a local copy first
    /// (`supervisor::Runtime::local_source`); other commands cannot use it.
    #[error("{0}: a registry reference is resolved by the running host; this command needs a file or builtin:NAME")]
    Unresolved(Box<crate::fleet::OciReference>),
    #[error(transparent)]
    Fleet(Box<crate::fleet::FleetError>),
}

impl From<crate::fleet::FleetError> for ComponentError {
    fn from(error: crate::fleet::FleetError) -> Self {
        ComponentError::Fleet(Box::new(error))
    }
}

impl ComponentError {
    /// wasmtime refused to compile or load `source_name`.
    pub(crate) fn compile(source_name: &str, error: wasmtime::Error) -> ComponentError {
        ComponentError::Compile { source_name: source_name.into(), error: format!("{error:#}") }
    }
}

/// A compiled, type-checked component, ready to instantiate.
#[derive(Clone)]
pub struct LoadedComponent {
    pub pre: GuestPre<GuestCtx>,
    /// sha256 hex of the bytes it was loaded from.
    pub version: String,
    /// Where it came from, for messages.
    pub source_name: String,
    /// Quick code standing in until the optimized code is compiled (see
    /// [`ArtifactCache::starting_quick`]).
    pub provisional: bool,
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
pub fn load_cached(
    engine: &Engine,
    linker: &Linker<GuestCtx>,
    source_name: &str,
    bytes: &[u8],
    version: &str,
    cache: Option<&ArtifactCache>,
    file: Option<&Path>,
) -> Result<LoadedComponent, ComponentError> {
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
    let instance_pre = linker
        .instantiate_pre(&component)
        .map_err(|e| ComponentError::World { source_name: source_name.into(), error: format!("{e:#}") })?;
    let pre = GuestPre::new(instance_pre)
        .map_err(|e| ComponentError::World { source_name: source_name.into(), error: format!("{e:#}") })?;
    Ok(LoadedComponent { pre, version: version.to_string(), source_name: source_name.into(), provisional })
}

/// A precompiled artifact: mapped from `file` when there is one.
fn deserialize(
    engine: &Engine,
    source_name: &str,
    bytes: &[u8],
    file: Option<&Path>,
) -> Result<Component, ComponentError> {
    // SAFETY: artifacts are produced by `wattedge compile` and loaded from
    // paths the operator configured; wasmtime checks the engine settings
    // and target recorded in the artifact and refuses a mismatch. A file is
    // mapped only after its bytes were read and checked above.
    let result = match file {
        Some(path) => unsafe { Component::deserialize_file(engine, path) },
        None => unsafe { Component::deserialize(engine, bytes) },
    };
    result.map_err(|e| ComponentError::Compile {
        source_name: source_name.into(),
        error: format!(
            "{e:#}; rebuild the artifact with `wattedge compile --target PROFILE` for this board, \
             and set the same `board = \"PROFILE\"` in [host]"
        ),
    })
}

/// Compiles a `.wasm` component with Cranelift (see [`precompile`]).
#[cfg(not(target_arch = "arm"))]
fn compile(engine: &Engine, source_name: &str, bytes: &[u8]) -> Result<Component, ComponentError> {
    let artifact = precompile(engine, source_name, bytes, crate::engine::CompileMode::Quick)?;
    // SAFETY: compiled a moment ago by an engine with this engine's settings.
    unsafe { Component::deserialize(engine, &artifact) }.map_err(|e| ComponentError::compile(source_name, e))
}

/// Compiles a `.wasm` component into an artifact for `engine`, with a
/// throwaway compiler engine ([`crate::engine::compiler_like`]) so that
/// Cranelift's working memory is freed afterwards.
#[cfg(not(target_arch = "arm"))]
pub(crate) fn precompile(
    engine: &Engine,
    source_name: &str,
    bytes: &[u8],
    mode: crate::engine::CompileMode,
) -> Result<Vec<u8>, ComponentError> {
    crate::engine::compiler_like(engine, mode)
        .and_then(|compiler| compiler.precompile_component(bytes))
        .map_err(|e| ComponentError::compile(source_name, e))
}

/// 32-bit ARM builds carry no compiler: guests must be precompiled.
#[cfg(target_arch = "arm")]
fn compile(_: &Engine, source_name: &str, _: &[u8]) -> Result<Component, ComponentError> {
    Err(no_compiler(source_name))
}

#[cfg(target_arch = "arm")]
pub(crate) fn precompile(
    _: &Engine,
    source_name: &str,
    _: &[u8],
    _: crate::engine::CompileMode,
) -> Result<Vec<u8>, ComponentError> {
    Err(no_compiler(source_name))
}

#[cfg(target_arch = "arm")]
fn no_compiler(source_name: &str) -> ComponentError {
    ComponentError::Compile {
        source_name: source_name.into(),
        error: "this 32-bit ARM build runs precompiled guests only; on the build machine run \
                `wattedge compile --target armv7` and point `component` at the .cwasm artifact"
            .into(),
    }
}

/// Reads and loads `source` on a blocking thread, through `cache` if given.
pub async fn load_source(
    engine: Engine,
    linker: Arc<Linker<GuestCtx>>,
    source: ComponentSource,
    cache: Option<ArtifactCache>,
) -> Result<LoadedComponent, ComponentError> {
    crate::blocking::spawn_blocking(move || {
        let (name, bytes) = read_source(&source)?;
        // A built-in guest's digest comes from build.rs: with a warm cache its
        // bytes are never read, so they are never paged in.
        let (file, version) = match &source {
            ComponentSource::File(path) => (Some(path.as_path()), sha256_hex(&bytes)),
            ComponentSource::Oci(reference) => return Err(ComponentError::Unresolved(Box::new(reference.clone()))),
            ComponentSource::Builtin(name) => {
                (None, crate::builtin::digest(name).map_or_else(|| sha256_hex(&bytes), str::to_string))
            }
        };
        load_cached(&engine, &linker, &name, &bytes, &version, cache.as_ref(), file)
    })
    .await
    .unwrap_or_else(|e| Err(ComponentError::Compile { source_name: "component".into(), error: e.to_string() }))
}
