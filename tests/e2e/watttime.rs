//! The watttime guest end to end: the built-in component in a real host,
//! a local WattTime v3 server over HTTPS (its CA in `host.extra_ca`, its name
//! in `host.resolve`), and a real influxd behind `[influx] backend = "v1"`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::support;
use crate::support::influxd;
use crate::support::influxd::Influxd;
use crate::support::watttime_server;
use crate::support::watttime_server::{PASS, Reply, START, USER, WattTimeServer};
use serde_json::{Value, json};

const NAME: &str = "api.watttime.test";
const DB: &str = "energy";
const ADMIN: &str = "admin-token-for-watttime-tests";
const WAIT: Duration = Duration::from_secs(20);

/// lbs/MWh → g/kWh exactly as the guest rounds it.
fn g_kwh(lbs: f64) -> f64 {
    (lbs * 0.4536 * 1e6).round() / 1e6
}

struct Env {
    _dir: tempfile::TempDir,
    secrets: PathBuf,
    server: WattTimeServer,
    influxd: Influxd,
    host: wattedge::RunningHost,
}

impl Env {
    /// Seeds `secrets`, starts everything; the guest runs once at start.
    async fn start(secrets: &[(&str, &str)], extra_config: &str, script: &[Reply]) -> Env {
        let server = WattTimeServer::start(NAME).await;
        server.script(script);
        let influxd = Influxd::start();
        influxd.create_database(DB);
        let dir = tempfile::tempdir().expect("temp dir");
        let config = write_config(dir.path(), &server, &influxd, extra_config);
        let secrets_path = dir.path().join("state").join("secrets.toml");
        set_secrets(&secrets_path, &[("admin.token", ADMIN)]);
        set_secrets(&secrets_path, secrets);
        let config = wattedge::config::Config::load(&config).unwrap_or_else(|e| panic!("config: {e}"));
        let host = wattedge::start(config).await.unwrap_or_else(|e| panic!("start: {e}"));
        Env { _dir: dir, secrets: secrets_path, server, influxd, host }
    }

    fn admin(&self) -> SocketAddr {
        self.host.admin_addr()
    }

    async fn snapshot(&self) -> Value {
        support::get(self.admin(), "/guests/watttime").await.1
    }

    async fn wait_runs(&self, runs: u64) -> Value {
        support::wait_runs(self.admin(), "watttime", runs, WAIT).await
    }

    async fn invoke(&self) {
        let (status, reply) = support::http(self.admin(), "POST", "/guests/watttime/invoke", "{}", Some(ADMIN)).await;
        assert_eq!(status, 202, "invoke: {reply}");
    }

    fn logins(&self) -> usize {
        self.server.requests_to("/login").len()
    }

    fn forecasts(&self) -> usize {
        self.server.requests_to("/v3/forecast").len()
    }

    /// Rows of `SELECT * FROM measurement` as column → value maps.
    fn rows(&self, measurement: &str) -> Vec<serde_json::Map<String, Value>> {
        let series = self.influxd.series(DB, &format!("SELECT * FROM \"{measurement}\""));
        let rows = series.first().map(influxd::columns_to_objects).unwrap_or_default();
        rows.into_iter().filter_map(|row| if let Value::Object(map) = row { Some(map) } else { None }).collect()
    }

    async fn wait_rows(&self, measurement: &str, count: usize) -> Vec<serde_json::Map<String, Value>> {
        support::wait_for(WAIT, &format!("{count} rows of {measurement} in influxd"), || async move {
            let rows = self.rows(measurement);
            (rows.len() >= count).then_some(rows)
        })
        .await
    }

    async fn shutdown(self) {
        self.host.shutdown().await;
    }
}

