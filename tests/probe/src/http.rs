//! The probe's `http` mode: one wasi:http request described by config /
//! invoke arguments, reported exactly as the guest saw it.
//!
//! Keys: `url`, `method` (default GET), `h.NAME = VALUE` (a request header),
//! `body`, `timeout_ms`
//! (wasi:http first-byte timeout), `label` (tag of the reported point),
//! `parallel` (send that many copies at once; the first failure, or else the
//! first response, is reported).
//! The guest writes a `probe_http` point (tag `label`; fields `status`, 0 on
//! error, `headers`, `body` and `error`) and logs the same.

use std::time::Duration;

use wattedge_guest::GuestError;
use wattedge_guest::config::config_error;
use wattedge_guest::http as wasi_http;

/// A request to make.
#[derive(Clone, Debug, PartialEq)]
pub struct HttpPlan {
    pub scheme: String,
    pub authority: String,
    pub path_with_query: String,
    pub method: String,
    pub headers: Vec<(String, String)>,
    pub body: String,
    pub timeout_ms: Option<u64>,
    pub label: String,
    pub parallel: u64,
}

/// What the guest received.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Outcome {
    pub status: u16,
    /// Response headers as `name: value` lines.
    pub headers: String,
    pub body: String,
    pub error: String,
}

fn last<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    pairs.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

/// Parses the plan from config pairs (later pairs win).
pub fn plan(pairs: &[(String, String)]) -> Result<HttpPlan, GuestError> {
    let url = last(pairs, "url").ok_or_else(|| config_error("url", "required in http mode"))?;
    let (scheme, authority, path) = wasi_http::split_url(url)
        .map_err(|_| config_error("url", "must be absolute: http://host/path or https://host/path"))?;
    let mut headers: Vec<(String, String)> = Vec::new();
    for (k, v) in pairs {
        if let Some(name) = k.strip_prefix("h.") {
            headers.retain(|(n, _)| n != name);
            headers.push((name.to_string(), v.clone()));
        }
    }
    let number = |key: &str| {
        last(pairs, key).map(|v| v.trim().parse::<u64>().map_err(|_| config_error(key, "must be a whole number")))
    };
    Ok(HttpPlan {
        scheme: scheme.to_string(),
        authority: authority.to_string(),
        path_with_query: path.to_string(),
        method: last(pairs, "method").unwrap_or("GET").to_string(),
        headers,
        body: last(pairs, "body").unwrap_or("").to_string(),
        timeout_ms: number("timeout_ms").transpose()?,
        label: last(pairs, "label").unwrap_or("request").to_string(),
        parallel: number("parallel").transpose()?.unwrap_or(1).clamp(1, 64),
    })
}

/// Makes the request and reads the whole
/// response; a failure is reported in `error` with status 0.
pub fn perform(plan: &HttpPlan) -> Outcome {
    let copies = vec![plan.request(); usize::try_from(plan.parallel).unwrap_or(1)];
    let mut results = wasi_http::request_all(&copies);
    let chosen = results.iter().position(Result::is_err).unwrap_or(0);
    match results.swap_remove(chosen) {
        Ok(response) => Outcome {
            status: response.status,
            headers: response.headers.iter().map(|(name, value)| format!("{name}: {value}\n")).collect(),
            body: response.body,
            error: String::new(),
        },
        Err(error) => Outcome { error: error.to_string(), ..Outcome::default() },
    }
}

impl HttpPlan {
    /// The shared exchange this plan describes.
    fn request(&self) -> wasi_http::Request {
        wasi_http::Request {
            method: self.method.clone(),
            url: format!("{}://{}{}", self.scheme, self.authority, self.path_with_query),
            headers: self.headers.clone(),
            body: self.body.clone(),
            first_byte_timeout: self.timeout_ms.map(Duration::from_millis),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
        items.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn parses_a_request() {
        let p = plan(&pairs(&[
            ("url", "https://api.test:8443/login?x=${secret:a}"),
            ("method", "POST"),
            ("h.authorization", "Basic ${secret-basic:u:p}"),
            ("h.x-a", "1"),
            ("h.x-a", "2"),
            ("body", "a=b"),
        ]))
        .unwrap();
        assert_eq!((p.scheme.as_str(), p.authority.as_str()), ("https", "api.test:8443"));
        assert_eq!(p.path_with_query, "/login?x=${secret:a}");
        assert_eq!(p.headers, pairs(&[("authorization", "Basic ${secret-basic:u:p}"), ("x-a", "2")]));
        assert_eq!((p.body.as_str(), p.timeout_ms), ("a=b", None));
    }

    #[test]
    fn plans_become_one_exchange() {
        let p = plan(&pairs(&[("url", "https://api.test:8443/t?a=1"), ("timeout_ms", "300")])).unwrap();
        let sent = p.request();
        assert_eq!((sent.method.as_str(), sent.url.as_str()), ("GET", "https://api.test:8443/t?a=1"));
        assert_eq!(sent.first_byte_timeout, Some(Duration::from_millis(300)));
        assert_eq!(perform(&p).status, 0, "native builds cannot send");
    }

    #[test]
    fn rejects_bad_input() {
        assert!(plan(&pairs(&[])).is_err());
        assert!(plan(&pairs(&[("url", "api.test")])).is_err());
        assert!(plan(&pairs(&[("url", "https://a"), ("timeout_ms", "soon")])).is_err());
        assert_eq!(plan(&pairs(&[("url", "https://a")])).unwrap().path_with_query, "/");
    }
}
