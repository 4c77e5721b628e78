//! A small client for the OCI distribution API (`/v2/…`) on the host's own
//! hyper and rustls: manifests and blobs, anonymous or with the registry's
//! token auth (`WWW-Authenticate: Bearer realm=…,service=…,scope=…`, with
//! Basic credentials from the secrets store when configured), `http://`
//! only for registries the config marks insecure.
//!
//! Everything read has a size cap and every blob is hashed while it
//! streams to disk, so a hostile registry can neither exhaust memory or
//! disk nor slip in other bytes. One connection per request: a pull is a
//! handful of requests, and no pool means no idle sockets on the board.
//! Credentials and tokens are never logged or put in errors.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http::{Method, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use sha2::{Digest as _, Sha256};

use super::Digest;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest wait for a small answer (manifests, tokens, uploads' replies).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest a blob download or upload may take.
const BLOB_TIMEOUT: Duration = Duration::from_secs(300);
/// The largest token answer read.
const MAX_TOKEN_BYTES: usize = 64 << 10;
/// Redirects followed for one blob (registries on object storage redirect once).
const MAX_REDIRECTS: usize = 3;

/// Why a registry operation failed.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("cannot reach registry {registry}: {detail}")]
    Unreachable { registry: String, detail: String },
    #[error(
        "registry {registry} refused access to {what} (HTTP {status}); for a private repository set [fleet.credentials.\"{registry}\"] and its secret"
    )]
    Denied { registry: String, what: String, status: u16 },
    #[error("registry {registry} has no {what} (HTTP 404)")]
    NotFound { registry: String, what: String },
    #[error("registry {registry}: {what}: unexpected HTTP {status}")]
    Status { registry: String, what: String, status: u16 },
    #[error("registry {registry}: {what} is larger than {limit} bytes, the most this host accepts")]
    TooLarge { registry: String, what: String, limit: u64 },
    #[error(
        "registry {registry}: digest mismatch for {what}: expected {expected}, the bytes are {actual}; the registry's copy is corrupt or was altered, so it is refused"
    )]
    DigestMismatch { registry: String, what: String, expected: String, actual: String },
    #[error("registry {registry}: token service: {detail}")]
    Token { registry: String, detail: String },
    #[error("{path}: {error}")]
    Io { path: String, error: std::io::Error },
}

impl RegistryError {
    /// The registry could not be talked to at all (as opposed to refusing
    /// or serving bad content): offline, where a cached copy is the answer.
    pub fn is_unreachable(&self) -> bool {
        match self {
            RegistryError::Unreachable { .. } => true,
            RegistryError::Status { status, .. } => *status >= 500,
            _ => false,
        }
    }
}

/// Basic credentials for a registry (values from the secrets store).
#[derive(Clone)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials({}, ***)", self.username)
    }
}

/// Where to send a request: scheme, host, port and origin-form target.
#[derive(Debug, Clone)]
struct Target {
    https: bool,
    host: String,
    port: u16,
    path: String,
}

impl Target {
    fn parse(url: &str) -> Option<Target> {
        let uri: http::Uri = url.parse().ok()?;
        let https = match uri.scheme_str()? {
            "https" => true,
            "http" => false,
            _ => return None,
        };
        let host = uri.host()?.trim_start_matches('[').trim_end_matches(']').to_string();
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_string();
        Some(Target { https, host, port, path })
    }

    fn authority(&self) -> String {
        let host = if self.host.contains(':') { format!("[{}]", self.host) } else { self.host.clone() };
        if self.port == if self.https { 443 } else { 80 } { host } else { format!("{host}:{}", self.port) }
    }
}

/// A manifest as served.
#[derive(Debug)]
pub struct Fetched {
    pub bytes: Bytes,
    /// `Docker-Content-Digest`, when the registry sent it.
    pub digest_header: Option<String>,
}

