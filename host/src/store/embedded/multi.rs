//! `query-multi` on the embedded store: every measurement in one read
//! path, decoded straight into one table (no row maps), a series' last rows
//! found by a seek (see `read::scan_each_series`) rather than by walking
//! its history.

use super::super::multi::{self, MultiQuery, MultiTable};
use super::super::table::TableBuilder;
use super::block::Block;
use super::read::Series;
use super::{EmbeddedStore, StoreError, Timestamp, wanted_fields};

impl EmbeddedStore {
    /// The rows of `q` (see [`multi`]).
    pub fn query_multi(&self, q: &MultiQuery) -> Result<MultiTable, StoreError> {
        q.check()?;
        let mut table = TableBuilder::default();
        let mut keys: Vec<(Timestamp, u32)> = Vec::new();
        for (i, m) in q.measurements.iter().enumerate() {
            let index = u32::try_from(i).map_err(|_| StoreError::Invalid("too many measurements".into()))?;
            let single = q.for_measurement(m);
            let mut visit = |series: &Series, block: Block<'_>, row: usize| {
                if wanted_fields(&single, block, row).next().is_none() {
                    return Ok(false);
                }
                table.push(block.time(row), series.tag_pairs(), wanted_fields(&single, block, row));
                keys.push((block.time(row), index));
                Ok(true)
            };
            match q.per_series {
                None => self.scan(&single, &mut visit)?,
                Some(n) => self.scan_each_series(&single, n as usize, &mut visit)?,
            }
        }
        Ok(multi::ordered(table.finish(), &keys, q))
    }
}
