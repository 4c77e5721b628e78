//! `influx.query-floats` (one numeric field as two columns) against
//! `query`: the embedded store's own scan and the trait's default (here on
//! a real influxd behind the v1 backend) must return exactly the numeric
//! values of the rows `query` returns, for every selector, range, order,
//! limit and tag filter; and a guest asking for an ungranted measurement is
//! refused and counted like a denied `query`.

use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::support::influxd::Influxd;
use crate::support::*;
use wattedge::store::{FieldValue, FloatSeries, Point, Query, Selector, TimeSeriesStore};

const T0: i64 = 1_700_000_000_000_000_000;
const S: i64 = 1_000_000_000;

/// The embedded store without retention: the rows here are from 2023, and
/// the default 90-day retention purges at start-up, racing the test's write.
const EMBEDDED_FOREVER: &str = "[influx]\nbackend = \"embedded\"\nretention = \"forever\"\n";

fn point(site: &str, fields: Vec<(&str, FieldValue)>, time: i64) -> Point {
    Point {
        measurement: "meter".into(),
        tags: [("site".to_string(), site.to_string())].into_iter().collect(),
        fields: fields.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
        time,
    }
}

/// `w` of row `i`: exact in short decimal text, which InfluxDB 1.6 needs
/// to round-trip a float bit for bit.
fn w_value(i: i64) -> f64 {
    i as f64 * 0.5 - 1000.25
}

/// Ten rows over two series. `w` is a float in most of them and missing from
/// every fourth; `n` is an integer, `s` text and `b` a boolean. One field
/// keeps one type, as InfluxDB requires.
fn points() -> Vec<Point> {
    (0..10)
        .map(|i| {
            let site = if i % 2 == 0 { "a" } else { "b" };
            let mut fields = vec![
                ("n", FieldValue::Integer(i * 1_000_000_007 - 3)),
                ("s", FieldValue::Text(format!("row {i}"))),
                ("b", FieldValue::Boolean(i % 3 == 0)),
            ];
            if i % 4 != 3 {
                fields.push(("w", FieldValue::Float(w_value(i))));
            }
            point(site, fields, T0 + i * S)
        })
        .collect()
}

/// Queries that exercise every part of `series-query`.
fn queries() -> Vec<Query> {
    let all = Query { measurement: "meter".into(), ..Query::default() };
    let site_b = [("site".to_string(), "b".to_string())].into_iter().collect();
    vec![
        all.clone(),
        Query { descending: true, ..all.clone() },
        Query { limit: Some(4), ..all.clone() },
        Query { descending: true, limit: Some(2), ..all.clone() },
        Query { start: Some(T0 + 2 * S), end: Some(T0 + 8 * S), ..all.clone() },
        Query { select: Selector::First, ..all.clone() },
        Query { select: Selector::Last, ..all.clone() },
        Query { tags: site_b, ..all.clone() },
        Query { fields: vec!["n".into()], ..all.clone() },
        Query { measurement: "nothing_here".into(), ..all },
    ]
}

/// What `query-floats` must return: `query` with `fields = [field]`, numeric values only.
async fn via_query(store: &dyn TimeSeriesStore, q: &Query, field: &str) -> FloatSeries {
    let rows = store.query(Query { fields: vec![field.into()], ..q.clone() }).await.expect("query");
    FloatSeries::from_rows(&rows, field)
}

/// Compares `query_floats` with `query` for every query and field.
async fn assert_matches_query(store: &dyn TimeSeriesStore) {
    for q in queries() {
        for field in ["w", "n", "s", "b", "missing"] {
            let floats = store.query_floats(q.clone(), field.into()).await.expect("query_floats");
            assert_eq!(floats, via_query(store, &q, field).await, "field {field} of {q:?}");
        }
    }
}

