//! The layout before blocks: one `redb` entry per point in table `points`
//! (key `u32 BE len(m) ‖ m ‖ time ‖ series`, value the fields, each `u32 BE
//! len ‖ name ‖ kind ‖ value`), and the names of its measurements in table
//! `measurements`. A store written that way is moved into blocks when it
//! is opened, a chunk of points per transaction: each chunk is deleted
//! from `points` in the transaction that writes its blocks, so an
//! interrupted move (a crash, a power cut) resumes where it stopped and
//! never holds a point twice or loses one. Both old tables are dropped in
//! the last transaction.

use redb::{ReadableDatabase, ReadableTable, TableDefinition, TableError};

use super::keys::Reader;
use super::{EmbeddedStore, SortedPoint, StoreError};
use crate::store::FieldValue;

const POINTS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("points");
/// Only its name is used: the table is dropped, never read.
const MEASUREMENTS: &str = "measurements";

/// Points moved per transaction.
const CHUNK: usize = 20_000;

impl EmbeddedStore {
    /// Moves the points of the per-point layout, if the file has any, into
    /// blocks; returns how many were moved.
    pub(super) fn migrate_legacy_points(&self) -> Result<u64, StoreError> {
        self.migrate_legacy_points_in_chunks(CHUNK)
    }

    pub(super) fn migrate_legacy_points_in_chunks(&self, chunk: usize) -> Result<u64, StoreError> {
        let read = self.db.begin_read().map_err(self.err("begin read"))?;
        match read.open_table(POINTS) {
            Err(TableError::TableDoesNotExist(_)) => return Ok(0),
            other => drop(other.map_err(self.err("open points"))?),
        }
        drop(read);
        let mut moved = 0u64;
        loop {
            let txn = self.db.begin_write().map_err(self.err("begin migration"))?;
            let points = self.take_legacy_chunk(&txn, chunk)?;
            if points.is_empty() {
                txn.delete_table(POINTS).map_err(self.err("drop points table"))?;
                let measurements = redb::TableDefinition::<&[u8], &[u8]>::new(MEASUREMENTS);
                txn.delete_table(measurements).map_err(self.err("drop measurements table"))?;
                txn.commit().map_err(self.err("commit migration"))?;
                return Ok(moved);
            }
            self.write_in(&txn, &points)?;
            txn.commit().map_err(self.err("commit migration"))?;
            moved += points.len() as u64;
            tracing::info!(points = moved, path = %self.path.display(), "embedded store: moved points into blocks");
        }
    }

    /// Removes up to `chunk` points from the `points` table and returns them.
    fn take_legacy_chunk(&self, txn: &redb::WriteTransaction, chunk: usize) -> Result<Vec<SortedPoint>, StoreError> {
        let mut table = txn.open_table(POINTS).map_err(self.err("open points"))?;
        let (mut points, mut keys) = (Vec::new(), Vec::new());
        for entry in table.iter().map_err(self.err("read points"))?.take(chunk) {
            let (key, value) = entry.map_err(self.err("read points"))?;
            points.push(decode_point(key.value(), value.value()).map_err(|e| self.corrupt(e))?);
            keys.push(key.value().to_vec());
        }
        // One key at a time: the same redb code the block writes use, where a
        // range removal would add its own copy to the binary.
        for key in keys {
            table.remove(key.as_slice()).map_err(self.err("remove moved points"))?;
        }
        Ok(points)
    }
}

/// One stored point. It was written from maps, so its tags and fields come
/// sorted: a point whose keys do not is corrupt.
fn decode_point(key: &[u8], value: &[u8]) -> Result<SortedPoint, String> {
    let mut k = Reader(key);
    let measurement = k.str()?.to_owned();
    let time = k.time()?;
    let mut tags = Vec::new();
    while !k.0.is_empty() {
        tags.push((k.str()?.to_owned(), k.str()?.to_owned()));
    }
    let mut v = Reader(value);
    let mut fields = Vec::new();
    while !v.0.is_empty() {
        let name = v.str()?.to_owned();
        let [kind] = v.array()?;
        let value = match kind {
            0 => FieldValue::Float(f64::from_bits(u64::from_le_bytes(v.array()?))),
            1 => FieldValue::Integer(i64::from_le_bytes(v.array()?)),
            2 => FieldValue::Unsigned(u64::from_le_bytes(v.array()?)),
            3 => FieldValue::Boolean(v.array::<1>()? != [0]),
            4 => FieldValue::Text(v.str()?.to_owned()),
            other => return Err(format!("unknown field type {other} in field {name:?}")),
        };
        fields.push((name, value));
    }
    let point = SortedPoint { measurement, tags, fields, time };
    if !point.is_sorted() || point.fields.is_empty() {
        return Err(format!("point of {:?} at {time} has unsorted or no keys", point.measurement));
    }
    Ok(point)
}

