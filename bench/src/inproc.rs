//! Measurements that drive the host library in-process (the real linker,
//! store and supervisor): correlator throughput and query count, and
//! hot-swap latency.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use wattedge::config::Config;
use wattedge::store::embedded::EmbeddedStore;
use wattedge::store::{FieldValue, Point, now_ns};

use crate::report::{Figure, quantile};

const SECOND: i64 = 1_000_000_000;

/// Starts a host from `body` (guest sections) with state in `dir`.
pub(crate) async fn start(dir: &Path, body: &str) -> anyhow::Result<wattedge::RunningHost> {
    // No host health rows (`wattedge_host`): the figures count exactly the
    // points the guests wrote, in the outbox and in influxd.
    let text = format!(
        "[host]\nadmin_listen = \"127.0.0.1:0\"\nstate_dir = \"{}\"\nhealth_interval = \"0s\"\n\n{body}",
        dir.join("state").display()
    );
    let path = dir.join("wattedge.toml");
    std::fs::write(&path, text)?;
    let config = Config::load(&path)?;
    Ok(wattedge::start(config).await?)
}

fn point(measurement: &str, tags: &[(&str, &str)], fields: Vec<(&str, FieldValue)>, time: i64) -> Point {
    Point {
        measurement: measurement.into(),
        tags: tags.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        fields: fields.into_iter().map(|(k, v)| (k.to_string(), v)).collect::<BTreeMap<_, _>>(),
        time,
    }
}

/// The data layout a correlator figure reads (its `schema` preset).
#[derive(Clone, Copy, PartialEq)]
enum Preset {
    HomeIq,
    HomeAssistant,
}

impl Preset {
    fn name(self) -> &'static str {
        match self {
            Preset::HomeIq => "homeiq",
            Preset::HomeAssistant => "home_assistant",
        }
    }

    /// The guest's config entries and read grants.
    fn config(self) -> (&'static str, &'static str) {
        match self {
            Preset::HomeIq => ("", "\"home_assistant_events\", \"smart_meter\""),
            Preset::HomeAssistant => (
                "schema = \"home_assistant\", power_entity = \"house_power\", entities = \"switch.kettle\", ",
                "\"switch.kettle\", \"W\"",
            ),
        }
    }

    /// Most store queries a cycle may make.
    fn max_queries(self) -> f64 {
        match self {
            Preset::HomeIq => 2.0,
            Preset::HomeAssistant => 3.0,
        }
    }
}

/// The meter's power `i` seconds into the data: 400 W and 2400 W in turns
/// of 10 s.
fn watts_at(i: usize) -> f64 {
    if (i / 10).is_multiple_of(2) { 400.0 } else { 2400.0 }
}

/// Fills the embedded store with `events` state changes and `readings`
/// meter readings (one per second, ending now) in `preset`'s layout: the
/// HomeIQ measurements, or what Home Assistant's influxdb integration
/// writes (the meter among other sensors in `W`, the kettle in its own
/// measurement, its first state before the window).
fn seed_correlator_data(path: &Path, preset: Preset, events: usize, readings: usize) -> anyhow::Result<()> {
    let store = EmbeddedStore::open(path, None)?;
    let end = now_ns() - 60 * SECOND;
    let start = end - readings as i64 * SECOND;
    let power: Vec<Point> = (0..readings)
        .map(|i| {
            let t = start + i as i64 * SECOND;
            match preset {
                Preset::HomeIq => point("smart_meter", &[], vec![("total_power_w", FieldValue::Float(watts_at(i)))], t),
                Preset::HomeAssistant => ha_power("house_power", watts_at(i), t),
            }
        })
        .collect();
    for chunk in power.chunks(20_000) {
        store.write(chunk)?;
    }
    if preset == Preset::HomeAssistant {
        // Another sensor in `W` (every 10 s): the correlator must skip it.
        let solar: Vec<Point> =
            (0..readings / 10).map(|i| ha_power("solar_inverter", 1500.0, start + i as i64 * 10 * SECOND)).collect();
        store.write(&solar)?;
    }
    let spacing = (readings / events.max(1)) as i64 * SECOND;
    let event = |i: usize| -> Point {
        let t = start + 30 * SECOND + i as i64 * spacing;
        match preset {
            Preset::HomeIq => {
                let fields = vec![
                    ("state_value", FieldValue::Text("on".into())),
                    ("previous_state", FieldValue::Text("off".into())),
                ];
                point("home_assistant_events", &[("entity_id", "switch.kettle"), ("domain", "switch")], fields, t)
            }
            Preset::HomeAssistant => ha_switch(if i.is_multiple_of(2) { "on" } else { "off" }, t),
        }
    };
    let mut rows: Vec<Point> = (0..events).map(event).collect();
    if preset == Preset::HomeAssistant {
        // The kettle's state before the window: found by the one query for
        // each series' last row before the events.
        rows.push(ha_switch("off", end - (lookback_hours(readings) as i64 + 1) * 3600 * SECOND));
    }
    store.write(&rows)?;
    Ok(())
}

