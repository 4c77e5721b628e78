//! A local HTTPS upstream for the outbound HTTP tests, with its own CA
//! generated at test time (rcgen). It records every request it receives and
//! answers by path:
//!
//! | path | answer |
//! |---|---|
//! | `/token` | `{"token": TOKEN, "refresh_token": REFRESH, "expires_in": 1800}` |
//! | `/slow` | waits 3 s, then echoes |
//! | `/hold` | waits 300 ms, then echoes; [`HttpsServer::most_held`] is the most `/hold` requests open at once |
//! | `/gzip` | echoes gzip-compressed (as any echo does when `accept-encoding` asks for gzip) |
//! | `/big` | 256 KiB of `x` |
//! | `/redirect` | 302 to `https://elsewhere.test/` |
//! | `/oauth/token` | a rotating token endpoint: `{"access_token", "refresh_token", "expires_in"}`, fresh values each call ([`HttpsServer::issued`]) |
//! | `/oauth/huge` | `{"refresh_token": 9,000 × "r"}` |
//! | `/not-json` | 200 `text/plain`, the next issued tokens form-encoded |
//! | `/flag` | `{"flag": "true", "note": "a true story"}` |
//! | `/a-lot` | 200 `text/plain`: 3 MiB of `a`, then `b!` |
//! | `/two-encodings` | gzip JSON with `content-encoding: identity` and then `content-encoding: gzip` |
//! | anything else | echo: `{"method", "path", "headers": {name: value}, "body"}`, and the request's `Authorization` in `x-echo-authorization` |
#![allow(dead_code)]

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::{Map, Value, json};

/// The token `/token` hands out.
pub const TOKEN: &str = "tok-UPSTREAM-5e1f0c9a77";
/// The refresh token `/token` hands out.
pub const REFRESH: &str = "refresh-UPSTREAM-3b8d2a61";

/// One request as the server received it.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

/// A running server.
pub struct HttpsServer {
    pub addr: SocketAddr,
    /// PEM of the CA that signed the server's certificate.
    pub ca_pem: String,
    received: Arc<Mutex<Vec<Received>>>,
    held: Arc<Held>,
    _serving: Serving,
}

/// `/hold` requests open now, and the most at once; tokens issued so far.
#[derive(Default)]
struct Held {
    now: AtomicUsize,
    most: AtomicUsize,
    issued: AtomicUsize,
    /// Makes this server's tokens unlike any other server's in the process.
    tag: String,
}

impl Held {
    fn issue(&self) -> (String, String) {
        let n = self.issued.fetch_add(1, Ordering::SeqCst) + 1;
        issued_pair(&self.tag, n)
    }
}

fn issued_pair(tag: &str, n: usize) -> (String, String) {
    (format!("acc-{tag}-{n:04}-access"), format!("ref-{tag}-{n:04}-rotated"))
}

impl HttpsServer {
    /// Starts on 127.0.0.1 with a certificate for `names` (DNS names or IPs).
    pub async fn start(names: &[&str]) -> HttpsServer {
        let received = Arc::new(Mutex::new(Vec::new()));
        static SERVERS: AtomicUsize = AtomicUsize::new(0);
        let tag = format!("{}x{}", std::process::id(), SERVERS.fetch_add(1, Ordering::SeqCst));
        let held = Arc::new(Held { tag, ..Held::default() });
        let (log, counts) = (received.clone(), held.clone());
        let (addr, ca_pem, serving) = serve_tls(names, move |req| answer(req, log.clone(), counts.clone())).await;
        HttpsServer { addr, ca_pem, received, held, _serving: serving }
    }

    /// The access and refresh token `/oauth/token` (or `/not-json`) issued
    /// at its `n`th call (from 1).
    pub fn issued(&self, n: usize) -> (String, String) {
        issued_pair(&self.held.tag, n)
    }

    /// How many token pairs were issued.
    pub fn issued_count(&self) -> usize {
        self.held.issued.load(Ordering::SeqCst)
    }

    /// The most `/hold` requests that were open at once.
    pub fn most_held(&self) -> usize {
        self.held.most.load(Ordering::SeqCst)
    }

    /// Writes the CA to `dir/ca.pem` and returns the path.
    pub fn write_ca(&self, dir: &Path) -> std::path::PathBuf {
        let path = dir.join("ca.pem");
        std::fs::write(&path, &self.ca_pem).expect("write CA");
        path
    }

    /// Every request received so far.
    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// Requests whose path starts with `prefix`.
    pub fn received_at(&self, prefix: &str) -> Vec<Received> {
        self.received().into_iter().filter(|r| r.path.starts_with(prefix)).collect()
    }
}

/// Keeps a [`serve_tls`] server running; stops it when dropped.
pub struct Serving(tokio::task::JoinHandle<()>);

impl Drop for Serving {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The plumbing every local test upstream shares (this one,
/// `watttime_server.rs`, `wattivahti_server.rs`): HTTPS on 127.0.0.1:0 with a
/// fresh test CA whose leaf certificate names `names`, HTTP/1 per connection,
/// each request's whole body read before `handler` answers it (so handlers
/// can record it). Returns the address, the CA's PEM and the server guard.
pub async fn serve_tls<H, F>(names: &[&str], handler: H) -> (SocketAddr, String, Serving)
where
    H: Fn(hyper::Request<Bytes>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = hyper::Response<Full<Bytes>>> + Send + 'static,
{
    let (ca_pem, chain, key) = certificates(names);
    let acceptor = acceptor(chain, key);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, handler) = (acceptor.clone(), handler.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else { return };
                let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let handler = handler.clone();
                    async move {
                        let (parts, body) = req.into_parts();
                        let body = body.collect().await.map(|c| c.to_bytes()).unwrap_or_default();
                        Ok::<_, Infallible>(handler(hyper::Request::from_parts(parts, body)).await)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tls), service).await;
            });
        }
    });
    (addr, ca_pem, Serving(task))
}

