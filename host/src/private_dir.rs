//! The host's private directories and files: `state_dir` and what lives in
//! it (the artifact cache, the stores, the outbox, the admin socket).
//!
//! Two promises, whatever the umask: what the host creates is its own
//! alone (directories 0700, files 0600), and the host refuses a directory
//! that someone else could write into. The artifact cache holds native
//! code the host maps and runs: a `.cwasm` planted there by another local
//! user would run as the host. So `state_dir` and the cache must be owned
//! by the user the host runs as and not be writable by group or others;
//! otherwise the host stops with the path and the `chmod`/`chown` fix.

use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Why a directory or file of the host is not safe to use.
#[derive(Debug, thiserror::Error)]
pub enum UnsafePath {
    #[error("{path}: cannot create or inspect it: {source}")]
    Io { path: String, source: io::Error },
    #[error("{path} is not a directory; point host.state_dir at a directory")]
    NotDirectory { path: String },
    #[error(
        "{path} is writable by group or others (mode {mode:03o}): another user could plant code the host runs; run: chmod go-w {path}"
    )]
    Writable { path: String, mode: u32 },
    #[error(
        "{path} is owned by uid {owner}, not by the user wattedge runs as (uid {uid}): its owner could plant code the host runs; run: chown {uid} {path} (or run wattedge as uid {owner})"
    )]
    NotOwned { path: String, owner: u32, uid: u32 },
}

/// Creates `dir` (and missing parents) with mode 0700, whatever the umask;
/// an existing directory is left as it is.
pub fn create_dir(dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    // The umask may have taken bits away: set exactly 0700.
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

/// Creates `dir` if missing (0700), then checks it is safe (see [`check`]).
pub fn ensure_dir(dir: &Path) -> Result<(), UnsafePath> {
    create_dir(dir).map_err(|source| UnsafePath::Io { path: dir.display().to_string(), source })?;
    let meta = std::fs::metadata(dir).map_err(|source| UnsafePath::Io { path: dir.display().to_string(), source })?;
    if !meta.is_dir() {
        return Err(UnsafePath::NotDirectory { path: dir.display().to_string() });
    }
    check(dir, &meta)
}

/// Refuses `path` (with `meta`, its metadata) when group or others may
/// write it or another user than this process's owns it.
pub fn check(path: &Path, meta: &std::fs::Metadata) -> Result<(), UnsafePath> {
    let path = path.display().to_string();
    // SAFETY: geteuid cannot fail and has no side effects.
    let uid = unsafe { libc::geteuid() };
    if meta.uid() != uid {
        return Err(UnsafePath::NotOwned { path, owner: meta.uid(), uid });
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(UnsafePath::Writable { path, mode });
    }
    Ok(())
}

/// Creates `path` empty with mode 0600 (whatever the umask) unless it
/// exists; an existing file that group or others can read is set to 0600.
pub fn create_file(path: &Path) -> io::Result<()> {
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    if file.metadata()?.mode() & 0o777 != 0o600 {
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_directory_is_0700_and_accepted() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("a/b/state");
        ensure_dir(&dir).unwrap();
        assert_eq!(std::fs::metadata(&dir).unwrap().mode() & 0o777, 0o700);
        let file = dir.join("data.redb");
        create_file(&file).unwrap();
        assert_eq!(std::fs::metadata(&file).unwrap().mode() & 0o777, 0o600);
    }

    #[test]
    fn a_directory_others_can_write_is_refused_with_the_chmod_fix() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("state");
        std::fs::create_dir(&dir).unwrap();
        for mode in [0o777, 0o775, 0o757] {
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode)).unwrap();
            let err = ensure_dir(&dir).unwrap_err();
            assert!(matches!(err, UnsafePath::Writable { .. }), "{err}");
            let text = err.to_string();
            assert!(text.contains(&dir.display().to_string()) && text.contains("chmod go-w"), "{text}");
        }
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        ensure_dir(&dir).expect("readable by others, writable only by its owner");
    }

    #[test]
    fn a_directory_of_another_user_is_refused_with_the_chown_fix() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("state");
        std::fs::create_dir(&dir).unwrap();
        // SAFETY: geteuid has no side effects.
        let uid = unsafe { libc::geteuid() };
        if std::os::unix::fs::chown(&dir, Some(uid + 4242), None).is_err() {
            eprintln!("skipped: this user cannot give a directory away (run as root to check ownership)");
            return;
        }
        let err = ensure_dir(&dir).unwrap_err();
        assert!(matches!(err, UnsafePath::NotOwned { .. }), "{err}");
        assert!(err.to_string().contains(&format!("chown {uid} {}", dir.display())), "{err}");
    }

    #[test]
    fn a_data_file_others_could_read_is_made_private() {
        let root = tempfile::tempdir().unwrap();
        let file = root.path().join("state.redb");
        std::fs::write(&file, b"").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        create_file(&file).unwrap();
        assert_eq!(std::fs::metadata(&file).unwrap().mode() & 0o777, 0o600);
    }
}
