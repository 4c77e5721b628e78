//! The three shipped guests end to end in the real `wattedge` binary, run as
//! a child process: by default the native debug build with `builtin:`
//! guests; with `WATTEDGE_BOARD_BIN` and `WATTEDGE_BOARD_PROFILE` set, a
//! cross-built board binary under qemu-user, loading guests precompiled here
//! for that profile (`wattedge::compile::precompile`), as on a Raspberry Pi; with
//! `WATTEDGE_BOARD_ARTIFACTS` also set, loading the `GUEST.*.cwasm` files in
//! that directory instead (packaging/test-deb: the arm64 package's files).
//!
//! Upstreams are the local WattTime and WattiVahti servers (trusted through
//! `host.extra_ca`, reached through `host.resolve`); points go to a real
//! influxd (`[influx] backend = "v1"`) seeded with Home Assistant events and
//! smart-meter readings for the correlator. Every value read back is exact.
//! `.ci/board-smoke` runs this for aarch64 and armv7.

use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::support;
use crate::support::influxd::Influxd;
use crate::support::wattivahti_server::{DATA_HOST, INITIAL_REFRESH, TOKEN_HOST, TOKEN_PATH, WattiServer, quantity};
use crate::support::watttime_server;
use crate::support::watttime_server::{PASS, START, USER, WattTimeServer};
use serde_json::{Map, Value, json};
use wattedge::config::ComponentSource;

const GUESTS: [&str; 3] = ["watttime", "wattivahti", "correlator"];
const WATTTIME_HOST: &str = "api.watttime.test";
const DB: &str = "energy";
const ADMIN: &str = "admin-token-for-board-tests";
const MP: &str = "1234567";
const S: i64 = 1_000_000_000;
/// Guests are slow under qemu (and Pulley on armv7): generous, but bounded.
const WAIT_OK: Duration = Duration::from_secs(120);
const WAIT_ROWS: Duration = Duration::from_secs(60);
const WAIT_EXIT: Duration = Duration::from_secs(30);

/// The binary under test: how to start it and which guest components it loads.
struct Board {
    /// Runner and its arguments (empty for the native binary), then the binary.
    command: Vec<String>,
    /// The board profile guests are precompiled for; `None` runs `builtin:` guests.
    profile: Option<wattedge::compile::board::Profile>,
}

impl Board {
    /// From `WATTEDGE_BOARD_BIN`/`WATTEDGE_BOARD_PROFILE`, or the native debug binary.
    fn from_env() -> Board {
        let bin = std::env::var("WATTEDGE_BOARD_BIN").ok();
        let profile = std::env::var("WATTEDGE_BOARD_PROFILE").ok();
        let board = match (bin, profile) {
            (None, None) => Board { command: vec![env!("CARGO_BIN_EXE_wattedge").into()], profile: None },
            (Some(bin), Some(name)) => {
                assert!(Path::new(&bin).is_file(), "WATTEDGE_BOARD_BIN={bin} is not a file; cross-build it first");
                let profile = wattedge::compile::board::profile(&name).unwrap_or_else(|e| panic!("{e}"));
                let mut command: Vec<String> =
                    qemu_runner(&profile.rust_target).iter().map(|s| s.to_string()).collect();
                command.push(bin);
                Board { command, profile: Some(profile) }
            }
            _ => panic!("set both WATTEDGE_BOARD_BIN and WATTEDGE_BOARD_PROFILE (e.g. pi3, armv7), or neither"),
        };
        let name = board.profile.as_ref().map_or("none (builtin: guests)", |p| p.name.as_str());
        eprintln!("board test: running `{}`, profile {name}", board.command.join(" "));
        board
    }

    /// Each guest's `component`: `builtin:NAME`, or its artifact precompiled into `dir`.
    fn components(&self, dir: &Path) -> Vec<String> {
        let Some(profile) = &self.profile else {
            return GUESTS.iter().map(|g| format!("builtin:{g}")).collect();
        };
        if let Some(packaged) = std::env::var_os("WATTEDGE_BOARD_ARTIFACTS") {
            return GUESTS.iter().map(|g| packaged_artifact(Path::new(&packaged), g)).collect();
        }
        let sources: Vec<_> = GUESTS.iter().map(|g| (g.to_string(), ComponentSource::Builtin(g.to_string()))).collect();
        let artifacts = wattedge::compile::precompile::compile(profile, &sources, &dir.join("artifacts"), |step| {
            if let wattedge::compile::precompile::Progress::Done(a) = step {
                eprintln!("precompiled {} for {} in {:.1} s: {}", a.guest, profile.name, a.seconds, a.path.display());
            }
        })
        .unwrap_or_else(|e| panic!("precompiling for {}: {e}", profile.name));
        artifacts.into_iter().map(|a| a.path.display().to_string()).collect()
    }
}

