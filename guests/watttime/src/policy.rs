//! Retry decisions and the request budget, as plain functions over plain data.
//!
//! The rules the Python service got wrong live here, tested natively: a 429
//! waits for `Retry-After` through a scheduled wake-up (never a long sleep),
//! at most [`MAX_RATE_LIMIT_TRIES`] tries per scheduled run; 500/502/503 get
//! [`MAX_SERVER_TRIES`] quick tries with a short backoff inside the run; 403
//! is final; a 401 triggers one new login. Requests are counted per UTC day
//! in guest state so the budget survives restarts.

use serde::{Deserialize, Serialize};
use wattedge_guest::http::CAPTURED;

/// Tries of one scheduled run against 429 answers (the first one included).
pub const MAX_RATE_LIMIT_TRIES: u32 = 3;
/// Tries against 500/502/503 answers within one run.
pub const MAX_SERVER_TRIES: u32 = 3;
/// Wait when a 429 carries no usable `Retry-After`.
pub const DEFAULT_RETRY_AFTER_S: u64 = 60;
/// Longest `Retry-After` honoured; longer waits are left to the schedule.
pub const MAX_RETRY_AFTER_S: u64 = 3600;
/// Renew a token that has fewer seconds than this left.
pub const RENEW_BEFORE_S: u64 = 300;
/// Key of [`Ledger`] in guest state.
pub const STATE_KEY: &str = "watttime.ledger";

const DAY_NS: i64 = 86_400_000_000_000;

/// What to do with one HTTP answer of a data call.
#[derive(Clone, Debug, PartialEq)]
pub enum Verdict {
    /// 2xx: parse the body.
    Success,
    /// 401: the token was rejected.
    Unauthorized,
    /// 429: wait this many seconds.
    RateLimited(u64),
    /// 500/502/503: retry soon within the run.
    ServerError,
    /// 403: the account may not read this region.
    Forbidden,
    /// Anything else: a failure, not retried.
    Failed,
}

/// Classifies a response status; `retry_after` is the raw header, if any.
pub fn classify(status: u16, retry_after: Option<&str>) -> Verdict {
    match status {
        200..=299 => Verdict::Success,
        401 => Verdict::Unauthorized,
        403 => Verdict::Forbidden,
        429 => Verdict::RateLimited(retry_after_seconds(retry_after)),
        500 | 502 | 503 => Verdict::ServerError,
        _ => Verdict::Failed,
    }
}

/// Seconds from a `Retry-After` header given in seconds (an HTTP date or
/// junk gives the default), capped at [`MAX_RETRY_AFTER_S`].
pub fn retry_after_seconds(header: Option<&str>) -> u64 {
    header.and_then(|h| h.trim().parse::<u64>().ok()).unwrap_or(DEFAULT_RETRY_AFTER_S).min(MAX_RETRY_AFTER_S)
}

/// Milliseconds to wait before server-error try `tries + 1` (1 s, then 2 s).
pub fn server_backoff_ms(tries: u32) -> u64 {
    1000u64 << tries.saturating_sub(1).min(4)
}

/// Whether a login is needed before the data call: only with username and
/// password, and when no token is set or it expires within [`RENEW_BEFORE_S`].
pub fn needs_login(has_login: bool, token_set: bool, token_expires_in: Option<u64>) -> bool {
    has_login && (!token_set || token_expires_in.is_some_and(|s| s < RENEW_BEFORE_S))
}

/// A short text for a response body that is not the expected JSON: the
/// server's own `error` or `message` when it sent a JSON error.
pub fn body_kind(content_type: &str, body: &str) -> String {
    let start = body.trim_start().get(..15).unwrap_or(body.trim_start()).to_ascii_lowercase();
    if content_type.contains("html") || start.starts_with("<!doctype html") || start.starts_with("<html") {
        return "an HTML error page".into();
    }
    if body.trim().is_empty() {
        return "an empty body".into();
    }
    let Ok(json) = serde_json::from_str::<serde_json::Value>(body) else { return "a non-JSON body".into() };
    let said = ["error", "message"].iter().find_map(|k| json.get(*k).and_then(serde_json::Value::as_str));
    match said {
        Some(text) => format!("error: {:?}", text.chars().take(120).collect::<String>()),
        None => "a JSON body".into(),
    }
}

/// Whether a login answer handed over a token: the host captured its
/// `token` field (and the guest sees the placeholder in its place).
pub fn token_captured(body: &str) -> bool {
    let json = serde_json::from_str::<serde_json::Value>(body).ok();
    json.as_ref().and_then(|v| v.get("token")).and_then(serde_json::Value::as_str) == Some(CAPTURED)
}

/// The status detail of a forecast answer that ends the run without a
/// retry (403, 500/502/503 after the last try, any other status).
pub fn failure_text(verdict: &Verdict, status: u16, kind: &str, region: &str) -> String {
    match verdict {
        Verdict::Forbidden => format!(
            "region {region} not in your plan (HTTP 403 from /v3/forecast); new WattTime accounts can read \
             only CAISO_NORTH"
        ),
        Verdict::ServerError => {
            format!("/v3/forecast: HTTP {status} ({kind}) {MAX_SERVER_TRIES} times in a row; retrying next run")
        }
        _ => format!("/v3/forecast: HTTP {status} ({kind})"),
    }
}

