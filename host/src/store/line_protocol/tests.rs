use super::*;
use proptest::prelude::*;

fn point(m: &str, tags: &[(&str, &str)], fields: &[(&str, FieldValue)], time: i64) -> Point {
    Point {
        measurement: m.into(),
        tags: tags.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        fields: fields.iter().map(|(k, v)| (k.to_string(), v.clone())).collect(),
        time,
    }
}

fn f(v: f64) -> FieldValue {
    FieldValue::Float(v)
}

fn enc(p: &Point) -> String {
    encode_points(std::slice::from_ref(p)).unwrap()
}

fn invalid(p: &Point) -> String {
    let mut out = String::from("keep");
    match encode_point(p, &mut out) {
        Err(StoreError::Invalid(m)) => {
            assert_eq!(out, "keep", "output untouched on error");
            m
        }
        other => panic!("expected Invalid for {p:?}, got {other:?}"),
    }
}

#[track_caller]
fn round_trips(p: &Point, expected_line: &str) {
    let line = enc(p);
    assert_eq!(line, expected_line);
    assert_eq!(parse_line(&line).as_ref(), Ok(p));
}

#[test]
fn basic_types_and_tag_order() {
    let p = point(
        "m",
        &[("z", "1"), ("a", "2")],
        &[
            ("f", f(1.0)),
            ("g", f(-0.5)),
            ("i", FieldValue::Integer(-3)),
            ("u", FieldValue::Unsigned(u64::MAX)),
            ("t", FieldValue::Boolean(true)),
            ("v", FieldValue::Boolean(false)),
            ("s", FieldValue::Text("x".into())),
        ],
        1_700_000_000_123_456_789,
    );
    round_trips(&p, "m,a=2,z=1 f=1,g=-0.5,i=-3i,s=\"x\",t=true,u=18446744073709551615u,v=false 1700000000123456789\n");
}

#[test]
fn floats_round_trip_exactly() {
    for v in [0.1 + 0.2, 1e300, 1e-300, f64::MAX, f64::MIN_POSITIVE, 5e-324, -0.0] {
        let p = point("m", &[], &[("v", f(v))], 0);
        let got = parse_line(&enc(&p)).unwrap();
        match got.fields["v"] {
            FieldValue::Float(g) => assert_eq!(g.to_bits(), v.to_bits(), "{v:e}"),
            ref other => panic!("{other:?}"),
        }
    }
}

#[test]
fn measurement_escapes() {
    round_trips(&point("a,b c", &[], &[("v", f(1.0))], 1), "a\\,b\\ c v=1 1\n");
    // `=` and `"` are literal in a measurement.
    round_trips(&point("a=\"b", &[], &[("v", f(1.0))], 1), "a=\"b v=1 1\n");
    // A lone backslash before an ordinary char is literal.
    round_trips(&point("a\\b", &[], &[("v", f(1.0))], 1), "a\\b v=1 1\n");
}

#[test]
fn tag_and_field_key_escapes() {
    round_trips(
        &point("m", &[("k,= \"", "v,= \"")], &[("f,= \"", FieldValue::Integer(1))], -5),
        "m,k\\,\\=\\ \"=v\\,\\=\\ \" f\\,\\=\\ \"=1i -5\n",
    );
}

#[test]
fn string_field_escapes_and_newlines_inside_quotes() {
    let p = point("m", &[], &[("s", FieldValue::Text("a\"b\\c\nd\re, =".into()))], 7);
    round_trips(&p, "m s=\"a\\\"b\\\\c\nd\re, =\" 7\n");
    // A string that looks like a second line stays inside one point.
    let p = point("m", &[], &[("s", FieldValue::Text("\" 1\nevil,x=1 v=1 2".into()))], 3);
    let line = enc(&p);
    assert_eq!(parse_line(&line), Ok(p));
    assert!(parse_line("m s=\"a\\nb\" 1").is_err(), "unknown escape");
    assert!(parse_line("m s=\"abc 1").is_err(), "unterminated");
}

#[test]
fn newlines_rejected_in_every_name_position() {
    for nl in ["\n", "\r"] {
        let v = [("v", f(1.0))];
        let cases = [
            (point(&format!("m{nl}x"), &[], &v, 1), "measurement"),
            (point("m", &[(&format!("k{nl}"), "v")], &v, 1), "tag key"),
            (point("m", &[("k", &format!("{nl}v"))], &v, 1), "value of tag \"k\""),
            (point("m", &[], &[(&format!("f{nl}"), f(1.0))], 1), "field key"),
        ];
        for (p, what) in cases {
            let msg = invalid(&p);
            assert!(msg.starts_with(what), "{msg:?} should name {what:?}");
            assert!(msg.contains("line break"), "{msg}");
        }
    }
}

