//! The figures that need a real InfluxDB: a guest's write into the outbox of
//! the v1 backend, end-to-end throughput as a share of influxd's own ingest
//! ceiling, and outbox replay after an outage.
//!
//! One influxd (see [`crate::influx_server`]) serves all three, with a fresh
//! database and a fresh in-process host per figure; the outage figure runs
//! last because it stops and restarts the server. Delivery is judged by the
//! host's own outbox metrics and then confirmed with influxd's own count, so
//! a figure never reports points as delivered that influxd does not hold.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::influx_server::Server;
use crate::inproc::{per_unit, start, timed_invoke};
use crate::report::{Figure, median_spread};

/// Points per guest `write` call and per forwarded batch in the throughput
/// figures (the v1 backend's default `batch_points`).
const BATCH: u64 = 5000;
/// How long delivering a figure's points may take before it is called failed.
const DELIVERY_LIMIT: Duration = Duration::from_secs(180);

/// Sizes of the influx figures.
pub struct Sizes {
    /// Points per repeat of the amortised-write figure.
    pub outbox_points: u64,
    /// Points per repeat of the throughput figure.
    pub throughput_points: u64,
    /// Points written during each outage.
    pub outage_points: u64,
    pub repeats: usize,
}

/// Starts influxd and measures the three figures; when influxd cannot be
/// started, each figure reports that as its failure.
pub async fn measure(sizes: &Sizes) -> Vec<(&'static str, anyhow::Result<Vec<Figure>>)> {
    let server = match Server::start().await {
        Ok(server) => server,
        Err(e) => {
            let why = format!("{e:#}");
            return ["guest write into the outbox", "end-to-end throughput", "outbox replay"]
                .into_iter()
                .map(|name| (name, Err(anyhow::anyhow!("{why}"))))
                .collect();
        }
    };
    vec![
        ("guest write into the outbox", outbox_writes(&server, sizes).await.map(|f| vec![f])),
        ("end-to-end throughput", throughput(&server, sizes).await.map(|f| vec![f])),
        ("outbox replay", replay(&server, sizes).await.map(|f| vec![f])),
    ]
}

/// A host with the v1 backend on `db` and the probe guest.
async fn start_host(
    dir: &std::path::Path,
    server: &Server,
    db: &str,
    extra: &str,
) -> anyhow::Result<wattedge::RunningHost> {
    server.create_database(db).await?;
    let body = format!(
        "[influx]\nbackend = \"v1\"\nurl = \"{}\"\ndatabase = \"{db}\"\n{extra}\n{}",
        server.url(),
        crate::inproc::probe_section()
    );
    let host = start(dir, &body).await.context("starting the host with the v1 backend")?;
    crate::inproc::startup_run_done(&host, "probe").await?;
    Ok(host)
}

/// The value of an unlabelled metric in the store's Prometheus text.
fn metric(host: &wattedge::RunningHost, name: &str) -> anyhow::Result<f64> {
    value_in(&host.store().metrics(), name)
}

/// The value of the unlabelled metric `name` in Prometheus `text`.
fn value_in(text: &str, name: &str) -> anyhow::Result<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("metric {name} missing from the store's metrics:\n{text}"))
}

/// When delivery first progressed and when it finished.
struct Delivery {
    first: Instant,
    done: Instant,
}

