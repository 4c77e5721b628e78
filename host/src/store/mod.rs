//! Time-series stores behind one interface: the embedded store (default), and
//! InfluxDB's v1 HTTP API behind a crash-safe outbox (`influx_v1`, `outbox`,
//! `forwarder`, `influxql`), and InfluxDB's v2 API (`influx_v2`, `flux`;
//! cargo feature `influx-v2`) behind the same outbox. The guest-facing `influx`
//! capability translates WIT types into these and enforces grants; stores only
//! store.
//!
//! A point flows one way: guest → `influx` capability (grants, widths) →
//! [`TimeSeriesStore`] → the embedded store, or a remote backend that
//! checks and encodes it once into its outbox (`remote`), which the
//! forwarder delivers. Each store reports a typed [`StoreStatus`]
//! (`status`) that the admin API, `/metrics` and the status page render.

pub mod embedded;
#[cfg(feature = "influx-v2")]
pub mod flux;
pub mod forwarder;
pub mod influx_v1;
#[cfg(feature = "influx-v2")]
pub mod influx_v2;
pub mod influxql;
pub mod line_protocol;
pub mod multi;
pub mod outbox;
mod remote;
pub mod status;
pub mod table;

use std::collections::BTreeMap;

pub use status::{OutboxStatus, StoreStatus};
use table::{Table, TableBuilder};

use crate::metrics::Writer;

/// Nanoseconds since the Unix epoch.
pub type Timestamp = i64;

/// Most fields one point may have; a point with more is refused as
/// invalid by every write path. InfluxDB sets no such limit, but each field
/// costs the host work and memory per point, and the embedded store's
/// blocks count their columns in 16 bits (see `embedded::block`).
pub const MAX_POINT_FIELDS: usize = 1024;
/// Most tags one point may have (each is part of its series key).
pub const MAX_POINT_TAGS: usize = 256;
/// Most bytes one query's answer may hold, counted as its strings' lengths
/// plus 8 bytes per time and per value: the host builds the whole answer
/// (outside any guest's memory limit) before handing it over, so it is
/// bounded in bytes as well as in rows. A remote backend reads at most this
/// much of InfluxDB's answer.
pub const MAX_QUERY_BYTES: usize = 16 << 20;

/// Refuses a point with more than [`MAX_POINT_TAGS`] tags or
/// [`MAX_POINT_FIELDS`] fields; the message names the limit.
pub fn check_point_width(tags: usize, fields: usize) -> Result<(), String> {
    if fields > MAX_POINT_FIELDS {
        return Err(format!("the point has {fields} fields, more than the {MAX_POINT_FIELDS} a point may have"));
    }
    if tags > MAX_POINT_TAGS {
        return Err(format!("the point has {tags} tags, more than the {MAX_POINT_TAGS} a point may have"));
    }
    Ok(())
}

/// The error of an answer that grew past `max` bytes ([`MAX_QUERY_BYTES`]).
pub fn answer_too_large(max: usize) -> StoreError {
    StoreError::Invalid(format!(
        "the query's answer is larger than {max} bytes, more than a guest may take at once; \
         narrow its time range or fields, or set a limit and query the rest in pages"
    ))
}

/// A field value; the variant is the field's type in the database.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum FieldValue {
    Float(f64),
    Integer(i64),
    Unsigned(u64),
    Boolean(bool),
    Text(String),
}

/// One point. Tags are kept sorted so a series has one canonical key.
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    pub measurement: String,
    pub tags: BTreeMap<String, String>,
    pub fields: BTreeMap<String, FieldValue>,
    pub time: Timestamp,
}

/// A point whose tag keys and field keys are each strictly ascending (so no
/// key repeats): the order a [`Point`]'s maps would give them. The `influx`
/// capability builds these from a guest's points by moving their strings,
/// where a [`Point`] costs two maps per point; stores take them through
/// [`TimeSeriesStore::write_sorted`].
#[derive(Debug, Clone, PartialEq)]
pub struct SortedPoint {
    pub measurement: String,
    pub tags: Vec<(String, String)>,
    pub fields: Vec<(String, FieldValue)>,
    pub time: Timestamp,
}

impl SortedPoint {
    /// Whether the keys keep the invariant (strictly ascending).
    pub fn is_sorted(&self) -> bool {
        self.tags.windows(2).all(|w| w[0].0 < w[1].0) && self.fields.windows(2).all(|w| w[0].0 < w[1].0)
    }

    /// The same point with maps (for a repeated key, the last value wins).
    pub fn into_point(self) -> Point {
        Point {
            measurement: self.measurement,
            tags: self.tags.into_iter().collect(),
            fields: self.fields.into_iter().collect(),
            time: self.time,
        }
    }
}

/// Which rows of the matching range a query returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Selector {
    #[default]
    All,
    First,
    Last,
}

/// A structured query over one measurement (see `wit/influx.wit`).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Query {
    pub measurement: String,
    /// Empty: every field.
    pub fields: Vec<String>,
    /// All must match exactly.
    pub tags: BTreeMap<String, String>,
    /// Inclusive.
    pub start: Option<Timestamp>,
    /// Exclusive.
    pub end: Option<Timestamp>,
    pub select: Selector,
    pub descending: bool,
    pub limit: Option<u32>,
}

