//! The shipped `wattivahti` guest end to end: a real host running
//! `builtin:wattivahti`, local stand-ins for the Azure B2C token endpoint
//! and `meterdata2` (support/wattivahti_server.rs, reached through
//! `host.resolve` and trusted through `host.extra_ca`), and a real influxd
//! behind `[influx] backend = "v1"`.
//!
//! Each test seeds the refresh token, starts the host (whose first run is an
//! incremental sync of the last `initial_sync_days`), and scripts the
//! upstreams: token rotation surviving a failed data call, a reply without a
//! refresh token, `invalid_grant`, the PT1H fallback, both DST days and the
//! incremental start.

use std::time::Duration;

use crate::support;
use crate::support::influxd::Influxd;
use crate::support::wattivahti_server::{
    DATA_HOST, DataMode, INITIAL_REFRESH, TOKEN_HOST, TOKEN_PATH, TokenMode, WattiServer, quantity,
};
use serde_json::{Value, json};
use wattedge::store::{FieldValue, Query, Row};

const ADMIN: &str = "admin-token-for-wattivahti-tests";
const REFRESH: &str = "wattivahti.refresh_token";
const ACCESS: &str = "wattivahti.access_token";
const MP: &str = "1234567";
const DB: &str = "energy";
const MINUTE: i64 = 60_000_000_000;
const HOUR: i64 = 60 * MINUTE;
const WAIT: Duration = Duration::from_secs(60);

/// A host running the guest against the local upstreams and influxd.
struct Env {
    _influxd: Influxd,
    server: WattiServer,
    dir: tempfile::TempDir,
    host: wattedge::RunningHost,
}

impl Env {
    /// Starts everything with the upstreams scripted; waits for the first run.
    async fn start(token: TokenMode, quarter: DataMode, hourly: DataMode) -> Env {
        let influxd = Influxd::start();
        influxd.create_database(DB);
        let server = WattiServer::start().await;
        server.set_token(token);
        server.set_data(quarter, hourly);
        let dir = tempfile::tempdir().expect("temp dir");
        let config_path = write_config(dir.path(), &server, &influxd);
        let secrets = wattedge::secrets::SecretStore::open(&dir.path().join("state").join("secrets.toml")).unwrap();
        secrets.set("admin.token", ADMIN, None, true).unwrap();
        secrets.set(REFRESH, INITIAL_REFRESH, None, true).unwrap();
        let config = wattedge::config::Config::load(&config_path).unwrap_or_else(|e| panic!("config: {e}"));
        let host = wattedge::start(config).await.unwrap_or_else(|e| panic!("start: {e}"));
        let env = Env { _influxd: influxd, server, dir, host };
        env.runs(1).await;
        env
    }

    /// The persisted value of a secret, read from the secrets file.
    fn persisted(&self, name: &str) -> Option<String> {
        let text = std::fs::read_to_string(self.dir.path().join("state").join("secrets.toml")).unwrap();
        let table: toml::Table = toml::from_str(&text).unwrap();
        table.get(name).and_then(|v| v.as_str()).map(str::to_string)
    }

    async fn runs(&self, n: u64) -> Value {
        support::wait_runs(self.host.admin_addr(), "wattivahti", n, WAIT).await
    }

    /// Invokes a run with `args` and waits for it (run number `n`).
    async fn invoke(&self, args: Value, n: u64) -> Value {
        let addr = self.host.admin_addr();
        let (status, reply) =
            support::http(addr, "POST", "/guests/wattivahti/invoke", &args.to_string(), Some(ADMIN)).await;
        assert_eq!(status, 202, "invoke: {reply}");
        self.runs(n).await
    }

