//! Opening the host's `redb` files (the embedded store and guest state) the
//! same way: a first start costs no more memory than a restart, and few
//! `fsync`s.
//!
//! `redb::Database::create` on a new file keeps what it built to initialise
//! the file (about 100 KB of heap, measured with redb 3.1) for as long as the
//! database is open, where opening an existing file does not; and it
//! initialises the file with a dozen commits, each with its `fsync`s (about
//! 13 on an empty file, 40–60 ms of a host's start on a busy SD card or a
//! shared disk). A new file is therefore built in memory, with its table,
//! by redb itself, written out with two `fsync`s (the image with its magic
//! number left zero, then the magic number: the order redb uses, so a crash
//! in between leaves a file [`open`] builds again), and opened from there.
//! Opening a file that has its table writes nothing more.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};

use redb::{ReadableDatabase, TableDefinition, TableError};

/// redb's magic number opens every initialised file; a file whose first
/// bytes are still zero was never finished (see the module docs).
const MAGIC_LEN: usize = 9;

/// Opens (creating if missing, empty or never finished) the `redb` file at
/// `path` with a page cache of `cache_bytes`, with `table` created. Takes an
/// exclusive lock on the file (a second open fails with
/// `DatabaseAlreadyOpen`). The file is mode 0600 whatever the umask (a file
/// others could read is made so): it holds guests' data.
pub fn open<K: redb::Key + 'static, V: redb::Value + 'static>(
    path: &Path,
    cache_bytes: usize,
    table: TableDefinition<K, V>,
) -> Result<redb::Database, redb::Error> {
    crate::private_dir::create_file(path)?;
    let file = std::fs::OpenOptions::new().read(true).write(true).open(path)?;
    lock_exclusive(&file)?;
    if is_unfinished(&file)? {
        write_new(&file, table)?;
    }
    let mut builder = redb::Builder::new();
    builder.set_cache_size(cache_bytes);
    let db = builder.create_file(file)?;
    if !has_table(&db, table)? {
        let txn = db.begin_write()?;
        txn.open_table(table)?;
        txn.commit()?;
    }
    Ok(db)
}

/// `flock(LOCK_EX | LOCK_NB)`, as redb takes it (redb takes it again on the
/// same open file, which succeeds): no other host builds the file meanwhile.
fn lock_exclusive(file: &File) -> Result<(), redb::Error> {
    // SAFETY: flock on a descriptor this function borrows; no memory involved.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        return Ok(());
    }
    let error = io::Error::last_os_error();
    if error.kind() == io::ErrorKind::WouldBlock {
        return Err(redb::Error::DatabaseAlreadyOpen);
    }
    Err(error.into())
}

/// Empty, or never given its magic number (redb writes it last).
fn is_unfinished(file: &File) -> io::Result<bool> {
    if file.metadata()?.len() < MAGIC_LEN as u64 {
        return Ok(true);
    }
    let mut magic = [0u8; MAGIC_LEN];
    file.read_exact_at(&mut magic, 0)?;
    Ok(magic == [0; MAGIC_LEN])
}

fn has_table<K: redb::Key + 'static, V: redb::Value + 'static>(
    db: &redb::Database,
    table: TableDefinition<K, V>,
) -> Result<bool, redb::Error> {
    match db.begin_read()?.open_table(table) {
        Ok(_) => Ok(true),
        Err(TableError::TableDoesNotExist(_)) => Ok(false),
        Err(error) => Err(error.into()),
    }
}

/// Builds a database with `table` in memory and writes it into `file`: the
/// image with its magic number zero, `fsync`, the magic number, `fsync`.
fn write_new<K: redb::Key + 'static, V: redb::Value + 'static>(
    file: &File,
    table: TableDefinition<K, V>,
) -> Result<(), redb::Error> {
    let image = build_in_memory(table)?;
    file.set_len(0)?;
    file.set_len(image.len)?;
    let mut magic = [0u8; MAGIC_LEN];
    // The file is sparse: only pages with data are written.
    for (&index, page) in &image.pages {
        let skip = if index == 0 { MAGIC_LEN } else { 0 };
        let end = usize::try_from(image.len.saturating_sub(index * PAGE as u64)).map_or(PAGE, |left| left.min(PAGE));
        if index == 0 {
            magic.copy_from_slice(&page[..MAGIC_LEN]);
        }
        if skip < end && page[skip..end] != ZERO_PAGE[skip..end] {
            file.write_all_at(&page[skip..end], index * PAGE as u64 + skip as u64)?;
        }
    }
    file.sync_data()?;
    let magic_len = usize::try_from(image.len).map_or(MAGIC_LEN, |len| len.min(MAGIC_LEN));
    file.write_all_at(&magic[..magic_len], 0)?;
    file.sync_data()?;
    Ok(())
}

