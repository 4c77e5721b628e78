//! What the host remembers about each guest's runs, and how that becomes the
//! admin API's snapshot and metrics.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use crate::api::{AdminError, GuestSnapshot, GuestState, LatestPoint, Lifecycle, RecentRun, RolloutStatus, RunRecord};
use crate::capabilities::GuestShared;
use crate::capabilities::status::Health;
use crate::config::GuestConfig;
use crate::metrics::Writer;
use crate::store::{FieldValue, Point, Query, TimeSeriesStore};
use crate::timefmt::{rfc3339, rfc3339_ns};

/// How a run ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// `run` returned ok.
    Ok,
    /// `run` returned an error (the guest's message).
    Error(String),
    /// The guest trapped (panic, unreachable, out of memory, CPU deadline).
    Trap(String),
    /// The run did not finish within `run_timeout`.
    Timeout(String),
}

impl Outcome {
    fn label(&self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Error(_) => "error",
            Outcome::Trap(_) => "trap",
            Outcome::Timeout(_) => "timeout",
        }
    }

    fn detail(&self) -> Option<String> {
        match self {
            Outcome::Ok => None,
            Outcome::Error(m) | Outcome::Trap(m) | Outcome::Timeout(m) => Some(m.clone()),
        }
    }
}

/// One finished run.
#[derive(Debug, Clone)]
pub struct FinishedRun {
    pub started: SystemTime,
    pub finished: SystemTime,
    pub trigger: String,
    pub outcome: Outcome,
    /// The component version that ran.
    pub version: String,
}

impl FinishedRun {
    /// Why the run failed (`None` for a success).
    pub fn outcome_detail(&self) -> Option<String> {
        self.outcome.detail()
    }
}

/// Host-side bookkeeping of one guest.
#[derive(Debug, Default)]
pub struct GuestRecord {
    pub version: Option<String>,
    pub initialized: bool,
    /// Why the guest cannot run (load or init failure), shown until it can.
    pub blocked: Option<(GuestState, String)>,
    pub last_run: Option<FinishedRun>,
    pub last_success: Option<SystemTime>,
    pub next_run: Option<SystemTime>,
    pub runs: u64,
    pub failures: u64,
    pub consecutive_failures: u64,
    pub run_seconds_total: f64,
    /// Every run, by component version (bounded to the last 64 versions).
    pub runs_by_version: Vec<(String, u64)>,
    /// The version the last swap replaced.
    pub previous_version: Option<String>,
    pub swapped_at: Option<SystemTime>,
    /// Why the last swap from a changed component file was refused.
    pub last_swap_error: Option<String>,
    /// The guest runs quick code while its optimized code compiles.
    pub optimizing: bool,
    /// The latest runs: (started, outcome label, version), oldest first.
    pub recent: std::collections::VecDeque<(SystemTime, &'static str, String)>,
    /// The followed tag's rollout (see `follow`), for an `oci://` tag.
    pub rollout: Option<RolloutStatus>,
}

/// How many recent runs a record keeps.
const RECENT_RUNS: usize = 32;

impl GuestRecord {
    /// Records a finished run.
    pub fn finish(&mut self, run: FinishedRun) {
        self.runs += 1;
        let seconds = run.finished.duration_since(run.started).unwrap_or(Duration::ZERO).as_secs_f64();
        self.run_seconds_total += seconds;
        if run.outcome == Outcome::Ok {
            self.consecutive_failures = 0;
            self.last_success = Some(run.finished);
        } else {
            self.failures += 1;
            self.consecutive_failures += 1;
        }
        if self.recent.len() == RECENT_RUNS {
            self.recent.pop_front();
        }
        self.recent.push_back((run.started, run.outcome.label(), run.version.clone()));
        match self.runs_by_version.iter_mut().find(|(v, _)| *v == run.version) {
            Some((_, n)) => *n += 1,
            None => {
                self.runs_by_version.push((run.version.clone(), 1));
                if self.runs_by_version.len() > 64 {
                    self.runs_by_version.remove(0);
                }
            }
        }
        self.last_run = Some(run);
    }