/// A client for one registry.
pub struct Registry {
    name: String,
    base: Target,
    credentials: Option<Credentials>,
    /// The `Authorization` header value that worked last (bearer or basic).
    authorization: Mutex<Option<String>>,
    tls: std::sync::Arc<rustls::ClientConfig>,
    /// Blob GETs sent (each download, redirects not counted twice).
    blob_gets: AtomicU64,
}

impl Registry {
    /// A client for `registry` (`HOST[:PORT]`): `http://` when `insecure`.
    pub fn new(registry: &str, insecure: bool, credentials: Option<Credentials>) -> Result<Registry, RegistryError> {
        let scheme = if insecure { "http" } else { "https" };
        let base = Target::parse(&format!("{scheme}://{registry}/")).ok_or_else(|| RegistryError::Unreachable {
            registry: registry.into(),
            detail: "not a HOST or HOST:PORT".into(),
        })?;
        // Also for an insecure registry: it may redirect blobs to https.
        let tls = tls_config()
            .map_err(|e| RegistryError::Unreachable { registry: registry.into(), detail: format!("TLS setup: {e}") })?;
        Ok(Registry {
            name: registry.to_string(),
            base,
            credentials,
            authorization: Mutex::new(None),
            tls: std::sync::Arc::new(tls),
            blob_gets: AtomicU64::new(0),
        })
    }

    /// How many blob downloads this client started.
    pub fn blob_gets(&self) -> u64 {
        self.blob_gets.load(Ordering::Relaxed)
    }

    /// The manifest `reference` (tag or digest) of `repository`, at most
    /// `limit` bytes; `None` when the registry has no such manifest.
    pub async fn manifest(
        &self,
        repository: &str,
        reference: &str,
        limit: u64,
    ) -> Result<Option<Fetched>, RegistryError> {
        let what = format!("manifest {repository}:{reference}");
        let path = format!("/v2/{repository}/manifests/{reference}");
        let accept = [(header::ACCEPT, super::manifest::ACCEPT.to_string())];
        let response = self.authorized(Method::GET, &path, &accept, Bytes::new(), &what).await?;
        match response.status() {
            StatusCode::OK => {}
            StatusCode::NOT_FOUND => return Ok(None),
            status => return Err(self.status_error(status, what)),
        }
        let digest_header =
            response.headers().get("docker-content-digest").and_then(|v| v.to_str().ok()).map(str::to_string);
        let bytes = self.read(response, limit, &what).await?;
        Ok(Some(Fetched { bytes, digest_header }))
    }

    /// Blob `digest` of `repository` into memory (small blobs: signatures),
    /// verified.
    pub async fn small_blob(&self, repository: &str, digest: &Digest, limit: u64) -> Result<Bytes, RegistryError> {
        let what = format!("blob {digest}");
        let response = self.blob_response(repository, digest, &what).await?;
        let bytes = self.read(response, limit, &what).await?;
        self.check_digest(&what, digest, &Digest::of(&bytes))?;
        Ok(bytes)
    }

    /// Streams blob `digest` of `repository` to `dest` (mode 0600) through
    /// a temp file, hashing as it goes: `dest` appears only when the bytes
    /// match and are at most `limit`.
    pub async fn blob_to_file(
        &self,
        repository: &str,
        digest: &Digest,
        limit: u64,
        dest: &Path,
    ) -> Result<u64, RegistryError> {
        let what = format!("blob {digest}");
        // Unique per download: two guests may pull the same blob at once.
        static DOWNLOADS: AtomicU64 = AtomicU64::new(0);
        let n = DOWNLOADS.fetch_add(1, Ordering::Relaxed);
        let tmp = dest.with_extension(format!("part-{}-{n}", std::process::id()));
        let download = async {
            let response = self.blob_response(repository, digest, &what).await?;
            self.stream(response, limit, &what, &tmp).await
        };
        let outcome = tokio::time::timeout(BLOB_TIMEOUT, download).await.unwrap_or_else(|_| {
            Err(RegistryError::Unreachable { registry: self.name.clone(), detail: format!("{what}: timed out") })
        });
        let finished = outcome.and_then(|(size, actual)| {
            self.check_digest(&what, digest, &actual)?;
            std::fs::rename(&tmp, dest).map_err(|error| io_error(dest, error))?;
            Ok(size)
        });
        if finished.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        finished
    }

