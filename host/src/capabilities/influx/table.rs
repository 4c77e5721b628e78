//! `query-table` and `write-table`: the `influx` capability for rows as
//! columns (see `store::table`). Grants, limits, metrics and errors are
//! those of `query` and `write`; only the shape differs.

use crate::bindings::influx::{self as wit, InfluxError};
use crate::store::table::{Cell, FieldColumn, Table, TagColumn};
use crate::store::{FieldValue, Point, StoreError};

use super::{InfluxCap, InfluxMetrics, MAX_QUERY_ROWS, capped, finish_query, query_from_wit};

impl InfluxCap {
    /// The rows of `q` as a table, at most [`MAX_QUERY_ROWS`] of them.
    pub(super) async fn query_table(
        &self,
        q: wit::SeriesQuery,
        metrics: &InfluxMetrics,
    ) -> Result<wit::Table, InfluxError> {
        // The caller checked the read grant.
        let began = std::time::Instant::now();
        let answer = self.store.query_table(capped(query_from_wit(q), MAX_QUERY_ROWS)).await;
        let table = finish_query(metrics, began, answer, Table::len, MAX_QUERY_ROWS)?;
        Ok(table_to_wit(table))
    }

    /// Writes the table's rows as points of `measurement`; returns how many,
    /// and the latest of them (for the status page).
    pub(super) async fn write_table(
        &self,
        measurement: String,
        rows: wit::Table,
    ) -> Result<(u32, Option<Point>), StoreError> {
        let mut table = table_from_wit(rows);
        if !self.host_tags.is_empty() {
            set_host_columns(&mut table, &self.host_tags);
        }
        let latest = latest_row(&table, &measurement);
        let written = self.store.write_table(measurement, table).await?;
        Ok((written, latest))
    }
}

/// The latest row as a point (for the status page), read straight from
/// the columns: the store checks the table (shape, string indexes, keys)
/// once, as it writes it, and a table it refuses records no latest point,
/// so an index out of range here only leaves the value out.
fn latest_row(table: &Table, measurement: &str) -> Option<Point> {
    let row = (0..table.times.len()).max_by_key(|&i| table.times[i])?;
    let text = |i: u32| table.strings.get(i as usize).cloned();
    let tags = table.tags.iter().filter_map(|c| Some((c.key.clone(), text((*c.values.get(row)?)?)?)));
    let fields = table.fields.iter().filter_map(|c| {
        let value = match (*c.values.get(row)?)? {
            Cell::Float(f) => FieldValue::Float(f),
            Cell::Integer(i) => FieldValue::Integer(i),
            Cell::Unsigned(u) => FieldValue::Unsigned(u),
            Cell::Boolean(b) => FieldValue::Boolean(b),
            Cell::Text(i) => FieldValue::Text(text(i)?),
        };
        Some((c.key.clone(), value))
    });
    let (tags, fields) = (tags.collect(), fields.collect());
    Some(Point { measurement: measurement.to_string(), tags, fields, time: table.times[row] })
}

/// Sets the host's tags (keys ascending) on every row: a column per host
/// tag, its value stored once; a guest's tag column with a host tag's key
/// is dropped, so the host's value wins.
fn set_host_columns(table: &mut Table, host: &[(String, String)]) {
    table.tags.retain(|c| host.binary_search_by(|(h, _)| h.as_str().cmp(&c.key)).is_err());
    let rows = table.len();
    for (key, value) in host {
        let Ok(index) = u32::try_from(table.strings.len()) else { return };
        table.strings.push(value.clone());
        table.tags.push(TagColumn { key: key.clone(), values: vec![Some(index); rows] });
    }
}

fn table_from_wit(t: wit::Table) -> Table {
    Table {
        times: t.times,
        strings: t.strings,
        tags: t.tags.into_iter().map(|c| TagColumn { key: c.key, values: c.values }).collect(),
        fields: t
            .fields
            .into_iter()
            .map(|c| FieldColumn { key: c.key, values: c.values.into_iter().map(|v| v.map(cell_from_wit)).collect() })
            .collect(),
    }
}

pub(super) fn table_to_wit(t: Table) -> wit::Table {
    wit::Table {
        times: t.times,
        strings: t.strings,
        tags: t.tags.into_iter().map(|c| wit::TagColumn { key: c.key, values: c.values }).collect(),
        fields: t
            .fields
            .into_iter()
            .map(|c| wit::FieldColumn {
                key: c.key,
                values: c.values.into_iter().map(|v| v.map(cell_to_wit)).collect(),
            })
            .collect(),
    }
}

fn cell_from_wit(c: wit::Cell) -> Cell {
    match c {
        wit::Cell::Float(f) => Cell::Float(f),
        wit::Cell::Integer(i) => Cell::Integer(i),
        wit::Cell::Unsigned(u) => Cell::Unsigned(u),
        wit::Cell::Boolean(b) => Cell::Boolean(b),
        wit::Cell::Text(i) => Cell::Text(i),
    }
}

fn cell_to_wit(c: Cell) -> wit::Cell {
    match c {
        Cell::Float(f) => wit::Cell::Float(f),
        Cell::Integer(i) => wit::Cell::Integer(i),
        Cell::Unsigned(u) => wit::Cell::Unsigned(u),
        Cell::Boolean(b) => wit::Cell::Boolean(b),
        Cell::Text(i) => wit::Cell::Text(i),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_latest_row_is_the_point_its_view_gives() {
        let table = Table {
            times: vec![5, 9, 9, 1],
            strings: vec!["a".into(), "b".into(), "t".into()],
            tags: vec![TagColumn { key: "site".into(), values: vec![Some(0), None, Some(1), Some(0)] }],
            fields: vec![
                FieldColumn { key: "w".into(), values: vec![Some(Cell::Float(1.0)); 4] },
                FieldColumn { key: "note".into(), values: vec![None, None, Some(Cell::Text(2)), None] },
            ],
        };
        let view = table.view("m").unwrap();
        let expected = view.rows().max_by_key(|r| r.time()).map(|r| r.to_point());
        assert_eq!(latest_row(&table, "m"), expected, "the last of the rows with the latest time");
        assert_eq!(latest_row(&Table::default(), "m"), None);
    }

    #[test]
    fn host_tags_become_columns_and_replace_a_guest_s_column_of_the_same_key() {
        let mut table = Table {
            times: vec![1, 2],
            strings: vec!["guest".into(), "L1".into()],
            tags: vec![
                TagColumn { key: "site".into(), values: vec![Some(0), None] },
                TagColumn { key: "phase".into(), values: vec![Some(1), Some(1)] },
            ],
            fields: vec![FieldColumn { key: "w".into(), values: vec![Some(Cell::Float(1.0)), Some(Cell::Float(2.0))] }],
        };
        set_host_columns(&mut table, &[("site".into(), "cottage".into())]);
        let view = table.view("m").unwrap();
        for row in view.rows() {
            let tags: Vec<(&str, &str)> = row.tags().collect();
            assert_eq!(tags, [("phase", "L1"), ("site", "cottage")]);
        }
    }
}
