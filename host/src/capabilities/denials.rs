//! A per-guest budget for the host's warnings about that guest's refused
//! requests (HTTP denied, store measurement denied, secret denied) and
//! failed ones (an outbound request that could not connect or resolve:
//! a guest can make those as fast as refused ones).
//!
//! Each refusal is worth a warning to the operator, but a guest can make
//! 100,000 refused calls a second: unbudgeted, that is a flood that drowns
//! every other line in the journal and costs the host more than the guest.
//! A guest gets [`BURST`] warnings at once, refilled at [`PER_SEC`]; the
//! rest are dropped and counted. The count goes into the next warning
//! logged, into a summary after the run ([`DeniedWarnings::take_unreported`])
//! and into `/metrics` (`wattedge_guest_denied_warnings_dropped_total`).

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// Denied-request warnings a guest may cause at once.
pub const BURST: f64 = 50.0;
/// How fast a spent budget comes back (warnings per second).
pub const PER_SEC: f64 = 1.0;

/// One guest's budget; kept in [`super::GuestShared`] so a restart or swap
/// does not refill it.
#[derive(Debug)]
pub struct DeniedWarnings {
    bucket: Mutex<Bucket>,
    /// Warnings dropped since the guest started (for `/metrics`).
    dropped_total: AtomicU64,
    /// Warnings dropped and not yet reported in the log.
    unreported: AtomicU64,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    refilled: Instant,
}

impl Default for DeniedWarnings {
    fn default() -> Self {
        DeniedWarnings {
            bucket: Mutex::new(Bucket { tokens: BURST, refilled: Instant::now() }),
            dropped_total: AtomicU64::new(0),
            unreported: AtomicU64::new(0),
        }
    }
}

impl DeniedWarnings {
    /// Spends one warning: `Some(n)` when it may be logged, `n` being the
    /// warnings dropped since the last one reported; `None` when the budget
    /// is spent (the warning is counted as dropped).
    pub fn admit(&self) -> Option<u64> {
        self.admit_at(Instant::now())
    }

    fn admit_at(&self, now: Instant) -> Option<u64> {
        let mut bucket = self.bucket.lock().unwrap_or_else(|e| e.into_inner());
        let earned = now.saturating_duration_since(bucket.refilled).as_secs_f64() * PER_SEC;
        bucket.tokens = (bucket.tokens + earned).min(BURST);
        bucket.refilled = now;
        if bucket.tokens < 1.0 {
            self.dropped_total.fetch_add(1, Ordering::Relaxed);
            self.unreported.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        bucket.tokens -= 1.0;
        Some(self.unreported.swap(0, Ordering::Relaxed))
    }

    /// Warnings dropped and not yet reported; the caller reports them.
    pub fn take_unreported(&self) -> u64 {
        self.unreported.swap(0, Ordering::Relaxed)
    }

    /// Warnings dropped since the guest started.
    pub fn dropped_total(&self) -> u64 {
        self.dropped_total.load(Ordering::Relaxed)
    }
}

/// Says how many warnings about `guest`'s refused requests were dropped.
/// One function rather than a line in every `warn_denied!`: each tracing
/// call site costs the armv7 board binary (budget 4 MiB) about 1 KB.
#[cold]
#[inline(never)]
pub fn report_dropped(guest: &str, dropped: u64) {
    tracing::warn!(guest = %guest, dropped, "warnings about denied requests dropped: more than {BURST} at once");
}

/// Logs a warning about a refused request of `guest` if its budget
/// `$denials` allows, first saying how many were dropped since the last one.
/// Fields that hold guest text must be wrapped in
/// [`crate::guest_text::shown`].
macro_rules! warn_denied {
    ($denials:expr, $guest:expr, $($rest:tt)+) => {
        if let Some(dropped) = $denials.admit() {
            let guest: &str = &$guest;
            if dropped > 0 {
                $crate::capabilities::denials::report_dropped(guest, dropped);
            }
            tracing::warn!(guest = %guest, $($rest)+);
        }
    };
}
pub(crate) use warn_denied;

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_flood_of_denials_logs_a_burst_then_counts_the_rest() {
        let denials = DeniedWarnings::default();
        let start = Instant::now();
        let logged = (0..100_000).filter(|_| denials.admit_at(start).is_some()).count();
        assert_eq!(logged, BURST as usize);
        assert_eq!(denials.dropped_total(), 100_000 - BURST as u64);
        // Two seconds later two warnings' worth came back; the first reports the drops.
        let later = start + Duration::from_secs(2);
        assert_eq!(denials.admit_at(later), Some(100_000 - BURST as u64));
        assert_eq!(denials.admit_at(later), Some(0));
        assert_eq!(denials.admit_at(later), None);
        assert_eq!(denials.take_unreported(), 1);
        assert_eq!(denials.take_unreported(), 0);
        assert_eq!(denials.dropped_total(), 100_000 - BURST as u64 + 1);
    }
}
