//! The artifact cache compiling in a child process (`wattedge compile-worker`,
//! the real binary): the artifact lands in the cache and maps into the host's
//! engine, a worker's failure comes back as the compiler's own message, and a
//! worker that cannot be started, or a cache that cannot be written, falls
//! back to compiling in-process.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use wattedge::compile::artifact_cache::ArtifactCache;
use wattedge::compile::component::ComponentError;
use wattedge::compile::engine::{self, CompileMode, EngineLimits};
use wattedge::compile::worker::CompileIn;

fn worker() -> CompileIn {
    CompileIn::ChildProcess(PathBuf::from(env!("CARGO_BIN_EXE_wattedge")))
}

fn builtin(name: &str) -> (&'static [u8], &'static str) {
    (wattedge::builtin::component(name).unwrap(), wattedge::builtin::digest(name).unwrap())
}

/// A stand-in worker: a shell script that runs `body` (with `$REAL` the
/// real binary).
fn script_worker(dir: &Path, body: &str) -> CompileIn {
    let path = dir.join("worker.sh");
    let text = format!("#!/bin/sh\nREAL='{}'\n{body}\n", env!("CARGO_BIN_EXE_wattedge"));
    std::fs::write(&path, text).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700)).unwrap();
    CompileIn::ChildProcess(path)
}

#[test]
fn a_worker_compiles_a_builtin_guest_into_the_cache_and_the_host_maps_it() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine::build(EngineLimits::native(), engine::Purpose::Native).unwrap();
    let marker = dir.path().join("worker-ran");
    let spy = script_worker(dir.path(), &format!("echo \"$@\" > '{}'\nexec \"$REAL\" \"$@\"", marker.display()));
    let cache = ArtifactCache::new(dir.path().join("cache"), EngineLimits::native()).compiling_in(spy);
    let (wasm, digest) = builtin("correlator");
    let component = cache.get_or_compile(&engine, "builtin:correlator", digest, wasm).unwrap();
    let linker = wattedge::capabilities::linker(&engine).unwrap();
    linker.instantiate_pre(&component).expect("the mapped artifact type-checks against the guest world");
    let path = cache.path_for(&engine, digest);
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the artifact is private to the host's user");
    let cached = std::fs::read(&path).unwrap();
    assert_eq!(wasmtime::Engine::detect_precompiled(&cached), Some(wasmtime::Precompiled::Component));
    let argv = std::fs::read_to_string(&marker).expect("the worker process did the compile");
    assert!(argv.contains("compile-worker") && argv.contains("--builtin correlator"), "{argv}");
    assert!(argv.contains("--compile optimized"), "a cache optimizes unless told otherwise: {argv}");
    let parent = format!("--parent-pid {}", std::process::id());
    assert!(argv.contains(&parent), "the worker is told whose death ends it: {argv}");
    // A second start finds it in the cache and starts no worker.
    std::fs::remove_file(&marker).unwrap();
    cache.get_or_compile(&engine, "builtin:correlator", digest, wasm).unwrap();
    assert!(!marker.exists(), "a cache hit needs no worker");
}

#[test]
fn a_board_profile_s_engine_settings_reach_the_worker_and_the_in_process_compiler() {
    // armv7 reserves 16 MiB per guest memory, this machine 64 MiB: an
    // artifact compiled with this machine's settings would not map.
    let limits = wattedge::compile::board::profile("armv7").unwrap().limits;
    assert_ne!(limits, EngineLimits::native());
    let engine = engine::build(limits, engine::Purpose::Native).unwrap();
    let native = engine::build(EngineLimits::native(), engine::Purpose::Native).unwrap();
    let linker = wattedge::capabilities::linker(&engine).unwrap();
    let (wasm, digest) = builtin("correlator");
    for compile_in in [worker(), CompileIn::ThisProcess] {
        let dir = tempfile::tempdir().unwrap();
        let cache = ArtifactCache::new(dir.path().join("cache"), limits).compiling_in(compile_in.clone());
        let component = cache.get_or_compile(&engine, "builtin:correlator", digest, wasm).unwrap();
        linker.instantiate_pre(&component).expect("the artifact type-checks");
        let path = cache.path_for(&engine, digest);
        // SAFETY: written by the cache a moment ago; wasmtime checks its settings.
        let refused = unsafe { wasmtime::component::Component::deserialize_file(&native, &path) };
        assert!(refused.is_err(), "{compile_in:?}: the artifact carries the board's settings, not this machine's");
    }
}

