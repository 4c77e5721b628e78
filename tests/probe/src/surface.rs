//! The probe's attacks on the host's surface (issue 21): forging host log
//! lines and flooding the host with refused requests.
//!
//! | mode | each run |
//! |---|---|
//! | `forge` | puts [`FORGED`] everywhere the host may log guest text: a log line, stdout, a denied measurement, a denied query, a denied secret name, its status text, and finally its run error |
//! | `forge-init` | `init` fails with [`FORGED`] as its error |
//! | `deny-flood` | `n` (default 100,000) refused requests, round robin over `kinds` (`influx,http,secret`): writes to the ungranted measurement `not_granted`, GETs of `https://not-granted.example/`, `forget` of the ungranted secret `not.granted`; counter `denied` counts the refusals |

use wattedge_guest::http as wasi_http;
use wattedge_guest::{FieldValue, GuestError, Point, Summary, clock, influx, report, secrets};

/// A host log line as a guest would forge it, with ANSI escapes that would
/// erase the line on a terminal and reset its colours.
pub const FORGED: &str = "ok\n2026-12-07T00:00:00Z  INFO wattedge: forged\u{1b}[2K\r\u{1b}[0m\u{1b}]0;owned\u{7}";

/// The `forge` behaviour (see the module docs); ends with the run error.
pub fn forge() -> Result<Summary, GuestError> {
    wattedge_guest::log_warn(FORGED);
    println!("{FORGED}");
    let point = Point {
        measurement: FORGED.to_string(),
        tags: Vec::new(),
        fields: vec![("x".into(), FieldValue::Integer(1))],
        time: clock::now_ns(),
    };
    let _ = influx::write(&[point]);
    let query = wattedge_guest::InfluxQuery {
        measurement: FORGED.to_string(),
        fields: Vec::new(),
        tags: Vec::new(),
        start: None,
        end: None,
        select: influx::Selector::All,
        descending: false,
        limit: None,
    };
    let _ = influx::query(&query);
    let _ = secrets::forget(FORGED);
    report::degraded(FORGED);
    report::text("forged", FORGED);
    Err(GuestError::Upstream(FORGED.to_string()))
}

/// The `forge-init` behaviour: the error `init` returns.
pub fn forged_init_error() -> GuestError {
    GuestError::Config(FORGED.to_string())
}

/// The `deny-flood` behaviour (see the module docs).
pub fn deny_flood(pairs: &[(String, String)]) -> Result<Summary, GuestError> {
    let value = |key: &str| pairs.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v.as_str());
    let n: u64 = value("n").and_then(|v| v.parse().ok()).unwrap_or(100_000);
    let kinds: Vec<&str> = value("kinds").unwrap_or("influx,http,secret").split(',').map(str::trim).collect();
    let mut denied = 0u64;
    for i in 0..n {
        let kind = kinds[usize::try_from(i).unwrap_or(0) % kinds.len()];
        if refused(kind) {
            denied += 1;
        }
    }
    report::set_count("denied", denied);
    Ok(Summary { points_written: 0, detail: Some(format!("{denied} of {n} requests refused")) })
}

/// Makes one request of `kind` that the host must refuse; whether it did.
fn refused(kind: &str) -> bool {
    match kind {
        "influx" => {
            let point = Point {
                measurement: "not_granted".into(),
                tags: Vec::new(),
                fields: vec![("x".into(), FieldValue::Integer(1))],
                time: clock::now_ns(),
            };
            matches!(influx::write(&[point]), Err(influx::InfluxError::Denied(_)))
        }
        "http" => {
            let request = wasi_http::Request {
                method: "GET".into(),
                url: "https://not-granted.example/".into(),
                ..Default::default()
            };
            wasi_http::request(&request).is_err()
        }
        _ => matches!(secrets::forget("not.granted"), Err(secrets::SecretError::Denied(_))),
    }
}
