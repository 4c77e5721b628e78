use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use super::*;

#[test]
fn placeholders_are_not_usable() {
    for p in ["", "  ", "your_watttime_username", "your-password", "changeme", "<token>", "CHANGEME"] {
        assert!(is_placeholder(p), "{p:?} should be a placeholder");
    }
    for real in ["alice", "s3cr3t-Pa55", "eyJhbGciOi"] {
        assert!(!is_placeholder(real), "{real:?} is a real value");
    }
}

#[test]
fn set_persists_atomically_with_mode_0600_and_reloads() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("secrets.toml");
    let store = SecretStore::open(&path).unwrap();
    assert!(!store.is_usable("watttime.username"));
    store.set("watttime.username", "alice", None, true).unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let reopened = SecretStore::open(&path).unwrap();
    assert_eq!(reopened.value("watttime.username").as_deref(), Some("alice"));
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name() != "secrets.toml")
        .collect();
    assert!(leftovers.is_empty(), "no temp files left behind");
}

#[test]
fn a_world_readable_file_is_refused_with_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("secrets.toml");
    std::fs::write(&path, "\"a.b\" = \"v\"\n").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = SecretStore::open(&path).unwrap_err().to_string();
    assert!(err.contains("chmod 600"), "{err}");
}

#[test]
fn dotted_bare_keys_and_quoted_keys_both_read() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("secrets.toml");
    write_atomic(&path, b"watttime.username = \"alice\"\n\"watttime.password\" = \"pw-1234\"\n").unwrap();
    let store = SecretStore::open(&path).unwrap();
    assert_eq!(store.value("watttime.username").as_deref(), Some("alice"));
    assert_eq!(store.value("watttime.password").as_deref(), Some("pw-1234"));
}

#[test]
fn changes_by_another_process_are_seen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("secrets.toml");
    let running = SecretStore::open(&path).unwrap();
    assert!(!running.is_usable("x.token"));
    let cli = SecretStore::open(&path).unwrap();
    cli.set("x.token", "abcdefgh", None, true).unwrap();
    assert!(running.is_usable("x.token"));
}

#[test]
fn ttl_expires_and_redaction_hides_values() {
    let dir = tempfile::tempdir().unwrap();
    let store = SecretStore::open(&dir.path().join("s.toml")).unwrap();
    store.set("t", "tok-123456", Some(Duration::from_secs(3600)), false).unwrap();
    assert!(store.expires_in("t").unwrap() > Duration::from_secs(3500));
    assert_eq!(store.scrubber_for(["t"]).scrub_str("Bearer tok-123456 ok"), "Bearer [redacted] ok");
    store.set("gone", "old-value", Some(Duration::ZERO), false).unwrap();
    assert!(!store.is_usable("gone"));
    assert!(!dir.path().join("s.toml").exists(), "ephemeral values are never written");
}

#[test]
fn a_ttl_past_the_clock_s_end_means_no_expiry_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let store = SecretStore::open(&dir.path().join("secrets.toml")).unwrap();
    store.set("t.token", "value-1", Some(Duration::from_secs(u64::MAX)), false).unwrap();
    assert_eq!(store.value("t.token").as_deref(), Some("value-1"), "the store still works");
    assert_eq!(store.expires_in("t.token"), None);
}

#[test]
fn a_failed_atomic_write_leaves_no_temp_file() {
    let dir = tempfile::tempdir().unwrap();
    // The rename fails: a directory is in the way.
    let path = dir.path().join("in-the-way");
    std::fs::create_dir(&path).unwrap();
    std::fs::write(path.join("keep"), b"x").unwrap();
    assert!(write_atomic(&path, b"artifact").is_err());
    let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names, ["in-the-way"], "no .tmp- file left behind");
}
