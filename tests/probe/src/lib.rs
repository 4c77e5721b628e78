//! `wattedge-probe`: a purpose-built guest for the host's integration tests.
//!
//! Its behaviour is chosen by the `mode` config key, and an invoked run's
//! arguments override any config key for that run:
//!
//! | mode | each run |
//! |---|---|
//! | `write` (default) | writes one point (`measurement`, tag `version`, fields `run`, `started_ms`, `ended_ms`, plus float `field` = `value` when `value` is set), sleeping `sleep_ms` before the write |
//! | `trap` | panics, i.e. a wasm trap |
//! | `error` | returns `GuestError::Internal("probe error")` |
//! | `loop` | spins forever (tests the CPU deadline) |
//! | `alloc` | grows memory by 1 MiB blocks until it traps (tests the memory limit) |
//! | `slow-init` | `init` sleeps `init_sleep_ms` (default 3000), then runs like `write` |
//! | `health` | reports `health` = `ok`, `standby:TEXT` or `degraded:TEXT` |
//! | `wake` | on a scheduled/invoked run asks for a wake-up `wake_after_ms` later; writes a point tagged `trigger=scheduled|invoked|wake` |
//! | `fields` | holds `n` wasi:http header sets of `bytes` each (tests the host's resource limits) |
//! | `wake-ok` | asks for a wake-up `wake_after_ms` later on every run, and succeeds |
//! | `query` | queries every row of `measurement` (no limit); counter `rows`, or the store's error |
//! | `wake-error` | asks for a wake-up `wake_after_ms` later on every run, then returns an error |
//! | `secret` | sets counter `secret_is_set` to 1/0 for `secret_name` and reports ok/standby |
//! | `http` | one wasi:http request from `url`, `method`, `h.NAME`, `body`...; writes a `probe_http` point with what it received (see [`http`]) |
//! | `forge`, `forge-init`, `deny-flood` | attacks on the host's log (see [`surface`]) |
//! | `raw-http`, `wide-table`, `wide-point` | hostile calls against the host's limits (see [`limits`]) |
//!
//! A build-time switch, for tests that publish "another version" of the
//! probe: the data segment holds [`BUILD_SWITCH`], whose last 8 bytes a test
//! may overwrite in the component (same length, so the file stays valid):
//! `normal__` behaves as configured, `initfail` fails `init`, `runfail_`
//! fails every run (see `tests/e2e/fleet.rs`).
//!
//! Every run first increments the counter `probe_runs`. The run number
//! (`run` field) is kept in guest state under `runs`, so it survives restarts
//! and hot swaps. Sleeps use `wasi:clocks/monotonic-clock` pollables, so an
//! async host can park the guest rather than burn CPU.

pub mod bench;
pub mod http;
pub mod limits;
pub mod surface;

use std::hint::black_box;

use wattedge_guest::config::{Config, config_error};
use wattedge_guest::status::Health;
use wattedge_guest::{
    FieldValue, Guest, GuestError, Point, Slot, Summary, Trigger, clock, influx, report, schedule, state, status,
};

/// Behaviour of a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// One point per run.
    Write,
    /// Panic (a wasm trap).
    Trap,
    /// Return an error.
    Error,
    /// Spin forever.
    Loop,
    /// Grow memory until it traps.
    Alloc,
    /// Sleep in `init`, then write.
    SlowInit,
    /// Report the configured health.
    Health,
    /// Ask for a wake-up and write.
    Wake,
    /// Ask for a wake-up on every run, then fail.
    WakeError,
    /// Ask for a wake-up on every run, and succeed.
    WakeOk,
    /// Query every row of the measurement.
    Query,
    /// Hold `n` wasi:http header sets.
    Fields,
    /// Report whether a secret is set.
    Secret,
    /// Make one HTTP request and report what came back.
    Http,
    /// `n` no-op host calls (benchmark harness).
    Calls,
    /// `n` points in batches of `batch` (benchmark harness).
    Writes,
    /// Forge host log lines everywhere (see [`surface`]).
    Forge,
    /// Fail `init` with a forged log line.
    ForgeInit,
    /// Make `n` refused requests.
    DenyFlood,
    /// A hostile call against the host's limits ([`limits`]).
    Limits,
}

