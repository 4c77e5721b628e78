//! Following a tag (`component = "oci://REGISTRY/REPO:TAG"`): this module
//! owns the rollout of one guest while the host runs. Every
//! `[fleet] poll_interval` (plus up to `poll_jitter`, so a fleet does not
//! ask in lockstep) it asks the registry for the tag's digest; a new digest
//! goes through the swap path (compile, type-check, `init` in a fresh
//! store, installed between runs, so no scheduled run is skipped) and then
//! the health gate: a failure in its first `gate_runs` runs within
//! `gate_window` rolls the guest back to the digest it ran before. A digest
//! refused (signature, digest mismatch, failed `init`, failed gate) is not
//! tried again until the tag moves; the running version stays throughout.
//! A board started from the copy it ran before (see `Fleet::local`) asks
//! at once, so a digest the tag moved to while it was off is gated too; a
//! shutdown during a gate leaves the previous digest recorded.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio_util::sync::CancellationToken;

use super::swap::{self, SwapError};
use super::{GuestHandle, GuestRecord, Runtime};
use crate::api::{GuestState, RolloutStatus};
use crate::capabilities::GuestCtx;
use crate::compile::component::{self, LoadedComponent};
use crate::config::{ComponentSource, RolloutConfig};
use crate::fleet::{Digest, FleetError, OciReference, Resolved};

/// How often the follower looks whether the guest has resolved at start.
const SHOW_STARTED: Duration = Duration::from_millis(500);
/// How often the gate looks at the new version's runs.
const GATE_CHECK: Duration = Duration::from_millis(200);

/// How a gate that did not fail ended.
#[derive(Debug, PartialEq)]
enum Passed {
    /// `gate_runs` successes, or a window without a failure.
    Gate,
    /// The host shut down before the verdict.
    Interrupted,
}

/// Why a new digest did not stay.
#[derive(Debug, thiserror::Error)]
enum Refusal {
    #[error("{digest} refused: {error}")]
    Prepare { digest: Digest, error: SwapError },
    #[error("{digest} failed its health gate: {detail}")]
    Gate { digest: Digest, detail: String },
}

