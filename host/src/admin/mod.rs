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

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use hyper::StatusCode;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Serialize;
use tokio::net::{TcpListener, TcpStream, UnixListener};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

pub use guard::{MAX_TCP_CONNECTIONS, MAX_UNIX_CONNECTIONS};
use routes::{Shared, handle};

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

/// What the admin server needs from the running host.
pub trait AdminBackend: Send + Sync + 'static {
    /// Snapshots of every guest, in config order.
    fn guests(&self) -> Vec<GuestSnapshot>;
    /// Queues a manual run of `name` with string args; Err(AdminError::NotFound) for an unknown guest, Err(AdminError::Busy(..)) if it cannot be queued.
    fn invoke(&self, name: &str, args: Vec<(String, String)>) -> Result<InvokeAccepted, AdminError>;
    /// Resets the host-side counters of a guest (runs/failures stay).
    fn reset_counters(&self, name: &str) -> Result<(), AdminError>;
    /// Extra Prometheus lines from other subsystems (store, http); may be empty.
    fn extra_metrics(&self) -> String;
    /// The time-series store's status (the store produces it), served as
    /// JSON by `GET /api/store` for the status page.
    fn store_status(&self) -> crate::store::StoreStatus;
    /// The newest points (oldest first, at most `limit`) of `measurement`, for
    /// the status page's charts; only for a measurement the guest's grants name.
    /// The default answers that this backend keeps no series.
    fn series(&self, guest: &str, measurement: &str, _limit: u32) -> AdminFuture<'_, Vec<LatestPoint>> {
        let msg = format!("no series of {measurement:?} for guest {guest:?}: this host keeps no series");
        Box::pin(std::future::ready(Err(AdminError::BadRequest(msg))))
    }
    /// Validates `component` (compile, type-check, `init` in a fresh store)
    /// and installs it for guest `name`; the old version keeps running on error.
    fn swap(&self, name: &str, component: bytes::Bytes) -> AdminFuture<'_, serde_json::Value> {
        let _ = (name, component);
        Box::pin(std::future::ready(Err(AdminError::BadRequest("this host does not support swaps".into()))))
    }
    /// Restores the version that the last swap replaced.
    fn rollback(&self, name: &str) -> AdminFuture<'_, serde_json::Value> {
        let _ = name;
        Box::pin(std::future::ready(Err(AdminError::BadRequest("this host does not support rollback".into()))))
    }
}

/// A boxed future, so [`AdminBackend`] stays usable as `dyn`.
pub type AdminFuture<'a, T> = std::pin::Pin<Box<dyn Future<Output = Result<T, AdminError>> + Send + 'a>>;

/// Point-in-time view of one guest, as served by `/guests`.
#[derive(Serialize, Clone, Debug)]
pub struct GuestSnapshot {
    pub name: String,
    pub state: GuestState,
    pub detail: Option<String>,
    /// sha256 hex of the component bytes.
    pub version: Option<String>,
    pub schedule: String,
    /// `init` completed for the current component.
    pub initialized: bool,
    pub last_run: Option<RunRecord>,
    /// RFC3339 UTC.
    pub last_success: Option<String>,
    /// RFC3339 UTC.
    pub next_run: Option<String>,
    pub runs: u64,
    pub failures: u64,
    pub consecutive_failures: u64,
    pub points_written: u64,
    pub run_seconds_total: f64,
    pub last_run_seconds: Option<f64>,
    pub counters: BTreeMap<String, serde_json::Value>,
    /// The newest point of each measurement the guest wrote, by measurement
    /// (what the status page shows as "latest values"); empty before any write.
    pub latest: BTreeMap<String, LatestPoint>,
    /// Swap history and recent run times (hot swap, restart backoff).
    #[serde(flatten)]
    pub lifecycle: Lifecycle,
}

/// How a guest's component and runs changed over time.
#[derive(Serialize, Clone, Debug, Default)]
pub struct Lifecycle {
    /// The version `rollback` would restore.
    pub previous_version: Option<String>,
    /// When the current version was swapped in (RFC3339 UTC).
    pub swapped_at: Option<String>,
    /// Why the last swap from a changed component file was refused.
    pub last_swap_error: Option<String>,
    /// The guest runs quick code while its optimized code compiles in the
    /// background (a first start from `.wasm`; see README "Compiling guests").
    pub optimizing: bool,
    /// The most recent runs, oldest first (at most 32).
    pub recent_runs: Vec<RecentRun>,
}

/// One recent run: when it started, how it ended, and which version ran.
#[derive(Serialize, Clone, Debug)]
pub struct RecentRun {
    pub started: String,
    pub outcome: String,
    pub version: String,
}

/// One point as the admin API shows it: the latest write of a measurement, or
/// a row of a series.
#[derive(Serialize, Clone, Debug, PartialEq)]
pub struct LatestPoint {
    /// RFC3339 UTC.
    pub time: String,
    pub tags: BTreeMap<String, String>,
    /// Field values as JSON (numbers, booleans, strings).
    pub fields: BTreeMap<String, serde_json::Value>,
}

/// One finished run of a guest.
#[derive(Serialize, Clone, Debug)]
pub struct RunRecord {
    pub started: String,
    pub finished: String,
    pub trigger: String,
    /// "ok" | "error" | "trap" | "timeout".
    pub outcome: String,
    pub detail: Option<String>,
}

/// Lifecycle state of a guest; serialized lowercase.
#[derive(Serialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum GuestState {
    Starting,
    Ok,
    Standby,
    Degraded,
    Failed,
}

impl GuestState {
    pub const ALL: [GuestState; 5] = [Self::Starting, Self::Ok, Self::Standby, Self::Degraded, Self::Failed];

    /// The lowercase name used in JSON and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Starting => "starting",
            Self::Ok => "ok",
            Self::Standby => "standby",
            Self::Degraded => "degraded",
            Self::Failed => "failed",
        }
    }
}

impl std::fmt::Display for GuestState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Answer to an accepted manual invoke (HTTP 202).
#[derive(Serialize, Clone, Debug)]
pub struct InvokeAccepted {
    pub guest: String,
    pub queued: bool,
}

/// Failures of admin operations; each maps to one HTTP status.
#[derive(thiserror::Error, Debug, Clone)]
pub enum AdminError {
    /// Unknown guest (the payload is the requested name).
    #[error("no guest named '{0}'")]
    NotFound(String),
    #[error("cannot queue run: {0}")]
    Busy(String),
    #[error("bad request: {0}")]
    BadRequest(String),
    #[error("missing or invalid admin token; send 'Authorization: Bearer <admin token>'")]
    Unauthorized,
    /// A subsystem the request needs (e.g. the store) failed; retrying later may help.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The request conflicts with the guest's state (e.g. nothing to roll back to).
    #[error("{0}")]
    Conflict(String),
}

impl AdminError {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Busy(_) => StatusCode::CONFLICT,
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Conflict(_) => StatusCode::CONFLICT,
        }
    }
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
            AdminToken::Secret(store) => crate::host::admin_token(store),
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
