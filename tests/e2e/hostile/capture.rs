//! Credentials captured by the host, scrubbing per guest (issue 21, items 1
//! and 2): the probe guest (mode `http`) makes the requests a hostile guest
//! would, through the real WIT and wasi:http, against the local HTTPS
//! upstream (`https_server.rs`), reached under several names.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use wattedge::store::FieldValue;

use crate::support;
use crate::support::https_server::HttpsServer;

/// The refresh token the operator set; the upstream rotates it.
const SEEDED_REFRESH: &str = "ref-SEEDED-0f3e9d2c";
/// Names the upstream answers to: the token host of the capture rules, the
/// same server under another name, and a data host.
const NAMES: [&str; 3] = ["auth.test", "mirror.test", "data.test"];
const REFRESH: &str = "wattivahti.refresh_token";
const ACCESS: &str = "wattivahti.access_token";

/// What a probe saw for one request.
#[derive(Debug)]
struct Seen {
    status: i64,
    headers: String,
    body: String,
    error: String,
}

/// A host running the attacker `probe` (and `other`, another guest) and
/// the HTTPS upstream.
struct Env {
    dir: tempfile::TempDir,
    server: HttpsServer,
    host: wattedge::RunningHost,
    admin: String,
}

impl Env {
    async fn start(guests: &str, seed: &[(&str, &str)]) -> Env {
        support::log_buffer();
        let server = HttpsServer::start(&NAMES).await;
        let dir = tempfile::tempdir().expect("temp dir");
        let config = write_config(dir.path(), &server, guests);
        let secrets = wattedge::secrets::SecretStore::open(&secrets_path(dir.path())).expect("secrets");
        let admin = "admin-token-for-hostile-capture";
        for (name, value) in seed.iter().chain(&[("admin.token", admin)]) {
            secrets.set(name, value, None, true).expect("seed secret");
        }
        let config = wattedge::config::Config::load(&config).unwrap_or_else(|e| panic!("config: {e}"));
        let host = wattedge::start(config).await.unwrap_or_else(|e| panic!("start: {e}"));
        Env { dir, server, host, admin: admin.into() }
    }

    fn url(&self, name: &str, path: &str) -> String {
        format!("https://{name}:{}{path}", self.server.addr.port())
    }

    /// Invokes `guest` (mode http) with `args` and returns what it saw.
    async fn request(&self, guest: &str, label: &str, args: &[(&str, &str)]) -> Seen {
        let mut body = json!({"mode": "http", "label": label});
        for (k, v) in args {
            body[*k] = Value::String(v.to_string());
        }
        let path = format!("/guests/{guest}/invoke");
        let (status, reply) =
            support::http(self.host.admin_addr(), "POST", &path, &body.to_string(), Some(&self.admin)).await;
        assert_eq!(status, 202, "invoke: {reply}");
        let host = &self.host;
        support::wait_for(Duration::from_secs(60), &format!("probe_http point {label}"), || async move {
            let rows = support::rows(host, "probe_http").await;
            let row = rows.into_iter().find(|r| r.tags.get("label").map(String::as_str) == Some(label))?;
            let text = |k: &str| match row.fields.get(k) {
                Some(FieldValue::Text(t)) => t.clone(),
                other => panic!("field {k}: {other:?}"),
            };
            let Some(FieldValue::Integer(status)) = row.fields.get("status") else { panic!("status: {row:?}") };
            Some(Seen { status: *status, headers: text("headers"), body: text("body"), error: text("error") })
        })
        .await
    }

    /// The stored value of secret `name` (as the host reads it).
    fn secret(&self, name: &str) -> Option<String> {
        wattedge::secrets::SecretStore::open(&secrets_path(self.dir.path())).unwrap().value(name)
    }

    async fn metrics(&self) -> String {
        let (_, body) = support::get(self.host.admin_addr(), "/metrics").await;
        body.as_str().unwrap_or_default().to_string()
    }

    /// Everything a guest (or anyone) can see: every `probe_http` point,
    /// `GET /guests`, and the host log.
    async fn everything_visible(&self) -> String {
        let mut seen = String::new();
        for row in support::rows(&self.host, "probe_http").await {
            seen.push_str(&format!("{:?}\n", row.fields));
        }
        let (_, guests) = support::get(self.host.admin_addr(), "/guests").await;
        seen.push_str(&guests.to_string());
        seen.push_str(&String::from_utf8_lossy(&support::log_buffer().lock().unwrap()));
        seen
    }
}

