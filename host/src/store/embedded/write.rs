//! The embedded store's write path: validation and one transaction per batch,
//! for [`Point`]s and for [`SortedPoint`]s alike. A batch is sorted by
//! series and time; each series' points are merged into the blocks their
//! times fall in, and only those blocks are rewritten.
//!
//! Both kinds are read through [`StoredPoint`], so a guest's points (which the
//! `influx` capability turns into [`SortedPoint`]s by moving their strings)
//! are stored without first building two maps per point, and both kinds are
//! checked, keyed, encoded and merged by the same code.

use std::ops::Bound;

use redb::{ReadableTable, WriteTransaction};

use super::block::{Block, BlockWriter, Layout};
use super::keys::{block_key, key_time, put_series_prefix};
use super::{BLOCKS, EmbeddedStore, retention_cutoff};
use crate::store::line_protocol::FieldRef;
use crate::store::table::TableRow;
use crate::store::{Point, SortedPoint, StoreError, Timestamp, now_ns};

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
    /// Validates the whole batch, then writes it in one transaction.
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
        self.write_in(&txn, points)?;
        txn.commit().map_err(self.err("commit write"))?;
        self.count_beyond_retention(points);
        Ok(count)
    }

    /// Writes validated `points` in `txn`: grouped by series, and each
    /// group merged into the blocks its times fall in.
    pub(super) fn write_in<P: StoredPoint>(&self, txn: &WriteTransaction, points: &[P]) -> Result<(), StoreError> {
        let mut table = txn.open_table(BLOCKS).map_err(self.err("open blocks"))?;
        let batch = SeriesBatch::sort(points);
        for group in batch.groups() {
            let prefix = batch.prefix(&group[0]);
            let group: Vec<&P> = group.iter().map(|e| &points[e.index as usize]).collect();
            SeriesWriter { store: self, table: &mut table, prefix }.write(&group)?;
        }
        Ok(())
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
                retention = %wattedge_units::format_duration(retention),
                "points older than the embedded store's retention were written and will be purged within the hour; \
                 raise influx.retention, or set it to \"forever\", to keep them"
            );
        }
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
    crate::store::check_point_width(p.tag_pairs().count(), p.field_pairs().count())?;
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

/// A batch's points sorted by series, then time, then batch order (so that
/// of two points with one identity, the later merges over the earlier).
struct SeriesBatch {
    /// Every distinct series prefix (see `keys`), back to back.
    prefixes: Vec<u8>,
    /// Each point's series prefix (its place in `prefixes`), time and index
    /// in the batch, sorted.
    sorted: Vec<BatchEntry>,
}

/// One point of a batch, as [`SeriesBatch`] sorts it: the type is the same
/// for every kind of point, so the sort is compiled once, not per kind.
#[derive(Clone, Copy)]
struct BatchEntry {
    prefix: (u32, u32),
    time: Timestamp,
    index: u32,
}

impl SeriesBatch {
    fn sort<P: StoredPoint>(points: &[P]) -> Self {
        let (mut prefixes, mut key) = (Vec::new(), Vec::new());
        let mut last: Option<(u32, u32)> = None;
        let mut sorted = Vec::with_capacity(points.len());
        for (index, p) in points.iter().enumerate() {
            put_series_prefix(&mut key, p.measurement(), p.tag_pairs());
            let prefix = match last.filter(|&(start, end)| prefixes[start as usize..end as usize] == key[..]) {
                Some(same) => same,
                None => {
                    prefixes.extend_from_slice(&key);
                    ((prefixes.len() - key.len()) as u32, prefixes.len() as u32)
                }
            };
            last = Some(prefix);
            sorted.push(BatchEntry { prefix, time: p.time(), index: index as u32 });
        }
        let mut batch = SeriesBatch { prefixes, sorted };
        batch.sort_entries();
        batch
    }

