//! The outbound HTTP capability: every wasi:http request of a guest passes
//! through [`HttpGate`], the `WasiHttpHooks` of its store.
//!
//! In order: the destination (from the request URI, never a guest `Host`
//! header) must be in `grants.http`; the body is buffered (up to
//! `host.http_max_body`); `${secret:...}` placeholders are sealed in
//! ([`egress`]) only for secrets granted for this destination; the name is
//! resolved by the host and non-public addresses are refused unless the
//! grant names the host as private ([`addr`]); the request goes out over a
//! connection to exactly those addresses ([`connect`]); the response is
//! buffered, refused unless its body is plain (no `Content-Encoding` but
//! identity), the operator's capture rules for that host take fields into
//! secrets, and this guest's secret values and what was inserted into the
//! request are scrubbed from what the guest receives ([`capture`]). Anything
//! refused is refused before a byte is sent (or, for an answer, before the
//! guest sees a byte of it).

mod addr;
mod capture;
mod connect;
mod egress;
mod metrics;
pub mod settings;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use wasmtime_wasi_http::{Error as HttpError, RequestOptions, WasiBody, WasiHttpHooks};

pub use crate::config::grants::{Destination, HostGrant};
pub use capture::{CAPTURED, REDACTED};
pub use metrics::{ERROR_KINDS, HttpMetrics};
pub use settings::HttpSettings;

use super::denials::warn_denied;
use crate::config::{CaptureRule, Grants, MAX_CAPTURED_LEN};
use crate::guest_text::shown;
use crate::secrets::SecretStore;
use crate::secrets::scrub::{self, Scrubber};

/// Requests one guest may have in flight at once. The host buffers each
/// request and response body (up to `http_max_body`) outside the guest's
/// memory limit, so without a bound a guest could open hundreds of large
/// uploads and push a 512 MiB board out of memory. A slot is held until the
/// guest drops the response; further requests wait for one (and meanwhile
/// the guest's body writes wait too). A guest that then waits on a queued
/// request while holding every slot in unread responses stalls until its
/// run timeout: read responses as they complete (wattedge-guest's
/// `request_all` does).
pub const MAX_REQUESTS_IN_FLIGHT: usize = 4;

/// A guest's request slots (see [`MAX_REQUESTS_IN_FLIGHT`]).
pub struct RequestSlots(Arc<tokio::sync::Semaphore>);

impl Default for RequestSlots {
    fn default() -> Self {
        RequestSlots(Arc::new(tokio::sync::Semaphore::new(MAX_REQUESTS_IN_FLIGHT)))
    }
}

/// What a guest's gate knows; immutable for the life of its store.
struct GateConfig {
    guest: Arc<str>,
    grants: Vec<HostGrant>,
    secret_grants: BTreeMap<String, Vec<HostGrant>>,
    /// The operator's capture rules: secret name → rule.
    capture: BTreeMap<String, CaptureRule>,
    secrets: Arc<SecretStore>,
    settings: Arc<HttpSettings>,
    shared: Arc<super::GuestShared>,
}

/// The `WasiHttpHooks` of one guest: grant checks, sealing, the real send,
/// capture and scrubbing.
pub struct HttpGate {
    config: Arc<GateConfig>,
}

/// Everything [`HttpGate::new`] needs from the host.
pub struct GateParts {
    pub secrets: Arc<SecretStore>,
    pub settings: Arc<HttpSettings>,
}

impl HttpGate {
    /// The gate for one guest store: its grants (parsed at config load), the shared
    /// secrets and settings; capture rules come from its grants only.
    pub fn new(guest: Arc<str>, grants: &Grants, shared: Arc<super::GuestShared>, parts: GateParts) -> HttpGate {
        let config = GateConfig {
            guest,
            grants: grants.http.clone(),
            secret_grants: grants.secrets.clone(),
            capture: grants.capture.clone(),
            secrets: parts.secrets,
            settings: parts.settings,
            shared,
        };
        HttpGate { config: Arc::new(config) }
    }
}

type IoFuture = Box<dyn Future<Output = Result<(), HttpError>> + Send>;
type SendResult = Result<(http::Response<WasiBody>, IoFuture), HttpError>;

impl WasiHttpHooks for HttpGate {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        _fut: IoFuture,
    ) -> Box<dyn Future<Output = SendResult> + Send> {
        let config = self.config.clone();
        Box::new(async move {
            let metrics = &config.shared.http;
            metrics.requests.fetch_add(1, Ordering::Relaxed);
            let began = std::time::Instant::now();
            let response = config.handle(request, options).await;
            super::add_elapsed(&metrics.nanos, began);
            Ok((response?, Box::new(async { Ok(()) }) as IoFuture))
        })
    }
}

