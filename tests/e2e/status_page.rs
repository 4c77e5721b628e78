//! Issue 11: the status page at `GET /`, rendered by a real browser.
//!
//! Starts the host in-process with probe guests in mixed states (one waiting
//! for credentials, one writing a carbon-intensity value, one that traps at
//! every run, one whose `init` fails), adds a forecast to the store, opens the page in headless Chromium
//! (Debian's `chromium`) and checks the DOM after the page's own JavaScript
//! fetched `/guests` and rendered it. A phone-width screenshot is saved to
//! `target/test-artifacts/status-page.png`. A guest following an `oci://`
//! tag on a real registry shows what it follows, the digest it runs, its
//! rollout state and the last refusal.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::*;
use serde_json::Value;
use wattedge::store::{FieldValue, Point, now_ns};

const CHROMIUM: &str = "/usr/bin/chromium";
const STANDBY_HEALTH: &str = "standby:credentials needed: set probe.key with `wattedge secrets set probe.key`";
const BROWSER_TIMEOUT: Duration = Duration::from_secs(90);

/// The `carbon` guest: a probe writing `carbon_intensity_gco2_kwh = 453.6`, with
/// an HTML-looking tag value that the page must show as text.
fn carbon_guest() -> String {
    format!(
        "[guests.carbon]\ncomponent = \"{}\"\nschedule = \"every 1h\"\nrun_timeout = \"5s\"\n\
         config = {{ mode = \"write\", measurement = \"carbon_intensity\", field = \"carbon_intensity_gco2_kwh\", value = \"453.6\", version = \"<b>v1</b>\" }}\n\n\
         [guests.carbon.grants]\ninflux_write = [\"carbon_intensity\", \"carbon_intensity_forecast\"]\n\n",
        probe()
    )
}

/// 48 half-hourly forecast points from now, in lbs/MWh (as the watttime guest writes them).
fn forecast() -> Vec<Point> {
    let start = now_ns();
    (0..48)
        .map(|i| Point {
            measurement: "carbon_intensity_forecast".into(),
            tags: [("region".to_string(), "CAISO_NORTH".to_string())].into(),
            fields: [("moer_lbs_mwh".to_string(), FieldValue::Float(1000.0 + 300.0 * (f64::from(i) / 6.0).sin()))]
                .into(),
            time: start + i64::from(i) * 1_800_000_000_000,
        })
        .collect()
}

fn chromium() -> &'static str {
    assert!(
        Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing: the status page test needs Debian's chromium; run `apt-get install chromium`"
    );
    CHROMIUM
}

fn artifacts_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-artifacts");
    std::fs::create_dir_all(&dir).expect("create target/test-artifacts");
    dir
}

/// Runs headless Chromium on `url` with `extra` arguments; returns its stdout.
fn run_chromium(url: &str, extra: &[String]) -> String {
    let profile = tempfile::tempdir().expect("chromium profile dir");
    let mut child = Command::new(chromium())
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        .args(["--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars"])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("--virtual-time-budget=5000")
        .args(extra)
        .arg(url)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {CHROMIUM}: {e}; run `apt-get install chromium`"));
    let stdout = child.stdout.take().expect("chromium stdout");
    let reader = std::thread::spawn(move || std::io::read_to_string(stdout).unwrap_or_default());
    let deadline = Instant::now() + BROWSER_TIMEOUT;
    while child.try_wait().expect("wait for chromium").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("chromium did not finish within {BROWSER_TIMEOUT:?} on {url}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    reader.join().expect("chromium stdout reader")
}

/// The rendered `<article>` of guest `name`.
fn card<'a>(dom: &'a str, name: &str) -> &'a str {
    let marker = format!("id=\"guest-{name}\"");
    dom.split("<article")
        .find(|chunk| chunk.contains(&marker))
        .unwrap_or_else(|| panic!("no card for guest {name} in the rendered page:\n{dom}"))
}

/// Text as it appears in serialized HTML.
fn escaped(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('\u{a0}', "&nbsp;")
}

