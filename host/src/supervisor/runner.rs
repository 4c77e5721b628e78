//! The task that drives one guest: it owns the guest's store, so runs are
//! strictly sequential; it waits for the next trigger its `Timetable` names
//! (schedule, wake-up, restart backoff, read on the runtime's `Clock`) or an
//! invoke, and installs hot-swapped components between runs.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::instance::{self, Live, TIMEOUT_GRACE, describe_guest_error, describe_trap};
use super::record::FinishedRun;
use super::swap::Prepared;
use super::timetable::Timetable;
use super::{GuestHandle, Outcome, Runtime};
use crate::api::GuestState;
use crate::bindings::types::Trigger;
use crate::capabilities::GuestCtx;
use crate::compile::component::{self, LoadedComponent, PendingLoad};
use crate::config::GuestConfig;
use crate::guest_text::shown;

/// How long to wait before retrying a component that failed to load or init.
const RETRY_LOAD: Duration = Duration::from_secs(30);

/// How long a run during start-up waits at most for it to end before it
/// releases its guest's code pages (an embedder's host that never says).
const START_UP_WAIT: Duration = Duration::from_secs(30);

/// Loads `guest`'s component (resolving an `oci://` reference first),
/// through the cache as [`super::preload`] does.
async fn load(rt: &Runtime, guest: &GuestConfig) -> Result<LoadedComponent<GuestCtx>, component::ComponentError> {
    let source = rt.local_source(guest).await?;
    let cache = super::first_load_cache(rt.cache.as_ref(), guest);
    component::load_source(rt.engine.clone(), rt.linker.clone(), source, cache).await
}

/// The per-guest task.
pub struct GuestTask {
    runtime: Arc<Runtime>,
    handle: Arc<GuestHandle>,
    invokes: mpsc::Receiver<Vec<(String, String)>>,
    shutdown: CancellationToken,
    component: Option<LoadedComponent<GuestCtx>>,
    /// The first load, started before the task (see `super::preload`).
    preloaded: Option<PendingLoad<GuestCtx>>,
    live: Option<Live>,
    /// When the next scheduled run or wake-up is due.
    timetable: Timetable,
}

enum Next {
    Run(Trigger, String),
    Swap(Box<Prepared>),
    TierUp(Box<Prepared>),
    Stop,
}

impl GuestTask {
    pub fn new(
        runtime: Arc<Runtime>,
        handle: Arc<GuestHandle>,
        invokes: mpsc::Receiver<Vec<(String, String)>>,
        preloaded: Option<PendingLoad<GuestCtx>>,
        shutdown: CancellationToken,
    ) -> GuestTask {
        let timetable = Timetable::starting_now(runtime.clock);
        GuestTask { runtime, handle, invokes, shutdown, component: None, preloaded, live: None, timetable }
    }

    /// Runs until shutdown.
    pub async fn run(mut self) {
        loop {
            if self.live.is_none() && !self.prepare().await {
                if self.wait_or_stop(RETRY_LOAD).await {
                    return;
                }
                continue;
            }
            match self.next_trigger().await {
                Next::Run(trigger, label) => self.run_once(trigger, label).await,
                Next::Swap(prepared) => self.install(*prepared),
                Next::TierUp(prepared) => self.install_tier_up(*prepared),
                Next::Stop => return,
            }
        }
    }

    /// Sleeps `delay` unless shutdown or a swap comes first (then returns
    /// true for shutdown; a swap is installed and ends the wait).
    async fn wait_or_stop(&mut self, delay: Duration) -> bool {
        tokio::select! {
            _ = tokio::time::sleep(delay) => false,
            _ = self.shutdown.cancelled() => true,
            prepared = self.handle.swap.next() => {
                self.install(prepared);
                false
            }
            prepared = self.handle.tier_up.next() => {
                self.install_tier_up(prepared);
                false
            }
        }
    }

