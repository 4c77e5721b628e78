//! The `watttime` guest: CO2 marginal emissions (MOER) forecasts from
//! WattTime v3 into `carbon_intensity` and `carbon_intensity_forecast`.
//!
//! It replaces the Python "carbon-intensity-service" and fixes its bugs: it
//! parses the real v3 shape ([`forecast`]), never goes into a permanent
//! standby after one failed login, never writes old data again as new points
//! (it keeps no cache: every point comes from the response just received, at
//! that response's `point_time`), and honours `Retry-After` ([`policy`]).
//!
//! Credentials: the guest never sees a password or token. It logs in with
//! `Authorization: Basic ${secret-basic:watttime.username:watttime.password}`
//! and the host captures `/token` into `watttime.token` by the operator's
//! rule in `grants.capture` (the default config: TTL 30 min, kept in host
//! memory only, so a restart costs one login and the SD card is not
//! rewritten every half hour); a `watttime.token` set by the user without
//! username and password is used as is and no login is made.

pub mod forecast;
pub mod http;
pub mod policy;
pub mod settings;

use wattedge_guest::status::{self, CounterValue};
use wattedge_guest::{
    Guest, GuestError, Slot, Summary, Trigger, clock, influx, influx_error_text, report, schedule, secrets, state,
};

use http::{Request, Response};
use policy::{Ledger, Verdict};
use settings::{PASSWORD, Settings, TOKEN, USERNAME};

/// Counter names shown in `/guests/watttime` and `/metrics`.
pub mod counters {
    /// Forecast fetches started (one per run that got past login).
    pub const FETCHES: &str = "fetches";
    /// Counted failures (login, HTTP, parse, nulls, store).
    pub const FAILURES: &str = "failures";
    /// Successful logins.
    pub const TOKEN_REFRESHES: &str = "token_refreshes";
    /// Time of the last fetch whose points were written.
    pub const LAST_SUCCESS: &str = "last_successful_fetch";
    /// Time of the last successful login.
    pub const LAST_REFRESH: &str = "last_token_refresh";
    /// Points accepted by the store, in all.
    pub const POINTS: &str = "points_written";
    /// Upstream requests on the current UTC day.
    pub const REQUESTS_TODAY: &str = "requests_today";
    /// The configured daily budget.
    pub const BUDGET: &str = "daily_request_budget";
}

static SETTINGS: Slot<Settings> = Slot::new();

/// Records a counted failure: counter, log line, `degraded` with `text`.
fn fail(error: GuestError) -> GuestError {
    report::inc(counters::FAILURES);
    let text = match &error {
        GuestError::Config(m)
        | GuestError::Credentials(m)
        | GuestError::Upstream(m)
        | GuestError::Store(m)
        | GuestError::Internal(m) => m.clone(),
    };
    wattedge_guest::log_warn(&text);
    report::degraded(&text);
    error
}

/// One run's working data.
struct Run<'a> {
    settings: &'a Settings,
    ledger: Ledger,
    /// Username and password are both usable.
    has_login: bool,
}