#[cfg(test)]
pub(super) mod tests {
    use super::super::keys::{put_bytes, put_time};
    use super::*;
    use crate::store::{Point, Query};

    /// Writes `points` into `path` in the per-point layout.
    pub fn write_legacy(path: &std::path::Path, points: &[Point]) {
        let db = redb::Database::create(path).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut table = txn.open_table(POINTS).unwrap();
            let mut measurements = txn.open_table(TableDefinition::<&str, ()>::new(MEASUREMENTS)).unwrap();
            for p in points {
                let mut key = Vec::new();
                put_bytes(&mut key, p.measurement.as_bytes());
                put_time(&mut key, p.time);
                p.tags.iter().for_each(|(k, v)| [k, v].iter().for_each(|s| put_bytes(&mut key, s.as_bytes())));
                let mut value = Vec::new();
                for (name, field) in &p.fields {
                    put_bytes(&mut value, name.as_bytes());
                    match field {
                        FieldValue::Float(f) => [&[0][..], &f.to_bits().to_le_bytes()].concat(),
                        FieldValue::Integer(i) => [&[1][..], &i.to_le_bytes()].concat(),
                        FieldValue::Unsigned(u) => [&[2][..], &u.to_le_bytes()].concat(),
                        FieldValue::Boolean(b) => vec![3, u8::from(*b)],
                        FieldValue::Text(s) => [&[4][..], &(s.len() as u32).to_be_bytes(), s.as_bytes()].concat(),
                    }
                    .into_iter()
                    .for_each(|b| value.push(b));
                }
                table.insert(key.as_slice(), value.as_slice()).unwrap();
                measurements.insert(p.measurement.as_str(), ()).unwrap();
            }
        }
        txn.commit().unwrap();
    }

    fn point(m: &str, host: &str, time: i64, fields: &[(&str, FieldValue)]) -> Point {
        Point {
            measurement: m.into(),
            tags: [("host".to_string(), host.to_string())].into(),
            fields: fields.iter().map(|(k, v)| (k.to_string(), v.clone())).collect(),
            time,
        }
    }

    #[test]
    fn a_store_in_the_per_point_layout_is_moved_into_blocks_when_opened() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.redb");
        let mut points: Vec<Point> = (0..25)
            .map(|i| point("power", ["a", "b"][i % 2], i as i64 - 3, &[("w", FieldValue::Float(i as f64 / 3.0))]))
            .collect();
        points.push(point(
            "meter",
            "pi, 1",
            i64::MAX,
            &[
                ("i", FieldValue::Integer(i64::MIN)),
                ("u", FieldValue::Unsigned(u64::MAX)),
                ("b", FieldValue::Boolean(true)),
                ("s", FieldValue::Text("héllo".into())),
            ],
        ));
        write_legacy(&path, &points);
        let store = EmbeddedStore::open_without_migration(&path).unwrap();
        assert_eq!(store.migrate_legacy_points_in_chunks(4).unwrap(), 26, "seven chunks");
        assert_eq!(store.point_count().unwrap(), 26);
        for m in ["power", "meter"] {
            let rows = store.query(&Query { measurement: m.into(), ..Query::default() }).unwrap();
            let mut expected: Vec<&Point> = points.iter().filter(|p| p.measurement == m).collect();
            expected.sort_by_key(|p| (p.time, p.tags["host"].clone()));
            assert_eq!(rows.len(), expected.len());
            for (row, p) in rows.iter().zip(expected) {
                assert_eq!((row.time, &row.tags, &row.fields), (p.time, &p.tags, &p.fields));
            }
        }
        assert_eq!(store.migrate_legacy_points().unwrap(), 0, "the old table is gone");
        let tables: Vec<String> = store
            .db
            .begin_read()
            .unwrap()
            .list_tables()
            .unwrap()
            .map(|t| redb::TableHandle::name(&t).to_string())
            .collect();
        assert_eq!(tables, ["blocks"], "points and measurements are dropped");
        drop(store);
        let reopened = EmbeddedStore::open(&path, None).unwrap();
        assert_eq!(reopened.point_count().unwrap(), 26);
    }

    #[test]
    fn a_corrupt_legacy_point_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.redb");
        {
            let db = redb::Database::create(&path).unwrap();
            let txn = db.begin_write().unwrap();
            txn.open_table(POINTS).unwrap().insert(&[0u8, 0, 0, 9][..], &[][..]).unwrap();
            txn.commit().unwrap();
        }
        let err = EmbeddedStore::open(&path, None).unwrap_err().to_string();
        assert!(err.contains("bad.redb") && err.contains("corrupt"), "{err}");
    }
}
