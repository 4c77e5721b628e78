//! One block of the embedded store: up to [`BLOCK_ROWS`] points of one
//! series, in time order, stored as columns in one `redb` value.
//!
//! Blocks are what make the store cheap per point: a scan reads a few
//! array slots per point instead of taking a B-tree step, and a write
//! stores one value per few hundred points of a series instead of a key per
//! point (measured against the key-per-point layout it replaced: README,
//! "Embedded store").
//!
//! # Encoding (integers little-endian)
//! ```text
//! u32 rows (at least 1)
//! rows × i64 times, strictly ascending
//! u16 columns, then each column, ordered by (name, kind):
//!   u32 name length, name (UTF-8)
//!   u8 kind (float, integer, unsigned, boolean, text)
//!   ⌈rows / 8⌉ bytes: bit r set when row r has a value in this column
//!   one slot per row (zero where the row has no value):
//!     float, integer, unsigned: 8 bytes; boolean: 1 byte;
//!     text: (rows + 1) × u32 offsets into the bytes that follow, then the bytes
//! ```
//! A field may have a column per kind (written as an integer, later as a
//! float); a row has a value in at most one of them. Slots for absent
//! values keep every lookup a multiplication.

use std::ops::Range;

use smallvec::SmallVec;

use super::Timestamp;
use super::keys::Reader;
use crate::store::MAX_POINT_FIELDS;
use crate::store::line_protocol::FieldRef;

/// The most points a block holds. A write into a series rewrites the
/// blocks it touches, so this bounds the cost of appending one point; a
/// scan pays a `redb` lookup per block, so larger is cheaper to read.
pub(super) const BLOCK_ROWS: usize = 512;

/// A block is closed at this size even before [`BLOCK_ROWS`] (long texts).
pub(super) const BLOCK_BYTES: usize = 64 << 10;

/// The most columns a block's header can count (16 bits).
pub(super) const MAX_COLUMNS: usize = u16::MAX as usize;

const FLOAT: u8 = 0;
const INTEGER: u8 = 1;
const UNSIGNED: u8 = 2;
const BOOLEAN: u8 = 3;
const TEXT: u8 = 4;

fn kind_of(value: FieldRef<'_>) -> u8 {
    match value {
        FieldRef::Float(_) => FLOAT,
        FieldRef::Integer(_) => INTEGER,
        FieldRef::Unsigned(_) => UNSIGNED,
        FieldRef::Boolean(_) => BOOLEAN,
        FieldRef::Text(_) => TEXT,
    }
}

/// Slot width of the fixed-size kinds (text has none).
fn slot_width(kind: u8) -> Option<usize> {
    match kind {
        FLOAT | INTEGER | UNSIGNED => Some(8),
        BOOLEAN => Some(1),
        _ => None,
    }
}

/// The number of rows of an encoded block, read from its header alone.
pub(super) fn row_count(bytes: &[u8]) -> Result<usize, String> {
    Ok(u32::from_le_bytes(Reader(bytes).array()?) as usize)
}

/// Where one column's parts are in an encoded block.
#[derive(Debug)]
struct ColumnLayout {
    name: Range<usize>,
    kind: u8,
    present: usize,
    slots: usize,
    /// Text only: where the text bytes start.
    text: usize,
}

/// Where the parts of one encoded block are, checked once when it is read
/// so that [`Block`]'s lookups cannot fail.
#[derive(Debug)]
pub(super) struct Layout {
    rows: usize,
    columns: SmallVec<[ColumnLayout; 6]>,
}

const TIMES_AT: usize = 4;

