//! Measurements of the real `wattedge` binary as a process: stripped size,
//! cold start to `/ready`, idle RSS and idle CPU with the shipped config.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::report::{Figure, median_spread};

/// A running host process on a temp state dir and a free port.
pub struct HostProcess {
    pub child: Child,
    pub addr: SocketAddr,
    _dir: tempfile::TempDir,
    binary: PathBuf,
    config: PathBuf,
}

impl HostProcess {
    /// Stops the host and starts it again on the same state dir (so the
    /// guests come from the compiled-artifact cache).
    pub fn restart(mut self) -> anyhow::Result<HostProcess> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.child = Command::new(&self.binary)
            .args(["run", "--config"])
            .arg(&self.config)
            .env("WATTEDGE_LOG", "error")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        Ok(self)
    }
}

impl Drop for HostProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The repo's wattedge.toml with a private state dir and port.
fn shipped_config(dir: &Path, port: u16) -> anyhow::Result<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let text =
        std::fs::read_to_string(root.join("wattedge.toml"))?.replace("127.0.0.1:9100", &format!("127.0.0.1:{port}"));
    let path = dir.join("wattedge.toml");
    std::fs::write(&path, text)?;
    Ok(path)
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Starts `binary` on the shipped config.
pub fn spawn(binary: &Path) -> anyhow::Result<HostProcess> {
    spawn_with(binary, &|_: &Path, _: &Path| Ok(()))
}