fn write_config(dir: &Path, server: &WattTimeServer, influxd: &Influxd, extra: &str) -> PathBuf {
    let text = format!(
        r#"[host]
admin_listen = "127.0.0.1:0"
state_dir = "{state}"
extra_ca = "{ca}"
resolve = {{ "{NAME}" = "127.0.0.1" }}

[influx]
backend = "v1"
url = "{influx}"
database = "{DB}"
flush_interval = "100ms"
retry_max_delay = "1s"

[guests.watttime]
component = "builtin:watttime"
schedule = "every 1h"
run_timeout = "30s"
config = {{ region = "CAISO_NORTH", api_base = "https://{NAME}:{port}"{extra} }}

[guests.watttime.grants]
http = ["private:{NAME}"]
secrets = {{ "watttime.username" = ["{NAME}"], "watttime.password" = ["{NAME}"], "watttime.token" = ["{NAME}"] }}
influx_write = ["carbon_intensity", "carbon_intensity_forecast"]
[guests.watttime.grants.capture]
"watttime.token" = {{ from = "{NAME}", pointer = "/token", ttl = "30m" }}
"#,
        state = dir.join("state").display(),
        ca = server.write_ca(dir).display(),
        influx = influxd.url(),
        port = server.addr.port(),
    );
    let path = dir.join("wattedge.toml");
    std::fs::write(&path, text).expect("write config");
    path
}

fn set_secrets(path: &Path, pairs: &[(&str, &str)]) {
    let store = wattedge::secrets::SecretStore::open(path).expect("secrets file");
    for (name, value) in pairs {
        store.set(name, value, None, true).expect("set secret");
    }
}

const LOGIN: [(&str, &str); 2] = [("watttime.username", USER), ("watttime.password", PASS)];

fn counter(snap: &Value, name: &str) -> u64 {
    snap["counters"][name].as_u64().unwrap_or_else(|| panic!("counter {name} in {snap}"))
}

fn float(row: &serde_json::Map<String, Value>, field: &str) -> f64 {
    row[field].as_f64().unwrap_or_else(|| panic!("{field} in {row:?}"))
}

