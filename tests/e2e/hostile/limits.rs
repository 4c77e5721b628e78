//! No guest input can panic the host, one memory limit per guest, bounded
//! host work per call (issue 21, items 3-5). Each test is an attack a
//! hostile guest makes through the real WIT (the probe's `limits` modes, or
//! a hand-written component) and asserts what must be observed instead.

use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::{self, get, http, probe, rows, wait_for, wait_runs};

const RUN_WAIT: Duration = Duration::from_secs(60);

/// A plain-HTTP upstream on 127.0.0.1 that answers `200 ok` to anything and
/// counts the connections it accepted.
struct Upstream {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
}

impl Upstream {
    async fn start() -> Upstream {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind upstream");
        let addr = listener.local_addr().expect("upstream address");
        let connections = Arc::new(AtomicUsize::new(0));
        let counted = connections.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut head = vec![0u8; 64 << 10];
                    let _ = stream.read(&mut head).await;
                    let _ =
                        stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok").await;
                });
            }
        });
        Upstream { addr, connections }
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

/// A probe guest `name` in `config` (TOML inline-table pairs), invoked only,
/// with `grants` (TOML lines) and `memory_limit`.
fn guest(name: &str, config: &str, grants: &str, memory_limit: &str) -> String {
    format!(
        "[guests.{name}]\ncomponent = \"{}\"\nschedule = \"every 24h\"\nrun_timeout = \"20s\"\n\
         memory_limit = \"{memory_limit}\"\nconfig = {{ {config} }}\n\n[guests.{name}.grants]\n{grants}\n\n",
        probe()
    )
}

/// Invokes `name` with `args` and waits for run number `run`; its snapshot.
async fn invoke(setup: &support::Setup, addr: SocketAddr, name: &str, args: &str, run: u64) -> Value {
    let (status, reply) = setup.post(addr, &format!("/guests/{name}/invoke"), args).await;
    assert_eq!(status, 202, "invoke {name}: {reply}");
    wait_runs(addr, name, run, RUN_WAIT).await
}

fn detail(snap: &Value) -> String {
    snap["detail"].as_str().or(snap["last_run"]["detail"].as_str()).unwrap_or_default().to_string()
}

/// `?x=1` as a whole path-with-query used to reach an `expect` in the
/// sending code: a panic, and on the board (panic = "abort") a crash loop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_only_path_is_an_error_to_the_guest_and_the_host_keeps_running() {
    let upstream = Upstream::start().await;
    let authority = upstream.addr.to_string();
    let config = format!("mode = \"raw-http\", authority = \"{authority}\", path = \"?x=1\"");
    let (setup, host) = support::start(&guest("q", &config, &format!("http = [\"{authority}\"]"), "16MiB")).await;
    let addr = host.admin_addr();
    wait_runs(addr, "q", 1, RUN_WAIT).await;
    let snap = invoke(&setup, addr, "q", "{}", 2).await;
    assert_eq!(snap["last_run"]["outcome"], "error", "{snap}");
    assert!(detail(&snap).contains("HttpRequestDenied"), "the guest gets a wasi:http error: {snap}");
    assert_eq!(get(addr, "/health").await.0, 200, "the host still answers");
    let again = invoke(&setup, addr, "q", r#"{"path": "/fine?x=1"}"#, 3).await;
    assert_eq!(again["last_run"]["outcome"], "ok", "the guest runs again: {again}");
    assert_eq!(again["counters"]["http_status"], 200, "{again}");
    assert_eq!(upstream.connections(), 1, "only the well-formed request went out");
    host.shutdown().await;
}

