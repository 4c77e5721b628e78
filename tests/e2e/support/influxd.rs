//! A real InfluxDB 1.x for the tests: Debian's `influxd` (1.6.7) started in a
//! temp dir on free loopback ports, with `stop()`/`restart()` for outage
//! tests and a tiny blocking client for checking what it stored. It is
//! killed when dropped.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const INFLUXD: &str = "/usr/bin/influxd";

/// A running (or stopped) influxd.
pub struct Influxd {
    dir: tempfile::TempDir,
    pub port: u16,
    child: Option<Child>,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Influxd {
    /// Starts influxd and waits for `GET /ping` to answer 204.
    pub fn start() -> Influxd {
        assert!(
            std::path::Path::new(INFLUXD).exists(),
            "{INFLUXD} is missing: these tests need a real InfluxDB 1.x; run `apt-get install influxdb` (Debian's package, 1.6.7)"
        );
        // A port picked as free can be taken by another test before influxd
        // binds it: then influxd exits, and we try fresh ports.
        for _ in 0..3 {
            let mut influxd = Influxd::configure();
            if influxd.spawn() {
                return influxd;
            }
        }
        panic!("influxd exited at start three times (ports taken?)")
    }

    fn configure() -> Influxd {
        let dir = tempfile::tempdir().expect("temp dir");
        let (port, rpc) = (free_port(), free_port());
        let d = dir.path().display();
        let config = format!(
            "reporting-disabled = true\nbind-address = \"127.0.0.1:{rpc}\"\n\n[meta]\n  dir = \"{d}/meta\"\n\n[data]\n  dir = \"{d}/data\"\n  wal-dir = \"{d}/wal\"\n  query-log-enabled = false\n\n[monitor]\n  store-enabled = false\n\n[http]\n  bind-address = \"127.0.0.1:{port}\"\n  log-enabled = false\n"
        );
        std::fs::write(dir.path().join("influxdb.conf"), config).expect("write influxdb.conf");
        Influxd { dir, port, child: None }
    }

    fn config_path(&self) -> PathBuf {
        self.dir.path().join("influxdb.conf")
    }

    /// Starts the process; false when it exited before answering /ping.
    fn spawn(&mut self) -> bool {
        let log = std::fs::File::create(self.dir.path().join("influxd.log")).expect("log file");
        let child = Command::new(INFLUXD)
            .arg("run")
            .arg("-config")
            .arg(self.config_path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {INFLUXD}: {e}; run `apt-get install influxdb`"));
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.request("GET", "/ping", "").map(|(s, _)| s) != Some(204) {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                eprintln!("influxd exited at start ({status}); log:\n{}", self.log());
                self.child = None;
                return false;
            }
            assert!(Instant::now() < deadline, "influxd did not answer /ping within 30 s; log:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(25));
        }
        true
    }

    /// influxd's own log, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("influxd.log")).unwrap_or_default()
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Stops influxd with SIGTERM (the data stays for `restart`).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while child.try_wait().ok().flatten().is_none() {
                if Instant::now() > deadline {
                    let _ = child.kill();
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// Starts influxd again on the same port and data.
    pub fn restart(&mut self) {
        self.stop();
        assert!(self.spawn(), "influxd did not come back on port {}", self.port);
    }

    /// Creates a database.
    pub fn create_database(&self, name: &str) {
        let v = self.query("", &format!("CREATE DATABASE \"{name}\""));
        assert!(v["results"][0].get("error").is_none(), "CREATE DATABASE failed: {v}");
    }

    /// Runs InfluxQL against `db` (epoch=ns) and returns the JSON answer.
    pub fn query(&self, db: &str, q: &str) -> Value {
        let form = format!("db={}&epoch=ns&q={}", encode(db), encode(q));
        let (status, body) = self.request("POST", "/query", &form).expect("influxd answers /query");
        serde_json::from_str(&body).unwrap_or_else(|_| panic!("HTTP {status} non-JSON answer: {body}"))
    }

    /// `values` rows of every series of a query, with the series tags.
    /// The rows of `SELECT * FROM measurement` as JSON objects (column ->
    /// value), waiting up to 20 s for at least `expected` of them (points
    /// reach InfluxDB through the host's outbox, which a loaded machine may
    /// take seconds to forward). Returns what is there by then.
    pub async fn rows_of(&self, db: &str, measurement: &str, expected: usize) -> Vec<Value> {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let series = self.series(db, &format!("SELECT * FROM {measurement}"));
            let rows = series.first().map(columns_to_objects).unwrap_or_default();
            if rows.len() >= expected || std::time::Instant::now() >= deadline {
                return rows;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Writes line-protocol `lines` (nanosecond times) into `db`, as a
    /// client such as Home Assistant's integration would; panics unless
    /// influxd answers 204.
    pub fn write_lines(&self, db: &str, lines: &[String]) {
        let (status, body) =
            self.request("POST", &format!("/write?db={db}&precision=ns"), &lines.join("\n")).expect("influxd");
        assert_eq!(status, 204, "write failed: {body}");
    }

    pub fn series(&self, db: &str, q: &str) -> Vec<Value> {
        let v = self.query(db, q);
        assert!(v["results"][0].get("error").is_none(), "query {q} failed: {v}");
        v["results"][0]["series"].as_array().cloned().unwrap_or_default()
    }

    /// A raw HTTP/1.1 request; `None` when nothing listens.
    pub fn request(&self, method: &str, path: &str, form: &str) -> Option<(u16, String)> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{form}",
            form.len()
        );
        stream.write_all(request.as_bytes()).ok()?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).ok()?;
        let text = String::from_utf8_lossy(&raw).to_string();
        let (head, body) = text.split_once("\r\n\r\n")?;
        let status = head.split_whitespace().nth(1)?.parse().ok()?;
        let body = if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
            dechunk(body)
        } else {
            body.to_string()
        };
        Some((status, body))
    }
}

impl Drop for Influxd {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}

fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// One series of an InfluxDB answer as JSON objects, column -> value.
pub fn columns_to_objects(series: &Value) -> Vec<Value> {
    let columns: Vec<String> =
        series["columns"].as_array().unwrap().iter().map(|c| c.as_str().unwrap().to_string()).collect();
    series["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| Value::Object(columns.iter().cloned().zip(row.as_array().unwrap().iter().cloned()).collect()))
        .collect()
}
