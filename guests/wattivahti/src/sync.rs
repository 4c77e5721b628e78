//! One sync run against the host: token refresh, window choice, per-chunk
//! fetch (PT15MIN, PT1H for what it lacks), placement and writing.
//!
//! Owns the order that keeps credentials safe: the token refresh comes
//! first, and the host captures the new access token and the rotated
//! refresh token from its answer (the operator's `grants.capture` rules),
//! so a rotation is stored before any data call can fail. Each chunk's points are written before the next chunk is fetched,
//! so a failure later in a long backfill keeps what was already synced, and
//! counters move per chunk so `wattedge invoke` shows progress. A backfill
//! too long for one run continues in the next (guest state + a wake-up).

use wattedge_guest::http::{self, Request};
use wattedge_guest::status::{self, CounterValue};
use wattedge_guest::{
    GuestError, InfluxQuery, Point, Summary, Trigger, clock, influx, log_warn, report, schedule, state,
};

use crate::api::{self, ACCESS_TOKEN, MEASUREMENT, TokenOutcome};
use crate::localtime::{self, End, Nanos};
use crate::settings::Settings;
use crate::window;

/// How long one run keeps backfilling before it hands the rest of the range
/// to a wake-up run (well inside the default 60 s `run_timeout`).
pub const BACKFILL_BUDGET_NS: i64 = 30 * clock::NANOS_PER_SEC;

/// Guest-state key holding the rest of an unfinished backfill.
const PENDING_KEY: &str = "backfill";

/// What a run needs besides the settings.
struct Ctx<'a> {
    settings: &'a Settings,
    metering_point: &'a str,
    tz: jiff::tz::TimeZone,
}

/// Runs one sync: the backfill range in invoke arguments; on a wake-up the
/// rest of an unfinished backfill; otherwise an incremental sync, after
/// which an unfinished backfill (say, one cut short by the run deadline) is
/// continued by a wake-up run, so it never holds up the regular sync.
pub fn run(settings: &Settings, metering_point: &str, trigger: &Trigger) -> Result<Summary, GuestError> {
    let tz = localtime::zone(&settings.timezone).map_err(|e| GuestError::Config(format!("timezone: {e}")))?;
    let ctx = Ctx { settings, metering_point, tz };
    let pending = || state::get(PENDING_KEY).and_then(|b| window::decode_pending(&b));
    let backfill = match trigger {
        Trigger::Invoked(args) => backfill_range(&ctx, args)?,
        Trigger::Wake(_) => pending(),
        Trigger::Scheduled(_) => None,
    };
    let (start, end) = match backfill {
        Some(range) => range,
        None => incremental_range(&ctx)?,
    };
    refresh_token(settings)?;
    let summary = sync_range(&ctx, start, end, backfill.is_some())?;
    if backfill.is_none() && pending().is_some() {
        schedule::wake_at(clock::now_ns());
    }
    Ok(summary)
}

/// The `start=`/`end=` invoke arguments as an instant range; `None` without
/// them (a plain incremental sync).
fn backfill_range(ctx: &Ctx, args: &[(String, String)]) -> Result<Option<(Nanos, Nanos)>, GuestError> {
    let arg = |key: &str| args.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v.as_str());
    if let Some((key, _)) = args.iter().find(|(k, _)| k != "start" && k != "end") {
        return Err(GuestError::Config(format!("{key}: unknown invoke argument; use start= and end=")));
    }
    let Some(start_text) = arg("start") else {
        return match arg("end") {
            Some(_) => {
                Err(GuestError::Config("end: needs start= as well, e.g. start=2024-01-01 end=2024-01-31".into()))
            }
            None => Ok(None),
        };
    };
    let start = localtime::parse_range_arg(&ctx.tz, start_text, End::Start).map_err(|e| arg_error("start", e))?;
    let end = match arg("end") {
        Some(text) => localtime::parse_range_arg(&ctx.tz, text, End::End).map_err(|e| arg_error("end", e))?,
        None => clock::now_ns(),
    };
    if start >= end {
        return Err(GuestError::Config(format!("end: must be after start ({start_text})")));
    }
    Ok(Some((start, end)))
}

fn arg_error(key: &str, message: String) -> GuestError {
    GuestError::Config(format!("{key}: {message}"))
}

/// From the newest stored point of this metering point (minus the buffer),
/// or `initial_sync_days` back when there is none, to now.
fn incremental_range(ctx: &Ctx) -> Result<(Nanos, Nanos), GuestError> {
    let query = InfluxQuery {
        measurement: MEASUREMENT.into(),
        fields: vec!["consumption_kwh".into()],
        tags: vec![influx::TagFilter { key: "metering_point".into(), value: ctx.metering_point.into() }],
        start: None,
        end: None,
        select: influx::Selector::Last,
        descending: false,
        limit: None,
    };
    let rows = influx::query(&query).map_err(|e| {
        GuestError::Store(format!("reading the last {MEASUREMENT} point: {}", wattedge_guest::influx_error_text(&e)))
    })?;
    let last = rows.iter().map(|r| r.time).max();
    let now = clock::now_ns();
    let s = ctx.settings;
    Ok((window::sync_start(last, now, s.sync_buffer_hours, s.initial_sync_days), now))
}

