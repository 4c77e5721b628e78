use std::collections::BTreeMap;

use super::*;
use crate::store::FieldValue;

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

fn open(dir: &tempfile::TempDir) -> EmbeddedStore {
    EmbeddedStore::open(&dir.path().join("sub/dir/store.redb"), None).unwrap()
}

fn all(m: &str) -> Query {
    Query { measurement: m.into(), ..Query::default() }
}

fn times(rows: &[Row]) -> Vec<i64> {
    rows.iter().map(|r| r.time).collect()
}

/// Three series at times 10..=50 step 10, host a/b alternating.
fn seeded(dir: &tempfile::TempDir) -> EmbeddedStore {
    let s = open(dir);
    let pts: Vec<Point> = (1..=5)
        .map(|i| {
            let host = if i % 2 == 0 { "b" } else { "a" };
            point("power", &[("host", host), ("phase", "l1")], &[("w", f(i as f64))], i * 10)
        })
        .collect();
    assert_eq!(s.write(&pts).unwrap(), 5);
    s
}

#[test]
fn store_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<EmbeddedStore>();
}

#[test]
fn round_trip_all_field_types_and_exact_timestamps() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir);
    let t = 1_700_000_000_123_456_789;
    let p = point(
        "meter",
        &[("site", "home"), ("dev", "pi,1 =x")],
        &[
            ("f", f(0.1 + 0.2)),
            ("i", FieldValue::Integer(i64::MIN)),
            ("u", FieldValue::Unsigned(u64::MAX)),
            ("b", FieldValue::Boolean(true)),
            ("s", FieldValue::Text("héllo \"w\"\n".into())),
        ],
        t,
    );
    let neg = point("meter", &[], &[("f", f(-0.0))], -1);
    assert_eq!(s.write(&[p.clone(), neg.clone()]).unwrap(), 2);
    let rows = s.query(&all("meter")).unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0].time, -1);
    assert!(matches!(rows[0].fields["f"], FieldValue::Float(x) if x.to_bits() == (-0.0f64).to_bits()));
    assert_eq!(rows[1].time, t);
    assert_eq!(rows[1].tags, p.tags);
    assert_eq!(rows[1].fields, p.fields);
    assert_eq!(s.point_count().unwrap(), 2);
}

#[test]
fn same_identity_merges_fields() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir);
    s.write(&[point("m", &[("h", "a")], &[("x", f(1.0)), ("y", f(2.0))], 5)]).unwrap();
    // Same batch may also contain the same identity twice: later wins.
    s.write(&[
        point("m", &[("h", "a")], &[("y", f(3.0))], 5),
        point("m", &[("h", "a")], &[("z", FieldValue::Boolean(false))], 5),
    ])
    .unwrap();
    // Different tag set or time is a different point.
    s.write(&[point("m", &[("h", "b")], &[("x", f(9.0))], 5), point("m", &[("h", "a")], &[("x", f(8.0))], 6)]).unwrap();
    assert_eq!(s.point_count().unwrap(), 3);
    let q = Query { tags: [("h".to_string(), "a".to_string())].into(), end: Some(6), ..all("m") };
    let rows = s.query(&q).unwrap();
    assert_eq!(rows.len(), 1);
    let expected: BTreeMap<String, FieldValue> =
        [("x".to_string(), f(1.0)), ("y".to_string(), f(3.0)), ("z".to_string(), FieldValue::Boolean(false))].into();
    assert_eq!(rows[0].fields, expected);
}

#[test]
fn tag_filters_all_must_match() {
    let dir = tempfile::tempdir().unwrap();
    let s = seeded(&dir);
    s.write(&[point("power", &[("host", "a")], &[("w", f(0.5))], 60)]).unwrap();
    let q = |tags: &[(&str, &str)]| Query {
        tags: tags.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        ..all("power")
    };
    assert_eq!(times(&s.query(&q(&[("host", "a")])).unwrap()), [10, 30, 50, 60]);
    assert_eq!(times(&s.query(&q(&[("host", "a"), ("phase", "l1")])).unwrap()), [10, 30, 50]);
    assert_eq!(times(&s.query(&q(&[("host", "b")])).unwrap()), [20, 40]);
    assert!(s.query(&q(&[("host", "c")])).unwrap().is_empty());
    assert!(s.query(&q(&[("nosuch", "a")])).unwrap().is_empty());
    // Other measurements never leak in, including ones sharing a prefix.
    s.write(&[point("power2", &[("host", "a")], &[("w", f(1.0))], 10)]).unwrap();
    s.write(&[point("powe", &[("host", "a")], &[("w", f(1.0))], 10)]).unwrap();
    assert_eq!(s.query(&all("power")).unwrap().len(), 6);
    assert_eq!(s.query(&all("power2")).unwrap().len(), 1);
    assert!(s.query(&all("absent")).unwrap().is_empty());
}

