//! The correlator's config and the mapping from query rows to its inputs.
//!
//! `schema` picks a preset that fills every other key; any key can still be
//! set on top of it:
//! - `"homeiq"` (the default): the custom schema one Python project wrote,
//!   `home_assistant_events` rows that carry `previous_state`, and
//!   `smart_meter.total_power_w` read with the nearest-reading rule.
//! - `"home_assistant"`: what Home Assistant's own `influxdb` integration
//!   writes: each switch or light in a measurement of its own
//!   (`switch.lamp`) or all in HA's `default_measurement` (set
//!   `events_measurement` to it), tags `entity_id` (without the domain) and
//!   `domain`, field `state`, no previous state (derived from the entity's
//!   previous row); one power sensor (`power_entity`) among the many in the
//!   measurement named after its unit (`W` or `kW`), field `value`, written
//!   on change only, so read as a step function.

use std::borrow::Cow;
use wattedge_guest::config::{Config, config_error};

use wattedge_guest::GuestError;
use wattedge_guest::influx::{FloatSeries, Table};

use crate::matching::Reading;

/// Config keys this guest accepts.
pub const KEYS: &[&str] = &[
    "schema",
    "lookback",
    "offset",
    "padding",
    "max_staleness",
    "min_delta_w",
    "domains",
    "entities",
    "max_events_per_cycle",
    "events_measurement",
    "entity_tag",
    "domain_tag",
    "state_field",
    "previous_state_field",
    "power_measurement",
    "power_field",
    "power_entity",
    "power_unit",
    "power_rule",
    "output_measurement",
];

/// The data layouts `schema` names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Schema {
    /// Home Assistant's `influxdb` integration.
    HomeAssistant,
    /// The HomeIQ energy-correlator's own measurements.
    HomeIq,
}

impl Schema {
    /// The name used in the config.
    pub fn name(self) -> &'static str {
        match self {
            Schema::HomeAssistant => "home_assistant",
            Schema::HomeIq => "homeiq",
        }
    }
}

/// How the power at an instant is read from the readings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PowerRule {
    /// The reading nearest to `event ± offset` within `padding` (dense,
    /// periodic readings: HomeIQ's meter reports every few seconds).
    Nearest,
    /// The last reading at or before the instant, at most `max_staleness`
    /// old (on-change readings: HA writes a sensor only when it changes).
    Step,
}

/// Where the events are read from.
#[derive(Clone, Debug, PartialEq)]
pub enum EventSource {
    /// One measurement holding every entity's rows.
    Shared(String),
    /// A measurement per entity, named by the entity id (HA's default).
    PerEntity(Vec<String>),
}

impl EventSource {
    /// The measurements to query.
    pub fn measurements(&self) -> Vec<String> {
        match self {
            EventSource::Shared(m) => vec![m.clone()],
            EventSource::PerEntity(entities) => entities.clone(),
        }
    }
}

/// Validated settings; durations in nanoseconds.
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    /// The preset the other keys started from.
    pub schema: Schema,
    /// Window of events read each run.
    pub lookback: i64,
    /// Distance from the event to each reading target.
    pub offset: i64,
    /// Largest allowed distance of a reading from its target.
    pub padding: i64,
    /// Oldest a reading may be to stand for the power at an instant
    /// ([`PowerRule::Step`] only).
    pub max_staleness: i64,
    /// Smallest step (W, absolute) that counts as a correlation.
    pub min_delta_w: f64,
    /// Home Assistant domains considered (when `entities` is empty).
    pub domains: Vec<String>,
    /// Entity ids considered (`switch.lamp`); empty: every entity of `domains`.
    pub entities: Vec<String>,
    /// Limit of the events query.
    pub max_events_per_cycle: u32,
    /// Where the state-change rows are.
    pub events: EventSource,
    /// Tag holding the entity id (with or without the domain).
    pub entity_tag: String,
    /// Tag holding the domain.
    pub domain_tag: String,
    /// Field holding the new state.
    pub state_field: String,
    /// Field holding the previous state; empty: derived from the entity's
    /// previous row.
    pub previous_state_field: String,
    /// Measurement of the power readings.
    pub power_measurement: String,
    /// Field holding the power.
    pub power_field: String,
    /// The power sensor's `entity_tag` value; empty: every row of
    /// `power_measurement` is the one meter.
    pub power_entity: String,
    /// Watts per unit of the readings (1 for `W`, 1000 for `kW`).
    pub watts_per_unit: f64,
    /// How the power at an instant is read.
    pub power_rule: PowerRule,
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

