//! Outbound HTTP end to end: a real host, the probe guest making wasi:http
//! requests, and a local HTTPS upstream with a CA generated at test time
//! (trusted through `host.extra_ca`, reached through `host.resolve`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::support;
use crate::support::https_server::{HttpsServer, REFRESH, TOKEN};
use base64::Engine as _;
use serde_json::{Value, json};
use wattedge::store::FieldValue;

const USER: &str = "alice-Us3r-7781";
const PASS: &str = "pw-S3cr3t:with&odd+chars";
const PASS_PCT: &str = "pw-S3cr3t%3Awith%26odd%2Bchars";
const KEY: &str = "key-9b1c2d3e4f";
const OTHER: &str = "other-0a9s8d7f6e";
const ADMIN: &str = "admin-token-for-http-tests";
const NAMES: [&str; 4] = ["upstream.test", "other.test", "sneaky.test", "evil.test"];

/// What the probe saw for one request.
#[derive(Debug)]
struct Seen {
    status: i64,
    headers: String,
    body: String,
    error: String,
}

impl Seen {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("guest body is not JSON ({e}): {}", self.body))
    }
}

/// A host with one probe guest and an HTTPS upstream.
struct Env {
    dir: tempfile::TempDir,
    server: HttpsServer,
    config: PathBuf,
    host: Option<wattedge::RunningHost>,
}

impl Env {
    async fn start() -> Env {
        support::log_buffer();
        let server = HttpsServer::start(&NAMES).await;
        let dir = tempfile::tempdir().expect("temp dir");
        let config = write_config(dir.path(), &server);
        seed_secrets(&dir.path().join("state").join("secrets.toml"));
        let mut env = Env { dir, server, config, host: None };
        env.restart().await;
        env
    }

    async fn restart(&mut self) {
        if let Some(host) = self.host.take() {
            host.shutdown().await;
        }
        let config = wattedge::config::Config::load(&self.config).unwrap_or_else(|e| panic!("config: {e}"));
        self.host = Some(wattedge::start(config).await.unwrap_or_else(|e| panic!("start: {e}")));
    }

    fn host(&self) -> &wattedge::RunningHost {
        self.host.as_ref().expect("running")
    }

    fn url(&self, name: &str, path: &str) -> String {
        format!("https://{name}:{}{path}", self.server.addr.port())
    }

    /// Invokes the probe with `args` (mode http) and returns what it saw.
    async fn request(&self, label: &str, args: &[(&str, &str)]) -> Seen {
        let mut body = json!({"mode": "http", "label": label});
        for (k, v) in args {
            body[*k] = Value::String(v.to_string());
        }
        let addr = self.host().admin_addr();
        let (status, reply) = support::http(addr, "POST", "/guests/probe/invoke", &body.to_string(), Some(ADMIN)).await;
        assert_eq!(status, 202, "invoke: {reply}");
        let host = self.host();
        support::wait_for(Duration::from_secs(20), &format!("probe_http point {label}"), || async move {
            let rows = support::rows(host, "probe_http").await;
            let row = rows.into_iter().find(|r| r.tags.get("label").map(String::as_str) == Some(label))?;
            let text = |k: &str| match row.fields.get(k) {
                Some(FieldValue::Text(t)) => t.clone(),
                other => panic!("field {k}: {other:?}"),
            };
            let status = match row.fields.get("status") {
                Some(FieldValue::Integer(s)) => *s,
                other => panic!("status: {other:?}"),
            };
            Some(Seen { status, headers: text("headers"), body: text("body"), error: text("error") })
        })
        .await
    }

    async fn metrics(&self) -> String {
        let (_, body) = support::get(self.host().admin_addr(), "/metrics").await;
        body.as_str().unwrap_or_default().to_string()
    }
}

fn write_config(dir: &Path, server: &HttpsServer) -> PathBuf {
    let ca = server.write_ca(dir);
    let resolve: Vec<String> = NAMES.iter().map(|n| format!("\"{n}\" = \"127.0.0.1\"")).collect();
    let text = format!(
        r#"[host]
admin_listen = "127.0.0.1:0"
state_dir = "{state}"
extra_ca = "{ca}"
http_timeout = "1500ms"
http_max_body = "64KiB"
resolve = {{ {resolve} }}

[guests.probe]
component = "{probe}"
schedule = "every 1h"
run_timeout = "20s"
config = {{ mode = "write" }}

[guests.probe.grants]
http = ["private:upstream.test", "private:other.test", "sneaky.test"]
influx_write = ["probe", "probe_http"]
[guests.probe.grants.secrets]
"api.user" = ["upstream.test"]
"api.pass" = ["upstream.test"]
"api.key" = ["upstream.test"]
"api.token" = ["upstream.test"]
"api.refresh" = ["upstream.test"]
"other.key" = ["other.test"]
[guests.probe.grants.capture]
"api.token" = {{ from = "upstream.test", pointer = "/token", persist = true }}
"api.refresh" = {{ from = "upstream.test", pointer = "/refresh_token", persist = true }}
"other.key" = {{ from = "upstream.test", pointer = "/headers/x-capture-me" }}
"#,
        state = dir.join("state").display(),
        ca = ca.display(),
        resolve = resolve.join(", "),
        probe = support::probe(),
    );
    let path = dir.join("wattedge.toml");
    std::fs::write(&path, text).expect("write config");
    path
}