impl Mode {
    /// Parses a mode name.
    pub fn parse(name: &str) -> Result<Self, GuestError> {
        Ok(match name {
            "write" => Self::Write,
            "trap" => Self::Trap,
            "error" => Self::Error,
            "loop" => Self::Loop,
            "alloc" => Self::Alloc,
            "slow-init" => Self::SlowInit,
            "health" => Self::Health,
            "wake" => Self::Wake,
            "wake-error" => Self::WakeError,
            "query" => Self::Query,
            "wake-ok" => Self::WakeOk,
            "fields" => Self::Fields,
            "secret" => Self::Secret,
            "http" => Self::Http,
            "calls" => Self::Calls,
            "writes" => Self::Writes,
            "forge" => Self::Forge,
            "forge-init" => Self::ForgeInit,
            "deny-flood" => Self::DenyFlood,
            "raw-http" | "wide-table" | "wide-point" => Self::Limits,
            other => {
                return Err(config_error(
                    "mode",
                    format!(
                        "{other:?} is unknown; use write, trap, error, loop, alloc, \
                         slow-init, health, wake, wake-error, wake-ok, query, fields, secret, http, calls, writes, \
                         raw-http, wide-table or wide-point"
                    ),
                ));
            }
        })
    }
}

/// Everything a run needs, parsed from config plus invoked arguments.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// The behaviour.
    pub mode: Mode,
    /// Measurement written by `write` and `wake`.
    pub measurement: String,
    /// Value of the `version` tag.
    pub version: String,
    /// Sleep before the write.
    pub sleep_ms: u64,
    /// Sleep in `init` for `slow-init`.
    pub init_sleep_ms: u64,
    /// Delay of the wake-up asked for by `wake`.
    pub wake_after_ms: u64,
    /// Health reported by `health`.
    pub health: Health,
    /// Secret checked by `secret`.
    pub secret_name: String,
    /// Extra float field (`field`, default `value`) written with each point, when `value` is set.
    pub extra: Option<(String, f64)>,
}

/// Parses `ok`, `standby:TEXT` or `degraded:TEXT`.
pub fn parse_health(text: &str) -> Result<Health, GuestError> {
    if text == "ok" {
        return Ok(Health::Ok);
    }
    match text.split_once(':') {
        Some(("standby", t)) => Ok(Health::Standby(t.to_string())),
        Some(("degraded", t)) => Ok(Health::Degraded(t.to_string())),
        _ => Err(config_error("health", format!("{text:?} is invalid; use ok, standby:TEXT or degraded:TEXT"))),
    }
}

const HOUR_MS: u64 = 3_600_000;

impl Plan {
    /// Parses and validates `config`.
    pub fn from_config(config: &Config) -> Result<Self, GuestError> {
        Ok(Self {
            mode: Mode::parse(&config.string("mode", "write"))?,
            measurement: config.string("measurement", "probe"),
            version: config.string("version", "v1"),
            sleep_ms: config.u64_in("sleep_ms", 0, 0..=HOUR_MS)?,
            init_sleep_ms: config.u64_in("init_sleep_ms", 3000, 0..=HOUR_MS)?,
            wake_after_ms: config.u64_in("wake_after_ms", 1000, 0..=24 * HOUR_MS)?,
            health: parse_health(&config.string("health", "ok"))?,
            secret_name: config.string("secret_name", "probe.secret"),
            extra: extra_field(config)?,
        })
    }
}

/// The optional `field` = `value` pair written with each point.
fn extra_field(config: &Config) -> Result<Option<(String, f64)>, GuestError> {
    let value = config.string("value", "");
    if value.is_empty() {
        return Ok(None);
    }
    let parsed = value.parse::<f64>().map_err(|_| config_error("value", format!("{value:?} is not a number")))?;
    Ok(Some((config.string("field", "value"), parsed)))
}

