//! Recovery when the outbox is opened: every segment is scanned, a torn or
//! corrupt tail is cut off (logged and counted, never fatal), and the `ack`
//! cursor is trusted only when it sits on a record boundary of the oldest
//! segment.

use std::collections::VecDeque;
use std::fs::File;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::{Cursor, OutboxCounters, Segment, State, create_or_append, io_err, segment};
use crate::store::{StoreError, Timestamp};

/// The state after recovery: segments found (torn tails cut), the active
/// one opened for appending, the cursor from `ack` when it is still valid.
pub(super) fn initial_state(dir: &Path, counters: &OutboxCounters) -> Result<State, StoreError> {
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

pub(super) fn first_accepted(dir: &Path, state: &State) -> Option<Timestamp> {
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

/// Opens and locks `dir/lock`: one process per outbox.
pub(super) fn lock_dir(dir: &Path) -> Result<File, StoreError> {
    let path = dir.join("lock");
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
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
