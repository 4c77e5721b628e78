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
//!   is acknowledged and no write came for a moment, the forwarder has the
//!   active segment swapped for a new empty one and deleted too
//!   ([`Outbox::compact`]), so a drained outbox holds one empty file.
//!
//! Size bound: when the unacknowledged bytes would exceed `max_bytes`, new
//! writes are refused with [`StoreError::Unavailable`] ("outbox full") and
//! counted in `wattedge_outbox_rejected_full_total`; nothing accepted is ever
//! evicted. The `ack` cursor is written with rename but not fsynced: after a
//! crash at most the last batches are sent again, which InfluxDB absorbs
//! (a point with the same series and timestamp overwrites itself).
//!
//! All methods block (file I/O); call them from a blocking thread.

mod metrics;
mod recover;
pub mod segment;
mod sink;

pub use segment::RecordBuf;
pub use sink::append_record;

use recover::{first_accepted, initial_state, lock_dir};

use std::collections::VecDeque;
use std::fs::File;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
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
    /// When its first record was accepted.
    first_accepted: Option<Timestamp>,
}

/// Where a [`Batch`] ends, for [`Outbox::read_batch_after`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct After(Cursor);

impl Batch {
    /// Where this batch ends.
    pub fn after(&self) -> After {
        After(Cursor { segment: self.segment, offset: self.end })
    }
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
    /// The last append covered by an fsync that failed. Linux reports a
    /// writeback error to one fsync only, so a later one succeeding proves
    /// nothing about these records: their writers are refused.
    sync_failed: AtomicU64,
    counters: OutboxCounters,
    /// Test hook: this many fsyncs fail.
    #[cfg(test)]
    fail_syncs: std::sync::atomic::AtomicU32,
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
        let created = !dir.exists();
        // 0700 whatever the umask: the points are guests' data.
        crate::private_dir::create_dir(dir).map_err(|e| io_err(format_args!("cannot create {}", dir.display()), e))?;
        let lock = lock_dir(dir)?;
        let counters = OutboxCounters::default();
        let state = initial_state(dir, &counters)?;
        // The first segment's (and a new directory's) entries are durable
        // before any append is acknowledged; rotations sync their own.
        let synced_dir = segment::sync_dir(dir).and_then(|()| match dir.parent() {
            Some(parent) if created => segment::sync_dir(parent),
            _ => Ok(()),
        });
        synced_dir.map_err(|e| io_err(format_args!("cannot fsync {}", dir.display()), e))?;
        let outbox = Outbox {
            dir: dir.to_path_buf(),
            max_bytes,
            state: Mutex::new(state),
            sync: Mutex::new(()),
            synced: AtomicU64::new(0),
            sync_failed: AtomicU64::new(0),
            counters,
            #[cfg(test)]
            fail_syncs: Default::default(),
            notify: tokio::sync::Notify::new(),
            _lock: lock,
        };
        {
            let mut state = outbox.lock();
            outbox.release_acked(&mut state)?;
            outbox.compact_locked(&mut state)?;
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
        self.append_framed(segment::encode(now_ns(), points, lines), points)
    }

    /// Appends `record` (its lines encoded in place, see [`RecordBuf`]) as one
    /// record holding `points` points; returns once it is on disk.
    pub fn append_buf(&self, record: RecordBuf, points: u32) -> Result<(), StoreError> {
        self.append_framed(record.seal(now_ns(), points), points)
    }

