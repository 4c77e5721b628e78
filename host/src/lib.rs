//! wattedge: a WebAssembly-sandboxed runtime for home-energy data jobs on
//! low-power boards.
//!
//! The host runs guest components on schedules and gives them outbound HTTP,
//! timers, state and a time-series store through the `wattedge:runtime` WIT
//! world, each only as far as its grants in `wattedge.toml` allow. The binary
//! (`main.rs`) is a thin shell over [`cli`]; tests drive [`start`] directly
//! with the admin server on `127.0.0.1:0`.
//!
//! # Layout
//!
//! Modules form layers; a module uses only modules of its own layer or of
//! the layers above it in this list, never the other way round, and no
//! module depends on itself through others, at the top level or among the
//! children of one module (`.ci/module-cycles` checks both).
//!
//! **leaf** — shared by several layers, depending on nothing of the crate
//! (or only on another leaf):
//! - `units`: durations, sizes and schedules as the config writes them.
//! - `bindings`: the `wattedge:runtime` WIT world's generated bindings.
//! - `blocking`: running CPU-heavy work off the async threads.
//! - [`builtin`]: the shipped guests compiled into the binary.
//! - `guest_text`: guest-supplied text made safe for logs and answers.
//! - `metrics`: the one writer of Prometheus text.
//! - [`oci`]: `oci://` references, digests and Ed25519 signatures over an
//!   index digest (parsed by config, named by compile, used by fleet).
//! - `percent`: percent-encoding of query components and form values.
//! - `private_dir`, `redb_file`: files and directories only the host's user
//!   can touch.
//! - [`secrets`]: the secrets file, its values and scrubbing them from text.
//! - `timefmt`: RFC 3339 timestamps.
//! - `trim`: giving back the binary's pages that start-up touched.
//!
//! **compile** — [`compile`]: how a `.wasm` becomes running code: engine
//! settings, board profiles, compiling and type-checking a component, the
//! artifact cache, the compile worker process and precompiling for a board.
//!
//! **config** — [`config`]: the user's contract, `wattedge.toml`, parsed and
//! validated at load, grants included (`config::grants`).
//!
//! **store** — [`store`]: the time-series store interface and its backends
//! (embedded, InfluxDB v1/v2 through an outbox and forwarder).
//!
//! **fleet** — [`fleet`]: guests by reference: resolving `oci://` through
//! a registry, verifying digests and signatures, the content-addressed
//! copies under `state_dir/oci` (offline first), and `publish`.
//!
//! **api** — `api`: the admin API's contract: guest snapshots and states,
//! the `AdminBackend` trait and its errors (produced by the supervisor,
//! rendered by the admin server; the store's status comes from the store).
//!
//! **capability** — [`capabilities`]: what a guest may call (HTTP, influx,
//! state, secrets, schedule, status, log, WASI), each gated by its grants.
//!
//! **supervisor** — `supervisor`: guests' lifecycles, schedules, runs, swaps
//! and tier-up; it serves the admin API's types.
//!
//! **admin** — [`admin`]: the operator's HTTP endpoint and status page, over
//! an `AdminBackend`.
//!
//! **host** — `host`: assembles config, secrets, store, engine, supervisor
//! and admin server into a running host ([`start`], [`run`]).
//!
//! **cli** — [`cli`]: the `wattedge` command.

pub mod admin;
pub(crate) mod api;
pub(crate) mod bindings;
pub(crate) mod blocking;
pub mod builtin;
pub mod capabilities;
pub mod cli;
pub mod compile;
pub mod config;
pub mod fleet;
pub(crate) mod guest_text;
pub(crate) mod host;
pub(crate) mod metrics;
pub mod oci;
pub(crate) mod percent;
pub(crate) mod private_dir;
pub(crate) mod redb_file;
pub mod secrets;
pub mod store;
pub(crate) mod supervisor;
pub(crate) mod timefmt;
pub(crate) mod trim;
pub(crate) mod units;

pub use host::{HostError, HostOptions, RunningHost, run, run_with, start, start_with};
