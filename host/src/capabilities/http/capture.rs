//! What a guest receives: fields taken into secrets by armed capture rules
//! are replaced by [`CAPTURED`], and every known secret value (plus every
//! form the host inserted into the request) is scrubbed from the response
//! body and headers, so a server that echoes `Authorization` cannot leak.

use serde_json::Value;

use crate::capabilities::secrets::CaptureRule;

/// Replaces a captured field in the body the guest receives.
pub const CAPTURED: &str = "[wattedge:captured]";
/// Replaces any secret value found in a response.
pub const REDACTED: &str = "[redacted]";

/// One value taken out of a response, to be stored in `rule.secret`.
#[derive(Debug, PartialEq)]
pub struct Taken {
    pub rule: CaptureRule,
    pub value: String,
}

/// Applies `rules` to a JSON body: each field found (string, number or
/// bool; absent or null is skipped) is taken and replaced by [`CAPTURED`].
/// Returns the rewritten body and the values, or an error when the body is
/// not JSON.
pub fn take_fields(body: &[u8], rules: &[CaptureRule]) -> Result<(Vec<u8>, Vec<Taken>), String> {
    let mut json: Value = serde_json::from_slice(body)
        .map_err(|e| format!("capture rules were armed but the response is not JSON: {e}"))?;
    let mut taken = Vec::new();
    for rule in rules {
        let Some(field) = json.pointer_mut(&rule.pointer) else { continue };
        let value = match field {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            Value::Null => continue,
            Value::Array(_) | Value::Object(_) => {
                return Err(format!("capture pointer {:?} names an object or array, not a value", rule.pointer));
            }
        };
        *field = Value::String(CAPTURED.to_string());
        taken.push(Taken { rule: rule.clone(), value });
    }
    let out = serde_json::to_vec(&json).map_err(|e| format!("cannot re-encode the response: {e}"))?;
    Ok((out, taken))
}

/// Shorter secret values are not looked for: they would match ordinary text.
pub const MIN_SCRUB_LEN: usize = 4;

/// The values to scrub, longest first (so a value containing another is
/// replaced whole), without short or duplicate entries.
pub fn scrub_list(mut values: Vec<String>) -> Vec<String> {
    values.retain(|v| v.len() >= MIN_SCRUB_LEN);
    values.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
    values.dedup();
    values
}

/// `bytes` with every occurrence of each of `values` replaced by [`REDACTED`];
/// None when nothing matched.
pub fn scrub(bytes: &[u8], values: &[String]) -> Option<Vec<u8>> {
    let mut current: Option<Vec<u8>> = None;
    for value in values {
        let needle = value.as_bytes();
        let haystack = current.as_deref().unwrap_or(bytes);
        if let Some(replaced) = replace_all(haystack, needle) {
            current = Some(replaced);
        }
    }
    current
}

fn replace_all(haystack: &[u8], needle: &[u8]) -> Option<Vec<u8>> {
    let first = find(haystack, needle)?;
    let mut out = Vec::with_capacity(haystack.len());
    out.extend_from_slice(&haystack[..first]);
    out.extend_from_slice(REDACTED.as_bytes());
    let mut rest = &haystack[first + needle.len()..];
    while let Some(i) = find(rest, needle) {
        out.extend_from_slice(&rest[..i]);
        out.extend_from_slice(REDACTED.as_bytes());
        rest = &rest[i + needle.len()..];
    }
    out.extend_from_slice(rest);
    Some(out)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || needle.len() > haystack.len() {
        return None;
    }
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Scrubs header values in place.
pub fn scrub_headers(headers: &mut http::HeaderMap, values: &[String]) {
    for value in headers.values_mut() {
        if let Some(clean) = scrub(value.as_bytes(), values)
            && let Ok(v) = http::HeaderValue::from_bytes(&clean)
        {
            *value = v;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(pointer: &str, secret: &str) -> CaptureRule {
        CaptureRule { pointer: pointer.into(), secret: secret.into(), ttl: None, persist: false }
    }

    #[test]
    fn takes_and_marks_fields() {
        let body = br#"{"token":"tok-123456","nested":{"refresh":"r-abcdef"},"n":null,"keep":1}"#;
        let rules =
            [rule("/token", "a.token"), rule("/nested/refresh", "a.refresh"), rule("/n", "x"), rule("/missing", "y")];
        let (out, taken) = take_fields(body, &rules).unwrap();
        let json: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(json["token"], CAPTURED);
        assert_eq!(json["nested"]["refresh"], CAPTURED);
        assert_eq!((json["n"].clone(), json["keep"].clone()), (Value::Null, Value::from(1)));
        let got: Vec<(&str, &str)> = taken.iter().map(|t| (t.rule.secret.as_str(), t.value.as_str())).collect();
        assert_eq!(got, [("a.token", "tok-123456"), ("a.refresh", "r-abcdef")]);
    }

    #[test]
    fn capture_errors() {
        assert!(take_fields(b"not json", &[rule("/t", "s")]).unwrap_err().contains("not JSON"));
        assert!(take_fields(br#"{"t":{"a":1}}"#, &[rule("/t", "s")]).is_err());
    }

    #[test]
    fn scrubs_every_value_longest_first() {
        let values = scrub_list(vec!["abc".into(), "secret-1".into(), "secret-1-long".into(), "secret-1".into()]);
        assert_eq!(values, ["secret-1-long", "secret-1"]);
        let out = scrub(b"a secret-1-long b secret-1 c secret-1", &values).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "a [redacted] b [redacted] c [redacted]");
        assert_eq!(scrub(b"clean", &values), None);
        let mut headers = http::HeaderMap::new();
        headers.insert("x-echo", http::HeaderValue::from_static("Bearer secret-1"));
        scrub_headers(&mut headers, &values);
        assert_eq!(headers["x-echo"], "Bearer [redacted]");
    }
}