impl Layout {
    /// Checks the encoding of `bytes` (lengths, ascending times, text
    /// offsets, UTF-8 names) and records where its parts are.
    pub fn parse(bytes: &[u8]) -> Result<Layout, String> {
        let mut r = Reader(bytes);
        let rows = u32::from_le_bytes(r.array()?) as usize;
        if rows == 0 {
            return Err("block without rows".into());
        }
        let times = r.take(rows.checked_mul(8).ok_or("row count overflows")?)?;
        let mut last = None;
        for t in times.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes"))) {
            if last.is_some_and(|l| l >= t) {
                return Err(format!("block times not ascending at {t}"));
            }
            last = Some(t);
        }
        let count = u16::from_le_bytes(r.array()?);
        let mut columns = SmallVec::new();
        for _ in 0..count {
            columns.push(parse_column(bytes, &mut r, rows)?);
        }
        if !r.0.is_empty() {
            return Err(format!("{} bytes after the last column", r.0.len()));
        }
        Ok(Layout { rows, columns })
    }
}

/// Reads one column's layout at `r` (which walks `bytes`).
fn parse_column(bytes: &[u8], r: &mut Reader<'_>, rows: usize) -> Result<ColumnLayout, String> {
    let at = |r: &Reader<'_>| bytes.len() - r.0.len();
    let name_len = u32::from_le_bytes(r.array()?) as usize;
    let name_at = at(r);
    let name = r.take(name_len)?;
    std::str::from_utf8(name).map_err(|e| format!("column name is not UTF-8: {e}"))?;
    let [kind] = r.array()?;
    let present = at(r);
    r.take(rows.div_ceil(8))?;
    let slots = at(r);
    let mut text = 0;
    match slot_width(kind) {
        Some(width) => drop(r.take(rows * width)?),
        None if kind == TEXT => {
            let offsets = r.take((rows + 1) * 4)?;
            let offsets: Vec<usize> =
                offsets.chunks_exact(4).map(|c| u32::from_le_bytes(c.try_into().expect("4 bytes")) as usize).collect();
            if offsets[0] != 0 || offsets.windows(2).any(|w| w[0] > w[1]) {
                return Err("text offsets not ascending".into());
            }
            text = at(r);
            let bytes = r.take(offsets[rows])?;
            for w in offsets.windows(2) {
                std::str::from_utf8(&bytes[w[0]..w[1]]).map_err(|e| format!("text value is not UTF-8: {e}"))?;
            }
        }
        None => return Err(format!("unknown field kind {kind}")),
    }
    Ok(ColumnLayout { name: name_at..name_at + name_len, kind, present, slots, text })
}

/// An encoded block with its checked [`Layout`]: lookups by row and column.
#[derive(Clone, Copy)]
pub(super) struct Block<'a> {
    bytes: &'a [u8],
    layout: &'a Layout,
}

impl<'a> Block<'a> {
    /// `layout` must come from [`Layout::parse`] of these `bytes`.
    pub fn new(bytes: &'a [u8], layout: &'a Layout) -> Block<'a> {
        Block { bytes, layout }
    }

    pub fn rows(&self) -> usize {
        self.layout.rows
    }

    pub fn time(&self, row: usize) -> Timestamp {
        let at = TIMES_AT + 8 * row;
        i64::from_le_bytes(self.bytes[at..at + 8].try_into().expect("8 bytes"))
    }

    pub fn last_time(&self) -> Timestamp {
        self.time(self.rows() - 1)
    }

    /// The first row at or after `t` (`rows()` when none).
    pub fn row_at_or_after(&self, t: Timestamp) -> usize {
        partition_point(self.rows(), |row| self.time(row) < t)
    }

    pub fn columns(&self) -> usize {
        self.layout.columns.len()
    }

    pub fn column_name(&self, column: usize) -> &'a str {
        let range = self.layout.columns[column].name.clone();
        std::str::from_utf8(&self.bytes[range]).unwrap_or_default()
    }

    /// Whether `column` is named `name` (compared as bytes: no UTF-8
    /// check per row on a scan's hot path).
    pub fn column_is(&self, column: usize, name: &str) -> bool {
        self.bytes[self.layout.columns[column].name.clone()] == *name.as_bytes()
    }

    /// The value of `column` in `row`, if the row has one.
    pub fn value(&self, column: usize, row: usize) -> Option<FieldRef<'a>> {
        let c = &self.layout.columns[column];
        if self.bytes[c.present + row / 8] & (1 << (row % 8)) == 0 {
            return None;
        }
        let slot8 = || u64::from_le_bytes(self.bytes[c.slots + 8 * row..][..8].try_into().expect("8 bytes"));
        Some(match c.kind {
            FLOAT => FieldRef::Float(f64::from_bits(slot8())),
            INTEGER => FieldRef::Integer(slot8() as i64),
            UNSIGNED => FieldRef::Unsigned(slot8()),
            BOOLEAN => FieldRef::Boolean(self.bytes[c.slots + row] != 0),
            _ => {
                let offset = |i: usize| {
                    u32::from_le_bytes(self.bytes[c.slots + 4 * i..][..4].try_into().expect("4 bytes")) as usize
                };
                let text = &self.bytes[c.text + offset(row)..c.text + offset(row + 1)];
                FieldRef::Text(std::str::from_utf8(text).unwrap_or_default())
            }
        })
    }

    /// The fields of `row`, ascending by name.
    pub fn fields(self, row: usize) -> impl Iterator<Item = (&'a str, FieldRef<'a>)> + 'a {
        (0..self.columns()).filter_map(move |c| Some((self.column_name(c), self.value(c, row)?)))
    }
}