/// One stored point as a query returns it.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub time: Timestamp,
    pub tags: BTreeMap<String, String>,
    pub fields: BTreeMap<String, FieldValue>,
}

impl Row {
    /// Its size as [`MAX_QUERY_BYTES`] counts it: keys and strings by
    /// length, 8 bytes per time and per value.
    pub fn bytes(&self) -> usize {
        let tags: usize = self.tags.iter().map(|(k, v)| k.len() + v.len()).sum();
        let fields: usize = self.fields.iter().map(|(k, v)| k.len() + v.bytes()).sum();
        8 + tags + fields
    }
}

impl FieldValue {
    /// 8 bytes, or a text's length (at least 8).
    pub fn bytes(&self) -> usize {
        match self {
            FieldValue::Text(s) => s.len().max(8),
            _ => 8,
        }
    }
}

/// One numeric field of a query's rows as two parallel columns (see
/// [`TimeSeriesStore::query_floats`]): `values[i]` was stored at `times[i]`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct FloatSeries {
    pub times: Vec<Timestamp>,
    pub values: Vec<f64>,
}

impl FloatSeries {
    /// Appends `value` at `time` when it is numeric (integers convert with
    /// `as f64`); booleans and text are skipped.
    pub fn push_numeric(&mut self, time: Timestamp, value: &FieldValue) {
        let number = match value {
            FieldValue::Float(f) => *f,
            FieldValue::Integer(i) => *i as f64,
            FieldValue::Unsigned(u) => *u as f64,
            FieldValue::Boolean(_) | FieldValue::Text(_) => return,
        };
        self.times.push(time);
        self.values.push(number);
    }

    /// The numeric values of `field` in `rows`, in row order.
    pub fn from_rows(rows: &[Row], field: &str) -> FloatSeries {
        let mut series = FloatSeries::default();
        for row in rows {
            if let Some(value) = row.fields.get(field) {
                series.push_numeric(row.time, value);
            }
        }
        series
    }
}

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The request is malformed (empty measurement, point without fields, ...).
    #[error("invalid: {0}")]
    Invalid(String),
    /// The store could not complete the operation (I/O, corrupt file, backend down).
    #[error("store unavailable: {0}")]
    Unavailable(String),
}

/// A boxed future, so stores can sit behind `dyn`.
pub type StoreFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// The interface every backend implements. `write` returns once the points
/// are durable (stored, or in the outbox of a remote backend).
pub trait TimeSeriesStore: Send + Sync + 'static {
    /// Stores points; returns how many were accepted.
    fn write(&self, points: Vec<Point>) -> StoreFuture<'_, u32>;
    /// [`write`](Self::write) for points with keys in order (what the
    /// `influx` capability hands over). The default builds [`Point`]s; the
    /// embedded store stores them as they are, a remote backend encodes
    /// them into its outbox as they are.
    fn write_sorted(&self, points: Vec<SortedPoint>) -> StoreFuture<'_, u32> {
        self.write(points.into_iter().map(SortedPoint::into_point).collect())
    }
    /// Runs a structured query.
    fn query(&self, query: Query) -> StoreFuture<'_, Vec<Row>>;
    /// The numeric values of `field` in the rows `query` returns for
    /// `query` with `fields = [field]`, as columns (booleans and text are
    /// skipped). The default runs `query`, so every backend answers it;
    /// the embedded store overrides it to decode only the time and that
    /// field of each row, which is what makes the correlator's 100k-reading
    /// scans cheap.
    fn query_floats(&self, mut query: Query, field: String) -> StoreFuture<'_, FloatSeries> {
        Box::pin(async move {
            query.fields = vec![field.clone()];
            let rows = self.query(query).await?;
            Ok(FloatSeries::from_rows(&rows, &field))
        })
    }
    /// The rows `query` returns, as a [`Table`]. The default builds it from
    /// `query`'s rows; the embedded store decodes into it directly.
    fn query_table(&self, query: Query) -> StoreFuture<'_, Table> {
        Box::pin(async move {
            let mut table = TableBuilder::default();
            for row in self.query(query).await? {
                table.push_row(&row);
                table.check_bounds(MAX_QUERY_BYTES)?;
            }
            Ok(table.finish())
        })
    }
    /// The rows of several measurements (see [`multi`]). The default runs
    /// [`query`](Self::query) once per measurement; InfluxDB 1.x answers
    /// it in one request, the embedded store in one read transaction.
    fn query_multi(&self, query: multi::MultiQuery) -> StoreFuture<'_, multi::MultiTable> {
        Box::pin(multi::by_measurement(self, query))
    }
    /// Writes each row of `rows` as a point of `measurement`. The default
    /// builds [`Point`]s; the embedded store writes the rows as they are,
    /// a remote backend encodes them into its outbox from the columns.
    fn write_table(&self, measurement: String, rows: Table) -> StoreFuture<'_, u32> {
        Box::pin(async move {
            let points = rows.to_points(&measurement).map_err(StoreError::Invalid)?;
            self.write(points).await
        })
    }
    /// A short name for logs and the status page (`embedded`, `influxdb-v1`).
    fn kind(&self) -> &'static str;
    /// What the store says about itself (kind; outbox and link of a remote
    /// backend): what `/api/store`, `/metrics` and the status page show.
    fn status(&self) -> StoreStatus {
        StoreStatus::local(self.kind())
    }
    /// Writes the backend's counters (outbox and forwarding); nothing for
    /// stores without such state.
    fn write_counters(&self, _w: &mut Writer) {}
    /// The store's Prometheus lines for the admin `/metrics`: its
    /// [`status`](Self::status) as gauges, then its counters.
    fn metrics(&self) -> String {
        let mut w = Writer::default();
        self.status().write_metrics(&mut w);
        self.write_counters(&mut w);
        w.finish()
    }
    /// Stops the store's background work (a remote backend's forwarder)
    /// and waits for it, so that once the store is dropped its files are
    /// free at once; what is still queued stays on disk for the next start.
    fn close(&self) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>> {
        Box::pin(async {})
    }
}

