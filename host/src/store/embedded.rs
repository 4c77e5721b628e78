//! The embedded store: the default store, one `redb` file on local disk,
//! so a Raspberry Pi keeps its energy data with no database server.
//!
//! It owns the on-disk layout, point validation, InfluxDB-style merge
//! semantics, structured queries and retention purging. Keys are in `keys`,
//! the block encoding in `block`, the write path in `write`, the read path
//! (series cursors and their merge) in `read`, purging in `retention`, and
//! the move from the older per-point layout in `legacy`.
//! Every write is one ACID `redb` transaction committed with the default
//! (immediate) durability, so a power cut leaves either the whole batch or none
//! of it.
//!
//! # Layout
//! Table `blocks`: each value is a block of up to 512 points of one series
//! (one measurement and tag set), stored as columns (see `block`); its key
//! is the measurement, the series and the block's first time (see `keys`).
//! The blocks of a series are ordered by time and do not overlap, so a
//! time-range query reads a range of blocks per series, and a point's
//! block is found with one lookup. The measurements and the series of a
//! measurement are found by seeking from one to the next, so no other
//! table needs to be kept in step (one table type also keeps redb's
//! generic code, and the armv7 binary, small).
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

use std::fmt::Display;
use std::path::{Path, PathBuf};
use std::time::Duration;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::table::{Table, TableBuilder, TableView};
use super::{FloatSeries, Point, Query, Row, Selector, SortedPoint, StoreError, Timestamp};
use crate::store::line_protocol::FieldRef;
use block::Block;
use read::Series;