/// The one `GUEST.*.cwasm` file of `guest` in `dir` (artifacts precompiled elsewhere).
fn packaged_artifact(dir: &Path, guest: &str) -> String {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("WATTEDGE_BOARD_ARTIFACTS={}: {e}", dir.display()));
    let prefix = format!("{guest}.");
    let found: Vec<PathBuf> = entries
        .map(|e| e.expect("read artifact dir").path())
        .filter(|p| {
            p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".cwasm"))
        })
        .collect();
    assert_eq!(found.len(), 1, "one {guest}.*.cwasm in {}, found {found:?}", dir.display());
    found[0].display().to_string()
}

/// The qemu-user runner for a board's Rust target (as in .cargo/config.toml).
fn qemu_runner(rust_target: &str) -> [&'static str; 3] {
    match rust_target {
        "aarch64-unknown-linux-gnu" => ["qemu-aarch64", "-L", "/usr/aarch64-linux-gnu"],
        "armv7-unknown-linux-gnueabihf" => ["qemu-arm", "-L", "/usr/arm-linux-gnueabihf"],
        other => panic!("no qemu runner known for {other}; add one to tests/board.rs"),
    }
}

/// The upstreams, influxd and the temp dir, all alive for the whole test.
struct Upstreams {
    dir: tempfile::TempDir,
    watttime: WattTimeServer,
    watti: WattiServer,
    influxd: Influxd,
}

impl Upstreams {
    async fn start() -> Upstreams {
        let influxd = Influxd::start();
        influxd.create_database(DB);
        let watttime = WattTimeServer::start(WATTTIME_HOST).await;
        let watti = WattiServer::start().await;
        let dir = tempfile::tempdir().expect("temp dir");
        Upstreams { dir, watttime, watti, influxd }
    }

    /// Both test CAs in one PEM bundle for `host.extra_ca`.
    fn ca_bundle(&self) -> PathBuf {
        let dir = self.dir.path();
        let pems = [self.watttime.write_ca(dir), self.watti.write_ca(dir)].map(|p| std::fs::read_to_string(p).unwrap());
        let path = dir.join("ca-bundle.pem");
        std::fs::write(&path, pems.concat()).expect("write CA bundle");
        path
    }
}

/// `[host]` and `[influx]`: admin on `admin`, everything under `dir`; with a
/// board profile, the host runs with its engine settings (as on the board).
fn host_section(up: &Upstreams, admin: SocketAddr, profile: Option<&wattedge::compile::board::Profile>) -> String {
    let board = profile.map(|p| format!("board = \"{}\"\n", p.name)).unwrap_or_default();
    format!(
        r#"[host]
{board}admin_listen = "{admin}"
state_dir = "{state}"
extra_ca = "{ca}"
resolve = {{ "{WATTTIME_HOST}" = "127.0.0.1", "{TOKEN_HOST}" = "127.0.0.1", "{DATA_HOST}" = "127.0.0.1" }}

[influx]
backend = "v1"
url = "{influx}"
database = "{DB}"
flush_interval = "100ms"
retry_max_delay = "1s"
"#,
        state = up.dir.path().join("state").display(),
        ca = up.ca_bundle().display(),
        influx = up.influxd.url(),
    )
}

