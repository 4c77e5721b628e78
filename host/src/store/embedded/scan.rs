//! Allocation-free decoding of stored rows for
//! [`EmbeddedStore::query_floats`](super::EmbeddedStore::query_floats) and
//! [`EmbeddedStore::query_table`](super::EmbeddedStore::query_table).
//!
//! A `query` row costs a map of tags and a map of fields (a string per key
//! and per text value); a reader that wants one number per row pays for all
//! of it. Here the key and value bytes (see the layout in the parent
//! module) are read in place: the time, the tags only when the query
//! filters on them, and fields only up to the wanted one. What counts as a
//! row and as a match is exactly what the parent's `query` decides.

use std::collections::BTreeMap;

use super::{Query, Reader, T_BOOL, T_FLOAT, T_INT, T_TEXT, T_UINT, Timestamp};
use crate::store::line_protocol::FieldRef;
use crate::store::table::TableBuilder;

/// What one stored row contributes to a float series.
#[derive(Debug, PartialEq)]
pub(super) enum FloatRow {
    /// `query` would not return the row: a tag filter fails or the row
    /// lacks the field. It does not count toward the limit.
    Skipped,
    /// `query` would return the row, but the field is a boolean or text.
    NotNumeric,
    /// The field's value as `f64`, at the row's time.
    Value(Timestamp, f64),
}

/// Decodes the row with key `suffix` (after the measurement prefix) and
/// encoded fields `value`, for `field` under the tag filters `tags`.
pub(super) fn float_row(
    suffix: &[u8],
    value: &[u8],
    tags: &BTreeMap<String, String>,
    field: &[u8],
) -> Result<FloatRow, String> {
    let mut key = Reader(suffix);
    let time = key.time()?;
    if !tags.is_empty() && !tags_match(key, tags)? {
        return Ok(FloatRow::Skipped);
    }
    let mut fields = Reader(value);
    while !fields.0.is_empty() {
        let name = fields.bytes()?;
        let [kind] = fields.array()?;
        let number = match kind {
            T_FLOAT => Some(f64::from_bits(u64::from_le_bytes(fields.array()?))),
            T_INT => Some(i64::from_le_bytes(fields.array()?) as f64),
            T_UINT => Some(u64::from_le_bytes(fields.array()?) as f64),
            T_BOOL => fields.array::<1>().map(|_| None)?,
            T_TEXT => fields.bytes().map(|_| None)?,
            other => return Err(format!("unknown field type {other} in field {:?}", String::from_utf8_lossy(name))),
        };
        if name == field {
            return Ok(number.map_or(FloatRow::NotNumeric, |v| FloatRow::Value(time, v)));
        }
    }
    Ok(FloatRow::Skipped)
}

/// Whether every filter `(key, value)` is among the encoded tag pairs left
/// in `key`.
fn tags_match(key: Reader<'_>, filters: &BTreeMap<String, String>) -> Result<bool, String> {
    for (want_key, want_value) in filters {
        let mut pairs = key;
        let mut found = false;
        while !pairs.0.is_empty() {
            let (k, v) = (pairs.bytes()?, pairs.bytes()?);
            if k == want_key.as_bytes() {
                found = v == want_value.as_bytes();
                break;
            }
        }
        if !found {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Appends the row with key `suffix` and encoded fields `value` to `table`
/// when `query` would return it (its tag filters match and, when `q.fields`
/// names fields, it has one of them, which are all it keeps); says whether
/// it did. Strings are borrowed from the encoding until the table interns
/// them.
pub(super) fn table_row(suffix: &[u8], value: &[u8], q: &Query, table: &mut TableBuilder) -> Result<bool, String> {
    let mut key = Reader(suffix);
    let time = key.time()?;
    if !q.tags.is_empty() && !tags_match(key, &q.tags)? {
        return Ok(false);
    }
    let wanted = |name: &str| q.fields.is_empty() || q.fields.iter().any(|f| f == name);
    let fields = decode_all(Reader(value), field_entry)?;
    if !fields.iter().any(|(name, _)| wanted(name)) {
        return Ok(false);
    }
    let tags = decode_all(key, tag_entry)?;
    table.push(time, tags, fields.into_iter().filter(|(name, _)| wanted(name)));
    Ok(true)
}

/// Every entry `next` reads from `r`, in order. The few entries of a row
/// live in a small vector on the stack.
fn decode_all<'a, T>(
    mut r: Reader<'a>,
    next: fn(&mut Reader<'a>) -> Result<T, String>,
) -> Result<smallvec::SmallVec<[T; 8]>, String> {
    let mut out = smallvec::SmallVec::new();
    while !r.0.is_empty() {
        out.push(next(&mut r)?);
    }
    Ok(out)
}

fn tag_entry<'a>(r: &mut Reader<'a>) -> Result<(&'a str, &'a str), String> {
    Ok((r.str()?, r.str()?))
}

/// One encoded field, its name and text borrowed.
pub(super) fn field_entry<'a>(r: &mut Reader<'a>) -> Result<(&'a str, FieldRef<'a>), String> {
    let name = r.str()?;
    let [kind] = r.array()?;
    let value = match kind {
        T_FLOAT => FieldRef::Float(f64::from_bits(u64::from_le_bytes(r.array()?))),
        T_INT => FieldRef::Integer(i64::from_le_bytes(r.array()?)),
        T_UINT => FieldRef::Unsigned(u64::from_le_bytes(r.array()?)),
        T_BOOL => match r.array()? {
            [0] => FieldRef::Boolean(false),
            [1] => FieldRef::Boolean(true),
            [x] => return Err(format!("bad boolean byte {x} in field {name:?}")),
        },
        T_TEXT => FieldRef::Text(r.str()?),
        other => return Err(format!("unknown field type {other} in field {name:?}")),
    };
    Ok((name, value))
}
