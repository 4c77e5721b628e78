//! End-to-end tests of the foundation: real components (the shipped guests
//! and the test probe) run by the real host, with short schedules.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::support::*;
use wattedge::store::FieldValue;

fn float(row: &wattedge::store::Row, field: &str) -> f64 {
    match row.fields.get(field) {
        Some(FieldValue::Float(f)) => *f,
        other => panic!("field {field} is {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_config_lists_three_guests_with_standby_reasons() {
    let text = default_config_text()
        .replace("admin_listen = \"127.0.0.1:9100\"", "admin_listen = \"127.0.0.1:0\"")
        .replace("state_dir = \".wattedge\"", "state_dir = \"state\"")
        .replace("secrets_file = \".wattedge/secrets.toml\"", "secrets_file = \"state/secrets.toml\"");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wattedge.toml");
    std::fs::write(&path, text).unwrap();
    let started = std::time::Instant::now();
    let host = wattedge::start(wattedge::config::Config::load(&path).unwrap()).await.unwrap();
    let addr = host.admin_addr();
    let guests = wait_for(Duration::from_secs(10), "all three guests to leave 'starting'", || async move {
        let (_, list) = get(addr, "/guests").await;
        let all = list.as_array()?.clone();
        (all.len() == 3 && all.iter().all(|g| g["state"] != "starting")).then_some(all)
    })
    .await;
    eprintln!("guests settled after {:?}", started.elapsed());
    let by_name: BTreeMap<_, _> = guests.iter().map(|g| (g["name"].as_str().unwrap().to_string(), g.clone())).collect();
    for (name, secrets) in
        [("watttime", ["watttime.username", "watttime.password"]), ("wattivahti", ["wattivahti.refresh_token", ""])]
    {
        let g = &by_name[name];
        assert_eq!(g["state"], "standby", "{name}: {g}");
        let detail = g["detail"].as_str().unwrap();
        for secret in secrets.iter().filter(|s| !s.is_empty()) {
            assert!(detail.contains(secret), "{name} detail names {secret}: {detail}");
        }
        assert!(detail.contains("wattedge secrets set"), "{name} detail has the command: {detail}");
        assert_eq!(g["version"].as_str().map(str::len), Some(64), "sha256 version");
    }
    let correlator = &by_name["correlator"];
    assert!(correlator["state"] == "ok" || correlator["state"] == "standby", "{correlator}");
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_runs_write_points_and_metrics() {
    let (_setup, host) = start(&probe_guest("writer", "every 1s", "mode = \"write\", version = \"v1\"")).await;
    let addr = host.admin_addr();
    let snap = wait_runs(addr, "writer", 3, Duration::from_secs(10)).await;
    assert_eq!(snap["state"], "ok", "{snap}");
    assert_eq!(snap["failures"], 0);
    let rows = rows(&host, "probe").await;
    assert!(rows.len() >= 3, "one point per run: {rows:?}");
    let runs: Vec<i64> = rows
        .iter()
        .map(|r| match r.fields["run"] {
            FieldValue::Integer(n) => n,
            ref other => panic!("run is {other:?}"),
        })
        .collect();
    assert_eq!(runs[..3], [1, 2, 3], "the state counter survives between runs");
    assert_eq!(rows[0].tags["version"], "v1");
    let (status, metrics) = get(addr, "/metrics").await;
    assert_eq!(status, 200);
    let metrics = metrics.as_str().unwrap().to_string();
    assert!(metrics.contains("wattedge_guest_runs_total{guest=\"writer\"}"), "{metrics}");
    assert!(metrics.contains("wattedge_guest_points_written_total{guest=\"writer\"}"), "{metrics}");
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trapping_guest_does_not_stop_the_others() {
    let body =
        probe_guest("trapper", "every 1s", "mode = \"trap\"") + &probe_guest("writer", "every 1s", "mode = \"write\"");
    let (_setup, host) = start(&body).await;
    let addr = host.admin_addr();
    let trapper = wait_runs(addr, "trapper", 3, Duration::from_secs(10)).await;
    let writer = wait_runs(addr, "writer", 3, Duration::from_secs(10)).await;
    assert_eq!(trapper["failures"], trapper["runs"], "every trapper run fails: {trapper}");
    assert_eq!(trapper["state"], "degraded", "it still runs, badly: {trapper}");
    assert_eq!(trapper["last_run"]["outcome"], "trap");
    assert!(trapper["detail"].as_str().unwrap().contains("panicked"), "{trapper}");
    assert_eq!(writer["failures"], 0, "{writer}");
    assert_eq!(writer["state"], "ok");
    assert!(rows(&host, "probe").await.len() >= 3);
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_of_one_guest_never_overlap() {
    // Each run takes 700 ms; the schedule fires every second and manual
    // invokes arrive on top, so overlapping runs would be likely if allowed.
    let (setup, host) = start(&probe_guest("slow", "every 1s", "mode = \"write\", sleep_ms = \"700\"")).await;
    let addr = host.admin_addr();
    for _ in 0..3 {
        let (status, _) = setup.post(addr, "/guests/slow/invoke", "{}").await;
        assert_eq!(status, 202);
    }
    wait_runs(addr, "slow", 6, Duration::from_secs(20)).await;
    let mut spans: Vec<(f64, f64)> =
        rows(&host, "probe").await.iter().map(|r| (float(r, "started_ms"), float(r, "ended_ms"))).collect();
    spans.sort_by(|a, b| a.0.total_cmp(&b.0));
    assert!(spans.len() >= 6);
    for pair in spans.windows(2) {
        assert!(pair[0].1 >= pair[0].0 + 690.0, "each run really slept: {pair:?}");
        assert!(pair[0].1 <= pair[1].0, "run ending at {} overlaps the next starting at {}", pair[0].1, pair[1].0);
    }
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_moves_from_standby_to_ok_when_the_secret_is_set() {
    let (setup, host) =
        start(&probe_guest("keyed", "every 1h", "mode = \"secret\", secret_name = \"probe.key\"")).await;
    let addr = host.admin_addr();
    let snap = wait_runs(addr, "keyed", 1, Duration::from_secs(10)).await;
    assert_eq!(snap["state"], "standby", "{snap}");
    assert_eq!(snap["counters"]["secret_is_set"], 0);
    // What `wattedge secrets set` does, from another handle on the file.
    let cli = wattedge::secrets::SecretStore::open(&setup.secrets_file()).unwrap();
    cli.set("probe.key", "a-real-value-123", None, true).unwrap();
    let (status, _) = setup.post(addr, "/guests/keyed/invoke", "{}").await;
    assert_eq!(status, 202);
    let snap = wait_runs(addr, "keyed", 2, Duration::from_secs(10)).await;
    assert_eq!(snap["state"], "ok", "{snap}");
    assert_eq!(snap["counters"]["secret_is_set"], 1);
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_admin_token_takes_effect_without_a_restart() {
    let (setup, host) = start(&probe_guest("writer", "every 1h", "mode = \"write\"")).await;
    let addr = host.admin_addr();
    let old = setup.admin_token();
    // As `wattedge secrets set admin.token` does: another store on the same file.
    let cli = wattedge::secrets::SecretStore::open(&setup.secrets_file()).unwrap();
    // Another length: the store sees a change by mtime and size, and the mtime may not have ticked yet.
    cli.set("admin.token", &"n".repeat(old.len() + 1), None, true).unwrap();
    let (status, _) = http(addr, "POST", "/guests/writer/invoke", "{}", Some(&old)).await;
    assert_eq!(status, 401, "the old token stops working");
    let (status, reply) = setup.post(addr, "/guests/writer/invoke", "{}").await;
    assert_eq!(status, 202, "the new one works at once: {reply}");
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invoke_passes_args_and_errors_are_degraded() {
    let body =
        probe_guest("writer", "every 1h", "mode = \"write\"") + &probe_guest("failing", "every 1h", "mode = \"error\"");
    let (setup, host) = start(&body).await;
    let addr = host.admin_addr();
    wait_runs(addr, "writer", 1, Duration::from_secs(10)).await;
    let (status, _) = http(addr, "POST", "/guests/writer/invoke", r#"{"version":"v9"}"#, None).await;
    assert_eq!(status, 401, "mutating endpoints need the admin token");
    let (status, reply) = setup.post(addr, "/guests/writer/invoke", r#"{"version":"v9"}"#).await;
    assert_eq!(status, 202, "{reply}");
    let snap = wait_runs(addr, "writer", 2, Duration::from_secs(10)).await;
    assert_eq!(snap["last_run"]["trigger"], "invoked");
    let versions: Vec<String> = rows(&host, "probe").await.iter().map(|r| r.tags["version"].clone()).collect();
    assert!(versions.contains(&"v9".to_string()), "{versions:?}");
    let failing = wait_runs(addr, "failing", 1, Duration::from_secs(10)).await;
    assert_eq!(failing["state"], "degraded", "{failing}");
    assert!(failing["detail"].as_str().unwrap().contains("probe error"));
    let (status, reply) = setup.post(addr, "/guests/nobody/invoke", "{}").await;
    assert_eq!(status, 404);
    assert_eq!(reply["error"], "no guest named 'nobody'; known guests: writer, failing", "{reply}");
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_waits_for_every_init_and_bad_init_is_reported() {
    let body = probe_guest("sleepy", "every 1h", "mode = \"slow-init\", init_sleep_ms = \"1500\"")
        + &probe_guest("broken", "every 1h", "mode = \"nap\"");
    let (_setup, host) = start(&body).await;
    let addr = host.admin_addr();
    let (status, ready) = get(addr, "/ready").await;
    assert_eq!(status, 503, "{ready}");
    let broken = wait_for(Duration::from_secs(10), "broken to fail init", || async move {
        let (_, g) = get(addr, "/guests/broken").await;
        (g["state"] == "failed").then_some(g)
    })
    .await;
    let detail = broken["detail"].as_str().unwrap();
    assert!(detail.contains("init rejected the configuration") && detail.contains("mode"), "{detail}");
    let sleepy = wait_runs(addr, "sleepy", 1, Duration::from_secs(10)).await;
    assert_eq!(sleepy["state"], "ok");
    let (status, ready) = get(addr, "/ready").await;
    assert_eq!(status, 503, "broken never initialised: {ready}");
    assert!(ready.to_string().contains("broken"), "{ready}");
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_in_a_tight_loop_is_stopped_at_its_deadline() {
    let body = probe_guest("spinner", "every 1h", "mode = \"loop\"")
        .replace("run_timeout = \"5s\"", "run_timeout = \"1s\"")
        + &probe_guest("writer", "every 1s", "mode = \"write\"");
    let (_setup, host) = start(&body).await;
    let addr = host.admin_addr();
    let spinner = wait_runs(addr, "spinner", 1, Duration::from_secs(10)).await;
    assert_eq!(spinner["state"], "degraded");
    assert!(spinner["detail"].as_str().unwrap().contains("CPU deadline"), "{spinner}");
    let seconds = spinner["last_run_seconds"].as_f64().unwrap();
    assert!((0.9..3.0).contains(&seconds), "stopped near its 1 s deadline, took {seconds}");
    let writer = wait_runs(addr, "writer", 2, Duration::from_secs(10)).await;
    assert_eq!(writer["failures"], 0);
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compiled_guests_are_cached_and_a_corrupt_cache_entry_is_recompiled() {
    let setup = Setup::new("127.0.0.1:0", &probe_guest("cached", "every 1h", "mode = \"write\""));
    let cache = setup.dir.path().join("state/cache");
    let host = wattedge::start(setup.config()).await.unwrap();
    let first = wait_runs(host.admin_addr(), "cached", 1, Duration::from_secs(10)).await;
    host.shutdown().await;
    let entries: Vec<_> = std::fs::read_dir(&cache)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|path| path.extension().is_some_and(|x| x == "cwasm"))
        .collect();
    assert_eq!(entries.len(), 1, "one compiled artifact cached: {entries:?}");
    let artifact = entries[0].clone();
    let original = std::fs::read(&artifact).unwrap();
    // A second start uses the cached code and reports the same version.
    let host = wattedge::start(setup.config()).await.unwrap();
    let second = wait_runs(host.admin_addr(), "cached", 1, Duration::from_secs(10)).await;
    assert_eq!(second["version"], first["version"], "the version is the .wasm's sha256, cached or not");
    assert_eq!(second["failures"], 0);
    host.shutdown().await;
    // A corrupt entry is recompiled and replaced, never fatal.
    std::fs::write(&artifact, b"garbage").unwrap();
    let host = wattedge::start(setup.config()).await.unwrap();
    let third = wait_runs(host.admin_addr(), "cached", 1, Duration::from_secs(10)).await;
    assert_eq!(third["failures"], 0, "{third}");
    assert_eq!(std::fs::read(&artifact).unwrap().len(), original.len(), "the entry was rewritten");
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_may_return_at_most_its_cap_of_rows() {
    let (setup, host) = start(&probe_guest("reader", "every 1h", "mode = \"query\", measurement = \"probe\"")).await;
    let addr = host.admin_addr();
    let cap = wattedge::capabilities::influx::MAX_QUERY_ROWS as i64;
    let now = wattedge::store::now_ns();
    let seed = |from: i64, to: i64| -> Vec<wattedge::store::Point> {
        (from..to).map(|i| point("probe", &[], vec![("v", FieldValue::Integer(i))], now - i * 1_000_000)).collect()
    };
    for chunk in seed(0, cap).chunks(25_000) {
        host.store().write(chunk.to_vec()).await.unwrap();
    }
    let (status, _) = setup.post(addr, "/guests/reader/invoke", "{}").await;
    assert_eq!(status, 202);
    let snap = wait_runs(addr, "reader", 2, Duration::from_secs(30)).await;
    assert_eq!(snap["counters"]["rows"], cap, "exactly the cap is fine: {}", snap["detail"]);
    host.store().write(seed(cap, cap + 1)).await.unwrap();
    setup.post(addr, "/guests/reader/invoke", "{}").await;
    let snap = wait_runs(addr, "reader", 3, Duration::from_secs(30)).await;
    assert_eq!(snap["last_run"]["outcome"], "error", "{snap}");
    let detail = snap["detail"].as_str().unwrap_or_default();
    assert!(detail.contains(&format!("more than {cap} rows")) && detail.contains("narrow"), "{detail}");
    host.shutdown().await;
}
