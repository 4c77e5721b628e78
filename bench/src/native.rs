//! The correlator's cycle done natively in Rust: the baseline its events/s
//! are a share of. The same queries on the same seeded store (through the
//! host's embedded store, in-process, as the guest's host calls end up), the
//! guest's own matching code (`guests/correlator/src/matching.rs`, included
//! by path: it has no dependencies and no host calls), and the same batched
//! write of the correlations. Left out, so the baseline is if anything
//! faster than the guest's work: the guest's `state` load and save of its
//! processed set, and its counters.

use std::borrow::Cow;
use std::path::Path;
use std::time::Instant;

use wattedge::store::embedded::EmbeddedStore;
use wattedge::store::line_protocol::FieldRef;
use wattedge::store::table::{Cell, Table, TableBuilder};
use wattedge::store::{Query, Selector, now_ns};

#[path = "../../guests/correlator/src/matching.rs"]
#[allow(dead_code)] // the guest's step rule serves the other preset
mod matching;

use matching::{Outcome, Reading};

const SECOND: i64 = 1_000_000_000;
/// The guest's HomeIQ defaults (`offset`, `padding`) and the config the
/// harness gives it (`min_delta_w` default).
const OFFSET: i64 = 5 * SECOND;
const PADDING: i64 = 30 * SECOND;
const MIN_DELTA_W: f64 = 10.0;
const OUTPUT: &str = "event_energy_correlation";

/// What one native cycle did.
pub struct NativeCycle {
    pub seconds: f64,
    pub written: u32,
}

/// One event row of the answer.
struct Event<'t> {
    time: i64,
    entity_id: Cow<'t, str>,
    domain: Cow<'t, str>,
    state: Cow<'t, str>,
    previous_state: Cow<'t, str>,
}

/// The text of tag or text field `key` in `row`.
fn lookup<'t>(table: &'t Table, row: usize, key: &str) -> Option<Cow<'t, str>> {
    let text = |i: u32| table.strings.get(i as usize).map(|s| Cow::Borrowed(s.as_str()));
    if let Some(column) = table.tags.iter().find(|c| c.key == key) {
        return column.values.get(row).copied().flatten().and_then(text);
    }
    let column = table.fields.iter().find(|c| c.key == key)?;
    match column.values.get(row).copied().flatten()? {
        Cell::Text(i) => text(i),
        _ => None,
    }
}

/// One HomeIQ cycle over the store at `path` (the guest's `correlate` with
/// an empty processed set): events query, one power query, matching, one write.
pub fn homeiq_cycle(path: &Path, lookback_ns: i64, max_events: u32) -> anyhow::Result<NativeCycle> {
    let store = EmbeddedStore::open(path, None)?;
    let began = Instant::now();
    let now = now_ns();
    let table = store.query_table(&Query {
        measurement: "home_assistant_events".into(),
        fields: vec!["state_value".into(), "previous_state".into()],
        start: Some(now - lookback_ns),
        end: Some(now),
        select: Selector::All,
        descending: true,
        limit: Some(max_events),
        ..Query::default()
    })?;
    let mut events: Vec<Event> = (0..table.times.len())
        .filter_map(|row| {
            let entity_id = lookup(&table, row, "entity_id").filter(|e| !e.is_empty())?;
            Some(Event {
                time: table.times[row],
                domain: lookup(&table, row, "domain").unwrap_or_default(),
                state: lookup(&table, row, "state_value").unwrap_or_default(),
                previous_state: lookup(&table, row, "previous_state").unwrap_or_default(),
                entity_id,
            })
        })
        .collect();
    events.sort_by(|a, b| (a.time, &a.entity_id).cmp(&(b.time, &b.entity_id)));
    events.dedup_by(|a, b| a.time == b.time && a.entity_id == b.entity_id);
    let (Some(first), Some(last)) = (events.first(), events.last()) else {
        anyhow::bail!("the native cycle found no events");
    };
    let reach = OFFSET + PADDING;
    let power = store.query_floats(
        &Query {
            measurement: "smart_meter".into(),
            start: Some(first.time - reach),
            end: Some(last.time + reach + 1),
            ..Query::default()
        },
        "total_power_w",
    )?;
    let mut readings: Vec<Reading> =
        power.times.iter().zip(&power.values).map(|(&time, &watts)| Reading { time, watts }).collect();
    readings.sort_by_key(|r| r.time);
    let mut out = TableBuilder::default();
    for event in &events {
        if let Outcome::Correlated(s) = matching::evaluate(&readings, event.time, OFFSET, PADDING, MIN_DELTA_W, now) {
            let tags = [
                ("entity_id", &event.entity_id),
                ("domain", &event.domain),
                ("state", &event.state),
                ("previous_state", &event.previous_state),
            ];
            let fields = [
                ("power_before_w", s.before_w),
                ("power_after_w", s.after_w),
                ("power_delta_w", s.delta_w),
                ("power_delta_pct", s.delta_pct),
            ];
            out.push(
                event.time,
                tags.into_iter().filter(|(_, v)| !v.is_empty()).map(|(k, v)| (k, v.as_ref())),
                fields.map(|(k, w)| (k, FieldRef::Float(w))),
            );
        }
    }
    let table = out.finish();
    let view = table.view(OUTPUT).map_err(|e| anyhow::anyhow!("correlation table: {e}"))?;
    let written = store.write_table(&view)?;
    Ok(NativeCycle { seconds: began.elapsed().as_secs_f64(), written })
}
