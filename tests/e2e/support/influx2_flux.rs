//! The Flux subset of [`super`] (see there): a strict parser of the pipeline
//! the v2 backend emits, its evaluation over stored values, and InfluxDB 2's
//! annotated CSV encoding of the resulting tables.

use std::collections::BTreeMap;

use wattedge::store::FieldValue;

/// Stored values: (measurement, tags, field, time) → value.
pub type Values = BTreeMap<Key, FieldValue>;

/// (measurement, tags, field, time) of one stored value.
pub type Key = (String, BTreeMap<String, String>, String, i64);

/// The rows of one answer table.
pub type TableRows<'a> = Vec<(&'a Key, &'a FieldValue)>;

/// One comparison of a `filter` predicate.
#[derive(Debug, Clone, PartialEq)]
enum Cond {
    Measurement(String),
    Field(String),
    Tag(String, String),
}

/// One `filter`: all conditions joined by `and`, or all by `or`.
#[derive(Debug, Clone, PartialEq)]
struct Filter {
    any: bool,
    conds: Vec<Cond>,
}

/// A parsed pipeline.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub bucket: String,
    pub start: i64,
    pub stop: i64,
    filters: Vec<Filter>,
    sort_desc: Option<bool>,
    limit: Option<usize>,
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Str(String),
    Int(i64),
    Punct(&'static str),
}

const PUNCT: [&str; 12] = ["|>", "=>", "==", "(", ")", "[", "]", ",", ":", ".", "{", "}"];

fn tokens(text: &str) -> Result<Vec<Tok>, String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        if c.is_whitespace() {
            rest = &rest[c.len_utf8()..];
        } else if let Some(p) = PUNCT.iter().find(|p| rest.starts_with(**p)) {
            out.push(Tok::Punct(p));
            rest = &rest[p.len()..];
        } else if c == '"' {
            let (s, after) = string(&rest[1..])?;
            out.push(Tok::Str(s));
            rest = after;
        } else if c == '-' || c.is_ascii_digit() {
            let end = rest[1..].find(|c: char| !c.is_ascii_digit()).map_or(rest.len(), |i| i + 1);
            out.push(Tok::Int(rest[..end].parse().map_err(|e| format!("bad integer {:?}: {e}", &rest[..end]))?));
            rest = &rest[end..];
        } else if c.is_alphabetic() || c == '_' {
            let end = rest.find(|c: char| !(c.is_alphanumeric() || c == '_')).unwrap_or(rest.len());
            out.push(Tok::Ident(rest[..end].to_string()));
            rest = &rest[end..];
        } else {
            return Err(format!("unexpected character {c:?}"));
        }
    }
    Ok(out)
}

/// A string literal's body after the opening quote → (value, rest).
fn string(text: &str) -> Result<(String, &str), String> {
    let mut out = String::new();
    let mut chars = text.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Ok((out, &text[i + 1..])),
            '$' if text[i + 1..].starts_with('{') => return Err("string interpolation is not supported".into()),
            '\\' => match chars.next().map(|(_, c)| c) {
                Some('n') => out.push('\n'),
                Some('r') => out.push('\r'),
                Some('t') => out.push('\t'),
                Some(c @ ('\\' | '"' | '$')) => out.push(c),
                other => return Err(format!("invalid escape sequence \\{other:?}")),
            },
            c => out.push(c),
        }
    }
    Err("unterminated string literal".into())
}

struct Parser {
    toks: Vec<Tok>,
    at: usize,
}

impl Parser {
    fn next(&mut self) -> Result<Tok, String> {
        let t = self.toks.get(self.at).cloned().ok_or("unexpected end of script")?;
        self.at += 1;
        Ok(t)
    }

    fn expect(&mut self, want: &[&str]) -> Result<(), String> {
        for w in want {
            let t = self.next()?;
            let ok = match &t {
                Tok::Punct(p) => p == w,
                Tok::Ident(i) => i == w,
                _ => false,
            };
            if !ok {
                return Err(format!("expected {w:?}, found {t:?}"));
            }
        }
        Ok(())
    }

    fn str(&mut self) -> Result<String, String> {
        match self.next()? {
            Tok::Str(s) => Ok(s),
            t => Err(format!("expected a string, found {t:?}")),
        }
    }