/// The first index in `0..n` for which `is_before` is false (it must be
/// true for a prefix and false after).
fn partition_point(n: usize, is_before: impl Fn(usize) -> bool) -> usize {
    let (mut lo, mut hi) = (0, n);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if is_before(mid) { lo = mid + 1 } else { hi = mid }
    }
    lo
}

/// One column being written.
struct ColumnBuf {
    name: String,
    kind: u8,
    present: Vec<u8>,
    /// Fixed-size slots, or text offsets (as `u32`s).
    slots: Vec<u8>,
    text: Vec<u8>,
    /// Rows with a slot so far.
    filled: usize,
}

impl ColumnBuf {
    /// Gives rows up to `rows` an empty slot.
    fn pad(&mut self, rows: usize) {
        while self.filled < rows {
            match slot_width(self.kind) {
                Some(width) => self.slots.resize(self.slots.len() + width, 0),
                None => self.slots.extend_from_slice(&(self.text.len() as u32).to_le_bytes()),
            }
            self.filled += 1;
        }
        self.present.resize(rows.div_ceil(8), 0);
    }

    /// Puts `value` into the slot of `row`, after padding up to it.
    fn set(&mut self, row: usize, value: FieldRef<'_>) {
        self.pad(row);
        self.present.resize((row + 1).div_ceil(8), 0);
        self.present[row / 8] |= 1 << (row % 8);
        match value {
            FieldRef::Float(f) => self.slots.extend_from_slice(&f.to_bits().to_le_bytes()),
            FieldRef::Integer(i) => self.slots.extend_from_slice(&i.to_le_bytes()),
            FieldRef::Unsigned(u) => self.slots.extend_from_slice(&u.to_le_bytes()),
            FieldRef::Boolean(b) => self.slots.push(u8::from(b)),
            FieldRef::Text(s) => {
                self.slots.extend_from_slice(&(self.text.len() as u32).to_le_bytes());
                self.text.extend_from_slice(s.as_bytes());
            }
        }
        self.filled += 1;
    }
}

/// Builds blocks row by row; a column is added, in (name, kind) order, the
/// first time its field (name and kind) appears.
#[derive(Default)]
pub(super) struct BlockWriter {
    times: Vec<Timestamp>,
    columns: Vec<ColumnBuf>,
    bytes: usize,
}

