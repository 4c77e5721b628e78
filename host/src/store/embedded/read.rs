//! The embedded store's read path: the series of a measurement, a cursor
//! over one series' blocks in time order (either way), and the merge of
//! those cursors into the single walk a query asks for.
//!
//! Rows come out ordered by time, and rows at the same time by series (the
//! order of their block keys), ascending or descending as a whole.
//! Tag filters are decided once per series, not once per row, and a walk
//! decodes blocks only as far as the query's limit takes it.

use std::collections::{BTreeMap, BinaryHeap};
use std::ops::Bound;

use redb::{AccessGuard, ReadableDatabase, ReadableTable};

use super::block::{Block, Layout};
use super::keys::{Reader, block_key, decode_series, measurement_prefix, measurement_successor, split_block_key};
use super::{BLOCKS, EmbeddedStore, Query, Selector, StoreError, Timestamp};

/// A series: its tag set, and the prefix of its block keys.
pub(super) struct Series {
    /// The measurement and the encoded tag set (see `keys`).
    pub prefix: Vec<u8>,
    pub tags: Vec<(String, String)>,
}

impl Series {
    /// Whether every filter `(key, value)` is among the tags.
    fn matches(&self, filters: &BTreeMap<String, String>) -> bool {
        filters.iter().all(|(k, v)| self.tags.iter().any(|(tk, tv)| tk == k && tv == v))
    }

    pub fn tag_pairs(&self) -> impl Iterator<Item = (&str, &str)> {
        self.tags.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }
}

/// The table type every path reads blocks through.
pub(super) trait BlockTable: ReadableTable<&'static [u8], &'static [u8]> {}
impl<T: ReadableTable<&'static [u8], &'static [u8]>> BlockTable for T {}

/// A row the merge hands to a query's visitor: its series, its block and
/// its index in the block.
pub(super) type Visit<'v> = dyn FnMut(&Series, Block<'_>, usize) -> Result<bool, StoreError> + 'v;

impl EmbeddedStore {
    /// The first key within `bounds` (the last one when `last`), copied;
    /// `what` names the lookup in an error.
    pub(super) fn edge_key(
        &self,
        table: &impl BlockTable,
        bounds: (Bound<&[u8]>, Bound<&[u8]>),
        last: bool,
        what: &'static str,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let mut range = table.range::<&[u8]>(bounds).map_err(self.err(what))?;
        let entry = if last { range.next_back() } else { range.next() };
        Ok(entry.transpose().map_err(self.err(what))?.map(|(key, _)| key.value().to_vec()))
    }

    /// Every measurement that has points, in key order: one seek each.
    pub(super) fn measurements(&self, table: &impl BlockTable) -> Result<Vec<String>, StoreError> {
        let mut lower = Bound::Unbounded;
        let mut found = Vec::new();
        while let Some(key) =
            self.edge_key(table, (lower.as_ref().map(Vec::as_slice), Bound::Unbounded), false, "list measurements")?
        {
            let name = Reader(&key).str().map_err(|e| self.corrupt(e))?.to_owned();
            lower = Bound::Included(measurement_successor(&name));
            found.push(name);
        }
        Ok(found)
    }

    /// Every series of measurement `m`, in key order: one seek per series.
    pub(super) fn series_of(&self, table: &impl BlockTable, m: &str) -> Result<Vec<Series>, StoreError> {
        let prefix_len = measurement_prefix(m).len();
        let end = measurement_successor(m);
        let mut lower = Bound::Included(measurement_prefix(m));
        let mut found = Vec::new();
        loop {
            let bounds = (lower.as_ref().map(Vec::as_slice), Bound::Excluded(end.as_slice()));
            let Some(key) = self.edge_key(table, bounds, false, "list series")? else { break };
            let key = split_block_key(&key, prefix_len).map_err(|e| self.corrupt(e))?;
            let tags = decode_series(key.series).map_err(|e| self.corrupt(e))?;
            let series = Series {
                prefix: key.prefix.to_vec(),
                tags: tags.into_iter().map(|(k, v)| (k.to_owned(), v.to_owned())).collect(),
            };
            lower = Bound::Excluded(block_key(&series.prefix, Timestamp::MAX));
            found.push(series);
        }
        Ok(found)
    }

