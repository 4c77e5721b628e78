//! The block layout: blocks fill to their size, split and merge without
//! overlapping, retention trims them, and random batches leave the store
//! holding exactly what a map of merged points holds.

use std::collections::BTreeMap;

use super::{all, f, open, point, times};
use crate::store::embedded::{BLOCKS, EmbeddedStore, block};
use crate::store::{FieldValue, Point, Query, Selector};
use redb::{ReadableDatabase, ReadableTable};
use std::time::Duration;

/// `n` points of one series at times `start, start + step, ...`, with the
/// value `tag * 1000 + index`.
fn run(host: &str, start: i64, step: i64, n: usize, tag: f64) -> Vec<Point> {
    (0..n)
        .map(|i| point("run", &[("host", host)], &[("v", f(tag * 1000.0 + i as f64))], start + step * i as i64))
        .collect()
}

fn block_sizes(s: &EmbeddedStore) -> Vec<usize> {
    let txn = s.db.begin_read().unwrap();
    let table = txn.open_table(BLOCKS).unwrap();
    table.iter().unwrap().map(|e| block::row_count(e.unwrap().1.value()).unwrap()).collect()
}

#[test]
fn appends_fill_blocks_to_their_size_and_scans_cross_them() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir);
    let rows = block::BLOCK_ROWS;
    // One big batch, then appends of one point at a time.
    s.write(&run("a", 0, 10, rows + 10, 1.0)).unwrap();
    for i in 0..5 {
        s.write(&[point("run", &[("host", "a")], &[("v", f(-1.0))], 10 * (rows + 10 + i) as i64)]).unwrap();
    }
    assert_eq!(block_sizes(&s), [rows, 15], "full blocks, then the growing last one");
    assert_eq!(s.point_count().unwrap(), (rows + 15) as u64);
    // A range reaching across the block boundary, both ways, with a limit.
    let q = Query { start: Some(10 * (rows as i64 - 2)), end: Some(10 * (rows as i64 + 2)), ..all("run") };
    let expected: Vec<i64> = (rows as i64 - 2..rows as i64 + 2).map(|i| i * 10).collect();
    assert_eq!(times(&s.query(&q).unwrap()), expected);
    let backward = Query { descending: true, limit: Some(3), ..q.clone() };
    assert_eq!(times(&s.query(&backward).unwrap()), expected.iter().rev().take(3).copied().collect::<Vec<_>>());
    let last = Query { select: Selector::Last, end: Some(10 * rows as i64 + 1), ..all("run") };
    assert_eq!(times(&s.query(&last).unwrap()), [10 * rows as i64]);
}

#[test]
fn a_point_inside_a_full_block_merges_or_splits_it_without_overlap() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir);
    let rows = block::BLOCK_ROWS as i64;
    s.write(&run("a", 0, 10, rows as usize, 1.0)).unwrap();
    // Same identity: a merge, no new point. New times: the block splits.
    s.write(&[point("run", &[("host", "a")], &[("w", f(7.0))], 100)]).unwrap();
    s.write(&[
        point("run", &[("host", "a")], &[("v", f(-5.0))], 105),
        point("run", &[("host", "a")], &[("v", f(-6.0))], -7),
    ])
    .unwrap();
    assert_eq!(s.point_count().unwrap(), rows as u64 + 2);
    assert_eq!(block_sizes(&s).iter().sum::<usize>(), rows as usize + 2);
    let all_rows = s.query(&all("run")).unwrap();
    let t = times(&all_rows);
    assert!(t.windows(2).all(|w| w[0] < w[1]), "ascending, no duplicates");
    assert_eq!(&t[..4], [-7, 0, 10, 20]);
    let merged = all_rows.iter().find(|r| r.time == 100).unwrap();
    assert_eq!(merged.fields, [("v".to_string(), f(1010.0)), ("w".to_string(), f(7.0))].into());
    // Writing before the first block and after the last joins them.
    s.write(&[point("run", &[("host", "a")], &[("v", f(0.5))], -100)]).unwrap();
    assert_eq!(times(&s.query(&Query { select: Selector::First, ..all("run") }).unwrap()), [-100]);
}

