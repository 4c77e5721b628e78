//! The one duration grammar of wattedge, shared by the host's config
//! (`wattedge.toml`: timeouts, backoffs, retention, `every` schedules) and
//! the guests' config (`guests/common`: `lookback = "5m"`), so a duration
//! that works in one place works in the other.
//!
//! A duration is one or more groups of a whole number and a unit, optionally
//! separated by whitespace: `30s`, `1500ms`, `1h30m`, `1h 30m`, `90d`,
//! `2 hours`. A lone `0` is zero. The units (humantime's, which the host
//! used before):
//!
//! | unit | spellings |
//! |---|---|
//! | nanosecond | `ns`, `nsec`, `nanos` |
//! | microsecond | `us`, `µs`, `usec` |
//! | millisecond | `ms`, `msec`, `millis` |
//! | second | `s`, `sec`, `secs`, `second`, `seconds` |
//! | minute | `m`, `min`, `mins`, `minute`, `minutes` |
//! | hour | `h`, `hr`, `hrs`, `hour`, `hours` |
//! | day | `d`, `day`, `days` |
//! | week | `w`, `wk`, `wks`, `week`, `weeks` |
//! | month (30.44 days) | `M`, `month`, `months` |
//! | year (365.25 days) | `y`, `year`, `years` |
//!
//! Fractions (`1.5h`) and signs are not durations; write `1h30m`.

use std::fmt;
use std::time::Duration;

/// Why a text is not a duration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DurationError {
    /// Nothing but whitespace.
    Empty,
    /// A unit was expected to follow a number, or a number a unit, at this
    /// character offset.
    Expected { what: &'static str, at: usize },
    /// A word that is not one of the units.
    UnknownUnit(String),
    /// The total does not fit a `Duration`.
    TooLong,
}

impl fmt::Display for DurationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DurationError::Empty => f.write_str("the duration is empty"),
            DurationError::Expected { what, at } => write!(f, "expected {what} at character {at}"),
            DurationError::UnknownUnit(unit) => {
                write!(f, "unknown unit {unit:?}; use ms, s, m, h or d (e.g. \"30s\", \"1h30m\")")
            }
            DurationError::TooLong => f.write_str("the duration is too long"),
        }
    }
}

impl std::error::Error for DurationError {}

/// Parses a duration written as described in the [crate] docs.
pub fn parse_duration(text: &str) -> Result<Duration, DurationError> {
    let text = text.trim();
    if text.is_empty() {
        return Err(DurationError::Empty);
    }
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let (number, after) = leading(rest, |c| c.is_ascii_digit());
        let at = text.len() - rest.len();
        let number: u64 = match number {
            "" => return Err(DurationError::Expected { what: "a number", at }),
            digits => digits.parse().map_err(|_| DurationError::TooLong)?,
        };
        let (unit, after) = leading(after.trim_start(), |c| c.is_alphabetic());
        if unit.is_empty() {
            return Err(DurationError::Expected { what: "a unit", at: text.len() - after.len() });
        }
        let group = unit_length(unit)?.checked_mul_u64(number).ok_or(DurationError::TooLong)?;
        total = total.checked_add(group).ok_or(DurationError::TooLong)?;
        rest = after.trim_start();
    }
    Ok(total)
}

/// The prefix of `text` whose characters satisfy `keep`, and the rest.
fn leading(text: &str, keep: impl Fn(char) -> bool) -> (&str, &str) {
    text.split_at(text.find(|c: char| !keep(c)).unwrap_or(text.len()))
}

/// One of `unit`.
fn unit_length(unit: &str) -> Result<UnitLength, DurationError> {
    let (secs, nanos) = match unit {
        "ns" | "nsec" | "nanos" => (0, 1),
        "us" | "µs" | "usec" => (0, 1_000),
        "ms" | "msec" | "millis" => (0, 1_000_000),
        "s" | "sec" | "secs" | "second" | "seconds" => (1, 0),
        "m" | "min" | "mins" | "minute" | "minutes" => (60, 0),
        "h" | "hr" | "hrs" | "hour" | "hours" => (3_600, 0),
        "d" | "day" | "days" => (DAY, 0),
        "w" | "wk" | "wks" | "week" | "weeks" => (7 * DAY, 0),
        "M" | "month" | "months" => (MONTH, 0),
        "y" | "year" | "years" => (YEAR, 0),
        other => return Err(DurationError::UnknownUnit(other.to_string())),
    };
    Ok(UnitLength { secs, nanos })
}

const DAY: u64 = 86_400;
/// 30.44 days, as humantime counts a month.
const MONTH: u64 = 2_630_016;
/// 365.25 days, as humantime counts a year.
const YEAR: u64 = 31_557_600;

/// A unit's length: whole seconds or nanoseconds (never both).
struct UnitLength {
    secs: u64,
    nanos: u64,
}

