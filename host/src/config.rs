//! The user's contract: `wattedge.toml`.
//!
//! This module owns parsing and validating the config file. Every section
//! denies unknown keys, and every error names the file, the key (with its
//! line where it can be found) and what to do, because on a headless Pi the
//! error message is all the help a user gets.

mod capture;
mod component;
mod fleet;
pub mod grants;
mod http_host;
mod identity;
mod influx;
mod locate;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::compile::board::Profile;
pub use crate::compile::component::ComponentSource;
use crate::compile::engine::EngineLimits;
pub use crate::units::{Schedule, parse_duration, parse_size};
pub use capture::{CaptureRule, MAX_CAPTURED_LEN, host_internal};
pub use fleet::{FleetConfig, RegistryCredentials, RolloutConfig};
use grants::HostGrant;
pub use http_host::{DEFAULT_HTTP_MAX_BODY, DEFAULT_HTTP_TIMEOUT, HttpHostConfig, load_pem};
pub use identity::{DEFAULT_HEALTH_INTERVAL, GUEST_TAG, HEALTH_KEYS, HostIdentity};
pub use influx::OutboxConfig;

/// The default admin address: loopback only, so nothing is exposed by accident.
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9100";
/// The default per-guest linear-memory limit (without a `board`).
pub const DEFAULT_MEMORY_LIMIT: u64 = 16 << 20;
/// The default wall-clock limit of one run (without a `board`).
pub const DEFAULT_RUN_TIMEOUT: Duration = Duration::from_secs(60);
/// Points older than this are purged from the embedded store by default.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(90 * 24 * 3600);
/// Prefix of a component that ships inside the binary.
pub const BUILTIN_PREFIX: &str = "builtin:";

/// A config error: one line naming the file, the key and the fix.
#[derive(Debug, thiserror::Error)]
#[error("{file}{line}: {message}", line = line.map(|l| format!(":{l}")).unwrap_or_default())]
pub struct ConfigError {
    pub file: PathBuf,
    pub line: Option<usize>,
    pub message: String,
}

/// The whole validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it came from (for messages and relative paths).
    pub path: PathBuf,
    pub host: HostConfig,
    pub influx: InfluxConfig,
    /// Guests in file order.
    pub guests: Vec<GuestConfig>,
    /// `[fleet]`: registries and trusted signing keys.
    pub fleet: FleetConfig,
}

/// `[host]`: where the host keeps its state and serves its admin API.
#[derive(Debug, Clone)]
pub struct HostConfig {
    pub admin_listen: SocketAddr,
    pub state_dir: PathBuf,
    pub secrets_file: PathBuf,
    /// Outbound HTTP settings shared by every guest.
    pub http: HttpHostConfig,
    /// The board profile (`board = "pi4"`): the engine settings the
    /// board's precompiled artifacts were built with, and guest limits.
    pub board: Option<Profile>,
    /// What `board = "auto"` found (for the log and `check`).
    pub board_detection: Option<crate::compile::board::Detection>,
    /// `tags` and `health_interval`: what tells this board apart in a
    /// shared InfluxDB.
    pub identity: HostIdentity,
}

impl HostConfig {
    /// The engine's memory settings: the board profile's, or this machine's defaults.
    pub fn engine_limits(&self) -> EngineLimits {
        self.board.as_ref().map_or_else(EngineLimits::native, |board| board.limits)
    }
}

/// `[influx]`: the time-series backend guests write to.
#[derive(Debug, Clone)]
pub enum InfluxConfig {
    /// The crash-safe file store under `state_dir` (the default).
    Embedded { retention: Option<Duration> },
    /// The InfluxDB 1.x HTTP API behind the outbox; `password` and `token`
    /// are secret names (from `${secret:NAME}`), never values.
    V1 {
        url: String,
        database: String,
        username: Option<String>,
        password: Option<String>,
        token: Option<String>,
        outbox: OutboxConfig,
    },
    /// The InfluxDB 2.x API (`/api/v2/write`, Flux on `/api/v2/query`)
    /// behind the same outbox; `token` is a secret name, never a value.
    #[cfg(feature = "influx-v2")]
    V2 { url: String, org: String, bucket: String, token: String, outbox: OutboxConfig },
}

