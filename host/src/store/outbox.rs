//! The durable outbox of the remote (InfluxDB) backends: points a guest's
//! `write` accepted live here, fsynced, until the forwarder has delivered
//! them, so an InfluxDB outage, a `kill -9` or a power cut loses nothing.
//!
//! Telegraf's disk buffer failed in four ways (its issues 16314, 18528,
//! 18085, 16696); each has a rule here:
//!
//! * **Restarts**: everything not acknowledged is found again on open, from
//!   the segment files and the `ack` cursor.
//! * **Corrupt tail**: records carry length + CRC-32 (see [`segment`]); a torn
//!   or corrupt tail is cut off on open, logged, and counted in
//!   `wattedge_outbox_torn_records_total` / `_bytes_total`; it never stops
//!   the host from starting.
//! * **fsync per metric**: one `write` call is one record and one fsync, and
//!   concurrent writers share an fsync (group commit: whoever holds the sync
//!   lock syncs everything appended so far, and the others find their record
//!   already durable).
//! * **Never truncated**: acknowledged segments are deleted; once everything
//!   is acknowledged the active segment is swapped for a new empty one and
//!   deleted too, so a drained outbox holds one empty file.
//!
//! Size bound: when the unacknowledged bytes would exceed `max_bytes`, new
//! writes are refused with [`StoreError::Unavailable`] ("outbox full") and
//! counted in `wattedge_outbox_rejected_full_total`; nothing accepted is ever
//! evicted. The `ack` cursor is written with rename but not fsynced: after a
//! crash at most the last batches are sent again, which InfluxDB absorbs
//! (a point with the same series and timestamp overwrites itself).
//!
//! All methods block (file I/O); call them from a blocking thread.

pub mod segment;

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::fs::File;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::{StoreError, Timestamp, now_ns};

/// A new segment is started when the active one would grow past this.
const SEGMENT_TARGET: u64 = 4 << 20;

/// One segment file.
#[derive(Debug)]
struct Segment {
    id: u64,
    /// Bytes of complete records.
    len: u64,
    /// Points in those records.
    points: u64,
}

/// The first unacknowledged byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Cursor {
    segment: u64,
    offset: u64,
}

struct State {
    /// Oldest first; the last one is the active (append) segment.
    segments: VecDeque<Segment>,
    active: Arc<File>,
    cursor: Cursor,
    /// Points of the head segment before the cursor.
    head_acked_points: u64,
    /// Sequence number of the last append.
    appended: u64,
    /// When the oldest unacknowledged point was accepted.
    oldest_accepted: Option<Timestamp>,
}

/// A run of records read for forwarding; acknowledge it with [`Outbox::ack`].
#[derive(Debug, Clone)]
pub struct Batch {
    segment: u64,
    end: u64,
    /// Points in `lines`.
    pub points: u64,
    /// Line protocol, one line per point.
    pub lines: Vec<u8>,
    /// End offset in `lines` and point count of each record (one per
    /// `write` call), so a refused batch can be split at call boundaries.
    pub records: Vec<(usize, u64)>,
}

/// The queue's current size, for metrics and the forwarder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Depth {
    pub points: u64,
    pub bytes: u64,
    pub oldest_accepted: Option<Timestamp>,
}

/// Counters of what the outbox refused or lost.
#[derive(Debug, Default)]
pub struct OutboxCounters {
    pub rejected_full: AtomicU64,
    pub torn_records: AtomicU64,
    pub torn_bytes: AtomicU64,
    /// fsyncs of appended records (fewer than appends when writers share one).
    pub fsyncs: AtomicU64,
}

/// The outbox directory, opened exclusively by one process.
pub struct Outbox {
    dir: PathBuf,
    max_bytes: u64,
    state: Mutex<State>,
    /// Held while fsyncing; see the group commit in [`Outbox::append`].
    sync: Mutex<()>,
    synced: AtomicU64,
    counters: OutboxCounters,
    /// Wakes the forwarder after an append.
    notify: tokio::sync::Notify,
    _lock: File,
}

