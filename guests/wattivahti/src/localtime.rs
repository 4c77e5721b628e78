//! Naive local times ↔ UTC instants in the configured time zone.
//!
//! WattiVahti reports `time` as a naive Europe/Helsinki wall-clock time with a
//! misleading trailing `Z`. This module owns turning those into instants:
//! on the autumn day the repeated hour's two occurrences are told apart by
//! the order in which the records for the same wall-clock time arrive and by
//! the requested `[start, stop)` window; on the spring day a wall-clock time
//! that does not exist is rejected, never guessed. It also parses the
//! backfill arguments (local dates or date-times) and formats the
//! `start`/`stop` query values (local time with its offset).
//!
//! Everything here is pure (jiff with its bundled tz database), so it is
//! tested natively.

use std::collections::BTreeMap;

use jiff::Timestamp;
use jiff::civil::{Date, DateTime};
use jiff::tz::{AmbiguousOffset, TimeZone};

/// A UTC instant in nanoseconds since the epoch (the WIT `timestamp`).
pub type Nanos = i64;

/// One record as the API sent it: naive local time and quantity (kWh).
#[derive(Clone, Debug, PartialEq)]
pub struct LocalRecord {
    /// Wall-clock time in the configured zone.
    pub local: DateTime,
    /// Consumption in kWh; `None` for a null quantity.
    pub kwh: Option<f64>,
}

/// A record placed on the time line.
#[derive(Clone, Debug, PartialEq)]
pub struct Placed {
    /// UTC instant of the record.
    pub time: Nanos,
    /// Consumption in kWh; `None` for a null quantity.
    pub kwh: Option<f64>,
}

/// Why a record was not placed; each becomes a warning in the host log.
#[derive(Clone, Debug, PartialEq)]
pub enum Rejected {
    /// The wall-clock time does not exist (the spring-forward gap).
    Nonexistent(DateTime),
    /// No occurrence of the wall-clock time lies in the requested window.
    OutsideWindow(DateTime),
    /// More records for this wall-clock time than it has occurrences in the window.
    Surplus(DateTime),
}

impl std::fmt::Display for Rejected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Nonexistent(t) => write!(f, "record at local time {t} rejected: that time does not exist (DST gap)"),
            Self::OutsideWindow(t) => write!(f, "record at local time {t} rejected: outside the requested window"),
            Self::Surplus(t) => {
                write!(f, "record at local time {t} rejected: more records for this time than it occurs in the window")
            }
        }
    }
}

/// Looks up an IANA zone in the bundled tz database.
pub fn zone(name: &str) -> Result<TimeZone, String> {
    TimeZone::get(name).map_err(|e| format!("unknown time zone {name:?}: {e}"))
}

/// Nanoseconds of a jiff timestamp (saturating; API times are far from the limits).
pub fn nanos(ts: Timestamp) -> Nanos {
    i64::try_from(ts.as_nanosecond()).unwrap_or(i64::MAX)
}

/// A jiff timestamp from nanoseconds.
pub fn timestamp(ns: Nanos) -> Timestamp {
    Timestamp::from_nanosecond(i128::from(ns)).unwrap_or(Timestamp::UNIX_EPOCH)
}

/// Parses an API `time` such as `2025-10-26T03:00:00Z` as a naive local time:
/// the trailing `Z` (and fractional seconds) carry no meaning.
pub fn parse_api_time(text: &str) -> Result<DateTime, String> {
    let naive = text.trim().trim_end_matches(['Z', 'z']);
    naive.parse::<DateTime>().map_err(|e| format!("unreadable time {text:?}: {e}"))
}

/// The instants (ascending) at which wall-clock time `local` occurs in `tz`:
/// one normally, two in the autumn fold, none in the spring gap.
pub fn occurrences(tz: &TimeZone, local: DateTime) -> Vec<Nanos> {
    let at = |offset: jiff::tz::Offset| offset.to_timestamp(local).ok().map(nanos);
    match tz.to_ambiguous_timestamp(local).offset() {
        AmbiguousOffset::Unambiguous { offset } => at(offset).into_iter().collect(),
        AmbiguousOffset::Gap { .. } => Vec::new(),
        AmbiguousOffset::Fold { before, after } => {
            let mut v: Vec<Nanos> = at(before).into_iter().chain(at(after)).collect();
            v.sort_unstable();
            v
        }
    }
}

