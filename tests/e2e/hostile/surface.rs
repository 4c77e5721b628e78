//! Attacks of issue 21 (see main.rs) on the host's surface: its log, its
//! admin API and CLI, the addresses a guest may dial and the files it keeps.
//!
//! The log attacks run the real binary and read its stderr, as the journal
//! would; the probe guest (`tests/probe/src/surface.rs`) is the attacker.

use std::io::{BufRead, Read, Write};
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wattedge::store::FieldValue;

use crate::support;

const BIN: &str = env!("CARGO_BIN_EXE_wattedge");

/// What the probe's `FORGED` puts at the start of a line of its own.
const FORGED_START: &str = "2026-12-07T00:00:00Z";
const FORGED_TEXT: &str = "INFO wattedge: forged";

/// A `wattedge run` child process whose stderr (the host log) is kept.
struct HostProcess {
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
    reader: Option<std::thread::JoinHandle<()>>,
    addr: SocketAddr,
}

impl HostProcess {
    /// Starts `wattedge run` on `config` (under `umask` when given).
    fn start(config: &Path, addr: SocketAddr, umask: Option<&str>) -> HostProcess {
        let mut command = match umask {
            Some(mask) => {
                let mut sh = Command::new("sh");
                sh.args(["-c", &format!("umask {mask}; exec \"$0\" run --config \"$1\""), BIN]).arg(config);
                sh
            }
            None => {
                let mut bin = Command::new(BIN);
                bin.args(["run", "--config"]).arg(config);
                bin
            }
        };
        let mut child = command.env("WATTEDGE_LOG", "info").stderr(Stdio::piped()).spawn().expect("spawn wattedge");
        let stderr = child.stderr.take().expect("piped");
        let log = Arc::new(Mutex::new(Vec::new()));
        let lines = log.clone();
        let reader = std::thread::spawn(move || {
            // Raw bytes: a line the host wrote need not be UTF-8.
            for line in std::io::BufReader::new(stderr).split(b'\n').map_while(Result::ok) {
                lines.lock().unwrap().push(String::from_utf8_lossy(&line).into_owned());
            }
        });
        HostProcess { child, log, reader: Some(reader), addr }
    }

    /// Waits until the admin API answers.
    async fn ready(&self) {
        let addr = self.addr;
        support::wait_for(Duration::from_secs(60), "the admin API", || async move {
            tokio::net::TcpStream::connect(addr).await.ok().map(|_| ())
        })
        .await;
    }

    /// Stops the host (SIGTERM) and returns every line it logged.
    fn stop(mut self) -> Vec<String> {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        std::mem::take(&mut *self.log.lock().unwrap())
    }
}

impl Drop for HostProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A config for the binary: `[host]` with state in `dir`, then `body`.
fn write_config(dir: &Path, port: u16, body: &str) -> PathBuf {
    let path = dir.join("wattedge.toml");
    let host =
        format!("[host]\nadmin_listen = \"127.0.0.1:{port}\"\nstate_dir = \"{}\"\n\n", dir.join("state").display());
    std::fs::write(&path, host + body).unwrap();
    path
}

fn probe_section(name: &str, mode: &str, run_timeout: &str) -> String {
    format!(
        "[guests.{name}]\ncomponent = \"{}\"\nschedule = \"every 1h\"\nrun_timeout = \"{run_timeout}\"\nconfig = {{ mode = \"{mode}\" }}\n\n[guests.{name}.grants]\ninflux_write = [\"probe\"]\ninflux_read = [\"probe\"]\nsecrets = {{ \"probe.key\" = [\"example.org\"] }}\n\n",
        support::probe()
    )
}

