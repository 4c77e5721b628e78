//! Shared harness for the end-to-end tests: configs in temp dirs, a host
//! started in-process on 127.0.0.1:0, and a tiny HTTP client for the admin API.
#![allow(dead_code)]

pub mod https_server;
#[cfg(feature = "influx-v2")]
pub mod influx2_server;
pub mod influxd;
pub mod registry;
pub mod registry_token;
pub mod wattivahti_server;
pub mod watttime_server;

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wattedge::config::Config;
use wattedge::store::{FieldValue, Point, Query, Row, TimeSeriesStore};

/// The test probe component built by host/build.rs.
pub fn probe() -> String {
    wattedge::builtin::probe_path().display().to_string()
}

/// A temp dir with a config file whose [host] section points into it.
pub struct Setup {
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
}

impl Setup {
    /// Writes `[host]` (state in the temp dir, admin on `admin_listen`) followed by `body`.
    ///
    /// The host's own `wattedge_host` health rows are off: tests count the
    /// points in a store exactly, and a slow machine may run one past the
    /// default 60 s interval. `influx::host_tags_win_over_a_guest_s_and_health_rows_reach_influxd_with_them`
    /// turns them on.
    pub fn new(admin_listen: &str, body: &str) -> Setup {
        let dir = tempfile::tempdir().expect("temp dir");
        let config_path = dir.path().join("wattedge.toml");
        let host = format!(
            "[host]\nadmin_listen = \"{admin_listen}\"\nstate_dir = \"{}\"\nhealth_interval = \"0s\"\n\n",
            dir.path().join("state").display()
        );
        std::fs::write(&config_path, host + body).expect("write config");
        Setup { dir, config_path }
    }

    pub fn config(&self) -> Config {
        Config::load(&self.config_path).unwrap_or_else(|e| panic!("config: {e}"))
    }

    pub fn secrets_file(&self) -> PathBuf {
        self.dir.path().join("state").join("secrets.toml")
    }

    /// The admin token the host generated (or was given) at start.
    pub fn admin_token(&self) -> String {
        wattedge::secrets::SecretStore::open(&self.secrets_file())
            .unwrap()
            .value("admin.token")
            .expect("admin.token set")
    }

    /// An authorised POST to the admin API.
    pub async fn post(&self, addr: SocketAddr, path: &str, body: &str) -> (u16, Value) {
        http(addr, "POST", path, body, Some(&self.admin_token())).await
    }
}

/// Starts a host in-process for `body` (guest sections).
pub async fn start(body: &str) -> (Setup, wattedge::RunningHost) {
    let setup = Setup::new("127.0.0.1:0", body);
    let host = wattedge::start(setup.config()).await.unwrap_or_else(|e| panic!("start: {e}"));
    (setup, host)
}

/// A probe guest section.
pub fn probe_guest(name: &str, schedule: &str, config: &str) -> String {
    format!(
        "[guests.{name}]\ncomponent = \"{}\"\nschedule = \"{schedule}\"\nrun_timeout = \"5s\"\nconfig = {{ {config} }}\n\n[guests.{name}.grants]\ninflux_write = [\"probe\"]\ninflux_read = [\"probe\"]\nsecrets = {{ \"probe.key\" = [\"example.org\"] }}\n\n",
        probe()
    )
}

/// Longest an admin API request may take before the test fails (a swap
/// compiles a component in a debug build, so not short).
const ADMIN_REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// One HTTP/1.1 request; returns (status, JSON body or string). A host that
/// hangs fails the test instead of hanging it.
pub async fn http(addr: SocketAddr, method: &str, path: &str, body: &str, token: Option<&str>) -> (u16, Value) {
    let exchange = exchange(addr, method, path, body, token);
    tokio::time::timeout(ADMIN_REQUEST_TIMEOUT, exchange)
        .await
        .unwrap_or_else(|_| panic!("{method} {path}: no answer from the admin API within {ADMIN_REQUEST_TIMEOUT:?}"))
}

async fn exchange(addr: SocketAddr, method: &str, path: &str, body: &str, token: Option<&str>) -> (u16, Value) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect to admin API");
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.expect("send");
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.expect("read");
    let text = String::from_utf8_lossy(&raw).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let value = serde_json::from_str(body).unwrap_or(Value::String(body.to_string()));
    (status, value)
}

pub async fn get(addr: SocketAddr, path: &str) -> (u16, Value) {
    http(addr, "GET", path, "", None).await
}

/// Polls `check` every 50 ms until it returns Some or `timeout` passes.
pub async fn wait_for<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until guest `name` has finished at least `runs` runs; returns its snapshot.
pub async fn wait_runs(addr: SocketAddr, name: &str, runs: u64, timeout: Duration) -> Value {
    wait_for(timeout, &format!("{name} to finish {runs} runs"), || async move {
        let (_, snap) = get(addr, &format!("/guests/{name}")).await;
        (snap["runs"].as_u64().unwrap_or(0) >= runs).then_some(snap)
    })
    .await
}

/// Every row of `measurement`, oldest first.
pub async fn rows(host: &wattedge::RunningHost, measurement: &str) -> Vec<Row> {
    let query = Query { measurement: measurement.into(), ..Query::default() };
    host.store().query(query).await.expect("query")
}

/// The default config shipped at the repo root.
pub fn default_config_text() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../wattedge.toml")).expect("wattedge.toml")
}

/// A free loopback port (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A point from borrowed parts.
pub fn point(measurement: &str, tags: &[(&str, &str)], fields: Vec<(&str, FieldValue)>, time: i64) -> Point {
    Point {
        measurement: measurement.into(),
        tags: tags.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        fields: fields.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
        time,
    }
}

/// The row a query returns for `p`.
pub fn as_row(p: &Point) -> Row {
    Row { time: p.time, tags: p.tags.clone(), fields: p.fields.clone() }
}

/// The value of an unlabelled metric in Prometheus text.
pub fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("metric {name} missing in:\n{text}"))
}

/// Waits until a remote backend's outbox is empty.
pub async fn drained(store: &dyn TimeSeriesStore, timeout: Duration) {
    wait_for(timeout, "the outbox to drain", || async {
        (metric(&store.metrics(), "wattedge_outbox_points") == 0.0).then_some(())
    })
    .await;
}

/// Everything logged by any host in this test binary.
pub fn log_buffer() -> Arc<Mutex<Vec<u8>>> {
    static BUFFER: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    BUFFER
        .get_or_init(|| {
            let buffer = Arc::new(Mutex::new(Vec::new()));
            let sink = buffer.clone();
            let writer = move || Sink(sink.clone());
            let _ = tracing_subscriber::fmt()
                .with_max_level(tracing::Level::DEBUG)
                .with_writer(writer)
                .with_ansi(false)
                .try_init();
            buffer
        })
        .clone()
}

struct Sink(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Invokes `guest` once more and waits for that run to end ok; returns its
/// snapshot.
pub async fn invoke_and_wait(setup: &Setup, host: &wattedge::RunningHost, guest: &str) -> Value {
    let addr = host.admin_addr();
    let before = get(addr, &format!("/guests/{guest}")).await.1["runs"].as_u64().unwrap_or(0);
    let (status, _) = setup.post(addr, &format!("/guests/{guest}/invoke"), "{}").await;
    assert_eq!(status, 202);
    let snap = wait_runs(addr, guest, before + 1, Duration::from_secs(20)).await;
    assert_eq!(snap["last_run"]["outcome"], "ok", "{snap}");
    snap
}
