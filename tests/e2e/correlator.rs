//! The correlator guest against a real influxd: Home Assistant events and
//! smart-meter readings are written straight into InfluxDB, the shipped
//! correlator runs in the host on the v1 backend, and its
//! `event_energy_correlation` points are read back from InfluxDB.

use std::time::Duration;

use crate::support::influxd::Influxd;
use crate::support::*;
use serde_json::Value;

const DB: &str = "energy";
const S: i64 = 1_000_000_000;

fn host_body(influxd: &Influxd) -> String {
    format!(
        "[influx]\nbackend = \"v1\"\nurl = \"{}\"\ndatabase = \"{DB}\"\nflush_interval = \"100ms\"\nretry_max_delay = \"1s\"\n\n\
         [guests.correlator]\ncomponent = \"builtin:correlator\"\nschedule = \"every 1h\"\nrun_timeout = \"30s\"\nmemory_limit = \"64MiB\"\n\
         config = {{ lookback = \"5m\", offset = \"5s\", padding = \"30s\", min_delta_w = 10.0 }}\n\n\
         [guests.correlator.grants]\ninflux_read = [\"home_assistant_events\", \"smart_meter\"]\ninflux_write = [\"event_energy_correlation\"]\n",
        influxd.url()
    )
}

/// A moment a minute ago, on a whole second: events there are settled.
fn event_time() -> i64 {
    (wattedge::store::now_ns() / S - 60) * S
}

fn write(influxd: &Influxd, lines: &[String]) {
    influxd.write_lines(DB, lines);
}

fn event(entity: &str, state: &str, previous: &str, t: i64) -> String {
    let domain = entity.split('.').next().unwrap();
    format!(
        "home_assistant_events,domain={domain},entity_id={entity} state_value=\"{state}\",previous_state=\"{previous}\" {t}"
    )
}

fn reading(watts: f64, t: i64) -> String {
    format!("smart_meter total_power_w={watts} {t}")
}

