//! The watttime guest's settings and credential rules.
//!
//! Owns config validation (errors name the key and the fix) and the choice of
//! which secrets to ask for, so both are tested natively.

use wattedge_guest::GuestError;
use wattedge_guest::config::{Config, is_lower_ident, is_upper_ident};

/// Config keys this guest accepts.
pub const KEYS: &[&str] = &["region", "signal_type", "horizon_hours", "api_base", "daily_request_budget"];

/// Secret holding the WattTime account name.
pub const USERNAME: &str = "watttime.username";
/// Secret holding the WattTime account password.
pub const PASSWORD: &str = "watttime.password";
/// Secret holding a bearer token (captured from `/login` or set by hand).
pub const TOKEN: &str = "watttime.token";

/// Validated settings.
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    /// Grid region code, e.g. `CAISO_NORTH`.
    pub region: String,
    /// Signal type, e.g. `co2_moer`.
    pub signal_type: String,
    /// Forecast horizon in hours (1..=72).
    pub horizon_hours: u64,
    /// Base URL of the WattTime API, without a trailing slash.
    pub api_base: String,
    /// Upper bound on upstream requests per UTC day.
    pub daily_request_budget: u64,
}

impl Settings {
    /// Validates `config`; errors name the key and the fix.
    pub fn from_config(config: &Config) -> Result<Self, GuestError> {
        config.check_keys(KEYS)?;
        Ok(Self {
            region: config.string_matching(
                "region",
                "CAISO_NORTH",
                is_upper_ident,
                "a WattTime region code of A-Z, 0-9 and _ such as \"CAISO_NORTH\" \
                 (new accounts can use only CAISO_NORTH)",
            )?,
            signal_type: config.string_matching(
                "signal_type",
                "co2_moer",
                is_lower_ident,
                "a WattTime signal type such as \"co2_moer\"",
            )?,
            horizon_hours: config.u64_in("horizon_hours", 24, 1..=72)?,
            api_base: config.url("api_base", "https://api.watttime.org")?,
            daily_request_budget: config.u64_in("daily_request_budget", 1000, 1..=1_000_000)?,
        })
    }

    /// The effective config as one line of text.
    pub fn describe(&self) -> String {
        Config::describe(&[
            ("region", self.region.clone()),
            ("signal_type", self.signal_type.clone()),
            ("horizon_hours", self.horizon_hours.to_string()),
            ("api_base", self.api_base.clone()),
            ("daily_request_budget", self.daily_request_budget.to_string()),
        ])
    }
}

/// Which secrets to ask for, given which are set: `None` when the guest has
/// usable credentials (username + password, or a token).
pub fn secrets_to_request(username: bool, password: bool, token: bool) -> Option<Vec<&'static str>> {
    if token || (username && password) {
        return None;
    }
    let mut wanted = Vec::new();
    if !username {
        wanted.push(USERNAME);
    }
    if !password {
        wanted.push(PASSWORD);
    }
    Some(wanted)
}

/// `GET {api_base}/login` (HTTP Basic auth).
pub fn login_url(settings: &Settings) -> String {
    format!("{}/login", settings.api_base)
}

/// `GET {api_base}/v3/forecast?...`; region and signal type are validated
/// identifiers, so they need no percent-encoding.
pub fn forecast_url(settings: &Settings) -> String {
    format!(
        "{}/v3/forecast?region={}&signal_type={}&horizon_hours={}",
        settings.api_base, settings.region, settings.signal_type, settings.horizon_hours
    )
}

/// The standby text: the missing secrets, their commands, and the token
/// alternative.
pub fn standby_text(wanted: &[&str]) -> String {
    let mut text = wattedge_guest::report::secrets_needed_text(wanted);
    text.push_str(&format!(" (or set a token with `wattedge secrets set {TOKEN}`)"));
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(pairs: &[(&str, &str)]) -> Config {
        Config::new(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect())
    }

    #[test]
    fn defaults() {
        let s = Settings::from_config(&cfg(&[])).expect("defaults are valid");
        assert_eq!(s.region, "CAISO_NORTH");
        assert_eq!(s.signal_type, "co2_moer");
        assert_eq!(s.horizon_hours, 24);
        assert_eq!(s.api_base, "https://api.watttime.org");
        assert_eq!(s.daily_request_budget, 1000);
    }

    #[test]
    fn bad_values_name_the_key() {
        for (key, value) in [
            ("region", "caiso north"),
            ("horizon_hours", "0"),
            ("horizon_hours", "73"),
            ("api_base", "api.watttime.org"),
            ("daily_request_budget", "-1"),
            ("regoin", "CAISO_NORTH"),
        ] {
            match Settings::from_config(&cfg(&[(key, value)])) {
                Err(GuestError::Config(m)) => assert!(m.starts_with(&format!("{key}: ")), "{m}"),
                other => panic!("{key}={value}: {other:?}"),
            }
        }
    }

    #[test]
    fn urls_and_standby_text() {
        let s = Settings::from_config(&cfg(&[("api_base", "https://api.watttime.test:8443/")])).unwrap();
        assert_eq!(login_url(&s), "https://api.watttime.test:8443/login");
        assert_eq!(
            forecast_url(&s),
            "https://api.watttime.test:8443/v3/forecast?region=CAISO_NORTH&signal_type=co2_moer&horizon_hours=24"
        );
        let text = standby_text(&[USERNAME, PASSWORD]);
        assert!(text.contains("`wattedge secrets set watttime.username`"), "{text}");
        assert!(text.contains("`wattedge secrets set watttime.password`"), "{text}");
        assert!(text.contains("`wattedge secrets set watttime.token`"), "{text}");
    }

    #[test]
    fn credentials() {
        assert_eq!(secrets_to_request(true, true, false), None);
        assert_eq!(secrets_to_request(false, false, true), None);
        assert_eq!(secrets_to_request(false, false, false), Some(vec![USERNAME, PASSWORD]));
        assert_eq!(secrets_to_request(true, false, false), Some(vec![PASSWORD]));
    }
}
