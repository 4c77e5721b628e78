//! Rows of one measurement as columns, each distinct string once: the
//! store-side shape of WIT `influx.table`, which `query-table` answers and
//! `write-table` takes.
//!
//! A guest's `list<row>` or `list<point>` costs an allocation per row, tag,
//! field and string on both sides of the component boundary; a [`Table`]
//! costs one per column and distinct string. This module owns the shape's
//! checks ([`Table::view`]), reading its rows in key order ([`TableRow`],
//! which the write paths take as they take a point) and building one from
//! decoded rows ([`TableBuilder`], which the query paths fill).

use std::collections::HashMap;

use super::line_protocol::{FieldRef, LinePoint, encode_parts};
use super::{MAX_POINT_FIELDS, MAX_POINT_TAGS, Point, Row, Timestamp};

/// One cell: a field value whose text is an index into [`Table::strings`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Cell {
    Float(f64),
    Integer(i64),
    Unsigned(u64),
    Boolean(bool),
    Text(u32),
}

/// One tag: per row, an index into [`Table::strings`], or `None`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TagColumn {
    pub key: String,
    pub values: Vec<Option<u32>>,
}

/// One field: per row, its value, or `None`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct FieldColumn {
    pub key: String,
    pub values: Vec<Option<Cell>>,
}

/// Rows as columns: row `i` is at `times[i]` with `values[i]` of each column.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Table {
    pub times: Vec<Timestamp>,
    pub strings: Vec<String>,
    pub tags: Vec<TagColumn>,
    pub fields: Vec<FieldColumn>,
}

/// A checked [`Table`] with its columns' order by key, so its rows read
/// like a [`Point`]'s (keys ascending) without sorting each row.
pub struct TableView<'a> {
    table: &'a Table,
    measurement: &'a str,
    tag_order: Vec<usize>,
    field_order: Vec<usize>,
}

/// One row of a [`TableView`]: the point it stands for, borrowed.
#[derive(Clone, Copy)]
pub struct TableRow<'a> {
    view: &'a TableView<'a>,
    row: usize,
}

impl Table {
    /// The number of rows.
    pub fn len(&self) -> usize {
        self.times.len()
    }

    /// Whether the table has no rows.
    pub fn is_empty(&self) -> bool {
        self.times.is_empty()
    }

    /// Checks the shape (column counts, column lengths, string indexes,
    /// distinct keys) and orders the columns by key; the message names the
    /// column at fault. Each row is a point, so a table has at most the
    /// tags and fields a point may have, counted before any other work.
    pub fn view<'a>(&'a self, measurement: &'a str) -> Result<TableView<'a>, String> {
        check_width("tag", self.tags.len(), MAX_POINT_TAGS)?;
        check_width("field", self.fields.len(), MAX_POINT_FIELDS)?;
        let rows = self.len();
        let strings = self.strings.len();
        for c in &self.tags {
            check_column("tag", &c.key, c.values.len(), rows)?;
            if let Some(i) = c.values.iter().flatten().find(|&&i| i as usize >= strings) {
                return Err(format!("tag column {:?}: string index {i} is past the {strings} strings", c.key));
            }
        }
        for c in &self.fields {
            check_column("field", &c.key, c.values.len(), rows)?;
            let bad = c.values.iter().flatten().find_map(|v| match v {
                Cell::Text(i) if *i as usize >= strings => Some(*i),
                _ => None,
            });
            if let Some(i) = bad {
                return Err(format!("field column {:?}: string index {i} is past the {strings} strings", c.key));
            }
        }
        let tag_order = key_order("tag", self.tags.iter().map(|c| c.key.as_str()))?;
        let field_order = key_order("field", self.fields.iter().map(|c| c.key.as_str()))?;
        Ok(TableView { table: self, measurement, tag_order, field_order })
    }

    /// The rows as [`Point`]s (for stores without a table path of their own).
    pub fn to_points(&self, measurement: &str) -> Result<Vec<Point>, String> {
        let view = self.view(measurement)?;
        Ok(view.rows().map(|r| r.to_point()).collect())
    }

    fn text(&self, i: u32) -> &str {
        &self.strings[i as usize]
    }
}

fn check_width(kind: &str, columns: usize, max: usize) -> Result<(), String> {
    if columns > max {
        return Err(format!("the table has {columns} {kind} columns, more than the {max} {kind}s a point may have"));
    }
    Ok(())
}

