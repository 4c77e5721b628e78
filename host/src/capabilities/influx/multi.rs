//! `query-multi`: the `influx` capability for several measurements at once
//! (see `store::multi`). Every measurement must be granted; the whole query
//! counts as one query, and its answer is capped like `query-table`'s.

use crate::bindings::influx::{self as wit, InfluxError};
use crate::store::multi::{MultiQuery, MultiTable};

use super::table::table_to_wit;
use super::{InfluxCap, MAX_QUERY_ROWS, finish_query};

impl InfluxCap {
    /// The rows of `q`, at most [`MAX_QUERY_ROWS`] of them.
    pub(super) async fn query_multi(
        &self,
        q: wit::MultiQuery,
        shared: &crate::capabilities::GuestShared,
    ) -> Result<wit::MultiTable, InfluxError> {
        let metrics = &shared.influx;
        if q.measurements.is_empty() {
            return Err(InfluxError::Invalid("a multi-query names no measurement".into()));
        }
        // A denied measurement refuses the query before anything is read;
        // `check_read` counts it once: as denied when one measurement is.
        let denied = q.measurements.iter().find(|m| !self.read_grants.contains(*m));
        self.check_read(denied.unwrap_or(&q.measurements[0]), shared)?;
        let began = std::time::Instant::now();
        let answer = self.store.query_multi(capped(multi_from_wit(q))).await;
        let table = finish_query(metrics, began, answer, |t: &MultiTable| t.rows.len(), MAX_QUERY_ROWS)?;
        Ok(wit::MultiTable { measurement: table.measurement, rows: table_to_wit(table.rows) })
    }
}

/// `q` asking for at most one row more than [`MAX_QUERY_ROWS`], to tell
/// "exactly the cap" from "more".
fn capped(mut q: MultiQuery) -> MultiQuery {
    q.limit = Some(q.limit.map_or(MAX_QUERY_ROWS + 1, |limit| limit.min(MAX_QUERY_ROWS + 1)));
    q
}

fn multi_from_wit(q: wit::MultiQuery) -> MultiQuery {
    MultiQuery {
        measurements: q.measurements,
        fields: q.fields,
        tags: q.tags.into_iter().map(|t| (t.key, t.value)).collect(),
        start: q.start,
        end: q.end,
        per_series: q.per_series,
        descending: q.descending,
        limit: q.limit,
    }
}