/// The label of a trigger for the `trigger` tag.
pub fn trigger_label(trigger: &Trigger) -> &'static str {
    match trigger {
        Trigger::Scheduled(_) => "scheduled",
        Trigger::Wake(_) => "wake",
        Trigger::Invoked(_) => "invoked",
    }
}

/// Reads, increments and stores the run counter.
fn next_run() -> Result<i64, GuestError> {
    let previous = state::get("runs")
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|s| s.trim().parse::<i64>().ok())
        .unwrap_or(0);
    let run = previous.saturating_add(1);
    state::set("runs", run.to_string().as_bytes())
        .map_err(|e| GuestError::Internal(format!("saving run counter: {}", wattedge_guest::state_error_text(&e))))?;
    Ok(run)
}

/// The `write` behaviour: one point at the end of the run.
/// Asks the host for a wake-up `wake_after_ms` from now.
fn wake_later(plan: &Plan) {
    let delay = i64::try_from(plan.wake_after_ms).unwrap_or(0);
    schedule::wake_at(clock::now_ns().saturating_add(delay.saturating_mul(clock::NANOS_PER_MS)));
}

fn write_point(plan: &Plan, trigger: Option<&Trigger>) -> Result<Summary, GuestError> {
    let started_ns = clock::now_ns();
    let started_ms = started_ns / clock::NANOS_PER_MS;
    let run = next_run()?;
    clock::sleep_ms(plan.sleep_ms);
    let ended_ms = clock::now_ms();
    let mut tags = vec![("version".to_string(), plan.version.clone())];
    if let Some(t) = trigger {
        tags.push(("trigger".to_string(), trigger_label(t).to_string()));
    }
    let mut fields = vec![
        ("run".into(), FieldValue::Integer(run)),
        ("started_ms".into(), FieldValue::Float(started_ms as f64)),
        ("ended_ms".into(), FieldValue::Float(ended_ms as f64)),
    ];
    if let Some((field, value)) = &plan.extra {
        fields.push((field.clone(), FieldValue::Float(*value)));
    }
    let point = Point { measurement: plan.measurement.clone(), tags, fields, time: started_ns };
    let written = influx::write(&[point]).map_err(|e| {
        GuestError::Store(format!("writing {}: {}", plan.measurement, wattedge_guest::influx_error_text(&e)))
    })?;
    Ok(Summary { points_written: written, detail: Some(format!("run {run} ({})", plan.version)) })
}

/// Spins until the host's deadline interrupts it.
fn spin() -> ! {
    let mut x: u64 = 0;
    loop {
        x = black_box(x.wrapping_add(1));
    }
}

/// Allocates and touches 1 MiB blocks until allocation fails (a trap).
fn hog() -> ! {
    const BLOCK: usize = 1 << 20;
    let mut blocks: Vec<Vec<u8>> = Vec::new();
    loop {
        let mut block = vec![0u8; BLOCK];
        for byte in block.iter_mut().step_by(4096) {
            *byte = 1;
        }
        blocks.push(black_box(block));
        black_box(&blocks);
    }
}

static CONFIG: Slot<Config> = Slot::new();
/// The raw pairs, for keys that `Config` cannot enumerate (`h.NAME`).
static RAW: Slot<Vec<(String, String)>> = Slot::new();

