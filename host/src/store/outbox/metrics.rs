//! The outbox's Prometheus counters: what it refused, lost or fsynced. Its
//! depth and the age of its oldest point are part of the store's status
//! (`store::status`), rendered from there.

use std::sync::atomic::Ordering;

use super::Outbox;
use crate::metrics::Writer;

impl Outbox {
    /// Writes the outbox's counters.
    pub fn write_counters(&self, w: &mut Writer) {
        let c = &self.counters;
        let rows = [
            ("wattedge_outbox_rejected_full_total", "Points refused because the outbox was full.", &c.rejected_full),
            (
                "wattedge_outbox_torn_records_total",
                "Torn or corrupt records cut off (their points are lost).",
                &c.torn_records,
            ),
            ("wattedge_outbox_torn_bytes_total", "Bytes of torn or corrupt records cut off.", &c.torn_bytes),
            ("wattedge_outbox_fsyncs_total", "fsyncs of appended records (shared by concurrent writers).", &c.fsyncs),
        ];
        for (name, help, value) in rows {
            w.counter(name, help).value(value.load(Ordering::Relaxed));
        }
    }
}
