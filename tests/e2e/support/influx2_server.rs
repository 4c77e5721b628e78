//! A local InfluxDB 2.x API for the v2 backend's tests: exactly the two
//! endpoints the backend uses, answering as InfluxDB 2 does.
//!
//! | request | answer |
//! |---|---|
//! | `POST /api/v2/write?org&bucket&precision=ns`, `Authorization: Token T`, gzip or plain line protocol | 204; 401 on another token; 404 on an unknown org or bucket; 400 when a line does not parse (nothing stored) |
//! | `POST /api/v2/query?org`, JSON `{"query", "type": "flux", "dialect"}` | annotated CSV (`#datatype`, `#group`, `#default`, header; CRLF; a new annotation block when the table schema changes); 400 `{"code":"invalid"}` for Flux outside the subset below |
//! | `GET /ping` | 204 |
//!
//! The Flux subset is what the backend emits: `from(bucket:)`, `range(start:
//! time(v: INT), stop: time(v: INT))`, `filter(fn: (r) => C and/or C ...)` with
//! `C` = `r._measurement == S`, `r._field == S` or `r[S] == S`, `sort(columns:
//! ["_time"], desc: BOOL)` and `limit(n: INT)`, both per table. String
//! literals are read with Flux's escapes; an unescaped `${` (interpolation) is
//! refused. Points are kept as InfluxDB stores them: one value per series,
//! field and time, a later write overwriting an earlier one. Lines are parsed
//! with the host's own `parse_line`.
#![allow(dead_code)]

#[path = "influx2_flux.rs"]
mod influx2_flux;

use std::collections::BTreeMap;
use std::io::Read as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};
use wattedge::store::FieldValue;

pub use influx2_flux::{Plan, Values};

/// The org the server knows.
pub const ORG: &str = "home";

#[derive(Default)]
struct State {
    token: String,
    bucket: String,
    values: Values,
    queries: Vec<String>,
    writes: u64,
}

