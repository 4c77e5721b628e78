//! The host's own health as time series: every `[host] health_interval`
//! the host writes measurement `wattedge_host` through the store interface
//! (so it lands in the configured InfluxDB next to the guests' points,
//! with the same `[host] tags`): one row per guest (tag `guest`: its
//! `state`, `version` digest, `runs`, `failures`) and one row for the store
//! (`backend` and, for a remote backend, `outbox_points`, `outbox_bytes`,
//! `outbox_oldest_age_seconds`, `reachable`). A fleet's boards then show
//! up side by side in one Grafana or InfluxDB view.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::GuestHandle;
use crate::api::GuestSnapshot;
use crate::config::GUEST_TAG;
use crate::store::{FieldValue, Point, StoreStatus, TimeSeriesStore, Timestamp, now_ns};

/// The measurement of the host's health rows.
pub const MEASUREMENT: &str = "wattedge_host";

/// What the health task reads and where it writes.
pub(super) struct HealthReport {
    pub guests: Vec<Arc<GuestHandle>>,
    pub store: Arc<dyn TimeSeriesStore>,
    /// `[host] tags`, keys ascending.
    pub host_tags: Arc<[(String, String)]>,
}

impl HealthReport {
    /// Writes the health rows every `every` (the first one interval after
    /// the start, once the guests had time to start) until `shutdown`.
    pub(super) async fn run(self, every: Duration, shutdown: CancellationToken) {
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = ticks.tick() => {}
            }
            let points = self.points(now_ns());
            if let Err(error) = self.store.write(points).await {
                // Not fatal: the next interval writes a fresh report.
                tracing::warn!(%error, "cannot write the host's health rows ({MEASUREMENT})");
            }
        }
    }

    /// This moment's health rows, at `time`.
    fn points(&self, time: Timestamp) -> Vec<Point> {
        let mut points: Vec<Point> =
            self.guests.iter().map(|g| guest_point(&g.snapshot(), &self.host_tags, time)).collect();
        points.push(store_point(&self.store.status(), &self.host_tags, time));
        points
    }
}

/// A guest's row: tag `guest`, fields `state`, `version` (when known),
/// `runs` and `failures` (integers: InfluxDB 1.x has no unsigned ones).
fn guest_point(g: &GuestSnapshot, host_tags: &[(String, String)], time: Timestamp) -> Point {
    let mut tags: std::collections::BTreeMap<String, String> = host_tags.iter().cloned().collect();
    tags.insert(GUEST_TAG.to_string(), g.name.clone());
    let mut fields = std::collections::BTreeMap::from([
        ("state".to_string(), FieldValue::Text(g.state.as_str().to_string())),
        ("runs".to_string(), integer(g.runs)),
        ("failures".to_string(), integer(g.failures)),
    ]);
    if let Some(version) = &g.version {
        fields.insert("version".to_string(), FieldValue::Text(version.clone()));
    }
    Point { measurement: MEASUREMENT.to_string(), tags, fields, time }
}

/// The store's row: `backend`, and a remote backend's outbox and link.
fn store_point(status: &StoreStatus, host_tags: &[(String, String)], time: Timestamp) -> Point {
    let mut fields = std::collections::BTreeMap::from([("backend".to_string(), FieldValue::Text(status.kind.into()))]);
    if let Some(outbox) = &status.outbox {
        fields.extend([
            ("outbox_points".to_string(), integer(outbox.points)),
            ("outbox_bytes".to_string(), integer(outbox.bytes)),
            ("outbox_oldest_age_seconds".to_string(), FieldValue::Float(outbox.oldest_age_seconds)),
            ("reachable".to_string(), FieldValue::Boolean(outbox.reachable)),
        ]);
    }
    Point { measurement: MEASUREMENT.to_string(), tags: host_tags.iter().cloned().collect(), fields, time }
}

/// A count as an InfluxDB integer (saturating: no board counts past i64).
fn integer(n: u64) -> FieldValue {
    FieldValue::Integer(i64::try_from(n).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::GuestState;
    use crate::store::OutboxStatus;

    fn snapshot(name: &str, version: Option<&str>) -> GuestSnapshot {
        GuestSnapshot {
            name: name.into(),
            state: GuestState::Degraded,
            detail: None,
            version: version.map(str::to_string),
            schedule: "every 15m".into(),
            initialized: true,
            last_run: None,
            last_success: None,
            next_run: None,
            runs: 7,
            failures: 2,
            consecutive_failures: 1,
            points_written: 0,
            run_seconds_total: 0.0,
            last_run_seconds: None,
            counters: Default::default(),
            latest: Default::default(),
            lifecycle: Default::default(),
        }
    }

    fn site() -> Vec<(String, String)> {
        vec![("site".into(), "cottage".into())]
    }

    #[test]
    fn a_guest_row_carries_the_host_tags_its_name_state_version_and_counts() {
        let p = guest_point(&snapshot("meter", Some("ab12")), &site(), 5);
        assert_eq!((p.measurement.as_str(), p.time), (MEASUREMENT, 5));
        assert_eq!(p.tags, [("guest".into(), "meter".into()), ("site".into(), "cottage".into())].into());
        assert_eq!(
            p.fields,
            [
                ("failures".into(), FieldValue::Integer(2)),
                ("runs".into(), FieldValue::Integer(7)),
                ("state".into(), FieldValue::Text("degraded".into())),
                ("version".into(), FieldValue::Text("ab12".into())),
            ]
            .into()
        );
        assert!(!guest_point(&snapshot("new", None), &site(), 5).fields.contains_key("version"));
    }

    #[test]
    fn the_store_row_shows_a_remote_outbox_and_only_the_kind_of_an_embedded_store() {
        let embedded = store_point(&StoreStatus::local("embedded"), &site(), 5);
        assert_eq!(embedded.fields, [("backend".into(), FieldValue::Text("embedded".into()))].into());
        assert_eq!(embedded.tags, site().into_iter().collect());
        let outbox = OutboxStatus { points: 4, bytes: 90, oldest_age_seconds: 2.5, reachable: false, last_error: None };
        let remote = store_point(&StoreStatus { kind: "influxdb-v1", outbox: Some(outbox) }, &site(), 5);
        assert_eq!(remote.fields["outbox_points"], FieldValue::Integer(4));
        assert_eq!(remote.fields["outbox_bytes"], FieldValue::Integer(90));
        assert_eq!(remote.fields["outbox_oldest_age_seconds"], FieldValue::Float(2.5));
        assert_eq!(remote.fields["reachable"], FieldValue::Boolean(false));
    }

    #[test]
    fn every_key_of_the_rows_is_one_a_host_tag_may_not_take() {
        let outbox = OutboxStatus { points: 0, bytes: 0, oldest_age_seconds: 0.0, reachable: true, last_error: None };
        let rows = [
            guest_point(&snapshot("meter", Some("ab12")), &[], 5),
            store_point(&StoreStatus { kind: "influxdb-v1", outbox: Some(outbox) }, &[], 5),
        ];
        for key in rows.iter().flat_map(|p| p.tags.keys().chain(p.fields.keys())) {
            assert!(crate::config::HEALTH_KEYS.contains(&key.as_str()), "{key} is not reserved in config::fleet");
        }
    }

    #[test]
    fn counts_beyond_an_influxdb_integer_saturate() {
        assert_eq!(integer(u64::MAX), FieldValue::Integer(i64::MAX));
        assert_eq!(integer(3), FieldValue::Integer(3));
    }
}
