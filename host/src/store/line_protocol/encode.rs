//! The line-protocol encoder proper, written for the write path's hot loop:
//! one pass over a point that checks and writes at once, no allocation per
//! point (error messages are only built when there is an error), names
//! copied whole unless they contain a character that needs escaping, and
//! integers (and integral floats) printed without `core::fmt`.
//!
//! It works on borrowed parts ([`encode_parts`]) so that both a stored
//! [`Point`](crate::store::Point) and a guest's WIT point can be encoded
//! without first being converted into the other: that conversion (two
//! `BTreeMap`s and their strings per point) used to cost more than the
//! encoding itself.

use std::fmt::Write as _;

use super::{MAX_TIME, MIN_TIME};
use crate::store::FieldValue;

/// A field value borrowed from a [`FieldValue`] or from a guest's WIT
/// value, so encoding never copies a string.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum FieldRef<'a> {
    Float(f64),
    Integer(i64),
    Unsigned(u64),
    Boolean(bool),
    Text(&'a str),
}

impl<'a> From<&'a FieldValue> for FieldRef<'a> {
    fn from(v: &'a FieldValue) -> FieldRef<'a> {
        match v {
            FieldValue::Float(f) => FieldRef::Float(*f),
            FieldValue::Integer(i) => FieldRef::Integer(*i),
            FieldValue::Unsigned(u) => FieldRef::Unsigned(*u),
            FieldValue::Boolean(b) => FieldRef::Boolean(*b),
            FieldValue::Text(s) => FieldRef::Text(s),
        }
    }
}

impl FieldRef<'_> {
    /// The owned value.
    pub fn into_value(self) -> FieldValue {
        match self {
            FieldRef::Float(f) => FieldValue::Float(f),
            FieldRef::Integer(i) => FieldValue::Integer(i),
            FieldRef::Unsigned(u) => FieldValue::Unsigned(u),
            FieldRef::Boolean(b) => FieldValue::Boolean(b),
            FieldRef::Text(s) => FieldValue::Text(s.to_owned()),
        }
    }
}

/// Appends one point, given as parts, as one `\n`-terminated line to `out`.
///
/// Tags and fields must come in strictly ascending key order (as a
/// `BTreeMap` yields them): the caller guarantees it, so that a series
/// always encodes the same way and no key appears twice. The checks and
/// their messages are those listed in the [module docs](super). On error
/// `out` is left as it was.
pub fn encode_parts<'a>(
    measurement: &str,
    tags: impl IntoIterator<Item = (&'a str, &'a str)>,
    fields: impl IntoIterator<Item = (&'a str, FieldRef<'a>)>,
    time: i64,
    out: &mut String,
) -> Result<(), String> {
    let start = out.len();
    let written = write_parts(measurement, tags, fields, time, out);
    if written.is_err() {
        out.truncate(start);
    }
    written
}

fn write_parts<'a>(
    measurement: &str,
    tags: impl IntoIterator<Item = (&'a str, &'a str)>,
    fields: impl IntoIterator<Item = (&'a str, FieldRef<'a>)>,
    time: i64,
    out: &mut String,
) -> Result<(), String> {
    check_name(measurement, || "measurement".into())?;
    if measurement.starts_with('#') {
        return Err(format!("measurement {measurement:?} starts with '#', which makes the line a comment"));
    }
    escape(measurement, |b| matches!(b, b',' | b' '), out);
    for (k, v) in tags {
        check_name(k, || "tag key".into())?;
        if v.is_empty() {
            return Err(format!("tag {k:?} has an empty value (InfluxDB would drop the tag)"));
        }
        check_name(v, || format!("value of tag {k:?}"))?;
        out.push(',');
        escape(k, is_key_special, out);
        out.push('=');
        escape(v, is_key_special, out);
    }
    let mut sep = ' ';
    for (k, v) in fields {
        check_name(k, || "field key".into())?;
        if let FieldRef::Float(f) = v
            && !f.is_finite()
        {
            return Err(format!("field {k:?} is {f}, which line protocol cannot represent"));
        }
        out.push(sep);
        sep = ',';
        escape(k, is_key_special, out);
        out.push('=');
        push_value(v, out);
    }
    if sep == ' ' {
        return Err(format!("measurement {measurement:?} has no fields"));
    }
    if !(MIN_TIME..=MAX_TIME).contains(&time) {
        return Err(format!("timestamp {time} is outside InfluxDB's range {MIN_TIME}..={MAX_TIME}"));
    }
    out.push(' ');
    push_i64(time, out);
    out.push('\n');
    Ok(())
}