fn detail(snap: &Value) -> String {
    snap["detail"].as_str().unwrap_or_default().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_and_forecast_write_exact_points() {
    let env = Env::start(&LOGIN, "", &[]).await;
    let snap = env.wait_runs(1).await;
    assert_eq!(snap["state"], "ok", "{snap}");

    let logins = env.server.requests_to("/login");
    assert_eq!(logins.len(), 1);
    assert_eq!(logins[0].header("authorization"), Some(watttime_server::basic().as_str()));
    let forecasts = env.server.requests_to("/v3/forecast");
    assert_eq!(forecasts.len(), 1);
    assert_eq!(forecasts[0].query, "region=CAISO_NORTH&signal_type=co2_moer&horizon_hours=24");
    let token = &env.server.tokens()[0];
    assert_eq!(forecasts[0].header("authorization"), Some(format!("Bearer {token}").as_str()));

    let current = env.wait_rows("carbon_intensity", 1).await;
    assert_eq!(current.len(), 1);
    let row = &current[0];
    assert_eq!(row["time"], json!(START * 1_000_000_000));
    assert_eq!(row["region"], "CAISO_NORTH");
    assert_eq!(float(row, "carbon_intensity_gco2_kwh"), 453.6, "1000 lbs/MWh is 453.6 g/kWh");
    assert_eq!(float(row, "moer_lbs_mwh"), 1000.0);
    assert_eq!(float(row, "forecast_1h"), g_kwh(watttime_server::value(12)), "12 × 5 min ahead");
    assert_eq!(float(row, "forecast_24h"), g_kwh(watttime_server::value(287)), "24 h horizon: the last point");
    assert_eq!(
        env.influxd.series(DB, "SHOW FIELD KEYS FROM carbon_intensity")[0]["values"],
        json!([
            ["carbon_intensity_gco2_kwh", "float"],
            ["forecast_1h", "float"],
            ["forecast_24h", "float"],
            ["moer_lbs_mwh", "float"]
        ])
    );

    let curve = env.wait_rows("carbon_intensity_forecast", 288).await;
    assert_eq!(curve.len(), 288);
    for (i, row) in curve.iter().enumerate() {
        assert_eq!(row["time"], json!((START + i as i64 * 300) * 1_000_000_000));
        assert_eq!(float(row, "moer_lbs_mwh"), watttime_server::value(i));
        assert_eq!(row["generated_at"], watttime_server::GENERATED_AT);
        assert_eq!(row["region"], "CAISO_NORTH");
    }

    let snap = env.snapshot().await;
    for (name, value) in
        [("fetches", 1), ("token_refreshes", 1), ("points_written", 289), ("requests_today", 2), ("failures", 0)]
    {
        if name == "failures" {
            assert!(snap["counters"].get(name).is_none_or(|v| v == 0), "{snap}");
        } else {
            assert_eq!(counter(&snap, name), value, "{name}: {snap}");
        }
    }
    assert_eq!(counter(&snap, "daily_request_budget"), 1000);
    assert!(!snap["counters"]["last_successful_fetch"].is_null(), "{snap}");
    assert!(!snap["counters"]["last_token_refresh"].is_null(), "{snap}");
    let shown = snap.to_string();
    assert!(!shown.contains(PASS) && !shown.contains(token.as_str()), "no credential in the status: {shown}");
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_token_logs_in_once_more_then_succeeds() {
    let env = Env::start(&LOGIN, "", &[Reply::Expired]).await;
    let snap = env.wait_runs(1).await;
    assert_eq!(snap["state"], "ok", "{snap}");
    assert_eq!((env.logins(), env.forecasts()), (2, 2));
    let tokens = env.server.tokens();
    let last = env.server.requests_to("/v3/forecast").pop().unwrap();
    assert_eq!(last.header("authorization"), Some(format!("Bearer {}", tokens[1]).as_str()), "the new token");
    assert_eq!(counter(&snap, "token_refreshes"), 2);
    env.wait_rows("carbon_intensity", 1).await;
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_401_is_a_failure_without_a_loop() {
    let env = Env::start(&LOGIN, "", &[Reply::Expired, Reply::Expired]).await;
    let snap = env.wait_runs(1).await;
    assert_eq!(snap["state"], "degraded", "{snap}");
    assert!(detail(&snap).contains("401"), "{snap}");
    assert_eq!(counter(&snap, "failures"), 1);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!((env.logins(), env.forecasts()), (2, 2), "exactly one re-login and one retry");
    assert!(env.rows("carbon_intensity").is_empty());
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_waits_for_retry_after() {
    let env = Env::start(&LOGIN, "", &[Reply::RateLimited(2)]).await;
    let snap = env.wait_runs(2).await;
    assert_eq!(snap["state"], "ok", "{snap}");
    let forecasts = env.server.requests_to("/v3/forecast");
    assert_eq!(forecasts.len(), 2, "one 429, one retry");
    let waited = forecasts[1].at - forecasts[0].at;
    assert!(waited >= Duration::from_secs(2), "retried after {waited:?}, before Retry-After: 2");
    assert_eq!(env.logins(), 1, "the token was still good");
    env.wait_rows("carbon_intensity", 1).await;
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_gives_up_after_three_tries() {
    let env = Env::start(&LOGIN, "", &[Reply::RateLimited(1), Reply::RateLimited(1), Reply::RateLimited(1)]).await;
    env.wait_runs(3).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(env.forecasts(), 3, "at most 3 tries per scheduled run");
    let snap = env.snapshot().await;
    assert_eq!(snap["runs"], 3, "no wake-up after the third 429: {snap}");
    assert_eq!(snap["state"], "degraded", "{snap}");
    assert!(detail(&snap).contains("429"), "{snap}");
    assert_eq!(counter(&snap, "failures"), 3);
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn null_first_value_writes_nothing() {
    let env = Env::start(&LOGIN, "", &[Reply::NullFirst]).await;
    let snap = env.wait_runs(1).await;
    assert_eq!(snap["state"], "degraded", "{snap}");
    assert!(detail(&snap).contains("first forecast point"), "{snap}");
    assert_eq!(counter(&snap, "failures"), 1);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(env.rows("carbon_intensity").is_empty());
    assert!(env.rows("carbon_intensity_forecast").is_empty());
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn html_502_is_a_failure_naming_the_status() {
    let script = [Reply::HtmlBadGateway, Reply::HtmlBadGateway, Reply::HtmlBadGateway];
    let env = Env::start(&LOGIN, "", &script).await;
    let snap = env.wait_runs(1).await;
    assert_eq!(snap["state"], "degraded", "{snap}");
    let text = detail(&snap);
    assert!(text.contains("502") && text.contains("HTML"), "{snap}");
    assert_eq!(env.forecasts(), 3, "three tries with a short backoff");
    let tries = env.server.requests_to("/v3/forecast");
    assert!(tries[2].at - tries[0].at >= Duration::from_secs(2), "backoff between tries");
    assert_eq!(counter(&snap, "failures"), 1);
    assert!(env.rows("carbon_intensity").is_empty());
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forbidden_and_malformed_then_recovery() {
    let env = Env::start(&LOGIN, "", &[Reply::Forbidden]).await;
    let snap = env.wait_runs(1).await;
    assert!(detail(&snap).contains("region CAISO_NORTH not in your plan"), "{snap}");
    assert_eq!(env.forecasts(), 1, "403 is not retried");

    env.server.script(&[Reply::Malformed]);
    env.invoke().await;
    let snap = env.wait_runs(2).await;
    let text = detail(&snap);
    assert!(text.contains("HTTP 200") && text.contains("malformed JSON"), "{snap}");
    assert!(env.rows("carbon_intensity").is_empty(), "failed fetches write nothing");

    env.invoke().await;
    let snap = env.wait_runs(3).await;
    assert_eq!(snap["state"], "ok", "{snap}");
    assert_eq!(counter(&snap, "failures"), 2);
    assert_eq!(env.logins(), 1, "one token for all three runs");
    env.wait_rows("carbon_intensity", 1).await;
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daily_budget_stops_requests() {
    let env = Env::start(&LOGIN, ", daily_request_budget = 2", &[]).await;
    let snap = env.wait_runs(1).await;
    assert_eq!(snap["state"], "ok", "{snap}");
    env.invoke().await;
    let snap = env.wait_runs(2).await;
    assert_eq!(snap["state"], "degraded", "{snap}");
    assert!(detail(&snap).contains("daily request budget of 2"), "{snap}");
    assert_eq!(env.server.requests().len(), 2, "no request beyond the budget");
    assert_eq!((counter(&snap, "requests_today"), counter(&snap, "daily_request_budget")), (2, 2));
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn placeholder_username_is_standby_without_requests() {
    let env =
        Env::start(&[("watttime.username", "your_watttime_username"), ("watttime.password", PASS)], "", &[]).await;
    let snap = env.wait_runs(1).await;
    assert_eq!(snap["state"], "standby", "{snap}");
    assert!(detail(&snap).contains("`wattedge secrets set watttime.username`"), "{snap}");
    assert!(!detail(&snap).contains("`wattedge secrets set watttime.password`"), "the password is set: {snap}");
    assert!(env.server.requests().is_empty(), "zero requests");
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_set_while_running_leave_standby() {
    let env = Env::start(&[], "", &[]).await;
    let snap = env.wait_runs(1).await;
    assert_eq!(snap["state"], "standby", "{snap}");
    let text = detail(&snap);
    assert!(text.contains("`wattedge secrets set watttime.username`"), "{snap}");
    assert!(text.contains("`wattedge secrets set watttime.password`"), "{snap}");
    assert!(env.server.requests().is_empty());

    set_secrets(&env.secrets, &LOGIN);
    env.invoke().await;
    let snap = env.wait_runs(2).await;
    assert_eq!(snap["state"], "ok", "left standby on the next run: {snap}");
    assert_eq!((env.logins(), env.forecasts()), (1, 1));
    env.wait_rows("carbon_intensity", 1).await;
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_token_is_used_without_login() {
    let env = Env::start(&[], "", &[]).await;
    env.wait_runs(1).await;
    // A token the user got elsewhere (the server accepts only tokens it issued).
    let token = env.server.issue_token();
    set_secrets(&env.secrets, &[("watttime.token", &token)]);
    env.invoke().await;
    let snap = env.wait_runs(2).await;
    assert_eq!(snap["state"], "ok", "{snap}");
    assert_eq!((env.logins(), env.forecasts()), (0, 1), "a static token: no login");

    env.server.script(&[Reply::Expired]);
    env.invoke().await;
    let snap = env.wait_runs(3).await;
    assert_eq!(snap["state"], "degraded", "{snap}");
    assert!(detail(&snap).contains("`wattedge secrets set watttime.token`"), "{snap}");
    assert_eq!((env.logins(), env.forecasts()), (0, 2), "no login without username and password");
    env.shutdown().await;
}
