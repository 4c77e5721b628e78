//! Everything a guest can reach, one module per capability.
//!
//! Each store's data is a [`GuestCtx`]: WASI and wasi:http state plus one
//! field per wattedge capability. Host-side state that must outlive a store
//! (health, counters, wake-ups, written-point totals) lives in
//! [`GuestShared`], which the supervisor keeps across restarts and swaps.
//!
//! In unit tests, `testing::TestGuest` builds a [`GuestCtx`] without wasm,
//! so the host functions can be called directly (see `tests`).

pub(crate) mod denials;
pub mod http;
pub mod influx;
pub(crate) mod limiter;
pub(crate) mod log;
pub(crate) mod schedule;
pub(crate) mod secrets;
pub(crate) mod state;
pub(crate) mod status;
#[cfg(test)]
pub(crate) mod testing;
#[cfg(test)]
mod tests;
pub(crate) mod wasi;

use std::sync::Arc;

use wasmtime::component::{HasSelf, Linker, ResourceTable};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use crate::config::GuestConfig;
use crate::secrets::SecretStore;
use crate::store::TimeSeriesStore;

/// Host services shared by all guests.
#[derive(Clone)]
pub struct HostServices {
    pub store: Arc<dyn TimeSeriesStore>,
    pub secrets: Arc<SecretStore>,
    pub state: Arc<state::StateStore>,
    /// Outbound HTTP settings from `[host]` (timeout, body limit, TLS roots).
    pub http: Arc<http::HttpSettings>,
    /// `[host] tags`, keys ascending: set on every point a guest writes.
    pub host_tags: Arc<[(String, String)]>,
}

/// Most host resources (streams, pollables, wasi:http requests, header
/// sets, ...) a guest may hold at once; wasmtime's default is a million.
/// Resources live in host memory, outside the guest's memory limit.
pub const MAX_RESOURCES: usize = 512;
/// Largest wasi:http header set (wasmtime's default is 128 KiB). With
/// [`MAX_RESOURCES`] it bounds what header sets can take at 16 MiB.
pub const MAX_HEADER_BYTES: usize = 32 << 10;

/// Per-guest host state that survives store re-creation and hot swaps.
#[derive(Default)]
pub struct GuestShared {
    pub board: status::StatusBoard,
    pub wake: schedule::WakeSlot,
    pub influx: influx::InfluxMetrics,
    pub http: http::HttpMetrics,
    /// Bounds the guest's requests in flight (and the bodies the host buffers for them).
    pub http_slots: http::RequestSlots,
    /// The budget of host warnings about the guest's refused requests.
    pub denials: denials::DeniedWarnings,
}

/// The data of one guest's wasmtime store.
pub struct GuestCtx {
    pub(crate) wasi: WasiCtx,
    pub(crate) http_ctx: WasiHttpCtx,
    pub(crate) http: http::HttpGate,
    pub(crate) table: ResourceTable,
    pub(crate) limits: limiter::GuestLimiter,
    pub(crate) influx: influx::InfluxCap,
    pub(crate) secrets: secrets::SecretsCap,
    pub(crate) state: state::StateCap,
    pub(crate) log: log::LogCap,
    pub(crate) shared: Arc<GuestShared>,
    /// When the current call must stop (set by the supervisor before each call).
    pub deadline: Option<std::time::Instant>,
}

impl GuestCtx {
    /// A fresh context for `guest`, with its grants and limits applied.
    pub fn new(guest: &GuestConfig, services: &HostServices, shared: Arc<GuestShared>) -> GuestCtx {
        let name: Arc<str> = guest.name.as_str().into();
        let granted = guest.grants.secrets.keys().cloned().collect();
        let log = log::LogCap::new(name.clone(), services.secrets.clone(), granted);
        let wasi = WasiCtx::builder().stdout(log.stdio(false)).stderr(log.stdio(true)).build();
        let limits = limiter::GuestLimiter::new(guest.memory_limit);
        let secrets = secrets::SecretsCap::new(name.clone(), &guest.grants, services.secrets.clone());
        let gate_parts = http::GateParts { secrets: services.secrets.clone(), settings: services.http.clone() };
        let mut http_ctx = WasiHttpCtx::new();
        http_ctx.set_field_size_limit(MAX_HEADER_BYTES);
        let mut table = ResourceTable::new();
        table.set_max_capacity(MAX_RESOURCES);
        GuestCtx {
            wasi,
            http_ctx,
            http: http::HttpGate::new(name.clone(), &guest.grants, shared.clone(), gate_parts),
            table,
            limits,
            influx: influx::InfluxCap::new(
                name.clone(),
                &guest.grants,
                services.store.clone(),
                services.host_tags.clone(),
            ),
            secrets,
            state: state::StateCap::new(name.clone(), services.state.clone()),
            log,
            shared,
            deadline: None,
        }
    }

    /// The store limiter: `memory_limit` over all memories and tables.
    pub fn limiter(&mut self) -> &mut limiter::GuestLimiter {
        &mut self.limits
    }
}

impl WasiView for GuestCtx {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl WasiHttpView for GuestCtx {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView { ctx: &mut self.http_ctx, table: &mut self.table, hooks: &mut self.http }
    }
}

impl crate::bindings::types::Host for GuestCtx {}

/// Adds the time since `began` to `total` (nanoseconds): how long a guest
/// waited on the store or on upstream, for `/metrics`.
fn add_elapsed(total: &std::sync::atomic::AtomicU64, began: std::time::Instant) {
    let nanos = u64::try_from(began.elapsed().as_nanos()).unwrap_or(u64::MAX);
    total.fetch_add(nanos, std::sync::atomic::Ordering::Relaxed);
}

/// `text` cut to at most `max` bytes, on a character boundary: guest text
/// the host logs or keeps.
fn cut(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// A linker with the WASI subset ([`wasi`]), wasi:http and every wattedge capability.
pub fn linker(engine: &wasmtime::Engine) -> wasmtime::Result<Linker<GuestCtx>> {
    let mut linker = Linker::new(engine);
    wasi::add_to_linker(&mut linker)?;
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
    crate::bindings::Guest::add_to_linker::<_, HasSelf<GuestCtx>>(&mut linker, |ctx| ctx)?;
    Ok(linker)
}
