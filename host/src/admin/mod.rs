//! Admin HTTP server of the wattedge host.
//!
//! This module owns the operator-facing HTTP/1.1 endpoint: liveness (`/health`),
//! readiness (`/ready`), Prometheus metrics (`/metrics`), guest inspection
//! (`/guests`, `/guests/<name>`) and the mutating operations (manual invoke,
//! counter reset). It owns routing, bearer-token authorization of mutating
//! requests, request-body limits, JSON/Prometheus rendering and the connection
//! lifecycle including graceful shutdown. It knows nothing about wasmtime or the
//! supervisor: everything it needs comes through the [`AdminBackend`] trait.

mod guard;
mod metrics;
mod page;
mod routes;
#[cfg(test)]
mod tests;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream, UnixListener};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

pub use crate::api::{
    AdminBackend, AdminError, AdminFuture, GuestSnapshot, GuestState, InvokeAccepted, LatestPoint, Lifecycle,
    RecentRun, RunRecord,
};
pub use guard::{MAX_TCP_CONNECTIONS, MAX_UNIX_CONNECTIONS};
use routes::handle;

/// Default cap on request bodies; routes needing more override it in `Route::body_limit`.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;
/// Largest component accepted by `POST /guests/NAME/swap`.
pub const MAX_COMPONENT_BYTES: usize = 32 << 20;
/// How long in-flight connections may take to finish once shutdown is requested.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);
/// Clients must send their request headers within this time.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause after a failed `accept` (e.g. EMFILE) before trying again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// The content type of every JSON answer.
pub(crate) const JSON: &str = "application/json";

/// An answer of the admin server (routes and the status page alike).
pub(crate) type Resp = hyper::Response<http_body_util::Full<bytes::Bytes>>;

/// State shared by every connection of one server (routes and the page).
pub(crate) struct Shared {
    pub(crate) backend: Arc<dyn AdminBackend>,
    pub(crate) token: Option<AdminToken>,
}

/// The token mutating requests must carry.
#[derive(Clone)]
pub enum AdminToken {
    /// A fixed token (tests, embedders).
    Fixed(String),
    /// The `admin.token` secret, read at each request (the store re-reads its
    /// file when it changes), so `wattedge secrets set admin.token` takes
    /// effect at once and the old token stops working. Unset or a
    /// placeholder refuses every mutating request.
    Secret(Arc<crate::secrets::SecretStore>),
}

impl AdminToken {
    /// The token required now, if any is usable.
    pub fn current(&self) -> Option<String> {
        match self {
            AdminToken::Fixed(token) => Some(token.clone()),
            AdminToken::Secret(store) => crate::secrets::admin_token(store),
        }
    }
}

/// Serves the admin API on `listener` until `shutdown` resolves.
///
/// After `shutdown`, the listener is closed at once, idle keep-alive connections
/// are closed, and in-flight ones get `SHUTDOWN_GRACE` (1 s) before being aborted.
/// Accept errors are logged and retried, so this only returns `Ok` today; the
/// `io::Result` leaves room for fatal listener errors.
pub async fn serve(
    listener: TcpListener,
    backend: Arc<dyn AdminBackend>,
    admin_token: Option<AdminToken>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_all(Listeners { tcp: listener, unix: None }, backend, admin_token, shutdown).await
}

/// Where the admin API listens: `host.admin_listen`, and the Unix socket in
/// `state_dir` that the CLI uses (see [`crate::host`]).
pub struct Listeners {
    pub tcp: TcpListener,
    pub unix: Option<UnixListener>,
}

