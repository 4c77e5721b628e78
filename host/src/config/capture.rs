//! `[guests.NAME.grants.capture]`: the operator's rules by which the host
//! takes credentials out of upstream answers, e.g.
//!
//! ```toml
//! [guests.wattivahti.grants.capture]
//! "wattivahti.refresh_token" = { from = "pesv.b2clogin.com", pointer = "/refresh_token", persist = true }
//! ```
//!
//! A guest cannot arm, widen or skip a rule: the host applies every rule to
//! every answer from its `from` host before the guest sees a byte. Also here:
//! the host's own secrets (`admin.token`, the InfluxDB credentials) can
//! never be granted to a guest, neither to send nor to capture into.

use std::collections::BTreeSet;
use std::time::Duration;

use serde::Deserialize;

use super::grants::HostGrant;
use super::{Checker, ComponentSource, ConfigError, Grants, InfluxConfig, locate, parse_duration};

/// Longest captured value the host stores; a longer one is refused (and
/// counted): no real token is this long, and every stored value is looked
/// for in every answer the guest receives.
pub const MAX_CAPTURED_LEN: usize = 8 << 10;

/// One capture rule, checked and parsed once when the config is read.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(try_from = "RawCaptureRule")]
pub struct CaptureRule {
    /// The only host whose answers this rule reads.
    pub from: HostGrant,
    /// JSON pointer (RFC 6901) to the field, e.g. `/access_token`.
    pub pointer: String,
    /// Forget the value after this long.
    pub ttl: Option<Duration>,
    /// Write the value to the secrets file (atomically, mode 0600).
    pub persist: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCaptureRule {
    from: String,
    pointer: String,
    ttl: Option<String>,
    #[serde(default)]
    persist: bool,
}

impl TryFrom<RawCaptureRule> for CaptureRule {
    type Error = String;

