//! What a store says about itself: [`StoreStatus`], produced by the store
//! ([`TimeSeriesStore::status`](super::TimeSeriesStore::status)) and
//! rendered as is by `GET /api/store` (JSON), `/metrics` (through
//! [`StoreStatus::write_metrics`]) and the status page (which reads
//! `/api/store`), so the three can never disagree.

use serde::Serialize;

use crate::metrics::Writer;

use super::{Timestamp, now_ns};

/// The store's kind and, for a remote backend, its outbox and link.
///
/// As JSON: `{"backend": "embedded"}`, or for a remote backend also
/// `outbox_depth`, `outbox_bytes`, `outbox_oldest_age_seconds`,
/// `reachable` and `last_error` (see [`OutboxStatus`]).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StoreStatus {
    /// `embedded`, `influxdb-v1` or `influxdb-v2`.
    #[serde(rename = "backend")]
    pub kind: &'static str,
    /// `None` for a store without an outbox (the embedded one).
    #[serde(flatten)]
    pub outbox: Option<OutboxStatus>,
}

/// A remote backend's queue and whether the database answers.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OutboxStatus {
    /// Points accepted and not yet acknowledged by the database.
    #[serde(rename = "outbox_depth")]
    pub points: u64,
    /// Bytes of the records holding them.
    #[serde(rename = "outbox_bytes")]
    pub bytes: u64,
    /// How long the oldest of them has waited, in seconds (millisecond
    /// precision); 0 when none waits.
    #[serde(rename = "outbox_oldest_age_seconds")]
    pub oldest_age_seconds: f64,
    /// Whether the last contact with the database succeeded.
    pub reachable: bool,
    /// Why the last delivery failed, while deliveries fail (scrubbed of the
    /// credentials, escaped and cut as guest text); `None` once one succeeds.
    pub last_error: Option<String>,
}

impl StoreStatus {
    /// The status of a store without an outbox.
    pub fn local(kind: &'static str) -> StoreStatus {
        StoreStatus { kind, outbox: None }
    }

    /// Writes the status as gauges: `wattedge_store_info{backend}` and, for
    /// a remote backend, `wattedge_outbox_points`, `_bytes`,
    /// `_oldest_point_age_seconds` and `wattedge_influx_up`.
    pub fn write_metrics(&self, w: &mut Writer) {
        w.gauge("wattedge_store_info", "The configured time-series backend.").sample(&[("backend", self.kind)], 1u64);
        let Some(o) = &self.outbox else { return };
        w.gauge("wattedge_outbox_points", "Points waiting in the outbox.").value(o.points);
        w.gauge("wattedge_outbox_bytes", "Bytes of records waiting in the outbox.").value(o.bytes);
        w.gauge("wattedge_outbox_oldest_point_age_seconds", "Age of the oldest waiting point.")
            .value(o.oldest_age_seconds);
        w.gauge("wattedge_influx_up", "1 when the last contact with InfluxDB succeeded.").value(o.reachable);
    }
}

/// Seconds since `accepted` (nanoseconds since the epoch), to the
/// millisecond; 0 for none (or a clock that went back).
pub fn age_seconds(accepted: Option<Timestamp>) -> f64 {
    let Some(accepted) = accepted else { return 0.0 };
    let millis = now_ns().saturating_sub(accepted).max(0) / 1_000_000;
    millis as f64 / 1e3
}

#[cfg(test)]
mod tests {
    use super::*;

    fn remote() -> StoreStatus {
        StoreStatus {
            kind: "influxdb-v1",
            outbox: Some(OutboxStatus {
                points: 12,
                bytes: 480,
                oldest_age_seconds: 3.25,
                reachable: false,
                last_error: Some("cannot connect".into()),
            }),
        }
    }

    #[test]
    fn the_embedded_store_shows_only_its_kind() {
        let status = StoreStatus::local("embedded");
        assert_eq!(serde_json::to_value(&status).unwrap(), serde_json::json!({"backend": "embedded"}));
        let mut w = Writer::default();
        status.write_metrics(&mut w);
        let text = w.finish();
        assert!(text.contains("\nwattedge_store_info{backend=\"embedded\"} 1\n"), "{text}");
        assert!(!text.contains("wattedge_outbox"), "no outbox gauges without an outbox: {text}");
    }

    #[test]
    fn a_remote_store_shows_its_outbox_and_link_in_json() {
        assert_eq!(
            serde_json::to_value(remote()).unwrap(),
            serde_json::json!({
                "backend": "influxdb-v1",
                "outbox_depth": 12,
                "outbox_bytes": 480,
                "outbox_oldest_age_seconds": 3.25,
                "reachable": false,
                "last_error": "cannot connect",
            })
        );
    }

    #[test]
    fn metrics_show_the_same_numbers_as_the_json() {
        let mut w = Writer::default();
        remote().write_metrics(&mut w);
        let text = w.finish();
        for line in [
            "wattedge_store_info{backend=\"influxdb-v1\"} 1",
            "wattedge_outbox_points 12",
            "wattedge_outbox_bytes 480",
            "wattedge_outbox_oldest_point_age_seconds 3.25",
            "wattedge_influx_up 0",
            "# TYPE wattedge_outbox_points gauge",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in:\n{text}");
        }
    }

    #[test]
    fn the_age_of_nothing_waiting_is_zero_and_of_a_point_is_its_wait() {
        assert_eq!(age_seconds(None), 0.0);
        assert_eq!(age_seconds(Some(now_ns() + 10_000_000_000)), 0.0, "a clock that went back is no negative age");
        let age = age_seconds(Some(now_ns() - 2_500_000_000));
        assert!((2.5..3.5).contains(&age), "{age}");
    }
}