/// The defaults of one preset for the keys whose defaults differ.
struct Preset {
    events_measurement: &'static str,
    state_field: &'static str,
    previous_state_field: &'static str,
    power_field: &'static str,
    power_rule: &'static str,
}

const HOMEIQ: Preset = Preset {
    events_measurement: "home_assistant_events",
    state_field: "state_value",
    previous_state_field: "previous_state",
    power_field: "total_power_w",
    power_rule: "nearest",
};

const HOME_ASSISTANT: Preset = Preset {
    events_measurement: "",
    state_field: "state",
    previous_state_field: "",
    power_field: "value",
    power_rule: "step",
};

fn schema(config: &Config) -> Result<Schema, GuestError> {
    match config.string("schema", "homeiq").as_str() {
        "homeiq" => Ok(Schema::HomeIq),
        "home_assistant" => Ok(Schema::HomeAssistant),
        other => Err(config_error(
            "schema",
            format!(
                "{other:?} is unknown; use \"home_assistant\" (Home Assistant's influxdb integration) \
                 or \"homeiq\" (home_assistant_events and smart_meter)"
            ),
        )),
    }
}

/// Watts per unit of `power_unit`.
fn watts_per_unit(config: &Config) -> Result<(String, f64), GuestError> {
    match config.string("power_unit", "W").as_str() {
        "W" => Ok(("W".into(), 1.0)),
        "kW" => Ok(("kW".into(), 1000.0)),
        other => Err(config_error(
            "power_unit",
            format!("{other:?} is invalid; use \"W\" or \"kW\", the unit_of_measurement of the power sensor"),
        )),
    }
}

fn power_rule(config: &Config, default: &str) -> Result<PowerRule, GuestError> {
    match config.string("power_rule", default).as_str() {
        "step" => Ok(PowerRule::Step),
        "nearest" => Ok(PowerRule::Nearest),
        other => Err(config_error(
            "power_rule",
            format!(
                "{other:?} is invalid; use \"step\" (readings written on change) or \"nearest\" (periodic readings)"
            ),
        )),
    }
}

/// `entities`: each `domain.object_id`.
fn entities(config: &Config) -> Result<Vec<String>, GuestError> {
    let list = config.list("entities", "");
    match list.iter().find(|e| !matches!(e.split_once('.'), Some((d, o)) if !d.is_empty() && !o.is_empty())) {
        Some(bad) => Err(config_error(
            "entities",
            format!("{bad:?} is not an entity id; list ids with their domain, e.g. \"switch.lamp,light.desk\""),
        )),
        None => Ok(list),
    }
}

/// Where the events are: `events_measurement`, or with the HA preset and
/// none set, a measurement per listed entity.
fn event_source(
    config: &Config,
    schema: Schema,
    preset: &Preset,
    entities: &[String],
) -> Result<EventSource, GuestError> {
    let shared = name(config, "events_measurement", preset.events_measurement)?;
    if !shared.is_empty() {
        return Ok(EventSource::Shared(shared));
    }
    if entities.is_empty() {
        let fix = match schema {
            Schema::HomeAssistant => {
                "Home Assistant writes each entity to a measurement named after it unless its influxdb \
                 config sets default_measurement: list the switches and lights, e.g. entities = \
                 \"switch.lamp,light.desk\" (and grant each in influx_read), or set events_measurement \
                 to HA's default_measurement (e.g. \"state\")"
            }
            Schema::HomeIq => "list the entities whose measurements to read, or set events_measurement",
        };
        return Err(config_error("entities", fix));
    }
    Ok(EventSource::PerEntity(entities.to_vec()))
}

/// The power sensor: HA tags a sensor by its object id, so a full id
/// (`sensor.house_power`) is cut to it. Required by the HA preset, whose
/// power measurement holds every sensor of that unit.
fn power_entity(config: &Config, schema: Schema) -> Result<String, GuestError> {
    let raw = name(config, "power_entity", "")?;
    let entity = raw.strip_prefix("sensor.").unwrap_or(&raw).to_string();
    if entity.is_empty() && schema == Schema::HomeAssistant {
        return Err(config_error(
            "power_entity",
            "the home_assistant schema reads one power sensor among all those in the W (or kW) \
             measurement; set it to the sensor's object id, e.g. power_entity = \"house_power\" \
             for sensor.house_power (and power_unit = \"kW\" if its unit is kW)",
        ));
    }
    Ok(entity)
}

