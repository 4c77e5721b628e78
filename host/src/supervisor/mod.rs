//! Per-guest lifecycle: load, `init`, schedule, run, record.
//!
//! Each guest has one task that owns its wasmtime store, so a guest's runs
//! can never overlap and a slow or failing guest never delays another. The
//! task waits for the earliest of its schedule, a wake-up the guest asked
//! for, or a manual invoke; a trap or timeout discards the instance and the
//! next trigger starts a fresh one (with `init` again). Schedules are read
//! on the runtime's [`clock::Clock`]: the wall clock, or tokio's in tests.
//! A guest named by an `oci://` tag also has a follower (`follow`) that
//! rolls new digests out through the swap path, gated.

pub mod clock;
mod follow;
mod health;
mod instance;
#[cfg(all(test, feature = "builtin-guests"))]
mod preload_tests;
mod record;
mod runner;
pub mod swap;
mod tier_up;
mod timetable;

use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use wasmtime::Engine;
use wasmtime::component::Linker;

use crate::api::{AdminBackend, AdminError, AdminFuture, GuestSnapshot, InvokeAccepted, LatestPoint};
use crate::capabilities::{GuestCtx, GuestShared, HostServices};
use crate::compile::artifact_cache::ArtifactCache;
use crate::compile::component::{LoadedComponent, PendingLoad};
use crate::compile::engine::EpochTicker;
use crate::config::{ComponentSource, GuestConfig};

pub use record::{GuestRecord, Outcome};

/// Manual runs queued per guest before `invoke` answers busy.
const INVOKE_QUEUE: usize = 4;

/// What every guest task shares.
pub struct Runtime {
    pub engine: Engine,
    pub linker: Arc<Linker<GuestCtx>>,
    pub services: HostServices,
    pub ticker: EpochTicker,
    /// Compiled guests from earlier starts (none for `check`).
    pub cache: Option<ArtifactCache>,
    /// What schedules are read on: the wall clock, or tokio's in tests.
    pub clock: clock::Clock,
    /// Where `oci://` components are resolved and kept.
    pub fleet: Arc<crate::fleet::Fleet>,
}

impl Runtime {
    /// The artifact cache as `guest` compiles through it (its `compile` mode).
    pub fn cache_for(&self, guest: &GuestConfig) -> Option<ArtifactCache> {
        self.cache.as_ref().map(|cache| cache.for_mode(guest.compile))
    }

    /// What to load for `guest`: an `oci://` reference becomes its verified
    /// local copy (resolved once per process, see [`crate::fleet::Fleet::local`]).
    pub async fn local_source(
        &self,
        guest: &GuestConfig,
    ) -> Result<ComponentSource, crate::compile::component::ComponentError> {
        match &guest.component {
            ComponentSource::Oci(reference) => Ok(ComponentSource::File(self.fleet.local(reference).await?.path)),
            other => Ok(other.clone()),
        }
    }
}

/// Guests' first loads, started before the supervisor (see [`preload`]).
pub type Preloads = std::collections::HashMap<String, PendingLoad<GuestCtx>>;

/// The cache a guest's first load goes through: its `compile` mode, and
/// quick code first on a miss (see [`ArtifactCache::starting_quick`]).
fn first_load_cache(cache: Option<&ArtifactCache>, guest: &GuestConfig) -> Option<ArtifactCache> {
    cache.map(|cache| cache.for_mode(guest.compile).starting_quick())
}

/// Starts the first load of every enabled guest whose component is local
/// (built in, or a file), as its task would, before the host's engine is
/// built and its stores are open: a file is hashed meanwhile, then loaded
/// on the engine `machine` waits for (see
/// [`crate::compile::component::start_load_when`]). Reading, hashing and
/// deserializing the artifacts is most of a cold start's CPU, which
/// otherwise waited for the engine and the stores' `fsync`s. An `oci://`
/// guest is resolved through the fleet and loaded by its task. Nothing of
/// a guest runs before its task takes the load (instantiating it and its
/// `init` need the stores).
pub fn preload(
    machine: impl Fn() -> Option<(Engine, Arc<Linker<GuestCtx>>)> + Clone + Send + 'static,
    cache: Option<&ArtifactCache>,
    guests: &[GuestConfig],
) -> Preloads {
    let local = guests.iter().filter(|g| g.enabled && !matches!(g.component, ComponentSource::Oci(_)));
    local
        .map(|guest| {
            let cache = first_load_cache(cache, guest);
            let load = crate::compile::component::start_load_when(machine.clone(), guest.component.clone(), cache);
            (guest.name.clone(), load)
        })
        .collect()
}

