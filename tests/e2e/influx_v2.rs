//! The InfluxDB v2 backend against a local server implementing
//! `/api/v2/write` and `/api/v2/query` as the backend uses them
//! (`support/influx2_server.rs`; no real InfluxDB 2 runs here): exact round
//! trips through the outbox and Flux, structured queries, hostile names, and
//! a refused token that is retried, not dropped.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::support::influx2_server::{Influx2Server, ORG};
use crate::support::*;
use wattedge::store::{FieldValue, Point, Query, Row, Selector, StoreError};

const BUCKET: &str = "energy";
const TOKEN: &str = "tok-v2+/=";
const T0: i64 = 1_700_000_000_123_456_789;

/// Starts a host whose `[influx]` is the v2 server, with `token` as its secret.
async fn host_for(server: &Influx2Server, token: &str) -> (Setup, wattedge::RunningHost) {
    let body = format!(
        "[influx]\nbackend = \"v2\"\nurl = \"{}\"\norg = \"{ORG}\"\nbucket = \"{BUCKET}\"\ntoken = \"${{secret:influx.token}}\"\nflush_interval = \"100ms\"\nretry_max_delay = \"500ms\"\n\n",
        server.url()
    );
    let setup = Setup::new("127.0.0.1:0", &body);
    let secrets_dir = setup.secrets_file();
    std::fs::create_dir_all(secrets_dir.parent().unwrap()).unwrap();
    wattedge::secrets::SecretStore::open(&secrets_dir).unwrap().set("influx.token", token, None, true).unwrap();
    let host = wattedge::start(setup.config()).await.unwrap_or_else(|e| panic!("start: {e}"));
    (setup, host)
}

