//! The guest's settings: the `config` table validated once in `init`.
//!
//! Owns the config keys, their defaults (the public WattiVahti endpoints and
//! Azure B2C client from DESIGN.md) and the messages that name a bad key and
//! its fix. A missing `metering_point` is a setup step (`standby`), not an
//! error; an unknown time zone is an `init` error, checked against the tz
//! database bundled into the component.

use wattedge_guest::config::{Config, config_error};
use wattedge_guest::{GuestError, report};

use crate::api::REFRESH_TOKEN;
use crate::localtime;

/// Config keys this guest accepts.
pub const KEYS: &[&str] = &[
    "metering_point",
    "api_base",
    "token_url",
    "client_id",
    "scope",
    "initial_sync_days",
    "sync_buffer_hours",
    "timezone",
];

/// Validated settings.
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    /// The 7-digit metering point code; `None` until the user sets it.
    pub metering_point: Option<String>,
    /// Base URL of the metering data API.
    pub api_base: String,
    /// Azure B2C token endpoint.
    pub token_url: String,
    /// Azure B2C client id.
    pub client_id: String,
    /// OAuth scope string.
    pub scope: String,
    /// Days to fetch when no point is stored yet.
    pub initial_sync_days: u64,
    /// Hours to re-fetch before the last stored point.
    pub sync_buffer_hours: u64,
    /// IANA time zone of the API's naive timestamps.
    pub timezone: String,
}

/// True for exactly seven ASCII digits.
pub fn is_metering_point(s: &str) -> bool {
    s.len() == 7 && s.bytes().all(|b| b.is_ascii_digit())
}

/// True for an IANA-style zone name such as `Europe/Helsinki` or `UTC`.
pub fn is_timezone_name(s: &str) -> bool {
    !s.is_empty()
        && s.split('/').all(|part| {
            !part.is_empty()
                && part.starts_with(|c: char| c.is_ascii_alphabetic())
                && part.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '+'))
        })
}

impl Settings {
    /// Validates `config`; errors name the key and the fix.
    pub fn from_config(config: &Config) -> Result<Self, GuestError> {
        config.check_keys(KEYS)?;
        let metering_point = match config.get("metering_point") {
            None => None,
            Some(mp) if is_metering_point(mp) => Some(mp.to_string()),
            Some(mp) => {
                return Err(config_error(
                    "metering_point",
                    format!(
                        "{mp:?} is invalid; expected the 7-digit metering point code \
                         shown in WattiVahti, e.g. \"1234567\""
                    ),
                ));
            }
        };
        let client_id = config.string_matching(
            "client_id",
            "84ebdb93-9ea6-42c7-bd7d-302abf7556fa",
            |s| s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'),
            "an Azure B2C client id (a UUID)",
        )?;
        Ok(Self {
            metering_point,
            api_base: config.url("api_base", "https://porienergia-prod-agent.frendsapp.com:9999")?,
            token_url: config.url(
                "token_url",
                "https://pesv.b2clogin.com/pesv.onmicrosoft.com/b2c_1_tunnistus_signinv2/oauth2/v2.0/token",
            )?,
            client_id,
            scope: config
                .string("scope", "https://pesv.onmicrosoft.com/salpa/customer.read openid profile offline_access"),
            initial_sync_days: config.u64_in("initial_sync_days", 7, 1..=366)?,
            sync_buffer_hours: config.u64_in("sync_buffer_hours", 2, 0..=168)?,
            timezone: config.string_matching(
                "timezone",
                "Europe/Helsinki",
                |name| is_timezone_name(name) && localtime::zone(name).is_ok(),
                "an IANA time zone name such as \"Europe/Helsinki\"",
            )?,
        })
    }

    /// The effective config as one line of text.
    pub fn describe(&self) -> String {
        Config::describe(&[
            ("metering_point", self.metering_point.clone().unwrap_or_else(|| "(unset)".into())),
            ("api_base", self.api_base.clone()),
            ("token_url", self.token_url.clone()),
            ("client_id", self.client_id.clone()),
            ("scope", self.scope.clone()),
            ("initial_sync_days", self.initial_sync_days.to_string()),
            ("sync_buffer_hours", self.sync_buffer_hours.to_string()),
            ("timezone", self.timezone.clone()),
        ])
    }
}

/// What the user still has to provide, as a standby text; `None` when the
/// guest has everything.
pub fn setup_needed(metering_point_set: bool, refresh_token_set: bool) -> Option<String> {
    let mut parts = Vec::new();
    if !metering_point_set {
        parts.push(
            "config needed: set `metering_point` (your 7-digit metering point code) \
             in this guest's `config` table in wattedge.toml"
                .to_string(),
        );
    }
    if !refresh_token_set {
        parts.push(report::secrets_needed_text(&[REFRESH_TOKEN]));
    }
    if parts.is_empty() { None } else { Some(parts.join("; ")) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(pairs: &[(&str, &str)]) -> Config {
        Config::new(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect())
    }

    #[test]
    fn defaults_without_metering_point() {
        let s = Settings::from_config(&cfg(&[])).expect("defaults are valid");
        assert_eq!(s.metering_point, None);
        assert_eq!(s.initial_sync_days, 7);
        assert_eq!(s.sync_buffer_hours, 2);
        assert_eq!(s.timezone, "Europe/Helsinki");
        assert_eq!(s.client_id, "84ebdb93-9ea6-42c7-bd7d-302abf7556fa");
        assert!(s.token_url.ends_with("/oauth2/v2.0/token"));
    }

    #[test]
    fn metering_point_validation() {
        let s = Settings::from_config(&cfg(&[("metering_point", "1234567")])).expect("valid");
        assert_eq!(s.metering_point.as_deref(), Some("1234567"));
        for bad in ["123456", "12345678", "12a4567"] {
            match Settings::from_config(&cfg(&[("metering_point", bad)])) {
                Err(GuestError::Config(m)) => assert!(m.starts_with("metering_point: "), "{m}"),
                other => panic!("{bad}: {other:?}"),
            }
        }
        assert!(Settings::from_config(&cfg(&[("timezone", "Europe//x")])).is_err());
        assert!(Settings::from_config(&cfg(&[("timezone", "UTC")])).is_ok());
        assert!(Settings::from_config(&cfg(&[("timezone", "Europe/Atlantis")])).is_err());
    }

    #[test]
    fn standby_texts() {
        assert_eq!(setup_needed(true, true), None);
        let t = setup_needed(true, false).expect("token missing");
        assert!(t.contains("`wattedge secrets set wattivahti.refresh_token`"), "{t}");
        let t = setup_needed(false, true).expect("metering point missing");
        assert!(t.contains("`metering_point`"), "{t}");
    }
}
