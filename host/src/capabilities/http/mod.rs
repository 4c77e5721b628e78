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
//! buffered, armed capture rules take fields into secrets, and every secret
//! value is scrubbed from what the guest receives ([`capture`]). Anything
//! refused is refused before a byte is sent.

mod addr;
mod capture;
mod connect;
mod egress;
pub mod grants;
mod metrics;
pub mod settings;

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use wasmtime_wasi_http::{Error as HttpError, RequestOptions, WasiBody, WasiHttpHooks};

pub use capture::{CAPTURED, REDACTED};
pub use grants::{Destination, HostGrant};
pub use metrics::{ERROR_KINDS, HttpMetrics};
pub use settings::HttpSettings;

use crate::capabilities::secrets::CaptureRule;
use crate::config::Grants;
use crate::secrets::SecretStore;

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
    secrets: Arc<SecretStore>,
    settings: Arc<HttpSettings>,
    shared: Arc<super::GuestShared>,
}

/// The `WasiHttpHooks` of one guest: grant checks, sealing, the real send,
/// capture and scrubbing.
pub struct HttpGate {
    config: Arc<GateConfig>,
    armed: Arc<Mutex<Vec<CaptureRule>>>,
}

/// Everything [`HttpGate::new`] needs from the host.
pub struct GateParts {
    pub secrets: Arc<SecretStore>,
    pub settings: Arc<HttpSettings>,
    /// The capture rules the guest armed through the `secrets` capability.
    pub armed: Arc<Mutex<Vec<CaptureRule>>>,
}

impl HttpGate {
    /// The gate for one guest store: its grants parsed once, the shared
    /// secrets and settings, and the capture rules its `secrets` capability arms.
    pub fn new(guest: Arc<str>, grants: &Grants, shared: Arc<super::GuestShared>, parts: GateParts) -> HttpGate {
        let secret_grants =
            grants.secrets.iter().map(|(name, hosts)| (name.clone(), grants::parse_all(hosts))).collect();
        let config = GateConfig {
            guest,
            grants: grants::parse_all(&grants.http),
            secret_grants,
            secrets: parts.secrets,
            settings: parts.settings,
            shared,
        };
        HttpGate { config: Arc::new(config), armed: parts.armed }
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
        // Rules apply to the next request only, whatever becomes of it.
        let rules = std::mem::take(&mut *self.armed.lock().expect("capture lock"));
        Box::new(async move {
            let metrics = &config.shared.http;
            metrics.requests.fetch_add(1, Ordering::Relaxed);
            let began = std::time::Instant::now();
            let response = config.handle(request, options, rules).await;
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
        rules: Vec<CaptureRule>,
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
            tracing::warn!(guest = %self.guest, destination = %dest, error = %e, "outbound HTTP failed");
            e.to_wasi()
        })?;
        self.metrics().bytes_in.fetch_add(body.len() as u64, Ordering::Relaxed);
        tracing::debug!(guest = %self.guest, destination = %dest, status = head.status.as_u16(), "outbound HTTP");
        if let Some(encoding) = head.headers.get(http::header::CONTENT_ENCODING).filter(|e| *e != "identity") {
            // Secrets cannot be scrubbed from (or captured in) a compressed body.
            let encoding = encoding.to_str().unwrap_or("otherwise");
            let error = format!("the response is {encoding}-encoded although only identity was accepted");
            self.metrics().error("encoding");
            tracing::warn!(guest = %self.guest, destination = %dest, %error, "outbound HTTP response refused");
            return Err(HttpError::InternalError(Some(format!("wattedge refused the response from {dest}: {error}"))));
        }
        Ok(self.deliver(head, body, &rules, inserted, slot))
    }

