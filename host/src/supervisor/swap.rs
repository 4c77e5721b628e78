//! Hot swap: a new component is compiled, type-checked and initialised in a
//! fresh store off the guest's task; only then is it offered to the task,
//! which installs it between runs. A run in flight finishes on the old
//! version, the next trigger uses the new one, and state and outbox are
//! untouched (they live outside the store). A component file changed on disk
//! is swapped the same way.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::{Notify, oneshot};

use super::instance::{self, Live};
use super::{GuestHandle, Runtime};
use crate::capabilities::GuestCtx;
use crate::compile::component::{self, ComponentError, LoadedComponent};

/// How often a component file is checked for changes.
const WATCH_INTERVAL: Duration = Duration::from_secs(2);
/// How long a swap request waits for the task to install the new version.
const INSTALL_WAIT: Duration = Duration::from_secs(2);

/// Why a swap was refused; the old version keeps running.
#[derive(Debug, thiserror::Error)]
pub enum SwapError {
    #[error(transparent)]
    Component(#[from] ComponentError),
    #[error("the new component's init failed: {0}")]
    Init(String),
    #[error("no previous version of guest '{0}' to roll back to")]
    NoPrevious(String),
}

/// A validated, initialised component waiting to be installed.
pub struct Prepared {
    pub loaded: LoadedComponent<GuestCtx>,
    pub live: Live,
    /// Told when the task has installed it.
    pub installed: Option<oneshot::Sender<()>>,
}

/// The hand-over point between swap requests and the guest's task.
#[derive(Default)]
pub struct SwapSlot {
    slot: Mutex<Option<Prepared>>,
    notify: Notify,
}

impl SwapSlot {
    /// Offers `prepared` to the task; a newer offer replaces an older one.
    pub fn offer(&self, prepared: Prepared) {
        *self.slot.lock().expect("swap lock") = Some(prepared);
        self.notify.notify_one();
    }

    /// Takes the waiting offer, if any: the task installing it, or a
    /// rollback taking it back before the task did.
    pub fn withdraw(&self) -> Option<Prepared> {
        self.slot.lock().expect("swap lock").take()
    }

    /// Waits for the next offer (cancel-safe: taking happens in one poll).
    pub async fn next(&self) -> Prepared {
        loop {
            if let Some(prepared) = self.withdraw() {
                return prepared;
            }
            self.notify.notified().await;
        }
    }
}

/// What a successful swap did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SwapDone {
    pub guest: String,
    pub version: String,
    /// False when a run was in flight: the new version serves from the next trigger.
    pub installed: bool,
}

/// Compiles and initialises `bytes` for `handle`, without touching the running version.
pub async fn prepare_bytes(
    runtime: &Runtime,
    handle: &GuestHandle,
    name: String,
    bytes: Vec<u8>,
) -> Result<Prepared, SwapError> {
    let (engine, linker, cache) = (runtime.engine.clone(), runtime.linker.clone(), runtime.cache_for(&handle.config));
    // Through the artifact cache: a `.wasm` is compiled where the host
    // compiles (a worker process for the binary), and swapping back to a
    // version seen before is a cache hit.
    let load = move || {
        let version = component::sha256_hex(&bytes);
        component::load_cached(&engine, &linker, &name, &bytes, &version, cache.as_ref(), None)
    };
    let loaded = crate::blocking::spawn_blocking(load)
        .await
        .map_err(|e| SwapError::Init(format!("compilation task failed: {e}")))??;
    prepare_loaded(runtime, handle, loaded).await
}

/// Initialises an already compiled component (rollback).
pub async fn prepare_loaded(
    runtime: &Runtime,
    handle: &GuestHandle,
    loaded: LoadedComponent<GuestCtx>,
) -> Result<Prepared, SwapError> {
    let live = instance::start(runtime, handle, &loaded).await.map_err(SwapError::Init)?;
    Ok(Prepared { loaded, live, installed: None })
}

/// Offers `prepared` and waits briefly for the task to install it.
pub async fn install(handle: &GuestHandle, mut prepared: Prepared) -> SwapDone {
    let (tx, rx) = oneshot::channel();
    prepared.installed = Some(tx);
    let version = prepared.loaded.version.clone();
    handle.swap.offer(prepared);
    let installed = matches!(tokio::time::timeout(INSTALL_WAIT, rx).await, Ok(Ok(())));
    SwapDone { guest: handle.config.name.clone(), version, installed }
}

/// Watches a component file and swaps it in when it changes (e.g. an atomic
/// rename of a new build). A bad file is logged and recorded; the old
/// version keeps running and the file is not retried until it changes again.
pub async fn watch_file(
    runtime: Arc<Runtime>,
    handle: Arc<GuestHandle>,
    path: PathBuf,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let mut seen = stamp(&path);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(WATCH_INTERVAL) => {}
        }
        let now = stamp(&path);
        if now.is_none() || now == seen {
            continue;
        }
        seen = now;
        let name = path.display().to_string();
        let Ok(bytes) = std::fs::read(&path) else { continue };
        let result = match prepare_bytes(&runtime, &handle, name.clone(), bytes).await {
            Ok(prepared) => Ok(install(&handle, prepared).await),
            Err(e) => Err(e),
        };
        let mut record = handle.record.lock().expect("record lock");
        match result {
            Ok(done) => {
                tracing::info!(guest = %handle.config.name, version = %done.version, file = %name, "component file changed; swapped");
                record.last_swap_error = None;
            }
            Err(e) => {
                tracing::error!(guest = %handle.config.name, file = %name, error = %crate::guest_text::shown(&e), "changed component rejected; the old version keeps running");
                record.last_swap_error = Some(e.to_string());
            }
        }
    }
}

fn stamp(path: &std::path::Path) -> Option<(SystemTime, u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len(), meta.ino()))
}
