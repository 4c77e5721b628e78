//! Local stand-ins for WattiVahti's two upstreams, in the shapes DESIGN.md
//! ("Upstream facts") gives, on one HTTPS port with a test CA (reuses
//! `https_server::serve_tls`; include both modules):
//!
//! - Azure B2C token endpoint, `POST TOKEN_PATH` on [`TOKEN_HOST`]: a form
//!   with grant_type=refresh_token, client_id, scope, refresh_token,
//!   client_info=1 → `{access_token, refresh_token?, expires_in}`; a refresh
//!   token other than the current one → `400 {"error":"invalid_grant",...}`.
//! - `GET /api/onlineapi/v1/meterdata2?meteringPointCode&measurementType=1&start&stop&resultStep`
//!   on [`DATA_HOST`] with `Authorization: Bearer <current access token>` →
//!   `{"getconsumptionsresult":{"consumptiondata":{"timeseries":{"values":{"tsv":[...]}}}}}`
//!   whose `time` is naive Europe/Helsinki local time with a `Z`. Records are
//!   listed in wall-clock order: the repeated autumn hour's two occurrences
//!   in pairs, the nonexistent spring hour included (as a naive API might).
//!   The quantity of the i-th record of a response is [`quantity`]`(i)`.
//!
//! Scriptable per test: rotate or not, reject the grant, 500 or empty data
//! per `resultStep`; every request is recorded.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use chrono::{DateTime, Datelike, Duration, NaiveDate, NaiveDateTime, TimeZone, Utc, Weekday};
use http_body_util::Full;
use serde_json::{Value, json};

/// The B2C host (resolved to 127.0.0.1 by the host's `resolve`).
pub const TOKEN_HOST: &str = "pesv.b2clogin.com";
/// The metering data host.
pub const DATA_HOST: &str = "porienergia-prod-agent.frendsapp.com";
/// Path of the token endpoint.
pub const TOKEN_PATH: &str = "/pesv.onmicrosoft.com/b2c_1_tunnistus_signinv2/oauth2/v2.0/token";
/// Path of the data endpoint.
pub const DATA_PATH: &str = "/api/onlineapi/v1/meterdata2";
/// Client id and scope the guest must send (DESIGN.md defaults).
pub const CLIENT_ID: &str = "84ebdb93-9ea6-42c7-bd7d-302abf7556fa";
pub const SCOPE: &str = "https://pesv.onmicrosoft.com/salpa/customer.read openid profile offline_access";
/// The refresh token the tests seed.
pub const INITIAL_REFRESH: &str = "refresh-INITIAL-7f3a9c";

/// How the token endpoint answers a valid grant.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum TokenMode {
    /// A new refresh token in every reply.
    Rotate,
    /// No `refresh_token` field in the reply.
    Keep,
    /// `400 invalid_grant` whatever is sent.
    InvalidGrant,
}

/// How the data endpoint answers one `resultStep`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum DataMode {
    /// A record per step of the window.
    Data,
    /// `tsv: []`.
    Empty,
    /// `500`.
    Fail,
}

/// One request as received.
#[derive(Clone, Debug)]
pub struct Received {
    pub method: String,
    pub host: String,
    pub path: String,
    pub authorization: Option<String>,
    pub body: String,
}

impl Received {
    /// A decoded query parameter.
    pub fn query(&self, name: &str) -> Option<String> {
        let query = self.path.split_once('?')?.1;
        form_value(query, name)
    }

    /// A decoded form field of the body.
    pub fn form(&self, name: &str) -> Option<String> {
        form_value(&self.body, name)
    }
}

struct State {
    token: TokenMode,
    quarter: DataMode,
    hourly: DataMode,
    refresh: String,
    access: String,
    issued: u32,
    received: Vec<Received>,
}

/// The running server.
pub struct WattiServer {
    pub addr: SocketAddr,
    pub ca_pem: String,
    state: Arc<Mutex<State>>,
    _serving: super::https_server::Serving,
}

impl WattiServer {
    /// Starts on 127.0.0.1 with a certificate for both hosts; rotates and serves data by default.
    pub async fn start() -> WattiServer {
        let state = Arc::new(Mutex::new(State {
            token: TokenMode::Rotate,
            quarter: DataMode::Data,
            hourly: DataMode::Data,
            refresh: INITIAL_REFRESH.into(),
            access: String::new(),
            issued: 0,
            received: Vec::new(),
        }));
        let shared = state.clone();
        let hosts = [TOKEN_HOST, DATA_HOST];
        let (addr, ca_pem, serving) =
            super::https_server::serve_tls(&hosts, move |req| answer(req, shared.clone())).await;
        WattiServer { addr, ca_pem, state, _serving: serving }
    }

