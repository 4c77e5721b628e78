//! The `correlator` guest: which Home Assistant state change moved the meter?
//!
//! Every cycle it reads recent state changes and power readings from the
//! time-series store, measures the power just before each event and just
//! after it (see [`matching`] for the two rules), and writes an
//! `event_energy_correlation` point for each step of at least
//! `min_delta_w`. It reads two layouts (`schema`, see [`settings`]): the
//! HomeIQ one (`home_assistant_events`, `smart_meter`) it replaces the
//! Python "energy-correlator" on, and the one Home Assistant's own
//! `influxdb` integration writes.
//!
//! Cost per run is bounded and independent of the number of events: one
//! events query; with the Home Assistant layout, which stores no previous
//! state, one more for each series' last row before the events (see
//! [`settings::derive_events`]); at most one power query covering all
//! events at once; then one batched write. So a cycle makes at most 2
//! queries with HomeIQ, 3 with Home Assistant. All move columns, not rows:
//! the events and the correlations as tables (`query-table`, `query-multi`,
//! `write-table`: each distinct entity id or state crosses the component
//! boundary once), the readings through `query-floats`.
//!
//! Exactly-once: handled events (written, or judged below the threshold or
//! without power data) are remembered in guest `state` ([`processed`]);
//! events whose readings are not in yet stay pending and are retried while
//! they are inside `lookback`. Points are written before the state is
//! saved, so a crash in between only rewrites identical points (same series
//! and time), which InfluxDB and the embedded store overwrite.

pub mod matching;
pub mod processed;
pub mod settings;

use wattedge_guest::influx::{self, Cell, MultiQuery, Selector, Table, TagFilter};
use wattedge_guest::status::CounterValue;
use wattedge_guest::table::TableBuilder;
use wattedge_guest::{
    Guest, GuestError, InfluxQuery, Slot, Summary, Trigger, clock, influx_error_text, report, state, state_error_text,
};

use matching::{Outcome, Reading, Step, StepRule};
use processed::Processed;
use settings::{Event, EventSource, PowerRule, Settings, derive_events, event_from_row, readings_from_series};

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
    /// Events with no power reading within `max_staleness` before them, in all.
    pub const STALE: &str = "events_without_power";
    /// The `schema` preset in use (text).
    pub const SCHEMA: &str = "schema";
    /// The power sensor read, e.g. `W entity_id=house_power value` (text).
    pub const POWER_SENSOR: &str = "power_sensor";
    /// The last correlation written, e.g. `switch.lamp off → on: +60 W` (text).
    pub const LAST_CORRELATION: &str = "last_correlation";
    /// The time of that event.
    pub const LAST_CORRELATION_AT: &str = "last_correlation_at";
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
    let rows = query_events(s, window_start, now)?;
    let events = new_events(&rows, s, &done);
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
    report_last_correlation(&verdicts);
    report::inc_by(counters::EVENTS, verdicts.judged + verdicts.stale + found);
    report::inc_by(counters::FOUND, found);
    report::inc_by(counters::WRITTEN, u64::from(written));
    report::inc_by(counters::STALE, verdicts.stale);
    report::set_count(counters::PENDING, verdicts.pending);
    save(&mut done, cutoff, i64::MAX)?;
    update_rates();
    report::ok();
    let (judged, pending, stale) = (verdicts.judged, verdicts.pending, verdicts.stale);
    let stale = if stale > 0 { format!(", {stale} without power data") } else { String::new() };
    Ok(Summary {
        points_written: written,
        detail: Some(format!(
            "{} new events: {written} correlations written, {judged} below {} W, {pending} pending{stale}",
            events.len(),
            s.min_delta_w
        )),
    })
}

/// The newest correlation written this cycle, for the status page.
fn report_last_correlation(v: &Verdicts<'_, '_>) {
    let Some((event, step)) = v.correlated.iter().zip(&v.steps).max_by_key(|(e, _)| e.time) else { return };
    let from = if event.previous_state.is_empty() { "?" } else { &event.previous_state };
    let text = format!("{} {from} → {}: {:+} W", event.entity_id, event.state, matching::round3(step.delta_w));
    report::text(counters::LAST_CORRELATION, &text);
    wattedge_guest::status::set_counter(counters::LAST_CORRELATION_AT, &CounterValue::Time(event.time));
}

/// The event rows of one cycle.
enum EventRows {
    /// Rows that carry their previous state.
    Carried(Table),
    /// Rows whose previous state is derived: the window's rows, and each
    /// series' last row before them.
    Derived { window: Table, before: Table },
}