fn is_key_special(b: u8) -> bool {
    matches!(b, b',' | b'=' | b' ')
}

/// Checks a name; `what` (which part of the point it is) is only built
/// for the error message.
fn check_name(s: &str, what: impl FnOnce() -> String) -> Result<(), String> {
    if !s.is_empty() && !s.bytes().any(|b| matches!(b, b'\n' | b'\r' | b'\\')) {
        return Ok(()); // the common case: nothing to look at closely
    }
    let what = what();
    if s.is_empty() {
        return Err(format!("{what} is empty"));
    }
    if s.contains(['\n', '\r']) {
        return Err(format!("{what} {s:?} contains a line break, which line protocol cannot carry"));
    }
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.peek() {
                None => {
                    return Err(format!("{what} {s:?} ends with a backslash, which would escape the delimiter"));
                }
                Some(n @ ('\\' | ',' | '=' | ' ')) => {
                    return Err(format!(
                        "{what} {s:?} has a backslash before {n:?}, which InfluxDB versions read differently"
                    ));
                }
                Some(_) => {}
            }
        }
    }
    Ok(())
}

/// Appends `s` with a backslash before each ASCII byte that `special`
/// selects; copied whole when there is none.
fn escape(s: &str, special: impl Fn(u8) -> bool, out: &mut String) {
    if !s.bytes().any(&special) {
        out.push_str(s);
        return;
    }
    for c in s.chars() {
        if c.is_ascii() && special(c as u8) {
            out.push('\\');
        }
        out.push(c);
    }
}

fn push_value(v: FieldRef<'_>, out: &mut String) {
    match v {
        FieldRef::Float(f) => push_f64(f, out),
        FieldRef::Integer(i) => {
            push_i64(i, out);
            out.push('i');
        }
        FieldRef::Unsigned(u) => {
            push_u64(u, out);
            out.push('u');
        }
        FieldRef::Boolean(b) => out.push_str(if b { "true" } else { "false" }),
        FieldRef::Text(s) => {
            out.push('"');
            escape(s, |b| matches!(b, b'"' | b'\\'), out);
            out.push('"');
        }
    }
}

/// `{f}` (the shortest text that round-trips, never exponent notation, a
/// float to InfluxDB). An integral value below 10^15 is exactly an `i64`
/// and `{f}` prints exactly its digits, so it is printed as one; `-0.0`
/// keeps its sign through `{f}`.
fn push_f64(f: f64, out: &mut String) {
    if f.fract() == 0.0 && f.abs() < 1e15 && !(f == 0.0 && f.is_sign_negative()) {
        push_i64(f as i64, out);
    } else {
        write!(out, "{f}").expect("writing to a String cannot fail");
    }
}

fn push_i64(v: i64, out: &mut String) {
    if v < 0 {
        out.push('-');
    }
    push_u64(v.unsigned_abs(), out);
}

fn push_u64(mut v: u64, out: &mut String) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    out.push_str(std::str::from_utf8(&digits[at..]).expect("ASCII digits"));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_print_exactly_as_core_fmt_does() {
        let floats = [0.0, -0.0, 1.0, -1.0, 5.0, 0.5, 1e14, 999_999_999_999_999.0, 1e15, 1e16, -1e15, 2f64.powi(53)];
        for f in floats.into_iter().chain((0..2000).map(|k| k as f64 * 37.0 - 9000.0)) {
            let mut out = String::new();
            push_f64(f, &mut out);
            assert_eq!(out, format!("{f}"), "{f:e}");
        }
        for i in [0, 1, -1, 9, 10, 99, 100, i64::MAX, i64::MIN, 1_700_000_000_123_456_789] {
            let mut out = String::new();
            push_i64(i, &mut out);
            assert_eq!(out, i.to_string());
        }
        let mut out = String::new();
        push_u64(u64::MAX, &mut out);
        assert_eq!(out, u64::MAX.to_string());
    }

    #[test]
    fn an_error_leaves_the_output_as_it_was() {
        let mut out = String::from("kept\n");
        let fields = [("v", FieldRef::Float(1.0)), ("w", FieldRef::Float(f64::NAN))];
        let err = encode_parts("m", [("k", "v")], fields, 1, &mut out).unwrap_err();
        assert_eq!(out, "kept\n");
        assert!(err.contains("\"w\" is NaN"), "{err}");
    }
}
