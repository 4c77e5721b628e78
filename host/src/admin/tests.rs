//! End-to-end tests: `serve` on an ephemeral port with a fake backend.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Mutex;

use http_body_util::BodyExt;
use hyper::client::conn::http1::{self as client, SendRequest};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::routes::{Route, bearer_token, constant_time_eq};
use super::*;
use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Request, StatusCode};
use serde_json::json;

const TOKEN: &str = "s3cret-token";

type Invocation = (String, Vec<(String, String)>);

#[derive(Default)]
struct Fake {
    guests: Mutex<Vec<GuestSnapshot>>,
    invoked: Mutex<Vec<Invocation>>,
    resets: Mutex<Vec<String>>,
}

impl AdminBackend for Fake {
    fn guests(&self) -> Vec<GuestSnapshot> {
        self.guests.lock().unwrap().clone()
    }
    fn invoke(&self, name: &str, args: Vec<(String, String)>) -> Result<InvokeAccepted, AdminError> {
        self.known(name)?;
        if name == "busy" {
            return Err(AdminError::Busy("a run is already queued".into()));
        }
        self.invoked.lock().unwrap().push((name.to_owned(), args));
        Ok(InvokeAccepted { guest: name.to_owned(), queued: true })
    }
    fn reset_counters(&self, name: &str) -> Result<(), AdminError> {
        self.known(name)?;
        self.resets.lock().unwrap().push(name.to_owned());
        Ok(())
    }
    fn extra_metrics(&self) -> String {
        "# TYPE wattedge_store_bytes gauge\nwattedge_store_bytes 4096".into()
    }
    fn store_status(&self) -> crate::store::StoreStatus {
        let outbox = crate::store::OutboxStatus {
            points: 3,
            bytes: 120,
            oldest_age_seconds: 1.5,
            reachable: false,
            last_error: Some("cannot connect".into()),
        };
        crate::store::StoreStatus { kind: "influxdb-v1", outbox: Some(outbox) }
    }
}

impl Fake {
    fn known(&self, name: &str) -> Result<(), AdminError> {
        let found = self.guests.lock().unwrap().iter().any(|g| g.name == name);
        found.then_some(()).ok_or_else(|| AdminError::NotFound(name.to_owned()))
    }
    fn set_initialized(&self, name: &str) {
        let mut guests = self.guests.lock().unwrap();
        let g = guests.iter_mut().find(|g| g.name == name).unwrap();
        g.initialized = true;
        g.state = GuestState::Ok;
        g.detail = None;
    }
}

fn snapshot(name: &str, state: GuestState, initialized: bool) -> GuestSnapshot {
    GuestSnapshot {
        name: name.to_owned(),
        state,
        detail: None,
        version: Some("ab12".into()),
        schedule: "*/5 * * * *".into(),
        initialized,
        last_run: None,
        last_success: None,
        next_run: Some("2024-01-01T00:05:00Z".into()),
        runs: 7,
        failures: 2,
        consecutive_failures: 1,
        points_written: 120,
        run_seconds_total: 1.5,
        last_run_seconds: Some(0.25),
        counters: BTreeMap::new(),
        latest: BTreeMap::new(),
        lifecycle: Default::default(),
    }
}

fn default_guests() -> Vec<GuestSnapshot> {
    let mut watttime = snapshot("watttime", GuestState::Starting, false);
    watttime.counters.insert("api_calls".into(), json!(3));
    let mut odd = snapshot("we\"ird\\na\nme", GuestState::Degraded, true);
    odd.counters.insert("lat\"ency".into(), json!(0.5));
    odd.counters.insert("label".into(), json!("not a number"));
    odd.last_run_seconds = None;
    vec![watttime, snapshot("meter", GuestState::Ok, true), snapshot("busy", GuestState::Ok, true), odd]
}

struct Server {
    addr: SocketAddr,
    backend: Arc<Fake>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<std::io::Result<()>>,
}

async fn start(token: Option<&str>) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let backend = Arc::new(Fake::default());
    *backend.guests.lock().unwrap() = default_guests();
    let (tx, rx) = oneshot::channel::<()>();
    let stop = async move {
        let _ = rx.await;
    };
    let task = tokio::spawn(serve(listener, backend.clone(), token.map(|t| AdminToken::Fixed(t.into())), stop));
    Server { addr, backend, stop: Some(tx), task }
}

#[derive(Debug)]
struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
}

impl Reply {
    fn json(&self) -> Value {
        assert_eq!(self.headers[header::CONTENT_TYPE], JSON, "body: {}", self.body);
        serde_json::from_str(&self.body).unwrap()
    }
    fn error(&self) -> String {
        self.json()["error"].as_str().unwrap().to_owned()
    }
}

