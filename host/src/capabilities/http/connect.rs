//! The actual I/O: dial exactly the addresses that passed the checks (no
//! second DNS lookup), TLS with rustls, one HTTP/1.1 exchange with hyper,
//! and the whole response buffered under a size limit and a deadline.
//! Redirects are never followed here: a 3xx goes back to the guest as is.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::config::grants::Destination;

/// Limits of one exchange.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub connect: Duration,
    pub response: Duration,
    pub max_body: u64,
}

/// Why a send failed; the kind is what `/metrics` counts.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("cannot connect to {0}: {1}")]
    Connect(String, std::io::Error),
    #[error("TLS handshake with {0} failed: {1}")]
    Tls(String, std::io::Error),
    #[error("connecting timed out after {0:?}")]
    ConnectTimeout(Duration),
    #[error("the response did not arrive within {0:?}")]
    Timeout(Duration),
    #[error("the response body is larger than host.http_max_body ({0} bytes)")]
    Oversize(u64),
    #[error("HTTP protocol error: {0}")]
    Protocol(#[from] hyper::Error),
    #[error("the request target {0:?} is not a valid origin-form path")]
    Target(String),
}

impl SendError {
    /// A short label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            SendError::Connect(..) => "connect",
            SendError::Tls(..) => "tls",
            SendError::Timeout(_) | SendError::ConnectTimeout(_) => "timeout",
            SendError::Oversize(_) => "oversize",
            SendError::Protocol(_) => "protocol",
            SendError::Target(_) => "protocol",
        }
    }

    /// The wasi:http error the guest receives.
    pub fn to_wasi(&self) -> wasmtime_wasi_http::Error {
        use wasmtime_wasi_http::Error as E;
        match self {
            SendError::Connect(..) => E::ConnectionRefused,
            SendError::Tls(..) => E::TlsCertificateError,
            SendError::ConnectTimeout(_) => E::ConnectionTimeout,
            SendError::Timeout(_) => E::ConnectionReadTimeout,
            SendError::Oversize(limit) => E::HttpResponseBodySize(Some(*limit)),
            SendError::Protocol(_) => E::HttpProtocolError,
            SendError::Target(_) => E::HttpRequestUriInvalid,
        }
    }
}

trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}

/// Sends `request` to `dest` over one of `addrs`; returns the response head
/// and its whole body.
pub async fn send(
    dest: &Destination,
    addrs: &[SocketAddr],
    mut request: http::Request<Full<Bytes>>,
    tls: &Arc<rustls::ClientConfig>,
    limits: Limits,
) -> Result<(http::response::Parts, Bytes), SendError> {
    let stream = tokio::time::timeout(limits.connect, dial(dest, addrs, tls))
        .await
        .map_err(|_| SendError::ConnectTimeout(limits.connect))??;
    *request.uri_mut() = origin_form(request.uri())?;
    let exchange = async {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        let conn = tokio::spawn(conn);
        let result = receive(sender.send_request(request).await?, limits.max_body).await;
        conn.abort();
        result
    };
    tokio::time::timeout(limits.response, exchange).await.map_err(|_| SendError::Timeout(limits.response))?
}

/// The request target hyper sends on the wire: the URI's path and query,
/// the path never empty (a guest may hand over `?x=1`, which has none).
fn origin_form(uri: &http::Uri) -> Result<http::Uri, SendError> {
    let (path, query) = (uri.path(), uri.query());
    let path = if path.is_empty() { "/" } else { path };
    let target = match query {
        Some(q) => format!("{path}?{q}"),
        None => path.to_string(),
    };
    target.parse().map_err(|_| SendError::Target(target))
}

async fn dial(
    dest: &Destination,
    addrs: &[SocketAddr],
    tls: &Arc<rustls::ClientConfig>,
) -> Result<Box<dyn Io>, SendError> {
    let mut last = std::io::Error::other("no address");
    for addr in addrs {
        match TcpStream::connect(addr).await {
            Ok(tcp) if dest.scheme == "https" => return handshake(dest, tcp, tls).await,
            Ok(tcp) => return Ok(Box::new(tcp)),
            Err(e) => last = e,
        }
    }
    Err(SendError::Connect(dest.to_string(), last))
}

async fn handshake(
    dest: &Destination,
    tcp: TcpStream,
    tls: &Arc<rustls::ClientConfig>,
) -> Result<Box<dyn Io>, SendError> {
    use rustls::pki_types::ServerName;
    let name = match dest.host.parse::<std::net::IpAddr>() {
        Ok(ip) => ServerName::from(ip),
        Err(_) => ServerName::try_from(dest.host.clone())
            .map_err(|e| SendError::Tls(dest.to_string(), std::io::Error::other(e)))?,
    };
    let connector = tokio_rustls::TlsConnector::from(tls.clone());
    let stream = connector.connect(name, tcp).await.map_err(|e| SendError::Tls(dest.to_string(), e))?;
    Ok(Box::new(stream))
}

async fn receive(
    response: http::Response<hyper::body::Incoming>,
    max_body: u64,
) -> Result<(http::response::Parts, Bytes), SendError> {
    let (parts, mut body) = response.into_parts();
    let mut buf = Vec::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            if (buf.len() + data.len()) as u64 > max_body {
                return Err(SendError::Oversize(max_body));
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok((parts, Bytes::from(buf)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_query_without_a_path_is_sent_with_the_root_path() {
        let uri: http::Uri = "http://a.test:81?x=1".parse().unwrap();
        assert_eq!(origin_form(&uri).unwrap(), "/?x=1");
        let uri: http::Uri = "https://a.test/p/q?y=2&z".parse().unwrap();
        assert_eq!(origin_form(&uri).unwrap(), "/p/q?y=2&z");
        assert_eq!(origin_form(&"http://a.test".parse().unwrap()).unwrap(), "/");
    }
}