fn secrets_path(dir: &Path) -> PathBuf {
    dir.join("state").join("secrets.toml")
}

/// The attacker `probe`: granted the WattiVahti tokens (the capture rules
/// take both from auth.test only), able to reach the same upstream as
/// mirror.test and data.test. Plus `extra` guests.
fn write_config(dir: &Path, server: &HttpsServer, extra: &str) -> PathBuf {
    let ca = server.write_ca(dir);
    let resolve: Vec<String> = NAMES.iter().map(|n| format!("\"{n}\" = \"127.0.0.1\"")).collect();
    let text = format!(
        r#"[host]
admin_listen = "127.0.0.1:0"
state_dir = "{state}"
extra_ca = "{ca}"
http_max_body = "8MiB"
resolve = {{ {resolve} }}

[guests.probe]
component = "{probe}"
schedule = "every 1h"
run_timeout = "30s"
memory_limit = "64MiB"
config = {{ mode = "write" }}

[guests.probe.grants]
http = ["private:auth.test", "private:mirror.test", "private:data.test"]
influx_write = ["probe_http"]
[guests.probe.grants.secrets]
"{REFRESH}" = ["auth.test"]
"{ACCESS}" = ["data.test"]
"a.flag" = ["data.test"]
[guests.probe.grants.capture]
"{REFRESH}" = {{ from = "auth.test", pointer = "/refresh_token", persist = true }}
"{ACCESS}" = {{ from = "auth.test", pointer = "/access_token", ttl = "1h" }}
"a.flag" = {{ from = "data.test", pointer = "/flag", persist = true }}

{extra}"#,
        state = dir.join("state").display(),
        ca = ca.display(),
        resolve = resolve.join(", "),
        probe = support::probe(),
    );
    let path = dir.join("wattedge.toml");
    std::fs::write(&path, text).expect("write config");
    path
}

/// A second probe guest `name` that may reach data.test, with `grants` added.
fn other_guest(name: &str, schedule: &str, grants: &str) -> String {
    format!(
        r#"[guests.{name}]
component = "{probe}"
schedule = "{schedule}"
run_timeout = "30s"
memory_limit = "64MiB"
config = {{ mode = "write", measurement = "{name}_runs" }}

[guests.{name}.grants]
http = ["private:data.test"]
influx_write = ["probe_http", "{name}_runs"]
{grants}
"#,
        probe = support::probe(),
    )
}

/// The refresh grant a guest POSTs; the host fills in the refresh token.
fn refresh_grant(env: &Env, host: &str, path: &str) -> Vec<(&'static str, String)> {
    vec![
        ("url", env.url(host, path)),
        ("method", "POST".into()),
        ("h.content-type", "application/x-www-form-urlencoded".into()),
        ("body", format!("grant_type=refresh_token&refresh_token=${{secret:{REFRESH}}}")),
    ]
}

fn pairs<'a>(args: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    args.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

