//! Which time range a run fetches, and in which pieces.
//!
//! The incremental start comes from the newest stored point (no fixed
//! lookback), long ranges are split into chunks so each request stays small
//! and each chunk's points are written before the next is fetched, and the
//! PT1H fallback covers the part of a chunk that has no 15-minute data.
//! Pure functions, tested natively.

use crate::localtime::Nanos;

/// Nanoseconds in an hour.
pub const HOUR_NS: Nanos = 3_600_000_000_000;
/// Nanoseconds in a day.
pub const DAY_NS: Nanos = 24 * HOUR_NS;
/// Longest range one request asks for.
pub const CHUNK_NS: Nanos = 7 * DAY_NS;

/// Start of an incremental sync: the last stored point minus the buffer, or
/// `initial_days` before `now` when nothing is stored yet.
pub fn sync_start(last_stored: Option<Nanos>, now: Nanos, buffer_hours: u64, initial_days: u64) -> Nanos {
    match last_stored {
        Some(last) => last.saturating_sub(buffer_hours as Nanos * HOUR_NS),
        None => now.saturating_sub(initial_days as Nanos * DAY_NS),
    }
}

/// `[start, end)` split into consecutive pieces of at most `max` each.
pub fn chunks(start: Nanos, end: Nanos, max: Nanos) -> Vec<(Nanos, Nanos)> {
    let mut out = Vec::new();
    let mut at = start;
    while at < end && max > 0 {
        let next = at.saturating_add(max).min(end);
        out.push((at, next));
        at = next;
    }
    out
}

/// The part of `[start, end)` that 15-minute data does not cover and hourly
/// data should fill: the whole chunk when there is no 15-minute value,
/// otherwise the stretch before the first one (at least an hour long, so a
/// sync that starts a few minutes before the data does not ask for it).
pub fn hourly_gap(start: Nanos, end: Nanos, first_quarter: Option<Nanos>) -> Option<(Nanos, Nanos)> {
    match first_quarter {
        None => Some((start, end)),
        Some(first) if first.saturating_sub(start) >= HOUR_NS => Some((start, first)),
        Some(_) => None,
    }
}

/// The state record of an unfinished backfill: the rest of its range.
pub fn encode_pending(from: Nanos, to: Nanos) -> Vec<u8> {
    format!("{from} {to}").into_bytes()
}

/// Reads a state record written by [`encode_pending`]; `None` when it is
/// unreadable or empty (nothing left to do).
pub fn decode_pending(bytes: &[u8]) -> Option<(Nanos, Nanos)> {
    let text = std::str::from_utf8(bytes).ok()?;
    let (from, to) = text.trim().split_once(' ')?;
    let (from, to) = (from.parse().ok()?, to.parse().ok()?);
    (from < to).then_some((from, to))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: Nanos = 1_760_000_000_000_000_000;

    #[test]
    fn incremental_start_is_last_minus_buffer() {
        assert_eq!(sync_start(Some(NOW - DAY_NS), NOW, 2, 7), NOW - DAY_NS - 2 * HOUR_NS);
        assert_eq!(sync_start(Some(NOW), NOW, 0, 7), NOW);
        assert_eq!(sync_start(None, NOW, 2, 7), NOW - 7 * DAY_NS);
        // No fixed lookback: a point a year old still decides the start.
        assert_eq!(sync_start(Some(NOW - 365 * DAY_NS), NOW, 2, 7), NOW - 365 * DAY_NS - 2 * HOUR_NS);
    }

    #[test]
    fn chunks_cover_the_range_exactly() {
        assert_eq!(chunks(0, 10, 4), vec![(0, 4), (4, 8), (8, 10)]);
        assert_eq!(chunks(0, 8, 4), vec![(0, 4), (4, 8)]);
        assert_eq!(chunks(5, 5, 4), vec![]);
        assert_eq!(chunks(6, 5, 4), vec![]);
        let month = chunks(NOW, NOW + 31 * DAY_NS, CHUNK_NS);
        assert_eq!(month.len(), 5);
        assert_eq!(month.last(), Some(&(NOW + 28 * DAY_NS, NOW + 31 * DAY_NS)));
        assert!(month.windows(2).all(|w| w[0].1 == w[1].0));
    }

    #[test]
    fn pending_backfill_round_trips() {
        assert_eq!(decode_pending(&encode_pending(NOW, NOW + DAY_NS)), Some((NOW, NOW + DAY_NS)));
        assert_eq!(decode_pending(&encode_pending(NOW, NOW)), None, "nothing left");
        assert_eq!(decode_pending(b"garbage"), None);
        assert_eq!(decode_pending(&[0xff, 0x20]), None);
    }

    #[test]
    fn hourly_gap_fills_before_quarter_hour_data() {
        assert_eq!(hourly_gap(0, DAY_NS, None), Some((0, DAY_NS)));
        assert_eq!(hourly_gap(0, DAY_NS, Some(10 * HOUR_NS)), Some((0, 10 * HOUR_NS)));
        assert_eq!(hourly_gap(0, DAY_NS, Some(HOUR_NS / 2)), None);
        assert_eq!(hourly_gap(0, DAY_NS, Some(0)), None);
    }
}