    fn append_framed(&self, record: Vec<u8>, points: u32) -> Result<(), StoreError> {
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

    /// Starts a new active segment; the old one is made durable first. The
    /// file and the segment list change together, so a failure part way
    /// never leaves appends going to one file and counted against another.
    /// A head acknowledged to its end while it was active (which `ack` may
    /// not delete) goes now: reads would otherwise stop at its end and
    /// never reach the new segment.
    fn rotate(&self, state: &mut State) -> Result<(), StoreError> {
        self.sync_file(&state.active, state.appended).map_err(|e| io_err("cannot fsync a segment", e))?;
        self.synced.fetch_max(state.appended, Ordering::AcqRel);
        let id = state.segments.back().map_or(1, |s| s.id + 1);
        let file = create_or_append(&self.dir, id)?;
        state.active = Arc::new(file);
        state.segments.push_back(Segment { id, len: 0, points: 0 });
        segment::sync_dir(&self.dir).map_err(|e| io_err("cannot fsync the outbox directory", e))?;
        self.release_acked(state)
    }

    /// Group commit: makes every append up to `seq` durable, sharing the
    /// fsync with whoever else is waiting.
    fn sync_to(&self, seq: u64) -> Result<(), StoreError> {
        let _guard = self.sync.lock().unwrap_or_else(|e| e.into_inner());
        if self.sync_failed.load(Ordering::Acquire) >= seq {
            return Err(StoreError::Unavailable(
                "outbox: an fsync covering this write failed (disk error?); it was not accepted".into(),
            ));
        }
        if self.synced.load(Ordering::Acquire) >= seq {
            return Ok(());
        }
        let (file, target) = {
            let state = self.lock();
            (state.active.clone(), state.appended)
        };
        self.sync_file(&file, target).map_err(|e| io_err("cannot fsync the outbox", e))?;
        self.counters.fsyncs.fetch_add(1, Ordering::Relaxed);
        self.synced.fetch_max(target, Ordering::AcqRel);
        Ok(())
    }

    /// fsyncs `file`, whose appends run up to `target`; a failure is
    /// remembered for every one of them (see `sync_failed`).
    fn sync_file(&self, file: &File, target: u64) -> std::io::Result<()> {
        #[cfg(test)]
        let injected = self.fail_syncs.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1)).is_ok();
        #[cfg(not(test))]
        let injected = false;
        let result = if injected { Err(std::io::Error::other("injected fsync failure")) } else { file.sync_data() };
        if result.is_err() {
            self.sync_failed.fetch_max(target, Ordering::AcqRel);
        }
        result
    }

    /// Reads the next records (at least one, then up to `max_points` points)
    /// after the cursor, without removing them. `None` when nothing waits.
    pub fn read_batch(&self, max_points: u64) -> Result<Option<Batch>, StoreError> {
        let (cursor, end) = {
            let state = self.lock();
            let head = state.segments.front().expect("one segment");
            (state.cursor, head.len)
        };
        let batch = self.read_from(cursor, end, max_points)?;
        if let Some(t) = batch.as_ref().and_then(|b| b.first_accepted) {
            self.lock().oldest_accepted = Some(t);
        }
        Ok(batch)
    }

    /// Reads the records right after `previous` (not yet acknowledged), as
    /// [`Outbox::read_batch`] would once `previous` is: the forwarder
    /// prepares its next batch while the current one is in flight. `None`
    /// when nothing follows or `previous` is no longer in the outbox.
    pub fn read_batch_after(&self, previous: After, max_points: u64) -> Result<Option<Batch>, StoreError> {
        let (cursor, end) = {
            let state = self.lock();
            let Some(at) = state.segments.iter().position(|s| s.id == previous.0.segment) else { return Ok(None) };
            match (&state.segments[at], state.segments.get(at + 1)) {
                (seg, _) if previous.0.offset < seg.len => {
                    (Cursor { segment: seg.id, offset: previous.0.offset }, seg.len)
                }
                (_, Some(next)) => (Cursor { segment: next.id, offset: 0 }, next.len),
                (_, None) => return Ok(None),
            }
        };
        self.read_from(cursor, end, max_points)
    }

    /// Whole records from `cursor` up to `end` of its segment: at least one,
    /// then up to `max_points` points.
    fn read_from(&self, cursor: Cursor, end: u64, max_points: u64) -> Result<Option<Batch>, StoreError> {
        if cursor.offset >= end {
            return Ok(None);
        }
        let path = segment::path(&self.dir, cursor.segment);
        let mut file = File::open(&path).map_err(|e| io_err(format_args!("cannot open {}", path.display()), e))?;
        let mut batch = Batch {
            segment: cursor.segment,
            end: cursor.offset,
            points: 0,
            lines: Vec::new(),
            records: Vec::new(),
            first_accepted: None,
        };
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
            batch.first_accepted.get_or_insert(record.accepted_ns);
            batch.end += record.size;
            batch.points += u64::from(record.points);
            if batch.lines.is_empty() {
                batch.lines = record.lines; // one write call per batch: no copy
            } else {
                batch.lines.extend_from_slice(&record.lines);
            }
            batch.records.push((batch.lines.len(), u64::from(record.points)));
        }
        Ok(Some(batch))
    }

    fn report_corrupt(&self, path: &Path, offset: u64, end: u64) {
        tracing::error!(file = %path.display(), offset, bytes = end - offset, "outbox record corrupt on disk; skipping the rest of the segment (points lost)");
        self.counters.torn_records.fetch_add(1, Ordering::Relaxed);
        self.counters.torn_bytes.fetch_add(end - offset, Ordering::Relaxed);
    }

    /// Marks `batch` delivered (or deliberately dropped): its records are
    /// released, and their disk space reclaimed with their segment (see
    /// [`Outbox::compact`] for the active one).
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

    /// Deletes fully acknowledged segments, never the active one (see
    /// [`Outbox::compact`]).
    fn release_acked(&self, state: &mut State) -> Result<(), StoreError> {
        while state.segments.len() > 1 && state.cursor.offset >= state.segments[0].len {
            let old = state.segments.pop_front().expect("head");
            let path = segment::path(&self.dir, old.id);
            std::fs::remove_file(&path).map_err(|e| io_err(format_args!("cannot delete {}", path.display()), e))?;
            state.cursor = Cursor { segment: state.segments[0].id, offset: 0 };
            state.head_acked_points = 0;
        }
        Ok(())
    }

    /// When everything is acknowledged, replaces the active segment by a new,
    /// empty one and deletes it, so a drained outbox holds one empty file.
    /// Segment ids are never reused, so a stale `ack` cursor can never point
    /// into newer records (truncating in place could, after a crash). This
    /// takes two fsyncs under the outbox lock, so the forwarder calls it once
    /// the outbox has been idle for a moment rather than after every batch:
    /// under load, acknowledged records stay in the active segment until it
    /// rotates (at [`SEGMENT_TARGET`]). Returns whether it compacted.
    pub fn compact(&self) -> Result<bool, StoreError> {
        self.compact_locked(&mut self.lock())
    }

    fn compact_locked(&self, state: &mut State) -> Result<bool, StoreError> {
        let head = &state.segments[0];
        if state.segments.len() > 1 || head.len == 0 || state.cursor.offset < head.len {
            return Ok(false);
        }
        self.rotate(state)?;
        self.release_acked(state)?;
        write_ack(&self.dir, state.cursor, state.head_acked_points);
        Ok(true)
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

fn create_or_append(dir: &Path, id: u64) -> Result<File, StoreError> {
    let path = segment::path(dir, id);
    File::options()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(&path)
        .map_err(|e| io_err(format_args!("cannot open {}", path.display()), e))
}

/// Records the cursor (rename, no fsync: see the module docs).
fn write_ack(dir: &Path, cursor: Cursor, points: u64) {
    let tmp = dir.join("ack.tmp");
    let text = format!("{} {} {points}\n", cursor.segment, cursor.offset);
    let written = File::options().write(true).create(true).truncate(true).mode(0o600).open(&tmp);
    if let Err(e) =
        written.and_then(|mut f| f.write_all(text.as_bytes())).and_then(|_| std::fs::rename(&tmp, dir.join("ack")))
    {
        tracing::warn!(error = %e, "outbox: cannot record the ack cursor; some points may be sent twice after a restart");
    }
}

#[cfg(test)]
mod tests;
