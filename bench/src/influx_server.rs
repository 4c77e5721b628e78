//! A real influxd for the harness, and influxd's own ingest ceiling.
//!
//! The server is the tests' `tests/e2e/support/influxd.rs` (Debian's influxd
//! 1.6.7 in a temp dir on free loopback ports), included by path rather than
//! copied so the harness and the tests start influxd the same way. Its
//! methods block and panic on failure (they were written for tests); here
//! each call runs on the blocking pool under a time limit, and a panic or an
//! overrun becomes an error that names the step, so one broken figure never
//! takes the whole report down.
//!
//! The raw writer is the yardstick the end-to-end figure is divided by: one
//! keep-alive connection posting ready-made line protocol, nothing else; it
//! can send the bodies gzip-compressed, as the forwarder does, so that
//! influxd is compared on the same work.

#[allow(dead_code)]
#[path = "../../tests/e2e/support/influxd.rs"]
mod influxd;

use std::any::Any;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use influxd::Influxd;

/// How long starting (or restarting) influxd may take, ping included.
const START_LIMIT: Duration = Duration::from_secs(90);
/// How long one query, database creation or stop may take.
const CALL_LIMIT: Duration = Duration::from_secs(45);

/// A running influxd shared by the influx figures; killed when the last
/// clone is dropped.
#[derive(Clone)]
pub struct Server {
    inner: Arc<Mutex<Influxd>>,
    pub port: u16,
}

/// The text of a panic payload.
fn panic_text(payload: Box<dyn Any + Send>) -> String {
    match payload.downcast::<String>() {
        Ok(text) => *text,
        Err(payload) => payload.downcast_ref::<&str>().map_or_else(|| "panicked".into(), |s| s.to_string()),
    }
}

/// Runs blocking `f` on the blocking pool; a panic or running past `limit`
/// becomes an error naming `what`.
pub async fn blocking<T: Send + 'static>(
    what: &str,
    limit: Duration,
    f: impl FnOnce() -> T + Send + 'static,
) -> anyhow::Result<T> {
    match tokio::time::timeout(limit, tokio::task::spawn_blocking(f)).await {
        Err(_) => bail!("{what} did not finish within {limit:?}"),
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) if e.is_panic() => bail!("{what} failed: {}", panic_text(e.into_panic())),
        Ok(Err(e)) => bail!("{what} failed: {e}"),
    }
}

impl Server {
    /// Starts influxd and waits until it answers `/ping`.
    pub async fn start() -> anyhow::Result<Server> {
        let influxd =
            blocking("starting influxd (needs /usr/bin/influxd: apt-get install influxdb)", START_LIMIT, || {
                Influxd::start()
            })
            .await?;
        let port = influxd.port;
        Ok(Server { inner: Arc::new(Mutex::new(influxd)), port })
    }

    /// Runs `f` on the server on the blocking pool, bounded by `limit`.
    async fn with<T: Send + 'static>(
        &self,
        what: &str,
        limit: Duration,
        f: impl FnOnce(&mut Influxd) -> T + Send + 'static,
    ) -> anyhow::Result<T> {
        let inner = self.inner.clone();
        blocking(what, limit, move || f(&mut inner.lock().unwrap_or_else(PoisonError::into_inner))).await
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Creates database `name`.
    pub async fn create_database(&self, name: &str) -> anyhow::Result<()> {
        let name = name.to_string();
        self.with(&format!("CREATE DATABASE {name}"), CALL_LIMIT, move |s| s.create_database(&name)).await
    }

    /// Points of measurement `bench` in `db`, by influxd's own count.
    pub async fn count(&self, db: &str) -> anyhow::Result<u64> {
        let db = db.to_string();
        let what = format!("counting the points in {db}");
        let series =
            self.with(&what, CALL_LIMIT, move |s| s.series(&db, "SELECT count(\"value\") FROM \"bench\"")).await?;
        match series.first() {
            None => Ok(0),
            Some(s) => s["values"][0][1].as_u64().with_context(|| format!("{what}: unexpected answer {s}")),
        }
    }

    /// Stops influxd (SIGTERM; the data stays for [`Server::restart`]).
    pub async fn stop(&self) -> anyhow::Result<()> {
        self.with("stopping influxd", CALL_LIMIT, Influxd::stop).await
    }

    /// Starts influxd again on the same port and data; returns once it
    /// answers `/ping`.
    pub async fn restart(&self) -> anyhow::Result<()> {
        self.with("restarting influxd", START_LIMIT, Influxd::restart).await
    }

    /// influxd's ingest ceiling: `points` points posted as line protocol in
    /// batches of `batch` over one keep-alive connection, gzip-compressed
    /// (with the forwarder's own compressor, before the clock starts) when
    /// `gzip`; points per second from the first request to the last 204.
    pub async fn raw_write(&self, db: &str, points: u64, batch: u64, gzip: bool) -> anyhow::Result<f64> {
        let (port, db) = (self.port, db.to_string());
        let limit = Duration::from_secs(300);
        blocking("the raw HTTP writer", limit, move || raw_write(port, &db, points, batch, gzip)).await?
    }
}

/// Line-protocol bodies shaped like the probe guest's points (8 series, one
/// float field, nanosecond timestamps), built (and compressed when `gzip`)
/// before the clock starts.
fn raw_bodies(points: u64, batch: u64, gzip: bool) -> Vec<Vec<u8>> {
    let start = wattedge::store::now_ns();
    let mut bodies = Vec::new();
    let mut first = 0;
    while first < points {
        let last = (first + batch).min(points);
        let mut body = String::with_capacity((last - first) as usize * 48);
        for k in first..last {
            body.push_str(&format!("bench,series={} value={k} {}\n", k % 8, start + k as i64));
        }
        bodies.push(if gzip { wattedge::store::forwarder::gzip(body.as_bytes()).to_vec() } else { body.into_bytes() });
        first = last;
    }
    bodies
}

fn raw_write(port: u16, db: &str, points: u64, batch: u64, gzip: bool) -> anyhow::Result<f64> {
    let bodies = raw_bodies(points, batch, gzip);
    let encoding = if gzip { "Content-Encoding: gzip\r\n" } else { "" };
    let mut stream = TcpStream::connect(("127.0.0.1", port)).context("connecting to influxd")?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    stream.set_write_timeout(Some(Duration::from_secs(30)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let started = Instant::now();
    for body in &bodies {
        let head = format!(
            "POST /write?db={db}&precision=ns HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: text/plain\r\n{encoding}Content-Length: {}\r\n\r\n",
            body.len()
        );
        stream.write_all(&[head.as_bytes(), body].concat()).context("sending a batch to influxd")?;
        let (status, answer) = read_response(&mut reader).context("reading influxd's answer to a write")?;
        if status != 204 {
            bail!("influxd answered HTTP {status} to a raw write: {answer}");
        }
    }
    Ok(points as f64 / started.elapsed().as_secs_f64())
}

/// Status and body of one HTTP/1.1 response with a `Content-Length` (or none).
fn read_response(reader: &mut impl BufRead) -> anyhow::Result<(u16, String)> {
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let status: u16 = line.split_whitespace().nth(1).and_then(|s| s.parse().ok()).context("no HTTP status line")?;
    let mut length = 0usize;
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            bail!("connection closed inside the response head");
        }
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            match name.to_ascii_lowercase().as_str() {
                "content-length" => length = value.trim().parse().context("bad Content-Length")?,
                "transfer-encoding" => bail!("influxd sent a chunked answer to a write; not expected"),
                _ => {}
            }
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body)?;
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}