fn seed_secrets(path: &Path) {
    let store = wattedge::secrets::SecretStore::open(path).expect("secrets");
    for (name, value) in
        [("api.user", USER), ("api.pass", PASS), ("api.key", KEY), ("other.key", OTHER), ("admin.token", ADMIN)]
    {
        store.set(name, value, None, true).expect("set secret");
    }
}

fn basic() -> String {
    base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASS}"))
}

async fn allowed_denied_private_redirect(env: &Env) {
    let seen = env.request("allowed", &[("url", &env.url("upstream.test", "/echo?x=1"))]).await;
    assert_eq!((seen.status, seen.error.as_str()), (200, ""), "{seen:?}");
    let echo = seen.json();
    assert_eq!(echo["path"], "/echo?x=1");
    assert_eq!(echo["headers"]["host"], format!("upstream.test:{}", env.server.addr.port()), "Host comes from the URI");

    let seen = env.request("host-header", &[("url", &env.url("upstream.test", "/h")), ("h.host", "evil.test")]).await;
    assert!(seen.error.contains("Forbidden"), "a guest cannot set Host: {seen:?}");
    assert!(env.server.received().iter().all(|r| r.header("host") != Some("evil.test")));

    let before = env.server.received().len();
    let seen = env.request("denied", &[("url", &env.url("evil.test", "/echo"))]).await;
    assert_eq!(seen.status, 0);
    assert!(seen.error.contains("HttpRequestDenied"), "{seen:?}");
    let seen = env.request("private", &[("url", &env.url("sneaky.test", "/echo"))]).await;
    assert!(seen.error.contains("HttpRequestDenied"), "a public grant that resolves to 127.0.0.1: {seen:?}");
    assert_eq!(env.server.received().len(), before, "nothing reached the server");

    let seen = env.request("redirect", &[("url", &env.url("upstream.test", "/redirect"))]).await;
    assert_eq!((seen.status, seen.body.as_str()), (302, "moved"), "redirects are handed to the guest");
    assert_eq!(env.server.received_at("/redirect").len(), 1);
    assert!(env.metrics().await.contains("wattedge_guest_http_denied_total{guest=\"probe\"} 2"));
}

async fn substitution(env: &Env) {
    let query = "/echo?user=${secret:api.user}&pass=${secret:api.pass}";
    let seen = env
        .request("header+query", &[("url", &env.url("upstream.test", query)), ("h.x-api-key", "${secret:api.key}")])
        .await;
    assert_eq!(seen.status, 200, "{seen:?}");
    let got = env.server.received_at("/echo?user=").pop().expect("received");
    assert_eq!(got.path, format!("/echo?user={USER}&pass={PASS_PCT}"));
    assert_eq!(got.header("x-api-key"), Some(KEY));
    assert_eq!(seen.json()["headers"]["x-api-key"], "[redacted]", "the echo is scrubbed for the guest");

    let form = "user=${secret:api.user}&pass=${secret:api.pass}";
    let form_headers = ("h.content-type", "application/x-www-form-urlencoded");
    let seen = env
        .request(
            "form",
            &[("url", &env.url("upstream.test", "/form")), ("method", "POST"), form_headers, ("body", form)],
        )
        .await;
    assert_eq!(seen.status, 200, "{seen:?}");
    assert_eq!(env.server.received_at("/form").pop().unwrap().body, format!("user={USER}&pass={PASS_PCT}"));

    let body = r#"{"user":"${secret:api.user}","pass":"${secret:api.pass}","n":1}"#;
    let json_headers = ("h.content-type", "application/json");
    env.request(
        "json",
        &[("url", &env.url("upstream.test", "/json")), ("method", "POST"), json_headers, ("body", body)],
    )
    .await;
    let sent: Value = serde_json::from_str(&env.server.received_at("/json").pop().unwrap().body).unwrap();
    assert_eq!(sent, json!({"user": USER, "pass": PASS, "n": 1}));

    let auth = ("h.authorization", "Basic ${secret-basic:api.user:api.pass}");
    let seen = env.request("basic", &[("url", &env.url("upstream.test", "/basic")), auth]).await;
    assert_eq!(
        env.server.received_at("/basic").pop().unwrap().header("authorization"),
        Some(&*format!("Basic {}", basic()))
    );
    assert_eq!(seen.json()["headers"]["authorization"], "Basic [redacted]");
    assert!(seen.headers.contains("x-echo-authorization: Basic [redacted]\n"), "{}", seen.headers);
}