/// A component with 8 linear memories (multi-memory) that, when invoked,
/// grows each to 16 MiB in 1 MiB steps, touching every page. It exports
/// the `guest` world's `init` and `run` with the canonical ABI by hand: both
/// answer `ok` from a zeroed result area at address 0.
fn eight_memories_component() -> Vec<u8> {
    let memories: String = (1..8).map(|k| format!("(memory $m{k} 0)\n")).collect();
    let fills: String = (0..8)
        .map(|k| {
            format!(
                r#"(func $fill{k} (local $i i32) (local $at i32)
                  (block $done (loop $grow
                    (br_if $done (i32.ge_u (memory.size $m{k}) (i32.const 256)))
                    (local.set $at (i32.mul (memory.grow $m{k} (i32.const 16)) (i32.const 65536)))
                    (local.set $i (i32.const 0))
                    (loop $touch
                      (i32.store8 $m{k} (i32.add (local.get $at) (local.get $i)) (i32.const 1))
                      (local.set $i (i32.add (local.get $i) (i32.const 4096)))
                      (br_if $touch (i32.lt_u (local.get $i) (i32.const 1048576))))
                    (br $grow))))
                "#
            )
        })
        .collect();
    let calls: String = (0..8).map(|k| format!("(call $fill{k})")).collect();
    let text = format!(
        r#"(component
  (core module $m
    (memory $m0 (export "memory") 16)
    {memories}
    (global $bump (mut i32) (i32.const 1024))
    (func (export "realloc") (param i32 i32 i32 i32) (result i32) (local $p i32)
      (local.set $p (i32.and (i32.add (global.get $bump) (i32.sub (local.get 2) (i32.const 1)))
                             (i32.sub (i32.const 0) (local.get 2))))
      (global.set $bump (i32.add (local.get $p) (local.get 3)))
      (local.get $p))
    (func (export "init") (param i32 i32) (result i32) (i32.const 0))
    {fills}
    (func (export "run") (param i32 i64 i32) (result i32)
      (if (i32.eq (local.get 0) (i32.const 2)) (then {calls}))
      (i32.const 0)))
  (core instance $i (instantiate $m))
  (type $kv (tuple string string))
  (type $error (variant (case "config" string) (case "credentials" string) (case "upstream" string)
                        (case "store" string) (case "internal" string)))
  (export $error-t "guest-error" (type $error))
  (type $summary (record (field "points-written" u32) (field "detail" (option string))))
  (export $summary-t "summary" (type $summary))
  (type $trigger (variant (case "scheduled" s64) (case "wake" s64) (case "invoked" (list $kv))))
  (export $trigger-t "trigger" (type $trigger))
  (func $init (param "config" (list $kv)) (result (result (error $error-t)))
    (canon lift (core func $i "init") (memory (core memory $i "memory")) (realloc (core func $i "realloc"))))
  (func $run (param "trigger" $trigger-t) (result (result $summary-t (error $error-t)))
    (canon lift (core func $i "run") (memory (core memory $i "memory")) (realloc (core func $i "realloc"))))
  (export "init" (func $init))
  (export "run" (func $run)))"#
    );
    wat::parse_str(text).expect("the component's text is valid")
}

/// One of `/proc/PID/status`'s sizes, in KiB.
fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    let line = status.lines().find(|l| l.starts_with(field)).expect("field in /proc status");
    line.split_whitespace().nth(1).and_then(|v| v.parse().ok()).expect("a size")
}

/// 8 memories × 16 MiB against `memory_limit = "16MiB"`: the limit is the
/// guest's, over the sum of its memories, so it traps at 16 MiB, and the
/// host (a real `wattedge run`) grows by less than the limit + 20 MiB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_memories_of_16_mib_share_one_16_mib_limit() {
    let dir = tempfile::tempdir().expect("temp dir");
    let component = dir.path().join("eight-memories.wasm");
    std::fs::write(&component, eight_memories_component()).expect("write component");
    let port = support::free_port();
    let config = format!(
        "[host]\nadmin_listen = \"127.0.0.1:{port}\"\nstate_dir = \"state\"\n\n[guests.mm]\ncomponent = \"{}\"\n\
         schedule = \"every 24h\"\nmemory_limit = \"16MiB\"\nrun_timeout = \"20s\"\n",
        component.display()
    );
    let path = dir.path().join("wattedge.toml");
    std::fs::write(&path, config).expect("write config");
    let mut child = Command::new(env!("CARGO_BIN_EXE_wattedge"))
        .args(["run", "--config", path.to_str().expect("UTF-8 path")])
        .env("WATTEDGE_LOG", "error")
        .spawn()
        .expect("start wattedge");
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("address");
    let first = wait_for(RUN_WAIT, "the start-up run", || async move {
        tokio::net::TcpStream::connect(addr).await.ok()?;
        let snap = get(addr, "/guests/mm").await.1;
        (snap["runs"] == 1).then_some(snap)
    })
    .await;
    assert_eq!(first["last_run"]["outcome"], "ok", "a scheduled run touches nothing: {first}");
    // Peak RSS from here on (the start-up's own peak does not count).
    let _ = std::fs::write(format!("/proc/{}/clear_refs", child.id()), "5");
    let baseline = status_kib(child.id(), "VmRSS:");
    let token = wattedge::secrets::SecretStore::open(&dir.path().join("state/secrets.toml"))
        .expect("secrets")
        .value("admin.token")
        .expect("admin token");
    for run in 2..=3 {
        let (status, _) = http(addr, "POST", "/guests/mm/invoke", "{}", Some(&token)).await;
        assert_eq!(status, 202);
        let snap = wait_runs(addr, "mm", run, RUN_WAIT).await;
        assert_eq!(snap["last_run"]["outcome"], "trap", "{snap}");
        assert!(detail(&snap).contains("memory_limit"), "the trap names the limit: {snap}");
    }
    let peak = status_kib(child.id(), "VmHWM:");
    let growth_mib = peak.saturating_sub(baseline) as f64 / 1024.0;
    eprintln!("baseline {baseline} KiB, peak {peak} KiB, growth {growth_mib:.1} MiB");
    assert!(growth_mib < 16.0 + 20.0, "the host grew {growth_mib:.1} MiB for a 16 MiB guest");
    assert_eq!(get(addr, "/health").await.0, 200, "the host still serves");
    child.kill().expect("kill wattedge");
    child.wait().expect("reap wattedge");
}

