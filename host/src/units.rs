//! Human units in the config: durations (`15m`, `90d`), sizes (`16MiB`) and
//! schedules (`every 15m` or a 5-field cron expression).

use std::str::FromStr;
use std::time::Duration;

/// When a guest runs.
#[derive(Debug, Clone)]
pub enum Schedule {
    /// Every fixed interval, starting when the host starts.
    Every(Duration),
    /// A 5-field cron expression evaluated in the board's local time zone.
    Cron(Box<croner::Cron>, String),
}

impl Schedule {
    /// Parses `every DURATION` or a 5-field cron expression (`@hourly` etc. too).
    pub fn parse(text: &str) -> Result<Schedule, String> {
        let text = text.trim();
        if let Some(interval) = text.strip_prefix("every ") {
            let every = parse_duration(interval)?;
            if every < Duration::from_secs(1) {
                return Err("intervals shorter than 1s are not supported".into());
            }
            return Ok(Schedule::Every(every));
        }
        let fields = text.split_whitespace().count();
        if !text.starts_with('@') && fields != 5 {
            return Err(format!("expected `every DURATION` or a cron expression with 5 fields, found {fields}"));
        }
        let cron = croner::Cron::from_str(text).map_err(|e| format!("invalid cron expression: {e}"))?;
        Ok(Schedule::Cron(Box::new(cron), text.to_string()))
    }

    /// The first time strictly after `after` at which the guest should run.
    pub fn next_after(&self, after: std::time::SystemTime) -> Option<std::time::SystemTime> {
        match self {
            Schedule::Every(every) => Some(after + *every),
            Schedule::Cron(cron, _) => {
                let local: chrono::DateTime<chrono::Local> = after.into();
                let next = cron.find_next_occurrence(&local, false).ok()?;
                Some(next.into())
            }
        }
    }
}

impl std::fmt::Display for Schedule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Schedule::Every(d) => write!(f, "every {}", wattedge_units::format_duration(*d)),
            Schedule::Cron(_, text) => f.write_str(text),
        }
    }
}

/// The longest duration a config may name: timers and deadlines are added
/// to the clock, which a duration of ages would overflow.
pub const MAX_DURATION: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// Parses `90s`, `15m`, `1h 30m`, `90d` (at most [`MAX_DURATION`]), in the
/// grammar host and guests share (`wattedge_units`, README "Durations").
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let duration = wattedge_units::parse_duration(text).map_err(|e| format!("{e} in duration {text:?}"))?;
    if duration > MAX_DURATION {
        return Err(format!("{text:?} is longer than 100 years"));
    }
    Ok(duration)
}

/// Parses `16MiB`, `512KiB`, `1GiB`, `1048576` (bytes); SI units (`16MB`) too.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let number: u64 = digits.parse().map_err(|_| format!("{text:?} does not start with a whole number"))?;
    let factor: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        other => return Err(format!("unknown size unit {other:?}; use B, KiB, MiB or GiB")),
    };
    number.checked_mul(factor).ok_or_else(|| format!("{text:?} is too large"))
}
