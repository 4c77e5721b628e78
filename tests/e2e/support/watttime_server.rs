//! A local WattTime v3 API for the watttime guest's tests, over HTTPS with the
//! test CA of [`super::https_server`], following the upstream facts in
//! DESIGN.md:
//!
//! | request | answer |
//! |---|---|
//! | `GET /login`, HTTP Basic [`USER`]:[`PASS`] | `{"token": "wt-token-N"}` (401 on other credentials) |
//! | `GET /v3/forecast?region&signal_type&horizon_hours`, `Authorization: Bearer <issued token>` | `{"data": [{"point_time", "value"}...], "meta": {...}}`, 5-minute points from [`START`], value `1000 + i` |
//!
//! Scripted failures ([`Reply`]) are answered by the next forecast requests,
//! one each. Every request is recorded with its arrival time.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::Full;
use serde_json::{Value, json};

/// The account name the server accepts.
pub const USER: &str = "wt-user-8c41";
/// The password the server accepts (with characters that need care).
pub const PASS: &str = "wt-P4ss:odd&chars+";
/// `point_time` of the first forecast point: 2026-11-22T18:00:00Z in seconds.
pub const START: i64 = 1_795_370_400;
/// `meta.generated_at` of every forecast.
pub const GENERATED_AT: &str = "2026-11-22T17:55:00Z";

/// The MOER (lbs/MWh) of forecast point `i` in a normal answer.
pub fn value(i: usize) -> f64 {
    1000.0 + i as f64
}

/// A scripted answer for one forecast request.
#[derive(Clone, Debug, PartialEq)]
pub enum Reply {
    /// 401 as for an expired token.
    Expired,
    /// 429 with `Retry-After: N`.
    RateLimited(u64),
    /// A JSON error with this status (500, 502, 503).
    Status(u16),
    /// 502 with an HTML page, as from a proxy.
    HtmlBadGateway,
    /// 403 as for a region outside the plan.
    Forbidden,
    /// 200 with a truncated JSON body.
    Malformed,
    /// 200 with a normal forecast whose first value is null.
    NullFirst,
}

/// One request as received.
#[derive(Clone, Debug)]
pub struct Request {
    pub at: Instant,
    pub path: String,
    pub query: String,
    pub headers: Vec<(String, String)>,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

#[derive(Default)]
struct Shared {
    requests: Vec<Request>,
    script: VecDeque<Reply>,
    tokens: Vec<String>,
}

/// A running server; stops when dropped.
pub struct WattTimeServer {
    pub addr: SocketAddr,
    ca_pem: String,
    shared: Arc<Mutex<Shared>>,
    _serving: super::https_server::Serving,
}

impl WattTimeServer {
    /// Starts on 127.0.0.1 with a certificate for `name`.
    pub async fn start(name: &str) -> WattTimeServer {
        let shared = Arc::new(Mutex::new(Shared::default()));
        let state = shared.clone();
        let (addr, ca_pem, serving) = super::https_server::serve_tls(&[name], move |req| {
            let state = state.clone();
            async move { answer(&req, &state) }
        })
        .await;
        WattTimeServer { addr, ca_pem, shared, _serving: serving }
    }

    /// Writes the CA to `dir/watttime-ca.pem`.
    pub fn write_ca(&self, dir: &Path) -> PathBuf {
        let path = dir.join("watttime-ca.pem");
        std::fs::write(&path, &self.ca_pem).expect("write CA");
        path
    }

