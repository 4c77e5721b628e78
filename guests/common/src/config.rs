//! Typed access to a guest's `config` table (`list<tuple<string, string>>`).
//!
//! Every getter falls back to a default when the key is absent or blank and
//! returns `GuestError::Config("KEY: what is wrong; how to fix")` when the
//! value is unusable, so the message shown by the host names the key to edit.

use std::ops::RangeInclusive;

use crate::GuestError;

/// A `GuestError::Config` whose message starts with the key.
pub fn config_error(key: &str, message: impl AsRef<str>) -> GuestError {
    GuestError::Config(format!("{key}: {}", message.as_ref()))
}

/// A guest's configuration: key/value pairs from `wattedge.toml`, optionally
/// overridden by the arguments of an invoked run.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Config {
    pairs: Vec<(String, String)>,
}

impl Config {
    /// Wraps the pairs passed to `init`.
    pub fn new(pairs: Vec<(String, String)>) -> Self {
        Self { pairs }
    }

    /// Rejects keys outside `known` (usually a typo), naming the key and the
    /// accepted ones.
    pub fn check_keys(&self, known: &[&str]) -> Result<(), GuestError> {
        match self.pairs.iter().find(|(k, _)| !known.contains(&k.as_str())) {
            Some((key, _)) => {
                Err(config_error(key, format!("unknown key; remove it or use one of: {}", known.join(", "))))
            }
            None => Ok(()),
        }
    }

    /// A copy with `args` layered on top (later pairs win).
    pub fn overridden(&self, args: &[(String, String)]) -> Self {
        let mut pairs = self.pairs.clone();
        pairs.extend(args.iter().cloned());
        Self { pairs }
    }

    /// The trimmed value of `key` (the last one wins), `None` when absent or blank.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.pairs.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v.trim()).filter(|v| !v.is_empty())
    }

    /// The value of `key` or `default`.
    pub fn string(&self, key: &str, default: &str) -> String {
        self.get(key).unwrap_or(default).to_string()
    }

    /// The value of `key` or `default`, checked by `valid`; `expected`
    /// describes a valid value for the error message.
    pub fn string_matching(
        &self,
        key: &str,
        default: &str,
        valid: impl Fn(&str) -> bool,
        expected: &str,
    ) -> Result<String, GuestError> {
        let value = self.string(key, default);
        if valid(&value) {
            Ok(value)
        } else {
            Err(config_error(key, format!("{value:?} is invalid; expected {expected}")))
        }
    }

    /// An unsigned integer within `range`.
    pub fn u64_in(&self, key: &str, default: u64, range: RangeInclusive<u64>) -> Result<u64, GuestError> {
        let Some(raw) = self.get(key) else {
            return Ok(default);
        };
        let expected = format!("expected a whole number from {} to {}", range.start(), range.end());
        match raw.parse::<u64>() {
            Ok(v) if range.contains(&v) => Ok(v),
            _ => Err(config_error(key, format!("{raw:?} is invalid; {expected}"))),
        }
    }

    /// A finite float of at least `min`.
    pub fn f64_at_least(&self, key: &str, default: f64, min: f64) -> Result<f64, GuestError> {
        let Some(raw) = self.get(key) else {
            return Ok(default);
        };
        match raw.parse::<f64>() {
            Ok(v) if v.is_finite() && v >= min => Ok(v),
            _ => Err(config_error(key, format!("{raw:?} is invalid; expected a number of at least {min}"))),
        }
    }

    /// A duration such as `5m`, `30s`, `1h30m` or `500ms`, in nanoseconds.
    pub fn duration_ns(&self, key: &str, default: &str) -> Result<i64, GuestError> {
        let raw = self.get(key).unwrap_or(default);
        parse_duration_ns(raw).ok_or_else(|| {
            config_error(
                key,
                format!("{raw:?} is invalid; expected a duration like \"30s\", \"5m\", \"1h30m\" or \"500ms\""),
            )
        })
    }

    /// A comma-separated list with blanks removed.
    pub fn list(&self, key: &str, default: &str) -> Vec<String> {
        self.get(key)
            .unwrap_or(default)
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect()
    }

    /// An `http://` or `https://` URL without a trailing slash.
    pub fn url(&self, key: &str, default: &str) -> Result<String, GuestError> {
        let value = self.string(key, default);
        let rest = value.strip_prefix("https://").or_else(|| value.strip_prefix("http://"));
        match rest {
            Some(r) if !r.is_empty() && !r.starts_with('/') && !value.contains(char::is_whitespace) => {
                Ok(value.trim_end_matches('/').to_string())
            }
            _ => Err(config_error(
                key,
                format!("{value:?} is invalid; expected an absolute http(s) URL such as {default:?}"),
            )),
        }
    }

    /// `key = value` lines of `keys` with their effective values, for a
    /// `config` text counter.
    pub fn describe(entries: &[(&str, String)]) -> String {
        entries.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" ")
    }
}

