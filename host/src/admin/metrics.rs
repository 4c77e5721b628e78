//! Prometheus text exposition (format 0.0.4) for the admin `/metrics` route.

use std::fmt::{self, Write};

use super::{GuestSnapshot, GuestState};

pub(super) const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A sample value; integers stay exact, floats use Prometheus spellings.
enum Num {
    Int(u64),
    Float(f64),
}

impl fmt::Display for Num {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Num::Int(v) => write!(f, "{v}"),
            Num::Float(v) if v.is_nan() => f.write_str("NaN"),
            Num::Float(v) if v.is_infinite() => f.write_str(if v > 0.0 { "+Inf" } else { "-Inf" }),
            Num::Float(v) => write!(f, "{v}"),
        }
    }
}

/// Rendered label set (without braces) and value.
type Sample = (String, Num);

/// A family with one sample per guest (guests yielding `None` are skipped).
struct PerGuest {
    name: &'static str,
    kind: &'static str,
    help: &'static str,
    value: fn(&GuestSnapshot) -> Option<Num>,
}

const PER_GUEST: [PerGuest; 6] = [
    PerGuest {
        name: "wattedge_guest_runs_total",
        kind: "counter",
        help: "Runs of the guest.",
        value: |g| Some(Num::Int(g.runs)),
    },
    PerGuest {
        name: "wattedge_guest_failures_total",
        kind: "counter",
        help: "Runs that did not succeed.",
        value: |g| Some(Num::Int(g.failures)),
    },
    PerGuest {
        name: "wattedge_guest_points_written_total",
        kind: "counter",
        help: "Data points written by the guest.",
        value: |g| Some(Num::Int(g.points_written)),
    },
    PerGuest {
        name: "wattedge_guest_run_seconds_total",
        kind: "counter",
        help: "Wall-clock seconds spent in runs.",
        value: |g| Some(Num::Float(g.run_seconds_total)),
    },
    PerGuest {
        name: "wattedge_guest_last_run_seconds",
        kind: "gauge",
        help: "Duration of the last run in seconds.",
        value: |g| g.last_run_seconds.map(Num::Float),
    },
    PerGuest {
        name: "wattedge_guest_consecutive_failures",
        kind: "gauge",
        help: "Failed runs since the last success.",
        value: |g| Some(Num::Int(g.consecutive_failures)),
    },
];

/// Renders every guest metric family, then appends `extra` verbatim.
pub(super) fn render(guests: &[GuestSnapshot], extra: &str) -> String {
    let mut out = String::new();
    for f in &PER_GUEST {
        let samples = guests.iter().filter_map(|g| Some((guest_label(g), (f.value)(g)?)));
        family(&mut out, f.name, f.kind, f.help, samples);
    }
    let states = guests.iter().flat_map(state_samples);
    family(&mut out, "wattedge_guest_state", "gauge", "1 for the current guest state, 0 otherwise.", states);
    let counters = guests.iter().flat_map(counter_samples);
    family(&mut out, "wattedge_guest_counter", "gauge", "Numeric counters reported by the guest.", counters);
    if !extra.is_empty() {
        out.push_str(extra);
        if !extra.ends_with('\n') {
            out.push('\n');
        }
    }
    out
}

fn family(out: &mut String, name: &str, kind: &str, help: &str, samples: impl Iterator<Item = Sample>) {
    // Writing into a String cannot fail.
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    for (labels, value) in samples {
        let _ = writeln!(out, "{name}{{{labels}}} {value}");
    }
}

fn guest_label(g: &GuestSnapshot) -> String {
    format!("guest=\"{}\"", escape_label(&g.name))
}

fn state_samples(g: &GuestSnapshot) -> impl Iterator<Item = Sample> + '_ {
    GuestState::ALL.into_iter().map(move |state| {
        let labels = format!("{},state=\"{}\"", guest_label(g), state.as_str());
        (labels, Num::Int(u64::from(state == g.state)))
    })
}

fn counter_samples(g: &GuestSnapshot) -> impl Iterator<Item = Sample> + '_ {
    g.counters.iter().filter_map(move |(name, value)| {
        let number = value.as_number()?;
        let num = number.as_u64().map(Num::Int).or_else(|| number.as_f64().map(Num::Float))?;
        Some((format!("{},name=\"{}\"", guest_label(g), escape_label(name)), num))
    })
}

/// Escapes a label value: backslash, double quote and newline.
pub(super) fn escape_label(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}
