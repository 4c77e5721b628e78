//! The WattTime v3 `/v3/forecast` response: parsing, unit conversion and the
//! points the guest writes.
//!
//! Kept free of host calls so every rule (nulls skipped, a null first point is
//! an error, which point counts as "1 h ahead") is unit-tested natively. The
//! Python ancestor wrote zeros for months because it read fields v3 does not
//! have; here the shape is a typed serde struct and anything else is an error.

use serde::Deserialize;
use wattedge_guest::{FieldValue, Point, Timestamp};

/// lbs CO2 per MWh → g CO2 per kWh (453.59237 g per lb / 1000 kWh per MWh,
/// rounded as WattTime documents it).
pub const LBS_MWH_TO_G_KWH: f64 = 0.4536;
/// Measurement of the current value and its 1 h / 24 h outlook.
pub const CURRENT: &str = "carbon_intensity";
/// Measurement holding the whole forecast curve.
pub const FORECAST: &str = "carbon_intensity_forecast";

const HOUR_NS: i64 = 3_600_000_000_000;

/// One forecast point; `value` is `None` when WattTime sent null or nothing.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// `point_time` in nanoseconds since the epoch.
    pub time: Timestamp,
    /// MOER in lbs CO2 / MWh.
    pub value: Option<f64>,
}

/// A parsed forecast, samples in time order.
#[derive(Clone, Debug, PartialEq)]
pub struct Forecast {
    /// Every point that had a `point_time`.
    pub samples: Vec<Sample>,
    /// `meta.generated_at` as WattTime sent it (empty when absent).
    pub generated_at: String,
}

#[derive(Deserialize)]
struct RawForecast {
    data: Vec<RawPoint>,
    #[serde(default)]
    meta: Option<RawMeta>,
}

#[derive(Deserialize)]
struct RawPoint {
    #[serde(default)]
    point_time: Option<String>,
    #[serde(default)]
    value: Option<f64>,
}

#[derive(Deserialize)]
struct RawMeta {
    #[serde(default)]
    generated_at: Option<String>,
}

/// Parses a `/v3/forecast` body; the error says what was wrong.
pub fn parse(body: &str) -> Result<Forecast, String> {
    let raw: RawForecast = serde_json::from_str(body).map_err(|e| format!("malformed JSON: {e}"))?;
    let mut samples = Vec::with_capacity(raw.data.len());
    for point in raw.data {
        let Some(text) = point.point_time else { continue };
        let time = parse_time_ns(&text).ok_or_else(|| format!("point_time {text:?} is not an RFC 3339 time"))?;
        samples.push(Sample { time, value: point.value.filter(|v| v.is_finite()) });
    }
    samples.sort_by_key(|s| s.time);
    let generated_at = raw.meta.and_then(|m| m.generated_at).unwrap_or_default();
    Ok(Forecast { samples, generated_at })
}

/// lbs/MWh → g/kWh, rounded to 6 decimals so 1000 lbs/MWh is exactly 453.6.
pub fn to_g_kwh(lbs_mwh: f64) -> f64 {
    (lbs_mwh * LBS_MWH_TO_G_KWH * 1e6).round() / 1e6
}

/// The current value and the outlook taken from one forecast.
#[derive(Clone, Debug, PartialEq)]
pub struct Current {
    /// Time of the first point.
    pub time: Timestamp,
    /// First point's MOER in lbs/MWh.
    pub moer_lbs_mwh: f64,
    /// The point 1 h ahead (or the last one) in g/kWh.
    pub forecast_1h: f64,
    /// The point 24 h ahead (or the last one) in g/kWh.
    pub forecast_24h: f64,
}

