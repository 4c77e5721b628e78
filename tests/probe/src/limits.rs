//! Hostile modes for the host's limits (issue 21, tests/e2e/hostile/limits.rs):
//! each makes one call a well-behaved guest never would, and reports what
//! the host answered.
//!
//! | mode | each run |
//! |---|---|
//! | `raw-http` | one wasi:http request with `path` set verbatim as its path-with-query (e.g. `?x=1`) to `scheme`://`authority`; the body is `body`, or `placeholders` bytes of `${secret:SECRET}` (`secret_name`); counter `http_status`, or an `upstream` error naming the wasi:http error |
//! | `wide-table` | `write-table` of one row with `n` field columns keyed in descending order; counter `call_ms` (the host call's time), or a `store` error with the host's |
//! | `wide-point` | `write` of one point of `measurement` with `n` fields; counter `written`, or a `store` error with the host's |

use wattedge_guest::influx::{self, Cell, FieldColumn, Table};
use wattedge_guest::{FieldValue, GuestError, Point, Summary, clock, report};

fn last<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    pairs.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

fn number(pairs: &[(String, String)], key: &str, default: u64) -> Result<u64, GuestError> {
    match last(pairs, key) {
        None => Ok(default),
        Some(v) => v.parse().map_err(|_| GuestError::Config(format!("{key}: {v:?} is not a whole number"))),
    }
}

/// Runs the limits mode `mode` with the run's config pairs.
pub fn run(mode: &str, pairs: &[(String, String)]) -> Result<Summary, GuestError> {
    match mode {
        "raw-http" => raw_http(pairs),
        "wide-table" => wide_table(pairs),
        "wide-point" => wide_point(pairs),
        other => Err(GuestError::Config(format!("mode: {other:?} is not a limits mode"))),
    }
}

/// The body: `body`, or `placeholders` bytes of secret placeholders.
fn body(pairs: &[(String, String)]) -> Result<String, GuestError> {
    let size = usize::try_from(number(pairs, "placeholders", 0)?).unwrap_or(0);
    if size == 0 {
        return Ok(last(pairs, "body").unwrap_or("").to_string());
    }
    let one = format!("${{secret:{}}}", last(pairs, "secret_name").unwrap_or("probe.key"));
    Ok(one.repeat(size / one.len()))
}

fn wide_table(pairs: &[(String, String)]) -> Result<Summary, GuestError> {
    let n = number(pairs, "n", 200_000)?;
    let fields = (0..n)
        .map(|i| FieldColumn { key: format!("f{:07}", n - i), values: vec![Some(Cell::Integer(i as i64))] })
        .collect();
    let table = Table { times: vec![clock::now_ns()], strings: Vec::new(), tags: Vec::new(), fields };
    let measurement = last(pairs, "measurement").unwrap_or("probe");
    let began = clock::now_ms();
    let written = influx::write_table(measurement, &table);
    report::set_count("call_ms", clock::now_ms().saturating_sub(began) as u64);
    let n = written.map_err(|e| GuestError::Store(wattedge_guest::influx_error_text(&e)))?;
    Ok(Summary { points_written: n, detail: Some(format!("{n} rows written")) })
}

fn wide_point(pairs: &[(String, String)]) -> Result<Summary, GuestError> {
    let n = number(pairs, "n", 65_536)?;
    let point = Point {
        measurement: last(pairs, "measurement").unwrap_or("probe").to_string(),
        tags: vec![("version".into(), last(pairs, "version").unwrap_or("v1").to_string())],
        fields: (0..n).map(|i| (format!("f{i:05}"), FieldValue::Integer(i as i64))).collect(),
        time: clock::now_ns(),
    };
    let n = influx::write(&[point]).map_err(|e| GuestError::Store(wattedge_guest::influx_error_text(&e)))?;
    report::set_count("written", u64::from(n));
    Ok(Summary { points_written: n, detail: Some(format!("{n} points written")) })
}

#[cfg(target_arch = "wasm32")]
fn raw_http(pairs: &[(String, String)]) -> Result<Summary, GuestError> {
    let status = wasi::send(pairs, &body(pairs)?).map_err(GuestError::Upstream)?;
    report::set_count("http_status", u64::from(status));
    Ok(Summary { points_written: 0, detail: Some(format!("http status {status}")) })
}

/// Native builds (unit tests) have no wasi:http.
#[cfg(not(target_arch = "wasm32"))]
fn raw_http(pairs: &[(String, String)]) -> Result<Summary, GuestError> {
    body(pairs)?;
    Err(GuestError::Internal("raw-http needs wasi:http".into()))
}

#[cfg(target_arch = "wasm32")]
mod wasi {
    use wattedge_guest::wasip2::http::outgoing_handler;
    use wattedge_guest::wasip2::http::types::{Fields, Method, OutgoingBody, OutgoingRequest, Scheme};

    use super::last;

    /// Sends the request as configured, path verbatim; the status, or the
    /// wasi:http error as text.
    pub fn send(pairs: &[(String, String)], body: &str) -> Result<u16, String> {
        let request = OutgoingRequest::new(Fields::new());
        let method = match last(pairs, "method").unwrap_or("GET") {
            "POST" => Method::Post,
            _ => Method::Get,
        };
        request.set_method(&method).map_err(|()| "method refused".to_string())?;
        let scheme = if last(pairs, "scheme") == Some("https") { Scheme::Https } else { Scheme::Http };
        request.set_scheme(Some(&scheme)).map_err(|()| "scheme refused".to_string())?;
        let authority = last(pairs, "authority").unwrap_or("127.0.0.1");
        request.set_authority(Some(authority)).map_err(|()| format!("authority {authority:?} refused"))?;
        let path = last(pairs, "path").unwrap_or("/");
        request.set_path_with_query(Some(path)).map_err(|()| format!("path {path:?} refused by wasi:http"))?;
        let outgoing = request.body().map_err(|()| "no body".to_string())?;
        let future = outgoing_handler::handle(request, None).map_err(|e| format!("handle: {e:?}"))?;
        {
            let stream = outgoing.write().map_err(|()| "no body stream".to_string())?;
            for chunk in body.as_bytes().chunks(4096) {
                if let Err(e) = stream.blocking_write_and_flush(chunk) {
                    // The host may refuse the request while its body is written.
                    drop(e);
                    break;
                }
            }
        }
        let _ = OutgoingBody::finish(outgoing, None);
        future.subscribe().block();
        let response = future.get().ok_or("no response")?.map_err(|()| "taken twice".to_string())?;
        response.map(|r| r.status()).map_err(|e| format!("{e:?}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
        items.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn a_body_of_placeholders_is_as_long_as_asked() {
        let b = body(&pairs(&[("placeholders", "4194304"), ("secret_name", "probe.key")])).unwrap();
        assert!(b.len() <= 4 << 20 && b.len() > (4 << 20) - 32 && b.starts_with("${secret:probe.key}"));
        assert_eq!(body(&pairs(&[("body", "x")])).unwrap(), "x");
        assert!(run("nope", &[]).is_err());
    }
}
