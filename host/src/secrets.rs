//! The secrets store: a TOML file of `"name" = "value"` lines, mode 0600.
//!
//! Only the host reads values; guests see `is-set` and nothing else. The file
//! is re-read when it changes on disk, so `wattedge secrets set` (a separate
//! process) takes effect on a running host at the guest's next run. Writes go
//! through a temp file, fsync and rename, so a power cut leaves either the old
//! or the new file, never a torn one. Every write is a read-modify-write
//! under an exclusive `flock` on the file's directory (the file itself is
//! replaced at each write, so it cannot carry the lock), re-reading the file
//! first: the host and `wattedge secrets set` never lose each other's
//! updates.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub(crate) mod scrub;

/// Table in the file that records when persisted captured values expire.
const EXPIRES_TABLE: &str = "_expires";

/// Why the secrets file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    #[error("{path}: secrets file is readable by group or others (mode {mode:o}); run: chmod 600 {path}")]
    Permissions { path: String, mode: u32 },
    #[error("{path}: cannot read secrets file: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{path}: secrets file is not valid TOML ({message}); fix it or delete it and set the secrets again")]
    Parse { path: String, message: String },
    #[error("{path}: cannot write secrets file: {source}")]
    Write { path: String, source: std::io::Error },
    #[error("secret name {0:?} is not valid; use letters, digits, '.', '_' or '-'")]
    InvalidName(String),
}

#[derive(Clone)]
struct Entry {
    value: String,
    expires_at: Option<SystemTime>,
    persisted: bool,
}

#[derive(Default)]
struct Inner {
    entries: BTreeMap<String, Entry>,
    file_stamp: Option<(SystemTime, u64)>,
}

/// The host's secrets: persisted ones from the file and captured ones in memory.
pub struct SecretStore {
    path: PathBuf,
    inner: Mutex<Inner>,
}

impl std::fmt::Debug for SecretStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print values.
        f.debug_struct("SecretStore").field("path", &self.path).finish_non_exhaustive()
    }
}

impl SecretStore {
    /// Opens `path`; a missing file is an empty store. Refuses a file that
    /// group or others can read.
    pub fn open(path: &Path) -> Result<SecretStore, SecretsError> {
        let store = SecretStore { path: path.to_path_buf(), inner: Mutex::default() };
        store.reload_if_changed()?;
        Ok(store)
    }

    /// The file behind this store.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The value of `name`, for the host's egress path only.
    pub fn value(&self, name: &str) -> Option<String> {
        let _ = self.reload_if_changed();
        let inner = self.inner.lock().expect("secrets lock");
        inner.entries.get(name).filter(|e| !expired(e)).map(|e| e.value.clone())
    }

    /// True when `name` holds a value that is neither expired nor a template placeholder.
    pub fn is_usable(&self, name: &str) -> bool {
        self.value(name).is_some_and(|v| !is_placeholder(&v))
    }

    /// Time until a captured value expires.
    pub fn expires_in(&self, name: &str) -> Option<Duration> {
        let inner = self.inner.lock().expect("secrets lock");
        let entry = inner.entries.get(name).filter(|e| !expired(e))?;
        entry.expires_at?.duration_since(SystemTime::now()).ok()
    }

    /// Stores a value; `persist` writes the whole file atomically (0600).
    pub fn set(&self, name: &str, value: &str, ttl: Option<Duration>, persist: bool) -> Result<(), SecretsError> {
        if !valid_name(name) {
            return Err(SecretsError::InvalidName(name.to_string()));
        }
        // A TTL beyond what the clock can represent (a guest may pass any
        // u64) means no expiry, never a panic with the lock held.
        let expires_at = ttl.and_then(|t| SystemTime::now().checked_add(t));
        let entry = Entry { value: value.to_string(), expires_at, persisted: persist };
        if !persist {
            let _ = self.reload_if_changed();
            self.inner.lock().expect("secrets lock").entries.insert(name.to_string(), entry);
            return Ok(());
        }
        let _file_lock = self.lock_file()?;
        self.reload(true)?;
        let mut inner = self.inner.lock().expect("secrets lock");
        inner.entries.insert(name.to_string(), entry);
        self.persist(&mut inner)
    }

    /// The exclusive lock for a read-modify-write of the file: `flock` on
    /// its directory, released when the returned handle is dropped.
    fn lock_file(&self) -> Result<std::fs::File, SecretsError> {
        let write_error = |source| SecretsError::Write { path: self.path.display().to_string(), source };
        let dir = parent_dir(&self.path);
        crate::private_dir::create_dir(dir).map_err(write_error)?;
        let handle = std::fs::File::open(dir).map_err(write_error)?;
        handle.lock().map_err(write_error)?;
        Ok(handle)
    }