/// The current value: the first point must have a value.
pub fn current(forecast: &Forecast) -> Result<Current, String> {
    let first = forecast.samples.first().ok_or("the forecast has no points")?;
    let moer = first.value.ok_or_else(|| format!("the first forecast point ({}) has no value", first.time))?;
    Ok(Current {
        time: first.time,
        moer_lbs_mwh: moer,
        forecast_1h: to_g_kwh(ahead(&forecast.samples, first.time + HOUR_NS).unwrap_or(moer)),
        forecast_24h: to_g_kwh(ahead(&forecast.samples, first.time + 24 * HOUR_NS).unwrap_or(moer)),
    })
}

/// The value of the first non-null sample at or after `at`, else of the last
/// non-null sample (a horizon shorter than the offset).
pub fn ahead(samples: &[Sample], at: Timestamp) -> Option<f64> {
    let mut valued = samples.iter().filter_map(|s| s.value.map(|v| (s.time, v)));
    let mut last = None;
    for (time, value) in valued.by_ref() {
        if time >= at {
            return Some(value);
        }
        last = Some(value);
    }
    last
}

/// The `carbon_intensity` point for `current` in `region`.
pub fn current_point(region: &str, current: &Current) -> Point {
    Point {
        measurement: CURRENT.into(),
        tags: vec![("region".into(), region.into())],
        fields: vec![
            ("carbon_intensity_gco2_kwh".into(), FieldValue::Float(to_g_kwh(current.moer_lbs_mwh))),
            ("moer_lbs_mwh".into(), FieldValue::Float(current.moer_lbs_mwh)),
            ("forecast_1h".into(), FieldValue::Float(current.forecast_1h)),
            ("forecast_24h".into(), FieldValue::Float(current.forecast_24h)),
        ],
        time: current.time,
    }
}

/// One `carbon_intensity_forecast` point per sample with a value.
pub fn forecast_points(region: &str, forecast: &Forecast) -> Vec<Point> {
    forecast
        .samples
        .iter()
        .filter_map(|s| s.value.map(|v| (s.time, v)))
        .map(|(time, value)| Point {
            measurement: FORECAST.into(),
            tags: vec![("region".into(), region.into())],
            fields: vec![
                ("moer_lbs_mwh".into(), FieldValue::Float(value)),
                ("generated_at".into(), FieldValue::Text(forecast.generated_at.clone())),
            ],
            time,
        })
        .collect()
}

/// Every point one successful forecast produces, or why none may be written.
pub fn points(region: &str, forecast: &Forecast) -> Result<Vec<Point>, String> {
    let current = current(forecast)?;
    let mut points = vec![current_point(region, &current)];
    points.extend(forecast_points(region, forecast));
    Ok(points)
}

fn digits(text: &str, range: std::ops::Range<usize>) -> Option<i64> {
    let part = text.get(range)?;
    if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    part.parse().ok()
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
pub fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `YYYY-MM-DDTHH:MM:SS[.fff](Z|±HH:MM)` → nanoseconds since the epoch.
pub fn parse_time_ns(text: &str) -> Option<i64> {
    let b = text.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let (year, month, day) = (digits(text, 0..4)?, digits(text, 5..7)?, digits(text, 8..10)?);
    let (hour, minute, second) = (digits(text, 11..13)?, digits(text, 14..16)?, digits(text, 17..19)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let mut rest = &text[19..];
    let mut nanos = 0i64;
    if let Some(frac) = rest.strip_prefix('.') {
        let len = frac.bytes().take_while(u8::is_ascii_digit).count();
        if len == 0 {
            return None;
        }
        let kept = &frac[..len.min(9)];
        nanos = digits(kept, 0..kept.len())? * 10i64.pow(9 - kept.len() as u32);
        rest = &frac[len..];
    }
    let offset_s = match rest {
        "Z" | "z" => 0,
        _ if rest.len() == 6 && rest.as_bytes()[3] == b':' => {
            let sign = match rest.as_bytes()[0] {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            sign * (digits(rest, 1..3)? * 3600 + digits(rest, 4..6)? * 60)
        }
        _ => return None,
    };
    let seconds = days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second - offset_s;
    seconds.checked_mul(1_000_000_000)?.checked_add(nanos)
}

#[cfg(test)]
mod tests;
