//! The `state` capability: a small per-guest key-value store in one redb file
//! under `state_dir`, durable across restarts and hot swaps.

use std::path::Path;
use std::sync::Arc;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use crate::bindings::state::{self as wit, StateError};

/// (guest, key) → value.
const TABLE: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("guest_state");
/// Longest key.
pub const MAX_KEY: usize = 256;
/// Largest value.
pub const MAX_VALUE: usize = 64 << 10;
/// Most bytes (keys + values) one guest may hold.
pub const MAX_TOTAL: usize = 1 << 20;

/// The file behind every guest's state.
pub struct StateStore {
    db: Database,
}

impl StateStore {
    /// Opens or creates the state file.
    pub fn open(path: &Path) -> Result<StateStore, String> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        // Guests hold at most 1 MiB each: a small cache (redb's default is 1 GiB).
        // The table is created with the file, so read transactions never see it missing.
        let db = crate::redb_file::open(path, 4 << 20, TABLE)
            .map_err(|e| format!("{}: cannot open state file: {e}", path.display()))?;
        Ok(StateStore { db })
    }

    /// The value of `key` for `guest`.
    pub fn get(&self, guest: &str, key: &str) -> Result<Option<Vec<u8>>, String> {
        let txn = self.db.begin_read().map_err(|e| e.to_string())?;
        let table = txn.open_table(TABLE).map_err(|e| e.to_string())?;
        Ok(table.get((guest, key)).map_err(|e| e.to_string())?.map(|v| v.value().to_vec()))
    }

    /// Every (key, size) of `guest`.
    pub fn entries(&self, guest: &str) -> Result<Vec<(String, usize)>, String> {
        let txn = self.db.begin_read().map_err(|e| e.to_string())?;
        let table = txn.open_table(TABLE).map_err(|e| e.to_string())?;
        entries_in(&table, guest)
    }

    /// Stores or (with `None`) deletes `key`, checking the guest's limits.
    /// The total is counted in the write transaction itself (redb has one
    /// writer at a time), so two concurrent puts cannot both squeeze in.
    pub fn put(&self, guest: &str, key: &str, value: Option<&[u8]>) -> Result<(), StateError> {
        if let Some(value) = value {
            check_sizes(key, value)?;
        }
        let io = |e: String| StateError::Io(e);
        let txn = self.db.begin_write().map_err(|e| io(e.to_string()))?;
        {
            let mut table = txn.open_table(TABLE).map_err(|e| io(e.to_string()))?;
            if let Some(value) = value {
                let others: usize =
                    entries_in(&table, guest).map_err(io)?.into_iter().filter(|(k, _)| k != key).map(|(_, n)| n).sum();
                if others + key.len() + value.len() > MAX_TOTAL {
                    return Err(StateError::TooLarge(format!(
                        "a guest's state is limited to {MAX_TOTAL} bytes in all"
                    )));
                }
            }
            match value {
                Some(v) => table.insert((guest, key), v).map(drop),
                None => table.remove((guest, key)).map(drop),
            }
            .map_err(|e| io(e.to_string()))?;
        }
        txn.commit().map_err(|e| io(e.to_string()))
    }
}

/// Every (key, size) of `guest` in `table`.
fn entries_in(
    table: &impl ReadableTable<(&'static str, &'static str), &'static [u8]>,
    guest: &str,
) -> Result<Vec<(String, usize)>, String> {
    let range = table.range((guest, "")..).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    for item in range {
        let (k, v) = item.map_err(|e| e.to_string())?;
        let (g, key) = k.value();
        if g != guest {
            break;
        }
        out.push((key.to_string(), key.len() + v.value().len()));
    }
    Ok(out)
}

fn check_sizes(key: &str, value: &[u8]) -> Result<(), StateError> {
    if key.is_empty() || key.len() > MAX_KEY {
        return Err(StateError::TooLarge(format!("state keys must be 1-{MAX_KEY} bytes")));
    }
    if value.len() > MAX_VALUE {
        return Err(StateError::TooLarge(format!(
            "state values are limited to {MAX_VALUE} bytes, got {}",
            value.len()
        )));
    }
    Ok(())
}