    /// Forgets `name`, from the file too if it was persisted.
    pub fn forget(&self, name: &str) -> Result<(), SecretsError> {
        let persisted = self.inner.lock().expect("secrets lock").entries.get(name).is_some_and(|e| e.persisted);
        let _file_lock = if persisted { Some(self.lock_file()?) } else { None };
        if persisted {
            self.reload(true)?;
        }
        let mut inner = self.inner.lock().expect("secrets lock");
        if let Some(entry) = inner.entries.remove(name)
            && entry.persisted
        {
            self.persist(&mut inner)?;
        }
        Ok(())
    }

    /// The values of `names`, expired ones included (an upstream may still
    /// echo them): what one guest's grants could have put into a request.
    pub fn values_of<'a>(&self, names: impl IntoIterator<Item = &'a str>) -> Vec<String> {
        let _ = self.reload_if_changed();
        let inner = self.inner.lock().expect("secrets lock");
        names.into_iter().filter_map(|n| inner.entries.get(n)).map(|e| e.value.clone()).collect()
    }

    /// A scrubber for the values of `names` and their JSON forms, e.g. for
    /// the log lines of a guest granted those secrets.
    pub fn scrubber_for<'a>(&self, names: impl IntoIterator<Item = &'a str>) -> scrub::Scrubber {
        scrub::Scrubber::new(scrub::with_json_forms(self.values_of(names)))
    }

    fn reload_if_changed(&self) -> Result<(), SecretsError> {
        self.reload(false)
    }

    /// Re-reads the file when it changed (or always, when `force`: under the
    /// write lock, a change within the mtime's granularity must not be missed).
    fn reload(&self, force: bool) -> Result<(), SecretsError> {
        let display = self.path.display().to_string();
        let meta = match std::fs::metadata(&self.path) {
            Ok(meta) => meta,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(source) => return Err(SecretsError::Read { path: display, source }),
        };
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(SecretsError::Permissions { path: display, mode });
        }
        let stamp = (meta.modified().unwrap_or(UNIX_EPOCH), meta.len());
        let mut inner = self.inner.lock().expect("secrets lock");
        if !force && inner.file_stamp == Some(stamp) {
            return Ok(());
        }
        let text = std::fs::read_to_string(&self.path)
            .map_err(|source| SecretsError::Read { path: display.clone(), source })?;
        let from_file = parse_file(&text).map_err(|message| SecretsError::Parse { path: display, message })?;
        inner.entries.retain(|_, e| !e.persisted);
        inner.entries.extend(from_file);
        inner.file_stamp = Some(stamp);
        Ok(())
    }

    fn persist(&self, inner: &mut Inner) -> Result<(), SecretsError> {
        let text = render_file(&inner.entries);
        write_atomic(&self.path, text.as_bytes())
            .map_err(|source| SecretsError::Write { path: self.path.display().to_string(), source })?;
        inner.file_stamp = std::fs::metadata(&self.path).ok().map(|m| (m.modified().unwrap_or(UNIX_EPOCH), m.len()));
        Ok(())
    }
}

