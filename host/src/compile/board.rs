//! Board profiles (`targets/*.toml`, compiled into the binary): what one
//! class of Raspberry Pi runs. A profile names the Rust target of the host
//! binary, the code generator guests are compiled for, the engine's memory
//! reservation and guard, and the guest limits that suit the board's RAM.
//!
//! One profile serves both ends: `wattedge compile --target NAME` builds
//! artifacts with its engine settings on the build machine, and
//! `[host] board = "NAME"` makes the board's host use the same settings (and
//! the profile's default guest limits). wasmtime refuses an artifact whose
//! settings differ, so the two must name the same profile (or profiles with
//! the same engine settings: `board = "auto"`, see [`detect`]).

mod detect;

use std::time::Duration;

use serde::Deserialize;

use super::engine::EngineLimits;
use crate::units::{parse_duration, parse_size};
pub use detect::{AUTO, Detection, MODEL_PATH, MODEL_PATH_ENV, detect, model_path, profile_for_model};

/// The board profiles shipped with this build: (name, TOML).
const PROFILES: &[(&str, &str)] = &[
    ("pi-zero-2w", include_str!("../../../targets/pi-zero-2w.toml")),
    ("pi3", include_str!("../../../targets/pi3.toml")),
    ("pi4", include_str!("../../../targets/pi4.toml")),
    ("pi5", include_str!("../../../targets/pi5.toml")),
    ("armv7", include_str!("../../../targets/armv7.toml")),
];

/// Why a board profile could not be used.
#[derive(Debug, thiserror::Error)]
pub enum BoardError {
    #[error("no board profile named {0:?}; profiles: {list}", list = profile_names())]
    Unknown(String),
    #[error("board profile {name} (targets/{name}.toml): {message}")]
    Bad { name: String, message: String },
}

/// One board profile, with its sizes and durations parsed.
#[derive(Debug, Clone)]
pub struct Profile {
    pub name: String,
    /// The Rust target the host binary is built for.
    pub rust_target: String,
    /// `aarch64` (Cranelift) or `pulley32` (interpreter).
    pub engine: String,
    /// The engine's memory settings on this board; artifacts carry them.
    pub limits: EngineLimits,
    /// A guest's `memory_limit` when its section does not set one.
    pub default_memory_limit: u64,
    /// A guest's `run_timeout` when its section does not set one.
    pub default_run_timeout: Duration,
}

/// A profile file as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProfile {
    rust_target: String,
    engine: String,
    memory_reservation: String,
    memory_guard: String,
    default_memory_limit: String,
    default_run_timeout: String,
}

impl Profile {
    /// The wasmtime compilation target for this board.
    pub fn compiler_target(&self) -> &str {
        match self.engine.as_str() {
            "aarch64" => "aarch64-unknown-linux-gnu",
            other => other,
        }
    }
}

/// The names of the shipped profiles, comma-separated (for messages).
pub fn profile_names() -> String {
    PROFILES.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
}

/// Resolves a `[host] board` value: a profile's name, or [`AUTO`] to detect
/// the board this host runs on (the profile is then `None` on an
/// architecture without profiles, and the detection says why).
pub fn resolve(setting: &str) -> Result<(Option<Profile>, Option<Detection>), BoardError> {
    if setting != AUTO {
        return Ok((Some(profile(setting)?), None));
    }
    let found = detect(&model_path(), std::env::consts::ARCH);
    let chosen = found.profile.map(profile).transpose()?;
    Ok((chosen, Some(found)))
}

/// Looks up a shipped profile by name.
pub fn profile(name: &str) -> Result<Profile, BoardError> {
    let (_, text) = PROFILES.iter().find(|(n, _)| *n == name).ok_or_else(|| BoardError::Unknown(name.into()))?;
    let bad = |message: String| BoardError::Bad { name: name.into(), message };
    let raw: RawProfile = toml::from_str(text).map_err(|e| bad(e.message().to_string()))?;
    if !["aarch64", "pulley32"].contains(&raw.engine.as_str()) {
        return Err(bad(format!("engine = {:?}; use \"aarch64\" or \"pulley32\"", raw.engine)));
    }
    let size = |key: &str, text: &str| parse_size(text).map_err(|e| bad(format!("{key} = {text:?}: {e}")));
    let limits = EngineLimits {
        memory_reservation: size("memory_reservation", &raw.memory_reservation)?,
        memory_guard: size("memory_guard", &raw.memory_guard)?,
        ..EngineLimits::native()
    };
    Ok(Profile {
        name: name.to_string(),
        default_memory_limit: size("default_memory_limit", &raw.default_memory_limit)?,
        default_run_timeout: parse_duration(&raw.default_run_timeout)
            .map_err(|e| bad(format!("default_run_timeout = {:?}: {e}", raw.default_run_timeout)))?,
        rust_target: raw.rust_target,
        engine: raw.engine,
        limits,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_shipped_profile_parses_and_its_engine_settings_build() {
        for (name, _) in PROFILES {
            let p = profile(name).unwrap_or_else(|e| panic!("{e}"));
            assert!(p.default_memory_limit >= 1 << 20, "{name}");
            assert!(p.limits.memory_guard >= 64 << 10, "{name}: guard below one wasm page");
            crate::compile::engine::build(p.limits, crate::compile::engine::Purpose::Native)
                .unwrap_or_else(|e| panic!("{name}: {e:#}"));
        }
        let err = profile("pi9").unwrap_err().to_string();
        assert!(err.contains("pi4") && err.contains("armv7"), "{err}");
    }

    #[test]
    fn a_32_bit_board_reserves_less_than_a_64_bit_one() {
        let armv7 = profile("armv7").unwrap();
        let pi4 = profile("pi4").unwrap();
        assert_eq!(armv7.limits.memory_reservation, 16 << 20);
        assert_eq!(pi4.limits.memory_reservation, 64 << 20);
        assert_eq!(armv7.compiler_target(), "pulley32");
        assert_eq!(pi4.compiler_target(), "aarch64-unknown-linux-gnu");
    }
}
