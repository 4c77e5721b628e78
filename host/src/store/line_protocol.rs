//! InfluxDB line-protocol encoding of [`Point`]s, for the InfluxDB v1/v2
//! backends, plus a strict parser of exactly the grammar the encoder emits.
//!
//! The encoder's contract is that guest-supplied names and values can never
//! change the meaning of a batch: every valid point becomes exactly one line
//! (its only newlines outside string field values is the terminator), and
//! parsing that line gives the same point back. Anything line protocol cannot
//! represent unambiguously is rejected with [`StoreError::Invalid`] rather
//! than silently mangled:
//!
//! * `\n` / `\r` in a measurement, tag key, tag value or field key (line
//!   protocol has no escape for them); they are fine inside string values;
//! * an empty measurement, tag key, tag value or field key, or no fields;
//! * a measurement starting with `#` (the line would be a comment);
//! * a name with a backslash at its end or directly before `\`, `,`, `=` or
//!   space: InfluxDB parsers disagree on whether `\\` is an escape (v1 keeps
//!   it literal, v2 reads it as one backslash), so such names cannot be
//!   encoded so that every server reads them the same way;
//! * non-finite floats, and timestamps outside InfluxDB's range
//!   (`i64::MIN + 2 ..= i64::MAX - 1`).
//!
//! Escaping: measurements escape `,` and space; tag keys, tag values and field
//! keys escape `,`, `=` and space; string field values are double-quoted with
//! `"` and `\` escaped. Timestamps are nanoseconds.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::{FieldValue, Point, SortedPoint, StoreError, Timestamp};

mod encode;

pub use encode::{FieldRef, encode_parts};

/// InfluxDB's smallest and largest representable timestamps.
const MIN_TIME: i64 = i64::MIN + 2;
const MAX_TIME: i64 = i64::MAX - 1;

const MEASUREMENT_SPECIALS: &[char] = &[',', ' '];
const KEY_SPECIALS: &[char] = &[',', '=', ' '];

/// Appends `p` as one line (ending with `\n`) to `out`. On error `out` is
/// left unchanged.
pub fn encode_point(p: &Point, out: &mut String) -> Result<(), StoreError> {
    p.encode_line(out).map_err(StoreError::Invalid)
}

/// A point the remote backends encode as one line, whichever shape it
/// arrives in ([`Point`], [`SortedPoint`], a table's row): tags and fields
/// in strictly ascending key order, borrowed, so nothing is copied or
/// converted before encoding.
pub trait LinePoint {
    /// The first unsigned field's key, if any (a database without unsigned
    /// integers refuses the point).
    fn unsigned_field(&self) -> Option<&str>;
    /// Appends the point as one line ([`encode_parts`]'s checks and messages).
    fn encode_line(&self, out: &mut String) -> Result<(), String>;
}

impl<T: LinePoint + ?Sized> LinePoint for &T {
    fn unsigned_field(&self) -> Option<&str> {
        (**self).unsigned_field()
    }
    fn encode_line(&self, out: &mut String) -> Result<(), String> {
        (**self).encode_line(out)
    }
}

impl LinePoint for Point {
    fn unsigned_field(&self) -> Option<&str> {
        first_unsigned(&self.fields)
    }
    fn encode_line(&self, out: &mut String) -> Result<(), String> {
        encode_entries(&self.measurement, &self.tags, &self.fields, self.time, out)
    }
}

/// Its keys are in order by the type's contract ([`SortedPoint::is_sorted`]).
impl LinePoint for SortedPoint {
    fn unsigned_field(&self) -> Option<&str> {
        first_unsigned(self.fields.iter().map(|(k, v)| (k, v)))
    }
    fn encode_line(&self, out: &mut String) -> Result<(), String> {
        let (tags, fields) = (self.tags.iter().map(|(k, v)| (k, v)), self.fields.iter().map(|(k, v)| (k, v)));
        encode_entries(&self.measurement, tags, fields, self.time, out)
    }
}