/// One guest's view of the state store.
pub struct StateCap {
    guest: Arc<str>,
    store: Arc<StateStore>,
}

impl StateCap {
    pub fn new(guest: Arc<str>, store: Arc<StateStore>) -> StateCap {
        StateCap { guest, store }
    }

    /// [`StateStore::put`] on the blocking pool: each commit fsyncs, and a
    /// guest calling `set` in a loop must not hold an async worker (of two
    /// on a board) through every one of those waits.
    async fn put_off_the_workers(&self, key: String, value: Option<Vec<u8>>) -> Result<(), StateError> {
        let (store, guest) = (self.store.clone(), self.guest.clone());
        crate::blocking::spawn_blocking(move || store.put(&guest, &key, value.as_deref()))
            .await
            .map_err(|e| StateError::Io(format!("state task failed: {e}")))?
    }
}

impl wit::Host for super::GuestCtx {
    fn get(&mut self, key: String) -> Option<Vec<u8>> {
        match self.state.store.get(&self.state.guest, &key) {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(guest = %self.state.guest, error = %crate::guest_text::shown(&e), "state read failed");
                None
            }
        }
    }

    async fn set(&mut self, key: String, value: Vec<u8>) -> Result<(), StateError> {
        self.state.put_off_the_workers(key, Some(value)).await
    }

    async fn delete(&mut self, key: String) -> Result<(), StateError> {
        self.state.put_off_the_workers(key, None).await
    }

    fn keys(&mut self) -> Vec<String> {
        self.state.store.entries(&self.state.guest).map(|e| e.into_iter().map(|(k, _)| k).collect()).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_on_keys_values_and_a_guest_s_total() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(&dir.path().join("state.redb")).unwrap();
        let big = vec![7u8; MAX_VALUE];
        assert!(matches!(store.put("g", "", Some(b"x")), Err(StateError::TooLarge(_))));
        assert!(matches!(store.put("g", "k", Some(&vec![0; MAX_VALUE + 1])), Err(StateError::TooLarge(_))));
        let fits = MAX_TOTAL / (MAX_VALUE + 3);
        for i in 0..fits {
            store.put("g", &format!("k{i:02}"), Some(&big)).unwrap();
        }
        let err = store.put("g", "one-more", Some(&big)).expect_err("over the total");
        assert!(matches!(&err, StateError::TooLarge(m) if m.contains("in all")), "{err:?}");
        store.put("g", "k00", Some(&big)).expect("replacing a key counts its new size only");
        store.put("other", "k", Some(&big)).expect("another guest has its own total");
        store.put("g", "k00", None).unwrap();
        store.put("g", "one-more", Some(&big)).expect("room again after a delete");
    }

    /// A commit that waits (here on redb's writer lock, as a slow fsync
    /// would) leaves the async worker free: the runtime has one thread, and
    /// its timer still fires while the `set` is parked.
    #[test]
    fn set_and_delete_commit_off_the_async_workers() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(StateStore::open(&dir.path().join("state.redb")).unwrap());
        let (done, finished) = std::sync::mpsc::channel();
        let probe = store.clone();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
            let outcome = runtime.block_on(async move {
                let held = probe.db.begin_write().unwrap();
                let cap = StateCap::new("g".into(), probe.clone());
                let set = tokio::spawn(async move {
                    cap.put_off_the_workers("k".into(), Some(b"v".to_vec())).await?;
                    cap.put_off_the_workers("gone".into(), None).await
                });
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                let waiting = !set.is_finished();
                drop(held);
                (waiting, set.await.unwrap())
            });
            let _ = done.send(outcome);
        });
        let (waiting, result) = finished
            .recv_timeout(std::time::Duration::from_secs(20))
            .expect("the runtime's only worker was blocked by the commit");
        assert!(waiting, "the set waited for the writer lock");
        result.unwrap();
        assert_eq!(store.get("g", "k").unwrap().as_deref(), Some(&b"v"[..]));
    }
}
