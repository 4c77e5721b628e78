//! The command line: `run`, `check`, `secrets`, `invoke`, `status`, `swap`,
//! `rollback`, `compile`, and (feature `publish`) `publish` and `keygen`.
//!
//! This is the binary's edge, so errors here are `anyhow`; everything below
//! it returns typed errors. Config errors exit with status 2 and one line
//! naming the file, the key and the fix.

mod client;
#[cfg(feature = "publish")]
mod fleet_cli;

use std::io::{IsTerminal, Read};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::compile::engine::{self, EngineLimits};
use crate::compile::worker::CompileIn;
use crate::config::Config;
use crate::secrets::SecretStore;

/// Exit status for invalid configuration or usage.
pub const EXIT_CONFIG: u8 = 2;

/// wattedge: sandboxed home-energy data jobs for Raspberry Pi boards.
#[derive(Debug, Parser)]
#[command(name = "wattedge", version, about)]
pub struct Cli {
    /// The configuration file (default: wattedge.toml here, else the
    /// installed /etc/wattedge/wattedge.toml).
    #[arg(long, short, global = true, env = "WATTEDGE_CONFIG", default_value_os_t = default_config())]
    pub config: PathBuf,
    #[command(subcommand)]
    pub command: Command,
}

/// Where the Debian package installs the config.
pub const INSTALLED_CONFIG: &str = "/etc/wattedge/wattedge.toml";

/// `wattedge.toml` in the current directory; where there is none and the
/// package is installed, its config, so the commands the host prints
/// (`sudo -u wattedge wattedge secrets set NAME`) work as printed.
fn default_config() -> PathBuf {
    let here = PathBuf::from("wattedge.toml");
    if !here.exists() && Path::new(INSTALLED_CONFIG).exists() { PathBuf::from(INSTALLED_CONFIG) } else { here }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the guests on their schedules and serve the admin API.
    Run,
    /// Validate the config, grants, schedules and components, then exit.
    Check,
    /// Manage secrets in the secrets file.
    Secrets {
        #[command(subcommand)]
        action: SecretsAction,
    },
    /// Run a guest now on the running host, e.g. `invoke wattivahti start=2024-01-01`.
    Invoke {
        guest: String,
        /// Arguments passed to the guest as `key=value`.
        args: Vec<String>,
        /// Return once the run is queued instead of following it.
        #[arg(long)]
        no_wait: bool,
    },
    /// Show the state of every guest on the running host.
    Status,
    /// Replace a guest's component on the running host (compiled, checked
    /// and initialised first; the old version keeps running if that fails).
    Swap { guest: String, file: PathBuf },
    /// Restore the version the last swap replaced.
    Rollback { guest: String },
    /// Precompile the config's guests for a board (profiles in targets/), so
    /// the board loads them without compiling.
    #[cfg(not(target_arch = "arm"))]
    Compile {
        /// Board profile: pi-zero-2w, pi3, pi4, pi5 or armv7 (default: the
        /// config's `[host] board`).
        #[arg(long)]
        target: Option<String>,
        /// Where to write `GUEST.PROFILE.cwasm` files.
        #[arg(long, default_value = "artifacts")]
        out: PathBuf,
    },
    /// Push a .wasm guest to an OCI registry as one reference for every
    /// board: the .wasm plus an artifact per board profile (see README,
    /// "A fleet of boards").
    #[cfg(all(feature = "publish", not(target_arch = "arm")))]
    Publish {
        /// The guest component (.wasm).
        wasm: PathBuf,
        /// Where to: oci://REGISTRY/REPO:TAG.
        reference: String,
        /// Board profiles to precompile for, comma-separated (e.g. pi4,armv7).
        #[arg(long, value_delimiter = ',')]
        profiles: Vec<String>,
        /// Sign the index with this private key (from `wattedge keygen`).
        #[arg(long)]
        sign: Option<PathBuf>,
        /// Talk plain http:// to this registry (also: [fleet] insecure_registries).
        #[arg(long)]
        insecure: bool,
    },
    /// Write a new Ed25519 signing key to PATH (mode 0600) and its public
    /// key to PATH.pub, for `publish --sign` and `[fleet] trusted_keys`.
    #[cfg(feature = "publish")]
    Keygen { path: PathBuf },
    /// Internal: compile the component on stdin into an artifact at OUT
    /// (the host runs this as a child process of itself).
    #[cfg(not(target_arch = "arm"))]
    #[command(name = "compile-worker", hide = true)]
    CompileWorker {
        #[arg(long)]
        out: PathBuf,
        /// Compile this built-in guest instead of stdin.
        #[arg(long)]
        builtin: Option<String>,
        /// The host engine's memory reservation, in bytes.
        #[arg(long)]
        memory_reservation: u64,
        /// The host engine's memory guard, in bytes.
        #[arg(long)]
        memory_guard: u64,
        /// `quick` or `optimized` (the guest's `compile` setting).
        #[arg(long, default_value = "quick")]
        compile: engine::CompileMode,
        /// Compile at the lowest CPU priority (a guest's optimized code
        /// while it already runs on quick code).
        #[arg(long)]
        background: bool,
        /// The host's pid: the worker gives up if that process is gone
        /// before it starts (the kernel's parent-death signal only covers a
        /// host that dies later).
        #[arg(long)]
        parent_pid: Option<u32>,
    },
}

