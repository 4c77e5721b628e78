//! Tier-up: a guest whose `.wasm` had no optimized code in the artifact
//! cache starts on quick code (compiled in about half the time, so a first
//! start is ready sooner; see `ArtifactCache::starting_quick`), and this
//! replaces it with optimized code as soon as a worker process, at the
//! lowest CPU priority, has compiled it.
//!
//! The optimized code is type-checked and `init`ed in a fresh store off the
//! guest's task, like a swap, and handed to the task, which installs it
//! between runs. Unlike a swap it is the same version: the rollback target,
//! the swap time and the run history stay as they are. If anything fails,
//! the guest keeps its quick code and the failure is logged.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::{GuestHandle, Runtime, swap};
use crate::compile::artifact_cache::ArtifactCache;
use crate::compile::component;

/// Compiles, loads and initialises the optimized code of `version` (the
/// version the guest's configured source had when the guest started on its
/// quick code) and offers it to the guest's task.
pub async fn run(runtime: Arc<Runtime>, handle: Arc<GuestHandle>, version: String, shutdown: CancellationToken) {
    let work = prepare(&runtime, &handle, &version);
    let prepared = tokio::select! {
        _ = shutdown.cancelled() => return,
        prepared = work => prepared,
    };
    match prepared {
        Ok(Some(prepared)) => {
            if let Some(cache) = &runtime.cache {
                cache.remove_provisional(&runtime.engine, &version);
            }
            handle.tier_up.offer(prepared);
        }
        Ok(None) => handle.record.lock().expect("record lock").optimizing = false,
        Err(e) => {
            tracing::warn!(guest = %handle.config.name, error = %crate::guest_text::shown(&e), "could not compile the optimized code; the guest keeps running its quick code");
            handle.record.lock().expect("record lock").optimizing = false;
        }
    }
}

/// The prepared optimized code, or `None` when the configured source no
/// longer holds `version` (the file changed: the file watcher swaps it).
async fn prepare(
    runtime: &Runtime,
    handle: &GuestHandle,
    version: &str,
) -> Result<Option<swap::Prepared>, swap::SwapError> {
    let cache = runtime.cache_for(&handle.config).map(ArtifactCache::in_background);
    let (engine, linker) = (runtime.engine.clone(), runtime.linker.clone());
    let source = runtime.local_source(&handle.config).await?;
    let loaded = component::load_source(engine, linker, source, cache).await?;
    if loaded.version != version || loaded.provisional {
        return Ok(None);
    }
    swap::prepare_loaded(runtime, handle, loaded).await.map(Some)
}