/// The event rows of `[window_start, now)`: at most
/// `max_events_per_cycle`, the newest; where the schema stores no previous
/// state, also the row before each entity's first one (a second query).
fn query_events(s: &Settings, window_start: i64, now: i64) -> Result<EventRows, GuestError> {
    let derived = s.previous_state_field.is_empty();
    if let (EventSource::Shared(measurement), false) = (&s.events, derived) {
        return query_table(&InfluxQuery {
            measurement: measurement.clone(),
            fields: vec![s.state_field.clone(), s.previous_state_field.clone()],
            tags: Vec::new(),
            start: Some(window_start),
            end: Some(now),
            select: Selector::All,
            descending: true,
            limit: Some(s.max_events_per_cycle),
        })
        .map(EventRows::Carried);
    }
    let mut fields = vec![s.state_field.clone()];
    if !derived {
        fields.push(s.previous_state_field.clone());
    }
    let window = query_multi(&MultiQuery {
        measurements: s.events.measurements(),
        fields: fields.clone(),
        tags: Vec::new(),
        start: Some(window_start),
        end: Some(now),
        per_series: None,
        descending: true,
        limit: Some(s.max_events_per_cycle),
    })?;
    if !derived {
        return Ok(EventRows::Carried(window));
    }
    // Rows are newest first: the last is the oldest. (Should the limit cut
    // rows at that very time, an entity whose row there was cut gets its
    // previous state from an older row; rows at one nanosecond rarely are
    // more than `max_events_per_cycle`.)
    let Some(&oldest) = window.times.last() else {
        return Ok(EventRows::Derived { before: window.clone(), window });
    };
    let before = query_multi(&MultiQuery {
        measurements: s.events.measurements(),
        fields,
        tags: Vec::new(),
        start: None,
        end: Some(oldest),
        per_series: Some(1),
        descending: true,
        limit: None,
    })?;
    Ok(EventRows::Derived { window, before })
}

fn query_multi(q: &MultiQuery) -> Result<Table, GuestError> {
    influx::query_multi(q).map(|t| t.rows).map_err(|e| {
        let what = q.measurements.join(", ");
        fail(GuestError::Store(format!("querying {what}: {}", influx_error_text(&e))))
    })
}

/// The events among `rows` not yet handled, oldest first, one per entity
/// and time.
fn new_events<'t>(rows: &'t EventRows, s: &Settings, done: &Processed) -> Vec<Event<'t>> {
    let mut events: Vec<Event> = match rows {
        EventRows::Carried(table) => (0..table.times.len()).filter_map(|row| event_from_row(table, row, s)).collect(),
        EventRows::Derived { window, before } => derive_events(window, before, s),
    };
    events.retain(|e| !done.contains(&e.entity_id, e.time));
    events.sort_by(|a, b| (a.time, &a.entity_id).cmp(&(b.time, &b.entity_id)));
    events.dedup_by(|a, b| a.time == b.time && a.entity_id == b.entity_id);
    events
}

/// The power readings that can matter to events from `first` to `last`
/// (one query for all of them), sorted by time, in watts: under the step
/// rule from `max_staleness` before the first event, under the nearest
/// rule from `offset + padding` before it; to `offset + padding` after the
/// last. Only the configured sensor's rows when `power_entity` is set.
fn readings_around(s: &Settings, first: &Event<'_>, last: &Event<'_>) -> Result<Vec<Reading>, GuestError> {
    let reach = s.offset.saturating_add(s.padding);
    let back = match s.power_rule {
        PowerRule::Nearest => reach,
        PowerRule::Step => s.max_staleness,
    };
    let tags = match s.power_entity.as_str() {
        "" => Vec::new(),
        entity => vec![TagFilter { key: s.entity_tag.clone(), value: entity.to_string() }],
    };
    let power = query_floats(
        &InfluxQuery {
            measurement: s.power_measurement.clone(),
            fields: Vec::new(),
            tags,
            start: Some(first.time.saturating_sub(back)),
            end: Some(last.time.saturating_add(reach).saturating_add(1)),
            select: Selector::All,
            descending: false,
            limit: None,
        },
        &s.power_field,
    )?;
    let mut readings = readings_from_series(&power, s.watts_per_unit);
    readings.sort_by_key(|r| r.time);
    Ok(readings)
}

/// What one cycle decided about its events.
struct Verdicts<'e, 't> {
    /// A point for each correlated event, those events and their steps.
    points: TableBuilder,
    correlated: Vec<&'e Event<'t>>,
    steps: Vec<Step>,
    /// Events below `min_delta_w` (already marked handled).
    judged: u64,
    /// Events without a power reading within `max_staleness` (already
    /// marked handled: no later reading can tell their power).
    stale: u64,
    /// Events whose readings are not in yet.
    pending: u64,
}

/// Evaluates every event; those below the threshold or without power data
/// are marked handled at once, correlated ones only once their points are
/// written.
fn judge<'e, 't>(
    events: &'e [Event<'t>],
    readings: &[Reading],
    (s, now): (&Settings, i64),
    done: &mut Processed,
) -> Verdicts<'e, 't> {
    let mut v = Verdicts {
        points: correlation_table(),
        correlated: Vec::new(),
        steps: Vec::new(),
        judged: 0,
        stale: 0,
        pending: 0,
    };
    let rule =
        StepRule { offset: s.offset, padding: s.padding, max_staleness: s.max_staleness, min_delta_w: s.min_delta_w };
    for event in events {
        let outcome = match s.power_rule {
            PowerRule::Nearest => matching::evaluate(readings, event.time, s.offset, s.padding, s.min_delta_w, now),
            PowerRule::Step => matching::evaluate_step(readings, event.time, rule, now),
        };
        match outcome {
            Outcome::Pending => v.pending += 1,
            Outcome::Below(_) => {
                done.insert(&event.entity_id, event.time);
                v.judged += 1;
            }
            Outcome::Stale => {
                done.insert(&event.entity_id, event.time);
                v.stale += 1;
            }
            Outcome::Correlated(step) => {
                push_correlation(&mut v.points, event, &step);
                v.correlated.push(event);
                v.steps.push(step);
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
        report::inc_by(counters::EVENTS, v.judged + v.stale);
        report::inc_by(counters::STALE, v.stale);
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
        report::text(counters::SCHEMA, settings.schema.name());
        report::text(counters::POWER_SENSOR, &settings.power_sensor());
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