    /// Queues scripted answers for the next forecast requests.
    pub fn script(&self, replies: &[Reply]) {
        self.shared.lock().unwrap().script.extend(replies.iter().cloned());
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<Request> {
        self.shared.lock().unwrap().requests.clone()
    }

    /// Requests to `path`.
    pub fn requests_to(&self, path: &str) -> Vec<Request> {
        self.requests().into_iter().filter(|r| r.path == path).collect()
    }

    /// A valid token handed out without a `/login` request (as if the user
    /// had logged in elsewhere).
    pub fn issue_token(&self) -> String {
        let mut shared = self.shared.lock().unwrap();
        let token = format!("wt-static-{}", shared.tokens.len() + 1);
        shared.tokens.push(token.clone());
        token
    }

    /// Tokens handed out so far.
    pub fn tokens(&self) -> Vec<String> {
        self.shared.lock().unwrap().tokens.clone()
    }
}

/// The `Authorization` value the server expects at `/login`.
pub fn basic() -> String {
    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASS}")))
}

fn answer<B>(req: &hyper::Request<B>, state: &Mutex<Shared>) -> hyper::Response<Full<Bytes>> {
    let mut shared = state.lock().unwrap();
    let request = Request {
        at: Instant::now(),
        path: req.uri().path().to_string(),
        query: req.uri().query().unwrap_or("").to_string(),
        headers: super::https_server::header_pairs(req.headers()),
    };
    shared.requests.push(request.clone());
    let auth = request.header("authorization").unwrap_or("").to_string();
    match request.path.as_str() {
        "/login" if auth == basic() => {
            let token = format!("wt-token-{}-{:08x}", shared.tokens.len() + 1, rand_ish(&shared));
            shared.tokens.push(token.clone());
            json_reply(200, json!({"token": token}))
        }
        "/login" => json_reply(401, json!({"error": "invalid credentials"})),
        "/v3/forecast" => {
            let bearer = auth.strip_prefix("Bearer ").unwrap_or("");
            if !shared.tokens.iter().any(|t| t == bearer) {
                return json_reply(401, json!({"error": "invalid token"}));
            }
            let reply = shared.script.pop_front();
            forecast_reply(reply, &request.query)
        }
        _ => json_reply(404, json!({"error": "not found"})),
    }
}

fn rand_ish(shared: &Shared) -> u32 {
    (shared.requests.len() as u32).wrapping_mul(2_654_435_761)
}

fn forecast_reply(reply: Option<Reply>, query: &str) -> hyper::Response<Full<Bytes>> {
    match reply {
        None => json_reply(200, forecast(query, false)),
        Some(Reply::NullFirst) => json_reply(200, forecast(query, true)),
        Some(Reply::Expired) => json_reply(401, json!({"error": "token expired"})),
        Some(Reply::Forbidden) => json_reply(403, json!({"error": "region not in your plan"})),
        Some(Reply::Status(code)) => json_reply(code, json!({"error": "server error"})),
        Some(Reply::RateLimited(seconds)) => {
            let mut r = json_reply(429, json!({"error": "rate limited"}));
            r.headers_mut().insert("retry-after", seconds.to_string().parse().unwrap());
            r
        }
        Some(Reply::HtmlBadGateway) => hyper::Response::builder()
            .status(502)
            .header("content-type", "text/html")
            .body(Full::new(Bytes::from_static(b"<html><body><h1>502 Bad Gateway</h1></body></html>")))
            .unwrap(),
        Some(Reply::Malformed) => hyper::Response::builder()
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from_static(b"{\"data\":[{\"point_time\":\"2026-11-22T18:00")))
            .unwrap(),
    }
}

fn param<'a>(query: &'a str, key: &str) -> Option<&'a str> {
    query.split('&').filter_map(|kv| kv.split_once('=')).find(|(k, _)| *k == key).map(|(_, v)| v)
}

/// A forecast of `horizon_hours * 12` points (default 24 h).
pub fn forecast(query: &str, null_first: bool) -> Value {
    let hours: usize = param(query, "horizon_hours").and_then(|h| h.parse().ok()).unwrap_or(24);
    let data: Vec<Value> = (0..hours * 12)
        .map(|i| {
            let value = if null_first && i == 0 { Value::Null } else { json!(value(i)) };
            json!({"point_time": rfc3339(START + i as i64 * 300), "value": value})
        })
        .collect();
    json!({
        "data": data,
        "meta": {
            "region": param(query, "region").unwrap_or(""),
            "signal_type": param(query, "signal_type").unwrap_or(""),
            "units": "lbs_co2_per_mwh",
            "generated_at": GENERATED_AT,
            "model": {"date": "2026-11-01"},
            "warnings": []
        }
    })
}

/// Seconds since the epoch as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn rfc3339(secs: i64) -> String {
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

fn json_reply(status: u16, value: Value) -> hyper::Response<Full<Bytes>> {
    super::https_server::json_reply(status, "application/json", value)
}
