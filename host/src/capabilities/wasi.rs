//! The WASI 0.2 subset a guest gets: stdio, environment and exit (`wasi:cli`),
//! clocks, random and `wasi:io` streams and polling — and nothing else.
//!
//! Deny by default: there is no `wasi:filesystem` and no `wasi:sockets`, so a
//! guest reaches the network only through `wasi:http` (checked against its
//! grants by [`super::http`]) and keeps data only through `state` and
//! `influx`. A component that imports either is refused at load with
//! wasmtime's "matching implementation was not found in the linker" error,
//! naming the interface. Linking only these interfaces also keeps the
//! host-function trampolines for ~100 unused functions out of the binary.

use wasmtime::component::{HasData, Linker, ResourceTable};
use wasmtime_wasi::WasiView;
use wasmtime_wasi::cli::{WasiCli, WasiCliView};
use wasmtime_wasi::clocks::{WasiClocks, WasiClocksView};
use wasmtime_wasi::p2::bindings::{cli, clocks, random};
use wasmtime_wasi::random::{WasiRandom, WasiRandomView};
use wasmtime_wasi_io::bindings::wasi::io;

use super::GuestCtx;

/// `wasi:io` resources live in the guest's resource table.
struct HasIo;

impl HasData for HasIo {
    type Data<'a> = &'a mut ResourceTable;
}

/// Adds the WASI interfaces guests may import (async variants of `wasi:io`).
pub fn add_to_linker(l: &mut Linker<GuestCtx>) -> wasmtime::Result<()> {
    io::error::add_to_linker::<GuestCtx, HasIo>(l, |t| t.ctx().table)?;
    io::poll::add_to_linker::<GuestCtx, HasIo>(l, |t| t.ctx().table)?;
    io::streams::add_to_linker::<GuestCtx, HasIo>(l, |t| t.ctx().table)?;
    clocks::wall_clock::add_to_linker::<GuestCtx, WasiClocks>(l, GuestCtx::clocks)?;
    clocks::monotonic_clock::add_to_linker::<GuestCtx, WasiClocks>(l, GuestCtx::clocks)?;
    random::random::add_to_linker::<GuestCtx, WasiRandom>(l, GuestCtx::random)?;
    random::insecure::add_to_linker::<GuestCtx, WasiRandom>(l, GuestCtx::random)?;
    random::insecure_seed::add_to_linker::<GuestCtx, WasiRandom>(l, GuestCtx::random)?;
    add_cli_to_linker(l)
}

/// `wasi:cli`: stdio (captured into the guest's log), environment, exit.
fn add_cli_to_linker(l: &mut Linker<GuestCtx>) -> wasmtime::Result<()> {
    cli::exit::add_to_linker::<GuestCtx, WasiCli>(l, GuestCtx::cli)?;
    cli::environment::add_to_linker::<GuestCtx, WasiCli>(l, GuestCtx::cli)?;
    cli::stdin::add_to_linker::<GuestCtx, WasiCli>(l, GuestCtx::cli)?;
    cli::stdout::add_to_linker::<GuestCtx, WasiCli>(l, GuestCtx::cli)?;
    cli::stderr::add_to_linker::<GuestCtx, WasiCli>(l, GuestCtx::cli)?;
    cli::terminal_input::add_to_linker::<GuestCtx, WasiCli>(l, GuestCtx::cli)?;
    cli::terminal_output::add_to_linker::<GuestCtx, WasiCli>(l, GuestCtx::cli)?;
    cli::terminal_stdin::add_to_linker::<GuestCtx, WasiCli>(l, GuestCtx::cli)?;
    cli::terminal_stdout::add_to_linker::<GuestCtx, WasiCli>(l, GuestCtx::cli)?;
    cli::terminal_stderr::add_to_linker::<GuestCtx, WasiCli>(l, GuestCtx::cli)?;
    Ok(())
}

#[cfg(all(test, not(target_arch = "arm")))]
mod tests {
    use crate::compile::engine::{self, EngineLimits};

    /// A component importing one function `name` from instance `interface`.
    fn importing(interface: &str, name: &str, result: &str) -> Vec<u8> {
        let text =
            format!(r#"(component (import "{interface}" (instance (export "{name}" (func (result {result}))))))"#);
        wat::parse_str(text).expect("valid component text")
    }

    /// The linker's verdict on a component that imports `interface`.
    fn link(interface: &str, name: &str, result: &str) -> Result<(), String> {
        let engine = engine::build(EngineLimits::native(), engine::Purpose::Native).unwrap();
        let linker = crate::capabilities::linker(&engine).unwrap();
        let component = wasmtime::component::Component::new(&engine, importing(interface, name, result)).unwrap();
        linker.instantiate_pre(&component).map(|_| ()).map_err(|e| format!("{e:#}"))
    }

    #[test]
    fn clocks_are_linked() {
        link("wasi:clocks/monotonic-clock@0.2.0", "now", "u64").expect("monotonic clock available");
    }

    #[test]
    fn filesystem_and_sockets_are_not_linked() {
        let fs = link("wasi:filesystem/preopens@0.2.0", "get-directories", "(list u32)").unwrap_err();
        assert!(fs.contains("wasi:filesystem/preopens"), "{fs}");
        let dns = link("wasi:sockets/instance-network@0.2.0", "instance-network", "u32").unwrap_err();
        assert!(dns.contains("wasi:sockets/instance-network"), "{dns}");
    }
}
