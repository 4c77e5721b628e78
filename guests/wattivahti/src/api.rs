//! The WattiVahti wire formats: the Azure B2C token request and reply, the
//! `meterdata2` URL and body, and the points built from it.
//!
//! Owned here so every upstream shape lives in one place and is tested
//! natively; the requests are sent by `http` and orchestrated by `sync`.

use serde_json::Value;

use crate::localtime::{LocalRecord, Nanos, Placed, parse_api_time};
use wattedge_guest::{FieldValue, Point};

/// Secret holding the Azure B2C refresh token (persisted, token host only).
pub const REFRESH_TOKEN: &str = "wattivahti.refresh_token";
/// Secret holding the current access token (memory only, data host only).
pub const ACCESS_TOKEN: &str = "wattivahti.access_token";
/// Measurement the guest writes.
pub const MEASUREMENT: &str = "electricity_consumption";
pub use wattedge_guest::http::CAPTURED;

/// Percent-encodes a form or query value (RFC 3986 unreserved kept).
pub fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The form body of the refresh-token grant; the host fills the placeholder.
pub fn token_form(client_id: &str, scope: &str) -> String {
    format!(
        "grant_type=refresh_token&client_id={}&scope={}&refresh_token=${{secret:{REFRESH_TOKEN}}}&client_info=1",
        encode(client_id),
        encode(scope)
    )
}

/// What the token endpoint's answer means for this run.
#[derive(Clone, Debug, PartialEq)]
pub enum TokenOutcome {
    /// An access token was captured; `rotated` when the reply also carried a
    /// refresh token (which the host stored in place of the old one).
    Granted { rotated: bool },
    /// The refresh token is no longer accepted: the user must set a new one.
    InvalidGrant(String),
    /// Anything else: the endpoint failed or answered something unexpected.
    Failed(String),
}

/// Classifies a token reply (the body as the guest sees it, after capture).
pub fn token_outcome(status: u16, body: &str) -> TokenOutcome {
    let json: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    if (200..300).contains(&status) {
        let captured = |k: &str| json.get(k).and_then(Value::as_str) == Some(CAPTURED);
        return if captured("access_token") {
            TokenOutcome::Granted { rotated: captured("refresh_token") }
        } else {
            TokenOutcome::Failed(format!("token endpoint answered {status} without an access_token"))
        };
    }
    if json.get("error").and_then(Value::as_str) == Some("invalid_grant") {
        let why = json.get("error_description").and_then(Value::as_str).unwrap_or("no description");
        return TokenOutcome::InvalidGrant(first_line(why));
    }
    TokenOutcome::Failed(format!("token endpoint answered {status}: {}", snippet(body)))
}

/// The degraded detail for a rejected refresh token.
pub fn invalid_grant_text(why: &str) -> String {
    format!(
        "WattiVahti rejected the refresh token (invalid_grant: {why}); sign in to WattiVahti, copy a new \
         refresh token and set it with `wattedge secrets set {REFRESH_TOKEN}`"
    )
}

/// The `meterdata2` path and query for one window.
pub fn meterdata_path(metering_point: &str, start: &str, stop: &str, step: &str) -> String {
    format!(
        "/api/onlineapi/v1/meterdata2?meteringPointCode={}&measurementType=1&start={}&stop={}&resultStep={step}",
        encode(metering_point),
        encode(start),
        encode(stop)
    )
}

/// The records of a `meterdata2` body, in the order sent. A missing or null
/// `tsv` means no data; a body without `getconsumptionsresult` is an error.
pub fn parse_meterdata(body: &str) -> Result<(Vec<LocalRecord>, Vec<String>), String> {
    let json: Value = serde_json::from_str(body).map_err(|e| format!("meterdata2 body is not JSON: {e}"))?;
    let result = json
        .get("getconsumptionsresult")
        .ok_or_else(|| format!("meterdata2 body has no getconsumptionsresult: {}", snippet(body)))?;
    let tsv = result.pointer("/consumptiondata/timeseries/values/tsv").unwrap_or(&Value::Null);
    let items: Vec<&Value> = match tsv {
        Value::Array(items) => items.iter().collect(),
        Value::Object(_) => vec![tsv],
        _ => Vec::new(),
    };
    let mut records = Vec::new();
    let mut warnings = Vec::new();
    for item in items {
        match record(item) {
            Ok(r) => records.push(r),
            Err(w) => warnings.push(w),
        }
    }
    Ok((records, warnings))
}

fn record(item: &Value) -> Result<LocalRecord, String> {
    let time = item.get("time").and_then(Value::as_str).ok_or_else(|| format!("record without time: {item}"))?;
    let local = parse_api_time(time)?;
    let quantity = match item.get("quantity") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => n.as_f64(),
        Some(Value::String(s)) => Some(s.trim().parse::<f64>().map_err(|_| format!("{time}: quantity {s:?}"))?),
        Some(other) => return Err(format!("{time}: unreadable quantity {other}")),
    };
    let scale = match item.get("unit").and_then(Value::as_str).unwrap_or("kWh") {
        u if u.eq_ignore_ascii_case("kwh") => 1.0,
        u if u.eq_ignore_ascii_case("wh") => 0.001,
        u => return Err(format!("{time}: unknown unit {u:?} (expected kWh)")),
    };
    Ok(LocalRecord { local, kwh: quantity.filter(|q| q.is_finite()).map(|q| q * scale) })
}