fn query(measurement: &str, select: Selector, tags: &[(&str, &str)]) -> Query {
    Query {
        measurement: measurement.into(),
        tags: tags.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        select,
        ..Query::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn points_round_trip_with_exact_types_tags_and_nanoseconds() {
    let server = Influx2Server::start(BUCKET, TOKEN).await;
    let (_setup, host) = host_for(&server, TOKEN).await;
    let points = vec![
        point(
            "meter",
            &[("site", "a, b=c"), ("phase", "L1")],
            vec![
                ("w", FieldValue::Float(1.5)),
                ("n", FieldValue::Integer(-42)),
                ("u", FieldValue::Unsigned(u64::MAX)),
                ("ok", FieldValue::Boolean(true)),
                ("note", FieldValue::Text("say \"hi\" \\ back\nline two, a=b".into())),
                ("empty", FieldValue::Text(String::new())),
            ],
            T0,
        ),
        point("meter", &[("site", "a, b=c"), ("phase", "L1")], vec![("w", FieldValue::Float(2.0))], T0 + 1),
        point("meter", &[("site", "a, b=c"), ("phase", "L2")], vec![("w", FieldValue::Float(-0.25))], T0 + 1),
        point("meter", &[("site", "b"), ("phase", "L1")], vec![("ok", FieldValue::Boolean(false))], T0 + 2),
        point("meter", &[("site", "a, b=c"), ("phase", "L1")], vec![("w", FieldValue::Float(3.25))], T0 + 1000),
        point("meter", &[("site", "old")], vec![("n", FieldValue::Integer(i64::MIN + 1))], -1_000_000_001),
        point("other", &[("site", "a, b=c")], vec![("w", FieldValue::Float(9.0))], T0),
    ];
    assert_eq!(host.store().write(points.clone()).await.unwrap(), 7);
    drained(host.store().as_ref(), Duration::from_secs(20)).await;
    assert_eq!(metric(&host.store().metrics(), "wattedge_outbox_dropped_total"), 0.0);
    let stored = server.values();
    let key = |f: &str| ("meter".to_string(), points[0].tags.clone(), f.to_string(), T0);
    assert_eq!(stored.get(&key("u")), Some(&FieldValue::Unsigned(u64::MAX)), "stored as unsigned: {stored:?}");
    assert_eq!(stored.len(), 12, "every field of every point stored once");

    let all = host.store().query(query("meter", Selector::All, &[])).await.unwrap();
    let expected: Vec<Row> = [5, 0, 1, 2, 3, 4].iter().map(|&i| as_row(&points[i])).collect();
    assert_eq!(all, expected, "exact round trip, oldest first");
    let last_a = host.store().query(query("meter", Selector::Last, &[("site", "a, b=c")])).await.unwrap();
    assert_eq!(last_a, vec![as_row(&points[4])], "last point of the tag set, across its series");
    let first = host.store().query(query("meter", Selector::First, &[])).await.unwrap();
    assert_eq!(first, vec![as_row(&points[5])]);
    let range = Query {
        start: Some(T0),
        end: Some(T0 + 1000),
        ..query("meter", Selector::All, &[("site", "a, b=c"), ("phase", "L1")])
    };
    assert_eq!(host.store().query(range).await.unwrap(), vec![as_row(&points[0]), as_row(&points[1])], "end exclusive");
    let newest_two = Query { descending: true, limit: Some(2), ..query("meter", Selector::All, &[]) };
    assert_eq!(host.store().query(newest_two).await.unwrap(), vec![as_row(&points[4]), as_row(&points[3])]);
    let only_ok = Query { fields: vec!["ok".into()], ..query("meter", Selector::All, &[]) };
    let ok_rows = host.store().query(only_ok).await.unwrap();
    assert_eq!(
        ok_rows.iter().map(|r| (r.time, r.fields.clone())).collect::<Vec<_>>(),
        vec![
            (T0, BTreeMap::from([("ok".to_string(), FieldValue::Boolean(true))])),
            (T0 + 2, BTreeMap::from([("ok".to_string(), FieldValue::Boolean(false))])),
        ]
    );
    assert!(server.queries().iter().all(|q| q.starts_with("from(bucket: \"energy\")")), "{:?}", server.queries());
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_names_and_values_cannot_inject_into_flux() {
    let server = Influx2Server::start(BUCKET, TOKEN).await;
    let (_setup, host) = host_for(&server, TOKEN).await;
    let hostile_tag = "x\") |> drop(columns: [\"site\"]) // ${token} a\\b";
    let hostile_measurement = "m\" or r._measurement != \"";
    let points = vec![
        point("meter", &[("site", hostile_tag)], vec![("w", FieldValue::Float(1.0))], T0),
        point("meter", &[("site", "x")], vec![("w", FieldValue::Float(2.0))], T0 + 1),
        point(hostile_measurement, &[("k", "v")], vec![("w", FieldValue::Float(3.0))], T0 + 2),
    ];
    host.store().write(points.clone()).await.unwrap();
    drained(host.store().as_ref(), Duration::from_secs(20)).await;
    let by_tag = host.store().query(query("meter", Selector::All, &[("site", hostile_tag)])).await.unwrap();
    assert_eq!(by_tag, vec![as_row(&points[0])], "the hostile value is one literal tag value");
    let by_name = host.store().query(query(hostile_measurement, Selector::All, &[])).await.unwrap();
    assert_eq!(by_name, vec![as_row(&points[2])], "the hostile measurement matches only itself");
    let injection = query("meter", Selector::All, &[("site", "nothing\" or r.site != \"")]);
    assert_eq!(host.store().query(injection).await.unwrap(), Vec::<Row>::new(), "no extra condition");
    let field_injection = Query { fields: vec!["w\") |> yield(name: \"".into()], ..query("meter", Selector::All, &[]) };
    assert_eq!(host.store().query(field_injection).await.unwrap(), Vec::<Row>::new());
    assert_eq!(server.queries().len(), 4, "every query reached the server and parsed as the expected pipeline");
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_token_is_retried_and_reported_not_dropped() {
    let server = Influx2Server::start(BUCKET, "the-right-token").await;
    let (_setup, host) = host_for(&server, TOKEN).await;
    let points: Vec<Point> =
        (0..5).map(|i| point("meter", &[("site", "a")], vec![("n", FieldValue::Integer(i))], T0 + i)).collect();
    host.store().write(points.clone()).await.unwrap();
    let store = host.store().clone();
    wait_for(Duration::from_secs(10), "failed deliveries to be counted", || async {
        (metric(&store.metrics(), "wattedge_outbox_retried_total") >= 2.0).then_some(())
    })
    .await;
    let metrics = store.metrics();
    assert_eq!(metric(&metrics, "wattedge_outbox_points"), 5.0, "points stay queued: {metrics}");
    assert_eq!(metric(&metrics, "wattedge_outbox_dropped_total"), 0.0);
    assert_eq!(server.writes(), 0);
    let err = store.query(query("meter", Selector::All, &[])).await.unwrap_err();
    assert!(matches!(&err, StoreError::Unavailable(m) if m.contains("HTTP 401")), "{err}");

    server.set_token(TOKEN); // the operator fixes the token on the server
    drained(store.as_ref(), Duration::from_secs(20)).await;
    let rows = store.query(query("meter", Selector::All, &[])).await.unwrap();
    assert_eq!(rows, points.iter().map(as_row).collect::<Vec<_>>(), "every point delivered exactly once");
    let metrics = store.metrics();
    assert_eq!(metric(&metrics, "wattedge_outbox_forwarded_total"), 5.0, "{metrics}");
    assert_eq!(metric(&metrics, "wattedge_outbox_dropped_total"), 0.0);
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_multi_measurement_query_is_one_flux_request_keeping_each_series_last_rows() {
    use wattedge::store::multi::MultiQuery;
    use wattedge::store::table::Cell;
    let server = Influx2Server::start(BUCKET, TOKEN).await;
    let (_setup, host) = host_for(&server, TOKEN).await;
    // Home Assistant's layout: a measurement per entity.
    let ha = |m: &str, entity: &str, state: &str, t: i64| {
        let fields = vec![("state", FieldValue::Text(state.into())), ("value", FieldValue::Float(1.0))];
        point(m, &[("domain", "switch"), ("entity_id", entity)], fields, t)
    };
    let points = vec![
        ha("switch.lamp", "lamp", "off", T0),
        ha("switch.lamp", "lamp", "on", T0 + 10),
        ha("switch.lamp", "lamp", "off", T0 + 20),
        ha("light.desk", "desk", "dim", T0 + 5),
        ha("other", "x", "on", T0 + 1),
    ];
    host.store().write(points).await.unwrap();
    drained(host.store().as_ref(), Duration::from_secs(20)).await;
    let asked = server.queries().len();
    let q = MultiQuery {
        measurements: vec!["switch.lamp".into(), "light.desk".into()],
        fields: vec!["state".into()],
        end: Some(T0 + 20),
        per_series: Some(1),
        descending: true,
        ..MultiQuery::default()
    };
    let t = host.store().query_multi(q).await.unwrap();
    assert_eq!(server.queries().len(), asked + 1, "one request for both measurements");
    assert_eq!((t.measurement.as_slice(), t.rows.times.as_slice()), ([0, 1].as_slice(), [T0 + 10, T0 + 5].as_slice()));
    let state = t.rows.fields.iter().find(|c| c.key == "state").expect("state column");
    let texts: Vec<&str> = state
        .values
        .iter()
        .map(|v| match v {
            Some(Cell::Text(i)) => t.rows.strings[*i as usize].as_str(),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(texts, ["on", "dim"], "each series' last row before the end");
    host.shutdown().await;
}
