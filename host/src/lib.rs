//! wattedge: a WebAssembly-sandboxed runtime for home-energy data jobs on
//! low-power boards.
//!
//! The host runs guest components on schedules and gives them outbound HTTP,
//! timers, state and a time-series store through the `wattedge:runtime` WIT
//! world, each only as far as its grants in `wattedge.toml` allow. The binary
//! (`main.rs`) is a thin shell over [`cli`]; tests drive [`host::start`]
//! directly with the admin server on `127.0.0.1:0`.

pub mod admin;
pub mod artifact_cache;
pub mod bindings;
pub mod blocking;
pub mod board;
pub mod builtin;
pub mod capabilities;
pub mod cli;
pub mod compile_process;
pub mod component;
pub mod config;
pub mod engine;
pub mod fleet;
pub mod guest_text;
pub mod host;
#[cfg(not(target_arch = "arm"))]
pub mod precompile;
pub mod private_dir;
pub mod redb_file;
pub mod secrets;
pub mod store;
pub mod supervisor;
pub mod timefmt;

pub use host::{HostError, HostOptions, RunningHost, run, run_with, start, start_with};
