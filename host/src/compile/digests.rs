//! The sha256 of guest component files, remembered across starts in
//! `state_dir/cache/digests`, so a restart does not hash the artifacts
//! again: on a CPU without SHA instructions (Raspberry Pi 3, 4, Zero 2 W)
//! hashing the shipped guests' 3.75 MB was most of the instructions to
//! `/ready` (README, "Where a cold start goes").
//!
//! A digest is a guest's version, which `/guests`, run records, swaps and
//! rollback compare, so a stale one must never be returned for changed
//! bytes. An entry is keyed by the file's device, inode, size, mtime and
//! ctime, and trusted only when the file had not changed for
//! [`SETTLE`] when its bytes were hashed. Why that is enough: the kernel
//! sets ctime to the current time (at its clock's granularity) on every
//! write, truncate, rename over, or `touch`, and no one can set it back, so
//! any change after the hash gives the file a ctime at least about the
//! time of hashing, later than the remembered ctime by more than the
//! coarsest timestamp granularity (2 s on FAT). A file still being written
//! when it is hashed (ctime recent) is hashed again at every start until it
//! settles.
//!
//! The file is a cache: one line per file, written without `fsync`; a
//! missing, truncated, garbled or foreign-owned file, or a line that does
//! not parse, is ignored and the file is hashed.

use std::io::Read as _;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sha2::{Digest as _, Sha256};

/// How long a file must have been unchanged when it was hashed for its
/// digest to be trusted later: above the coarsest timestamp granularity of
/// a filesystem an artifact may live on (FAT: 2 s).
pub const SETTLE: Duration = Duration::from_secs(3);

/// Most files remembered; the entries hashed longest ago go first.
const MAX_ENTRIES: usize = 32;

/// A larger file is not a digest cache this host wrote: it is ignored.
const MAX_FILE: u64 = 64 * 1024;

/// The buffer [`of_file`] reads through.
const READ_BUFFER: usize = 64 * 1024;

/// The format's tag, first on every line.
const TAG: &str = "v1";

/// Serialises this process's read-modify-writes of the file (guests load
/// in parallel); another process cannot share the state dir.
static WRITING: Mutex<()> = Mutex::new(());

/// What identifies a file's bytes without reading them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
}

impl Stamp {
    /// The stamp of the file at `path` (following symlinks, as reading does).
    pub fn of(path: &Path) -> std::io::Result<Stamp> {
        Ok(Stamp::from_metadata(&std::fs::metadata(path)?))
    }

    /// The stamp of an open file.
    pub fn of_open(file: &std::fs::File) -> std::io::Result<Stamp> {
        Ok(Stamp::from_metadata(&file.metadata()?))
    }

    fn from_metadata(meta: &std::fs::Metadata) -> Stamp {
        Stamp {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
            ctime_ns: i128::from(meta.ctime()) * 1_000_000_000 + i128::from(meta.ctime_nsec()),
        }
    }

    /// Whether bytes hashed at `hashed_at_ns` had then been unchanged for [`SETTLE`].
    fn settled_at(&self, hashed_at_ns: i128) -> bool {
        hashed_at_ns - self.mtime_ns.max(self.ctime_ns) > SETTLE.as_nanos() as i128
    }
}

/// One remembered digest.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    stamp: Stamp,
    hashed_at_ns: i128,
    digest: String,
}

impl Entry {
    fn parse(line: &str) -> Option<Entry> {
        let mut words = line.split(' ');
        if words.next()? != TAG {
            return None;
        }
        let mut number = || words.next()?.parse::<i128>().ok();
        let (dev, ino, size) = (number()?, number()?, number()?);
        let (mtime_ns, ctime_ns, hashed_at_ns) = (number()?, number()?, number()?);
        let digest = words.next()?;
        let hex = digest.len() == 64 && digest.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if !hex || words.next().is_some() {
            return None;
        }
        let stamp = Stamp {
            dev: u64::try_from(dev).ok()?,
            ino: u64::try_from(ino).ok()?,
            size: u64::try_from(size).ok()?,
            mtime_ns,
            ctime_ns,
        };
        Some(Entry { stamp, hashed_at_ns, digest: digest.to_string() })
    }

