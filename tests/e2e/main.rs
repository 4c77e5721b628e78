//! The end-to-end tests, in one test binary: real components (the shipped
//! guests and the test probe, tests/probe) in the real host, against real
//! peers (influxd, Chromium, the `wattedge` binary itself) and local
//! stand-ins for the upstream APIs (`support`).
//!
//! One module per area; run one with a filter, e.g.
//! `cargo test -p wattedge --test e2e -- swap::`. Tests that take a minute
//! or more are `#[ignore]`d with the reason "slow": `.ci/run` runs them
//! with `cargo test -p wattedge --test e2e -- --ignored`.

mod support;

mod board;
mod cli;
mod compile_worker;
mod correlator;
mod correlator_ha;
mod foundation;
mod hostile;
mod http;
mod influx;
#[cfg(feature = "influx-v2")]
mod influx_v2;
mod query_floats;
mod status_page;
mod swap;
mod table;
mod wattivahti;
mod watttime;
