//! Capture: the operator's rules (`grants.capture`) take fields of a JSON
//! answer into secrets, and the field the guest receives says
//! [`CAPTURED`] (stored) or [`REDACTED`] (refused). The gate then scrubs
//! what is left ([`crate::secrets::scrub`]): this guest's secret values,
//! the values just taken, and every string inserted into the request.

use serde_json::Value;

use crate::config::CaptureRule;
pub use crate::secrets::scrub::REDACTED;

/// Replaces a captured field in the body the guest receives.
pub const CAPTURED: &str = "[wattedge:captured]";

/// Why an answer's body could not be read for capture.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("the body is not JSON (malformed JSON: {0})")]
    NotJson(#[from] serde_json::Error),
}

/// A rule that applies to this answer: the secret it fills and how.
pub type Applicable<'a> = (&'a str, &'a CaptureRule);

/// What [`take_fields`] did with one answer.
#[derive(Debug, Default)]
pub struct Taken {
    /// Every value taken out of the body (stored or not): the guest must
    /// not find them anywhere else in it either.
    pub values: Vec<String>,
    /// Pointers that named an object or array: withheld whole, not stored.
    pub not_values: Vec<String>,
}

/// Applies `rules` to a JSON body. Each field found (string, number or
/// bool; absent or null is skipped) is offered to `store`, which says
/// whether it kept it; the field becomes [`CAPTURED`] or [`REDACTED`]. A
/// field that is an object or array becomes [`REDACTED`]. Returns the
/// re-encoded body when a rule found its field (re-encoded, so duplicate
/// keys and escapes cannot hide a second copy of a token; None leaves the
/// body as it came) and what was taken; an error when the body is not JSON.
pub fn take_fields(
    body: &[u8],
    rules: &[Applicable<'_>],
    mut store: impl FnMut(&str, &CaptureRule, &str) -> bool,
) -> Result<(Option<Vec<u8>>, Taken), CaptureError> {
    let mut json: Value = serde_json::from_slice(body)?;
    let mut taken = Taken::default();
    for (secret, rule) in rules {
        let Some(field) = json.pointer_mut(&rule.pointer) else { continue };
        let value = match field {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            Value::Null => continue,
            Value::Array(_) | Value::Object(_) => {
                taken.not_values.push(rule.pointer.clone());
                *field = Value::String(REDACTED.to_string());
                continue;
            }
        };
        let marker = if store(secret, rule, &value) { CAPTURED } else { REDACTED };
        *field = Value::String(marker.to_string());
        taken.values.push(value);
    }
    if taken.values.is_empty() && taken.not_values.is_empty() {
        return Ok((None, taken));
    }
    Ok((Some(serde_json::to_vec(&json)?), taken))
}

/// Ok when the body is plain: every `Content-Encoding` header (and each
/// coding listed in one) is `identity`, and `Transfer-Encoding` is at most
/// `chunked` (which hyper has undone). Otherwise what was found.
pub fn plain_body(headers: &http::HeaderMap) -> Result<(), String> {
    let codings = |name: http::header::HeaderName| -> Result<Vec<String>, String> {
        let mut found = Vec::new();
        for value in headers.get_all(&name) {
            let text = value.to_str().map_err(|_| format!("the response has a {name} that is not text"))?;
            found.extend(text.split(',').map(|c| c.trim().to_ascii_lowercase()).filter(|c| !c.is_empty()));
        }
        Ok(found)
    };
    let content = codings(http::header::CONTENT_ENCODING)?;
    if let Some(coding) = content.iter().find(|c| *c != "identity") {
        return Err(format!("the response is {coding}-encoded although only identity was accepted"));
    }
    let transfer = codings(http::header::TRANSFER_ENCODING)?;
    if let Some(coding) = transfer.iter().find(|c| *c != "identity" && *c != "chunked") {
        return Err(format!("the response is {coding}-encoded (transfer coding) although only identity was accepted"));
    }
    Ok(())
}

/// Scrubs header values in place.
pub fn scrub_headers(headers: &mut http::HeaderMap, scrubber: &crate::secrets::scrub::Scrubber) {
    for value in headers.values_mut() {
        if let Some(clean) = scrubber.scrub(value.as_bytes()) {
            *value = http::HeaderValue::from_bytes(&clean).unwrap_or(http::HeaderValue::from_static(REDACTED));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capabilities::http::HostGrant;

    fn rule(pointer: &str) -> CaptureRule {
        CaptureRule { from: HostGrant::parse("a.test").unwrap(), pointer: pointer.into(), ttl: None, persist: false }
    }

    #[test]
    fn takes_and_marks_fields() {
        let body = br#"{"token":"tok-123456","nested":{"refresh":"r-abcdef"},"n":null,"keep":1}"#;
        let rules = [rule("/token"), rule("/nested/refresh"), rule("/n"), rule("/missing")];
        let named: Vec<Applicable> = ["a.token", "a.refresh", "x", "y"].into_iter().zip(&rules).collect();
        let mut stored = Vec::new();
        let (out, taken) = take_fields(body, &named, |secret, _, value| {
            stored.push((secret.to_string(), value.to_string()));
            true
        })
        .unwrap();
        let out = out.expect("rewritten");
        let json: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(json["token"], CAPTURED);
        assert_eq!(json["nested"]["refresh"], CAPTURED);
        assert_eq!((json["n"].clone(), json["keep"].clone()), (Value::Null, Value::from(1)));
        let got: Vec<(&str, &str)> = stored.iter().map(|(s, v)| (s.as_str(), v.as_str())).collect();
        assert_eq!(got, [("a.token", "tok-123456"), ("a.refresh", "r-abcdef")]);
        assert_eq!(taken.values, ["tok-123456", "r-abcdef"]);
    }

    #[test]
    fn a_refused_value_is_redacted_and_an_object_withheld() {
        let body = br#"{"t":"too-long-value","o":{"token":"inside"}}"#;
        let rules = [rule("/t"), rule("/o")];
        let named: Vec<Applicable> = ["s", "o"].into_iter().zip(&rules).collect();
        let (out, taken) = take_fields(body, &named, |_, _, _| false).unwrap();
        let out = out.expect("rewritten");
        let json: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!((json["t"].as_str(), json["o"].as_str()), (Some(REDACTED), Some(REDACTED)));
        assert_eq!((taken.values, taken.not_values), (vec!["too-long-value".to_string()], vec!["/o".to_string()]));
    }

    #[test]
    fn a_json_body_without_the_fields_is_left_as_it_came() {
        let rules = [rule("/t")];
        let named: Vec<Applicable> = vec![("s", &rules[0])];
        let (out, taken) = take_fields(b"{ \"b\": 1, \"a\": 2 }", &named, |_, _, _| true).unwrap();
        assert!(out.is_none() && taken.values.is_empty());
    }

    #[test]
    fn a_body_that_is_not_json_is_an_error() {
        let rules = [rule("/t")];
        let named: Vec<Applicable> = vec![("s", &rules[0])];
        let err = take_fields(b"token=abc", &named, |_, _, _| true).unwrap_err();
        assert!(err.to_string().contains("malformed JSON"), "{err}");
    }

    #[test]
    fn only_plain_bodies_pass_whichever_header_says_otherwise() {
        let headers = |pairs: &[(&'static str, &'static str)]| {
            let mut map = http::HeaderMap::new();
            for (name, value) in pairs {
                map.append(*name, http::HeaderValue::from_static(value));
            }
            map
        };
        assert!(plain_body(&headers(&[])).is_ok());
        assert!(plain_body(&headers(&[("content-encoding", "identity"), ("transfer-encoding", "chunked")])).is_ok());
        let two = headers(&[("content-encoding", "identity"), ("content-encoding", "gzip")]);
        assert!(plain_body(&two).unwrap_err().contains("gzip-encoded"));
        assert!(plain_body(&headers(&[("content-encoding", "identity, br")])).unwrap_err().contains("br-encoded"));
        assert!(plain_body(&headers(&[("transfer-encoding", "gzip, chunked")])).is_err());
    }

    #[test]
    fn headers_are_scrubbed_in_place() {
        let scrubber = crate::secrets::scrub::Scrubber::new(["secret-1".to_string()]);
        let mut headers = http::HeaderMap::new();
        headers.insert("x-echo", http::HeaderValue::from_static("Bearer secret-1"));
        scrub_headers(&mut headers, &scrubber);
        assert_eq!(headers["x-echo"], "Bearer [redacted]");
    }

    #[test]
    fn duplicate_keys_leave_one_copy_which_is_captured() {
        let rules = [rule("/t")];
        let named: Vec<Applicable> = vec![("s", &rules[0])];
        let (out, _) = take_fields(br#"{"t":"first-copy","t":"second-copy"}"#, &named, |_, _, _| true).unwrap();
        let text = String::from_utf8(out.expect("rewritten")).unwrap();
        assert!(!text.contains("first-copy") && !text.contains("second-copy"), "{text}");
    }
}