/// Follows `reference` for `handle` until `shutdown`.
pub async fn follow(
    runtime: Arc<Runtime>,
    handle: Arc<GuestHandle>,
    reference: OciReference,
    shutdown: CancellationToken,
) {
    let mut follower = Follower { runtime, handle, reference, shutdown };
    follower.show(|s| s.state = "following".into());
    // Show the digest the guest started with once it has resolved (the
    // task resolves it, retrying while the registry is out of reach).
    while follower.runtime.fleet.running(&follower.reference).is_none() {
        tokio::select! {
            _ = follower.shutdown.cancelled() => return,
            _ = tokio::time::sleep(SHOW_STARTED) => {}
        }
    }
    let Some(started) = follower.runtime.fleet.running(&follower.reference) else { return };
    follower.show(|s| s.digest = Some(started.top.to_string()));
    // Started from the copy it ran before: ask the tag now, so a digest it
    // moved to while the board was off is rolled out (and gated) at once.
    if started.offline {
        follower.poll_once().await;
    }
    loop {
        let wait = follower.next_wait();
        tokio::select! {
            _ = follower.shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        follower.poll_once().await;
    }
}

struct Follower {
    runtime: Arc<Runtime>,
    handle: Arc<GuestHandle>,
    reference: OciReference,
    shutdown: CancellationToken,
}

impl Follower {
    /// The poll interval plus a jitter drawn from the clock's nanoseconds
    /// and the guest's name (boards and guests spread differently).
    fn next_wait(&self) -> Duration {
        let nanos = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
        let name = self.handle.config.name.bytes().fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)));
        wait_with_jitter(self.runtime.fleet.rollout_config(), u64::from(nanos) ^ name)
    }

    /// One ask of the registry, and a rollout when the tag moved.
    async fn poll_once(&mut self) {
        let fleet = &self.runtime.fleet;
        // Until the guest has loaded once, the task's own retry resolves it.
        let Some(running) = fleet.running(&self.reference) else { return };
        self.show(|s| s.digest = Some(running.top.to_string()));
        // A pull records what the tag now names; what runs is recorded
        // again unless the new digest stays.
        let kept = fleet.record(&self.reference);
        let latest = match fleet.latest(&self.reference).await {
            Ok(latest) => latest,
            // Said when it was refused; the tag has not moved since.
            Err(FleetError::Refused { .. }) => return,
            Err(error) => {
                tracing::warn!(guest = %self.handle.config.name, %error, "followed tag not updated; the running version stays");
                self.show(|s| s.last_refusal = Some(error.to_string()));
                return;
            }
        };
        if latest.top == running.top {
            fleet.adopt(&self.reference, running, kept);
            return;
        }
        let new = fleet.record(&self.reference);
        let noticed = crate::timefmt::rfc3339(SystemTime::now());
        tracing::info!(guest = %self.handle.config.name, digest = %latest.top, %noticed, "followed tag moved; rolling out");
        self.show(|s| s.noticed = Some(noticed));
        match self.roll_out(&running, &latest).await {
            Ok(Passed::Interrupted) => {
                // Not gated: the next start runs what ran before and gates
                // this digest again.
                tracing::info!(guest = %self.handle.config.name, digest = %latest.top, "shut down during the gate; the next start gates it again");
                fleet.adopt(&self.reference, running, kept);
                return;
            }
            Ok(Passed::Gate) => {
                fleet.adopt(&self.reference, latest.clone(), new);
                tracing::info!(guest = %self.handle.config.name, digest = %latest.top, "rollout passed its gate");
                self.show(|s| {
                    s.state = "following".into();
                    s.digest = Some(latest.top.to_string());
                });
            }
            Err(refusal) => {
                tracing::error!(guest = %self.handle.config.name, error = %refusal, "rollout refused; running the previous digest");
                // State, digest and reason change together: a reader never
                // sees "rolled back" without why.
                let rolled_back = matches!(refusal, Refusal::Gate { .. });
                self.show(|s| {
                    s.state = match rolled_back {
                        true => format!("rolled back from {}", latest.top),
                        false => "following".into(),
                    };
                    s.digest = Some(running.top.to_string());
                    s.last_refusal = Some(refusal.to_string());
                });
                fleet.refuse(&self.reference, running, kept, &latest.top);
            }
        }
        fleet.collect_garbage().await;
    }

    /// Swaps `latest` in and gates it; rolls back to `running` when the
    /// gate fails. A version whose `init` fails never replaces `running`.
    async fn roll_out(&self, running: &Resolved, latest: &Resolved) -> Result<Passed, Refusal> {
        let digest = latest.top.clone();
        let prepare = |error| Refusal::Prepare { digest: digest.clone(), error };
        let loaded = self.load(latest).await.map_err(|e| prepare(e.into()))?;
        let before = self.handle.record.lock().expect("record lock").version.clone();
        let version = loaded.version.clone();
        let prepared = swap::prepare_loaded(&self.runtime, &self.handle, loaded).await.map_err(prepare)?;
        self.show(|s| s.state = format!("gating {digest}"));
        let installed_at = SystemTime::now();
        swap::install(&self.handle, prepared).await;
        let detail = match self.gate(&version, installed_at).await {
            Ok(passed) => return Ok(passed),
            Err(detail) => detail,
        };
        self.roll_back(running, before.as_deref()).await;
        Err(Refusal::Gate { digest, detail })
    }

    /// Compiles (through the artifact cache) what `resolved` names.
    async fn load(&self, resolved: &Resolved) -> Result<LoadedComponent<GuestCtx>, component::ComponentError> {
        let rt = &self.runtime;
        let source = ComponentSource::File(resolved.path.clone());
        component::load_source(rt.engine.clone(), rt.linker.clone(), source, rt.cache_for(&self.handle.config)).await
    }

    /// Watches the runs of `version` since `since`: the first failure (or
    /// an instance that cannot be re-initialised) fails the gate; `gate_runs`
    /// successes, or a window with no failure, pass it.
    async fn gate(&self, version: &str, since: SystemTime) -> Result<Passed, String> {
        let config = self.runtime.fleet.rollout_config();
        let deadline = Instant::now() + config.gate_window;
        loop {
            if let Some(verdict) = self.verdict(version, since, config.gate_runs as usize) {
                return verdict.map(|()| Passed::Gate);
            }
            if Instant::now() >= deadline {
                return Ok(Passed::Gate);
            }
            tokio::select! {
                _ = self.shutdown.cancelled() => return Ok(Passed::Interrupted),
                _ = tokio::time::sleep(GATE_CHECK) => {}
            }
        }
    }

    /// The gate's verdict so far, or `None` while it is still open.
    fn verdict(&self, version: &str, since: SystemTime, gate_runs: usize) -> Option<Result<(), String>> {
        gate_verdict(&self.handle.record.lock().expect("record lock"), version, since, gate_runs)
    }

    /// Reinstalls the version that ran before the rollout: the component
    /// the swap kept for rollback, or else `running` loaded again (an
    /// artifact cache hit).
    async fn roll_back(&self, running: &Resolved, before: Option<&str>) {
        if let Some(pending) = self.handle.swap.withdraw() {
            tracing::info!(guest = %self.handle.config.name, withdrawn = %pending.loaded.version, "rollout withdrawn before it was installed");
            return;
        }
        let kept = self.handle.previous.lock().expect("previous lock").clone();
        let loaded = match kept.filter(|c| Some(c.version.as_str()) == before) {
            Some(loaded) => Ok(loaded),
            None => self.load(running).await,
        };
        let prepared = match loaded {
            Ok(loaded) => swap::prepare_loaded(&self.runtime, &self.handle, loaded).await,
            Err(error) => Err(error.into()),
        };
        match prepared {
            Ok(prepared) => {
                swap::install(&self.handle, prepared).await;
            }
            Err(error) => {
                tracing::error!(guest = %self.handle.config.name, %error, "rollback failed");
            }
        }
    }

    /// Updates what `/guests/NAME` shows about the rollout.
    fn show(&self, f: impl FnOnce(&mut RolloutStatus)) {
        let mut record = self.handle.record.lock().expect("record lock");
        let status = record
            .rollout
            .get_or_insert_with(|| RolloutStatus { reference: self.reference.to_string(), ..RolloutStatus::default() });
        f(status);
    }
}