/// [`serve`] on TCP and, when given, a Unix socket. At most
/// [`guard::MAX_TCP_CONNECTIONS`] TCP and [`guard::MAX_UNIX_CONNECTIONS`]
/// socket connections are served at once; TCP requests must name this
/// server in `Host` (see [`guard`]).
pub async fn serve_all(
    listeners: Listeners,
    backend: Arc<dyn AdminBackend>,
    admin_token: Option<AdminToken>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let Listeners { tcp, unix } = listeners;
    let shared = Arc::new(Shared { backend, token: admin_token });
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut conns = JoinSet::new();
    let mut shutdown = std::pin::pin!(shutdown);
    let listen = tcp.local_addr()?;
    tracing::info!(addr = %listen, "admin server listening");
    let tcp_slots = Arc::new(Semaphore::new(guard::MAX_TCP_CONNECTIONS));
    let unix_slots = Arc::new(Semaphore::new(guard::MAX_UNIX_CONNECTIONS));
    loop {
        tokio::select! {
            biased;
            () = &mut shutdown => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            accepted = tcp.accept() => match accepted {
                Ok((stream, _)) => {
                    let Ok(slot) = tcp_slots.clone().try_acquire_owned() else {
                        refuse_busy(&stream);
                        continue;
                    };
                    let hosts = stream.local_addr().ok().map(|local| guard::AllowedHosts::new(listen, local));
                    let conn = serve_connection(Box::new(stream), hosts, shared.clone(), stop_rx.clone());
                    conns.spawn(async move { conn.await; drop(slot) });
                }
                Err(err) => accept_failed(err).await,
            },
            accepted = accept_unix(unix.as_ref()) => match accepted {
                Ok(stream) => {
                    let Ok(slot) = unix_slots.clone().try_acquire_owned() else {
                        let _ = stream.try_write(guard::BUSY_RESPONSE);
                        continue;
                    };
                    let conn = serve_connection(Box::new(stream), None, shared.clone(), stop_rx.clone());
                    conns.spawn(async move { conn.await; drop(slot) });
                }
                Err(err) => accept_failed(err).await,
            },
        }
    }
    drop(tcp);
    drop(unix);
    finish(stop_tx, conns).await;
    Ok(())
}

/// The next Unix-socket connection; never, without a socket.
async fn accept_unix(unix: Option<&UnixListener>) -> std::io::Result<tokio::net::UnixStream> {
    match unix {
        Some(listener) => listener.accept().await.map(|(stream, _)| stream),
        None => std::future::pending().await,
    }
}

/// Answers a connection beyond the cap with 503 without waiting on the
/// client, and closes it.
fn refuse_busy(stream: &TcpStream) {
    let _ = stream.try_write(guard::BUSY_RESPONSE);
}

async fn accept_failed(err: std::io::Error) {
    tracing::warn!(%err, "admin server: accept failed");
    tokio::time::sleep(ACCEPT_BACKOFF).await;
}

/// Asks every connection to shut down gracefully, aborting stragglers after the grace.
async fn finish(stop: watch::Sender<bool>, mut conns: JoinSet<()>) {
    stop.send_replace(true);
    let drained = async { while conns.join_next().await.is_some() {} };
    if tokio::time::timeout(SHUTDOWN_GRACE, drained).await.is_err() {
        tracing::warn!(open = conns.len(), "admin connections outlived the grace period; aborting");
        conns.shutdown().await;
    }
    tracing::info!("admin server stopped");
}

/// A connection of either listener. Boxed so that hyper's HTTP/1 server is
/// compiled once, not once per stream type: a second copy cost the armv7
/// board binary (budget 4 MiB) tens of KB.
pub trait Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static {}

impl<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static> Stream for S {}

/// Serves one connection; `hosts` are the `Host` values it accepts (None:
/// a Unix-socket connection, where any is fine).
async fn serve_connection(
    stream: Box<dyn Stream>,
    hosts: Option<guard::AllowedHosts>,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    let hosts = hosts.map(Arc::new);
    let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        let (shared, hosts) = (shared.clone(), hosts.clone());
        async move {
            if let Some(refused) = hosts.as_deref().and_then(|h| h.refuse(req.headers())) {
                return Ok::<_, Infallible>(refused);
            }
            Ok::<_, Infallible>(handle(&shared, req).await)
        }
    });
    let mut builder = http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(HEADER_READ_TIMEOUT).keep_alive(true);
    let mut conn = std::pin::pin!(builder.serve_connection(TokioIo::new(stream), service));
    let result = tokio::select! {
        result = conn.as_mut() => result,
        () = stopping(&mut stop) => {
            // Closes idle keep-alive connections now; lets an in-flight request finish.
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(err) = result {
        tracing::debug!(%err, "admin connection ended with an error");
    }
}

/// Resolves once shutdown was requested (or the server side is gone).
async fn stopping(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stopping| *stopping).await;
}
