//! `query-multi` on the embedded store: each series' last row before a time,
//! however old, in one read.

use std::collections::BTreeMap;

use crate::store::FieldValue;
use crate::store::embedded::EmbeddedStore;
use crate::store::multi::MultiQuery;
use crate::store::multi::tests::{query, shape};

fn ha_point(measurement: &str, entity: &str, state: &str, time: i64) -> crate::store::Point {
    crate::store::Point {
        measurement: measurement.into(),
        tags: BTreeMap::from([("entity_id".into(), entity.into()), ("domain".into(), "switch".into())]),
        fields: BTreeMap::from([("state".into(), FieldValue::Text(state.into()))]),
        time,
    }
}

#[test]
fn the_embedded_store_finds_each_series_last_row_before_a_time_however_old() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = EmbeddedStore::open(&dir.path().join("s.redb"), None).expect("open");
    let mut points = vec![ha_point("switch.lamp", "lamp", "off", 1_000), ha_point("switch.fan", "fan", "on", 5)];
    points
        .extend((0..2_000).map(|i| ha_point("switch.lamp", "lamp", if i % 2 == 0 { "on" } else { "off" }, 10_000 + i)));
    store.write(&points).expect("write");
    let q = MultiQuery {
        fields: vec!["state".into()],
        end: Some(10_000),
        per_series: Some(1),
        descending: true,
        ..query(&["switch.lamp", "switch.fan", "switch.none"])
    };
    let t = store.query_multi(&q).expect("query");
    assert_eq!(shape(&t), [(0, 1_000, "lamp".into()), (1, 5, "fan".into())]);
    let window = MultiQuery { start: Some(10_000), end: None, per_series: None, limit: Some(3), ..q.clone() };
    let t = store.query_multi(&window).expect("query");
    assert_eq!(shape(&t), [(0, 11_999, "lamp".into()), (0, 11_998, "lamp".into()), (0, 11_997, "lamp".into())]);
    // Measurement by measurement, the fan's row comes last: merged by time.
    let oldest = MultiQuery { end: None, per_series: None, descending: false, limit: Some(3), ..q };
    let t = store.query_multi(&oldest).expect("query");
    assert_eq!(shape(&t), [(1, 5, "fan".into()), (0, 1_000, "lamp".into()), (0, 10_000, "lamp".into())]);
    let state = t.rows.fields.iter().find(|c| c.key == "state").expect("state column");
    let text = |i: usize| match state.values[i] {
        Some(crate::store::table::Cell::Text(s)) => t.rows.strings[s as usize].clone(),
        other => panic!("{other:?}"),
    };
    assert_eq!([text(0), text(1), text(2)], ["on", "off", "on"], "fields move with their rows");
}
