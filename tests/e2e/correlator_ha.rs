//! The correlator on Home Assistant's own InfluxDB data (`schema =
//! "home_assistant"`), against a real influxd: every line is written the
//! way HA's `influxdb` integration writes it (a power sensor in the
//! measurement named after its unit, tags `domain` and `entity_id` without
//! the domain, field `value`; a switch or light in a measurement of its
//! own or in `default_measurement`, fields `state` and `value`, attributes
//! as `*_str` fields; on change only, no previous state), straight to
//! influxd's `/write`; the shipped correlator runs in the host on the v1
//! backend, and its points are read back from InfluxDB.

use std::time::Duration;

use crate::support::influxd::Influxd;
use crate::support::*;
use serde_json::Value;

const DB: &str = "home_assistant";
const S: i64 = 1_000_000_000;

/// The host config: the correlator on the v1 backend with `config` (TOML
/// inline-table entries) and read grants for everything HA writes here.
fn host_body(influxd: &Influxd, config: &str) -> String {
    format!(
        "[influx]\nbackend = \"v1\"\nurl = \"{}\"\ndatabase = \"{DB}\"\nflush_interval = \"100ms\"\nretry_max_delay = \"1s\"\n\n\
         [guests.correlator]\ncomponent = \"builtin:correlator\"\nschedule = \"every 1h\"\nrun_timeout = \"30s\"\nmemory_limit = \"64MiB\"\n\
         config = {{ schema = \"home_assistant\", power_entity = \"house_power\", {config} }}\n\n\
         [guests.correlator.grants]\ninflux_read = [\"W\", \"kW\", \"state\", \"switch.lamp\", \"light.desk\"]\n\
         influx_write = [\"event_energy_correlation\"]\n",
        influxd.url()
    )
}

/// Per-entity measurements, HA's default.
const PER_ENTITY: &str = "entities = \"switch.lamp,light.desk\"";

/// A moment a minute ago, on a whole second: events there are settled.
fn event_time() -> i64 {
    (wattedge::store::now_ns() / S - 60) * S
}

fn write(influxd: &Influxd, lines: &[String]) {
    influxd.write_lines(DB, lines);
}

/// A power sensor's line: measurement = its unit, as HA writes it.
fn power(unit: &str, object_id: &str, value: f64, t: i64) -> String {
    format!(
        "{unit},domain=sensor,entity_id={object_id} device_class_str=\"power\",friendly_name_str=\"{object_id}\",\
         state_class_str=\"measurement\",unit_of_measurement_str=\"{unit}\",value={value:?} {t}"
    )
}

/// A switch or light change: in `measurement` (`None`: its own, the
/// entity id); `value` is HA's 1/0 for on/off.
fn change(measurement: Option<&str>, entity: &str, state: &str, t: i64) -> String {
    let (domain, object_id) = entity.split_once('.').unwrap();
    let value = if state == "on" { 1.0 } else { 0.0 };
    format!(
        "{},domain={domain},entity_id={object_id} friendly_name_str=\"{object_id}\",state=\"{state}\",value={value:?} {t}",
        measurement.unwrap_or(entity)
    )
}

async fn setup(config: &str) -> (Influxd, Setup, wattedge::RunningHost) {
    let influxd = Influxd::start();
    influxd.create_database(DB);
    let (setup, host) = start(&host_body(&influxd, config)).await;
    wait_runs(host.admin_addr(), "correlator", 1, Duration::from_secs(20)).await;
    (influxd, setup, host)
}

/// Runs one more correlator cycle and waits for it; returns the snapshot.
async fn cycle(setup: &Setup, host: &wattedge::RunningHost) -> Value {
    invoke_and_wait(setup, host, "correlator").await
}

/// Correlation rows in InfluxDB (after the outbox has forwarded them).
async fn correlations(influxd: &Influxd, expected: usize) -> Vec<Value> {
    influxd.rows_of(DB, "event_energy_correlation", expected).await
}

/// The one correlation's (entity, previous state, state, before, after, delta, pct).
fn summary(row: &Value) -> (String, String, String, f64, f64, f64, f64) {
    let text = |k: &str| row[k].as_str().unwrap_or_default().to_string();
    let num = |k: &str| row[k].as_f64().unwrap_or(f64::NAN);
    (
        text("entity_id"),
        text("previous_state"),
        text("state"),
        num("power_before_w"),
        num("power_after_w"),
        num("power_delta_w"),
        num("power_delta_pct"),
    )
}