fn io_err(what: impl std::fmt::Display, e: std::io::Error) -> StoreError {
    StoreError::Unavailable(format!("outbox: {what}: {e}"))
}

impl Outbox {
    /// Opens (or creates) the outbox in `dir`, recovering from a torn tail.
    pub fn open(dir: &Path, max_bytes: u64) -> Result<Outbox, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| io_err(format_args!("cannot create {}", dir.display()), e))?;
        let lock = lock_dir(dir)?;
        let counters = OutboxCounters::default();
        let state = initial_state(dir, &counters)?;
        let outbox = Outbox {
            dir: dir.to_path_buf(),
            max_bytes,
            state: Mutex::new(state),
            sync: Mutex::new(()),
            synced: AtomicU64::new(0),
            counters,
            notify: tokio::sync::Notify::new(),
            _lock: lock,
        };
        {
            let mut state = outbox.lock();
            outbox.release_acked(&mut state)?;
            if depth_of(&state).points > 0 {
                state.oldest_accepted = first_accepted(dir, &state);
            }
        }
        Ok(outbox)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends `points` points (`lines`, line protocol) as one record and
    /// returns once it is on disk. Refuses the write when the outbox is full.
    pub fn append(&self, lines: &[u8], points: u32) -> Result<(), StoreError> {
        let record = segment::encode(now_ns(), points, lines);
        let seq = {
            let mut state = self.lock();
            self.check_room(&state, record.len() as u64, points)?;
            self.append_locked(&mut state, &record, points)?
        };
        self.notify.notify_one();
        self.sync_to(seq)
    }

    fn check_room(&self, state: &State, size: u64, points: u32) -> Result<(), StoreError> {
        if size > self.max_bytes || size > segment::MAX_PAYLOAD {
            return Err(StoreError::Invalid(format!(
                "a write of {points} points takes {size} bytes, more than the outbox can hold ({} bytes, influx.outbox_max_bytes); write fewer points per call",
                self.max_bytes
            )));
        }
        let depth = depth_of(state);
        if depth.bytes + size > self.max_bytes {
            self.counters.rejected_full.fetch_add(u64::from(points), Ordering::Relaxed);
            return Err(StoreError::Unavailable(format!(
                "outbox full: {} points ({} bytes) wait for InfluxDB and influx.outbox_max_bytes is {}; this write of {points} points was not accepted (nothing accepted earlier is dropped); check that InfluxDB is reachable",
                depth.points, depth.bytes, self.max_bytes
            )));
        }
        Ok(())
    }

    fn append_locked(&self, state: &mut State, record: &[u8], points: u32) -> Result<u64, StoreError> {
        let active_len = state.segments.back().map_or(0, |s| s.len);
        if active_len > 0 && active_len + record.len() as u64 > SEGMENT_TARGET {
            self.rotate(state)?;
        }
        let seg = state.segments.back_mut().expect("active segment");
        if let Err(e) = (&*state.active).write_all(record) {
            // Cut the partial record so the file stays a clean sequence.
            let _ = state.active.set_len(seg.len);
            return Err(io_err(format_args!("cannot append to {}", segment::path(&self.dir, seg.id).display()), e));
        }
        let was_empty = depth_of(state).points == 0;
        let seg = state.segments.back_mut().expect("active segment");
        seg.len += record.len() as u64;
        seg.points += u64::from(points);
        if was_empty {
            state.oldest_accepted = Some(now_ns());
        }
        state.appended += 1;
        Ok(state.appended)
    }

    /// Starts a new active segment; the old one is made durable first.
    fn rotate(&self, state: &mut State) -> Result<(), StoreError> {
        state.active.sync_data().map_err(|e| io_err("cannot fsync a segment", e))?;
        self.synced.fetch_max(state.appended, Ordering::AcqRel);
        let id = state.segments.back().map_or(1, |s| s.id + 1);
        state.active = Arc::new(create_or_append(&self.dir, id)?);
        segment::sync_dir(&self.dir).map_err(|e| io_err("cannot fsync the outbox directory", e))?;
        state.segments.push_back(Segment { id, len: 0, points: 0 });
        Ok(())
    }

    /// Group commit: makes every append up to `seq` durable, sharing the
    /// fsync with whoever else is waiting.
    fn sync_to(&self, seq: u64) -> Result<(), StoreError> {
        let _guard = self.sync.lock().unwrap_or_else(|e| e.into_inner());
        if self.synced.load(Ordering::Acquire) >= seq {
            return Ok(());
        }
        let (file, target) = {
            let state = self.lock();
            (state.active.clone(), state.appended)
        };
        file.sync_data().map_err(|e| io_err("cannot fsync the outbox", e))?;
        self.counters.fsyncs.fetch_add(1, Ordering::Relaxed);
        self.synced.fetch_max(target, Ordering::AcqRel);
        Ok(())
    }

    /// Reads the next records (at least one, then up to `max_points` points)
    /// after the cursor, without removing them. `None` when nothing waits.
    pub fn read_batch(&self, max_points: u64) -> Result<Option<Batch>, StoreError> {
        let (cursor, end) = {
            let state = self.lock();
            let head = state.segments.front().expect("one segment");
            (state.cursor, head.len)
        };
        if cursor.offset >= end {
            return Ok(None);
        }
        let path = segment::path(&self.dir, cursor.segment);
        let mut file = File::open(&path).map_err(|e| io_err(format_args!("cannot open {}", path.display()), e))?;
        let mut batch =
            Batch { segment: cursor.segment, end: cursor.offset, points: 0, lines: Vec::new(), records: Vec::new() };
        let mut first_accepted = None;
        while batch.end < end && (batch.points == 0 || batch.points < max_points) {
            let read = segment::read_at(&mut file, batch.end, end).map_err(|e| io_err(path.display(), e))?;
            let Some(record) = read else {
                self.report_corrupt(&path, batch.end, end);
                batch.end = end;
                break;
            };
            if batch.points > 0 && batch.points + u64::from(record.points) > max_points {
                break;
            }
            first_accepted.get_or_insert(record.accepted_ns);
            batch.end += record.size;
            batch.points += u64::from(record.points);
            batch.lines.extend_from_slice(&record.lines);
            batch.records.push((batch.lines.len(), u64::from(record.points)));
        }
        if let Some(t) = first_accepted {
            self.lock().oldest_accepted = Some(t);
        }
        Ok(Some(batch))
    }

    fn report_corrupt(&self, path: &Path, offset: u64, end: u64) {
        tracing::error!(file = %path.display(), offset, bytes = end - offset, "outbox record corrupt on disk; skipping the rest of the segment (points lost)");
        self.counters.torn_records.fetch_add(1, Ordering::Relaxed);
        self.counters.torn_bytes.fetch_add(end - offset, Ordering::Relaxed);
    }

    /// Marks `batch` delivered (or deliberately dropped): its records are
    /// released and their disk space reclaimed.
    pub fn ack(&self, batch: &Batch) -> Result<(), StoreError> {
        let mut state = self.lock();
        if state.cursor.segment != batch.segment || batch.end < state.cursor.offset {
            return Ok(()); // already acknowledged
        }
        state.cursor.offset = batch.end;
        state.head_acked_points += batch.points;
        self.release_acked(&mut state)?;
        write_ack(&self.dir, state.cursor, state.head_acked_points);
        if depth_of(&state).points == 0 {
            state.oldest_accepted = None;
        }
        Ok(())
    }

    /// Deletes fully acknowledged segments. When everything is acknowledged
    /// the active segment is replaced by a new, empty one first: segment ids
    /// are never reused, so a stale `ack` cursor can never point into newer
    /// records (truncating in place could, after a crash).
    fn release_acked(&self, state: &mut State) -> Result<(), StoreError> {
        if state.segments.len() == 1 && state.segments[0].len > 0 && state.cursor.offset >= state.segments[0].len {
            self.rotate(state)?;
        }
        while state.segments.len() > 1 && state.cursor.offset >= state.segments[0].len {
            let old = state.segments.pop_front().expect("head");
            let path = segment::path(&self.dir, old.id);
            std::fs::remove_file(&path).map_err(|e| io_err(format_args!("cannot delete {}", path.display()), e))?;
            state.cursor = Cursor { segment: state.segments[0].id, offset: 0 };
            state.head_acked_points = 0;
        }
        Ok(())
    }

    /// What waits to be forwarded.
    pub fn depth(&self) -> Depth {
        depth_of(&self.lock())
    }

    /// Resolves after the next append (or at once if one happened since the
    /// last call).
    pub async fn appended(&self) {
        self.notify.notified().await;
    }

    /// The refusal and loss counters.
    pub fn counters(&self) -> &OutboxCounters {
        &self.counters
    }

    /// Prometheus lines for the outbox.
    pub fn metrics(&self, out: &mut String) {
        let d = self.depth();
        let age = d.oldest_accepted.map_or(0.0, |t| (now_ns().saturating_sub(t)).max(0) as f64 / 1e9);
        let c = &self.counters;
        let rows: [(&str, &str, &str, String); 7] = [
            ("wattedge_outbox_points", "gauge", "Points waiting in the outbox", d.points.to_string()),
            ("wattedge_outbox_bytes", "gauge", "Bytes of records waiting in the outbox", d.bytes.to_string()),
            (
                "wattedge_outbox_oldest_point_age_seconds",
                "gauge",
                "Age of the oldest waiting point",
                format!("{age:.3}"),
            ),
            (
                "wattedge_outbox_rejected_full_total",
                "counter",
                "Points refused because the outbox was full",
                load(&c.rejected_full),
            ),
            (
                "wattedge_outbox_torn_records_total",
                "counter",
                "Torn or corrupt records cut off (their points are lost)",
                load(&c.torn_records),
            ),
            (
                "wattedge_outbox_torn_bytes_total",
                "counter",
                "Bytes of torn or corrupt records cut off",
                load(&c.torn_bytes),
            ),
            (
                "wattedge_outbox_fsyncs_total",
                "counter",
                "fsyncs of appended records (shared by concurrent writers)",
                load(&c.fsyncs),
            ),
        ];
        for (name, kind, help, value) in rows {
            let _ = writeln!(out, "# HELP {name} {help}.\n# TYPE {name} {kind}\n{name} {value}");
        }
    }
}

