//! Time formatting shared by the admin API and the CLI.

use std::time::{SystemTime, UNIX_EPOCH};

/// RFC 3339 UTC with millisecond precision, from nanoseconds since the epoch.
pub fn rfc3339_ns(ns: i64) -> String {
    let dt = chrono::DateTime::<chrono::Utc>::from_timestamp_nanos(ns);
    dt.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// RFC 3339 UTC of a system time.
pub fn rfc3339(t: SystemTime) -> String {
    let ns = t.duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as i64).unwrap_or(0);
    rfc3339_ns(ns)
}
