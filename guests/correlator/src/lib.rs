//! The `correlator` guest: which Home Assistant state change moved the meter?
//!
//! Every cycle it reads recent state changes (`home_assistant_events`) and
//! smart-meter power (`smart_meter`) from the time-series store, takes the
//! reading before the event nearest to `event - offset` and the one at or
//! after it nearest to `event + offset` (each within `padding`), and writes
//! an `event_energy_correlation` point for each step
//! of at least `min_delta_w`. It replaces the Python "energy-correlator".
//!
//! Cost per run is bounded: exactly one events query and at most one power
//! query (covering all events at once), then one batched write. All three
//! move columns, not rows: the events and the correlations as tables
//! (`query-table`, `write-table`: each distinct entity id or state crosses
//! the component boundary once), the readings through `query-floats`.
//!
//! Exactly-once: handled events (written, or judged below the threshold) are
//! remembered in guest `state` ([`processed`]); events whose readings are not
//! in yet stay pending and are retried while they are inside `lookback`.
//! Points are written before the state is saved, so a crash in between only
//! rewrites identical points (same series and time), which InfluxDB and the
//! embedded store overwrite.

pub mod matching;
pub mod processed;
pub mod settings;

use wattedge_guest::influx::{self, Cell, Selector, Table};
use wattedge_guest::table::TableBuilder;
use wattedge_guest::{
    Guest, GuestError, InfluxQuery, Slot, Summary, Trigger, clock, influx_error_text, report, state, state_error_text,
};

use matching::{Outcome, Reading, Step};
use processed::Processed;
use settings::{Event, Settings, event_from_row, readings_from_series};

static SETTINGS: Slot<Settings> = Slot::new();

/// Counter names shown in `/guests/correlator` and `/metrics`.
pub mod counters {
    /// Events judged (written or below the threshold), in all.
    pub const EVENTS: &str = "total_events_processed";
    /// Steps of at least `min_delta_w` found, in all.
    pub const FOUND: &str = "correlations_found";
    /// Correlation points accepted by `influx.write`, in all.
    pub const WRITTEN: &str = "correlations_written";
    /// Failed queries, writes and state saves, in all.
    pub const ERRORS: &str = "errors";
    /// Events of the last run still waiting for readings.
    pub const PENDING: &str = "events_pending";
    /// `found / events * 100`.
    pub const CORRELATION_RATE: &str = "correlation_rate_pct";
    /// `written / found * 100`.
    pub const WRITE_SUCCESS_RATE: &str = "write_success_rate_pct";
}

/// Tags of an output point (an empty value is left out).
pub const OUTPUT_TAGS: [&str; 4] = ["entity_id", "domain", "state", "previous_state"];
/// Fields of an output point.
pub const OUTPUT_FIELDS: [&str; 4] = ["power_before_w", "power_after_w", "power_delta_w", "power_delta_pct"];

/// An empty table of output points.
pub fn correlation_table() -> TableBuilder {
    TableBuilder::new(&OUTPUT_TAGS, &OUTPUT_FIELDS)
}

/// Appends the output point for `event` with `step`.
pub fn push_correlation(table: &mut TableBuilder, event: &Event<'_>, step: &Step) {
    let tags = [&event.entity_id, &event.domain, &event.state, &event.previous_state].map(|v| Some(v.as_ref()));
    let fields = [step.before_w, step.after_w, step.delta_w, step.delta_pct].map(|w| Some(Cell::Float(w)));
    table.push(event.time, &tags, &fields);
}

/// Records a failure: counts it, reports `degraded`, returns the error.
fn fail(error: GuestError) -> GuestError {
    report::inc(counters::ERRORS);
    let text = match &error {
        GuestError::Config(m)
        | GuestError::Credentials(m)
        | GuestError::Upstream(m)
        | GuestError::Store(m)
        | GuestError::Internal(m) => m.clone(),
    };
    wattedge_guest::log_warn(&text);
    report::degraded(&text);
    error
}

fn query_table(q: &InfluxQuery) -> Result<Table, GuestError> {
    influx::query_table(q)
        .map_err(|e| fail(GuestError::Store(format!("querying {}: {}", q.measurement, influx_error_text(&e)))))
}

