//! The three shipped guests, compiled into the binary by `build.rs`, so a
//! board needs only one file and `component = "builtin:NAME"` always works.

/// Names accepted after `builtin:` in a guest's `component`.
pub const NAMES: &[&str] = &["watttime", "wattivahti", "correlator"];

/// The component bytes of built-in guest `name`.
pub fn component(name: &str) -> Option<&'static [u8]> {
    match name {
        "watttime" => Some(include_bytes!(concat!(env!("WATTEDGE_GUEST_DIR"), "/wattedge_watttime.wasm"))),
        "wattivahti" => Some(include_bytes!(concat!(env!("WATTEDGE_GUEST_DIR"), "/wattedge_wattivahti.wasm"))),
        "correlator" => Some(include_bytes!(concat!(env!("WATTEDGE_GUEST_DIR"), "/wattedge_correlator.wasm"))),
        _ => None,
    }
}

/// Path of the test probe component built next to the shipped guests (tests only).
pub fn probe_path() -> std::path::PathBuf {
    std::path::Path::new(env!("WATTEDGE_GUEST_DIR")).join("wattedge_probe.wasm")
}