/// The first unsigned field's key, of a point's owned fields (map or sorted list).
fn first_unsigned<'a>(fields: impl IntoIterator<Item = (&'a String, &'a FieldValue)>) -> Option<&'a str> {
    fields.into_iter().find(|(_, v)| matches!(v, FieldValue::Unsigned(_))).map(|(k, _)| k.as_str())
}

/// [`encode_parts`] over a point's owned tags and fields (map or sorted list).
fn encode_entries<'a>(
    measurement: &str,
    tags: impl IntoIterator<Item = (&'a String, &'a String)>,
    fields: impl IntoIterator<Item = (&'a String, &'a FieldValue)>,
    time: Timestamp,
    out: &mut String,
) -> Result<(), String> {
    let tags = tags.into_iter().map(|(k, v)| (k.as_str(), v.as_str()));
    let fields = fields.into_iter().map(|(k, v)| (k.as_str(), FieldRef::from(v)));
    encode_parts(measurement, tags, fields, time, out)
}

/// Encodes a batch, one line per point; fails on the first invalid point
/// (the error names its index).
pub fn encode_points(ps: &[Point]) -> Result<String, StoreError> {
    let mut out = String::with_capacity(64 * ps.len());
    for (i, p) in ps.iter().enumerate() {
        encode_point(p, &mut out).map_err(|e| match e {
            StoreError::Invalid(m) => StoreError::Invalid(format!("point {i}: {m}")),
            other => other,
        })?;
    }
    Ok(out)
}

/// Parses one line as [`encode_point`] writes it (an optional single trailing
/// `\n` is allowed). Strict: anything the encoder could not have produced is
/// an error, so `parse_line(encode(p)) == p` proves the encoding injective.
pub fn parse_line(line: &str) -> Result<Point, String> {
    let (p, rest) = parse_one(line)?;
    if rest.is_empty() { Ok(p) } else { Err(format!("trailing data after the line: {rest:?}")) }
}

/// Parses one line from the start of `input`, returning the point and the
/// text after its terminating `\n` (or the end of input).
fn parse_one(input: &str) -> Result<(Point, &str), String> {
    let mut cur = Cursor { chars: input.char_indices().peekable(), input };
    let measurement = cur.name(MEASUREMENT_SPECIALS, &[',', ' '], "measurement")?;
    let mut tags = BTreeMap::new();
    while cur.eat(',') {
        let k = cur.name(KEY_SPECIALS, &['='], "tag key")?;
        cur.expect('=', "after tag key")?;
        let v = cur.name(KEY_SPECIALS, &[',', ' '], "tag value")?;
        if tags.insert(k.clone(), v).is_some() {
            return Err(format!("duplicate tag key {k:?}"));
        }
    }
    cur.expect(' ', "before fields")?;
    let mut fields = BTreeMap::new();
    loop {
        let k = cur.name(KEY_SPECIALS, &['='], "field key")?;
        cur.expect('=', "after field key")?;
        let v = cur.field_value(&k)?;
        if fields.insert(k.clone(), v).is_some() {
            return Err(format!("duplicate field key {k:?}"));
        }
        if !cur.eat(',') {
            break;
        }
    }
    cur.expect(' ', "before timestamp")?;
    let ts = cur.take_while(|c| c == '-' || c.is_ascii_digit());
    // Reject forms `{}` never prints: "+1", "-0", leading zeros.
    let canonical = ts.parse::<i64>().ok().filter(|t| t.to_string() == ts);
    let time = canonical.ok_or_else(|| format!("bad timestamp {ts:?}"))?;
    let rest = match cur.chars.next() {
        None => "",
        Some((i, '\n')) => &input[i + 1..],
        Some((_, c)) => return Err(format!("unexpected {c:?} after timestamp")),
    };
    let p = Point { measurement, tags, fields, time };
    validate(&p)?;
    Ok((p, rest))
}

struct Cursor<'a> {
    chars: std::iter::Peekable<std::str::CharIndices<'a>>,
    input: &'a str,
}