fn expired(entry: &Entry) -> bool {
    entry.expires_at.is_some_and(|t| t <= SystemTime::now())
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name != EXPIRES_TABLE
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// Secret that holds the admin API's bearer token.
pub const ADMIN_TOKEN_SECRET: &str = "admin.token";

/// The admin token in `secrets`, when one is set and not a placeholder.
pub fn admin_token(secrets: &SecretStore) -> Option<String> {
    secrets.value(ADMIN_TOKEN_SECRET).filter(|t| !is_placeholder(t))
}

/// True for values that are clearly not real credentials: empty, or the
/// placeholders that templates and examples use.
pub fn is_placeholder(value: &str) -> bool {
    let v = value.trim();
    let lower = v.to_ascii_lowercase();
    v.is_empty()
        || (v.starts_with('<') && v.ends_with('>'))
        || lower.starts_with("your_")
        || lower.starts_with("your-")
        || ["changeme", "change_me", "change-me", "xxx", "todo", "placeholder", "secret", "password", "username"]
            .contains(&lower.as_str())
}

/// Reads `"a.b" = "v"` lines; dotted bare keys (`a.b = "v"`) nest in TOML, so
/// nested tables are flattened back into dotted names.
fn parse_file(text: &str) -> Result<BTreeMap<String, Entry>, String> {
    let table: toml::Table = toml::from_str(text).map_err(|e| e.message().replace('\n', " "))?;
    let mut expires = BTreeMap::new();
    if let Some(toml::Value::Table(t)) = table.get(EXPIRES_TABLE) {
        for (name, at) in t {
            if let Some(secs) = at.as_integer() {
                expires.insert(name.clone(), UNIX_EPOCH + Duration::from_secs(secs.max(0) as u64));
            }
        }
    }
    let mut entries = BTreeMap::new();
    flatten("", &table, &mut |name, value| {
        let expires_at = expires.get(&name).copied();
        entries.insert(name, Entry { value, expires_at, persisted: true });
    })?;
    Ok(entries)
}

fn flatten(prefix: &str, table: &toml::Table, add: &mut dyn FnMut(String, String)) -> Result<(), String> {
    for (key, value) in table {
        let name = if prefix.is_empty() { key.clone() } else { format!("{prefix}.{key}") };
        match value {
            _ if prefix.is_empty() && key == EXPIRES_TABLE => {}
            toml::Value::String(s) => add(name, s.clone()),
            toml::Value::Table(t) => flatten(&name, t, add)?,
            other => return Err(format!("{name} must be a string, found {}", other.type_str())),
        }
    }
    Ok(())
}

fn render_file(entries: &BTreeMap<String, Entry>) -> String {
    let mut out = String::from("# wattedge secrets: set with `wattedge secrets set NAME`. Keep this file mode 0600.\n");
    let mut expires = Vec::new();
    for (name, entry) in entries.iter().filter(|(_, e)| e.persisted) {
        out.push_str(&format!("{} = {}\n", toml_string(name), toml_string(&entry.value)));
        if let Some(at) = entry.expires_at.and_then(|t| t.duration_since(UNIX_EPOCH).ok()) {
            expires.push(format!("{} = {}\n", toml_string(name), at.as_secs()));
        }
    }
    if !expires.is_empty() {
        out.push_str(&format!("\n[{EXPIRES_TABLE}]\n"));
        out.extend(expires);
    }
    out
}

fn toml_string(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// What names [`write_atomic`]'s temp files (`.NAME.tmp-PID-N`).
const TEMP_MARK: &str = ".tmp-";

/// Whether `path` is a temp file of [`write_atomic`] (left behind by a
/// process that died mid-write, or being written now).
pub fn is_atomic_temp(path: &Path) -> bool {
    path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with('.') && n.contains(TEMP_MARK))
}

/// Writes `bytes` to `path` atomically with mode 0600: temp file in the same
/// directory, fsync, rename, fsync of the directory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    replace(path, bytes, true)
}

/// [`write_atomic`] without its `fsync`s, for a cache that may be lost or
/// garbled in a crash (a reader ignores what does not parse): a reader
/// sees the old file or the new one, never half of it.
pub fn replace_unsynced(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    replace(path, bytes, false)
}

fn replace(path: &Path, bytes: &[u8], sync: bool) -> std::io::Result<()> {
    let dir = parent_dir(path);
    crate::private_dir::create_dir(dir)?;
    let (tmp, file) = create_temp(dir, path)?;
    let written = fill(file, bytes, sync).and_then(|()| std::fs::rename(&tmp, path));
    if written.is_err() {
        // A full disk must not also fill up with half-written copies.
        let _ = std::fs::remove_file(&tmp);
    }
    written?;
    if sync { std::fs::File::open(dir)?.sync_all() } else { Ok(()) }
}

/// The directory `path` is in.
fn parent_dir(path: &Path) -> &Path {
    path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."))
}

/// Numbers [`create_temp`]'s names: unique per process and call, as two
/// threads may write the same path.
static TEMP_WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// A new temp file (0600) next to `path`, opened with `O_EXCL|O_NOFOLLOW`:
/// a file or symlink planted under its name is never followed or reused
/// (another name is tried instead).
fn create_temp(dir: &Path, path: &Path) -> std::io::Result<(PathBuf, std::fs::File)> {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("secrets");
    let mut attempts = 0;
    loop {
        let n = TEMP_WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = dir.join(format!(".{name}{TEMP_MARK}{}-{n}", std::process::id()));
        let opened = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp);
        match opened {
            Ok(file) => return Ok((tmp, file)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && attempts < 16 => attempts += 1,
            Err(e) => return Err(e),
        }
    }
}

/// Writes `bytes` into the new temp `file` (set to 0600 whatever the
/// umask) and flushes it to disk.
fn fill(mut file: std::fs::File, bytes: &[u8], sync: bool) -> std::io::Result<()> {
    file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    file.write_all(bytes)?;
    if sync { file.sync_all() } else { Ok(()) }
}

#[cfg(test)]
mod surface_tests;
#[cfg(test)]
mod tests;