/// The host's view of one guest.
pub struct GuestHandle {
    pub config: GuestConfig,
    pub shared: Arc<GuestShared>,
    pub record: Mutex<GuestRecord>,
    invoke_tx: mpsc::Sender<Vec<(String, String)>>,
    /// Where validated swaps wait for the guest's task.
    pub swap: swap::SwapSlot,
    /// Where the optimized code of a guest started on quick code waits
    /// for the guest's task (see `tier_up`).
    pub tier_up: swap::SwapSlot,
    /// The component the last swap replaced, for rollback.
    pub previous: Mutex<Option<LoadedComponent<GuestCtx>>>,
}

impl GuestHandle {
    /// A snapshot for the admin API.
    pub fn snapshot(&self) -> GuestSnapshot {
        let record = self.record.lock().expect("record lock");
        record.snapshot(&self.config, &self.shared)
    }
}

/// All guests of the running host.
pub struct Supervisor {
    runtime: Arc<Runtime>,
    guests: Vec<Arc<GuestHandle>>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    services: HostServices,
}

impl Supervisor {
    /// Starts a task per enabled guest; a guest in `preloads` takes its
    /// first load from there.
    pub fn start(
        runtime: Arc<Runtime>,
        guests: &[GuestConfig],
        mut preloads: Preloads,
        shutdown: CancellationToken,
    ) -> Supervisor {
        let mut handles = Vec::new();
        let mut tasks = Vec::new();
        for config in guests.iter().filter(|g| g.enabled) {
            let (invoke_tx, invoke_rx) = mpsc::channel(INVOKE_QUEUE);
            let handle = Arc::new(GuestHandle {
                config: config.clone(),
                shared: Arc::new(GuestShared::default()),
                record: Mutex::new(GuestRecord::default()),
                invoke_tx,
                swap: swap::SwapSlot::default(),
                tier_up: swap::SwapSlot::default(),
                previous: Mutex::new(None),
            });
            let preloaded = preloads.remove(&config.name);
            let task =
                runner::GuestTask::new(runtime.clone(), handle.clone(), invoke_rx, preloaded, shutdown.child_token());
            tasks.push(tokio::spawn(task.run()));
            if let ComponentSource::File(path) = &config.component {
                let watch = swap::watch_file(runtime.clone(), handle.clone(), path.clone(), shutdown.child_token());
                tasks.push(tokio::spawn(watch));
            }
            if let ComponentSource::Oci(reference) = &config.component
                && reference.digest.is_none()
            {
                let follow = follow::follow(runtime.clone(), handle.clone(), reference.clone(), shutdown.child_token());
                tasks.push(tokio::spawn(follow));
            }
            handles.push(handle);
        }
        let services = runtime.services.clone();
        Supervisor { runtime, guests: handles, tasks: Mutex::new(tasks), services }
    }

    /// Writes the host's health rows (`wattedge_host`, see [`health`])
    /// every `every` until `shutdown`; [`join`](Self::join) waits for it.
    pub fn report_health(&self, every: std::time::Duration, shutdown: CancellationToken) {
        let report = health::HealthReport {
            guests: self.guests.clone(),
            store: self.services.store.clone(),
            host_tags: self.services.host_tags.clone(),
        };
        let task = tokio::spawn(report.run(every, shutdown));
        self.tasks.lock().expect("tasks lock").push(task);
    }

    /// The guest named `name`.
    pub fn guest(&self, name: &str) -> Option<&Arc<GuestHandle>> {
        self.guests.iter().find(|g| g.config.name == name)
    }

    /// Every guest, in config order.
    pub fn guests(&self) -> &[Arc<GuestHandle>] {
        &self.guests
    }

    /// Waits for every guest task to finish (after shutdown was signalled).
    pub async fn join(&self) {
        let tasks: Vec<_> = std::mem::take(&mut *self.tasks.lock().expect("tasks lock"));
        for task in tasks {
            let _ = task.await;
        }
    }

    /// The error for an unknown guest; the admin API adds the known ones.
    fn not_found(&self, name: &str) -> AdminError {
        AdminError::NotFound(name.to_string())
    }
}