impl GateConfig {
    async fn handle(
        &self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
    ) -> Result<http::Response<WasiBody>, HttpError> {
        let (dest, private_ok) = self.route(request.uri())?;
        let slot =
            self.shared.http_slots.0.clone().acquire_owned().await.map_err(|_| HttpError::InternalError(None))?;
        let (mut parts, body) = request.into_parts();
        let body = self.buffer_request(body).await?;
        let (body, inserted) = self.seal(&mut parts, body, &dest)?;
        let limits = self.limits(options);
        let addrs = self.addresses(&dest, private_ok, limits.connect).await?;
        prepare_headers(&mut parts.headers, &dest, body.len());
        self.metrics().bytes_out.fetch_add(body.len() as u64, Ordering::Relaxed);
        let request = http::Request::from_parts(parts, Full::new(body));
        let sent = connect::send(&dest, &addrs, request, &self.settings.tls, limits).await;
        let (head, body) = sent.map_err(|e| {
            self.metrics().error(e.kind());
            warn_denied!(self.shared.denials, self.guest, destination = %dest, error = %shown(&e), "outbound HTTP failed");
            e.to_wasi()
        })?;
        self.metrics().bytes_in.fetch_add(body.len() as u64, Ordering::Relaxed);
        tracing::debug!(guest = %self.guest, destination = %dest, status = head.status.as_u16(), "outbound HTTP");
        if let Err(error) = capture::plain_body(&head.headers) {
            // Secrets cannot be scrubbed from (or captured in) an encoded body.
            self.metrics().error("encoding");
            warn_denied!(self.shared.denials, self.guest, destination = %dest, error = %shown(&error), "outbound HTTP response refused");
            return Err(HttpError::InternalError(Some(format!("wattedge refused the response from {dest}: {error}"))));
        }
        let (body, taken) = self.capture(&dest, head.status, body, &inserted)?;
        Ok(self.deliver(head, body, self.scrubber(&inserted, taken), slot))
    }

    /// The addresses to dial, resolved by the host and checked against the
    /// private-address rule, within `limit`.
    async fn addresses(
        &self,
        dest: &Destination,
        private_ok: bool,
        limit: std::time::Duration,
    ) -> Result<Vec<std::net::SocketAddr>, HttpError> {
        let lookup = addr::resolve_for_guest(&dest.host, dest.port, &self.settings, private_ok);
        match tokio::time::timeout(limit, lookup).await {
            Ok(found) => found.map_err(|e| self.resolve_failed(dest, e)),
            Err(_) => {
                self.metrics().error("dns");
                warn_denied!(self.shared.denials, self.guest, destination = %dest, "DNS lookup timed out");
                Err(HttpError::DnsTimeout)
            }
        }
    }

    /// The checked destination and whether a grant names it as private.
    fn route(&self, uri: &http::Uri) -> Result<(Destination, bool), HttpError> {
        let dest = Destination::of(uri).map_err(|e| self.deny(uri.to_string(), &e))?;
        let matching: Vec<&HostGrant> = self.grants.iter().filter(|g| g.allows(&dest)).collect();
        if matching.is_empty() {
            return Err(self.deny(dest.to_string(), "not in grants.http"));
        }
        let private_ok = matching.iter().any(|g| g.private);
        Ok((dest, private_ok))
    }

    /// The configured timeout, overridden by the guest's wasi:http request options.
    fn limits(&self, options: Option<RequestOptions>) -> connect::Limits {
        connect::Limits {
            connect: options.and_then(|o| o.connect_timeout).unwrap_or(self.settings.timeout),
            response: options.and_then(|o| o.first_byte_timeout).unwrap_or(self.settings.timeout),
            max_body: self.settings.max_body,
        }
    }

    fn metrics(&self) -> &HttpMetrics {
        &self.shared.http
    }

