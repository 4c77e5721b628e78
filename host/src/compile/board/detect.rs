//! `board = "auto"`: the profile for the board the host runs on, found at
//! start from the model the kernel reads out of the device tree
//! (`/proc/device-tree/model`, e.g. "Raspberry Pi 4 Model B Rev 1.4").
//!
//! The Debian packages ship one config for every Pi of an architecture, so
//! the profile cannot be written into it. The architecture decides first:
//! a 32-bit build has only Pulley and runs only `armv7` artifacts, whatever
//! the board (a Pi 4 on 32-bit Raspberry Pi OS included); a 64-bit ARM
//! build picks the Pi's profile by model, and on anything else (no model
//! file, another vendor's board) the aarch64 baseline, `pi-zero-2w`: the
//! smallest RAM class, whose limits every 64-bit board can give. Every
//! aarch64 profile has the same engine settings, so the artifacts one of
//! them compiled load under all of them. Other architectures (the x86_64
//! build machine) have no board profile and keep this machine's defaults.

use std::fmt;
use std::path::{Path, PathBuf};

/// The `board` value that asks for detection.
pub const AUTO: &str = "auto";
/// Where the kernel exposes the board's model.
pub const MODEL_PATH: &str = "/proc/device-tree/model";
/// Overrides [`MODEL_PATH`] (tests, and trying a package under qemu-user).
pub const MODEL_PATH_ENV: &str = "WATTEDGE_BOARD_MODEL_PATH";
/// The profile of a 64-bit ARM board that is not a known Raspberry Pi.
pub const AARCH64_BASELINE: &str = "pi-zero-2w";
/// The only profile a 32-bit ARM build can run.
pub const ARM32_PROFILE: &str = "armv7";

/// What `board = "auto"` found, and why (for the log and `check`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Detection {
    /// The profile chosen; `None` on an architecture without profiles.
    pub profile: Option<&'static str>,
    /// The architecture the host binary was built for.
    pub arch: String,
    /// The model file read.
    pub path: PathBuf,
    /// The model it held, or why it could not be read.
    pub model: Result<String, String>,
    /// Whether the model named the profile (rather than the architecture alone).
    pub by_model: bool,
}

/// The model file to read: [`MODEL_PATH_ENV`] if set, else [`MODEL_PATH`].
pub fn model_path() -> PathBuf {
    std::env::var_os(MODEL_PATH_ENV).map_or_else(|| PathBuf::from(MODEL_PATH), PathBuf::from)
}

/// Detects the profile for a host built for `arch` (`std::env::consts::ARCH`)
/// on the board whose model is in `model_path`.
pub fn detect(model_path: &Path, arch: &str) -> Detection {
    let model = std::fs::read(model_path)
        .map(|bytes| String::from_utf8_lossy(&bytes).trim_matches(|c: char| c == '\0' || c.is_whitespace()).to_string())
        .map_err(|e| e.to_string());
    let by_model = model.as_deref().ok().and_then(profile_for_model);
    let (profile, by_model) = match arch {
        "aarch64" => (Some(by_model.unwrap_or(AARCH64_BASELINE)), by_model.is_some()),
        "arm" => (Some(ARM32_PROFILE), false),
        _ => (None, false),
    };
    Detection { profile, arch: arch.to_string(), path: model_path.to_path_buf(), model, by_model }
}

/// The 64-bit profile of a Raspberry Pi model string, `None` for any other board.
pub fn profile_for_model(model: &str) -> Option<&'static str> {
    let rest = model.strip_prefix("Raspberry Pi ")?;
    // "Compute Module 4 Rev 1.0" is a Pi 4 on a module, and so on.
    let rest = rest.strip_prefix("Compute Module ").unwrap_or(rest);
    let mut words = rest.split_whitespace();
    match words.next()? {
        "5" | "500" | "500+" => Some("pi5"),
        "4" | "4S" | "400" => Some("pi4"),
        // A Pi 2 that runs a 64-bit OS is the v1.2 (BCM2837, like the Pi 3).
        "3" | "3+" | "2" => Some("pi3"),
        "Zero" if words.next() == Some("2") => Some("pi-zero-2w"),
        _ => None,
    }
}

impl fmt::Display for Detection {
    /// E.g. `board pi4, auto: /proc/device-tree/model is "Raspberry Pi 4 Model B Rev 1.4"`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let path = self.path.display();
        let found = match &self.model {
            Ok(model) => format!("{path} is {model:?}"),
            Err(e) => format!("no {path}: {e}"),
        };
        match self.profile {
            None => write!(f, "no board profile for {}, auto: this machine's defaults", self.arch),
            Some(name) if self.by_model => write!(f, "board {name}, auto: {found}"),
            Some(name) if self.arch == "arm" => {
                write!(f, "board {name}, auto: the profile of 32-bit ARM builds ({found})")
            }
            Some(name) => {
                write!(f, "board {name}, auto: the {} baseline, not a known Raspberry Pi ({found})", self.arch)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model_file(text: &[u8]) -> tempfile::NamedTempFile {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), text).unwrap();
        file
    }