async fn connect(addr: SocketAddr) -> (SendRequest<Full<Bytes>>, JoinHandle<hyper::Result<()>>) {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (sender, conn) = client::handshake(TokioIo::new(stream)).await.unwrap();
    (sender, tokio::spawn(conn))
}

async fn send_on(
    sender: &mut SendRequest<Full<Bytes>>,
    method: Method,
    path: &str,
    auth: Option<&str>,
    body: &str,
) -> Reply {
    let mut req = Request::builder().method(method).uri(path).header(header::HOST, "localhost");
    if let Some(auth) = auth {
        req = req.header(header::AUTHORIZATION, auth);
    }
    let resp = sender.send_request(req.body(Full::new(Bytes::from(body.to_owned()))).unwrap()).await.unwrap();
    let (parts, body) = resp.into_parts();
    let body = String::from_utf8(body.collect().await.unwrap().to_bytes().to_vec()).unwrap();
    assert_eq!(parts.headers[header::CACHE_CONTROL], "no-store");
    Reply { status: parts.status, headers: parts.headers, body }
}

async fn send(addr: SocketAddr, method: Method, path: &str, auth: Option<&str>, body: &str) -> Reply {
    send_on(&mut connect(addr).await.0, method, path, auth, body).await
}

async fn get(addr: SocketAddr, path: &str) -> Reply {
    send(addr, Method::GET, path, None, "").await
}

const BEARER: Option<&str> = Some("Bearer s3cret-token");

#[tokio::test]
async fn health_answers_ok_and_keeps_connection_alive() {
    let srv = start(None).await;
    let (mut sender, _conn) = connect(srv.addr).await;
    for _ in 0..2 {
        let reply = send_on(&mut sender, Method::GET, "/health", None, "").await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.json(), json!({"status": "ok"}));
    }
}

#[tokio::test]
async fn guests_list_and_single_guest() {
    let srv = start(None).await;
    let list = get(srv.addr, "/guests").await;
    assert_eq!(list.status, StatusCode::OK);
    let names: Vec<Value> = list.json().as_array().unwrap().iter().map(|g| g["name"].clone()).collect();
    assert_eq!(names, [json!("watttime"), json!("meter"), json!("busy"), json!("we\"ird\\na\nme")]);
    let one = get(srv.addr, "/guests/meter").await.json();
    assert_eq!((one["state"].clone(), one["runs"].clone()), (json!("ok"), json!(7)));
    assert_eq!(one["next_run"], "2024-01-01T00:05:00Z");
}

#[tokio::test]
async fn unknown_guest_is_404_listing_known_guests() {
    let srv = start(None).await;
    let reply = get(srv.addr, "/guests/nope").await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert_eq!(reply.error(), "no guest named 'nope'; known guests: watttime, meter, busy, we\"ird\\na\nme");
    let invoke = send(srv.addr, Method::POST, "/guests/nope/invoke", None, "").await;
    assert_eq!(invoke.status, StatusCode::NOT_FOUND);
    assert!(invoke.error().starts_with("no guest named 'nope'; known guests: watttime"));
}

#[tokio::test]
async fn ready_goes_from_503_to_200_once_all_guests_initialized() {
    let srv = start(None).await;
    srv.backend.guests.lock().unwrap()[1].initialized = false;
    srv.backend.guests.lock().unwrap()[1].detail = Some("fetching token".into());
    let reply = get(srv.addr, "/ready").await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    let reasons = json!(["watttime: init not completed (starting)", "meter: init not completed (ok: fetching token)"]);
    assert_eq!(reply.json(), json!({"ready": false, "reasons": reasons}));
    srv.backend.set_initialized("watttime");
    srv.backend.set_initialized("meter");
    let reply = get(srv.addr, "/ready").await;
    assert_eq!((reply.status, reply.json()), (StatusCode::OK, json!({"ready": true})));
}

