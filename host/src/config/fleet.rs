//! `[fleet]`: how this host talks to OCI registries (which may be plain
//! `http://`, whose credentials to use, which signing keys it trusts), and
//! the checks of `oci://` component references.

use std::collections::BTreeMap;

use super::{Checker, ComponentSource, ConfigError};
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
}

/// `[fleet.credentials."REGISTRY"]`: a user name, and the secret holding
/// the password or access token (a name, never the value).
#[derive(Debug, Clone, PartialEq)]
pub struct RegistryCredentials {
    pub username: String,
    pub password_secret: String,
}

impl Checker<'_> {
    /// `[fleet]`, read from its TOML value by hand rather than a derived
    /// `Deserialize` (which costs the board binary several KB), with the
    /// same refusal of unknown keys as every other table.
    pub(super) fn fleet(&self, raw: Option<toml::Value>) -> Result<FleetConfig, ConfigError> {
        let Some(raw) = raw else { return Ok(FleetConfig::default()) };
        let table = self.table(&raw, &["fleet"], "[fleet]", &["insecure_registries", "trusted_keys", "credentials"])?;
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
        Ok(FleetConfig { insecure_registries, trusted_keys, credentials })
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
}