    fn int(&mut self) -> Result<i64, String> {
        match self.next()? {
            Tok::Int(n) => Ok(n),
            t => Err(format!("expected an integer, found {t:?}")),
        }
    }

    fn cond(&mut self) -> Result<Cond, String> {
        self.expect(&["r"])?;
        let cond = match self.next()? {
            Tok::Punct(".") => match self.next()? {
                Tok::Ident(c) if c == "_measurement" || c == "_field" => {
                    self.expect(&["=="])?;
                    let v = self.str()?;
                    if c == "_field" { Cond::Field(v) } else { Cond::Measurement(v) }
                }
                t => return Err(format!("unsupported column {t:?}")),
            },
            Tok::Punct("[") => {
                let k = self.str()?;
                self.expect(&["]", "=="])?;
                Cond::Tag(k, self.str()?)
            }
            t => return Err(format!("unexpected {t:?} after r")),
        };
        Ok(cond)
    }

    fn filter(&mut self) -> Result<Filter, String> {
        self.expect(&["fn", ":", "(", "r", ")", "=>"])?;
        let mut filter = Filter { any: false, conds: vec![self.cond()?] };
        let mut joiner = None;
        while let Some(Tok::Ident(j)) = self.toks.get(self.at).cloned().filter(|t| *t != Tok::Punct(")")) {
            if (j != "and" && j != "or") || joiner.is_some_and(|p: String| p != j) {
                return Err(format!("unsupported operator {j:?} (one of and/or per filter)"));
            }
            self.at += 1;
            filter.any = j == "or";
            joiner = Some(j);
            filter.conds.push(self.cond()?);
        }
        Ok(filter)
    }

    fn stage(&mut self, plan: &mut Plan, name: &str) -> Result<(), String> {
        self.expect(&["("])?;
        match name {
            "range" if plan.filters.is_empty() => {
                self.expect(&["start", ":", "time", "(", "v", ":"])?;
                plan.start = self.int()?;
                self.expect(&[")", ",", "stop", ":", "time", "(", "v", ":"])?;
                plan.stop = self.int()?;
                self.expect(&[")"])?;
            }
            "filter" if plan.sort_desc.is_none() => plan.filters.push(self.filter()?),
            "sort" if plan.limit.is_none() => {
                self.expect(&["columns", ":", "["])?;
                if self.str()? != "_time" {
                    return Err("only sort(columns: [\"_time\"]) is supported".into());
                }
                self.expect(&["]", ",", "desc", ":"])?;
                plan.sort_desc = Some(match self.next()? {
                    Tok::Ident(b) if b == "true" || b == "false" => b == "true",
                    t => return Err(format!("expected a boolean, found {t:?}")),
                });
            }
            "limit" => {
                self.expect(&["n", ":"])?;
                plan.limit = Some(usize::try_from(self.int()?).map_err(|_| "negative limit")?);
            }
            other => return Err(format!("unsupported or misplaced stage {other:?}")),
        }
        self.expect(&[")"])
    }
}

impl Plan {
    /// Parses the script; any deviation from the subset is an error.
    pub fn parse(script: &str) -> Result<Plan, String> {
        let mut p = Parser { toks: tokens(script)?, at: 0 };
        p.expect(&["from", "(", "bucket", ":"])?;
        let bucket = p.str()?;
        p.expect(&[")", "|>", "range"])?;
        let mut plan = Plan { bucket, start: 0, stop: 0, filters: Vec::new(), sort_desc: None, limit: None };
        p.stage(&mut plan, "range")?;
        while p.at < p.toks.len() {
            p.expect(&["|>"])?;
            match p.next()? {
                Tok::Ident(name) => p.stage(&mut plan, &name)?,
                t => return Err(format!("expected a function call, found {t:?}")),
            }
        }
        Ok(plan)
    }

    fn keeps(&self, m: &str, tags: &BTreeMap<String, String>, field: &str) -> bool {
        self.filters.iter().all(|f| {
            let hit = |c: &Cond| match c {
                Cond::Measurement(v) => v == m,
                Cond::Field(v) => v == field,
                Cond::Tag(k, v) => tags.get(k) == Some(v),
            };
            if f.any { f.conds.iter().any(hit) } else { f.conds.iter().all(hit) }
        })
    }