    fn sort_entries(&mut self) {
        let prefixes = &self.prefixes;
        let key = |e: &BatchEntry| &prefixes[e.prefix.0 as usize..e.prefix.1 as usize];
        self.sorted.sort_unstable_by(|a, b| key(a).cmp(key(b)).then(a.time.cmp(&b.time)).then(a.index.cmp(&b.index)));
    }

    fn prefix(&self, entry: &BatchEntry) -> &[u8] {
        &self.prefixes[entry.prefix.0 as usize..entry.prefix.1 as usize]
    }

    /// Runs of points of one series.
    fn groups(&self) -> impl Iterator<Item = &[BatchEntry]> {
        self.sorted.chunk_by(|a, b| self.prefix(a) == self.prefix(b))
    }
}

/// Merges one series' new points into its blocks.
pub(super) struct SeriesWriter<'s, 't, 'txn> {
    pub store: &'s EmbeddedStore,
    pub table: &'t mut redb::Table<'txn, &'static [u8], &'static [u8]>,
    pub prefix: &'s [u8],
}

/// A stored block a run of new points merges into: its key and bytes, and
/// the first time of the block after it (where the run must end).
struct Owner {
    block: Option<(Vec<u8>, Vec<u8>)>,
    next_first: Option<Timestamp>,
}

impl SeriesWriter<'_, '_, '_> {
    /// Writes `points` (sorted by time, then batch order): each run of
    /// them that falls into one stored block is merged with it.
    fn write<P: StoredPoint>(&mut self, points: &[&P]) -> Result<(), StoreError> {
        let mut at = 0;
        while at < points.len() {
            let owner = self.owner(points[at].time())?;
            let run = points[at..].partition_point(|p| owner.next_first.is_none_or(|next| p.time() < next));
            self.rewrite(owner.block, &points[at..at + run])?;
            at += run;
        }
        Ok(())
    }

    /// The block a point at `t` belongs in: the last one starting at or
    /// before `t`, else the series' first block (which the point will
    /// then start), else none (a new series).
    fn owner(&mut self, t: Timestamp) -> Result<Owner, StoreError> {
        let (first, at, last) =
            (block_key(self.prefix, Timestamp::MIN), block_key(self.prefix, t), block_key(self.prefix, Timestamp::MAX));
        let err = self.store.err("find block");
        let before = self.table.range::<&[u8]>(first.as_slice()..=at.as_slice()).map_err(&err)?.next_back();
        let found = match before {
            Some(entry) => Some(entry),
            None => self.table.range::<&[u8]>(at.as_slice()..=last.as_slice()).map_err(&err)?.next(),
        };
        let Some((key, value)) = found.transpose().map_err(&err)? else {
            return Ok(Owner { block: None, next_first: None });
        };
        let block = (key.value().to_vec(), value.value().to_vec());
        let after = (Bound::Excluded(block.0.as_slice()), Bound::Included(last.as_slice()));
        let next_first = match self.store.edge_key(&*self.table, after, false, "find block")? {
            Some(key) => Some(key_time(&key).map_err(|e| self.store.corrupt(e))?),
            None => None,
        };
        Ok(Owner { block: Some(block), next_first })
    }

    /// Replaces the block `owner` (if any) with blocks holding its rows
    /// merged with `points`.
    fn rewrite<P: StoredPoint>(&mut self, owner: Option<(Vec<u8>, Vec<u8>)>, points: &[&P]) -> Result<(), StoreError> {
        let (key, bytes) = owner.unwrap_or_default();
        let layout = match bytes.is_empty() {
            true => None,
            false => Some(Layout::parse(&bytes).map_err(|e| self.store.corrupt(e))?),
        };
        let stored = layout.as_ref().map(|layout| Block::new(&bytes, layout));
        if !key.is_empty() {
            self.table.remove(key.as_slice()).map_err(self.store.err("replace block"))?;
        }
        let (mut writer, mut buf) = (BlockWriter::default(), Vec::new());
        for_each_merged_row(stored, points, |time, fields| {
            if writer.is_full() {
                self.flush(&mut writer, &mut buf)?;
            }
            writer.push(time, fields);
            Ok(())
        })?;
        self.flush(&mut writer, &mut buf)
    }

    /// Stores the writer's rows as a block (if it has any).
    pub fn flush(&mut self, writer: &mut BlockWriter, buf: &mut Vec<u8>) -> Result<(), StoreError> {
        let Some(first) = writer.first_time() else { return Ok(()) };
        writer.finish_into(buf).map_err(StoreError::Invalid)?;
        let key = block_key(self.prefix, first);
        self.table.insert(key.as_slice(), buf.as_slice()).map_err(self.store.err("insert block"))?;
        Ok(())
    }
}