    async fn blob_response(
        &self,
        repository: &str,
        digest: &Digest,
        what: &str,
    ) -> Result<hyper::Response<Incoming>, RegistryError> {
        self.blob_gets.fetch_add(1, Ordering::Relaxed);
        tracing::info!(registry = %self.name, %repository, %digest, "downloading blob");
        let path = format!("/v2/{repository}/blobs/{digest}");
        let mut response = self.authorized(Method::GET, &path, &[], Bytes::new(), what).await?;
        for _ in 0..MAX_REDIRECTS {
            if !response.status().is_redirection() {
                break;
            }
            let location = response.headers().get(header::LOCATION).and_then(|v| v.to_str().ok()).unwrap_or("");
            response = match Target::parse(location) {
                // Elsewhere (object storage): the URL carries its own authorization.
                Some(target) => self.send(Method::GET, &target, &[], Bytes::new(), None).await?,
                None if location.starts_with('/') => {
                    self.authorized(Method::GET, location, &[], Bytes::new(), what).await?
                }
                None => return Err(self.status_error(response.status(), what.to_string())),
            };
        }
        match response.status() {
            StatusCode::OK => Ok(response),
            status => Err(self.status_error(status, what.to_string())),
        }
    }

    /// `base + path` with the authorization that worked last; on a 401,
    /// the challenge is answered once (a token for its scope, or Basic).
    async fn authorized(
        &self,
        method: Method,
        path: &str,
        headers: &[(header::HeaderName, String)],
        body: Bytes,
        what: &str,
    ) -> Result<hyper::Response<Incoming>, RegistryError> {
        let target = Target { path: path.to_string(), ..self.base.clone() };
        let mut authorization = self.authorization.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let denied =
            |status: u16| RegistryError::Denied { registry: self.name.clone(), what: what.to_string(), status };
        // One send site (a smaller future): the second pass is the answered challenge.
        for answered in [false, true] {
            let response = self.send(method.clone(), &target, headers, body.clone(), authorization.as_deref()).await?;
            let status = response.status();
            let refused = status == StatusCode::UNAUTHORIZED || (answered && status == StatusCode::FORBIDDEN);
            if !refused {
                return Ok(response);
            }
            if answered {
                return Err(denied(status.as_u16()));
            }
            let challenge = response
                .headers()
                .get(header::WWW_AUTHENTICATE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            let fresh = self.answer(&challenge).await?.ok_or_else(|| denied(401))?;
            *self.authorization.lock().unwrap_or_else(|e| e.into_inner()) = Some(fresh.clone());
            authorization = Some(fresh);
        }
        Err(denied(401))
    }

    /// The `Authorization` value that answers `challenge`, if any can.
    async fn answer(&self, challenge: &str) -> Result<Option<String>, RegistryError> {
        let basic = self.credentials.as_ref().map(|c| {
            let pair = format!("{}:{}", c.username, c.password);
            format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(pair))
        });
        let Some(params) = challenge.strip_prefix("Bearer ") else {
            // `Basic realm=…` (or nothing understood): credentials if we have them.
            return Ok(basic.filter(|_| challenge.starts_with("Basic")));
        };
        let params = parse_challenge(params);
        let realm = params.iter().find(|(k, _)| k == "realm").map(|(_, v)| v.as_str()).unwrap_or("");
        let mut url = realm.to_string();
        let mut separator = if url.contains('?') { '&' } else { '?' };
        for key in ["service", "scope"] {
            for (_, value) in params.iter().filter(|(k, _)| k == key) {
                url.push(separator);
                url.push_str(&format!("{key}={}", encode(value)));
                separator = '&';
            }
        }
        let token_error = |detail: String| RegistryError::Token { registry: self.name.clone(), detail };
        let target = Target::parse(&url).ok_or_else(|| token_error(format!("realm {realm:?} is not a URL")))?;
        if !target.https && self.base.https {
            // Credentials would cross the network in the clear.
            return Err(token_error(format!("realm {realm:?} is not https://")));
        }
        let response = self.send(Method::GET, &target, &[], Bytes::new(), basic.as_deref()).await?;
        if !response.status().is_success() {
            return Err(token_error(format!("HTTP {} from {realm}", response.status().as_u16())));
        }
        let body = self.read(response, MAX_TOKEN_BYTES as u64, "token").await?;
        let answer: serde_json::Value =
            serde_json::from_slice(&body).map_err(|e| token_error(format!("unreadable answer from {realm}: {e}")))?;
        let field = |key: &str| answer.get(key).and_then(serde_json::Value::as_str).filter(|t| !t.is_empty());
        let token = field("token").or_else(|| field("access_token")).map(str::to_string);
        Ok(Some(format!("Bearer {}", token.ok_or_else(|| token_error(format!("{realm} sent no token")))?)))
    }

