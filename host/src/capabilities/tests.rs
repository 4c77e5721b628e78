//! The capabilities' host functions called directly on a [`TestGuest`]'s
//! context, no wasm involved: grants, what reaches the store and the log,
//! what a denial counts. The end-to-end tests (tests/e2e) prove the same
//! paths through a real component; these pin each rule down in
//! milliseconds.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use super::testing::{GUEST, TestGuest};
use crate::bindings::influx::{Host as _, InfluxError};
use crate::bindings::log::{Host as _, Level};
use crate::bindings::schedule::Host as _;
use crate::bindings::secrets::{Host as _, SecretError};
use crate::bindings::state::Host as _;
use crate::bindings::status::{CounterValue, Health, Host as _};
use crate::bindings::types::{FieldValue as WitField, Point as WitPoint};
use crate::store::{FieldValue, Query};

fn wit_point(measurement: &str, value: f64, time: i64) -> WitPoint {
    WitPoint {
        measurement: measurement.into(),
        tags: vec![("site".into(), "home".into())],
        fields: vec![("value".into(), WitField::Float(value))],
        time,
    }
}

#[tokio::test]
async fn an_influx_write_outside_the_write_grants_is_refused_counted_and_not_stored() {
    let mut guest = TestGuest::with_grants(r#"influx_write = ["granted"]"#);
    let points = vec![wit_point("granted", 1.0, 1), wit_point("secret_plans", 2.0, 2)];
    let refused = guest.ctx.write(points).await;
    assert!(matches!(&refused, Err(InfluxError::Denied(m)) if m.contains("secret_plans")), "{refused:?}");
    assert_eq!(guest.shared.influx.writes_denied.load(Ordering::Relaxed), 1);
    assert_eq!(guest.shared.influx.points_written.load(Ordering::Relaxed), 0);
    let stored = guest.services.store.query(Query { measurement: "granted".into(), ..Query::default() }).await.unwrap();
    assert!(stored.is_empty(), "a refused write stores none of its points: {stored:?}");
}

#[tokio::test]
async fn a_granted_influx_write_lands_in_the_store_and_is_counted() {
    let mut guest = TestGuest::with_grants(r#"influx_write = ["power"]"#);
    let written = guest.ctx.write(vec![wit_point("power", 230.5, 1_000), wit_point("power", 231.0, 2_000)]).await;
    assert!(matches!(written, Ok(2)), "{written:?}");
    assert_eq!(guest.shared.influx.points_written.load(Ordering::Relaxed), 2);
    let rows = guest.services.store.query(Query { measurement: "power".into(), ..Query::default() }).await.unwrap();
    let values: Vec<_> = rows.iter().map(|r| (r.time, r.fields["value"].clone())).collect();
    assert_eq!(values, [(1_000, FieldValue::Float(230.5)), (2_000, FieldValue::Float(231.0))]);
}

#[tokio::test]
async fn a_query_outside_the_read_grants_is_refused_and_counted() {
    let mut guest = TestGuest::with_grants(r#"influx_read = ["power"]"#);
    let query = crate::bindings::influx::SeriesQuery {
        measurement: "gas".into(),
        fields: vec![],
        tags: vec![],
        start: None,
        end: None,
        select: crate::bindings::influx::Selector::All,
        descending: false,
        limit: None,
    };
    let refused = guest.ctx.query(query).await;
    assert!(matches!(&refused, Err(InfluxError::Denied(m)) if m.contains("gas")), "{refused:?}");
    assert_eq!(guest.shared.influx.queries_denied.load(Ordering::Relaxed), 1);
    assert_eq!(guest.shared.influx.queries.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn state_set_get_keys_and_delete_round_trip_per_guest() {
    let mut guest = TestGuest::with_grants("");
    assert_eq!(guest.ctx.get("cursor".into()), None, "nothing before the first set");
    guest.ctx.set("cursor".into(), b"2026-12-07".to_vec()).await.unwrap();
    guest.ctx.set("seen".into(), vec![1, 2, 3]).await.unwrap();
    assert_eq!(guest.ctx.get("cursor".into()).as_deref(), Some(&b"2026-12-07"[..]));
    let mut keys = guest.ctx.keys();
    keys.sort();
    assert_eq!(keys, ["cursor", "seen"]);
    assert_eq!(guest.services.state.get("another-guest", "cursor").unwrap(), None, "state is per guest");
    guest.ctx.delete("cursor".into()).await.unwrap();
    assert_eq!(guest.ctx.get("cursor".into()), None);
    assert_eq!(guest.ctx.keys(), ["seen"]);
}

#[test]
fn a_secret_is_visible_only_when_granted_and_forgetting_another_is_refused() {
    let mut guest = TestGuest::with_grants(r#"secrets = { "mine.token" = ["api.example.org"] }"#);
    guest.services.secrets.set("mine.token", "t0ken", None, true).unwrap();
    guest.services.secrets.set("theirs.token", "other", None, true).unwrap();
    assert!(guest.ctx.is_set("mine.token".into()));
    assert!(!guest.ctx.is_set("theirs.token".into()), "another guest's secret does not exist for this one");
    let refused = guest.ctx.forget("theirs.token".into());
    assert!(matches!(&refused, Err(SecretError::Denied(_))), "{refused:?}");
    assert!(guest.services.secrets.is_usable("theirs.token"), "the refused forget left it alone");
    guest.ctx.forget("mine.token".into()).unwrap();
    assert!(!guest.ctx.is_set("mine.token".into()));
}

#[test]
fn a_wake_up_is_kept_for_the_scheduler_until_cancelled() {
    let mut guest = TestGuest::with_grants("");
    guest.ctx.wake_at(1_765_000_000_000_000_000);
    assert_eq!(guest.shared.wake.peek(), Some(1_765_000_000_000_000_000));
    guest.ctx.cancel_wake();
    assert_eq!(guest.shared.wake.peek(), None);
}

#[test]
fn status_reports_and_counters_reach_the_shared_board() {
    let mut guest = TestGuest::with_grants("");
    guest.ctx.report(Health::Degraded("upstream slow".into()));
    guest.ctx.increment("fetches".into(), 2);
    guest.ctx.increment("fetches".into(), 3);
    assert!(matches!(guest.ctx.counter("fetches".into()), Some(CounterValue::Count(5))));
    let health = guest.shared.board.health();
    assert!(matches!(&health, Some(super::status::Health::Degraded(t)) if t == "upstream slow"), "{health:?}");
}

/// Everything logged at any level while `f` runs on this thread.
fn logged(f: impl FnOnce()) -> String {
    let buffer = Arc::new(Mutex::new(Vec::new()));
    let sink = buffer.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || Sink(sink.clone()))
        .finish();
    tracing::subscriber::with_default(subscriber, f);
    String::from_utf8(buffer.lock().unwrap().clone()).unwrap()
}

struct Sink(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn a_guest_log_line_is_one_escaped_line_with_its_granted_secret_redacted() {
    let mut guest = TestGuest::with_grants(r#"secrets = { "mine.token" = ["api.example.org"] }"#);
    guest.services.secrets.set("mine.token", "s3cr3t-value", None, true).unwrap();
    let forged = "token s3cr3t-value\n2026-12-07T15:00:00Z  INFO wattedge::host: admin token generated";
    let out = logged(|| guest.ctx.log(Level::Warn, forged.into()));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 1, "one guest call, one host line: {out}");
    assert!(lines[0].contains(&format!("guest=\"{GUEST}\"")) || lines[0].contains(&format!("guest={GUEST}")), "{out}");
    assert!(!out.contains("s3cr3t-value"), "the granted secret is redacted: {out}");
    assert!(out.contains(crate::secrets::scrub::REDACTED), "{out}");
    assert!(out.contains("\\n2026-12-07T15:00:00Z"), "the newline is escaped, not a new line: {out}");
}

#[test]
fn another_guest_s_secret_is_not_redacted_from_this_guest_s_words() {
    let mut guest = TestGuest::with_grants("");
    guest.services.secrets.set("theirs.code", "true", None, true).unwrap();
    let out = logged(|| guest.ctx.log(Level::Info, "the answer is true".into()));
    assert!(out.contains("the answer is true"), "{out}");
}

#[tokio::test]
async fn an_http_request_to_a_host_not_granted_is_refused_before_anything_is_sent() {
    use http_body_util::BodyExt;
    use wasmtime_wasi_http::WasiHttpHooks;
    let mut guest = TestGuest::with_grants(r#"http = ["api.example.org"]"#);
    let body = http_body_util::Empty::<bytes::Bytes>::new().map_err(|never| match never {}).boxed_unsync();
    let request = http::Request::get("https://evil.example.net/steal").body(body).unwrap();
    let sent = Box::into_pin(guest.ctx.http.send_request(request, None, Box::new(async { Ok(()) }))).await;
    let Err(error) = sent else { panic!("a request outside grants.http was sent") };
    assert!(matches!(error, wasmtime_wasi_http::Error::HttpRequestDenied), "{error:?}");
    let metrics = &guest.shared.http;
    assert_eq!(metrics.denied.load(Ordering::Relaxed), 1);
    assert_eq!(metrics.bytes_out.load(Ordering::Relaxed), 0, "not a byte went out");
}
