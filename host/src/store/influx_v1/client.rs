//! A small keep-alive HTTP/1.1 client for the InfluxDB API (hyper's
//! connection-level client over TCP, or TLS through rustls with the
//! webpki roots for `https://` URLs).
//!
//! It is separate from the guests' outbound HTTP on purpose: the database is
//! the host's own destination (often on the LAN, so not subject to guest
//! grants), and its credentials never pass through guest code.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;

/// The largest answer read from InfluxDB (query results are capped in rows
/// too, see `capabilities::influx`): a board cannot hold an unbounded one,
/// and v1's answer is parsed into a JSON tree several times its size.
pub const MAX_ANSWER_BYTES: usize = crate::store::MAX_QUERY_BYTES;
/// Idle connections kept for reuse.
const POOL: usize = 4;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Where InfluxDB listens, parsed from `influx.url`.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub https: bool,
    pub host: String,
    pub port: u16,
    /// Path prefix (for InfluxDB behind a reverse proxy), without a trailing `/`.
    pub prefix: String,
}

impl Endpoint {
    /// Parses an `http://` or `https://` URL.
    pub fn parse(url: &str) -> Result<Endpoint, String> {
        let uri: http::Uri = url.parse().map_err(|e| format!("{url:?} is not a URL: {e}"))?;
        let https = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => return Err(format!("{url:?} must start with http:// or https://")),
        };
        let host = uri.host().filter(|h| !h.is_empty()).ok_or_else(|| format!("{url:?} has no host"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']').to_string();
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        Ok(Endpoint { https, host, port, prefix: uri.path().trim_end_matches('/').to_string() })
    }
}

/// A response, fully read.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub body: Bytes,
}

/// A keep-alive client for one endpoint.
pub struct Client {
    endpoint: Endpoint,
    tls: Option<Arc<rustls::ClientConfig>>,
    idle: Mutex<Vec<SendRequest<Full<Bytes>>>>,
}

impl Client {
    /// A client for `endpoint`; TLS is set up only for `https`.
    pub fn new(endpoint: Endpoint) -> Result<Client, String> {
        let tls = if endpoint.https { Some(Arc::new(tls_config()?)) } else { None };
        Ok(Client { endpoint, tls, idle: Mutex::new(Vec::new()) })
    }

    /// Sends one request (path relative to the URL's path) within `timeout`.
    /// Errors are transport errors (connect, TLS, timeout), already worded.
    pub async fn send(
        &self,
        request: http::request::Builder,
        path: &str,
        body: Bytes,
        timeout: Duration,
    ) -> Result<Response, String> {
        let e = &self.endpoint;
        let authority =
            if e.host.contains(':') { format!("[{}]:{}", e.host, e.port) } else { format!("{}:{}", e.host, e.port) };
        let request = request
            .uri(format!("{}{path}", e.prefix))
            .header(http::header::HOST, authority)
            .body(Full::new(body))
            .map_err(|err| format!("cannot build the request: {err}"))?;
        tokio::time::timeout(timeout, self.exchange(request))
            .await
            .map_err(|_| format!("no answer from {} within {timeout:?}", self.describe()))?
    }

    async fn exchange(&self, request: http::Request<Full<Bytes>>) -> Result<Response, String> {
        let mut sender = match self.take_idle().await {
            Some(s) => s,
            None => self.connect().await?,
        };
        let response = sender.send_request(request).await.map_err(|e| format!("{}: {e}", self.describe()))?;
        let status = response.status().as_u16();
        let body =
            http_body_util::Limited::new(response.into_body(), MAX_ANSWER_BYTES).collect().await.map_err(|e| {
                if e.is::<http_body_util::LengthLimitError>() {
                    format!(
                        "{}: the answer is larger than {MAX_ANSWER_BYTES} bytes, the most the host reads; narrow the \
                     query's time range or fields, or set a limit and query the rest in pages",
                        self.describe()
                    )
                } else {
                    format!("{}: reading the answer: {e}", self.describe())
                }
            })?;
        if !sender.is_closed() {
            let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
            if idle.len() < POOL {
                idle.push(sender);
            }
        }
        Ok(Response { status, body: body.to_bytes() })
    }

    /// An idle connection that is still open. One whose last answer was
    /// read only just now may not be ready yet (its connection task has
    /// not yet seen the end of that answer): it is waited for, not dropped,
    /// or a forwarder sending batches back to back would open a new
    /// connection for many of them.
    async fn take_idle(&self) -> Option<SendRequest<Full<Bytes>>> {
        loop {
            let mut sender = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop()?;
            if !sender.is_closed() && sender.ready().await.is_ok() {
                return Some(sender);
            }
        }
    }

    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>, String> {
        let e = &self.endpoint;
        let tcp = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect((e.host.as_str(), e.port)))
            .await
            .map_err(|_| format!("cannot connect to {}: timed out", self.describe()))?
            .map_err(|err| format!("cannot connect to {}: {err}", self.describe()))?;
        let _ = tcp.set_nodelay(true);
        match &self.tls {
            None => handshake(tcp).await,
            Some(config) => {
                let name = rustls::pki_types::ServerName::try_from(e.host.clone())
                    .map_err(|err| format!("{:?} is not a valid TLS server name: {err}", e.host))?;
                let tls = tokio_rustls::TlsConnector::from(config.clone())
                    .connect(name, tcp)
                    .await
                    .map_err(|err| format!("TLS handshake with {} failed: {err}", self.describe()))?;
                handshake(tls).await
            }
        }
    }

    fn describe(&self) -> String {
        let e = &self.endpoint;
        format!("InfluxDB at {}://{}:{}", if e.https { "https" } else { "http" }, e.host, e.port)
    }
}

async fn handshake<IO>(io: IO) -> Result<SendRequest<Full<Bytes>>, String>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| format!("HTTP handshake failed: {e}"))?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "InfluxDB connection closed");
        }
    });
    Ok(sender)
}

fn tls_config() -> Result<rustls::ClientConfig, String> {
    let roots = rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.into() };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup failed: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// Percent-encodes a query-string or form component (see [`crate::percent`]).
pub fn encode(text: &str) -> String {
    crate::percent::encode(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        let e = Endpoint::parse("https://db.example.org/influx/").unwrap();
        assert_eq!((e.https, e.host.as_str(), e.port, e.prefix.as_str()), (true, "db.example.org", 443, "/influx"));
        let e = Endpoint::parse("http://127.0.0.1:8086").unwrap();
        assert_eq!((e.https, e.port, e.prefix.as_str()), (false, 8086, ""));
        assert!(Endpoint::parse("ftp://x").unwrap_err().contains("http:// or https://"));
        assert!(Endpoint::parse("127.0.0.1:8086").is_err());
    }

    #[test]
    fn percent_encoding() {
        assert_eq!(encode("a b&c=d/é"), "a%20b%26c%3Dd%2F%C3%A9");
    }
}
