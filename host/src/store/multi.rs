//! Queries over several measurements at once (WIT `influx.query-multi`):
//! the rows of each measurement, cut per series and merged in time order.
//!
//! A guest that reads Home Assistant's data needs this: HA writes each
//! switch and light to a measurement of its own (`switch.lamp`), and the
//! state an entity had before a window is the last row of its series before
//! the window, however long ago. One request per measurement, or per
//! entity, would make a correlator cycle cost as many queries as the house
//! has lamps; here a cycle asks once.
//!
//! The store-independent part lives here: [`finish`] applies `per_series`,
//! the order and the limit over rows a backend decoded (a backend may hand
//! over a superset: InfluxQL's `LIMIT` under `GROUP BY *` is per series,
//! not overall), and [`influxql_select`] / [`influxql_rows`] translate for
//! InfluxDB 1.x (quoting through [`influxql::ident`] and
//! [`influxql::string`], like every other query).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde_json::Value;

use super::table::{FieldColumn, Table, TableBuilder, TagColumn};
use super::{Query, Row, Selector, StoreError, TimeSeriesStore, Timestamp, influxql};

/// InfluxDB's smallest and largest timestamps (the bounds of an open range).
const MIN_TIME: i64 = i64::MIN + 2;
const MAX_TIME: i64 = i64::MAX - 1;

/// A structured query over several measurements (see `wit/influx.wit`).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct MultiQuery {
    /// Distinct, non-empty names.
    pub measurements: Vec<String>,
    /// Empty: every field.
    pub fields: Vec<String>,
    /// All must match exactly.
    pub tags: BTreeMap<String, String>,
    /// Inclusive.
    pub start: Option<Timestamp>,
    /// Exclusive.
    pub end: Option<Timestamp>,
    /// Rows kept per series (the latest when `descending`).
    pub per_series: Option<u32>,
    pub descending: bool,
    /// Rows kept in all, after `per_series`.
    pub limit: Option<u32>,
}

impl MultiQuery {
    /// The single-measurement [`Query`] for measurement `m` that returns a
    /// superset of the rows this query keeps of `m`.
    pub fn for_measurement(&self, m: &str) -> Query {
        Query {
            measurement: m.to_string(),
            fields: self.fields.clone(),
            tags: self.tags.clone(),
            start: self.start,
            end: self.end,
            select: Selector::All,
            descending: self.descending,
            // Per series, a global limit could drop a series' rows.
            limit: if self.per_series.is_some() { None } else { self.limit },
        }
    }

    /// Checks the shape: at least one measurement, none empty or repeated.
    pub fn check(&self) -> Result<(), StoreError> {
        if self.measurements.is_empty() {
            return Err(StoreError::Invalid("a multi-query names no measurement".into()));
        }
        for (i, m) in self.measurements.iter().enumerate() {
            if m.is_empty() {
                return Err(StoreError::Invalid("query measurement is empty".into()));
            }
            if self.measurements[..i].contains(m) {
                return Err(StoreError::Invalid(format!("measurement {m:?} is named twice in a multi-query")));
            }
        }
        Ok(())
    }

    fn is_empty_range(&self) -> bool {
        matches!((self.start, self.end), (Some(s), Some(e)) if s >= e)
            || self.limit == Some(0)
            || self.per_series == Some(0)
    }
}

/// The answer: rows as a table, and per row the index of its measurement
/// in [`MultiQuery::measurements`].
#[derive(Debug, Clone, PartialEq, Default)]
pub struct MultiTable {
    pub measurement: Vec<u32>,
    pub rows: Table,
}

/// Orders rows a store decoded into `rows`, the measurement and time of
/// row `i` in `keys[i]`, by time (newest first when `descending`), rows at
/// one time by measurement, otherwise as they came (a stable sort); then
/// cuts to `q.limit`. Rows already in order are not moved.
pub fn ordered(rows: Table, keys: &[(Timestamp, u32)], q: &MultiQuery) -> MultiTable {
    let cmp = |a: usize, b: usize| {
        let by_time = if q.descending { keys[b].0.cmp(&keys[a].0) } else { keys[a].0.cmp(&keys[b].0) };
        by_time.then(keys[a].1.cmp(&keys[b].1))
    };
    let mut order: Vec<usize> = (0..keys.len()).collect();
    if order.windows(2).any(|w| cmp(w[0], w[1]).is_gt()) {
        // Stable by the index as the last key: the armv7 board binary
        // (budget 4 MiB) carries no stable sort, about 20 KB.
        order.sort_unstable_by(|&a, &b| cmp(a, b).then(a.cmp(&b)));
    }
    if let Some(limit) = q.limit {
        order.truncate(limit as usize);
    }
    let measurement = order.iter().map(|&i| keys[i].1).collect();
    MultiTable { measurement, rows: gather(rows, &order) }
}

