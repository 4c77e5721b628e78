//! Assembling a running host from a [`Config`]: secrets, store, engine,
//! supervisor and admin server, and shutting them down again.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use tokio_util::sync::CancellationToken;

use crate::capabilities::{self, HostServices};
use crate::compile::artifact_cache::ArtifactCache;
use crate::compile::engine::{self, EpochTicker};
use crate::compile::worker::CompileIn;
use crate::config::{Config, InfluxConfig};
use crate::secrets::{ADMIN_TOKEN_SECRET, SecretStore, admin_token};
use crate::store::{EmbeddedBackend, TimeSeriesStore};
use crate::supervisor::clock::Clock;
use crate::supervisor::{Runtime, Supervisor};

/// Why the host could not start.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error(transparent)]
    Secrets(#[from] crate::secrets::SecretsError),
    #[error("{path}: cannot open the embedded store: {message}; is another wattedge running with the same state_dir?")]
    Store { path: String, message: String },
    #[error("{path}: cannot open the InfluxDB outbox: {message}")]
    Outbox { path: String, message: String },
    #[error("{path}: cannot open the state store: {message}")]
    State { path: String, message: String },
    #[error("cannot set up the WebAssembly engine: {0}")]
    Engine(String),
    #[error("cannot listen on host.admin_listen {addr}: {error}; pick a free port or stop the process using it")]
    Listen { addr: SocketAddr, error: std::io::Error },
    #[error(
        "host.admin_listen {0} is not a loopback address and no admin token is set; run `wattedge secrets set admin.token` or listen on 127.0.0.1"
    )]
    ExposedWithoutToken(SocketAddr),
    #[error("outbound HTTP setup: {0}")]
    Http(String),
    #[error("host.state_dir: {0}")]
    StateDir(#[from] crate::private_dir::UnsafePath),
}

/// The admin API's Unix socket in `state_dir`, which the CLI uses: only
/// the host's user (and root) can reach it, and the CLI checks who listens.
pub const ADMIN_SOCKET: &str = "admin.sock";

/// A started host.
pub struct RunningHost {
    admin_addr: SocketAddr,
    supervisor: Arc<Supervisor>,
    store: Arc<dyn TimeSeriesStore>,
    shutdown: CancellationToken,
    admin_task: tokio::task::JoinHandle<std::io::Result<()>>,
    /// [`after_start_up`], which holds the supervisor (and through it the
    /// state file) until it sees the shutdown: awaited by [`Self::shutdown`],
    /// so a host started again on the same `state_dir` finds it closed.
    start_up_task: tokio::task::JoinHandle<()>,
}

impl RunningHost {
    /// The address the admin server is bound to.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// The time-series store guests write to.
    pub fn store(&self) -> &Arc<dyn TimeSeriesStore> {
        &self.store
    }

    /// The supervisor, for tests and embedders.
    pub fn supervisor(&self) -> &Arc<Supervisor> {
        &self.supervisor
    }

    /// Stops accepting triggers, lets guest tasks finish their current call
    /// (bounded by the runtime's deadlines), closes the admin server and
    /// stops the store's forwarder; once this returns, a new host can open
    /// the same state dir.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        let _ = tokio::time::timeout(std::time::Duration::from_millis(1500), self.supervisor.join()).await;
        let _ = self.admin_task.await;
        let _ = self.start_up_task.await;
        self.store.close().await;
    }
}

/// How a host runs, beyond its config: choices of the embedding program.
#[derive(Debug, Clone, Default)]
pub struct HostOptions {
    /// Where `.wasm` guests are compiled on a cache miss; the binary compiles
    /// in a child process of itself so the host never holds the compiler.
    pub compile_in: CompileIn,
    /// Once every guest has started, give back the pages of the binary
    /// that start-up touched ([`crate::trim`]): for the `wattedge` process
    /// itself; a program embedding the host decides about its own pages.
    pub release_start_up_pages: bool,
}

/// How often [`after_start_up`] looks whether every guest loaded or started.
const START_UP_POLL: std::time::Duration = std::time::Duration::from_millis(50);

/// Longest [`after_start_up`] waits for the guests to load and start.
const START_UP_LIMIT: std::time::Duration = std::time::Duration::from_secs(30);

