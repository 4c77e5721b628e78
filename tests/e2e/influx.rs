//! The InfluxDB v1 backend against a real influxd (Debian's 1.6.7, started
//! per test by `support/influxd.rs`): exact round trips, structured
//! queries, a 30 s outage, `/api/store` while influxd is down and after, a
//! SIGKILLed writer, a torn outbox record, grants and hostile names, and a
//! board's `[host] tags` and `wattedge_host` health rows. Nothing is
//! skipped: without influxd these tests fail and say how to install it. The
//! outage takes 38 s, so it is `#[ignore]`d in the default run and run by
//! `.ci/run` (`-- --ignored`).

use std::collections::{BTreeMap, BTreeSet};
use std::io::BufRead;
use std::time::{Duration, Instant};

use crate::support::influxd::Influxd;
use crate::support::*;
use wattedge::store::{FieldValue, Query, Selector, StoreError, TimeSeriesStore};

const DB: &str = "energy";
const T0: i64 = 1_700_000_000_123_456_789;

/// An `[influx]` section for `influxd`, with short flush and retry times.
fn influx_section(influxd: &Influxd) -> String {
    format!(
        "[influx]\nbackend = \"v1\"\nurl = \"{}\"\ndatabase = \"{DB}\"\nflush_interval = \"100ms\"\nretry_max_delay = \"1s\"\n\n",
        influxd.url()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn points_read_back_with_exact_types_tags_and_nanoseconds() {
    let influxd = Influxd::start();
    influxd.create_database(DB);
    let (_setup, host) = start(&influx_section(&influxd)).await;
    let points = vec![
        point(
            "meter",
            &[("site", "a"), ("phase", "L1")],
            vec![
                ("w", FieldValue::Float(1.5)),
                ("n", FieldValue::Integer(-42)),
                ("ok", FieldValue::Boolean(true)),
                ("note", FieldValue::Text("say \"hi\" \\ back\nline two, a=b".into())),
            ],
            T0,
        ),
        point(
            "meter",
            &[("site", "a"), ("phase", "L1")],
            vec![("w", FieldValue::Float(2.0)), ("n", FieldValue::Integer(i64::MAX))],
            T0 + 1,
        ),
        point("meter", &[("site", "a"), ("phase", "L2")], vec![("w", FieldValue::Float(-0.25))], T0 + 1),
        point("meter", &[("site", "b"), ("phase", "L1")], vec![("ok", FieldValue::Boolean(false))], T0 + 2),
        point("meter", &[("site", "a"), ("phase", "L1")], vec![("w", FieldValue::Float(3.25))], T0 + 1000),
    ];
    assert_eq!(host.store().write(points.clone()).await.unwrap(), 5);
    drained(host.store().as_ref(), Duration::from_secs(20)).await;
    let all = rows(&host, "meter").await;
    assert_eq!(all, points.iter().map(as_row).collect::<Vec<_>>(), "exact round trip, oldest first");
    let types = influxd.series(DB, "SHOW FIELD KEYS FROM \"meter\"");
    let types = types[0]["values"].to_string();
    for (field, kind) in [("w", "float"), ("n", "integer"), ("ok", "boolean"), ("note", "string")] {
        assert!(types.contains(&format!("[\"{field}\",\"{kind}\"]")), "{field} stored as {kind}: {types}");
    }
    let q = |select, tags: &[(&str, &str)]| Query {
        measurement: "meter".into(),
        tags: tags.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        select,
        ..Query::default()
    };
    let last_a = host.store().query(q(Selector::Last, &[("site", "a")])).await.unwrap();
    assert_eq!(last_a, vec![as_row(&points[4])], "last point of the tag set, across its series");
    let first = host.store().query(q(Selector::First, &[])).await.unwrap();
    assert_eq!(first, vec![as_row(&points[0])]);
    let range = Query { start: Some(T0), end: Some(T0 + 1000), ..q(Selector::All, &[("site", "a"), ("phase", "L1")]) };
    assert_eq!(
        host.store().query(range).await.unwrap(),
        vec![as_row(&points[0]), as_row(&points[1])],
        "range end is exclusive"
    );
    let newest_two = Query { descending: true, limit: Some(2), ..q(Selector::All, &[]) };
    assert_eq!(host.store().query(newest_two).await.unwrap(), vec![as_row(&points[4]), as_row(&points[3])]);
    let only_ok = Query { fields: vec!["ok".into()], ..q(Selector::All, &[]) };
    let ok_rows = host.store().query(only_ok).await.unwrap();
    assert_eq!(
        ok_rows.iter().map(|r| (r.time, r.fields.clone())).collect::<Vec<_>>(),
        vec![
            (T0, BTreeMap::from([("ok".to_string(), FieldValue::Boolean(true))])),
            (T0 + 2, BTreeMap::from([("ok".to_string(), FieldValue::Boolean(false))])),
        ]
    );
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_names_cannot_inject_and_missing_database_is_unavailable() {
    let influxd = Influxd::start();
    influxd.create_database(DB);
    let (_setup, host) = start(&influx_section(&influxd)).await;
    let (m, key, value, field) = ("m\" WHERE 1=1 --", "k'ey", "it's \"quoted\" OR 'a'='a", "fi\"eld'");
    let p = point(m, &[(key, value)], vec![(field, FieldValue::Integer(7))], T0);
    let decoy = point(m, &[(key, "other")], vec![(field, FieldValue::Integer(8))], T0 + 1);
    host.store().write(vec![p.clone(), decoy]).await.unwrap();
    drained(host.store().as_ref(), Duration::from_secs(20)).await;
    let q = Query {
        measurement: m.into(),
        tags: [(key.to_string(), value.to_string())].into(),
        fields: vec![field.into()],
        ..Query::default()
    };
    assert_eq!(host.store().query(q).await.unwrap(), vec![as_row(&p)], "the tag filter matched literally");
    let settings = wattedge::store::influx_v1::V1Settings::from_config(
        &wattedge::config::Config::parse(
            std::path::Path::new("x.toml"),
            &influx_section(&influxd).replace("database = \"energy\"", "database = \"nope\""),
        )
        .unwrap()
        .influx,
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let secrets = std::sync::Arc::new(wattedge::secrets::SecretStore::open(&dir.path().join("s.toml")).unwrap());
    let missing =
        wattedge::store::influx_v1::InfluxV1Backend::open(settings, &dir.path().join("outbox"), secrets).unwrap();
    let err = missing.query(Query { measurement: "meter".into(), ..Query::default() }).await.unwrap_err();
    assert!(matches!(&err, StoreError::Unavailable(msg) if msg.contains("database not found")), "{err}");
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "slow (a 38 s outage): .ci/run runs it; locally `cargo test --workspace --test e2e -- --ignored`"]
async fn influxd_down_for_30s_during_writes_loses_and_duplicates_nothing() {
    let mut influxd = Influxd::start();
    influxd.create_database(DB);
    let (_setup, host) = start(&influx_section(&influxd)).await;
    let store = host.store().clone();
    let writer = tokio::spawn(async move {
        let mut seq = 0i64;
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(38) {
            let p = point("outage", &[("writer", "w")], vec![("seq", FieldValue::Integer(seq))], T0 + seq);
            store.write(vec![p]).await.expect("writes are accepted during the outage");
            seq += 1;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        seq
    });
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut influxd = tokio::task::spawn_blocking(move || {
        influxd.stop();
        influxd
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_secs(30)).await;
    let during = host.store().metrics();
    assert!(metric(&during, "wattedge_outbox_points") > 0.0, "points wait in the outbox:\n{during}");
    assert_eq!(metric(&during, "wattedge_influx_up"), 0.0);
    influxd = tokio::task::spawn_blocking(move || {
        influxd.restart();
        influxd
    })
    .await
    .unwrap();
    let written = writer.await.unwrap();
    drained(host.store().as_ref(), Duration::from_secs(30)).await;
    let stored = rows(&host, "outage").await;
    let seqs: Vec<i64> = stored
        .iter()
        .map(|r| match r.fields["seq"] {
            FieldValue::Integer(i) => i,
            ref v => panic!("{v:?}"),
        })
        .collect();
    assert_eq!(seqs, (0..written).collect::<Vec<_>>(), "every point present exactly once, in order");
    let count = influxd.series(DB, "SELECT count(\"seq\") FROM \"outage\"");
    assert_eq!(count[0]["values"][0][1], written, "influxd's own count");
    let after = host.store().metrics();
    assert!(metric(&after, "wattedge_outbox_retried_total") > 0.0, "{after}");
    assert_eq!(metric(&after, "wattedge_influx_up"), 1.0);
    assert_eq!(metric(&after, "wattedge_outbox_forwarded_total"), written as f64);
    assert_eq!(metric(&after, "wattedge_outbox_bytes"), 0.0);
    host.shutdown().await;
}

/// `GET /api/store` once, as JSON.
async fn store_status(addr: std::net::SocketAddr) -> serde_json::Value {
    let (status, body) = get(addr, "/api/store").await;
    assert_eq!(status, 200, "{body}");
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_store_shows_the_outbox_rising_while_influxd_is_down_and_empty_once_it_is_back() {
    let mut influxd = Influxd::start();
    influxd.create_database(DB);
    let (_setup, host) = start(&influx_section(&influxd)).await;
    let addr = host.admin_addr();
    // `reachable` is whether the last contact succeeded: false until the
    // forwarder's first ping answers, which may come after `/ready`.
    let up = wait_for(Duration::from_secs(10), "the first contact with influxd", || async {
        let s = store_status(addr).await;
        (s["reachable"] == true).then_some(s)
    })
    .await;
    assert_eq!(up["backend"], "influxdb-v1", "{up}");
    assert_eq!((up["outbox_depth"].as_u64(), up["last_error"].is_null()), (Some(0), true), "{up}");
    influxd = tokio::task::spawn_blocking(move || {
        influxd.stop();
        influxd
    })
    .await
    .unwrap();
    let write =
        |seq: i64| host.store().write(vec![point("down", &[], vec![("seq", FieldValue::Integer(seq))], T0 + seq)]);
    write(0).await.unwrap();
    let first = wait_for(Duration::from_secs(20), "the failed delivery to show", || async {
        let s = store_status(addr).await;
        (s["reachable"] == false && s["last_error"].is_string()).then_some(s)
    })
    .await;
    assert_eq!(first["outbox_depth"], 1, "{first}");
    assert!(first["outbox_bytes"].as_u64().unwrap() > 0, "{first}");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    write(1).await.unwrap();
    let second = store_status(addr).await;
    assert_eq!(second["outbox_depth"], 2, "the depth rises with each write: {second}");
    assert!(second["outbox_bytes"].as_u64() > first["outbox_bytes"].as_u64(), "{first} then {second}");
    let (first_age, second_age) =
        (first["outbox_oldest_age_seconds"].as_f64(), second["outbox_oldest_age_seconds"].as_f64());
    assert!(second_age.unwrap() >= first_age.unwrap() + 1.0, "the oldest point ages: {first} then {second}");
    let (_, metrics) = get(addr, "/metrics").await;
    let metrics = metrics.as_str().expect("metrics text").to_string();
    assert_eq!(metric(&metrics, "wattedge_outbox_points"), 2.0, "/metrics shows the same status:\n{metrics}");
    assert_eq!(metric(&metrics, "wattedge_influx_up"), 0.0, "{metrics}");
    influxd = tokio::task::spawn_blocking(move || {
        influxd.restart();
        influxd
    })
    .await
    .unwrap();
    let back = wait_for(Duration::from_secs(30), "the outbox to drain", || async {
        let s = store_status(addr).await;
        (s["outbox_depth"] == 0).then_some(s)
    })
    .await;
    let expected = serde_json::json!({
        "backend": "influxdb-v1",
        "outbox_depth": 0,
        "outbox_bytes": 0,
        "outbox_oldest_age_seconds": 0.0,
        "reachable": true,
        "last_error": null,
    });
    assert_eq!(back, expected);
    assert_eq!(influxd.series(DB, "SELECT count(\"seq\") FROM \"down\"")[0]["values"][0][1], 2);
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_tags_win_over_a_guest_s_and_health_rows_reach_influxd_with_them() {
    let influxd = Influxd::start();
    influxd.create_database(DB);
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "[host]\nadmin_listen = \"127.0.0.1:0\"\nstate_dir = \"{}\"\ntags = {{ site = \"cottage\", trigger = \"host\" }}\nhealth_interval = \"1s\"\n\n{}{}",
        dir.path().join("state").display(),
        influx_section(&influxd),
        // In mode `wake` the probe tags its point `trigger = "scheduled"`: the host's value must win.
        probe_guest("tagged", "every 1h", "mode = \"wake\", wake_after_ms = 3600000")
    );
    let path = dir.path().join("wattedge.toml");
    std::fs::write(&path, config).unwrap();
    let host = wattedge::start(wattedge::config::Config::load(&path).unwrap()).await.unwrap();
    let snapshot = wait_runs(host.admin_addr(), "tagged", 1, Duration::from_secs(20)).await;
    let probe = influxd.rows_of(DB, "probe", 1).await;
    assert_eq!(probe.len(), 1, "{probe:?}");
    assert_eq!((&probe[0]["site"], &probe[0]["trigger"]), (&"cottage".into(), &"host".into()), "{probe:?}");
    let health = wait_for(Duration::from_secs(20), "health rows of the guest and the store", || async {
        // The newest rows written after the run and the first contact: rows
        // from the first ticks may show the guest still starting and the
        // store not yet reachable.
        let rows = influxd.rows_of(DB, "wattedge_host", 2).await;
        let guest = rows.iter().rev().find(|r| r["guest"] == "tagged" && r["runs"].as_i64() >= Some(1)).cloned();
        let store = rows.iter().rev().find(|r| r["backend"] == "influxdb-v1" && r["reachable"] == true).cloned();
        guest.zip(store)
    })
    .await;
    let (guest, store) = health;
    assert_eq!(guest["site"], "cottage", "{guest}");
    assert_eq!(guest["version"], snapshot["version"], "the version digest the admin API shows: {guest}");
    assert_eq!(guest["state"], "ok", "{guest}");
    assert!(guest["runs"].as_i64() >= Some(1) && guest["failures"] == 0, "{guest}");
    assert_eq!(store["site"], "cottage", "{store}");
    assert!(store["outbox_points"].is_i64() && store["reachable"] == true, "{store}");
    assert!(store["guest"].is_null(), "the store's row names no guest: {store}");
    host.shutdown().await;
}

/// The writer process of the SIGKILL test (this test binary again, filtered
/// to that test, with `WATTEDGE_TEST_OUTBOX` set): writes through the v1
/// backend from four tasks and prints `ok WRITER SEQ` after each
/// acknowledged write, until it is killed.
fn sigkill_writer(outbox: String) {
    let url = std::env::var("WATTEDGE_TEST_INFLUX_URL").expect("set with WATTEDGE_TEST_OUTBOX by the SIGKILL test");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async move {
        let config = wattedge::config::Config::parse(
            std::path::Path::new("x.toml"),
            &format!("[influx]\nbackend = \"v1\"\nurl = \"{url}\"\ndatabase = \"{DB}\"\n"),
        )
        .unwrap();
        let settings = wattedge::store::influx_v1::V1Settings::from_config(&config.influx).unwrap();
        let secrets = std::sync::Arc::new(
            wattedge::secrets::SecretStore::open(&std::path::Path::new(&outbox).join("s.toml")).unwrap(),
        );
        let backend = std::sync::Arc::new(
            wattedge::store::influx_v1::InfluxV1Backend::open(settings, std::path::Path::new(&outbox), secrets)
                .unwrap(),
        );
        let tasks: Vec<_> = (0..4i64)
            .map(|w| {
                let backend = backend.clone();
                tokio::spawn(async move {
                    for seq in 0i64.. {
                        let points = (0..5)
                            .map(|i| {
                                point(
                                    "killed",
                                    &[("writer", &w.to_string())],
                                    vec![("seq", FieldValue::Integer(seq))],
                                    T0 + seq * 5 + i,
                                )
                            })
                            .collect();
                        backend.write(points).await.unwrap();
                        println!("ok {w} {seq}");
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
    });
}

/// One test, two roles: the process that `cargo test` starts checks, the
/// writer process it starts (the same binary, same filter, with
/// `WATTEDGE_TEST_OUTBOX` set) writes until it is SIGKILLed. No separate
/// helper "test" that would run, and fail, on its own under `--ignored`.
#[test]
fn sigkilled_writer_loses_no_acknowledged_point() {
    if let Ok(outbox) = std::env::var("WATTEDGE_TEST_OUTBOX") {
        return sigkill_writer(outbox);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(sigkilled_writer_is_checked());
}

async fn sigkilled_writer_is_checked() {
    let mut influxd = Influxd::start();
    influxd.create_database(DB);
    influxd.stop(); // everything the writer acknowledges must come from the outbox
    let setup = Setup::new("127.0.0.1:0", &influx_section(&influxd));
    let outbox = setup.dir.path().join("state").join("outbox");
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "influx::sigkilled_writer_loses_no_acknowledged_point",
            "--include-ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("WATTEDGE_TEST_OUTBOX", &outbox)
        .env("WATTEDGE_TEST_INFLUX_URL", influxd.url())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut acked = BTreeSet::new();
    while acked.len() < 400 {
        let line = lines.next().expect("the writer runs").unwrap();
        if let Some(rest) = line.strip_prefix("ok ") {
            let (w, seq) = rest.split_once(' ').unwrap();
            acked.insert((w.to_string(), seq.parse::<i64>().unwrap()));
        }
    }
    child.kill().unwrap(); // SIGKILL, mid-stream
    child.wait().unwrap();
    for line in lines.map_while(Result::ok) {
        if let Some((w, seq)) = line.strip_prefix("ok ").and_then(|r| r.split_once(' ')) {
            acked.insert((w.to_string(), seq.parse().unwrap()));
        }
    }
    influxd.restart();
    let host = wattedge::start(setup.config()).await.unwrap();
    drained(host.store().as_ref(), Duration::from_secs(60)).await;
    let mut stored = BTreeMap::<(String, i64), usize>::new();
    for s in influxd.series(DB, "SELECT \"seq\" FROM \"killed\" GROUP BY \"writer\"") {
        let w = s["tags"]["writer"].as_str().unwrap().to_string();
        for v in s["values"].as_array().unwrap() {
            *stored.entry((w.clone(), v[1].as_i64().unwrap())).or_default() += 1;
        }
    }
    let forwarded = metric(&host.store().metrics(), "wattedge_outbox_forwarded_total");
    assert!(
        forwarded >= (acked.len() * 5) as f64,
        "the acknowledged points came from the outbox after the restart ({forwarded})"
    );
    let lost: Vec<_> = acked.iter().filter(|k| stored.get(*k) != Some(&5)).collect();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged writes lost or incomplete: {:?}",
        lost.len(),
        acked.len(),
        &lost[..lost.len().min(10)]
    );
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn torn_outbox_record_is_cut_reported_and_the_rest_forwarded() {
    let influxd = Influxd::start();
    influxd.create_database(DB);
    let setup = Setup::new("127.0.0.1:0", &influx_section(&influxd));
    let dir = setup.dir.path().join("state").join("outbox");
    let record = |tag: &str| format!("torn,rec={tag} v=1i {T0}\ntorn,rec={tag} v=2i {}\n", T0 + 1);
    {
        let outbox = wattedge::store::outbox::Outbox::open(&dir, 1 << 20).unwrap();
        for tag in ["a", "b", "c"] {
            outbox.append(record(tag).as_bytes(), 2).unwrap();
        }
    }
    let segment = dir.join(format!("{:020}.seg", 1));
    let len = std::fs::metadata(&segment).unwrap().len();
    std::fs::File::options().write(true).open(&segment).unwrap().set_len(len - 10).unwrap();
    let host = wattedge::start(setup.config()).await.expect("a torn record never stops the host");
    drained(host.store().as_ref(), Duration::from_secs(20)).await;
    let series = influxd.series(DB, "SELECT \"v\" FROM \"torn\" GROUP BY \"rec\"");
    let recs: Vec<(String, usize)> = series
        .iter()
        .map(|s| (s["tags"]["rec"].as_str().unwrap().to_string(), s["values"].as_array().unwrap().len()))
        .collect();
    assert_eq!(recs, vec![("a".to_string(), 2), ("b".to_string(), 2)], "the intact records, and not the torn one");
    let (_, text) = get(host.admin_addr(), "/metrics").await;
    let text = text.as_str().expect("metrics text").to_string();
    assert_eq!(metric(&text, "wattedge_outbox_torn_records_total"), 1.0, "{text}");
    assert!(metric(&text, "wattedge_outbox_torn_bytes_total") > 0.0);
    assert_eq!(metric(&text, "wattedge_outbox_forwarded_total"), 4.0);
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ungranted_measurement_is_refused_and_hostile_tag_values_stay_literal() {
    let influxd = Influxd::start();
    influxd.create_database(DB);
    let body = influx_section(&influxd)
        + &probe_guest("sneaky", "every 1h", "measurement = \"forbidden\"")
        + &probe_guest("tagger", "every 1h", "version = \"v1\"");
    let (setup, host) = start(&body).await;
    let addr = host.admin_addr();
    let sneaky = wait_runs(addr, "sneaky", 1, Duration::from_secs(20)).await;
    assert_eq!(sneaky["state"], "degraded", "{sneaky}");
    assert!(sneaky["detail"].as_str().unwrap().contains("not in grants.influx_write"), "{sneaky}");
    wait_runs(addr, "tagger", 1, Duration::from_secs(20)).await;
    let hostile = ",measurement=x other";
    let (status, reply) =
        setup.post(addr, "/guests/tagger/invoke", &serde_json::json!({ "version": hostile }).to_string()).await;
    assert_eq!(status, 202, "{reply}");
    wait_runs(addr, "tagger", 2, Duration::from_secs(20)).await;
    drained(host.store().as_ref(), Duration::from_secs(20)).await;
    let measurements = influxd.series(DB, "SHOW MEASUREMENTS");
    assert_eq!(measurements[0]["values"], serde_json::json!([["probe"]]), "no forbidden, no smuggled measurement");
    let literal = influxd.series(DB, "SELECT \"run\" FROM \"probe\" WHERE \"version\" = ',measurement=x other'");
    assert_eq!(literal[0]["values"].as_array().unwrap().len(), 1, "one point with the literal tag value");
    let newline = point("probe", &[("version", "a\nmeasurement=x")], vec![("run", FieldValue::Integer(1))], T0);
    let err = host.store().write(vec![newline]).await.unwrap_err();
    assert!(matches!(&err, StoreError::Invalid(m) if m.contains("line break")), "{err}");
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_point_influxdb_refuses_is_dropped_without_blocking_the_queue() {
    let influxd = Influxd::start();
    influxd.create_database(DB);
    let (_setup, host) = start(&influx_section(&influxd)).await;
    let write = |v: FieldValue, t: i64| host.store().write(vec![point("conflict", &[], vec![("f", v)], t)]);
    // Three write calls in one batch; the float conflicts with the integers.
    write(FieldValue::Integer(1), T0).await.unwrap();
    write(FieldValue::Float(2.5), T0 + 1).await.unwrap();
    write(FieldValue::Integer(3), T0 + 2).await.unwrap();
    drained(host.store().as_ref(), Duration::from_secs(20)).await;
    write(FieldValue::Integer(4), T0 + 3).await.unwrap();
    drained(host.store().as_ref(), Duration::from_secs(20)).await;
    let values = influxd.series(DB, "SELECT \"f\" FROM \"conflict\"");
    assert_eq!(
        values[0]["values"],
        serde_json::json!([[T0, 1], [T0 + 2, 3], [T0 + 3, 4]]),
        "only the refused point is missing"
    );
    let m = host.store().metrics();
    assert_eq!(metric(&m, "wattedge_outbox_dropped_total"), 1.0, "{m}");
    assert_eq!(metric(&m, "wattedge_outbox_forwarded_total"), 3.0, "{m}");
    host.shutdown().await;
}

/// `(version, run)` from a host log line `... detail=Some("run 7 (g1)") ... run ok`.
fn acked_run(line: &str) -> Option<(String, i64)> {
    if !line.contains("run ok") {
        return None;
    }
    let rest = &line[line.find("detail=Some(\"run ")? + "detail=Some(\"run ".len()..];
    let (run, rest) = rest.split_once(" (")?;
    let (version, _) = rest.split_once(')')?;
    Some((version.to_string(), run.parse().ok()?))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkilled_host_binary_loses_no_point_its_guests_wrote() {
    let mut influxd = Influxd::start();
    influxd.create_database(DB);
    influxd.stop(); // the guests' points can only survive in the outbox
    let guests: String =
        (0..3).map(|i| probe_guest(&format!("p{i}"), "every 1s", &format!("version = \"g{i}\""))).collect();
    let setup = Setup::new("127.0.0.1:0", &(influx_section(&influxd) + &guests));
    let run = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_wattedge"))
            .arg("run")
            .arg("--config")
            .arg(&setup.config_path)
            .env("WATTEDGE_LOG", "info")
            .env("NO_COLOR", "1")
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("start the wattedge binary")
    };
    let mut host = run();
    let (tx, rx) = std::sync::mpsc::channel();
    let stderr = std::io::BufReader::new(host.stderr.take().unwrap());
    let reader = std::thread::spawn(move || {
        for line in stderr.lines().map_while(Result::ok) {
            if let Some(acked) = acked_run(&line) {
                let _ = tx.send(acked);
            }
        }
    });
    let mut acked = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while acked.len() < 9 {
        let left = deadline.saturating_duration_since(Instant::now());
        acked.insert(rx.recv_timeout(left).expect("the probe guests report `run ok` in the host log"));
    }
    host.kill().unwrap(); // SIGKILL
    host.wait().unwrap();
    reader.join().unwrap();
    acked.extend(rx.try_iter());
    influxd.restart();
    let mut host = run();
    let stored = wait_for(Duration::from_secs(30), "every acknowledged point in influxd", || {
        let stored: BTreeSet<(String, i64)> = influxd
            .series(DB, "SELECT \"run\" FROM \"probe\" GROUP BY \"version\"")
            .iter()
            .flat_map(|s| {
                let v = s["tags"]["version"].as_str().unwrap().to_string();
                s["values"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(move |r| (v.clone(), r[1].as_i64().unwrap()))
                    .collect::<Vec<_>>()
            })
            .collect();
        std::future::ready(acked.is_subset(&stored).then_some(stored))
    })
    .await;
    host.kill().unwrap();
    host.wait().unwrap();
    assert!(acked.len() >= 9 && stored.len() >= acked.len(), "{acked:?} ⊆ {stored:?}");
}
