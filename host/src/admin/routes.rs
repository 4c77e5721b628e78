//! Request handling for the admin server: routing, authorization, body limits
//! and JSON responses. Connection handling lives in the parent module.

use bytes::Bytes;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use serde::Serialize;
use serde_json::json;

use super::{AdminError, GuestSnapshot, JSON, MAX_BODY_BYTES, MAX_COMPONENT_BYTES, Resp, Shared, metrics};

/// Every endpoint; each has exactly one allowed method.
#[derive(Debug, PartialEq)]
pub(super) enum Route {
    Health,
    Ready,
    Metrics,
    Guests,
    Guest(String),
    Invoke(String),
    ResetCounters(String),
    Swap(String),
    Rollback(String),
}

impl Route {
    pub(super) fn parse(path: &str) -> Option<Self> {
        match path {
            "/health" => return Some(Self::Health),
            "/ready" => return Some(Self::Ready),
            "/metrics" => return Some(Self::Metrics),
            "/guests" => return Some(Self::Guests),
            _ => {}
        }
        let mut parts = path.strip_prefix("/guests/")?.split('/');
        let name = parts.next().filter(|n| !n.is_empty())?.to_owned();
        match (parts.next(), parts.next(), parts.next()) {
            (None, _, _) => Some(Self::Guest(name)),
            (Some("invoke"), None, _) => Some(Self::Invoke(name)),
            (Some("swap"), None, _) => Some(Self::Swap(name)),
            (Some("rollback"), None, _) => Some(Self::Rollback(name)),
            (Some("counters"), Some("reset"), None) => Some(Self::ResetCounters(name)),
            _ => None,
        }
    }

    fn method(&self) -> Method {
        match self {
            Self::Invoke(_) | Self::ResetCounters(_) | Self::Swap(_) | Self::Rollback(_) => Method::POST,
            _ => Method::GET,
        }
    }

    /// Largest accepted request body; raise per route (e.g. component swap).
    fn body_limit(&self) -> usize {
        match self {
            Self::Swap(_) => MAX_COMPONENT_BYTES,
            _ => MAX_BODY_BYTES,
        }
    }
}

pub(super) async fn handle(shared: &Shared, req: Request<Incoming>) -> Resp {
    // The status page (`GET /`, its assets and read-only helpers) lives in page.rs.
    if let Some(resp) = super::page::serve(shared, req.method(), req.uri().path(), req.uri().query()).await {
        return resp;
    }
    let Some(route) = Route::parse(req.uri().path()) else {
        let msg = format!("no endpoint at {}", req.uri().path());
        return error_json(StatusCode::NOT_FOUND, &msg);
    };
    let allowed = route.method();
    if req.method() != allowed {
        return method_not_allowed(&allowed);
    }
    let body = match accept_body(shared, &route, req).await {
        Ok(body) => body,
        Err(resp) => return resp,
    };
    let reply = match route {
        Route::Swap(name) => shared.backend.swap(&name, body).await,
        Route::Rollback(name) => shared.backend.rollback(&name).await,
        route => return dispatch(shared, route, &body).unwrap_or_else(|err| failure(shared, err)),
    };
    match reply {
        Ok(done) => json_response(StatusCode::OK, &done),
        Err(err) => failure(shared, err),
    }
}

/// Authorizes mutating routes and reads their (size-limited) body.
async fn accept_body(shared: &Shared, route: &Route, req: Request<Incoming>) -> Result<Bytes, Resp> {
    if route.method() != Method::POST {
        return Ok(Bytes::new());
    }
    authorize(shared.token.as_ref(), req.headers()).map_err(|err| failure(shared, err))?;
    let limit = route.body_limit();
    let declared = req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok());
    if declared.and_then(|v| v.parse::<u64>().ok()).is_some_and(|len| len > limit as u64) {
        return Err(too_large(limit));
    }
    match Limited::new(req.into_body(), limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(err) if err.downcast_ref::<LengthLimitError>().is_some() => Err(too_large(limit)),
        Err(err) => Err(error_json(StatusCode::BAD_REQUEST, &format!("could not read request body: {err}"))),
    }
}

fn dispatch(shared: &Shared, route: Route, body: &[u8]) -> Result<Resp, AdminError> {
    let backend = &shared.backend;
    Ok(match route {
        Route::Health => json_response(StatusCode::OK, &json!({"status": "ok"})),
        Route::Ready => ready(&backend.guests()),
        Route::Metrics => {
            let text = metrics::render(&backend.guests(), &backend.extra_metrics());
            respond(StatusCode::OK, metrics::CONTENT_TYPE, text)
        }
        Route::Guests => json_response(StatusCode::OK, &backend.guests()),
        Route::Guest(name) => guest(&backend.guests(), &name),
        Route::Invoke(name) => {
            let accepted = backend.invoke(&name, parse_args(body)?)?;
            json_response(StatusCode::ACCEPTED, &accepted)
        }
        Route::ResetCounters(name) => {
            backend.reset_counters(&name)?;
            json_response(StatusCode::OK, &json!({"guest": name, "reset": true}))
        }
        // Async routes are answered in `handle` before dispatch.
        Route::Swap(_) | Route::Rollback(_) => error_json(StatusCode::INTERNAL_SERVER_ERROR, "swap routed to dispatch"),
    })
}