/// What the guest remembers between runs.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Ledger {
    /// UTC day (days since the epoch) that `requests` counts.
    pub day: i64,
    /// Upstream requests made on `day`.
    pub requests: u64,
    /// 429 tries used by the current scheduled run (continued by wake-ups).
    pub rate_limit_tries: u32,
}

impl Ledger {
    /// Decodes stored bytes; unreadable state starts afresh.
    pub fn decode(bytes: &[u8]) -> Ledger {
        serde_json::from_slice(bytes).unwrap_or_default()
    }

    /// Encodes for `state.set`.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Resets the request count when `now` is on a later UTC day.
    pub fn roll_day(&mut self, now: i64) {
        let day = now.div_euclid(DAY_NS);
        if day != self.day {
            self.day = day;
            self.requests = 0;
        }
    }

    /// Counts one request if the budget allows it; false when used up.
    pub fn take_request(&mut self, now: i64, budget: u64) -> bool {
        self.roll_day(now);
        if self.requests >= budget {
            return false;
        }
        self.requests += 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses() {
        assert_eq!(classify(200, None), Verdict::Success);
        assert_eq!(classify(401, None), Verdict::Unauthorized);
        assert_eq!(classify(403, None), Verdict::Forbidden);
        assert_eq!(classify(429, Some(" 2 ")), Verdict::RateLimited(2));
        assert_eq!(classify(429, Some("Wed, 21 Oct 2015 07:28:00 GMT")), Verdict::RateLimited(60));
        assert_eq!(classify(429, Some("999999")), Verdict::RateLimited(3600));
        for s in [500, 502, 503] {
            assert_eq!(classify(s, None), Verdict::ServerError);
        }
        assert_eq!(classify(504, None), Verdict::Failed);
        assert_eq!(classify(404, None), Verdict::Failed);
    }

    #[test]
    fn backoff_is_short_and_bounded() {
        assert_eq!(server_backoff_ms(1), 1000);
        assert_eq!(server_backoff_ms(2), 2000);
        let total: u64 = (1..MAX_SERVER_TRIES).map(server_backoff_ms).sum();
        assert!(total <= 5000, "{total} ms of backoff must stay well inside a 60 s run");
    }

    #[test]
    fn login_decisions() {
        assert!(needs_login(true, false, None));
        assert!(needs_login(true, true, Some(299)));
        assert!(!needs_login(true, true, Some(300)));
        assert!(!needs_login(true, true, None), "a token without expiry was set by hand");
        assert!(!needs_login(false, false, None), "a static token only: never log in");
        assert!(!needs_login(false, true, Some(10)));
    }

    #[test]
    fn failure_texts_name_status_and_region() {
        let t = failure_text(&Verdict::ServerError, 502, "an HTML error page", "X");
        assert_eq!(t, "/v3/forecast: HTTP 502 (an HTML error page) 3 times in a row; retrying next run");
        assert!(failure_text(&Verdict::Forbidden, 403, "", "PJM_DC").starts_with("region PJM_DC not in your plan"));
        assert_eq!(
            failure_text(&Verdict::Failed, 404, "a non-JSON body", "X"),
            "/v3/forecast: HTTP 404 (a non-JSON body)"
        );
    }

    #[test]
    fn a_login_answer_without_a_captured_token_is_no_login() {
        assert!(token_captured(r#"{"token":"[wattedge:captured]"}"#));
        assert!(!token_captured("{}"), "a 200 without a token, whatever token is still stored");
        assert!(!token_captured("<html>proxy</html>"));
        assert!(!token_captured(r#"{"token":"raw"}"#), "not captured by the host");
    }

    #[test]
    fn body_kinds() {
        assert_eq!(body_kind("text/html", "<p>x</p>"), "an HTML error page");
        assert_eq!(body_kind("", "  <!DOCTYPE html><html>"), "an HTML error page");
        assert_eq!(body_kind("application/json", "{oops"), "a non-JSON body");
        assert_eq!(body_kind("", " "), "an empty body");
        assert_eq!(body_kind("application/json", r#"{"error":"server error"}"#), r#"error: "server error""#);
        assert_eq!(body_kind("application/json", r#"{"status":1}"#), "a JSON body");
    }

    #[test]
    fn budget_per_utc_day() {
        let day = 86_400_000_000_000i64;
        let mut l = Ledger::default();
        assert!(l.take_request(20_000 * day + 5, 2));
        assert!(l.take_request(20_000 * day + 6, 2));
        assert!(!l.take_request(20_001 * day - 1, 2));
        assert_eq!(l.requests, 2);
        assert!(l.take_request(20_001 * day, 2), "a new UTC day resets the count");
        assert_eq!((l.day, l.requests), (20_001, 1));
        let back = Ledger::decode(&l.encode());
        assert_eq!(back, l);
        assert_eq!(Ledger::decode(b"garbage"), Ledger::default());
    }
}
