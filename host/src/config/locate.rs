//! Finding the line of a key in the config source, so that semantic errors
//! (found after deserializing) can point at a line as parse errors do.

/// 1-based line of byte offset `offset` in `source`.
pub fn line_at(source: &str, offset: usize) -> usize {
    source[..offset.min(source.len())].bytes().filter(|&b| b == b'\n').count() + 1
}

/// Best-effort line of `path` (e.g. `["guests", "watttime", "schedule"]`):
/// the line of the key inside its `[table]`, or of the table header itself
/// when the key is empty or not found. None when the table is absent.
pub fn line_of(source: &str, path: &[&str]) -> Option<usize> {
    let (key, table) = match path.split_last() {
        Some((k, t)) if !k.is_empty() => (Some(*k), t),
        Some((_, t)) => (None, t),
        None => return None,
    };
    let header = format!("[{}]", table.join("."));
    let mut in_table = table.is_empty();
    let mut header_line = None;
    for (index, line) in source.lines().enumerate() {
        let trimmed = line.trim();
        if trimmed.starts_with('[') {
            in_table = trimmed.starts_with(&header);
            if in_table && header_line.is_none() {
                header_line = Some(index + 1);
            }
            continue;
        }
        if let (true, Some(key)) = (in_table, key) {
            let name = trimmed.split('=').next().unwrap_or("").trim().trim_matches('"');
            if name == key {
                return Some(index + 1);
            }
        }
    }
    // `[guests.x]` may only exist as the parent of `[guests.x.grants]`.
    header_line.or_else(|| {
        let prefix = format!("[{}.", table.join("."));
        source.lines().position(|l| l.trim().starts_with(&prefix)).map(|i| i + 1)
    })
}