/// The `http` behaviour: one request, reported as a point and a log line.
fn http_run(pairs: &[(String, String)]) -> Result<Summary, GuestError> {
    let plan = http::plan(pairs)?;
    let outcome = http::perform(&plan);
    report::set_count("http_status", u64::from(outcome.status));
    wattedge_guest::log_info(&format!(
        "http {}: status {} headers {:?} body {} error {}",
        plan.label, outcome.status, outcome.headers, outcome.body, outcome.error
    ));
    let point = Point {
        measurement: "probe_http".into(),
        tags: vec![("label".into(), plan.label.clone())],
        fields: vec![
            ("status".into(), FieldValue::Integer(i64::from(outcome.status))),
            ("headers".into(), FieldValue::Text(outcome.headers)),
            ("body".into(), FieldValue::Text(outcome.body)),
            ("error".into(), FieldValue::Text(outcome.error)),
        ],
        time: clock::now_ns(),
    };
    influx::write(&[point]).map_err(|e| GuestError::Store(wattedge_guest::influx_error_text(&e)))?;
    Ok(Summary { points_written: 1, detail: Some(format!("http status {}", outcome.status)) })
}

/// The build-time switch (see the module header): a marker a test finds
/// in the component's bytes, followed by the behaviour.
pub static BUILD_SWITCH: [u8; 32] = *b"wattedge-probe-build-sw:normal__";

/// The behaviour [`BUILD_SWITCH`] names, read through `black_box` so the
/// compiler cannot fold the comparison at build time.
fn build_switch() -> &'static [u8] {
    &black_box(&BUILD_SWITCH)[24..]
}

struct Probe;

impl Guest for Probe {
    fn init(config: Vec<(String, String)>) -> Result<(), GuestError> {
        let config_pairs = config.clone();
        let config = Config::new(config);
        let plan = Plan::from_config(&config)?;
        if build_switch() == b"initfail" {
            return Err(GuestError::Internal("probe built to fail init".into()));
        }
        if plan.mode == Mode::SlowInit {
            clock::sleep_ms(plan.init_sleep_ms);
        }
        if plan.mode == Mode::ForgeInit {
            return Err(surface::forged_init_error());
        }
        RAW.set(config_pairs);
        CONFIG.set(config);
        Ok(())
    }

    fn run(trigger: Trigger) -> Result<Summary, GuestError> {
        report::inc("probe_runs");
        if build_switch() == b"runfail_" {
            return Err(GuestError::Internal("probe built to fail its runs".into()));
        }
        let config = CONFIG.get()?;
        let plan = match &trigger {
            Trigger::Invoked(args) => Plan::from_config(&config.overridden(args))?,
            Trigger::Scheduled(_) | Trigger::Wake(_) => Plan::from_config(&config)?,
        };
        match plan.mode {
            Mode::Write | Mode::SlowInit => write_point(&plan, None),
            Mode::Http => {
                let mut pairs = RAW.get()?;
                if let Trigger::Invoked(args) = &trigger {
                    pairs.extend(args.iter().cloned());
                }
                http_run(&pairs)
            }
            Mode::Forge | Mode::ForgeInit => surface::forge(),
            Mode::Limits => {
                let mut pairs = RAW.get()?;
                if let Trigger::Invoked(args) = &trigger {
                    pairs.extend(args.iter().cloned());
                }
                let mode = pairs.iter().rev().find(|(k, _)| k == "mode").map(|(_, v)| v.clone()).unwrap_or_default();
                limits::run(&mode, &pairs)
            }
            Mode::Calls | Mode::Writes | Mode::Fields | Mode::DenyFlood => {
                let mut pairs = RAW.get()?;
                if let Trigger::Invoked(args) = &trigger {
                    pairs.extend(args.iter().cloned());
                }
                match plan.mode {
                    Mode::Calls => bench::calls(&pairs),
                    Mode::Writes => bench::writes(&pairs),
                    Mode::DenyFlood => surface::deny_flood(&pairs),
                    _ => bench::fields(&pairs),
                }
            }
            Mode::Trap => unreachable!("probe mode trap"),
            Mode::Error => Err(GuestError::Internal("probe error".into())),
            Mode::Loop => spin(),
            Mode::Alloc => hog(),
            Mode::Health => {
                status::report(&plan.health);
                Ok(Summary { points_written: 0, detail: Some("health reported".into()) })
            }
            Mode::Wake => {
                if !matches!(trigger, Trigger::Wake(_)) {
                    wake_later(&plan);
                }
                write_point(&plan, Some(&trigger))
            }
            Mode::WakeError => {
                wake_later(&plan);
                Err(GuestError::Internal("probe error after asking for a wake-up".into()))
            }
            Mode::WakeOk => {
                wake_later(&plan);
                Ok(Summary { points_written: 0, detail: Some("asked for a wake-up".into()) })
            }
            Mode::Query => {
                let q = wattedge_guest::InfluxQuery {
                    measurement: plan.measurement.clone(),
                    fields: Vec::new(),
                    tags: Vec::new(),
                    start: None,
                    end: None,
                    select: influx::Selector::All,
                    descending: false,
                    limit: None,
                };
                let rows = influx::query(&q).map_err(|e| GuestError::Store(wattedge_guest::influx_error_text(&e)))?;
                report::set_count("rows", rows.len() as u64);
                Ok(Summary { points_written: 0, detail: Some(format!("{} rows", rows.len())) })
            }
            Mode::Secret => {
                let set = wattedge_guest::secrets::is_set(&plan.secret_name);
                report::set_count("secret_is_set", u64::from(set));
                if set {
                    report::ok();
                } else {
                    report::standby_for_secrets(&[plan.secret_name.as_str()]);
                }
                Ok(Summary { points_written: 0, detail: Some(format!("secret_is_set={}", u8::from(set))) })
            }
        }
    }
}

