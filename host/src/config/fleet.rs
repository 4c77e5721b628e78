//! `[fleet]`: how this host talks to OCI registries (which may be plain
//! `http://`, whose credentials to use, which signing keys it trusts), and
//! the checks of `oci://` component references.

use std::collections::BTreeMap;
use std::time::Duration;

use super::{Checker, ComponentSource, ConfigError, parse_duration};
use crate::oci::signature::TrustedKey;
use crate::oci::{OciReference, reference::valid_registry};

/// The validated `[fleet]` section.
#[derive(Debug, Clone, Default)]
pub struct FleetConfig {
    /// Registries (`HOST[:PORT]`) reached over plain `http://`.
    pub insecure_registries: Vec<String>,
    /// With keys, every reference must be signed by one of them.
    pub trusted_keys: Vec<TrustedKey>,
    /// Registry → Basic credentials for its token service.
    pub credentials: BTreeMap<String, RegistryCredentials>,
    /// How a tag reference is followed while the host runs.
    pub rollout: RolloutConfig,
}

/// `[fleet] poll_interval`, `poll_jitter`, `gate_runs`, `gate_window`:
/// how often a followed tag is asked for, and the health gate a new
/// digest must pass before it stays.
#[derive(Debug, Clone, PartialEq)]
pub struct RolloutConfig {
    /// Between two asks of the registry (default 5 min).
    pub poll_interval: Duration,
    /// Up to this much is added to each wait at random, so that a fleet
    /// does not ask the registry in lockstep (default 1 min).
    pub poll_jitter: Duration,
    /// The first runs of a new version that must all succeed (default 3).
    pub gate_runs: u32,
    /// How long after the swap the gate watches those runs (default 10 min).
    pub gate_window: Duration,
}

impl Default for RolloutConfig {
    fn default() -> Self {
        RolloutConfig {
            poll_interval: Duration::from_secs(300),
            poll_jitter: Duration::from_secs(60),
            gate_runs: 3,
            gate_window: Duration::from_secs(600),
        }
    }
}

/// `[fleet.credentials."REGISTRY"]`: a user name, and the secret holding
/// the password or access token (a name, never the value).
#[derive(Debug, Clone, PartialEq)]
pub struct RegistryCredentials {
    pub username: String,
    pub password_secret: String,
}

/// The rollout keys of `[fleet]` as written, apart from how the table is
/// read (each absent key takes its default).
#[derive(Debug, Default)]
pub(super) struct RawRollout<'a> {
    pub poll_interval: Option<&'a str>,
    pub poll_jitter: Option<&'a str>,
    pub gate_runs: Option<i64>,
    pub gate_window: Option<&'a str>,
}

