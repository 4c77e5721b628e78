//! Tests of the `wattedge` binary itself: start-up on the default config,
//! clean shutdown on SIGTERM, `check` messages and exit codes, `secrets set`.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::*;

const BIN: &str = env!("CARGO_BIN_EXE_wattedge");

fn wattedge(args: &[&str]) -> std::process::Output {
    Command::new(BIN).args(args).env("WATTEDGE_LOG", "warn").output().expect("run wattedge")
}

/// The default config with its own state dir and port, in a temp dir.
fn default_config_in(dir: &std::path::Path, port: u16) -> std::path::PathBuf {
    let text = default_config_text().replace("127.0.0.1:9100", &format!("127.0.0.1:{port}"));
    let path = dir.join("wattedge.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_serves_guests_quickly_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = default_config_in(dir.path(), port);
    let started = Instant::now();
    let mut child = Command::new(BIN)
        .args(["run", "--config", config.to_str().unwrap()])
        .env("WATTEDGE_LOG", "warn")
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    let listed = wait_for(Duration::from_secs(2), "GET /guests to list three guests", || async move {
        if tokio::net::TcpStream::connect(addr).await.is_err() {
            return None;
        }
        let (_, list) = get(addr, "/guests").await;
        (list.as_array()?.len() == 3).then(Instant::now)
    })
    .await;
    eprintln!("three guests listed {:?} after spawn", listed - started);
    let states = wait_for(Duration::from_secs(10), "watttime and wattivahti in standby", || async move {
        let (_, list) = get(addr, "/guests").await;
        let states: Vec<String> =
            list.as_array()?.iter().map(|g| g["state"].as_str().unwrap_or("").to_string()).collect();
        (states[0] == "standby" && states[1] == "standby").then_some(states)
    })
    .await;
    eprintln!("states {states:?} {:?} after spawn", started.elapsed());
    let (status, _) = get(addr, "/health").await;
    assert_eq!(status, 200);
    let kill = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(kill.success());
    let asked = Instant::now();
    let exit = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(asked.elapsed() < Duration::from_secs(2), "wattedge did not stop within 2 s of SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(exit.success(), "clean exit: {exit:?}");
}

/// Runs `check` on `config_text` (in a temp dir) and returns (exit code, stderr).
fn check(config_text: &str) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, config_text).unwrap();
    let out = wattedge(&["check", "--config", path.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
    (out.status.code().unwrap_or(-1), stderr)
}

fn assert_one_line_error(code: i32, stderr: &str, wanted: &[&str]) {
    assert_eq!(code, 2, "exit code 2: {stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(stderr.contains("bad.toml:"), "names the file and line: {stderr}");
    for w in wanted {
        assert!(stderr.contains(w), "mentions {w:?}: {stderr}");
    }
}

const GOOD: &str = "[host]\nstate_dir = \"state\"\n\n[guests.correlator]\ncomponent = \"builtin:correlator\"\nschedule = \"every 60s\"\n";

#[test]
fn check_accepts_the_default_config_and_a_good_one() {
    let dir = tempfile::tempdir().unwrap();
    let path = default_config_in(dir.path(), 9100);
    let out = wattedge(&["check", "--config", path.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok (3 guests: watttime, wattivahti, correlator)"));
    let (code, stderr) = check(GOOD);
    assert_eq!(code, 0, "{stderr}");
}

#[test]
fn a_board_sets_the_engine_that_check_and_compile_use() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("board.toml");
    std::fs::write(&path, GOOD.replace("[host]\n", "[host]\nboard = \"armv7\"\n")).unwrap();
    // `check` compiles the guest for this machine with armv7's settings.
    let out = wattedge(&["check", "--config", path.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("engine: 16 MiB reserved per guest memory, 64 KiB guard (board armv7)"), "{stdout}");
    // `compile` without --target compiles for the config's board.
    let artifacts = dir.path().join("artifacts");
    let out = wattedge(&["compile", "--config", path.to_str().unwrap(), "--out", artifacts.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let artifact = std::fs::read(artifacts.join("correlator.armv7.cwasm")).expect("artifact for the config's board");
    assert!(wasmtime::Engine::detect_precompiled(&artifact).is_some());
    // With neither, it says what to name.
    let plain = dir.path().join("plain.toml");
    std::fs::write(&plain, GOOD).unwrap();
    let out = wattedge(&["compile", "--config", plain.to_str().unwrap(), "--out", artifacts.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("--target PROFILE") && stderr.contains("pi-zero-2w"), "{stderr}");
}

#[test]
fn an_artifact_built_with_other_engine_settings_than_the_board_s_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let native = wattedge::compile::engine::build(
        wattedge::compile::engine::EngineLimits::native(),
        wattedge::compile::engine::Purpose::Native,
    )
    .unwrap();
    let wasm = wattedge::builtin::component("correlator").unwrap();
    std::fs::write(dir.path().join("correlator.cwasm"), native.precompile_component(wasm).unwrap()).unwrap();
    let config = GOOD.replace("builtin:correlator", "correlator.cwasm");
    std::fs::write(dir.path().join("plain.toml"), &config).unwrap();
    let out = wattedge(&["check", "--config", dir.path().join("plain.toml").to_str().unwrap()]);
    assert!(out.status.success(), "loads without a board: {}", String::from_utf8_lossy(&out.stderr));
    // armv7's profile reserves 16 MiB per memory; the artifact was built for 64 MiB.
    std::fs::write(dir.path().join("bad.toml"), config.replace("[host]\n", "[host]\nboard = \"armv7\"\n")).unwrap();
    let out = wattedge(&["check", "--config", dir.path().join("bad.toml").to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
    assert_one_line_error(
        out.status.code().unwrap_or(-1),
        &stderr,
        &["memory reservation", "--target PROFILE", "board"],
    );
}

#[test]
fn check_rejects_an_unknown_board() {
    let (code, stderr) = check(&GOOD.replace("[host]\n", "[host]\nboard = \"pi6\"\n"));
    assert_one_line_error(code, &stderr, &["host.board", "\"pi6\"", "pi5"]);
}

#[test]
fn check_rejects_an_unknown_key() {
    let (code, stderr) = check(&format!("{GOOD}memory = \"16MiB\"\n"));
    assert_one_line_error(code, &stderr, &["bad.toml:7", "memory", "remove or rename"]);
}

#[test]
fn check_rejects_a_missing_component_file() {
    let (code, stderr) = check(&GOOD.replace("builtin:correlator", "guests/missing.wasm"));
    assert_one_line_error(code, &stderr, &["bad.toml:5", "guests.correlator.component", "missing.wasm does not exist"]);
}

#[test]
fn check_rejects_a_malformed_schedule() {
    let (code, stderr) = check(&GOOD.replace("every 60s", "sometimes"));
    assert_one_line_error(code, &stderr, &["bad.toml:6", "guests.correlator.schedule", "cron"]);
}

#[test]
fn check_rejects_a_grant_for_a_guest_that_does_not_exist() {
    let (code, stderr) = check(&format!("{GOOD}\n[guests.corelator.grants]\ninflux_read = [\"smart_meter\"]\n"));
    assert_one_line_error(code, &stderr, &["bad.toml:8", "corelator", "does not exist"]);
}

#[test]
fn check_rejects_a_file_that_is_not_a_component() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("fake.wasm"), b"<html>not wasm</html>").unwrap();
    let config = GOOD.replace("builtin:correlator", "fake.wasm");
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, config).unwrap();
    let out = wattedge(&["check", "--config", path.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
    assert_one_line_error(out.status.code().unwrap(), &stderr, &["bad.toml:5", "not a WebAssembly component"]);
}

#[test]
fn secrets_set_reads_stdin_and_writes_a_0600_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = default_config_in(dir.path(), 9100);
    let secret = "s3cret-from-stdin-41";
    let mut child = Command::new(BIN)
        .args(["secrets", "set", "watttime.password", "--config", path.to_str().unwrap()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(format!("{secret}\n").as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let printed = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(!printed.contains(secret), "the value is never printed: {printed}");
    let file = dir.path().join(".wattedge/secrets.toml");
    assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
    assert!(std::fs::read_to_string(&file).unwrap().contains(secret));
    let listed = wattedge(&["secrets", "list", "--config", path.to_str().unwrap()]);
    assert_eq!(String::from_utf8_lossy(&listed.stdout).trim(), "watttime.password");
}

#[test]
fn run_refuses_a_secrets_file_others_can_read() {
    let dir = tempfile::tempdir().unwrap();
    let path = default_config_in(dir.path(), free_port());
    let secrets = dir.path().join(".wattedge/secrets.toml");
    std::fs::create_dir_all(secrets.parent().unwrap()).unwrap();
    std::fs::write(&secrets, "\"watttime.password\" = \"pw-0000\"\n").unwrap();
    std::fs::set_permissions(&secrets, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = wattedge(&["run", "--config", path.to_str().unwrap()]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("chmod 600"), "{stderr}");
    assert!(!stderr.contains("pw-0000"), "{stderr}");
}

fn rss_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with(field)).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// A guest that allocates without bound is trapped at its 64 MiB limit, over
/// and over, while the host process grows by less than limit + 20 MiB over
/// its own footprint and keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memory_bomb_never_takes_the_host_past_its_limit() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = format!(
        "[host]\nadmin_listen = \"127.0.0.1:{port}\"\nstate_dir = \"state\"\n\n[guests.bomb]\ncomponent = \"{}\"\nschedule = \"every 1h\"\nmemory_limit = \"64MiB\"\nconfig = {{ mode = \"write\" }}\n\n[guests.bomb.grants]\ninflux_write = [\"probe\"]\n",
        probe()
    );
    let path = dir.path().join("wattedge.toml");
    std::fs::write(&path, config).unwrap();
    let mut child = Command::new(BIN)
        .args(["run", "--config", path.to_str().unwrap()])
        .env("WATTEDGE_LOG", "error")
        .spawn()
        .unwrap();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    wait_for(Duration::from_secs(10), "the host to be up", || async move {
        tokio::net::TcpStream::connect(addr).await.ok()?;
        (get(addr, "/guests/bomb").await.1["runs"] == 1).then_some(())
    })
    .await;
    let baseline = rss_kib(child.id(), "VmRSS:");
    let token = wattedge::secrets::SecretStore::open(&dir.path().join("state/secrets.toml"))
        .unwrap()
        .value("admin.token")
        .unwrap();
    for i in 0..3 {
        let (status, _) = http(addr, "POST", "/guests/bomb/invoke", r#"{"mode":"alloc"}"#, Some(&token)).await;
        assert_eq!(status, 202);
        let snap = wait_runs(addr, "bomb", 2 + i, Duration::from_secs(20)).await;
        assert_eq!(snap["last_run"]["outcome"], "trap", "{snap}");
        assert!(snap["last_run"]["detail"].as_str().unwrap().contains("memory_limit"), "{snap}");
    }
    let peak = rss_kib(child.id(), "VmHWM:");
    let growth_mib = (peak.saturating_sub(baseline)) as f64 / 1024.0;
    eprintln!("baseline {baseline} KiB, peak {peak} KiB, growth {growth_mib:.1} MiB");
    assert!(growth_mib < 64.0 + 20.0, "host grew {growth_mib:.1} MiB for a 64 MiB guest");
    assert_eq!(get(addr, "/health").await.0, 200, "the host still serves");
    child.kill().unwrap();
    child.wait().unwrap();
}

/// A Pi Zero 2 W has 512 MiB of RAM: the host must start and run all three
/// shipped guests inside 1 GiB of virtual address space (wasmtime's default
/// reservations alone would need 4 GiB + guards per memory).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_all_guests_within_one_gib_of_virtual_memory() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = default_config_in(dir.path(), port);
    let script = format!("ulimit -v 1048576 && exec {BIN} run --config {}", config.display());
    let mut child = Command::new("sh").args(["-c", &script]).env("WATTEDGE_LOG", "error").spawn().unwrap();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let guests = wait_for(Duration::from_secs(20), "all three guests to run under ulimit -v 1 GiB", || async move {
        tokio::net::TcpStream::connect(addr).await.ok()?;
        let list = get(addr, "/guests").await.1;
        let all = list.as_array()?.clone();
        all.iter().all(|g| g["runs"].as_u64().unwrap_or(0) >= 1).then_some(all)
    })
    .await;
    for g in &guests {
        assert_ne!(g["state"], "failed", "{g}");
        assert_eq!(g["failures"], 0, "{g}");
    }
    let vm_peak = std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap();
    eprintln!(
        "{}",
        vm_peak.lines().filter(|l| l.starts_with("VmPeak") || l.starts_with("VmRSS")).collect::<Vec<_>>().join(", ")
    );
    child.kill().unwrap();
    child.wait().unwrap();
}