impl Run<'_> {
    /// Sends one request if the daily budget allows it, saving the count.
    fn send(&mut self, request: &Request, what: &str) -> Result<Response, GuestError> {
        let budget = self.settings.daily_request_budget;
        if !self.ledger.take_request(clock::now_ns(), budget) {
            return Err(fail(GuestError::Upstream(format!(
                "daily request budget of {budget} used up; requests resume after 00:00 UTC \
                 (raise daily_request_budget to allow more)"
            ))));
        }
        self.save();
        http::get(request).map_err(|e| fail(GuestError::Upstream(format!("{what}: request failed: {e}"))))
    }

    fn save(&self) {
        report::set_count(counters::REQUESTS_TODAY, self.ledger.requests);
        if let Err(e) = state::set(policy::STATE_KEY, &self.ledger.encode()) {
            wattedge_guest::log_warn(&format!("saving the request count: {}", wattedge_guest::state_error_text(&e)));
        }
    }

    /// Logs in; the host captures the token. Any failure is `degraded` and
    /// the next run tries again.
    fn login(&mut self) -> Result<(), GuestError> {
        let request = Request {
            url: settings::login_url(self.settings),
            headers: vec![("authorization".into(), format!("Basic ${{secret-basic:{USERNAME}:{PASSWORD}}}"))],
        };
        let response = self.send(&request, "login")?;
        match response.status {
            200..=299 if policy::token_captured(&response.body) => {
                report::inc(counters::TOKEN_REFRESHES);
                status::set_counter(counters::LAST_REFRESH, &CounterValue::Time(clock::now_ns()));
                Ok(())
            }
            200..=299 => Err(fail(GuestError::Upstream(format!(
                "login: HTTP {} without a token in the answer; retrying next run",
                response.status
            )))),
            401 | 403 => Err(fail(GuestError::Credentials(format!(
                "login rejected (HTTP {}): check {USERNAME} and {PASSWORD} and set them again with \
                 `wattedge secrets set {USERNAME}` and `wattedge secrets set {PASSWORD}`; retrying next run",
                response.status
            )))),
            status => Err(fail(GuestError::Upstream(format!(
                "login: HTTP {status} ({}); retrying next run",
                policy::body_kind(&response.content_type, &response.body)
            )))),
        }
    }

    /// The forecast response, after at most one re-login on 401 and the
    /// 5xx / 429 rules of [`policy`].
    fn fetch(&mut self) -> Result<Response, GuestError> {
        let request = Request {
            url: settings::forecast_url(self.settings),
            headers: vec![("authorization".into(), format!("Bearer ${{secret:{TOKEN}}}"))],
        };
        let (mut relogged, mut server_tries) = (false, 0u32);
        loop {
            let response = self.send(&request, "/v3/forecast")?;
            match policy::classify(response.status, response.retry_after.as_deref()) {
                Verdict::Success => return Ok(response),
                Verdict::Unauthorized if self.has_login && !relogged => {
                    relogged = true;
                    self.login()?;
                }
                Verdict::ServerError if server_tries + 1 < policy::MAX_SERVER_TRIES => {
                    server_tries += 1;
                    clock::sleep_ms(policy::server_backoff_ms(server_tries));
                }
                Verdict::Unauthorized => return Err(fail(self.rejected_token(relogged))),
                Verdict::RateLimited(seconds) => return Err(fail(self.rate_limited(seconds))),
                verdict => {
                    let kind = policy::body_kind(&response.content_type, &response.body);
                    let text = policy::failure_text(&verdict, response.status, &kind, &self.settings.region);
                    return Err(fail(GuestError::Upstream(text)));
                }
            }
        }
    }

    fn rejected_token(&self, relogged: bool) -> GuestError {
        if relogged {
            GuestError::Credentials("/v3/forecast: HTTP 401 again right after a new login; retrying next run".into())
        } else {
            GuestError::Credentials(format!(
                "/v3/forecast: HTTP 401, the token in {TOKEN} was rejected; set a new one with \
                 `wattedge secrets set {TOKEN}`, or set {USERNAME} and {PASSWORD} so the guest can log in"
            ))
        }
    }

    /// A 429: schedule a wake-up after `Retry-After` unless this scheduled
    /// run has used its tries.
    fn rate_limited(&mut self, seconds: u64) -> GuestError {
        self.ledger.rate_limit_tries += 1;
        let tries = self.ledger.rate_limit_tries;
        self.save();
        if tries < policy::MAX_RATE_LIMIT_TRIES {
            schedule::wake_at(clock::now_ns().saturating_add(seconds as i64 * clock::NANOS_PER_SEC));
            GuestError::Upstream(format!(
                "/v3/forecast: HTTP 429 rate limited (try {tries} of {}); trying again in {seconds} s",
                policy::MAX_RATE_LIMIT_TRIES
            ))
        } else {
            GuestError::Upstream(format!(
                "/v3/forecast: HTTP 429 rate limited {tries} times; waiting for the next scheduled run"
            ))
        }
    }

    /// Login if needed, fetch, parse, write.
    fn execute(&mut self) -> Result<Summary, GuestError> {
        let expires_in = secrets::expires_in(TOKEN);
        if policy::needs_login(self.has_login, secrets::is_set(TOKEN), expires_in) {
            self.login()?;
        }
        report::inc(counters::FETCHES);
        let response = self.fetch()?;
        let parsed = forecast::parse(&response.body).map_err(|e| {
            fail(GuestError::Upstream(format!("/v3/forecast: HTTP {} but the body is unusable: {e}", response.status)))
        })?;
        let region = &self.settings.region;
        let points = forecast::points(region, &parsed)
            .map_err(|e| fail(GuestError::Upstream(format!("/v3/forecast: nothing written: {e}"))))?;
        let written = influx::write(&points).map_err(|e| {
            fail(GuestError::Store(format!("writing {} points: {}", points.len(), influx_error_text(&e))))
        })?;
        self.succeeded(written, &parsed)
    }

    fn succeeded(&mut self, written: u32, parsed: &forecast::Forecast) -> Result<Summary, GuestError> {
        self.ledger.rate_limit_tries = 0;
        self.save();
        schedule::cancel_wake();
        report::inc_by(counters::POINTS, u64::from(written));
        status::set_counter(counters::LAST_SUCCESS, &CounterValue::Time(clock::now_ns()));
        report::ok();
        let now = forecast::current(parsed).map(|c| forecast::to_g_kwh(c.moer_lbs_mwh)).unwrap_or_default();
        Ok(Summary {
            points_written: written,
            detail: Some(format!("{written} points for {}: now {now} g/kWh", self.settings.region)),
        })
    }
}

struct Watttime;

impl Guest for Watttime {
    fn init(config: Vec<(String, String)>) -> Result<(), GuestError> {
        let settings = Settings::from_config(&wattedge_guest::config::Config::new(config))?;
        report::text("config", &settings.describe());
        report::set_count(counters::BUDGET, settings.daily_request_budget);
        SETTINGS.set(settings);
        Ok(())
    }

    fn run(trigger: Trigger) -> Result<Summary, GuestError> {
        let settings = SETTINGS.get()?;
        let mut ledger = state::get(policy::STATE_KEY).map(|b| Ledger::decode(&b)).unwrap_or_default();
        ledger.roll_day(clock::now_ns());
        report::set_count(counters::REQUESTS_TODAY, ledger.requests);
        report::set_count(counters::BUDGET, settings.daily_request_budget);

        let username = secrets::is_set(USERNAME);
        let password = secrets::is_set(PASSWORD);
        if let Some(wanted) = settings::secrets_to_request(username, password, secrets::is_set(TOKEN)) {
            report::standby(&settings::standby_text(&wanted));
            return Ok(Summary { points_written: 0, detail: Some("standby: credentials needed".into()) });
        }
        // A wake-up continues the 429 tries of its scheduled run; any other
        // trigger starts afresh.
        if !matches!(trigger, Trigger::Wake(_)) {
            ledger.rate_limit_tries = 0;
        }
        Run { settings: &settings, ledger, has_login: username && password }.execute()
    }
}

wattedge_guest::export_guest!(Watttime with_types_in wattedge_guest::bindings);
