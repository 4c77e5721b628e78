use std::collections::BTreeMap;

use serde_json::json;

use super::*;
use crate::store::FieldValue;

fn row(time: i64, entity: &str, state: &str) -> Row {
    Row {
        time,
        tags: BTreeMap::from([("entity_id".to_string(), entity.to_string())]),
        fields: BTreeMap::from([("state".to_string(), FieldValue::Text(state.into()))]),
    }
}

/// A query of `measurements` with the defaults (also used by the embedded
/// store's query-multi tests).
pub(crate) fn query(measurements: &[&str]) -> MultiQuery {
    MultiQuery { measurements: measurements.iter().map(|m| m.to_string()).collect(), ..MultiQuery::default() }
}

/// (measurement index, time, entity) of each row of `t`.
pub(crate) fn shape(t: &MultiTable) -> Vec<(u32, i64, String)> {
    let entity = t.rows.tags.iter().find(|c| c.key == "entity_id").expect("entity_id column");
    (0..t.rows.len())
        .map(|i| {
            let name = entity.values[i].map(|s| t.rows.strings[s as usize].clone()).unwrap_or_default();
            (t.measurement[i], t.rows.times[i], name)
        })
        .collect()
}

#[test]
fn per_series_keeps_each_series_latest_rows_then_orders_and_limits_overall() {
    let rows = vec![
        (0, row(1, "lamp", "off")),
        (0, row(5, "lamp", "on")),
        (0, row(3, "desk", "on")),
        (1, row(2, "lamp", "off")),
    ];
    let q = MultiQuery { per_series: Some(1), descending: true, ..query(&["state", "switch.lamp"]) };
    let t = finish(rows.clone(), &q);
    assert_eq!(shape(&t), [(0, 5, "lamp".into()), (0, 3, "desk".into()), (1, 2, "lamp".into())]);
    let oldest_two = MultiQuery { limit: Some(2), ..query(&["state", "switch.lamp"]) };
    assert_eq!(shape(&finish(rows, &oldest_two)), [(0, 1, "lamp".into()), (1, 2, "lamp".into())]);
}

#[test]
fn influxql_names_every_measurement_in_one_quoted_from() {
    let q = MultiQuery {
        tags: BTreeMap::from([("domain".into(), "switch' OR 1=1".into())]),
        fields: vec!["state".into()],
        start: None,
        end: Some(100),
        per_series: Some(1),
        descending: true,
        limit: Some(10),
        ..query(&["switch.lamp", "x\" ; DROP DATABASE energy"])
    };
    let s = influxql_select(&q).expect("a statement");
    assert_eq!(
        s,
        format!(
            "SELECT \"state\" FROM \"switch.lamp\", \"x\\\" ; DROP DATABASE energy\" WHERE \"domain\"::tag = \
             'switch\\' OR 1=1' AND time >= {} AND time < 100 GROUP BY * ORDER BY time DESC LIMIT 1",
            i64::MIN + 2
        )
    );
    assert_eq!(influxql_select(&MultiQuery { start: Some(100), ..q.clone() }), None, "empty range");
}

#[test]
fn influxql_answers_are_split_by_measurement_and_decoded_by_its_types() {
    let body = json!({"results": [{"series": [
        {"name": "W", "tags": {"entity_id": "house"}, "columns": ["time", "value"], "values": [[7, 2450]]},
        {"name": "switch.lamp", "tags": {"entity_id": "lamp"}, "columns": ["time", "state"], "values": [[5, "on"]]},
    ]}]});
    let q = MultiQuery { descending: true, ..query(&["switch.lamp", "W"]) };
    let types = [BTreeMap::new(), BTreeMap::from([("value".to_string(), "float".to_string())])];
    let t = influxql_rows(&body, &q, &types).expect("decodes");
    assert_eq!(shape(&t), [(1, 7, "house".into()), (0, 5, "lamp".into())]);
    let value = t.rows.fields.iter().find(|c| c.key == "value").expect("value column");
    assert_eq!(value.values[0], Some(crate::store::table::Cell::Float(2450.0)), "a float, as its type says");
    let stranger = json!({"results": [{"series": [{"name": "other", "columns": ["time", "v"], "values": [[1, 1]]}]}]});
    assert!(influxql_rows(&stranger, &q, &types).is_err(), "a measurement not asked for");
}

#[cfg(feature = "influx-v2")]
#[test]
fn flux_filters_every_measurement_with_quoted_literals() {
    let q =
        MultiQuery { per_series: Some(1), descending: true, end: Some(9), ..query(&["switch.lamp", "a\" or ${x}"]) };
    let s = flux_script("b", &q).expect("a script");
    assert!(s.contains("(r) => r._measurement == \"switch.lamp\" or r._measurement == \"a\\\" or \\${x}\")"), "{s}");
    assert!(s.contains("|> sort(columns: [\"_time\"], desc: true)\n  |> limit(n: 1)"), "{s}");
}

#[test]
fn a_multi_query_must_name_distinct_measurements() {
    assert!(query(&[]).check().is_err());
    assert!(query(&["a", "a"]).check().is_err());
    assert!(query(&["a", ""]).check().is_err());
    assert!(query(&["a", "b"]).check().is_ok());
}
