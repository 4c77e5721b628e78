//! Compiling a `.wasm` guest in a short-lived child process (`wattedge
//! compile-worker`), so the long-running host never pages in Cranelift.
//!
//! Compiling three guests in-process leaves the host about twice its idle
//! size: Cranelift's code pages (most of the x86_64 binary's text) and a
//! fragmented heap stay resident long after the compile. A child process
//! takes that memory with it when it exits, so the host's first start costs
//! what a restart costs: the artifact mapped from the cache. A compile that
//! runs out of memory also kills only the child.
//!
//! The child is this same binary, given the host's engine settings on its
//! command line; it reads the component from standard input and writes the
//! artifact atomically (mode 0600) to the cache path it is given. Nothing
//! else crosses: no config, no secrets, no guest data.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::engine::{CompileMode, EngineLimits};

/// The hidden subcommand that compiles one component.
pub const WORKER_COMMAND: &str = "compile-worker";

/// The worker's exit status when it could not write the artifact (a full
/// disk, a read-only state dir). The host then compiles in-process and runs
/// the guest uncached, as it does when it cannot cache its own compile.
pub const EXIT_CANNOT_WRITE: u8 = 3;

/// The worker's exit status when the host that started it was already gone.
pub const EXIT_ORPHANED: u8 = 4;

/// Where `.wasm` components are compiled.
#[derive(Debug, Clone, Default)]
pub enum CompileIn {
    /// In the host process (library users and tests).
    #[default]
    ThisProcess,
    /// In a child process running `executable compile-worker` (the binary).
    ChildProcess(PathBuf),
}

/// Why a child compile did not produce an artifact.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The child could not be started (say the binary was replaced by an
    /// upgrade); the caller can compile in-process instead.
    #[error("cannot start the compiler process {exe}: {error}")]
    Spawn { exe: String, error: std::io::Error },
    /// The artifact could not be written to the cache (by the child, or
    /// the cache directory not by anyone); the caller can compile
    /// in-process and run the guest uncached.
    #[error("cannot write to the artifact cache: {0}")]
    CannotWrite(String),
    /// The child ran and failed: its message, or how it died.
    #[error("{0}")]
    Failed(String),
}

/// Why the worker's side failed; the CLI exits with [`ServeError::exit_code`].
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Reading or compiling the component failed.
    #[error("{0}")]
    Compile(String),
    /// The artifact could not be written.
    #[error("{0}")]
    Write(String),
    /// The host that started the worker was gone before the worker could
    /// arrange to die with it; nobody waits for the artifact.
    #[error("the host (pid {0}) that started this worker is gone; nothing to compile for")]
    Orphaned(u32),
}

impl ServeError {
    /// The worker's exit status for this failure.
    pub fn exit_code(&self) -> u8 {
        match self {
            ServeError::Compile(_) => 1,
            ServeError::Write(_) => EXIT_CANNOT_WRITE,
            ServeError::Orphaned(_) => EXIT_ORPHANED,
        }
    }
}

/// What the worker compiles.
#[derive(Debug, Clone, Copy)]
pub enum WorkerInput<'a> {
    /// A built-in guest: the worker, being this binary, has the same bytes,
    /// so the host never pages in its own copy.
    Builtin(&'a str),
    /// Component bytes, sent on the worker's stdin.
    Bytes(&'a [u8]),
}

/// Longest a worker may compile before it is killed: a component that
/// takes Cranelift longer than this (or a wedged worker) must not hold a
/// guest's start, or a swap, forever. Generous: a large guest compiled
/// optimized on a Pi Zero 2 W takes minutes.
pub const COMPILE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15 * 60);

/// How a worker shares the CPU with the host and its guests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Priority {
    /// Someone waits for the result (a guest's start, a swap).
    Normal,
    /// Nobody waits: the worker runs at the lowest priority (nice 19), so
    /// that it only takes CPU time nothing else wants.
    Background,
}

/// Compiles `input` in `mode` for an engine with `limits` by running
/// `exe compile-worker --out OUT ...` and waits for it.
pub fn compile_in_child(
    exe: &Path,
    input: WorkerInput<'_>,
    settings: (EngineLimits, CompileMode, Priority),
    out: &Path,
) -> Result<(), WorkerError> {
    compile_in_child_within(exe, input, settings, out, COMPILE_TIMEOUT)
}

/// [`compile_in_child`], killing the worker after `timeout`.
pub fn compile_in_child_within(
    exe: &Path,
    input: WorkerInput<'_>,
    (limits, mode, priority): (EngineLimits, CompileMode, Priority),
    out: &Path,
    timeout: std::time::Duration,
) -> Result<(), WorkerError> {
    let mut command = Command::new(exe);
    command.arg(WORKER_COMMAND).arg("--out").arg(out).args(limits.worker_args()).args(["--compile", mode.as_str()]);
    command.arg("--parent-pid").arg(std::process::id().to_string());
    if priority == Priority::Background {
        command.arg("--background");
    }
    let wasm: &[u8] = match input {
        WorkerInput::Builtin(name) => {
            command.args(["--builtin", name]);
            &[]
        }
        WorkerInput::Bytes(bytes) => bytes,
    };
    let mut child = command
        .env("WATTEDGE_LOG", "error")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|error| WorkerError::Spawn { exe: exe.display().to_string(), error })?;
    let mut stdin = child.stdin.take().expect("stdin is piped");
    // The worker reads all of its input before it writes anything, so this
    // cannot deadlock on a full stderr pipe.
    let sent = stdin.write_all(wasm);
    drop(stdin);
    let output = wait_within(child, timeout)?;
    if output.status.success() {
        return Ok(());
    }
    let message = failure_message(&output, sent.err());
    if output.status.code() == Some(i32::from(EXIT_CANNOT_WRITE)) {
        return Err(WorkerError::CannotWrite(message));
    }
    Err(WorkerError::Failed(message))
}