/// The concrete answers for the whole range, so the comparison above cannot
/// pass by both sides being empty or wrong the same way.
async fn assert_known_answers(store: &dyn TimeSeriesStore) {
    let all = Query { measurement: "meter".into(), ..Query::default() };
    let w = store.query_floats(all.clone(), "w".into()).await.unwrap();
    let kept: Vec<i64> = (0..10).filter(|i| i % 4 != 3).collect();
    assert_eq!(w.times, kept.iter().map(|i| T0 + i * S).collect::<Vec<_>>(), "rows without w are skipped");
    assert_eq!(w.values, kept.iter().map(|&i| w_value(i)).collect::<Vec<_>>(), "exact f64 bits");
    let n = store.query_floats(all.clone(), "n".into()).await.unwrap();
    assert_eq!(n.values, (0..10i64).map(|i| (i * 1_000_000_007 - 3) as f64).collect::<Vec<_>>(), "integers convert");
    let text = store.query_floats(all.clone(), "s".into()).await.unwrap();
    assert_eq!(text, FloatSeries::default(), "text is not numeric");
    let last_two = Query { descending: true, limit: Some(2), ..all };
    assert_eq!(store.query_floats(last_two, "w".into()).await.unwrap().times, vec![T0 + 9 * S, T0 + 8 * S]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_store_answers_exactly_like_query() {
    let (_setup, host) = start(EMBEDDED_FOREVER).await;
    assert_eq!(host.store().kind(), "embedded");
    let mut pts = points();
    // Unsigned values exist only in the embedded store (InfluxDB 1.x has none).
    pts.push(point("c", vec![("w", FieldValue::Unsigned(u64::MAX))], T0 + 20 * S));
    host.store().write(pts).await.unwrap();
    assert_matches_query(host.store().as_ref()).await;
    let store = host.store().as_ref();
    let unsigned = store.query_floats(Query { measurement: "meter".into(), ..Query::default() }, "w".into()).await;
    assert_eq!(unsigned.unwrap().values.last(), Some(&(u64::MAX as f64)), "unsigned converts with `as f64`");
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_store_known_answers() {
    let (_setup, host) = start(EMBEDDED_FOREVER).await;
    host.store().write(points()).await.unwrap();
    assert_known_answers(host.store().as_ref()).await;
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn influxdb_v1_default_implementation_answers_exactly_like_query() {
    let influxd = Influxd::start();
    influxd.create_database("energy");
    let body = format!(
        "[influx]\nbackend = \"v1\"\nurl = \"{}\"\ndatabase = \"energy\"\nflush_interval = \"100ms\"\nretry_max_delay = \"1s\"\n\n",
        influxd.url()
    );
    let (_setup, host) = start(&body).await;
    let store = host.store().clone();
    store.write(points()).await.unwrap();
    let all = Query { measurement: "meter".into(), ..Query::default() };
    wait_for(Duration::from_secs(20), "the points to reach influxd", || {
        let (store, all) = (store.clone(), all.clone());
        async move { (store.query(all).await.ok()?.len() == 10).then_some(()) }
    })
    .await;
    assert_matches_query(store.as_ref()).await;
    assert_known_answers(store.as_ref()).await;
    host.shutdown().await;
}

/// A correlator granted its events but not `smart_meter`: its power query,
/// the only `query-floats` call, is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ungranted_measurement_is_denied_and_counted() {
    let body = "[guests.correlator]\ncomponent = \"builtin:correlator\"\nschedule = \"every 1h\"\nrun_timeout = \"30s\"\n\n\
                [guests.correlator.grants]\ninflux_read = [\"home_assistant_events\"]\n";
    let (setup, host) = start(body).await;
    let addr = host.admin_addr();
    wait_runs(addr, "correlator", 1, Duration::from_secs(20)).await;
    let t = (wattedge::store::now_ns() / S - 60) * S;
    let event = Point {
        measurement: "home_assistant_events".into(),
        tags: [("entity_id", "switch.lamp"), ("domain", "switch")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        fields: [("state_value".to_string(), FieldValue::Text("on".into()))].into_iter().collect(),
        time: t,
    };
    host.store().write(vec![event]).await.unwrap();
    let (status, _) = setup.post(addr, "/guests/correlator/invoke", "{}").await;
    assert_eq!(status, 202);
    let snap = wait_runs(addr, "correlator", 2, Duration::from_secs(20)).await;
    let detail = snap["detail"].as_str().unwrap_or_default();
    let refused =
        "querying smart_meter total_power_w: denied: measurement \"smart_meter\" is not in grants.influx_read";
    assert!(detail.contains(refused), "the correlator's query-floats call is refused: {snap}");
    let handle = host.supervisor().guest("correlator").expect("configured").clone();
    let influx = &handle.shared.influx;
    assert_eq!(influx.queries_denied.load(Ordering::Relaxed), 1, "the refused query-floats is counted");
    assert_eq!(influx.queries.load(Ordering::Relaxed), 2, "only the two granted events queries ran");
    host.shutdown().await;
}
