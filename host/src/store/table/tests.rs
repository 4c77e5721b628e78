use super::*;

#[test]
fn a_column_that_appears_late_is_none_in_earlier_rows() {
    let mut b = TableBuilder::default();
    b.push(1, [], [("a", FieldRef::Integer(1))]);
    b.push(2, [("t", "x")], [("b", FieldRef::Boolean(false))]);
    b.push(3, [], [("a", FieldRef::Integer(3))]);
    let t = b.finish();
    assert_eq!(t.tags, [TagColumn { key: "t".into(), values: vec![None, Some(0), None] }]);
    let a = FieldColumn { key: "a".into(), values: vec![Some(Cell::Integer(1)), None, Some(Cell::Integer(3))] };
    let b = FieldColumn { key: "b".into(), values: vec![None, Some(Cell::Boolean(false)), None] };
    assert_eq!(t.fields, [a, b]);
}

/// A table of `n` field columns keyed in descending order, one row.
fn descending_columns(n: usize) -> Table {
    let fields = (0..n)
        .map(|i| FieldColumn { key: format!("f{:07}", n - i), values: vec![Some(Cell::Integer(i as i64))] })
        .collect();
    Table { times: vec![1], strings: Vec::new(), tags: Vec::new(), fields }
}

#[test]
fn columns_are_ordered_in_n_log_n_and_their_count_is_capped() {
    let widest = descending_columns(crate::store::MAX_POINT_FIELDS);
    let view = widest.view("m").expect("exactly the cap is fine");
    let row = view.rows().next().unwrap();
    let keys: Vec<&str> = row.fields().map(|(k, _)| k).collect();
    assert!(keys.windows(2).all(|w| w[0] < w[1]), "ascending keys");
    // An insertion sort needs n²/2 = 2·10^10 steps for these: minutes, not milliseconds.
    let began = std::time::Instant::now();
    let err = descending_columns(200_000).view("m").err().expect("too many columns");
    assert!(began.elapsed() < std::time::Duration::from_secs(2), "{:?}", began.elapsed());
    assert_eq!(err, "the table has 200000 field columns, more than the 1024 fields a point may have");
    let mut tags = descending_columns(1);
    tags.tags =
        (0..=crate::store::MAX_POINT_TAGS).map(|i| TagColumn { key: format!("t{i}"), values: vec![None] }).collect();
    assert!(tags.view("m").err().unwrap().contains("tag columns"));
    assert_eq!(key_order("field", ["b", "c", "a"].into_iter()).unwrap(), vec![2, 0, 1]);
}

#[test]
fn an_answer_is_bounded_in_columns_and_bytes() {
    let mut b = TableBuilder::default();
    for i in 0..=crate::store::MAX_POINT_FIELDS {
        let key = format!("f{i}");
        b.push(i as i64, [], [(key.as_str(), FieldRef::Integer(1))]);
    }
    let err = b.check_bounds(crate::store::MAX_QUERY_BYTES).unwrap_err().to_string();
    assert!(err.starts_with("invalid: the query's answer has 0 tag and 1025 field columns"), "{err}");
    let mut b = TableBuilder::default();
    let text = "x".repeat(1 << 20);
    for i in 0..15 {
        b.push(i, [], [("t", FieldRef::Text(&format!("{i}{text}")))]);
        b.check_bounds(crate::store::MAX_QUERY_BYTES).expect("within the bound");
    }
    assert!(b.bytes() < crate::store::MAX_QUERY_BYTES && b.bytes() > 15 << 20, "{}", b.bytes());
    b.push(15, [], [("t", FieldRef::Text(&text))]);
    let err = b.check_bounds(crate::store::MAX_QUERY_BYTES).unwrap_err().to_string();
    assert!(err.contains(&format!("larger than {} bytes", crate::store::MAX_QUERY_BYTES)), "{err}");
}