    /// One exchange on a fresh connection; the answer's body is not read.
    async fn send(
        &self,
        method: Method,
        target: &Target,
        headers: &[(header::HeaderName, String)],
        body: Bytes,
        authorization: Option<&str>,
    ) -> Result<hyper::Response<Incoming>, RegistryError> {
        let unreachable = |detail: String| RegistryError::Unreachable { registry: self.name.clone(), detail };
        let mut request = http::Request::builder()
            .method(method)
            .uri(&target.path)
            .header(header::HOST, target.authority())
            .header(header::USER_AGENT, concat!("wattedge/", env!("CARGO_PKG_VERSION")));
        for (name, value) in headers {
            request = request.header(name, value);
        }
        if let Some(value) = authorization {
            request = request.header(header::AUTHORIZATION, value);
        }
        let request = request.body(Full::new(body)).map_err(|e| unreachable(format!("bad request: {e}")))?;
        let exchange = async {
            let mut sender = self.connect(target).await?;
            sender.send_request(request).await.map_err(|e| unreachable(e.to_string()))
        };
        tokio::time::timeout(ANSWER_TIMEOUT, exchange)
            .await
            .map_err(|_| unreachable(format!("no answer within {ANSWER_TIMEOUT:?}")))?
    }

    async fn connect(
        &self,
        target: &Target,
    ) -> Result<hyper::client::conn::http1::SendRequest<Full<Bytes>>, RegistryError> {
        let unreachable = |detail: String| RegistryError::Unreachable { registry: self.name.clone(), detail };
        let tcp =
            tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect((target.host.as_str(), target.port)))
                .await
                .map_err(|_| unreachable(format!("connecting to {} timed out", target.authority())))?
                .map_err(|e| unreachable(format!("{}: {e}", target.authority())))?;
        let _ = tcp.set_nodelay(true);
        match target.https {
            true => {
                let name = rustls::pki_types::ServerName::try_from(target.host.clone())
                    .map_err(|e| unreachable(format!("{:?} is not a TLS server name: {e}", target.host)))?;
                let tls = tokio_rustls::TlsConnector::from(self.tls.clone())
                    .connect(name, tcp)
                    .await
                    .map_err(|e| unreachable(format!("TLS handshake with {}: {e}", target.authority())))?;
                handshake(tls).await.map_err(unreachable)
            }
            false => handshake(tcp).await.map_err(unreachable),
        }
    }

    /// The whole body, refused beyond `limit` bytes.
    async fn read(&self, response: hyper::Response<Incoming>, limit: u64, what: &str) -> Result<Bytes, RegistryError> {
        let too_large = || RegistryError::TooLarge { registry: self.name.clone(), what: what.into(), limit };
        if content_length(&response).is_some_and(|n| n > limit) {
            return Err(too_large());
        }
        let limited = http_body_util::Limited::new(response.into_body(), usize::try_from(limit).unwrap_or(usize::MAX));
        match tokio::time::timeout(ANSWER_TIMEOUT, limited.collect()).await {
            Ok(Ok(collected)) => Ok(collected.to_bytes()),
            Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(too_large()),
            Ok(Err(e)) => {
                Err(RegistryError::Unreachable { registry: self.name.clone(), detail: format!("{what}: {e}") })
            }
            Err(_) => {
                Err(RegistryError::Unreachable { registry: self.name.clone(), detail: format!("{what}: timed out") })
            }
        }
    }

    /// Writes the body to `path` (0600), at most `limit` bytes; returns its
    /// size and digest.
    async fn stream(
        &self,
        response: hyper::Response<Incoming>,
        limit: u64,
        what: &str,
        path: &Path,
    ) -> Result<(u64, Digest), RegistryError> {
        let too_large = || RegistryError::TooLarge { registry: self.name.clone(), what: what.into(), limit };
        if content_length(&response).is_some_and(|n| n > limit) {
            return Err(too_large());
        }
        // std::fs, not tokio::fs: page-cache writes of a few KB do not hold
        // the worker up, and each tokio::fs operation would add its own copy
        // of the blocking-task code to the board binary (see crate::blocking).
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)
            .map_err(|error| io_error(path, error))?;
        let (mut body, mut hasher, mut size) = (response.into_body(), Sha256::new(), 0u64);
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| RegistryError::Unreachable {
                registry: self.name.clone(),
                detail: format!("{what}: {e}"),
            })?;
            let Ok(data) = frame.into_data() else { continue };
            size += data.len() as u64;
            if size > limit {
                return Err(too_large());
            }
            hasher.update(&data);
            file.write_all(&data).map_err(|error| io_error(path, error))?;
        }
        // fsync can take a while on an SD card: off the runtime's workers.
        let synced = crate::blocking::spawn_blocking(move || file.sync_all()).await;
        synced.unwrap_or_else(|e| Err(std::io::Error::other(e))).map_err(|error| io_error(path, error))?;
        let digest =
            Digest::from_hex(&hex::encode(hasher.finalize())).map_err(|e| io_error(path, std::io::Error::other(e)))?;
        Ok((size, digest))
    }

    fn check_digest(&self, what: &str, expected: &Digest, actual: &Digest) -> Result<(), RegistryError> {
        if expected == actual {
            return Ok(());
        }
        Err(RegistryError::DigestMismatch {
            registry: self.name.clone(),
            what: what.into(),
            expected: expected.to_string(),
            actual: actual.to_string(),
        })
    }

    fn status_error(&self, status: StatusCode, what: String) -> RegistryError {
        let registry = self.name.clone();
        match status.as_u16() {
            401 | 403 => RegistryError::Denied { registry, what, status: status.as_u16() },
            404 => RegistryError::NotFound { registry, what },
            status => RegistryError::Status { registry, what, status },
        }
    }
}