impl Checker<'_> {
    /// `[fleet]`, read from its TOML value by hand rather than a derived
    /// `Deserialize` (which costs the board binary several KB), with the
    /// same refusal of unknown keys as every other table.
    pub(super) fn fleet(&self, raw: Option<toml::Value>) -> Result<FleetConfig, ConfigError> {
        let Some(raw) = raw else { return Ok(FleetConfig::default()) };
        let keys = [
            "insecure_registries",
            "trusted_keys",
            "credentials",
            "poll_interval",
            "poll_jitter",
            "gate_runs",
            "gate_window",
        ];
        let table = self.table(&raw, &["fleet"], "[fleet]", &keys)?;
        let rollout = self.rollout(RawRollout {
            poll_interval: self.text(table, "poll_interval")?,
            poll_jitter: self.text(table, "poll_jitter")?,
            gate_runs: self.integer(table, "gate_runs")?,
            gate_window: self.text(table, "gate_window")?,
        })?;
        let insecure_registries = self.strings(table, "insecure_registries")?;
        for registry in &insecure_registries {
            self.check_registry(registry, "insecure_registries")?;
        }
        let trusted_keys = self
            .strings(table, "trusted_keys")?
            .iter()
            .map(|k| {
                TrustedKey::parse(k)
                    .map_err(|e| self.error(&["fleet", "trusted_keys"], format!("fleet.trusted_keys: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut credentials = BTreeMap::new();
        let empty = toml::Value::Table(toml::Table::new());
        let registries = self.table(
            table.get("credentials").unwrap_or(&empty),
            &["fleet", "credentials"],
            "[fleet.credentials]",
            &[],
        )?;
        for (registry, entry) in registries {
            self.check_registry(registry, "credentials")?;
            credentials.insert(registry.clone(), self.credentials(registry, entry)?);
        }
        Ok(FleetConfig { insecure_registries, trusted_keys, credentials, rollout })
    }

    /// `[fleet.credentials."REGISTRY"]`: `username` and a secret reference.
    fn credentials(&self, registry: &str, entry: &toml::Value) -> Result<RegistryCredentials, ConfigError> {
        let at = ["fleet", "credentials", registry];
        let name = format!("[fleet.credentials.\"{registry}\"]");
        let table = self.table(entry, &at, &name, &["username", "password"])?;
        let text = |key: &str| {
            table.get(key).and_then(toml::Value::as_str).map(str::to_string).ok_or_else(|| {
                self.error(&at, format!("{name} needs {key} = \"...\" (the password as \"${{secret:NAME}}\")"))
            })
        };
        let username = text("username")?;
        let password_secret = secret_name(&text("password")?).ok_or_else(|| {
            self.error(
                &["fleet", "credentials", registry, "password"],
                format!(
                    "fleet.credentials.\"{registry}\".password must be a secret reference such as \"${{secret:registry.password}}\", never the value itself; store it with `wattedge secrets set registry.password`"
                ),
            )
        })?;
        Ok(RegistryCredentials { username, password_secret })
    }

    /// `value` as a table whose keys are all in `known` (any key when empty).
    fn table<'v>(
        &self,
        value: &'v toml::Value,
        at: &[&str],
        name: &str,
        known: &[&str],
    ) -> Result<&'v toml::Table, ConfigError> {
        let table = value.as_table().ok_or_else(|| self.error(at, format!("{name} must be a table")))?;
        if let Some(key) = table.keys().find(|k| !known.is_empty() && !known.contains(&k.as_str())) {
            let mut path = at.to_vec();
            path.push(key);
            return Err(self.error(
                &path,
                format!(
                    "unknown field `{key}` in {name}, expected one of {}; remove or rename the key (see README, Configuration)",
                    known.join(", ")
                ),
            ));
        }
        Ok(table)
    }

    /// `fleet.KEY`, a list of strings (empty when absent).
    fn strings(&self, table: &toml::Table, key: &str) -> Result<Vec<String>, ConfigError> {
        let Some(value) = table.get(key) else { return Ok(Vec::new()) };
        let items = value.as_array().map(|items| items.iter().map(|i| i.as_str().map(str::to_string)).collect());
        items.flatten().ok_or_else(|| {
            self.error(&["fleet", key], format!("fleet.{key} must be a list of strings, e.g. {key} = [\"...\"]"))
        })
    }

    fn check_registry(&self, registry: &str, key: &str) -> Result<(), ConfigError> {
        if valid_registry(registry) {
            return Ok(());
        }
        Err(self.error(
            &["fleet", key],
            format!("fleet.{key}: {registry:?} is not a registry; write HOST or HOST:PORT, e.g. \"127.0.0.1:5000\""),
        ))
    }

    /// The polling and gate settings, each defaulted when absent.
    pub(super) fn rollout(&self, raw: RawRollout<'_>) -> Result<RolloutConfig, ConfigError> {
        let defaults = RolloutConfig::default();
        let duration = |key: &str, text: Option<&str>, default: Duration| match text {
            None => Ok(default),
            Some(t) => parse_duration(t)
                .map_err(|e| self.error(&["fleet", key], format!("fleet.{key} = {t:?}: {e}; use e.g. \"5m\""))),
        };
        let poll_interval = duration("poll_interval", raw.poll_interval, defaults.poll_interval)?;
        if poll_interval < Duration::from_secs(1) {
            return Err(self.error(&["fleet", "poll_interval"], "fleet.poll_interval must be at least 1s".to_string()));
        }
        let gate_runs = match raw.gate_runs.map(u32::try_from) {
            None => defaults.gate_runs,
            Some(Ok(n @ 1..=32)) => n,
            Some(_) => {
                return Err(self.error(&["fleet", "gate_runs"], "fleet.gate_runs must be 1 to 32".to_string()));
            }
        };
        Ok(RolloutConfig {
            poll_interval,
            poll_jitter: duration("poll_jitter", raw.poll_jitter, defaults.poll_jitter)?,
            gate_runs,
            gate_window: duration("gate_window", raw.gate_window, defaults.gate_window)?,
        })
    }

    /// `fleet.KEY`, a string (absent: `None`; another type is refused).
    fn text<'t>(&self, table: &'t toml::Table, key: &str) -> Result<Option<&'t str>, ConfigError> {
        match table.get(key) {
            None => Ok(None),
            Some(value) => value.as_str().map(Some).ok_or_else(|| {
                self.error(&["fleet", key], format!("fleet.{key} must be a string, e.g. {key} = \"5m\""))
            }),
        }
    }

    /// `fleet.KEY`, an integer (absent: `None`; another type is refused).
    fn integer(&self, table: &toml::Table, key: &str) -> Result<Option<i64>, ConfigError> {
        match table.get(key) {
            None => Ok(None),
            Some(value) => value.as_integer().map(Some).ok_or_else(|| {
                self.error(&["fleet", key], format!("fleet.{key} must be a whole number, e.g. {key} = 3"))
            }),
        }
    }

    /// `guests.NAME.component = "oci://…"`.
    pub(super) fn oci_component(&self, name: &str, text: &str) -> Result<ComponentSource, ConfigError> {
        OciReference::parse(text)
            .map(ComponentSource::Oci)
            .map_err(|e| self.error(&["guests", name, "component"], format!("guests.{name}.component: {e}")))
    }
}