wattedge_guest::export_guest!(Probe with_types_in wattedge_guest::bindings);

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(pairs: &[(&str, &str)]) -> Config {
        Config::new(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect())
    }

    #[test]
    fn defaults() {
        let p = Plan::from_config(&cfg(&[])).expect("defaults are valid");
        assert_eq!(p.mode, Mode::Write);
        assert_eq!((p.measurement.as_str(), p.version.as_str()), ("probe", "v1"));
        assert_eq!((p.sleep_ms, p.init_sleep_ms, p.wake_after_ms), (0, 3000, 1000));
        assert_eq!(p.health, Health::Ok);
    }

    #[test]
    fn invoked_args_override() {
        let base = cfg(&[("mode", "write"), ("version", "v2")]);
        let p = Plan::from_config(&base.overridden(&[("mode".into(), "trap".into())])).expect("valid");
        assert_eq!((p.mode, p.version.as_str()), (Mode::Trap, "v2"));
    }

    #[test]
    fn health_and_bad_values() {
        assert_eq!(parse_health("standby:waiting for x"), Ok(Health::Standby("waiting for x".into())));
        assert_eq!(parse_health("degraded:a:b"), Ok(Health::Degraded("a:b".into())));
        assert!(matches!(parse_health("fine"), Err(GuestError::Config(m)) if m.starts_with("health: ")));
        assert!(
            matches!(Plan::from_config(&cfg(&[("mode", "nap")])), Err(GuestError::Config(m)) if m.starts_with("mode: "))
        );
        assert!(Plan::from_config(&cfg(&[("sleep_ms", "-1")])).is_err());
    }

    #[test]
    fn extra_field_value() {
        assert_eq!(Plan::from_config(&cfg(&[])).expect("valid").extra, None);
        let p = Plan::from_config(&cfg(&[("field", "ci"), ("value", "453.6")])).expect("valid");
        assert_eq!(p.extra, Some(("ci".into(), 453.6)));
        assert_eq!(Plan::from_config(&cfg(&[("value", "2")])).expect("valid").extra, Some(("value".into(), 2.0)));
        assert!(
            matches!(Plan::from_config(&cfg(&[("value", "x")])), Err(GuestError::Config(m)) if m.starts_with("value: "))
        );
    }

    #[test]
    fn labels() {
        assert_eq!(trigger_label(&Trigger::Wake(1)), "wake");
        assert_eq!(trigger_label(&Trigger::Scheduled(1)), "scheduled");
    }
}