async fn snapshot(addr: SocketAddr, guest: &str) -> Value {
    support::get(addr, &format!("/guests/{guest}")).await.1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_log_line_never_starts_a_host_log_line() {
    let dir = tempfile::tempdir().unwrap();
    let port = support::free_port();
    let body = probe_section("forger", "forge", "10s") + &probe_section("forger_init", "forge-init", "10s");
    let config = write_config(dir.path(), port, &body);
    let host = HostProcess::start(&config, format!("127.0.0.1:{port}").parse().unwrap(), None);
    host.ready().await;
    let addr = host.addr;
    support::wait_for(Duration::from_secs(60), "forger's run and forger_init's failed init", || async move {
        let ran = snapshot(addr, "forger").await["runs"].as_u64().unwrap_or(0) >= 1;
        let failed = snapshot(addr, "forger_init").await["state"] == "failed";
        (ran && failed).then_some(())
    })
    .await;
    // The guest's status text, through the CLI (the admin socket), reaches
    // the terminal escaped too.
    let status = Command::new(BIN).args(["status", "--config"]).arg(&config).output().unwrap();
    let shown = String::from_utf8_lossy(&status.stdout).into_owned();
    assert!(status.status.success(), "{shown} {}", String::from_utf8_lossy(&status.stderr));
    assert!(!shown.contains(['\u{1b}', '\r', '\u{7}']), "no terminal escape reaches the terminal: {shown:?}");
    assert_eq!(shown.lines().count(), 3, "a header and one line per guest: {shown}");
    let log = host.stop();
    for line in &log {
        assert!(!line.starts_with(FORGED_START), "a forged line starts a host log line: {line:?}");
        assert!(!line.contains(['\u{1b}', '\r', '\u{7}']), "a control character reached the log: {line:?}");
    }
    // Every path carried the forged text, escaped, inside a host line.
    for path in [
        "stream=\"log\"",
        "stream=\"stdout\"",
        "influx write denied",
        "influx query denied",
        "secret not granted",
        "run failed",
        "guest init failed",
    ] {
        let hit = log.iter().find(|l| l.contains(path) && l.contains(FORGED_TEXT));
        assert!(hit.is_some(), "no host line logs the forged text via {path:?}:\n{}", log.join("\n"));
    }
}

/// The value of `name=N` fields in `line`.
fn field(line: &str, name: &str) -> Option<u64> {
    let at = line.find(&format!(" {name}="))?;
    let rest = &line[at + name.len() + 2..];
    rest.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_thousand_denied_requests_log_a_few_hundred_warnings_and_a_count() {
    let dir = tempfile::tempdir().unwrap();
    let port = support::free_port();
    let config = write_config(dir.path(), port, &probe_section("flood", "deny-flood", "240s"));
    let host = HostProcess::start(&config, format!("127.0.0.1:{port}").parse().unwrap(), None);
    host.ready().await;
    let addr = host.addr;
    let snap = support::wait_runs(addr, "flood", 1, Duration::from_secs(300)).await;
    assert_eq!(snap["last_run"]["outcome"], "ok", "{snap}");
    assert_eq!(snap["counters"]["denied"], 100_000, "every request was refused: {snap}");
    let (_, metrics) = support::get(addr, "/metrics").await;
    let metrics = metrics.as_str().unwrap_or_default().to_string();
    let dropped_metric: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("wattedge_guest_denied_warnings_dropped_total{guest=\"flood\"} "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no dropped-warnings metric:\n{metrics}"));
    let log = host.stop();
    let warnings: Vec<&String> = log
        .iter()
        .filter(|l| l.contains(" WARN ") && (l.contains("guest=\"flood\"") || l.contains("guest=flood")))
        .filter(|l| l.contains("denied") || l.contains("not granted") || l.contains("refused"))
        .collect();
    let per_request = warnings.iter().filter(|l| !l.contains("dropped")).count();
    eprintln!("{per_request} warnings logged, {dropped_metric} dropped");
    assert!(per_request <= 300, "{per_request} warnings for 100,000 denied requests");
    assert!(per_request >= 10, "refusals are still reported: {per_request}");
    assert_eq!(per_request as u64 + dropped_metric, 100_000, "each refusal is logged or counted");
    let reported: u64 = warnings.iter().filter_map(|l| field(l, "dropped")).sum();
    assert_eq!(reported, dropped_metric, "the log says how many were dropped");
}

/// One raw exchange with the admin API at `addr` with `host` as `Host`.
async fn with_host(addr: SocketAddr, host: &str) -> String {
    try_with_host(addr, host).await.unwrap_or_else(|e| panic!("GET /guests with Host {host}: {e}"))
}

/// [`with_host`], with a reset connection as an error: a connection over
/// the cap is answered 503 and closed, which can reset it while the
/// request is still being written.
async fn try_with_host(addr: SocketAddr, host: &str) -> std::io::Result<String> {
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    let request = format!("GET /guests HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut raw)).await??;
    Ok(String::from_utf8_lossy(&raw).into_owned())
}

/// `GET /health` through the admin socket.
async fn health_on_socket(socket: &Path) -> String {
    let mut stream = tokio::net::UnixStream::connect(socket).await.expect("admin socket");
    stream.write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut raw)).await.unwrap().unwrap();
    String::from_utf8_lossy(&raw).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_refuses_a_rebound_host_name_and_caps_its_connections() {
    let (setup, host) = support::start(&support::probe_guest("p", "every 1h", "mode = \"write\"")).await;
    let addr = host.admin_addr();
    // DNS rebinding: the browser names the attacker's host.
    for evil in
        [format!("evil.example:{}", addr.port()), "evil.example".into(), format!("127.0.0.1.nip.io:{}", addr.port())]
    {
        let reply = with_host(addr, &evil).await;
        assert!(reply.starts_with("HTTP/1.1 421"), "{evil}: {reply}");
        assert!(reply.contains("DNS rebinding"), "{reply}");
        assert!(!reply.contains("\"name\""), "no guest data for {evil}: {reply}");
    }
    for ours in [addr.to_string(), format!("localhost:{}", addr.port())] {
        assert!(with_host(addr, &ours).await.starts_with("HTTP/1.1 200"), "{ours}");
    }
    // Connections beyond the cap are answered 503 at once; the CLI's socket still works.
    let mut held = Vec::new();
    for _ in 0..wattedge::admin::MAX_TCP_CONNECTIONS {
        held.push(tokio::net::TcpStream::connect(addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Refused before a request is read: the answer comes unasked.
    let mut extra = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), extra.read_to_end(&mut raw)).await.unwrap().unwrap();
    let over = String::from_utf8_lossy(&raw).into_owned();
    assert!(over.starts_with("HTTP/1.1 503") && over.contains("too many connections"), "{over}");
    let socket = setup.dir.path().join("state").join("admin.sock");
    assert!(health_on_socket(&socket).await.starts_with("HTTP/1.1 200"));
    drop(held);
    // Until the host has seen the held connections close, a new one can
    // still be over the cap (503, or reset while the request is written).
    support::wait_for(Duration::from_secs(5), "a slot to come back", || async move {
        try_with_host(addr, &addr.to_string()).await.ok()?.starts_with("HTTP/1.1 200").then_some(())
    })
    .await;
    host.shutdown().await;
}

/// A local HTTP server answering every request `200 ok`; its address.
async fn plain_server() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = stream.read(&mut buf).await;
                let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok").await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_granted_loopback_cannot_reach_the_admin_api() {
    let port = support::free_port();
    let body = format!(
        "[guests.snoop]\ncomponent = \"{}\"\nschedule = \"every 1h\"\nrun_timeout = \"10s\"\nconfig = {{ mode = \"write\" }}\n\n[guests.snoop.grants]\nhttp = [\"127.0.0.1\", \"localhost\", \"0.0.0.0\", \"::ffff:127.0.0.1\", \"private:admin.test\"]\ninflux_write = [\"probe\", \"probe_http\"]\n",
        support::probe()
    );
    let setup = support::Setup::new(&format!("127.0.0.1:{port}"), &body);
    std::fs::write(
        &setup.config_path,
        std::fs::read_to_string(&setup.config_path).unwrap().replace(
            "[guests.snoop]",
            "http_timeout = \"2s\"\nresolve = { \"admin.test\" = \"127.0.0.1\" }\n\n[guests.snoop]",
        ),
    )
    .unwrap();
    let host = wattedge::start(setup.config()).await.unwrap_or_else(|e| panic!("start: {e}"));
    let addr = host.admin_addr();
    let control = plain_server().await;
    let mut urls: Vec<(String, String)> = [
        "http://127.0.0.1:{port}/guests",
        "http://localhost:{port}/guests",
        "http://0.0.0.0:{port}/guests",
        "http://[::ffff:127.0.0.1]:{port}/guests",
        "http://admin.test:{port}/guests",
    ]
    .iter()
    .enumerate()
    .map(|(i, u)| (format!("admin{i}"), u.replace("{port}", &port.to_string())))
    .collect();
    urls.push(("control".into(), format!("http://127.0.0.1:{}/", control.port())));
    for (label, url) in &urls {
        let args = json!({"mode": "http", "url": url, "label": label}).to_string();
        let (status, reply) = setup.post(addr, "/guests/snoop/invoke", &args).await;
        assert_eq!(status, 202, "{reply}");
        let running = &host;
        let seen = support::wait_for(Duration::from_secs(20), &format!("probe_http {label}"), || async move {
            let rows = support::rows(running, "probe_http").await;
            let row = rows.into_iter().find(|r| r.tags.get("label") == Some(label))?;
            Some((row.fields.get("status").cloned(), row.fields.get("body").cloned(), row.fields.get("error").cloned()))
        })
        .await;
        if label == "control" {
            assert_eq!(seen.0, Some(FieldValue::Integer(200)), "the grant works elsewhere: {seen:?}");
        } else {
            assert_eq!(seen.0, Some(FieldValue::Integer(0)), "{url} refused: {seen:?}");
            let body = format!("{:?}", seen.1);
            assert!(!body.contains("snoop"), "no admin answer reached the guest: {body}");
        }
    }
    let (_, metrics) = support::get(addr, "/metrics").await;
    let denied = metrics.as_str().unwrap_or_default().lines().find_map(|l| {
        l.strip_prefix("wattedge_guest_http_denied_total{guest=\"snoop\"} ").and_then(|v| v.trim().parse::<u64>().ok())
    });
    assert_eq!(denied, Some(5), "each attempt counted as denied");
    host.shutdown().await;
}

/// A stranger listening on the admin port while no host runs: it answers
/// like a host would and records every request it receives.
fn stranger(
    listener: std::net::TcpListener,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<Vec<String>> {
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let mut received = Vec::new();
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let Ok((mut stream, _)) = listener.accept() else {
                std::thread::sleep(Duration::from_millis(10));
                continue;
            };
            stream.set_nonblocking(false).unwrap();
            stream.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
            let mut raw = Vec::new();
            let mut buf = [0u8; 65536];
            while let Ok(n) = stream.read(&mut buf) {
                if n == 0 {
                    break;
                }
                raw.extend_from_slice(&buf[..n]);
                if raw.windows(4).any(|w| w == b"\r\n\r\n") && !raw.starts_with(b"POST") {
                    break;
                }
            }
            let request = String::from_utf8_lossy(&raw).into_owned();
            let body = if request.starts_with("GET /guests ") {
                json!([{"name": "evil\u{1b}[31m", "state": "ok\nFAKE LINE", "runs": 1, "failures": 0, "detail": "\u{1b}]0;pwned\u{7}"}])
            } else {
                json!({"name": "probe", "runs": 0, "version": "abc", "error": "\u{1b}[2J"})
            }
            .to_string();
            let answer = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(answer.as_bytes());
            received.push(request);
        }
        received
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_sends_no_token_to_a_stranger_listening_on_the_admin_port() {
    let dir = tempfile::tempdir().unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let config = write_config(dir.path(), port, &probe_section("probe", "write", "5s"));
    std::fs::create_dir(dir.path().join("state")).unwrap();
    std::fs::set_permissions(dir.path().join("state"), std::fs::Permissions::from_mode(0o700)).unwrap();
    let token = "tok-that-must-never-leave-0123456789";
    let secrets = wattedge::secrets::SecretStore::open(&dir.path().join("state/secrets.toml")).unwrap();
    secrets.set("admin.token", token, None, true).unwrap();
    let component = dir.path().join("new.wasm");
    std::fs::write(&component, std::fs::read(support::probe()).unwrap()).unwrap();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stranger = stranger(listener, stop.clone());
    let config_arg = config.to_str().unwrap();
    let component_arg = component.to_str().unwrap();
    let runs: [&[&str]; 5] = [
        &["invoke", "probe", "a=1"],
        &["invoke", "probe", "--no-wait"],
        &["swap", "probe", component_arg],
        &["rollback", "probe"],
        &["status"],
    ];
    let mut outputs = Vec::new();
    for args in runs {
        let out =
            Command::new(BIN).args(args).args(["--config", config_arg]).env("WATTEDGE_LOG", "warn").output().unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        outputs.push((args[0], out.status.success(), text));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let received = stranger.join().unwrap();
    assert!(!received.is_empty(), "the CLI tried the port (GETs may)");
    for request in &received {
        assert!(!request.contains(token), "the token leaked to a stranger: {request}");
        assert!(!request.to_ascii_lowercase().contains("authorization"), "{request}");
        assert!(request.starts_with("GET "), "no change is sent to a stranger: {request}");
    }
    for (command, ok, text) in &outputs {
        assert!(!text.contains(['\u{1b}', '\u{7}']), "{command} printed a terminal escape: {text:?}");
        if *command != "status" {
            assert!(!ok, "{command} cannot succeed without the host: {text}");
            assert!(text.contains("admin.sock"), "{command} says it needs the host's socket: {text}");
        }
    }
    let status = &outputs[4].2;
    assert_eq!(status.lines().count(), 2, "one line per guest, escaped: {status}");
    assert!(status.contains("ok\\nFAKE LINE"), "{status}");
}

#[test]
fn a_state_dir_others_can_write_is_refused_with_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), support::free_port(), &probe_section("probe", "write", "5s"));
    let state = dir.path().join("state");
    std::fs::create_dir(&state).unwrap();
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o777)).unwrap();
    let out = Command::new(BIN).args(["run", "--config"]).arg(&config).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "refused: {stderr}");
    assert!(stderr.contains(&state.display().to_string()) && stderr.contains("chmod go-w"), "{stderr}");
    assert!(!state.join("cache").exists() && !state.join("state.redb").exists(), "nothing was written there");
}