/// Places `records` (in the order the API sent them) on the time line.
///
/// The k-th record for a wall-clock time gets the k-th occurrence of that
/// time inside `[start, stop)`. So the repeated autumn hour works whether
/// its records come in pairs (03:00, 03:00, 03:15, ...) or in two runs
/// (03:00 ... 03:45, 03:00 ... 03:45), and a window that starts inside the
/// repeated hour's second occurrence maps its records there. Null quantities
/// are placed too (so they keep their slot) and skipped by the caller.
/// The result is sorted by time.
pub fn place(records: &[LocalRecord], tz: &TimeZone, start: Nanos, stop: Nanos) -> (Vec<Placed>, Vec<Rejected>) {
    let mut seen: BTreeMap<DateTime, usize> = BTreeMap::new();
    let mut placed = Vec::new();
    let mut rejected = Vec::new();
    for record in records {
        let all = occurrences(tz, record.local);
        if all.is_empty() {
            rejected.push(Rejected::Nonexistent(record.local));
            continue;
        }
        let inside: Vec<Nanos> = all.into_iter().filter(|t| (start..stop).contains(t)).collect();
        if inside.is_empty() {
            rejected.push(Rejected::OutsideWindow(record.local));
            continue;
        }
        let k = seen.entry(record.local).or_insert(0);
        match inside.get(*k) {
            Some(&time) => placed.push(Placed { time, kwh: record.kwh }),
            None => rejected.push(Rejected::Surplus(record.local)),
        }
        *k += 1;
    }
    placed.sort_by_key(|p| p.time);
    (placed, rejected)
}

/// A query value for `start`/`stop`: local time with its offset, e.g.
/// `2025-10-26T03:00:00+03:00`.
/// Written out by hand: jiff's `strftime` would add its whole format
/// interpreter (about 30 KB of guest code) for this one fixed format.
pub fn format_query_time(tz: &TimeZone, ns: Nanos) -> String {
    let offset = tz.to_offset(timestamp(ns));
    let local = offset.to_datetime(timestamp(ns));
    let seconds = offset.seconds();
    let sign = if seconds < 0 { '-' } else { '+' };
    let (hours, minutes) = (seconds.abs() / 3600, seconds.abs() % 3600 / 60);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}{sign}{hours:02}:{minutes:02}",
        local.year(),
        local.month(),
        local.day(),
        local.hour(),
        local.minute(),
        local.second()
    )
}

/// Which end of a backfill range an argument is.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum End {
    /// `start=`: a date means the start of that day.
    Start,
    /// `end=`: a date means the end of that day (the next midnight), so
    /// `start=2024-01-01 end=2024-01-31` covers all of January; a date-time
    /// is exclusive.
    End,
}