async fn refused_secret(env: &Env) {
    let before = env.server.received().len();
    let seen = env
        .request("refused", &[("url", &env.url("upstream.test", "/refused")), ("h.x-k", "${secret:other.key}")])
        .await;
    assert_eq!(seen.status, 0);
    assert!(seen.error.contains("other.key") && seen.error.contains("grants.secrets"), "{seen:?}");
    assert_eq!(env.server.received().len(), before, "nothing was sent");
}

async fn capture(env: &Env) {
    let seen = env.request("capture", &[("url", &env.url("upstream.test", "/token")), ("method", "POST")]).await;
    assert_eq!(seen.status, 200, "{seen:?}");
    let body = seen.json();
    assert_eq!(
        (body["token"].as_str(), body["refresh_token"].as_str()),
        (Some("[wattedge:captured]"), Some("[wattedge:captured]"))
    );
    assert_eq!(body["expires_in"], 1800);
    let file = std::fs::read_to_string(env.dir.path().join("state/secrets.toml")).unwrap();
    assert!(file.contains(TOKEN) && file.contains(REFRESH), "captured values are persisted");
    bearer(env, "bearer").await;
}

/// Sends `Bearer ${secret:api.token}` and checks the upstream got the token.
async fn bearer(env: &Env, label: &str) {
    let path = format!("/{label}");
    let seen = env
        .request(label, &[("url", &env.url("upstream.test", &path)), ("h.authorization", "Bearer ${secret:api.token}")])
        .await;
    assert_eq!(seen.status, 200, "{seen:?}");
    assert_eq!(env.server.received_at(&path).pop().unwrap().header("authorization"), Some(&*format!("Bearer {TOKEN}")));
    assert_eq!(seen.json()["headers"]["authorization"], "Bearer [redacted]");
}

async fn limits(env: &Env) {
    // `/slow` answers after 3 s, so a timeout at all proves the limit is
    // under 3 s; the host's own measure of the wait (not the test's clock,
    // which includes invoking and polling on a loaded machine) pins it to
    // the configured 1.5 s.
    let before = http_seconds(&env.metrics().await);
    let seen = env.request("slow", &[("url", &env.url("upstream.test", "/slow"))]).await;
    assert!(seen.error.contains("Timeout"), "{seen:?}");
    let waited = http_seconds(&env.metrics().await) - before;
    assert!((1.5..2.9).contains(&waited), "the 1.5s http_timeout cut it short: {waited} s");
    let seen = env.request("slow-opt", &[("url", &env.url("upstream.test", "/slow")), ("timeout_ms", "300")]).await;
    assert!(seen.error.contains("Timeout"), "request options override the timeout: {seen:?}");
    let seen = env.request("big", &[("url", &env.url("upstream.test", "/big"))]).await;
    assert!(seen.error.contains("HttpResponseBodySize"), "{seen:?}");
    let metrics = env.metrics().await;
    assert!(metrics.contains("wattedge_guest_http_failures_total{guest=\"probe\",kind=\"timeout\"} 2"), "{metrics}");
    assert!(metrics.contains("wattedge_guest_http_failures_total{guest=\"probe\",kind=\"oversize\"} 1"), "{metrics}");
    let (waited, ran) = (http_seconds(&metrics), probe_sample(&metrics, "wattedge_guest_run_seconds_total"));
    assert!(waited >= 1.8, "the two timeouts alone waited 1.5 + 0.3 s: {waited}");
    assert!(waited <= ran, "waiting on upstream is part of the runs' {ran} s: {waited}");
    // Twelve requests at once: the host runs a few at a time, all succeed.
    let seen = env.request("parallel", &[("url", &env.url("upstream.test", "/hold")), ("parallel", "12")]).await;
    assert_eq!(seen.status, 200, "{seen:?}");
    assert_eq!(env.server.received_at("/hold").len(), 12);
    let most = env.server.most_held();
    let cap = wattedge::capabilities::http::MAX_REQUESTS_IN_FLIGHT;
    assert!(most > 1 && most <= cap, "at most {cap} of a guest's requests in flight: {most}");
}

