//! `[influx]` with `backend = "v1"` (the InfluxDB 1.x HTTP API, also served
//! by InfluxDB 2.x and 3.x) or `backend = "v2"` (the 2.x API: org, bucket,
//! token), both behind the durable outbox. Kept apart from the rest of the
//! config so each backend's keys are checked in one place.
//! Credentials are secret references only, so no password or token ever sits
//! in the config file.

use std::time::Duration;

use super::{Checker, ConfigError, InfluxConfig, RawInflux, parse_duration, parse_size};

/// Default bound of the outbox: about half a million typical points.
pub const DEFAULT_OUTBOX_MAX_BYTES: u64 = 64 << 20;
/// Default largest forwarded batch, in points.
pub const DEFAULT_BATCH_POINTS: u64 = 5000;
/// Default longest wait before a partial batch is sent.
pub const DEFAULT_FLUSH_INTERVAL: Duration = Duration::from_secs(1);
/// Default cap of the retry backoff.
pub const DEFAULT_RETRY_MAX_DELAY: Duration = Duration::from_secs(30);

/// The outbox and forwarder of a remote backend.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxConfig {
    /// New writes are refused ("outbox full") beyond this many unsent bytes.
    pub max_bytes: u64,
    pub batch_points: u64,
    pub flush_interval: Duration,
    pub retry_max_delay: Duration,
}

impl Checker<'_> {
    pub(super) fn influx_v1(&self, raw: RawInflux) -> Result<InfluxConfig, ConfigError> {
        let err = |key: &str, message: String| self.error(&["influx", key], message);
        if raw.retention.is_some() {
            return Err(err(
                "retention",
                "influx.retention applies to backend = \"embedded\" only; set retention in InfluxDB".into(),
            ));
        }
        if let Some(key) = [("org", raw.org.is_some()), ("bucket", raw.bucket.is_some())].iter().find(|k| k.1) {
            return Err(err(
                key.0,
                format!("influx.{} applies to backend = \"v2\" only; backend = \"v1\" writes to `database`", key.0),
            ));
        }
        let url = self.remote_url(&raw, "v1")?;
        let database = raw.database.clone().filter(|d| !d.is_empty()).ok_or_else(|| {
            err("backend", "influx.backend = \"v1\" needs `database`, e.g. database = \"energy\"".into())
        })?;
        let password = raw.password.as_deref().map(|v| self.secret_ref("password", v)).transpose()?;
        let token = raw.token.as_deref().map(|v| self.secret_ref("token", v)).transpose()?;
        match (&raw.username, &password, &token) {
            (_, Some(_), Some(_)) | (Some(_), _, Some(_)) => {
                return Err(err(
                    "token",
                    "use either influx.username + influx.password or influx.token, not both".into(),
                ));
            }
            (Some(_), None, None) => {
                return Err(err(
                    "username",
                    "influx.username needs influx.password = \"${secret:influx.password}\"".into(),
                ));
            }
            (None, Some(_), None) => return Err(err("password", "influx.password needs influx.username".into())),
            _ => {}
        }
        let outbox = self.outbox(&raw)?;
        Ok(InfluxConfig::V1 { url, database, username: raw.username, password, token, outbox })
    }

    /// The checked `url` of a remote backend.
    fn remote_url(&self, raw: &RawInflux, backend: &str) -> Result<String, ConfigError> {
        let err = |key: &str, message: String| self.error(&["influx", key], message);
        let url = raw.url.clone().ok_or_else(|| {
            err("backend", format!("influx.backend = \"{backend}\" needs `url`, e.g. url = \"http://127.0.0.1:8086\""))
        })?;
        if !(url.starts_with("http://") || url.starts_with("https://")) || url.parse::<http::Uri>().is_err() {
            return Err(err(
                "url",
                format!("influx.url = {url:?} must be an http:// or https:// URL such as \"http://127.0.0.1:8086\""),
            ));
        }
        Ok(url)
    }

    /// `backend = "v2"`: url, org, bucket and a token secret reference.
    #[cfg(feature = "influx-v2")]
    pub(super) fn influx_v2(&self, raw: RawInflux) -> Result<InfluxConfig, ConfigError> {
        let err = |key: &str, message: String| self.error(&["influx", key], message);
        let v1_only = [("database", raw.database.is_some()), ("username", raw.username.is_some())];
        if let Some(key) = v1_only.iter().chain(&[("password", raw.password.is_some())]).find(|k| k.1) {
            return Err(err(
                key.0,
                format!(
                    "influx.{} applies to backend = \"v1\" only; backend = \"v2\" uses org, bucket and token",
                    key.0
                ),
            ));
        }
        if raw.retention.is_some() {
            return Err(err(
                "retention",
                "influx.retention applies to backend = \"embedded\" only; set the bucket's retention in InfluxDB"
                    .into(),
            ));
        }
        let url = self.remote_url(&raw, "v2")?;
        let needed = |key: &str, value: &Option<String>, example: &str| {
            value.clone().filter(|v| !v.is_empty()).ok_or_else(|| {
                err("backend", format!("influx.backend = \"v2\" needs `{key}`, e.g. {key} = \"{example}\""))
            })
        };
        let org = needed("org", &raw.org, "home")?;
        let bucket = needed("bucket", &raw.bucket, "energy")?;
        let token = needed("token", &raw.token, "${secret:influx.token}")?;
        let token = self.secret_ref("token", &token)?;
        let outbox = self.outbox(&raw)?;
        Ok(InfluxConfig::V2 { url, org, bucket, token, outbox })
    }

    /// `${secret:NAME}` → `NAME`; plaintext is refused.
    fn secret_ref(&self, key: &str, value: &str) -> Result<String, ConfigError> {
        value
            .strip_prefix("${secret:")
            .and_then(|v| v.strip_suffix('}'))
            .filter(|name| !name.is_empty() && !name.contains(['{', '}', '$']))
            .map(str::to_string)
            .ok_or_else(|| {
                self.error(
                    &["influx", key],
                    format!(
                        "influx.{key} must be a secret reference such as \"${{secret:influx.{key}}}\", never the value itself; store the value with `wattedge secrets set influx.{key}`"
                    ),
                )
            })
    }

    fn outbox(&self, raw: &RawInflux) -> Result<OutboxConfig, ConfigError> {
        let err = |key: &str, message: String| self.error(&["influx", key], message);
        let max_bytes = match raw.outbox_max_bytes.as_deref() {
            None => DEFAULT_OUTBOX_MAX_BYTES,
            Some(t) => parse_size(t).ok().filter(|b| *b >= 64 << 10).ok_or_else(|| {
                err(
                    "outbox_max_bytes",
                    format!("influx.outbox_max_bytes = {t:?} must be a size of at least 64KiB, e.g. \"64MiB\""),
                )
            })?,
        };
        let batch_points = match raw.batch_points {
            None => DEFAULT_BATCH_POINTS,
            Some(n) if (1..=100_000).contains(&n) => n as u64,
            Some(n) => {
                return Err(err("batch_points", format!("influx.batch_points = {n} must be between 1 and 100000")));
            }
        };
        let duration = |key: &str, value: &Option<String>, default: Duration| match value.as_deref() {
            None => Ok(default),
            Some(t) => parse_duration(t)
                .ok()
                .filter(|d| !d.is_zero())
                .ok_or_else(|| err(key, format!("influx.{key} = {t:?} must be a positive duration such as \"1s\""))),
        };
        Ok(OutboxConfig {
            max_bytes,
            batch_points,
            flush_interval: duration("flush_interval", &raw.flush_interval, DEFAULT_FLUSH_INTERVAL)?,
            retry_max_delay: duration("retry_max_delay", &raw.retry_max_delay, DEFAULT_RETRY_MAX_DELAY)?,
        })
    }
}

