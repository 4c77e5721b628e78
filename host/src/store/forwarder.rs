//! The forwarder: one task per remote backend that moves points from the
//! [`Outbox`] to the database, so a guest's `write` never waits for the
//! network.
//!
//! Batches are bounded by points (`batch_points`) and by time (a batch is
//! sent at the latest `flush_interval` after its oldest point was accepted),
//! gzip-compressed, and removed from the outbox only once the database
//! acknowledged them. Policies:
//!
//! * transport errors, 5xx, 429 and 4xx other than 400 (auth, missing
//!   database: problems the user can fix) are retried with exponential
//!   backoff from 100 ms up to `retry_max_delay`, the same batch each time;
//! * 400 means the database can never accept (part of) the batch (a parser
//!   error, a field type conflict): it is logged with the database's message,
//!   counted in `wattedge_outbox_dropped_total`, and acknowledged, so one bad
//!   point cannot block the queue forever. InfluxDB stores the valid points
//!   of a "partial write"; a batch refused as a whole (InfluxDB 1.6 does that
//!   for a type conflict inside the batch) is split at `write`-call
//!   boundaries until only the refused calls are left, and those are dropped.

use std::io::Write as _;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tokio_util::sync::CancellationToken;

use super::outbox::{After, Batch, Outbox};
use super::{StoreError, now_ns};
use crate::metrics::Writer;

const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// How long the outbox must stay empty before its acknowledged segment is
/// reclaimed.
const COMPACT_AFTER: Duration = Duration::from_millis(500);

/// What the database said about one batch.
#[derive(Debug, Clone, PartialEq)]
pub enum Delivery {
    /// Stored.
    Stored,
    /// Can never be stored as is (HTTP 400). `partial`: the database stored
    /// the rest and refused `dropped` points; otherwise it refused the batch.
    Rejected { message: String, dropped: u64, partial: bool },
    /// Try again later; `reachable` is false when no answer came at all.
    Retry { message: String, reachable: bool },
}

/// A boxed future for [`Sink`].
pub type SinkFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A database that accepts gzip-compressed line protocol.
pub trait Sink: Send + Sync + 'static {
    /// Sends one gzip-compressed batch of `points` points.
    fn send(&self, gzipped: Bytes, points: u64) -> SinkFuture<'_, Delivery>;
    /// Whether the database answers at all.
    fn ping(&self) -> SinkFuture<'_, bool>;
}

/// Batching and retry settings (`[influx]` keys).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ForwardSettings {
    pub batch_points: u64,
    pub flush_interval: Duration,
    pub retry_max_delay: Duration,
}

/// Forwarding counters, shown in `/metrics`, and the database's state as
/// the forwarder last saw it, shown in the store's status.
#[derive(Debug, Default)]
pub struct ForwarderStats {
    pub forwarded: AtomicU64,
    pub retried: AtomicU64,
    pub dropped: AtomicU64,
    /// 1 when the last contact with the database succeeded.
    pub up: AtomicU64,
    /// Why the last delivery failed (shown as guest text: the database's
    /// words), until one succeeds.
    last_error: std::sync::Mutex<Option<String>>,
}

impl ForwarderStats {
    /// Whether the last contact with the database succeeded.
    pub fn reachable(&self) -> bool {
        self.up.load(Ordering::Relaxed) == 1
    }

    /// Why deliveries fail now; `None` once one succeeded.
    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Records the outcome of a delivery: `Some(message)` for a failure.
    fn set_last_error(&self, message: Option<&str>) {
        let shown = message.map(|m| crate::guest_text::shown(m).to_string());
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = shown;
    }

    /// Writes the forwarder's counters (`wattedge_influx_up` comes from the
    /// store's status).
    pub fn write_counters(&self, w: &mut Writer) {
        let rows = [
            ("wattedge_outbox_forwarded_total", "Points delivered to the database.", &self.forwarded),
            ("wattedge_outbox_retried_total", "Batch deliveries that failed and will be retried.", &self.retried),
            ("wattedge_outbox_dropped_total", "Points the database refused for good (HTTP 400).", &self.dropped),
        ];
        for (name, help, value) in rows {
            w.counter(name, help).value(value.load(Ordering::Relaxed));
        }
    }
}

/// Starts the forwarding task; it stops when `cancel` fires.
pub fn spawn(
    outbox: Arc<Outbox>,
    sink: Arc<dyn Sink>,
    settings: ForwardSettings,
    cancel: CancellationToken,
) -> (Arc<ForwarderStats>, tokio::task::JoinHandle<()>) {
    let stats = Arc::new(ForwarderStats::default());
    let forwarder = Forwarder { outbox, sink, settings, stats: stats.clone(), acking: AtomicU64::new(0) };
    let task = tokio::spawn(async move {
        tokio::select! {
            _ = forwarder.run() => {}
            _ = cancel.cancelled() => {}
        }
    });
    (stats, task)
}

