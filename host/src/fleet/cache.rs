//! What a board keeps of its registry under `state_dir/oci`: verified
//! blobs by content (`blobs/sha256/HEX`, 0600 in 0700 directories, like the
//! artifact cache: a precompiled artifact is native code) and, in
//! `refs.json`, what each reference last resolved to, so a board that boots
//! without network runs what it ran before.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use super::Digest;

/// Why the cache could not be used.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("{path}: {error}")]
    Io { path: String, error: std::io::Error },
    #[error("oci cache: {0}")]
    Unsafe(#[from] crate::private_dir::UnsafePath),
}

/// What a reference resolved to, as remembered.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// The digest of what the tag (or digest) named: an index or a manifest.
    pub top: String,
    /// The component or artifact the host chose from it.
    pub artifact: String,
    /// Whether `artifact` is precompiled (native) code rather than `.wasm`.
    pub precompiled: bool,
    /// The signature blobs seen, checked again against today's trusted keys
    /// when the record is used offline.
    pub signatures: Vec<String>,
    /// Unix seconds of the resolution.
    pub resolved_at: u64,
    /// A digest the tag named that this board refused (failed `init` or
    /// health gate, see `supervisor::follow`): not taken again, at start
    /// either, until the tag names another digest.
    pub refused: Option<String>,
}

impl Record {
    fn from_json(value: &Value) -> Option<Record> {
        let text = |key: &str| value.get(key).and_then(Value::as_str).map(str::to_string);
        let signatures = value
            .get("signatures")
            .and_then(Value::as_array)
            .map_or_else(Vec::new, |items| items.iter().filter_map(|s| s.as_str().map(str::to_string)).collect());
        Some(Record {
            top: text("top")?,
            artifact: text("artifact")?,
            precompiled: value.get("precompiled").and_then(Value::as_bool)?,
            signatures,
            resolved_at: value.get("resolved_at").and_then(Value::as_u64).unwrap_or(0),
            refused: text("refused"),
        })
    }
}

fn to_json(records: &BTreeMap<String, Record>) -> Value {
    let entries = records.iter().map(|(reference, r)| {
        let record = json!({
            "top": r.top,
            "artifact": r.artifact,
            "precompiled": r.precompiled,
            "signatures": r.signatures,
            "resolved_at": r.resolved_at,
            "refused": r.refused,
        });
        (reference.clone(), record)
    });
    Value::Object(entries.collect())
}

/// The cache directory.
#[derive(Debug, Clone)]
pub struct OciCache {
    dir: PathBuf,
}

impl OciCache {
    /// The cache in `state_dir/oci`.
    pub fn new(state_dir: &Path) -> OciCache {
        OciCache { dir: state_dir.join("oci") }
    }