#[test]
fn time_range_start_inclusive_end_exclusive() {
    let dir = tempfile::tempdir().unwrap();
    let s = seeded(&dir);
    let q = |start, end| Query { start, end, ..all("power") };
    assert_eq!(times(&s.query(&q(Some(20), Some(40))).unwrap()), [20, 30]);
    assert_eq!(times(&s.query(&q(Some(21), Some(41))).unwrap()), [30, 40]);
    assert_eq!(times(&s.query(&q(None, Some(20))).unwrap()), [10]);
    assert_eq!(times(&s.query(&q(Some(50), None)).unwrap()), [50]);
    assert!(s.query(&q(Some(40), Some(40))).unwrap().is_empty());
    assert!(s.query(&q(Some(40), Some(20))).unwrap().is_empty());
    assert_eq!(s.query(&q(None, None)).unwrap().len(), 5);
    // Extreme timestamps are stored and bounded correctly.
    s.write(&[point("power", &[], &[("w", f(0.0))], i64::MIN), point("power", &[], &[("w", f(0.0))], i64::MAX)])
        .unwrap();
    assert_eq!(times(&s.query(&q(None, Some(10))).unwrap()), [i64::MIN]);
    assert_eq!(times(&s.query(&q(Some(51), None)).unwrap()), [i64::MAX]);
}

#[test]
fn first_last_descending_limit() {
    let dir = tempfile::tempdir().unwrap();
    let s = seeded(&dir);
    let q = |select, descending, limit| Query { select, descending, limit, ..all("power") };
    assert_eq!(times(&s.query(&q(Selector::First, false, None)).unwrap()), [10]);
    assert_eq!(times(&s.query(&q(Selector::Last, false, None)).unwrap()), [50]);
    // First/Last ignore the ordering flag.
    assert_eq!(times(&s.query(&q(Selector::First, true, None)).unwrap()), [10]);
    assert_eq!(times(&s.query(&q(Selector::Last, true, None)).unwrap()), [50]);
    assert_eq!(times(&s.query(&q(Selector::All, true, None)).unwrap()), [50, 40, 30, 20, 10]);
    assert_eq!(times(&s.query(&q(Selector::All, false, Some(2))).unwrap()), [10, 20]);
    assert_eq!(times(&s.query(&q(Selector::All, true, Some(2))).unwrap()), [50, 40]);
    assert!(s.query(&q(Selector::All, false, Some(0))).unwrap().is_empty());
    // Combined with filters: last row of host b before 40.
    let last_b = Query {
        tags: [("host".to_string(), "b".to_string())].into(),
        end: Some(40),
        select: Selector::Last,
        ..all("power")
    };
    let rows = s.query(&last_b).unwrap();
    assert_eq!(times(&rows), [20]);
    assert_eq!(rows[0].fields["w"], f(2.0));
}

#[test]
fn fields_projection() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir);
    s.write(&[
        point("m", &[], &[("a", f(1.0)), ("b", f(2.0)), ("c", f(3.0))], 1),
        point("m", &[], &[("c", f(4.0))], 2),
        point("m", &[], &[("b", FieldValue::Integer(5))], 3),
    ])
    .unwrap();
    let q = Query { fields: vec!["a".into(), "b".into()], ..all("m") };
    let rows = s.query(&q).unwrap();
    assert_eq!(times(&rows), [1, 3], "row without a or b is skipped");
    assert_eq!(rows[0].fields.keys().collect::<Vec<_>>(), ["a", "b"]);
    assert_eq!(rows[1].fields.keys().collect::<Vec<_>>(), ["b"]);
    // First/Last honour the projection when choosing the row.
    let last = Query { fields: vec!["a".into()], select: Selector::Last, ..all("m") };
    assert_eq!(times(&s.query(&last).unwrap()), [1]);
    let none = Query { fields: vec!["zzz".into()], ..all("m") };
    assert!(s.query(&none).unwrap().is_empty());
}

