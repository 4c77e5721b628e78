//! The `[host]` keys that tell boards apart in a shared InfluxDB: `tags`
//! (added to every point a guest writes, and to the host's own health
//! rows) and `health_interval` (how often the host writes its health as
//! measurement `wattedge_host`), kept apart so `config.rs` stays about the
//! file as a whole.

use std::collections::BTreeMap;
use std::time::Duration;

use super::{Checker, ConfigError, parse_duration};

/// How often the host writes its health by default.
pub const DEFAULT_HEALTH_INTERVAL: Duration = Duration::from_secs(60);
/// Most host tags (each is part of every series key a guest writes).
pub const MAX_HOST_TAGS: usize = 16;
/// Longest host tag key or value, in bytes.
pub const MAX_HOST_TAG_LEN: usize = 128;
/// The tag the host's health rows name a guest with: a host tag cannot use it.
pub const GUEST_TAG: &str = "guest";
/// The keys of the host's health rows (`supervisor::health`): a host tag
/// with one of them would share its name with a field of those rows.
pub const HEALTH_KEYS: [&str; 10] = [
    GUEST_TAG,
    "state",
    "version",
    "runs",
    "failures",
    "backend",
    "outbox_points",
    "outbox_bytes",
    "outbox_oldest_age_seconds",
    "reachable",
];

/// The `[host]` keys for a fleet of boards.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct HostIdentity {
    /// `tags`, keys ascending.
    pub tags: Vec<(String, String)>,
    /// `health_interval`; `None` when set to `"0s"` (no health rows).
    pub health_interval: Option<Duration>,
}

impl Checker<'_> {
    pub(super) fn identity(
        &self,
        tags: &BTreeMap<String, String>,
        health_interval: Option<&str>,
    ) -> Result<HostIdentity, ConfigError> {
        if tags.len() > MAX_HOST_TAGS {
            let message = format!("host.tags has {} tags, more than {MAX_HOST_TAGS}", tags.len());
            return Err(self.error(&["host", "tags"], message));
        }
        for (key, value) in tags {
            check_tag(key, value).map_err(|e| self.error(&["host", "tags"], format!("host.tags: {e}")))?;
        }
        let health_interval = match health_interval {
            None => Some(DEFAULT_HEALTH_INTERVAL),
            Some(text) => {
                let every = parse_duration(text).map_err(|e| {
                    let message = format!("host.health_interval = {text:?}: {e}; use e.g. \"60s\", or \"0s\" for none");
                    self.error(&["host", "health_interval"], message)
                })?;
                (!every.is_zero()).then_some(every)
            }
        };
        let tags = tags.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        Ok(HostIdentity { tags, health_interval })
    }
}

/// A host tag: a key of letters, digits, `_`, `-` and `.` not starting
/// with `_` (InfluxDB's own keys such as `_measurement`), not `time` (which
/// InfluxDB 1.x drops) and none of the [`HEALTH_KEYS`]; a value of printable
/// characters without a backslash. Both 1..=[`MAX_HOST_TAG_LEN`] bytes.
/// Stricter than line protocol, so a host tag can never make a guest's
/// point unencodable.
fn check_tag(key: &str, value: &str) -> Result<(), String> {
    let key_chars = key.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if key.is_empty() || key.len() > MAX_HOST_TAG_LEN || !key_chars || key.starts_with('_') {
        return Err(format!("tag key {key:?} is not 1-{MAX_HOST_TAG_LEN} of a-z A-Z 0-9 _ - . (not starting with _)"));
    }
    if key == "time" || HEALTH_KEYS.contains(&key) {
        return Err(format!(
            "tag key {key:?} is reserved (InfluxDB's time, the wattedge_host rows' keys); pick another name"
        ));
    }
    let value_chars = value.chars().all(|c| !c.is_control() && c != '\\');
    if value.is_empty() || value.len() > MAX_HOST_TAG_LEN || !value_chars {
        return Err(format!(
            "the value of tag {key:?} must be 1-{MAX_HOST_TAG_LEN} bytes of printable characters without a backslash"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn parse(host: &str) -> Result<Config, ConfigError> {
        let source = format!("[host]\nstate_dir = \"/tmp/wattedge-state\"\n{host}\n");
        Config::parse(std::path::Path::new("/etc/wattedge/wattedge.toml"), &source)
    }

    #[test]
    fn tags_and_health_interval_are_read_with_their_defaults() {
        let plain = parse("").unwrap().host.identity;
        assert_eq!(plain, HostIdentity { tags: Vec::new(), health_interval: Some(DEFAULT_HEALTH_INTERVAL) });
        let set =
            parse("tags = { zone = \"n\", site = \"cottage\" }\nhealth_interval = \"10s\"").unwrap().host.identity;
        assert_eq!(set.tags, [("site".to_string(), "cottage".to_string()), ("zone".to_string(), "n".to_string())]);
        assert_eq!(set.health_interval, Some(Duration::from_secs(10)));
        assert_eq!(parse("health_interval = \"0s\"").unwrap().host.identity.health_interval, None, "0s: none");
    }

    #[test]
    fn a_bad_tag_or_interval_is_named_with_its_line() {
        let err = parse("tags = { time = \"x\" }").unwrap_err();
        assert_eq!(err.line, Some(3), "{err}");
        assert!(err.message.starts_with("host.tags: tag key \"time\" is reserved"), "{err}");
        let err = parse("health_interval = \"soon\"").unwrap_err();
        assert!(err.message.starts_with("host.health_interval = \"soon\""), "{err}");
        let err = parse("tags = { site = 1 }").unwrap_err();
        assert!(err.message.contains("string"), "a tag value must be a string: {err}");
    }

    #[test]
    fn ordinary_tags_are_accepted() {
        for (key, value) in [("site", "cottage"), ("board-id", "pi4 kitchen, left"), ("rack.slot_2", "Höhe=3")] {
            assert_eq!(check_tag(key, value), Ok(()), "{key}={value}");
        }
    }

    #[test]
    fn tags_influxdb_would_mangle_or_the_host_uses_are_refused() {
        for (key, value) in [
            ("", "x"),
            ("_measurement", "x"),
            ("time", "x"),
            ("guest", "x"),
            ("version", "x"),
            ("si te", "x"),
            ("site", ""),
            ("site", "a\nb"),
            ("site", "a\\"),
            ("site", &"v".repeat(MAX_HOST_TAG_LEN + 1)),
        ] {
            assert!(check_tag(key, value).is_err(), "{key:?}={value:?} must be refused");
        }
    }
}