    fn try_from(raw: RawCaptureRule) -> Result<CaptureRule, String> {
        let from = HostGrant::parse(&raw.from)
            .map_err(|e| format!("capture rule: from: {e}; name the token host, e.g. from = \"pesv.b2clogin.com\""))?;
        if !raw.pointer.starts_with('/') {
            return Err(format!(
                "capture rule: pointer = {:?} is not a JSON pointer; it must start with '/', e.g. pointer = \"/access_token\"",
                raw.pointer
            ));
        }
        let ttl = match raw.ttl.as_deref() {
            None => None,
            Some(t) => Some(parse_duration(t).map_err(|e| format!("capture rule: ttl = {t:?}: {e}; use e.g. \"1h\""))?),
        };
        Ok(CaptureRule { from, pointer: raw.pointer, ttl, persist: raw.persist })
    }
}

/// Whether `name` is one of the host's own secrets, which no guest may be
/// granted: the admin token, anything under `influx.`, and whatever
/// secrets `[influx]` names.
pub fn host_internal(name: &str, influx: &InfluxConfig) -> bool {
    name == crate::secrets::ADMIN_TOKEN_SECRET || name.starts_with("influx.") || influx_secrets(influx).contains(name)
}

/// The secret names `[influx]` reads its credentials from.
fn influx_secrets(influx: &InfluxConfig) -> BTreeSet<&str> {
    match influx {
        InfluxConfig::Embedded { .. } => BTreeSet::new(),
        InfluxConfig::V1 { password, token, .. } => password.iter().chain(token).map(String::as_str).collect(),
        #[cfg(feature = "influx-v2")]
        InfluxConfig::V2 { token, .. } => BTreeSet::from([token.as_str()]),
    }
}

/// The capture rules a built-in guest needs for the secrets it is granted
/// (secret, the rule to add): without them (an old config), a token answer
/// would reach the guest instead of the host, and a rotated refresh token
/// would be lost with it. WattTime needs its rule only when it can log in.
fn builtin_needs(builtin: &str, grants: &Grants) -> Vec<(&'static str, &'static str)> {
    let granted = |secret: &str| grants.secrets.contains_key(secret);
    let needed: &[(&str, &str)] = match builtin {
        "wattivahti" => &[
            (
                "wattivahti.refresh_token",
                r#"{ from = "pesv.b2clogin.com", pointer = "/refresh_token", persist = true }"#,
            ),
            ("wattivahti.access_token", r#"{ from = "pesv.b2clogin.com", pointer = "/access_token", ttl = "1h" }"#),
        ],
        "watttime" if granted("watttime.username") => {
            &[("watttime.token", r#"{ from = "api.watttime.org", pointer = "/token", ttl = "30m" }"#)]
        }
        _ => &[],
    };
    needed.iter().copied().filter(|(secret, _)| granted(secret)).collect()
}

impl Checker<'_> {
    /// A built-in guest granted a token has the capture rule that keeps the
    /// token from it ([`builtin_needs`]).
    pub(super) fn check_builtin_capture(
        &self,
        name: &str,
        component: &ComponentSource,
        grants: &Grants,
    ) -> Result<(), ConfigError> {
        let ComponentSource::Builtin(builtin) = component else { return Ok(()) };
        let missing = builtin_needs(builtin, grants).into_iter().find(|(s, _)| !grants.capture.contains_key(*s));
        let Some((secret, rule)) = missing else { return Ok(()) };
        Err(ConfigError {
            file: self.path.to_path_buf(),
            line: locate::line_of(self.source, &["guests", name, "grants", "secrets"])
                .or_else(|| locate::line_of(self.source, &["guests", name, "grants"])),
            message: format!(
                "guests.{name}: builtin:{builtin} is granted {secret} but has no capture rule for it, so the host would hand the token to the guest; add to [guests.{name}.grants.capture]: \"{secret}\" = {rule} (as the shipped wattedge.toml has; see README, Capture)"
            ),
        })
    }

    /// Capture rules name granted secrets only, and no grant names a host secret.
    pub(super) fn check_secret_grants(
        &self,
        name: &str,
        grants: &Grants,
        influx: &InfluxConfig,
    ) -> Result<(), ConfigError> {
        let err = |key: &[&str], message: String| {
            let mut path = vec!["guests", name, "grants"];
            path.extend_from_slice(key);
            let line = locate::line_of(self.source, &path)
                .or_else(|| locate::line_of(self.source, &["guests", name, "grants", key[0]]))
                .or_else(|| locate::line_of(self.source, &["guests", name, "grants"]));
            ConfigError { file: self.path.to_path_buf(), line, message }
        };
        for (table, secret) in
            grants.secrets.keys().map(|s| ("secrets", s)).chain(grants.capture.keys().map(|s| ("capture", s)))
        {
            if host_internal(secret, influx) {
                return Err(err(
                    &[table, secret],
                    format!(
                        "guests.{name}.grants.{table}.{secret:?}: {secret} is one of the host's own secrets (the admin token or the InfluxDB credentials) and cannot be granted to a guest; remove it, and give the guest a secret of its own"
                    ),
                ));
            }
        }
        for secret in grants.capture.keys() {
            if !grants.secrets.contains_key(secret) {
                return Err(err(
                    &["capture", secret],
                    format!(
                        "guests.{name}.grants.capture.{secret:?}: the secret is not in grants.secrets of this guest; add \"{secret}\" = [\"HOST\"] (the hosts it may be sent to) to [guests.{name}.grants.secrets], or remove the rule"
                    ),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::Config;

    fn parse(source: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("/etc/wattedge/wattedge.toml"), source)
    }

    const GUEST: &str = r#"[host]
state_dir = "/tmp/wattedge-state"

[guests.vahti]
component = "builtin:correlator"

[guests.vahti.grants]
http = ["pesv.b2clogin.com"]
secrets = { "vahti.refresh" = ["pesv.b2clogin.com"] }

[guests.vahti.grants.capture]
"#;

    #[test]
    fn a_capture_rule_is_parsed_once_with_its_host() {
        let source = format!(
            "{GUEST}\"vahti.refresh\" = {{ from = \"pesv.b2clogin.com\", pointer = \"/refresh_token\", ttl = \"1h\", persist = true }}\n"
        );
        let config = parse(&source).unwrap();
        let rule = &config.guests[0].grants.capture["vahti.refresh"];
        assert_eq!(rule.from, HostGrant::parse("pesv.b2clogin.com").unwrap());
        assert_eq!(
            (rule.pointer.as_str(), rule.ttl, rule.persist),
            ("/refresh_token", Some(Duration::from_secs(3600)), true)
        );
    }

    #[test]
    fn the_shipped_config_captures_the_builtin_guests_tokens() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../wattedge.toml");
        let config = Config::load(&path).unwrap();
        let rules = |guest: &str| config.guest(guest).unwrap().grants.capture.clone();
        assert_eq!(rules("watttime")["watttime.token"].from.host, "api.watttime.org");
        let vahti = rules("wattivahti");
        assert!(vahti["wattivahti.refresh_token"].persist && vahti["wattivahti.access_token"].ttl.is_some());
        assert!(vahti.values().all(|r| r.from.host == "pesv.b2clogin.com"));
    }

    #[test]
    fn a_rule_for_an_ungranted_secret_names_its_line_and_the_fix() {
        let source = format!("{GUEST}\"vahti.other\" = {{ from = \"pesv.b2clogin.com\", pointer = \"/t\" }}\n");
        let err = parse(&source).unwrap_err();
        assert_eq!(err.line, Some(12), "{err}");
        assert!(err.message.contains("guests.vahti.grants.capture.\"vahti.other\""), "{}", err.message);
        assert!(
            err.message.contains("not in grants.secrets") && err.message.contains("[guests.vahti.grants.secrets]"),
            "{}",
            err.message
        );
    }

    #[test]
    fn the_hosts_own_secrets_cannot_be_granted() {
        for name in ["admin.token", "influx.password", "influx.token"] {
            let source = GUEST.replace("\"vahti.refresh\" = [", &format!("\"{name}\" = ["));
            let err = parse(&source).unwrap_err();
            assert_eq!(err.line, Some(9), "{err}");
            assert!(err.message.contains("host's own secrets"), "{}", err.message);
            let source = format!("{GUEST}\"{name}\" = {{ from = \"pesv.b2clogin.com\", pointer = \"/t\" }}\n");
            let err = parse(&source).unwrap_err();
            assert_eq!(err.line, Some(12), "{err}");
            assert!(err.message.contains(&format!("grants.capture.\"{name}\"")), "{}", err.message);
        }
        // A secret `[influx]` reads, whatever its name, is the host's too.
        let influx =
            "[influx]\nbackend = \"v1\"\nurl = \"http://db:8086\"\ndatabase = \"d\"\ntoken = \"${secret:db.key}\"\n";
        let source = format!("{influx}{}", GUEST.replace("\"vahti.refresh\" = [", "\"db.key\" = ["));
        assert!(parse(&source).unwrap_err().message.contains("host's own secrets"));
    }

    #[test]
    fn a_builtin_guest_granted_a_token_without_its_capture_rule_is_refused() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../wattedge.toml");
        let shipped = std::fs::read_to_string(&path).unwrap();
        let start = shipped.find("[guests.wattivahti.grants.capture]").unwrap();
        let end = start + shipped[start..].find("\n\n").unwrap();
        let old = format!("{}{}", &shipped[..start], &shipped[end..]);
        let err = parse(&old).unwrap_err();
        assert!(err.message.contains("builtin:wattivahti is granted wattivahti.refresh_token"), "{}", err.message);
        assert!(
            err.message.contains("pointer = \"/refresh_token\", persist = true"),
            "the rule to add: {}",
            err.message
        );
        assert!(err.line.is_some(), "{err}");
        // WattTime with a hand-set token only (no login) needs no rule.
        let start = old.find("[guests.watttime.grants.capture]").unwrap();
        let end = start + old[start..].find("\n\n").unwrap();
        let no_login = old[..start].to_string() + &old[end..];
        let no_login = no_login.replace("\"watttime.username\" = [\"api.watttime.org\"], ", "");
        let err = parse(&no_login).unwrap_err();
        assert!(err.message.contains("wattivahti"), "only wattivahti is refused: {}", err.message);
    }

    #[test]
    fn a_malformed_rule_is_refused_on_its_line() {
        let cases = [
            ("{ from = \"pesv.b2clogin.com\", pointer = \"/t\", armed = true }", "unknown field"),
            ("{ from = \"ftp://x\", pointer = \"/t\" }", "from"),
            ("{ from = \"pesv.b2clogin.com\", pointer = \"t\" }", "must start with '/'"),
            ("{ from = \"pesv.b2clogin.com\", pointer = \"/t\", ttl = \"soon\" }", "ttl"),
            ("{ pointer = \"/t\" }", "from"),
        ];
        for (rule, wanted) in cases {
            let err = parse(&format!("{GUEST}\"vahti.refresh\" = {rule}\n")).unwrap_err();
            assert_eq!(err.line, Some(12), "{rule}: {err}");
            assert!(err.message.contains(wanted), "{rule}: {}", err.message);
        }
    }
}