/// Waits for `child` (reading its stderr meanwhile) at most `timeout`;
/// past it the child is killed and the compile fails.
fn wait_within(
    mut child: std::process::Child,
    timeout: std::time::Duration,
) -> Result<std::process::Output, WorkerError> {
    use std::io::Read;
    let mut stderr = child.stderr.take();
    let reader = std::thread::spawn(move || {
        let mut said = Vec::new();
        if let Some(pipe) = stderr.as_mut() {
            let _ = pipe.take(64 << 10).read_to_end(&mut said);
        }
        said
    });
    let deadline = std::time::Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(20))
            }
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(WorkerError::Failed(format!(
                    "the compiler process took longer than {} s and was stopped",
                    timeout.as_secs()
                )));
            }
            Err(e) => return Err(WorkerError::Failed(format!("compiler process: {e}"))),
        }
    };
    let stderr = reader.join().unwrap_or_default();
    Ok(std::process::Output { status, stdout: Vec::new(), stderr })
}

/// What the worker said on stderr, or how it died.
fn failure_message(output: &std::process::Output, send_error: Option<std::io::Error>) -> String {
    use std::os::unix::process::ExitStatusExt;
    let said = String::from_utf8_lossy(&output.stderr);
    let said = said.trim().trim_start_matches("error: ");
    if !said.is_empty() {
        return said.to_string();
    }
    match (output.status.signal(), send_error) {
        (Some(9), _) => "the compiler process was killed (SIGKILL: out of memory? raise MemoryMax or free RAM)".into(),
        (Some(signal), _) => format!("the compiler process died from signal {signal}"),
        (None, Some(e)) => format!("could not send the component to the compiler process: {e}"),
        (None, None) => format!("the compiler process failed ({})", output.status),
    }
}

/// The worker's side: compile built-in guest `builtin`, or else standard
/// input, in `mode` into an artifact for an engine with `limits` at `out`.
#[cfg(not(target_arch = "arm"))]
pub fn serve(
    out: &Path,
    builtin: Option<&str>,
    (limits, mode): (EngineLimits, CompileMode),
    parent: Option<u32>,
) -> Result<(), ServeError> {
    use std::io::Read;
    exit_with_parent(parent)?;
    let mut input = Vec::new();
    std::io::stdin()
        .read_to_end(&mut input)
        .map_err(|e| ServeError::Compile(format!("reading the component from stdin: {e}")))?;
    let wasm = match builtin {
        Some(name) => crate::builtin::component(name)
            .ok_or_else(|| ServeError::Compile(format!("no built-in guest named {name:?}")))?,
        None => &input[..],
    };
    let artifact = super::engine::build(limits, super::engine::Purpose::Compiler(mode))
        .and_then(|compiler| compiler.precompile_component(wasm))
        .map_err(|e| ServeError::Compile(format!("{e:#}")))?;
    crate::secrets::write_atomic(out, &artifact)
        .map_err(|e| ServeError::Write(format!("{}: cannot write artifact: {e}", out.display())))
}

/// Lowers this process's CPU priority to the lowest (nice 19); the
/// compiler threads it starts afterwards inherit it.
#[cfg(not(target_arch = "arm"))]
pub fn lower_priority() {
    // SAFETY: setpriority only changes the scheduling priority of this process.
    let result = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 19) };
    if result != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "could not lower the compiler's priority");
    }
}

/// A worker whose host died has no one to compile for: it is killed when
/// the host dies, and gives up at once if the host (`parent`, the pid the
/// host passed) died already. The kernel's parent-death signal covers only
/// a parent that dies after it is set, and a host killed between spawning
/// the worker and this call (a few milliseconds of exec and start-up; the
/// harness kills hosts right after `/ready`, when background compiles
/// start) left workers compiling for seconds with no one to read the
/// artifact.
#[cfg(not(target_arch = "arm"))]
fn exit_with_parent(parent: Option<u32>) -> Result<(), ServeError> {
    #[cfg(target_os = "linux")]
    // SAFETY: prctl(PR_SET_PDEATHSIG) only sets a signal for this process.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
    }
    match parent {
        Some(pid) if std::os::unix::process::parent_id() != pid => Err(ServeError::Orphaned(pid)),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_worker_that_never_finishes_is_killed_at_the_timeout() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let exe = dir.path().join("wedged-worker");
        let pid_file = dir.path().join("pid");
        std::fs::write(&exe, format!("#!/bin/sh\necho $$ > {}\nexec sleep 600\n", pid_file.display())).unwrap();
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
        let settings = (EngineLimits::native(), CompileMode::Quick, Priority::Normal);
        let started = std::time::Instant::now();
        let out = dir.path().join("out.cwasm");
        let timeout = std::time::Duration::from_secs(1);
        let err = compile_in_child_within(&exe, WorkerInput::Bytes(b""), settings, &out, timeout).unwrap_err();
        assert!(err.to_string().contains("took longer than 1 s and was stopped"), "{err}");
        assert!(started.elapsed() < std::time::Duration::from_secs(30), "returned at the timeout");
        let pid = std::fs::read_to_string(&pid_file).unwrap();
        let alive = std::path::Path::new(&format!("/proc/{}", pid.trim())).exists();
        assert!(!alive, "the worker was killed and reaped");
    }
}
