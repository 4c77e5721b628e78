//! What the remote backends (InfluxDB v1 and v2) share: the durable outbox
//! their writes go to, and the forwarder task that delivers it to the server
//! through the backend's [`Sink`] until the backend is dropped.
//!
//! Every remote write ends here, whatever shape its points come in
//! ([`Point`]s, [`SortedPoint`](super::SortedPoint)s from the `influx`
//! capability, a table's rows): the points are checked (unsigned fields,
//! for a database without them: the one place that refuses them) and
//! encoded as line protocol once, straight into one outbox record
//! ([`LinePoint`]), then appended and fsynced. The backend's status
//! ([`StoreStatus`]) is read from the outbox and the forwarder here too.

use std::path::Path;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::forwarder::{self, ForwardSettings, ForwarderStats, Sink};
use super::line_protocol::LinePoint;
use super::outbox::{self, Outbox, RecordBuf};
use super::status::{OutboxStatus, StoreStatus, age_seconds};
use super::table::Table;
use super::{StoreError, StoreFuture};
use crate::config::OutboxConfig;
use crate::metrics::Writer;

impl From<&OutboxConfig> for ForwardSettings {
    fn from(outbox: &OutboxConfig) -> ForwardSettings {
        ForwardSettings {
            batch_points: outbox.batch_points,
            flush_interval: outbox.flush_interval,
            retry_max_delay: outbox.retry_max_delay,
        }
    }
}

/// An outbox and the forwarder draining it; dropping it stops the forwarder
/// (what is still queued stays on disk for the next start).
pub(super) struct Forwarded {
    outbox: Arc<Outbox>,
    /// `Some(database)` when the database has no unsigned integers
    /// ("InfluxDB 1.x"): points with an unsigned field are refused.
    no_unsigned: Option<&'static str>,
    stats: Arc<ForwarderStats>,
    stop: CancellationToken,
    task: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Forwarded {
    /// Opens the outbox in `dir` (refusing writes beyond `max_bytes` unsent)
    /// and starts forwarding it to `sink`. Must be called inside a tokio runtime.
    pub(super) fn start(
        dir: &Path,
        max_bytes: u64,
        sink: Arc<dyn Sink>,
        settings: ForwardSettings,
        no_unsigned: Option<&'static str>,
    ) -> Result<Forwarded, StoreError> {
        let outbox = Arc::new(Outbox::open(dir, max_bytes)?);
        let waiting = outbox.depth().points;
        if waiting > 0 {
            tracing::info!(points = waiting, "outbox holds points from before the restart; forwarding them");
        }
        let stop = CancellationToken::new();
        let (stats, task) = forwarder::spawn(outbox.clone(), sink, settings, stop.clone());
        Ok(Forwarded { outbox, no_unsigned, stats, stop, task: std::sync::Mutex::new(Some(task)) })
    }

    /// Stops the forwarder and waits until it has let go of the outbox (its
    /// lock file too), so a host started next in this process can open it.
    pub(super) async fn stop(&self) {
        self.stop.cancel();
        let task = self.task.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }

    pub(super) fn outbox(&self) -> &Arc<Outbox> {
        &self.outbox
    }

    /// Writes `points` (a backend's `write` and `write_sorted`).
    pub(super) fn write<P: LinePoint + Send + 'static>(&self, points: Vec<P>) -> StoreFuture<'_, u32> {
        Box::pin(async move {
            let record = self.encode(points.iter())?;
            self.append(record).await
        })
    }

    /// Writes each row of `rows` as a point of `measurement`, encoded from
    /// the columns (no [`Point`](super::Point) is built).
    pub(super) fn write_table(&self, measurement: String, rows: Table) -> StoreFuture<'_, u32> {
        Box::pin(async move {
            let record = {
                let view = rows.view(&measurement).map_err(StoreError::Invalid)?;
                self.encode(view.rows())?
            };
            self.append(record).await
        })
    }

    /// Checks `points` and encodes them into one record. Unsigned fields
    /// are looked for first, in every point, so a write is refused for one
    /// before any line is encoded.
    fn encode<P: LinePoint>(&self, points: impl ExactSizeIterator<Item = P> + Clone) -> Result<Encoded, StoreError> {
        let count =
            u32::try_from(points.len()).map_err(|_| StoreError::Invalid("too many points in one write".into()))?;
        if let Some(db) = self.no_unsigned {
            for (i, p) in points.clone().enumerate() {
                if let Some(name) = p.unsigned_field() {
                    return Err(StoreError::Invalid(format!(
                        "point {i}: field {name:?} is unsigned, which {db} cannot store; write it as an integer"
                    )));
                }
            }
        }
        let mut record = RecordBuf::with_capacity(64 * points.len());
        for (i, p) in points.enumerate() {
            p.encode_line(record.lines()).map_err(|m| StoreError::Invalid(format!("point {i}: {m}")))?;
        }
        Ok(Encoded { record, count })
    }

