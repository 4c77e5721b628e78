//! WattTime's view of one `GET`: the request, and the response reduced to
//! what [`crate::policy`] reads. The host captures the login's `/token`
//! into `watttime.token` by the operator's `grants.capture` rule.
//!
//! The exchange itself (`wasi:http`, reading the body) is
//! [`wattedge_guest::http`]; the guest only ever writes `${secret:...}`
//! placeholders into headers, which the host fills in at egress for granted
//! destinations. Native builds (unit tests) cannot send anything.

use std::time::Duration;

use wattedge_guest::http::{self as wasi_http, HttpError};

/// Per-request first-byte timeout: several requests must fit in one run.
pub const FIRST_BYTE_TIMEOUT_MS: u64 = 15_000;

/// A request: absolute `url` and extra headers.
#[derive(Clone, Debug, PartialEq)]
pub struct Request {
    /// `https://host[:port]/path?query`.
    pub url: String,
    /// Header name/value pairs (values may hold secret placeholders).
    pub headers: Vec<(String, String)>,
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

/// Sends the request and reads the whole
/// response; `Err` is a transport failure (denied, DNS, TLS, timeout)
/// described for the status detail.
pub fn get(request: &Request) -> Result<Response, HttpError> {
    wasi_http::request(&exchange(request)).map(view)
}

/// The shared exchange for `request`: a `GET` with the WattTime timeout.
fn exchange(request: &Request) -> wasi_http::Request {
    wasi_http::Request {
        method: "GET".into(),
        url: request.url.clone(),
        headers: request.headers.clone(),
        body: String::new(),
        first_byte_timeout: Some(Duration::from_millis(FIRST_BYTE_TIMEOUT_MS)),
    }
}

/// The headers the retry and error policy read, trimmed and lower-cased.
fn view(response: wasi_http::Response) -> Response {
    let header = |name: &str| response.header(name).map(|v| v.trim().to_ascii_lowercase());
    let (content_type, retry_after) = (header("content-type").unwrap_or_default(), header("retry-after"));
    Response { status: response.status, content_type, retry_after, body: response.body }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_is_a_get_with_the_watttime_timeout() {
        let login = Request { url: "https://a.test/login".into(), headers: vec![] };
        let sent = exchange(&login);
        assert_eq!((sent.method.as_str(), sent.first_byte_timeout), ("GET", Some(Duration::from_secs(15))));
        assert_eq!(sent.url, "https://a.test/login");
    }

    #[test]
    fn policy_headers_are_normalised() {
        let headers = vec![("content-type".into(), " Text/HTML ".into()), ("retry-after".into(), "30".into())];
        let seen = view(wasi_http::Response { status: 429, headers, body: "x".into() });
        assert_eq!((seen.content_type.as_str(), seen.retry_after.as_deref()), ("text/html", Some("30")));
        assert_eq!(view(wasi_http::Response::default()).content_type, "");
    }
}