    /// Walks the rows of `q`'s measurement, tag filters and time range in
    /// the order `q` asks for, calling `visit` with each; `visit` says
    /// whether it kept the row, and the walk stops once `q`'s selector or
    /// limit is satisfied.
    pub(super) fn scan(&self, q: &Query, visit: &mut Visit<'_>) -> Result<(), StoreError> {
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
        let backward = match q.select {
            Selector::First => false,
            Selector::Last => true,
            Selector::All => q.descending,
        };
        let txn = self.db.begin_read().map_err(self.err("begin read"))?;
        let table = txn.open_table(BLOCKS).map_err(self.err("open blocks"))?;
        // In key order, which is the order of rows at the same time.
        let mut series = self.series_of(&table, &q.measurement)?;
        series.retain(|s| s.matches(&q.tags));
        let span = Span { start: q.start.unwrap_or(Timestamp::MIN), end: q.end, backward };
        let mut cursors = Vec::with_capacity(series.len());
        for (at, s) in series.iter().enumerate() {
            cursors.push(self.cursor(&table, s, at, span)?);
        }
        Merge { cursors, heap: BinaryHeap::new(), backward }.run(self, &series, cap, visit)
    }

    /// A cursor on the first row of series `s` within `span`.
    fn cursor<'t>(
        &self,
        table: &'t impl BlockTable,
        s: &Series,
        at: usize,
        span: Span,
    ) -> Result<Cursor<'t>, StoreError> {
        let (first_key, start_key) = (block_key(&s.prefix, Timestamp::MIN), block_key(&s.prefix, span.start));
        // The block holding `start` is the last one starting at or before it.
        let holding_start = (Bound::Included(first_key.as_slice()), Bound::Included(start_key.as_slice()));
        let lower = self.edge_key(table, holding_start, true, "find first block")?.unwrap_or(first_key);
        let upper = match span.end {
            Some(end) => Bound::Excluded(block_key(&s.prefix, end)),
            None => Bound::Included(block_key(&s.prefix, Timestamp::MAX)),
        };
        let bounds = (Bound::Included(lower.as_slice()), upper.as_ref().map(Vec::as_slice));
        let blocks = table.range::<&[u8]>(bounds).map_err(self.err("range scan"))?;
        let mut cursor = Cursor { series: at, blocks, span, block: None, rows: 0..0 };
        cursor.load_next(self)?;
        Ok(cursor)
    }
}

/// The time range of a query and its direction.
#[derive(Clone, Copy)]
struct Span {
    start: Timestamp,
    /// Exclusive.
    end: Option<Timestamp>,
    backward: bool,
}

type BlockRange<'t> = redb::Range<'t, &'static [u8], &'static [u8]>;

/// One series' rows within a span, a block at a time.
struct Cursor<'t> {
    /// Its series' index (the tie-break between rows at the same time).
    series: usize,
    blocks: BlockRange<'t>,
    span: Span,
    block: Option<(AccessGuard<'t, &'static [u8]>, Layout)>,
    /// The current block's rows not yet visited, within the span.
    rows: std::ops::Range<usize>,
}

impl<'t> Cursor<'t> {
    /// The current row's time, or `None` when the series is done.
    fn head(&self) -> Option<Timestamp> {
        let row = self.row()?;
        self.current().map(|b| b.time(row))
    }

    fn row(&self) -> Option<usize> {
        match (self.rows.is_empty(), self.span.backward) {
            (true, _) => None,
            (false, false) => Some(self.rows.start),
            (false, true) => Some(self.rows.end - 1),
        }
    }