/// `${secret:NAME}` → `NAME`.
fn secret_name(value: &str) -> Option<String> {
    value
        .strip_prefix("${secret:")
        .and_then(|v| v.strip_suffix('}'))
        .filter(|name| !name.is_empty() && !name.contains(['{', '}', '$']))
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::{ComponentSource, Config};

    const KEY: &str = "ed25519:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";

    fn parse(text: &str) -> Result<Config, String> {
        Config::parse(Path::new("/etc/wattedge/wattedge.toml"), text).map_err(|e| e.to_string())
    }

    #[test]
    fn an_oci_component_with_fleet_settings_is_accepted() {
        let config = parse(&format!(
            "[fleet]\ninsecure_registries = [\"127.0.0.1:5000\"]\ntrusted_keys = [\"{KEY}\"]\n\
             [fleet.credentials.\"ghcr.io\"]\nusername = \"bot\"\npassword = \"${{secret:ghcr.token}}\"\n\
             [guests.job]\ncomponent = \"oci://127.0.0.1:5000/wattedge/probe:stable\"\n"
        ))
        .unwrap();
        let ComponentSource::Oci(reference) = &config.guests[0].component else { panic!("an oci source") };
        assert_eq!(reference.to_string(), "oci://127.0.0.1:5000/wattedge/probe:stable");
        assert_eq!(config.fleet.insecure_registries, ["127.0.0.1:5000"]);
        assert_eq!(config.fleet.trusted_keys.len(), 1);
        assert_eq!(config.fleet.credentials["ghcr.io"].password_secret, "ghcr.token");
    }

    #[test]
    fn fleet_mistakes_name_the_key_line_and_fix() {
        let cases = [
            ("[guests.job]\ncomponent = \"oci://ghcr.io/me/probe\"\n", ":2: guests.job.component", "add :TAG"),
            ("[fleet]\ntrusted_keys = [\"ed25519:nope\"]\n", ":2: fleet.trusted_keys", "wattedge keygen"),
            ("[fleet]\ninsecure_registries = [\"http://x\"]\n", ":2:", "HOST:PORT"),
            (
                "[fleet.credentials.\"ghcr.io\"]\nusername = \"bot\"\npassword = \"hunter2\"\n",
                "password must be a secret reference",
                "wattedge secrets set",
            ),
            ("[fleet]\nfollow = true\n", "unknown field", "remove or rename"),
        ];
        for (text, at, fix) in cases {
            let err = parse(text).unwrap_err();
            assert!(err.contains(at) && err.contains(fix), "{text}: {err}");
            assert!(!err.contains("hunter2"), "never echoes a secret value: {err}");
        }
    }

    #[test]
    fn a_followed_tag_polls_every_5m_with_jitter_and_gates_3_runs_in_10m_by_default() {
        let rollout = parse("").unwrap().fleet.rollout;
        assert_eq!(rollout, super::RolloutConfig::default());
        assert_eq!(rollout.poll_interval, std::time::Duration::from_secs(300));
        assert_eq!(rollout.gate_runs, 3);
        assert_eq!(rollout.gate_window, std::time::Duration::from_secs(600));
        let text = "[fleet]\npoll_interval = \"30s\"\npoll_jitter = \"0s\"\ngate_runs = 5\ngate_window = \"1h\"\n";
        let rollout = parse(text).unwrap().fleet.rollout;
        assert_eq!(rollout.poll_interval, std::time::Duration::from_secs(30));
        assert_eq!(rollout.poll_jitter, std::time::Duration::ZERO);
        assert_eq!((rollout.gate_runs, rollout.gate_window), (5, std::time::Duration::from_secs(3600)));
    }

    #[test]
    fn rollout_settings_out_of_range_name_the_key() {
        let cases = [
            ("[fleet]\npoll_interval = \"500ms\"\n", "fleet.poll_interval must be at least 1s"),
            ("[fleet]\npoll_jitter = \"soon\"\n", "fleet.poll_jitter = \"soon\""),
            ("[fleet]\ngate_runs = 0\n", "fleet.gate_runs must be 1 to 32"),
            ("[fleet]\ngate_runs = 33\n", "fleet.gate_runs must be 1 to 32"),
            ("[fleet]\ngate_runs = -1\n", "fleet.gate_runs must be 1 to 32"),
            ("[fleet]\ngate_runs = \"3\"\n", "fleet.gate_runs must be a whole number"),
            ("[fleet]\npoll_interval = 300\n", "fleet.poll_interval must be a string"),
        ];
        for (text, expected) in cases {
            let err = parse(text).unwrap_err();
            assert!(err.contains(expected), "{text}: {err}");
        }
    }
}