#[tokio::test]
async fn metrics_render_families_states_counters_and_escaping() {
    let srv = start(None).await;
    let reply = get(srv.addr, "/metrics").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.headers[header::CONTENT_TYPE], "text/plain; version=0.0.4; charset=utf-8");
    let text = reply.body;
    let odd = r#"guest="we\"ird\\na\nme""#;
    for line in [
        "# TYPE wattedge_guest_runs_total counter",
        "# HELP wattedge_guest_failures_total Runs that did not succeed.",
        "# TYPE wattedge_guest_last_run_seconds gauge",
        "wattedge_guest_runs_total{guest=\"watttime\"} 7",
        "wattedge_guest_failures_total{guest=\"meter\"} 2",
        "wattedge_guest_points_written_total{guest=\"meter\"} 120",
        "wattedge_guest_run_seconds_total{guest=\"meter\"} 1.5",
        "wattedge_guest_last_run_seconds{guest=\"meter\"} 0.25",
        "wattedge_guest_consecutive_failures{guest=\"meter\"} 1",
        "wattedge_guest_state{guest=\"watttime\",state=\"starting\"} 1",
        "wattedge_guest_state{guest=\"watttime\",state=\"ok\"} 0",
        "wattedge_guest_counter{guest=\"watttime\",name=\"api_calls\"} 3",
        &format!("wattedge_guest_state{{{odd},state=\"degraded\"}} 1"),
        &format!("wattedge_guest_counter{{{odd},name=\"lat\\\"ency\"}} 0.5"),
        "wattedge_store_bytes 4096",
    ] {
        assert!(text.lines().any(|l| l == line), "missing line {line:?} in:\n{text}");
    }
    assert_eq!(text.matches("wattedge_guest_state{").count(), 4 * GuestState::ALL.len());
    assert!(!text.contains("name=\"label\""), "non-numeric counter must be skipped");
    assert!(!text.contains(&format!("wattedge_guest_last_run_seconds{{{odd}}}")));
    assert!(text.ends_with("wattedge_store_bytes 4096\n"));
}

#[tokio::test]
async fn api_store_serves_the_store_status_the_backend_reports() {
    let srv = start(None).await;
    let reply = get(srv.addr, "/api/store").await;
    assert_eq!(reply.status, StatusCode::OK);
    let expected = json!({
        "backend": "influxdb-v1",
        "outbox_depth": 3,
        "outbox_bytes": 120,
        "outbox_oldest_age_seconds": 1.5,
        "reachable": false,
        "last_error": "cannot connect",
    });
    assert_eq!(reply.json(), expected);
}

#[tokio::test]
async fn post_without_or_with_wrong_token_is_401() {
    let srv = start(Some(TOKEN)).await;
    for auth in [None, Some("Bearer wrong"), Some("Bearer s3cret-tokenX"), Some("Basic s3cret-token"), Some("Bearer ")]
    {
        let reply = send(srv.addr, Method::POST, "/guests/meter/invoke", auth, "{}").await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "auth {auth:?}");
        assert_eq!(reply.headers[header::WWW_AUTHENTICATE], "Bearer");
        assert!(reply.error().contains("admin token"));
    }
    let reset = send(srv.addr, Method::POST, "/guests/meter/counters/reset", None, "").await;
    assert_eq!(reset.status, StatusCode::UNAUTHORIZED);
    assert!(srv.backend.invoked.lock().unwrap().is_empty());
    assert!(srv.backend.resets.lock().unwrap().is_empty());
}

#[tokio::test]
async fn invoke_with_token_is_202_and_passes_args() {
    let srv = start(Some(TOKEN)).await;
    let body = r#"{"start":"2024-01-01","end":"2024-01-02"}"#;
    let reply = send(srv.addr, Method::POST, "/guests/meter/invoke", BEARER, body).await;
    assert_eq!(reply.status, StatusCode::ACCEPTED);
    assert_eq!(reply.json(), json!({"guest": "meter", "queued": true}));
    let empty = send(srv.addr, Method::POST, "/guests/watttime/invoke", Some("bearer s3cret-token"), "").await;
    assert_eq!(empty.status, StatusCode::ACCEPTED);
    let invoked = srv.backend.invoked.lock().unwrap().clone();
    let args = vec![("end".to_owned(), "2024-01-02".to_owned()), ("start".to_owned(), "2024-01-01".to_owned())];
    assert_eq!(invoked, vec![("meter".to_owned(), args), ("watttime".to_owned(), vec![])]);
}

#[tokio::test]
async fn invoke_rejects_bad_bodies_with_400() {
    let srv = start(None).await;
    let cases = [
        ("{not json", "body is not valid JSON"),
        ("[\"a\"]", "body must be a JSON object of string values"),
        ("{\"days\":3}", "argument 'days' must be a string, got 3"),
    ];
    for (body, expected) in cases {
        let reply = send(srv.addr, Method::POST, "/guests/meter/invoke", None, body).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST);
        assert!(reply.error().contains(expected), "{body}: {}", reply.error());
    }
    assert!(srv.backend.invoked.lock().unwrap().is_empty());
}

#[tokio::test]
async fn busy_guest_is_409() {
    let srv = start(None).await;
    let reply = send(srv.addr, Method::POST, "/guests/busy/invoke", None, "").await;
    assert_eq!(reply.status, StatusCode::CONFLICT);
    assert_eq!(reply.error(), "cannot queue run: a run is already queued");
}

