//! The end-to-end tests, in one test binary: real components (the shipped
//! guests and the test probe, tests/probe) in the real host, against real
//! peers (influxd, Chromium, the `wattedge` binary itself) and local
//! stand-ins for the upstream APIs (`support`).
//!
//! One module per area; run one with a filter, e.g.
//! `cargo test --workspace --test e2e -- swap::`. The two tests that take a
//! minute between them (the swap soak, the influxd outage) are `#[ignore]`d
//! with the reason "slow": `.ci/run` runs them with
//! `cargo test --workspace --test e2e -- --ignored`. Nothing else here is
//! ignored: a test's helper process is the same test, told its role by an
//! environment variable (see `influx::sigkilled_writer_loses_no_acknowledged_point`).

mod support;

mod board;
mod cli;
mod compile_worker;
mod correlator;
mod correlator_ha;
#[cfg(feature = "publish")]
mod fleet;
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
