//! Measurement modes for the benchmark harness: `calls` makes `n` no-op
//! host calls (`schedule.cancel-wake`), `writes` writes `n` points in calls
//! of `batch` points. The host times the whole run; the harness subtracts a
//! run with `n = 0`, so per-run overhead cancels out. And `fields`, which
//! holds `n` wasi:http header sets of `bytes` each (the host's resource
//! limits for guests).

use wattedge_guest::{FieldValue, GuestError, Point, Summary, clock, influx, schedule};

fn number(pairs: &[(String, String)], key: &str, default: u64) -> Result<u64, GuestError> {
    match pairs.iter().rev().find(|(k, _)| k == key) {
        None => Ok(default),
        Some((_, v)) => v.parse().map_err(|_| GuestError::Config(format!("{key}: {v:?} is not a whole number"))),
    }
}

/// `n` guest→host calls that do nothing on the host but clear a wake slot.
pub fn calls(pairs: &[(String, String)]) -> Result<Summary, GuestError> {
    let n = number(pairs, "n", 1_000_000)?;
    for _ in 0..n {
        schedule::cancel_wake();
    }
    Ok(Summary { points_written: 0, detail: Some(format!("{n} host calls")) })
}

/// `n` points written in calls of `batch` points each.
pub fn writes(pairs: &[(String, String)]) -> Result<Summary, GuestError> {
    let n = number(pairs, "n", 10_000)?;
    let batch = number(pairs, "batch", 1_000)?.max(1);
    let start = clock::now_ns();
    let mut written = 0u32;
    let mut i = 0u64;
    while i < n {
        let size = batch.min(n - i);
        let points: Vec<Point> = (i..i + size)
            .map(|k| Point {
                measurement: "bench".into(),
                tags: vec![("series".into(), (k % 8).to_string())],
                fields: vec![("value".into(), FieldValue::Float(k as f64))],
                time: start + k as i64,
            })
            .collect();
        written += influx::write(&points).map_err(|e| GuestError::Store(format!("{e:?}")))?;
        i += size;
    }
    Ok(Summary { points_written: written, detail: Some(format!("{n} points in batches of {batch}")) })
}

/// Creates and holds `n` wasi:http `fields` of one `bytes`-long header each.
#[cfg(target_arch = "wasm32")]
pub fn fields(pairs: &[(String, String)]) -> Result<Summary, GuestError> {
    use wattedge_guest::wasip2::http::types::Fields;
    let n = number(pairs, "n", 100)?;
    let value = vec![b'x'; usize::try_from(number(pairs, "bytes", 1024)?).unwrap_or(1024)];
    let mut held = Vec::new();
    for i in 0..n {
        let fields = Fields::new();
        fields.append("x-fill", &value).map_err(|e| GuestError::Internal(format!("header set {i}: {e:?}")))?;
        held.push(fields);
    }
    Ok(Summary { points_written: 0, detail: Some(format!("{} header sets held", held.len())) })
}

/// Native builds (unit tests) have no wasi:http.
#[cfg(not(target_arch = "wasm32"))]
pub fn fields(_pairs: &[(String, String)]) -> Result<Summary, GuestError> {
    Err(GuestError::Internal("fields needs wasi:http".into()))
}