/// A batch read from the outbox with its gzip-compressed body.
struct Prepared {
    batch: Batch,
    body: Bytes,
}

struct Forwarder {
    outbox: Arc<Outbox>,
    sink: Arc<dyn Sink>,
    settings: ForwardSettings,
    stats: Arc<ForwarderStats>,
    /// Points of the delivered batch being acknowledged, while it is.
    acking: AtomicU64,
}

impl Forwarder {
    async fn run(self) {
        let up = self.sink.ping().await;
        self.stats.up.store(u64::from(up), Ordering::Relaxed);
        let mut next: Option<Prepared> = None;
        let mut delivered: Option<Batch> = None;
        loop {
            let current = match next.take() {
                Some(prepared) => prepared,
                None => {
                    // Reading at the cursor needs the delivered batch
                    // acknowledged first, or it would be read again.
                    if let Some(batch) = delivered.take() {
                        self.ack(batch).await;
                    }
                    self.linger().await;
                    match self.read(None).await {
                        Some(prepared) => prepared,
                        None => continue,
                    }
                }
            };
            let (batch, after) = self.forward(current, delivered.take()).await;
            (delivered, next) = (Some(batch), after);
        }
    }

    /// Delivers `current` while acknowledging `previous` (delivered just
    /// before it: the acknowledgement, a file written and renamed on a
    /// blocking thread, is kept out of the gap between two requests) and
    /// preparing the batch behind `current` (see [`Forwarder::prefetch`]).
    /// Returns `current`'s batch, delivered and to be acknowledged, and the
    /// prepared one.
    async fn forward(&self, current: Prepared, previous: Option<Batch>) -> (Batch, Option<Prepared>) {
        let Prepared { batch, body } = current;
        let acked = async {
            if let Some(previous) = previous {
                self.acking.store(previous.points, Ordering::Relaxed);
                self.ack(previous).await;
                self.acking.store(0, Ordering::Relaxed);
            }
        };
        let ((), next) = tokio::join!(acked, self.deliver_and_prefetch(&batch, body));
        (batch, next)
    }

    /// Delivers `batch` and meanwhile prepares the one behind it. Once
    /// delivered, a prefetch still waiting for a full batch is dropped (the
    /// next round lingers as usual); one already reading is awaited, its
    /// work is not thrown away.
    async fn deliver_and_prefetch(&self, batch: &Batch, body: Bytes) -> Option<Prepared> {
        let reading = AtomicBool::new(false);
        let deliver = self.deliver(batch, body);
        let prefetch = self.prefetch(batch, &reading);
        tokio::pin!(deliver, prefetch);
        let (mut delivered, mut next, mut prefetched) = (false, None, false);
        while !delivered || (!prefetched && reading.load(Ordering::Relaxed)) {
            tokio::select! {
                () = &mut deliver, if !delivered => delivered = true,
                after = &mut prefetch, if !prefetched => (next, prefetched) = (after, true),
            }
        }
        next
    }

    /// Reads the batch at the outbox cursor (or right after `previous`) and
    /// compresses it, both on a blocking thread.
    async fn read(&self, previous: Option<After>) -> Option<Prepared> {
        let (outbox, max) = (self.outbox.clone(), self.settings.batch_points);
        let read = super::blocking(move || {
            let batch = match previous {
                None => outbox.read_batch(max)?,
                Some(after) => outbox.read_batch_after(after, max)?,
            };
            Ok::<_, StoreError>(batch.map(|batch| Prepared { body: gzip(&batch.lines), batch }))
        });
        match read.await {
            Ok(prepared) => prepared,
            Err(e) => {
                tracing::error!(error = %e, "outbox read failed; retrying in 1 s");
                tokio::time::sleep(Duration::from_secs(1)).await;
                None
            }
        }
    }

    /// The batch after `current`, read and compressed while `current` is in
    /// flight, so that the database is never kept waiting for the outbox
    /// (nor for gzip) while points keep coming: it waits, as long as
    /// `current` is in flight, until a full batch is queued behind it, then
    /// sets `reading` and reads it. A partial batch waits in
    /// [`Forwarder::linger`] as usual. Waiting only for a batch already
    /// queued when `current` was sent left the read and the compression
    /// between two requests whenever a guest wrote about as fast as the
    /// database took points (issue 26).
    async fn prefetch(&self, current: &Batch, reading: &AtomicBool) -> Option<Prepared> {
        // The outbox still counts a batch whose acknowledgement is under way.
        while self.outbox.depth().points
            < self.acking.load(Ordering::Relaxed) + current.points + self.settings.batch_points
        {
            self.outbox.appended().await;
        }
        reading.store(true, Ordering::Relaxed);
        self.read(Some(current.after())).await
    }