/// The embedded store behind the async interface: redb calls run on the
/// blocking pool so fsyncs never stall the scheduler.
pub struct EmbeddedBackend {
    inner: std::sync::Arc<embedded::EmbeddedStore>,
}

impl EmbeddedBackend {
    /// Opens (or creates) the store file and starts its retention task.
    pub fn open(path: &std::path::Path, retention: Option<std::time::Duration>) -> Result<EmbeddedBackend, StoreError> {
        let inner = std::sync::Arc::new(embedded::EmbeddedStore::open(path, retention)?);
        if retention.is_some() {
            let store = std::sync::Arc::downgrade(&inner);
            tokio::spawn(async move {
                let mut every = tokio::time::interval(std::time::Duration::from_secs(3600));
                loop {
                    every.tick().await;
                    let Some(store) = store.upgrade() else { break };
                    let now = now_ns();
                    match blocking(move || store.purge_expired(now)).await {
                        Ok(n) if n > 0 => tracing::info!(purged = n, "embedded store retention"),
                        Err(e) => tracing::warn!(error = %e, "embedded store retention failed"),
                        Ok(_) => {}
                    }
                }
            });
        }
        Ok(EmbeddedBackend { inner })
    }

    /// The underlying synchronous store (for tools and tests).
    pub fn store(&self) -> &embedded::EmbeddedStore {
        &self.inner
    }
}

impl TimeSeriesStore for EmbeddedBackend {
    fn write(&self, points: Vec<Point>) -> StoreFuture<'_, u32> {
        let inner = self.inner.clone();
        Box::pin(async move { blocking(move || inner.write(&points)).await })
    }

    fn write_sorted(&self, points: Vec<SortedPoint>) -> StoreFuture<'_, u32> {
        let inner = self.inner.clone();
        Box::pin(async move { blocking(move || inner.write_sorted(&points)).await })
    }

    fn query(&self, query: Query) -> StoreFuture<'_, Vec<Row>> {
        let inner = self.inner.clone();
        Box::pin(async move { blocking(move || inner.query_within(&query, MAX_QUERY_BYTES)).await })
    }

    fn query_floats(&self, query: Query, field: String) -> StoreFuture<'_, FloatSeries> {
        let inner = self.inner.clone();
        Box::pin(async move { blocking(move || inner.query_floats(&query, &field)).await })
    }

    fn query_table(&self, query: Query) -> StoreFuture<'_, Table> {
        let inner = self.inner.clone();
        Box::pin(async move { blocking(move || inner.query_table_within(&query, MAX_QUERY_BYTES)).await })
    }

    fn query_multi(&self, query: multi::MultiQuery) -> StoreFuture<'_, multi::MultiTable> {
        let inner = self.inner.clone();
        Box::pin(async move { blocking(move || inner.query_multi(&query)).await })
    }

    fn write_table(&self, measurement: String, rows: Table) -> StoreFuture<'_, u32> {
        let inner = self.inner.clone();
        Box::pin(async move {
            blocking(move || {
                let view = rows.view(&measurement).map_err(StoreError::Invalid)?;
                inner.write_table(&view)
            })
            .await
        })
    }

    fn kind(&self) -> &'static str {
        "embedded"
    }

    fn write_counters(&self, w: &mut Writer) {
        let help = "Points written already older than the embedded store's retention (purged within the hour).";
        w.counter("wattedge_store_points_beyond_retention_total", help).value(self.inner.points_beyond_retention());
    }
}

/// Runs a store operation on the blocking pool (see [`crate::blocking`]).
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    crate::blocking::spawn_blocking(f).await.map_err(|e| StoreError::Unavailable(format!("store task failed: {e}")))?
}

/// Now, in nanoseconds since the epoch.
pub fn now_ns() -> Timestamp {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as i64).unwrap_or(0)
}