#[test]
fn many_series_merge_by_time_with_ties_in_tag_order() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir);
    let rows = block::BLOCK_ROWS;
    s.write(&[run("b", 0, 2, 2 * rows, 2.0), run("a", 1, 2, 2 * rows, 1.0), run("c", 0, 4, rows, 3.0)].concat())
        .unwrap();
    let rows_out = s.query(&all("run")).unwrap();
    assert_eq!(rows_out.len(), 5 * rows);
    let order: Vec<(i64, &str)> = rows_out.iter().map(|r| (r.time, r.tags["host"].as_str())).collect();
    assert_eq!(&order[..5], [(0, "b"), (0, "c"), (1, "a"), (2, "b"), (3, "a")]);
    let mut sorted = order.clone();
    sorted.sort();
    assert_eq!(order, sorted);
    let backward = s.query(&Query { descending: true, ..all("run") }).unwrap();
    let reversed: Vec<(i64, &str)> = backward.iter().rev().map(|r| (r.time, r.tags["host"].as_str())).collect();
    assert_eq!(reversed, order);
    let only_c = Query { tags: [("host".to_string(), "c".to_string())].into(), limit: Some(3), ..all("run") };
    assert_eq!(times(&s.query(&only_c).unwrap()), [0, 4, 8]);
}

#[test]
fn retention_removes_whole_blocks_and_trims_the_one_across_the_cutoff() {
    let dir = tempfile::tempdir().unwrap();
    let s = EmbeddedStore::open(&dir.path().join("r.redb"), Some(Duration::from_nanos(1000))).unwrap();
    let rows = block::BLOCK_ROWS;
    s.write(&run("a", 0, 1, 3 * rows, 1.0)).unwrap();
    let cutoff = rows as i64 + 7;
    assert_eq!(s.purge_expired(cutoff + 1000).unwrap(), cutoff as u64);
    assert_eq!(block_sizes(&s), [rows - 7, rows]);
    assert_eq!(times(&s.query(&Query { select: Selector::First, ..all("run") }).unwrap()), [cutoff]);
    assert_eq!(s.point_count().unwrap(), (3 * rows) as u64 - cutoff as u64);
    assert_eq!(s.purge_expired(i64::MAX).unwrap(), (3 * rows) as u64 - cutoff as u64);
    assert!(block_sizes(&s).is_empty());
}

mod model {
    //! The store against a map of what it should hold, over random batches.
    use super::*;
    use proptest::prelude::*;

    type Identity = (String, i64);

    fn batch() -> impl Strategy<Value = Vec<Point>> {
        let p = (0..3usize, -40i64..1200, 0..3usize, -5i64..5).prop_map(|(host, time, field, v)| {
            let name = ["x", "y", "z"][field];
            let value = if field == 2 { FieldValue::Integer(v) } else { f(v as f64) };
            point("m", &[("host", ["a", "b", "c"][host])], &[(name, value)], time)
        });
        prop::collection::vec(p, 1..700)
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]
        #[test]
        fn the_store_holds_what_a_map_of_merged_points_holds(batches in prop::collection::vec(batch(), 1..4),
                                                            start in -50i64..1300, len in 0i64..1400,
                                                            descending: bool, limit in 0u32..900) {
            let dir = tempfile::tempdir().unwrap();
            let s = open(&dir);
            let mut model: BTreeMap<(i64, String), BTreeMap<String, FieldValue>> = BTreeMap::new();
            for b in &batches {
                s.write(b).unwrap();
                for p in b {
                    let id: Identity = (p.tags["host"].clone(), p.time);
                    model.entry((id.1, id.0)).or_default().extend(p.fields.clone());
                }
            }
            prop_assert_eq!(s.point_count().unwrap(), model.len() as u64);
            let q = Query { start: Some(start), end: Some(start + len), descending, limit: Some(limit), ..all("m") };
            let mut expected: Vec<(i64, String, BTreeMap<String, FieldValue>)> = model
                .range((start, String::new())..(start + len, String::new()))
                .map(|((t, h), fields)| (*t, h.clone(), fields.clone()))
                .collect();
            if descending { expected.reverse() }
            expected.truncate(limit as usize);
            let got: Vec<_> = s.query(&q).unwrap().into_iter().map(|r| (r.time, r.tags["host"].clone(), r.fields)).collect();
            prop_assert_eq!(got, expected);
            let sizes = block_sizes(&s);
            prop_assert!(sizes.iter().all(|&n| (1..=block::BLOCK_ROWS).contains(&n)), "{:?}", sizes);
        }
    }
}