/// `[guests.NAME]`: one sandboxed job.
#[derive(Debug, Clone)]
pub struct GuestConfig {
    pub name: String,
    pub component: ComponentSource,
    pub schedule: Schedule,
    pub memory_limit: u64,
    pub run_timeout: Duration,
    pub enabled: bool,
    /// Passed to the guest's `init`, as strings.
    pub config: Vec<(String, String)>,
    pub grants: Grants,
    pub restart: RestartPolicy,
    /// How the host compiles the guest from `.wasm` (`compile`).
    pub compile: crate::compile::engine::CompileMode,
}

/// What happens after failed runs: scheduled runs back off exponentially,
/// and the guest shows `degraded` after `degraded_after` failures in a row.
#[derive(Debug, Clone, PartialEq)]
pub struct RestartPolicy {
    /// Delay after the first failure; doubles with each further one.
    pub backoff: Duration,
    /// The longest delay.
    pub max_backoff: Duration,
    pub degraded_after: u64,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        RestartPolicy { backoff: Duration::from_secs(1), max_backoff: Duration::from_secs(300), degraded_after: 1 }
    }
}

/// What a guest may reach, parsed once at load: everything not named here
/// is denied. The capabilities enforce these; they never parse grants.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Grants {
    /// Hosts (`host`, `host:port`, `https://host`) the guest may call.
    pub http: Vec<HostGrant>,
    /// Secret name → hosts the secret may be sent to.
    pub secrets: BTreeMap<String, Vec<HostGrant>>,
    /// Measurements the guest may write.
    pub influx_write: Vec<String>,
    /// Measurements the guest may query.
    pub influx_read: Vec<String>,
    /// Secret name → the rule by which the host captures it from answers.
    pub capture: BTreeMap<String, CaptureRule>,
}

/// `[guests.NAME.grants]` as written; [`Checker::grants`] parses it into [`Grants`].
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGrants {
    /// Hosts (`host`, `host:port`, `https://host`) the guest may call.
    #[serde(default)]
    http: Vec<String>,
    /// Secret name → hosts the secret may be sent to.
    #[serde(default)]
    secrets: BTreeMap<String, Vec<String>>,
    /// Measurements the guest may write.
    #[serde(default)]
    influx_write: Vec<String>,
    /// Measurements the guest may query.
    #[serde(default)]
    influx_read: Vec<String>,
    /// Secret name → the rule by which the host captures it from answers.
    #[serde(default)]
    capture: BTreeMap<String, CaptureRule>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    host: RawHost,
    influx: Option<RawInflux>,
    #[serde(default)]
    guests: BTreeMap<String, RawGuest>,
    fleet: Option<toml::Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHost {
    board: Option<String>,
    admin_listen: Option<String>,
    state_dir: Option<PathBuf>,
    secrets_file: Option<PathBuf>,
    extra_ca: Option<PathBuf>,
    http_timeout: Option<String>,
    http_max_body: Option<String>,
    #[serde(default)]
    resolve: BTreeMap<String, String>,
    #[serde(default)]
    tags: BTreeMap<String, String>,
    health_interval: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInflux {
    backend: String,
    retention: Option<String>,
    url: Option<String>,
    database: Option<String>,
    org: Option<String>,
    bucket: Option<String>,
    username: Option<String>,
    password: Option<String>,
    token: Option<String>,
    outbox_max_bytes: Option<String>,
    batch_points: Option<i64>,
    flush_interval: Option<String>,
    retry_max_delay: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGuest {
    component: Option<String>,
    schedule: Option<String>,
    memory_limit: Option<String>,
    run_timeout: Option<String>,
    enabled: Option<bool>,
    restart_backoff: Option<String>,
    max_backoff: Option<String>,
    degraded_after: Option<u64>,
    compile: Option<String>,
    #[serde(default)]
    config: BTreeMap<String, toml::Value>,
    #[serde(default)]
    grants: RawGrants,
}

impl Config {
    /// Reads and validates `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let source = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.to_path_buf(),
            line: None,
            message: format!("cannot read the config file: {e}; pass an existing file with --config"),
        })?;
        Self::parse(path, &source)
    }

    /// Validates `source` as if it had been read from `path`.
    pub fn parse(path: &Path, source: &str) -> Result<Config, ConfigError> {
        let checker = Checker { path, source };
        let raw: RawConfig = toml::from_str(source).map_err(|e| checker.toml_error(&e))?;
        checker.build(raw)
    }

    /// The guest named `name`, if configured.
    pub fn guest(&self, name: &str) -> Option<&GuestConfig> {
        self.guests.iter().find(|g| g.name == name)
    }
}

