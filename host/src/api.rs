//! The admin API's contract: what the supervisor serves (guest snapshots,
//! states, runs) and the [`AdminBackend`] trait the admin server calls,
//! with its errors. A leaf: the supervisor produces these types and the
//! admin server renders them, so neither depends on the other.

use std::collections::BTreeMap;

use hyper::StatusCode;
use serde::Serialize;

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
    /// For a guest following an `oci://` tag: what it follows and how the
    /// rollout stands (README "A fleet of boards").
    pub rollout: Option<RolloutStatus>,
}

/// A followed tag as `/guests/NAME` and the status page show it.
#[derive(Serialize, Clone, Debug, Default, PartialEq)]
pub struct RolloutStatus {
    /// The reference followed, `oci://REGISTRY/REPO:TAG`.
    pub reference: String,
    /// The digest (index or manifest) running now.
    pub digest: Option<String>,
    /// `following`, `gating sha256:…` or `rolled back from sha256:…`.
    pub state: String,
    /// Why the last new digest was refused (signature, digest mismatch,
    /// failed `init`, failed runs), or the registry could not be asked.
    pub last_refusal: Option<String>,
    /// When this board's poll found the tag naming a new digest (RFC 3339,
    /// once it was fetched and verified): a rollout's start, before the
    /// compile, `init` and gate.
    pub noticed: Option<String>,
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