fn check_column(kind: &str, key: &str, len: usize, rows: usize) -> Result<(), String> {
    if len != rows {
        return Err(format!("{kind} column {key:?} has {len} values for {rows} rows (times)"));
    }
    Ok(())
}

/// Column indexes sorted by key; an error names a repeated key. Sorted
/// in O(n log n): a guest chooses the column count (an insertion sort
/// took minutes over 200,000 descending keys).
fn key_order<'k>(kind: &str, keys: impl Iterator<Item = &'k str>) -> Result<Vec<usize>, String> {
    let keys: Vec<&str> = keys.collect();
    let mut order: Vec<usize> = (0..keys.len()).collect();
    order.sort_unstable_by_key(|&i| keys[i]);
    if let Some(w) = order.windows(2).find(|w| keys[w[0]] == keys[w[1]]) {
        return Err(format!("{kind} key {:?} has two columns", keys[w[0]]));
    }
    Ok(order)
}

impl<'a> TableView<'a> {
    /// The measurement every row belongs to.
    pub fn measurement(&self) -> &'a str {
        self.measurement
    }

    /// Each row, in table order.
    pub fn rows(&'a self) -> impl ExactSizeIterator<Item = TableRow<'a>> + Clone + 'a {
        (0..self.table.len()).map(move |row| TableRow { view: self, row })
    }
}

impl<'a> TableRow<'a> {
    pub fn measurement(&self) -> &'a str {
        self.view.measurement
    }

    pub fn time(&self) -> Timestamp {
        self.view.table.times[self.row]
    }

    /// The row's tags, keys ascending.
    pub fn tags(&self) -> impl Iterator<Item = (&'a str, &'a str)> + 'a {
        let (table, row) = (self.view.table, self.row);
        self.view.tag_order.iter().filter_map(move |&c| {
            let column = &table.tags[c];
            column.values[row].map(|i| (column.key.as_str(), table.text(i)))
        })
    }

    /// The row's fields, keys ascending.
    pub fn fields(&self) -> impl Iterator<Item = (&'a str, FieldRef<'a>)> + 'a {
        let (table, row) = (self.view.table, self.row);
        self.view.field_order.iter().filter_map(move |&c| {
            let column = &table.fields[c];
            column.values[row].map(|cell| (column.key.as_str(), field_ref(table, cell)))
        })
    }

    /// The point this row stands for, owned.
    pub fn to_point(&self) -> Point {
        Point {
            measurement: self.measurement().to_owned(),
            tags: self.tags().map(|(k, v)| (k.to_owned(), v.to_owned())).collect(),
            fields: self.fields().map(|(k, v)| (k.to_owned(), v.into_value())).collect(),
            time: self.time(),
        }
    }
}

fn field_ref(table: &Table, cell: Cell) -> FieldRef<'_> {
    match cell {
        Cell::Float(f) => FieldRef::Float(f),
        Cell::Integer(i) => FieldRef::Integer(i),
        Cell::Unsigned(u) => FieldRef::Unsigned(u),
        Cell::Boolean(b) => FieldRef::Boolean(b),
        Cell::Text(i) => FieldRef::Text(table.text(i)),
    }
}

/// Builds a [`Table`] row by row from borrowed parts, storing each distinct
/// string once and adding a column the first time its key appears (earlier
/// rows get `None` in it).
#[derive(Default)]
pub struct TableBuilder {
    table: Table,
    interned: HashMap<Box<str>, u32>,
    /// See [`TableBuilder::bytes`].
    bytes: usize,
}