    /// Waits until a full batch is queued or the oldest queued point has
    /// waited `flush_interval`.
    async fn linger(&self) {
        loop {
            let depth = self.outbox.depth();
            if depth.points >= self.settings.batch_points {
                return;
            }
            let Some(oldest) = depth.oldest_accepted else {
                if depth.points > 0 {
                    return; // age unknown: send now rather than wait
                }
                self.idle().await;
                continue;
            };
            let waited = Duration::from_nanos(now_ns().saturating_sub(oldest).max(0) as u64);
            let Some(left) = self.settings.flush_interval.checked_sub(waited).filter(|d| !d.is_zero()) else {
                return;
            };
            tokio::select! {
                _ = self.outbox.appended() => {}
                _ = tokio::time::sleep(left) => return,
            }
        }
    }

    /// Waits for the next append while the outbox is empty; once no write
    /// came for [`COMPACT_AFTER`], has the outbox reclaim its acknowledged
    /// segment ([`Outbox::compact`]: two fsyncs, kept off the busy path).
    async fn idle(&self) {
        tokio::select! {
            _ = self.outbox.appended() => return,
            _ = tokio::time::sleep(COMPACT_AFTER) => {}
        }
        let outbox = self.outbox.clone();
        if let Err(e) = super::blocking(move || outbox.compact()).await {
            tracing::warn!(error = %e, "outbox: cannot reclaim the acknowledged segment; will try when next idle")
        }
        self.outbox.appended().await;
    }

    /// Delivers `batch`. When the database refuses a batch as a whole (a 400
    /// that is not a partial write), the batch is split at `write`-call
    /// boundaries and the halves sent separately, so only the refused calls
    /// are dropped.
    async fn deliver(&self, batch: &Batch, body: Bytes) {
        let mut work = vec![(0usize, batch.records.len())];
        let mut whole = Some(body);
        while let Some((first, last)) = work.pop() {
            if first >= last {
                continue;
            }
            let from = if first == 0 { 0 } else { batch.records[first - 1].0 };
            let lines = &batch.lines[from..batch.records[last - 1].0];
            let points: u64 = batch.records[first..last].iter().map(|r| r.1).sum();
            let body = whole.take().unwrap_or_else(|| gzip(lines));
            match self.send_until_answered(body, points).await {
                Delivery::Rejected { partial: false, .. } if last - first > 1 => {
                    let mid = first + (last - first) / 2;
                    work.push((mid, last));
                    work.push((first, mid));
                }
                Delivery::Rejected { message, dropped, partial } => {
                    let dropped = if partial { dropped.max(1) } else { points };
                    tracing::warn!(points, dropped, message = %crate::guest_text::shown(&message), "InfluxDB refused points for good; dropping them (see wattedge_outbox_dropped_total)");
                    self.stats.dropped.fetch_add(dropped, Ordering::Relaxed);
                    self.stats.forwarded.fetch_add(points.saturating_sub(dropped), Ordering::Relaxed);
                }
                _ => {
                    self.stats.forwarded.fetch_add(points, Ordering::Relaxed);
                }
            }
        }
    }

    /// Sends until the database stores or rejects the lines (never `Retry`).
    async fn send_until_answered(&self, body: Bytes, points: u64) -> Delivery {
        let mut delay = FIRST_BACKOFF;
        let mut failures = 0u64;
        loop {
            match self.sink.send(body.clone(), points).await {
                Delivery::Retry { message, reachable } => {
                    failures += 1;
                    self.stats.retried.fetch_add(1, Ordering::Relaxed);
                    self.stats.up.store(u64::from(reachable), Ordering::Relaxed);
                    self.stats.set_last_error(Some(&message));
                    if failures == 1 || failures.is_multiple_of(20) {
                        tracing::warn!(failures, retry_in = ?delay, queued = self.outbox.depth().points, message = %crate::guest_text::shown(&message), "cannot deliver to InfluxDB; points stay in the outbox");
                    }
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(self.settings.retry_max_delay);
                }
                answer => {
                    self.stats.up.store(1, Ordering::Relaxed);
                    self.stats.set_last_error(None);
                    if failures > 0 {
                        tracing::info!(failures, points, "InfluxDB answers writes again");
                    }
                    return answer;
                }
            }
        }
    }

    async fn ack(&self, batch: Batch) {
        let outbox = self.outbox.clone();
        if let Err(e) = super::blocking(move || outbox.ack(&batch)).await {
            tracing::error!(error = %e, "outbox: cannot release a delivered batch; it may be sent again")
        }
    }
}

/// gzip with the fastest level: batches are text and compress well anyway,
/// and a Pi's CPU is the scarcer resource.
pub fn gzip(data: &[u8]) -> Bytes {
    let mut encoder = flate2::write::GzEncoder::new(Vec::with_capacity(data.len() / 4), flate2::Compression::fast());
    encoder.write_all(data).expect("writing to a Vec cannot fail");
    Bytes::from(encoder.finish().expect("writing to a Vec cannot fail"))
}

#[cfg(test)]
mod tests;