/// The unit [`MemoryBackend`] keeps and [`write_new`] skips zeros in.
const PAGE: usize = 4096;

/// Compared with (a `memcmp`, not a loop over bytes).
static ZERO_PAGE: [u8; PAGE] = [0; PAGE];

/// A new database with `table`, as redb leaves it on disk once closed.
fn build_in_memory<K: redb::Key + 'static, V: redb::Value + 'static>(
    table: TableDefinition<K, V>,
) -> Result<Image, redb::Error> {
    let memory = MemoryBackend::default();
    let db = redb::Builder::new().create_with_backend(memory.clone())?;
    let txn = db.begin_write()?;
    txn.open_table(table)?;
    txn.commit()?;
    drop(db);
    Ok(std::mem::take(&mut *memory.image()))
}

/// A sparse file image: its length, and the pages written (any other byte
/// is zero). redb sizes a new file to 1 MiB of which it writes 8 pages: a
/// flat buffer cost a 1 MiB `memset` and 258 page faults per file, about
/// a third of a first start's page faults for the two files.
#[derive(Debug, Default)]
struct Image {
    len: u64,
    pages: BTreeMap<u64, Box<[u8; PAGE]>>,
}

impl Image {
    /// Drops what lies past `len` (a page cut in two keeps zeros after it).
    fn set_len(&mut self, len: u64) {
        let first_gone = len.div_ceil(PAGE as u64);
        self.pages.retain(|&index, _| index < first_gone);
        let cut = usize::try_from(len % PAGE as u64).unwrap_or(0);
        if let (true, Some(page)) = (cut != 0, self.pages.get_mut(&(len / PAGE as u64))) {
            page[cut..].fill(0);
        }
        self.len = len;
    }
}

/// A redb backend in a shared sparse [`Image`], so the image outlives the
/// database.
#[derive(Debug, Default, Clone)]
struct MemoryBackend {
    image: Arc<Mutex<Image>>,
}

impl MemoryBackend {
    fn image(&self) -> std::sync::MutexGuard<'_, Image> {
        self.image.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn out_of_range() -> io::Error {
    io::Error::new(io::ErrorKind::UnexpectedEof, "past the end of the in-memory database")
}

/// The pieces of `[offset, offset + len)` by page: (page index, start in
/// the page, start in the buffer, length). Errors past `limit`.
fn spans(offset: u64, len: usize, limit: u64) -> io::Result<impl Iterator<Item = (u64, usize, usize, usize)>> {
    let end = offset.checked_add(len as u64).filter(|&end| end <= limit).ok_or_else(out_of_range)?;
    let mut at = offset;
    Ok(std::iter::from_fn(move || {
        if at >= end {
            return None;
        }
        let (index, start) = (at / PAGE as u64, (at % PAGE as u64) as usize);
        let take = (PAGE - start).min((end - at) as usize);
        let span = (index, start, (at - offset) as usize, take);
        at += take as u64;
        Some(span)
    }))
}

impl redb::StorageBackend for MemoryBackend {
    fn len(&self) -> Result<u64, io::Error> {
        Ok(self.image().len)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), io::Error> {
        let image = self.image();
        for (index, start, at, take) in spans(offset, out.len(), image.len)? {
            let target = &mut out[at..at + take];
            match image.pages.get(&index) {
                Some(page) => target.copy_from_slice(&page[start..start + take]),
                None => target.fill(0),
            }
        }
        Ok(())
    }

    fn set_len(&self, len: u64) -> Result<(), io::Error> {
        self.image().set_len(len);
        Ok(())
    }

