//! Retention: deleting the points older than `influx.retention`. Blocks
//! wholly before the cutoff are removed unread; the one block that may
//! straddle it in each series is rewritten without its expired rows.

use redb::ReadableTable;

use super::block::{Block, BlockWriter, Layout, row_count};
use super::keys::block_key;
use super::write::SeriesWriter;
use super::{BLOCKS, EmbeddedStore, StoreError, Timestamp, retention_cutoff};

type BlocksTable<'txn> = redb::Table<'txn, &'static [u8], &'static [u8]>;

impl EmbeddedStore {
    /// Deletes every point older than `now - retention` (time strictly less
    /// than the cutoff); returns how many were deleted. A no-op returning 0
    /// when the store has no retention.
    pub fn purge_expired(&self, now: Timestamp) -> Result<u64, StoreError> {
        let Some(retention) = self.retention else {
            return Ok(0);
        };
        let cutoff = retention_cutoff(retention, now);
        let txn = self.db.begin_write().map_err(self.err("begin purge"))?;
        let mut deleted = 0u64;
        {
            let mut table = txn.open_table(BLOCKS).map_err(self.err("open blocks"))?;
            for name in self.measurements(&table)? {
                for series in self.series_of(&table, &name)? {
                    deleted += self.purge_series(&mut table, &series.prefix, cutoff)?;
                }
            }
        }
        txn.commit().map_err(self.err("commit purge"))?;
        Ok(deleted)
    }

    /// Deletes the rows of one series before `cutoff`; returns how many.
    /// Of the blocks starting before the cutoff, all but the last end
    /// before the next one starts, so before the cutoff too.
    fn purge_series(&self, table: &mut BlocksTable<'_>, prefix: &[u8], cutoff: Timestamp) -> Result<u64, StoreError> {
        let (first, cut) = (block_key(prefix, Timestamp::MIN), block_key(prefix, cutoff));
        let mut expired = Vec::new();
        for entry in table.range::<&[u8]>(first.as_slice()..cut.as_slice()).map_err(self.err("purge range"))? {
            let (key, value) = entry.map_err(self.err("purge range"))?;
            expired.push((key.value().to_vec(), row_count(value.value()).map_err(|e| self.corrupt(e))?));
        }
        let Some((straddling, _)) = expired.pop() else { return Ok(0) };
        let mut deleted = 0;
        for (key, rows) in expired {
            table.remove(key.as_slice()).map_err(self.err("purge block"))?;
            deleted += rows as u64;
        }
        let bytes = match table.remove(straddling.as_slice()).map_err(self.err("purge block"))? {
            Some(old) => old.value().to_vec(),
            None => return Ok(deleted),
        };
        let layout = Layout::parse(&bytes).map_err(|e| self.corrupt(e))?;
        let block = Block::new(&bytes, &layout);
        let keep_from = block.row_at_or_after(cutoff);
        let mut writer = BlockWriter::default();
        (keep_from..block.rows()).for_each(|row| writer.push(block.time(row), block.fields(row)));
        SeriesWriter { store: self, table, prefix }.flush(&mut writer, &mut Vec::new())?;
        Ok(deleted + keep_from as u64)
    }
}
