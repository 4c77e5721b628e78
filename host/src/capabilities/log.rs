//! The `log` capability and the guest's stdout/stderr: lines go to the host's
//! tracing log, tagged with the guest's name, with the values of the guest's
//! granted secrets redacted (only those: another guest's short secret must
//! not blank out this guest's words).
//!
//! A guest cannot forge or drown the host's own lines: control characters
//! (a newline that would start a fake host line) are escaped, a line is cut
//! at [`MAX_LINE`] bytes, and each guest has a budget of [`BURST_LINES`]
//! lines that comes back at [`LINES_PER_SEC`]; lines beyond it are dropped
//! and counted in a warning when logging resumes.

use std::borrow::Cow;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::bindings::log::{self as wit, Level};
use crate::secrets::SecretStore;

/// Longest guest log line kept; the rest is cut.
const MAX_LINE: usize = 4096;
/// Lines a guest may log at once.
pub const BURST_LINES: f64 = 200.0;
/// How fast a spent budget comes back.
pub const LINES_PER_SEC: f64 = 5.0;

/// One guest's logger, shared by its `log` calls and its stdout/stderr.
#[derive(Clone)]
pub struct LogCap {
    guest: Arc<str>,
    secrets: Arc<SecretStore>,
    /// The secrets granted to this guest: what its lines are scrubbed of.
    granted: Arc<[String]>,
    budget: Arc<Mutex<Budget>>,
}

impl LogCap {
    pub fn new(guest: Arc<str>, secrets: Arc<SecretStore>, granted: Arc<[String]>) -> LogCap {
        LogCap { guest, secrets, granted, budget: Arc::new(Mutex::new(Budget::full(Instant::now()))) }
    }

    /// The guest's stdout (or stderr), logged line by line through this logger.
    pub fn stdio(&self, is_stderr: bool) -> GuestStdio {
        GuestStdio { log: self.clone(), is_stderr }
    }

    /// Logs one guest line at `level`, from `stream` (`log`, `stdout`, `stderr`).
    fn emit(&self, level: Level, stream: &'static str, message: &str) {
        let suppressed = match self.budget.lock().unwrap_or_else(|e| e.into_inner()).take(Instant::now()) {
            Some(suppressed) => suppressed,
            None => return,
        };
        let guest = &*self.guest;
        if suppressed > 0 {
            tracing::warn!(target: "guest", guest, suppressed, "guest log lines dropped: more than {BURST_LINES} at once");
        }
        // Redact the whole line, then clip: a value cut in two by the clip
        // would leave its prefix behind, where no search finds it.
        let scrubber = self.secrets.scrubber_for(self.granted.iter().map(String::as_str));
        let redacted = scrubber.scrub_str(message);
        let line = one_line(clip(&redacted));
        match level {
            Level::Trace => tracing::trace!(target: "guest", guest, stream, "{line}"),
            Level::Debug => tracing::debug!(target: "guest", guest, stream, "{line}"),
            Level::Info => tracing::info!(target: "guest", guest, stream, "{line}"),
            Level::Warn => tracing::warn!(target: "guest", guest, stream, "{line}"),
            Level::Error => tracing::error!(target: "guest", guest, stream, "{line}"),
        }
    }
}

/// A token bucket of log lines.
#[derive(Debug)]
struct Budget {
    lines: f64,
    refilled: Instant,
    suppressed: u64,
}

impl Budget {
    fn full(now: Instant) -> Budget {
        Budget { lines: BURST_LINES, refilled: now, suppressed: 0 }
    }

    /// Spends one line: `Some(lines dropped since the last one kept)`, or
    /// `None` when the budget is spent (the line is dropped and counted).
    fn take(&mut self, now: Instant) -> Option<u64> {
        let earned = now.saturating_duration_since(self.refilled).as_secs_f64() * LINES_PER_SEC;
        self.lines = (self.lines + earned).min(BURST_LINES);
        self.refilled = now;
        if self.lines < 1.0 {
            self.suppressed += 1;
            return None;
        }
        self.lines -= 1.0;
        Some(std::mem::take(&mut self.suppressed))
    }
}

fn clip(message: &str) -> &str {
    super::cut(message, MAX_LINE)
}

/// `text` on one line: newlines and other control characters (but tabs)
/// escaped, so a guest cannot start a line that looks like the host's.
fn one_line(text: &str) -> Cow<'_, str> {
    crate::guest_text::escape(text, usize::MAX)
}

impl wit::Host for super::GuestCtx {
    fn log(&mut self, level: Level, message: String) {
        self.log.emit(level, "log", &message);
    }
}

/// A guest's stdout or stderr, forwarded line by line to the log.
#[derive(Clone)]
pub struct GuestStdio {
    log: LogCap,
    is_stderr: bool,
}

impl wasmtime_wasi::cli::IsTerminal for GuestStdio {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl wasmtime_wasi::cli::StdoutStream for GuestStdio {
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

impl GuestStdio {
    fn emit(&self, bytes: &[u8]) {
        let text = String::from_utf8_lossy(bytes);
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            if self.is_stderr {
                self.log.emit(Level::Warn, "stderr", line);
            } else {
                self.log.emit(Level::Info, "stdout", line);
            }
        }
    }
}

impl tokio::io::AsyncWrite for GuestStdio {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.emit(buf);
        std::task::Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_guest_line_stays_one_line() {
        assert_eq!(one_line("plain\ttext"), "plain\ttext");
        let forged = "ok\n2026-11-23T04:00:00Z  INFO wattedge::host: admin token generated\r";
        assert_eq!(one_line(forged), "ok\\n2026-11-23T04:00:00Z  INFO wattedge::host: admin token generated\\r");
        assert_eq!(one_line("bell\u{7}"), "bell\\u{7}");
    }

    #[test]
    fn the_budget_drops_a_flood_and_counts_it() {
        let start = Instant::now();
        let mut budget = Budget::full(start);
        let kept = (0..1000).filter(|_| budget.take(start).is_some()).count();
        assert_eq!(kept, BURST_LINES as usize, "a burst, then nothing");
        // Two seconds later ten lines' worth came back; the first kept one
        // reports the 800 dropped.
        let later = start + Duration::from_secs(2);
        assert_eq!(budget.take(later), Some(800));
        let more = (0..100).filter(|_| budget.take(later).is_some()).count();
        assert_eq!(more, (2.0 * LINES_PER_SEC) as usize - 1);
    }
}
