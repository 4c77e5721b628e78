//! The three shipped guests, compiled into the binary by `build.rs` (cargo
//! feature `builtin-guests`, on by default), so `cargo run -- run` needs
//! nothing else and `component = "builtin:NAME"` just works.
//!
//! Board builds leave the feature off: their guests arrive as artifacts
//! precompiled by `wattedge compile`, and the 1.3 MB of `.wasm` (which a
//! 32-bit ARM build could not even compile) would only cost flash and RSS.

/// Names accepted after `builtin:` in a guest's `component`.
pub const NAMES: &[&str] = &["watttime", "wattivahti", "correlator"];

/// Whether this binary carries the built-in guests.
pub const EMBEDDED: bool = cfg!(feature = "builtin-guests");

/// The component bytes of built-in guest `name`.
#[cfg(feature = "builtin-guests")]
pub fn component(name: &str) -> Option<&'static [u8]> {
    match name {
        "watttime" => Some(include_bytes!(concat!(env!("WATTEDGE_GUEST_DIR"), "/wattedge_watttime.wasm"))),
        "wattivahti" => Some(include_bytes!(concat!(env!("WATTEDGE_GUEST_DIR"), "/wattedge_wattivahti.wasm"))),
        "correlator" => Some(include_bytes!(concat!(env!("WATTEDGE_GUEST_DIR"), "/wattedge_correlator.wasm"))),
        _ => None,
    }
}

/// The sha256 (hex) of built-in guest `name`, computed by `build.rs`.
#[cfg(feature = "builtin-guests")]
pub fn digest(name: &str) -> Option<&'static str> {
    match name {
        "watttime" => Some(env!("WATTEDGE_SHA256_WATTTIME")),
        "wattivahti" => Some(env!("WATTEDGE_SHA256_WATTIVAHTI")),
        "correlator" => Some(env!("WATTEDGE_SHA256_CORRELATOR")),
        _ => None,
    }
}

/// Without the feature there are no built-in guests to hash.
#[cfg(not(feature = "builtin-guests"))]
pub fn digest(_name: &str) -> Option<&'static str> {
    None
}

/// Without the feature there are no built-in guest bytes.
#[cfg(not(feature = "builtin-guests"))]
pub fn component(_name: &str) -> Option<&'static [u8]> {
    None
}

/// Path of the test probe component built next to the shipped guests (tests only).
#[cfg(feature = "builtin-guests")]
pub fn probe_path() -> std::path::PathBuf {
    std::path::Path::new(env!("WATTEDGE_GUEST_DIR")).join("wattedge_probe.wasm")
}

#[cfg(all(test, feature = "builtin-guests"))]
mod tests {
    /// The cache is keyed by these digests: a stale one would map the
    /// artifact of other bytes.
    #[test]
    fn build_time_digests_match_the_embedded_bytes() {
        for name in super::NAMES {
            let bytes = super::component(name).expect("embedded");
            let sha256 = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(bytes));
            assert_eq!(super::digest(name), Some(sha256.as_str()), "{name}");
        }
    }
}