impl TableBuilder {
    /// Appends one row. Keys must be distinct within `tags` and within `fields`.
    pub fn push<'p>(
        &mut self,
        time: Timestamp,
        tags: impl IntoIterator<Item = (&'p str, &'p str)>,
        fields: impl IntoIterator<Item = (&'p str, FieldRef<'p>)>,
    ) {
        let row = self.table.times.len();
        self.table.times.push(time);
        self.bytes += 8;
        for (key, value) in tags {
            let index = self.intern(value);
            let column = column_for(&mut self.table.tags, key, row, |key| TagColumn { key, values: Vec::new() });
            column.values.push(Some(index));
            self.bytes += 8;
        }
        for (key, value) in fields {
            self.bytes += 8;
            let cell = self.cell(value);
            let column = column_for(&mut self.table.fields, key, row, |key| FieldColumn { key, values: Vec::new() });
            column.values.push(Some(cell));
        }
        let rows = row + 1;
        self.table.tags.iter_mut().for_each(|c| c.values.resize(rows, None));
        self.table.fields.iter_mut().for_each(|c| c.values.resize(rows, None));
    }

    /// Appends a [`Row`] (for stores that answer queries with rows).
    pub fn push_row(&mut self, row: &Row) {
        let tags = row.tags.iter().map(|(k, v)| (k.as_str(), v.as_str()));
        let fields = row.fields.iter().map(|(k, v)| (k.as_str(), FieldRef::from(v)));
        self.push(row.time, tags, fields);
    }

    pub fn finish(self) -> Table {
        self.table
    }

    /// Refuses a table past what one answer may hold: more columns than a
    /// point may have (each new column costs a slot in every row), or more
    /// than `max_bytes` ([`super::MAX_QUERY_BYTES`] for guests; counted as
    /// in [`Self::bytes`]).
    pub fn check_bounds(&self, max_bytes: usize) -> Result<(), super::StoreError> {
        let (tags, fields) = (self.table.tags.len(), self.table.fields.len());
        if tags > MAX_POINT_TAGS || fields > MAX_POINT_FIELDS {
            return Err(super::StoreError::Invalid(format!(
                "the query's answer has {tags} tag and {fields} field columns, more than the \
                 {MAX_POINT_TAGS} and {MAX_POINT_FIELDS} a table may have; name the fields to query"
            )));
        }
        if self.bytes > max_bytes {
            return Err(super::answer_too_large(max_bytes));
        }
        Ok(())
    }

    /// The answer's size as [`super::MAX_QUERY_BYTES`] counts it: distinct
    /// strings by length, 8 bytes per time, tag and field value.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    fn intern(&mut self, s: &str) -> u32 {
        if let Some(&i) = self.interned.get(s) {
            return i;
        }
        // Answers stop at MAX_QUERY_BYTES, far below 2^32 strings.
        let i = u32::try_from(self.table.strings.len()).unwrap_or(u32::MAX);
        self.bytes += s.len();
        self.table.strings.push(s.to_owned());
        self.interned.insert(s.into(), i);
        i
    }

    fn cell(&mut self, value: FieldRef<'_>) -> Cell {
        match value {
            FieldRef::Float(f) => Cell::Float(f),
            FieldRef::Integer(i) => Cell::Integer(i),
            FieldRef::Unsigned(u) => Cell::Unsigned(u),
            FieldRef::Boolean(b) => Cell::Boolean(b),
            FieldRef::Text(s) => Cell::Text(self.intern(s)),
        }
    }
}

/// Trait for the two column kinds, so [`column_for`] serves both.
trait Keyed {
    fn key(&self) -> &str;
    fn len(&self) -> usize;
    fn pad(&mut self, rows: usize);
}

macro_rules! keyed {
    ($($kind:ty),*) => {$(
        impl Keyed for $kind {
            fn key(&self) -> &str {
                &self.key
            }
            fn len(&self) -> usize {
                self.values.len()
            }
            fn pad(&mut self, rows: usize) {
                self.values.resize(rows, None);
            }
        }
    )*};
}

keyed!(TagColumn, FieldColumn);

/// The column of `key` (a new one, padded to `row` rows, if none yet).
/// Columns are few, so a linear search beats hashing.
fn column_for<'c, C: Keyed>(
    columns: &'c mut Vec<C>,
    key: &str,
    row: usize,
    new: impl FnOnce(String) -> C,
) -> &'c mut C {
    let at = match columns.iter().position(|c| c.key() == key) {
        Some(at) => at,
        None => {
            let mut column = new(key.to_owned());
            column.pad(row);
            columns.push(column);
            columns.len() - 1
        }
    };
    let column = &mut columns[at];
    debug_assert_eq!(column.len(), row, "one value per row");
    column
}

/// A table's row encodes as the point it stands for (the remote stores'
/// outbox takes rows straight from the columns).
impl LinePoint for TableRow<'_> {
    fn unsigned_field(&self) -> Option<&str> {
        self.fields().find(|(_, v)| matches!(v, FieldRef::Unsigned(_))).map(|(k, _)| k)
    }
    fn encode_line(&self, out: &mut String) -> Result<(), String> {
        encode_parts(self.measurement(), self.tags(), self.fields(), self.time(), out)
    }
}

#[cfg(test)]
mod tests;
