use std::io::Write;
use std::os::unix::fs::PermissionsExt;

use super::*;

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// A state dir's digests file and an artifact file `bytes` in a temp dir.
struct Fixture {
    _dir: tempfile::TempDir,
    digests: Digests,
    artifact: PathBuf,
}

fn fixture(bytes: &[u8]) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let artifact = dir.path().join("guest.cwasm");
    std::fs::write(&artifact, bytes).unwrap();
    let digests = Digests::new(dir.path().join("digests"));
    Fixture { _dir: dir, digests, artifact }
}

/// As if the file had been hashed long after its last change.
fn remember_as_settled(f: &Fixture, digest: &str) -> Stamp {
    let stamp = Stamp::of(&f.artifact).unwrap();
    f.digests.remember(&stamp, SystemTime::now() + SETTLE * 4, digest);
    stamp
}

/// Rewrites `path` in place (same inode, same size) and puts its mtime back:
/// only its ctime can tell. Waits past the filesystem clock's granularity
/// first, so the ctime differs from the one of the first write.
fn rewrite_in_place_keeping_mtime(path: &Path, bytes: &[u8]) {
    let mtime = std::fs::metadata(path).unwrap().modified().unwrap();
    std::thread::sleep(Duration::from_millis(25));
    let mut file = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    file.write_all(bytes).unwrap();
    file.set_modified(mtime).unwrap();
    drop(file);
    assert_eq!(std::fs::metadata(path).unwrap().modified().unwrap(), mtime);
}

#[test]
fn a_settled_file_s_digest_is_remembered_and_the_file_is_not_read_again() {
    let f = fixture(b"first version");
    let remembered = "ab".repeat(32);
    remember_as_settled(&f, &remembered);
    let stamp = Stamp::of(&f.artifact).unwrap();
    // Not the file's sha256: it was not hashed.
    assert_eq!(of_file(&f.artifact, Some(&f.digests)).unwrap(), (remembered, stamp));
}

#[test]
fn an_artifact_rewritten_in_place_with_the_same_size_and_mtime_gets_its_new_digest() {
    let f = fixture(b"first version");
    remember_as_settled(&f, &sha256_hex(b"first version"));
    rewrite_in_place_keeping_mtime(&f.artifact, b"other version");
    assert_eq!(of_file(&f.artifact, Some(&f.digests)).unwrap().0, sha256_hex(b"other version"));
}

#[test]
fn a_file_changed_less_than_the_settle_time_before_its_hash_is_not_remembered() {
    let f = fixture(b"first version");
    let (digest, _) = of_file(&f.artifact, Some(&f.digests)).unwrap();
    assert_eq!(digest, sha256_hex(b"first version"));
    assert!(f.digests.entries().is_empty(), "a file written a moment ago could change within its timestamp's tick");
    std::fs::write(&f.artifact, b"other version").unwrap();
    assert_eq!(of_file(&f.artifact, Some(&f.digests)).unwrap().0, sha256_hex(b"other version"));
}

#[test]
fn a_replaced_file_is_hashed_again() {
    let f = fixture(b"first version");
    remember_as_settled(&f, &sha256_hex(b"first version"));
    let next = f.artifact.with_extension("new");
    std::fs::write(&next, b"other version").unwrap();
    std::fs::rename(&next, &f.artifact).unwrap();
    assert_eq!(of_file(&f.artifact, Some(&f.digests)).unwrap().0, sha256_hex(b"other version"));
}

#[test]
fn a_garbled_digests_file_is_ignored_and_replaced_by_a_valid_one() {
    let f = fixture(b"first version");
    let stamp = Stamp::of(&f.artifact).unwrap();
    let settled = Entry { stamp, hashed_at_ns: stamp.ctime_ns + 10 * 1_000_000_000, digest: "ab".repeat(32) };
    let good = settled.line();
    let mut garbage: Vec<u8> = vec![0xff, 0xfe, 0, b'\n'];
    for broken in [
        good.replace("v1", "v2"),
        good.replace(&"ab".repeat(32), &"AB".repeat(32)),
        good.replace(&"ab".repeat(32), "abab"),
        good.trim_end().to_string() + " extra\n",
        good[..good.len() / 2].to_string() + "\n",
        good.replacen(' ', " -", 2),
        "v1 1 2 3 4 5 6 99999999999999999999999999999999999999999999 x\n".into(),
    ] {
        garbage.extend_from_slice(broken.as_bytes());
    }
    std::fs::write(&f.digests.path, &garbage).unwrap();
    assert_eq!(f.digests.known(&stamp), None);
    assert_eq!(of_file(&f.artifact, Some(&f.digests)).unwrap().0, sha256_hex(b"first version"));
    remember_as_settled(&f, &"cd".repeat(32));
    assert_eq!(f.digests.entries().len(), 1);
    assert_eq!(f.digests.known(&stamp), Some("cd".repeat(32)));
}

#[test]
fn a_digests_file_others_could_write_is_ignored() {
    let f = fixture(b"first version");
    let stamp = remember_as_settled(&f, &"ab".repeat(32));
    std::fs::set_permissions(&f.digests.path, std::fs::Permissions::from_mode(0o666)).unwrap();
    assert_eq!(f.digests.known(&stamp), None);
}

#[test]
fn the_digests_file_keeps_the_most_recently_hashed_files() {
    let f = fixture(b"first version");
    let stamp = Stamp::of(&f.artifact).unwrap();
    let later = SystemTime::now() + SETTLE * 4;
    for ino in 0..(MAX_ENTRIES as u64 + 8) {
        let other = Stamp { ino: stamp.ino.wrapping_add(ino + 1), ..stamp };
        f.digests.remember(&other, later + Duration::from_secs(ino), &"ab".repeat(32));
    }
    let entries = f.digests.entries();
    assert_eq!(entries.len(), MAX_ENTRIES);
    assert!(entries.iter().all(|e| e.stamp.ino > stamp.ino.wrapping_add(8)), "the oldest went first");
}

#[test]
fn without_digests_every_load_hashes() {
    let f = fixture(b"first version");
    remember_as_settled(&f, &"ab".repeat(32));
    assert_eq!(of_file(&f.artifact, None).unwrap().0, sha256_hex(b"first version"));
}