    /// Loads the component (once) and creates a live, initialised instance.
    async fn prepare(&mut self) -> bool {
        if self.component.is_none() {
            let loaded = match self.preloaded.take() {
                Some(pending) => pending.await,
                None => load(&self.runtime, &self.handle.config).await,
            };
            match loaded {
                Ok(loaded) => {
                    self.record(|r| r.version = Some(loaded.version.clone()));
                    if loaded.provisional {
                        self.start_tier_up(&loaded.version);
                    }
                    self.component = Some(loaded);
                }
                Err(e) => {
                    tracing::error!(guest = %self.handle.config.name, error = %shown(&e), "component failed to load");
                    self.record(|r| r.blocked = Some((GuestState::Failed, e.to_string())));
                    return false;
                }
            }
        }
        let loaded = self.component.as_ref().expect("component loaded above");
        match instance::start(&self.runtime, &self.handle, loaded).await {
            Ok(live) => {
                self.live = Some(live);
                self.record(|r| {
                    r.initialized = true;
                    r.blocked = None;
                });
                // During start-up, once for all guests (`crate::trim::start_up_over`).
                if crate::trim::start_up_over() {
                    crate::compile::artifact_cache::release_freed_memory();
                }
                true
            }
            Err(message) => {
                tracing::error!(guest = %self.handle.config.name, error = %shown(&message), "guest init failed");
                self.record(|r| {
                    r.initialized = false;
                    r.blocked = Some((GuestState::Failed, message));
                });
                false
            }
        }
    }

    /// Compiles the optimized code of the quick code of `version` in the
    /// background (see `tier_up`).
    fn start_tier_up(&self, version: &str) {
        if cfg!(target_arch = "arm") {
            // Builds without a compiler run precompiled code only; none of
            // it is provisional (and this keeps tier-up out of the binary).
            return;
        }
        self.record(|r| r.optimizing = true);
        let (runtime, handle) = (self.runtime.clone(), self.handle.clone());
        tokio::spawn(super::tier_up::run(runtime, handle, version.to_string(), self.shutdown.clone()));
    }

    /// Installs the optimized code of the version running on quick code
    /// between runs: the same version, so no swap is recorded. Code for
    /// another version (a swap came first) is dropped.
    fn install_tier_up(&mut self, prepared: Prepared) {
        let current = self.component.as_ref();
        if !current.is_some_and(|c| c.provisional && c.version == prepared.loaded.version) {
            let still_quick = current.is_some_and(|c| c.provisional);
            self.record(|r| r.optimizing = still_quick);
            return;
        }
        tracing::info!(guest = %self.handle.config.name, "now running optimized code");
        self.component = Some(prepared.loaded);
        self.live = Some(prepared.live);
        self.record(|r| {
            r.optimizing = false;
            r.initialized = true;
            r.blocked = None;
        });
        crate::compile::artifact_cache::release_freed_memory();
    }

    /// Installs a validated, initialised component between runs.
    fn install(&mut self, prepared: Prepared) {
        let Prepared { loaded, live, installed } = prepared;
        let version = loaded.version.clone();
        if loaded.provisional {
            // A rollback to a version that had not finished its tier-up.
            self.start_tier_up(&version);
        } else {
            self.record(|r| r.optimizing = false);
        }
        let old = self.component.replace(loaded);
        tracing::info!(guest = %self.handle.config.name, %version, "component swapped");
        // The same version again (a re-upload, a touched file, a second
        // rollback) keeps what a rollback would restore.
        let same = old.as_ref().is_some_and(|c| c.version == version);
        let mut previous = self.handle.previous.lock().expect("previous lock");
        if !same {
            *previous = old;
        }
        let previous_version = previous.as_ref().map(|c| c.version.clone());
        drop(previous);
        self.live = Some(live);
        self.record(|r| {
            r.previous_version = previous_version;
            r.version = Some(version);
            r.swapped_at = Some(self.timetable.clock().now());
            r.initialized = true;
            r.blocked = None;
        });
        if let Some(ack) = installed {
            let _ = ack.send(());
        }
    }

