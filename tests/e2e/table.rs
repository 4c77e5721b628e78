//! `influx.query-table` and `influx.write-table` through the `influx`
//! capability, on the embedded store (the default): the correlator reads
//! its events and writes its correlations as tables, so a cycle proves
//! both, and a write its grants refuse is denied and counted like `write`.
//! (Against a real influxd, tests/correlator.rs runs the same calls through
//! the trait's default `query-table` and the outbox's `write-table`.)

use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::support::*;
use wattedge::store::{FieldValue, Point};

const S: i64 = 1_000_000_000;

fn correlator(grants: &str) -> String {
    format!(
        "[guests.correlator]\ncomponent = \"builtin:correlator\"\nschedule = \"every 1h\"\nrun_timeout = \"30s\"\n\n\
         [guests.correlator.grants]\ninflux_read = [\"home_assistant_events\", \"smart_meter\"]\n{grants}"
    )
}

/// Events of two entities (one with its state in a field, one without a
/// previous state) and a power step around each, a minute ago.
fn inputs() -> (i64, Vec<Point>) {
    let t = (wattedge::store::now_ns() / S - 60) * S;
    let event = |entity: &str, fields: Vec<(&str, FieldValue)>, time: i64| {
        point("home_assistant_events", &[("entity_id", entity), ("domain", "switch")], fields, time)
    };
    let text = |s: &str| FieldValue::Text(s.into());
    let power = |w: f64, time: i64| point("smart_meter", &[], vec![("total_power_w", FieldValue::Float(w))], time);
    let points = vec![
        event("switch.lamp", vec![("state_value", text("on")), ("previous_state", text("off"))], t),
        event("switch.kettle", vec![("state_value", text("on"))], t + 20 * S),
        power(2450.0, t - 5 * S),
        power(2510.0, t + 5 * S),
        power(400.0, t + 15 * S),
        power(2400.0, t + 25 * S),
    ];
    (t, points)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cycle_reads_and_writes_tables_on_the_embedded_store() {
    let body = correlator("influx_write = [\"event_energy_correlation\"]\n");
    let (setup, host) = start(&body).await;
    let addr = host.admin_addr();
    wait_runs(addr, "correlator", 1, Duration::from_secs(20)).await;
    let (t, points) = inputs();
    host.store().write(points).await.unwrap();
    assert_eq!(setup.post(addr, "/guests/correlator/invoke", "{}").await.0, 202);
    let snap = wait_runs(addr, "correlator", 2, Duration::from_secs(20)).await;
    assert_eq!(snap["counters"]["correlations_written"], 2, "{snap}");
    let written = rows(&host, "event_energy_correlation").await;
    let lamp = point(
        "event_energy_correlation",
        &[("entity_id", "switch.lamp"), ("domain", "switch"), ("state", "on"), ("previous_state", "off")],
        vec![
            ("power_before_w", FieldValue::Float(2450.0)),
            ("power_after_w", FieldValue::Float(2510.0)),
            ("power_delta_w", FieldValue::Float(60.0)),
            ("power_delta_pct", FieldValue::Float(2.449)),
        ],
        t,
    );
    let kettle = point(
        "event_energy_correlation",
        &[("entity_id", "switch.kettle"), ("domain", "switch"), ("state", "on")],
        vec![
            ("power_before_w", FieldValue::Float(400.0)),
            ("power_after_w", FieldValue::Float(2400.0)),
            ("power_delta_w", FieldValue::Float(2000.0)),
            ("power_delta_pct", FieldValue::Float(500.0)),
        ],
        t + 20 * S,
    );
    assert_eq!(written, vec![as_row(&lamp), as_row(&kettle)], "no previous_state tag where it was empty");
    let handle = host.supervisor().guest("correlator").expect("configured").clone();
    assert_eq!(handle.shared.influx.points_written.load(Ordering::Relaxed), 2);
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ungranted_write_table_is_denied_and_counted() {
    let (setup, host) = start(&correlator("")).await;
    let addr = host.admin_addr();
    wait_runs(addr, "correlator", 1, Duration::from_secs(20)).await;
    host.store().write(inputs().1).await.unwrap();
    assert_eq!(setup.post(addr, "/guests/correlator/invoke", "{}").await.0, 202);
    let snap = wait_runs(addr, "correlator", 2, Duration::from_secs(20)).await;
    let detail = snap["detail"].as_str().unwrap_or_default();
    let refused = "denied: measurement \"event_energy_correlation\" is not in grants.influx_write of guest correlator";
    assert!(detail.contains(refused), "{snap}");
    let influx = &host.supervisor().guest("correlator").expect("configured").shared.influx;
    assert_eq!(influx.writes_denied.load(Ordering::Relaxed), 1);
    assert_eq!(influx.points_written.load(Ordering::Relaxed), 0);
    assert!(rows(&host, "event_energy_correlation").await.is_empty());
    host.shutdown().await;
}