    async fn buffer_request(&self, body: WasiBody) -> Result<Bytes, HttpError> {
        let limit = self.settings.max_body;
        let limited = http_body_util::Limited::new(body, usize::try_from(limit).unwrap_or(usize::MAX));
        match limited.collect().await {
            Ok(collected) => Ok(collected.to_bytes()),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                self.metrics().error("oversize");
                Err(HttpError::HttpRequestBodySize(Some(limit)))
            }
            Err(e) => match e.downcast::<HttpError>() {
                Ok(inner) => Err(*inner),
                Err(other) => Err(HttpError::InternalError(Some(format!("reading the request body: {other}")))),
            },
        }
    }

    /// Substitutes placeholders; returns the body and every inserted string.
    fn seal(
        &self,
        parts: &mut http::request::Parts,
        body: Bytes,
        dest: &Destination,
    ) -> Result<(Bytes, Vec<String>), HttpError> {
        let lookup = |name: &str| self.secret_for(name, dest);
        let mut subst = egress::Substituter::new(&lookup).limited(self.settings.max_body);
        let body = egress::seal(parts, body, &mut subst).map_err(|e| self.refuse(dest, &e))?;
        Ok((body, subst.inserted))
    }

    /// Whether secret `name` may be sent to (or captured from) `dest`.
    fn granted_for(&self, name: &str, dest: &Destination) -> bool {
        self.secret_grants.get(name).is_some_and(|hosts| {
            hosts.iter().any(|g| g.allows(dest) && (dest.scheme == "https" || g.scheme.as_deref() == Some("http")))
        })
    }

    /// The value of secret `name` if it is granted for `dest` and usable.
    fn secret_for(&self, name: &str, dest: &Destination) -> Result<String, egress::EgressError> {
        if !self.granted_for(name, dest) {
            return Err(egress::EgressError::NotGranted { name: name.into(), destination: dest.to_string() });
        }
        match self.secrets.value(name) {
            Some(v) if self.secrets.is_usable(name) => Ok(v),
            _ => Err(egress::EgressError::NotSet { name: name.into() }),
        }
    }

    fn deny(&self, destination: String, reason: &str) -> HttpError {
        self.metrics().denied.fetch_add(1, Ordering::Relaxed);
        let (destination, reason) = (shown(destination), shown(reason));
        warn_denied!(self.shared.denials, self.guest, %destination, %reason, "outbound HTTP denied");
        HttpError::HttpRequestDenied
    }

    fn refuse(&self, dest: &Destination, error: &egress::EgressError) -> HttpError {
        self.metrics().denied.fetch_add(1, Ordering::Relaxed);
        self.metrics().error(error.kind());
        warn_denied!(self.shared.denials, self.guest, destination = %shown(dest), error = %shown(error), "outbound HTTP refused");
        HttpError::InternalError(Some(format!("wattedge refused the request to {dest}: {error}")))
    }

    fn resolve_failed(&self, dest: &Destination, error: addr::ResolveError) -> HttpError {
        match error {
            addr::ResolveError::Private { .. } | addr::ResolveError::Admin { .. } => {
                self.deny(dest.to_string(), &error.to_string())
            }
            addr::ResolveError::Lookup { .. } => {
                self.metrics().error("dns");
                warn_denied!(self.shared.denials, self.guest, destination = %dest, error = %shown(&error), "outbound HTTP failed");
                HttpError::DestinationNotFound
            }
        }
    }

    /// Scrub and wrap the response for the guest.
    fn deliver(
        &self,
        mut head: http::response::Parts,
        body: Bytes,
        scrubber: Scrubber,
        slot: tokio::sync::OwnedSemaphorePermit,
    ) -> http::Response<WasiBody> {
        let body = scrubber.scrub(&body).map_or(body, Bytes::from);
        capture::scrub_headers(&mut head.headers, &scrubber);
        head.headers.remove(http::header::TRANSFER_ENCODING);
        head.headers.insert(http::header::CONTENT_LENGTH, body.len().into());
        // The body owns the request's slot: it is free once the guest drops the response.
        let body = Full::new(body)
            .map_err(move |never| {
                let _slot = &slot;
                match never {}
            })
            .boxed_unsync();
        http::Response::from_parts(head, body)
    }

    /// What this guest's answers are scrubbed of: the values of its granted
    /// secrets (and their JSON forms), `extra` values (and theirs), and
    /// every string inserted into this request. Never other guests'
    /// secrets: one guest's short captured value must not blank out text
    /// in everyone's answers.
    fn scrubber(&self, inserted: &[String], extra: Vec<String>) -> Scrubber {
        let mut values = self.secrets.values_of(self.secret_grants.keys().map(String::as_str));
        values.extend(extra);
        Scrubber::new(scrub::with_json_forms(values).into_iter().chain(inserted.iter().cloned()))
    }

    /// The capture rules that read answers from `dest`: their `from` names
    /// it, and over plain `http://` only if `from` says `http://` itself.
    fn rules_for(&self, dest: &Destination) -> Vec<capture::Applicable<'_>> {
        let over_tls = dest.scheme == "https";
        self.capture
            .iter()
            .filter(|(_, rule)| rule.from.allows(dest) && (over_tls || rule.from.scheme.as_deref() == Some("http")))
            .map(|(secret, rule)| (secret.as_str(), rule))
            .collect()
    }

    /// Applies the capture rules for `dest` before the guest sees a byte:
    /// the body to deliver and every value taken out of it. A 2xx answer to
    /// a request that carried a secret, from a host with capture rules,
    /// whose body is not JSON, is withheld: the rules cannot be applied, and
    /// it may hold a credential in a form scrubbing cannot recognise.
    fn capture(
        &self,
        dest: &Destination,
        status: http::StatusCode,
        body: Bytes,
        inserted: &[String],
    ) -> Result<(Bytes, Vec<String>), HttpError> {
        let rules = self.rules_for(dest);
        if rules.is_empty() || body.trim_ascii().is_empty() {
            return Ok((body, Vec::new()));
        }
        let known = self.scrubber(inserted, Vec::new());
        let store = |secret: &str, rule: &CaptureRule, value: &str| self.store_captured(secret, rule, value, &known);
        match capture::take_fields(&body, &rules, store) {
            Ok((rewritten, taken)) => {
                for pointer in &taken.not_values {
                    self.metrics().error("capture");
                    tracing::warn!(guest = %self.guest, destination = %dest, %pointer, "capture rule names an object or array; withheld from the guest, not stored");
                }
                Ok((rewritten.map_or(body, Bytes::from), taken.values))
            }
            Err(error) if status.is_success() && !inserted.is_empty() => {
                self.metrics().error("capture");
                warn_denied!(self.shared.denials, self.guest, destination = %dest, error = %shown(&error), "answer from a capture host withheld");
                Err(HttpError::InternalError(Some(format!(
                    "wattedge withheld the HTTP {} answer from {dest}: the request carried a secret and this host has capture rules, but {error}",
                    status.as_u16()
                ))))
            }
            // Nothing to capture in it; scrubbed as any answer is.
            Err(_) => Ok((body, Vec::new())),
        }
    }

    /// Stores `value` into `secret` by `rule`; false when refused: longer
    /// than [`MAX_CAPTURED_LEN`], or holding a secret value this request
    /// could carry (what it carried, echoed back, or any of this guest's
    /// secrets but the target's own), so that an echoing server cannot copy
    /// a secret into one granted for another host.
    fn store_captured(&self, secret: &str, rule: &CaptureRule, value: &str, known: &Scrubber) -> bool {
        let refused = if value.len() > MAX_CAPTURED_LEN {
            Some("the value is longer than the 8 KiB a captured secret may hold")
        } else if self.secrets.value(secret).as_deref() != Some(value) && known.finds_any(value.as_bytes()) {
            Some("the value holds another secret")
        } else {
            None
        };
        if let Some(reason) = refused {
            self.metrics().error("capture");
            tracing::warn!(guest = %self.guest, %secret, %reason, "capture refused");
            return false;
        }
        match self.secrets.set(secret, value, rule.ttl, rule.persist) {
            Ok(()) => true,
            Err(e) => {
                self.metrics().error("capture");
                tracing::error!(guest = %self.guest, %secret, error = %e, "storing a captured secret failed");
                false
            }
        }
    }
}

/// Overwrites `Host` from the checked destination, asks for an unencoded
/// response and fixes the framing for the (possibly rewritten) buffered body.
fn prepare_headers(headers: &mut http::HeaderMap, dest: &Destination, body_len: usize) {
    headers.remove(http::header::HOST);
    if let Ok(host) = http::HeaderValue::from_str(&dest.authority()) {
        headers.insert(http::header::HOST, host);
    }
    headers.remove(http::header::TRANSFER_ENCODING);
    headers.remove(http::header::CONTENT_LENGTH);
    // Only plain bodies come back: secrets cannot be scrubbed from compressed
    // ones (`TE` would ask for a compressed transfer coding).
    headers.remove(http::header::TE);
    headers.insert(http::header::ACCEPT_ENCODING, http::HeaderValue::from_static("identity"));
    if body_len > 0 {
        headers.insert(http::header::CONTENT_LENGTH, body_len.into());
    }
}