/// A power reading as Home Assistant's influxdb integration writes it.
fn ha_power(object_id: &str, watts: f64, time: i64) -> Point {
    let fields = vec![
        ("value", FieldValue::Float(watts)),
        ("friendly_name_str", FieldValue::Text(object_id.into())),
        ("unit_of_measurement_str", FieldValue::Text("W".into())),
    ];
    point("W", &[("domain", "sensor"), ("entity_id", object_id)], fields, time)
}

/// The kettle's state change as Home Assistant's influxdb integration writes it.
fn ha_switch(state: &str, time: i64) -> Point {
    let fields = vec![
        ("state", FieldValue::Text(state.into())),
        ("value", FieldValue::Float(if state == "on" { 1.0 } else { 0.0 })),
        ("friendly_name_str", FieldValue::Text("Kettle".into())),
    ];
    point("switch.kettle", &[("domain", "switch"), ("entity_id", "kettle")], fields, time)
}

/// The correlator's `lookback`: every event of the data.
fn lookback_hours(readings: usize) -> usize {
    readings / 3600 + 2
}

/// What one correlator cycle measured.
struct Cycle {
    /// The run, start to finish.
    seconds: f64,
    /// Store queries made.
    queries: u64,
    /// Of `seconds`, waiting on the store's queries and on its write.
    query_seconds: f64,
    write_seconds: f64,
    /// The guest's `correlations_written` counter.
    written: String,
}

