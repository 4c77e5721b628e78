//! Translation of a guest's structured [`Query`] into Flux for InfluxDB 2.x
//! (`/api/v2/query`), and of its annotated CSV answer back into [`Row`]s.
//!
//! Guests never write query text: every name and value they supply becomes a
//! Flux string literal through [`string`], which escapes `\`, `"`, `$` (so no
//! `${...}` interpolation), newline, carriage return and tab, so a
//! measurement, tag or field name cannot end the literal early and add a
//! pipe stage. Times are integers turned into times with `time(v: ...)`.
//!
//! The query is *not* pivoted: each answer table is one series and one field,
//! its `_value` column typed by the `#datatype` annotation, so every field
//! comes back with exactly the type it was stored with, and an empty string
//! field is never confused with a missing one (pivot would turn absent
//! fields into empty cells). [`rows`] joins the fields of a series at one
//! time into a row. First/last/limit are pushed down per table (`sort` then
//! `limit`), which keeps a superset of the wanted rows (a series has one value
//! per field and time), and applied exactly over the merged rows.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::{FieldValue, Query, Row, Selector, StoreError, influxql};

/// The smallest and largest timestamps InfluxDB stores (bounds of an open range).
const MIN_TIME: i64 = i64::MIN + 2;
const MAX_TIME: i64 = i64::MAX - 1;

/// Columns of a Flux table that are not tags.
const NOT_TAGS: [&str; 9] = ["", "result", "table", "_start", "_stop", "_time", "_value", "_field", "_measurement"];