    /// The state shown to people: load/init problems first (`failed`: the
    /// guest cannot run), then repeated run failures (`degraded` after
    /// `degraded_after` in a row), then what the guest reported about itself.
    pub fn state(&self, health: Option<Health>, degraded_after: u64) -> (GuestState, Option<String>) {
        if let Some((state, detail)) = &self.blocked {
            return (*state, Some(detail.clone()));
        }
        if !self.initialized && self.last_run.is_none() {
            return (GuestState::Starting, Some("loading and initialising the component".into()));
        }
        // A trapped or timed-out run discards its instance; while the next one
        // is created, the guest still shows why its last run failed.
        let last_failure = self.last_run.as_ref().and_then(|r| r.outcome.detail());
        if let Some(m) = last_failure.filter(|_| self.consecutive_failures >= degraded_after.max(1)) {
            let mut detail = match &health {
                Some(Health::Degraded(h)) if !m.contains(h.as_str()) => format!("{h} ({m})"),
                _ => m,
            };
            if self.consecutive_failures > 1 {
                detail.push_str(&format!(" [{} failures in a row; retrying with backoff]", self.consecutive_failures));
            }
            return (GuestState::Degraded, Some(detail));
        }
        if !self.initialized {
            return (GuestState::Starting, Some("creating a fresh instance after the last run".into()));
        }
        match health {
            Some(Health::Standby(t)) => (GuestState::Standby, Some(t)),
            Some(Health::Degraded(t)) => (GuestState::Degraded, Some(t)),
            Some(Health::Ok) => (GuestState::Ok, None),
            None if self.last_run.is_some() => (GuestState::Ok, None),
            None => (GuestState::Starting, Some("waiting for the first run".into())),
        }
    }

