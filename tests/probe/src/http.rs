//! The probe's `http` mode: one wasi:http request described by config /
//! invoke arguments, reported exactly as the guest saw it.
//!
//! Keys: `url`, `method` (default GET), `h.NAME = VALUE` (a request header),
//! `body`, `capture` (`POINTER=SECRET,...`, armed for this request),
//! `capture_ttl` (seconds), `capture_persist` (`true`), `timeout_ms`
//! (wasi:http first-byte timeout), `label` (tag of the reported point).
//! The guest writes a `probe_http` point (tag `label`; fields `status`, 0 on
//! error, `headers`, `body` and `error`) and logs the same.

use wattedge_guest::GuestError;
use wattedge_guest::config::config_error;

/// One capture rule as the guest arms it.
#[derive(Clone, Debug, PartialEq)]
pub struct Capture {
    pub pointer: String,
    pub secret: String,
}

/// A request to make.
#[derive(Clone, Debug, PartialEq)]
pub struct HttpPlan {
    pub scheme: String,
    pub authority: String,
    pub path_with_query: String,
    pub method: String,
    pub headers: Vec<(String, String)>,
    pub body: String,
    pub captures: Vec<Capture>,
    pub capture_ttl: Option<u64>,
    pub capture_persist: bool,
    pub timeout_ms: Option<u64>,
    pub label: String,
}

/// What the guest received.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Outcome {
    pub status: u16,
    /// Response headers as `name: value` lines.
    pub headers: String,
    pub body: String,
    pub error: String,
}

fn last<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    pairs.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