fn capture_failures(metrics: &str, guest: &str) -> u64 {
    let name = format!("wattedge_guest_http_failures_total{{guest=\"{guest}\",kind=\"capture\"}} ");
    metrics.lines().find_map(|l| l.strip_prefix(&name)).and_then(|v| v.trim().parse().ok()).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_without_arming_is_captured_by_the_host_and_the_guest_sees_no_token() {
    let env = Env::start("", &[(REFRESH, SEEDED_REFRESH)]).await;
    let seen = env.request("probe", "refresh", &pairs(&refresh_grant(&env, "auth.test", "/oauth/token"))).await;
    assert_eq!((seen.status, seen.error.as_str()), (200, ""), "{seen:?}");
    let sent = env.server.received_at("/oauth/token").pop().expect("the grant reached the token endpoint");
    assert!(sent.body.contains(SEEDED_REFRESH), "the host sealed the refresh token in: {sent:?}");
    let body: Value = serde_json::from_str(&seen.body).expect("JSON");
    assert_eq!(body["access_token"], "[wattedge:captured]", "{body}");
    assert_eq!(body["refresh_token"], "[wattedge:captured]", "{body}");

    let (access, rotated) = env.server.issued(1);
    assert_eq!(env.secret(REFRESH).as_deref(), Some(rotated.as_str()), "the stored refresh token was rotated");
    // The access token lives in host memory only: the guest can use it.
    let bearer = [("url", env.url("data.test", "/data")), ("h.authorization", format!("Bearer ${{secret:{ACCESS}}}"))];
    let seen = env.request("probe", "data", &pairs(&bearer)).await;
    assert_eq!(seen.status, 200, "{seen:?}");
    let sent = env.server.received_at("/data").pop().expect("the data request");
    assert_eq!(
        sent.header("authorization"),
        Some(format!("Bearer {access}").as_str()),
        "the access token was captured"
    );
    let file = std::fs::read_to_string(secrets_path(env.dir.path())).unwrap();
    assert!(file.contains(&rotated), "the rotation is persisted");

    let visible = env.everything_visible().await;
    assert!(visible.contains("http refresh: status 200"), "the probe's own log line is in the captured log");
    for token in [&access, &rotated] {
        assert!(!visible.contains(token.as_str()), "{token} reached the guest, its points, /guests or the log");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_answer_from_a_host_the_rule_does_not_name_sets_no_secret() {
    let env = Env::start("", &[(REFRESH, SEEDED_REFRESH)]).await;
    // The same upstream, reached as mirror.test: not the rule's `from`.
    let seen = env.request("probe", "mirror", &[("url", &env.url("mirror.test", "/oauth/token"))]).await;
    assert_eq!(seen.status, 200, "{seen:?}");
    let (access, rotated) = env.server.issued(1);
    assert!(seen.body.contains(&rotated), "nothing was captured from mirror.test: {seen:?}");
    assert_eq!(env.secret(REFRESH).as_deref(), Some(SEEDED_REFRESH), "the refresh token is untouched");
    let bearer = [("url", env.url("data.test", "/data")), ("h.authorization", format!("Bearer ${{secret:{ACCESS}}}"))];
    let seen = env.request("probe", "bearer", &pairs(&bearer)).await;
    assert!(seen.error.contains("not set"), "no access token was set from mirror.test: {seen:?}");
    // data.test has a rule for a.flag only: a token-shaped answer sets nothing else.
    let seen = env.request("probe", "data", &[("url", &env.url("data.test", "/oauth/token"))]).await;
    assert_eq!(seen.status, 200, "{seen:?}");
    assert_eq!(env.secret(REFRESH).as_deref(), Some(SEEDED_REFRESH));
    let seen = env.request("probe", "bearer-again", &pairs(&bearer)).await;
    assert!(seen.error.contains("not set"), "{access} was not taken from data.test: {seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_json_2xx_from_a_capture_host_to_a_request_with_a_secret_is_withheld() {
    let env = Env::start("", &[(REFRESH, SEEDED_REFRESH)]).await;
    let seen = env.request("probe", "form", &pairs(&refresh_grant(&env, "auth.test", "/not-json"))).await;
    assert_eq!(seen.status, 0, "the guest gets an error, not the answer: {seen:?}");
    assert!(seen.error.contains("withheld") && seen.error.contains("HTTP 200"), "{seen:?}");
    assert_eq!(env.server.issued_count(), 1, "the upstream did answer");
    assert_eq!(capture_failures(&env.metrics().await, "probe"), 1);
    assert_eq!(env.secret(REFRESH).as_deref(), Some(SEEDED_REFRESH), "nothing captured from a form body");
    let (access, rotated) = env.server.issued(1);
    let visible = env.everything_visible().await;
    for token in [&access, &rotated] {
        assert!(!visible.contains(token.as_str()), "{token} reached the guest, its points, /guests or the log");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_captured_value_longer_than_8_kib_is_refused_and_counted() {
    let env = Env::start("", &[(REFRESH, SEEDED_REFRESH)]).await;
    let seen = env.request("probe", "huge", &pairs(&refresh_grant(&env, "auth.test", "/oauth/huge"))).await;
    assert_eq!(seen.status, 200, "{seen:?}");
    assert!(seen.body.contains("\"refresh_token\":\"[redacted]\"") && !seen.body.contains("rrrr"), "{seen:?}");
    assert_eq!(capture_failures(&env.metrics().await, "probe"), 1);
    assert_eq!(env.secret(REFRESH).as_deref(), Some(SEEDED_REFRESH), "the stored token is kept");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_guests_captured_value_does_not_blank_out_another_guests_answers() {
    let env = Env::start(&other_guest("other", "every 1h", ""), &[]).await;
    let seen = env.request("probe", "flag", &[("url", &env.url("data.test", "/flag"))]).await;
    assert_eq!(seen.status, 200, "{seen:?}");
    assert_eq!(env.secret("a.flag").as_deref(), Some("true"), "the attacker captured a common word");
    assert!(seen.body.contains("\"flag\":\"[wattedge:captured]\""), "{seen:?}");

    let seen = env.request("other", "other-flag", &[("url", &env.url("data.test", "/flag"))]).await;
    assert_eq!(seen.status, 200, "{seen:?}");
    assert!(seen.body.contains("a true story") && seen.body.contains("\"flag\":\"true\""), "{seen:?}");
    let echo = [("url", env.url("data.test", "/echo")), ("method", "POST".into()), ("body", "true or false".into())];
    let seen = env.request("other", "other-echo", &pairs(&echo)).await;
    assert!(seen.body.contains("true or false") && !seen.body.contains("[redacted]"), "{seen:?}");
    let logged = String::from_utf8_lossy(&support::log_buffer().lock().unwrap()).to_string();
    let line = logged.lines().find(|l| l.contains("http other-flag: status 200")).expect("the other guest's log line");
    assert!(line.contains("a true story") && !line.contains("[redacted]"), "its words are kept: {line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_secret_and_huge_answers_do_not_stall_the_host() {
    // 2 MiB of `a` then `b`: the answer's 3 MiB of `a` match most of it at
    // every position, which the old quadratic search paid for in full.
    let huge = "a".repeat(2 << 20) + "b";
    let ticker = other_guest("ticker", "every 1s", "");
    let env = Env::start(&ticker, &[("a.flag", &huge)]).await;
    let addr = env.host.admin_addr();
    let runs = |snap: &Value| snap["runs"].as_u64().unwrap_or(0);
    let before = runs(&support::wait_runs(addr, "ticker", 1, Duration::from_secs(30)).await);

    let attack = [("url", env.url("data.test", "/a-lot")), ("parallel", "2".into())];
    let began = Instant::now();
    let attack = pairs(&attack);
    let request = env.request("probe", "a-lot", &attack);
    let watch = async {
        let mut slowest = Duration::ZERO;
        while began.elapsed() < Duration::from_secs(6) {
            let asked = Instant::now();
            let (status, _) = support::get(addr, "/health").await;
            assert_eq!(status, 200);
            slowest = slowest.max(asked.elapsed());
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        slowest
    };
    let (seen, slowest) = tokio::join!(request, watch);
    assert_eq!(seen.status, 200, "{}", seen.error);
    assert!(seen.body.ends_with("[redacted]!"), "the huge secret was found and scrubbed");
    assert_eq!(seen.body.len(), (1 << 20) + "[redacted]!".len());
    assert!(slowest < Duration::from_secs(2), "/health took {slowest:?} during the attack");
    let (_, snap) = support::get(addr, "/guests/ticker").await;
    let ran = runs(&snap) - before;
    assert!(ran >= 3, "the 1 s schedule kept running: {ran} runs in {:?}", began.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_encoded_answer_is_refused_whichever_content_encoding_header_says_so() {
    let env = Env::start("", &[]).await;
    let seen = env.request("probe", "two", &[("url", &env.url("data.test", "/two-encodings"))]).await;
    assert_eq!(seen.status, 0, "{seen:?}");
    assert!(seen.error.contains("gzip-encoded"), "{seen:?}");
    assert!(seen.headers.is_empty() && seen.body.is_empty());
    let metrics = env.metrics().await;
    assert!(metrics.contains("wattedge_guest_http_failures_total{guest=\"probe\",kind=\"encoding\"} 1"), "{metrics}");
}