/// Waits until `wattedge_outbox_forwarded_total` has grown from `from` by
/// `points` and the outbox is empty; fails on dropped points or after
/// [`DELIVERY_LIMIT`].
async fn delivered(host: &wattedge::RunningHost, from: f64, points: u64) -> anyhow::Result<Delivery> {
    let began = Instant::now();
    let target = from + points as f64;
    let mut first = None;
    loop {
        // One rendering of the metrics per look: the harness's polling runs
        // on the cores the host and influxd share, and is charged to the host.
        let text = host.store().metrics();
        let forwarded = value_in(&text, "wattedge_outbox_forwarded_total")?;
        if forwarded > from && first.is_none() {
            first = Some(Instant::now());
        }
        if forwarded >= target && value_in(&text, "wattedge_outbox_points")? == 0.0 {
            let done = Instant::now();
            return Ok(Delivery { first: first.unwrap_or(done), done });
        }
        let dropped = value_in(&text, "wattedge_outbox_dropped_total")?;
        if dropped > 0.0 {
            bail!("influxd refused {dropped} points for good (see the host's log)");
        }
        if began.elapsed() > DELIVERY_LIMIT {
            bail!("only {forwarded} of {target} points were forwarded within {DELIVERY_LIMIT:?}");
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Fails unless influxd holds exactly `expected` points in `db`.
async fn check_count(server: &Server, db: &str, expected: u64) -> anyhow::Result<()> {
    let stored = server.count(db).await?;
    if stored != expected {
        bail!("influxd holds {stored} points in {db}, expected {expected}");
    }
    Ok(())
}

/// Amortised cost of a guest's `write` into the outbox (batches of 1000 vs
/// n = 0), and the cost with one point per call.
async fn outbox_writes(server: &Server, sizes: &Sizes) -> anyhow::Result<Figure> {
    let (db, points, repeats) = ("bench_outbox", sizes.outbox_points, sizes.repeats);
    let dir = tempfile::tempdir()?;
    let host = start_host(dir.path(), server, db, "").await?;
    let batch = [("batch", "1000".to_string())];
    let (us, min, max) = per_unit(&host, "writes", points, &batch, repeats).await?;
    let single = [("batch", "1".to_string())];
    let (single_us, _, _) = per_unit(&host, "writes", 200, &single, 1).await?;
    let total = points * repeats as u64 + 200;
    delivered(&host, 0.0, total).await?;
    check_count(server, db, total).await?;
    host.shutdown().await;
    let note = format!(
        "influxd 1.6.7, v1 backend; median of {repeats} × {points} points, spread {min:.1}–{max:.1} µs; one point per write call: {single_us:.0} µs (one outbox record + fsync each); all {total} points then counted in influxd"
    );
    Ok(Figure::bounded(
        "guest write of one point into the outbox, amortised (batches of 1000)",
        us,
        "µs",
        20.0,
        false,
        note,
    ))
}

/// Points/s of one guest run of `points` points through the host, from the
/// invoke until the outbox is empty and `forwarded_total` grew by `points`;
/// also the share of that time the guest's run took (writes into the outbox).
async fn host_write(host: &wattedge::RunningHost, points: u64) -> anyhow::Result<(f64, f64)> {
    let before = metric(host, "wattedge_outbox_forwarded_total")?;
    let args = [("mode", "writes".to_string()), ("n", points.to_string()), ("batch", BATCH.to_string())];
    let started = Instant::now();
    let run = timed_invoke(host, "probe", &args).await?;
    let delivery = delivered(host, before, points).await?;
    let seconds = delivery.done.duration_since(started).as_secs_f64();
    Ok((points as f64 / seconds, run / seconds))
}

/// influxd's ceiling in one round: the raw writer's points/s with gzip
/// bodies (the yardstick: the forwarder sends gzip) and uncompressed.
async fn raw_round(server: &Server, points: u64, round: u64) -> anyhow::Result<(f64, f64)> {
    let gzip = server.raw_write("bench_raw", points, BATCH, true).await?;
    check_count(server, "bench_raw", points * round).await?;
    let plain = server.raw_write("bench_raw_plain", points, BATCH, false).await?;
    check_count(server, "bench_raw_plain", points * round).await?;
    Ok((gzip, plain))
}

/// End-to-end throughput guest → outbox → influxd as a share of a raw HTTP
/// writer's throughput into the same influxd. Both write the same points
/// (same count, series, field and timestamps) in batches of [`BATCH`] over
/// one connection with gzip bodies; the raw writer's bodies are built before
/// its clock starts. Which of the two goes first alternates per round.
async fn throughput(server: &Server, sizes: &Sizes) -> anyhow::Result<Figure> {
    let (db, points, repeats) = ("bench_e2e", sizes.throughput_points, sizes.repeats);
    server.create_database("bench_raw").await?;
    server.create_database("bench_raw_plain").await?;
    let dir = tempfile::tempdir()?;
    let host = start_host(dir.path(), server, db, "").await?;
    let (mut ratios, mut plain_ratios, mut raws, mut plains, mut hosts, mut shares) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for round in 1..=repeats as u64 {
        let host_first = round % 2 == 0;
        let early = if host_first { Some(host_write(&host, points).await?) } else { None };
        let (raw, plain) = raw_round(server, points, round).await?;
        let (through_host, share) = match early {
            Some(done) => done,
            None => host_write(&host, points).await?,
        };
        check_count(server, db, points * round).await?;
        ratios.push(through_host / raw);
        plain_ratios.push(through_host / plain);
        raws.push(raw);
        plains.push(plain);
        hosts.push(through_host);
        shares.push(share * 100.0);
    }
    host.shutdown().await;
    let each: Vec<String> = ratios.iter().map(|r| format!("{r:.2}")).collect();
    let (ratio, min, max) = median_spread(&mut ratios);
    let (plain_ratio, _, _) = median_spread(&mut plain_ratios);
    let [raw, plain, through_host, share] = [raws, plains, hosts, shares].map(|mut v| median_spread(&mut v).0);
    let note = format!(
        "median of {repeats} × {points} points: host {through_host:.0} points/s (guest write calls of {BATCH}, gzip batches of {BATCH}, until influxd holds them; the guest's run into the outbox took {share:.0} % of that), raw writer {raw:.0} points/s (one keep-alive connection, gzip batches of {BATCH} like the forwarder's); ratio per round {}, spread {min:.2}–{max:.2}; against an uncompressed raw writer ({plain:.0} points/s) the ratio is {plain_ratio:.2}",
        each.join(", ")
    );
    Ok(Figure::bounded(
        "end-to-end write throughput into influxd, share of its raw HTTP ingest",
        ratio,
        "of raw",
        0.85,
        true,
        note,
    ))
}

/// Replay: influxd stopped, the guest writes `outage_points` into the
/// outbox, influxd restarted; points/s from the restart (influxd answering
/// `/ping`) until influxd holds them all.
async fn replay(server: &Server, sizes: &Sizes) -> anyhow::Result<Figure> {
    let (db, points, repeats) = ("bench_replay", sizes.outage_points, sizes.repeats.min(3));
    let dir = tempfile::tempdir()?;
    // The retry backoff is capped low so that what is timed is the replay,
    // not the backoff (the default cap is 30 s).
    let host = start_host(dir.path(), server, db, "retry_max_delay = \"100ms\"\n").await?;
    let (mut rates, mut waits) = (Vec::new(), Vec::new());
    for round in 1..=repeats as u64 {
        server.stop().await?;
        let before = metric(&host, "wattedge_outbox_forwarded_total")?;
        let args = [("mode", "writes".to_string()), ("n", points.to_string()), ("batch", BATCH.to_string())];
        timed_invoke(&host, "probe", &args).await?;
        let queued = metric(&host, "wattedge_outbox_points")?;
        if queued != points as f64 {
            bail!("{queued} points wait in the outbox during the outage, expected {points}");
        }
        server.restart().await?;
        let restarted = Instant::now();
        let delivery = delivered(&host, before, points).await?;
        check_count(server, db, points * round).await?;
        rates.push(points as f64 / delivery.done.duration_since(restarted).as_secs_f64());
        waits.push(delivery.first.duration_since(restarted).as_secs_f64() * 1000.0);
    }
    host.shutdown().await;
    let (rate, min, max) = median_spread(&mut rates);
    let (wait, _, _) = median_spread(&mut waits);
    let note = format!(
        "median of {repeats} outages of {points} points (guest write calls of {BATCH}), spread {min:.0}–{max:.0} points/s; timed from influxd answering /ping after its restart until all are forwarded (then confirmed by influxd's count); first batch delivered after {wait:.0} ms (retry_max_delay = 100ms)"
    );
    let name = format!("outbox replay after a {}k-point outage", points / 1000);
    Ok(Figure::bounded(&name, rate, "points/s", 100_000.0, true, note))
}
