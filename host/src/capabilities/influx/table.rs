//! `query-table` and `write-table`: the `influx` capability for rows as
//! columns (see `store::table`). Grants, limits, metrics and errors are
//! those of `query` and `write`; only the shape differs.

use crate::bindings::influx::{self as wit, InfluxError};
use crate::store::table::{Cell, FieldColumn, Table, TagColumn};
use crate::store::{Point, StoreError};

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
        let table = table_from_wit(rows);
        let latest = {
            let view = table.view(&measurement).map_err(StoreError::Invalid)?;
            view.rows().max_by_key(|r| r.time()).map(|r| r.to_point())
        };
        let written = self.store.write_table(measurement, table).await?;
        Ok((written, latest))
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
