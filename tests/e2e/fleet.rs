//! Guests from an OCI registry, against a real one (Debian's
//! `docker-registry`, CNCF distribution 2.8): `wattedge publish` and
//! `wattedge keygen` as a user runs them, hosts whose guests name
//! `oci://127.0.0.1:PORT/wattedge/probe:TAG`, signatures, a blob altered in
//! the registry's storage, a registry that is down, and what an armv7 board
//! downloads.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::support::registry::Registry;
use crate::support::registry_token;
use crate::support::*;
use serde_json::Value;

const REPO: &str = "wattedge/probe";

/// Runs the wattedge binary without a config file; panics unless it succeeds.
fn wattedge(args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_wattedge"))
        .args(["--config", "/nonexistent/wattedge.toml"])
        .args(args)
        .env("WATTEDGE_LOG", "warn")
        .output()
        .expect("run wattedge");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "wattedge {args:?} failed:\n{stdout}\n{stderr}");
    stdout
}

/// `wattedge publish PROBE oci://…:TAG --insecure EXTRA…`; the index digest.
fn publish(registry: &Registry, tag: &str, extra: &[&str]) -> String {
    publish_file(registry, &probe(), tag, extra)
}

/// `wattedge publish WASM oci://…:TAG --insecure EXTRA…`; the index digest.
pub(crate) fn publish_file(registry: &Registry, wasm: &str, tag: &str, extra: &[&str]) -> String {
    let reference = format!("oci://{}/{REPO}:{tag}", registry.addr());
    let mut args = vec!["publish", wasm, reference.as_str(), "--insecure"];
    args.extend_from_slice(extra);
    let out = wattedge(&args);
    let digest = out.split("-> ").nth(1).and_then(|s| s.split([',', '\n']).next()).expect("index digest printed");
    assert!(digest.starts_with("sha256:"), "{out}");
    digest.to_string()
}

/// `wattedge keygen DIR/NAME`; the public key it printed.
fn keygen(dir: &Path, name: &str) -> String {
    let path = dir.join(name);
    wattedge(&["keygen", path.to_str().unwrap()]).trim().to_string()
}

/// `[fleet]` trusting `keys`, and a probe guest per `(name, tag)`.
fn body(registry: &Registry, keys: &[&str], guests: &[(&str, &str)]) -> String {
    let keys: Vec<String> = keys.iter().map(|k| format!("{k:?}")).collect();
    let mut text =
        format!("[fleet]\ninsecure_registries = [\"{}\"]\ntrusted_keys = [{}]\n\n", registry.addr(), keys.join(", "));
    for (name, tag) in guests {
        text.push_str(&format!(
            "[guests.{name}]\ncomponent = \"oci://{}/{REPO}:{tag}\"\nschedule = \"every 1h\"\nrun_timeout = \"5s\"\nconfig = {{ mode = \"write\" }}\n\n[guests.{name}.grants]\ninflux_write = [\"probe\"]\n\n",
            registry.addr()
        ));
    }
    text
}

fn probe_sha256() -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(std::fs::read(probe()).unwrap()))
}