/// Pushing, for `wattedge publish`.
#[cfg(feature = "publish")]
impl Registry {
    /// Uploads `bytes` as a blob unless the repository has it already.
    pub async fn push_blob(&self, repository: &str, bytes: Bytes) -> Result<Digest, RegistryError> {
        let digest = Digest::of(&bytes);
        let what = format!("blob {digest}");
        let head = self
            .authorized(Method::HEAD, &format!("/v2/{repository}/blobs/{digest}"), &[], Bytes::new(), &what)
            .await?;
        if head.status() == StatusCode::OK {
            return Ok(digest);
        }
        let start = format!("/v2/{repository}/blobs/uploads/");
        let started = self.authorized(Method::POST, &start, &[], Bytes::new(), &what).await?;
        if started.status() != StatusCode::ACCEPTED {
            return Err(self.status_error(started.status(), format!("starting the upload of {what}")));
        }
        let location = started.headers().get(header::LOCATION).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
        // The upload URL may be absolute or a path, with or without a query.
        let path = Target::parse(&location).map_or(location.clone(), |t| t.path);
        let separator = if path.contains('?') { '&' } else { '?' };
        let put = format!("{path}{separator}digest={}", encode(&digest.to_string()));
        let headers = [(header::CONTENT_TYPE, "application/octet-stream".to_string())];
        let response = tokio::time::timeout(BLOB_TIMEOUT, self.authorized(Method::PUT, &put, &headers, bytes, &what))
            .await
            .map_err(|_| RegistryError::Unreachable {
                registry: self.name.clone(),
                detail: format!("{what}: timed out"),
            })??;
        match response.status() {
            StatusCode::CREATED => Ok(digest),
            status => Err(self.status_error(status, format!("uploading {what}"))),
        }
    }

