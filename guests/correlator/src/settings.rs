//! The correlator's config and the mapping from query rows to its inputs.

use std::borrow::Cow;
use wattedge_guest::config::{Config, config_error};

use wattedge_guest::GuestError;
use wattedge_guest::influx::{FloatSeries, Table};

use crate::matching::Reading;

/// Config keys this guest accepts.
pub const KEYS: &[&str] = &[
    "lookback",
    "offset",
    "padding",
    "min_delta_w",
    "domains",
    "max_events_per_cycle",
    "events_measurement",
    "entity_tag",
    "domain_tag",
    "state_field",
    "previous_state_field",
    "power_measurement",
    "power_field",
    "output_measurement",
];

/// Validated settings; durations in nanoseconds.
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    /// Window of events read each run.
    pub lookback: i64,
    /// Distance from the event to each reading target.
    pub offset: i64,
    /// Largest allowed distance of a reading from its target.
    pub padding: i64,
    /// Smallest step (W, absolute) that counts as a correlation.
    pub min_delta_w: f64,
    /// Home Assistant domains considered.
    pub domains: Vec<String>,
    /// Limit of the events query.
    pub max_events_per_cycle: u32,
    /// Measurement of the state-change events.
    pub events_measurement: String,
    /// Tag holding the entity id.
    pub entity_tag: String,
    /// Tag holding the domain.
    pub domain_tag: String,
    /// Field holding the new state.
    pub state_field: String,
    /// Field holding the previous state.
    pub previous_state_field: String,
    /// Measurement of the power readings.
    pub power_measurement: String,
    /// Field holding the power in W.
    pub power_field: String,
    /// Measurement the correlations are written to.
    pub output_measurement: String,
    /// The effective config as text, for the `config` counter.
    pub description: String,
}

fn name(config: &Config, key: &str, default: &str) -> Result<String, GuestError> {
    config.string_matching(
        key,
        default,
        |s| !s.chars().any(char::is_control),
        "a measurement, tag or field name without control characters",
    )
}

impl Settings {
    /// Validates `config`; errors name the key and the fix.
    pub fn from_config(config: &Config) -> Result<Self, GuestError> {
        config.check_keys(KEYS)?;
        let lookback = config.duration_ns("lookback", "5m")?;
        let offset = config.duration_ns("offset", "5s")?;
        let padding = config.duration_ns("padding", "30s")?;
        if lookback <= offset.saturating_add(padding) {
            return Err(config_error(
                "lookback",
                format!(
                    "must be longer than offset + padding ({}s + {}s) so an event \
                     can be judged before it leaves the window; raise lookback",
                    offset / 1_000_000_000,
                    padding / 1_000_000_000
                ),
            ));
        }
        let max = config.u64_in("max_events_per_cycle", 500, 1..=10_000)?;
        let mut s = Self {
            lookback,
            offset,
            padding,
            min_delta_w: config.f64_at_least("min_delta_w", 10.0, 0.0)?,
            domains: config.list("domains", "switch,light,climate,fan,cover"),
            max_events_per_cycle: u32::try_from(max).unwrap_or(500),
            events_measurement: name(config, "events_measurement", "home_assistant_events")?,
            entity_tag: name(config, "entity_tag", "entity_id")?,
            domain_tag: name(config, "domain_tag", "domain")?,
            state_field: name(config, "state_field", "state_value")?,
            previous_state_field: name(config, "previous_state_field", "previous_state")?,
            power_measurement: name(config, "power_measurement", "smart_meter")?,
            power_field: name(config, "power_field", "total_power_w")?,
            output_measurement: name(config, "output_measurement", "event_energy_correlation")?,
            description: String::new(),
        };
        s.description = Config::describe(&[
            ("lookback", config.string("lookback", "5m")),
            ("offset", config.string("offset", "5s")),
            ("padding", config.string("padding", "30s")),
            ("min_delta_w", s.min_delta_w.to_string()),
            ("domains", s.domains.join(",")),
            ("max_events_per_cycle", s.max_events_per_cycle.to_string()),
            ("events_measurement", s.events_measurement.clone()),
            ("entity_tag", s.entity_tag.clone()),
            ("domain_tag", s.domain_tag.clone()),
            ("state_field", s.state_field.clone()),
            ("previous_state_field", s.previous_state_field.clone()),
            ("power_measurement", s.power_measurement.clone()),
            ("power_field", s.power_field.clone()),
            ("output_measurement", s.output_measurement.clone()),
        ]);
        Ok(s)
    }
}

/// A Home Assistant state change, its strings borrowed from the events
/// table where they are stored once.
#[derive(Clone, Debug, PartialEq)]
pub struct Event<'t> {
    /// Point time (ns).
    pub time: i64,
    /// Entity id, e.g. `switch.kettle`.
    pub entity_id: Cow<'t, str>,
    /// Domain, e.g. `switch`.
    pub domain: Cow<'t, str>,
    /// New state.
    pub state: Cow<'t, str>,
    /// Previous state.
    pub previous_state: Cow<'t, str>,
}

