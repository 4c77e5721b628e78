//! The `log` capability and the guest's stdout/stderr: lines go to the host's
//! tracing log, tagged with the guest's name, with secret values redacted.

use std::sync::Arc;

use crate::bindings::log::{self as wit, Level};
use crate::secrets::SecretStore;

/// One guest's logger.
pub struct LogCap {
    guest: Arc<str>,
    secrets: Arc<SecretStore>,
}

impl LogCap {
    pub fn new(guest: Arc<str>, secrets: Arc<SecretStore>) -> LogCap {
        LogCap { guest, secrets }
    }
}

/// Longest guest log line kept; the rest is cut so a guest cannot flood the log.
const MAX_LINE: usize = 4096;

fn clip(message: &str) -> &str {
    if message.len() <= MAX_LINE {
        return message;
    }
    let mut end = MAX_LINE;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    &message[..end]
}

impl wit::Host for super::GuestCtx {
    fn log(&mut self, level: Level, message: String) {
        let guest = &*self.log.guest;
        let message = self.log.secrets.redact(clip(&message));
        match level {
            Level::Trace => tracing::trace!(target: "guest", guest, "{message}"),
            Level::Debug => tracing::debug!(target: "guest", guest, "{message}"),
            Level::Info => tracing::info!(target: "guest", guest, "{message}"),
            Level::Warn => tracing::warn!(target: "guest", guest, "{message}"),
            Level::Error => tracing::error!(target: "guest", guest, "{message}"),
        }
    }
}

/// A guest's stdout or stderr, forwarded line by line to the log.
#[derive(Clone)]
pub struct GuestStdio {
    guest: Arc<str>,
    is_stderr: bool,
}

impl GuestStdio {
    pub fn new(guest: Arc<str>, is_stderr: bool) -> GuestStdio {
        GuestStdio { guest, is_stderr }
    }
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
            let line = clip(line);
            let guest = &*self.guest;
            if self.is_stderr {
                tracing::warn!(target: "guest", guest, stream = "stderr", "{line}");
            } else {
                tracing::info!(target: "guest", guest, stream = "stdout", "{line}");
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
