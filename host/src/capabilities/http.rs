//! The outbound HTTP capability: wasi:http requests pass through
//! [`HttpGate`], the `WasiHttpHooks` of every guest store, which refuses any
//! destination the guest's `grants.http` does not name before anything is
//! sent. The decision uses the request URI's authority, never a
//! guest-supplied `Host` header.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use wasmtime_wasi_http::{Error as HttpError, RequestOptions, WasiBody, WasiHttpHooks};

use crate::config::Grants;

/// Per-guest HTTP counters, shown in `/metrics`.
#[derive(Default)]
pub struct HttpMetrics {
    pub requests: AtomicU64,
    pub denied: AtomicU64,
    pub errors: AtomicU64,
}

/// One entry of `grants.http`: `host`, `host:port` or `scheme://host[:port]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostGrant {
    pub scheme: Option<String>,
    pub host: String,
    pub port: Option<u16>,
}

impl HostGrant {
    /// Parses a grant entry; the error says what form is expected.
    pub fn parse(entry: &str) -> Result<HostGrant, String> {
        let (scheme, rest) = match entry.split_once("://") {
            Some((s, r)) if s == "http" || s == "https" => (Some(s.to_string()), r),
            Some((s, _)) => return Err(format!("scheme {s:?} in {entry:?} is not http or https")),
            None => (None, entry),
        };
        let rest = rest.trim_end_matches('/');
        if rest.is_empty() || rest.contains('/') || rest.contains('@') {
            return Err(format!("{entry:?} is not a host, host:port or scheme://host[:port]"));
        }
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, p)) if !h.contains(':') || h.ends_with(']') => {
                (h, Some(p.parse::<u16>().map_err(|_| format!("port {p:?} in {entry:?} is not a number"))?))
            }
            _ => (rest, None),
        };
        Ok(HostGrant { scheme, host: host.to_ascii_lowercase(), port })
    }

    /// True when a request to `scheme://host:port` is covered by this grant.
    pub fn allows(&self, scheme: &str, host: &str, port: u16) -> bool {
        self.host.eq_ignore_ascii_case(host)
            && self.port.is_none_or(|p| p == port)
            && self.scheme.as_deref().is_none_or(|s| s == scheme)
    }
}

/// The `WasiHttpHooks` of one guest: grant checks, then the real send.
pub struct HttpGate {
    guest: Arc<str>,
    grants: Vec<HostGrant>,
    shared: Arc<super::GuestShared>,
}

impl HttpGate {
    pub fn new(guest: Arc<str>, grants: &Grants, shared: Arc<super::GuestShared>) -> HttpGate {
        // Config validation (`wattedge check`) reports malformed entries; here they never match.
        let grants = grants.http.iter().filter_map(|g| HostGrant::parse(g).ok()).collect();
        HttpGate { guest, grants, shared }
    }

    fn decide(&self, uri: &http::Uri) -> Result<(), String> {
        let scheme = uri.scheme_str().unwrap_or("https");
        let host = uri.host().ok_or("request has no host")?;
        let port = uri.port_u16().unwrap_or(if scheme == "http" { 80 } else { 443 });
        if self.grants.iter().any(|g| g.allows(scheme, host, port)) {
            Ok(())
        } else {
            Err(format!("{scheme}://{host}:{port} is not in grants.http"))
        }
    }
}

type SendResult = Result<(http::Response<WasiBody>, Box<dyn Future<Output = Result<(), HttpError>> + Send>), HttpError>;

impl WasiHttpHooks for HttpGate {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        _fut: Box<dyn Future<Output = Result<(), HttpError>> + Send>,
    ) -> Box<dyn Future<Output = SendResult> + Send> {
        self.shared.http.requests.fetch_add(1, Ordering::Relaxed);
        if let Err(reason) = self.decide(request.uri()) {
            self.shared.http.denied.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(guest = %self.guest, destination = %request.uri().authority().map(|a| a.as_str()).unwrap_or("?"), %reason, "outbound HTTP denied");
            return Box::new(async { Err(HttpError::HttpRequestDenied) });
        }
        let shared = self.shared.clone();
        Box::new(async move {
            use http_body_util::BodyExt;
            match wasmtime_wasi_http::default_send_request(request, options).await {
                Ok((response, io)) => {
                    Ok((response.map(BodyExt::boxed_unsync), Box::new(io) as Box<dyn Future<Output = _> + Send>))
                }
                Err(e) => {
                    shared.http.errors.fetch_add(1, Ordering::Relaxed);
                    Err(e)
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::HostGrant;

    #[test]
    fn grants_parse_and_match() {
        let g = HostGrant::parse("api.watttime.org").unwrap();
        assert!(g.allows("https", "API.watttime.org", 443));
        assert!(g.allows("http", "api.watttime.org", 8080));
        assert!(!g.allows("https", "evil.example", 443));
        let g = HostGrant::parse("https://localhost:9999").unwrap();
        assert!(g.allows("https", "localhost", 9999));
        assert!(!g.allows("http", "localhost", 9999));
        assert!(!g.allows("https", "localhost", 443));
        assert!(HostGrant::parse("ftp://x").is_err());
        assert!(HostGrant::parse("host/path").is_err());
        assert!(HostGrant::parse("host:notaport").is_err());
    }
}