/// The rows of `t` at `order`, in that order (all of them, unmoved, when
/// `order` is `0..len`).
fn gather(t: Table, order: &[usize]) -> Table {
    if order.len() == t.len() && order.iter().enumerate().all(|(i, &o)| i == o) {
        return t;
    }
    let pick = |values: &[Option<u32>]| order.iter().map(|&i| values[i]).collect();
    Table {
        times: order.iter().map(|&i| t.times[i]).collect(),
        tags: t.tags.iter().map(|c| TagColumn { key: c.key.clone(), values: pick(&c.values) }).collect(),
        fields: t
            .fields
            .iter()
            .map(|c| FieldColumn { key: c.key.clone(), values: order.iter().map(|&i| c.values[i]).collect() })
            .collect(),
        strings: t.strings,
    }
}

/// Keeps `q.per_series` rows of each series (measurement and tag set),
/// orders all by time (newest first when `descending`; rows at one time by
/// measurement, then tags) and cuts to `q.limit`.
pub fn finish(rows: Vec<(u32, Row)>, q: &MultiQuery) -> MultiTable {
    // Unstable sorts with the arrival index as the last key keep the order
    // stable without a stable sort's code (see `ordered`).
    let mut rows: Vec<(usize, u32, Row)> = rows.into_iter().enumerate().map(|(i, (m, row))| (i, m, row)).collect();
    let by_time = |a: &Row, b: &Row| if q.descending { b.time.cmp(&a.time) } else { a.time.cmp(&b.time) };
    if let Some(n) = q.per_series {
        // Group each series together, its rows nearest the wanted end first.
        rows.sort_unstable_by(|(ia, ma, a), (ib, mb, b)| {
            (ma, &a.tags).cmp(&(mb, &b.tags)).then(by_time(a, b)).then(ia.cmp(ib))
        });
        let mut kept = 0usize;
        let mut previous: Option<(u32, BTreeMap<String, String>)> = None;
        rows.retain(|(_, m, row)| {
            let same = previous.as_ref().is_some_and(|(pm, pt)| pm == m && *pt == row.tags);
            if !same {
                previous = Some((*m, row.tags.clone()));
                kept = 0;
            }
            kept += 1;
            kept <= n as usize
        });
    }
    rows.sort_unstable_by(|(ia, ma, a), (ib, mb, b)| {
        by_time(a, b).then_with(|| (ma, &a.tags).cmp(&(mb, &b.tags))).then(ia.cmp(ib))
    });
    if let Some(limit) = q.limit {
        rows.truncate(limit as usize);
    }
    let mut table = TableBuilder::default();
    let measurement = rows.iter().map(|(_, m, _)| *m).collect();
    rows.iter().for_each(|(_, _, row)| table.push_row(row));
    MultiTable { measurement, rows: table.finish() }
}

/// `q` answered with one [`TimeSeriesStore::query`] per measurement: what
/// stores without a request for several measurements do.
pub async fn by_measurement<S: TimeSeriesStore + ?Sized>(store: &S, q: MultiQuery) -> Result<MultiTable, StoreError> {
    q.check()?;
    if q.is_empty_range() {
        return Ok(MultiTable::default());
    }
    let mut rows = Vec::new();
    for (i, m) in q.measurements.iter().enumerate() {
        let index = u32::try_from(i).map_err(|_| StoreError::Invalid("too many measurements".into()))?;
        rows.extend(store.query(q.for_measurement(m)).await?.into_iter().map(|r| (index, r)));
    }
    Ok(finish(rows, &q))
}

/// The one InfluxQL `SELECT` for `q`: every measurement in its `FROM`,
/// `GROUP BY *` so tags come apart from fields and `LIMIT` counts per
/// series (the per-series limit, or the overall one as a superset).
/// Every name is quoted by [`influxql::ident`], every value by
/// [`influxql::string`]. `None` when nothing can match.
pub fn influxql_select(q: &MultiQuery) -> Option<String> {
    let (start, end) = (q.start.unwrap_or(MIN_TIME).max(MIN_TIME), q.end.unwrap_or(MAX_TIME).min(MAX_TIME));
    if q.is_empty_range() || start >= end || q.measurements.is_empty() {
        return None;
    }
    let columns = if q.fields.is_empty() {
        "*".to_string()
    } else {
        q.fields.iter().map(|f| influxql::ident(f)).collect::<Vec<_>>().join(", ")
    };
    let from: Vec<String> = q.measurements.iter().map(|m| influxql::ident(m)).collect();
    let mut s = format!("SELECT {columns} FROM {} WHERE ", from.join(", "));
    for (k, v) in &q.tags {
        let _ = write!(s, "{}::tag = {} AND ", influxql::ident(k), influxql::string(v));
    }
    let _ = write!(s, "time >= {start} AND time < {end} GROUP BY *");
    if q.descending {
        s.push_str(" ORDER BY time DESC");
    }
    let per_series = match (q.per_series, q.limit) {
        (Some(p), Some(l)) => Some(p.min(l)),
        (p, l) => p.or(l),
    };
    if let Some(n) = per_series {
        let _ = write!(s, " LIMIT {n}");
    }
    Some(s)
}

