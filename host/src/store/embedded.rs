//! The embedded time-series store: the default store, one `redb` file on local
//! disk, so a Raspberry Pi keeps its energy data with no database server.
//!
//! It owns the on-disk layout (keys, value encoding, tables), point validation,
//! InfluxDB-style merge semantics, structured queries and retention purging.
//! The batch write path lives in `write`, and the map-free decoding behind
//! `query_floats` (one numeric field as columns) in `scan`.
//! Every write is one ACID `redb` transaction committed with the default
//! (immediate) durability, so a power cut leaves either the whole batch or none
//! of it.
//!
//! # Layout
//! Table `points`: key = `u32 BE len(measurement) ‖ measurement ‖ time ‖ series`,
//! where `time` is the timestamp with its sign bit flipped, big-endian (so byte
//! order is numeric order), and `series` is the canonical, length-prefixed
//! encoding of the sorted tag set. All points of one measurement are therefore
//! contiguous and ordered by time, so a time-range query is a range scan. The
//! value is a small hand-rolled binary encoding of the field map (exact for
//! every `f64` bit pattern, unlike JSON). Table `measurements` lists every
//! measurement that has points, so retention can range-delete per measurement
//! instead of scanning the whole file.
//!
//! # Locking
//! `redb::Database::create` takes an exclusive lock on the file: only one
//! `EmbeddedStore` (in any process, or twice in the same process) may have a
//! given file open at a time; a second `open` fails with
//! [`StoreError::Unavailable`]. Share one `EmbeddedStore` (it is `Send + Sync`)
//! instead of opening the file again.
//!
//! The API is synchronous and may block on disk I/O: call it from
//! `spawn_blocking`.

use std::collections::BTreeMap;
use std::fmt::Display;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::time::Duration;

use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};

use super::line_protocol::FieldRef;
use super::table::{Table, TableBuilder, TableView};
use super::{FieldValue, FloatSeries, Point, Query, Row, Selector, SortedPoint, StoreError, Timestamp};

const POINTS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("points");
const MEASUREMENTS: TableDefinition<&str, ()> = TableDefinition::new("measurements");

/// A crash-safe, single-file time-series store (see the module docs).
pub struct EmbeddedStore {
    db: Database,
    path: PathBuf,
    retention: Option<Duration>,
    /// Points written already older than the retention (see
    /// [`EmbeddedStore::points_beyond_retention`]).
    beyond_retention: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedStore")
            .field("path", &self.path)
            .field("retention", &self.retention)
            .finish_non_exhaustive()
    }
}

/// redb's page cache. Its default (1 GiB) keeps every page a scan reads
/// until it is full, so a store that grows past the RAM of a 512 MiB board
/// would end in an out-of-memory kill; pages beyond this are read from the
/// OS page cache again (the correlator's cycle reads a few MiB).
pub const CACHE_BYTES: usize = 16 << 20;