    /// The admin API's view of this guest.
    pub fn snapshot(&self, config: &GuestConfig, shared: &GuestShared) -> GuestSnapshot {
        let (state, detail) = self.state(shared.board.health(), config.restart.degraded_after);
        GuestSnapshot {
            name: config.name.clone(),
            state,
            detail,
            version: self.version.clone(),
            schedule: config.schedule.to_string(),
            initialized: self.initialized,
            last_run: self.last_run.as_ref().map(|r| RunRecord {
                started: rfc3339(r.started),
                finished: rfc3339(r.finished),
                trigger: r.trigger.clone(),
                outcome: r.outcome.label().to_string(),
                detail: r.outcome.detail(),
            }),
            last_success: self.last_success.map(rfc3339),
            next_run: self.next_run.map(rfc3339),
            runs: self.runs,
            failures: self.failures,
            consecutive_failures: self.consecutive_failures,
            points_written: shared.influx.points_written.load(Ordering::Relaxed),
            run_seconds_total: self.run_seconds_total,
            last_run_seconds: self
                .last_run
                .as_ref()
                .map(|r| r.finished.duration_since(r.started).unwrap_or(Duration::ZERO).as_secs_f64()),
            counters: shared.board.counters().into_iter().map(|(k, v)| (k, v.to_json())).collect(),
            latest: shared.influx.latest.lock().expect("latest lock").values().map(point_view).collect(),
            lifecycle: Lifecycle {
                previous_version: self.previous_version.clone(),
                swapped_at: self.swapped_at.map(rfc3339),
                last_swap_error: self.last_swap_error.clone(),
                optimizing: self.optimizing,
                recent_runs: self
                    .recent
                    .iter()
                    .map(|(started, outcome, version)| RecentRun {
                        started: rfc3339(*started),
                        outcome: outcome.to_string(),
                        version: version.clone(),
                    })
                    .collect(),
                rollout: self.rollout.clone(),
            },
        }
    }
}

/// A written point as the admin API shows it (status page: latest values).
fn point_view(p: &Point) -> (String, LatestPoint) {
    (p.measurement.clone(), view(p.time, &p.tags, &p.fields))
}

/// A stored row as the admin API shows it (status page: series).
fn view(time: i64, tags: &BTreeMap<String, String>, fields: &BTreeMap<String, FieldValue>) -> LatestPoint {
    let fields = fields.iter().map(|(k, v)| (k.clone(), field_json(v))).collect();
    LatestPoint { time: rfc3339_ns(time), tags: tags.clone(), fields }
}

/// The newest `limit` rows of `measurement` (oldest first), for the status
/// page's charts; refused unless the guest's grants name the measurement.
pub async fn series(
    guest: &GuestConfig,
    store: &dyn TimeSeriesStore,
    measurement: &str,
    limit: u32,
) -> Result<Vec<LatestPoint>, AdminError> {
    let grants = &guest.grants;
    if !grants.influx_write.iter().chain(&grants.influx_read).any(|m| m == measurement) {
        return Err(AdminError::BadRequest(format!(
            "guest {:?} has no grant for measurement {measurement:?}; only measurements in its grants.influx_write or grants.influx_read can be charted",
            guest.name
        )));
    }
    let query = Query { measurement: measurement.to_owned(), descending: true, limit: Some(limit), ..Query::default() };
    let rows = store
        .query(query)
        .await
        .map_err(|e| AdminError::Unavailable(format!("store query for {measurement:?} failed: {e}")))?;
    Ok(rows.iter().rev().map(|r| view(r.time, &r.tags, &r.fields)).collect())
}

/// A field value as plain JSON (a non-finite float becomes null).
pub fn field_json(v: &FieldValue) -> serde_json::Value {
    match v {
        FieldValue::Float(f) => serde_json::Value::from(*f),
        FieldValue::Integer(i) => serde_json::Value::from(*i),
        FieldValue::Unsigned(u) => serde_json::Value::from(*u),
        FieldValue::Boolean(b) => serde_json::Value::from(*b),
        FieldValue::Text(t) => serde_json::Value::from(t.as_str()),
    }
}

/// A counter family: name, help text, and how to read it from a guest.
type MetricFamily = (&'static str, &'static str, fn(&GuestShared) -> u64);

/// Store and HTTP counters per guest.
const COUNTERS: [MetricFamily; 9] = [
    ("wattedge_guest_influx_queries_total", "Store queries made by the guest.", |s| {
        s.influx.queries.load(Ordering::Relaxed)
    }),
    ("wattedge_guest_influx_denied_total", "Store writes and queries refused by grants.", |s| {
        s.influx.writes_denied.load(Ordering::Relaxed) + s.influx.queries_denied.load(Ordering::Relaxed)
    }),
    ("wattedge_guest_influx_errors_total", "Store operations that failed.", |s| {
        s.influx.errors.load(Ordering::Relaxed)
    }),
    ("wattedge_guest_http_requests_total", "Outbound HTTP requests attempted.", |s| {
        s.http.requests.load(Ordering::Relaxed)
    }),
    ("wattedge_guest_http_denied_total", "Outbound HTTP requests refused by grants.", |s| {
        s.http.denied.load(Ordering::Relaxed)
    }),
    ("wattedge_guest_http_errors_total", "Outbound HTTP requests that failed.", |s| {
        s.http.errors.load(Ordering::Relaxed)
    }),
    ("wattedge_guest_http_sent_bytes_total", "Outbound HTTP request body bytes sent.", |s| {
        s.http.bytes_out.load(Ordering::Relaxed)
    }),
    ("wattedge_guest_http_received_bytes_total", "Outbound HTTP response body bytes received.", |s| {
        s.http.bytes_in.load(Ordering::Relaxed)
    }),
    (
        "wattedge_guest_denied_warnings_dropped_total",
        "Host warnings about the guest's denied requests dropped by its warning budget.",
        |s| s.denials.dropped_total(),
    ),
];

/// Time spent waiting on the store and on upstream HTTP per guest, read in
/// nanoseconds, shown in seconds.
const WAITED_NANOS: [MetricFamily; 3] = [
    (
        "wattedge_guest_influx_query_seconds_total",
        "Seconds the guest's store queries waited on the store (not counting the copy of the answer into the guest).",
        |s| s.influx.query_nanos.load(Ordering::Relaxed),
    ),
    (
        "wattedge_guest_influx_write_seconds_total",
        "Seconds the guest's store writes took until the store or the outbox held the points.",
        |s| s.influx.write_nanos.load(Ordering::Relaxed),
    ),
    (
        "wattedge_guest_http_seconds_total",
        "Seconds the guest's outbound HTTP requests took until their response or error.",
        |s| s.http.nanos.load(Ordering::Relaxed),
    ),
];

/// Prometheus lines for store and HTTP activity per guest (the store's own
/// status and counters come from the store).
pub fn store_metrics(guests: &[std::sync::Arc<super::GuestHandle>]) -> String {
    let mut w = Writer::default();
    for (name, help, count) in COUNTERS {
        let mut family = w.counter(name, help);
        for g in guests {
            family.sample(&[("guest", &g.config.name)], count(&g.shared));
        }
    }
    for (name, help, nanos) in WAITED_NANOS {
        let mut family = w.counter(name, help);
        for g in guests {
            family.sample(&[("guest", &g.config.name)], nanos(&g.shared) as f64 / 1e9);
        }
    }
    let mut failures = w.counter("wattedge_guest_http_failures_total", "Outbound HTTP failures by kind.");
    for g in guests {
        for (kind, n) in g.shared.http.errors_by_kind() {
            failures.sample(&[("guest", &g.config.name), ("kind", kind)], n);
        }
    }
    w.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(outcome: Outcome) -> FinishedRun {
        let now = SystemTime::now();
        FinishedRun { started: now, finished: now, trigger: "scheduled".into(), outcome, version: "v1".into() }
    }

    #[test]
    fn a_guest_that_never_ran_is_starting_until_initialised() {
        let record = GuestRecord::default();
        assert_eq!(record.state(None, 1).0, GuestState::Starting);
    }

    #[test]
    fn a_trapped_guest_shows_its_trap_while_a_fresh_instance_is_created() {
        let mut record = GuestRecord { initialized: true, ..GuestRecord::default() };
        record.finish(run(Outcome::Trap("trapped: memory_limit exceeded".into())));
        record.initialized = false;
        let (state, detail) = record.state(None, 1);
        assert_eq!(state, GuestState::Degraded);
        assert!(detail.unwrap().contains("memory_limit"));
        let (state, detail) = record.state(None, 3);
        assert_eq!(state, GuestState::Starting, "below degraded_after the restart is shown as such");
        assert!(detail.unwrap().contains("fresh instance"));
    }
}