    fn current(&self) -> Option<Block<'_>> {
        self.block.as_ref().map(|(guard, layout)| Block::new(guard.value(), layout))
    }

    /// Steps past the current row, loading the next block when this one
    /// is done.
    fn advance(&mut self, store: &EmbeddedStore) -> Result<(), StoreError> {
        if self.span.backward {
            self.rows.end -= 1;
        } else {
            self.rows.start += 1;
        }
        if self.rows.is_empty() { self.load_next(store) } else { Ok(()) }
    }

    /// Loads blocks until one has rows within the span, or none is left.
    fn load_next(&mut self, store: &EmbeddedStore) -> Result<(), StoreError> {
        loop {
            self.block = None;
            let next = if self.span.backward { self.blocks.next_back() } else { self.blocks.next() };
            let Some(entry) = next else { return Ok(()) };
            let (_, value) = entry.map_err(store.err("read block"))?;
            let layout = Layout::parse(value.value()).map_err(|e| store.corrupt(e))?;
            let block = Block::new(value.value(), &layout);
            let lo = block.row_at_or_after(self.span.start);
            let hi = self.span.end.map_or(block.rows(), |end| block.row_at_or_after(end));
            // Going backward, a block wholly before the span ends the walk.
            let before_span = block.last_time() < self.span.start;
            self.rows = lo..hi.max(lo);
            self.block = Some((value, layout));
            if !self.rows.is_empty() || (self.span.backward && before_span) {
                return Ok(());
            }
        }
    }
}

/// The k-way merge of the cursors: a max-heap on an order key, so that the
/// next row to visit is always on top.
struct Merge<'t> {
    cursors: Vec<Cursor<'t>>,
    heap: BinaryHeap<(u64, usize)>,
    backward: bool,
}

impl Merge<'_> {
    /// The heap key of cursor `at` at time `t`: larger comes first.
    fn key(&self, t: Timestamp, at: usize) -> (u64, usize) {
        let ordered = (t as u64) ^ (1 << 63);
        if self.backward { (ordered, at) } else { (!ordered, !at) }
    }

    fn cursor_of(&self, key: (u64, usize)) -> usize {
        if self.backward { key.1 } else { !key.1 }
    }

    /// Visits rows in order until `cap` were kept or all are visited. A
    /// cursor's rows are visited in runs for as long as they come before
    /// every other cursor's next row.
    fn run(
        mut self,
        store: &EmbeddedStore,
        series: &[Series],
        cap: usize,
        visit: &mut Visit<'_>,
    ) -> Result<(), StoreError> {
        for at in 0..self.cursors.len() {
            if let Some(t) = self.cursors[at].head() {
                let key = self.key(t, at);
                self.heap.push(key);
            }
        }
        let mut kept = 0;
        while let Some(top) = self.heap.pop() {
            let at = self.cursor_of(top);
            let next_other = self.heap.peek().copied();
            while let Some(t) = self.cursors[at].head() {
                let key = self.key(t, at);
                if next_other.is_some_and(|other| key < other) {
                    self.heap.push(key);
                    break;
                }
                let cursor = &self.cursors[at];
                let (block, row) =
                    (cursor.current().expect("a cursor with a head has a block"), cursor.row().expect("row"));
                if visit(&series[cursor.series], block, row)? {
                    kept += 1;
                    if kept >= cap {
                        return Ok(());
                    }
                }
                self.cursors[at].advance(store)?;
            }
        }
        Ok(())
    }
}

impl EmbeddedStore {
    /// Walks each series of `q`'s measurement, tag filters and time range
    /// on its own (in key order), visiting up to `per_series` kept rows of
    /// each in the direction `q.descending` asks: a series' last row before
    /// `q.end` costs a seek, however far back it lies.
    pub(super) fn scan_each_series(
        &self,
        q: &Query,
        per_series: usize,
        visit: &mut Visit<'_>,
    ) -> Result<(), StoreError> {
        if per_series == 0 || matches!((q.start, q.end), (Some(s), Some(e)) if s >= e) {
            return Ok(());
        }
        let txn = self.db.begin_read().map_err(self.err("begin read"))?;
        let table = txn.open_table(BLOCKS).map_err(self.err("open blocks"))?;
        let mut series = self.series_of(&table, &q.measurement)?;
        series.retain(|s| s.matches(&q.tags));
        let span = Span { start: q.start.unwrap_or(Timestamp::MIN), end: q.end, backward: q.descending };
        for (at, s) in series.iter().enumerate() {
            let mut cursor = self.cursor(&table, s, at, span)?;
            let mut kept = 0;
            while kept < per_series && cursor.head().is_some() {
                let (Some(block), Some(row)) = (cursor.current(), cursor.row()) else { break };
                if visit(s, block, row)? {
                    kept += 1;
                }
                cursor.advance(self)?;
            }
        }
        Ok(())
    }
}