/// Parses a duration into nanoseconds, in the grammar the host's config
/// uses too (`wattedge_units`: `30s`, `1h30m`, `1h 30m`, `500ms`, `0`);
/// `None` when it is not one or exceeds `i64` nanoseconds (292 years).
pub fn parse_duration_ns(text: &str) -> Option<i64> {
    let duration = wattedge_units::parse_duration(text).ok()?;
    i64::try_from(duration.as_nanos()).ok()
}

/// True for a non-empty string of `A-Z`, `0-9` and `_` (`^[A-Z0-9_]+$`).
pub fn is_upper_ident(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
}

/// True for a non-empty string of `a-z`, `0-9` and `_`.
pub fn is_lower_ident(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(pairs: &[(&str, &str)]) -> Config {
        Config::new(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect())
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration_ns("5s"), Some(5_000_000_000));
        assert_eq!(parse_duration_ns("5m"), Some(300_000_000_000));
        assert_eq!(parse_duration_ns("1h30m"), Some(5_400_000_000_000));
        assert_eq!(parse_duration_ns("500ms"), Some(500_000_000));
        assert_eq!(parse_duration_ns("0"), Some(0));
        assert_eq!(parse_duration_ns("5"), None);
        assert_eq!(parse_duration_ns("m"), None);
        assert_eq!(parse_duration_ns("5x"), None);
        assert_eq!(parse_duration_ns(""), None);
        assert_eq!(parse_duration_ns("-5s"), None);
    }

    #[test]
    fn defaults_and_errors_name_the_key() {
        let c = cfg(&[("horizon_hours", "99"), ("region", " "), ("n", "7")]);
        assert_eq!(c.string("region", "CAISO_NORTH"), "CAISO_NORTH");
        assert_eq!(c.u64_in("n", 1, 1..=10), Ok(7));
        match c.u64_in("horizon_hours", 24, 1..=72) {
            Err(GuestError::Config(m)) => {
                assert!(m.starts_with("horizon_hours: \"99\" is invalid"), "{m}");
                assert!(m.contains("1 to 72"), "{m}");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(c.u64_in("missing", 24, 1..=72), Ok(24));
    }

    #[test]
    fn unknown_keys_and_overrides() {
        let c = cfg(&[("mode", "write"), ("typo", "1")]);
        let err = c.check_keys(&["mode"]);
        assert!(matches!(err, Err(GuestError::Config(m)) if m.starts_with("typo: unknown key")));
        let o = c.overridden(&[("mode".into(), "trap".into())]);
        assert_eq!(o.get("mode"), Some("trap"));
    }

    #[test]
    fn urls_lists_floats() {
        let c = cfg(&[("a", "https://x.test/"), ("b", "ftp://x"), ("f", "nan")]);
        assert_eq!(c.url("a", "https://d.test"), Ok("https://x.test".into()));
        assert!(c.url("b", "https://d.test").is_err());
        assert!(c.f64_at_least("f", 1.0, 0.0).is_err());
        assert_eq!(c.f64_at_least("g", 10.0, 0.0), Ok(10.0));
        assert_eq!(c.list("d", "switch, light,,fan"), vec!["switch", "light", "fan"]);
        assert!(is_upper_ident("CAISO_NORTH"));
        assert!(!is_upper_ident("caiso"));
        assert!(is_lower_ident("co2_moer"));
    }
}
