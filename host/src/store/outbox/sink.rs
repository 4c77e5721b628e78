//! How a record gets into the outbox: the remote backends encode a write's
//! points as line protocol straight into an outbox record ([`RecordBuf`],
//! see `store::remote`) and [`append_record`] appends it on a blocking
//! thread, with no copy of the lines on the way.

use std::sync::Arc;

use super::{Outbox, RecordBuf};
use crate::store::StoreError;

/// Appends `record` (holding `points` points) on a blocking thread; returns
/// `points` once the record is durable.
pub async fn append_record(outbox: &Arc<Outbox>, record: RecordBuf, points: u32) -> Result<u32, StoreError> {
    let outbox = outbox.clone();
    crate::store::blocking(move || outbox.append_buf(record, points)).await?;
    Ok(points)
}