    /// The tables (one per series and field, in group-key order) with their rows.
    pub fn run<'a>(&self, values: &'a Values) -> Vec<TableRows<'a>> {
        let mut tables: BTreeMap<_, Vec<_>> = BTreeMap::new();
        for (key, value) in values {
            let (m, tags, field, time) = key;
            if *time >= self.start && *time < self.stop && self.keeps(m, tags, field) {
                tables.entry((m, tags, field)).or_default().push((key, value));
            }
        }
        let mut out: Vec<_> = tables.into_values().collect();
        for rows in &mut out {
            if self.sort_desc == Some(true) {
                rows.reverse();
            }
            if let Some(n) = self.limit {
                rows.truncate(n);
            }
        }
        out.retain(|rows| !rows.is_empty());
        out
    }
}

/// InfluxDB 2's annotated CSV of `tables`.
pub fn csv(tables: &[TableRows<'_>], plan: &Plan) -> String {
    let mut out = String::new();
    let mut schema: Option<(Vec<String>, &str)> = None;
    for (id, rows) in tables.iter().enumerate() {
        let ((_, tags, _, _), first) = rows[0];
        let keys: Vec<String> = tags.keys().cloned().collect();
        let kind = super::value_type(first);
        if schema.as_ref() != Some(&(keys.clone(), kind)) {
            if schema.is_some() {
                out.push_str("\r\n");
            }
            let n = keys.len();
            line(
                &mut out,
                ["#datatype", "string", "long"]
                    .into_iter()
                    .map(String::from)
                    .chain(vec!["dateTime:RFC3339".to_string(); 3])
                    .chain([kind.to_string(), "string".into(), "string".into()])
                    .chain(vec!["string".to_string(); n]),
            );
            line(
                &mut out,
                ["#group", "false", "false", "true", "true", "false", "false", "true", "true"]
                    .into_iter()
                    .map(String::from)
                    .chain(vec!["true".to_string(); n]),
            );
            line(&mut out, ["#default", "_result"].into_iter().map(String::from).chain(vec![String::new(); 7 + n]));
            line(
                &mut out,
                ["", "result", "table", "_start", "_stop", "_time", "_value", "_field", "_measurement"]
                    .into_iter()
                    .map(String::from)
                    .chain(keys.iter().cloned()),
            );
            schema = Some((keys, kind));
        }
        for ((m, tags, field, time), value) in rows {
            let head =
                [String::new(), String::new(), id.to_string(), rfc3339(plan.start), rfc3339(plan.stop), rfc3339(*time)];
            line(
                &mut out,
                head.into_iter().chain([text(value), field.clone(), m.clone()]).chain(tags.values().cloned()),
            );
        }
    }
    out.push_str("\r\n");
    out
}

fn line(out: &mut String, cells: impl Iterator<Item = String>) {
    let cells: Vec<String> = cells.map(|c| quote(&c)).collect();
    out.push_str(&cells.join(","));
    out.push_str("\r\n");
}

/// Go's `encoding/csv` quoting.
fn quote(cell: &str) -> String {
    if cell.contains([',', '"', '\r', '\n']) || cell.starts_with(char::is_whitespace) {
        format!("\"{}\"", cell.replace('"', "\"\""))
    } else {
        cell.to_string()
    }
}

fn text(value: &FieldValue) -> String {
    match value {
        FieldValue::Float(f) => f.to_string(),
        FieldValue::Integer(i) => i.to_string(),
        FieldValue::Unsigned(u) => u.to_string(),
        FieldValue::Boolean(b) => b.to_string(),
        FieldValue::Text(s) => s.clone(),
    }
}

/// Go's RFC3339Nano: UTC, trailing zeros of the fraction trimmed.
fn rfc3339(ns: i64) -> String {
    let t = chrono::DateTime::from_timestamp_nanos(ns);
    let base = t.format("%Y-%m-%dT%H:%M:%S").to_string();
    let frac = format!("{:09}", t.timestamp_subsec_nanos());
    let frac = frac.trim_end_matches('0');
    if frac.is_empty() { format!("{base}Z") } else { format!("{base}.{frac}Z") }
}