/// The event in row `row` of `table` when it has an entity id and its
/// domain is wanted. Each name is looked up as a tag, then as a field; the
/// domain comes from the domain tag, else from the entity id's prefix.
pub fn event_from_row<'t>(table: &'t Table, row: usize, s: &Settings) -> Option<Event<'t>> {
    let entity_id = table.lookup(row, &s.entity_tag).filter(|e| !e.is_empty())?;
    let domain = table.lookup(row, &s.domain_tag).filter(|d| !d.is_empty()).or_else(|| domain_of(&entity_id))?;
    if !s.domains.iter().any(|d| *d == domain) {
        return None;
    }
    Some(Event {
        time: table.times[row],
        state: table.lookup(row, &s.state_field).unwrap_or_default(),
        previous_state: table.lookup(row, &s.previous_state_field).unwrap_or_default(),
        entity_id,
        domain,
    })
}

/// The domain prefix of an entity id (`switch` of `switch.kettle`),
/// borrowed from the table when the id is.
fn domain_of<'t>(entity_id: &Cow<'t, str>) -> Option<Cow<'t, str>> {
    match entity_id {
        Cow::Borrowed(id) => id.split_once('.').map(|(d, _)| Cow::Borrowed(d)),
        Cow::Owned(id) => id.split_once('.').map(|(d, _)| Cow::Owned(d.to_string())),
    }
}

/// The power readings in a `query-floats` answer (the host has already
/// dropped non-numeric values and converted integers), minus non-finite ones.
pub fn readings_from_series(series: &FloatSeries) -> Vec<Reading> {
    let pairs = series.times.iter().zip(&series.values);
    pairs.filter(|(_, w)| w.is_finite()).map(|(&time, &watts)| Reading { time, watts }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use wattedge_guest::influx::Cell;
    use wattedge_guest::table::TableBuilder;

    fn settings(pairs: &[(&str, &str)]) -> Result<Settings, GuestError> {
        Settings::from_config(&Config::new(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()))
    }

    /// A table of one row with these tags and text fields.
    fn row(tags: &[(&str, &str)], fields: &[(&str, &str)]) -> Table {
        let tag_keys: Vec<&str> = tags.iter().map(|(k, _)| *k).collect();
        let field_keys: Vec<&str> = fields.iter().map(|(k, _)| *k).collect();
        let mut b = TableBuilder::new(&tag_keys, &field_keys);
        let texts: Vec<Option<Cell>> = fields.iter().map(|(_, v)| Some(Cell::Text(b.text(v)))).collect();
        let tag_values: Vec<Option<&str>> = tags.iter().map(|(_, v)| Some(*v)).collect();
        b.push(7, &tag_values, &texts);
        b.finish()
    }

    #[test]
    fn defaults() {
        let s = settings(&[]).expect("defaults are valid");
        assert_eq!(s.lookback, 300_000_000_000);
        assert_eq!(s.offset, 5_000_000_000);
        assert_eq!(s.padding, 30_000_000_000);
        assert_eq!(s.min_delta_w, 10.0);
        assert_eq!(s.domains, ["switch", "light", "climate", "fan", "cover"]);
        assert_eq!(s.max_events_per_cycle, 500);
        assert!(s.description.contains("lookback=5m"));
    }

    #[test]
    fn bad_config_names_key() {
        for (k, v) in [
            ("lookback", "30s"),
            ("offset", "five"),
            ("min_delta_w", "-1"),
            ("max_events_per_cycle", "0"),
            ("loockback", "5m"),
        ] {
            match settings(&[(k, v)]) {
                Err(GuestError::Config(m)) => assert!(m.starts_with(&format!("{k}: ")), "{m}"),
                other => panic!("{k}={v}: {other:?}"),
            }
        }
    }

    #[test]
    fn rows_to_events_and_readings() {
        let s = settings(&[]).expect("valid");
        let t = row(
            &[("entity_id", "switch.kettle"), ("domain", "switch")],
            &[("state_value", "on"), ("previous_state", "off")],
        );
        let e = event_from_row(&t, 0, &s).expect("event");
        assert_eq!((&*e.state, &*e.previous_state, e.time), ("on", "off", 7));
        let no_domain_tag = row(&[("entity_id", "light.hall")], &[]);
        assert_eq!(event_from_row(&no_domain_tag, 0, &s).map(|e| e.domain), Some("light".into()));
        let entity_in_a_field = row(&[], &[("entity_id", "fan.attic")]);
        assert_eq!(event_from_row(&entity_in_a_field, 0, &s).map(|e| e.domain), Some("fan".into()));
        let sensor = row(&[("entity_id", "sensor.t"), ("domain", "sensor")], &[]);
        assert_eq!(event_from_row(&sensor, 0, &s), None);
        assert_eq!(event_from_row(&row(&[], &[]), 0, &s), None);
    }

    #[test]
    fn readings_pair_times_with_values_and_drop_non_finite() {
        let series = FloatSeries { times: vec![1, 2, 3, 4], values: vec![2450.0, f64::NAN, f64::INFINITY, -3.5] };
        let readings = readings_from_series(&series);
        assert_eq!(readings, vec![Reading { time: 1, watts: 2450.0 }, Reading { time: 4, watts: -3.5 }]);
    }
}