fn lamp_on(before: f64, after: f64) -> (String, String, String, f64, f64, f64, f64) {
    let pct = ((after - before) / before * 100.0 * 1000.0).round() / 1000.0;
    ("switch.lamp".into(), "off".into(), "on".into(), before, after, after - before, pct)
}

/// A sample of the guest's line in `/metrics`.
async fn metric(host: &wattedge::RunningHost, name: &str) -> f64 {
    let metrics = get(host.admin_addr(), "/metrics").await.1.as_str().unwrap().to_string();
    let prefix = format!("{name}{{guest=\"correlator\"}} ");
    let line = metrics.lines().find(|l| l.starts_with(&prefix));
    line.and_then(|l| l[prefix.len()..].parse().ok()).unwrap_or_else(|| panic!("no {name}: {metrics}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_two_power_sensors_in_w_only_the_configured_one_is_read() {
    let (influxd, setup, host) = setup(PER_ENTITY).await;
    let t = event_time();
    write(
        &influxd,
        &[
            change(None, "switch.lamp", "off", t - 600 * S),
            power("W", "house_power", 2450.0, t - 3 * S),
            power("W", "solar_inverter", 800.0, t - S),
            power("W", "house_power", 2510.0, t + 2 * S),
            power("W", "solar_inverter", 3100.0, t + 3 * S),
            change(None, "switch.lamp", "on", t),
        ],
    );
    let snap = cycle(&setup, &host).await;
    let rows = correlations(&influxd, 1).await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(summary(&rows[0]), lamp_on(2450.0, 2510.0), "the house meter's step, not the inverter's");
    assert_eq!((rows[0]["time"].as_i64(), rows[0]["domain"].as_str()), (Some(t), Some("switch")));
    assert_eq!(rows[0]["power_delta_pct"], 2.449);
    let counters = &snap["counters"];
    assert_eq!(counters["schema"], "home_assistant", "{snap}");
    assert_eq!(counters["power_sensor"], "W entity_id=house_power value", "{snap}");
    assert_eq!(counters["last_correlation"], "switch.lamp off → on: +60 W", "{snap}");
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_change_readings_minutes_apart_give_the_step_and_a_stale_one_gives_none() {
    let config = format!("{PER_ENTITY}, lookback = \"3h\"");
    let (influxd, setup, host) = setup(&config).await;
    let t = event_time();
    let desk = t - 2 * 3600 * S;
    write(
        &influxd,
        &[
            // The meter was silent for over an hour before the desk light.
            power("W", "house_power", 900.0, desk - 3601 * S),
            change(None, "light.desk", "off", desk - 7200 * S),
            change(None, "light.desk", "on", desk),
            // Then it wrote 4 minutes before the lamp and 20 s after it.
            change(None, "switch.lamp", "off", t - 4 * 3600 * S),
            power("W", "house_power", 2450.0, t - 240 * S),
            change(None, "switch.lamp", "on", t),
            power("W", "house_power", 2510.0, t + 20 * S),
        ],
    );
    let snap = cycle(&setup, &host).await;
    let rows = correlations(&influxd, 1).await;
    assert_eq!(rows.len(), 1, "only the lamp: {rows:?}");
    assert_eq!(summary(&rows[0]), lamp_on(2450.0, 2510.0));
    assert_eq!(snap["counters"]["events_without_power"], 1, "the desk light: {snap}");
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kw_sensor_gives_the_same_delta_in_w() {
    let (influxd, setup, host) = setup(&format!("{PER_ENTITY}, power_unit = \"kW\"")).await;
    let t = event_time();
    write(
        &influxd,
        &[
            change(None, "switch.lamp", "off", t - 600 * S),
            power("kW", "house_power", 2.45, t - 240 * S),
            change(None, "switch.lamp", "on", t),
            power("kW", "house_power", 2.51, t + 20 * S),
        ],
    );
    cycle(&setup, &host).await;
    let rows = correlations(&influxd, 1).await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(summary(&rows[0]), lamp_on(2450.0, 2510.0), "kW times 1000, exactly");
    host.shutdown().await;
}

/// The lamp and the desk light, each switched in the window, with their
/// previous rows hours before it; an attribute-only row; the house meter.
fn two_entities(measurement: Option<&str>, t: i64) -> Vec<String> {
    vec![
        change(measurement, "switch.lamp", "off", t - 3 * 3600 * S),
        change(measurement, "light.desk", "on", t - 2 * 3600 * S),
        power("W", "house_power", 500.0, t - 1800 * S),
        change(measurement, "switch.lamp", "on", t - 60 * S),
        power("W", "house_power", 2500.0, t - 58 * S),
        // HA writes a row when only an attribute changes: no state change.
        change(measurement, "switch.lamp", "on", t - 30 * S),
        change(measurement, "light.desk", "off", t),
        power("W", "house_power", 2440.0, t + S),
    ]
}

async fn both_entities_correlate_with_previous_state_from_before_the_window(config: &str, measurement: Option<&str>) {
    let (influxd, setup, host) = setup(config).await;
    let t = event_time();
    let mut lines = two_entities(measurement, t);
    if let Some(m) = measurement {
        // The shared measurement holds every entity without a unit.
        lines.push(change(Some(m), "binary_sensor.door", "on", t - 10 * S));
    }
    write(&influxd, &lines);
    cycle(&setup, &host).await;
    let rows = correlations(&influxd, 2).await;
    let got: Vec<_> = rows.iter().map(summary).collect();
    assert_eq!(
        got,
        [
            ("switch.lamp".into(), "off".into(), "on".into(), 500.0, 2500.0, 2000.0, 400.0),
            ("light.desk".into(), "on".into(), "off".into(), 2500.0, 2440.0, -60.0, -2.4),
        ],
        "previous states from rows hours before the 5 min window; {rows:?}"
    );
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_entity_measurements_work_with_previous_state_from_before_the_window() {
    both_entities_correlate_with_previous_state_from_before_the_window(PER_ENTITY, None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_measurement_state_works_with_previous_state_from_before_the_window() {
    both_entities_correlate_with_previous_state_from_before_the_window(
        "events_measurement = \"state\", domains = \"switch,light\"",
        Some("state"),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_overlapping_cycles_write_each_correlation_once_in_at_most_three_queries_each() {
    let (influxd, setup, host) = setup(PER_ENTITY).await;
    let t = event_time();
    write(&influxd, &two_entities(None, t));
    let mut snap = Value::Null;
    for _ in 0..5 {
        snap = cycle(&setup, &host).await;
    }
    let rows = correlations(&influxd, 2).await;
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert_eq!(snap["counters"]["correlations_written"], 2, "counted once: {snap}");
    let runs = snap["runs"].as_u64().unwrap() as f64;
    let queries = metric(&host, "wattedge_guest_influx_queries_total").await;
    assert!(queries <= 3.0 * runs, "{queries} store queries in {runs} cycles (incl. the start-up run)");
    // The start-up run found no rows (1 query); the first cycle read the
    // events, the rows before them and the power (3); the four after it
    // read the events and the rows before them, and found nothing new to
    // read power for (2 each).
    assert_eq!((runs, queries), (6.0, 1.0 + 3.0 + 4.0 * 2.0), "{snap}");
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_power_entity_is_a_config_error_naming_the_key_and_the_fix() {
    let influxd = Influxd::start();
    let body = host_body(&influxd, PER_ENTITY).replace("power_entity = \"house_power\", ", "");
    let (_setup, host) = start(&body).await;
    let snap = wait_for(Duration::from_secs(20), "the init error", || async {
        let (_, snap) = get(host.admin_addr(), "/guests/correlator").await;
        snap["detail"].as_str().is_some_and(|d| d.contains("power_entity")).then_some(snap)
    })
    .await;
    let detail = snap["detail"].as_str().unwrap();
    assert!(detail.contains("power_entity: ") && detail.contains("power_entity = \"house_power\""), "{snap}");
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_measurement_outside_the_grants_refuses_the_whole_multi_measurement_query() {
    // The guest asks query-multi for switch.lamp and switch.safe in one
    // call; only switch.lamp is granted.
    let (influxd, setup, host) = setup("entities = \"switch.lamp,switch.safe\"").await;
    let t = event_time();
    write(&influxd, &[change(None, "switch.safe", "on", t), change(None, "switch.lamp", "on", t)]);
    let addr = host.admin_addr();
    let (status, _) = setup.post(addr, "/guests/correlator/invoke", "{}").await;
    assert_eq!(status, 202);
    let snap = wait_runs(addr, "correlator", 2, Duration::from_secs(20)).await;
    assert_eq!(snap["state"], "degraded", "{snap}");
    let detail = snap["detail"].as_str().unwrap();
    assert!(detail.contains("denied") && detail.contains("\"switch.safe\" is not in grants.influx_read"), "{snap}");
    assert_eq!(metric(&host, "wattedge_guest_influx_denied_total").await, 2.0, "one per cycle");
    assert!(correlations(&influxd, 0).await.is_empty());
    host.shutdown().await;
}