#[test]
fn retention_purges_only_expired_points() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.redb");
    let s = EmbeddedStore::open(&path, Some(Duration::from_nanos(100))).unwrap();
    s.write(&[
        point("a", &[], &[("v", f(1.0))], 100),
        point("a", &[("t", "x")], &[("v", f(1.0))], 199),
        point("a", &[], &[("v", f(1.0))], 200),
        point("a", &[], &[("v", f(1.0))], 300),
        point("b", &[], &[("v", f(1.0))], 50),
    ])
    .unwrap();
    // cutoff = 300 - 100 = 200: times < 200 go.
    assert_eq!(s.purge_expired(300).unwrap(), 3);
    assert_eq!(s.point_count().unwrap(), 2);
    assert_eq!(times(&s.query(&all("a")).unwrap()), [200, 300]);
    assert!(s.query(&all("b")).unwrap().is_empty());
    assert_eq!(s.purge_expired(300).unwrap(), 0, "idempotent");
    // Measurement b is empty and forgotten, but can be written again.
    s.write(&[point("b", &[], &[("v", f(1.0))], 1000)]).unwrap();
    assert_eq!(s.purge_expired(1000).unwrap(), 2);
    assert_eq!(times(&s.query(&all("b")).unwrap()), [1000]);
    // Huge retention does not overflow.
    drop(s);
    let s = EmbeddedStore::open(&path, Some(Duration::MAX)).unwrap();
    assert_eq!(s.purge_expired(i64::MIN).unwrap(), 0);
    assert_eq!(s.point_count().unwrap(), 1);
}

#[test]
fn no_retention_purge_is_noop() {
    let dir = tempfile::tempdir().unwrap();
    let s = seeded(&dir);
    assert_eq!(s.purge_expired(i64::MAX).unwrap(), 0);
    assert_eq!(s.point_count().unwrap(), 5);
}

#[test]
fn reopen_after_drop_keeps_data_and_lock_is_exclusive() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nested/store.redb");
    let s = EmbeddedStore::open(&path, None).unwrap();
    s.write(&[point("m", &[("k", "v")], &[("x", FieldValue::Unsigned(7))], 42)]).unwrap();
    let second = EmbeddedStore::open(&path, None).unwrap_err();
    match &second {
        StoreError::Unavailable(msg) => {
            assert!(msg.contains("store.redb"), "names the file: {msg}")
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
    drop(s);
    let s = EmbeddedStore::open(&path, None).unwrap();
    assert_eq!(s.point_count().unwrap(), 1);
    let rows = s.query(&all("m")).unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].time, 42);
    assert_eq!(rows[0].tags["k"], "v");
    assert_eq!(rows[0].fields["x"], FieldValue::Unsigned(7));
}

#[test]
fn invalid_points_rejected_with_clear_messages() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir);
    let good = point("m", &[], &[("x", f(1.0))], 1);
    let cases = [
        (point("", &[], &[("x", f(1.0))], 1), "measurement is empty"),
        (point("m", &[], &[], 1), "no fields"),
        (point("m", &[("", "v")], &[("x", f(1.0))], 1), "empty tag key"),
        (point("m", &[], &[("", f(1.0))], 1), "empty field key"),
        (point("m", &[], &[("x", f(f64::NAN))], 1), "NaN"),
    ];
    for (bad, needle) in cases {
        let err = s.write(&[good.clone(), bad]).unwrap_err();
        match err {
            StoreError::Invalid(msg) => {
                assert!(msg.contains(needle), "{msg:?} should mention {needle:?}");
                assert!(msg.contains("point 1"), "{msg:?} should name the index");
            }
            other => panic!("expected Invalid, got {other:?}"),
        }
    }
    // The whole batch was rejected: the good point was not written.
    assert_eq!(s.point_count().unwrap(), 0);
    assert!(matches!(s.query(&all("")).unwrap_err(), StoreError::Invalid(_)));
    assert_eq!(s.write(&[]).unwrap(), 0);
}