/// Whether every guest has loaded: initialised, or failed (what `/ready`
/// waits for, failures aside).
fn guests_loaded(supervisor: &Supervisor) -> bool {
    supervisor.guests().iter().all(|guest| {
        let snapshot = guest.snapshot();
        snapshot.initialized || snapshot.state == crate::api::GuestState::Failed
    })
}

/// Whether every guest has started: initialised and run once, or failed.
fn guests_started(supervisor: &Supervisor) -> bool {
    supervisor.guests().iter().all(|guest| {
        let snapshot = guest.snapshot();
        snapshot.runs >= 1 || snapshot.state == crate::api::GuestState::Failed
    })
}

/// Waits until `done(supervisor)` (at most [`START_UP_LIMIT`] from `began`);
/// false when `stop` came first.
async fn wait_for(
    supervisor: &Supervisor,
    done: fn(&Supervisor) -> bool,
    began: std::time::Instant,
    stop: &CancellationToken,
) -> bool {
    while !done(supervisor) && began.elapsed() < START_UP_LIMIT {
        tokio::select! {
            _ = tokio::time::sleep(START_UP_POLL) => {}
            _ = stop.cancelled() => return false,
        }
    }
    true
}

/// Ends start-up once every guest has loaded ([`crate::trim::end_start_up`]:
/// what waited for it is released, and the heap start-up freed given
/// back); then, with `release_pages`, waits until every guest has started
/// and releases the pages start-up touched: the code that ran once is then
/// counted in no one's memory until it runs again.
async fn after_start_up(supervisor: Arc<Supervisor>, stop: CancellationToken, release_pages: bool) {
    let began = std::time::Instant::now();
    if !wait_for(&supervisor, guests_loaded, began, &stop).await {
        return;
    }
    crate::trim::end_start_up();
    let _ = crate::blocking::spawn_blocking(crate::compile::artifact_cache::release_freed_memory).await;
    if !release_pages || !wait_for(&supervisor, guests_started, began, &stop).await {
        return;
    }
    match crate::blocking::spawn_blocking(crate::trim::release_start_up_pages).await {
        Ok(Ok(released)) => tracing::debug!(
            mappings = released.mappings,
            kib = released.resident_kib,
            "released the pages start-up touched"
        ),
        Ok(Err(error)) => tracing::debug!(%error, "cannot release the pages start-up touched"),
        Err(error) => tracing::debug!(%error, "releasing the pages start-up touched did not finish"),
    }
}

/// Starts everything `config` describes, compiling in-process. Must be
/// called inside a tokio runtime.
pub async fn start(config: Config) -> Result<RunningHost, HostError> {
    start_with(config, HostOptions::default()).await
}