    /// The addresses to dial, resolved by the host and checked against the
    /// private-address rule, within `limit`.
    async fn addresses(
        &self,
        dest: &Destination,
        private_ok: bool,
        limit: std::time::Duration,
    ) -> Result<Vec<std::net::SocketAddr>, HttpError> {
        let lookup = addr::resolve(&dest.host, dest.port, &self.settings.resolve, private_ok);
        match tokio::time::timeout(limit, lookup).await {
            Ok(found) => found.map_err(|e| self.resolve_failed(dest, e)),
            Err(_) => {
                self.metrics().error("dns");
                tracing::warn!(guest = %self.guest, destination = %dest, "DNS lookup timed out");
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
        tracing::warn!(guest = %self.guest, %destination, %reason, "outbound HTTP denied");
        HttpError::HttpRequestDenied
    }

    fn refuse(&self, dest: &Destination, error: &egress::EgressError) -> HttpError {
        self.metrics().denied.fetch_add(1, Ordering::Relaxed);
        self.metrics().error(error.kind());
        tracing::warn!(guest = %self.guest, destination = %dest, %error, "outbound HTTP refused");
        HttpError::InternalError(Some(format!("wattedge refused the request to {dest}: {error}")))
    }

    fn resolve_failed(&self, dest: &Destination, error: addr::ResolveError) -> HttpError {
        match error {
            addr::ResolveError::Private { .. } => self.deny(dest.to_string(), &error.to_string()),
            addr::ResolveError::Lookup { .. } => {
                self.metrics().error("dns");
                tracing::warn!(guest = %self.guest, destination = %dest, %error, "outbound HTTP failed");
                HttpError::DestinationNotFound
            }
        }
    }

    /// Capture, scrub and wrap the response for the guest.
    fn deliver(
        &self,
        mut head: http::response::Parts,
        body: Bytes,
        rules: &[CaptureRule],
        inserted: Vec<String>,
        slot: tokio::sync::OwnedSemaphorePermit,
    ) -> http::Response<WasiBody> {
        let mut body = body.to_vec();
        if !rules.is_empty() && head.status.is_success() {
            body = self.capture(body, rules, &inserted);
        }
        let mut values = self.secrets.all_values();
        values.extend(values.clone().iter().map(|v| egress::encode(v, egress::Encoding::Json)));
        values.extend(inserted);
        let values = capture::scrub_list(values);
        if let Some(clean) = capture::scrub(&body, &values) {
            body = clean;
        }
        capture::scrub_headers(&mut head.headers, &values);
        head.headers.remove(http::header::TRANSFER_ENCODING);
        head.headers.insert(http::header::CONTENT_LENGTH, body.len().into());
        // The body owns the request's slot: it is free once the guest drops the response.
        let body = Full::new(Bytes::from(body))
            .map_err(move |never| {
                let _slot = &slot;
                match never {}
            })
            .boxed_unsync();
        http::Response::from_parts(head, body)
    }

    /// Stores the fields `rules` take from `body` into secrets, but never a
    /// value that holds a secret already: what this request carried, echoed
    /// back, or any stored secret other than the target's own. Otherwise a
    /// guest could have an echoing server copy a secret into one granted
    /// for another host.
    fn capture(&self, body: Vec<u8>, rules: &[CaptureRule], inserted: &[String]) -> Vec<u8> {
        match capture::take_fields(&body, rules) {
            Ok((rewritten, taken)) => {
                for t in taken {
                    if self.holds_another_secret(&t.rule.secret, &t.value, inserted) {
                        self.metrics().error("capture");
                        tracing::warn!(guest = %self.guest, secret = %t.rule.secret, "capture refused: the value holds another secret");
                        continue;
                    }
                    if let Err(e) = self.secrets.set(&t.rule.secret, &t.value, t.rule.ttl, t.rule.persist) {
                        self.metrics().error("capture");
                        tracing::error!(guest = %self.guest, secret = %t.rule.secret, error = %e, "storing a captured secret failed");
                    }
                }
                rewritten
            }
            Err(e) => {
                self.metrics().error("capture");
                tracing::warn!(guest = %self.guest, error = %e, "capture rules not applied");
                body
            }
        }
    }

    /// Whether `value`, about to be captured into `target`, contains a
    /// string inserted into this request or a stored secret's value (unless
    /// it is `target`'s own: a server may hand back the same token).
    fn holds_another_secret(&self, target: &str, value: &str, inserted: &[String]) -> bool {
        if self.secrets.value(target).as_deref() == Some(value) {
            return false;
        }
        let mut known = inserted.iter().cloned().chain(self.secrets.all_values());
        known.any(|secret| secret.len() >= capture::MIN_SCRUB_LEN && value.contains(secret.as_str()))
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
    // Only plain bodies come back: secrets cannot be scrubbed from compressed ones.
    headers.insert(http::header::ACCEPT_ENCODING, http::HeaderValue::from_static("identity"));
    if body_len > 0 {
        headers.insert(http::header::CONTENT_LENGTH, body_len.into());
    }
}