/// The three guests' sections, as in tests/watttime.rs, wattivahti.rs and correlator.rs.
fn guest_sections(up: &Upstreams, components: &[String]) -> String {
    let (wt, port) = (up.watttime.addr.port(), up.watti.addr.port());
    format!(
        r#"
[guests.watttime]
component = "{c0}"
schedule = "every 1h"
run_timeout = "120s"
config = {{ region = "CAISO_NORTH", api_base = "https://{WATTTIME_HOST}:{wt}" }}

[guests.watttime.grants]
http = ["private:{WATTTIME_HOST}"]
secrets = {{ "watttime.username" = ["{WATTTIME_HOST}"], "watttime.password" = ["{WATTTIME_HOST}"], "watttime.token" = ["{WATTTIME_HOST}"] }}
influx_write = ["carbon_intensity", "carbon_intensity_forecast"]

[guests.watttime.grants.capture]
"watttime.token" = {{ from = "{WATTTIME_HOST}", pointer = "/token", ttl = "30m" }}

[guests.wattivahti]
component = "{c1}"
schedule = "every 1h"
memory_limit = "16MiB"
run_timeout = "120s"
config = {{ metering_point = "{MP}", api_base = "https://{DATA_HOST}:{port}", token_url = "https://{TOKEN_HOST}:{port}{TOKEN_PATH}" }}

[guests.wattivahti.grants]
http = ["private:{TOKEN_HOST}:{port}", "private:{DATA_HOST}:{port}"]
secrets = {{ "wattivahti.refresh_token" = ["{TOKEN_HOST}:{port}"], "wattivahti.access_token" = ["{DATA_HOST}:{port}"] }}
influx_write = ["electricity_consumption"]
influx_read = ["electricity_consumption"]

[guests.wattivahti.grants.capture]
"wattivahti.access_token" = {{ from = "{TOKEN_HOST}:{port}", pointer = "/access_token", ttl = "1h" }}
"wattivahti.refresh_token" = {{ from = "{TOKEN_HOST}:{port}", pointer = "/refresh_token", persist = true }}

[guests.correlator]
component = "{c2}"
schedule = "every 1h"
run_timeout = "120s"
memory_limit = "64MiB"
config = {{ lookback = "5m", offset = "5s", padding = "30s", min_delta_w = 10.0 }}

[guests.correlator.grants]
influx_read = ["home_assistant_events", "smart_meter"]
influx_write = ["event_energy_correlation"]
"#,
        c0 = components[0],
        c1 = components[1],
        c2 = components[2],
    )
}

/// Writes the config and the secrets file (0600, via the host's own store).
fn write_config(up: &Upstreams, admin: SocketAddr, board: &Board, components: &[String]) -> PathBuf {
    let store_path = up.dir.path().join("state").join("secrets.toml");
    let store = wattedge::secrets::SecretStore::open(&store_path).expect("secrets file");
    let secrets = [
        ("admin.token", ADMIN),
        ("watttime.username", USER),
        ("watttime.password", PASS),
        ("wattivahti.refresh_token", INITIAL_REFRESH),
    ];
    for (name, value) in secrets {
        store.set(name, value, None, true).expect("set secret");
    }
    let path = up.dir.path().join("wattedge.toml");
    std::fs::write(&path, host_section(up, admin, board.profile.as_ref()) + &guest_sections(up, components))
        .expect("write config");
    path
}

/// A lamp switched on a minute ago (settled, inside the 5 min lookback),
/// 2450 W before and 2510 W after; returns the event's time (ns).
fn seed_correlator_inputs(influxd: &Influxd) -> i64 {
    let t = (wattedge::store::now_ns() / S - 60) * S;
    let lines = [
        format!("smart_meter total_power_w=2450 {}", t - 5 * S),
        format!("smart_meter total_power_w=2510 {}", t + 5 * S),
        format!(
            "home_assistant_events,domain=switch,entity_id=switch.lamp state_value=\"on\",previous_state=\"off\" {t}"
        ),
    ];
    let (status, body) = influxd.request("POST", &format!("/write?db={DB}&precision=ns"), &lines.join("\n")).unwrap();
    assert_eq!(status, 204, "seeding influxd failed: {body}");
    t
}

/// The `wattedge run` child process; its stderr goes to a file in the temp dir.
struct Wattedge {
    process: std::process::Child,
    stderr: PathBuf,
    admin: SocketAddr,
}

