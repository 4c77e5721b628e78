//! Turning bytes into wasmtime code: compiling a `.wasm` component with
//! Cranelift (through a throwaway compiler engine) and mapping a precompiled
//! artifact, with errors that say what to do. Below both the artifact cache
//! and [`super::component`], which choose when to call it.

use std::path::Path;

use wasmtime::Engine;
use wasmtime::component::Component;

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
    Unresolved(Box<crate::oci::OciReference>),
    /// Resolving an `oci://` reference failed (`crate::fleet` says why).
    #[error(transparent)]
    Fetch(Box<dyn std::error::Error + Send + Sync>),
}

impl ComponentError {
    /// wasmtime refused to compile or load `source_name`.
    pub(crate) fn compile(source_name: &str, error: wasmtime::Error) -> ComponentError {
        ComponentError::Compile { source_name: source_name.into(), error: format!("{error:#}") }
    }
}

/// A precompiled artifact: mapped from `file` when there is one.
pub(super) fn deserialize(
    engine: &Engine,
    source_name: &str,
    bytes: &[u8],
    file: Option<&Path>,
) -> Result<Component, ComponentError> {
    // SAFETY: artifacts are produced by `wattedge compile` and loaded from
    // paths the operator configured; wasmtime checks the engine settings
    // and target recorded in the artifact and refuses a mismatch. A file is
    // mapped only after its header was checked (`detect_precompiled_file`).
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
pub(super) fn compile(engine: &Engine, source_name: &str, bytes: &[u8]) -> Result<Component, ComponentError> {
    let artifact = precompile(engine, source_name, bytes, super::engine::CompileMode::Quick)?;
    // SAFETY: compiled a moment ago by an engine with this engine's settings.
    unsafe { Component::deserialize(engine, &artifact) }.map_err(|e| ComponentError::compile(source_name, e))
}

/// Compiles a `.wasm` component into an artifact for `engine`, with a
/// throwaway compiler engine ([`super::engine::compiler_like`]) so that
/// Cranelift's working memory is freed afterwards.
#[cfg(not(target_arch = "arm"))]
pub(crate) fn precompile(
    engine: &Engine,
    source_name: &str,
    bytes: &[u8],
    mode: super::engine::CompileMode,
) -> Result<Vec<u8>, ComponentError> {
    super::engine::compiler_like(engine, mode)
        .and_then(|compiler| compiler.precompile_component(bytes))
        .map_err(|e| ComponentError::compile(source_name, e))
}

/// 32-bit ARM builds carry no compiler: guests must be precompiled.
#[cfg(target_arch = "arm")]
pub(super) fn compile(_: &Engine, source_name: &str, _: &[u8]) -> Result<Component, ComponentError> {
    Err(no_compiler(source_name))
}

#[cfg(target_arch = "arm")]
pub(crate) fn precompile(
    _: &Engine,
    source_name: &str,
    _: &[u8],
    _: super::engine::CompileMode,
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