/// Refreshes the access token; the host captures both tokens.
fn refresh_token(settings: &Settings) -> Result<(), GuestError> {
    let request = Request {
        method: "POST".into(),
        url: settings.token_url.clone(),
        headers: vec![
            ("content-type".into(), "application/x-www-form-urlencoded".into()),
            ("accept".into(), "application/json".into()),
        ],
        body: api::token_form(&settings.client_id, &settings.scope),
        ..Request::default()
    };
    let response = http::request(&request).map_err(|e| GuestError::Upstream(format!("token request: {e}")))?;
    let (status, body) = (response.status, response.body);
    match api::token_outcome(status, &body) {
        TokenOutcome::Granted { rotated } => {
            if rotated {
                report::inc("token_rotations");
            }
            Ok(())
        }
        TokenOutcome::InvalidGrant(why) => Err(GuestError::Credentials(api::invalid_grant_text(&why))),
        TokenOutcome::Failed(message) => Err(GuestError::Upstream(message)),
    }
}

/// Fetches and writes `[start, end)` chunk by chunk. A backfill records
/// the rest of its range in guest state before each chunk (so a run cut
/// short by its deadline is continued by the next run) and, after
/// [`BACKFILL_BUDGET_NS`], hands the rest to a wake-up run.
fn sync_range(ctx: &Ctx, start: Nanos, end: Nanos, backfill: bool) -> Result<Summary, GuestError> {
    let chunks = window::chunks(start, end, window::CHUNK_NS);
    let began = clock::now_ns();
    let mut written: u32 = 0;
    for (i, &(from, to)) in chunks.iter().enumerate() {
        if backfill {
            save_pending(from, end)?;
        }
        written += write(&fetch_chunk(ctx, from, to)?)?;
        if !backfill {
            continue;
        }
        let through = localtime::format_query_time(&ctx.tz, to);
        let mut progress = format!("chunk {}/{}: {written} points through {through}", i + 1, chunks.len());
        if to < end && clock::now_ns() - began > BACKFILL_BUDGET_NS {
            save_pending(to, end)?;
            schedule::wake_at(clock::now_ns());
            progress.push_str("; continuing in the next run");
            report::text("progress", &progress);
            return Ok(Summary { points_written: written, detail: Some(progress) });
        }
        report::text("progress", &progress);
    }
    if backfill {
        state::delete(PENDING_KEY).map_err(|e| GuestError::Internal(wattedge_guest::state_error_text(&e)))?;
    }
    let (from, to) = (localtime::format_query_time(&ctx.tz, start), localtime::format_query_time(&ctx.tz, end));
    let detail = format!("{written} points for {from} to {to} in {} chunk(s)", chunks.len());
    Ok(Summary { points_written: written, detail: Some(detail) })
}

fn save_pending(from: Nanos, to: Nanos) -> Result<(), GuestError> {
    state::set(PENDING_KEY, &window::encode_pending(from, to)).map_err(|e| {
        GuestError::Internal(format!("saving backfill progress: {}", wattedge_guest::state_error_text(&e)))
    })
}

/// PT15MIN points for the chunk, plus PT1H points for the part without them.
fn fetch_chunk(ctx: &Ctx, from: Nanos, to: Nanos) -> Result<Vec<Point>, GuestError> {
    let quarter = fetch(ctx, "PT15MIN", from, to)?;
    let mut points = api::points(&quarter, ctx.metering_point, "PT15MIN");
    let first = quarter.first().map(|p| p.time);
    if let Some((gap_from, gap_to)) = window::hourly_gap(from, to, first) {
        let hourly = fetch(ctx, "PT1H", gap_from, gap_to)?;
        points.extend(api::points(&hourly, ctx.metering_point, "PT1H"));
    }
    Ok(points)
}

/// One `meterdata2` request: the placed records with a quantity.
fn fetch(ctx: &Ctx, step: &str, from: Nanos, to: Nanos) -> Result<Vec<localtime::Placed>, GuestError> {
    let (start, stop) = (localtime::format_query_time(&ctx.tz, from), localtime::format_query_time(&ctx.tz, to));
    let request = Request {
        method: "GET".into(),
        url: format!("{}{}", ctx.settings.api_base, api::meterdata_path(ctx.metering_point, &start, &stop, step)),
        headers: vec![
            ("authorization".into(), format!("Bearer ${{secret:{ACCESS_TOKEN}}}")),
            ("accept".into(), "application/json".into()),
        ],
        ..Request::default()
    };
    let response = http::request(&request).map_err(|e| GuestError::Upstream(format!("meterdata2 {step}: {e}")))?;
    let (status, body) = (response.status, response.body);
    if !(200..300).contains(&status) {
        let text: String = body.chars().take(200).collect();
        return Err(GuestError::Upstream(format!("meterdata2 {step} {start}..{stop} answered {status}: {text}")));
    }
    let (records, warnings) = api::parse_meterdata(&body).map_err(GuestError::Upstream)?;
    let (placed, rejected) = localtime::place(&records, &ctx.tz, from, to);
    for warning in warnings.iter().chain(rejected.iter().map(ToString::to_string).collect::<Vec<_>>().iter()) {
        log_warn(&format!("meterdata2 {step}: {warning}"));
    }
    Ok(placed.into_iter().filter(|p| p.kwh.is_some()).collect())
}

/// Writes points and moves the counters.
fn write(points: &[Point]) -> Result<u32, GuestError> {
    if points.is_empty() {
        return Ok(0);
    }
    let accepted = influx::write(points)
        .map_err(|e| GuestError::Store(format!("writing {MEASUREMENT}: {}", wattedge_guest::influx_error_text(&e))))?;
    report::inc_by("points_written", u64::from(accepted));
    if let Some(newest) = api::newest(points) {
        let previous = match status::counter("last_synced_point") {
            Some(CounterValue::Time(t)) => t,
            _ => i64::MIN,
        };
        status::set_counter("last_synced_point", &CounterValue::Time(newest.max(previous)));
    }
    Ok(accepted)
}