#[test]
fn a_corrupt_block_is_reported_naming_the_file_not_panicking() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.redb");
    let s = EmbeddedStore::open(&path, None).unwrap();
    s.write(&[point("m", &[("h", "a")], &[("x", f(1.0))], 5)]).unwrap();
    {
        let txn = s.db.begin_write().unwrap();
        {
            let mut table = txn.open_table(BLOCKS).unwrap();
            let key = table.iter().unwrap().next().unwrap().unwrap().0.value().to_vec();
            table.insert(key.as_slice(), &[1u8, 0, 0, 0, 9][..]).unwrap();
        }
        txn.commit().unwrap();
    }
    for err in [
        s.query(&all("m")).unwrap_err(),
        s.query_floats(&all("m"), "x").unwrap_err(),
        s.write(&[point("m", &[("h", "a")], &[("x", f(2.0))], 6)]).map(|_| ()).unwrap_err(),
    ] {
        let text = err.to_string();
        assert!(text.contains("c.redb") && text.contains("corrupt"), "{text}");
    }
}

#[test]
fn query_floats_returns_the_numeric_values_query_returns() {
    let dir = tempfile::tempdir().unwrap();
    let s = seeded(&dir);
    s.write(&[
        point("power", &[("host", "a")], &[("w", FieldValue::Integer(7)), ("note", FieldValue::Text("x".into()))], 60),
        point("power", &[("host", "a")], &[("note", FieldValue::Text("no w".into()))], 70),
        point("power", &[("host", "b")], &[("w", FieldValue::Text("not a number".into()))], 80),
    ])
    .unwrap();
    let q = |tags: &[(&str, &str)]| Query {
        tags: tags.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        ..all("power")
    };
    let filters: [&[(&str, &str)]; 5] =
        [&[], &[("host", "a")], &[("host", "a"), ("phase", "l1")], &[("host", "c")], &[("nosuch", "a")]];
    for tags in filters {
        for query in [q(tags), Query { limit: Some(2), descending: true, ..q(tags) }] {
            let rows = s.query(&Query { fields: vec!["w".into()], ..query.clone() }).unwrap();
            assert_eq!(s.query_floats(&query, "w").unwrap(), FloatSeries::from_rows(&rows, "w"), "{query:?}");
        }
    }
    let expected = FloatSeries { times: vec![10, 30, 50, 60], values: vec![1.0, 3.0, 5.0, 7.0] };
    assert_eq!(s.query_floats(&q(&[("host", "a")]), "w").unwrap(), expected, "integers convert, no-w rows skipped");
    let last_b = Query { select: Selector::Last, ..q(&[("host", "b")]) };
    assert_eq!(s.query_floats(&last_b, "w").unwrap(), FloatSeries::default(), "the last row's w is text");
    assert!(s.query_floats(&all(""), "w").is_err(), "an empty measurement is refused like in `query`");
}

fn sorted(p: &Point) -> SortedPoint {
    SortedPoint {
        measurement: p.measurement.clone(),
        tags: p.tags.clone().into_iter().collect(),
        fields: p.fields.clone().into_iter().collect(),
        time: p.time,
    }
}

#[test]
fn write_sorted_stores_and_merges_exactly_like_write() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (via_points, via_sorted) = (open(&a), open(&b));
    let first = [point("m", &[("h", "a"), ("p", "1")], &[("x", f(1.0)), ("y", f(2.0))], 5)];
    let batch = [
        point("m", &[("h", "a"), ("p", "1")], &[("y", f(3.0))], 5),
        point("m", &[("h", "a"), ("p", "1")], &[("z", FieldValue::Text("t".into()))], 5),
        point("m", &[("h", "b")], &[("x", FieldValue::Unsigned(7))], 6),
        point("n", &[], &[("x", FieldValue::Integer(-1))], 4),
    ];
    for (store, points) in [(&via_points, &first[..]), (&via_points, &batch[..])] {
        assert_eq!(store.write(points).unwrap(), points.len() as u32);
    }
    for points in [&first[..], &batch[..]] {
        let converted: Vec<SortedPoint> = points.iter().map(sorted).collect();
        assert_eq!(via_sorted.write_sorted(&converted).unwrap(), points.len() as u32);
    }
    for m in ["m", "n"] {
        assert_eq!(via_sorted.query(&all(m)).unwrap(), via_points.query(&all(m)).unwrap(), "measurement {m}");
    }
    let merged = &via_sorted.query(&all("m")).unwrap()[0];
    assert_eq!(merged.fields.len(), 3, "x kept, y replaced, z added: {merged:?}");
    assert_eq!(merged.fields["y"], f(3.0));
}

