use proptest::prelude::*;
use serde_json::json;

use super::*;

/// InfluxQL's scanner for a quoted string or identifier (influxql's
/// `ScanString`): returns the unescaped text and the bytes consumed, or None
/// for a bad escape or a raw newline.
fn scan_quoted(input: &str) -> Option<(String, usize)> {
    let mut chars = input.char_indices();
    let (_, q) = chars.next()?;
    let mut out = String::new();
    while let Some((i, c)) = chars.next() {
        match c {
            c if c == q => return Some((out, i + 1)),
            '\n' => return None,
            '\\' => match chars.next()?.1 {
                'n' => out.push('\n'),
                '\\' => out.push('\\'),
                '"' => out.push('"'),
                '\'' => out.push('\''),
                _ => return None,
            },
            c => out.push(c),
        }
    }
    None
}

proptest! {
    #[test]
    fn quoting_is_one_token_that_unescapes_to_the_input(s in any::<String>()) {
        for quoted in [ident(&s), string(&s)] {
            let (text, used) = scan_quoted(&quoted).expect("scans");
            prop_assert_eq!(used, quoted.len(), "the literal ends exactly at its closing quote");
            prop_assert_eq!(text, s.clone());
        }
    }
}

#[test]
fn hostile_names_stay_inside_their_quotes() {
    let hostile = [
        "m\" WHERE 1=1; DROP DATABASE \"x",
        "v' OR 'a'='a",
        "a\\",
        "\\' OR time > 0 --",
        "line\nSELECT * FROM secrets",
    ];
    for h in hostile {
        let q = Query { measurement: h.into(), tags: [(h.to_string(), h.to_string())].into(), ..Query::default() };
        let stmt = select(&q, &[h.to_string()]).unwrap();
        let quoted_ident = ident(h);
        let quoted_string = string(h);
        let expected = format!(
            "SELECT {quoted_ident} FROM {quoted_ident} WHERE {quoted_ident}::tag = {quoted_string} AND time >= {} AND time < {} GROUP BY *",
            i64::MIN + 2,
            i64::MAX - 1
        );
        assert_eq!(stmt, expected);
        assert!(!stmt.contains('\n'), "no raw newline reaches the statement: {stmt}");
    }
}

#[test]
fn select_shapes() {
    let base = Query { measurement: "power".into(), start: Some(10), end: Some(20), ..Query::default() };
    assert_eq!(
        select(&Query { select: Selector::Last, ..base.clone() }, &[]).unwrap(),
        "SELECT * FROM \"power\" WHERE time >= 10 AND time < 20 GROUP BY * ORDER BY time DESC LIMIT 1"
    );
    assert_eq!(
        select(&Query { descending: true, limit: Some(5), ..base.clone() }, &["w".into(), "v".into()]).unwrap(),
        "SELECT \"w\", \"v\" FROM \"power\" WHERE time >= 10 AND time < 20 GROUP BY * ORDER BY time DESC LIMIT 5"
    );
    assert!(select(&Query { start: Some(20), ..base.clone() }, &[]).is_none(), "empty range");
    assert!(select(&Query { limit: Some(0), ..base }, &[]).is_none(), "limit 0");
}

fn answer() -> Value {
    json!({"results":[{"statement_id":0,"series":[
        {"name":"m","tags":{"a":"x","b":""},"columns":["time","f","i","s"],"values":[[30,1,5,null],[10,2.5,null,"hi"]]},
        {"name":"m","tags":{"a":"y","b":"z"},"columns":["time","f","i","s"],"values":[[20,3,7,null]]}
    ]}]})
}

#[test]
fn rows_merge_series_and_keep_exact_types() {
    let types: BTreeMap<String, String> =
        [("f", "float"), ("i", "integer"), ("s", "string")].map(|(a, b)| (a.to_string(), b.to_string())).into();
    let all = rows(&answer(), &Query::default(), &types).unwrap();
    assert_eq!(all.iter().map(|r| r.time).collect::<Vec<_>>(), [10, 20, 30]);
    assert_eq!(all[0].tags, BTreeMap::from([("a".to_string(), "x".to_string())]), "empty tag = absent tag");
    assert_eq!(all[0].fields["s"], FieldValue::Text("hi".into()));
    assert_eq!(all[2].fields["f"], FieldValue::Float(1.0), "a float that looks like an integer stays a float");
    assert_eq!(all[2].fields["i"], FieldValue::Integer(5));
    let last = rows(&answer(), &Query { select: Selector::Last, ..Query::default() }, &types).unwrap();
    assert_eq!(last.iter().map(|r| r.time).collect::<Vec<_>>(), [30]);
    let desc = rows(&answer(), &Query { descending: true, limit: Some(2), ..Query::default() }, &types).unwrap();
    assert_eq!(desc.iter().map(|r| r.time).collect::<Vec<_>>(), [30, 20]);
}

#[test]
fn errors_inside_results_are_unavailable() {
    let missing = json!({"results":[{"statement_id":0,"error":"database not found: nope"}]});
    let err = rows(&missing, &Query::default(), &BTreeMap::new()).unwrap_err();
    assert!(matches!(&err, StoreError::Unavailable(m) if m.contains("database not found: nope")), "{err}");
    let top = json!({"error":"authorization failed"});
    assert!(matches!(field_types(&top), Err(StoreError::Unavailable(m)) if m.contains("authorization failed")));
}
