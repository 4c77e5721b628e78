//! The `watttime` guest: CO2 marginal emissions forecasts from WattTime v3.
//!
//! It owns the guest's config (region, signal type, horizon, API base,
//! request budget), the credentials check and the user-facing status. It
//! never sees a password: it only asks the host whether `watttime.username`
//! and `watttime.password` or a captured `watttime.token` are set, and the host
//! substitutes `${secret:...}` placeholders at egress.
//!
//! The HTTP fetch (`/login`, `/v3/forecast` → `carbon_intensity` points) is a
//! later issue: with credentials present this build reports `degraded` and
//! fails the run rather than writing invented data.

use wattedge_guest::config::{Config, is_lower_ident, is_upper_ident};
use wattedge_guest::{Guest, GuestError, Slot, Summary, Trigger, report};

/// Config keys this guest accepts.
pub const KEYS: &[&str] = &["region", "signal_type", "horizon_hours", "api_base", "daily_request_budget"];

/// Secret holding the WattTime account name.
pub const USERNAME: &str = "watttime.username";
/// Secret holding the WattTime account password.
pub const PASSWORD: &str = "watttime.password";
/// Secret holding a bearer token (captured from `/login` or set by hand).
pub const TOKEN: &str = "watttime.token";

/// Text of the error and `degraded` report while the fetch is missing.
pub const NOT_IMPLEMENTED: &str = "fetching from WattTime is not implemented in this build yet";

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

static SETTINGS: Slot<Settings> = Slot::new();

struct Watttime;

impl Guest for Watttime {
    fn init(config: Vec<(String, String)>) -> Result<(), GuestError> {
        let settings = Settings::from_config(&Config::new(config))?;
        report::text("config", &settings.describe());
        SETTINGS.set(settings);
        Ok(())
    }

    fn run(_trigger: Trigger) -> Result<Summary, GuestError> {
        let settings = SETTINGS.get()?;
        report::inc("runs");

        let username = wattedge_guest::secrets::is_set(USERNAME);
        let password = wattedge_guest::secrets::is_set(PASSWORD);
        let token = wattedge_guest::secrets::is_set(TOKEN);
        if let Some(wanted) = secrets_to_request(username, password, token) {
            let mut text = report::secrets_needed_text(&wanted);
            text.push_str(&format!(" (or set {TOKEN} with `wattedge secrets set {TOKEN}`)"));
            report::standby(&text);
            return Ok(Summary { points_written: 0, detail: Some("standby: credentials needed".into()) });
        }

        wattedge_guest::log_warn(&format!(
            "{NOT_IMPLEMENTED} (region {}, signal {})",
            settings.region, settings.signal_type
        ));
        report::degraded(NOT_IMPLEMENTED);
        Err(GuestError::Internal(NOT_IMPLEMENTED.into()))
    }
}

wattedge_guest::export_guest!(Watttime with_types_in wattedge_guest::bindings);

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
    fn credentials() {
        assert_eq!(secrets_to_request(true, true, false), None);
        assert_eq!(secrets_to_request(false, false, true), None);
        assert_eq!(secrets_to_request(false, false, false), Some(vec![USERNAME, PASSWORD]));
        assert_eq!(secrets_to_request(true, false, false), Some(vec![PASSWORD]));
    }
}