impl EmbeddedStore {
    /// Opens (creating the parent directory and the file if needed) the store
    /// at `path`. Takes an exclusive lock on the file for the life of the store.
    pub fn open(path: &Path, retention: Option<Duration>) -> Result<Self, StoreError> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| {
                StoreError::Unavailable(format!("creating directory {} for embedded store: {e}", parent.display()))
            })?;
        }
        let db = crate::redb_file::open(path, CACHE_BYTES).map_err(|e| {
            StoreError::Unavailable(format!(
                "opening embedded store {}: {e} (the file is locked exclusively while open)",
                path.display()
            ))
        })?;
        let store = Self { db, path: path.to_path_buf(), retention, beyond_retention: Default::default() };
        // Create the tables up front so read transactions never see them missing.
        let txn = store.db.begin_write().map_err(store.err("begin write"))?;
        {
            txn.open_table(POINTS).map_err(store.err("open points table"))?;
            txn.open_table(MEASUREMENTS).map_err(store.err("open measurements table"))?;
        }
        txn.commit().map_err(store.err("commit table creation"))?;
        Ok(store)
    }

    /// Writes a batch in one transaction; returns the number of points written.
    /// A point with the same (measurement, tags, time) as a stored one merges
    /// into it: its fields overwrite same-named fields, other fields are kept.
    /// The whole batch is validated first; one invalid point rejects the batch.
    pub fn write(&self, points: &[Point]) -> Result<u32, StoreError> {
        self.write_batch(points)
    }

    /// [`write`](Self::write) for points whose keys are already in order,
    /// as the `influx` capability hands over a guest's points: no maps are
    /// built for them. A point whose keys are not strictly ascending (which
    /// would break the key encoding) sends the batch through [`Point`]s.
    pub fn write_sorted(&self, points: &[SortedPoint]) -> Result<u32, StoreError> {
        if points.iter().all(SortedPoint::is_sorted) {
            return self.write_batch(points);
        }
        let points: Vec<Point> = points.iter().cloned().map(SortedPoint::into_point).collect();
        self.write_batch(&points)
    }

    /// Runs a structured query over one measurement.
    pub fn query(&self, q: &Query) -> Result<Vec<Row>, StoreError> {
        let mut rows = Vec::new();
        self.scan(q, |suffix, value| {
            let (time, tags) = decode_key_suffix(suffix).map_err(|e| self.corrupt(e))?;
            if !q.tags.iter().all(|(tk, tv)| tags.get(tk) == Some(tv)) {
                return Ok(false);
            }
            let mut fields = decode_fields(value).map_err(|e| self.corrupt(e))?;
            if !q.fields.is_empty() {
                fields.retain(|name, _| q.fields.contains(name));
                if fields.is_empty() {
                    return Ok(false);
                }
            }
            rows.push(Row { time, tags, fields });
            Ok(true)
        })?;
        Ok(rows)
    }

    /// The numeric values of `field` in the rows [`query`](Self::query)
    /// returns for `q` with `fields = [field]`, decoding only each row's
    /// time, its tags when `q` filters on them, and that one field: no
    /// per-row maps or strings (see [`scan`]).
    pub fn query_floats(&self, q: &Query, field: &str) -> Result<FloatSeries, StoreError> {
        let mut series = FloatSeries::default();
        self.scan(q, |suffix, value| {
            let row = scan::float_row(suffix, value, &q.tags, field.as_bytes()).map_err(|e| self.corrupt(e))?;
            match row {
                scan::FloatRow::Skipped => Ok(false),
                scan::FloatRow::NotNumeric => Ok(true),
                scan::FloatRow::Value(time, v) => {
                    series.times.push(time);
                    series.values.push(v);
                    Ok(true)
                }
            }
        })?;
        Ok(series)
    }

    /// The rows [`query`](Self::query) returns for `q`, as a [`Table`],
    /// decoded in place: a string is copied only the first time it occurs.
    pub fn query_table(&self, q: &Query) -> Result<Table, StoreError> {
        let mut table = TableBuilder::default();
        self.scan(q, |suffix, value| scan::table_row(suffix, value, q, &mut table).map_err(|e| self.corrupt(e)))?;
        Ok(table.finish())
    }

    /// Writes each row of a checked table as a point of its measurement, as
    /// [`write`](Self::write) would, without building the points.
    pub fn write_table(&self, rows: &TableView<'_>) -> Result<u32, StoreError> {
        let rows: Vec<_> = rows.rows().collect();
        self.write_batch(&rows)
    }

    /// Walks the stored rows of `q`'s measurement and time range in the
    /// order `q` asks for, calling `visit` with each key after the
    /// measurement prefix and each value; `visit` says whether it kept the
    /// row, and the walk stops once `q`'s selector or limit is satisfied.
    fn scan(
        &self,
        q: &Query,
        mut visit: impl FnMut(&[u8], &[u8]) -> Result<bool, StoreError>,
    ) -> Result<(), StoreError> {
        if q.measurement.is_empty() {
            return Err(StoreError::Invalid("query measurement is empty".into()));
        }
        let cap = match q.select {
            Selector::First | Selector::Last => 1,
            Selector::All => q.limit.map_or(usize::MAX, |l| l as usize),
        };
        if cap == 0 || matches!((q.start, q.end), (Some(s), Some(e)) if s >= e) {
            return Ok(());
        }
        let lower = time_key(&q.measurement, q.start.unwrap_or(i64::MIN));
        let upper = match q.end {
            Some(end) => time_key(&q.measurement, end),
            None => measurement_successor(&q.measurement),
        };
        let txn = self.db.begin_read().map_err(self.err("begin read"))?;
        let table = txn.open_table(POINTS).map_err(self.err("open points"))?;
        let range = table
            .range::<&[u8]>((Bound::Included(lower.as_slice()), Bound::Excluded(upper.as_slice())))
            .map_err(self.err("range scan"))?;
        let newest_first = match q.select {
            Selector::First => false,
            Selector::Last => true,
            Selector::All => q.descending,
        };
        let iter: Box<dyn Iterator<Item = _>> = if newest_first { Box::new(range.rev()) } else { Box::new(range) };
        let prefix_len = measurement_prefix(&q.measurement).len();
        let mut kept = 0;
        for entry in iter {
            let (k, v) = entry.map_err(self.err("read point"))?;
            if visit(&k.value()[prefix_len..], v.value())? {
                kept += 1;
                if kept >= cap {
                    break;
                }
            }
        }
        Ok(())
    }

    /// Deletes every point older than `now - retention` (time strictly less
    /// than the cutoff); returns how many were deleted. A no-op returning 0
    /// when the store has no retention.
    pub fn purge_expired(&self, now: Timestamp) -> Result<u64, StoreError> {
        let Some(retention) = self.retention else {
            return Ok(0);
        };
        let cutoff = retention_cutoff(retention, now);
        let txn = self.db.begin_write().map_err(self.err("begin purge"))?;
        let mut deleted = 0u64;
        {
            let mut table = txn.open_table(POINTS).map_err(self.err("open points"))?;
            let mut measurements = txn.open_table(MEASUREMENTS).map_err(self.err("open measurements"))?;
            let names: Vec<String> = measurements
                .iter()
                .map_err(self.err("list measurements"))?
                .map(|e| e.map(|(k, _)| k.value().to_owned()))
                .collect::<Result<_, _>>()
                .map_err(self.err("list measurements"))?;
            for name in names {
                let lower = time_key(&name, i64::MIN);
                let upper = time_key(&name, cutoff);
                let extracted = table
                    .extract_from_if::<&[u8], _>(
                        (Bound::Included(lower.as_slice()), Bound::Excluded(upper.as_slice())),
                        |_, _| true,
                    )
                    .map_err(self.err("purge range"))?;
                for entry in extracted {
                    entry.map_err(self.err("purge point"))?;
                    deleted += 1;
                }
                let end = measurement_successor(&name);
                let remaining = table
                    .range::<&[u8]>((Bound::Included(lower.as_slice()), Bound::Excluded(end.as_slice())))
                    .map_err(self.err("check measurement"))?
                    .next()
                    .is_some();
                if !remaining {
                    measurements.remove(name.as_str()).map_err(self.err("forget measurement"))?;
                }
            }
        }
        txn.commit().map_err(self.err("commit purge"))?;
        Ok(deleted)
    }

    /// How many points were written already older than the retention, so
    /// that the next purge (within the hour) removes them: a backfill
    /// reaching further back than `influx.retention`. They are accepted, as
    /// InfluxDB's partial write keeps the rest of a batch; this count and a
    /// warning make their loss visible.
    pub fn points_beyond_retention(&self) -> u64 {
        self.beyond_retention.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The number of stored points (distinct identities) across all measurements.
    pub fn point_count(&self) -> Result<u64, StoreError> {
        let txn = self.db.begin_read().map_err(self.err("begin read"))?;
        let table = txn.open_table(POINTS).map_err(self.err("open points"))?;
        table.len().map_err(self.err("count points"))
    }

    fn err<E: Display>(&self, what: &'static str) -> impl Fn(E) -> StoreError + '_ {
        move |e| StoreError::Unavailable(format!("embedded store {}: {what}: {e}", self.path.display()))
    }

    fn corrupt(&self, e: String) -> StoreError {
        StoreError::Unavailable(format!("embedded store {}: corrupt record: {e}", self.path.display()))
    }
}

/// The oldest time a point may have `now` under `retention`.
fn retention_cutoff(retention: Duration, now: Timestamp) -> Timestamp {
    now.saturating_sub(i64::try_from(retention.as_nanos()).unwrap_or(i64::MAX))
}

// ---- key encoding ----------------------------------------------------------

fn measurement_prefix(m: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + m.len() + 8);
    put_bytes(&mut out, m.as_bytes());
    out
}