/// The poll interval plus `seed` spread over `0..=poll_jitter`.
fn wait_with_jitter(config: &RolloutConfig, seed: u64) -> Duration {
    let jitter_ms = u64::try_from(config.poll_jitter.as_millis()).unwrap_or(u64::MAX);
    match jitter_ms {
        0 => config.poll_interval,
        ms => config.poll_interval + Duration::from_millis(seed % ms.saturating_add(1)),
    }
}

/// The gate's verdict on `version` from `record`, swapped in at `since`:
/// a failure among its first `gate_runs` runs (or an instance that could
/// not be initialised again) fails it, `gate_runs` successes pass it, and
/// `None` while neither happened.
fn gate_verdict(
    record: &GuestRecord,
    version: &str,
    since: SystemTime,
    gate_runs: usize,
) -> Option<Result<(), String>> {
    if let Some((GuestState::Failed, detail)) = &record.blocked {
        return Some(Err(detail.clone()));
    }
    let runs: Vec<&str> =
        record.recent.iter().filter(|(at, _, v)| v == version && *at >= since).map(|(_, o, _)| *o).collect();
    if runs.iter().take(gate_runs).any(|o| *o != "ok") {
        let detail = record.last_run.as_ref().and_then(|r| r.outcome_detail()).unwrap_or_else(|| "a run failed".into());
        return Some(Err(format!("run failed: {detail}")));
    }
    (runs.len() >= gate_runs).then_some(Ok(()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::supervisor::Outcome;
    use crate::supervisor::record::FinishedRun;

    fn ran(record: &mut GuestRecord, version: &str, at: SystemTime, outcome: Outcome) {
        let run =
            FinishedRun { started: at, finished: at, trigger: "scheduled".into(), outcome, version: version.into() };
        record.finish(run);
    }

    #[test]
    fn the_gate_stays_open_until_the_new_version_ran_gate_runs_times() {
        let since = SystemTime::now();
        let mut record = GuestRecord::default();
        ran(&mut record, "old", since - Duration::from_secs(1), Outcome::Error("old failure".into()));
        assert_eq!(gate_verdict(&record, "new", since, 2), None, "the old version's runs do not count");
        ran(&mut record, "new", since, Outcome::Ok);
        assert_eq!(gate_verdict(&record, "new", since, 2), None);
        ran(&mut record, "new", since + Duration::from_secs(1), Outcome::Ok);
        assert_eq!(gate_verdict(&record, "new", since, 2), Some(Ok(())));
    }

    #[test]
    fn a_failed_run_of_the_new_version_fails_the_gate_with_its_reason() {
        let since = SystemTime::now();
        let mut record = GuestRecord::default();
        ran(&mut record, "new", since, Outcome::Ok);
        ran(&mut record, "new", since + Duration::from_secs(1), Outcome::Trap("trapped: unreachable".into()));
        let verdict = gate_verdict(&record, "new", since, 3);
        assert_eq!(verdict, Some(Err("run failed: trapped: unreachable".into())));
    }

    #[test]
    fn a_new_version_that_cannot_be_initialised_again_fails_the_gate() {
        let record =
            GuestRecord { blocked: Some((GuestState::Failed, "init failed".into())), ..GuestRecord::default() };
        assert_eq!(gate_verdict(&record, "new", SystemTime::now(), 3), Some(Err("init failed".into())));
    }

    #[test]
    fn the_wait_between_polls_is_the_interval_plus_at_most_the_jitter() {
        let config = RolloutConfig {
            poll_interval: Duration::from_secs(300),
            poll_jitter: Duration::from_secs(60),
            ..RolloutConfig::default()
        };
        let waits: Vec<Duration> = (0..1000u64).map(|seed| wait_with_jitter(&config, seed * 7919)).collect();
        assert!(waits.iter().all(|w| (Duration::from_secs(300)..=Duration::from_secs(360)).contains(w)), "{waits:?}");
        assert!(waits.iter().any(|w| *w != waits[0]), "the jitter spreads the polls");
        let none = RolloutConfig { poll_jitter: Duration::ZERO, ..config };
        assert_eq!(wait_with_jitter(&none, 12345), Duration::from_secs(300));
    }
}