/// The state after recovery: segments found (torn tails cut), the active
/// one opened for appending, the cursor from `ack` when it is still valid.
fn initial_state(dir: &Path, counters: &OutboxCounters) -> Result<State, StoreError> {
    let (mut segments, boundaries) = recover(dir, counters)?;
    if segments.is_empty() {
        segments.push_back(Segment { id: 1, len: 0, points: 0 });
    }
    let active = Arc::new(create_or_append(dir, segments.back().expect("one segment").id)?);
    let head = segments.front().expect("one segment");
    let mut state = State {
        cursor: Cursor { segment: head.id, offset: 0 },
        head_acked_points: 0,
        segments,
        active,
        appended: 0,
        oldest_accepted: None,
    };
    if let Some((cursor, points)) = read_ack(dir)
        && cursor.segment == state.cursor.segment
        && (cursor.offset == 0 || boundaries.contains(&cursor.offset))
    {
        state.cursor = cursor;
        state.head_acked_points = points.min(state.segments[0].points);
    }
    Ok(state)
}

fn load(a: &AtomicU64) -> String {
    a.load(Ordering::Relaxed).to_string()
}

fn depth_of(state: &State) -> Depth {
    let points: u64 = state.segments.iter().map(|s| s.points).sum();
    let bytes: u64 = state.segments.iter().map(|s| s.len).sum();
    Depth {
        points: points - state.head_acked_points.min(points),
        bytes: bytes - state.cursor.offset.min(bytes),
        oldest_accepted: state.oldest_accepted,
    }
}

