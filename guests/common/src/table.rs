//! Reading and building `influx.table`s: rows of one measurement as
//! columns, each distinct string once. A guest that reads or writes
//! thousands of rows uses tables (`influx::query_table`,
//! `influx::write_table`): a `list<row>` costs an allocation per row, tag,
//! field and string, a table one per column and distinct string.

use std::borrow::Cow;
use std::collections::HashMap;

use crate::Timestamp;
use crate::influx::{Cell, FieldColumn, Table, TagColumn};

impl Table {
    /// The column of tag `key`, if any row has it.
    pub fn tag(&self, key: &str) -> Option<&TagColumn> {
        self.tags.iter().find(|c| c.key == key)
    }

    /// The column of field `key`, if any row has it.
    pub fn field(&self, key: &str) -> Option<&FieldColumn> {
        self.fields.iter().find(|c| c.key == key)
    }

    /// The string at `index` (`""` for an index the host never hands out).
    pub fn text(&self, index: u32) -> &str {
        self.strings.get(index as usize).map_or("", String::as_str)
    }

    /// Row `row`'s value of `key` as text: its tag, else its field
    /// (numbers and booleans rendered as `field_as_text` does).
    pub fn lookup(&self, row: usize, key: &str) -> Option<Cow<'_, str>> {
        let tag = self.tag(key).and_then(|c| c.values.get(row).copied().flatten());
        if let Some(index) = tag {
            return Some(Cow::Borrowed(self.text(index)));
        }
        let cell = self.field(key).and_then(|c| c.values.get(row).copied().flatten())?;
        Some(self.cell_text(cell))
    }

    /// A cell rendered as text.
    pub fn cell_text(&self, cell: Cell) -> Cow<'_, str> {
        match cell {
            Cell::Text(index) => Cow::Borrowed(self.text(index)),
            Cell::Float(v) => Cow::Owned(v.to_string()),
            Cell::Integer(v) => Cow::Owned(v.to_string()),
            Cell::Unsigned(v) => Cow::Owned(v.to_string()),
            Cell::Boolean(v) => Cow::Owned(v.to_string()),
        }
    }
}

/// Builds a table with a fixed set of columns, row by row, storing each
/// distinct string once.
pub struct TableBuilder {
    table: Table,
    interned: HashMap<String, u32>,
}

impl TableBuilder {
    /// A table with these tag and field columns (keys must be distinct).
    pub fn new(tag_keys: &[&str], field_keys: &[&str]) -> Self {
        let tags = tag_keys.iter().map(|k| TagColumn { key: k.to_string(), values: Vec::new() }).collect();
        let fields = field_keys.iter().map(|k| FieldColumn { key: k.to_string(), values: Vec::new() }).collect();
        TableBuilder { table: Table { times: Vec::new(), strings: Vec::new(), tags, fields }, interned: HashMap::new() }
    }

    /// The index of `s` in the table's strings, for a [`Cell::Text`].
    pub fn text(&mut self, s: &str) -> u32 {
        if let Some(&index) = self.interned.get(s) {
            return index;
        }
        let index = self.table.strings.len() as u32;
        self.table.strings.push(s.to_string());
        self.interned.insert(s.to_string(), index);
        index
    }

    /// Appends a row: one value per tag column (`None`, or an empty string,
    /// leaves the tag out) and per field column, in the order given to
    /// [`new`](Self::new). Missing trailing values count as `None`.
    pub fn push(&mut self, time: Timestamp, tags: &[Option<&str>], fields: &[Option<Cell>]) {
        self.table.times.push(time);
        for (i, column) in (0..self.table.tags.len()).zip(tags.iter().chain(std::iter::repeat(&None))) {
            let index = column.filter(|v| !v.is_empty()).map(|v| self.text(v));
            self.table.tags[i].values.push(index);
        }
        for (column, value) in self.table.fields.iter_mut().zip(fields.iter().chain(std::iter::repeat(&None))) {
            column.values.push(*value);
        }
    }

    /// The number of rows so far.
    pub fn len(&self) -> usize {
        self.table.times.len()
    }

    /// Whether no row was pushed.
    pub fn is_empty(&self) -> bool {
        self.table.times.is_empty()
    }

    /// The table so far.
    pub fn table(&self) -> &Table {
        &self.table
    }

    /// The finished table.
    pub fn finish(self) -> Table {
        self.table
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_are_stored_once_and_empty_tags_left_out() {
        let mut b = TableBuilder::new(&["entity_id", "state"], &["w"]);
        b.push(1, &[Some("switch.a"), Some("on")], &[Some(Cell::Float(1.0))]);
        b.push(2, &[Some("switch.a"), Some("")], &[]);
        let t = b.finish();
        assert_eq!(t.strings, ["switch.a", "on"]);
        assert_eq!(t.tag("state").map(|c| c.values.clone()), Some(vec![Some(1), None]));
        assert_eq!(t.field("w").map(|c| c.values.clone()), Some(vec![Some(Cell::Float(1.0)), None]));
        assert_eq!(t.lookup(0, "entity_id").as_deref(), Some("switch.a"));
        assert_eq!(t.lookup(1, "state"), None);
        assert_eq!(t.lookup(0, "w").as_deref(), Some("1"), "a field is found when no tag has the key");
    }
}