#[test]
fn injection_attempt_in_tag_value() {
    let msg = invalid(&point("m", &[("k", ",measurement=x\nother")], &[("v", f(1.0))], 1));
    assert!(msg.contains("tag \"k\"") && msg.contains("line break"), "{msg}");

    let p = point("m", &[("k", ",measurement=x other")], &[("v", f(1.0))], 1);
    let line = enc(&p);
    assert_eq!(line, "m,k=\\,measurement\\=x\\ other v=1 1\n");
    let back = parse_line(&line).unwrap();
    assert_eq!(back.measurement, "m");
    assert_eq!(back.tags.len(), 1);
    assert_eq!(back.tags["k"], ",measurement=x other");
    assert_eq!(back, p);
}

#[test]
fn other_invalid_points() {
    let v = [("v", f(1.0))];
    let cases = [
        (point("", &[], &v, 1), "measurement is empty"),
        (point("m", &[], &[], 1), "no fields"),
        (point("m", &[("", "v")], &v, 1), "tag key is empty"),
        (point("m", &[("k", "")], &v, 1), "empty value"),
        (point("m", &[], &[("", f(1.0))], 1), "field key is empty"),
        (point("m", &[], &[("v", f(f64::NAN))], 1), "NaN"),
        (point("m", &[], &[("v", f(f64::INFINITY))], 1), "inf"),
        (point("m", &[], &[("v", f(f64::NEG_INFINITY))], 1), "-inf"),
        (point("#m", &[], &v, 1), "comment"),
        (point("m\\", &[], &v, 1), "ends with a backslash"),
        (point("m", &[("k\\", "v")], &v, 1), "ends with a backslash"),
        (point("m", &[("k", "v\\,")], &v, 1), "backslash before ','"),
        (point("m", &[], &[("a\\\\b", f(1.0))], 1), "backslash before '\\\\'"),
        (point("m", &[], &v, i64::MIN), "outside"),
        (point("m", &[], &v, i64::MAX), "outside"),
    ];
    for (p, needle) in cases {
        let msg = invalid(&p);
        assert!(msg.contains(needle), "{msg:?} should contain {needle:?}");
    }
    // Batch errors name the index and produce nothing.
    let good = point("m", &[], &v, 1);
    match encode_points(&[good.clone(), point("", &[], &v, 1)]) {
        Err(StoreError::Invalid(m)) => assert!(m.starts_with("point 1: "), "{m}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(encode_points(&[]).unwrap(), "");
}

#[test]
fn parser_is_strict() {
    for bad in [
        "",
        "m",
        "m v=1",
        "m v=1 1 2",
        "m v=1  1",
        "m,k v=1 1",
        "m,k= v=1 1",
        "m v=1 01",
        "m v=1 +1",
        "m v=1.0 1",
        "m v=1e5 1",
        "m v=NaN 1",
        "m v=inf 1",
        "m v=T 1",
        "m v=1i2 1",
        "m v=01i 1",
        "m v=1,v=2 1",
        "m,k=a,k=b v=1 1",
        "m v=1 1\n\n",
        "m v=1 1\r\n",
        "#m v=1 1",
        "m\\ v=1 1",
    ] {
        assert!(parse_line(bad).is_err(), "{bad:?} should be rejected");
    }
    assert_eq!(parse_line("m v=1 1\n"), Ok(point("m", &[], &[("v", f(1.0))], 1)));
}

// ---- property tests -----------------------------------------------------

fn nasty_string() -> impl Strategy<Value = String> {
    let ch = prop_oneof![
        3 => Just(','),
        3 => Just(' '),
        3 => Just('='),
        3 => Just('"'),
        3 => Just('\\'),
        2 => Just('\n'),
        1 => Just('\r'),
        1 => Just('#'),
        4 => prop::char::range('a', 'e'),
        4 => any::<char>(),
    ];
    prop::collection::vec(ch, 0..6).prop_map(String::from_iter)
}

/// Names that are always valid yet full of characters that need escaping:
/// delimiters, quotes, `#`, lone backslashes and arbitrary unicode.
fn escapy_name() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        2 => Just(",".to_string()),
        2 => Just(" ".to_string()),
        2 => Just("=".to_string()),
        2 => Just("\"".to_string()),
        2 => Just("\\a".to_string()),
        1 => Just("#".to_string()),
        2 => any::<char>()
            .prop_filter("no line break or backslash", |c| !matches!(c, '\n' | '\r' | '\\'))
            .prop_map(String::from),
    ];
    prop::collection::vec(piece, 0..6).prop_map(|v| format!("x{}", v.concat()))
}

