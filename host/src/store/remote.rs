//! What the remote backends (InfluxDB v1 and v2) share: the durable outbox
//! their writes go to, and the forwarder task that delivers it to the server
//! through the backend's [`Sink`] until the backend is dropped.

use std::path::Path;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::forwarder::{self, ForwardSettings, ForwarderStats, Sink};
use super::outbox::{self, Outbox, OutboxSink};
use super::{Point, StoreError};
use crate::config::OutboxConfig;

impl From<&OutboxConfig> for ForwardSettings {
    fn from(outbox: &OutboxConfig) -> ForwardSettings {
        ForwardSettings {
            batch_points: outbox.batch_points,
            flush_interval: outbox.flush_interval,
            retry_max_delay: outbox.retry_max_delay,
        }
    }
}

/// An outbox and the forwarder draining it; dropping it stops the forwarder
/// (what is still queued stays on disk for the next start).
pub(super) struct Forwarded {
    outbox: Arc<Outbox>,
    stats: Arc<ForwarderStats>,
    stop: CancellationToken,
    task: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Forwarded {
    /// Opens the outbox in `dir` (refusing writes beyond `max_bytes` unsent)
    /// and starts forwarding it to `sink`. Must be called inside a tokio runtime.
    pub(super) fn start(
        dir: &Path,
        max_bytes: u64,
        sink: Arc<dyn Sink>,
        settings: ForwardSettings,
    ) -> Result<Forwarded, StoreError> {
        let outbox = Arc::new(Outbox::open(dir, max_bytes)?);
        let waiting = outbox.depth().points;
        if waiting > 0 {
            tracing::info!(points = waiting, "outbox holds points from before the restart; forwarding them");
        }
        let stop = CancellationToken::new();
        let (stats, task) = forwarder::spawn(outbox.clone(), sink, settings, stop.clone());
        Ok(Forwarded { outbox, stats, stop, task: std::sync::Mutex::new(Some(task)) })
    }

    /// Stops the forwarder and waits until it has let go of the outbox (its
    /// lock file too), so a host started next in this process can open it.
    pub(super) async fn stop(&self) {
        self.stop.cancel();
        let task = self.task.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }

    pub(super) fn outbox(&self) -> &Arc<Outbox> {
        &self.outbox
    }

    /// Appends `points` durably; returns once they are fsynced.
    pub(super) async fn append(&self, points: &[Point]) -> Result<u32, StoreError> {
        if points.is_empty() {
            return Ok(0);
        }
        outbox::append_points(&self.outbox, points).await
    }

    /// Where guests' points go directly; `no_unsigned` names a database
    /// without unsigned integers (see [`OutboxSink`]).
    pub(super) fn sink(&self, no_unsigned: Option<&'static str>) -> OutboxSink {
        OutboxSink { outbox: self.outbox.clone(), no_unsigned }
    }

    /// The outbox's and the forwarder's `/metrics` lines.
    pub(super) fn metrics(&self) -> String {
        let mut out = String::new();
        self.outbox.metrics(&mut out);
        self.stats.metrics(&mut out);
        out
    }
}

impl Drop for Forwarded {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
