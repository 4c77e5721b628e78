//! One `GET` through `wasi:http`, with optional secret capture armed first.
//!
//! The guest only ever writes `${secret:...}` placeholders into headers; the
//! host fills them in at egress for granted destinations, and scrubs secrets
//! from what comes back. Native builds (unit tests) cannot send anything.

/// Per-request first-byte timeout: several requests must fit in one run.
pub const FIRST_BYTE_TIMEOUT_MS: u64 = 15_000;

/// A request: absolute `url` and extra headers.
#[derive(Clone, Debug, PartialEq)]
pub struct Request {
    /// `https://host[:port]/path?query`.
    pub url: String,
    /// Header name/value pairs (values may hold secret placeholders).
    pub headers: Vec<(String, String)>,
    /// Capture `/token` of a 2xx JSON answer into this secret with this TTL.
    pub capture: Option<(String, u64)>,
}

/// What came back.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Response {
    /// HTTP status.
    pub status: u16,
    /// `Content-Type`, lower-cased (empty when absent).
    pub content_type: String,
    /// `Retry-After`, if sent.
    pub retry_after: Option<String>,
    /// The whole body as (lossy) UTF-8.
    pub body: String,
}

/// Splits `https://host:port/path?q` into scheme, authority and path.
pub fn split_url(url: &str) -> Option<(&str, &str, &str)> {
    let (scheme, rest) = url.split_once("://")?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    (!authority.is_empty()).then_some((scheme, authority, path))
}

/// Without wasi:http (native unit tests) nothing can be sent.
#[cfg(not(target_arch = "wasm32"))]
pub fn get(_request: &Request) -> Result<Response, String> {
    Err("HTTP needs the wasm32-wasip2 build".into())
}

/// Sends the request and reads the whole response; `Err` is a transport
/// failure (denied, DNS, TLS, timeout) described for the status detail.
#[cfg(target_arch = "wasm32")]
pub fn get(request: &Request) -> Result<Response, String> {
    use wasip2::http::outgoing_handler;
    use wasip2::http::types::{OutgoingBody, RequestOptions};
    arm(request)?;
    let outgoing = build(request)?;
    let options = RequestOptions::new();
    let _ = options.set_first_byte_timeout(Some(FIRST_BYTE_TIMEOUT_MS * 1_000_000));
    let body = outgoing.body().map_err(|()| "no request body".to_string())?;
    let future = outgoing_handler::handle(outgoing, Some(options)).map_err(|e| format!("{e:?}"))?;
    OutgoingBody::finish(body, None).map_err(|e| format!("{e:?}"))?;
    future.subscribe().block();
    let response =
        future.get().ok_or("no response")?.map_err(|()| "response taken twice")?.map_err(|e| format!("{e:?}"))?;
    read(response)
}

#[cfg(target_arch = "wasm32")]
fn arm(request: &Request) -> Result<(), String> {
    use wattedge_guest::secrets;
    let Some((secret, ttl)) = &request.capture else { return Ok(()) };
    let rule = secrets::CaptureRule {
        pointer: "/token".into(),
        secret: secret.clone(),
        ttl_seconds: Some(*ttl),
        persist: crate::PERSIST_TOKEN,
    };
    secrets::arm_capture(&[rule]).map_err(|e| format!("arming the token capture: {e:?}"))
}

#[cfg(target_arch = "wasm32")]
fn build(request: &Request) -> Result<wasip2::http::types::OutgoingRequest, String> {
    use wasip2::http::types::{Fields, Method, OutgoingRequest, Scheme};
    let (scheme, authority, path) = split_url(&request.url).ok_or_else(|| format!("bad URL {}", request.url))?;
    let headers = Fields::new();
    for (name, value) in &request.headers {
        headers.append(name, value.as_bytes()).map_err(|e| format!("header {name}: {e:?}"))?;
    }
    let outgoing = OutgoingRequest::new(headers);
    outgoing.set_method(&Method::Get).map_err(|()| "bad method".to_string())?;
    let scheme = if scheme == "http" { Scheme::Http } else { Scheme::Https };
    outgoing.set_scheme(Some(&scheme)).map_err(|()| "bad scheme".to_string())?;
    outgoing.set_authority(Some(authority)).map_err(|()| format!("bad authority {authority}"))?;
    outgoing.set_path_with_query(Some(path)).map_err(|()| format!("bad path {path}"))?;
    Ok(outgoing)
}

#[cfg(target_arch = "wasm32")]
fn read(response: wasip2::http::types::IncomingResponse) -> Result<Response, String> {
    let status = response.status();
    let header = |name: &str| {
        response.headers().get(name).first().map(|v| String::from_utf8_lossy(v).trim().to_ascii_lowercase())
    };
    let content_type = header("content-type").unwrap_or_default();
    let retry_after = header("retry-after");
    let incoming = response.consume().map_err(|()| "no response body".to_string())?;
    let mut bytes = Vec::new();
    {
        let stream = incoming.stream().map_err(|()| "no response stream".to_string())?;
        loop {
            match stream.blocking_read(65536) {
                Ok(chunk) => bytes.extend_from_slice(&chunk),
                Err(wasip2::io::streams::StreamError::Closed) => break,
                Err(e) => return Err(format!("reading the response body: {e:?}")),
            }
        }
    }
    Ok(Response { status, content_type, retry_after, body: String::from_utf8_lossy(&bytes).into_owned() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split() {
        assert_eq!(
            split_url("https://api.watttime.test:8443/v3/forecast?region=X"),
            Some(("https", "api.watttime.test:8443", "/v3/forecast?region=X"))
        );
        assert_eq!(split_url("https://a"), Some(("https", "a", "/")));
        assert_eq!(split_url("nope"), None);
    }
}
