use super::*;

const T0: i64 = 1_795_000_000_000_000_000 / 300_000_000_000 * 300_000_000_000;

fn rfc3339(ns: i64) -> String {
    let secs = ns.div_euclid(1_000_000_000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Inverse of days_from_civil, only for building test input.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

fn body(values: &[Option<f64>]) -> String {
    let data: Vec<String> = values
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let value = v.map_or("null".to_string(), |v| v.to_string());
            format!(r#"{{"point_time":"{}","value":{value}}}"#, rfc3339(T0 + i as i64 * 300_000_000_000))
        })
        .collect();
    format!(
        r#"{{"data":[{}],"meta":{{"region":"CAISO_NORTH","signal_type":"co2_moer","units":"lbs_co2_per_mwh","generated_at":"2026-11-22T17:00:00Z","model":{{"date":"2026-11-01"}},"warnings":[]}}}}"#,
        data.join(",")
    )
}

#[test]
fn times_parse() {
    assert_eq!(parse_time_ns("1970-01-01T00:00:00Z"), Some(0));
    assert_eq!(parse_time_ns("2024-02-29T12:34:56Z"), Some(1_709_210_096_000_000_000));
    assert_eq!(parse_time_ns("2024-02-29T14:34:56+02:00"), Some(1_709_210_096_000_000_000));
    assert_eq!(parse_time_ns("2024-02-29T12:34:56.5Z"), Some(1_709_210_096_500_000_000));
    assert_eq!(parse_time_ns(&rfc3339(T0)), Some(T0));
    for bad in ["", "2024-02-29", "2024-13-01T00:00:00Z", "2024-02-29T12:34:56", "2024-02-29T12:34:56+0200", "x"] {
        assert_eq!(parse_time_ns(bad), None, "{bad}");
    }
}

#[test]
fn converts_to_grams() {
    assert_eq!(to_g_kwh(1000.0), 453.6);
    assert_eq!(to_g_kwh(0.0), 0.0);
    assert_eq!(to_g_kwh(812.5), 368.55);
}

#[test]
fn full_day_uses_one_hour_ahead_and_last_point() {
    let mut values: Vec<Option<f64>> = (0..288).map(|i| Some(1000.0 + i as f64)).collect();
    values[12] = Some(900.0);
    let f = parse(&body(&values)).unwrap();
    assert_eq!(f.samples.len(), 288);
    assert_eq!(f.generated_at, "2026-11-22T17:00:00Z");
    let c = current(&f).unwrap();
    assert_eq!((c.time, c.moer_lbs_mwh), (T0, 1000.0));
    assert_eq!(c.forecast_1h, to_g_kwh(900.0), "the point 1 h (12 × 5 min) ahead");
    assert_eq!(c.forecast_24h, to_g_kwh(1287.0), "a 24 h horizon ends 5 min short: the last point");
}

#[test]
fn nulls_are_skipped() {
    let mut values: Vec<Option<f64>> = vec![Some(500.0); 20];
    values[12] = None;
    values[19] = None;
    values[18] = Some(600.0);
    let f = parse(&body(&values)).unwrap();
    let c = current(&f).unwrap();
    assert_eq!(c.forecast_1h, to_g_kwh(500.0), "null at +1 h: the next valued point");
    assert_eq!(c.forecast_24h, to_g_kwh(600.0), "last valued point");
    let points = points("CAISO_NORTH", &f).unwrap();
    assert_eq!(points.len(), 1 + 18, "one current point and one per valued forecast point");
    assert!(points[1..].iter().all(|p| p.measurement == FORECAST));
}

#[test]
fn null_or_missing_first_value_is_an_error() {
    let f = parse(&body(&[None, Some(1.0)])).unwrap();
    assert!(current(&f).unwrap_err().contains("first forecast point"));
    assert!(points("X", &f).is_err());
    let missing = r#"{"data":[{"point_time":"2026-01-01T00:00:00Z"}],"meta":{}}"#;
    assert!(points("X", &parse(missing).unwrap()).is_err());
    assert_eq!(current(&parse(r#"{"data":[]}"#).unwrap()).unwrap_err(), "the forecast has no points");
}

#[test]
fn malformed_bodies_are_errors() {
    assert!(parse("<html>502 Bad Gateway</html>").unwrap_err().starts_with("malformed JSON"));
    assert!(parse(r#"{"data":[{"point_time":"2026-01-01T00:00:00Z","value":"x"}]}"#).is_err());
    assert!(parse(r#"{"meta":{}}"#).is_err(), "no data array");
    assert!(parse(r#"{"data":[{"point_time":"yesterday","value":1}]}"#).unwrap_err().contains("yesterday"));
}

#[test]
fn point_shapes() {
    let f = parse(&body(&[Some(1000.0), Some(800.0)])).unwrap();
    let p = points("CAISO_NORTH", &f).unwrap();
    assert_eq!(p[0].measurement, CURRENT);
    assert_eq!(p[0].time, T0);
    assert_eq!(p[0].tags, vec![("region".to_string(), "CAISO_NORTH".to_string())]);
    assert_eq!(p[0].fields[0], ("carbon_intensity_gco2_kwh".into(), FieldValue::Float(453.6)));
    assert_eq!(p[0].fields[1], ("moer_lbs_mwh".into(), FieldValue::Float(1000.0)));
    assert_eq!(p[0].fields[2], ("forecast_1h".into(), FieldValue::Float(to_g_kwh(800.0))));
    assert_eq!(p[2].time, T0 + 300_000_000_000);
    assert_eq!(p[2].fields[1], ("generated_at".into(), FieldValue::Text("2026-11-22T17:00:00Z".into())));
}
