//! The embedded store's keys: how a measurement, a series and a block's
//! first time become one byte string whose order is the order scans need.
//!
//! A block key is `u32 BE len(m) ‖ m ‖ u32 BE len(s) ‖ s ‖ time`, where `s`
//! is the series (the sorted tag set, each key and value as `u32 BE len ‖
//! bytes`) and `time` the block's first timestamp with its sign bit flipped,
//! big-endian, so that byte order is numeric order. The blocks of one
//! series are therefore contiguous and ordered by time, and the series of
//! one measurement contiguous; no series' keys are a prefix of another's,
//! because the series' length comes first.

use super::Timestamp;

/// Appends `b` with its length as a big-endian `u32`.
pub(super) fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    let len = u32::try_from(b.len()).expect("string longer than 4 GiB");
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(b);
}

/// Appends `t` with its sign bit flipped, big-endian, so that byte order is
/// numeric order.
pub(super) fn put_time(out: &mut Vec<u8>, t: Timestamp) {
    out.extend_from_slice(&((t as u64) ^ (1 << 63)).to_be_bytes());
}

/// The prefix every key of measurement `m` starts with.
pub(super) fn measurement_prefix(m: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + m.len() + 64);
    put_bytes(&mut out, m.as_bytes());
    out
}

/// A key greater than every key of `m`, such that no key of another
/// measurement sorts between. The prefix ends with `m`'s last UTF-8 byte,
/// which is never 0xFF, so incrementing it cannot overflow.
pub(super) fn measurement_successor(m: &str) -> Vec<u8> {
    let mut out = measurement_prefix(m);
    if let Some(last) = out.last_mut() {
        *last += 1;
    }
    out
}

/// Replaces `out` with the series prefix of `m` and the tag pairs `tags`
/// (ascending by key), the part of a block key before the time.
pub(super) fn put_series_prefix<'t>(out: &mut Vec<u8>, m: &str, tags: impl Iterator<Item = (&'t str, &'t str)>) {
    out.clear();
    put_bytes(out, m.as_bytes());
    let len_at = out.len();
    out.extend_from_slice(&[0; 4]);
    for (k, v) in tags {
        put_bytes(out, k.as_bytes());
        put_bytes(out, v.as_bytes());
    }
    let len = u32::try_from(out.len() - len_at - 4).expect("tag set longer than 4 GiB");
    out[len_at..len_at + 4].copy_from_slice(&len.to_be_bytes());
}

/// The key of the block of series `prefix` (see [`put_series_prefix`]) that
/// starts at `t`.
pub(super) fn block_key(prefix: &[u8], t: Timestamp) -> Vec<u8> {
    let mut out = Vec::with_capacity(prefix.len() + 8);
    out.extend_from_slice(prefix);
    put_time(&mut out, t);
    out
}

/// A block key taken apart: its series prefix (everything but the time)
/// and the encoded tag set within it.
pub(super) struct BlockKey<'k> {
    pub prefix: &'k [u8],
    pub series: &'k [u8],
}

/// Splits the block key `key` of a measurement whose prefix is
/// `measurement_len` bytes long.
pub(super) fn split_block_key(key: &[u8], measurement_len: usize) -> Result<BlockKey<'_>, String> {
    let (prefix, _time) =
        key.split_last_chunk::<8>().ok_or_else(|| format!("block key of {} bytes is too short", key.len()))?;
    let mut r = Reader(prefix.get(measurement_len..).ok_or("block key shorter than its measurement")?);
    let series = r.bytes()?;
    if !r.0.is_empty() {
        return Err(format!("block key has {} bytes after its series", r.0.len()));
    }
    Ok(BlockKey { prefix, series })
}

/// The first time of the block whose key is `key`.
pub(super) fn key_time(key: &[u8]) -> Result<Timestamp, String> {
    let time = key.last_chunk::<8>().ok_or_else(|| format!("block key of {} bytes is too short", key.len()))?;
    Reader(time).time()
}

/// The tag pairs of an encoded series, borrowed.
pub(super) fn decode_series(series: &[u8]) -> Result<Vec<(&str, &str)>, String> {
    let mut r = Reader(series);
    let mut tags = Vec::new();
    while !r.0.is_empty() {
        tags.push((r.str()?, r.str()?));
    }
    Ok(tags)
}

/// A cursor over encoded bytes; borrows until a caller asks for an owned string.
#[derive(Clone, Copy)]
pub(super) struct Reader<'a>(pub &'a [u8]);

impl<'a> Reader<'a> {
    /// A time written by [`put_time`].
    pub fn time(&mut self) -> Result<Timestamp, String> {
        Ok((u64::from_be_bytes(self.array()?) ^ (1 << 63)) as i64)
    }

    pub fn array<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let (head, rest) = self
            .0
            .split_first_chunk::<N>()
            .ok_or_else(|| format!("truncated: wanted {N} bytes, {} left", self.0.len()))?;
        self.0 = rest;
        Ok(*head)
    }

    /// The next `n` bytes.
    pub fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.0.len() < n {
            return Err(format!("truncated: wanted {n} bytes, {} left", self.0.len()));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    /// A byte string written by [`put_bytes`].
    pub fn bytes(&mut self) -> Result<&'a [u8], String> {
        let len = u32::from_be_bytes(self.array()?) as usize;
        self.take(len)
    }

    /// A UTF-8 string written by [`put_bytes`], borrowed.
    pub fn str(&mut self) -> Result<&'a str, String> {
        std::str::from_utf8(self.bytes()?).map_err(|e| format!("invalid UTF-8: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_block_key_splits_into_what_made_it() {
        let mut prefix = Vec::new();
        put_series_prefix(&mut prefix, "power", [("host", "a"), ("phase", "l1")].into_iter());
        for t in [i64::MIN, -1, 0, 42, i64::MAX] {
            let key = block_key(&prefix, t);
            let split = split_block_key(&key, measurement_prefix("power").len()).unwrap();
            assert_eq!(split.prefix, prefix.as_slice());
            assert_eq!(key_time(&key).unwrap(), t);
            assert_eq!(decode_series(split.series).unwrap(), [("host", "a"), ("phase", "l1")]);
        }
    }

    #[test]
    fn keys_sort_by_series_then_time_and_series_never_interleave() {
        let series = |tags: &[(&str, &str)]| {
            let mut p = Vec::new();
            put_series_prefix(&mut p, "m", tags.iter().copied());
            p
        };
        let (a, ab) = (series(&[("h", "a")]), series(&[("h", "ab")]));
        assert!(block_key(&a, -5) < block_key(&a, 3));
        // Every block of `a`, at any time, sorts before every block of `ab`.
        assert!(block_key(&a, i64::MAX) < block_key(&ab, i64::MIN));
        assert!(block_key(&ab, i64::MAX) < measurement_successor("m"));
        assert!(measurement_prefix("m") < block_key(&series(&[]), i64::MIN));
    }

    #[test]
    fn corrupt_keys_are_errors() {
        assert!(split_block_key(&[1, 2, 3], 0).is_err());
        assert!(split_block_key(&[0, 0, 0, 9, 1, 2, 3, 4, 5, 6, 7, 8], 0).is_err(), "series longer than the key");
        assert!(decode_series(&[0, 0, 0, 1, b'k']).is_err(), "a key without its value");
        assert!(decode_series(&[0, 0, 0, 1, 0xff, 0, 0, 0, 0]).is_err(), "not UTF-8");
    }
}