/// Starts `binary` on the shipped config after `prepare(dir, config_path)`
/// (e.g. to point the guests at precompiled artifacts).
pub fn spawn_with(binary: &Path, prepare: &dyn Fn(&Path, &Path) -> anyhow::Result<()>) -> anyhow::Result<HostProcess> {
    let dir = tempfile::tempdir()?;
    let port = free_port()?;
    let config = shipped_config(dir.path(), port)?;
    prepare(dir.path(), &config)?;
    let child = Command::new(binary)
        .args(["run", "--config"])
        .arg(&config)
        .env("WATTEDGE_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))?;
    Ok(HostProcess {
        child,
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
        _dir: dir,
        binary: binary.to_path_buf(),
        config,
    })
}

/// Status code of `GET path`, or None when nothing answers yet.
pub fn get_status(addr: SocketAddr, path: &str) -> Option<u16> {
    get(addr, path)?.get(9..12)?.parse().ok()
}

/// The body of `GET path`, or None when nothing answers.
fn get_body(addr: SocketAddr, path: &str) -> Option<String> {
    Some(get(addr, path)?.split_once("\r\n\r\n")?.1.to_string())
}

/// The whole answer to `GET path`, or None when nothing answers.
fn get(addr: SocketAddr, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    Some(text)
}

/// Waits until no guest runs provisional quick code any more (a first
/// start's tier-up, see README "Compiling guests"); returns how long that took.
fn wait_optimized(addr: SocketAddr, limit: Duration) -> anyhow::Result<Duration> {
    let began = Instant::now();
    while began.elapsed() < limit {
        let guests: Option<serde_json::Value> = get_body(addr, "/guests").and_then(|b| serde_json::from_str(&b).ok());
        let optimizing =
            guests.as_ref().and_then(|g| g.as_array()).map(|all| all.iter().any(|g| g["optimizing"] == true));
        if optimizing == Some(false) {
            return Ok(began.elapsed());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    bail!("guests still ran quick code {limit:?} after /ready")
}

/// Waits until `/ready` answers 200; returns the time since `since`.
pub fn wait_ready(addr: SocketAddr, since: Instant, limit: Duration) -> anyhow::Result<Duration> {
    while since.elapsed() < limit {
        if get_status(addr, "/ready") == Some(200) {
            return Ok(since.elapsed());
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    bail!("/ready did not answer 200 within {limit:?}")
}

fn proc_field(pid: u32, field: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status.lines().find(|l| l.starts_with(field)).context("field missing")?;
    Ok(line.split_whitespace().nth(1).context("no value")?.parse()?)
}

/// utime + stime in clock ticks.
fn cpu_ticks(pid: u32) -> anyhow::Result<u64> {
    stat_ticks(pid, 11)
}

/// cutime + cstime in clock ticks: the CPU of children the process has
/// waited for (the compile workers, once each guest is loaded).
fn children_cpu_ticks(pid: u32) -> anyhow::Result<u64> {
    stat_ticks(pid, 13)
}

/// The sum of the two `/proc/PID/stat` fields from `first` (counted after
/// the command name).
fn stat_ticks(pid: u32, first: usize) -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after = stat.rsplit_once(')').context("bad stat")?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    Ok(fields[first].parse::<u64>()? + fields[first + 1].parse::<u64>()?)
}

/// Cold start from `.wasm` (compiling the three guests), median of `runs`.
pub fn cold_start(binary: &Path, runs: usize) -> anyhow::Result<Figure> {
    let (median, note) = time_cold_starts(binary, runs, &|_: &Path, _: &Path| Ok(()))?;
    Ok(Figure::bounded("cold start to /ready, from .wasm", median, "ms", 500.0, false, note))
}

/// The three shipped guests.
const GUESTS: [&str; 3] = ["watttime", "wattivahti", "correlator"];

/// The shipped guests precompiled for this machine into a temp dir (the
/// engine and settings `wattedge compile` uses, with the native limits a
/// host without `[host] board` runs).
pub fn precompiled_guests() -> anyhow::Result<tempfile::TempDir> {
    let artifacts = tempfile::tempdir()?;
    for name in GUESTS {
        let bytes = wattedge::builtin::component(name).context("built-in guest")?;
        std::fs::write(artifacts.path().join(format!("{name}.cwasm")), crate::inproc::precompile_native(bytes)?)?;
    }
    Ok(artifacts)
}

/// A `prepare` for [`spawn_with`] that points the shipped config's guests
/// at the artifacts in `dir`.
fn point_at_artifacts(dir: &Path) -> impl Fn(&Path, &Path) -> anyhow::Result<()> + use<> {
    let dir = dir.to_path_buf();
    move |_: &Path, config: &Path| -> anyhow::Result<()> {
        let mut text = std::fs::read_to_string(config)?;
        for name in GUESTS {
            let artifact = dir.join(format!("{name}.cwasm"));
            text = text.replace(&format!("\"builtin:{name}\""), &format!("\"{}\"", artifact.display()));
        }
        Ok(std::fs::write(config, text)?)
    }
}

/// Cold start with the three guests precompiled for this machine.
pub fn cold_start_precompiled(binary: &Path, runs: usize) -> anyhow::Result<Figure> {
    let artifacts = precompiled_guests()?;
    let (median, note) = time_cold_starts(binary, runs, &point_at_artifacts(artifacts.path()))?;
    Ok(Figure::bounded("cold start to /ready, from precompiled artifacts", median, "ms", 10.0, false, note))
}

/// Idle RSS of the board-like build (`board`, built by [`crate::sizes`])
/// on the shipped config with the guests from artifacts: `starts` fresh
/// starts, each read `settle` after `/ready`; plus where the median start's
/// resident pages are (`/proc/PID/smaps`).
pub fn board_idle(binary: &Path, starts: usize, settle: Duration) -> anyhow::Result<Vec<Figure>> {
    let artifacts = precompiled_guests()?;
    let prepare = point_at_artifacts(artifacts.path());
    let mut samples: Vec<(f64, Breakdown)> = Vec::new();
    for _ in 0..starts.max(1) {
        let host = spawn_with(binary, &prepare)?;
        wait_ready(host.addr, Instant::now(), Duration::from_secs(30))?;
        std::thread::sleep(settle);
        let pid = host.child.id();
        samples.push((proc_field(pid, "VmRSS:")? as f64 / 1024.0, Breakdown::read(pid, binary)?));
    }
    samples.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (min, max) = (samples[0].0, samples[samples.len() - 1].0);
    let (median, breakdown) = &samples[samples.len() / 2];
    let after_run = board_idle_after_run(binary, &prepare, settle)?;
    Ok(vec![
        after_run,
        Figure::bounded(
            "idle RSS, board-like build (x86_64, board profile, no built-in guests, guests from artifacts)",
            *median,
            "MiB",
            10.0,
            false,
            format!(
                "median of {} starts, spread {min:.2}–{max:.2} MiB; read {} s after /ready; {}",
                samples.len(),
                settle.as_secs(),
                breakdown.summary()
            ),
        ),
    ])
}

/// The board-like build's RSS `settle` after the correlator's first
/// scheduled run (its schedule is `every 60s`): what an idle host holds
/// between runs, not only right after start-up.
fn board_idle_after_run(
    binary: &Path,
    prepare: &dyn Fn(&Path, &Path) -> anyhow::Result<()>,
    settle: Duration,
) -> anyhow::Result<Figure> {
    let host = spawn_with(binary, prepare)?;
    wait_ready(host.addr, Instant::now(), Duration::from_secs(30))?;
    // Not polled meanwhile: answering the harness would page in the admin
    // server's code, which an idle host does not run.
    std::thread::sleep(CORRELATOR_EVERY + settle);
    let pid = host.child.id();
    let rss = proc_field(pid, "VmRSS:")? as f64 / 1024.0;
    let breakdown = Breakdown::read(pid, binary)?;
    let runs = correlator_runs(host.addr);
    anyhow::ensure!(runs >= 2, "the correlator ran {runs} times in the {CORRELATOR_EVERY:?} after /ready, not twice");
    Ok(Figure::bounded(
        "idle RSS, board-like build, after the correlator's first scheduled run",
        rss,
        "MiB",
        10.0,
        false,
        format!(
            "one start, read {} s after /ready (the correlator's start-up run and its next, every 60s); {}",
            (CORRELATOR_EVERY + settle).as_secs(),
            breakdown.summary()
        ),
    ))
}

/// The correlator's schedule in the shipped config.
const CORRELATOR_EVERY: Duration = Duration::from_secs(60);

/// Runs the correlator has finished (0 when `/guests` does not say).
fn correlator_runs(addr: SocketAddr) -> u64 {
    let guests: Option<serde_json::Value> = get_body(addr, "/guests").and_then(|b| serde_json::from_str(&b).ok());
    let all = guests.as_ref().and_then(|g| g.as_array()).cloned().unwrap_or_default();
    all.iter().find(|g| g["name"] == "correlator").and_then(|g| g["runs"].as_u64()).unwrap_or(0)
}

/// Resident memory by what is mapped, in KiB (`Rss:` of `/proc/PID/smaps`).
#[derive(Default, Debug, Clone)]
pub struct Breakdown {
    binary: u64,
    libc: u64,
    artifacts: u64,
    anon: u64,
    other: u64,
}

impl Breakdown {
    /// Reads `pid`'s smaps; `binary` is the executable's path.
    pub fn read(pid: u32, binary: &Path) -> anyhow::Result<Breakdown> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/smaps"))?;
        let exe = binary.canonicalize()?;
        let mut b = Breakdown::default();
        let mut bucket: Option<&mut u64> = None;
        for line in text.lines() {
            let mut words = line.split_whitespace();
            let first = words.next().unwrap_or_default();
            if first.contains('-') && !first.ends_with(':') {
                let path = words.nth(4).unwrap_or_default();
                bucket = Some(match path {
                    p if Path::new(p) == exe => &mut b.binary,
                    p if p.contains("/libc.so") || p.contains("/libc-") => &mut b.libc,
                    p if p.ends_with(".cwasm") => &mut b.artifacts,
                    "" | "[heap]" | "[stack]" => &mut b.anon,
                    p if p.starts_with("[anon") => &mut b.anon,
                    _ => &mut b.other,
                });
            } else if first == "Rss:"
                && let Some(kib) = words.next().and_then(|v| v.parse::<u64>().ok())
                && let Some(total) = bucket.as_deref_mut()
            {
                *total += kib;
            }
        }
        Ok(b)
    }

    fn summary(&self) -> String {
        let mib = |kib: u64| kib as f64 / 1024.0;
        format!(
            "resident: binary {:.2}, libc {:.2}, artifacts {:.2}, anonymous {:.2}, other {:.2} MiB",
            mib(self.binary),
            mib(self.libc),
            mib(self.artifacts),
            mib(self.anon),
            mib(self.other)
        )
    }
}

fn time_cold_starts(
    binary: &Path,
    runs: usize,
    prepare: &dyn Fn(&Path, &Path) -> anyhow::Result<()>,
) -> anyhow::Result<(f64, String)> {
    let (mut samples, mut compile_cpu) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        let started = Instant::now();
        let host = spawn_with(binary, prepare)?;
        samples.push(wait_ready(host.addr, started, Duration::from_secs(30))?.as_secs_f64() * 1000.0);
        compile_cpu.push(children_cpu_ticks(host.child.id())? as f64 / 100.0); // USER_HZ
    }
    let (median, min, max) = median_spread(&mut samples);
    let (cpu, _, _) = median_spread(&mut compile_cpu);
    // The CPU the compile workers used does not depend on how busy the
    // machine is, so it tells a slow run from a loaded machine.
    // A first start compiles quick code before /ready (the optimized code
    // follows in the background, after this is read).
    let workers =
        if cpu > 0.0 { format!("; compile workers' CPU before /ready {cpu:.2} s (median)") } else { String::new() };
    Ok((median, format!("median of {runs}, spread {min:.0}–{max:.0} ms; process spawn to /ready 200{workers}")))
}

/// Idle RSS and idle CPU of the shipped config over `idle`; then the idle
/// RSS of `restarts` restarts (guests from the artifact cache).
pub fn idle(binary: &Path, idle: Duration, restarts: usize) -> anyhow::Result<Vec<Figure>> {
    let host = spawn(binary)?;
    wait_ready(host.addr, Instant::now(), Duration::from_secs(30))?;
    let tier_up = wait_optimized(host.addr, Duration::from_secs(60))?;
    std::thread::sleep(Duration::from_secs(2));
    let pid = host.child.id();
    let ticks_before = cpu_ticks(pid)?;
    std::thread::sleep(idle);
    let ticks = cpu_ticks(pid)? - ticks_before;
    let rss_mib = proc_field(pid, "VmRSS:")? as f64 / 1024.0;
    let ticks_per_sec = 100.0; // USER_HZ on Linux
    let cpu_pct = ticks as f64 / ticks_per_sec / idle.as_secs_f64() * 100.0;
    let mut host = host;
    let mut warm = Vec::new();
    let mut breakdown = None;
    for _ in 0..restarts.max(1) {
        host = host.restart()?;
        wait_ready(host.addr, Instant::now(), Duration::from_secs(30))?;
        std::thread::sleep(Duration::from_secs(2));
        warm.push(proc_field(host.child.id(), "VmRSS:")? as f64 / 1024.0);
        breakdown = Some(Breakdown::read(host.child.id(), binary)?);
    }
    let (warm_rss_mib, wmin, wmax) = median_spread(&mut warm);
    let where_ = breakdown.map(|b| b.summary()).unwrap_or_default();
    Ok(vec![
        Figure::bounded(
            "idle RSS after a restart (guests from the compiled-artifact cache)",
            warm_rss_mib,
            "MiB",
            12.0,
            false,
            format!(
                "median of {} restarts, spread {wmin:.2}–{wmax:.2} MiB, each read 2 s after /ready; last restart's {where_}",
                warm.len()
            ),
        ),
        Figure::bounded(
            "idle RSS, first start (three guests compiled by worker processes), embedded store",
            rss_mib,
            "MiB",
            16.0,
            false,
            format!(
                "measured once the guests' optimized code replaced their quick code ({:.0} ms after /ready); \
                 predecessors: 139 MB + 50 MB (Python); Telegraf ~15 MiB",
                tier_up.as_secs_f64() * 1000.0
            ),
        ),
        Figure::bounded(
            &format!("host CPU at idle over {} s", idle.as_secs()),
            cpu_pct,
            "% of a core",
            0.02,
            false,
            format!("{ticks} clock ticks; 3 guests on default schedules"),
        ),
    ])
}
