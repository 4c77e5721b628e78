//! The task that drives one guest: it owns the guest's store, so runs are
//! strictly sequential; it decides what the next trigger is, applies the
//! restart backoff after failures, and installs hot-swapped components
//! between runs.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::instance::{self, Live, TIMEOUT_GRACE, describe_guest_error, describe_trap};
use super::record::FinishedRun;
use super::swap::Prepared;
use super::{GuestHandle, Outcome, Runtime};
use crate::admin::GuestState;
use crate::artifact_cache::ArtifactCache;
use crate::bindings::types::Trigger;
use crate::component::{self, LoadedComponent};
use crate::guest_text::shown;

/// How long to wait before retrying a component that failed to load or init.
const RETRY_LOAD: Duration = Duration::from_secs(30);

/// The per-guest task.
pub struct GuestTask {
    runtime: Arc<Runtime>,
    handle: Arc<GuestHandle>,
    invokes: mpsc::Receiver<Vec<(String, String)>>,
    shutdown: CancellationToken,
    component: Option<LoadedComponent>,
    live: Option<Live>,
    /// When the schedule next fires.
    next_scheduled: SystemTime,
    /// No scheduled run before this (restart backoff after failures).
    backoff_until: Option<SystemTime>,
    /// No wake-up before this: [`MIN_WAKE_GAP`] after the last run.
    wake_not_before: Option<SystemTime>,
}

/// The least time between a run and a wake-up it asked for: a guest that
/// asks to run again at once on every run must not spin the host.
const MIN_WAKE_GAP: Duration = Duration::from_secs(1);

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
        shutdown: CancellationToken,
    ) -> GuestTask {
        // The first run happens right after start-up, so status is known at once.
        let next_scheduled = SystemTime::now();
        GuestTask {
            runtime,
            handle,
            invokes,
            shutdown,
            component: None,
            live: None,
            next_scheduled,
            backoff_until: None,
            wake_not_before: None,
        }
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
            let rt = &self.runtime;
            let loaded = match rt.local_source(&self.handle.config).await {
                Ok(source) => {
                    let cache = rt.cache_for(&self.handle.config).map(ArtifactCache::starting_quick);
                    component::load_source(rt.engine.clone(), rt.linker.clone(), source, cache).await
                }
                Err(e) => Err(e),
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
                crate::artifact_cache::release_freed_memory();
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
        crate::artifact_cache::release_freed_memory();
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
            r.swapped_at = Some(SystemTime::now());
            r.initialized = true;
            r.blocked = None;
        });
        if let Some(ack) = installed {
            let _ = ack.send(());
        }
    }

    /// Waits for the earliest of schedule, wake-up, invoke, swap or shutdown.
    async fn next_trigger(&mut self) -> Next {
        // After failed runs, a guest's own wake-up waits out the backoff too:
        // a guest that asks to run again and then fails must not loop.
        let backed_off = |at: SystemTime| self.backoff_until.map_or(at, |b| b.max(at));
        let gap = |at: SystemTime| self.wake_not_before.map_or(at, |n| n.max(at));
        let wake = self.handle.shared.wake.peek().map(from_ns).map(gap).map(backed_off);
        let scheduled = backed_off(self.next_scheduled);
        let (at, is_wake) = match wake {
            Some(w) if w < scheduled => (w, true),
            _ => (scheduled, false),
        };
        self.record(|r| r.next_run = Some(at));
        let delay = at.duration_since(SystemTime::now()).unwrap_or(Duration::ZERO);
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
                    let planned = self.next_scheduled;
                    self.advance_schedule(planned);
                    Next::Run(Trigger::Scheduled(to_ns(planned)), "scheduled".into())
                }
            }
        }
    }

    /// Moves the schedule past `planned`; a backlog (the host was suspended,
    /// a run overran, or backoff held runs back) collapses into one run.
    fn advance_schedule(&mut self, planned: SystemTime) {
        let now = SystemTime::now();
        let schedule = &self.handle.config.schedule;
        let mut next = schedule.next_after(planned).unwrap_or(now + Duration::from_secs(3600));
        while next < now {
            next = schedule.next_after(next).unwrap_or(now + Duration::from_secs(3600));
        }
        self.next_scheduled = next;
    }

    async fn run_once(&mut self, trigger: Trigger, label: String) {
        let Some(live) = self.live.as_mut() else { return };
        let config = &self.handle.config;
        live.store.data_mut().deadline = Some(std::time::Instant::now() + config.run_timeout);
        live.store.set_epoch_deadline(1);
        let started = SystemTime::now();
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
        let finished = SystemTime::now();
        if outcome != Outcome::Ok {
            tracing::warn!(guest = %self.handle.config.name, trigger = %label, outcome = %shown(format!("{outcome:?}")), "run failed");
        }
        self.report_dropped_warnings();
        self.apply_backoff(&outcome, finished);
        self.wake_not_before = Some(finished + MIN_WAKE_GAP);
        self.record(|r| r.finish(FinishedRun { started, finished, trigger: label, outcome, version }));
    }

    /// After `n` failures in a row, scheduled runs wait
    /// `min(restart_backoff * 2^(n-1), max_backoff)`; a success clears it.
    fn apply_backoff(&mut self, outcome: &Outcome, finished: SystemTime) {
        if *outcome == Outcome::Ok {
            self.backoff_until = None;
            return;
        }
        let failures = self.handle.record.lock().expect("record lock").consecutive_failures + 1;
        let policy = &self.handle.config.restart;
        let factor = 2u32.saturating_pow((failures - 1).min(30) as u32);
        let delay = policy.backoff.saturating_mul(factor).min(policy.max_backoff);
        self.backoff_until = Some(finished + delay);
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

fn to_ns(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as i64).unwrap_or(0)
}

fn from_ns(ns: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_nanos(ns.max(0) as u64)
}