#[test]
fn write_sorted_with_keys_out_of_order_goes_through_points() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir);
    let unsorted = SortedPoint {
        measurement: "m".into(),
        tags: vec![("z".into(), "1".into()), ("a".into(), "2".into())],
        fields: vec![("w".into(), f(1.0)), ("w".into(), f(2.0))],
        time: 9,
    };
    assert!(!unsorted.is_sorted());
    s.write_sorted(std::slice::from_ref(&unsorted)).unwrap();
    let p = unsorted.into_point();
    let expected = Row { time: p.time, tags: p.tags, fields: p.fields };
    assert_eq!(s.query(&all("m")).unwrap(), vec![expected], "sorted keys, last w wins");
}

#[test]
fn write_sorted_rejects_invalid_points_like_write() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir);
    let bad = [
        point("m", &[("", "v")], &[("x", f(1.0))], 1),
        point("m", &[], &[], 1),
        point("m", &[], &[("x", f(f64::NAN))], 1),
        point("", &[], &[("x", f(1.0))], 1),
    ];
    for p in &bad {
        let ok = point("m", &[], &[("x", f(1.0))], 2);
        let via_points = s.write(&[ok.clone(), p.clone()]).unwrap_err().to_string();
        let via_sorted = s.write_sorted(&[sorted(&ok), sorted(p)]).unwrap_err().to_string();
        assert_eq!(via_sorted, via_points);
        assert!(via_sorted.starts_with("invalid: point 1: "), "{via_sorted}");
    }
    assert_eq!(s.point_count().unwrap(), 0, "a batch with an invalid point writes nothing");
}

#[test]
fn points_already_beyond_the_retention_are_written_and_counted() {
    const HOUR: i64 = 3_600_000_000_000;
    let dir = tempfile::tempdir().unwrap();
    let now = crate::store::now_ns();
    let s = EmbeddedStore::open(&dir.path().join("r.redb"), Some(Duration::from_secs(3600))).unwrap();
    let batch = [point("a", &[], &[("v", f(1.0))], now), point("a", &[], &[("v", f(2.0))], now - 2 * HOUR)];
    assert_eq!(s.write(&batch).unwrap(), 2, "accepted, like the rest of an InfluxDB partial write");
    assert_eq!(s.points_beyond_retention(), 1);
    assert_eq!(s.purge_expired(crate::store::now_ns()).unwrap(), 1, "the next purge removes it");
    let forever = EmbeddedStore::open(&dir.path().join("f.redb"), None).unwrap();
    forever.write(&batch).unwrap();
    assert_eq!(forever.points_beyond_retention(), 0, "without retention nothing is purged");
}

#[tokio::test]
async fn the_backend_reports_points_beyond_the_retention_in_its_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let backend =
        crate::store::EmbeddedBackend::open(&dir.path().join("m.redb"), Some(Duration::from_secs(60))).unwrap();
    let old = point("a", &[], &[("v", f(1.0))], crate::store::now_ns() - 3_600_000_000_000);
    crate::store::TimeSeriesStore::write(&backend, vec![old]).await.unwrap();
    let text = crate::store::TimeSeriesStore::metrics(&backend);
    assert!(text.contains("\nwattedge_store_points_beyond_retention_total 1\n"), "{text}");
}