/// The numeric values of `field` in `q`'s rows, as columns: a block copy
/// across the component boundary instead of a row, a field and a string
/// allocation per reading.
fn query_floats(q: &InfluxQuery, field: &str) -> Result<influx::FloatSeries, GuestError> {
    influx::query_floats(q, field)
        .map_err(|e| fail(GuestError::Store(format!("querying {} {field}: {}", q.measurement, influx_error_text(&e)))))
}

/// Sets the two rate gauges from the running totals.
fn update_rates() {
    let events = report::count_of(counters::EVENTS);
    let found = report::count_of(counters::FOUND);
    let written = report::count_of(counters::WRITTEN);
    if events > 0 {
        report::gauge(counters::CORRELATION_RATE, matching::round3(found as f64 / events as f64 * 100.0));
    }
    if found > 0 {
        report::gauge(counters::WRITE_SUCCESS_RATE, matching::round3(written as f64 / found as f64 * 100.0));
    }
}

/// Saves the processed set; `unwritten_from` is the oldest event whose point
/// is still owed (`i64::MAX` when none), which the set must not forget.
fn save(done: &mut Processed, cutoff: i64, unwritten_from: i64) -> Result<(), GuestError> {
    done.prune(cutoff, processed::MAX_ENTRIES, unwritten_from);
    state::set(processed::STATE_KEY, &done.encode())
        .map_err(|e| fail(GuestError::Internal(format!("saving processed events: {}", state_error_text(&e)))))
}

fn correlate(s: &Settings, now: i64) -> Result<Summary, GuestError> {
    let window_start = now.saturating_sub(s.lookback);
    // Keep keys for a further lookback (at least a minute) so a run whose
    // "now" lags a previous one (a late scheduled trigger) still sees them.
    let cutoff = window_start.saturating_sub(s.lookback.max(60 * clock::NANOS_PER_SEC));
    let mut done = state::get(processed::STATE_KEY).map(|b| Processed::decode(&b)).unwrap_or_default();
    let table = query_events(s, window_start, now)?;
    let events = new_events(&table, s, &done);
    let (Some(first), Some(last)) = (events.first(), events.last()) else {
        save(&mut done, cutoff, i64::MAX)?;
        report::set_count(counters::PENDING, 0);
        update_rates();
        report::ok();
        return Ok(Summary { points_written: 0, detail: Some("no new events".into()) });
    };
    let readings = readings_around(s, first, last)?;
    let verdicts = judge(&events, &readings, (s, now), &mut done);
    let found = verdicts.points.len() as u64;
    let written = write_points(s, &verdicts, &mut done, cutoff)?;
    for event in &verdicts.correlated {
        done.insert(&event.entity_id, event.time);
    }
    report::inc_by(counters::EVENTS, verdicts.judged + found);
    report::inc_by(counters::FOUND, found);
    report::inc_by(counters::WRITTEN, u64::from(written));
    report::set_count(counters::PENDING, verdicts.pending);
    save(&mut done, cutoff, i64::MAX)?;
    update_rates();
    report::ok();
    let (judged, pending) = (verdicts.judged, verdicts.pending);
    Ok(Summary {
        points_written: written,
        detail: Some(format!(
            "{} new events: {written} correlations written, {judged} below {} W, {pending} pending",
            events.len(),
            s.min_delta_w
        )),
    })
}

/// The event rows of `[window_start, now)`: at most
/// `max_events_per_cycle`, the newest.
fn query_events(s: &Settings, window_start: i64, now: i64) -> Result<Table, GuestError> {
    query_table(&InfluxQuery {
        measurement: s.events_measurement.clone(),
        fields: vec![s.state_field.clone(), s.previous_state_field.clone()],
        tags: Vec::new(),
        start: Some(window_start),
        end: Some(now),
        select: Selector::All,
        descending: true,
        limit: Some(s.max_events_per_cycle),
    })
}

/// The events in `table` not yet handled, oldest first, one per entity and
/// time.
fn new_events<'t>(table: &'t Table, s: &Settings, done: &Processed) -> Vec<Event<'t>> {
    let mut events: Vec<Event> = (0..table.times.len())
        .filter_map(|row| event_from_row(table, row, s))
        .filter(|e| !done.contains(&e.entity_id, e.time))
        .collect();
    events.sort_by(|a, b| (a.time, &a.entity_id).cmp(&(b.time, &b.entity_id)));
    events.dedup_by(|a, b| a.time == b.time && a.entity_id == b.entity_id);
    events
}