    /// Points in `[from, to)` (RFC 3339) once `expected` of them are in influxd.
    async fn points(&self, from: &str, to: &str, expected: usize) -> Vec<Row> {
        let query = Query {
            measurement: "electricity_consumption".into(),
            tags: [("metering_point".to_string(), MP.to_string())].into(),
            start: Some(ns(from)),
            end: Some(ns(to)),
            ..Query::default()
        };
        let store = self.host.store();
        let mut last = Vec::new();
        for _ in 0..200 {
            last = store.query(query.clone()).await.expect("query influxd");
            if last.len() >= expected {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        last
    }
}

fn write_config(dir: &std::path::Path, server: &WattiServer, influxd: &Influxd) -> std::path::PathBuf {
    let ca = server.write_ca(dir);
    let port = server.addr.port();
    let text = format!(
        r#"[host]
admin_listen = "127.0.0.1:0"
state_dir = "{state}"
extra_ca = "{ca}"
resolve = {{ "{TOKEN_HOST}" = "127.0.0.1", "{DATA_HOST}" = "127.0.0.1" }}

[influx]
backend = "v1"
url = "{influx}"
database = "{DB}"
flush_interval = "100ms"
retry_max_delay = "1s"

[guests.wattivahti]
component = "builtin:wattivahti"
schedule = "every 1h"
memory_limit = "16MiB"
run_timeout = "60s"
config = {{ metering_point = "{MP}", api_base = "https://{DATA_HOST}:{port}", token_url = "https://{TOKEN_HOST}:{port}{TOKEN_PATH}" }}

[guests.wattivahti.grants]
http = ["private:{TOKEN_HOST}:{port}", "private:{DATA_HOST}:{port}"]
secrets = {{ "{REFRESH}" = ["{TOKEN_HOST}:{port}"], "{ACCESS}" = ["{DATA_HOST}:{port}"] }}
influx_write = ["electricity_consumption"]
influx_read = ["electricity_consumption"]
[guests.wattivahti.grants.capture]
"{ACCESS}" = {{ from = "{TOKEN_HOST}:{port}", pointer = "/access_token", ttl = "1h" }}
"{REFRESH}" = {{ from = "{TOKEN_HOST}:{port}", pointer = "/refresh_token", persist = true }}
"#,
        state = dir.join("state").display(),
        ca = ca.display(),
        influx = influxd.url(),
    );
    let path = dir.join("wattedge.toml");
    std::fs::write(&path, text).expect("write config");
    path
}

fn ns(rfc3339: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(rfc3339).unwrap().timestamp_nanos_opt().unwrap()
}

fn kwh(row: &Row) -> f64 {
    match row.fields.get("consumption_kwh") {
        Some(FieldValue::Float(v)) => *v,
        other => panic!("consumption_kwh: {other:?}"),
    }
}

fn counter(snap: &Value, name: &str) -> u64 {
    snap["counters"][name].as_u64().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_is_persisted_even_when_the_data_call_fails() {
    let env = Env::start(TokenMode::Rotate, DataMode::Fail, DataMode::Fail).await;
    let snap = env.runs(1).await;
    assert_eq!(snap["state"], "degraded", "{snap}");
    assert!(snap["detail"].as_str().unwrap_or("").contains("500"), "{snap}");
    let tokens = env.server.token_requests();
    assert_eq!(tokens[0].form("refresh_token").as_deref(), Some(INITIAL_REFRESH), "host filled the placeholder");
    let rotated = env.server.current_refresh();
    assert_ne!(rotated, INITIAL_REFRESH);
    assert_eq!(env.persisted(REFRESH), Some(rotated.clone()), "rotation stored before the data call");
    assert_eq!(env.persisted(ACCESS), None, "the access token is never written to disk");
    assert_eq!(env.server.data_requests().len(), 1, "the first data call failed and stopped the run");
    assert_eq!((counter(&snap, "failures"), counter(&snap, "token_rotations")), (1, 1), "{snap}");

    env.server.set_data(DataMode::Data, DataMode::Data);
    let snap = env.invoke(json!({}), 2).await;
    assert_eq!(snap["state"], "ok", "{snap}");
    assert_eq!(env.server.token_requests()[1].form("refresh_token"), Some(rotated), "next run used the rotated token");
    assert_eq!(env.persisted(REFRESH), Some(env.server.current_refresh()));
    assert_eq!(counter(&snap, "syncs"), 1);
    assert!(counter(&snap, "points_written") >= 7 * 96 - 1, "{snap}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reply_without_refresh_token_leaves_the_secret_unchanged() {
    let env = Env::start(TokenMode::Keep, DataMode::Data, DataMode::Data).await;
    let snap = env.runs(1).await;
    assert_eq!(snap["state"], "ok", "{snap}");
    assert_eq!(env.persisted(REFRESH).as_deref(), Some(INITIAL_REFRESH));
    assert_eq!(counter(&snap, "token_rotations"), 0);
    let data = env.server.data_requests();
    assert!(
        data.iter().all(|r| r.authorization.as_deref() == Some("Bearer access-1-e4b1")),
        "captured access token used"
    );
    let snap = env.invoke(json!({}), 2).await;
    assert_eq!(snap["state"], "ok", "{snap}");
    assert_eq!(env.server.token_requests()[1].form("refresh_token").as_deref(), Some(INITIAL_REFRESH));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_grant_degrades_and_keeps_the_secret() {
    let env = Env::start(TokenMode::InvalidGrant, DataMode::Data, DataMode::Data).await;
    let snap = env.runs(1).await;
    assert_eq!(snap["state"], "degraded", "{snap}");
    let detail = snap["detail"].as_str().unwrap_or_default();
    assert!(detail.contains("invalid_grant"), "{detail}");
    assert!(detail.contains("`wattedge secrets set wattivahti.refresh_token`"), "{detail}");
    assert_eq!(env.persisted(REFRESH).as_deref(), Some(INITIAL_REFRESH));
    assert!(env.server.data_requests().is_empty(), "no data call without a token");
    assert_eq!(counter(&snap, "failures"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_quarter_hours_fall_back_to_hourly_points() {
    let env = Env::start(TokenMode::Rotate, DataMode::Empty, DataMode::Data).await;
    let snap = env.invoke(json!({"start": "2025-01-10", "end": "2025-01-10"}), 2).await;
    assert_eq!(snap["state"], "ok", "{snap}");
    let rows = env.points("2025-01-09T22:00:00Z", "2025-01-10T22:00:00Z", 24).await;
    assert_eq!(rows.len(), 24);
    assert!(rows.iter().all(|r| r.tags["resolution"] == "PT1H"), "{rows:?}");
    assert_eq!(rows[0].time, ns("2025-01-09T22:00:00Z"), "00:00 local (+02:00)");
    assert_eq!(rows[1].time - rows[0].time, HOUR);
    let steps: Vec<String> =
        env.server.data_requests().iter().rev().take(2).map(|r| r.query("resultStep").unwrap()).collect();
    assert_eq!(steps, ["PT1H", "PT15MIN"], "PT15MIN first, then PT1H for the same window");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn autumn_day_maps_the_repeated_hour_in_order() {
    let env = Env::start(TokenMode::Rotate, DataMode::Data, DataMode::Data).await;
    let snap = env.invoke(json!({"start": "2025-10-26", "end": "2025-10-26"}), 2).await;
    assert_eq!(snap["state"], "ok", "{snap}");
    let last = env.server.data_requests().pop().unwrap();
    assert_eq!(last.query("start").as_deref(), Some("2025-10-26T00:00:00+03:00"));
    assert_eq!(last.query("stop").as_deref(), Some("2025-10-27T00:00:00+02:00"));
    let rows = env.points("2025-10-25T21:00:00Z", "2025-10-26T22:00:00Z", 100).await;
    assert_eq!(rows.len(), 100, "25 hours of quarter-hours");
    assert!(rows.iter().all(|r| r.tags["resolution"] == "PT15MIN"));
    // Records arrive in wall-clock order with 03:xx in pairs: index 12 is the
    // first 03:00, 13 the second, 14 the first 03:15, ...
    let repeated: Vec<(i64, f64)> = rows
        .iter()
        .filter(|r| (ns("2025-10-26T00:00:00Z")..ns("2025-10-26T02:00:00Z")).contains(&r.time))
        .map(|r| (r.time, kwh(r)))
        .collect();
    let expected: Vec<(i64, f64)> = (0..8)
        .map(|k| {
            let (occurrence, minute) = (k / 4, k % 4);
            (ns("2025-10-26T00:00:00Z") + k as i64 * 15 * MINUTE, quantity(12 + 2 * minute + occurrence))
        })
        .collect();
    assert_eq!(repeated, expected, "03:00 first → 00:00Z, second → 01:00Z, ..., 03:45 second → 01:45Z");
    assert!(snap["counters"]["progress"].as_str().unwrap_or("").starts_with("chunk 1/1: 100 points"), "{snap}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spring_day_rejects_the_missing_hour() {
    let env = Env::start(TokenMode::Rotate, DataMode::Data, DataMode::Data).await;
    let snap = env.invoke(json!({"start": "2025-03-30", "end": "2025-03-30"}), 2).await;
    assert_eq!(snap["state"], "ok", "{snap}");
    let rows = env.points("2025-03-29T22:00:00Z", "2025-03-30T21:00:00Z", 92).await;
    assert_eq!(rows.len(), 92, "23 hours; the four 03:xx records are rejected");
    let at = |t: &str| rows.iter().find(|r| r.time == ns(t)).map(kwh);
    assert_eq!(at("2025-03-30T00:45:00Z"), Some(quantity(11)), "02:45 local");
    assert_eq!(at("2025-03-30T01:00:00Z"), Some(quantity(16)), "04:00 local (03:xx were records 12..15)");
    assert!(snap["counters"]["progress"].as_str().unwrap_or("").starts_with("chunk 1/1: 92 points"), "{snap}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incremental_sync_starts_two_hours_before_the_last_point() {
    let env = Env::start(TokenMode::Rotate, DataMode::Data, DataMode::Data).await;
    let first = env.server.data_requests();
    let start = chrono::DateTime::parse_from_rfc3339(&first[0].query("start").unwrap()).unwrap();
    let initial = chrono::Utc::now().signed_duration_since(start);
    assert!((initial - chrono::Duration::days(7)).num_seconds().abs() < 120, "initial sync: 7 days, got {initial}");
    let stored = env.points("2000-01-01T00:00:00Z", "2100-01-01T00:00:00Z", 7 * 96 - 1).await;
    let last = stored.last().expect("points from the first run").time;
    env.invoke(json!({}), 2).await;
    let request = env.server.data_requests().pop().unwrap();
    let start = chrono::DateTime::parse_from_rfc3339(&request.query("start").unwrap()).unwrap();
    assert_eq!(start.timestamp_nanos_opt().unwrap(), last - 2 * HOUR, "start = last stored point − 2 h");
    let offset = start.offset().local_minus_utc();
    assert!(offset == 2 * 3600 || offset == 3 * 3600, "sent as Helsinki local time with its offset: {start}");
}
