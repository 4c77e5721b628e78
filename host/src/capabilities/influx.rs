//! The `influx` capability: guests write and query time series through the
//! configured store, only for the measurements their grants name. Every
//! point a guest writes carries the host's `[host] tags`: a guest's tag of
//! the same key is replaced by the host's value.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use super::add_elapsed;
use super::denials::warn_denied;
use crate::bindings::influx::{self as wit, InfluxError};
use crate::bindings::types::{FieldValue as WitField, Point as WitPoint};
use crate::config::Grants;
use crate::guest_text::shown;
use crate::store::{FieldValue, Point, Query, Row, Selector, SortedPoint, StoreError, TimeSeriesStore};

mod multi;
mod table;

/// Most rows one `query` hands a guest. The host builds the whole answer
/// before copying it into the guest, outside the guest's memory limit, at
/// several hundred bytes a row: this keeps it to tens of MiB on a board.
pub const MAX_QUERY_ROWS: u32 = 100_000;
/// Most readings one `query-floats` hands a guest (16 bytes each).
pub const MAX_QUERY_FLOATS: u32 = 1_000_000;

/// Per-guest store counters, shown in `/metrics`.
#[derive(Default)]
pub struct InfluxMetrics {
    pub points_written: AtomicU64,
    pub writes_denied: AtomicU64,
    pub queries: AtomicU64,
    pub queries_denied: AtomicU64,
    pub errors: AtomicU64,
    /// Nanoseconds the guest's queries spent waiting on the store (not
    /// counting the copy of the answer into the guest), so `/metrics` shows
    /// how much of a run is the store's.
    pub query_nanos: AtomicU64,
    /// Nanoseconds the guest's writes spent until the store or the outbox
    /// held the points.
    pub write_nanos: AtomicU64,
    /// The latest point of each measurement the guest wrote (for the status page).
    pub latest: std::sync::Mutex<BTreeMap<String, Point>>,
}

/// One guest's view of the store.
pub struct InfluxCap {
    guest: Arc<str>,
    store: Arc<dyn TimeSeriesStore>,
    write_grants: HashSet<String>,
    read_grants: HashSet<String>,
    /// `[host] tags`, keys ascending.
    host_tags: Arc<[(String, String)]>,
}

impl InfluxCap {
    pub fn new(
        guest: Arc<str>,
        grants: &Grants,
        store: Arc<dyn TimeSeriesStore>,
        host_tags: Arc<[(String, String)]>,
    ) -> InfluxCap {
        InfluxCap {
            guest,
            store,
            write_grants: grants.influx_write.iter().cloned().collect(),
            read_grants: grants.influx_read.iter().cloned().collect(),
            host_tags,
        }
    }