impl AdminBackend for Supervisor {
    fn guests(&self) -> Vec<GuestSnapshot> {
        self.guests.iter().map(|g| g.snapshot()).collect()
    }

    fn invoke(&self, name: &str, args: Vec<(String, String)>) -> Result<InvokeAccepted, AdminError> {
        let guest = self.guest(name).ok_or_else(|| self.not_found(name))?;
        guest.invoke_tx.try_send(args).map_err(|_| {
            AdminError::Busy(format!(
                "guest '{name}' already has {INVOKE_QUEUE} manual runs queued; try again when they finish"
            ))
        })?;
        Ok(InvokeAccepted { guest: name.to_string(), queued: true })
    }

    fn reset_counters(&self, name: &str) -> Result<(), AdminError> {
        let guest = self.guest(name).ok_or_else(|| self.not_found(name))?;
        guest.shared.board.reset_counters();
        Ok(())
    }

    fn swap(&self, name: &str, component: bytes::Bytes) -> AdminFuture<'_, serde_json::Value> {
        let name = name.to_string();
        Box::pin(async move {
            let guest = self.guest(&name).ok_or_else(|| self.not_found(&name))?.clone();
            refuse_if_followed(&guest, "swap")?;
            let source = format!("uploaded component for {name}");
            let prepared =
                swap::prepare_bytes(&self.runtime, &guest, source, component.to_vec()).await.map_err(rejected)?;
            Ok(serde_json::to_value(swap::install(&guest, prepared).await).unwrap_or_default())
        })
    }

    fn rollback(&self, name: &str) -> AdminFuture<'_, serde_json::Value> {
        let name = name.to_string();
        Box::pin(async move {
            let guest = self.guest(&name).ok_or_else(|| self.not_found(&name))?.clone();
            refuse_if_followed(&guest, "rollback")?;
            if let Some(pending) = guest.swap.withdraw() {
                // The swap to undo is still waiting for a run to finish:
                // withdrawing it is the rollback, and the running version stays.
                let version = guest.record.lock().expect("record lock").version.clone().unwrap_or_default();
                tracing::info!(guest = %name, withdrawn = %pending.loaded.version, "pending swap withdrawn by rollback");
                let done = swap::SwapDone { guest: name, version, installed: true };
                return Ok(serde_json::to_value(done).unwrap_or_default());
            }
            let previous = guest.previous.lock().expect("previous lock").clone();
            let loaded =
                previous.ok_or_else(|| AdminError::Conflict(swap::SwapError::NoPrevious(name.clone()).to_string()))?;
            let prepared = swap::prepare_loaded(&self.runtime, &guest, loaded).await.map_err(rejected)?;
            Ok(serde_json::to_value(swap::install(&guest, prepared).await).unwrap_or_default())
        })
    }

    fn extra_metrics(&self) -> String {
        record::store_metrics(&self.guests) + &self.services.store.metrics()
    }

    fn store_status(&self) -> crate::store::StoreStatus {
        self.services.store.status()
    }

    fn series(&self, guest: &str, measurement: &str, limit: u32) -> AdminFuture<'_, Vec<LatestPoint>> {
        let (guest, measurement) = (guest.to_owned(), measurement.to_owned());
        Box::pin(async move {
            let handle = self.guest(&guest).ok_or_else(|| AdminError::NotFound(guest.clone()))?;
            record::series(&handle.config, self.services.store.as_ref(), &measurement, limit).await
        })
    }
}

/// A guest that follows a tag runs what the tag names (see
/// [`follow`]): a version swapped in (or rolled back) by hand would run
/// under the tag's name on one board only, until the next tag move
/// replaced it. Such a swap is refused (409) with what to do instead.
fn refuse_if_followed(guest: &GuestHandle, action: &str) -> Result<(), AdminError> {
    let ComponentSource::Oci(reference) = &guest.config.component else { return Ok(()) };
    if reference.digest.is_some() {
        return Ok(());
    }
    Err(AdminError::Conflict(format!(
        "guest '{}' follows {reference}: a {action} by hand is refused, the board runs what the tag names; \
         publish the version to the tag (`wattedge publish GUEST.wasm {reference}`) to roll it out, \
         or name a file or an `@sha256:` digest in its `component` to take it off the tag",
        guest.config.name
    )))
}

/// A refused swap: 400 with the reason; the old version keeps running.
fn rejected(e: swap::SwapError) -> AdminError {
    AdminError::BadRequest(format!("{e}; the previous version keeps running"))
}