/// A double-quoted Flux string literal.
pub fn string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '$' => out.push_str("\\$"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The Flux script for `q` over `bucket`; `None` when the query cannot match
/// anything (empty range, limit 0).
pub fn script(bucket: &str, q: &Query) -> Option<String> {
    let (start, end) = (q.start.unwrap_or(MIN_TIME).max(MIN_TIME), q.end.unwrap_or(MAX_TIME).min(MAX_TIME));
    if start >= end || (q.limit == Some(0) && q.select == Selector::All) {
        return None;
    }
    let mut s =
        format!("from(bucket: {})\n  |> range(start: time(v: {start}), stop: time(v: {end}))\n", string(bucket));
    let mut predicate = format!("r._measurement == {}", string(&q.measurement));
    for (k, v) in &q.tags {
        let _ = write!(predicate, " and r[{}] == {}", string(k), string(v));
    }
    let _ = writeln!(s, "  |> filter(fn: (r) => {predicate})");
    if !q.fields.is_empty() {
        let fields: Vec<String> = q.fields.iter().map(|f| format!("r._field == {}", string(f))).collect();
        let _ = writeln!(s, "  |> filter(fn: (r) => {})", fields.join(" or "));
    }
    let (descending, limit) = match q.select {
        Selector::First => (false, Some(1)),
        Selector::Last => (true, Some(1)),
        Selector::All => (q.descending, q.limit),
    };
    if let Some(n) = limit {
        let _ = writeln!(s, "  |> sort(columns: [\"_time\"], desc: {descending})\n  |> limit(n: {n})");
    }
    Some(s)
}

/// The JSON body of a `/api/v2/query` request for `script`.
pub fn request_body(script: &str) -> String {
    serde_json::json!({
        "query": script,
        "type": "flux",
        "dialect": {
            "annotations": ["datatype", "group", "default"],
            "header": true,
            "delimiter": ",",
            "commentPrefix": "#",
            "dateTimeFormat": "RFC3339Nano",
        },
    })
    .to_string()
}

/// Rows of an annotated-CSV answer, one per series and time, merged over
/// tables and cut to what `q` asks.
pub fn rows(csv: &str, q: &Query) -> Result<Vec<Row>, StoreError> {
    let mut joined: BTreeMap<(i64, BTreeMap<String, String>), BTreeMap<String, FieldValue>> = BTreeMap::new();
    let mut table = Table::default();
    for record in records(csv)? {
        if record.iter().all(String::is_empty) {
            table = Table::default(); // blank line: the next table has its own annotations
        } else if record[0] == "#datatype" {
            table = Table { types: record, header: Vec::new() };
        } else if record[0].starts_with('#') {
            continue; // #group, #default
        } else if table.header.is_empty() {
            table.header = record;
        } else {
            let (time, tags, field, value) = table.value(&record)?;
            joined.entry((time, tags)).or_default().insert(field, value);
        }
    }
    let rows = joined.into_iter().map(|((time, tags), fields)| Row { time, tags, fields }).collect();
    Ok(influxql::cut(rows, q))
}

/// Rows of an annotated-CSV answer over several measurements, one per
/// measurement, series and time, with their measurement; not cut (see
/// `multi::finish`).
pub fn rows_by_measurement(csv: &str) -> Result<Vec<(String, Row)>, StoreError> {
    type Key = (String, i64, BTreeMap<String, String>);
    let mut joined: BTreeMap<Key, BTreeMap<String, FieldValue>> = BTreeMap::new();
    let mut table = Table::default();
    for record in records(csv)? {
        if record.iter().all(String::is_empty) {
            table = Table::default();
        } else if record[0] == "#datatype" {
            table = Table { types: record, header: Vec::new() };
        } else if record[0].starts_with('#') {
            continue;
        } else if table.header.is_empty() {
            table.header = record;
        } else {
            let (time, tags, field, value) = table.value(&record)?;
            let at = table.header.iter().position(|h| h == "_measurement");
            let measurement = at.and_then(|i| record.get(i)).ok_or_else(|| bad("a table without _measurement"))?;
            joined.entry((measurement.clone(), time, tags)).or_default().insert(field, value);
        }
    }
    Ok(joined.into_iter().map(|((m, time, tags), fields)| (m, Row { time, tags, fields })).collect())
}

/// The annotations and header of the table being read.
#[derive(Default)]
struct Table {
    types: Vec<String>,
    header: Vec<String>,
}

impl Table {
    /// (time, tags, field, value) of one data record.
    fn value(&self, record: &[String]) -> Result<(i64, BTreeMap<String, String>, String, FieldValue), StoreError> {
        let cell = |name: &str| self.header.iter().position(|h| h == name).and_then(|i| record.get(i).map(|v| (i, v)));
        if let Some((_, message)) = cell("error").filter(|(_, m)| !m.is_empty()) {
            return Err(StoreError::Unavailable(format!("InfluxDB query failed: {message}")));
        }
        let (_, time) = cell("_time").ok_or_else(|| bad("a table without _time"))?;
        let (_, field) = cell("_field").ok_or_else(|| bad("a table without _field"))?;
        let (at, value) = cell("_value").ok_or_else(|| bad("a table without _value"))?;
        let kind = self.types.get(at).map(String::as_str).unwrap_or("");
        let tags = self
            .header
            .iter()
            .zip(record)
            .filter(|(h, v)| !NOT_TAGS.contains(&h.as_str()) && !v.is_empty())
            .map(|(h, v)| (h.clone(), v.clone()))
            .collect();
        Ok((parse_time(time)?, tags, field.clone(), parse_value(value, kind)?))
    }
}

/// A `_value` cell by its `#datatype`.
fn parse_value(text: &str, kind: &str) -> Result<FieldValue, StoreError> {
    let wrong = || bad(&format!("value {text:?} is not a valid {kind}"));
    Ok(match kind {
        "double" => FieldValue::Float(text.parse().map_err(|_| wrong())?),
        "long" => FieldValue::Integer(text.parse().map_err(|_| wrong())?),
        "unsignedLong" => FieldValue::Unsigned(text.parse().map_err(|_| wrong())?),
        "boolean" => FieldValue::Boolean(text.parse().map_err(|_| wrong())?),
        "string" => FieldValue::Text(text.to_string()),
        other => return Err(bad(&format!("unsupported field type {other:?} in the #datatype annotation"))),
    })
}

/// An RFC 3339 time with up to nanosecond precision → ns since the epoch.
pub fn parse_time(text: &str) -> Result<i64, StoreError> {
    chrono::DateTime::parse_from_rfc3339(text)
        .ok()
        .and_then(|t| t.timestamp_nanos_opt())
        .ok_or_else(|| bad(&format!("{text:?} is not an RFC 3339 time within InfluxDB's range")))
}

/// Splits CSV (RFC 4180: `"`-quoted cells, `""` inside quotes, quoted line
/// breaks) into records. A blank line is a record of one empty cell.
fn records(text: &str) -> Result<Vec<Vec<String>>, StoreError> {
    let mut out = Vec::new();
    let (mut record, mut cell) = (Vec::new(), String::new());
    let mut chars = text.chars().peekable();
    let mut quoted = false;
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                cell.push('"');
            }
            (true, '"') => quoted = false,
            (true, c) => cell.push(c),
            (false, '"') if cell.is_empty() => quoted = true,
            (false, ',') => record.push(std::mem::take(&mut cell)),
            (false, '\r') if chars.peek() == Some(&'\n') => {}
            (false, '\n') => {
                record.push(std::mem::take(&mut cell));
                out.push(std::mem::take(&mut record));
            }
            (false, c) => cell.push(c),
        }
    }
    if quoted {
        return Err(bad("the CSV ends inside a quoted cell"));
    }
    if !cell.is_empty() || !record.is_empty() {
        record.push(cell);
        out.push(record);
    }
    Ok(out)
}

fn bad(what: &str) -> StoreError {
    StoreError::Unavailable(format!("unexpected answer from InfluxDB: {what}"))
}

#[cfg(test)]
mod tests;
