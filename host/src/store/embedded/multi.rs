//! `query-multi` on the embedded store: every measurement in one read
//! path, a series' last rows found by a seek (see `read::scan_each_series`)
//! rather than by walking its history.

use std::collections::BTreeMap;

use super::super::multi::{self, MultiQuery, MultiTable};
use super::{EmbeddedStore, Row, StoreError, wanted_fields};

impl EmbeddedStore {
    /// The rows of `q` (see [`multi`]).
    pub fn query_multi(&self, q: &MultiQuery) -> Result<MultiTable, StoreError> {
        q.check()?;
        let mut rows = Vec::new();
        for (i, m) in q.measurements.iter().enumerate() {
            let index = u32::try_from(i).map_err(|_| StoreError::Invalid("too many measurements".into()))?;
            let single = q.for_measurement(m);
            match q.per_series {
                None => rows.extend(self.query(&single)?.into_iter().map(|r| (index, r))),
                Some(n) => self.scan_each_series(&single, n as usize, &mut |series, block, row| {
                    let fields: BTreeMap<_, _> =
                        wanted_fields(&single, block, row).map(|(k, v)| (k.to_owned(), v.into_value())).collect();
                    if fields.is_empty() {
                        return Ok(false);
                    }
                    let tags = series.tags.iter().cloned().collect();
                    rows.push((index, Row { time: block.time(row), tags, fields }));
                    Ok(true)
                })?,
            }
        }
        Ok(multi::finish(rows, q))
    }
}