/// The probe's sample of the metric `name`.
fn probe_sample(metrics: &str, name: &str) -> f64 {
    let line = metrics.lines().find_map(|l| l.strip_prefix(&format!("{name}{{guest=\"probe\"}} ")));
    line.and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("no {name}: {metrics}"))
}

/// Seconds the probe's runs have waited on upstreams, as the host measured.
fn http_seconds(metrics: &str) -> f64 {
    probe_sample(metrics, "wattedge_guest_http_seconds_total")
}

/// An echoing server can neither carry a secret into another one (through
/// capture: the config captures other.key from the echo of `x-capture-me`)
/// nor hand it to the guest compressed, where scrubbing cannot see it.
async fn echoes(env: &Env) {
    let args = [("url", env.url("upstream.test", "/echo-capture")), ("h.x-capture-me", "${secret:api.key}".into())];
    let seen = env.request("echo-capture", &args.each_ref().map(|(k, v)| (*k, v.as_str()))).await;
    assert_eq!(seen.status, 200, "{seen:?}");
    let seen =
        env.request("other", &[("url", &env.url("other.test", "/other")), ("h.x-k", "${secret:other.key}")]).await;
    assert_eq!(seen.status, 200, "{seen:?}");
    let sent = env.server.received_at("/other").pop().expect("received");
    assert_eq!(sent.header("x-k"), Some(OTHER), "other.key did not take api.key's value from the echo");
    let gzip = [("h.accept-encoding", "gzip"), ("h.authorization", "Bearer ${secret:api.key}")];
    let seen = env
        .request("gzip-asked", &[&[("url", env.url("upstream.test", "/echo-gz").as_str())][..], &gzip].concat())
        .await;
    let sent = env.server.received_at("/echo-gz").pop().expect("received");
    assert_eq!(sent.header("accept-encoding"), Some("identity"), "the upstream is asked for a plain body");
    assert_eq!(seen.json()["headers"]["authorization"], "Bearer [redacted]", "scrubbed: {seen:?}");
    let seen =
        env.request("gzip-anyway", &[&[("url", env.url("upstream.test", "/gzip").as_str())][..], &gzip].concat()).await;
    assert_eq!(seen.status, 0, "{seen:?}");
    assert!(seen.error.contains("gzip-encoded"), "a compressed body is refused: {seen:?}");
    let metrics = env.metrics().await;
    assert!(metrics.contains("wattedge_guest_http_failures_total{guest=\"probe\",kind=\"encoding\"} 1"), "{metrics}");
    assert!(metrics.contains("wattedge_guest_http_failures_total{guest=\"probe\",kind=\"capture\"} 1"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowed_denied_private_and_redirect() {
    let env = Env::start().await;
    allowed_denied_private_redirect(&env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_are_sealed_in_where_granted() {
    let env = Env::start().await;
    substitution(&env).await;
    refused_secret(&env).await;
    echoes(&env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capture_redacts_and_survives_restart() {
    let mut env = Env::start().await;
    capture(&env).await;
    env.restart().await;
    bearer(&env, "after-restart").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_and_oversize() {
    let env = Env::start().await;
    limits(&env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_guest_never_sees_a_secret() {
    let env = Env::start().await;
    allowed_denied_private_redirect(&env).await;
    substitution(&env).await;
    refused_secret(&env).await;
    capture(&env).await;
    limits(&env).await;
    echoes(&env).await;
    let mut seen = String::new();
    for row in support::rows(env.host(), "probe_http").await {
        seen.push_str(&format!("{:?}\n", row.fields));
    }
    let (_, guest) = support::get(env.host().admin_addr(), "/guests/probe").await;
    seen.push_str(&guest.to_string());
    let logs = String::from_utf8_lossy(&support::log_buffer().lock().unwrap()).to_string();
    let guest_logs: String = logs.lines().filter(|l| l.contains("guest")).collect::<Vec<_>>().join("\n");
    assert!(guest_logs.contains("http capture: status 200"), "the probe's log lines were captured");
    let denied_line = logs
        .lines()
        .any(|l| l.contains("outbound HTTP denied") && l.contains("guest=probe") && l.contains("evil.test"));
    assert!(denied_line, "a denial is logged naming the guest and the destination");
    seen.push_str(&logs);
    assert!(seen.contains("[wattedge:captured]") && seen.contains("[redacted]"));
    let b64 = basic();
    for secret in [USER, PASS, PASS_PCT, KEY, OTHER, TOKEN, REFRESH, b64.as_str()] {
        assert_eq!(seen.matches(secret).count(), 0, "a secret value reached the guest or the log");
    }
}