    /// Waits for the earliest of schedule, wake-up, invoke, swap or shutdown.
    async fn next_trigger(&mut self) -> Next {
        let due = self.timetable.due(self.handle.shared.wake.peek().map(from_ns));
        let (at, is_wake) = (due.at, due.is_wake);
        self.record(|r| r.next_run = Some(at));
        let delay = self.timetable.clock().until(at);
        tokio::select! {
            biased;
            _ = self.shutdown.cancelled() => Next::Stop,
            prepared = self.handle.swap.next() => Next::Swap(Box::new(prepared)),
            prepared = self.handle.tier_up.next() => Next::TierUp(Box::new(prepared)),
            Some(args) = self.invokes.recv() => Next::Run(Trigger::Invoked(args), "invoked".into()),
            _ = tokio::time::sleep(delay) => {
                if is_wake {
                    let at = self.handle.shared.wake.take().unwrap_or_else(|| to_ns(at));
                    Next::Run(Trigger::Wake(at), "wake".into())
                } else {
                    let planned = self.timetable.next_scheduled();
                    self.timetable.advance_schedule(&self.handle.config.schedule, planned);
                    Next::Run(Trigger::Scheduled(to_ns(planned)), "scheduled".into())
                }
            }
        }
    }

    async fn run_once(&mut self, trigger: Trigger, label: String) {
        let Some(live) = self.live.as_mut() else { return };
        let config = &self.handle.config;
        live.store.data_mut().deadline = Some(std::time::Instant::now() + config.run_timeout);
        live.store.set_epoch_deadline(1);
        let started = self.timetable.clock().now();
        let outcome = {
            let _running = self.runtime.ticker.running();
            let call = live.guest.call_run(&mut live.store, &trigger);
            match tokio::time::timeout(config.run_timeout + TIMEOUT_GRACE, call).await {
                Ok(Ok(Ok(summary))) => {
                    let detail = summary.detail.as_deref().map(|d| shown(d).to_string());
                    tracing::info!(guest = %config.name, trigger = %label, points = summary.points_written, detail = ?detail, "run ok");
                    Outcome::Ok
                }
                Ok(Ok(Err(e))) => Outcome::Error(describe_guest_error(&e)),
                Ok(Err(trap)) => Outcome::Trap(format!("trapped: {}", describe_trap(&trap))),
                Err(_) => {
                    Outcome::Timeout(format!("run exceeded run_timeout ({:?}) and was stopped", config.run_timeout))
                }
            }
        };
        let version = live.version.clone();
        if matches!(outcome, Outcome::Trap(_) | Outcome::Timeout(_)) {
            // The instance may be mid-way through anything: start afresh.
            self.live = None;
            self.record(|r| r.initialized = false);
        }
        let finished = self.timetable.clock().now();
        if outcome != Outcome::Ok {
            tracing::warn!(guest = %self.handle.config.name, trigger = %label, outcome = %shown(format!("{outcome:?}")), "run failed");
        }
        self.report_dropped_warnings();
        self.release_code_pages();
        self.apply_backoff(&outcome, finished);
        self.record(|r| r.finish(FinishedRun { started, finished, trigger: label, outcome, version }));
    }

    /// Gives back the pages of the guest's code, and of the host's (when
    /// the binary released its start-up pages), that the run touched: the
    /// guest sleeps until its next trigger, which maps back what it runs
    /// (see `crate::trim`; a fraction of a millisecond a run).
    fn release_code_pages(&self) {
        crate::trim::release_host_pages_again();
        let Some(component) = &self.component else { return };
        if crate::trim::start_up_over() {
            release_image(&self.handle.config.name, component);
            return;
        }
        // Other guests may still be loading (see `crate::trim::start_up_over`):
        // the pages go once start-up is over. The clone keeps the code
        // mapped until then, whatever this task installs meanwhile.
        let (name, component) = (self.handle.config.name.clone(), component.clone());
        tokio::spawn(async move {
            let _ = tokio::time::timeout(START_UP_WAIT, crate::trim::start_up_ended()).await;
            release_image(&name, &component);
        });
    }

