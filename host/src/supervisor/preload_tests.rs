//! A guest's first load started before the host's engine exists
//! ([`crate::compile::component::start_load_when`], as [`super::preload`]
//! uses it). Here, not beside it in `compile`, because the loads need the
//! capabilities' linker, a later layer than `compile`.

use std::sync::Arc;

use wasmtime::Engine;
use wasmtime::component::Linker;

use crate::compile::artifact_cache::ArtifactCache;
use crate::compile::component::{ComponentSource, sha256_hex, start_load_when};
use crate::compile::engine::{self, EngineLimits};

fn machine() -> (Engine, Arc<Linker<crate::capabilities::GuestCtx>>) {
    let engine = engine::build(EngineLimits::native(), engine::Purpose::Native).unwrap();
    let linker = Arc::new(crate::capabilities::linker(&engine).unwrap());
    (engine, linker)
}

#[tokio::test]
async fn a_file_replaced_while_its_load_waits_for_the_engine_reports_the_digest_of_the_bytes_loaded() {
    let dir = tempfile::tempdir().unwrap();
    let (engine, linker) = machine();
    let first = engine.precompile_component(&std::fs::read(crate::builtin::probe_path()).unwrap()).unwrap();
    let second = engine.precompile_component(crate::builtin::component("correlator").unwrap()).unwrap();
    let path = dir.path().join("guest.cwasm");
    std::fs::write(&path, &first).unwrap();
    let cache = ArtifactCache::new(dir.path().join("cache"), EngineLimits::native());
    // The file is hashed before the engine is asked for; it is replaced
    // in between, as a deploy might.
    let (replaced, next) = (path.clone(), dir.path().join("guest.next"));
    let when_built = move || {
        std::fs::write(&next, &second).unwrap();
        std::fs::rename(&next, &replaced).unwrap();
        Some((engine, linker))
    };
    let loaded = start_load_when(when_built, ComponentSource::File(path.clone()), Some(cache)).await.unwrap();
    assert_eq!(loaded.version, sha256_hex(&std::fs::read(&path).unwrap()));
    assert_ne!(loaded.version, sha256_hex(&first));
}

#[tokio::test]
async fn a_load_whose_engine_could_not_be_built_fails_without_panicking() {
    let no_engine = || None::<(Engine, Arc<Linker<crate::capabilities::GuestCtx>>)>;
    let source = ComponentSource::File(crate::builtin::probe_path());
    let error = start_load_when(no_engine, source, None).await.err().expect("no engine, no load");
    assert!(error.to_string().contains("engine could not be built"), "{error}");
}

#[tokio::test]
async fn a_load_started_before_the_engine_reports_the_file_s_sha256() {
    let (engine, linker) = machine();
    let wasm = crate::builtin::probe_path();
    let loaded = start_load_when(move || Some((engine, linker)), ComponentSource::File(wasm.clone()), None).await;
    assert_eq!(loaded.unwrap().version, sha256_hex(&std::fs::read(&wasm).unwrap()));
}