impl RawInflux {
    /// The first key set that only a remote backend uses.
    pub(super) fn remote_key(&self) -> Option<&'static str> {
        let set = [
            ("url", self.url.is_some()),
            ("database", self.database.is_some()),
            ("org", self.org.is_some()),
            ("bucket", self.bucket.is_some()),
            ("username", self.username.is_some()),
            ("password", self.password.is_some()),
            ("token", self.token.is_some()),
            ("outbox_max_bytes", self.outbox_max_bytes.is_some()),
            ("batch_points", self.batch_points.is_some()),
            ("flush_interval", self.flush_interval.is_some()),
            ("retry_max_delay", self.retry_max_delay.is_some()),
        ];
        set.into_iter().find(|(_, on)| *on).map(|(k, _)| k)
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::Config;

    fn parse(influx: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("w.toml"), &format!("[influx]\n{influx}"))
    }

    #[test]
    fn v1_with_defaults_and_secret_references() {
        let c = parse("backend = \"v1\"\nurl = \"https://db.lan:8086\"\ndatabase = \"energy\"\nusername = \"pi\"\npassword = \"${secret:influx.password}\"\n").unwrap();
        let InfluxConfig::V1 { url, database, username, password, token, outbox } = c.influx else { panic!("v1") };
        assert_eq!((url.as_str(), database.as_str()), ("https://db.lan:8086", "energy"));
        assert_eq!((username.as_deref(), password.as_deref(), token), (Some("pi"), Some("influx.password"), None));
        assert_eq!(
            outbox,
            OutboxConfig {
                max_bytes: DEFAULT_OUTBOX_MAX_BYTES,
                batch_points: DEFAULT_BATCH_POINTS,
                flush_interval: DEFAULT_FLUSH_INTERVAL,
                retry_max_delay: DEFAULT_RETRY_MAX_DELAY,
            }
        );
        let c = parse("backend = \"v1\"\nurl = \"http://x\"\ndatabase = \"d\"\ntoken = \"${secret:t}\"\noutbox_max_bytes = \"1MiB\"\nbatch_points = 10\nflush_interval = \"250ms\"\n").unwrap();
        assert!(
            matches!(c.influx, InfluxConfig::V1 { token: Some(t), outbox, .. } if t == "t" && outbox.max_bytes == 1 << 20 && outbox.batch_points == 10)
        );
    }

    #[test]
    fn v1_mistakes_name_the_key_and_the_fix() {
        let cases = [
            ("backend = \"v1\"\nurl = \"http://x\"\ndatabase = \"d\"\ntoken = \"s3cr3t\"\n", "never the value itself"),
            ("backend = \"v1\"\nurl = \"ftp://x\"\ndatabase = \"d\"\n", "http:// or https://"),
            ("backend = \"v1\"\nurl = \"http://x\"\n", "needs `database`"),
            ("backend = \"v1\"\nurl = \"http://x\"\ndatabase = \"d\"\nretention = \"1d\"\n", "embedded\" only"),
            ("backend = \"v1\"\nurl = \"http://x\"\ndatabase = \"d\"\nusername = \"u\"\n", "needs influx.password"),
            ("backend = \"v1\"\nurl = \"http://x\"\ndatabase = \"d\"\nbatch_points = 0\n", "between 1 and 100000"),
            ("backend = \"embedded\"\nurl = \"http://x\"\n", "influx.url applies to the remote backends only"),
            (
                "backend = \"v1\"\nurl = \"http://x\"\ndatabase = \"d\"\nbucket = \"b\"\n",
                "influx.bucket applies to backend = \"v2\" only",
            ),
            ("backend = \"v1\"\nurl = \"http://x\"\ndatabase = \"d\"\nbukket = \"b\"\n", "unknown field"),
        ];
        for (text, expected) in cases {
            let err = parse(text).unwrap_err().to_string();
            assert!(err.contains(expected), "{text:?} -> {err}");
            assert!(err.starts_with("w.toml:"), "names the file and line: {err}");
        }
    }

    #[cfg(feature = "influx-v2")]
    #[test]
    fn v2_with_org_bucket_and_token_secret() {
        let c = parse("backend = \"v2\"\nurl = \"http://db:8086\"\norg = \"home\"\nbucket = \"energy\"\ntoken = \"${secret:influx.token}\"\nbatch_points = 7\n").unwrap();
        let InfluxConfig::V2 { url, org, bucket, token, outbox } = c.influx else { panic!("v2") };
        assert_eq!(
            (url.as_str(), org.as_str(), bucket.as_str(), token.as_str()),
            ("http://db:8086", "home", "energy", "influx.token")
        );
        assert_eq!((outbox.batch_points, outbox.max_bytes), (7, DEFAULT_OUTBOX_MAX_BYTES));
    }

    #[cfg(feature = "influx-v2")]
    #[test]
    fn v2_mistakes_name_the_key_and_the_fix() {
        let base = "backend = \"v2\"\nurl = \"http://x\"\norg = \"o\"\n";
        let cases = [
            (format!("{base}bucket = \"b\"\ntoken = \"plain\"\n"), "never the value itself"),
            (format!("{base}bucket = \"b\"\n"), "needs `token`"),
            (format!("{base}token = \"${{secret:t}}\"\n"), "needs `bucket`"),
            (
                format!("{base}bucket = \"b\"\ntoken = \"${{secret:t}}\"\ndatabase = \"d\"\n"),
                "influx.database applies to backend = \"v1\" only",
            ),
            (
                format!("{base}bucket = \"b\"\ntoken = \"${{secret:t}}\"\nflush_interval = \"0s\"\n"),
                "positive duration",
            ),
        ];
        for (text, expected) in cases {
            let err = parse(&text).unwrap_err().to_string();
            assert!(err.contains(expected), "{text:?} -> {err}");
        }
    }

    #[cfg(not(feature = "influx-v2"))]
    #[test]
    fn v2_without_the_feature_is_a_clear_error() {
        let err = parse("backend = \"v2\"\nurl = \"http://x\"\n").unwrap_err().to_string();
        assert!(err.contains("built without the `influx-v2` cargo feature"), "{err}");
    }
}