impl Wattedge {
    fn spawn(board: &Board, config: &Path, admin: SocketAddr) -> Wattedge {
        let stderr = config.with_file_name("wattedge.stderr");
        let log = std::fs::File::create(&stderr).expect("stderr file");
        let process = Command::new(&board.command[0])
            .args(&board.command[1..])
            .args(["run", "--config"])
            .arg(config)
            .env("WATTEDGE_LOG", std::env::var("WATTEDGE_LOG").unwrap_or_else(|_| "info".into()))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("stderr file"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", board.command.join(" ")));
        Wattedge { process, stderr, admin }
    }

    /// The last 80 lines the child wrote, for failure messages.
    fn stderr_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.stderr).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(80)..].join("\n")
    }

    /// Panics if the child has exited (it must run until SIGTERM).
    fn assert_running(&mut self) {
        if let Some(status) = self.process.try_wait().expect("try_wait") {
            panic!("wattedge exited early with {status}");
        }
    }

    /// A GET on the admin API, or `None` while nothing listens yet.
    async fn get(&mut self, path: &str) -> Option<Value> {
        self.assert_running();
        tokio::net::TcpStream::connect(self.admin).await.ok()?;
        Some(support::get(self.admin, path).await.1)
    }

    /// Waits until guest `name` has finished `runs` runs; panics unless it is `ok` then.
    async fn wait_ok(&mut self, name: &str, runs: u64) -> Value {
        let deadline = Instant::now() + WAIT_OK;
        loop {
            if let Some(snap) = self.get(&format!("/guests/{name}")).await
                && snap["runs"].as_u64().unwrap_or(0) >= runs
            {
                assert_eq!(snap["state"], "ok", "{name} after {runs} run(s): {snap}");
                return snap;
            }
            assert!(Instant::now() < deadline, "{name} did not finish {runs} run(s) within {WAIT_OK:?}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// SIGTERM, then the exit status within [`WAIT_EXIT`].
    async fn terminate(&mut self) -> ExitStatus {
        let pid = libc::pid_t::try_from(self.process.id()).expect("pid");
        // SAFETY: kill(2) with our own child's pid has no memory-safety preconditions.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0, "kill -TERM {pid}");
        let deadline = Instant::now() + WAIT_EXIT;
        loop {
            if let Some(status) = self.process.try_wait().expect("try_wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "wattedge did not exit within {WAIT_EXIT:?} of SIGTERM");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Wattedge {
    fn drop(&mut self) {
        if matches!(self.process.try_wait(), Ok(None)) {
            let _ = self.process.kill();
            let _ = self.process.wait();
        }
    }
}

/// Rows of an InfluxQL query as column → value maps (empty without a series).
fn rows(influxd: &Influxd, query: &str) -> Vec<Map<String, Value>> {
    let series = influxd.series(DB, query);
    let Some(s) = series.first() else { return Vec::new() };
    let columns: Vec<String> = s["columns"].as_array().unwrap().iter().map(|c| c.as_str().unwrap().into()).collect();
    let values = s["values"].as_array().unwrap();
    values.iter().map(|row| columns.iter().cloned().zip(row.as_array().unwrap().iter().cloned()).collect()).collect()
}

/// Waits until `query` returns at least `count` rows (the outbox forwards asynchronously).
async fn wait_rows(influxd: &Influxd, query: &str, count: usize) -> Vec<Map<String, Value>> {
    support::wait_for(WAIT_ROWS, &format!("{count} rows of `{query}` in influxd"), || async move {
        let found = rows(influxd, query);
        (found.len() >= count).then_some(found)
    })
    .await
}

fn float(row: &Map<String, Value>, field: &str) -> f64 {
    row[field].as_f64().unwrap_or_else(|| panic!("{field} in {row:?}"))
}

/// lbs/MWh → g/kWh exactly as the watttime guest rounds it.
fn g_kwh(lbs: f64) -> f64 {
    (lbs * 0.4536 * 1e6).round() / 1e6
}

fn ns(rfc3339: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(rfc3339).unwrap().timestamp_nanos_opt().unwrap()
}

/// The current point and the 288-point forecast curve, as the fake WattTime serves them.
async fn check_watttime(up: &Upstreams) {
    let current = wait_rows(&up.influxd, "SELECT * FROM carbon_intensity", 1).await;
    assert_eq!(current.len(), 1, "{current:?}");
    let row = &current[0];
    assert_eq!(row["time"], json!(START * S));
    assert_eq!(row["region"], "CAISO_NORTH");
    assert_eq!(float(row, "carbon_intensity_gco2_kwh"), 453.6, "1000 lbs/MWh is 453.6 g/kWh");
    assert_eq!(float(row, "moer_lbs_mwh"), 1000.0);
    assert_eq!(float(row, "forecast_1h"), g_kwh(watttime_server::value(12)), "12 × 5 min ahead");
    assert_eq!(float(row, "forecast_24h"), g_kwh(watttime_server::value(287)), "the last point");
    let curve = wait_rows(&up.influxd, "SELECT * FROM carbon_intensity_forecast", 288).await;
    assert_eq!(curve.len(), 288);
    for (i, row) in curve.iter().enumerate() {
        assert_eq!(row["time"], json!((START + i as i64 * 300) * S));
        assert_eq!(float(row, "moer_lbs_mwh"), watttime_server::value(i), "forecast point {i}");
    }
    assert_eq!((up.watttime.requests_to("/login").len(), up.watttime.requests_to("/v3/forecast").len()), (1, 1));
}

/// A backfill of 2025-01-10 (Helsinki, +02:00): 96 quarter-hours, the i-th with `quantity(i)`.
async fn check_wattivahti(up: &Upstreams, child: &mut Wattedge) {
    let args = json!({"start": "2025-01-10", "end": "2025-01-10"}).to_string();
    let (status, reply) = support::http(child.admin, "POST", "/guests/wattivahti/invoke", &args, Some(ADMIN)).await;
    assert_eq!(status, 202, "invoke wattivahti: {reply}");
    child.wait_ok("wattivahti", 2).await;
    let query =
        "SELECT * FROM electricity_consumption WHERE time >= '2025-01-09T22:00:00Z' AND time < '2025-01-10T22:00:00Z'";
    let day = wait_rows(&up.influxd, query, 96).await;
    assert_eq!(day.len(), 96, "one point per quarter-hour");
    for (i, row) in day.iter().enumerate() {
        assert_eq!(row["time"], json!(ns("2025-01-09T22:00:00Z") + i as i64 * 15 * 60 * S), "point {i}");
        assert_eq!(float(row, "consumption_kwh"), quantity(i), "point {i}");
        assert_eq!((row["metering_point"].as_str(), row["resolution"].as_str()), (Some(MP), Some("PT15MIN")));
    }
    assert_eq!(up.watti.token_requests()[0].form("refresh_token").as_deref(), Some(INITIAL_REFRESH));
}

/// The seeded lamp event correlated by the start-up run.
async fn check_correlator(up: &Upstreams, snap: &Value, t: i64) {
    let found = wait_rows(&up.influxd, "SELECT * FROM event_energy_correlation", 1).await;
    assert_eq!(found.len(), 1, "{found:?}");
    let row = &found[0];
    assert_eq!(row["time"], json!(t), "written at the event's time");
    assert_eq!((row["entity_id"].as_str(), row["domain"].as_str()), (Some("switch.lamp"), Some("switch")));
    assert_eq!((row["state"].as_str(), row["previous_state"].as_str()), (Some("on"), Some("off")));
    assert_eq!((float(row, "power_before_w"), float(row, "power_after_w")), (2450.0, 2510.0));
    assert_eq!((float(row, "power_delta_w"), float(row, "power_delta_pct")), (60.0, 2.449));
    assert_eq!(snap["counters"]["correlations_written"], 1, "{snap}");
}

/// Everything after the child started; any panic here gets its stderr appended.
async fn run_checks(up: &Upstreams, child: &mut Wattedge, event_time: i64) {
    let started = Instant::now();
    let mut snaps = Vec::new();
    for name in GUESTS {
        snaps.push(child.wait_ok(name, 1).await);
    }
    eprintln!("board test: all three guests ok after {:.1} s", started.elapsed().as_secs_f64());
    let guests = child.get("/guests").await.expect("GET /guests");
    let states: Vec<_> =
        guests.as_array().expect("a list").iter().map(|g| (g["name"].clone(), g["state"].clone())).collect();
    assert_eq!(states, GUESTS.map(|g| (json!(g), json!("ok"))), "{guests}");
    check_watttime(up).await;
    check_correlator(up, &snaps[2], event_time).await;
    check_wattivahti(up, child).await;
    let status = child.terminate().await;
    assert_eq!(status.code(), Some(0), "exit status after SIGTERM: {status}");
    eprintln!("board test: passed in {:.1} s", started.elapsed().as_secs_f64());
}

#[test]
fn three_guests_end_to_end_then_sigterm() {
    let board = Board::from_env();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let up = runtime.block_on(Upstreams::start());
    let components = board.components(up.dir.path());
    let admin = SocketAddr::from(([127, 0, 0, 1], support::free_port()));
    let config = write_config(&up, admin, &board, &components);
    let event_time = seed_correlator_inputs(&up.influxd);
    let mut child = Wattedge::spawn(&board, &config, admin);
    let outcome =
        std::panic::catch_unwind(AssertUnwindSafe(|| runtime.block_on(run_checks(&up, &mut child, event_time))));
    if let Err(panic) = outcome {
        let message =
            panic.downcast_ref::<String>().cloned().or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()));
        panic!(
            "{}\n--- wattedge stderr (last lines of {}) ---\n{}",
            message.unwrap_or_default(),
            child.stderr.display(),
            child.stderr_tail()
        );
    }
}

/// The probe guest's component for `board`: its `.wasm`, or its artifact
/// precompiled into `dir` for the board's profile.
fn probe_component(board: &Board, dir: &Path) -> String {
    let Some(profile) = &board.profile else { return support::probe() };
    let sources = [("probe".to_string(), ComponentSource::File(wattedge::builtin::probe_path()))];
    let artifacts = wattedge::compile::precompile::compile(profile, &sources, &dir.join("artifacts"), |_| {})
        .unwrap_or_else(|e| panic!("precompiling the probe for {}: {e}", profile.name));
    artifacts[0].path.display().to_string()
}

/// A guest's wasi:http request whose path-with-query is only `?x=1` used
/// to reach an `expect` in the host: on a board (panic = "abort") the
/// process died and systemd restarted it, over and over. The guest now
/// gets an error, run after run, and the binary keeps serving.
#[test]
fn a_query_only_path_is_an_error_to_the_guest_and_the_board_host_keeps_running() {
    let board = Board::from_env();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let dir = tempfile::tempdir().expect("temp dir");
    let component = probe_component(&board, dir.path());
    let admin = SocketAddr::from(([127, 0, 0, 1], support::free_port()));
    let secrets = wattedge::secrets::SecretStore::open(&dir.path().join("state").join("secrets.toml")).unwrap();
    secrets.set("admin.token", ADMIN, None, true).expect("set admin.token");
    let board_line = board.profile.as_ref().map(|p| format!("board = \"{}\"\n", p.name)).unwrap_or_default();
    let config = format!(
        "[host]\n{board_line}admin_listen = \"{admin}\"\nstate_dir = \"{}\"\n\n[guests.q]\ncomponent = \"{component}\"\n\
         schedule = \"every 24h\"\nrun_timeout = \"120s\"\n\
         config = {{ mode = \"raw-http\", authority = \"127.0.0.1:9\", path = \"?x=1\" }}\n\n\
         [guests.q.grants]\nhttp = [\"127.0.0.1:9\"]\n",
        dir.path().join("state").display()
    );
    let path = dir.path().join("wattedge.toml");
    std::fs::write(&path, config).expect("write config");
    let mut child = Wattedge::spawn(&board, &path, admin);
    let checks = async {
        for run in 1..=2u64 {
            if run > 1 {
                let (status, reply) = support::http(admin, "POST", "/guests/q/invoke", "{}", Some(ADMIN)).await;
                assert_eq!(status, 202, "invoke: {reply}");
            }
            let deadline = Instant::now() + WAIT_OK;
            let snap = loop {
                if let Some(snap) = child.get("/guests/q").await
                    && snap["runs"].as_u64().unwrap_or(0) >= run
                {
                    break snap;
                }
                assert!(Instant::now() < deadline, "run {run} of q did not finish within {WAIT_OK:?}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            };
            assert_eq!(snap["last_run"]["outcome"], "error", "run {run}: {snap}");
            assert!(snap.to_string().contains("HttpRequestDenied"), "run {run}: {snap}");
        }
        assert_eq!(support::get(admin, "/health").await.0, 200, "the host still serves");
        child.assert_running();
        let status = child.terminate().await;
        assert_eq!(status.code(), Some(0), "exit status after SIGTERM: {status}");
    };
    let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| runtime.block_on(checks)));
    if let Err(panic) = outcome {
        let message =
            panic.downcast_ref::<String>().cloned().or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()));
        panic!("{}\n--- wattedge stderr ---\n{}", message.unwrap_or_default(), child.stderr_tail());
    }
}