/// A TLS acceptor (ring provider, safe default versions) for `chain`/`key`.
fn acceptor(chain: Vec<CertificateDer<'static>>, key: PrivateKeyDer<'static>) -> tokio_rustls::TlsAcceptor {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .expect("server certificate");
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

/// Request headers as `(name, value)` pairs (values lossy UTF-8), the form
/// the test servers record.
pub fn header_pairs(headers: &hyper::HeaderMap) -> Vec<(String, String)> {
    headers.iter().map(|(k, v)| (k.to_string(), String::from_utf8_lossy(v.as_bytes()).into())).collect()
}

/// A fresh CA (PEM) and a leaf certificate chain and key for `names`.
pub fn certificates(names: &[&str]) -> (String, Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair, KeyUsagePurpose};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
    ca_params.distinguished_name.push(rcgen::DnType::CommonName, "wattedge test CA");
    let ca_key = KeyPair::generate().expect("CA key");
    let ca = ca_params.self_signed(&ca_key).expect("CA cert");
    let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    let mut leaf_params = CertificateParams::new(names).expect("leaf params");
    leaf_params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let leaf_key = KeyPair::generate().expect("leaf key");
    let leaf = leaf_params.signed_by(&leaf_key, &ca, &ca_key).expect("leaf cert");
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
    (ca.pem(), vec![leaf.der().clone()], key)
}

async fn answer(
    req: hyper::Request<Bytes>,
    log: Arc<Mutex<Vec<Received>>>,
    held: Arc<Held>,
) -> hyper::Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let received = Received {
        method: parts.method.to_string(),
        path: parts.uri.path_and_query().map(|p| p.to_string()).unwrap_or_default(),
        headers: header_pairs(&parts.headers),
        body: String::from_utf8_lossy(&body).into(),
    };
    log.lock().unwrap().push(received.clone());
    let path = parts.uri.path();
    match path {
        "/token" => {
            json_reply(200, "application/json", json!({"token": TOKEN, "refresh_token": REFRESH, "expires_in": 1800}))
        }
        "/big" => hyper::Response::new(Full::new(Bytes::from(vec![b'x'; 256 * 1024]))),
        "/oauth/token" => {
            let (access, refresh) = held.issue();
            json_reply(
                200,
                "application/json",
                json!({"access_token": access, "refresh_token": refresh, "expires_in": 3600}),
            )
        }
        "/not-json" => {
            let (access, refresh) = held.issue();
            let form = format!("access_token={access}&refresh_token={refresh}&expires_in=3600");
            hyper::Response::builder().header("content-type", "text/plain").body(Full::new(Bytes::from(form))).unwrap()
        }
        "/oauth/huge" => json_reply(200, "application/json", json!({"refresh_token": "r".repeat(9000)})),
        "/flag" => json_reply(200, "application/json", json!({"flag": "true", "note": "a true story"})),
        "/a-lot" => {
            let mut body = vec![b'a'; 3 << 20];
            body.extend_from_slice(b"b!");
            hyper::Response::builder().header("content-type", "text/plain").body(Full::new(Bytes::from(body))).unwrap()
        }
        "/two-encodings" => {
            let mut response = gzip_json_reply(echo(&received));
            let headers = response.headers_mut();
            headers.remove("content-encoding");
            headers.append("content-encoding", "identity".parse().unwrap());
            headers.append("content-encoding", "gzip".parse().unwrap());
            response
        }
        "/redirect" => hyper::Response::builder()
            .status(302)
            .header("location", "https://elsewhere.test/")
            .body(Full::new(Bytes::from_static(b"moved")))
            .unwrap(),
        _ => {
            if path == "/slow" {
                tokio::time::sleep(Duration::from_secs(3)).await;
            }
            if path == "/hold" {
                let now = held.now.fetch_add(1, Ordering::SeqCst) + 1;
                held.most.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(300)).await;
                held.now.fetch_sub(1, Ordering::SeqCst);
            }
            // Like real servers, compress when asked; `/gzip` always does.
            let asked = parts.headers.get("accept-encoding").and_then(|v| v.to_str().ok()).unwrap_or_default();
            let mut response = if asked.contains("gzip") || path == "/gzip" {
                gzip_json_reply(echo(&received))
            } else {
                json_reply(200, "application/json", echo(&received))
            };
            if let Some(auth) = parts.headers.get("authorization") {
                response.headers_mut().insert("x-echo-authorization", auth.clone());
            }
            response
        }
    }
}

/// A JSON answer compressed with gzip (`content-encoding: gzip`).
fn gzip_json_reply(value: Value) -> hyper::Response<Full<Bytes>> {
    use std::io::Write;
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(value.to_string().as_bytes()).unwrap();
    hyper::Response::builder()
        .status(200)
        .header("content-type", "application/json")
        .header("content-encoding", "gzip")
        .body(Full::new(Bytes::from(encoder.finish().unwrap())))
        .unwrap()
}

fn echo(r: &Received) -> Value {
    let headers: Map<String, Value> = r.headers.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect();
    json!({"method": r.method, "path": r.path, "headers": headers, "body": r.body})
}

/// A JSON answer with `status` and `content_type` (the test upstreams differ
/// in the `charset` they send, as the real ones do).
pub fn json_reply(status: u16, content_type: &str, value: Value) -> hyper::Response<Full<Bytes>> {
    hyper::Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(Full::new(Bytes::from(value.to_string())))
        .unwrap()
}