/// Rows of a multi-measurement `SELECT` answer, each with the index of its
/// series' measurement, decoded with that measurement's field types; then
/// [`finish`]ed. A series of a measurement `q` did not name is an error.
pub fn influxql_rows(
    body: &Value,
    q: &MultiQuery,
    types: &[BTreeMap<String, String>],
) -> Result<MultiTable, StoreError> {
    let mut rows = Vec::new();
    for series in influxql::series(body)? {
        let name = series.get("name").and_then(Value::as_str).unwrap_or_default();
        let index = q.measurements.iter().position(|m| m == name).ok_or_else(|| {
            StoreError::Unavailable(format!("unexpected answer from InfluxDB: a series of measurement {name:?}"))
        })?;
        let empty = BTreeMap::new();
        let types = types.get(index).unwrap_or(&empty);
        let one = serde_json::json!({ "results": [{ "series": [series] }] });
        let query = Query { select: Selector::All, limit: None, descending: false, ..Query::default() };
        let decoded = influxql::rows(&one, &query, types)?;
        rows.extend(decoded.into_iter().map(|r| (index as u32, r)));
    }
    Ok(finish(rows, q))
}

/// The one Flux script for `q` over `bucket`: every measurement in one
/// filter (then the tags, then the fields, each a filter of its own), each
/// name and value a literal of [`flux::string`]. Answer
/// tables are per series and field, so `sort` and `limit` there keep a
/// superset of each series' wanted rows. `None` when nothing can match.
#[cfg(feature = "influx-v2")]
pub fn flux_script(bucket: &str, q: &MultiQuery) -> Option<String> {
    use super::flux::string;
    let (start, end) = (q.start.unwrap_or(MIN_TIME).max(MIN_TIME), q.end.unwrap_or(MAX_TIME).min(MAX_TIME));
    if q.is_empty_range() || start >= end || q.measurements.is_empty() {
        return None;
    }
    let mut s =
        format!("from(bucket: {})\n  |> range(start: time(v: {start}), stop: time(v: {end}))\n", string(bucket));
    let names: Vec<String> = q.measurements.iter().map(|m| format!("r._measurement == {}", string(m))).collect();
    let _ = writeln!(s, "  |> filter(fn: (r) => {})", names.join(" or "));
    if !q.tags.is_empty() {
        let tags: Vec<String> = q.tags.iter().map(|(k, v)| format!("r[{}] == {}", string(k), string(v))).collect();
        let _ = writeln!(s, "  |> filter(fn: (r) => {})", tags.join(" and "));
    }
    if !q.fields.is_empty() {
        let fields: Vec<String> = q.fields.iter().map(|f| format!("r._field == {}", string(f))).collect();
        let _ = writeln!(s, "  |> filter(fn: (r) => {})", fields.join(" or "));
    }
    let per_table = match (q.per_series, q.limit) {
        (Some(p), Some(l)) => Some(p.min(l)),
        (p, l) => p.or(l),
    };
    if let Some(n) = per_table {
        let _ = writeln!(s, "  |> sort(columns: [\"_time\"], desc: {})\n  |> limit(n: {n})", q.descending);
    }
    Some(s)
}

/// Rows of a [`flux_script`] answer, [`finish`]ed.
#[cfg(feature = "influx-v2")]
pub fn flux_rows(csv: &str, q: &MultiQuery) -> Result<MultiTable, StoreError> {
    let mut rows = Vec::new();
    for (name, row) in super::flux::rows_by_measurement(csv)? {
        let index = q.measurements.iter().position(|m| *m == name).ok_or_else(|| {
            StoreError::Unavailable(format!("unexpected answer from InfluxDB: rows of measurement {name:?}"))
        })?;
        rows.push((index as u32, row));
    }
    Ok(finish(rows, q))
}

#[cfg(test)]
pub(crate) mod tests;