fn ready(guests: &[GuestSnapshot]) -> Resp {
    let reasons: Vec<String> = guests.iter().filter(|g| !g.initialized).map(not_ready_reason).collect();
    if reasons.is_empty() {
        json_response(StatusCode::OK, &json!({"ready": true}))
    } else {
        json_response(StatusCode::SERVICE_UNAVAILABLE, &json!({"ready": false, "reasons": reasons}))
    }
}

fn not_ready_reason(g: &GuestSnapshot) -> String {
    match &g.detail {
        Some(detail) => format!("{}: init not completed ({}: {detail})", g.name, g.state),
        None => format!("{}: init not completed ({})", g.name, g.state),
    }
}

fn guest(guests: &[GuestSnapshot], name: &str) -> Resp {
    match guests.iter().find(|g| g.name == name) {
        Some(g) => json_response(StatusCode::OK, g),
        None => unknown_guest(name, guests),
    }
}

fn unknown_guest(name: &str, guests: &[GuestSnapshot]) -> Resp {
    let known: Vec<&str> = guests.iter().map(|g| g.name.as_str()).collect();
    let known = if known.is_empty() { "(none)".to_owned() } else { known.join(", ") };
    let msg = format!("{}; known guests: {known}", AdminError::NotFound(name.to_owned()));
    error_json(StatusCode::NOT_FOUND, &msg)
}

/// Parses an invoke body: empty, or a JSON object whose values are all strings.
fn parse_args(body: &[u8]) -> Result<Vec<(String, String)>, AdminError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Vec::new());
    }
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| AdminError::BadRequest(format!("body is not valid JSON: {e}")))?;
    let serde_json::Value::Object(map) = value else {
        let msg = r#"body must be a JSON object of string values, e.g. {"start":"2024-01-01"}"#;
        return Err(AdminError::BadRequest(msg.to_owned()));
    };
    map.into_iter()
        .map(|(key, value)| match value {
            serde_json::Value::String(s) => Ok((key, s)),
            other => Err(AdminError::BadRequest(format!("argument '{key}' must be a string, got {other}"))),
        })
        .collect()
}

/// Checks `Authorization: Bearer <token>` when a token is configured.
fn authorize(token: Option<&super::AdminToken>, headers: &HeaderMap) -> Result<(), AdminError> {
    let Some(token) = token else {
        return Ok(());
    };
    let expected = token.current().ok_or(AdminError::Unauthorized)?;
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer_token)
        .ok_or(AdminError::Unauthorized)?;
    if constant_time_eq(presented.as_bytes(), expected.as_bytes()) { Ok(()) } else { Err(AdminError::Unauthorized) }
}

pub(super) fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Compares without early exit; timing depends only on the expected length.
pub(super) fn constant_time_eq(presented: &[u8], expected: &[u8]) -> bool {
    let mut diff = u8::from(presented.len() != expected.len());
    for (i, &e) in expected.iter().enumerate() {
        diff |= presented.get(i).copied().unwrap_or(0) ^ e;
    }
    std::hint::black_box(diff) == 0
}

fn failure(shared: &Shared, err: AdminError) -> Resp {
    match &err {
        AdminError::NotFound(name) => unknown_guest(name, &shared.backend.guests()),
        AdminError::Unauthorized => {
            let mut resp = error_json(err.status(), &err.to_string());
            let challenge = HeaderValue::from_static("Bearer");
            resp.headers_mut().insert(header::WWW_AUTHENTICATE, challenge);
            resp
        }
        _ => error_json(err.status(), &err.to_string()),
    }
}

fn method_not_allowed(allowed: &Method) -> Resp {
    let msg = format!("method not allowed; use {allowed}");
    let mut resp = error_json(StatusCode::METHOD_NOT_ALLOWED, &msg);
    let allow = HeaderValue::from_str(allowed.as_str()).expect("method names are valid header values");
    resp.headers_mut().insert(header::ALLOW, allow);
    resp
}

fn too_large(limit: usize) -> Resp {
    let msg = format!("request body exceeds the limit of {limit} bytes");
    error_json(StatusCode::PAYLOAD_TOO_LARGE, &msg)
}

pub(super) fn error_json(status: StatusCode, message: &str) -> Resp {
    json_response(status, &json!({"error": message}))
}

fn json_response(status: StatusCode, value: &impl Serialize) -> Resp {
    match serde_json::to_vec(value) {
        Ok(body) => respond(status, JSON, body),
        Err(err) => {
            tracing::error!(%err, "admin: failed to serialize response");
            let body = r#"{"error":"internal error: response serialization failed"}"#;
            respond(StatusCode::INTERNAL_SERVER_ERROR, JSON, body)
        }
    }
}

fn respond(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Resp {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    let headers = resp.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}