/// Every directory under `root` (and `root`) must be 0700 and every other
/// entry 0600.
fn assert_private_tree(root: &Path) -> usize {
    let mut checked = 0;
    let mode = std::fs::metadata(root).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700, "{} is {mode:o}", root.display());
    for entry in std::fs::read_dir(root).unwrap().map(Result::unwrap) {
        let meta = std::fs::symlink_metadata(entry.path()).unwrap();
        if meta.is_dir() {
            checked += assert_private_tree(&entry.path());
        } else {
            let mode = meta.permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{} is {mode:o}", entry.path().display());
            checked += 1;
        }
    }
    checked
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_files_are_private_whatever_the_umask() {
    let dir = tempfile::tempdir().unwrap();
    let port = support::free_port();
    let influx = "[influx]\nbackend = \"v1\"\nurl = \"http://127.0.0.1:9\"\ndatabase = \"x\"\n\n";
    let config = write_config(dir.path(), port, &(influx.to_string() + &probe_section("probe", "write", "10s")));
    let host = HostProcess::start(&config, format!("127.0.0.1:{port}").parse().unwrap(), Some("000"));
    host.ready().await;
    support::wait_runs(host.addr, "probe", 1, Duration::from_secs(120)).await;
    let state = dir.path().join("state");
    for expected in ["state.redb", "secrets.toml", "admin.sock", "outbox", "cache"] {
        assert!(state.join(expected).exists(), "{expected} in {}", state.display());
    }
    let cached = std::fs::read_dir(state.join("cache")).unwrap().count();
    assert!(cached >= 1, "the compiled probe is cached");
    let checked = assert_private_tree(&state);
    assert!(checked >= 6, "{checked} files checked");
    host.stop();
}