#[tokio::test]
async fn counter_reset_is_200_or_404() {
    let srv = start(Some(TOKEN)).await;
    let reply = send(srv.addr, Method::POST, "/guests/meter/counters/reset", BEARER, "").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.json(), json!({"guest": "meter", "reset": true}));
    let missing = send(srv.addr, Method::POST, "/guests/gone/counters/reset", BEARER, "").await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert_eq!(*srv.backend.resets.lock().unwrap(), ["meter"]);
}

#[tokio::test]
async fn unknown_path_is_404_and_wrong_method_is_405() {
    let srv = start(None).await;
    for path in ["/nope", "/guests/", "/guests/meter/invoke/x", "/guests/meter/counters"] {
        let reply = get(srv.addr, path).await;
        assert_eq!(reply.status, StatusCode::NOT_FOUND, "{path}");
        assert_eq!(reply.error(), format!("no endpoint at {path}"));
    }
    let post = send(srv.addr, Method::POST, "/health", None, "").await;
    assert_eq!(
        (post.status, &post.headers[header::ALLOW]),
        (StatusCode::METHOD_NOT_ALLOWED, &HeaderValue::from_static("GET"))
    );
    let get_invoke = get(srv.addr, "/guests/meter/invoke").await;
    assert_eq!(get_invoke.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(get_invoke.headers[header::ALLOW], "POST");
}

async fn raw_exchange(addr: SocketAddr, head: String, body_len: usize) -> String {
    let (mut read, mut write) = TcpStream::connect(addr).await.unwrap().into_split();
    let writer = tokio::spawn(async move {
        let _ = write.write_all(head.as_bytes()).await;
        let chunk = format!("{:x}\r\n{}\r\n", body_len, "x".repeat(body_len));
        let _ = write.write_all(chunk.as_bytes()).await;
    });
    let mut response = vec![0; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), read.read(&mut response)).await.unwrap().unwrap();
    writer.abort();
    String::from_utf8_lossy(&response[..n]).into_owned()
}

#[tokio::test]
async fn oversized_bodies_are_413() {
    let srv = start(None).await;
    let declared = format!(
        "POST /guests/meter/invoke HTTP/1.1\r\nhost: localhost\r\ncontent-length: {}\r\n\r\n",
        MAX_BODY_BYTES + 1
    );
    let reply = raw_exchange(srv.addr, declared, 0).await;
    assert!(reply.starts_with("HTTP/1.1 413"), "{reply}");
    let chunked =
        "POST /guests/meter/invoke HTTP/1.1\r\nhost: localhost\r\ntransfer-encoding: chunked\r\n\r\n".to_owned();
    let reply = raw_exchange(srv.addr, chunked, MAX_BODY_BYTES + 10).await;
    assert!(reply.starts_with("HTTP/1.1 413"), "{reply}");
    assert!(reply.contains(&format!("exceeds the limit of {MAX_BODY_BYTES} bytes")), "{reply}");
    assert!(srv.backend.invoked.lock().unwrap().is_empty());
}

#[tokio::test]
async fn shutdown_returns_promptly_with_open_connections() {
    let mut srv = start(None).await;
    let (mut idle, idle_conn) = connect(srv.addr).await;
    assert_eq!(send_on(&mut idle, Method::GET, "/health", None, "").await.status, StatusCode::OK);
    // A client stuck halfway through its request headers must not hold shutdown up.
    let mut stuck = TcpStream::connect(srv.addr).await.unwrap();
    stuck.write_all(b"GET /health HTTP/1.1\r\nhost: localhost\r\n").await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    srv.stop.take().unwrap().send(()).unwrap();
    let result = tokio::time::timeout(Duration::from_secs(2), srv.task).await;
    assert!(matches!(result, Ok(Ok(Ok(())))), "serve did not return in time: {result:?}");
    let closed = tokio::time::timeout(Duration::from_secs(1), idle_conn).await;
    assert!(closed.is_ok(), "idle keep-alive connection was not closed");
    assert!(TcpStream::connect(srv.addr).await.is_err(), "listener still accepting");
}

#[test]
fn helpers_escape_labels_and_compare_tokens() {
    assert_eq!(crate::metrics::escape_label("a\\b\"c\nd"), "a\\\\b\\\"c\\nd");
    assert!(constant_time_eq(b"abc", b"abc"));
    assert!(!constant_time_eq(b"abd", b"abc"));
    assert!(!constant_time_eq(b"ab", b"abc"));
    assert!(!constant_time_eq(b"abcd", b"abc"));
    assert_eq!(bearer_token("Bearer  tok "), Some("tok"));
    assert_eq!(Route::parse("/guests/a/counters/reset"), Some(Route::ResetCounters("a".into())));
}