/// A running server; stops serving when dropped.
pub struct Influx2Server {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Influx2Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Influx2Server {
    /// Serves bucket `bucket` of [`ORG`] to requests bearing `token`.
    pub async fn start(bucket: &str, token: &str) -> Influx2Server {
        let state = Arc::new(Mutex::new(State { token: token.into(), bucket: bucket.into(), ..State::default() }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().unwrap();
        let shared = state.clone();
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let state = shared.clone();
                let service = hyper::service::service_fn(move |req| {
                    let state = state.clone();
                    async move { Ok::<_, std::convert::Infallible>(handle(&state, req).await) }
                });
                tokio::spawn(async move {
                    let io = hyper_util::rt::TokioIo::new(tcp);
                    let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await;
                });
            }
        });
        Influx2Server { addr, state, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Accepts `token` from now on (a token rotated on the server).
    pub fn set_token(&self, token: &str) {
        self.state.lock().unwrap().token = token.into();
    }

    /// Everything stored: (measurement, tags, field, time) → value.
    pub fn values(&self) -> Values {
        self.state.lock().unwrap().values.clone()
    }

    /// The Flux scripts received, in order.
    pub fn queries(&self) -> Vec<String> {
        self.state.lock().unwrap().queries.clone()
    }

    /// Successful write requests.
    pub fn writes(&self) -> u64 {
        self.state.lock().unwrap().writes
    }
}

type Reply = hyper::Response<Full<Bytes>>;

fn reply(status: u16, content_type: &str, body: String) -> Reply {
    hyper::Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(Full::new(Bytes::from(body)))
        .unwrap()
}

fn error(status: u16, code: &str, message: &str) -> Reply {
    reply(status, "application/json; charset=utf-8", json!({"code": code, "message": message}).to_string())
}

async fn handle(state: &Mutex<State>, req: hyper::Request<hyper::body::Incoming>) -> Reply {
    let (parts, body) = req.into_parts();
    let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let params: BTreeMap<String, String> = parts
        .uri
        .query()
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (decode(k), decode(v)))
        .collect();
    if parts.method == hyper::Method::GET && parts.uri.path() == "/ping" {
        return reply(204, "text/plain", String::new());
    }
    let mut state = state.lock().unwrap();
    let auth = parts.headers.get("authorization").and_then(|v| v.to_str().ok()).unwrap_or("");
    if auth != format!("Token {}", state.token) {
        return error(401, "unauthorized", "unauthorized access");
    }
    let org = params.get("org").map(String::as_str).unwrap_or("");
    if org != ORG {
        return error(404, "not found", &format!("organization name \"{org}\" not found"));
    }
    match (parts.method.as_str(), parts.uri.path()) {
        ("POST", "/api/v2/write") => {
            let gzip = parts.headers.get("content-encoding").is_some_and(|v| v == "gzip");
            write(&mut state, &params, &body, gzip)
        }
        ("POST", "/api/v2/query") => query(&mut state, &body),
        (_, path) => error(404, "not found", &format!("path {path} not found")),
    }
}

fn write(state: &mut State, params: &BTreeMap<String, String>, body: &[u8], gzip: bool) -> Reply {
    let bucket = params.get("bucket").map(String::as_str).unwrap_or("");
    if bucket != state.bucket {
        return error(404, "not found", &format!("bucket \"{bucket}\" not found"));
    }
    if params.get("precision").map(String::as_str) != Some("ns") {
        return error(400, "invalid", "this test server expects precision=ns");
    }
    let mut text = String::new();
    let read = if gzip {
        flate2::read::GzDecoder::new(body).read_to_string(&mut text).map(|_| ())
    } else {
        String::from_utf8(body.to_vec()).map(|t| text = t).map_err(std::io::Error::other)
    };
    if let Err(e) = read {
        return error(400, "invalid", &format!("cannot read the body: {e}"));
    }
    let mut points = Vec::new();
    for line in lines(&text).into_iter().filter(|l| !l.is_empty()) {
        match wattedge::store::line_protocol::parse_line(line) {
            Ok(p) => points.push(p),
            Err(e) => return error(400, "invalid", &format!("unable to parse '{line}': {e}")),
        }
    }
    for p in points {
        for (field, value) in p.fields {
            state.values.insert((p.measurement.clone(), p.tags.clone(), field, p.time), value);
        }
    }
    state.writes += 1;
    reply(204, "text/plain", String::new())
}

fn query(state: &mut State, body: &[u8]) -> Reply {
    let Ok(request) = serde_json::from_slice::<Value>(body) else {
        return error(400, "invalid", "request body is not JSON");
    };
    let annotations = request["dialect"]["annotations"].as_array().cloned().unwrap_or_default();
    if request["type"] != "flux" || !annotations.contains(&json!("datatype")) || request["dialect"]["header"] != true {
        return error(400, "invalid", "this test server answers only flux with #datatype annotations and a header");
    }
    let script = request["query"].as_str().unwrap_or("").to_string();
    state.queries.push(script.clone());
    let plan = match Plan::parse(&script) {
        Ok(plan) => plan,
        Err(e) => return error(400, "invalid", &format!("compilation failed: {e}")),
    };
    if plan.bucket != state.bucket {
        return error(
            404,
            "not found",
            &format!("failed to initialize execute state: could not find bucket \"{}\"", plan.bucket),
        );
    }
    reply(200, "text/csv; charset=utf-8", influx2_flux::csv(&plan.run(&state.values), &plan))
}

/// Splits line protocol into lines as InfluxDB's scanner does: a newline
/// ends a line except when escaped or inside a quoted string field (quotes
/// start strings only in the field set, after the first unescaped space).
fn lines(text: &str) -> Vec<&str> {
    let (mut out, mut start, mut section, mut in_string) = (Vec::new(), 0, 0, false);
    let mut chars = text.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '\\' => {
                chars.next();
            }
            '"' if section == 1 => in_string = !in_string,
            ' ' if !in_string => section += 1,
            '\n' if !in_string => {
                out.push(&text[start..i]);
                (start, section) = (i + 1, 0);
            }
            _ => {}
        }
    }
    out.push(&text[start..]);
    out
}

fn decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(b) = text.get(i + 1..i + 3).and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(if bytes[i] == b'+' { b' ' } else { bytes[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A field value as the test expects it back (for readability in asserts).
pub fn value_type(v: &FieldValue) -> &'static str {
    match v {
        FieldValue::Float(_) => "double",
        FieldValue::Integer(_) => "long",
        FieldValue::Unsigned(_) => "unsignedLong",
        FieldValue::Boolean(_) => "boolean",
        FieldValue::Text(_) => "string",
    }
}