/// The first key of `m` at time `t` (any series sorts after it).
fn time_key(m: &str, t: Timestamp) -> Vec<u8> {
    let mut out = measurement_prefix(m);
    put_time(&mut out, t);
    out
}

/// Appends `t` with its sign bit flipped, big-endian, so that byte order is
/// numeric order.
fn put_time(out: &mut Vec<u8>, t: Timestamp) {
    out.extend_from_slice(&((t as u64) ^ (1 << 63)).to_be_bytes());
}

/// A key greater than every key of `m` and no key of another measurement
/// sorts between. The prefix ends with `m`'s last UTF-8 byte, which is never
/// 0xFF, so incrementing it cannot overflow.
fn measurement_successor(m: &str) -> Vec<u8> {
    let mut out = measurement_prefix(m);
    if let Some(last) = out.last_mut() {
        *last += 1;
    }
    out
}

fn decode_key_suffix(b: &[u8]) -> Result<(Timestamp, BTreeMap<String, String>), String> {
    let mut r = Reader(b);
    let time = r.time()?;
    let mut tags = BTreeMap::new();
    while !r.0.is_empty() {
        let k = r.string()?;
        let v = r.string()?;
        tags.insert(k, v);
    }
    Ok((time, tags))
}

// ---- value encoding --------------------------------------------------------

