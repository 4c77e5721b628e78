//! The secrets file against a local attacker and a concurrent writer
//! (issue 21): the temp file is never one planted for us, and the host and
//! the CLI never lose each other's updates.

use std::sync::Arc;

use super::*;

#[test]
fn a_symlink_planted_at_the_temp_file_s_name_is_never_followed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("secrets.toml");
    let victim = dir.path().join("victim");
    std::fs::write(&victim, b"must stay").unwrap();
    // The names the next writes of this process will try.
    let next = TEMP_WRITES.load(std::sync::atomic::Ordering::Relaxed);
    for n in next..next + 12 {
        let name = format!(".secrets.toml{TEMP_MARK}{}-{n}", std::process::id());
        std::os::unix::fs::symlink(&victim, dir.path().join(name)).unwrap();
    }
    write_atomic(&path, b"\"a.b\" = \"new\"\n").expect("another name is used");
    assert_eq!(std::fs::read(&victim).unwrap(), b"must stay");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "\"a.b\" = \"new\"\n");
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
}

#[test]
fn concurrent_sets_from_two_stores_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("secrets.toml");
    let host = Arc::new(SecretStore::open(&path).unwrap());
    let cli = Arc::new(SecretStore::open(&path).unwrap());
    let writers: Vec<_> = [("host", host.clone()), ("cli", cli)]
        .into_iter()
        .map(|(who, store)| {
            std::thread::spawn(move || {
                for i in 0..40 {
                    store.set(&format!("{who}.n{i}"), &format!("value-{who}-{i}"), None, true).unwrap();
                }
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    let reread = SecretStore::open(&path).unwrap();
    for who in ["host", "cli"] {
        for i in 0..40 {
            let name = format!("{who}.n{i}");
            assert_eq!(reread.value(&name), Some(format!("value-{who}-{i}")), "{name} was lost");
        }
    }
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_name() != "secrets.toml")
        .collect();
    assert!(leftovers.is_empty(), "no lock or temp file left behind: {leftovers:?}");
}