    #[test]
    fn every_64_bit_raspberry_pi_model_maps_to_its_profile() {
        let cases = [
            ("Raspberry Pi 5 Model B Rev 1.0", "pi5"),
            ("Raspberry Pi 500 Rev 1.0", "pi5"),
            ("Raspberry Pi Compute Module 5 Rev 1.0", "pi5"),
            ("Raspberry Pi 4 Model B Rev 1.4", "pi4"),
            ("Raspberry Pi 400 Rev 1.0", "pi4"),
            ("Raspberry Pi Compute Module 4 Rev 1.0", "pi4"),
            ("Raspberry Pi 3 Model B Plus Rev 1.3", "pi3"),
            ("Raspberry Pi 3 Model A Plus Rev 1.0", "pi3"),
            ("Raspberry Pi Compute Module 3 Plus Rev 1.0", "pi3"),
            ("Raspberry Pi 2 Model B Rev 1.2", "pi3"),
            ("Raspberry Pi Zero 2 W Rev 1.0", "pi-zero-2w"),
        ];
        for (model, profile) in cases {
            assert_eq!(profile_for_model(model), Some(profile), "{model}");
            crate::compile::board::profile(profile).unwrap_or_else(|e| panic!("{model}: {e}"));
        }
        for other in ["Raspberry Pi Zero W Rev 1.1", "Pine64 RockPro64 v2.1", "Raspberry Pi", ""] {
            assert_eq!(profile_for_model(other), None, "{other}");
        }
    }

    #[test]
    fn an_aarch64_host_reads_the_model_with_its_trailing_nul() {
        let file = model_file(b"Raspberry Pi 4 Model B Rev 1.4\0");
        let found = detect(file.path(), "aarch64");
        assert_eq!((found.profile, found.by_model), (Some("pi4"), true));
        assert_eq!(found.model.as_deref(), Ok("Raspberry Pi 4 Model B Rev 1.4"));
        let said = found.to_string();
        assert!(said.starts_with("board pi4, auto: ") && said.contains("\"Raspberry Pi 4 Model B Rev 1.4\""), "{said}");
    }

    #[test]
    fn an_aarch64_host_without_a_known_model_falls_back_to_the_baseline_and_says_why() {
        let other = model_file(b"Pine64 RockPro64 v2.1\0");
        let found = detect(other.path(), "aarch64");
        assert_eq!((found.profile, found.by_model), (Some(AARCH64_BASELINE), false));
        assert!(found.to_string().contains("aarch64 baseline, not a known Raspberry Pi"), "{found}");
        let missing = other.path().with_extension("missing");
        let found = detect(&missing, "aarch64");
        assert_eq!(found.profile, Some(AARCH64_BASELINE));
        assert!(found.model.is_err());
        assert!(found.to_string().contains(&format!("no {}", missing.display())), "{found}");
    }

    #[test]
    fn a_32_bit_arm_host_runs_armv7_even_on_a_64_bit_pi() {
        let file = model_file(b"Raspberry Pi 4 Model B Rev 1.4\0");
        let found = detect(file.path(), "arm");
        assert_eq!(found.profile, Some(ARM32_PROFILE));
        assert!(found.to_string().starts_with("board armv7, auto: the profile of 32-bit ARM builds"), "{found}");
    }

    #[test]
    fn another_architecture_has_no_profile_whatever_the_model_says() {
        let file = model_file(b"Raspberry Pi 5 Model B Rev 1.0\0");
        let found = detect(file.path(), "x86_64");
        assert_eq!(found.profile, None);
        assert_eq!(found.to_string(), "no board profile for x86_64, auto: this machine's defaults");
    }

    #[test]
    fn every_aarch64_profile_has_the_engine_settings_of_the_baseline() {
        // The arm64 package ships one set of artifacts, compiled with the
        // baseline profile; wasmtime loads them only under equal settings.
        let baseline = crate::compile::board::profile(AARCH64_BASELINE).unwrap();
        for name in ["pi3", "pi4", "pi5"] {
            let p = crate::compile::board::profile(name).unwrap();
            assert_eq!((p.engine.as_str(), p.limits), (baseline.engine.as_str(), baseline.limits), "{name}");
        }
    }
}