    /// Where blob `digest` lives (whether or not it is there).
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.blobs_dir().join(digest.hex())
    }

    /// The blob directory, created and checked private.
    pub fn prepare(&self) -> Result<PathBuf, CacheError> {
        let dir = self.blobs_dir();
        for d in [&self.dir, &self.dir.join("blobs"), &dir] {
            crate::private_dir::ensure_dir(d)?;
        }
        Ok(dir)
    }

    /// Whether blob `digest` is present and its bytes still hash to it (a
    /// torn or altered file is removed, so it is fetched again).
    pub fn verified(&self, digest: &Digest) -> bool {
        let path = self.blob_path(digest);
        match std::fs::File::open(&path).and_then(hash_file) {
            Ok(actual) if &actual == digest => true,
            Ok(_) => {
                tracing::warn!(path = %path.display(), "cached blob does not match its digest; removed");
                let _ = std::fs::remove_file(&path);
                false
            }
            Err(_) => false,
        }
    }

    /// The record of `reference`.
    pub fn record(&self, reference: &str) -> Option<Record> {
        self.records().remove(reference)
    }

    /// Remembers what `reference` resolved to.
    pub fn save_record(&self, reference: &str, record: Record) -> Result<(), CacheError> {
        self.prepare()?;
        let mut records = self.records();
        records.insert(reference.to_string(), record);
        let path = self.records_path();
        let text = serde_json::to_vec(&to_json(&records)).unwrap_or_default();
        crate::secrets::write_atomic(&path, &text)
            .map_err(|error| CacheError::Io { path: path.display().to_string(), error })
    }

    /// Every record; an unreadable file is no records (a fresh resolve
    /// writes it again). Read through `serde_json::Value`: see
    /// `manifest::Document::parse` for why.
    pub fn records(&self) -> BTreeMap<String, Record> {
        let value: Value = std::fs::read(self.records_path())
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default();
        let Some(map) = value.as_object() else { return BTreeMap::new() };
        map.iter().filter_map(|(reference, v)| Some((reference.clone(), Record::from_json(v)?))).collect()
    }

    /// Deletes every blob not in `keep`, and the partial downloads an
    /// earlier process left (`HEX.part-PID-N` of another pid; a download
    /// of this process may be under way); the number of files removed.
    pub fn collect_garbage(&self, keep: &HashSet<Digest>) -> Result<usize, CacheError> {
        let dir = self.blobs_dir();
        let io = |error| CacheError::Io { path: dir.display().to_string(), error };
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(error) => return Err(io(error)),
        };
        let mut removed = 0;
        for entry in entries {
            let entry = entry.map_err(io)?;
            let name = entry.file_name();
            if unused(&name.to_string_lossy(), keep) {
                std::fs::remove_file(entry.path()).map_err(io)?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    fn records_path(&self) -> PathBuf {
        self.dir.join("refs.json")
    }

    fn blobs_dir(&self) -> PathBuf {
        self.dir.join("blobs").join("sha256")
    }
}

/// Whether blob file `name` is neither kept nor a download of this process.
fn unused(name: &str, keep: &HashSet<Digest>) -> bool {
    match name.split_once(".part-") {
        Some((_, part)) => part.split('-').next() != Some(std::process::id().to_string().as_str()),
        None => Digest::from_hex(name).is_ok_and(|digest| !keep.contains(&digest)),
    }
}

fn hash_file(mut file: std::fs::File) -> std::io::Result<Digest> {
    use sha2::Digest as _;
    let mut hasher = sha2::Sha256::new();
    std::io::copy(&mut file, &mut hasher)?;
    Digest::from_hex(&hex::encode(hasher.finalize())).map_err(std::io::Error::other)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_altered_blob_is_not_verified_and_is_removed() {
        let state = tempfile::tempdir().unwrap();
        let cache = OciCache::new(state.path());
        cache.prepare().unwrap();
        let digest = Digest::of(b"component");
        std::fs::write(cache.blob_path(&digest), b"component").unwrap();
        assert!(cache.verified(&digest));
        std::fs::write(cache.blob_path(&digest), b"c0mponent").unwrap();
        assert!(!cache.verified(&digest));
        assert!(!cache.blob_path(&digest).exists());
    }

    #[test]
    fn garbage_collection_keeps_only_the_blobs_named_and_this_process_s_downloads() {
        let state = tempfile::tempdir().unwrap();
        let cache = OciCache::new(state.path());
        let dir = cache.prepare().unwrap();
        let [running, previous, old] = [b"v3", b"v2", b"v1"].map(|bytes| {
            let digest = Digest::of(bytes);
            std::fs::write(cache.blob_path(&digest), bytes).unwrap();
            digest
        });
        let ours = format!("{}.part-{}-7", old.hex(), std::process::id());
        let earlier = format!("{}.part-1-3", old.hex());
        for name in [&ours, &earlier, &"notes.txt".to_string()] {
            std::fs::write(dir.join(name), b"x").unwrap();
        }
        let keep = HashSet::from([running.clone(), previous.clone()]);
        assert_eq!(cache.collect_garbage(&keep).unwrap(), 2, "v1 and the earlier process's partial download");
        let mut left: Vec<String> =
            std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        left.sort();
        let mut wanted = vec![running.hex().to_string(), previous.hex().to_string(), ours, "notes.txt".to_string()];
        wanted.sort();
        assert_eq!(left, wanted);
        assert_eq!(cache.collect_garbage(&keep).unwrap(), 0, "nothing more to collect");
    }

    #[test]
    fn garbage_collection_of_a_cache_never_used_removes_nothing() {
        let state = tempfile::tempdir().unwrap();
        assert_eq!(OciCache::new(state.path()).collect_garbage(&HashSet::new()).unwrap(), 0);
    }

    #[test]
    fn records_survive_a_new_cache_over_the_same_state_dir() {
        let state = tempfile::tempdir().unwrap();
        let record = Record {
            top: "sha256:aa".into(),
            artifact: "sha256:bb".into(),
            precompiled: false,
            signatures: vec![],
            resolved_at: 1,
            refused: Some("sha256:cc".into()),
        };
        OciCache::new(state.path()).save_record("oci://r/x:stable", record.clone()).unwrap();
        assert_eq!(OciCache::new(state.path()).record("oci://r/x:stable"), Some(record));
        assert_eq!(OciCache::new(state.path()).record("oci://r/x:other"), None);
    }
}
