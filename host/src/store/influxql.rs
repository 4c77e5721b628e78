//! Translation of a guest's structured [`Query`] into InfluxQL, and of
//! InfluxDB 1.x `/query` JSON back into [`Row`]s.
//!
//! Guests never write query text: every name they supply goes through
//! [`ident`] (double-quoted identifier) and every value through [`string`]
//! (single-quoted literal), both escaping `\`, the quote and newline the way
//! InfluxQL's scanner unescapes them, so no measurement, tag or field name can
//! end a literal early and add a clause. Times are integers (nanoseconds).
//!
//! `GROUP BY *` makes InfluxDB return tags separately from fields, one series
//! per tag set; `LIMIT` then applies per series, so [`rows`] merges the
//! series and applies first/last/limit/order again over all of them.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde_json::Value;

use super::{FieldValue, Query, Row, Selector, StoreError};

/// InfluxDB's smallest and largest timestamps (the bounds of an open range).
const MIN_TIME: i64 = i64::MIN + 2;
const MAX_TIME: i64 = i64::MAX - 1;

/// A double-quoted identifier.
pub fn ident(name: &str) -> String {
    quote(name, '"')
}

/// A single-quoted string literal.
pub fn string(value: &str) -> String {
    quote(value, '\'')
}

fn quote(text: &str, q: char) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push(q);
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if c == q => {
                out.push('\\');
                out.push(c);
            }
            c => out.push(c),
        }
    }
    out.push(q);
    out
}

/// The `SELECT` for `q`, reading only `fields` (empty: every field).
/// `None` when the query cannot match anything (empty range, limit 0).
pub fn select(q: &Query, fields: &[String]) -> Option<String> {
    let (start, end) = (q.start.unwrap_or(MIN_TIME).max(MIN_TIME), q.end.unwrap_or(MAX_TIME).min(MAX_TIME));
    if start >= end || (q.limit == Some(0) && q.select == Selector::All) {
        return None;
    }
    let columns = if fields.is_empty() {
        "*".to_string()
    } else {
        fields.iter().map(|f| ident(f)).collect::<Vec<_>>().join(", ")
    };
    let mut s = format!("SELECT {columns} FROM {} WHERE ", ident(&q.measurement));
    for (k, v) in &q.tags {
        let _ = write!(s, "{}::tag = {} AND ", ident(k), string(v));
    }
    let _ = write!(s, "time >= {start} AND time < {end} GROUP BY *");
    let (descending, limit) = match q.select {
        Selector::First => (false, Some(1)),
        Selector::Last => (true, Some(1)),
        Selector::All => (q.descending, q.limit),
    };
    if descending {
        s.push_str(" ORDER BY time DESC");
    }
    if let Some(n) = limit {
        let _ = write!(s, " LIMIT {n}");
    }
    Some(s)
}

/// `SHOW FIELD KEYS` for one measurement.
pub fn show_field_keys(measurement: &str) -> String {
    format!("SHOW FIELD KEYS FROM {}", ident(measurement))
}

/// The series of the first statement's result; an error inside `results`
/// (InfluxDB answers 200 for e.g. a missing database) becomes `Unavailable`.
pub fn series(body: &Value) -> Result<Vec<Value>, StoreError> {
    if let Some(e) = body.get("error").and_then(Value::as_str) {
        return Err(StoreError::Unavailable(format!("InfluxDB: {e}")));
    }
    let result = body.get("results").and_then(|r| r.get(0)).ok_or_else(|| {
        StoreError::Unavailable(format!("InfluxDB answered without `results`: {}", truncate(&body.to_string())))
    })?;
    if let Some(e) = result.get("error").and_then(Value::as_str) {
        return Err(StoreError::Unavailable(format!("InfluxDB: {e}")));
    }
    Ok(result.get("series").and_then(Value::as_array).cloned().unwrap_or_default())
}