/// [`start`] with `options`.
pub async fn start_with(config: Config, options: HostOptions) -> Result<RunningHost, HostError> {
    crate::private_dir::ensure_dir(&config.host.state_dir)?;
    // The state file opens on a blocking thread meanwhile: its fsyncs
    // overlap the secrets', the store's and building the engine. It is
    // awaited before any error is returned, so a failed start leaves no
    // thread holding its lock.
    let state_path = config.host.state_dir.join("state.redb");
    let path = state_path.display().to_string();
    let state = crate::blocking::start(move || open_state(&state_path));
    // So is the engine and its linker (CPU, where the stores wait on the
    // disk), and the guests' loads (see `supervisor::preload`), which hash
    // their files meanwhile and wait for the engine. A start that fails
    // below does not wait for the loads: they lock nothing, and write only
    // the artifact cache, which every start shares and whose files are
    // replaced atomically.
    let limits = engine_limits(&config);
    let cache = ArtifactCache::new(config.host.state_dir.join("cache"), limits).compiling_in(options.compile_in);
    let built: Arc<OnceLock<Result<Machine, String>>> = Arc::default();
    let machine = move || built.get_or_init(|| build_engine(limits)).clone();
    let machine_job = crate::blocking::start(machine.clone());
    let preloads = crate::supervisor::preload(move || machine().ok(), Some(&cache), &config.guests);
    let before_state = start_before_state(&config).await;
    let machine = machine_job.await.map_err(|e| e.to_string()).and_then(|built| built).map_err(HostError::Engine);
    let state = state.await.unwrap_or_else(|e| Err(HostError::State { path, message: e.to_string() }));
    let Started { secrets, listener, admin_addr, http, store } = before_state?;
    let (engine, linker) = machine?;
    let admin_secrets = secrets.clone();
    let services = HostServices {
        store,
        secrets,
        state: state?,
        http: Arc::new(http),
        host_tags: config.host.identity.tags.clone().into(),
    };
    let store = services.store.clone();
    let runtime = Arc::new(Runtime {
        ticker: EpochTicker::start(engine.clone()),
        engine,
        linker,
        services,
        cache: Some(cache),
        clock: Clock::Wall,
        fleet: Arc::new(crate::fleet::Fleet::new(&config, Some(admin_secrets.clone()))),
    });
    // After the stores: their locks make sure no other host uses this
    // state_dir, whose socket this one replaces.
    let unix = bind_admin_socket(&config.host.state_dir);
    let shutdown = CancellationToken::new();
    let supervisor = Arc::new(Supervisor::start(runtime, &config.guests, preloads, shutdown.child_token()));
    let start_up_task =
        tokio::spawn(after_start_up(supervisor.clone(), shutdown.child_token(), options.release_start_up_pages));
    if let Some(every) = config.host.identity.health_interval {
        supervisor.report_health(every, shutdown.child_token());
    }
    let stop = shutdown.clone();
    let backend: Arc<dyn crate::admin::AdminBackend> = supervisor.clone();
    let token = Some(crate::admin::AdminToken::Secret(admin_secrets));
    let listeners = crate::admin::Listeners { tcp: listener, unix };
    let admin_task =
        tokio::spawn(crate::admin::serve_all(listeners, backend, token, async move { stop.cancelled().await }));
    tracing::info!(admin = %admin_addr, guests = config.guests.len(), "wattedge started");
    Ok(RunningHost { admin_addr, supervisor, store, shutdown, admin_task, start_up_task })
}

/// What [`start_before_state`] sets up.
struct Started {
    secrets: Arc<SecretStore>,
    listener: tokio::net::TcpListener,
    admin_addr: SocketAddr,
    http: capabilities::http::HttpSettings,
    store: Arc<dyn TimeSeriesStore>,
}

/// The engine's limits: room for the largest guest memory configured.
fn engine_limits(config: &Config) -> engine::EngineLimits {
    let largest_memory = config.guests.iter().map(|g| g.memory_limit).max().unwrap_or(0);
    config.host.engine_limits().growing_to(largest_memory)
}

/// The engine every guest shares and the linker of the host's capabilities.
type Machine = (wasmtime::Engine, Arc<wasmtime::component::Linker<capabilities::GuestCtx>>);

/// Builds the [`Machine`]; the error says why not.
fn build_engine(limits: engine::EngineLimits) -> Result<Machine, String> {
    let engine = engine::build(limits, engine::Purpose::Runtime).map_err(|e| format!("{e:#}"))?;
    let linker = capabilities::linker(&engine).map_err(|e| format!("{e:#}"))?;
    Ok((engine, Arc::new(linker)))
}

/// Everything of a start but the state file and the engine: secrets and
/// the admin token, the admin listener, outbound HTTP settings and the store.
async fn start_before_state(config: &Config) -> Result<Started, HostError> {
    let secrets = Arc::new(SecretStore::open(&config.host.secrets_file)?);
    let listen = config.host.admin_listen;
    ensure_admin_token(&secrets, listen)?;
    let listener =
        tokio::net::TcpListener::bind(listen).await.map_err(|error| HostError::Listen { addr: listen, error })?;
    let admin_addr = listener.local_addr().map_err(|error| HostError::Listen { addr: listen, error })?;
    let http = capabilities::http::HttpSettings::new(&config.host.http).map_err(HostError::Http)?;
    // Whatever its grants, no guest reaches the admin API.
    let http = http.guarding_admin(admin_addr);
    let store = open_store(config, &secrets)?;
    Ok(Started { secrets, listener, admin_addr, http, store })
}

