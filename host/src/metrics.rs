//! The one Prometheus text writer (exposition format 0.0.4): every
//! `/metrics` line the host serves, whichever layer produces it (guests'
//! runs in `admin`, per-guest store and HTTP counters in `supervisor`, the
//! store's status and counters in `store`), is written through [`Writer`],
//! so `# HELP`/`# TYPE` headers, label escaping and number spellings are
//! done once, here.
//!
//! `w.counter("wattedge_guest_runs_total", "Runs of the guest.").sample(&[("guest", "a")], 3u64)`
//! writes (the tests below check it):
//!
//! ```text
//! # HELP wattedge_guest_runs_total Runs of the guest.
//! # TYPE wattedge_guest_runs_total counter
//! wattedge_guest_runs_total{guest="a"} 3
//! ```

use std::fmt::{self, Write as _};

/// A sample value: integers stay exact, floats use Prometheus' spellings
/// (`NaN`, `+Inf`, `-Inf`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value {
    Int(u64),
    Float(f64),
}

impl From<u64> for Value {
    fn from(v: u64) -> Value {
        Value::Int(v)
    }
}

impl From<f64> for Value {
    fn from(v: f64) -> Value {
        Value::Float(v)
    }
}

/// `true` is 1, `false` 0 (an "up" gauge, a state indicator).
impl From<bool> for Value {
    fn from(v: bool) -> Value {
        Value::Int(u64::from(v))
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Value::Int(v) => write!(f, "{v}"),
            Value::Float(v) if v.is_nan() => f.write_str("NaN"),
            Value::Float(v) if v.is_infinite() => f.write_str(if v > 0.0 { "+Inf" } else { "-Inf" }),
            Value::Float(v) => write!(f, "{v}"),
        }
    }
}

/// Prometheus text being written; [`finish`](Writer::finish) hands it over.
#[derive(Debug, Default)]
pub struct Writer {
    out: String,
}

impl Writer {
    /// Starts a counter family: writes its `# HELP` and `# TYPE` lines.
    pub fn counter<'w, 'n>(&'w mut self, name: &'n str, help: &str) -> Family<'w, 'n> {
        self.family(name, "counter", help)
    }

    /// Starts a gauge family: writes its `# HELP` and `# TYPE` lines.
    pub fn gauge<'w, 'n>(&'w mut self, name: &'n str, help: &str) -> Family<'w, 'n> {
        self.family(name, "gauge", help)
    }

    fn family<'w, 'n>(&'w mut self, name: &'n str, kind: &str, help: &str) -> Family<'w, 'n> {
        self.out.push_str("# HELP ");
        self.out.push_str(name);
        self.out.push(' ');
        escape(help, false, &mut self.out);
        // Writing into a String cannot fail.
        let _ = writeln!(self.out, "\n# TYPE {name} {kind}");
        Family { out: &mut self.out, name }
    }

    /// The text written so far.
    pub fn finish(self) -> String {
        self.out
    }
}

/// One metric family being written: its samples follow its header.
pub struct Family<'w, 'n> {
    out: &'w mut String,
    name: &'n str,
}

impl Family<'_, '_> {
    /// Writes one sample with `labels` (name, value; the values are escaped,
    /// the names are the caller's constants).
    pub fn sample(&mut self, labels: &[(&str, &str)], value: impl Into<Value>) -> &mut Self {
        self.out.push_str(self.name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (name, value)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                self.out.push_str(name);
                self.out.push_str("=\"");
                escape(value, true, self.out);
                self.out.push('"');
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {}", value.into());
        self
    }

    /// Writes the family's one sample, without labels.
    pub fn value(&mut self, value: impl Into<Value>) -> &mut Self {
        self.sample(&[], value)
    }
}

/// `value` escaped as a label value (backslash, double quote, newline);
/// the writer escapes its labels itself, tests check the rule alone.
#[cfg(test)]
pub fn escape_label(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    escape(value, true, &mut out);
    out
}

/// Escapes as the exposition format requires: backslash and newline
/// everywhere, and the double quote in label values.
fn escape(text: &str, label_value: bool, out: &mut String) {
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '"' if label_value => out.push_str("\\\""),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_family_writes_its_header_once_then_each_sample() {
        let mut w = Writer::default();
        w.gauge("wattedge_guest_state", "1 for the current state.")
            .sample(&[("guest", "a"), ("state", "ok")], true)
            .sample(&[("guest", "a"), ("state", "failed")], false);
        w.counter("wattedge_outbox_forwarded_total", "Points delivered.").value(12u64);
        assert_eq!(
            w.finish(),
            "# HELP wattedge_guest_state 1 for the current state.\n\
             # TYPE wattedge_guest_state gauge\n\
             wattedge_guest_state{guest=\"a\",state=\"ok\"} 1\n\
             wattedge_guest_state{guest=\"a\",state=\"failed\"} 0\n\
             # HELP wattedge_outbox_forwarded_total Points delivered.\n\
             # TYPE wattedge_outbox_forwarded_total counter\n\
             wattedge_outbox_forwarded_total 12\n"
        );
    }

    #[test]
    fn label_values_escape_backslash_quote_and_newline() {
        let mut w = Writer::default();
        w.gauge("m", "h").sample(&[("name", "a\\b\"c\nd")], 1u64);
        assert!(w.finish().ends_with("m{name=\"a\\\\b\\\"c\\nd\"} 1\n"));
    }

    #[test]
    fn help_text_escapes_backslash_and_newline_but_not_quotes() {
        let mut w = Writer::default();
        w.gauge("m", "say \"hi\"\\\nnext");
        assert_eq!(w.finish(), "# HELP m say \"hi\"\\\\\\nnext\n# TYPE m gauge\n");
    }

    #[test]
    fn floats_use_prometheus_spellings_and_integers_stay_exact() {
        let shown = |v: Value| v.to_string();
        assert_eq!(shown(Value::Float(f64::NAN)), "NaN");
        assert_eq!(shown(Value::Float(f64::INFINITY)), "+Inf");
        assert_eq!(shown(Value::Float(f64::NEG_INFINITY)), "-Inf");
        assert_eq!(shown(Value::Float(0.25)), "0.25");
        assert_eq!(shown(Value::Int(u64::MAX)), "18446744073709551615");
    }
}