fn lock_dir(dir: &Path) -> Result<File, StoreError> {
    let path = dir.join("lock");
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| io_err(format_args!("cannot open {}", path.display()), e))?;
    file.try_lock().map_err(|_| {
        StoreError::Unavailable(format!(
            "outbox {} is in use by another wattedge process; stop it or give this one another host.state_dir",
            dir.display()
        ))
    })?;
    Ok(file)
}

fn create_or_append(dir: &Path, id: u64) -> Result<File, StoreError> {
    let path = segment::path(dir, id);
    File::options()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(|e| io_err(format_args!("cannot open {}", path.display()), e))
}

/// Scans every segment, cutting torn tails; returns the segments and the
/// record boundaries of the oldest (to validate the ack cursor).
fn recover(dir: &Path, counters: &OutboxCounters) -> Result<(VecDeque<Segment>, Vec<u64>), StoreError> {
    let ids = segment::list(dir).map_err(|e| io_err(format_args!("cannot list {}", dir.display()), e))?;
    let mut segments = VecDeque::new();
    let mut head_boundaries = Vec::new();
    for id in ids {
        let path = segment::path(dir, id);
        let scan = segment::scan(&path).map_err(|e| io_err(format_args!("cannot read {}", path.display()), e))?;
        if scan.torn_bytes > 0 {
            tracing::warn!(file = %path.display(), offset = scan.valid_len, bytes = scan.torn_bytes,
                "outbox: torn or corrupt record after a crash; cutting it off (the points in it were never acknowledged to a guest, or are lost)");
            counters.torn_records.fetch_add(1, Ordering::Relaxed);
            counters.torn_bytes.fetch_add(scan.torn_bytes, Ordering::Relaxed);
            let file = File::options().write(true).open(&path).map_err(|e| io_err(path.display(), e))?;
            file.set_len(scan.valid_len).and_then(|_| file.sync_all()).map_err(|e| io_err(path.display(), e))?;
        }
        if segments.is_empty() {
            head_boundaries = scan.boundaries;
        }
        segments.push_back(Segment { id, len: scan.valid_len, points: scan.points });
    }
    Ok((segments, head_boundaries))
}