impl UnitLength {
    fn checked_mul_u64(&self, n: u64) -> Option<Duration> {
        let secs = self.secs.checked_mul(n)?;
        let nanos = self.nanos.checked_mul(n)?;
        Duration::from_secs(secs).checked_add(Duration::from_nanos(nanos))
    }
}

/// `duration` written back in this grammar, largest unit first, as
/// humantime wrote it: `15m`, `1h 30m`, `1day`, `500ms`, `0s`.
pub fn format_duration(duration: Duration) -> impl fmt::Display {
    FormattedDuration(duration)
}

struct FormattedDuration(Duration);

impl fmt::Display for FormattedDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (secs, nanos) = (self.0.as_secs(), u64::from(self.0.subsec_nanos()));
        if secs == 0 && nanos == 0 {
            return f.write_str("0s");
        }
        let (years, secs) = (secs / YEAR, secs % YEAR);
        let (months, secs) = (secs / MONTH, secs % MONTH);
        let (days, secs) = (secs / DAY, secs % DAY);
        let parts: [(u64, &str, bool); 9] = [
            (years, "year", true),
            (months, "month", true),
            (days, "day", true),
            (secs / 3_600, "h", false),
            (secs % 3_600 / 60, "m", false),
            (secs % 60, "s", false),
            (nanos / 1_000_000, "ms", false),
            (nanos / 1_000 % 1_000, "us", false),
            (nanos % 1_000, "ns", false),
        ];
        let mut first = true;
        for (value, unit, plural) in parts.into_iter().filter(|(value, _, _)| *value > 0) {
            let separator = if first { "" } else { " " };
            let s = if plural && value > 1 { "s" } else { "" };
            write!(f, "{separator}{value}{unit}{s}")?;
            first = false;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn the_spellings_of_the_shipped_configs_parse() {
        for (text, expected) in [
            ("30s", secs(30)),
            ("60s", secs(60)),
            ("5m", secs(300)),
            ("15m", secs(900)),
            ("1h", secs(3_600)),
            ("24h", secs(86_400)),
            ("90d", secs(90 * 86_400)),
            ("100ms", Duration::from_millis(100)),
            ("1500ms", Duration::from_millis(1_500)),
            ("1h30m", secs(5_400)),
            ("1h 30m", secs(5_400)),
            (" 2 hours ", secs(7_200)),
            ("1w", secs(7 * 86_400)),
            ("1y", secs(31_557_600)),
            ("0", Duration::ZERO),
            ("0s", Duration::ZERO),
            ("3us", Duration::from_micros(3)),
            ("3µs", Duration::from_micros(3)),
        ] {
            assert_eq!(parse_duration(text), Ok(expected), "{text:?}");
        }
    }

    #[test]
    fn what_is_not_a_duration_says_why() {
        assert_eq!(parse_duration(""), Err(DurationError::Empty));
        assert_eq!(parse_duration("5"), Err(DurationError::Expected { what: "a unit", at: 1 }));
        assert_eq!(parse_duration("m"), Err(DurationError::Expected { what: "a number", at: 0 }));
        assert_eq!(parse_duration("-5s"), Err(DurationError::Expected { what: "a number", at: 0 }));
        assert_eq!(parse_duration("1.5h"), Err(DurationError::Expected { what: "a unit", at: 1 }));
        assert_eq!(parse_duration("5x"), Err(DurationError::UnknownUnit("x".into())));
        assert_eq!(parse_duration("5 fortnights"), Err(DurationError::UnknownUnit("fortnights".into())));
        assert!(parse_duration("5x").unwrap_err().to_string().contains("\"1h30m\""));
    }

    #[test]
    fn a_total_too_long_for_a_duration_is_an_error_not_a_wrap() {
        assert_eq!(parse_duration("99999999999999999999s"), Err(DurationError::TooLong));
        assert_eq!(parse_duration("600000000000y"), Err(DurationError::TooLong));
        assert_eq!(parse_duration("18446744073709551615s 1s"), Err(DurationError::TooLong));
        assert_eq!(parse_duration("300000000000y"), Ok(secs(300_000_000_000 * 31_557_600)));
    }

    #[test]
    fn durations_are_written_back_as_humantime_wrote_them() {
        for (duration, text) in [
            (secs(900), "15m"),
            (secs(3_600), "1h"),
            (secs(5_400), "1h 30m"),
            (secs(86_400), "1day"),
            (secs(60), "1m"),
            (Duration::from_millis(1_500), "1s 500ms"),
            (Duration::ZERO, "0s"),
            (secs(2 * 31_557_600), "2years"),
        ] {
            assert_eq!(format_duration(duration).to_string(), text);
            assert_eq!(parse_duration(text), Ok(duration), "{text} parses back");
        }
    }
}