#[test]
fn the_page_cache_stays_bounded_when_a_scan_reads_more() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir);
    // About 3 × CACHE_BYTES of points, written in batches, then read in full.
    let text = FieldValue::Text("x".repeat(1000));
    let per_batch = 2000;
    let batches = 3 * CACHE_BYTES / (per_batch * 1000);
    for b in 0..batches {
        let pts: Vec<Point> = (0..per_batch)
            .map(|i| point("big", &[("k", "v")], &[("t", text.clone())], (b * per_batch + i) as i64))
            .collect();
        s.write(&pts).unwrap();
    }
    assert_eq!(s.query_floats(&all("big"), "t").unwrap().times.len(), 0, "text is not a float");
    assert_eq!(s.query(&all("big")).unwrap().len(), batches * per_batch);
    let stats = s.db.cache_stats();
    assert!(stats.used_bytes() <= CACHE_BYTES + (1 << 20), "cache holds {} bytes", stats.used_bytes());
    assert!(stats.evictions() > 0, "a scan larger than the cache evicts pages");
}

mod blocks;
mod multi;
mod table;

fn wide(n: usize, prefix: &str, time: i64) -> Point {
    let fields: Vec<(String, FieldValue)> = (0..n).map(|i| (format!("{prefix}{i:05}"), f(i as f64))).collect();
    Point {
        measurement: "wide".into(),
        tags: BTreeMap::from([("s".to_string(), "1".to_string())]),
        fields: fields.into_iter().collect(),
        time,
    }
}

#[test]
fn a_65536_field_point_is_refused_and_its_series_stays_readable() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir);
    s.write(&[wide(3, "ok", 1)]).unwrap();
    let err = s.write(&[wide(65_536, "f", 2)]).unwrap_err().to_string();
    assert!(err.contains("the point has 65536 fields, more than the 1024 a point may have"), "{err}");
    let rows = s.query(&all("wide")).unwrap();
    assert_eq!((times(&rows), rows[0].fields.len()), (vec![1], 3));
}

#[test]
fn points_merged_at_one_time_cannot_grow_past_the_field_cap() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir);
    s.write(&[wide(1000, "a", 5)]).unwrap();
    let err = s.write(&[wide(1000, "b", 5)]).unwrap_err().to_string();
    assert!(err.contains("would have 2000 fields once merged"), "{err}");
    let in_one_batch = s.write(&[wide(600, "c", 6), wide(600, "d", 6)]).unwrap_err().to_string();
    assert!(in_one_batch.contains("would have 1200 fields once merged"), "{in_one_batch}");
    assert_eq!(s.query(&all("wide")).unwrap()[0].fields.len(), 1000, "the stored point is untouched");
}

#[test]
fn a_block_closes_before_its_column_count_could_wrap() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir);
    // 80 points of 1024 distinct fields each: 81,920 columns in one series.
    let points: Vec<Point> = (0..80).map(|i| wide(1024, &format!("p{i:02}_"), i + 1)).collect();
    s.write(&points).unwrap();
    let rows = s.query(&all("wide")).unwrap();
    assert_eq!(rows.len(), 80, "every block of the series still reads");
    assert!(rows.iter().all(|r| r.fields.len() == 1024));
    assert_eq!(rows[79].fields["p79_01023"], f(1023.0));
}

#[test]
fn a_query_answer_is_bounded_in_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir);
    let text = "x".repeat(1 << 20);
    let points: Vec<Point> =
        (0..17).map(|i| point("big", &[], &[("t", FieldValue::Text(format!("{i}{text}")))], i + 1)).collect();
    s.write(&points).unwrap();
    let max = crate::store::MAX_QUERY_BYTES;
    let errors = [s.query_within(&all("big"), max).unwrap_err(), s.query_table_within(&all("big"), max).unwrap_err()];
    for err in errors {
        let text = err.to_string();
        assert!(text.starts_with(&format!("invalid: the query's answer is larger than {max} bytes")), "{text}");
    }
    let limited = Query { limit: Some(15), ..all("big") };
    assert_eq!(s.query_within(&limited, max).unwrap().len(), 15, "a smaller answer is fine");
    assert_eq!(s.query_table_within(&limited, max).unwrap().len(), 15);
    assert_eq!(s.query(&all("big")).unwrap().len(), 17, "tools read without the guests' bound");
}