fn field_value(text: BoxedStrategy<String>) -> impl Strategy<Value = FieldValue> {
    prop_oneof![
        any::<f64>().prop_map(FieldValue::Float),
        prop::num::f64::NORMAL.prop_map(FieldValue::Float),
        any::<i64>().prop_map(FieldValue::Integer),
        any::<u64>().prop_map(FieldValue::Unsigned),
        any::<bool>().prop_map(FieldValue::Boolean),
        text.prop_map(FieldValue::Text),
    ]
}

fn arb_point(name: BoxedStrategy<String>) -> impl Strategy<Value = Point> {
    (
        name.clone(),
        prop::collection::btree_map(name.clone(), name.clone(), 0..3),
        prop::collection::btree_map(name, field_value(nasty_string().boxed()), 0..4),
        prop_oneof![any::<i64>(), -1_000i64..1_000],
    )
        .prop_map(|(measurement, tags, fields, time)| Point { measurement, tags, fields, time })
}

/// An oracle written independently of `validate`: is every name free of
/// the characters and shapes line protocol cannot carry?
fn oracle_valid(p: &Point) -> bool {
    let name_ok = |s: &str| {
        !s.is_empty()
            && !s.contains(['\n', '\r'])
            && !s.ends_with('\\')
            && !["\\\\", "\\,", "\\=", "\\ "].iter().any(|b| s.contains(b))
    };
    name_ok(&p.measurement)
        && !p.measurement.starts_with('#')
        && p.tags.iter().all(|(k, v)| name_ok(k) && name_ok(v))
        && !p.fields.is_empty()
        && p.fields.iter().all(|(k, v)| name_ok(k) && !matches!(v, FieldValue::Float(x) if !x.is_finite()))
        && p.time > i64::MIN + 1
        && p.time < i64::MAX
}

fn text_newlines(p: &Point) -> usize {
    p.fields
        .values()
        .map(|v| match v {
            FieldValue::Text(s) => s.matches('\n').count(),
            _ => 0,
        })
        .sum()
}

fn check_one(p: &Point) -> Result<(), TestCaseError> {
    match encode_points(std::slice::from_ref(p)) {
        Ok(line) => {
            prop_assert!(oracle_valid(p), "accepted an invalid point: {p:?}");
            prop_assert!(line.ends_with('\n'));
            // The only newlines are the terminator and those inside strings.
            prop_assert_eq!(line.matches('\n').count(), 1 + text_newlines(p));
            // Parsing consumes exactly one line and gives the point back.
            let (back, rest) = parse_one(&line).map_err(TestCaseError::fail)?;
            prop_assert_eq!(rest, "");
            prop_assert_eq!(&back.measurement, &p.measurement);
            prop_assert_eq!(&back, p);
        }
        Err(StoreError::Invalid(msg)) => {
            prop_assert!(!oracle_valid(p), "rejected a valid point ({msg}): {p:?}");
            prop_assert!(!msg.is_empty());
        }
        Err(other) => prop_assert!(false, "unexpected error {other:?}"),
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn nasty_points_encode_injectively_or_are_rejected(p in arb_point(nasty_string().boxed())) {
        check_one(&p)?;
    }

    #[test]
    fn escapy_points_always_encode_and_round_trip(p in arb_point(escapy_name().boxed())) {
        let p = Point {
            time: p.time.clamp(MIN_TIME, MAX_TIME),
            fields: if p.fields.is_empty() {
                [("x".to_string(), FieldValue::Boolean(true))].into()
            } else {
                p.fields
                    .into_iter()
                    .map(|(k, v)| match v {
                        FieldValue::Float(x) if !x.is_finite() => (k, FieldValue::Float(0.0)),
                        v => (k, v),
                    })
                    .collect()
            },
            ..p
        };
        prop_assert!(oracle_valid(&p));
        check_one(&p)?;
    }

    #[test]
    fn batches_split_into_exactly_one_line_per_point(
        ps in prop::collection::vec(
            prop_oneof![arb_point(nasty_string().boxed()), arb_point(escapy_name().boxed())],
            1..6,
        )
    ) {
        let valid: Vec<Point> = ps.into_iter().filter(oracle_valid).collect();
        let text = encode_points(&valid).unwrap();
        let mut rest = text.as_str();
        for p in &valid {
            let (back, r) = parse_one(rest).map_err(TestCaseError::fail)?;
            prop_assert_eq!(&back, p);
            rest = r;
        }
        prop_assert_eq!(rest, "");
    }

    #[test]
    fn parser_never_panics(s in "\\PC*", t in prop::collection::vec(nasty_string(), 0..6)) {
        let _ = parse_line(&s);
        let joined = t.concat();
        if let Ok(p) = parse_line(&joined) {
            // Whatever the parser accepts, the encoder reproduces exactly.
            let again = enc(&p);
            prop_assert_eq!(again.trim_end_matches('\n'), joined.trim_end_matches('\n'));
        }
    }
}