/// Runs the host until `shutdown` resolves.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), HostError> {
    run_with(config, HostOptions::default(), shutdown).await
}

/// [`run`] with `options`.
pub async fn run_with(
    config: Config,
    options: HostOptions,
    shutdown: impl Future<Output = ()>,
) -> Result<(), HostError> {
    let host = start_with(config, options).await?;
    shutdown.await;
    tracing::info!("shutting down");
    host.shutdown().await;
    Ok(())
}

/// Binds `state_dir/admin.sock` (mode 0600), replacing a socket a previous
/// run left. Without it the host still runs (the CLI then says why it
/// cannot reach it), so a failure is a warning.
fn bind_admin_socket(state_dir: &std::path::Path) -> Option<tokio::net::UnixListener> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let path = state_dir.join(ADMIN_SOCKET);
    if std::fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_socket()) {
        let _ = std::fs::remove_file(&path);
    }
    let bound = tokio::net::UnixListener::bind(&path)
        .and_then(|l| std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).map(|()| l));
    match bound {
        Ok(listener) => Some(listener),
        Err(error) => {
            tracing::warn!(path = %path.display(), %error, "cannot serve the admin API on a Unix socket; the CLI cannot reach this host");
            None
        }
    }
}

fn open_store(config: &Config, secrets: &Arc<SecretStore>) -> Result<Arc<dyn TimeSeriesStore>, HostError> {
    match &config.influx {
        InfluxConfig::V1 { .. } => {
            let dir = config.host.state_dir.join("outbox");
            let settings = crate::store::influx_v1::V1Settings::from_config(&config.influx).expect("a v1 config");
            let store = crate::store::influx_v1::InfluxV1Backend::open(settings, &dir, secrets.clone())
                .map_err(|e| HostError::Outbox { path: dir.display().to_string(), message: e.to_string() })?;
            Ok(Arc::new(store))
        }
        #[cfg(feature = "influx-v2")]
        InfluxConfig::V2 { .. } => {
            let dir = config.host.state_dir.join("outbox");
            let settings = crate::store::influx_v2::V2Settings::from_config(&config.influx).expect("a v2 config");
            let store = crate::store::influx_v2::InfluxV2Backend::open(settings, &dir, secrets.clone())
                .map_err(|e| HostError::Outbox { path: dir.display().to_string(), message: e.to_string() })?;
            Ok(Arc::new(store))
        }
        InfluxConfig::Embedded { retention } => {
            let path = config.host.state_dir.join("embedded.redb");
            let store = EmbeddedBackend::open(&path, *retention)
                .map_err(|e| HostError::Store { path: path.display().to_string(), message: e.to_string() })?;
            Ok(Arc::new(store))
        }
    }
}

fn open_state(path: &std::path::Path) -> Result<Arc<capabilities::state::StateStore>, HostError> {
    capabilities::state::StateStore::open(path)
        .map(Arc::new)
        .map_err(|message| HostError::State { path: path.display().to_string(), message })
}

/// Makes sure the admin API has a bearer token for mutating endpoints: the
/// `admin.token` secret, or on a loopback address a generated one saved as
/// that secret (so `wattedge invoke` and `swap`, which read the secrets
/// file, just work); a host reachable from the network refuses to start
/// until the user sets one. The API reads the secret at each request, so
/// setting a new one takes effect at once.
fn ensure_admin_token(secrets: &SecretStore, listen: SocketAddr) -> Result<(), HostError> {
    if admin_token(secrets).is_some() {
        return Ok(());
    }
    if !listen.ip().is_loopback() {
        return Err(HostError::ExposedWithoutToken(listen));
    }
    let token =
        random_token().map_err(|e| HostError::Engine(format!("cannot read /dev/urandom for the admin token: {e}")))?;
    secrets.set(ADMIN_TOKEN_SECRET, &token, None, true)?;
    tracing::info!(file = %secrets.path().display(), "generated an admin token (secret admin.token) for the admin API");
    Ok(())
}

fn random_token() -> std::io::Result<String> {
    use std::io::Read;
    let mut bytes = [0u8; 24];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(hex::encode(bytes))
}
