//! Generated bindings for the `wattedge:runtime` guest world, kept apart from
//! hand-written code. Imports that touch storage are async so a slow disk or
//! database never blocks the scheduler thread.

wasmtime::component::bindgen!({
    world: "guest",
    path: "../wit",
    imports: {
        "wattedge:runtime/influx.write": async,
        "wattedge:runtime/influx.query": async,
        "wattedge:runtime/influx.query-floats": async,
        "wattedge:runtime/influx.query-table": async,
        "wattedge:runtime/influx.write-table": async,
        "wattedge:runtime/influx.query-multi": async,
        "wattedge:runtime/state.set": async,
        "wattedge:runtime/state.delete": async,
    },
    exports: { default: async },
});

pub use self::wattedge::runtime::{influx, log, schedule, secrets, state, status, types};
