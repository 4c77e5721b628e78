use std::io::Read as _;
use std::sync::Mutex;

use super::*;

/// The text of a gzip body the forwarder sent.
fn gunzip(body: &[u8]) -> String {
    let mut text = String::new();
    flate2::read::GzDecoder::new(body).read_to_string(&mut text).expect("gzip");
    text
}

/// A database double: refuses any batch containing `bad` as a whole (like
/// InfluxDB 1.6 does for a type conflict inside a batch), fails the first
/// `failures` sends, and records what it stored.
struct Script {
    failures: AtomicU64,
    bad: &'static str,
    stored: Mutex<Vec<String>>,
}

impl Sink for Script {
    fn send(&self, gzipped: Bytes, _points: u64) -> SinkFuture<'_, Delivery> {
        let text = gunzip(&gzipped);
        Box::pin(async move {
            if self.failures.load(Ordering::Relaxed) > 0 {
                self.failures.fetch_sub(1, Ordering::Relaxed);
                return Delivery::Retry { message: "connection refused".into(), reachable: false };
            }
            if text.contains(self.bad) {
                return Delivery::Rejected { message: "field type conflict".into(), dropped: 0, partial: false };
            }
            self.stored.lock().unwrap().push(text);
            Delivery::Stored
        })
    }

    fn ping(&self) -> SinkFuture<'_, bool> {
        Box::pin(async { false })
    }
}

#[tokio::test]
async fn retries_then_splits_a_refused_batch_and_drops_only_the_bad_write() {
    let dir = tempfile::tempdir().unwrap();
    let outbox = Arc::new(Outbox::open(dir.path(), 1 << 20).unwrap());
    for (i, line) in ["m a=1i 1\n", "m a=2i 2\nm a=3i 3\n", "m a=\"bad\" 4\n", "m a=5i 5\n"].iter().enumerate() {
        let points = line.matches('\n').count() as u32;
        outbox.append(line.as_bytes(), points).unwrap_or_else(|e| panic!("append {i}: {e}"));
    }
    let sink = Arc::new(Script { failures: AtomicU64::new(3), bad: "bad", stored: Mutex::default() });
    let settings = ForwardSettings {
        batch_points: 100,
        flush_interval: Duration::from_millis(10),
        retry_max_delay: Duration::from_millis(200),
    };
    let cancel = CancellationToken::new();
    let (stats, _task) = spawn(outbox.clone(), sink.clone(), settings, cancel.clone());
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while outbox.depth().points > 0 {
        assert!(std::time::Instant::now() < deadline, "the outbox did not drain");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let on_disk = || {
        let ids = crate::store::outbox::segment::list(dir.path()).unwrap();
        ids.iter()
            .map(|&id| std::fs::metadata(crate::store::outbox::segment::path(dir.path(), id)).unwrap().len())
            .sum::<u64>()
    };
    while on_disk() > 0 {
        assert!(std::time::Instant::now() < deadline, "the idle outbox was not compacted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cancel.cancel();
    let stored = sink.stored.lock().unwrap().concat();
    assert_eq!(stored, "m a=1i 1\nm a=2i 2\nm a=3i 3\nm a=5i 5\n", "every good write, in order, once");
    assert_eq!(stats.retried.load(Ordering::Relaxed), 3);
    assert_eq!(stats.dropped.load(Ordering::Relaxed), 1, "only the refused write call");
    assert_eq!(stats.forwarded.load(Ordering::Relaxed), 4);
    assert_eq!(stats.up.load(Ordering::Relaxed), 1);
}

#[test]
fn gzip_round_trips() {
    let body = gzip(b"m f=1 1\n");
    assert_eq!(gunzip(&body), "m f=1 1\n");
}

/// A database double that takes `delay` to answer each batch and stores
/// every one it is sent.
struct Slow {
    delay: Duration,
    stored: Mutex<Vec<String>>,
}

impl Sink for Slow {
    fn send(&self, gzipped: Bytes, _points: u64) -> SinkFuture<'_, Delivery> {
        let text = gunzip(&gzipped);
        Box::pin(async move {
            tokio::time::sleep(self.delay).await;
            self.stored.lock().unwrap().push(text);
            Delivery::Stored
        })
    }

    fn ping(&self) -> SinkFuture<'_, bool> {
        Box::pin(async { true })
    }
}

/// Batches written while earlier ones are in flight are read (prefetched)
/// and the delivered ones acknowledged during the next delivery: each point
/// must still reach the database once, in order, in full batches, and the
/// outbox opened again must hold nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn points_written_during_deliveries_arrive_once_in_order_and_are_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let outbox = Arc::new(Outbox::open(dir.path(), 1 << 20).unwrap());
    let sink = Arc::new(Slow { delay: Duration::from_millis(15), stored: Mutex::default() });
    // A flush interval no pause between the appends reaches, even on a
    // loaded machine: every batch goes out because it is full (80 points,
    // 4 a batch), so "full batches only" does not depend on timing.
    let settings = ForwardSettings {
        batch_points: 4,
        flush_interval: Duration::from_secs(30),
        retry_max_delay: Duration::from_millis(200),
    };
    let cancel = CancellationToken::new();
    let (stats, task) = spawn(outbox.clone(), sink.clone(), settings, cancel.clone());
    let mut expected = String::new();
    for call in 0..40 {
        let text: String = (0..2).map(|k| format!("m v={}i {}\n", call * 2 + k, call * 2 + k)).collect();
        expected.push_str(&text);
        let writer = outbox.clone();
        tokio::task::spawn_blocking(move || writer.append(text.as_bytes(), 2)).await.unwrap().unwrap();
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while stats.forwarded.load(Ordering::Relaxed) < 80 || outbox.depth().points > 0 {
        assert!(std::time::Instant::now() < deadline, "the outbox did not drain");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    cancel.cancel();
    task.await.unwrap();
    let stored = sink.stored.lock().unwrap().clone();
    assert_eq!(stored.concat(), expected, "every point once, in order");
    assert!(stored.iter().all(|b| b.lines().count() == 4), "full batches only: {stored:?}");
    assert_eq!(stats.forwarded.load(Ordering::Relaxed), 80);
    drop(outbox);
    let again = Outbox::open(dir.path(), 1 << 20).unwrap();
    assert_eq!(again.depth().points, 0, "every delivered batch acknowledged on disk");
}
