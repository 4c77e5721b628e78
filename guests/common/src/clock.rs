//! Time for guests: wall clock in nanoseconds and a sleep the host can yield on.
//!
//! `SystemTime` on `wasm32-wasip2` reads `wasi:clocks/wall-clock`, so the same
//! code runs natively in tests. Sleeping goes through
//! `wasi:clocks/monotonic-clock.subscribe-duration` and a blocking pollable,
//! which lets an async host park the guest instead of spinning.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::{Timestamp, Trigger};

/// Nanoseconds in one second.
pub const NANOS_PER_SEC: i64 = 1_000_000_000;
/// Nanoseconds in one millisecond.
pub const NANOS_PER_MS: i64 = 1_000_000;

/// Wall-clock time in nanoseconds since the Unix epoch.
pub fn now_ns() -> Timestamp {
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_nanos()).unwrap_or(i64::MAX),
        Err(_) => 0,
    }
}

/// Wall-clock time in milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    now_ns() / NANOS_PER_MS
}

/// The moment a run is about: the planned time of a scheduled trigger,
/// otherwise the wall clock.
pub fn trigger_time(trigger: &Trigger) -> Timestamp {
    match trigger {
        Trigger::Scheduled(at) => *at,
        Trigger::Wake(_) | Trigger::Invoked(_) => now_ns(),
    }
}

/// Blocks for `ms` milliseconds on the monotonic clock.
pub fn sleep_ms(ms: u64) {
    if ms == 0 {
        return;
    }
    #[cfg(target_arch = "wasm32")]
    {
        let nanos = ms.saturating_mul(1_000_000);
        wasip2::clocks::monotonic_clock::subscribe_duration(nanos).block();
    }
    #[cfg(not(target_arch = "wasm32"))]
    std::thread::sleep(std::time::Duration::from_millis(ms));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_is_after_2020() {
        assert!(now_ns() > 1_577_836_800 * NANOS_PER_SEC);
        assert!(now_ms() > 1_577_836_800_000);
    }

    #[test]
    fn scheduled_trigger_uses_planned_time() {
        assert_eq!(trigger_time(&Trigger::Scheduled(42)), 42);
        assert!(trigger_time(&Trigger::Invoked(Vec::new())) > 42);
    }
}