impl Settings {
    /// Validates `config`; errors name the key and the fix.
    pub fn from_config(config: &Config) -> Result<Self, GuestError> {
        config.check_keys(KEYS)?;
        let schema = schema(config)?;
        let preset = match schema {
            Schema::HomeIq => &HOMEIQ,
            Schema::HomeAssistant => &HOME_ASSISTANT,
        };
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
        let entities = entities(config)?;
        let (unit, watts_per_unit) = watts_per_unit(config)?;
        let power_default = if schema == Schema::HomeAssistant { unit.as_str() } else { "smart_meter" };
        let mut s = Self {
            schema,
            lookback,
            offset,
            padding,
            max_staleness: config.duration_ns("max_staleness", "1h")?,
            min_delta_w: config.f64_at_least("min_delta_w", 10.0, 0.0)?,
            domains: config.list("domains", "switch,light,climate,fan,cover"),
            events: event_source(config, schema, preset, &entities)?,
            entities,
            max_events_per_cycle: u32::try_from(max).unwrap_or(500),
            entity_tag: name(config, "entity_tag", "entity_id")?,
            domain_tag: name(config, "domain_tag", "domain")?,
            state_field: name(config, "state_field", preset.state_field)?,
            previous_state_field: name(config, "previous_state_field", preset.previous_state_field)?,
            power_measurement: name(config, "power_measurement", power_default)?,
            power_field: name(config, "power_field", preset.power_field)?,
            power_entity: power_entity(config, schema)?,
            watts_per_unit,
            power_rule: power_rule(config, preset.power_rule)?,
            output_measurement: name(config, "output_measurement", "event_energy_correlation")?,
            description: String::new(),
        };
        s.description = s.describe(config, &unit);
        Ok(s)
    }

    fn describe(&self, config: &Config, unit: &str) -> String {
        let events = match &self.events {
            EventSource::Shared(m) => m.clone(),
            EventSource::PerEntity(_) => "(one per entity)".into(),
        };
        let rule = match self.power_rule {
            PowerRule::Step => "step",
            PowerRule::Nearest => "nearest",
        };
        Config::describe(&[
            ("schema", self.schema.name().to_string()),
            ("lookback", config.string("lookback", "5m")),
            ("offset", config.string("offset", "5s")),
            ("padding", config.string("padding", "30s")),
            ("max_staleness", config.string("max_staleness", "1h")),
            ("min_delta_w", self.min_delta_w.to_string()),
            ("domains", self.domains.join(",")),
            ("entities", self.entities.join(",")),
            ("max_events_per_cycle", self.max_events_per_cycle.to_string()),
            ("events_measurement", events),
            ("entity_tag", self.entity_tag.clone()),
            ("domain_tag", self.domain_tag.clone()),
            ("state_field", self.state_field.clone()),
            ("previous_state_field", self.previous_state_field.clone()),
            ("power_measurement", self.power_measurement.clone()),
            ("power_field", self.power_field.clone()),
            ("power_entity", self.power_entity.clone()),
            ("power_unit", unit.to_string()),
            ("power_rule", rule.to_string()),
            ("output_measurement", self.output_measurement.clone()),
        ])
    }

    /// The power sensor as the status page names it: `W entity_id=house_power`.
    pub fn power_sensor(&self) -> String {
        if self.power_entity.is_empty() {
            format!("{} {}", self.power_measurement, self.power_field)
        } else {
            format!("{} {}={} {}", self.power_measurement, self.entity_tag, self.power_entity, self.power_field)
        }
    }

    /// Whether an event of `entity_id` in `domain` is wanted: a listed
    /// entity, or, with no list, one of `domains`.
    pub fn wants(&self, entity_id: &str, domain: &str) -> bool {
        if self.entities.is_empty() {
            self.domains.iter().any(|d| d == domain)
        } else {
            self.entities.iter().any(|e| e == entity_id)
        }
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

/// The event in row `row` of `table` when it has an entity id and is
/// wanted (see [`Settings::wants`]). Each name is looked up as a tag, then
/// as a field; the domain comes from the domain tag, else from the entity
/// id's prefix.
pub fn event_from_row<'t>(table: &'t Table, row: usize, s: &Settings) -> Option<Event<'t>> {
    let (entity_id, domain) = entity_of_row(table, row, s)?;
    Some(Event {
        time: table.times[row],
        state: table.lookup(row, &s.state_field).unwrap_or_default(),
        previous_state: table.lookup(row, &s.previous_state_field).unwrap_or_default(),
        entity_id,
        domain,
    })
}

