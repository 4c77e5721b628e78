//! Opening the host's `redb` files (the embedded store and guest state) the
//! same way, so a first start costs no more memory than a restart.
//!
//! `redb::Database::create` on a new file keeps what it built to initialise
//! the file (about 100 KB of heap, measured with redb 3.1) for as long as the
//! database is open, where opening an existing file does not. A board's
//! first start would carry that for its whole life. A new file is therefore
//! created, closed and opened again.

use std::path::Path;

/// Opens (creating if missing or empty) the `redb` file at `path` with a
/// page cache of `cache_bytes`. Takes redb's exclusive lock on the file.
/// The file is mode 0600 whatever the umask (a file others could read is
/// made so): it holds guests' data.
pub fn open(path: &Path, cache_bytes: usize) -> Result<redb::Database, redb::DatabaseError> {
    crate::private_dir::create_file(path)?;
    let is_new = std::fs::metadata(path).map_or(true, |m| m.len() == 0);
    let mut builder = redb::Builder::new();
    builder.set_cache_size(cache_bytes);
    if is_new {
        drop(builder.create(path)?);
    }
    builder.create(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_file_is_created_and_usable() {
        const TABLE: redb::TableDefinition<&str, u64> = redb::TableDefinition::new("t");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("new.redb");
        let db = open(&path, 1 << 20).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(TABLE).unwrap().insert("k", 7).unwrap();
        txn.commit().unwrap();
        drop(db);
        let db = open(&path, 1 << 20).unwrap();
        let txn = redb::ReadableDatabase::begin_read(&db).unwrap();
        assert_eq!(txn.open_table(TABLE).unwrap().get("k").unwrap().unwrap().value(), 7);
    }

    #[test]
    fn a_second_open_of_the_same_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("locked.redb");
        let _db = open(&path, 1 << 20).unwrap();
        assert!(open(&path, 1 << 20).is_err());
    }
}