#[test]
fn a_guest_s_compile_mode_reaches_the_worker_and_the_in_process_compiler() {
    let engine = engine::build(EngineLimits::native(), engine::Purpose::Native).unwrap();
    let (wasm, digest) = builtin("correlator");
    let mut artifacts = Vec::new();
    for compile_in in [worker(), CompileIn::ThisProcess] {
        let dir = tempfile::tempdir().unwrap();
        let cache = ArtifactCache::new(dir.path().join("cache"), EngineLimits::native()).compiling_in(compile_in);
        let [quick, optimized] = [CompileMode::Quick, CompileMode::Optimized].map(|mode| {
            let cache = cache.for_mode(mode);
            cache.get_or_compile(&engine, "builtin:correlator", digest, wasm).unwrap();
            (cache.path_for(&engine, digest), std::fs::read(cache.path_for(&engine, digest)).unwrap())
        });
        assert_ne!(quick.0, optimized.0, "each mode has its own cache entry");
        assert_ne!(quick.1, optimized.1, "the two register allocators give different code");
        artifacts.push((quick.1, optimized.1));
    }
    assert!(artifacts[0] == artifacts[1], "the worker compiles what the in-process compiler does, mode for mode");
}

#[test]
fn a_worker_killed_by_the_kernel_is_reported_as_such() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine::build(EngineLimits::native(), engine::Purpose::Native).unwrap();
    let cache = ArtifactCache::new(dir.path().join("cache"), EngineLimits::native())
        .compiling_in(script_worker(dir.path(), "kill -9 $$"));
    let (wasm, digest) = builtin("correlator");
    let err = cache.get_or_compile(&engine, "builtin:correlator", digest, wasm).expect_err("refused");
    assert!(err.to_string().contains("killed (SIGKILL: out of memory?"), "{err}");
}

#[test]
fn a_worker_compiles_bytes_sent_on_its_stdin() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine::build(EngineLimits::native(), engine::Purpose::Native).unwrap();
    let cache = ArtifactCache::new(dir.path().join("cache"), EngineLimits::native()).compiling_in(worker());
    let (wasm, _) = builtin("watttime");
    // Not named as a built-in: the bytes themselves go to the worker.
    let digest = wattedge::compile::component::sha256_hex(wasm);
    cache.get_or_compile(&engine, "/srv/watttime.wasm", &digest, wasm).unwrap();
    assert!(cache.path_for(&engine, &digest).exists());
}

#[test]
fn a_worker_reports_the_compiler_error_and_caches_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine::build(EngineLimits::native(), engine::Purpose::Native).unwrap();
    let cache = ArtifactCache::new(dir.path().join("cache"), EngineLimits::native()).compiling_in(worker());
    // A valid header with a truncated body.
    let broken = b"\0asm\x0d\0\x01\0\x01\x05\x00";
    let digest = wattedge::compile::component::sha256_hex(broken);
    let err = cache.get_or_compile(&engine, "broken.wasm", &digest, broken).expect_err("refused");
    let ComponentError::Compile { source_name, error } = &err else { panic!("a compile error: {err}") };
    assert_eq!(source_name, "broken.wasm");
    assert!(!error.starts_with("error:"), "the worker's own prefix is stripped: {error}");
    assert!(!error.is_empty() && !error.contains("compiler process"), "the compiler's message: {error}");
    assert!(!cache.path_for(&engine, &digest).exists(), "nothing cached for a failed compile");
}