/// The full entity id (`switch.lamp`) and domain of row `row`, when wanted.
/// HA tags the object id alone (`lamp`): with its preset, an id without a
/// dot gets the domain put in front.
fn entity_of_row<'t>(table: &'t Table, row: usize, s: &Settings) -> Option<(Cow<'t, str>, Cow<'t, str>)> {
    let raw = table.lookup(row, &s.entity_tag).filter(|e| !e.is_empty())?;
    let domain = table.lookup(row, &s.domain_tag).filter(|d| !d.is_empty()).or_else(|| domain_of(&raw))?;
    let entity_id = if s.schema == Schema::HomeAssistant && !raw.contains('.') {
        Cow::Owned(format!("{domain}.{raw}"))
    } else {
        raw
    };
    s.wants(&entity_id, &domain).then_some((entity_id, domain))
}

/// The domain prefix of an entity id (`switch` of `switch.kettle`),
/// borrowed from the table when the id is.
fn domain_of<'t>(entity_id: &Cow<'t, str>) -> Option<Cow<'t, str>> {
    match entity_id {
        Cow::Borrowed(id) => id.split_once('.').map(|(d, _)| Cow::Borrowed(d)),
        Cow::Owned(id) => id.split_once('.').map(|(d, _)| Cow::Owned(d.to_string())),
    }
}

/// One row of an entity's state: (entity, time, whether it is an event
/// row, i.e. of the window, state, domain).
type StateRow<'t> = (Cow<'t, str>, i64, bool, Cow<'t, str>, Cow<'t, str>);

/// The state changes among the rows of `window` (the events query) when
/// the schema stores no previous state: each row's previous state is the
/// state of its entity's previous row, in `window` or, for an entity's
/// first row there, in `before` (each series' last row before `window`).
/// A row whose state equals the previous one (HA writes a row when only an
/// attribute changed) is no state change and gives no event. Oldest first.
pub fn derive_events<'t>(window: &'t Table, before: &'t Table, s: &Settings) -> Vec<Event<'t>> {
    let mut rows: Vec<StateRow<'t>> = Vec::new();
    for (table, is_event) in [(before, false), (window, true)] {
        for row in 0..table.times.len() {
            if let Some((entity, domain)) = entity_of_row(table, row, s) {
                let state = table.lookup(row, &s.state_field).unwrap_or_default();
                rows.push((entity, table.times[row], is_event, state, domain));
            }
        }
    }
    rows.sort_by(|a, b| (&a.0, a.1, a.2).cmp(&(&b.0, b.1, b.2)));
    let mut events = Vec::new();
    let mut previous: Option<(Cow<'t, str>, Cow<'t, str>)> = None; // (entity, state)
    for (entity, time, is_event, state, domain) in rows {
        let prior = previous.as_ref().filter(|(e, _)| *e == entity).map(|(_, st)| st.clone());
        previous = Some((entity.clone(), state.clone()));
        if !is_event || prior.as_ref() == Some(&state) {
            continue;
        }
        events.push(Event { time, entity_id: entity, domain, state, previous_state: prior.unwrap_or_default() });
    }
    events.sort_by(|a, b| (a.time, &a.entity_id).cmp(&(b.time, &b.entity_id)));
    events
}

/// The power readings in a `query-floats` answer (the host has already
/// dropped non-numeric values and converted integers) in watts (`values`
/// are in units of `watts_per_unit` W), minus non-finite ones.
pub fn readings_from_series(series: &FloatSeries, watts_per_unit: f64) -> Vec<Reading> {
    let pairs = series.times.iter().zip(&series.values);
    let finite = pairs.filter(|(_, w)| w.is_finite());
    finite.map(|(&time, &value)| Reading { time, watts: to_watts(value, watts_per_unit) }).collect()
}

