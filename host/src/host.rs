//! Assembling a running host from a [`Config`]: secrets, store, engine,
//! supervisor and admin server, and shutting them down again.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::capabilities::{self, HostServices};
use crate::config::{Config, InfluxConfig};
use crate::engine::{self, EngineLimits, EpochTicker};
use crate::secrets::SecretStore;
use crate::store::{EmbeddedBackend, TimeSeriesStore};
use crate::supervisor::{Runtime, Supervisor};

/// Secret that holds the admin API's bearer token.
pub const ADMIN_TOKEN_SECRET: &str = "admin.token";

/// Why the host could not start.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error(transparent)]
    Secrets(#[from] crate::secrets::SecretsError),
    #[error("{path}: cannot open the embedded store: {message}; is another wattedge running with the same state_dir?")]
    Store { path: String, message: String },
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
}

/// A started host.
pub struct RunningHost {
    admin_addr: SocketAddr,
    supervisor: Arc<Supervisor>,
    store: Arc<dyn TimeSeriesStore>,
    shutdown: CancellationToken,
    admin_task: tokio::task::JoinHandle<std::io::Result<()>>,
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
    /// (bounded by the runtime's deadlines) and closes the admin server.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        let _ = tokio::time::timeout(std::time::Duration::from_millis(1500), self.supervisor.join()).await;
        let _ = self.admin_task.await;
    }
}

/// Starts everything `config` describes. Must be called inside a tokio runtime.
pub async fn start(config: Config) -> Result<RunningHost, HostError> {
    let secrets = Arc::new(SecretStore::open(&config.host.secrets_file)?);
    let admin_token = secrets.value(ADMIN_TOKEN_SECRET).filter(|t| !crate::secrets::is_placeholder(t));
    let listen = config.host.admin_listen;
    if !listen.ip().is_loopback() && admin_token.is_none() {
        return Err(HostError::ExposedWithoutToken(listen));
    }
    let services = HostServices { store: open_store(&config)?, secrets, state: open_state(&config)? };
    let store = services.store.clone();
    let largest = config.guests.iter().map(|g| g.memory_limit).max().unwrap_or(crate::config::DEFAULT_MEMORY_LIMIT);
    let engine = engine::build(EngineLimits::for_guests(largest)).map_err(|e| HostError::Engine(format!("{e:#}")))?;
    let linker = capabilities::linker(&engine).map_err(|e| HostError::Engine(format!("{e:#}")))?;
    let runtime =
        Arc::new(Runtime { ticker: EpochTicker::start(engine.clone()), engine, linker: Arc::new(linker), services });
    let listener =
        tokio::net::TcpListener::bind(listen).await.map_err(|error| HostError::Listen { addr: listen, error })?;
    let admin_addr = listener.local_addr().map_err(|error| HostError::Listen { addr: listen, error })?;
    let shutdown = CancellationToken::new();
    let supervisor = Arc::new(Supervisor::start(runtime, &config.guests, shutdown.child_token()));
    let stop = shutdown.clone();
    let backend: Arc<dyn crate::admin::AdminBackend> = supervisor.clone();
    let admin_task =
        tokio::spawn(crate::admin::serve(listener, backend, admin_token, async move { stop.cancelled().await }));
    tracing::info!(admin = %admin_addr, guests = config.guests.len(), "wattedge started");
    Ok(RunningHost { admin_addr, supervisor, store, shutdown, admin_task })
}

/// Runs the host until `shutdown` resolves.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), HostError> {
    let host = start(config).await?;
    shutdown.await;
    tracing::info!("shutting down");
    host.shutdown().await;
    Ok(())
}

fn open_store(config: &Config) -> Result<Arc<dyn TimeSeriesStore>, HostError> {
    match &config.influx {
        InfluxConfig::Embedded { retention } => {
            let path = config.host.state_dir.join("embedded.redb");
            let store = EmbeddedBackend::open(&path, *retention)
                .map_err(|e| HostError::Store { path: path.display().to_string(), message: e.to_string() })?;
            Ok(Arc::new(store))
        }
    }
}

fn open_state(config: &Config) -> Result<Arc<capabilities::state::StateStore>, HostError> {
    let path = config.host.state_dir.join("state.redb");
    capabilities::state::StateStore::open(&path)
        .map(Arc::new)
        .map_err(|message| HostError::State { path: path.display().to_string(), message })
}