    fn sync_data(&self) -> Result<(), io::Error> {
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), io::Error> {
        let mut image = self.image();
        let limit = image.len;
        for (index, start, at, take) in spans(offset, data.len(), limit)? {
            let page = image.pages.entry(index).or_insert_with(|| Box::new([0; PAGE]));
            page[start..start + take].copy_from_slice(&data[at..at + take]);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: redb::TableDefinition<&str, u64> = redb::TableDefinition::new("t");

    fn value(db: &redb::Database, key: &str) -> Option<u64> {
        let txn = db.begin_read().unwrap();
        txn.open_table(TABLE).unwrap().get(key).unwrap().map(|v| v.value())
    }

    #[test]
    fn a_new_file_is_created_with_its_table_and_usable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("new.redb");
        let db = open(&path, 1 << 20, TABLE).unwrap();
        assert_eq!(value(&db, "k"), None, "the table exists in a new file");
        let txn = db.begin_write().unwrap();
        txn.open_table(TABLE).unwrap().insert("k", 7).unwrap();
        txn.commit().unwrap();
        drop(db);
        let db = open(&path, 1 << 20, TABLE).unwrap();
        assert_eq!(value(&db, "k"), Some(7));
    }

    #[test]
    fn the_in_memory_image_reads_back_writes_across_pages_and_zeros_elsewhere() {
        use redb::StorageBackend;
        let memory = MemoryBackend::default();
        memory.set_len(3 * PAGE as u64).unwrap();
        let data: Vec<u8> = (1..=200).collect();
        memory.write(PAGE as u64 - 100, &data).unwrap();
        let mut out = vec![7u8; 3 * PAGE];
        memory.read(0, &mut out).unwrap();
        assert!(out[..PAGE - 100].iter().all(|&b| b == 0));
        assert_eq!(&out[PAGE - 100..PAGE + 100], &data[..]);
        assert!(out[PAGE + 100..].iter().all(|&b| b == 0));
        assert_eq!(memory.image().pages.len(), 2, "only the pages written are kept");
        assert!(memory.write(3 * PAGE as u64 - 1, &[1, 2]).is_err(), "no write past the end");
        // Shrinking drops what lies past the end; growing again reads zeros.
        memory.set_len(PAGE as u64 + 50).unwrap();
        memory.set_len(3 * PAGE as u64).unwrap();
        memory.read(0, &mut out).unwrap();
        assert_eq!(&out[PAGE..PAGE + 50], &data[100..150]);
        assert!(out[PAGE + 50..].iter().all(|&b| b == 0));
    }

    #[test]
    fn a_new_file_is_written_sparse_with_redb_s_magic_number_first() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sparse.redb");
        drop(open(&path, 1 << 20, TABLE).unwrap());
        let bytes = std::fs::read(&path).unwrap();
        assert!(bytes.len() >= 1 << 20, "redb's initial size");
        assert_eq!(&bytes[..4], b"redb");
        let written = bytes.chunks(PAGE).filter(|page| page.iter().any(|&b| b != 0)).count();
        assert!(written < 16, "{written} pages with data");
    }

    #[test]
    fn a_file_left_without_its_magic_number_is_built_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("torn.redb");
        std::fs::write(&path, vec![0u8; 64 << 10]).unwrap();
        let db = open(&path, 1 << 20, TABLE).unwrap();
        assert_eq!(value(&db, "k"), None);
    }

    #[test]
    fn a_file_that_is_not_a_database_is_refused_not_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("other.redb");
        std::fs::write(&path, b"not a redb file at all").unwrap();
        assert!(open(&path, 1 << 20, TABLE).is_err());
        assert_eq!(std::fs::read(&path).unwrap(), b"not a redb file at all");
    }

    #[test]
    fn an_existing_file_without_the_table_gets_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.redb");
        drop(redb::Database::create(&path).unwrap());
        let db = open(&path, 1 << 20, TABLE).unwrap();
        assert_eq!(value(&db, "k"), None);
    }

    #[test]
    fn a_second_open_of_the_same_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("locked.redb");
        let _db = open(&path, 1 << 20, TABLE).unwrap();
        assert!(matches!(open(&path, 1 << 20, TABLE), Err(redb::Error::DatabaseAlreadyOpen)));
    }

    #[test]
    fn a_new_file_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("private.redb");
        drop(open(&path, 1 << 20, TABLE).unwrap());
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    }
}