/// Turns a raw, syntactically valid config into a checked [`Config`].
struct Checker<'a> {
    path: &'a Path,
    source: &'a str,
}

impl Checker<'_> {
    fn error(&self, key_path: &[&str], message: String) -> ConfigError {
        ConfigError { file: self.path.to_path_buf(), line: locate::line_of(self.source, key_path), message }
    }

    fn toml_error(&self, e: &toml::de::Error) -> ConfigError {
        let line = e.span().map(|s| locate::line_at(self.source, s.start));
        let mut message = e.message().trim().replace('\n', "; ");
        if message.contains("unknown field") {
            message.push_str("; remove or rename the key (see README, Configuration)");
        }
        ConfigError { file: self.path.to_path_buf(), line, message }
    }

    fn base_dir(&self) -> PathBuf {
        match self.path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        }
    }

    fn resolve(&self, p: &Path) -> PathBuf {
        if p.is_absolute() { p.to_path_buf() } else { self.base_dir().join(p) }
    }

    fn build(&self, raw: RawConfig) -> Result<Config, ConfigError> {
        let host = self.host(raw.host)?;
        let influx = self.influx(raw.influx)?;
        let fleet = self.fleet(raw.fleet)?;
        let mut guests = Vec::new();
        for (name, guest) in raw.guests {
            guests.push(self.guest(&name, guest, host.board.as_ref(), &influx)?);
        }
        // Keep the order in which guests appear in the file.
        guests.sort_by_key(|g| locate::line_of(self.source, &["guests", &g.name, ""]).unwrap_or(0));
        Ok(Config { path: self.path.to_path_buf(), host, influx, guests, fleet })
    }

    fn host(&self, raw: RawHost) -> Result<HostConfig, ConfigError> {
        let http = self.http_host(&raw)?;
        let listen = raw.admin_listen.as_deref().unwrap_or(DEFAULT_ADMIN_LISTEN);
        let admin_listen = listen.parse().map_err(|_| {
            self.error(
                &["host", "admin_listen"],
                format!("host.admin_listen = {listen:?} is not an address; use IP:PORT such as \"127.0.0.1:9100\""),
            )
        })?;
        let state_dir = self.resolve(raw.state_dir.as_deref().unwrap_or(Path::new("/var/lib/wattedge")));
        let secrets_file = match raw.secrets_file {
            Some(p) => self.resolve(&p),
            None => state_dir.join("secrets.toml"),
        };
        let (board, board_detection) = match raw.board.as_deref() {
            None => (None, None),
            Some(setting) => crate::compile::board::resolve(setting).map_err(|e| {
                self.error(&["host", "board"], format!("host.board: {e}, or \"auto\" to detect the board at start"))
            })?,
        };
        let identity = self.identity(&raw.tags, raw.health_interval.as_deref())?;
        Ok(HostConfig { admin_listen, state_dir, secrets_file, http, board, board_detection, identity })
    }

    fn influx(&self, raw: Option<RawInflux>) -> Result<InfluxConfig, ConfigError> {
        let Some(raw) = raw else {
            return Ok(InfluxConfig::Embedded { retention: Some(DEFAULT_RETENTION) });
        };
        match raw.backend.as_str() {
            "v1" => self.influx_v1(raw),
            "embedded" => {
                if let Some(key) = raw.remote_key() {
                    return Err(self.error(
                        &["influx", key],
                        format!("influx.{key} applies to the remote backends only; remove it or set backend = \"v1\" or \"v2\""),
                    ));
                }
                let retention = match raw.retention.as_deref() {
                    None => Some(DEFAULT_RETENTION),
                    Some("forever") => None,
                    Some(text) => Some(parse_duration(text).map_err(|e| {
                        self.error(&["influx", "retention"], format!("influx.retention: {e}; use e.g. \"90d\" or \"forever\""))
                    })?),
                };
                Ok(InfluxConfig::Embedded { retention })
            }
            #[cfg(feature = "influx-v2")]
            "v2" => self.influx_v2(raw),
            #[cfg(not(feature = "influx-v2"))]
            "v2" => Err(self.error(
                &["influx", "backend"],
                "influx.backend = \"v2\" is not available: this wattedge was built without the `influx-v2` cargo feature; rebuild with it, or use backend = \"v1\" (InfluxDB 2.x and 3.x serve the v1 API too)".into(),
            )),
            other => Err(self.error(
                &["influx", "backend"],
                format!("influx.backend = {other:?} is unknown; use \"embedded\", \"v1\" or \"v2\""),
            )),
        }
    }

    fn guest(
        &self,
        name: &str,
        raw: RawGuest,
        board: Option<&Profile>,
        influx: &InfluxConfig,
    ) -> Result<GuestConfig, ConfigError> {
        let at = |key: &'static str| [String::from("guests"), name.to_string(), key.to_string()];
        let err = |key: &'static str, msg: String| {
            let path = at(key);
            let refs: Vec<&str> = path.iter().map(String::as_str).collect();
            self.error(&refs, msg)
        };
        if !valid_guest_name(name) {
            return Err(err(
                "",
                format!("guest name {name:?} must be 1-32 of a-z, 0-9, '-' or '_'; rename [guests.{name}]"),
            ));
        }
        let component = raw.component.ok_or_else(|| self.missing_component(name))?;
        let component = self.component(name, &component)?;
        let schedule_text = raw.schedule.unwrap_or_else(|| "every 15m".to_string());
        let schedule = Schedule::parse(&schedule_text).map_err(|e| {
            err("schedule", format!("guests.{name}.schedule = {schedule_text:?}: {e}; use \"every 15m\" or a 5-field cron expression like \"*/15 * * * *\""))
        })?;
        let memory_limit = match raw.memory_limit.as_deref() {
            None => board.map_or(DEFAULT_MEMORY_LIMIT, |b| b.default_memory_limit),
            Some(t) => parse_size(t).map_err(|e| {
                err("memory_limit", format!("guests.{name}.memory_limit = {t:?}: {e}; use e.g. \"16MiB\""))
            })?,
        };
        let run_timeout = match raw.run_timeout.as_deref() {
            None => board.map_or(DEFAULT_RUN_TIMEOUT, |b| b.default_run_timeout),
            Some(t) => parse_duration(t)
                .map_err(|e| err("run_timeout", format!("guests.{name}.run_timeout = {t:?}: {e}; use e.g. \"60s\"")))?,
        };
        let config = raw
            .config
            .into_iter()
            .map(|(k, v)| {
                Ok((k.clone(), config_value(v).map_err(|m| err("config", format!("guests.{name}.config.{k}: {m}")))?))
            })
            .collect::<Result<Vec<_>, ConfigError>>()?;
        let mut restart = RestartPolicy::default();
        if let Some(t) = raw.restart_backoff.as_deref() {
            restart.backoff = parse_duration(t).map_err(|e| {
                err("restart_backoff", format!("guests.{name}.restart_backoff = {t:?}: {e}; use e.g. \"1s\""))
            })?;
        }
        if let Some(t) = raw.max_backoff.as_deref() {
            restart.max_backoff = parse_duration(t)
                .map_err(|e| err("max_backoff", format!("guests.{name}.max_backoff = {t:?}: {e}; use e.g. \"5m\"")))?;
        }
        restart.degraded_after = raw.degraded_after.unwrap_or(restart.degraded_after).max(1);
        let compile = match raw.compile.as_deref() {
            None => crate::compile::engine::CompileMode::default(),
            Some(m) => m.parse().map_err(|e| err("compile", format!("guests.{name}.compile: {e}")))?,
        };
        let grants = self.grants(name, raw.grants)?;
        self.check_secret_grants(name, &grants, influx)?;
        self.check_builtin_capture(name, &component, &grants)?;
        Ok(GuestConfig {
            name: name.to_string(),
            component,
            schedule,
            memory_limit,
            run_timeout,
            enabled: raw.enabled.unwrap_or(true),
            config,
            grants,
            restart,
            compile,
        })
    }

    /// Parses and checks `[guests.NAME.grants]`: the only place the grant
    /// grammar is applied (`wattedge check` and the running host alike).
    fn grants(&self, name: &str, raw: RawGrants) -> Result<Grants, ConfigError> {
        // The line of the grant's own key, else of the grants table.
        let err = |key: &str, message: String| {
            let line = locate::line_of(self.source, &["guests", name, "grants", key])
                .or_else(|| locate::line_of(self.source, &["guests", name, "grants"]));
            ConfigError { file: self.path.to_path_buf(), line, message }
        };
        let parse = |key: &str, entries: &[String]| -> Result<Vec<HostGrant>, ConfigError> {
            let parsed = entries.iter().map(|entry| HostGrant::parse(entry));
            parsed.collect::<Result<_, _>>().map_err(|e| err(key, format!("guests.{name}.grants.{key}: {e}")))
        };
        let http = parse("http", &raw.http)?;
        let secrets = raw.secrets.iter().map(|(secret, hosts)| Ok((secret.clone(), parse("secrets", hosts)?)));
        let secrets: BTreeMap<String, Vec<HostGrant>> = secrets.collect::<Result<_, ConfigError>>()?;
        if let Some(secret) = secrets.iter().find(|(s, hosts)| s.is_empty() || hosts.is_empty()).map(|(s, _)| s) {
            let message = format!(
                "guests.{name}.grants.secrets.{secret:?} must name at least one host the secret may be sent to"
            );
            return Err(err("secrets", message));
        }
        let measurements = raw.influx_write.iter().map(|m| ("influx_write", m));
        let invalid = measurements
            .chain(raw.influx_read.iter().map(|m| ("influx_read", m)))
            .find(|(_, measurement)| measurement.is_empty() || measurement.contains('\n'));
        if let Some((key, measurement)) = invalid {
            let message = format!("guests.{name}.grants.{key}: measurement {measurement:?} is not a valid name");
            return Err(err(key, message));
        }
        let RawGrants { influx_write, influx_read, capture, .. } = raw;
        Ok(Grants { http, secrets, influx_write, influx_read, capture })
    }
}

fn valid_guest_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 32
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// Guests receive their config as strings; lists become comma-separated.
fn config_value(value: toml::Value) -> Result<String, String> {
    match value {
        toml::Value::String(s) => Ok(s),
        toml::Value::Integer(i) => Ok(i.to_string()),
        toml::Value::Float(f) => Ok(f.to_string()),
        toml::Value::Boolean(b) => Ok(b.to_string()),
        toml::Value::Array(items) => {
            let parts = items.into_iter().map(config_value).collect::<Result<Vec<_>, _>>()?;
            Ok(parts.join(","))
        }
        other => Err(format!("{} values are not supported; use a string, number, boolean or list", other.type_str())),
    }
}

/// `:LINE` of `key_path` in the config file, or empty when unknown; for
/// errors found after loading (e.g. a component that fails to type-check).
pub fn locate_key(config: &Config, key_path: &[&str]) -> String {
    std::fs::read_to_string(&config.path)
        .ok()
        .and_then(|source| locate::line_of(&source, key_path))
        .map(|line| format!(":{line}"))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests;
