//! How points get into the outbox: encoded as line protocol straight into
//! an outbox record ([`RecordBuf`]) and appended on a blocking thread, with
//! no copy of the lines on the way. [`append_points`] serves backends that
//! are handed [`Point`]s; [`OutboxSink`] lets the `influx` capability encode
//! a guest's points itself, skipping the [`Point`]s altogether.

use std::sync::Arc;

use super::{Outbox, RecordBuf};
use crate::store::line_protocol::encode_point;
use crate::store::{Point, StoreError};

/// A remote backend's outbox as the `influx` capability writes into it
/// (see `TimeSeriesStore::outbox_sink`).
#[derive(Clone)]
pub struct OutboxSink {
    pub outbox: Arc<Outbox>,
    /// `Some(database)` when the database has no unsigned integers
    /// ("InfluxDB 1.x"): such fields are refused at `write`.
    pub no_unsigned: Option<&'static str>,
}

impl OutboxSink {
    /// The error for point `index`'s unsigned field `name`, if the database
    /// cannot store unsigned integers.
    pub fn refuse_unsigned(&self, index: usize, name: &str) -> Option<StoreError> {
        self.no_unsigned.map(|db| {
            StoreError::Invalid(format!(
                "point {index}: field {name:?} is unsigned, which {db} cannot store; write it as an integer"
            ))
        })
    }
}

/// Encodes `points` as line protocol and appends them to `outbox` as one
/// record on a blocking thread; returns once they are durable. Shared by the
/// remote backends' `write`.
pub async fn append_points(outbox: &Arc<Outbox>, points: &[Point]) -> Result<u32, StoreError> {
    let count = u32::try_from(points.len()).map_err(|_| StoreError::Invalid("too many points in one write".into()))?;
    let mut record = RecordBuf::with_capacity(64 * points.len());
    for (i, p) in points.iter().enumerate() {
        encode_point(p, record.lines()).map_err(|e| match e {
            StoreError::Invalid(m) => StoreError::Invalid(format!("point {i}: {m}")),
            other => other,
        })?;
    }
    append_record(outbox, record, count).await
}

/// Appends `record` (holding `points` points) on a blocking thread; returns
/// `points` once the record is durable.
pub async fn append_record(outbox: &Arc<Outbox>, record: RecordBuf, points: u32) -> Result<u32, StoreError> {
    let outbox = outbox.clone();
    crate::store::blocking(move || outbox.append_buf(record, points)).await?;
    Ok(points)
}