impl Cursor<'_> {
    fn eat(&mut self, c: char) -> bool {
        self.chars.next_if(|&(_, x)| x == c).is_some()
    }

    fn expect(&mut self, c: char, ctx: &str) -> Result<(), String> {
        match self.chars.next() {
            Some((_, x)) if x == c => Ok(()),
            Some((i, x)) => Err(format!("expected {c:?} {ctx} at byte {i}, found {x:?}")),
            None => Err(format!("expected {c:?} {ctx}, found end of line")),
        }
    }

    fn take_while(&mut self, f: impl Fn(char) -> bool) -> String {
        let mut s = String::new();
        while let Some((_, c)) = self.chars.next_if(|&(_, c)| f(c)) {
            s.push(c);
        }
        s
    }

    /// Reads an escaped name up to (not including) an unescaped stop char.
    fn name(&mut self, specials: &[char], stops: &[char], what: &str) -> Result<String, String> {
        let mut s = String::new();
        while let Some(&(i, c)) = self.chars.peek() {
            if c == '\\' {
                let next = self.input[i + 1..].chars().next();
                if let Some(n) = next.filter(|n| specials.contains(n)) {
                    self.chars.next();
                    self.chars.next();
                    s.push(n);
                    continue;
                }
            } else if stops.contains(&c) {
                break;
            } else if specials.contains(&c) {
                return Err(format!("unescaped {c:?} in {what} {s:?}"));
            } else if c == '\n' || c == '\r' {
                return Err(format!("{what} {s:?} is cut by a line break"));
            }
            s.push(c);
            self.chars.next();
        }
        Ok(s)
    }

    fn field_value(&mut self, key: &str) -> Result<FieldValue, String> {
        if self.eat('"') {
            let mut s = String::new();
            loop {
                match self.chars.next() {
                    None => return Err(format!("unterminated string in field {key:?}")),
                    Some((_, '"')) => return Ok(FieldValue::Text(s)),
                    Some((_, '\\')) => match self.chars.next() {
                        Some((_, c @ ('"' | '\\'))) => s.push(c),
                        other => {
                            return Err(format!("bad escape {:?} in string field {key:?}", other.map(|(_, c)| c)));
                        }
                    },
                    Some((_, c)) => s.push(c),
                }
            }
        }
        let raw = self.take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '+'));
        let bad = || format!("bad value {raw:?} for field {key:?}");
        let value = if let Some(n) = raw.strip_suffix('i') {
            FieldValue::Integer(n.parse().map_err(|_| bad())?)
        } else if let Some(n) = raw.strip_suffix('u') {
            FieldValue::Unsigned(n.parse().map_err(|_| bad())?)
        } else if raw == "true" {
            FieldValue::Boolean(true)
        } else if raw == "false" {
            FieldValue::Boolean(false)
        } else if raw.starts_with(|c: char| c == '-' || c.is_ascii_digit())
            && raw.chars().all(|c| c.is_ascii_digit() || c == '-' || c == '.')
        {
            FieldValue::Float(raw.parse().map_err(|_| bad())?)
        } else {
            return Err(bad());
        };
        // Strict: only the exact text the encoder prints for this value.
        let mut again = String::new();
        match &value {
            FieldValue::Float(f) => write!(again, "{f}"),
            FieldValue::Integer(i) => write!(again, "{i}i"),
            FieldValue::Unsigned(u) => write!(again, "{u}u"),
            FieldValue::Boolean(b) => write!(again, "{b}"),
            FieldValue::Text(_) => unreachable!(),
        }
        .expect("writing to a String cannot fail");
        if again != raw {
            return Err(format!("non-canonical value {raw:?} for field {key:?} (expected {again:?})"));
        }
        Ok(value)
    }
}

/// Checks `p` as the encoder would (the parser's final check).
fn validate(p: &Point) -> Result<(), String> {
    let tags = p.tags.iter().map(|(k, v)| (k.as_str(), v.as_str()));
    let fields = p.fields.iter().map(|(k, v)| (k.as_str(), FieldRef::from(v)));
    encode_parts(&p.measurement, tags, fields, p.time, &mut String::new())
}

#[cfg(test)]
mod tests;