    /// Checks the measurements of a write against the write grants and
    /// counts a refused write (`write` and `write-table` alike).
    fn check_write<'m>(
        &self,
        measurements: impl Iterator<Item = &'m str>,
        shared: &super::GuestShared,
    ) -> Result<(), InfluxError> {
        // Points of one write mostly share a measurement: hash it once.
        let mut granted: Option<&str> = None;
        let mut denied = measurements.filter(|&m| {
            if granted == Some(m) {
                return false;
            }
            let ok = self.write_grants.contains(m);
            granted = ok.then_some(m).or(granted);
            !ok
        });
        match denied.next() {
            None => Ok(()),
            Some(m) => {
                shared.influx.writes_denied.fetch_add(1, Ordering::Relaxed);
                warn_denied!(shared.denials, self.guest, measurement = %shown(m), "influx write denied: measurement not granted");
                Err(InfluxError::Denied(format!(
                    "measurement {m:?} is not in grants.influx_write of guest {}",
                    self.guest
                )))
            }
        }
    }

    /// Checks a query of `measurement` against the read grants and counts it
    /// (`query`, `query-table` and `query-floats` alike) as a query or a
    /// denied query.
    fn check_read(&self, measurement: &str, shared: &super::GuestShared) -> Result<(), InfluxError> {
        let metrics = &shared.influx;
        if !self.read_grants.contains(measurement) {
            metrics.queries_denied.fetch_add(1, Ordering::Relaxed);
            warn_denied!(shared.denials, self.guest, measurement = %shown(measurement), "influx query denied: measurement not granted");
            return Err(InfluxError::Denied(format!(
                "measurement {measurement:?} is not in grants.influx_read of guest {}",
                self.guest
            )));
        }
        metrics.queries.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

impl wit::Host for super::GuestCtx {
    async fn write(&mut self, mut points: Vec<WitPoint>) -> Result<u32, InfluxError> {
        let metrics = &self.shared.influx;
        self.influx.check_write(points.iter().map(|p| p.measurement.as_str()), &self.shared)?;
        if !self.influx.host_tags.is_empty() {
            points.iter_mut().for_each(|p| set_host_tags(&mut p.tags, &self.influx.host_tags));
        }
        check_widths(&points, metrics)?;
        let began = Instant::now();
        let latest: Vec<Point> = latest_per_measurement(&points);
        // Stores take keys in order: sorted here, once, in place.
        points.iter_mut().for_each(sort_keys);
        let written = write_to_store(self.influx.store.as_ref(), points).await;
        add_elapsed(&metrics.write_nanos, began);
        record_write(metrics, written.map(|n| (n, latest)))
    }

    async fn write_table(&mut self, measurement: String, rows: wit::Table) -> Result<u32, InfluxError> {
        let metrics = &self.shared.influx;
        self.influx.check_write(std::iter::once(measurement.as_str()), &self.shared)?;
        let began = Instant::now();
        let written = self.influx.write_table(measurement, rows).await;
        add_elapsed(&metrics.write_nanos, began);
        record_write(metrics, written.map(|(n, latest)| (n, latest.into_iter().collect())))
    }

    async fn query_table(&mut self, q: wit::SeriesQuery) -> Result<wit::Table, InfluxError> {
        self.influx.check_read(&q.measurement, &self.shared)?;
        self.influx.query_table(q, &self.shared.influx).await
    }

    async fn query_multi(&mut self, q: wit::MultiQuery) -> Result<wit::MultiTable, InfluxError> {
        self.influx.query_multi(q, &self.shared).await
    }

    async fn query(&mut self, q: wit::SeriesQuery) -> Result<Vec<wit::Row>, InfluxError> {
        let metrics = &self.shared.influx;
        self.influx.check_read(&q.measurement, &self.shared)?;
        let began = Instant::now();
        let answer = self.influx.store.query(capped(query_from_wit(q), MAX_QUERY_ROWS)).await;
        let rows = finish_query(metrics, began, answer, Vec::len, MAX_QUERY_ROWS)?;
        Ok(rows.into_iter().map(row_to_wit).collect())
    }

    async fn query_floats(&mut self, q: wit::SeriesQuery, field: String) -> Result<wit::FloatSeries, InfluxError> {
        let metrics = &self.shared.influx;
        self.influx.check_read(&q.measurement, &self.shared)?;
        let began = Instant::now();
        let answer = self.influx.store.query_floats(capped(query_from_wit(q), MAX_QUERY_FLOATS), field).await;
        let series = finish_query(metrics, began, answer, |s| s.times.len(), MAX_QUERY_FLOATS)?;
        Ok(wit::FloatSeries { times: series.times, values: series.values })
    }
}

/// Ends a query that began at `began`: counts its time and, when the store
/// failed or the answer holds more than `max` rows (as `rows` counts them),
/// its error.
fn finish_query<T>(
    metrics: &InfluxMetrics,
    began: Instant,
    answer: Result<T, StoreError>,
    rows: impl Fn(&T) -> usize,
    max: u32,
) -> Result<T, InfluxError> {
    add_elapsed(&metrics.query_nanos, began);
    answer.and_then(|a| within(rows(&a), max).map(|()| a)).map_err(|e| {
        metrics.errors.fetch_add(1, Ordering::Relaxed);
        store_error(e)
    })
}

/// Counts a finished write (`Ok` holds the points written and the latest
/// point of each measurement, for the status page) and maps its error.
fn record_write(metrics: &InfluxMetrics, written: Result<(u32, Vec<Point>), StoreError>) -> Result<u32, InfluxError> {
    match written {
        Ok((n, latest)) => {
            metrics.points_written.fetch_add(u64::from(n), Ordering::Relaxed);
            let mut map = metrics.latest.lock().unwrap_or_else(|e| e.into_inner());
            for p in latest {
                map.insert(p.measurement.clone(), bounded_latest(p));
            }
            Ok(n)
        }
        Err(e) => {
            metrics.errors.fetch_add(1, Ordering::Relaxed);
            Err(store_error(e))
        }
    }
}

/// Refuses, before any other work, a point with more tags or fields than a
/// point may have ([`crate::store::MAX_POINT_FIELDS`]), whichever backend
/// (or outbox) would take it.
fn check_widths(points: &[WitPoint], metrics: &InfluxMetrics) -> Result<(), InfluxError> {
    for (i, p) in points.iter().enumerate() {
        if let Err(m) = crate::store::check_point_width(p.tags.len(), p.fields.len()) {
            metrics.errors.fetch_add(1, Ordering::Relaxed);
            return Err(InfluxError::Invalid(format!("point {i}: {m}")));
        }
    }
    Ok(())
}

/// Most tags and fields of a guest's latest point the status page keeps.
pub const LATEST_KEYS: usize = 32;
/// Longest text (tag value or text field) of a latest point kept, in bytes.
pub const LATEST_TEXT: usize = 256;

/// `p` as the status page keeps it until the next write: at most
/// [`LATEST_KEYS`] tags and fields (the first by key), texts clipped to
/// [`LATEST_TEXT`] bytes, so a guest's widest or longest point costs the
/// host (and `/guests`) no more than a small one.
fn bounded_latest(p: Point) -> Point {
    let clip = |s: String| if s.len() > LATEST_TEXT { super::cut(&s, LATEST_TEXT).to_string() } else { s };
    Point {
        tags: p.tags.into_iter().take(LATEST_KEYS).map(|(k, v)| (clip(k), clip(v))).collect(),
        fields: p
            .fields
            .into_iter()
            .take(LATEST_KEYS)
            .map(|(k, v)| {
                let v = match v {
                    FieldValue::Text(t) => FieldValue::Text(clip(t)),
                    other => other,
                };
                (clip(k), v)
            })
            .collect(),
        ..p
    }
}

/// The latest point of each measurement in `points` (for the status page).
fn latest_per_measurement(points: &[WitPoint]) -> Vec<Point> {
    let mut latest: BTreeMap<&str, &WitPoint> = BTreeMap::new();
    for p in points {
        let slot = latest.entry(&p.measurement).or_insert(p);
        if p.time >= slot.time {
            *slot = p;
        }
    }
    latest.into_values().map(|p| point_from_wit(p.clone())).collect()
}

/// Writes a guest's points (keys sorted) into the store, handed over as
/// [`SortedPoint`]s, strings moved (the embedded store stores them as they
/// are, a remote one encodes them once into its outbox); a point with a
/// repeated key goes through a [`Point`] (two maps), which resolves it.
async fn write_to_store(store: &dyn TimeSeriesStore, points: Vec<WitPoint>) -> Result<u32, StoreError> {
    if points.iter().all(|p| ascending(&p.tags) && ascending(&p.fields)) {
        store.write_sorted(points.into_iter().map(sorted_from_wit).collect()).await
    } else {
        store.write(points.into_iter().map(point_from_wit).collect()).await
    }
}

/// Sets the host's tags (keys ascending) on a point's `tags`: a guest's
/// tag with a host tag's key is dropped, so the host's value wins.
fn set_host_tags(tags: &mut Vec<(String, String)>, host: &[(String, String)]) {
    tags.retain(|(k, _)| host.binary_search_by(|(h, _)| h.as_str().cmp(k)).is_err());
    tags.extend(host.iter().cloned());
}

/// Whether keys are strictly ascending: then they are already in the order
/// a [`Point`]'s maps would give them, with no key repeated.
fn ascending<T>(pairs: &[(String, T)]) -> bool {
    pairs.windows(2).all(|w| w[0].0 < w[1].0)
}

fn store_error(e: StoreError) -> InfluxError {
    match e {
        StoreError::Invalid(m) => InfluxError::Invalid(m),
        StoreError::Unavailable(m) => InfluxError::Unavailable(m),
    }
}

fn point_from_wit(p: WitPoint) -> Point {
    Point {
        measurement: p.measurement,
        tags: p.tags.into_iter().collect(),
        fields: p.fields.into_iter().map(|(k, v)| (k, field_from_wit(v))).collect(),
        time: p.time,
    }
}

/// Sorts `p`'s tags and fields by key, in place and stably (a repeated key
/// keeps its values in order, so the last still wins in a [`Point`]).
fn sort_keys(p: &mut WitPoint) {
    p.tags.sort_by(|a, b| a.0.cmp(&b.0));
    p.fields.sort_by(|a, b| a.0.cmp(&b.0));
}

/// `p` with its strings moved, not copied: the caller has checked that its
/// keys are strictly ascending.
fn sorted_from_wit(p: WitPoint) -> SortedPoint {
    SortedPoint {
        measurement: p.measurement,
        tags: p.tags,
        fields: p.fields.into_iter().map(|(k, v)| (k, field_from_wit(v))).collect(),
        time: p.time,
    }
}

fn field_from_wit(v: WitField) -> FieldValue {
    match v {
        WitField::Float(f) => FieldValue::Float(f),
        WitField::Integer(i) => FieldValue::Integer(i),
        WitField::Unsigned(u) => FieldValue::Unsigned(u),
        WitField::Boolean(b) => FieldValue::Boolean(b),
        WitField::Text(s) => FieldValue::Text(s),
    }
}

fn field_to_wit(v: FieldValue) -> WitField {
    match v {
        FieldValue::Float(f) => WitField::Float(f),
        FieldValue::Integer(i) => WitField::Integer(i),
        FieldValue::Unsigned(u) => WitField::Unsigned(u),
        FieldValue::Boolean(b) => WitField::Boolean(b),
        FieldValue::Text(s) => WitField::Text(s),
    }
}

/// `q` asking for at most one row more than `max` (to tell "exactly max"
/// from "more"), or fewer when the guest's own limit is lower.
fn capped(mut q: Query, max: u32) -> Query {
    q.limit = Some(q.limit.map_or(max + 1, |limit| limit.min(max + 1)));
    q
}

/// An error when an answer of `rows` rows went past `max`.
fn within(rows: usize, max: u32) -> Result<(), StoreError> {
    if rows > max as usize {
        return Err(StoreError::Invalid(format!(
            "the query matches more than {max} rows, more than a guest may take at once; narrow its time range, \
             or set a limit and query the rest in pages"
        )));
    }
    Ok(())
}

fn query_from_wit(q: wit::SeriesQuery) -> Query {
    Query {
        measurement: q.measurement,
        fields: q.fields,
        tags: q.tags.into_iter().map(|t| (t.key, t.value)).collect(),
        start: q.start,
        end: q.end,
        select: match q.select {
            wit::Selector::All => Selector::All,
            wit::Selector::First => Selector::First,
            wit::Selector::Last => Selector::Last,
        },
        descending: q.descending,
        limit: q.limit,
    }
}

fn row_to_wit(r: Row) -> wit::Row {
    wit::Row {
        time: r.time,
        tags: r.tags.into_iter().collect(),
        fields: r.fields.into_iter().map(|(k, v)| (k, field_to_wit(v))).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wit_point(tags: &[(&str, &str)], fields: &[(&str, f64)]) -> WitPoint {
        WitPoint {
            measurement: "m".into(),
            tags: tags.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            fields: fields.iter().map(|(k, v)| (k.to_string(), WitField::Float(*v))).collect(),
            time: 7,
        }
    }

    #[test]
    fn the_status_page_keeps_a_bounded_latest_point() {
        let mut wide = wit_point(&[("t", "x")], &[]);
        wide.fields = (0..1000).map(|i| (format!("f{i:04}"), WitField::Text("é".repeat(10_000)))).collect();
        wide.tags.push(("long".into(), "v".repeat(100_000)));
        let kept = bounded_latest(point_from_wit(wide));
        assert_eq!((kept.fields.len(), kept.tags.len()), (LATEST_KEYS, 2));
        assert!(kept.tags["long"].len() == LATEST_TEXT && kept.fields.contains_key("f0000"));
        assert!(kept.fields.values().all(|v| matches!(v, FieldValue::Text(t) if t.len() <= LATEST_TEXT)));
        let small = point_from_wit(wit_point(&[("a", "b")], &[("w", 1.0)]));
        assert_eq!(bounded_latest(small.clone()), small, "an ordinary point is kept whole");
    }

    #[test]
    fn a_point_wider_than_a_point_may_be_is_refused_before_any_work() {
        let metrics = InfluxMetrics::default();
        let mut wide = wit_point(&[], &[]);
        wide.fields = (0..=crate::store::MAX_POINT_FIELDS).map(|i| (format!("f{i}"), WitField::Integer(1))).collect();
        let narrow = wit_point(&[], &[("w", 1.0)]);
        let err = check_widths(&[narrow.clone(), wide], &metrics).unwrap_err();
        assert!(
            matches!(&err, InfluxError::Invalid(m) if m.starts_with("point 1: the point has 1025 fields")),
            "{err:?}"
        );
        assert!(check_widths(&[narrow], &metrics).is_ok());
        let mut tagged = wit_point(&[], &[("w", 1.0)]);
        tagged.tags = (0..=crate::store::MAX_POINT_TAGS).map(|i| (format!("t{i}"), "v".into())).collect();
        assert!(matches!(check_widths(&[tagged], &metrics), Err(InfluxError::Invalid(m)) if m.contains("tags")));
    }

    #[test]
    fn host_tags_are_added_and_win_over_a_guest_s_tag_of_the_same_key() {
        let host = [("site".to_string(), "cottage".to_string()), ("zone".to_string(), "n".to_string())];
        let mut p = wit_point(&[("site", "guest"), ("phase", "L1"), ("site", "again")], &[("w", 1.0)]);
        set_host_tags(&mut p.tags, &host);
        sort_keys(&mut p);
        let tags: Vec<(&str, &str)> = p.tags.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(tags, [("phase", "L1"), ("site", "cottage"), ("zone", "n")]);
    }

    #[test]
    fn a_guest_s_fields_become_store_fields_in_place() {
        // `sorted_from_wit` collects `(String, WitField)` into `(String,
        // FieldValue)`: with equal layouts the standard library reuses the
        // vector's allocation, so handing a point to the store copies nothing.
        use std::mem::{align_of, size_of};
        assert_eq!(size_of::<(String, WitField)>(), size_of::<(String, FieldValue)>());
        assert_eq!(align_of::<(String, WitField)>(), align_of::<(String, FieldValue)>());
        let p = wit_point(&[], &[("a", 1.0), ("b", 2.0)]);
        let before = p.fields.as_ptr() as usize;
        let sorted = sorted_from_wit(p);
        assert_eq!(sorted.fields.as_ptr() as usize, before, "the fields' vector was reused");
    }

    #[test]
    fn sorted_keys_give_the_point_the_maps_would() {
        let p = wit_point(&[("entity_id", "switch.a"), ("domain", "switch")], &[("w", 1.0), ("before", 2.0)]);
        let mut sorted = p.clone();
        sort_keys(&mut sorted);
        assert!(ascending(&sorted.tags) && ascending(&sorted.fields));
        assert_eq!(sorted_from_wit(sorted).into_point(), point_from_wit(p));
    }

    #[test]
    fn a_repeated_key_keeps_its_last_value_after_sorting() {
        let p = wit_point(&[], &[("w", 1.0), ("a", 0.0), ("w", 2.0)]);
        let mut sorted = p.clone();
        sort_keys(&mut sorted);
        assert!(!ascending(&sorted.fields), "a repeated key is not strictly ascending: the Point path takes it");
        assert_eq!(point_from_wit(sorted).fields["w"], FieldValue::Float(2.0));
        assert_eq!(point_from_wit(p).fields["w"], FieldValue::Float(2.0));
    }

    #[test]
    fn a_point_sorted_in_place_encodes_the_line_its_point_would() {
        use crate::store::line_protocol::{self, LinePoint};
        let unsorted = wit_point(&[("entity_id", "switch.a"), ("domain", "switch")], &[("w", 1.0), ("before", 2.0)]);
        let repeated = wit_point(&[], &[("w", 1.0), ("a", 0.0), ("w", 2.0)]);
        for p in [unsorted, repeated] {
            let mut expected = String::new();
            line_protocol::encode_point(&point_from_wit(p.clone()), &mut expected).unwrap();
            let mut sorted = p;
            sort_keys(&mut sorted);
            // What `write_to_store` hands the store for this point.
            let mut line = String::new();
            if ascending(&sorted.tags) && ascending(&sorted.fields) {
                sorted_from_wit(sorted).encode_line(&mut line).unwrap();
            } else {
                point_from_wit(sorted).encode_line(&mut line).unwrap();
            }
            assert_eq!(line, expected);
        }
    }
}