    /// Puts `bytes` (of `media_type`) as manifest `reference` (a tag or its digest).
    pub async fn push_manifest(
        &self,
        repository: &str,
        reference: &str,
        media_type: &str,
        bytes: Bytes,
    ) -> Result<Digest, RegistryError> {
        let what = format!("manifest {repository}:{reference}");
        let headers = [(header::CONTENT_TYPE, media_type.to_string())];
        let path = format!("/v2/{repository}/manifests/{reference}");
        let digest = Digest::of(&bytes);
        let response = self.authorized(Method::PUT, &path, &headers, bytes, &what).await?;
        match response.status() {
            StatusCode::CREATED | StatusCode::OK => Ok(digest),
            status => Err(self.status_error(status, format!("pushing {what}"))),
        }
    }
}

fn content_length(response: &hyper::Response<Incoming>) -> Option<u64> {
    response.headers().get(header::CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

fn io_error(path: &Path, error: std::io::Error) -> RegistryError {
    RegistryError::Io { path: path.display().to_string(), error }
}

async fn handshake<IO>(io: IO) -> Result<hyper::client::conn::http1::SendRequest<Full<Bytes>>, String>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (sender, conn) =
        hyper::client::conn::http1::handshake(TokioIo::new(io)).await.map_err(|e| format!("HTTP handshake: {e}"))?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "registry connection closed");
        }
    });
    Ok(sender)
}

fn tls_config() -> Result<rustls::ClientConfig, rustls::Error> {
    let roots = rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.into() };
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// `key="value", key=value` pairs of a challenge.
fn parse_challenge(params: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = params.trim();
    while let Some((key, after)) = rest.split_once('=') {
        let key = key.trim().trim_start_matches(',').trim().to_ascii_lowercase();
        let (value, remaining) = if let Some(quoted) = after.strip_prefix('"') {
            match quoted.find('"') {
                Some(end) => (&quoted[..end], &quoted[end + 1..]),
                None => (quoted, ""),
            }
        } else {
            match after.find(',') {
                Some(end) => (&after[..end], &after[end..]),
                None => (after, ""),
            }
        };
        out.push((key, value.to_string()));
        rest = remaining.trim_start_matches([',', ' ']);
    }
    out
}

/// Percent-encodes a query component.
fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bearer_challenge_yields_realm_service_and_every_scope() {
        let params = parse_challenge(
            r#"realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull,push""#,
        );
        assert_eq!(
            params,
            [
                ("realm".to_string(), "https://auth.example/token".to_string()),
                ("service".to_string(), "registry.example".to_string()),
                ("scope".to_string(), "repository:a/b:pull,push".to_string()),
            ]
        );
    }

    #[test]
    fn credentials_never_show_their_password() {
        let c = Credentials { username: "bot".into(), password: "hunter2".into() };
        assert!(!format!("{c:?}").contains("hunter2"));
    }

    #[test]
    fn targets_keep_port_and_query_and_omit_default_ports() {
        let t = Target::parse("http://127.0.0.1:5000/v2/x/blobs/uploads/abc?_state=1").unwrap();
        assert_eq!((t.https, t.port, t.path.as_str()), (false, 5000, "/v2/x/blobs/uploads/abc?_state=1"));
        assert_eq!(t.authority(), "127.0.0.1:5000");
        assert_eq!(Target::parse("https://ghcr.io/").unwrap().authority(), "ghcr.io");
    }
}