/// Fields merged by name, ascending; a later value replaces an earlier one.
#[derive(Default)]
struct MergedFields<'f>(smallvec::SmallVec<[(&'f str, FieldRef<'f>); 8]>);

impl<'f> MergedFields<'f> {
    fn new() -> Self {
        Self::default()
    }

    fn extend(&mut self, fields: impl Iterator<Item = (&'f str, FieldRef<'f>)>) {
        for (name, value) in fields {
            match self.0.binary_search_by(|(n, _)| n.cmp(&name)) {
                Ok(at) => self.0[at].1 = value,
                Err(at) => self.0.insert(at, (name, value)),
            }
        }
    }

    /// Refuses a merged row past [`crate::store::MAX_POINT_FIELDS`]: points
    /// of one series at one time merge into one, so many narrow points (or
    /// one written over a stored row) could otherwise build a row, and a
    /// block, wider than any point may be.
    fn check(&self, time: Timestamp) -> Result<(), StoreError> {
        let max = crate::store::MAX_POINT_FIELDS;
        if self.0.len() > max {
            return Err(StoreError::Invalid(format!(
                "the point at time {time} would have {} fields once merged with the points of its series at that \
                 time, more than the {max} a point may have",
                self.0.len()
            )));
        }
        Ok(())
    }

    fn into_iter(self) -> impl Iterator<Item = (&'f str, FieldRef<'f>)> {
        self.0.into_iter()
    }
}

/// The fields of one merged row, as the merge hands them to the writer.
type RowFields<'r, 'f> = &'r mut dyn Iterator<Item = (&'f str, FieldRef<'f>)>;

/// Calls `emit` with each row of `stored` and `points` merged, in time
/// order. Rows at the same time merge into one: fields of later points
/// replace same-named fields of earlier ones and of the stored row. Only
/// such a merge builds a map; every other row is passed through.
fn for_each_merged_row<'f, P: StoredPoint>(
    stored: Option<Block<'f>>,
    points: &[&'f P],
    mut emit: impl FnMut(Timestamp, RowFields<'_, 'f>) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    let rows = stored.map_or(0, |b| b.rows());
    let (mut row, mut at) = (0, 0);
    while row < rows || at < points.len() {
        let stored_time = stored.filter(|_| row < rows).map(|b| b.time(row));
        let new_time = points.get(at).map(|p| p.time());
        let time = match (stored_time, new_time) {
            (Some(s), Some(n)) => s.min(n),
            (s, n) => s.or(n).expect("a row is left"),
        };
        let from_store = stored.filter(|_| stored_time == Some(time));
        let new = points[at..].iter().take_while(|p| p.time() == time).count();
        match (from_store, new) {
            (Some(block), 0) => emit(time, &mut block.fields(row))?,
            (None, 1) => emit(time, &mut points[at].field_pairs())?,
            _ => {
                let mut fields = MergedFields::new();
                from_store.into_iter().for_each(|block| fields.extend(block.fields(row)));
                for p in &points[at..at + new] {
                    fields.extend(p.field_pairs());
                    fields.check(time)?;
                }
                emit(time, &mut fields.into_iter())?;
            }
        }
        row += usize::from(from_store.is_some());
        at += new;
    }
    Ok(())
}