#[test]
fn a_worker_that_cannot_start_falls_back_to_compiling_in_process() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine::build(EngineLimits::native(), engine::Purpose::Native).unwrap();
    let missing = CompileIn::ChildProcess(dir.path().join("no-such-wattedge"));
    let cache = ArtifactCache::new(dir.path().join("cache"), EngineLimits::native()).compiling_in(missing);
    let (wasm, digest) = builtin("correlator");
    cache.get_or_compile(&engine, "builtin:correlator", digest, wasm).unwrap();
    assert!(cache.path_for(&engine, digest).exists(), "compiled here and cached all the same");
}

#[test]
fn a_cache_that_cannot_be_written_still_gives_a_running_guest() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine::build(EngineLimits::native(), engine::Purpose::Native).unwrap();
    let linker = wattedge::capabilities::linker(&engine).unwrap();
    let (wasm, digest) = builtin("correlator");
    // The worker compiles, then cannot put the artifact where a directory
    // stands (as with a full disk, it exits with EXIT_CANNOT_WRITE).
    let cache = ArtifactCache::new(dir.path().join("cache"), EngineLimits::native()).compiling_in(worker());
    let blocked = cache.path_for(&engine, digest);
    std::fs::create_dir_all(&blocked).unwrap();
    let component = cache.get_or_compile(&engine, "builtin:correlator", digest, wasm).expect("compiled in-process");
    linker.instantiate_pre(&component).expect("a usable component");
    assert!(blocked.is_dir(), "nothing was cached in its place");
    // The cache directory itself cannot be created: a file has its name.
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, "").unwrap();
    let cache = ArtifactCache::new(file.join("cache"), EngineLimits::native()).compiling_in(worker());
    let component = cache.get_or_compile(&engine, "builtin:correlator", digest, wasm).expect("compiled in-process");
    linker.instantiate_pre(&component).expect("a usable component");
}

#[test]
fn the_worker_exits_with_its_cannot_write_status() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("in-the-way");
    std::fs::create_dir(&out).unwrap();
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_wattedge"))
        .args(["compile-worker", "--builtin", "correlator", "--out"])
        .arg(&out)
        .args(EngineLimits::native().worker_args())
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(i32::from(wattedge::compile::worker::EXIT_CANNOT_WRITE)));
}

/// A host killed between spawning a worker and the worker's start (before
/// the kernel's parent-death signal is set: the harness kills hosts right
/// after `/ready`, when background compiles start) leaves no worker
/// compiling for no one: the worker sees its host gone and exits at once.
#[test]
fn a_worker_whose_host_died_before_it_started_compiles_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (out, pid_file) = (dir.path().join("orphan.cwasm"), dir.path().join("worker.pid"));
    // The shell stands in for the host: it starts the worker with its own
    // pid, as the host does, and exits before the worker has started.
    let limits = EngineLimits::native().worker_args().join(" ");
    let host = format!(
        "sh -c 'echo $$ > \"$0\"; sleep 0.5; shift; exec \"$@\"' '{}' '{}' compile-worker --out '{}' {limits} \
         --compile optimized --builtin wattivahti --parent-pid $$ </dev/null 2>/dev/null &\nexit 0\n",
        pid_file.display(),
        env!("CARGO_BIN_EXE_wattedge"),
        out.display()
    );
    let status = std::process::Command::new("sh").arg("-c").arg(host).status().unwrap();
    assert!(status.success());
    let started = std::time::Instant::now();
    let pid = loop {
        match std::fs::read_to_string(&pid_file) {
            Ok(pid) if pid.ends_with('\n') => break pid.trim().to_string(),
            _ if started.elapsed() > std::time::Duration::from_secs(10) => panic!("the worker never started"),
            _ => std::thread::sleep(std::time::Duration::from_millis(20)),
        }
    };
    // Gone, or a zombie not yet reaped by whoever adopted it.
    let running = || {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .is_ok_and(|stat| stat.rsplit_once(") ").is_some_and(|(_, rest)| !rest.starts_with('Z')))
    };
    while running() && started.elapsed() < std::time::Duration::from_secs(120) {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(!running(), "the orphaned worker is still running");
    assert!(!out.exists(), "the orphaned worker compiled an artifact nobody asked for any more");
}

