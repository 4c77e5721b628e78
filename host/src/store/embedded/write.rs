//! The embedded store's write path: validation and one transaction per batch,
//! for [`Point`]s and for [`SortedPoint`]s alike.
//!
//! Both kinds are read through [`StoredPoint`], so a guest's points (which the
//! `influx` capability turns into [`SortedPoint`]s by moving their strings)
//! are stored without first building two maps per point, and both kinds are
//! checked, keyed, encoded and merged by the same code.

use std::collections::BTreeMap;

use super::{EmbeddedStore, MEASUREMENTS, POINTS, decode_fields, put_bytes, put_field, put_time, retention_cutoff};
use crate::store::line_protocol::FieldRef;
use crate::store::table::TableRow;
use crate::store::{FieldValue, Point, SortedPoint, StoreError, Timestamp, now_ns};

/// What the write path reads of a point. Tag and field keys come in
/// ascending order, each key once.
pub(super) trait StoredPoint {
    fn measurement(&self) -> &str;
    fn time(&self) -> Timestamp;
    fn tag_pairs(&self) -> impl Iterator<Item = (&str, &str)>;
    fn field_pairs(&self) -> impl Iterator<Item = (&str, FieldRef<'_>)>;
}

/// `Point` (maps) and `SortedPoint` (sorted vectors) iterate alike.
macro_rules! stored_point {
    ($($kind:ty),*) => {$(
        impl StoredPoint for $kind {
            fn measurement(&self) -> &str {
                &self.measurement
            }
            fn time(&self) -> Timestamp {
                self.time
            }
            fn tag_pairs(&self) -> impl Iterator<Item = (&str, &str)> {
                self.tags.iter().map(|(k, v)| (k.as_str(), v.as_str()))
            }
            fn field_pairs(&self) -> impl Iterator<Item = (&str, FieldRef<'_>)> {
                self.fields.iter().map(|(k, v)| (k.as_str(), FieldRef::from(v)))
            }
        }
    )*};
}

stored_point!(Point, SortedPoint);

/// A table's row reads its columns in key order (see [`TableRow`]).
impl StoredPoint for TableRow<'_> {
    fn measurement(&self) -> &str {
        TableRow::measurement(self)
    }
    fn time(&self) -> Timestamp {
        TableRow::time(self)
    }
    fn tag_pairs(&self) -> impl Iterator<Item = (&str, &str)> {
        self.tags()
    }
    fn field_pairs(&self) -> impl Iterator<Item = (&str, FieldRef<'_>)> {
        self.fields()
    }
}

impl EmbeddedStore {
    /// Validates the whole batch, then writes it in one transaction with one
    /// key and one value buffer, inserting each point once (merging only when
    /// the insert replaced a stored point) and recording each run of points of
    /// one measurement once.
    pub(super) fn write_batch<P: StoredPoint>(&self, points: &[P]) -> Result<u32, StoreError> {
        for (i, p) in points.iter().enumerate() {
            validate(p).map_err(|m| StoreError::Invalid(format!("point {i}: {m}")))?;
        }
        let count = u32::try_from(points.len())
            .map_err(|_| StoreError::Invalid(format!("batch too large: {}", points.len())))?;
        if points.is_empty() {
            return Ok(0);
        }
        let txn = self.db.begin_write().map_err(self.err("begin write"))?;
        {
            let mut table = txn.open_table(POINTS).map_err(self.err("open points"))?;
            let mut measurements = txn.open_table(MEASUREMENTS).map_err(self.err("open measurements"))?;
            let (mut key, mut value) = (Vec::with_capacity(128), Vec::with_capacity(128));
            let mut recorded: Option<&str> = None;
            for p in points {
                put_point_key(&mut key, p);
                value.clear();
                p.field_pairs().for_each(|(k, v)| put_field(&mut value, k, v));
                let replaced = table
                    .insert(key.as_slice(), value.as_slice())
                    .map_err(self.err("insert point"))?
                    .map(|old| decode_fields(old.value()));
                if let Some(old) = replaced {
                    let mut fields: BTreeMap<String, FieldValue> = old.map_err(|e| self.corrupt(e))?;
                    fields.extend(p.field_pairs().map(|(k, v)| (k.to_owned(), v.into_value())));
                    value.clear();
                    fields.iter().for_each(|(k, v)| put_field(&mut value, k, FieldRef::from(v)));
                    table.insert(key.as_slice(), value.as_slice()).map_err(self.err("merge point"))?;
                }
                if recorded != Some(p.measurement()) {
                    measurements.insert(p.measurement(), ()).map_err(self.err("record measurement"))?;
                    recorded = Some(p.measurement());
                }
            }
        }
        txn.commit().map_err(self.err("commit write"))?;
        self.count_beyond_retention(points);
        Ok(count)
    }

    /// Counts and warns about points of a committed batch that the next
    /// purge will remove.
    fn count_beyond_retention<P: StoredPoint>(&self, points: &[P]) {
        let Some(retention) = self.retention else { return };
        let cutoff = retention_cutoff(retention, now_ns());
        let old = points.iter().filter(|p| p.time() < cutoff).count() as u64;
        if old > 0 {
            self.beyond_retention.fetch_add(old, std::sync::atomic::Ordering::Relaxed);
            tracing::warn!(
                points = old,
                retention = %humantime::format_duration(retention),
                "points older than the embedded store's retention were written and will be purged within the hour; \
                 raise influx.retention, or set it to \"forever\", to keep them"
            );
        }
    }
}

/// Replaces `out` with the key of `p` (see the layout in the parent module).
fn put_point_key(out: &mut Vec<u8>, p: &impl StoredPoint) {
    out.clear();
    put_bytes(out, p.measurement().as_bytes());
    put_time(out, p.time());
    for (k, v) in p.tag_pairs() {
        put_bytes(out, k.as_bytes());
        put_bytes(out, v.as_bytes());
    }
}

/// Checks a point against InfluxDB's rules; the message names what is wrong.
fn validate(p: &impl StoredPoint) -> Result<(), String> {
    if p.measurement().is_empty() {
        return Err("measurement is empty".into());
    }
    if p.field_pairs().next().is_none() {
        return Err(format!("measurement {:?} has no fields", p.measurement()));
    }
    if let Some((_, v)) = p.tag_pairs().find(|(k, _)| k.is_empty()) {
        return Err(format!("empty tag key (value {v:?})"));
    }
    for (k, v) in p.field_pairs() {
        if k.is_empty() {
            return Err("empty field key".into());
        }
        if let FieldRef::Float(f) = v
            && !f.is_finite()
        {
            return Err(format!("field {k:?} is {f}, which InfluxDB cannot store"));
        }
    }
    Ok(())
}
