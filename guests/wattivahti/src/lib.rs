//! The `wattivahti` guest: electricity consumption from WattiVahti (Pori
//! Energia's metering API) into `electricity_consumption` points.
//!
//! This file owns the guest's lifecycle: `init` validates the config
//! ([`settings`]); `run` reports `standby` until the metering point and the
//! refresh token are set, otherwise runs one sync ([`sync`]) and turns its
//! outcome into status and counters (`syncs`, `failures`; the sync itself
//! moves `points_written`, `last_synced_point`, `token_rotations`).
//!
//! The refresh token lives only in the host (`wattivahti.refresh_token`,
//! granted to the token host); the guest writes `${secret:...}` placeholders
//! and the host captures the tokens of the refresh answer by the operator's
//! `grants.capture` rules, so the guest never sees a token. The pure parts — naive
//! local time → UTC with DST disambiguation ([`localtime`]), windows and
//! chunks ([`window`]), the wire formats ([`api`]) — are tested natively.

pub mod api;
pub mod localtime;
pub mod settings;
pub mod sync;
pub mod window;

use wattedge_guest::config::Config;
use wattedge_guest::{Guest, GuestError, Slot, Summary, Trigger, log_warn, report, secrets};

pub use api::REFRESH_TOKEN;
pub use settings::{KEYS, Settings, setup_needed};

static SETTINGS: Slot<Settings> = Slot::new();

/// The status text for a failed run.
pub fn failure_text(error: &GuestError) -> String {
    match error {
        GuestError::Credentials(m) => m.clone(),
        GuestError::Config(m) => format!("bad invoke arguments or config: {m}"),
        GuestError::Upstream(m) => format!("WattiVahti request failed: {m}"),
        GuestError::Store(m) => format!("time-series store failed: {m}"),
        GuestError::Internal(m) => format!("internal error: {m}"),
    }
}

struct Wattivahti;

impl Guest for Wattivahti {
    fn init(config: Vec<(String, String)>) -> Result<(), GuestError> {
        let settings = Settings::from_config(&Config::new(config))?;
        report::text("config", &settings.describe());
        SETTINGS.set(settings);
        Ok(())
    }

    fn run(trigger: Trigger) -> Result<Summary, GuestError> {
        let settings = SETTINGS.get()?;
        let needed = setup_needed(settings.metering_point.is_some(), secrets::is_set(REFRESH_TOKEN));
        let (Some(metering_point), None) = (settings.metering_point.as_deref(), needed.as_deref()) else {
            let text = needed.unwrap_or_default();
            report::standby(&text);
            let what = if settings.metering_point.is_none() {
                "standby: metering_point needed"
            } else {
                "standby: credentials needed"
            };
            return Ok(Summary { points_written: 0, detail: Some(what.into()) });
        };
        match sync::run(&settings, metering_point, &trigger) {
            Ok(summary) => {
                report::inc("syncs");
                report::ok();
                Ok(summary)
            }
            Err(error) => {
                report::inc("failures");
                let text = failure_text(&error);
                log_warn(&text);
                report::degraded(&text);
                Err(error)
            }
        }
    }
}

wattedge_guest::export_guest!(Wattivahti with_types_in wattedge_guest::bindings);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_texts_keep_the_fix() {
        let e = GuestError::Credentials(api::invalid_grant_text("expired"));
        assert!(failure_text(&e).contains("wattedge secrets set wattivahti.refresh_token"));
        assert!(failure_text(&GuestError::Upstream("500".into())).starts_with("WattiVahti request failed"));
    }
}
