//! The correlator's config and the mapping from query rows to its inputs.

use wattedge_guest::config::{Config, config_error};
use wattedge_guest::influx::{FloatSeries, Row};
use wattedge_guest::{GuestError, field_as_text};

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

/// A Home Assistant state change.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    /// Point time (ns).
    pub time: i64,
    /// Entity id, e.g. `switch.kettle`.
    pub entity_id: String,
    /// Domain, e.g. `switch`.
    pub domain: String,
    /// New state.
    pub state: String,
    /// Previous state.
    pub previous_state: String,
}

fn lookup(row: &Row, key: &str) -> Option<String> {
    row.tags
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.clone())
        .or_else(|| row.fields.iter().find(|(k, _)| k == key).map(|(_, v)| field_as_text(v)))
}

/// The event in `row` when it has an entity id and its domain is wanted.
/// The domain comes from the domain tag, else from the entity id's prefix.
pub fn event_from_row(row: &Row, s: &Settings) -> Option<Event> {
    let entity_id = lookup(row, &s.entity_tag).filter(|e| !e.is_empty())?;
    let domain = lookup(row, &s.domain_tag)
        .filter(|d| !d.is_empty())
        .or_else(|| entity_id.split_once('.').map(|(d, _)| d.to_string()))?;
    if !s.domains.contains(&domain) {
        return None;
    }
    Some(Event {
        time: row.time,
        state: lookup(row, &s.state_field).unwrap_or_default(),
        previous_state: lookup(row, &s.previous_state_field).unwrap_or_default(),
        entity_id,
        domain,
    })
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
    use wattedge_guest::FieldValue;

    fn settings(pairs: &[(&str, &str)]) -> Result<Settings, GuestError> {
        Settings::from_config(&Config::new(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()))
    }

    fn row(tags: &[(&str, &str)], fields: Vec<(&str, FieldValue)>) -> Row {
        Row {
            time: 7,
            tags: tags.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            fields: fields.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
        }
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
        let r = row(
            &[("entity_id", "switch.kettle"), ("domain", "switch")],
            vec![("state_value", FieldValue::Text("on".into())), ("previous_state", FieldValue::Text("off".into()))],
        );
        let e = event_from_row(&r, &s).expect("event");
        assert_eq!((e.state.as_str(), e.previous_state.as_str()), ("on", "off"));
        let no_domain_tag = row(&[("entity_id", "light.hall")], vec![]);
        assert_eq!(event_from_row(&no_domain_tag, &s).map(|e| e.domain), Some("light".into()));
        let sensor = row(&[("entity_id", "sensor.t"), ("domain", "sensor")], vec![]);
        assert_eq!(event_from_row(&sensor, &s), None);
        assert_eq!(event_from_row(&row(&[], vec![]), &s), None);
    }

    #[test]
    fn readings_pair_times_with_values_and_drop_non_finite() {
        let series = FloatSeries { times: vec![1, 2, 3, 4], values: vec![2450.0, f64::NAN, f64::INFINITY, -3.5] };
        let readings = readings_from_series(&series);
        assert_eq!(readings, vec![Reading { time: 1, watts: 2450.0 }, Reading { time: 4, watts: -3.5 }]);
    }
}