    /// Writes the CA to `dir/watti-ca.pem`.
    pub fn write_ca(&self, dir: &Path) -> PathBuf {
        let path = dir.join("watti-ca.pem");
        std::fs::write(&path, &self.ca_pem).expect("write CA");
        path
    }

    pub fn set_token(&self, mode: TokenMode) {
        self.state.lock().unwrap().token = mode;
    }

    /// Sets the answer for `PT15MIN` and `PT1H`.
    pub fn set_data(&self, quarter: DataMode, hourly: DataMode) {
        let mut s = self.state.lock().unwrap();
        (s.quarter, s.hourly) = (quarter, hourly);
    }

    /// The refresh token the endpoint currently accepts.
    pub fn current_refresh(&self) -> String {
        self.state.lock().unwrap().refresh.clone()
    }

    pub fn received(&self) -> Vec<Received> {
        self.state.lock().unwrap().received.clone()
    }

    pub fn token_requests(&self) -> Vec<Received> {
        self.received().into_iter().filter(|r| r.path == TOKEN_PATH).collect()
    }

    pub fn data_requests(&self) -> Vec<Received> {
        self.received().into_iter().filter(|r| r.path.starts_with(DATA_PATH)).collect()
    }
}

/// The quantity (kWh) of the i-th record of a data response.
pub fn quantity(i: usize) -> f64 {
    (i as f64 + 1.0) / 100.0
}

async fn answer(req: hyper::Request<Bytes>, state: Arc<Mutex<State>>) -> hyper::Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let header = |name: &str| parts.headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
    let received = Received {
        method: parts.method.to_string(),
        host: header("host").unwrap_or_default(),
        path: parts.uri.path_and_query().map(|p| p.to_string()).unwrap_or_default(),
        authorization: header("authorization"),
        body: String::from_utf8_lossy(&body).into(),
    };
    let mut s = state.lock().unwrap();
    s.received.push(received.clone());
    let host = received.host.split(':').next().unwrap_or_default().to_string();
    match (received.method.as_str(), parts.uri.path()) {
        ("POST", TOKEN_PATH) if host == TOKEN_HOST => token(&mut s, &received),
        ("GET", DATA_PATH) if host == DATA_HOST => data(&s, &received),
        _ => reply(404, json!({"error": "not found", "host": host, "path": received.path})),
    }
}

fn token(s: &mut State, r: &Received) -> hyper::Response<Full<Bytes>> {
    let expected = [("grant_type", "refresh_token"), ("client_id", CLIENT_ID), ("scope", SCOPE), ("client_info", "1")];
    if let Some((k, _)) = expected.iter().find(|(k, v)| r.form(k).as_deref() != Some(*v)) {
        return reply(400, json!({"error": "invalid_request", "error_description": format!("bad or missing {k}")}));
    }
    if s.token == TokenMode::InvalidGrant || r.form("refresh_token").as_deref() != Some(s.refresh.as_str()) {
        return reply(
            400,
            json!({"error": "invalid_grant", "error_description": "AADB2C90080: The provided grant has expired. Please re-authenticate and try again.\r\nCorrelation ID: 0000"}),
        );
    }
    s.issued += 1;
    s.access = format!("access-{}-e4b1", s.issued);
    let mut answer = json!({"access_token": s.access, "token_type": "Bearer", "expires_in": 3600});
    if s.token == TokenMode::Rotate {
        s.refresh = format!("refresh-ROTATED-{}-c2d8", s.issued);
        answer["refresh_token"] = json!(s.refresh);
        answer["refresh_token_expires_in"] = json!(86400);
    }
    reply(200, answer)
}