/// Waits until `guest` is `failed`; its snapshot.
async fn wait_failed(addr: std::net::SocketAddr, guest: &str) -> Value {
    wait_for(Duration::from_secs(30), &format!("{guest} to fail"), || async move {
        let (_, snap) = get(addr, &format!("/guests/{guest}")).await;
        (snap["state"] == "failed").then_some(snap)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_published_guest_runs_on_a_host_that_names_its_tag() {
    let registry = Registry::start();
    publish(&registry, "stable", &[]);
    let (setup, host) = start(&body(&registry, &[], &[("job", "stable")])).await;
    let snap = wait_runs(host.admin_addr(), "job", 1, Duration::from_secs(60)).await;
    assert_eq!(snap["state"], "ok", "{snap}");
    assert_eq!(snap["version"], probe_sha256(), "runs exactly the published .wasm");
    let blob = setup.dir.path().join("state/oci/blobs/sha256").join(probe_sha256());
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&blob).expect("cached blob").permissions().mode() & 0o777, 0o600);
    assert!(!rows(&host, "probe").await.is_empty(), "the guest wrote its points");
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_trusted_keys_unsigned_and_wrongly_signed_references_are_refused() {
    let registry = Registry::start();
    let keys = tempfile::tempdir().unwrap();
    let trusted = keygen(keys.path(), "trusted.key");
    keygen(keys.path(), "stranger.key");
    let trusted_key = keys.path().join("trusted.key");
    let stranger_key = keys.path().join("stranger.key");
    // Each index records when it was made: its own digest, its own signatures.
    let digests = [
        publish(&registry, "unsigned", &[]),
        publish(&registry, "stranger", &["--sign", stranger_key.to_str().unwrap()]),
        publish(&registry, "signed", &["--sign", trusted_key.to_str().unwrap()]),
    ];
    assert!(digests[0] != digests[1] && digests[1] != digests[2], "{digests:?}");
    let guests = [("unsigned", "unsigned"), ("stranger", "stranger"), ("signed", "signed")];
    let (_setup, host) = start(&body(&registry, &[&trusted], &guests)).await;
    let addr = host.admin_addr();
    let snap = wait_failed(addr, "unsigned").await;
    let detail = snap["detail"].as_str().unwrap_or_default();
    assert!(detail.contains("refused") && detail.contains("is not signed"), "{snap}");
    let snap = wait_failed(addr, "stranger").await;
    let detail = snap["detail"].as_str().unwrap_or_default();
    assert!(detail.contains("not signed by a trusted key") && detail.contains("untrusted key"), "{snap}");
    assert!(snap["version"].is_null(), "the refused version never ran: {snap}");
    let snap = wait_runs(addr, "signed", 1, Duration::from_secs(60)).await;
    assert_eq!(snap["state"], "ok", "a reference signed by a trusted key runs: {snap}");
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_altered_in_the_registry_storage_is_refused_for_its_digest() {
    let registry = Registry::start();
    publish(&registry, "stable", &[]);
    let data = registry.blob_data(&probe_sha256());
    let mut bytes = std::fs::read(&data).expect("the registry stores the .wasm layer");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&data, bytes).unwrap();
    let (setup, host) = start(&body(&registry, &[], &[("job", "stable")])).await;
    let snap = wait_failed(host.admin_addr(), "job").await;
    let detail = snap["detail"].as_str().unwrap_or_default();
    assert!(detail.contains("digest mismatch") && detail.contains(&probe_sha256()), "{snap}");
    let blobs = setup.dir.path().join("state/oci/blobs/sha256");
    let kept: Vec<_> =
        std::fs::read_dir(&blobs).map(|d| d.flatten().map(|e| e.file_name()).collect()).unwrap_or_default();
    assert!(kept.is_empty(), "nothing unverified is kept: {kept:?}");
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_host_starts_from_its_cache_when_the_registry_is_down() {
    let logs = log_buffer();
    let mut registry = Registry::start();
    publish(&registry, "stable", &[]);
    let guests = body(&registry, &[], &[("job", "stable")]);
    let (setup, host) = start(&guests).await;
    wait_runs(host.admin_addr(), "job", 1, Duration::from_secs(60)).await;
    host.shutdown().await;
    registry.stop();

    let host = wattedge::start(setup.config()).await.expect("restart");
    let snap = wait_runs(host.admin_addr(), "job", 1, Duration::from_secs(60)).await;
    assert_eq!(snap["state"], "ok", "{snap}");
    assert_eq!(snap["version"], probe_sha256(), "the version it ran before");
    let logged = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
    let warned = logged.lines().any(|l| l.contains("starting from the cached copy") && l.contains(&registry.addr()));
    assert!(warned, "the offline start is logged with the reference");
    host.shutdown().await;

    // A board that never resolved the reference has nothing to fall back on.
    let (_fresh, host) = start(&guests).await;
    let snap = wait_failed(host.admin_addr(), "job").await;
    let detail = snap["detail"].as_str().unwrap_or_default();
    assert!(detail.contains("cannot be reached") && detail.contains("never resolved this reference"), "{snap}");
    assert!(detail.contains(&format!("oci://{}/{REPO}:stable", registry.addr())), "names the reference: {snap}");
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_armv7_board_downloads_only_its_pulley32_artifact() {
    let registry = Registry::start();
    let keys = tempfile::tempdir().unwrap();
    let public = keygen(keys.path(), "fleet.key");
    let key = keys.path().join("fleet.key");
    publish(&registry, "stable", &["--profiles", "pi4,armv7", "--sign", key.to_str().unwrap()]);
    let board = Setup::new("127.0.0.1:0", &body(&registry, &[&public], &[("job", "stable")]));
    // `board` belongs in [host]: rewrite the generated config with it.
    let text =
        std::fs::read_to_string(&board.config_path).unwrap().replacen("[host]\n", "[host]\nboard = \"armv7\"\n", 1);
    std::fs::write(&board.config_path, text).unwrap();
    let config = board.config();
    let fleet = wattedge::fleet::Fleet::new(&config, None);
    let reference = wattedge::fleet::OciReference::parse(&format!("oci://{}/{REPO}:stable", registry.addr())).unwrap();
    let before = registry.access_lines();
    let resolved = fleet.resolve(&reference).await.expect("resolved");
    assert!(resolved.precompiled, "a signed index gives the board its precompiled artifact");
    let gets = registry.blob_gets_after(before);
    let artifact = resolved.artifact.to_string();
    assert_eq!(gets.len(), 2, "one signature and one artifact, nothing else: {gets:?}");
    assert!(gets.contains(&artifact), "{gets:?}");
    assert!(!gets.iter().any(|g| g.ends_with(&probe_sha256())), "never the .wasm: {gets:?}");
    let bytes = std::fs::read(&resolved.path).unwrap();
    assert!(wasmtime::Engine::detect_precompiled(&bytes).is_some(), "a wasmtime artifact");
    assert_eq!(layer_of(&fleet, &registry, "armv7").await, artifact, "the armv7 manifest's layer");
    assert_ne!(layer_of(&fleet, &registry, "pi4").await, artifact);
    assert_eq!(fleet.blob_downloads(), 2);
}

/// The layer digest of the manifest for board `profile` in the `stable` index.
async fn layer_of(fleet: &wattedge::fleet::Fleet, registry: &Registry, profile: &str) -> String {
    use wattedge::fleet::manifest::{Document, PROFILE_ANNOTATION};
    let client = fleet.registry(&registry.addr()).unwrap();
    let index = client.manifest(REPO, "stable", 1 << 20).await.unwrap().expect("index");
    let index = Document::parse(&index.bytes).unwrap();
    let entry =
        index.manifests.iter().find(|m| m.annotations.get(PROFILE_ANNOTATION).map(String::as_str) == Some(profile));
    let manifest = client.manifest(REPO, &entry.expect("profile in the index").digest, 1 << 20).await.unwrap().unwrap();
    Document::parse(&manifest.bytes).unwrap().layers[0].digest.clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_with_token_auth_is_used_with_credentials_from_the_secrets_store() {
    const PASSWORD: &str = "s3cret-REGISTRY-7d41";
    let tokens = registry_token::TokenService::start("publisher", PASSWORD).await;
    let auth = registry::TokenAuth {
        realm: tokens.realm(),
        service: registry_token::SERVICE.into(),
        issuer: registry_token::ISSUER.into(),
        cert_pem: tokens.cert_pem.clone(),
    };
    let registry = Registry::start_with_token_auth(&auth);
    let with_credentials = body(&registry, &[], &[("job", "stable")]).replacen(
        "\n\n",
        "\n\n[fleet.credentials.\"REGISTRY\"]\nusername = \"publisher\"\npassword = \"${secret:registry.password}\"\n\n"
            .replace("REGISTRY", &registry.addr())
            .as_str(),
        1,
    );
    let setup = Setup::new("127.0.0.1:0", &with_credentials);
    let secrets = wattedge::secrets::SecretStore::open(&setup.secrets_file()).unwrap();
    secrets.set("registry.password", PASSWORD, None, true).unwrap();

    // publish reads the same [fleet] credentials and secret.
    let reference = format!("oci://{}/{REPO}:stable", registry.addr());
    let output = Command::new(env!("CARGO_BIN_EXE_wattedge"))
        .args(["--config", setup.config_path.to_str().unwrap(), "publish", &probe(), &reference])
        .output()
        .expect("run wattedge publish");
    let printed = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "{printed}");
    assert!(!printed.contains(PASSWORD), "the password is never printed");
    assert!(tokens.issued.load(std::sync::atomic::Ordering::SeqCst) > 0, "publish used tokens");

    let host = wattedge::start(setup.config()).await.expect("start");
    let snap = wait_runs(host.admin_addr(), "job", 1, Duration::from_secs(60)).await;
    assert_eq!(snap["version"], probe_sha256(), "{snap}");
    host.shutdown().await;

    // Without credentials the token service refuses, and the host says so.
    let (_anonymous, host) = start(&body(&registry, &[], &[("job", "stable")])).await;
    let snap = wait_failed(host.admin_addr(), "job").await;
    let detail = snap["detail"].as_str().unwrap_or_default();
    assert!(detail.contains("token service") && detail.contains("HTTP 401"), "{snap}");
    assert!(tokens.refused.load(std::sync::atomic::Ordering::SeqCst) > 0);
    host.shutdown().await;
}

/// The probe with a custom section appended: another version (sha256) that
/// behaves the same.
pub(crate) fn probe_variant(dir: &Path, tag: &str) -> (String, String) {
    use sha2::Digest;
    let mut bytes = std::fs::read(probe()).unwrap();
    let name = b"wattedge-test-version";
    let mut payload = vec![name.len() as u8];
    payload.extend_from_slice(name);
    payload.extend_from_slice(tag.as_bytes());
    bytes.push(0);
    bytes.push(payload.len() as u8); // < 128: one LEB128 byte
    bytes.extend_from_slice(&payload);
    let path = dir.join(format!("probe-{tag}.wasm"));
    std::fs::write(&path, &bytes).unwrap();
    (path.display().to_string(), hex::encode(sha2::Sha256::digest(&bytes)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_new_version_leaves_the_board_on_its_verified_copy() {
    let logs = log_buffer();
    let registry = Registry::start();
    let keys = tempfile::tempdir().unwrap();
    let public = keygen(keys.path(), "fleet.key");
    let key = keys.path().join("fleet.key");
    publish(&registry, "stable", &["--sign", key.to_str().unwrap()]);
    let (setup, host) = start(&body(&registry, &[&public], &[("job", "stable")])).await;
    wait_runs(host.admin_addr(), "job", 1, Duration::from_secs(60)).await;
    host.shutdown().await;

    // v2 is pushed to the same tag without a signature: boards must not run it.
    let (v2, v2_sha) = probe_variant(keys.path(), "v2");
    publish_file(&registry, &v2, "stable", &[]);
    let host = wattedge::start(setup.config()).await.expect("restart");
    let unsigned = |s: &Value| rollout(s)["last_refusal"].as_str().is_some_and(|r| r.contains("is not signed"));
    let snap = on_every_board(&[host.admin_addr()], Duration::from_secs(60), "refuses unsigned v2", unsigned).await;
    assert_eq!(snap[0]["version"], probe_sha256(), "still the signed v1, not {v2_sha}: {}", snap[0]);
    let logged = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
    let warned = logged
        .lines()
        .any(|l| l.contains("followed tag not updated") && l.contains(&registry.addr()) && l.contains("is not signed"));
    assert!(warned, "the refusal is logged with the reference");
    host.shutdown().await;

    // Signed, v2 is rolled out right after the next start, through the gate.
    let d2 = publish_file(&registry, &v2, "stable", &["--sign", key.to_str().unwrap()]);
    let host = wattedge::start(setup.config()).await.expect("restart");
    let gating = format!("gating {d2}");
    let on_v2 = |s: &Value| s["version"] == v2_sha.as_str() && rollout(s)["state"] == gating.as_str();
    on_every_board(&[host.admin_addr()], Duration::from_secs(60), "rolls out signed v2", on_v2).await;
    host.shutdown().await;
}

/// A board following `stable` with a 1 s poll, a run every second and a
/// gate of `gate_runs` runs in 60 s.
fn quick_board(registry: &Registry, gate_runs: u32) -> String {
    format!(
        "[fleet]\ninsecure_registries = [\"{addr}\"]\npoll_interval = \"1s\"\npoll_jitter = \"0s\"\ngate_runs = {gate_runs}\ngate_window = \"60s\"\n\n\
         [guests.job]\ncomponent = \"oci://{addr}/{REPO}:stable\"\nschedule = \"every 1s\"\nrun_timeout = \"5s\"\ncompile = \"quick\"\nconfig = {{ mode = \"write\" }}\n\n\
         [guests.job.grants]\ninflux_write = [\"probe\"]\n",
        addr = registry.addr()
    )
}

/// Lines logged about `registry` that contain `what`.
fn logged_lines(logs: &std::sync::Arc<std::sync::Mutex<Vec<u8>>>, registry: &Registry, what: &str) -> Vec<String> {
    let logged = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
    logged.lines().filter(|l| l.contains(&registry.addr()) && l.contains(what)).map(str::to_string).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_board_started_after_the_tag_moved_runs_what_it_ran_and_gates_the_new_digest() {
    let logs = log_buffer();
    let registry = Registry::start();
    let dir = tempfile::tempdir().unwrap();
    let (v1, v1_sha) = probe_variant(dir.path(), "v1");
    let (v2, v2_sha) = probe_variant(dir.path(), "v2");
    let (bad, _) = probe_switched(dir.path(), b"runfail_");
    let d1 = publish_file(&registry, &v1, "stable", &[]);
    let (setup, host) = start(&quick_board(&registry, 32)).await;
    let long = Duration::from_secs(60);
    let on_v1 = |s: &Value| s["version"] == v1_sha.as_str() && rollout(s)["digest"] == d1.as_str();
    on_every_board(&[host.admin_addr()], long, "runs v1", on_v1).await;
    host.shutdown().await;
    let started_from_v1 = || logged_lines(&logs, &registry, "starting from the cached copy it ran before");

    // While the board is off the tag moves to a version whose runs fail:
    // it starts v1 and rolls out the new digest through the gate, which
    // fails it.
    let bad_digest = publish_file(&registry, &bad, "stable", &[]);
    let host = wattedge::start(setup.config()).await.expect("restart");
    let rolled_back = format!("rolled back from {bad_digest}");
    let back = |s: &Value| rollout(s)["state"] == rolled_back.as_str();
    let snap = on_every_board(&[host.admin_addr()], long, "rolls back from the bad digest", back).await.remove(0);
    assert_eq!(snap["version"], v1_sha.as_str(), "back on v1: {snap}");
    assert!(rollout(&snap)["last_refusal"].as_str().unwrap().contains("health gate"), "{snap}");
    let started = started_from_v1();
    assert_eq!(started.len(), 1, "{started:#?}");
    assert!(started[0].contains(&v1_sha), "started from v1: {started:#?}");

    // v2 is published and the board shut down while v2 is in its gate: not
    // gated, so the next start runs v1 again and gates v2 again.
    let d2 = publish_file(&registry, &v2, "stable", &[]);
    let gating = format!("gating {d2}");
    let in_gate = |s: &Value| s["version"] == v2_sha.as_str() && rollout(s)["state"] == gating.as_str();
    on_every_board(&[host.admin_addr()], long, "gates v2", in_gate).await;
    host.shutdown().await;
    let host = wattedge::start(setup.config()).await.expect("restart");
    on_every_board(&[host.admin_addr()], long, "gates v2 again", in_gate).await;
    let started = started_from_v1();
    assert_eq!(started.len(), 2, "{started:#?}");
    assert!(started[1].contains(&v1_sha), "started from v1, not the ungated v2: {started:#?}");
    host.shutdown().await;
}

/// The probe with its build-time switch set to `behaviour` (8 bytes:
/// `initfail` or `runfail_`, see tests/probe/src/lib.rs): another version
/// whose `init` or runs fail whatever the config says.
pub(crate) fn probe_switched(dir: &Path, behaviour: &[u8; 8]) -> (String, String) {
    use sha2::Digest;
    let mut bytes = std::fs::read(probe()).unwrap();
    let marker = b"wattedge-probe-build-sw:normal__";
    let at: Vec<usize> = bytes.windows(marker.len()).enumerate().filter(|(_, w)| w == marker).map(|(i, _)| i).collect();
    assert_eq!(at.len(), 1, "the probe holds its build switch exactly once");
    bytes[at[0] + 24..at[0] + 32].copy_from_slice(behaviour);
    let path = dir.join(format!("probe-{}.wasm", String::from_utf8_lossy(behaviour)));
    std::fs::write(&path, &bytes).unwrap();
    (path.display().to_string(), hex::encode(sha2::Sha256::digest(&bytes)))
}

/// Seconds between a board's polls, and the most jitter added to one.
const POLL: u64 = 2;
const JITTER: u64 = 1;
/// The gate: the first 2 runs of a new version within 20 s.
const GATE_WINDOW: u64 = 20;
/// Time a debug build may take to compile a new version (quick mode) on
/// top of a poll: the test asserts the rollout within this.
const COMPILE_SLACK: u64 = 20;
/// What a poll that finds a new digest takes besides its wait: the
/// manifest, the index and the layer from a loopback registry, and the
/// previous poll (one manifest request) before the wait started.
const FETCH_SLACK: Duration = Duration::from_secs(1);

/// A board following `stable` with a short poll, a run every second, and
/// its own `site` tag and health rows into the central influxd; its admin
/// API on `admin`.
fn board(registry: &Registry, influxd: &crate::support::influxd::Influxd, site: &str, admin: &str) -> Setup {
    let body = format!(
        "[influx]\nbackend = \"v1\"\nurl = \"{}\"\ndatabase = \"fleet\"\nflush_interval = \"100ms\"\nretry_max_delay = \"1s\"\n\n\
         [fleet]\ninsecure_registries = [\"{addr}\"]\npoll_interval = \"{POLL}s\"\npoll_jitter = \"{JITTER}s\"\ngate_runs = 2\ngate_window = \"{GATE_WINDOW}s\"\n\n\
         [guests.job]\ncomponent = \"oci://{addr}/{REPO}:stable\"\nschedule = \"every 1s\"\nrun_timeout = \"5s\"\ncompile = \"quick\"\nconfig = {{ mode = \"write\" }}\n\n\
         [guests.job.grants]\ninflux_write = [\"probe\"]\n",
        influxd.url(),
        addr = registry.addr()
    );
    let setup = Setup::new(admin, &body);
    let text = std::fs::read_to_string(&setup.config_path).unwrap().replacen(
        "health_interval = \"0s\"\n",
        &format!("health_interval = \"1s\"\ntags = {{ site = \"{site}\" }}\n"),
        1,
    );
    std::fs::write(&setup.config_path, text).unwrap();
    setup
}

/// A `wattedge run --config F` process, as a board runs it; its log
/// (`WATTEDGE_LOG=info`) in `wattedge.log` next to the config. Killed when
/// dropped, so a failed test leaves no process behind.
struct BoardProcess {
    child: std::process::Child,
    log: std::path::PathBuf,
}

impl BoardProcess {
    /// Spawns the host for `setup` and waits until its admin API answers.
    async fn start(setup: &Setup, admin: std::net::SocketAddr) -> BoardProcess {
        let log = setup.dir.path().join("wattedge.log");
        let file = std::fs::OpenOptions::new().create(true).append(true).open(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_wattedge"))
            .args(["run", "--config", setup.config_path.to_str().unwrap()])
            .env("WATTEDGE_LOG", "info,cranelift=warn,wasmtime=warn")
            .stdout(std::process::Stdio::null())
            .stderr(file)
            .spawn()
            .expect("spawn wattedge run");
        let board = BoardProcess { child, log };
        wait_for(Duration::from_secs(30), &format!("the board on {admin} to answer"), || async move {
            tokio::net::TcpStream::connect(admin).await.ok()?;
            (get(admin, "/health").await.0 == 200).then_some(())
        })
        .await;
        board
    }

    /// SIGTERM, and the clean exit a service manager expects.
    fn stop(mut self) {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
        let asked = std::time::Instant::now();
        let exit = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(asked.elapsed() < Duration::from_secs(10), "board {pid} did not stop within 10 s of SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(exit.success(), "clean exit: {exit:?}\n{}", self.log());
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for BoardProcess {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `GET /api/store` of a remote backend, typed: what the test reads of it.
#[derive(serde::Deserialize, Debug)]
struct StoreStatus {
    backend: String,
    outbox_depth: u64,
}

/// Waits until the board's outbox is empty: every point it accepted has
/// reached the database.
async fn outbox_drained(admin: std::net::SocketAddr, timeout: Duration) {
    wait_for(timeout, &format!("the outbox of the board on {admin} to drain"), || async move {
        let (_, body) = get(admin, "/api/store").await;
        let status: StoreStatus = serde_json::from_value(body).ok()?;
        assert_eq!(status.backend, "influxdb-v1", "{status:?}");
        (status.outbox_depth == 0).then_some(())
    })
    .await;
}

/// The blobs a board keeps in `state_dir/oci` (hex digests).
fn cached_blobs(setup: &Setup) -> std::collections::BTreeSet<String> {
    let dir = setup.dir.path().join("state/oci/blobs/sha256");
    std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect()
}

/// Waits until every board keeps exactly the blobs `wanted`.
async fn caches_hold(setups: &[Setup], wanted: &[&str], what: &str) {
    let wanted: std::collections::BTreeSet<String> = wanted.iter().map(|s| s.to_string()).collect();
    for (i, setup) in setups.iter().enumerate() {
        let wanted = &wanted;
        let what = format!("board {i}'s cache to hold only {what}");
        wait_for(Duration::from_secs(10), &what, || async move { (cached_blobs(setup) == *wanted).then_some(()) })
            .await;
    }
}

/// Waits until every board's `job` snapshot passes `check`; the snapshots.
async fn on_every_board(
    boards: &[std::net::SocketAddr],
    timeout: Duration,
    what: &str,
    check: impl Fn(&Value) -> bool + Copy,
) -> Vec<Value> {
    let mut snaps = Vec::new();
    for (i, addr) in boards.iter().copied().enumerate() {
        let what = format!("board {i}: {what}");
        snaps.push(
            wait_for(timeout, &what, || async move {
                let (_, snap) = get(addr, "/guests/job").await;
                check(&snap).then_some(snap)
            })
            .await,
        );
    }
    snaps
}

fn rollout(snap: &Value) -> &Value {
    &snap["rollout"]
}

fn time_of(value: &Value) -> chrono::DateTime<chrono::Utc> {
    value.as_str().and_then(|t| t.parse().ok()).unwrap_or_else(|| panic!("not a time: {value}"))
}

/// Every scheduled run in the snapshot's recent runs started within
/// `most` of the one before: none was skipped.
fn no_scheduled_run_skipped(snap: &Value, most: Duration) {
    let starts: Vec<chrono::DateTime<chrono::Utc>> =
        snap["recent_runs"].as_array().unwrap().iter().map(|r| time_of(&r["started"])).collect();
    for pair in starts.windows(2) {
        let gap = (pair[1] - pair[0]).to_std().unwrap();
        assert!(gap <= most, "runs {gap:?} apart (schedule every 1s): {snap}");
    }
}

/// The board noticed the tag move within one poll plus jitter of
/// `published`, and ran the new `version` within the compile slack after.
fn noticed_within_a_poll(snap: &Value, published: chrono::DateTime<chrono::Utc>, version: &str) {
    let noticed = time_of(&rollout(snap)["noticed"]);
    let detected = (noticed - published).to_std().unwrap_or_default();
    let poll = Duration::from_secs(POLL + JITTER) + FETCH_SLACK;
    assert!(detected <= poll, "noticed {detected:?} after the publish (poll {POLL}s + jitter {JITTER}s): {snap}");
    let first_run = snap["recent_runs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["version"] == version)
        .map(|r| time_of(&r["started"]))
        .min()
        .expect("a run of the new version");
    let running = (first_run - noticed).to_std().unwrap_or_default();
    assert!(running <= Duration::from_secs(COMPILE_SLACK), "first run {running:?} after noticing: {snap}");
    eprintln!("noticed {detected:?} after the publish, ran {running:?} after that");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_boards_follow_a_tag_roll_out_refuse_and_roll_back_by_themselves() {
    let test_started = std::time::Instant::now();
    let registry = Registry::start();
    let influxd = crate::support::influxd::Influxd::start();
    influxd.create_database("fleet");
    let dir = tempfile::tempdir().unwrap();
    let (v1, v1_sha) = probe_variant(dir.path(), "v1");
    let (v2, v2_sha) = probe_variant(dir.path(), "v2");
    let (v3, v3_sha) = probe_switched(dir.path(), b"initfail");
    let (v4, v4_sha) = probe_switched(dir.path(), b"runfail_");
    let (v5, v5_sha) = probe_variant(dir.path(), "v5");
    let d1 = publish_file(&registry, &v1, "stable", &[]);

    // Three `wattedge run` processes, three state dirs and admin ports.
    let sites = ["north", "south", "east"];
    let admins: Vec<std::net::SocketAddr> =
        sites.iter().map(|_| format!("127.0.0.1:{}", free_port()).parse().unwrap()).collect();
    let setups: Vec<Setup> =
        sites.iter().zip(&admins).map(|(site, admin)| board(&registry, &influxd, site, &admin.to_string())).collect();
    let mut boards = Vec::new();
    for (setup, admin) in setups.iter().zip(&admins) {
        boards.push(BoardProcess::start(setup, *admin).await);
    }
    let long = Duration::from_secs(90);
    on_every_board(&admins, long, "runs v1", |s| s["version"] == v1_sha.as_str() && s["runs"].as_u64() >= Some(2))
        .await;
    for snap in on_every_board(&admins, long, "follows v1", |s| rollout(s)["digest"] == d1.as_str()).await {
        assert_eq!(rollout(&snap)["reference"], format!("oci://{}/{REPO}:stable", registry.addr()), "{snap}");
        assert_eq!(rollout(&snap)["state"], "following", "{snap}");
    }

    // v2: every board notices within one poll plus jitter and runs it
    // after compiling it.
    let d2 = publish_file(&registry, &v2, "stable", &[]);
    let published = chrono::Utc::now();
    let moved = std::time::Instant::now();
    let within = Duration::from_secs(POLL + JITTER + COMPILE_SLACK);
    let runs_v2 = |s: &Value| {
        let ran = s["recent_runs"].as_array().is_some_and(|runs| runs.iter().any(|r| r["version"] == v2_sha.as_str()));
        s["version"] == v2_sha.as_str() && ran
    };
    for snap in on_every_board(&admins, within, "runs v2", runs_v2).await {
        noticed_within_a_poll(&snap, published, &v2_sha);
    }
    assert!(moved.elapsed() <= within, "rolled out in {:?}", moved.elapsed());
    let following = |s: &Value| rollout(s)["digest"] == d2.as_str() && rollout(s)["state"] == "following";
    for snap in on_every_board(&admins, long, "v2 passes its gate", following).await {
        no_scheduled_run_skipped(&snap, Duration::from_millis(2500));
    }
    caches_hold(&setups, &[&v1_sha, &v2_sha], "v2 and v1 (the rollback target)").await;

    // v3's init fails: refused, v2 keeps running.
    let d3 = publish_file(&registry, &v3, "stable", &[]);
    let refused_v3 = |s: &Value| rollout(s)["last_refusal"].as_str().is_some_and(|r| r.contains(&d3));
    for snap in on_every_board(&admins, long, "refuses v3", refused_v3).await {
        let refusal = rollout(&snap)["last_refusal"].as_str().unwrap();
        assert!(refusal.contains("init failed") && refusal.contains("probe built to fail init"), "{snap}");
        assert_eq!(snap["version"], v2_sha.as_str(), "v2 keeps running: {snap}");
        assert_eq!(rollout(&snap)["digest"], d2.as_str(), "{snap}");
    }
    caches_hold(&setups, &[&v1_sha, &v2_sha], &format!("v2 and v1, not the refused v3 {v3_sha}")).await;

    // v4's runs fail: every board rolls back to v2 inside the gate window.
    let d4 = publish_file(&registry, &v4, "stable", &[]);
    let moved = std::time::Instant::now();
    let rolled_back = format!("rolled back from {d4}");
    let back = |s: &Value| rollout(s)["state"] == rolled_back.as_str();
    let within = Duration::from_secs(POLL + JITTER + COMPILE_SLACK + GATE_WINDOW);
    for snap in on_every_board(&admins, within, "rolls back from v4", back).await {
        assert_eq!(snap["version"], v2_sha.as_str(), "back on v2: {snap}");
        assert_eq!(rollout(&snap)["digest"], d2.as_str(), "{snap}");
        let refusal = rollout(&snap)["last_refusal"].as_str().unwrap();
        assert!(refusal.contains("health gate") && refusal.contains("probe built to fail its runs"), "{snap}");
        let v4_runs =
            snap["recent_runs"].as_array().unwrap().iter().filter(|r| r["version"] == v4_sha.as_str()).count();
        assert!(v4_runs >= 1, "v4 did run before the rollback: {snap}");
    }
    assert!(moved.elapsed() <= within, "rolled back in {:?}", moved.elapsed());
    // Not retried while the tag stays on v4.
    tokio::time::sleep(Duration::from_secs(2 * (POLL + JITTER))).await;
    for snap in on_every_board(&admins, long, "stays on v2", |s| s["version"] == v2_sha.as_str()).await {
        assert_eq!(rollout(&snap)["state"], rolled_back.as_str(), "v4 is not tried again: {snap}");
    }
    caches_hold(&setups, &[&v1_sha, &v2_sha], &format!("v2 and v1, not the rolled back v4 {v4_sha}")).await;

    // A board restarted (SIGTERM, a new process) while the tag still names
    // v4 starts on v2 (the refusal is kept in refs.json), without trying v4
    // again.
    boards.remove(0).stop();
    boards.insert(0, BoardProcess::start(&setups[0], admins[0]).await);
    let restarted = &admins[..1];
    let runs_v2 =
        |s: &Value| s["version"] == v2_sha.as_str() && s["runs"].as_u64() >= Some(2) && !rollout(s)["digest"].is_null();
    let snap = on_every_board(restarted, long, "restarts on v2", runs_v2).await.remove(0);
    let v4_ran = snap["recent_runs"].as_array().unwrap().iter().any(|r| r["version"] == v4_sha.as_str());
    assert!(!v4_ran, "the restarted board never ran v4: {snap}");
    assert_eq!(rollout(&snap)["digest"], d2.as_str(), "{snap}");

    // The tag moves to v5: v5 is tried (and passes).
    let d5 = publish_file(&registry, &v5, "stable", &[]);
    let on_v5 = |s: &Value| rollout(s)["digest"] == d5.as_str() && rollout(s)["state"] == "following";
    for snap in on_every_board(&admins, long, "follows v5", on_v5).await {
        assert_eq!(snap["version"], v5_sha.as_str(), "{snap}");
    }
    // Five versions pulled; each board keeps two: v5 and v2 to roll back to.
    caches_hold(&setups, &[&v2_sha, &v5_sha], "v5 and v2").await;

    // No point lost: each board's run numbers in the central influxd are
    // 1..=n without a gap (the counter lives in guest state, across swaps
    // and the restart).
    for admin in &admins {
        outbox_drained(*admin, long).await;
    }
    for site in sites {
        let series = influxd.series("fleet", &format!("SELECT \"run\" FROM \"probe\" WHERE \"site\" = '{site}'"));
        let runs: Vec<i64> = series
            .iter()
            .flat_map(|s| s["values"].as_array().cloned().unwrap_or_default())
            .map(|row| row[1].as_i64().unwrap())
            .collect();
        assert!(runs.len() >= 5, "{site}: {runs:?}");
        let expected: Vec<i64> = (1..=runs.len() as i64).collect();
        let mut sorted = runs.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, expected, "{site}: every run's point arrived exactly once");
        let health = influxd.series("fleet", &format!("SELECT * FROM \"wattedge_host\" WHERE \"site\" = '{site}'"));
        assert!(!health.is_empty(), "{site}: health rows in the central influxd");
    }
    for board in boards {
        board.stop();
    }
    eprintln!("three boards, v1..v5: {:?}", test_started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_followed_tag_moved_to_an_unsigned_or_altered_digest_leaves_the_running_version() {
    let logs = log_buffer();
    let registry = Registry::start();
    let keys = tempfile::tempdir().unwrap();
    let public = keygen(keys.path(), "fleet.key");
    let key = keys.path().join("fleet.key");
    let d1 = publish(&registry, "stable", &["--sign", key.to_str().unwrap()]);
    let text = body(&registry, &[&public], &[("job", "stable")]).replacen(
        "trusted_keys",
        "poll_interval = \"1s\"\npoll_jitter = \"0s\"\ntrusted_keys",
        1,
    );
    let (_setup, host) = start(&text).await;
    let addr = host.admin_addr();
    let hosts = &[addr];
    let long = Duration::from_secs(60);
    on_every_board(hosts, long, "follows v1", |s| s["runs"].as_u64() >= Some(1) && rollout(s)["digest"] == d1.as_str())
        .await;

    let (v2, _) = probe_variant(keys.path(), "v2");
    let d2 = publish_file(&registry, &v2, "stable", &[]);
    let unsigned = |s: &Value| rollout(s)["last_refusal"].as_str().is_some_and(|r| r.contains("is not signed"));
    let snap = on_every_board(hosts, long, "refuses unsigned v2", unsigned).await.remove(0);
    assert_eq!(snap["version"], probe_sha256(), "v1 keeps running: {snap}");
    assert_eq!(rollout(&snap)["digest"], d1.as_str(), "not {d2}: {snap}");
    a_refused_digest_costs_only_manifest_requests(&registry, &logs, "is not signed", &[&signature_tag(&d2)]).await;

    // v3's layer is altered in the registry's storage before the tag
    // names it (pushed under another tag first; the second publish finds
    // the blob there and does not upload it again).
    let (v3, v3_sha) = probe_variant(keys.path(), "v3");
    publish_file(&registry, &v3, "staging", &["--sign", key.to_str().unwrap()]);
    let data = registry.blob_data(&v3_sha);
    let mut bytes = std::fs::read(&data).expect("the registry stores v3's layer");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&data, bytes).unwrap();
    publish_file(&registry, &v3, "stable", &["--sign", key.to_str().unwrap()]);
    let altered = |s: &Value| rollout(s)["last_refusal"].as_str().is_some_and(|r| r.contains("digest mismatch"));
    let snap = on_every_board(hosts, long, "refuses altered v3", altered).await.remove(0);
    assert_eq!(snap["version"], probe_sha256(), "v1 keeps running: {snap}");
    assert_eq!(rollout(&snap)["state"], "following", "{snap}");
    a_refused_digest_costs_only_manifest_requests(&registry, &logs, "digest mismatch", &[]).await;
    let (_, snap) = get(addr, "/guests/job").await;
    assert_eq!(snap["state"], "ok", "{snap}");

    // Signed after the tag moved (cosign's order): v4 is refused while it
    // has no signature, and followed once it has one.
    let (v4, v4_sha) = probe_variant(keys.path(), "v4");
    let d4 = publish_file(&registry, &v4, "stable", &[]);
    let unsigned_v4 = |s: &Value| {
        rollout(s)["last_refusal"].as_str().is_some_and(|r| r.contains("is not signed") && r.contains(d4.as_str()))
    };
    on_every_board(hosts, long, "refuses v4 while unsigned", unsigned_v4).await;
    sign_later(&registry, &d4, &key).await;
    // Its gate (3 runs of an hourly guest in 10 minutes) is not waited out:
    // running v4 in it is following it.
    let gating_v4 = format!("gating {d4}");
    let follows_v4 = |s: &Value| s["version"] == v4_sha.as_str() && rollout(s)["state"] == gating_v4.as_str();
    on_every_board(hosts, long, "runs v4 once it is signed", follows_v4).await;
    host.shutdown().await;
}

/// The cosign tag of `digest`'s signatures (`sha256-HEX.sig`).
fn signature_tag(digest: &str) -> String {
    format!("{}.sig", digest.replacen(':', "-", 1))
}

/// Signs the index `digest` already pushed, as a separate signing step
/// after the push would.
async fn sign_later(registry: &Registry, digest: &str, key: &Path) {
    let client = wattedge::fleet::registry::Registry::new(&registry.addr(), true, None).unwrap();
    let signer = wattedge::fleet::signature::signing::SigningKey::read(key).unwrap();
    let digest = wattedge::fleet::Digest::parse(digest).unwrap();
    wattedge::fleet::publish::sign(&client, REPO, &digest, &signer).await.unwrap();
}

/// Over the next polls (1 s apart) a board that refused what the tag names
/// asks only for the tag's manifest (and, for a missing signature, the
/// manifests in `also`: whether one arrived since), downloads nothing, and
/// logs the refusal (`why`) once.
async fn a_refused_digest_costs_only_manifest_requests(
    registry: &Registry,
    logs: &std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    why: &str,
    also: &[&str],
) {
    let before = registry.access_lines();
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let requests: Vec<String> = registry
        .access_log()
        .lines()
        .skip(before)
        .filter(|l| l.contains("\"GET /v2/") || l.contains("\"HEAD /v2/"))
        .map(str::to_string)
        .collect();
    let manifest = format!("/v2/{REPO}/manifests/stable ");
    let polls = requests.iter().filter(|r| r.contains(&manifest)).count();
    assert!((2..=4).contains(&polls), "one request for the tag per poll: {requests:#?}");
    let asked = |r: &String| {
        r.contains(&manifest) || also.iter().any(|tag| r.contains(&format!("/v2/{REPO}/manifests/{tag} ")))
    };
    assert!(requests.iter().all(asked), "only the tag's manifest and {also:?}: {requests:#?}");
    assert!(requests.len() <= polls * (1 + also.len()), "at most one request each per poll: {requests:#?}");
    let logged = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
    let said: Vec<&str> = logged.lines().filter(|l| l.contains(&registry.addr()) && l.contains(why)).collect();
    assert_eq!(said.len(), 1, "the refusal is logged once: {said:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_swap_or_rollback_by_hand_of_a_guest_that_follows_a_tag_is_refused_naming_the_tag() {
    let registry = Registry::start();
    publish(&registry, "stable", &[]);
    let (setup, host) = start(&body(&registry, &[], &[("job", "stable")])).await;
    let addr = host.admin_addr();
    wait_runs(addr, "job", 1, Duration::from_secs(60)).await;
    let dir = tempfile::tempdir().unwrap();
    let (v2, _) = probe_variant(dir.path(), "v2");
    let reference = format!("oci://{}/{REPO}:stable", registry.addr());
    let bytes = std::fs::read(&v2).unwrap();
    let (status, reply) = crate::swap::raw_post(addr, "/guests/job/swap", &bytes, Some(&setup.admin_token())).await;
    assert_eq!(status, 409, "{reply}");
    let text = reply.to_string();
    assert!(text.contains(&format!("follows {reference}")) && text.contains("wattedge publish"), "{text}");
    let (status, reply) = setup.post(addr, "/guests/job/rollback", "").await;
    assert_eq!(status, 409, "{reply}");
    assert!(reply.to_string().contains("a rollback by hand is refused"), "{reply}");
    let (_, snap) = get(addr, "/guests/job").await;
    assert_eq!(snap["version"], probe_sha256(), "the tag's version keeps running: {snap}");
    assert_eq!(rollout(&snap)["state"], "following", "{snap}");
    host.shutdown().await;
}
