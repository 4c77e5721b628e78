//! `query-table` and `write-table` on the embedded store: the table holds
//! what `query` returns and writes what `write` writes.

use std::collections::BTreeMap;

use crate::store::embedded::EmbeddedStore;
use crate::store::line_protocol::FieldRef;
use crate::store::table::*;
use crate::store::{FieldValue, Point, Query, Row, Selector};

fn point(tags: &[(&str, &str)], fields: &[(&str, FieldValue)], time: i64) -> Point {
    Point {
        measurement: "m".into(),
        tags: tags.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        fields: fields.iter().map(|(k, v)| (k.to_string(), v.clone())).collect(),
        time,
    }
}

fn text(s: &str) -> FieldValue {
    FieldValue::Text(s.into())
}

/// Rows that differ in which tags and fields they have, and in types.
fn mixed() -> Vec<Point> {
    vec![
        point(
            &[("entity_id", "switch.a"), ("domain", "switch")],
            &[("state", text("on")), ("w", FieldValue::Float(1.5))],
            10,
        ),
        point(&[("entity_id", "switch.b")], &[("state", text("off")), ("n", FieldValue::Integer(-3))], 20),
        point(&[("entity_id", "switch.a"), ("domain", "switch")], &[("state", text("off"))], 30),
        point(&[("zone", "kitchen")], &[("u", FieldValue::Unsigned(u64::MAX)), ("ok", FieldValue::Boolean(true))], 40),
        point(&[("entity_id", "switch.a")], &[("w", FieldValue::Float(0.1 + 0.2)), ("state", text("on"))], 50),
    ]
}

fn store(dir: &tempfile::TempDir) -> EmbeddedStore {
    EmbeddedStore::open(&dir.path().join("store.redb"), None).unwrap()
}

fn as_rows(table: &Table) -> Vec<Row> {
    let points = table.to_points("m").unwrap();
    points.into_iter().map(|p| Row { time: p.time, tags: p.tags, fields: p.fields }).collect()
}

fn queries() -> Vec<Query> {
    let all = Query { measurement: "m".into(), ..Query::default() };
    let tag = |k: &str, v: &str| BTreeMap::from([(k.to_string(), v.to_string())]);
    vec![
        all.clone(),
        Query { tags: tag("entity_id", "switch.a"), ..all.clone() },
        Query { tags: tag("nosuch", "x"), ..all.clone() },
        Query { fields: vec!["w".into()], ..all.clone() },
        Query { fields: vec!["state".into(), "ok".into()], descending: true, limit: Some(3), ..all.clone() },
        Query { start: Some(20), end: Some(50), ..all.clone() },
        Query { select: Selector::Last, tags: tag("domain", "switch"), ..all.clone() },
        Query { select: Selector::First, fields: vec!["u".into()], ..all },
    ]
}

#[test]
fn the_embedded_query_table_holds_the_rows_query_returns() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(&dir);
    s.write(&mixed()).unwrap();
    for q in queries() {
        let rows = s.query(&q).unwrap();
        let table = s.query_table(&q).unwrap();
        assert_eq!(as_rows(&table), rows, "{q:?}");
        let mut built = TableBuilder::default();
        rows.iter().for_each(|r| built.push_row(r));
        assert_eq!(table, built.finish(), "the default (from rows) builds the same table: {q:?}");
    }
    let all = s.query_table(&queries()[0]).unwrap();
    let mut distinct = all.strings.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), all.strings.len(), "each string once: {:?}", all.strings);
    assert_eq!(all.strings.iter().filter(|s| *s == "switch.a").count(), 1);
    let domain = all.tags.iter().find(|c| c.key == "domain").unwrap();
    assert_eq!(domain.values.iter().filter(|v| v.is_some()).count(), 2, "rows without the tag hold None");
}

#[test]
fn write_table_stores_what_write_stores_merges_included() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (via_points, via_table) = (store(&a), store(&b));
    let update = vec![point(
        &[("entity_id", "switch.a"), ("domain", "switch")],
        &[("w", FieldValue::Float(9.0)), ("n", FieldValue::Integer(2))],
        10,
    )];
    for batch in [mixed(), update] {
        assert_eq!(via_points.write(&batch).unwrap(), batch.len() as u32);
        let mut table = TableBuilder::default();
        for p in &batch {
            table.push_row(&Row { time: p.time, tags: p.tags.clone(), fields: p.fields.clone() });
        }
        let table = table.finish();
        assert_eq!(via_table.write_table(&table.view("m").unwrap()).unwrap(), batch.len() as u32);
    }
    let all = &queries()[0];
    let stored = via_table.query(all).unwrap();
    assert_eq!(stored, via_points.query(all).unwrap());
    let merged = &stored[0].fields;
    assert_eq!(merged.len(), 3, "state kept, w replaced, n added: {merged:?}");
    assert_eq!(merged["w"], FieldValue::Float(9.0));
}

#[test]
fn a_malformed_table_names_its_fault_and_writes_nothing() {
    let good = || {
        let mut b = TableBuilder::default();
        b.push(1, [("entity_id", "switch.a")], [("w", FieldRef::Float(1.0))]);
        b.push(2, [("entity_id", "switch.b")], [("w", FieldRef::Text("on"))]);
        b.finish()
    };
    let mut short = good();
    short.fields[0].values.pop();
    let mut past = good();
    past.tags[0].values[1] = Some(7);
    let mut text_past = good();
    text_past.fields[0].values[1] = Some(Cell::Text(9));
    let mut twice = good();
    twice.tags.push(twice.tags[0].clone());
    let mut no_fields = good();
    no_fields.fields[0].values[0] = None;
    let cases = [
        (short, "field column \"w\" has 1 values for 2 rows (times)"),
        (past, "tag column \"entity_id\": string index 7 is past the 3 strings"),
        (text_past, "field column \"w\": string index 9 is past the 3 strings"),
        (twice, "tag key \"entity_id\" has two columns"),
        (no_fields, "point 0: measurement \"m\" has no fields"),
    ];
    let dir = tempfile::tempdir().unwrap();
    let s = store(&dir);
    for (table, expected) in cases {
        let error = table.view("m").and_then(|v| s.write_table(&v).map_err(|e| e.to_string())).unwrap_err();
        assert!(error.contains(expected), "{error:?} should say {expected:?}");
    }
    assert_eq!(s.point_count().unwrap(), 0);
}