fn data(s: &State, r: &Received) -> hyper::Response<Full<Bytes>> {
    if r.authorization.as_deref() != Some(format!("Bearer {}", s.access).as_str()) || s.access.is_empty() {
        return reply(401, json!({"message": "Authorization has been denied for this request."}));
    }
    let parsed = (|| {
        let start = DateTime::parse_from_rfc3339(&r.query("start")?).ok()?.with_timezone(&Utc);
        let stop = DateTime::parse_from_rfc3339(&r.query("stop")?).ok()?.with_timezone(&Utc);
        let step = r.query("resultStep")?;
        (r.query("measurementType")?.as_str() == "1" && r.query("meteringPointCode")?.len() == 7)
            .then_some((start, stop, step))
    })();
    let Some((start, stop, step)) = parsed else {
        return reply(400, json!({"message": format!("bad query: {}", r.path)}));
    };
    let (mode, minutes) = match step.as_str() {
        "PT15MIN" => (s.quarter, 15),
        "PT1H" => (s.hourly, 60),
        _ => return reply(400, json!({"message": format!("bad resultStep {step}")})),
    };
    let tsv: Vec<Value> = match mode {
        DataMode::Fail => return reply(500, json!({"message": "An error has occurred."})),
        DataMode::Empty => Vec::new(),
        DataMode::Data => naive_records(start, stop, Duration::minutes(minutes))
            .iter()
            .enumerate()
            .map(|(i, t)| json!({"time": format!("{}Z", t.format("%Y-%m-%dT%H:%M:%S")), "quantity": quantity(i), "unit": "kWh"}))
            .collect(),
    };
    reply(200, json!({"getconsumptionsresult": {"consumptiondata": {"timeseries": {"values": {"tsv": tsv}}}}}))
}

/// Wall-clock times of the steps of `[start, stop)` in Helsinki, in
/// wall-clock order: a repeated time once per occurrence inside the window
/// (so in pairs), a nonexistent (spring gap) time once.
fn naive_records(start: DateTime<Utc>, stop: DateTime<Utc>, step: Duration) -> Vec<NaiveDateTime> {
    let step_s = step.num_seconds();
    let first = Utc.timestamp_opt((start.timestamp() + step_s - 1).div_euclid(step_s) * step_s, 0).unwrap();
    let (mut local, end) = (local_of(first), local_of(stop));
    let mut out = Vec::new();
    while local < end {
        let hits = occurrences(local).into_iter().filter(|u| *u >= start && *u < stop).count();
        let times = if occurrences(local).is_empty() { 1 } else { hits };
        out.extend(std::iter::repeat_n(local, times));
        local += step;
    }
    out
}

fn local_of(t: DateTime<Utc>) -> NaiveDateTime {
    t.naive_utc() + helsinki_offset(t)
}

fn occurrences(local: NaiveDateTime) -> Vec<DateTime<Utc>> {
    [Duration::hours(3), Duration::hours(2)]
        .into_iter()
        .map(|off| Utc.from_utc_datetime(&(local - off)))
        .filter(|u| local_of(*u) == local)
        .collect()
}

/// Europe/Helsinki's UTC offset (EU rule: summer time from the last Sunday
/// of March to the last Sunday of October, switching at 01:00 UTC).
fn helsinki_offset(t: DateTime<Utc>) -> Duration {
    let switch = |month: u32| {
        let last = NaiveDate::from_ymd_opt(t.year(), month, 31).unwrap();
        let back = last.weekday().num_days_from_sunday();
        let sunday = last - Duration::days(i64::from(back));
        debug_assert_eq!(sunday.weekday(), Weekday::Sun);
        Utc.from_utc_datetime(&sunday.and_hms_opt(1, 0, 0).unwrap())
    };
    if t >= switch(3) && t < switch(10) { Duration::hours(3) } else { Duration::hours(2) }
}

fn reply(status: u16, value: Value) -> hyper::Response<Full<Bytes>> {
    super::https_server::json_reply(status, "application/json; charset=utf-8", value)
}

fn form_value(text: &str, name: &str) -> Option<String> {
    text.split('&').filter_map(|pair| pair.split_once('=')).find(|(k, _)| *k == name).map(|(_, v)| decode(v))
}

fn decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                out.push(u8::from_str_radix(hex, 16).unwrap_or(b'?'));
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn helsinki_rules() {
    let t = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc);
    assert_eq!(helsinki_offset(t("2025-10-26T00:59:59Z")), Duration::hours(3));
    assert_eq!(helsinki_offset(t("2025-10-26T01:00:00Z")), Duration::hours(2));
    assert_eq!(helsinki_offset(t("2025-03-30T01:00:00Z")), Duration::hours(3));
    let autumn = naive_records(t("2025-10-25T21:00:00Z"), t("2025-10-26T22:00:00Z"), Duration::minutes(15));
    assert_eq!(autumn.len(), 100);
    assert_eq!((autumn[12], autumn[13]), (autumn[12], autumn[12]), "03:00 twice, in a pair");
    let spring = naive_records(t("2025-03-29T22:00:00Z"), t("2025-03-30T21:00:00Z"), Duration::minutes(15));
    assert_eq!(spring.len(), 96, "the nonexistent hour is listed");
}
