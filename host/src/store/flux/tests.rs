use super::*;

fn q(select: Selector) -> Query {
    Query { measurement: "m".into(), select, ..Query::default() }
}

#[test]
fn literals_escape_everything_that_could_end_them() {
    assert_eq!(string("a\"b\\c${x}\n\r\t"), r#""a\"b\\c\${x}\n\r\t""#);
    let hostile = "\") |> drop() //";
    let lit = string(hostile);
    assert_eq!(lit, r#""\") |> drop() //""#);
}

#[test]
fn scripts_filter_by_measurement_tags_and_fields() {
    let query = Query {
        fields: vec!["w".into(), "n".into()],
        tags: BTreeMap::from([("site".to_string(), "a\"b".to_string())]),
        start: Some(5),
        end: Some(9),
        ..q(Selector::Last)
    };
    assert_eq!(
        script("energy", &query).unwrap(),
        "from(bucket: \"energy\")\n  |> range(start: time(v: 5), stop: time(v: 9))\n  |> filter(fn: (r) => r._measurement == \"m\" and r[\"site\"] == \"a\\\"b\")\n  |> filter(fn: (r) => r._field == \"w\" or r._field == \"n\")\n  |> sort(columns: [\"_time\"], desc: true)\n  |> limit(n: 1)\n"
    );
    assert_eq!(script("b", &Query { start: Some(3), end: Some(3), ..q(Selector::All) }), None);
    assert_eq!(script("b", &Query { limit: Some(0), ..q(Selector::All) }), None);
}

#[test]
fn annotated_csv_becomes_typed_rows_joined_per_series_and_time() {
    let csv = "#datatype,string,long,dateTime:RFC3339,dateTime:RFC3339,dateTime:RFC3339,double,string,string,string\r\n\
#group,false,false,true,true,false,false,true,true,true\r\n\
#default,_result,,,,,,,,\r\n\
,result,table,_start,_stop,_time,_value,_field,_measurement,site\r\n\
,,0,1970-01-01T00:00:00Z,2030-01-01T00:00:00Z,2023-11-14T22:13:20.123456789Z,1.5,w,m,\"a,\"\"b\"\"\nc\"\r\n\
\r\n\
#datatype,string,long,dateTime:RFC3339,dateTime:RFC3339,dateTime:RFC3339,long,string,string,string\r\n\
#group,false,false,true,true,false,false,true,true,true\r\n\
#default,_result,,,,,,,,\r\n\
,result,table,_start,_stop,_time,_value,_field,_measurement,site\r\n\
,,1,1970-01-01T00:00:00Z,2030-01-01T00:00:00Z,2023-11-14T22:13:20.123456789Z,-42,n,m,\"a,\"\"b\"\"\nc\"\r\n\
,,1,1970-01-01T00:00:00Z,2030-01-01T00:00:00Z,1969-12-31T23:59:59.9Z,7,n,m,\"a,\"\"b\"\"\nc\"\r\n\
\r\n";
    let tags = BTreeMap::from([("site".to_string(), "a,\"b\"\nc".to_string())]);
    let rows = rows(csv, &q(Selector::All)).unwrap();
    assert_eq!(
        rows,
        vec![
            Row {
                time: -100_000_000,
                tags: tags.clone(),
                fields: BTreeMap::from([("n".into(), FieldValue::Integer(7))])
            },
            Row {
                time: 1_700_000_000_123_456_789,
                tags,
                fields: BTreeMap::from([("n".into(), FieldValue::Integer(-42)), ("w".into(), FieldValue::Float(1.5)),]),
            },
        ]
    );
}

#[test]
fn an_error_table_or_a_bad_value_is_unavailable() {
    let csv = "#datatype,string,string\n#group,true,true\n#default,,\n,error,reference\n,\"boom, bad\",\n";
    assert!(matches!(rows(csv, &q(Selector::All)), Err(StoreError::Unavailable(m)) if m.contains("boom, bad")));
    let csv = "#datatype,string,long,dateTime:RFC3339,long,string,string\n,result,table,_time,_value,_field,_measurement\n,,0,2020-01-01T00:00:00Z,1.5,f,m\n";
    assert!(matches!(rows(csv, &q(Selector::All)), Err(StoreError::Unavailable(m)) if m.contains("not a valid long")));
    assert!(rows("\"open", &q(Selector::All)).is_err());
}
