//! One outbound `wasi:http` exchange: send a request, read the whole
//! response.
//!
//! Every guest that talks to an upstream (and the test probe) needs exactly
//! this sequence, so it lives here once. The guest never holds a secret:
//! headers, query and body carry `${secret:...}` placeholders that the host
//! fills in at egress for granted hosts; the host captures tokens from what
//! comes back by the operator's `grants.capture` rules (the guest finds
//! [`CAPTURED`] where a token was) and scrubs secrets from the rest. Native builds (unit tests) have no `wasi:http`; [`request`]
//! returns [`HttpError::Unsupported`] there.

use std::fmt;
use std::time::Duration;

/// What the host puts in place of a field it captured into a secret: a
/// guest checks for it to know the capture happened.
pub const CAPTURED: &str = "[wattedge:captured]";

/// One request to send.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Request {
    /// `GET`, `POST`, ... (case-insensitive; empty means `GET`).
    pub method: String,
    /// Absolute URL: `https://host[:port]/path?query`.
    pub url: String,
    /// Header name/value pairs (values may hold secret placeholders).
    pub headers: Vec<(String, String)>,
    /// Request body (empty for none).
    pub body: String,
    /// `wasi:http` first-byte timeout; `None` keeps the host's default.
    pub first_byte_timeout: Option<Duration>,
}

/// What came back.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Response {
    /// HTTP status.
    pub status: u16,
    /// Header name/value pairs in the order received (values lossy UTF-8).
    pub headers: Vec<(String, String)>,
    /// The whole body as (lossy) UTF-8.
    pub body: String,
}

