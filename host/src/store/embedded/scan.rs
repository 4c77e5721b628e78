//! Allocation-free decoding of stored rows for
//! [`EmbeddedStore::query_floats`](super::EmbeddedStore::query_floats).
//!
//! A `query` row costs a map of tags and a map of fields (a string per key
//! and per text value); a reader that wants one number per row pays for all
//! of it. Here the key and value bytes (see the layout in the parent
//! module) are read in place: the time, the tags only when the query
//! filters on them, and fields only up to the wanted one. What counts as a
//! row and as a match is exactly what the parent's `query` decides.

use std::collections::BTreeMap;

use super::{Reader, T_BOOL, T_FLOAT, T_INT, T_TEXT, T_UINT, Timestamp};

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