const T_FLOAT: u8 = 0;
const T_INT: u8 = 1;
const T_UINT: u8 = 2;
const T_BOOL: u8 = 3;
const T_TEXT: u8 = 4;

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    let len = u32::try_from(b.len()).expect("string longer than 4 GiB");
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(b);
}

#[cfg(test)]
fn encode_fields(fields: &BTreeMap<String, FieldValue>) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 * fields.len());
    fields.iter().for_each(|(k, v)| put_field(&mut out, k, FieldRef::from(v)));
    out
}

/// Appends the encoding of field `k` with value `v` to `out`.
fn put_field(out: &mut Vec<u8>, k: &str, v: FieldRef<'_>) {
    put_bytes(out, k.as_bytes());
    match v {
        FieldRef::Float(f) => {
            out.push(T_FLOAT);
            out.extend_from_slice(&f.to_bits().to_le_bytes());
        }
        FieldRef::Integer(i) => {
            out.push(T_INT);
            out.extend_from_slice(&i.to_le_bytes());
        }
        FieldRef::Unsigned(u) => {
            out.push(T_UINT);
            out.extend_from_slice(&u.to_le_bytes());
        }
        FieldRef::Boolean(b) => {
            out.push(T_BOOL);
            out.push(u8::from(b));
        }
        FieldRef::Text(s) => {
            out.push(T_TEXT);
            put_bytes(out, s.as_bytes());
        }
    }
}

fn decode_fields(b: &[u8]) -> Result<BTreeMap<String, FieldValue>, String> {
    let mut r = Reader(b);
    let mut fields = BTreeMap::new();
    while !r.0.is_empty() {
        let (k, v) = scan::field_entry(&mut r)?;
        fields.insert(k.to_owned(), v.into_value());
    }
    Ok(fields)
}

/// A cursor over encoded bytes; borrows until a caller asks for an owned string.
#[derive(Clone, Copy)]
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    /// A time written by [`put_time`].
    fn time(&mut self) -> Result<Timestamp, String> {
        Ok((u64::from_be_bytes(self.array()?) ^ (1 << 63)) as i64)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let (head, rest) = self
            .0
            .split_first_chunk::<N>()
            .ok_or_else(|| format!("truncated: wanted {N} bytes, {} left", self.0.len()))?;
        self.0 = rest;
        Ok(*head)
    }

    /// A length-prefixed byte string.
    fn bytes(&mut self) -> Result<&'a [u8], String> {
        let len = u32::from_be_bytes(self.array()?) as usize;
        if self.0.len() < len {
            return Err(format!("truncated string: {len} bytes, {} left", self.0.len()));
        }
        let (s, rest) = self.0.split_at(len);
        self.0 = rest;
        Ok(s)
    }

    /// A length-prefixed UTF-8 string, borrowed.
    fn str(&mut self) -> Result<&'a str, String> {
        std::str::from_utf8(self.bytes()?).map_err(|e| format!("invalid UTF-8: {e}"))
    }

    fn string(&mut self) -> Result<String, String> {
        self.str().map(str::to_owned)
    }
}

mod scan;
#[cfg(test)]
mod tests;
mod write;