impl BlockWriter {
    /// Appends a row; `time` must be after the previous row's.
    pub fn push<'f>(&mut self, time: Timestamp, fields: impl IntoIterator<Item = (&'f str, FieldRef<'f>)>) {
        debug_assert!(self.times.last().is_none_or(|&last| last < time), "rows in ascending time");
        let row = self.times.len();
        self.times.push(time);
        self.bytes += 8;
        for (name, value) in fields {
            let kind = kind_of(value);
            // Columns are kept in (name, kind) order, the order they are stored in.
            let at = self.columns.partition_point(|c| (c.name.as_str(), c.kind) < (name, kind));
            if self.columns.get(at).is_none_or(|c| (c.name.as_str(), c.kind) != (name, kind)) {
                let column = ColumnBuf {
                    name: name.to_owned(),
                    kind,
                    present: Vec::new(),
                    slots: Vec::new(),
                    text: Vec::new(),
                    filled: 0,
                };
                self.columns.insert(at, column);
            }
            self.bytes += match value {
                FieldRef::Text(s) => 4 + s.len(),
                _ => 8,
            };
            self.columns[at].set(row, value);
        }
    }

    pub fn rows(&self) -> usize {
        self.times.len()
    }

    /// Whether the block should be closed before another row is added:
    /// also when one more row (of at most [`MAX_POINT_FIELDS`] fields, each
    /// possibly a new column) could take the column count past the 16 bits
    /// it is stored in.
    pub fn is_full(&self) -> bool {
        self.rows() >= BLOCK_ROWS || self.bytes >= BLOCK_BYTES || self.columns.len() > MAX_COLUMNS - MAX_POINT_FIELDS
    }

    pub fn first_time(&self) -> Option<Timestamp> {
        self.times.first().copied()
    }

    /// Replaces `out` with the encoded block and empties the writer (its
    /// buffers are kept for the next block). A block past what its header
    /// can count (more than 65,535 columns, 4 GiB of one column's text) is
    /// refused rather than written with a count that wrapped, which would
    /// leave its whole series unreadable.
    pub fn finish_into(&mut self, out: &mut Vec<u8>) -> Result<(), String> {
        let rows = self.rows();
        let columns = u16::try_from(self.columns.len())
            .map_err(|_| format!("a block of {} columns, more than {MAX_COLUMNS}", self.columns.len()))?;
        if let Some(c) = self.columns.iter().find(|c| u32::try_from(c.text.len()).is_err()) {
            return Err(format!("field {:?} holds more than 4 GiB of text in one block", c.name));
        }
        let rows_u32 = u32::try_from(rows).map_err(|_| format!("a block of {rows} rows"))?;
        out.clear();
        out.extend_from_slice(&rows_u32.to_le_bytes());
        self.times.iter().for_each(|t| out.extend_from_slice(&t.to_le_bytes()));
        out.extend_from_slice(&columns.to_le_bytes());
        for c in &mut self.columns {
            c.pad(rows);
            out.extend_from_slice(&(c.name.len() as u32).to_le_bytes());
            out.extend_from_slice(c.name.as_bytes());
            out.push(c.kind);
            out.extend_from_slice(&c.present);
            out.extend_from_slice(&c.slots);
            if c.kind == TEXT {
                out.extend_from_slice(&(c.text.len() as u32).to_le_bytes());
                out.extend_from_slice(&c.text);
            }
        }
        self.times.clear();
        self.columns.clear();
        self.bytes = 0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(rows: &[(Timestamp, Vec<(&str, FieldRef<'_>)>)]) -> Vec<u8> {
        let mut w = BlockWriter::default();
        rows.iter().for_each(|(t, fields)| w.push(*t, fields.iter().copied()));
        let mut out = Vec::new();
        w.finish_into(&mut out).unwrap();
        out
    }

    #[test]
    fn rows_read_back_exactly_with_sparse_and_mixed_columns() {
        let rows = vec![
            (-5, vec![("a", FieldRef::Float(-0.0)), ("s", FieldRef::Text("héllo"))]),
            (0, vec![("a", FieldRef::Integer(i64::MIN)), ("b", FieldRef::Boolean(true))]),
            (7, vec![("s", FieldRef::Text("")), ("u", FieldRef::Unsigned(u64::MAX))]),
            (9, vec![("b", FieldRef::Boolean(false))]),
        ];
        let bytes = encode(&rows);
        let layout = Layout::parse(&bytes).unwrap();
        let block = Block::new(&bytes, &layout);
        assert_eq!(block.rows(), 4);
        for (row, (time, fields)) in rows.iter().enumerate() {
            assert_eq!(block.time(row), *time);
            let read: Vec<_> = block.fields(row).collect();
            assert_eq!(format!("{read:?}"), format!("{fields:?}"), "row {row}");
        }
        assert_eq!(block.row_at_or_after(-6), 0);
        assert_eq!(block.row_at_or_after(1), 2);
        assert_eq!(block.row_at_or_after(10), 4);
        assert_eq!(block.last_time(), 9);
    }

    #[test]
    fn the_writer_is_reusable_and_closes_blocks_at_their_limits() {
        let mut w = BlockWriter::default();
        let mut out = Vec::new();
        for t in 0..BLOCK_ROWS as i64 {
            assert!(!w.is_full());
            w.push(t, [("x", FieldRef::Float(t as f64))]);
        }
        assert!(w.is_full());
        w.finish_into(&mut out).unwrap();
        assert_eq!(Layout::parse(&out).unwrap().rows, BLOCK_ROWS);
        let long = "x".repeat(BLOCK_BYTES);
        w.push(1, [("t", FieldRef::Text(&long))]);
        assert!(w.is_full(), "a long text closes the block");
        w.finish_into(&mut out).unwrap();
        let layout = Layout::parse(&out).unwrap();
        assert_eq!(Block::new(&out, &layout).value(0, 0), Some(FieldRef::Text(&long)));
    }

    #[test]
    fn corrupt_blocks_are_errors_not_panics() {
        let good = encode(&[(1, vec![("a", FieldRef::Float(1.0))]), (2, vec![("s", FieldRef::Text("xy"))])]);
        assert!(Layout::parse(&good).is_ok());
        for cut in 0..good.len() {
            assert!(Layout::parse(&good[..cut]).is_err(), "cut at {cut}");
        }
        let mut longer = good.clone();
        longer.push(0);
        assert!(Layout::parse(&longer).is_err(), "trailing bytes");
        let mut unordered = good.clone();
        unordered[4..12].copy_from_slice(&5i64.to_le_bytes());
        assert!(Layout::parse(&unordered).unwrap_err().contains("ascending"));
        assert!(Layout::parse(&[0, 0, 0, 0, 0, 0]).unwrap_err().contains("without rows"));
        let mut kind = encode(&[(1, vec![("a", FieldRef::Float(1.0))])]);
        kind[4 + 8 + 2 + 4 + 1] = 9;
        assert!(Layout::parse(&kind).unwrap_err().contains("unknown field kind"));
    }

    #[test]
    fn a_column_count_past_16_bits_is_refused_not_wrapped() {
        let names: Vec<String> = (0..=MAX_COLUMNS).map(|i| format!("f{i:05}")).collect();
        let mut w = BlockWriter::default();
        w.push(1, names.iter().map(|n| (n.as_str(), FieldRef::Integer(1))));
        assert!(w.is_full(), "no row may be added to a block this wide");
        let mut out = Vec::new();
        assert_eq!(w.finish_into(&mut out).unwrap_err(), "a block of 65536 columns, more than 65535");
        let mut w = BlockWriter::default();
        w.push(1, names[..MAX_COLUMNS - MAX_POINT_FIELDS].iter().map(|n| (n.as_str(), FieldRef::Integer(1))));
        w.push(
            2,
            names[MAX_COLUMNS - MAX_POINT_FIELDS..MAX_COLUMNS].iter().map(|n| (n.as_str(), FieldRef::Integer(2))),
        );
        w.finish_into(&mut out).unwrap();
        assert_eq!(Layout::parse(&out).unwrap().columns.len(), MAX_COLUMNS);
    }
}