/// The power readings that can match events from `first` to `last` (one
/// query for all of them), sorted by time.
fn readings_around(s: &Settings, first: &Event<'_>, last: &Event<'_>) -> Result<Vec<Reading>, GuestError> {
    let reach = s.offset.saturating_add(s.padding);
    let power = query_floats(
        &InfluxQuery {
            measurement: s.power_measurement.clone(),
            fields: Vec::new(),
            tags: Vec::new(),
            start: Some(first.time.saturating_sub(reach)),
            end: Some(last.time.saturating_add(reach).saturating_add(1)),
            select: Selector::All,
            descending: false,
            limit: None,
        },
        &s.power_field,
    )?;
    let mut readings = readings_from_series(&power);
    readings.sort_by_key(|r| r.time);
    Ok(readings)
}

/// What one cycle decided about its events.
struct Verdicts<'e, 't> {
    /// A point for each correlated event, and those events.
    points: TableBuilder,
    correlated: Vec<&'e Event<'t>>,
    /// Events below `min_delta_w` (already marked handled).
    judged: u64,
    /// Events whose readings are not in yet.
    pending: u64,
}

/// Evaluates every event; those below the threshold are marked handled at
/// once, correlated ones only once their points are written.
fn judge<'e, 't>(
    events: &'e [Event<'t>],
    readings: &[Reading],
    (s, now): (&Settings, i64),
    done: &mut Processed,
) -> Verdicts<'e, 't> {
    let mut v = Verdicts { points: correlation_table(), correlated: Vec::new(), judged: 0, pending: 0 };
    for event in events {
        match matching::evaluate(readings, event.time, s.offset, s.padding, s.min_delta_w, now) {
            Outcome::Pending => v.pending += 1,
            Outcome::Below(_) => {
                done.insert(&event.entity_id, event.time);
                v.judged += 1;
            }
            Outcome::Correlated(step) => {
                push_correlation(&mut v.points, event, &step);
                v.correlated.push(event);
            }
        }
    }
    v
}

/// Writes the verdicts' points in one batch. On failure the below-threshold
/// verdicts are still counted and saved, and the correlated events stay
/// pending (retried next cycle).
fn write_points(s: &Settings, v: &Verdicts<'_, '_>, done: &mut Processed, cutoff: i64) -> Result<u32, GuestError> {
    if v.points.is_empty() {
        return Ok(0);
    }
    influx::write_table(&s.output_measurement, v.points.table()).or_else(|e| {
        report::inc_by(counters::EVENTS, v.judged);
        report::inc_by(counters::FOUND, v.points.len() as u64);
        let unwritten_from = v.correlated.iter().map(|e| e.time).min().unwrap_or(i64::MAX);
        save(done, cutoff, unwritten_from)?;
        update_rates();
        let msg = format!("writing {} points: {}", s.output_measurement, influx_error_text(&e));
        Err(fail(GuestError::Store(msg)))
    })
}

struct Correlator;

impl Guest for Correlator {
    fn init(config: Vec<(String, String)>) -> Result<(), GuestError> {
        let settings = Settings::from_config(&wattedge_guest::config::Config::new(config))?;
        report::text("config", &settings.description);
        SETTINGS.set(settings);
        Ok(())
    }

    fn run(trigger: Trigger) -> Result<Summary, GuestError> {
        let settings = SETTINGS.get()?;
        correlate(&settings, clock::trigger_time(&trigger))
    }
}

wattedge_guest::export_guest!(Correlator with_types_in wattedge_guest::bindings);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn point_shape() {
        let event = Event {
            time: 42,
            entity_id: "switch.kettle".into(),
            domain: "switch".into(),
            state: "on".into(),
            previous_state: "".into(),
        };
        let mut table = correlation_table();
        push_correlation(&mut table, &event, &matching::step(2450.0, 2510.0));
        let t = table.finish();
        assert_eq!(t.times, [42]);
        assert_eq!(t.lookup(0, "entity_id").as_deref(), Some("switch.kettle"));
        assert_eq!(t.lookup(0, "previous_state"), None, "empty previous_state is not a tag");
        assert_eq!(t.field("power_delta_w").map(|c| c.values.clone()), Some(vec![Some(Cell::Float(60.0))]));
        assert_eq!(t.field("power_delta_pct").map(|c| c.values.clone()), Some(vec![Some(Cell::Float(2.449))]));
    }
}
