//! The task that drives one guest: it owns the guest's store, so runs are
//! strictly sequential, and it decides what the next trigger is.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use wasmtime::Store;

use super::record::FinishedRun;
use super::{GuestHandle, Outcome, Runtime};
use crate::admin::GuestState;
use crate::bindings::Guest;
use crate::bindings::types::{GuestError, Trigger};
use crate::capabilities::GuestCtx;
use crate::component::{self, LoadedComponent};
use crate::engine::install_deadline;

/// Extra wall-clock time after `run_timeout` before a run blocked in a host
/// call is abandoned (epoch interruption only stops guest code).
const TIMEOUT_GRACE: Duration = Duration::from_secs(1);
/// How long to wait before retrying a component that failed to load or init.
const RETRY_LOAD: Duration = Duration::from_secs(30);

/// A live instance: the store and the guest's exports.
struct Live {
    store: Store<GuestCtx>,
    guest: Guest,
    version: String,
}

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
}

enum Next {
    Run(Trigger, String),
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
        GuestTask { runtime, handle, invokes, shutdown, component: None, live: None, next_scheduled }
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
                Next::Stop => return,
            }
        }
    }

    /// Sleeps `delay` unless shutdown comes first (then returns true).
    async fn wait_or_stop(&mut self, delay: Duration) -> bool {
        tokio::select! {
            _ = tokio::time::sleep(delay) => false,
            _ = self.shutdown.cancelled() => true,
        }
    }

    /// Loads the component (once) and creates a live, initialised instance.
    async fn prepare(&mut self) -> bool {
        let name = self.handle.config.name.clone();
        if self.component.is_none() {
            let rt = &self.runtime;
            match component::load_source(rt.engine.clone(), rt.linker.clone(), self.handle.config.component.clone())
                .await
            {
                Ok(loaded) => {
                    self.record(|r| r.version = Some(loaded.version.clone()));
                    self.component = Some(loaded);
                }
                Err(e) => {
                    tracing::error!(guest = %name, error = %e, "component failed to load");
                    self.record(|r| r.blocked = Some((GuestState::Failed, e.to_string())));
                    return false;
                }
            }
        }
        match self.instantiate().await {
            Ok(live) => {
                self.live = Some(live);
                self.record(|r| {
                    r.initialized = true;
                    r.blocked = None;
                });
                true
            }
            Err(message) => {
                tracing::error!(guest = %name, error = %message, "guest init failed");
                self.record(|r| {
                    r.initialized = false;
                    r.blocked = Some((GuestState::Failed, message));
                });
                false
            }
        }
    }

    async fn instantiate(&mut self) -> Result<Live, String> {
        let loaded = self.component.as_ref().expect("component loaded before instantiate");
        let config = &self.handle.config;
        let ctx = GuestCtx::new(config, &self.runtime.services, self.handle.shared.clone());
        let mut store = Store::new(&self.runtime.engine, ctx);
        store.limiter(|ctx| ctx.limiter());
        install_deadline(&mut store, |ctx: &GuestCtx| ctx.deadline);
        store.data_mut().deadline = Some(std::time::Instant::now() + config.run_timeout);
        let _running = self.runtime.ticker.running();
        let call = async {
            let guest =
                loaded.pre.instantiate_async(&mut store).await.map_err(|e| format!("instantiation failed: {e:#}"))?;
            match guest.call_init(&mut store, &config.config).await {
                Ok(Ok(())) => Ok(guest),
                Ok(Err(e)) => Err(format!("init rejected the configuration: {}", describe_guest_error(&e))),
                Err(trap) => Err(format!("init trapped: {}", describe_trap(&trap))),
            }
        };
        let guest = match tokio::time::timeout(config.run_timeout + TIMEOUT_GRACE, call).await {
            Ok(result) => result?,
            Err(_) => return Err(format!("init did not finish within run_timeout ({:?})", config.run_timeout)),
        };
        Ok(Live { store, guest, version: loaded.version.clone() })
    }

    /// Waits for the earliest of schedule, wake-up, invoke or shutdown.
    async fn next_trigger(&mut self) -> Next {
        let wake = self.handle.shared.wake.peek().map(from_ns);
        let (at, is_wake) = match wake {
            Some(w) if w < self.next_scheduled => (w, true),
            _ => (self.next_scheduled, false),
        };
        self.record(|r| r.next_run = Some(at));
        let delay = at.duration_since(SystemTime::now()).unwrap_or(Duration::ZERO);
        tokio::select! {
            biased;
            _ = self.shutdown.cancelled() => Next::Stop,
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
    /// or a run overran) collapses into one run instead of a burst.
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
                    tracing::info!(guest = %config.name, trigger = %label, points = summary.points_written, detail = ?summary.detail, "run ok");
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
        if outcome != Outcome::Ok {
            tracing::warn!(guest = %config.name, trigger = %label, outcome = ?outcome, "run failed");
        }
        let finished = SystemTime::now();
        self.record(|r| r.finish(FinishedRun { started, finished, trigger: label, outcome, version }));
    }

    fn record(&self, f: impl FnOnce(&mut super::GuestRecord)) {
        f(&mut self.handle.record.lock().expect("record lock"));
    }
}

fn describe_guest_error(e: &GuestError) -> String {
    match e {
        GuestError::Config(m) => format!("configuration: {m}"),
        GuestError::Credentials(m) => format!("credentials: {m}"),
        GuestError::Upstream(m) => format!("upstream: {m}"),
        GuestError::Store(m) => format!("store: {m}"),
        GuestError::Internal(m) => m.clone(),
    }
}

/// A one-line description of a trap, naming the cause people can act on.
fn describe_trap(error: &wasmtime::Error) -> String {
    match error.downcast_ref::<wasmtime::Trap>() {
        Some(wasmtime::Trap::Interrupt) => "CPU deadline reached (run_timeout); the guest was stopped".into(),
        Some(wasmtime::Trap::UnreachableCodeReached) => "the guest panicked or hit unreachable code".into(),
        Some(trap) => trap.to_string(),
        None => {
            let text = format!("{error:#}");
            if text.contains("memory") && text.contains("limit") || text.contains("grow") {
                format!("memory_limit exceeded: {}", text.lines().next().unwrap_or(""))
            } else {
                text.lines().next().unwrap_or("unknown trap").to_string()
            }
        }
    }
}

fn to_ns(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as i64).unwrap_or(0)
}

fn from_ns(ns: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_nanos(ns.max(0) as u64)
}