const BLOCKS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("blocks");

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
    /// at `path`. Takes an exclusive lock on the file for the life of the
    /// store. A file in the per-point layout of earlier versions is moved
    /// into blocks first (see `legacy`).
    pub fn open(path: &Path, retention: Option<Duration>) -> Result<Self, StoreError> {
        let store = Self::open_file(path, retention)?;
        let moved = store.migrate_legacy_points()?;
        if moved > 0 {
            tracing::info!(points = moved, path = %path.display(), "embedded store: moved to the block layout");
        }
        Ok(store)
    }

    #[cfg(test)]
    fn open_without_migration(path: &Path) -> Result<Self, StoreError> {
        Self::open_file(path, None)
    }

    fn open_file(path: &Path, retention: Option<Duration>) -> Result<Self, StoreError> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| {
                StoreError::Unavailable(format!("creating directory {} for embedded store: {e}", parent.display()))
            })?;
        }
        // The table is created with the file, so read transactions never see it missing.
        let db = crate::redb_file::open(path, CACHE_BYTES, BLOCKS).map_err(|e| {
            StoreError::Unavailable(format!(
                "opening embedded store {}: {e} (the file is locked exclusively while open)",
                path.display()
            ))
        })?;
        Ok(Self { db, path: path.to_path_buf(), retention, beyond_retention: Default::default() })
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

    /// Writes each row of a checked table as a point of its measurement, as
    /// [`write`](Self::write) would, without building the points.
    pub fn write_table(&self, rows: &TableView<'_>) -> Result<u32, StoreError> {
        let rows: Vec<_> = rows.rows().collect();
        self.write_batch(&rows)
    }

    /// Runs a structured query over one measurement.
    pub fn query(&self, q: &Query) -> Result<Vec<Row>, StoreError> {
        self.query_within(q, usize::MAX)
    }

    /// [`query`](Self::query) whose answer stops with an error past
    /// `max_bytes` (as [`Row::bytes`] counts them): guests' queries stop at
    /// [`super::MAX_QUERY_BYTES`].
    pub fn query_within(&self, q: &Query, max_bytes: usize) -> Result<Vec<Row>, StoreError> {
        let (mut rows, mut bytes) = (Vec::new(), 0usize);
        self.scan(q, &mut |series, block, row| {
            let fields: std::collections::BTreeMap<_, _> =
                wanted_fields(q, block, row).map(|(k, v)| (k.to_owned(), v.into_value())).collect();
            if fields.is_empty() {
                return Ok(false);
            }
            let tags = series.tags.iter().cloned().collect();
            let found = Row { time: block.time(row), tags, fields };
            bytes = bytes.saturating_add(found.bytes());
            if bytes > max_bytes {
                return Err(super::answer_too_large(max_bytes));
            }
            rows.push(found);
            Ok(true)
        })?;
        Ok(rows)
    }

    /// The numeric values of `field` in the rows [`query`](Self::query)
    /// returns for `q` with `fields = [field]`: a row without the field is
    /// skipped; one whose field is a boolean or text counts toward the
    /// limit but gives no value.
    pub fn query_floats(&self, q: &Query, field: &str) -> Result<FloatSeries, StoreError> {
        let mut series = FloatSeries::default();
        self.scan(q, &mut |_: &Series, block: Block<'_>, row| {
            let Some(value) =
                (0..block.columns()).filter(|&c| block.column_is(c, field)).find_map(|c| block.value(c, row))
            else {
                return Ok(false);
            };
            let number = match value {
                FieldRef::Float(f) => f,
                FieldRef::Integer(i) => i as f64,
                FieldRef::Unsigned(u) => u as f64,
                FieldRef::Boolean(_) | FieldRef::Text(_) => return Ok(true),
            };
            series.times.push(block.time(row));
            series.values.push(number);
            Ok(true)
        })?;
        Ok(series)
    }

    /// The rows [`query`](Self::query) returns for `q`, as a [`Table`]: a
    /// string is copied only the first time it occurs.
    pub fn query_table(&self, q: &Query) -> Result<Table, StoreError> {
        self.query_table_within(q, usize::MAX)
    }

    /// [`query_table`](Self::query_table) whose answer stops with an error
    /// past `max_bytes` (as [`TableBuilder::bytes`] counts them) or past the
    /// columns a point may have.
    pub fn query_table_within(&self, q: &Query, max_bytes: usize) -> Result<Table, StoreError> {
        let mut table = TableBuilder::default();
        self.scan(q, &mut |series, block, row| {
            if wanted_fields(q, block, row).next().is_none() {
                return Ok(false);
            }
            table.push(block.time(row), series.tag_pairs(), wanted_fields(q, block, row));
            table.check_bounds(max_bytes)?;
            Ok(true)
        })?;
        Ok(table.finish())
    }

    /// How many points were written already older than the retention, so
    /// that the next purge (within the hour) removes them: a backfill
    /// reaching further back than `influx.retention`. They are accepted, as
    /// InfluxDB's partial write keeps the rest of a batch; this count and a
    /// warning make their loss visible.
    pub fn points_beyond_retention(&self) -> u64 {
        self.beyond_retention.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The number of stored points (distinct identities) across all
    /// measurements. Reads every block's header.
    pub fn point_count(&self) -> Result<u64, StoreError> {
        let txn = self.db.begin_read().map_err(self.err("begin read"))?;
        let table = txn.open_table(BLOCKS).map_err(self.err("open blocks"))?;
        let mut count = 0;
        for entry in table.iter().map_err(self.err("count points"))? {
            let (_, value) = entry.map_err(self.err("count points"))?;
            count += block::row_count(value.value()).map_err(|e| self.corrupt(e))? as u64;
        }
        Ok(count)
    }

    fn err<E: Display>(&self, what: &'static str) -> impl Fn(E) -> StoreError + '_ {
        move |e| StoreError::Unavailable(format!("embedded store {}: {what}: {e}", self.path.display()))
    }

    fn corrupt(&self, e: String) -> StoreError {
        StoreError::Unavailable(format!(
            "embedded store {}: corrupt record: {e} (restore the file from a backup, or move it away to start empty)",
            self.path.display()
        ))
    }
}

/// The fields of `row` that `q` asks for (all when it names none).
fn wanted_fields<'b>(q: &'b Query, block: Block<'b>, row: usize) -> impl Iterator<Item = (&'b str, FieldRef<'b>)> {
    block.fields(row).filter(|(name, _)| q.fields.is_empty() || q.fields.iter().any(|f| f == name))
}

/// The oldest time a point may have `now` under `retention`.
fn retention_cutoff(retention: Duration, now: Timestamp) -> Timestamp {
    now.saturating_sub(i64::try_from(retention.as_nanos()).unwrap_or(i64::MAX))
}

mod block;
mod keys;
mod legacy;
mod multi;
mod read;
mod retention;
#[cfg(test)]
mod tests;
mod write;