/// `value` units of `watts_per_unit` W in watts. A `kW` value such as 2.51
/// is not exact in binary: times 1000 it may miss 2510 by an ulp, so the
/// product is rounded to the µW (far below any meter's resolution) and a
/// kW sensor gives the very numbers a W sensor would.
fn to_watts(value: f64, watts_per_unit: f64) -> f64 {
    if watts_per_unit == 1.0 {
        return value;
    }
    let watts = value * watts_per_unit;
    let micro = (watts * 1e6).round() / 1e6;
    if micro.is_finite() { micro } else { watts }
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
        let readings = readings_from_series(&series, 1.0);
        assert_eq!(readings, vec![Reading { time: 1, watts: 2450.0 }, Reading { time: 4, watts: -3.5 }]);
        let kilowatts = FloatSeries { times: vec![1], values: vec![2.45] };
        assert_eq!(readings_from_series(&kilowatts, 1000.0), vec![Reading { time: 1, watts: 2450.0 }]);
    }

    fn ha(pairs: &[(&str, &str)]) -> Result<Settings, GuestError> {
        let mut all = vec![("schema", "home_assistant"), ("power_entity", "house_power")];
        all.extend_from_slice(pairs);
        settings(&all)
    }

    #[test]
    fn the_home_assistant_preset_fills_every_key_and_keys_still_override() {
        let s = ha(&[("entities", "switch.lamp,light.desk")]).expect("valid");
        assert_eq!(s.events, EventSource::PerEntity(vec!["switch.lamp".into(), "light.desk".into()]));
        assert_eq!((s.state_field.as_str(), s.previous_state_field.as_str()), ("state", ""));
        assert_eq!((s.power_measurement.as_str(), s.power_field.as_str()), ("W", "value"));
        assert_eq!((s.power_entity.as_str(), s.watts_per_unit, s.power_rule), ("house_power", 1.0, PowerRule::Step));
        assert_eq!(s.max_staleness, 3_600_000_000_000);
        let kw = ha(&[("events_measurement", "state"), ("power_unit", "kW"), ("power_entity", "sensor.meter")])
            .expect("valid");
        assert_eq!(kw.events, EventSource::Shared("state".into()));
        assert_eq!((kw.power_measurement.as_str(), kw.watts_per_unit), ("kW", 1000.0));
        assert_eq!(kw.power_entity, "meter", "the sensor. domain is cut: HA tags the object id");
        let nearest =
            ha(&[("events_measurement", "state"), ("power_rule", "nearest"), ("power_field", "w")]).expect("valid");
        assert_eq!((nearest.power_rule, nearest.power_field.as_str()), (PowerRule::Nearest, "w"));
        let homeiq = settings(&[]).expect("valid");
        assert_eq!((homeiq.schema, homeiq.power_rule), (Schema::HomeIq, PowerRule::Nearest));
        assert_eq!(homeiq.events, EventSource::Shared("home_assistant_events".into()));
        assert!(s.description.contains("schema=home_assistant") && s.description.contains("power_entity=house_power"));
    }

    #[test]
    fn home_assistant_config_errors_name_the_key_and_the_fix() {
        type Case<'a> = (&'a [(&'a str, &'a str)], &'a str, &'a str);
        let cases: [Case; 5] = [
            (
                &[("schema", "home_assistant"), ("events_measurement", "state")],
                "power_entity: ",
                "power_entity = \"house_power\"",
            ),
            (&[("schema", "home_assistant"), ("power_entity", "p")], "entities: ", "default_measurement"),
            (&[("schema", "hass")], "schema: ", "\"home_assistant\""),
            (&[("power_unit", "kw")], "power_unit: ", "\"kW\""),
            (&[("entities", "lamp")], "entities: ", "switch.lamp"),
        ];
        for (pairs, key, fix) in cases {
            match settings(pairs) {
                Err(GuestError::Config(m)) => assert!(m.starts_with(key) && m.contains(fix), "{m}"),
                other => panic!("{pairs:?}: {other:?}"),
            }
        }
    }

    /// A table of rows `(time, entity_id tag, domain tag, state)`.
    fn ha_rows(rows: &[(i64, &str, &str, &str)]) -> Table {
        let mut b = TableBuilder::new(&["entity_id", "domain"], &["state"]);
        for (t, entity, domain, state) in rows {
            let cell = Cell::Text(b.text(state));
            b.push(*t, &[Some(entity), Some(domain)], &[Some(cell)]);
        }
        b.finish()
    }

    #[test]
    fn previous_state_comes_from_the_entity_s_previous_row_even_before_the_window() {
        let s = ha(&[("events_measurement", "state")]).expect("valid");
        let before = ha_rows(&[(1, "lamp", "switch", "off"), (2, "desk", "light", "on"), (3, "t", "sensor", "21")]);
        let window = ha_rows(&[
            (10, "lamp", "switch", "on"),
            (11, "desk", "light", "on"), // an attribute change: no event
            (12, "lamp", "switch", "off"),
            (13, "fan", "fan", "on"),  // no earlier row at all
            (14, "t", "sensor", "22"), // not a wanted domain
        ]);
        let events = derive_events(&window, &before, &s);
        let got: Vec<(i64, &str, &str, &str)> =
            events.iter().map(|e| (e.time, &*e.entity_id, &*e.previous_state, &*e.state)).collect();
        assert_eq!(
            got,
            [(10, "switch.lamp", "off", "on"), (12, "switch.lamp", "on", "off"), (13, "fan.fan", "", "on")]
        );
        assert_eq!(events[0].domain, "switch");
    }
}
