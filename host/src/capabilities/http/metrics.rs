//! Per-guest outbound HTTP counters, shown in `/metrics`.

use std::sync::atomic::{AtomicU64, Ordering};

/// The kinds of failure counted separately (the `kind` label).
pub const ERROR_KINDS: [&str; 8] = ["dns", "connect", "tls", "timeout", "oversize", "protocol", "secret", "encoding"];
const CAPTURE: usize = ERROR_KINDS.len();

/// Per-guest HTTP counters; they survive store re-creation and swaps.
#[derive(Default)]
pub struct HttpMetrics {
    /// Requests the guest handed to the host.
    pub requests: AtomicU64,
    /// Requests refused by grants (destination, private address or secret).
    pub denied: AtomicU64,
    /// Requests that failed for any reason other than a grant.
    pub errors: AtomicU64,
    /// Request body bytes sent.
    pub bytes_out: AtomicU64,
    /// Response body bytes received (before scrubbing).
    pub bytes_in: AtomicU64,
    /// Nanoseconds from a request handed to the host until its response
    /// (head and buffered body) or its error was ready for the guest: how
    /// much of a run is waiting on upstream.
    pub nanos: AtomicU64,
    by_kind: [AtomicU64; ERROR_KINDS.len() + 1],
}

impl HttpMetrics {
    /// Counts one failure of `kind` (one of [`ERROR_KINDS`] or `capture`).
    pub fn error(&self, kind: &str) {
        let index = ERROR_KINDS.iter().position(|k| *k == kind).unwrap_or(CAPTURE);
        self.by_kind[index].fetch_add(1, Ordering::Relaxed);
        if kind != "secret" {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Failures per kind, `capture` last.
    pub fn errors_by_kind(&self) -> Vec<(&'static str, u64)> {
        let names = ERROR_KINDS.iter().copied().chain(["capture"]);
        names.zip(&self.by_kind).map(|(k, n)| (k, n.load(Ordering::Relaxed))).collect()
    }
}