#[derive(Debug, Subcommand)]
pub enum SecretsAction {
    /// Set NAME from a no-echo prompt, or from standard input when it is not
    /// a terminal. The value is never taken from the command line.
    Set { name: String },
    /// List the names of stored secrets (never their values).
    List,
}

/// Parses arguments and runs the command.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    match dispatch(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Log level when `WATTEDGE_LOG` is unset: the compiler's chatter stays quiet.
const DEFAULT_LOG: &str = "info,cranelift=warn,wasmtime=warn";

/// `WATTEDGE_LOG` takes `level` or `target=level` directives, comma separated
/// (tracing-subscriber's `Targets`: no regex engine in the binary).
fn init_tracing() {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let wanted = std::env::var("WATTEDGE_LOG").unwrap_or_else(|_| DEFAULT_LOG.to_string());
    let filter: tracing_subscriber::filter::Targets = wanted.parse().unwrap_or_else(|e| {
        eprintln!("warning: WATTEDGE_LOG={wanted:?} is not a log filter ({e}); using {DEFAULT_LOG:?}");
        DEFAULT_LOG.parse().expect("the default log filter parses")
    });
    // Colours only on a terminal: a log file or the journal gets plain text.
    let format =
        tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_ansi(std::io::stderr().is_terminal());
    tracing_subscriber::registry().with(format).with(filter).init();
}

fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    match cli.command {
        Command::Run => {
            let ran = runtime.block_on(run(&cli.config));
            // A compile worker still running (tier-up at a first start) holds
            // a blocking thread that dropping the runtime would wait for:
            // SIGTERM must not wait for a compile. The worker process exits
            // with its process group (systemd stops the whole cgroup).
            runtime.shutdown_timeout(std::time::Duration::from_millis(500));
            ran
        }
        Command::Check => runtime.block_on(check(&cli.config)),
        Command::Secrets { action: SecretsAction::Set { name } } => secrets_set(&cli.config, &name),
        Command::Secrets { action: SecretsAction::List } => secrets_list(&cli.config),
        Command::Invoke { guest, args, no_wait } => {
            runtime.block_on(client::invoke(&cli.config, &guest, &args, no_wait))
        }
        Command::Status => runtime.block_on(client::status(&cli.config)),
        Command::Swap { guest, file } => runtime.block_on(client::swap(&cli.config, &guest, &file)),
        Command::Rollback { guest } => runtime.block_on(client::rollback(&cli.config, &guest)),
        #[cfg(not(target_arch = "arm"))]
        Command::Compile { target, out } => compile(&cli.config, target.as_deref(), &out),
        #[cfg(all(feature = "publish", not(target_arch = "arm")))]
        Command::Publish { wasm, reference, profiles, sign, insecure } => {
            let request = fleet_cli::PublishArgs { wasm, reference, profiles, sign, insecure };
            runtime.block_on(fleet_cli::publish(&cli.config, request))
        }
        #[cfg(feature = "publish")]
        Command::Keygen { path } => fleet_cli::keygen(&path),
        #[cfg(not(target_arch = "arm"))]
        Command::CompileWorker { out, builtin, memory_reservation, memory_guard, compile, background, parent_pid } => {
            let limits = EngineLimits::from_worker_args(memory_reservation, memory_guard);
            if background {
                crate::compile::worker::lower_priority();
            }
            compile_worker(&out, builtin.as_deref(), (limits, compile), parent_pid)
        }
    }
}