/// 4 MiB of `${secret:...}` placeholders used to expand into ~150 MB of
/// host memory before anything was checked: refused as oversize, unsent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_mib_of_placeholders_are_refused_as_oversize_and_nothing_is_sent() {
    let upstream = Upstream::start().await;
    let authority = upstream.addr.to_string();
    let config = format!(
        "mode = \"raw-http\", method = \"POST\", authority = \"{authority}\", path = \"/upload\", \
         placeholders = \"4194304\", secret_name = \"probe.key\""
    );
    let grants = format!("http = [\"{authority}\"]\nsecrets = {{ \"probe.key\" = [\"http://{authority}\"] }}");
    let setup = support::Setup::new("127.0.0.1:0", &guest("flood", &config, &grants, "64MiB"));
    let secrets = wattedge::secrets::SecretStore::open(&setup.secrets_file()).expect("secrets file");
    // Shorter than its placeholder: the sealed body stays within the body
    // limit, and the placeholder count is what refuses it.
    secrets.set("probe.key", "k3y-v4lu", None, true).expect("set probe.key");
    let host = wattedge::start(setup.config()).await.expect("start");
    let addr = host.admin_addr();
    wait_runs(addr, "flood", 1, RUN_WAIT).await;
    let snap = invoke(&setup, addr, "flood", "{}", 2).await;
    assert_eq!(snap["last_run"]["outcome"], "error", "{snap}");
    let text = detail(&snap);
    assert!(text.contains("oversize: it carries more than 64 secret placeholders"), "refused, saying why: {text}");
    let small = invoke(&setup, addr, "flood", r#"{"placeholders": "0", "body": "k=${secret:probe.key}"}"#, 3).await;
    assert_eq!(small["counters"]["http_status"], 200, "one placeholder is fine: {small}");
    assert_eq!(upstream.connections(), 1, "nothing of the flood was sent upstream");
    let (_, metrics) = get(addr, "/metrics").await;
    let metrics = metrics.as_str().unwrap_or_default().to_string();
    assert!(
        metrics.lines().any(|l| l.contains("guest=\"flood\"") && l.contains("kind=\"oversize\"") && l.ends_with(" 2")),
        "both refusals counted as oversize: {}",
        metrics.lines().filter(|l| l.contains("oversize")).collect::<Vec<_>>().join("\n")
    );
    host.shutdown().await;
}

/// `write-table` with 200,000 field columns keyed in descending order (an
/// insertion sort's worst case: minutes of host CPU) is `invalid` at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_thousand_descending_columns_are_invalid_in_milliseconds() {
    let grants = "influx_write = [\"probe\"]";
    let (setup, host) = support::start(&guest("wide", "mode = \"wide-table\", n = \"200000\"", grants, "128MiB")).await;
    let addr = host.admin_addr();
    wait_runs(addr, "wide", 1, RUN_WAIT).await;
    let snap = invoke(&setup, addr, "wide", "{}", 2).await;
    assert_eq!(snap["last_run"]["outcome"], "error", "{snap}");
    let text = detail(&snap);
    assert!(text.contains("invalid: the table has 200000 field columns, more than the 1024"), "{text}");
    let took = snap["counters"]["call_ms"].as_u64().expect("call_ms counter");
    assert!(took < 2000, "write-table took {took} ms to refuse");
    assert!(rows(&host, "probe").await.is_empty(), "nothing was written");
    host.shutdown().await;
}

/// One point of 65,536 fields used to wrap the embedded block's 16-bit
/// column count and leave its whole series unreadable: refused as
/// `invalid`, and the series still reads, the points before it included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_65536_field_point_is_refused_and_the_series_stays_readable() {
    let grants = "influx_write = [\"probe\"]\ninflux_read = [\"probe\"]";
    let (setup, host) = support::start(&guest("fat", "mode = \"wide-point\", n = \"3\"", grants, "64MiB")).await;
    let addr = host.admin_addr();
    let first = wait_runs(addr, "fat", 1, RUN_WAIT).await;
    assert_eq!(first["last_run"]["outcome"], "ok", "{first}");
    let snap = invoke(&setup, addr, "fat", r#"{"n": "65536"}"#, 2).await;
    assert_eq!(snap["last_run"]["outcome"], "error", "{snap}");
    let text = detail(&snap);
    assert!(text.contains("invalid: point 0: the point has 65536 fields, more than the 1024"), "{text}");
    let widest = invoke(&setup, addr, "fat", r#"{"n": "1024"}"#, 3).await;
    assert_eq!(widest["counters"]["written"], 1, "exactly the cap is fine: {widest}");
    let stored = rows(&host, "probe").await;
    assert_eq!(stored.iter().map(|r| r.fields.len()).collect::<Vec<_>>(), [3, 1024], "the series reads whole");
    let (_, guests) = get(addr, "/guests/fat").await;
    let latest = &guests["latest"]["probe"]["fields"];
    assert_eq!(latest.as_object().map(|o| o.len()), Some(wattedge::capabilities::influx::LATEST_KEYS), "{latest}");
    host.shutdown().await;
}