/// A Unix socket server run as `nobody` that records what it receives.
const NOBODY_SERVER: &str = r#"
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.bind(sys.argv[1])
s.listen(8)
print("ready", flush=True)
while True:
    c, _ = s.accept()
    c.settimeout(1)
    try:
        d = c.recv(65536)
    except Exception:
        d = b""
    print(repr(d), flush=True)
    try:
        c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}")
    except Exception:
        pass
    c.close()
"#;

#[test]
fn the_cli_talks_to_no_socket_another_user_serves() {
    // SAFETY: geteuid has no side effects.
    let root = unsafe { libc::geteuid() } == 0;
    if !root || !Path::new("/usr/bin/setpriv").exists() || !Path::new("/usr/bin/python3").exists() {
        eprintln!("skipped: needs root, setpriv and /usr/bin/python3 to serve a socket as another user");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let config = write_config(dir.path(), support::free_port(), &probe_section("probe", "write", "5s"));
    let state = dir.path().join("state");
    std::fs::create_dir(&state).unwrap();
    let token = "tok-for-the-real-host-only-9876543210";
    wattedge::secrets::SecretStore::open(&state.join("secrets.toml"))
        .unwrap()
        .set("admin.token", token, None, true)
        .unwrap();
    // A directory others could write: how a planted socket would get there.
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o777)).unwrap();
    let socket = state.join("admin.sock");
    let mut server = Command::new("/usr/bin/setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "/usr/bin/python3", "-c", NOBODY_SERVER])
        .arg(&socket)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut said = std::io::BufReader::new(server.stdout.take().unwrap());
    let mut ready = String::new();
    said.read_line(&mut ready).unwrap();
    assert_eq!(ready.trim(), "ready");
    let out = Command::new(BIN).args(["rollback", "probe", "--config"]).arg(&config).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let _ = server.kill();
    let _ = server.wait();
    let mut received = String::new();
    let _ = said.read_to_string(&mut received);
    assert!(!out.status.success(), "refused: {stderr}");
    assert!(stderr.contains("served by uid 65534"), "{stderr}");
    assert!(!received.contains(token) && !received.contains("POST"), "the planted socket got: {received}");
}
