//! The outbox's Prometheus lines: depth, age of the oldest point, and the
//! counters of what it refused, lost or fsynced.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use super::Outbox;
use crate::store::now_ns;

impl Outbox {
    /// Prometheus lines for the outbox.
    pub fn metrics(&self, out: &mut String) {
        let d = self.depth();
        let age = d.oldest_accepted.map_or(0.0, |t| (now_ns().saturating_sub(t)).max(0) as f64 / 1e9);
        let c = &self.counters;
        let rows: [(&str, &str, &str, String); 7] = [
            ("wattedge_outbox_points", "gauge", "Points waiting in the outbox", d.points.to_string()),
            ("wattedge_outbox_bytes", "gauge", "Bytes of records waiting in the outbox", d.bytes.to_string()),
            (
                "wattedge_outbox_oldest_point_age_seconds",
                "gauge",
                "Age of the oldest waiting point",
                format!("{age:.3}"),
            ),
            (
                "wattedge_outbox_rejected_full_total",
                "counter",
                "Points refused because the outbox was full",
                load(&c.rejected_full),
            ),
            (
                "wattedge_outbox_torn_records_total",
                "counter",
                "Torn or corrupt records cut off (their points are lost)",
                load(&c.torn_records),
            ),
            (
                "wattedge_outbox_torn_bytes_total",
                "counter",
                "Bytes of torn or corrupt records cut off",
                load(&c.torn_bytes),
            ),
            (
                "wattedge_outbox_fsyncs_total",
                "counter",
                "fsyncs of appended records (shared by concurrent writers)",
                load(&c.fsyncs),
            ),
        ];
        for (name, kind, help, value) in rows {
            let _ = writeln!(out, "# HELP {name} {help}.\n# TYPE {name} {kind}\n{name} {value}");
        }
    }
}

fn load(a: &AtomicU64) -> String {
    a.load(Ordering::Relaxed).to_string()
}