    /// Appends an encoded write durably; returns its points once fsynced
    /// (an empty write touches nothing).
    async fn append(&self, encoded: Encoded) -> Result<u32, StoreError> {
        if encoded.count == 0 {
            return Ok(0);
        }
        outbox::append_record(&self.outbox, encoded.record, encoded.count).await
    }

    /// The backend's status: the outbox's depth and age, the forwarder's
    /// view of the database.
    pub(super) fn status(&self, kind: &'static str) -> StoreStatus {
        let depth = self.outbox.depth();
        let outbox = OutboxStatus {
            points: depth.points,
            bytes: depth.bytes,
            oldest_age_seconds: age_seconds(depth.oldest_accepted),
            reachable: self.stats.reachable(),
            last_error: self.stats.last_error(),
        };
        StoreStatus { kind, outbox: Some(outbox) }
    }

    /// The outbox's and the forwarder's counters (the gauges come from
    /// [`Forwarded::status`]).
    pub(super) fn write_counters(&self, w: &mut Writer) {
        self.outbox.write_counters(w);
        self.stats.write_counters(w);
    }
}

/// One write's points, checked and encoded as one outbox record.
struct Encoded {
    record: RecordBuf,
    count: u32,
}

impl Drop for Forwarded {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    use bytes::Bytes;

    use super::*;
    use crate::store::forwarder::{Delivery, SinkFuture};
    use crate::store::table::{Cell, FieldColumn, TagColumn};
    use crate::store::{FieldValue, Point, SortedPoint};

    /// A database that is down until `up` is set, then stores everything.
    #[derive(Default)]
    struct Switch {
        up: AtomicBool,
    }

    impl Sink for Switch {
        fn send(&self, _gzipped: Bytes, _points: u64) -> SinkFuture<'_, Delivery> {
            let up = self.up.load(Ordering::Relaxed);
            Box::pin(async move {
                match up {
                    true => Delivery::Stored,
                    false => Delivery::Retry { message: "connection refused\nby peer".into(), reachable: false },
                }
            })
        }