/// Parses a backfill argument: `2024-01-01`, `2024-01-01T06:00`,
/// `2024-01-01 06:00:00` (local time in `tz`); a time in the DST gap moves
/// forward, an ambiguous one takes the earlier occurrence.
pub fn parse_range_arg(tz: &TimeZone, text: &str, end: End) -> Result<Nanos, String> {
    let text = text.trim();
    let date_only = !text.contains(['T', 't', ' ']);
    let local = if let Some(date) = text.parse::<Date>().ok().filter(|_| date_only) {
        let date = match end {
            End::Start => date,
            End::End => date.tomorrow().map_err(|e| format!("{text:?}: {e}"))?,
        };
        date.to_datetime(jiff::civil::Time::midnight())
    } else {
        text.replacen(' ', "T", 1).parse::<DateTime>().map_err(|_| {
            format!("{text:?} is not a date or local date-time; use e.g. 2024-01-31 or 2024-01-31T06:00")
        })?
    };
    let zoned = tz.to_ambiguous_zoned(local).compatible().map_err(|e| format!("{text:?}: {e}"))?;
    Ok(nanos(zoned.timestamp()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: Nanos = 3_600_000_000_000;
    const MIN: Nanos = 60_000_000_000;

    fn helsinki() -> TimeZone {
        zone("Europe/Helsinki").expect("bundled tzdb has Helsinki")
    }

    fn utc(text: &str) -> Nanos {
        nanos(text.parse::<Timestamp>().expect("RFC 3339"))
    }

    fn rec(local: &str, kwh: f64) -> LocalRecord {
        LocalRecord { local: parse_api_time(local).expect("time"), kwh: Some(kwh) }
    }

    fn times(placed: &[Placed]) -> Vec<Nanos> {
        placed.iter().map(|p| p.time).collect()
    }

    /// Naive local quarter-hours of a day from 00:00 to 23:45.
    fn day_locals(date: &str) -> Vec<String> {
        (0..96).map(|i| format!("{date}T{:02}:{:02}:00Z", i / 4, (i % 4) * 15)).collect()
    }

    #[test]
    fn api_time_ignores_the_z() {
        let t = parse_api_time("2025-10-26T03:00:00Z").unwrap();
        assert_eq!(t.to_string(), "2025-10-26T03:00:00");
        assert!(parse_api_time("2025-10-26T03:00:00.000").is_ok());
        assert!(parse_api_time("yesterday").is_err());
        assert!(zone("Mars/Olympus").is_err());
    }

    #[test]
    fn ordinary_winter_and_summer_times() {
        let tz = helsinki();
        assert_eq!(occurrences(&tz, parse_api_time("2025-01-15T12:00:00").unwrap()), vec![utc("2025-01-15T10:00:00Z")]);
        assert_eq!(occurrences(&tz, parse_api_time("2025-07-15T12:00:00").unwrap()), vec![utc("2025-07-15T09:00:00Z")]);
    }

    #[test]
    fn autumn_day_in_pairs_maps_first_occurrence_first() {
        let tz = helsinki();
        let mut records = Vec::new();
        for (i, local) in day_locals("2025-10-26").iter().enumerate() {
            records.push(rec(local, i as f64));
            if local.contains("T03:") {
                records.push(rec(local, 1000.0 + i as f64));
            }
        }
        assert_eq!(records.len(), 100);
        let (start, stop) = (utc("2025-10-25T21:00:00Z"), utc("2025-10-26T22:00:00Z"));
        let (placed, rejected) = place(&records, &tz, start, stop);
        assert!(rejected.is_empty(), "{rejected:?}");
        assert_eq!(placed.len(), 100);
        let expected: Vec<Nanos> = (0..100).map(|i| start + i * 15 * MIN).collect();
        assert_eq!(times(&placed), expected, "every quarter-hour of the 25-hour day once");
        let at = |t: &str| placed.iter().find(|p| p.time == utc(t)).unwrap().kwh.unwrap();
        assert_eq!(at("2025-10-26T00:00:00Z"), 12.0, "03:00 first occurrence");
        assert_eq!(at("2025-10-26T01:00:00Z"), 1012.0, "03:00 second occurrence");
        assert_eq!(at("2025-10-26T01:45:00Z"), 1015.0);
        assert_eq!(at("2025-10-26T02:00:00Z"), 16.0, "04:00 local is after the fold");
    }

    #[test]
    fn autumn_day_in_two_runs_and_any_record_order_gives_the_same() {
        let tz = helsinki();
        let (start, stop) = (utc("2025-10-25T21:00:00Z"), utc("2025-10-26T22:00:00Z"));
        let mut runs = Vec::new();
        for pass in 0..2 {
            for m in [0, 15, 30, 45] {
                runs.push(rec(&format!("2025-10-26T03:{m:02}:00Z"), (pass * 100 + m) as f64));
            }
        }
        // Reverse the hour order but keep each wall-clock time's occurrences in order.
        let mut shuffled = runs.clone();
        shuffled.sort_by_key(|r| std::cmp::Reverse(r.local));
        for records in [runs, shuffled] {
            let (placed, rejected) = place(&records, &tz, start, stop);
            assert!(rejected.is_empty());
            let kwh: Vec<f64> = placed.iter().map(|p| p.kwh.unwrap()).collect();
            assert_eq!(kwh, vec![0.0, 15.0, 30.0, 45.0, 100.0, 115.0, 130.0, 145.0]);
            assert_eq!(placed[0].time, utc("2025-10-26T00:00:00Z"));
            assert_eq!(placed[4].time, utc("2025-10-26T01:00:00Z"));
        }
    }

    #[test]
    fn window_starting_inside_the_second_occurrence() {
        let tz = helsinki();
        let start = utc("2025-10-26T01:00:00Z"); // 03:00 local, second time
        let records = vec![rec("2025-10-26T03:00:00Z", 1.0), rec("2025-10-26T03:15:00Z", 2.0)];
        let (placed, rejected) = place(&records, &tz, start, start + HOUR);
        assert!(rejected.is_empty());
        assert_eq!(times(&placed), vec![start, start + 15 * MIN]);
        // A third record for the same time in this window has no slot left.
        let records = vec![rec("2025-10-26T03:00:00Z", 1.0), rec("2025-10-26T03:00:00Z", 9.0)];
        let (placed, rejected) = place(&records, &tz, start, start + HOUR);
        assert_eq!(placed.len(), 1);
        assert_eq!(rejected, vec![Rejected::Surplus(parse_api_time("2025-10-26T03:00:00").unwrap())]);
    }

    #[test]
    fn window_ending_inside_the_first_occurrence() {
        let tz = helsinki();
        let stop = utc("2025-10-26T00:30:00Z"); // 03:30 local, first time
        let records = vec![rec("2025-10-26T03:00:00Z", 1.0), rec("2025-10-26T03:45:00Z", 2.0)];
        let (placed, rejected) = place(&records, &tz, stop - HOUR, stop);
        assert_eq!(times(&placed), vec![utc("2025-10-26T00:00:00Z")]);
        assert_eq!(rejected, vec![Rejected::OutsideWindow(parse_api_time("2025-10-26T03:45:00").unwrap())]);
    }

    #[test]
    fn spring_day_rejects_the_missing_hour() {
        let tz = helsinki();
        let records: Vec<LocalRecord> =
            day_locals("2025-03-30").iter().enumerate().map(|(i, l)| rec(l, i as f64)).collect();
        let (start, stop) = (utc("2025-03-29T22:00:00Z"), utc("2025-03-30T21:00:00Z"));
        let (placed, rejected) = place(&records, &tz, start, stop);
        assert_eq!(placed.len(), 92);
        assert_eq!(rejected.len(), 4);
        assert!(rejected.iter().all(|r| matches!(r, Rejected::Nonexistent(t) if t.hour() == 3)));
        assert!(rejected[0].to_string().contains("does not exist"));
        let at = |t: &str| placed.iter().find(|p| p.time == utc(t)).map(|p| p.kwh.unwrap());
        assert_eq!(at("2025-03-30T00:45:00Z"), Some(11.0), "02:45 local");
        assert_eq!(at("2025-03-30T01:00:00Z"), Some(16.0), "04:00 local");
        let expected: Vec<Nanos> = (0..92).map(|i| start + i * 15 * MIN).collect();
        assert_eq!(times(&placed), expected);
    }

    #[test]
    fn null_quantities_keep_their_slot() {
        let tz = helsinki();
        let records = vec![
            LocalRecord { local: parse_api_time("2025-10-26T03:00:00").unwrap(), kwh: None },
            rec("2025-10-26T03:00:00", 5.0),
        ];
        let (placed, _) = place(&records, &tz, utc("2025-10-25T21:00:00Z"), utc("2025-10-26T22:00:00Z"));
        assert_eq!(placed[1], Placed { time: utc("2025-10-26T01:00:00Z"), kwh: Some(5.0) });
    }

    #[test]
    fn query_times_carry_the_local_offset() {
        let tz = helsinki();
        assert_eq!(format_query_time(&tz, utc("2025-10-25T21:00:00Z")), "2025-10-26T00:00:00+03:00");
        assert_eq!(format_query_time(&tz, utc("2025-10-26T01:00:00Z")), "2025-10-26T03:00:00+02:00");
        assert_eq!(format_query_time(&tz, utc("2025-01-01T12:34:56Z")), "2025-01-01T14:34:56+02:00");
        // Offsets west of UTC and with minutes, as `%:z` writes them.
        let west = zone("America/St_Johns").unwrap();
        assert_eq!(format_query_time(&west, utc("2025-01-01T12:00:00Z")), "2025-01-01T08:30:00-03:30");
        let east = zone("Asia/Kathmandu").unwrap();
        assert_eq!(format_query_time(&east, utc("2025-01-01T00:00:00Z")), "2025-01-01T05:45:00+05:45");
    }

    #[test]
    fn backfill_arguments() {
        let tz = helsinki();
        assert_eq!(parse_range_arg(&tz, "2024-01-01", End::Start), Ok(utc("2023-12-31T22:00:00Z")));
        assert_eq!(parse_range_arg(&tz, "2024-01-31", End::End), Ok(utc("2024-01-31T22:00:00Z")));
        assert_eq!(parse_range_arg(&tz, "2024-06-01T06:30", End::End), Ok(utc("2024-06-01T03:30:00Z")));
        assert_eq!(parse_range_arg(&tz, "2024-06-01 06:30:00", End::Start), Ok(utc("2024-06-01T03:30:00Z")));
        assert_eq!(parse_range_arg(&tz, "2025-03-30T03:30", End::Start), Ok(utc("2025-03-30T01:30:00Z")));
        assert_eq!(parse_range_arg(&tz, "2025-10-26T03:30", End::Start), Ok(utc("2025-10-26T00:30:00Z")));
        let err = parse_range_arg(&tz, "last week", End::Start).unwrap_err();
        assert!(err.contains("2024-01-31"), "{err}");
    }
}