/// The hidden `compile-worker` command (see [`crate::compile::worker`]).
#[cfg(not(target_arch = "arm"))]
fn compile_worker(
    out: &Path,
    builtin: Option<&str>,
    settings: (EngineLimits, engine::CompileMode),
    parent_pid: Option<u32>,
) -> anyhow::Result<ExitCode> {
    match crate::compile::worker::serve(out, builtin, settings, parent_pid) {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(e) => {
            eprintln!("error: {e}");
            Ok(ExitCode::from(e.exit_code()))
        }
    }
}

/// Loads the config, or prints the one-line error and returns exit code 2.
fn load_config(path: &Path) -> Result<Config, ExitCode> {
    Config::load(path).map_err(|e| {
        eprintln!("error: {e}");
        ExitCode::from(EXIT_CONFIG)
    })
}

async fn run(path: &Path) -> anyhow::Result<ExitCode> {
    let config = match load_config(path) {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    tracing::info!("engine settings: {}", board_origin(&config));
    crate::run_with(config, host_options(), shutdown_signal()).await?;
    Ok(ExitCode::SUCCESS)
}

/// The binary compiles guests in a child process of itself (see
/// [`crate::compile::worker`]); where it cannot name itself, in-process.
/// It gives back the pages its start-up touched ([`crate::trim`]).
fn host_options() -> crate::HostOptions {
    let compile_in = match std::env::current_exe() {
        Ok(exe) if cfg!(not(target_arch = "arm")) => CompileIn::ChildProcess(exe),
        _ => CompileIn::ThisProcess,
    };
    // Not on 32-bit ARM: there the released pages crashed the host under
    // qemu-arm (.ci/board-smoke), whose /proc/self/smaps need not be the
    // guest's view, and no armv7 board has verified it natively yet.
    crate::HostOptions { compile_in, release_start_up_pages: cfg!(not(target_arch = "arm")) }
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

async fn check(path: &Path) -> anyhow::Result<ExitCode> {
    let config = match load_config(path) {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    let limits = config.host.engine_limits();
    let engine = engine::build(limits, engine::Purpose::Native).map_err(|e| anyhow::anyhow!("{e:#}"))?;
    let linker = Arc::new(crate::capabilities::linker(&engine).map_err(|e| anyhow::anyhow!("{e:#}"))?);
    for guest in &config.guests {
        if let crate::config::ComponentSource::Oci(reference) = &guest.component {
            // Resolving needs the registry and the host's state: `run` does it.
            println!("guests.{}: {reference} is resolved when the host starts", guest.name);
            continue;
        }
        let loaded =
            crate::compile::component::load_source(engine.clone(), linker.clone(), guest.component.clone(), None).await;
        if let Err(e) = loaded {
            let line = crate::config::locate_key(&config, &["guests", &guest.name, "component"]);
            eprintln!("error: {}{line}: guests.{}.component: {e}", config.path.display(), guest.name);
            return Ok(ExitCode::from(EXIT_CONFIG));
        }
    }
    let names: Vec<&str> = config.guests.iter().map(|g| g.name.as_str()).collect();
    println!("{}: ok ({} guests: {})", config.path.display(), names.len(), names.join(", "));
    println!("engine: {}", describe_engine(&config, limits));
    Ok(ExitCode::SUCCESS)
}

/// Where the engine settings come from: the board profile set or detected
/// (`board = "auto"` says what it read), or this machine's defaults.
fn board_origin(config: &Config) -> String {
    match (&config.host.board_detection, &config.host.board) {
        (Some(found), _) => found.to_string(),
        (None, Some(board)) => format!("board {}", board.name),
        (None, None) => "no board set: this machine's defaults".to_string(),
    }
}

/// The engine settings `check` reports, and where they come from.
fn describe_engine(config: &Config, limits: EngineLimits) -> String {
    let origin = board_origin(config);
    format!(
        "{} MiB reserved per guest memory, {} KiB guard ({origin})",
        limits.memory_reservation >> 20,
        limits.memory_guard >> 10
    )
}

fn open_secrets(config_path: &Path) -> anyhow::Result<(Config, SecretStore)> {
    let config = Config::load(config_path)?;
    let store = SecretStore::open(&config.host.secrets_file)?;
    Ok((config, store))
}

fn secrets_set(config_path: &Path, name: &str) -> anyhow::Result<ExitCode> {
    let (config, store) = open_secrets(config_path)?;
    let value = read_secret_value(name)?;
    if crate::secrets::is_placeholder(&value) {
        eprintln!("warning: the value for {name} looks like a placeholder; guests will treat it as unset");
    }
    store.set(name, &value, None, true)?;
    println!("{name} saved to {} (mode 0600)", config.host.secrets_file.display());
    Ok(ExitCode::SUCCESS)
}

fn read_secret_value(name: &str) -> anyhow::Result<String> {
    if std::io::stdin().is_terminal() {
        return rpassword::prompt_password(format!("value for {name} (input hidden): "))
            .context("reading the value from the terminal");
    }
    let mut value = String::new();
    std::io::stdin().read_to_string(&mut value).context("reading the value from standard input")?;
    Ok(value.trim_end_matches(['\n', '\r']).to_string())
}

fn secrets_list(config_path: &Path) -> anyhow::Result<ExitCode> {
    let (config, _store) = open_secrets(config_path)?;
    let text = std::fs::read_to_string(&config.host.secrets_file).unwrap_or_default();
    let table: toml::Table = toml::from_str(&text).unwrap_or_default();
    let mut names = Vec::new();
    collect_names("", &table, &mut names);
    for name in names {
        println!("{name}");
    }
    Ok(ExitCode::SUCCESS)
}

fn collect_names(prefix: &str, table: &toml::Table, out: &mut Vec<String>) {
    for (key, value) in table {
        let name = if prefix.is_empty() { key.clone() } else { format!("{prefix}.{key}") };
        match value {
            toml::Value::Table(t) if key != "_expires" => collect_names(&name, t, out),
            toml::Value::String(_) => out.push(name),
            _ => {}
        }
    }
}

#[cfg(not(target_arch = "arm"))]
fn compile(config_path: &Path, target: Option<&str>, out: &Path) -> anyhow::Result<ExitCode> {
    let config = match load_config(config_path) {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    let profile = match (target, &config.host.board) {
        (Some(name), _) => crate::compile::board::profile(name)?,
        (None, Some(board)) => board.clone(),
        (None, None) => anyhow::bail!(
            "name the board to compile for: --target PROFILE (profiles: {}), or set `board` in [host]",
            crate::compile::board::profile_names()
        ),
    };
    let guests: Vec<_> = config.guests.iter().map(|g| (g.name.clone(), g.component.clone())).collect();
    let started = std::time::Instant::now();
    let artifacts = crate::compile::precompile::compile(&profile, &guests, out, |step| match step {
        crate::compile::precompile::Progress::Start { index, total, guest } => {
            eprint!(
                "[{}/{total}] {guest}: compiling for {} ({})... ",
                index + 1,
                profile.name,
                profile.compiler_target()
            )
        }
        crate::compile::precompile::Progress::Done(a) => {
            eprintln!(
                "{} KiB -> {} KiB in {:.1} s: {}",
                a.input_bytes / 1024,
                a.output_bytes / 1024,
                a.seconds,
                a.path.display()
            )
        }
    })?;
    println!(
        "{} artifacts for {} in {:.1} s; in the board's config set each guest's `component` to its \
         .cwasm file, and `board = \"{}\"` in [host]",
        artifacts.len(),
        profile.name,
        started.elapsed().as_secs_f64(),
        profile.name
    );
    Ok(ExitCode::SUCCESS)
}