/// The part of a guest's detail the page shows outside "Full detail" (first line, ≤ 300 chars).
fn shown_detail(snapshot: &Value) -> String {
    let detail = snapshot["detail"].as_str().unwrap_or_else(|| panic!("no detail in {snapshot}"));
    escaped(&detail.lines().next().unwrap_or("").chars().take(300).collect::<String>())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_page_renders_guests_in_mixed_states() {
    chromium();
    let body = probe_guest("keyed", "every 1h", &format!("mode = \"health\", health = \"{STANDBY_HEALTH}\""))
        + &carbon_guest()
        + &probe_guest("crashy", "every 1h", "mode = \"trap\"")
        + &probe_guest("broken", "every 1h", "mode = \"nap\"");
    let (_setup, host) = start(&body).await;
    let addr = host.admin_addr();
    for name in ["keyed", "carbon", "crashy"] {
        wait_runs(addr, name, 1, Duration::from_secs(60)).await;
    }
    wait_for(Duration::from_secs(60), "broken to fail its init", || async move {
        let (_, g) = get(addr, "/guests/broken").await;
        (g["state"] == "failed").then_some(())
    })
    .await;
    host.store().write(forecast()).await.expect("write the forecast");
    let (_, guests) = get(addr, "/guests").await;
    let by_name = |name: &str| guests.as_array().unwrap().iter().find(|g| g["name"] == name).unwrap().clone();
    assert_eq!(by_name("keyed")["state"], "standby", "{guests}");
    assert_eq!(by_name("carbon")["state"], "ok", "{guests}");
    // A trapping run is `degraded` (the next trigger starts a fresh instance); a failed `init` is `failed`.
    assert_eq!(by_name("crashy")["state"], "degraded", "{guests}");
    assert_eq!(by_name("carbon")["latest"]["carbon_intensity"]["fields"]["carbon_intensity_gco2_kwh"], 453.6);

    let (status, series) = get(addr, "/api/guests/carbon/series?measurement=carbon_intensity_forecast&limit=10").await;
    assert_eq!((status, series["points"].as_array().map(Vec::len)), (200, Some(10)), "{series}");
    let (status, refused) = get(addr, "/api/guests/keyed/series?measurement=carbon_intensity_forecast").await;
    assert_eq!(status, 400, "a measurement outside the guest's grants must be refused: {refused}");
    assert!(refused["error"].as_str().unwrap_or("").contains("no grant"), "{refused}");
    assert_eq!(get(addr, "/api/store").await, (200, serde_json::json!({"backend": "embedded"})));

    let url = format!("http://{addr}/");
    let dom = tokio::task::spawn_blocking({
        let url = url.clone();
        move || run_chromium(&url, &["--dump-dom".to_string()])
    })
    .await
    .expect("chromium task");
    std::fs::write(artifacts_dir().join("status-page.html"), &dom).expect("save the DOM");

    let keyed = card(&dom, "keyed");
    assert!(keyed.contains("<span class=\"words\">credentials needed</span>"), "{keyed}");
    assert!(keyed.contains(&shown_detail(&by_name("keyed"))), "{keyed}");
    assert!(keyed.contains("<code class=\"cmd\">wattedge secrets set probe.key</code>"), "{keyed}");

    let carbon = card(&dom, "carbon");
    assert!(carbon.contains("<span class=\"words\">ok</span>"), "{carbon}");
    assert!(carbon.contains("<span class=\"big\">453.6</span> g CO₂/kWh"), "{carbon}");
    assert!(carbon.contains("class=\"spark\"") && carbon.contains("<polyline"), "forecast chart missing: {carbon}");
    assert!(carbon.contains("version=&lt;b&gt;v1&lt;/b&gt;"), "guest text must be shown as text: {carbon}");
    assert!(!dom.contains("<b>v1</b>"), "guest text became markup");

    let crashy = card(&dom, "crashy");
    assert!(crashy.contains("<span class=\"words\">degraded</span>"), "{crashy}");
    assert!(crashy.contains(&shown_detail(&by_name("crashy"))), "{crashy}");
    assert!(crashy.contains("scheduled, trapped, "), "last run missing: {crashy}");

    let broken = card(&dom, "broken");
    assert!(broken.contains("<span class=\"words\">failed</span>"), "{broken}");
    assert!(broken.contains(&shown_detail(&by_name("broken"))), "{broken}");

    assert!(dom.contains("<dd>embedded</dd>"), "store backend missing: {dom}");
    let summary = ["4 guests: ", "1 credentials needed", "1 ok", "1 degraded", "1 failed"];
    assert!(summary.iter().all(|part| dom.contains(part)), "summary missing: {dom}");

    let shot = artifacts_dir().join("status-page.png");
    let _ = std::fs::remove_file(&shot);
    let args = [format!("--screenshot={}", shot.display()), "--window-size=390,1200".to_string()];
    tokio::task::spawn_blocking(move || run_chromium(&url, &args)).await.expect("chromium task");
    let size = std::fs::metadata(&shot).map(|m| m.len()).unwrap_or(0);
    assert!(size > 0, "no screenshot at {}", shot.display());
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_shows_a_followed_tag_its_digest_rollout_state_and_last_refusal() {
    use crate::fleet::{probe_switched, probe_variant, publish_file};
    chromium();
    let registry = crate::support::registry::Registry::start();
    let dir = tempfile::tempdir().unwrap();
    let (v1, _) = probe_variant(dir.path(), "v1");
    let (v2, _) = probe_switched(dir.path(), b"initfail");
    let d1 = publish_file(&registry, &v1, "stable", &[]);
    let reference = format!("oci://{}/wattedge/probe:stable", registry.addr());
    let body = format!(
        "[fleet]\ninsecure_registries = [\"{}\"]\npoll_interval = \"1s\"\npoll_jitter = \"0s\"\n\n\
         [guests.fleet]\ncomponent = \"{reference}\"\nschedule = \"every 1h\"\nconfig = {{ mode = \"write\" }}\n\n\
         [guests.fleet.grants]\ninflux_write = [\"probe\"]\n",
        registry.addr()
    );
    let (_setup, host) = start(&body).await;
    let addr = host.admin_addr();
    let d2 = publish_file(&registry, &v2, "stable", &[]);
    let snap = wait_for(Duration::from_secs(60), "the refusal of v2", || async move {
        let (_, snap) = get(addr, "/guests/fleet").await;
        snap["rollout"]["last_refusal"].as_str().is_some_and(|r| r.contains("init failed")).then_some(snap)
    })
    .await;
    assert_eq!(snap["rollout"]["digest"], d1.as_str(), "{snap}");

    let url = format!("http://{addr}/");
    let dom = tokio::task::spawn_blocking(move || run_chromium(&url, &["--dump-dom".to_string()]))
        .await
        .expect("chromium task");
    let fleet = card(&dom, "fleet");
    assert!(fleet.contains("<dt>Follows</dt>") && fleet.contains(&escaped(&reference)), "{fleet}");
    assert!(fleet.contains("following, running ") && fleet.contains(&d1[..19]), "{fleet}");
    assert!(fleet.contains("<dt>Last refusal</dt>") && fleet.contains(&d2), "{fleet}");
    host.shutdown().await;
}