/// Parses the plan from config pairs (later pairs win).
pub fn plan(pairs: &[(String, String)]) -> Result<HttpPlan, GuestError> {
    let url = last(pairs, "url").ok_or_else(|| config_error("url", "required in http mode"))?;
    let (scheme, rest) =
        url.split_once("://").ok_or_else(|| config_error("url", "must start with http:// or https://"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let mut headers: Vec<(String, String)> = Vec::new();
    for (k, v) in pairs {
        if let Some(name) = k.strip_prefix("h.") {
            headers.retain(|(n, _)| n != name);
            headers.push((name.to_string(), v.clone()));
        }
    }
    let captures = parse_captures(last(pairs, "capture").unwrap_or(""))?;
    let number = |key: &str| {
        last(pairs, key).map(|v| v.trim().parse::<u64>().map_err(|_| config_error(key, "must be a whole number")))
    };
    Ok(HttpPlan {
        scheme: scheme.to_string(),
        authority: authority.to_string(),
        path_with_query: path.to_string(),
        method: last(pairs, "method").unwrap_or("GET").to_string(),
        headers,
        body: last(pairs, "body").unwrap_or("").to_string(),
        captures,
        capture_ttl: number("capture_ttl").transpose()?,
        capture_persist: last(pairs, "capture_persist") == Some("true"),
        timeout_ms: number("timeout_ms").transpose()?,
        label: last(pairs, "label").unwrap_or("request").to_string(),
    })
}

fn parse_captures(text: &str) -> Result<Vec<Capture>, GuestError> {
    text.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|item| match item.split_once('=') {
            Some((pointer, secret)) => Ok(Capture { pointer: pointer.into(), secret: secret.into() }),
            None => Err(config_error("capture", format!("{item:?} is not POINTER=SECRET"))),
        })
        .collect()
}

/// Arms the capture rules, if any.
#[cfg(target_arch = "wasm32")]
fn arm(plan: &HttpPlan) -> Result<(), String> {
    use wattedge_guest::secrets;
    if plan.captures.is_empty() {
        return Ok(());
    }
    let rules: Vec<secrets::CaptureRule> = plan
        .captures
        .iter()
        .map(|c| secrets::CaptureRule {
            pointer: c.pointer.clone(),
            secret: c.secret.clone(),
            ttl_seconds: plan.capture_ttl,
            persist: plan.capture_persist,
        })
        .collect();
    secrets::arm_capture(&rules).map_err(|e| format!("arm-capture: {e:?}"))
}

/// Makes the request and reads the whole response.
#[cfg(target_arch = "wasm32")]
pub fn perform(plan: &HttpPlan) -> Outcome {
    match arm(plan).and_then(|()| exchange(plan)) {
        Ok((status, headers, body)) => Outcome { status, headers, body, error: String::new() },
        Err(error) => Outcome { error, ..Outcome::default() },
    }
}

/// Without wasi:http (native unit tests) nothing can be sent.
#[cfg(not(target_arch = "wasm32"))]
pub fn perform(_plan: &HttpPlan) -> Outcome {
    Outcome { error: "http mode needs the wasm32-wasip2 build".into(), ..Outcome::default() }
}

#[cfg(target_arch = "wasm32")]
fn exchange(plan: &HttpPlan) -> Result<(u16, String, String), String> {
    use wasip2::http::outgoing_handler;
    use wasip2::http::types::{OutgoingBody, RequestOptions};
    let request = build(plan)?;
    let options = plan.timeout_ms.map(|ms| {
        let o = RequestOptions::new();
        let _ = o.set_first_byte_timeout(Some(ms * 1_000_000));
        o
    });
    let body = request.body().map_err(|()| "no body".to_string())?;
    let future = outgoing_handler::handle(request, options).map_err(|e| format!("{e:?}"))?;
    {
        let stream = body.write().map_err(|()| "no body stream".to_string())?;
        for chunk in plan.body.as_bytes().chunks(4096) {
            stream.blocking_write_and_flush(chunk).map_err(|e| format!("writing body: {e:?}"))?;
        }
    }
    OutgoingBody::finish(body, None).map_err(|e| format!("{e:?}"))?;
    future.subscribe().block();
    let response =
        future.get().ok_or("no response")?.map_err(|()| "response taken twice")?.map_err(|e| format!("{e:?}"))?;
    read_response(response)
}

/// The outgoing request with method, URL and headers set.
#[cfg(target_arch = "wasm32")]
fn build(plan: &HttpPlan) -> Result<wasip2::http::types::OutgoingRequest, String> {
    use wasip2::http::types::{Fields, OutgoingRequest, Scheme};
    let headers = Fields::new();
    for (name, value) in &plan.headers {
        headers.append(name, value.as_bytes()).map_err(|e| format!("header {name}: {e:?}"))?;
    }
    let request = OutgoingRequest::new(headers);
    request.set_method(&method(&plan.method)).map_err(|()| "bad method".to_string())?;
    let scheme = if plan.scheme == "http" { Scheme::Http } else { Scheme::Https };
    request.set_scheme(Some(&scheme)).map_err(|()| "bad scheme".to_string())?;
    request.set_authority(Some(&plan.authority)).map_err(|()| "bad authority".to_string())?;
    request.set_path_with_query(Some(&plan.path_with_query)).map_err(|()| "bad path".to_string())?;
    Ok(request)
}

/// Status, headers (`name: value` lines) and the whole body.
#[cfg(target_arch = "wasm32")]
fn read_response(response: wasip2::http::types::IncomingResponse) -> Result<(u16, String, String), String> {
    let status = response.status();
    let headers: String = response
        .headers()
        .entries()
        .into_iter()
        .map(|(name, value)| format!("{name}: {}\n", String::from_utf8_lossy(&value)))
        .collect();
    let incoming = response.consume().map_err(|()| "no response body".to_string())?;
    let mut bytes = Vec::new();
    {
        let stream = incoming.stream().map_err(|()| "no response stream".to_string())?;
        loop {
            match stream.blocking_read(65536) {
                Ok(chunk) => bytes.extend_from_slice(&chunk),
                Err(wasip2::io::streams::StreamError::Closed) => break,
                Err(e) => return Err(format!("reading body: {e:?}")),
            }
        }
    }
    Ok((status, headers, String::from_utf8_lossy(&bytes).into_owned()))
}

#[cfg(target_arch = "wasm32")]
fn method(name: &str) -> wasip2::http::types::Method {
    use wasip2::http::types::Method;
    match name.to_ascii_uppercase().as_str() {
        "GET" => Method::Get,
        "POST" => Method::Post,
        "PUT" => Method::Put,
        "DELETE" => Method::Delete,
        "PATCH" => Method::Patch,
        "HEAD" => Method::Head,
        other => Method::Other(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
        items.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn parses_a_request() {
        let p = plan(&pairs(&[
            ("url", "https://api.test:8443/login?x=${secret:a}"),
            ("method", "POST"),
            ("h.authorization", "Basic ${secret-basic:u:p}"),
            ("h.x-a", "1"),
            ("h.x-a", "2"),
            ("body", "a=b"),
            ("capture", "/token=t.token, /refresh=t.refresh"),
            ("capture_ttl", "60"),
            ("capture_persist", "true"),
        ]))
        .unwrap();
        assert_eq!((p.scheme.as_str(), p.authority.as_str()), ("https", "api.test:8443"));
        assert_eq!(p.path_with_query, "/login?x=${secret:a}");
        assert_eq!(p.headers, pairs(&[("authorization", "Basic ${secret-basic:u:p}"), ("x-a", "2")]));
        assert_eq!(p.captures.len(), 2);
        assert_eq!((p.capture_ttl, p.capture_persist, p.timeout_ms), (Some(60), true, None));
    }

    #[test]
    fn rejects_bad_input() {
        assert!(plan(&pairs(&[])).is_err());
        assert!(plan(&pairs(&[("url", "api.test")])).is_err());
        assert!(plan(&pairs(&[("url", "https://a"), ("capture", "/x")])).is_err());
        assert_eq!(plan(&pairs(&[("url", "https://a")])).unwrap().path_with_query, "/");
    }
}