/// Field name → type (`float`, `integer`, `string`, `boolean`, `unsigned`)
/// from a `SHOW FIELD KEYS` answer.
pub fn field_types(body: &Value) -> Result<BTreeMap<String, String>, StoreError> {
    let mut types = BTreeMap::new();
    for s in series(body)? {
        for v in s.get("values").and_then(Value::as_array).into_iter().flatten() {
            if let (Some(name), Some(kind)) = (v.get(0).and_then(Value::as_str), v.get(1).and_then(Value::as_str)) {
                types.insert(name.to_string(), kind.to_string());
            }
        }
    }
    Ok(types)
}

/// Rows of a `SELECT` answer, merged over series and cut to what `q` asks.
/// Fields whose type is not in `types` are decoded from the JSON value.
pub fn rows(body: &Value, q: &Query, types: &BTreeMap<String, String>) -> Result<Vec<Row>, StoreError> {
    let mut rows = Vec::new();
    for s in series(body)? {
        let tags: BTreeMap<String, String> = s
            .get("tags")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
            .filter_map(|(k, v)| v.as_str().filter(|v| !v.is_empty()).map(|v| (k.clone(), v.to_string())))
            .collect();
        let columns: Vec<&str> =
            s.get("columns").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str).collect();
        for values in s.get("values").and_then(Value::as_array).into_iter().flatten() {
            if let Some(row) = row(values, &columns, &tags, types)? {
                rows.push(row);
            }
        }
    }
    rows.sort_by(|a, b| a.time.cmp(&b.time).then_with(|| a.tags.cmp(&b.tags)));
    Ok(cut(rows, q))
}

fn row(
    values: &Value,
    columns: &[&str],
    tags: &BTreeMap<String, String>,
    types: &BTreeMap<String, String>,
) -> Result<Option<Row>, StoreError> {
    let values = values.as_array().ok_or_else(|| bad("a row is not an array"))?;
    let mut time = None;
    let mut fields = BTreeMap::new();
    for (column, value) in columns.iter().zip(values) {
        if *column == "time" {
            time = value.as_i64();
        } else if !value.is_null() {
            fields.insert(column.to_string(), field(value, types.get(*column).map(String::as_str))?);
        }
    }
    let time = time.ok_or_else(|| bad("a row has no integer time (epoch=ns)"))?;
    Ok((!fields.is_empty()).then(|| Row { time, tags: tags.clone(), fields }))
}

fn field(value: &Value, kind: Option<&str>) -> Result<FieldValue, StoreError> {
    let parsed = match (kind, value) {
        (Some("integer"), v) => v.as_i64().map(FieldValue::Integer),
        (Some("unsigned"), v) => v.as_u64().map(FieldValue::Unsigned),
        (Some("float"), v) => v.as_f64().map(FieldValue::Float),
        (_, Value::String(s)) => Some(FieldValue::Text(s.clone())),
        (_, Value::Bool(b)) => Some(FieldValue::Boolean(*b)),
        (_, Value::Number(n)) => n.as_i64().map(FieldValue::Integer).or_else(|| n.as_f64().map(FieldValue::Float)),
        _ => None,
    };
    parsed.ok_or_else(|| bad(&format!("field value {value} does not match its type {kind:?}")))
}

/// Applies the selector, order and limit over the merged, time-sorted rows.
pub(super) fn cut(mut rows: Vec<Row>, q: &Query) -> Vec<Row> {
    match q.select {
        Selector::First => rows.truncate(1),
        Selector::Last => {
            rows = rows.pop().into_iter().collect();
        }
        Selector::All => {
            if q.descending {
                rows.reverse();
            }
            if let Some(n) = q.limit {
                rows.truncate(n as usize);
            }
        }
    }
    rows
}

fn bad(what: &str) -> StoreError {
    StoreError::Unavailable(format!("unexpected answer from InfluxDB: {what}"))
}

fn truncate(text: &str) -> String {
    text.chars().take(200).collect()
}

#[cfg(test)]
mod tests;