/// Points for placed records; null quantities are skipped.
pub fn points(placed: &[Placed], metering_point: &str, resolution: &str) -> Vec<Point> {
    placed
        .iter()
        .filter_map(|p| p.kwh.map(|kwh| (p.time, kwh)))
        .map(|(time, kwh)| Point {
            measurement: MEASUREMENT.into(),
            tags: vec![("metering_point".into(), metering_point.into()), ("resolution".into(), resolution.into())],
            fields: vec![
                ("consumption_kwh".into(), FieldValue::Float(kwh)),
                ("consumption_wh".into(), FieldValue::Float(kwh * 1000.0)),
            ],
            time,
        })
        .collect()
}

/// The newest time among `points`.
pub fn newest(points: &[Point]) -> Option<Nanos> {
    points.iter().map(|p| p.time).max()
}

fn first_line(text: &str) -> String {
    text.lines().next().unwrap_or("").chars().take(200).collect()
}

fn snippet(body: &str) -> String {
    let flat: String = body.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.chars().count() > 200 { format!("{}…", flat.chars().take(200).collect::<String>()) } else { flat }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_form_has_every_field_and_the_placeholder() {
        let form = token_form("84ebdb93-9ea6", "https://pesv.onmicrosoft.com/salpa/customer.read openid");
        assert_eq!(
            form,
            "grant_type=refresh_token&client_id=84ebdb93-9ea6\
             &scope=https%3A%2F%2Fpesv.onmicrosoft.com%2Fsalpa%2Fcustomer.read%20openid\
             &refresh_token=${secret:wattivahti.refresh_token}&client_info=1"
        );
    }

    #[test]
    fn token_replies() {
        let granted =
            r#"{"access_token":"[wattedge:captured]","refresh_token":"[wattedge:captured]","expires_in":3600}"#;
        assert_eq!(token_outcome(200, granted), TokenOutcome::Granted { rotated: true });
        let kept = r#"{"access_token":"[wattedge:captured]","expires_in":3600}"#;
        assert_eq!(token_outcome(200, kept), TokenOutcome::Granted { rotated: false });
        let null = r#"{"access_token":"[wattedge:captured]","refresh_token":null}"#;
        assert_eq!(token_outcome(200, null), TokenOutcome::Granted { rotated: false });
        assert!(matches!(token_outcome(200, "{}"), TokenOutcome::Failed(m) if m.contains("access_token")));
        let bad =
            r#"{"error":"invalid_grant","error_description":"AADB2C90080: The provided grant has expired.\r\nTrace"}"#;
        assert_eq!(
            token_outcome(400, bad),
            TokenOutcome::InvalidGrant("AADB2C90080: The provided grant has expired.".into())
        );
        assert!(matches!(token_outcome(503, "busy"), TokenOutcome::Failed(m) if m.contains("503: busy")));
        let text = invalid_grant_text("expired");
        assert!(text.contains("`wattedge secrets set wattivahti.refresh_token`"), "{text}");
    }

    #[test]
    fn meterdata_path_encodes_offsets() {
        let path = meterdata_path("1234567", "2025-10-26T00:00:00+03:00", "2025-10-27T00:00:00+02:00", "PT15MIN");
        assert_eq!(
            path,
            "/api/onlineapi/v1/meterdata2?meteringPointCode=1234567&measurementType=1\
             &start=2025-10-26T00%3A00%3A00%2B03%3A00&stop=2025-10-27T00%3A00%3A00%2B02%3A00&resultStep=PT15MIN"
        );
    }

    #[test]
    fn parses_records_nulls_units_and_shapes() {
        let body = r#"{"getconsumptionsresult":{"consumptiondata":{"timeseries":{"values":{"tsv":[
            {"time":"2025-10-26T03:00:00Z","quantity":0.12,"unit":"kWh"},
            {"time":"2025-10-26T03:15:00Z","quantity":null,"unit":"kWh"},
            {"time":"2025-10-26T03:30:00Z","quantity":250,"unit":"Wh"},
            {"time":"2025-10-26T03:45:00Z","quantity":1,"unit":"MJ"},
            {"quantity":1}]}}}}}"#;
        let (records, warnings) = parse_meterdata(body).unwrap();
        assert_eq!(records.len(), 3);
        assert_eq!(records[0].kwh, Some(0.12));
        assert_eq!(records[1].kwh, None);
        assert_eq!(records[2].kwh, Some(0.25));
        assert_eq!(records[0].local.to_string(), "2025-10-26T03:00:00");
        assert_eq!(warnings.len(), 2);
        let one = r#"{"getconsumptionsresult":{"consumptiondata":{"timeseries":{"values":{"tsv":{"time":"2025-01-01T00:00:00Z","quantity":"0.5"}}}}}}"#;
        assert_eq!(parse_meterdata(one).unwrap().0[0].kwh, Some(0.5));
        let empty = r#"{"getconsumptionsresult":{"consumptiondata":{"timeseries":{"values":{"tsv":[]}}}}}"#;
        assert!(parse_meterdata(empty).unwrap().0.is_empty());
        assert!(parse_meterdata(r#"{"getconsumptionsresult":{}}"#).unwrap().0.is_empty());
        assert!(parse_meterdata(r#"{"fault":"x"}"#).unwrap_err().contains("getconsumptionsresult"));
        assert!(parse_meterdata("<html>").is_err());
    }

    #[test]
    fn points_skip_nulls_and_carry_tags() {
        let placed = vec![Placed { time: 5, kwh: Some(0.12) }, Placed { time: 6, kwh: None }];
        let p = points(&placed, "1234567", "PT1H");
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].measurement, "electricity_consumption");
        assert_eq!(p[0].tags, vec![("metering_point".into(), "1234567".into()), ("resolution".into(), "PT1H".into())]);
        assert_eq!(p[0].fields[0], ("consumption_kwh".into(), FieldValue::Float(0.12)));
        assert_eq!(p[0].fields[1], ("consumption_wh".into(), FieldValue::Float(120.0)));
        assert_eq!(newest(&p), Some(5));
    }
}