    /// Tells the timetable how the run ended: the least gap before a
    /// wake-up, and the restart backoff after failures in a row.
    fn apply_backoff(&mut self, outcome: &Outcome, finished: SystemTime) {
        let ok = *outcome == Outcome::Ok;
        let failures = if ok { 0 } else { self.handle.record.lock().expect("record lock").consecutive_failures + 1 };
        self.timetable.ran(ok, failures, &self.handle.config.restart, finished);
    }

    /// Says in the log how many warnings about the guest's denied requests
    /// its budget dropped since the last report (see `capabilities::denials`).
    fn report_dropped_warnings(&self) {
        let dropped = self.handle.shared.denials.take_unreported();
        if dropped > 0 {
            let total = self.handle.shared.denials.dropped_total();
            tracing::warn!(guest = %self.handle.config.name, dropped, total, "warnings about denied requests dropped during the run");
        }
    }

    fn record(&self, f: impl FnOnce(&mut super::GuestRecord)) {
        f(&mut self.handle.record.lock().expect("record lock"));
    }
}

/// Releases the pages of `component`'s code (see `crate::trim::release_image`).
fn release_image(guest: &str, component: &LoadedComponent<GuestCtx>) {
    let image = component.pre.instance_pre().component().image_range();
    if let Err(error) = crate::trim::release_image(image) {
        tracing::debug!(%guest, %error, "cannot release the guest's code pages");
    }
}

fn to_ns(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as i64).unwrap_or(0)
}

fn from_ns(ns: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_nanos(ns.max(0) as u64)
}

#[cfg(all(test, feature = "builtin-guests"))]
mod tests {
    use std::path::Path;
    use std::sync::Arc;

    use super::*;
    use crate::compile::artifact_cache::ArtifactCache;
    use crate::compile::component::{ComponentSource, sha256_hex};
    use crate::compile::digests::{SETTLE, Stamp};
    use crate::compile::engine::{self, EngineLimits};

    /// The version a guest task's load of the file at `path` reports.
    async fn loaded_version(engine: &wasmtime::Engine, path: &Path, cache: &ArtifactCache) -> String {
        let linker = Arc::new(crate::capabilities::linker(engine).unwrap());
        let source = ComponentSource::File(path.to_path_buf());
        let loaded = component::load_source(engine.clone(), linker, source, Some(cache.clone())).await;
        loaded.map(|l| l.version).unwrap_or_else(|e| panic!("{e}"))
    }

    #[tokio::test]
    async fn an_artifact_replaced_after_its_digest_was_remembered_reports_the_new_file_s_digest() {
        let dir = tempfile::tempdir().unwrap();
        let engine = engine::build(EngineLimits::native(), engine::Purpose::Native).unwrap();
        let artifact = engine.precompile_component(&std::fs::read(crate::builtin::probe_path()).unwrap()).unwrap();
        let path = dir.path().join("probe.cwasm");
        std::fs::write(&path, &artifact).unwrap();
        let cache = ArtifactCache::new(dir.path().join("cache"), EngineLimits::native());
        // As if hashed long after it was written; not its sha256, to tell
        // a remembered digest from a computed one.
        let remembered = "ab".repeat(32);
        cache.digests().remember(&Stamp::of(&path).unwrap(), SystemTime::now() + SETTLE * 4, &remembered);
        assert_eq!(loaded_version(&engine, &path, &cache).await, remembered);

        let next = dir.path().join("probe.next");
        std::fs::write(&next, &artifact).unwrap();
        std::fs::rename(&next, &path).unwrap();
        assert_eq!(loaded_version(&engine, &path, &cache).await, sha256_hex(&artifact));
    }
}
