//! The guests' families of the admin `/metrics` route (runs, failures,
//! state, the guest's own counters), written with [`crate::metrics::Writer`];
//! the other subsystems' families come from [`super::AdminBackend::extra_metrics`].

use crate::metrics::{Value, Writer};

use super::{GuestSnapshot, GuestState};

pub(super) const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A family with one sample per guest (guests yielding `None` are skipped).
struct PerGuest {
    name: &'static str,
    counter: bool,
    help: &'static str,
    value: fn(&GuestSnapshot) -> Option<Value>,
}

const PER_GUEST: [PerGuest; 6] = [
    PerGuest {
        name: "wattedge_guest_runs_total",
        counter: true,
        help: "Runs of the guest.",
        value: |g| Some(Value::Int(g.runs)),
    },
    PerGuest {
        name: "wattedge_guest_failures_total",
        counter: true,
        help: "Runs that did not succeed.",
        value: |g| Some(Value::Int(g.failures)),
    },
    PerGuest {
        name: "wattedge_guest_points_written_total",
        counter: true,
        help: "Data points written by the guest.",
        value: |g| Some(Value::Int(g.points_written)),
    },
    PerGuest {
        name: "wattedge_guest_run_seconds_total",
        counter: true,
        help: "Wall-clock seconds spent in runs.",
        value: |g| Some(Value::Float(g.run_seconds_total)),
    },
    PerGuest {
        name: "wattedge_guest_last_run_seconds",
        counter: false,
        help: "Duration of the last run in seconds.",
        value: |g| g.last_run_seconds.map(Value::Float),
    },
    PerGuest {
        name: "wattedge_guest_consecutive_failures",
        counter: false,
        help: "Failed runs since the last success.",
        value: |g| Some(Value::Int(g.consecutive_failures)),
    },
];

/// Renders every guest metric family, then appends `extra` (the other
/// subsystems' text, written with the same writer) verbatim.
pub(super) fn render(guests: &[GuestSnapshot], extra: &str) -> String {
    let mut w = Writer::default();
    for f in &PER_GUEST {
        let mut family = if f.counter { w.counter(f.name, f.help) } else { w.gauge(f.name, f.help) };
        for g in guests {
            if let Some(value) = (f.value)(g) {
                family.sample(&[("guest", &g.name)], value);
            }
        }
    }
    let mut states = w.gauge("wattedge_guest_state", "1 for the current guest state, 0 otherwise.");
    for g in guests {
        for state in GuestState::ALL {
            states.sample(&[("guest", &g.name), ("state", state.as_str())], state == g.state);
        }
    }
    let mut counters = w.gauge("wattedge_guest_counter", "Numeric counters reported by the guest.");
    for g in guests {
        for (name, value) in &g.counters {
            if let Some(value) = counter_value(value) {
                counters.sample(&[("guest", &g.name), ("name", name)], value);
            }
        }
    }
    let mut out = w.finish();
    if !extra.is_empty() {
        out.push_str(extra);
        if !extra.ends_with('\n') {
            out.push('\n');
        }
    }
    out
}

/// A guest counter as a sample value; `None` for one that is not a number.
fn counter_value(value: &serde_json::Value) -> Option<Value> {
    let number = value.as_number()?;
    number.as_u64().map(Value::Int).or_else(|| number.as_f64().map(Value::Float))
}