impl Response {
    /// The first value of header `name` (case-insensitive), if sent.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// Why an exchange produced no response.
#[derive(Clone, Debug, PartialEq)]
pub enum HttpError {
    /// Built natively (unit tests): there is no `wasi:http` to send through.
    Unsupported,
    /// The request could not be built (URL, method or header rejected).
    Invalid(String),
    /// The host or the network failed the exchange: denied, DNS, TLS,
    /// timeout, oversize body (the `wasi:http` error code, e.g.
    /// `HttpRequestDenied`, `ConnectionTimeout`).
    Transport(String),
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HttpError::Unsupported => f.write_str("HTTP needs the wasm32-wasip2 build"),
            HttpError::Invalid(m) | HttpError::Transport(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for HttpError {}

/// Splits an absolute URL into scheme, authority and path-with-query
/// (`/` when the URL has no path).
pub fn split_url(url: &str) -> Result<(&str, &str, &str), HttpError> {
    let bad = || HttpError::Invalid(format!("{url:?} is not an absolute URL (want https://host[:port]/path)"));
    let (scheme, rest) = url.split_once("://").ok_or_else(bad)?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.is_empty() {
        return Err(bad());
    }
    Ok((scheme, authority, path))
}

/// Without `wasi:http` (native unit tests) nothing can be sent.
#[cfg(not(target_arch = "wasm32"))]
pub fn request(_request: &Request) -> Result<Response, HttpError> {
    Err(HttpError::Unsupported)
}

/// Sends every request at once and then reads each response (native builds
/// cannot reach the host).
#[cfg(not(target_arch = "wasm32"))]
pub fn request_all(requests: &[Request]) -> Vec<Result<Response, HttpError>> {
    requests.iter().map(|_| Err(HttpError::Unsupported)).collect()
}

/// Sends the request and reads the whole response.
#[cfg(target_arch = "wasm32")]
pub fn request(request: &Request) -> Result<Response, HttpError> {
    let pending = wasi::start(request)?;
    wasi::read(wasi::wait(pending)?)
}

/// Sends every request at once and reads the
/// responses as they arrive; the results are in request order. The host
/// runs a few of a guest's requests at a time and the rest wait for a slot,
/// which a response frees once it is read: reading them in the order they
/// complete (never waiting on one still queued behind unread ones) is what
/// keeps that from stalling.
#[cfg(target_arch = "wasm32")]
pub fn request_all(requests: &[Request]) -> Vec<Result<Response, HttpError>> {
    let mut results: Vec<Option<Result<Response, HttpError>>> = requests.iter().map(|_| None).collect();
    let mut pending = Vec::new();
    for (index, request) in requests.iter().enumerate() {
        match wasi::start(request) {
            Ok(future) => pending.push((index, future)),
            Err(e) => results[index] = Some(Err(e)),
        }
    }
    while !pending.is_empty() {
        let mut ready = wasi::ready(pending.iter().map(|(_, future)| future));
        ready.sort_unstable_by(|a, b| b.cmp(a));
        for at in ready {
            let (index, future) = pending.swap_remove(at);
            results[index] = Some(wasi::wait(future).and_then(wasi::read));
        }
    }
    results.into_iter().map(|r| r.unwrap_or(Err(HttpError::Transport("not sent".into())))).collect()
}

#[cfg(target_arch = "wasm32")]
mod wasi {
    use wasip2::http::outgoing_handler;
    use wasip2::http::types::{
        Fields, FutureIncomingResponse, IncomingResponse, Method, OutgoingBody, OutgoingRequest, RequestOptions, Scheme,
    };

    use super::{HttpError, Request, Response, split_url};

    /// The outgoing request with method, URL and headers set.
    pub fn build(request: &Request) -> Result<OutgoingRequest, HttpError> {
        let invalid = HttpError::Invalid;
        let (scheme, authority, path) = split_url(&request.url)?;
        let headers = Fields::new();
        for (name, value) in &request.headers {
            headers.append(name, value.as_bytes()).map_err(|e| invalid(format!("header {name}: {e:?}")))?;
        }
        let outgoing = OutgoingRequest::new(headers);
        outgoing.set_method(&method(&request.method)).map_err(|()| invalid("bad method".into()))?;
        let scheme = if scheme == "http" { Scheme::Http } else { Scheme::Https };
        outgoing.set_scheme(Some(&scheme)).map_err(|()| invalid("bad scheme".into()))?;
        outgoing.set_authority(Some(authority)).map_err(|()| invalid(format!("bad authority {authority:?}")))?;
        outgoing.set_path_with_query(Some(path)).map_err(|()| invalid(format!("bad path {path:?}")))?;
        Ok(outgoing)
    }

    /// Hands the request to the host and writes its body; the response is
    /// then awaited with [`wait`].
    pub fn start(request: &Request) -> Result<FutureIncomingResponse, HttpError> {
        let outgoing = build(request)?;
        let transport = |e: String| HttpError::Transport(e);
        let options = request.first_byte_timeout.map(|timeout| {
            let options = RequestOptions::new();
            let _ = options.set_first_byte_timeout(Some(u64::try_from(timeout.as_nanos()).unwrap_or(u64::MAX)));
            options
        });
        let body = outgoing.body().map_err(|()| transport("no request body".into()))?;
        let future = outgoing_handler::handle(outgoing, options).map_err(|e| transport(format!("{e:?}")))?;
        {
            let stream = body.write().map_err(|()| transport("no request body stream".into()))?;
            for chunk in request.body.as_bytes().chunks(4096) {
                stream.blocking_write_and_flush(chunk).map_err(|e| transport(format!("writing the body: {e:?}")))?;
            }
        }
        OutgoingBody::finish(body, None).map_err(|e| transport(format!("{e:?}")))?;
        Ok(future)
    }

    /// Blocks until at least one of `futures` has its response head; returns
    /// the positions of those that have.
    pub fn ready<'a>(futures: impl Iterator<Item = &'a FutureIncomingResponse>) -> Vec<usize> {
        let pollables: Vec<_> = futures.map(FutureIncomingResponse::subscribe).collect();
        let refs: Vec<_> = pollables.iter().collect();
        wasip2::io::poll::poll(&refs).into_iter().map(|i| i as usize).collect()
    }

    /// Waits for the head of a started request's response.
    pub fn wait(future: FutureIncomingResponse) -> Result<IncomingResponse, HttpError> {
        let transport = |e: String| HttpError::Transport(e);
        future.subscribe().block();
        future
            .get()
            .ok_or_else(|| transport("no response".into()))?
            .map_err(|()| transport("response taken twice".into()))?
            .map_err(|e| transport(format!("{e:?}")))
    }

    /// Status, headers and the whole body.
    pub fn read(response: IncomingResponse) -> Result<Response, HttpError> {
        let transport = |e: String| HttpError::Transport(e);
        let status = response.status();
        let headers = response
            .headers()
            .entries()
            .into_iter()
            .map(|(name, value)| (name, String::from_utf8_lossy(&value).into_owned()))
            .collect();
        let incoming = response.consume().map_err(|()| transport("no response body".into()))?;
        let mut bytes = Vec::new();
        {
            let stream = incoming.stream().map_err(|()| transport("no response stream".into()))?;
            loop {
                match stream.blocking_read(65536) {
                    Ok(chunk) => bytes.extend_from_slice(&chunk),
                    Err(wasip2::io::streams::StreamError::Closed) => break,
                    Err(e) => return Err(transport(format!("reading the response body: {e:?}"))),
                }
            }
        }
        Ok(Response { status, headers, body: String::from_utf8_lossy(&bytes).into_owned() })
    }

    /// The `wasi:http` method for `name` (empty means `GET`).
    fn method(name: &str) -> Method {
        match name.to_ascii_uppercase().as_str() {
            "" | "GET" => Method::Get,
            "POST" => Method::Post,
            "PUT" => Method::Put,
            "DELETE" => Method::Delete,
            "PATCH" => Method::Patch,
            "HEAD" => Method::Head,
            other => Method::Other(other.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split() {
        assert_eq!(
            split_url("https://api.watttime.test:8443/v3/forecast?region=X"),
            Ok(("https", "api.watttime.test:8443", "/v3/forecast?region=X"))
        );
        assert_eq!(split_url("https://a.test:9999/p?q=1"), Ok(("https", "a.test:9999", "/p?q=1")));
        assert_eq!(split_url("https://a"), Ok(("https", "a", "/")));
        assert!(split_url("nope").is_err());
        assert!(split_url("a.test/p").is_err());
        assert!(split_url("https:///p").is_err());
    }

    #[test]
    fn native_builds_cannot_send() {
        let get = Request { url: "https://a.test".into(), ..Request::default() };
        assert_eq!(request(&get), Err(HttpError::Unsupported));
        assert_eq!(HttpError::Unsupported.to_string(), "HTTP needs the wasm32-wasip2 build");
    }

    #[test]
    fn headers_are_found_case_insensitively() {
        let response = Response {
            status: 200,
            headers: vec![("content-type".into(), "text/html".into()), ("Content-Type".into(), "x".into())],
            body: String::new(),
        };
        assert_eq!(response.header("Content-Type"), Some("text/html"));
        assert_eq!(response.header("retry-after"), None);
    }
}