/// Starts influxd and the host; returns both and the test's setup.
async fn setup() -> (Influxd, Setup, wattedge::RunningHost) {
    let influxd = Influxd::start();
    influxd.create_database(DB);
    let (setup, host) = start(&host_body(&influxd)).await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lamp_switched_on_gives_one_exact_correlation() {
    let (influxd, setup, host) = setup().await;
    let t = event_time();
    write(&influxd, &[reading(2450.0, t - 5 * S), reading(2510.0, t + 5 * S), event("switch.lamp", "on", "off", t)]);
    let snap = cycle(&setup, &host).await;
    let rows = correlations(&influxd, 1).await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    let row = &rows[0];
    assert_eq!(row["time"].as_i64(), Some(t), "written at the event's time");
    assert_eq!(row["entity_id"], "switch.lamp");
    assert_eq!(row["domain"], "switch");
    assert_eq!(row["state"], "on");
    assert_eq!(row["previous_state"], "off");
    assert_eq!(row["power_before_w"], 2450.0);
    assert_eq!(row["power_after_w"], 2510.0);
    assert_eq!(row["power_delta_w"], 60.0);
    assert_eq!(row["power_delta_pct"], 2.449);
    assert_eq!(snap["counters"]["correlations_written"], 1, "{snap}");
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_nearest_reading_wins_and_thresholds_and_signs_are_exact() {
    let (influxd, setup, host) = setup().await;
    let t = event_time();
    let lines = vec![
        // Nearest wins: 1000 W sits earlier in the window than 2000 W, which is nearer to t - 5 s.
        reading(1000.0, t - 30 * S),
        reading(2000.0, t - 6 * S),
        reading(2100.0, t + 5 * S),
        event("switch.kettle", "on", "off", t),
        // 9.9 W: below the threshold.
        reading(500.0, t + 55 * S),
        reading(509.9, t + 65 * S),
        event("light.hall", "on", "off", t + 60 * S),
        // Exactly 10 W: written.
        reading(700.0, t - 125 * S),
        reading(710.0, t - 115 * S),
        event("light.desk", "on", "off", t - 120 * S),
        // A drop: 2150 -> 2030 W.
        reading(2150.0, t - 185 * S),
        reading(2030.0, t - 175 * S),
        event("fan.attic", "off", "on", t - 180 * S),
        // Before 0 W: the percentage is 0.
        reading(0.0, t - 215 * S),
        reading(300.0, t - 205 * S),
        event("climate.heater", "heat", "off", t - 210 * S),
    ];
    write(&influxd, &lines);
    cycle(&setup, &host).await;
    let rows = correlations(&influxd, 4).await;
    let by_entity = |e: &str| rows.iter().find(|r| r["entity_id"] == e).cloned();
    let kettle = by_entity("switch.kettle").expect("kettle correlated");
    assert_eq!(kettle["power_before_w"], 2000.0, "nearest reading, not the earliest in the window");
    assert!(by_entity("light.hall").is_none(), "9.9 W is below min_delta_w: {rows:?}");
    assert_eq!(by_entity("light.desk").expect("exactly 10 W is written")["power_delta_w"], 10.0);
    let fan = by_entity("fan.attic").expect("fan correlated");
    assert_eq!((fan["power_delta_w"].as_f64(), fan["power_delta_pct"].as_f64()), (Some(-120.0), Some(-5.581)));
    assert_eq!(by_entity("climate.heater").expect("heater correlated")["power_delta_pct"], 0.0);
    assert_eq!(rows.len(), 4, "{rows:?}");
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sparse_readings_give_nothing_and_an_event_counts_once_across_cycles() {
    let (influxd, setup, host) = setup().await;
    let t = event_time();
    // Readings every 300 s: none within padding of t ± 5 s.
    write(
        &influxd,
        &[reading(100.0, t - 200 * S), reading(3000.0, t + 100 * S), event("switch.pump", "on", "off", t - 50 * S)],
    );
    // A correlatable event seen by five overlapping cycles.
    write(&influxd, &[reading(400.0, t - 5 * S), reading(900.0, t + 5 * S), event("switch.oven", "on", "off", t)]);
    let mut snap = Value::Null;
    for _ in 0..5 {
        snap = cycle(&setup, &host).await;
    }
    let rows = correlations(&influxd, 1).await;
    assert_eq!(rows.len(), 1, "only the oven: {rows:?}");
    assert_eq!(rows[0]["entity_id"], "switch.oven");
    assert_eq!(snap["counters"]["correlations_written"], 1, "counted once: {snap}");
    assert_eq!(snap["counters"]["correlations_found"], 1, "{snap}");
    let metrics = get(host.admin_addr(), "/metrics").await.1.as_str().unwrap().to_string();
    let sample = |name: &str| -> f64 {
        let prefix = format!("{name}{{guest=\"correlator\"}} ");
        let line = metrics.lines().find(|l| l.starts_with(&prefix));
        line.and_then(|l| l[prefix.len()..].parse().ok()).unwrap_or_else(|| panic!("no {name}: {metrics}"))
    };
    let runs = snap["runs"].as_u64().unwrap();
    let queries = sample("wattedge_guest_influx_queries_total");
    assert_eq!(queries, 2.0 * runs as f64, "two store queries per cycle ({runs} cycles, incl. the start-up run)");
    let queried = sample("wattedge_guest_influx_query_seconds_total");
    let wrote = sample("wattedge_guest_influx_write_seconds_total");
    let ran = sample("wattedge_guest_run_seconds_total");
    assert!(queried > 0.0 && wrote > 0.0, "store time is counted: {queried} s querying, {wrote} s writing");
    assert!(queried + wrote <= ran, "store time is part of the runs' {ran} s: {queried} + {wrote} s");
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_query_is_a_counted_error_and_degrades_the_guest() {
    // The database is never created: influxd answers the query with an error.
    let influxd = Influxd::start();
    let (setup, host) = start(&host_body(&influxd)).await;
    let addr = host.admin_addr();
    wait_runs(addr, "correlator", 1, Duration::from_secs(20)).await;
    let (status, _) = setup.post(addr, "/guests/correlator/invoke", "{}").await;
    assert_eq!(status, 202);
    let snap = wait_runs(addr, "correlator", 2, Duration::from_secs(20)).await;
    assert_eq!(snap["state"], "degraded", "never a silent ok: {snap}");
    assert_eq!(snap["counters"]["errors"], 2, "one counted error per failed cycle: {snap}");
    assert!(snap["detail"].as_str().unwrap().contains("database not found"), "{snap}");
    let (status, _) = setup.post(addr, "/guests/correlator/counters/reset", "").await;
    assert_eq!(status, 200);
    assert!(get(addr, "/guests/correlator").await.1["counters"].get("errors").is_none(), "counters reset");
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_write_loses_no_correlation_and_judges_no_event_twice() {
    let influxd = Influxd::start();
    influxd.create_database(DB);
    let t = event_time();
    // The light moves the meter 5 W (below min_delta_w), the kettle 2000 W.
    write(
        &influxd,
        &[
            reading(100.0, t - 25 * S),
            reading(105.0, t - 15 * S),
            reading(400.0, t - 5 * S),
            reading(2400.0, t + 5 * S),
            event("light.hall", "on", "off", t - 20 * S),
            event("switch.kettle", "on", "off", t),
        ],
    );
    // First start: the output measurement is not granted, so the write is refused.
    let granted = "influx_write = [\"event_energy_correlation\"]";
    let refused = host_body(&influxd).replace(granted, "influx_write = [\"somewhere_else\"]");
    let (setup, host) = start(&refused).await;
    let snap = wait_runs(host.admin_addr(), "correlator", 1, Duration::from_secs(20)).await;
    assert_eq!(snap["state"], "degraded", "{snap}");
    assert!(snap["detail"].as_str().unwrap().contains("event_energy_correlation"), "{snap}");
    host.shutdown().await;
    assert!(correlations(&influxd, 0).await.is_empty(), "nothing was written");

    // Restart on the same state with the grant: the kettle, still pending, is
    // written; the light was judged in the failed cycle and is not new.
    let text = std::fs::read_to_string(&setup.config_path).unwrap();
    std::fs::write(&setup.config_path, text.replace("influx_write = [\"somewhere_else\"]", granted)).unwrap();
    let host = wattedge::start(setup.config()).await.expect("restart");
    let snap = wait_runs(host.admin_addr(), "correlator", 1, Duration::from_secs(20)).await;
    assert_eq!(snap["last_run"]["outcome"], "ok", "{snap}");
    // Counters start afresh with the host: had the light not been saved as
    // judged, this cycle would count it again (2 events).
    let counters = &snap["counters"];
    assert_eq!(counters["total_events_processed"], 1, "only the kettle is new: {snap}");
    assert_eq!((&counters["correlations_written"], &counters["events_pending"]), (&1.into(), &0.into()), "{snap}");
    let rows = correlations(&influxd, 1).await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!((rows[0]["entity_id"].as_str(), rows[0]["time"].as_i64()), (Some("switch.kettle"), Some(t)));
    host.shutdown().await;
}