/// One correlator cycle on a host whose store is a copy of `seeded`.
async fn correlator_cycle(seeded: &Path, preset: Preset, events: usize, readings: usize) -> anyhow::Result<Cycle> {
    let dir = tempfile::tempdir()?;
    std::fs::create_dir_all(dir.path().join("state"))?;
    std::fs::copy(seeded, dir.path().join("state/embedded.redb")).context("copying the seeded store")?;
    let lookback_h = lookback_hours(readings);
    let (config, grants) = preset.config();
    let body = format!(
        "[guests.correlator]\ncomponent = \"builtin:correlator\"\nschedule = \"every 1h\"\nmemory_limit = \"512MiB\"\nrun_timeout = \"300s\"\nconfig = {{ {config}lookback = \"{lookback_h}h\", max_events_per_cycle = {events} }}\n\n[guests.correlator.grants]\ninflux_read = [{grants}]\ninflux_write = [\"event_energy_correlation\"]\n"
    );
    let host = start(dir.path(), &body).await?;
    let guest = host.supervisor().guest("correlator").context("correlator configured")?.clone();
    let began = Instant::now();
    let snapshot = loop {
        let snap = guest.snapshot();
        if snap.runs >= 1 {
            break snap;
        }
        if began.elapsed() > Duration::from_secs(600) {
            bail!("the correlator did not finish a cycle in 10 minutes");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let influx = &guest.shared.influx;
    let queries = influx.queries.load(Ordering::Relaxed);
    let query_seconds = influx.query_nanos.load(Ordering::Relaxed) as f64 / 1e9;
    let write_seconds = influx.write_nanos.load(Ordering::Relaxed) as f64 / 1e9;
    host.shutdown().await;
    let outcome = snapshot.last_run.as_ref().map(|r| r.outcome.clone()).unwrap_or_default();
    if outcome != "ok" {
        bail!("the correlator cycle failed: {:?}", snapshot.last_run);
    }
    let seconds = snapshot.last_run_seconds.context("run duration")?;
    let written = snapshot.counters.get("correlations_written").map(|v| v.to_string()).unwrap_or_default();
    Ok(Cycle { seconds, queries, query_seconds, write_seconds, written })
}

/// Where the median cycle's time went: the store's queries and write (as the
/// host times them), and the rest (the guest's own code, and copying rows
/// into it and points out of it).
fn cycle_split(cycles: &[Cycle]) -> String {
    let mut by_time: Vec<&Cycle> = cycles.iter().collect();
    by_time.sort_by(|a, b| a.seconds.total_cmp(&b.seconds));
    let Some(c) = by_time.get(by_time.len() / 2) else { return String::new() };
    let rest = c.seconds - c.query_seconds - c.write_seconds;
    format!(
        "of the median cycle's {:.1} ms, store queries {:.1}, store write {:.1}, guest code and copies across the boundary {:.1}",
        c.seconds * 1e3,
        c.query_seconds * 1e3,
        c.write_seconds * 1e3,
        rest * 1e3
    )
}

/// Correlator throughput over `events` × `readings` for each preset:
/// `repeats` first cycles, each on a fresh host and a fresh copy of the
/// same seeded store. The Home Assistant preset (step rule, previous state
/// derived: one query more) must keep at least half the HomeIQ rate.
pub async fn correlator(events: usize, readings: usize, repeats: usize) -> anyhow::Result<Vec<Figure>> {
    let (mut figures, homeiq) = correlator_preset(Preset::HomeIq, events, readings, repeats).await?;
    let (ha, rate) = correlator_preset(Preset::HomeAssistant, events, readings, repeats).await?;
    figures.extend(ha);
    figures.push(Figure::bounded(
        "correlator: home_assistant rate / homeiq rate",
        rate / homeiq,
        "×",
        0.5,
        true,
        format!("{rate:.0} / {homeiq:.0} events/s, medians measured in this run"),
    ));
    Ok(figures)
}

/// The figures of one preset, and its median rate.
async fn correlator_preset(
    preset: Preset,
    events: usize,
    readings: usize,
    repeats: usize,
) -> anyhow::Result<(Vec<Figure>, f64)> {
    let dir = tempfile::tempdir()?;
    let seeded = dir.path().join("seeded.redb");
    seed_correlator_data(&seeded, preset, events, readings)?;
    let mut cycles = Vec::new();
    for _ in 0..repeats.max(1) {
        cycles.push(correlator_cycle(&seeded, preset, events, readings).await?);
    }
    let mut rates: Vec<f64> = cycles.iter().map(|c| events as f64 / c.seconds).collect();
    let (median, min, max) = crate::report::median_spread(&mut rates);
    let most_queries = cycles.iter().map(|c| c.queries).max().unwrap_or(0);
    let written = cycles.last().map(|c| c.written.clone()).unwrap_or_default();
    let note = format!(
        "{events} events × {readings} readings; median of {} cycles, spread {min:.0}–{max:.0} events/s \
         ({:.1}–{:.1} ms a cycle; {}); {written} correlations written",
        rates.len(),
        events as f64 / max * 1000.0,
        events as f64 / min * 1000.0,
        cycle_split(&cycles),
    );
    let name = preset.name();
    let mut figures = vec![
        Figure::bounded(
            &format!("correlator ({name}): events correlated per second"),
            median,
            "events/s",
            200_000.0,
            true,
            note,
        ),
        Figure::bounded(
            &format!("correlator ({name}): store queries per cycle"),
            most_queries as f64,
            "queries",
            preset.max_queries(),
            false,
            "counted by the host; the most of any cycle".into(),
        ),
    ];
    if preset == Preset::HomeIq {
        figures.push(native_share(&seeded, events, readings, repeats, median, &written)?);
    }
    Ok((figures, median))
}

/// The guest's median rate as a share of the same cycle done natively in
/// Rust ([`crate::native`]) on fresh copies of the same seeded store; the
/// native cycle must write as many correlations as the guest did.
fn native_share(
    seeded: &Path,
    events: usize,
    readings: usize,
    repeats: usize,
    guest_rate: f64,
    written: &str,
) -> anyhow::Result<Figure> {
    let lookback = lookback_hours(readings) as i64 * 3600 * SECOND;
    let mut rates = Vec::new();
    let mut native_written = 0;
    for _ in 0..repeats.max(1) {
        let dir = tempfile::tempdir()?;
        let copy = dir.path().join("embedded.redb");
        std::fs::copy(seeded, &copy).context("copying the seeded store")?;
        let cycle = crate::native::homeiq_cycle(&copy, lookback, u32::try_from(events)?)?;
        native_written = cycle.written;
        rates.push(events as f64 / cycle.seconds);
    }
    anyhow::ensure!(
        native_written.to_string() == written,
        "the native cycle wrote {native_written} correlations, the guest {written}: not the same matching"
    );
    let (native, min, max) = crate::report::median_spread(&mut rates);
    Ok(Figure::bounded(
        "correlator (homeiq): guest events/s as a share of the same cycle in native Rust",
        guest_rate / native,
        "×",
        0.5,
        true,
        format!(
            "guest {guest_rate:.0} / native {native:.0} events/s (native: median of {}, spread {min:.0}–{max:.0}; \
             same queries on the same store, the guest's matching.rs, same batched write; {native_written} correlations each)",
            rates.len()
        ),
    ))
}

/// The probe component with a marker section, so each upload is a new version.
fn probe_variant(tag: usize) -> anyhow::Result<Vec<u8>> {
    let mut bytes = std::fs::read(wattedge::builtin::probe_path()).context("probe component (build the host first)")?;
    let payload: Vec<u8> = [&[5u8][..], b"bench", tag.to_string().as_bytes()].concat();
    bytes.push(0);
    bytes.push(payload.len() as u8);
    bytes.extend_from_slice(&payload);
    Ok(bytes)
}

/// Swap latency with compilation: request to the new version serving.
pub async fn swap_latency(swaps: usize) -> anyhow::Result<Vec<Figure>> {
    use wattedge::admin::AdminBackend;
    let dir = tempfile::tempdir()?;
    let body = format!(
        "[guests.job]\ncomponent = \"{}\"\nschedule = \"every 1h\"\nconfig = {{ mode = \"write\" }}\n\n[guests.job.grants]\ninflux_write = [\"probe\"]\n",
        wattedge::builtin::probe_path().display()
    );
    let host = start(dir.path(), &body).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut samples = Vec::new();
    for i in 0..swaps {
        let bytes = probe_variant(i)?;
        let started = Instant::now();
        let reply = host.supervisor().swap("job", bytes.into()).await.map_err(|e| anyhow::anyhow!("{e}"))?;
        if reply["installed"] != true {
            bail!("swap {i} was not installed at once: {reply}");
        }
        samples.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    host.shutdown().await;
    samples.sort_by(f64::total_cmp);
    let (p50, p99) = (quantile(&samples, 0.5), quantile(&samples, 0.99));
    let note = format!(
        "{swaps} swaps of a {} KiB component; compile + type-check + init + install",
        std::fs::metadata(wattedge::builtin::probe_path())?.len() / 1024
    );
    Ok(vec![
        Figure::info("hot-swap latency p50, with compilation", format!("{p50:.1} ms"), note.clone()),
        Figure::info("hot-swap latency p99, with compilation", format!("{p99:.1} ms"), note),
    ])
}

/// Waits until `guest` finished the run every guest makes right after
/// start-up; a [`timed_invoke`] issued before that would time the start-up
/// run instead of its own (and every later one would be off by one).
pub(crate) async fn startup_run_done(host: &wattedge::RunningHost, guest: &str) -> anyhow::Result<()> {
    let handle = host.supervisor().guest(guest).context("guest configured")?.clone();
    let began = Instant::now();
    while handle.snapshot().runs == 0 {
        if began.elapsed() > Duration::from_secs(60) {
            bail!("{guest} did not finish its start-up run within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

/// Runs one invoke of `guest` with `args` and returns its run time in seconds.
pub(crate) async fn timed_invoke(
    host: &wattedge::RunningHost,
    guest: &str,
    args: &[(&str, String)],
) -> anyhow::Result<f64> {
    use wattedge::admin::AdminBackend;
    let handle = host.supervisor().guest(guest).context("guest configured")?.clone();
    let before = handle.snapshot().runs;
    let args = args.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
    host.supervisor().invoke(guest, args).map_err(|e| anyhow::anyhow!("{e}"))?;
    let began = Instant::now();
    loop {
        let snap = handle.snapshot();
        if snap.runs > before {
            let run = snap.last_run.context("a finished run")?;
            if run.outcome != "ok" {
                bail!("{guest} run failed: {:?}", run.detail);
            }
            return snap.last_run_seconds.context("run duration");
        }
        if began.elapsed() > Duration::from_secs(300) {
            bail!("{guest} did not finish within 5 minutes");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Per-unit cost of `mode` from runs with `n` units and with none.
pub(crate) async fn per_unit(
    host: &wattedge::RunningHost,
    mode: &str,
    n: u64,
    extra: &[(&str, String)],
    repeats: usize,
) -> anyhow::Result<(f64, f64, f64)> {
    let mut samples = Vec::new();
    for _ in 0..repeats {
        let mut empty = vec![("mode", mode.to_string()), ("n", "0".to_string())];
        empty.extend(extra.iter().cloned());
        let mut full = vec![("mode", mode.to_string()), ("n", n.to_string())];
        full.extend(extra.iter().cloned());
        let base = timed_invoke(host, "probe", &empty).await?;
        let total = timed_invoke(host, "probe", &full).await?;
        // Noise larger than the work itself measured nothing: say so rather
        // than report 0 µs as a pass.
        anyhow::ensure!(
            total > base,
            "{mode}: {n} units took no longer than none ({total:.4} s against {base:.4} s); raise n"
        );
        samples.push((total - base) / n as f64 * 1e6);
    }
    Ok(crate::report::median_spread(&mut samples))
}

/// The `probe` guest for the write and call figures: idle (`health`) on
/// its own schedule, driven by invokes, allowed to write `bench`.
pub(crate) fn probe_section() -> String {
    format!(
        "[guests.probe]\ncomponent = \"{}\"\nschedule = \"every 24h\"\nrun_timeout = \"300s\"\nmemory_limit = \"64MiB\"\nconfig = {{ mode = \"health\" }}\n\n[guests.probe.grants]\ninflux_write = [\"bench\"]\n",
        wattedge::builtin::probe_path().display()
    )
}

/// Guest→host no-op call cost and amortised point writes, through the real
/// linker, store and embedded backend.
pub async fn guest_calls(calls: u64, points: u64, repeats: usize) -> anyhow::Result<Vec<Figure>> {
    let dir = tempfile::tempdir()?;
    let host = start(dir.path(), &probe_section()).await?;
    startup_run_done(&host, "probe").await?;
    let (call_us, cmin, cmax) = per_unit(&host, "calls", calls, &[], repeats).await?;
    let batch = [("batch", "1000".to_string())];
    let (write_us, wmin, wmax) = per_unit(&host, "writes", points, &batch, repeats).await?;
    let single = [("batch", "1".to_string())];
    let (single_us, _, _) = per_unit(&host, "writes", 200, &single, 1).await?;
    host.shutdown().await;
    Ok(vec![
        Figure::bounded(
            "guest→host no-op call",
            call_us,
            "µs",
            1.0,
            false,
            format!("median of {repeats} × {calls} calls, spread {cmin:.3}–{cmax:.3} µs"),
        ),
        Figure::bounded(
            "guest write of one point, amortised (embedded store, batches of 1000)",
            write_us,
            "µs",
            20.0,
            false,
            format!(
                "median of {repeats} × {points} points, spread {wmin:.1}–{wmax:.1} µs; one point per write call: {single_us:.0} µs (one durable commit each)"
            ),
        ),
    ])
}

/// Precompiles `bytes` for this machine (what `wattedge compile` does for a board).
pub fn precompile_native(bytes: &[u8]) -> anyhow::Result<Vec<u8>> {
    let engine = wattedge::compile::engine::build(
        wattedge::compile::engine::EngineLimits::native(),
        wattedge::compile::engine::Purpose::Native,
    )
    .map_err(|e| anyhow::anyhow!("{e:#}"))?;
    engine.precompile_component(bytes).map_err(|e| anyhow::anyhow!("{e:#}"))
}

/// Swap latency with precompiled artifacts: deserialize + type-check + init + install.
pub async fn swap_latency_precompiled(swaps: usize) -> anyhow::Result<Figure> {
    use wattedge::admin::AdminBackend;
    let dir = tempfile::tempdir()?;
    let body = format!(
        "[guests.job]\ncomponent = \"{}\"\nschedule = \"every 1h\"\nconfig = {{ mode = \"write\" }}\n\n[guests.job.grants]\ninflux_write = [\"probe\"]\n",
        wattedge::builtin::probe_path().display()
    );
    let artifacts: Vec<Vec<u8>> =
        (0..swaps).map(|i| precompile_native(&probe_variant(i)?)).collect::<anyhow::Result<_>>()?;
    let host = start(dir.path(), &body).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut samples = Vec::new();
    for artifact in artifacts {
        let started = Instant::now();
        let reply = host.supervisor().swap("job", artifact.into()).await.map_err(|e| anyhow::anyhow!("{e}"))?;
        if reply["installed"] != true {
            bail!("a precompiled swap was not installed at once: {reply}");
        }
        samples.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    host.shutdown().await;
    samples.sort_by(f64::total_cmp);
    let (p50, p99) = (quantile(&samples, 0.5), quantile(&samples, 0.99));
    let note = format!("p50 {p50:.1} ms; {swaps} swaps; deserialize + type-check + init + install");
    Ok(Figure::bounded("hot-swap latency p99, precompiled", p99, "ms", 50.0, false, note))
}