fn first_accepted(dir: &Path, state: &State) -> Option<Timestamp> {
    let head = state.segments.front()?;
    let mut file = File::open(segment::path(dir, head.id)).ok()?;
    segment::read_at(&mut file, state.cursor.offset, head.len).ok().flatten().map(|r| r.accepted_ns)
}

fn read_ack(dir: &Path) -> Option<(Cursor, u64)> {
    let text = std::fs::read_to_string(dir.join("ack")).ok()?;
    let mut parts = text.split_whitespace().map(|p| p.parse::<u64>().ok());
    let (segment, offset, points) = (parts.next()??, parts.next()??, parts.next()??);
    Some((Cursor { segment, offset }, points))
}

/// Records the cursor (rename, no fsync: see the module docs).
fn write_ack(dir: &Path, cursor: Cursor, points: u64) {
    let tmp = dir.join("ack.tmp");
    let text = format!("{} {} {points}\n", cursor.segment, cursor.offset);
    if let Err(e) = std::fs::write(&tmp, text).and_then(|_| std::fs::rename(&tmp, dir.join("ack"))) {
        tracing::warn!(error = %e, "outbox: cannot record the ack cursor; some points may be sent twice after a restart");
    }
}

#[cfg(test)]
mod tests;

/// Encodes `points` as line protocol and appends them to `outbox` as one
/// record on a blocking thread; returns once they are durable. Shared by the
/// remote backends' `write`.
pub async fn append_points(outbox: &Arc<Outbox>, points: &[crate::store::Point]) -> Result<u32, StoreError> {
    let lines = crate::store::line_protocol::encode_points(points)?;
    let count = u32::try_from(points.len()).map_err(|_| StoreError::Invalid("too many points in one write".into()))?;
    let outbox = outbox.clone();
    tokio::task::spawn_blocking(move || outbox.append(lines.as_bytes(), count))
        .await
        .map_err(|e| StoreError::Unavailable(format!("outbox task failed: {e}")))??;
    Ok(count)
}
