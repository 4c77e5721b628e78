//! Creating a live, initialised instance of a loaded component: a fresh
//! store with the guest's limits and deadline, `instantiate`, then `init`.
//! Used for start-up, restarts after a trap, and hot swaps (which run it off
//! the guest's task, so a slow `init` never delays the running version).

use std::time::{Duration, Instant};

use wasmtime::Store;

use super::{GuestHandle, Runtime};
use crate::bindings::Guest;
use crate::bindings::types::GuestError;
use crate::capabilities::GuestCtx;
use crate::compile::component::LoadedComponent;
use crate::compile::engine::install_deadline;

/// Extra wall-clock time after `run_timeout` before a call blocked in a host
/// import is abandoned (epoch interruption only stops guest code).
pub const TIMEOUT_GRACE: Duration = Duration::from_secs(1);

/// A live instance: the store and the guest's exports.
pub struct Live {
    pub store: Store<GuestCtx>,
    pub guest: Guest,
    pub version: String,
}

/// Instantiates `loaded` for `handle`'s guest and runs `init` within its
/// `run_timeout`. The error is one line for status and API answers.
pub async fn start(
    runtime: &Runtime,
    handle: &GuestHandle,
    loaded: &LoadedComponent<GuestCtx>,
) -> Result<Live, String> {
    let config = &handle.config;
    let ctx = GuestCtx::new(config, &runtime.services, handle.shared.clone());
    let mut store = Store::new(&runtime.engine, ctx);
    store.limiter(|ctx| ctx.limiter());
    // What one call may copy from the guest into the host (a write's points,
    // a query's strings): no more than the guest's own memory could hold,
    // however much the guest's lists share (wasmtime's default is 128 MiB).
    store.set_hostcall_fuel(usize::try_from(config.memory_limit).unwrap_or(usize::MAX));
    store.set_max_component_handles(crate::capabilities::MAX_RESOURCES * 2);
    install_deadline(&mut store, |ctx: &GuestCtx| ctx.deadline);
    store.data_mut().deadline = Some(Instant::now() + config.run_timeout);
    let _running = runtime.ticker.running();
    let call = async {
        let guest =
            loaded.pre.instantiate_async(&mut store).await.map_err(|e| format!("instantiation failed: {e:#}"))?;
        match guest.call_init(&mut store, &config.config).await {
            Ok(Ok(())) => Ok(guest),
            Ok(Err(e)) => Err(format!("init rejected the configuration: {}", describe_guest_error(&e))),
            Err(trap) => Err(format!("init trapped: {}", describe_trap(&trap))),
        }
    };
    let guest = match tokio::time::timeout(config.run_timeout + TIMEOUT_GRACE, call).await {
        Ok(result) => result?,
        Err(_) => return Err(format!("init did not finish within run_timeout ({:?})", config.run_timeout)),
    };
    Ok(Live { store, guest, version: loaded.version.clone() })
}

/// One line describing a guest's own error (at most 2 KiB of its text).
pub fn describe_guest_error(e: &GuestError) -> String {
    crate::capabilities::status::clip(match e {
        GuestError::Config(m) => format!("configuration: {m}"),
        GuestError::Credentials(m) => format!("credentials: {m}"),
        GuestError::Upstream(m) => format!("upstream: {m}"),
        GuestError::Store(m) => format!("store: {m}"),
        GuestError::Internal(m) => m.clone(),
    })
}

/// A one-line description of a trap, naming the cause people can act on.
pub fn describe_trap(error: &wasmtime::Error) -> String {
    match error.downcast_ref::<wasmtime::Trap>() {
        Some(wasmtime::Trap::Interrupt) => "CPU deadline reached (run_timeout); the guest was stopped".into(),
        Some(wasmtime::Trap::UnreachableCodeReached) => "the guest panicked or hit unreachable code".into(),
        Some(trap) => trap.to_string(),
        None => {
            // The cause, not the wasm backtrace wrapped around it.
            let cause = error.root_cause().to_string();
            let text = format!("{error:#}");
            if text.contains("grow") || text.contains("memory") && text.contains("limit") {
                format!("memory_limit exceeded: {}", cause.lines().next().unwrap_or(""))
            } else {
                cause.lines().next().unwrap_or("unknown trap").to_string()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_guest_s_error_text_is_kept_to_2_kib() {
        let long = GuestError::Upstream("é".repeat(5000));
        let text = describe_guest_error(&long);
        assert!(text.len() <= 2048 && text.starts_with("upstream: é"), "{} bytes", text.len());
    }
}