    fn line(&self) -> String {
        let Stamp { dev, ino, size, mtime_ns, ctime_ns } = self.stamp;
        format!("{TAG} {dev} {ino} {size} {mtime_ns} {ctime_ns} {} {}\n", self.hashed_at_ns, self.digest)
    }

    /// Whether this entry may stand for the bytes of a file stamped `stamp` now.
    fn answers(&self, stamp: &Stamp) -> bool {
        self.stamp == *stamp && stamp.settled_at(self.hashed_at_ns)
    }
}

/// The remembered digests, in the file at `path`.
#[derive(Debug, Clone)]
pub struct Digests {
    path: PathBuf,
}

impl Digests {
    /// Digests remembered in the file `path` (read at each look-up).
    pub fn new(path: PathBuf) -> Digests {
        Digests { path }
    }

    /// The remembered digest of the bytes of a file stamped `stamp`, if one
    /// may be trusted.
    pub fn known(&self, stamp: &Stamp) -> Option<String> {
        self.entries().into_iter().find(|e| e.answers(stamp)).map(|e| e.digest)
    }

    /// Remembers `digest` for a file stamped `stamp` whose bytes were read
    /// after `hashed_at` (a time taken before the stamp); nothing when the
    /// file had changed too recently to be trusted later. Errors are
    /// ignored: the file is only a cache.
    pub fn remember(&self, stamp: &Stamp, hashed_at: SystemTime, digest: &str) {
        let hashed_at_ns = to_ns(hashed_at);
        let entry = Entry { stamp: *stamp, hashed_at_ns, digest: digest.to_string() };
        if !stamp.settled_at(hashed_at_ns) || Entry::parse(entry.line().trim_end()).is_none() {
            return;
        }
        let _writing = WRITING.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut entries = self.entries();
        entries.retain(|e| (e.stamp.dev, e.stamp.ino) != (stamp.dev, stamp.ino));
        entries.push(entry);
        entries.sort_by_key(|e| std::cmp::Reverse(e.hashed_at_ns));
        entries.truncate(MAX_ENTRIES);
        let text: String = entries.iter().map(Entry::line).collect();
        if let Err(error) = crate::secrets::replace_unsynced(&self.path, text.as_bytes()) {
            tracing::debug!(file = %self.path.display(), %error, "cannot remember the components' digests");
        }
    }

    /// The entries that parse, from a file this host's user alone could write.
    fn entries(&self) -> Vec<Entry> {
        let Ok(meta) = std::fs::symlink_metadata(&self.path) else { return Vec::new() };
        if !meta.is_file() || meta.len() > MAX_FILE || crate::private_dir::check(&self.path, &meta).is_err() {
            return Vec::new();
        }
        let Ok(bytes) = std::fs::read(&self.path) else { return Vec::new() };
        String::from_utf8_lossy(&bytes).lines().filter_map(Entry::parse).collect()
    }
}

/// The sha256 (hex) of the file at `path` and its stamp before it was
/// hashed: remembered in `digests` when given and they know it, else
/// hashed (and remembered there). The file is read through a small buffer,
/// never copied whole into memory: a 2 MB artifact read into a fresh
/// buffer cost more in page faults than its hash.
pub fn of_file(path: &Path, digests: Option<&Digests>) -> std::io::Result<(String, Stamp)> {
    let hashed_at = SystemTime::now();
    let mut file = std::fs::File::open(path)?;
    let before = Stamp::of_open(&file)?;
    if let Some(digest) = digests.and_then(|d| d.known(&before)) {
        return Ok((digest, before));
    }
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; READ_BUFFER];
    loop {
        match file.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => hasher.update(&buffer[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let digest = hex::encode(hasher.finalize());
    // Remembered only if the file was the same before and after the read.
    if let Some(digests) = digests
        && Stamp::of_open(&file).is_ok_and(|after| after == before)
    {
        digests.remember(&before, hashed_at, &digest);
    }
    Ok((digest, before))
}

fn to_ns(t: SystemTime) -> i128 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(after) => after.as_nanos() as i128,
        Err(before) => -(before.duration().as_nanos() as i128),
    }
}

#[cfg(test)]
mod tests;