        fn ping(&self) -> SinkFuture<'_, bool> {
            let up = self.up.load(Ordering::Relaxed);
            Box::pin(async move { up })
        }
    }

    fn settings() -> ForwardSettings {
        ForwardSettings {
            batch_points: 100,
            flush_interval: Duration::from_millis(10),
            retry_max_delay: Duration::from_millis(50),
        }
    }

    fn start(dir: &Path, sink: Arc<Switch>, no_unsigned: Option<&'static str>) -> Forwarded {
        Forwarded::start(dir, 1 << 20, sink, settings(), no_unsigned).unwrap()
    }

    /// Two points, the second with an unsigned field `u` when `unsigned`.
    fn points(unsigned: bool) -> Vec<Point> {
        let value = if unsigned { FieldValue::Unsigned(7) } else { FieldValue::Integer(7) };
        vec![
            Point {
                measurement: "m".into(),
                tags: [("site".to_string(), "a".to_string())].into(),
                fields: [("w".to_string(), FieldValue::Float(1.5))].into(),
                time: 1,
            },
            Point {
                measurement: "m".into(),
                tags: [("site".to_string(), "b".to_string())].into(),
                fields: [("u".to_string(), value), ("w".to_string(), FieldValue::Float(2.0))].into(),
                time: 2,
            },
        ]
    }

    fn sorted(points: &[Point]) -> Vec<SortedPoint> {
        points
            .iter()
            .map(|p| SortedPoint {
                measurement: p.measurement.clone(),
                tags: p.tags.clone().into_iter().collect(),
                fields: p.fields.clone().into_iter().collect(),
                time: p.time,
            })
            .collect()
    }

    /// The same rows as a table (columns deliberately out of key order).
    fn table(unsigned: bool) -> Table {
        let u = if unsigned { Cell::Unsigned(7) } else { Cell::Integer(7) };
        Table {
            times: vec![1, 2],
            strings: vec!["a".into(), "b".into()],
            tags: vec![TagColumn { key: "site".into(), values: vec![Some(0), Some(1)] }],
            fields: vec![
                FieldColumn { key: "w".into(), values: vec![Some(Cell::Float(1.5)), Some(Cell::Float(2.0))] },
                FieldColumn { key: "u".into(), values: vec![None, Some(u)] },
            ],
        }
    }

    fn waiting_lines(forwarded: &Forwarded) -> String {
        let batch = forwarded.outbox().read_batch(100).unwrap().expect("a waiting batch");
        String::from_utf8(batch.lines).unwrap()
    }

    #[tokio::test]
    async fn points_sorted_points_and_tables_encode_the_same_lines() {
        let expected = "m,site=a w=1.5 1\nm,site=b u=7i,w=2 2\n";
        for shape in ["points", "sorted", "table"] {
            let dir = tempfile::tempdir().unwrap();
            let forwarded = start(dir.path(), Arc::new(Switch::default()), Some("InfluxDB 1.x"));
            let written = match shape {
                "points" => forwarded.write(points(false)).await,
                "sorted" => forwarded.write(sorted(&points(false))).await,
                _ => forwarded.write_table("m".into(), table(false)).await,
            };
            assert_eq!(written.unwrap(), 2, "{shape}");
            assert_eq!(waiting_lines(&forwarded), expected, "{shape}");
            forwarded.stop().await;
        }
    }

    #[tokio::test]
    async fn a_database_without_unsigned_refuses_them_in_every_write_shape_and_stores_nothing() {
        let message =
            "invalid: point 1: field \"u\" is unsigned, which InfluxDB 1.x cannot store; write it as an integer";
        for shape in ["points", "sorted", "table"] {
            let dir = tempfile::tempdir().unwrap();
            let forwarded = start(dir.path(), Arc::new(Switch::default()), Some("InfluxDB 1.x"));
            let refused = match shape {
                "points" => forwarded.write(points(true)).await,
                "sorted" => forwarded.write(sorted(&points(true))).await,
                _ => forwarded.write_table("m".into(), table(true)).await,
            };
            assert_eq!(refused.unwrap_err().to_string(), message, "{shape}");
            assert_eq!(forwarded.outbox().depth().points, 0, "{shape}: nothing of a refused write is kept");
            forwarded.stop().await;
        }
    }

    #[tokio::test]
    async fn a_database_with_unsigned_takes_them() {
        let dir = tempfile::tempdir().unwrap();
        let forwarded = start(dir.path(), Arc::new(Switch::default()), None);
        assert_eq!(forwarded.write_table("m".into(), table(true)).await.unwrap(), 2);
        assert!(waiting_lines(&forwarded).contains("u=7u,"));
        forwarded.stop().await;
    }

    #[tokio::test]
    async fn an_invalid_point_names_its_index_and_an_empty_write_touches_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let forwarded = start(dir.path(), Arc::new(Switch::default()), None);
        let mut bad = points(false);
        bad[1].fields.clear();
        let err = forwarded.write(bad).await.unwrap_err().to_string();
        assert_eq!(err, "invalid: point 1: measurement \"m\" has no fields");
        assert_eq!(forwarded.write(Vec::<Point>::new()).await.unwrap(), 0);
        assert_eq!(forwarded.outbox().depth().points, 0);
        forwarded.stop().await;
    }

    /// Polls `status` until `done` holds (at most 10 s).
    async fn until(forwarded: &Forwarded, done: impl Fn(&OutboxStatus) -> bool) -> OutboxStatus {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let status = forwarded.status("influxdb-v1").outbox.expect("a remote store has an outbox");
            if done(&status) {
                return status;
            }
            assert!(std::time::Instant::now() < deadline, "status never got there: {status:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn the_status_shows_what_waits_while_the_database_is_down_and_clears_once_it_is_back() {
        let dir = tempfile::tempdir().unwrap();
        let sink = Arc::new(Switch::default());
        let forwarded = start(dir.path(), sink.clone(), None);
        forwarded.write(points(false)).await.unwrap();
        let down = until(&forwarded, |s| s.last_error.is_some()).await;
        assert_eq!((down.points, down.reachable), (2, false));
        assert!(down.bytes > 0, "{down:?}");
        assert_eq!(down.last_error.as_deref(), Some("connection refused\\nby peer"), "escaped as guest text");
        tokio::time::sleep(Duration::from_millis(20)).await;
        let older = until(&forwarded, |s| s.oldest_age_seconds > down.oldest_age_seconds).await;
        assert_eq!(older.points, 2, "the age rises while the points wait");
        sink.up.store(true, Ordering::Relaxed);
        let back = until(&forwarded, |s| s.points == 0).await;
        let expected = OutboxStatus { points: 0, bytes: 0, oldest_age_seconds: 0.0, reachable: true, last_error: None };
        assert_eq!(back, expected);
        forwarded.stop().await;
    }
}