/// Starts a host from a config whose one guest is the probe `.wasm`, with
/// `compile_in` compiling its misses and its state in `dir`.
async fn start_probe_host(dir: &Path, compile_in: CompileIn) -> wattedge::RunningHost {
    let text = format!(
        "[host]\nadmin_listen = \"127.0.0.1:0\"\nstate_dir = \"{}\"\n\n[guests.job]\ncomponent = \"{}\"\nschedule = \"every 1h\"\nconfig = {{ mode = \"write\" }}\n\n[guests.job.grants]\ninflux_write = [\"probe\"]\n",
        dir.join("state").display(),
        wattedge::builtin::probe_path().display()
    );
    std::fs::write(dir.join("wattedge.toml"), text).unwrap();
    let config = wattedge::config::Config::load(&dir.join("wattedge.toml")).unwrap();
    wattedge::start_with(config, wattedge::HostOptions { compile_in, ..Default::default() }).await.unwrap()
}

/// Waits until the guest ran once on code that is not being replaced.
async fn settled(host: &wattedge::RunningHost) -> wattedge::admin::GuestSnapshot {
    let handle = host.supervisor().guest("job").unwrap().clone();
    let began = std::time::Instant::now();
    loop {
        let snap = handle.snapshot();
        if snap.runs >= 1 && !snap.lifecycle.optimizing {
            return snap;
        }
        assert!(began.elapsed() < std::time::Duration::from_secs(60), "still optimizing after 60 s: {snap:?}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// The compiled artifacts in the cache (not its `digests` file).
fn cached_artifacts(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir.join("state/cache"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".cwasm"))
        .collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_start_runs_quick_code_until_a_background_worker_s_optimized_code_replaces_it() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("workers.log");
    let spy = script_worker(dir.path(), &format!("echo \"$@\" >> '{}'\nexec \"$REAL\" \"$@\"", log.display()));
    let host = start_probe_host(dir.path(), spy.clone()).await;
    let snap = settled(&host).await;
    let first_version = snap.version.clone().expect("a version");
    let calls = std::fs::read_to_string(&log).unwrap();
    let calls: Vec<&str> = calls.lines().collect();
    assert_eq!(calls.len(), 2, "a quick compile, then an optimized one: {calls:?}");
    assert!(calls[0].contains("--compile quick") && !calls[0].contains("--background"), "{}", calls[0]);
    assert!(calls[1].contains("--compile optimized") && calls[1].contains("--background"), "{}", calls[1]);
    // The same version: no swap is recorded, nothing to roll back to.
    assert_eq!(snap.lifecycle.previous_version, None);
    assert_eq!(snap.lifecycle.swapped_at, None);
    assert!(snap.initialized && snap.last_run.as_ref().is_some_and(|r| r.outcome == "ok"), "{snap:?}");
    let artifacts = cached_artifacts(dir.path());
    assert!(
        artifacts.len() == 1 && artifacts[0].ends_with("-optimized.cwasm"),
        "quick artifact removed: {artifacts:?}"
    );
    // It still runs: a manual run on the optimized code.
    let handle = host.supervisor().guest("job").unwrap().clone();
    use wattedge::admin::AdminBackend;
    host.supervisor().invoke("job", Vec::new()).unwrap();
    let began = std::time::Instant::now();
    while handle.snapshot().runs < 2 {
        assert!(began.elapsed() < std::time::Duration::from_secs(30), "the invoke did not run");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(handle.snapshot().last_run.unwrap().outcome, "ok");
    host.shutdown().await;
    // A restart maps the optimized artifact: no worker, nothing to replace.
    let host = start_probe_host(dir.path(), spy).await;
    let snap = settled(&host).await;
    assert_eq!(std::fs::read_to_string(&log).unwrap().lines().count(), 2, "no compile on restart");
    assert_eq!(snap.version.as_deref(), Some(first_version.as_str()));
    host.shutdown().await;
}
