use std::sync::atomic::Ordering;

use super::*;

fn lines(n: u32, tag: &str) -> Vec<u8> {
    (0..n).map(|i| format!("m,t={tag} f={i}i {i}\n")).collect::<String>().into_bytes()
}

fn seg_files(dir: &Path) -> Vec<(u64, u64)> {
    segment::list(dir)
        .unwrap()
        .into_iter()
        .map(|id| (id, std::fs::metadata(segment::path(dir, id)).unwrap().len()))
        .collect()
}

#[test]
fn append_read_ack_reclaims_space() {
    let dir = tempfile::tempdir().unwrap();
    let ob = Outbox::open(dir.path(), 1 << 20).unwrap();
    ob.append(&lines(3, "a"), 3).unwrap();
    ob.append(&lines(2, "b"), 2).unwrap();
    let d = ob.depth();
    assert_eq!(d.points, 5);
    assert!(d.bytes > 0 && d.oldest_accepted.is_some());
    let first = ob.read_batch(3).unwrap().expect("a batch");
    assert_eq!((first.points, first.lines.clone()), (3, lines(3, "a")), "batch bounded by points, whole records");
    ob.ack(&first).unwrap();
    assert_eq!(ob.depth().points, 2);
    let second = ob.read_batch(100).unwrap().expect("second batch");
    assert_eq!(second.lines, lines(2, "b"));
    ob.ack(&second).unwrap();
    assert_eq!(ob.depth(), Depth::default());
    assert!(ob.read_batch(100).unwrap().is_none());
    assert_eq!(seg_files(dir.path()).len(), 1, "the active segment stays until the outbox is compacted");
    assert!(ob.compact().unwrap(), "a drained outbox compacts");
    assert_eq!(seg_files(dir.path()), vec![(2, 0)], "the acknowledged segment is deleted");
    assert!(!ob.compact().unwrap(), "nothing left to reclaim");
    ob.append(&lines(1, "c"), 1).unwrap();
    assert!(!ob.compact().unwrap(), "never while points wait");
    assert_eq!(ob.read_batch(100).unwrap().unwrap().lines, lines(1, "c"));
}

#[test]
fn one_write_is_one_record_even_above_the_batch_size() {
    let dir = tempfile::tempdir().unwrap();
    let ob = Outbox::open(dir.path(), 1 << 20).unwrap();
    ob.append(&lines(10, "a"), 10).unwrap();
    let batch = ob.read_batch(4).unwrap().unwrap();
    assert_eq!(batch.points, 10, "records are never split");
    assert_eq!(ob.counters().fsyncs.load(Ordering::Relaxed), 1, "one write, one fsync");
}

#[test]
fn torn_tail_is_cut_and_reported_not_fatal() {
    let dir = tempfile::tempdir().unwrap();
    {
        let ob = Outbox::open(dir.path(), 1 << 20).unwrap();
        for tag in ["a", "b", "c"] {
            ob.append(&lines(2, tag), 2).unwrap();
        }
    }
    let path = segment::path(dir.path(), 1);
    let len = std::fs::metadata(&path).unwrap().len();
    let record = segment::encode(0, 2, &lines(2, "c")).len() as u64;
    let cut = len - record / 2;
    File::options().write(true).open(&path).unwrap().set_len(cut).unwrap();
    let ob = Outbox::open(dir.path(), 1 << 20).expect("a torn tail never stops the open");
    assert_eq!(ob.counters().torn_records.load(Ordering::Relaxed), 1);
    assert_eq!(ob.counters().torn_bytes.load(Ordering::Relaxed), cut - (len - record));
    assert_eq!(ob.depth().points, 4);
    let batch = ob.read_batch(100).unwrap().unwrap();
    assert_eq!(batch.lines, [lines(2, "a"), lines(2, "b")].concat());
    ob.append(&lines(1, "d"), 1).unwrap();
    drop(ob);
    let ob = Outbox::open(dir.path(), 1 << 20).unwrap();
    assert_eq!(ob.counters().torn_records.load(Ordering::Relaxed), 0, "the cut was clean: appends after it are intact");
    assert_eq!(ob.depth().points, 5);
}

#[test]
fn restart_resumes_after_the_ack_cursor() {
    let dir = tempfile::tempdir().unwrap();
    {
        let ob = Outbox::open(dir.path(), 1 << 20).unwrap();
        ob.append(&lines(1, "a"), 1).unwrap();
        ob.append(&lines(1, "b"), 1).unwrap();
        let first = ob.read_batch(1).unwrap().unwrap();
        ob.ack(&first).unwrap();
    }
    let ob = Outbox::open(dir.path(), 1 << 20).unwrap();
    assert_eq!(ob.depth().points, 1);
    assert_eq!(ob.read_batch(10).unwrap().unwrap().lines, lines(1, "b"));
}

#[test]
fn second_open_of_the_same_dir_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let _ob = Outbox::open(dir.path(), 1 << 20).unwrap();
    let err = Outbox::open(dir.path(), 1 << 20).err().expect("locked");
    assert!(err.to_string().contains("in use by another wattedge process"), "{err}");
}

#[test]
fn full_outbox_refuses_new_writes_and_keeps_old_ones() {
    let dir = tempfile::tempdir().unwrap();
    let one = segment::encode(0, 5, &lines(5, "a")).len() as u64;
    let ob = Outbox::open(dir.path(), one * 2 + 1).unwrap();
    ob.append(&lines(5, "a"), 5).unwrap();
    ob.append(&lines(5, "a"), 5).unwrap();
    let err = ob.append(&lines(5, "a"), 5).unwrap_err();
    assert!(matches!(&err, StoreError::Unavailable(m) if m.starts_with("outbox full")), "{err}");
    assert_eq!(ob.counters().rejected_full.load(Ordering::Relaxed), 5);
    assert_eq!(ob.depth().points, 10);
    let batch = ob.read_batch(5).unwrap().unwrap();
    ob.ack(&batch).unwrap();
    ob.append(&lines(5, "a"), 5).expect("room again after an ack");
    let too_big = ob.append(&lines(50, "a"), 50).unwrap_err();
    assert!(matches!(too_big, StoreError::Invalid(_)), "a single write larger than the bound is invalid");
}

#[test]
fn a_segment_acknowledged_to_its_end_never_hides_the_next_one() {
    let dir = tempfile::tempdir().unwrap();
    let ob = Outbox::open(dir.path(), 64 << 20).unwrap();
    // The forwarder catches up while segment 1 is still the active one...
    ob.append(&vec![b'x'; 3 << 20], 1).unwrap();
    let batch = ob.read_batch(10).unwrap().expect("the first record");
    ob.ack(&batch).unwrap();
    // ...and the next write rotates: its record is in segment 2.
    let next = vec![b'y'; 2 << 20];
    ob.append(&next, 1).unwrap();
    assert_eq!(ob.depth().points, 1);
    let batch = ob.read_batch(10).unwrap().expect("the record after the rotation is read");
    assert_eq!(batch.lines, next);
    assert_eq!(segment::list(dir.path()).unwrap(), vec![2], "the acknowledged segment is gone");
}

#[test]
fn a_failed_fsync_refuses_every_write_it_covered() {
    let dir = tempfile::tempdir().unwrap();
    let ob = Outbox::open(dir.path(), 1 << 20).unwrap();
    let record = segment::encode(now_ns(), 1, &lines(1, "a"));
    // Two writers appended; the first one's fsync covers both and fails.
    let first = ob.append_locked(&mut ob.lock(), &record, 1).unwrap();
    let second = ob.append_locked(&mut ob.lock(), &record, 1).unwrap();
    ob.fail_syncs.store(1, Ordering::Relaxed);
    assert!(ob.sync_to(first).is_err());
    // The second fsync would succeed (Linux reports the error once): the
    // second writer must not be told its record is durable.
    let err = ob.sync_to(second).expect_err("covered by the failed fsync");
    assert!(err.to_string().contains("fsync"), "{err}");
    ob.append(&lines(1, "later"), 1).expect("later writes are fsynced anew");
}

#[test]
fn segments_rotate_and_acknowledged_ones_are_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let ob = Outbox::open(dir.path(), 64 << 20).unwrap();
    let big = vec![b'x'; 1 << 20];
    for _ in 0..6 {
        ob.append(&big, 1).unwrap();
    }
    assert_eq!(segment::list(dir.path()).unwrap(), vec![1, 2], "rotates past the segment target");
    while let Some(batch) = ob.read_batch(2).unwrap() {
        ob.ack(&batch).unwrap();
    }
    assert_eq!(segment::list(dir.path()).unwrap(), vec![2], "acknowledged inactive segments are deleted at once");
    ob.compact().unwrap();
    assert_eq!(seg_files(dir.path()), vec![(3, 0)], "acknowledged segments deleted, one empty active one left");
    assert_eq!(ob.depth(), Depth::default());
}

#[test]
fn concurrent_writers_share_one_fsync() {
    let dir = tempfile::tempdir().unwrap();
    let ob = Arc::new(Outbox::open(dir.path(), 1 << 20).unwrap());
    let held = ob.sync.lock().unwrap();
    let writers: Vec<_> = (0..4)
        .map(|i| {
            let ob = ob.clone();
            std::thread::spawn(move || ob.append(&lines(1, &i.to_string()), 1))
        })
        .collect();
    while ob.lock().appended < 4 {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    drop(held);
    for w in writers {
        w.join().unwrap().unwrap();
    }
    assert_eq!(ob.counters().fsyncs.load(Ordering::Relaxed), 1, "four waiting writers, one fsync");
    assert_eq!(ob.depth().points, 4);
}

#[test]
fn a_stale_ack_cursor_never_skips_newer_records() {
    let dir = tempfile::tempdir().unwrap();
    {
        let ob = Outbox::open(dir.path(), 1 << 20).unwrap();
        ob.append(&lines(1, "a"), 1).unwrap();
        let a = ob.read_batch(10).unwrap().unwrap();
        ob.ack(&a).unwrap();
        ob.append(&lines(1, "b"), 1).unwrap();
        ob.append(&lines(1, "c"), 1).unwrap();
    }
    // As if the cursor update after the drain had not reached the disk.
    let a_len = segment::encode(0, 1, &lines(1, "a")).len();
    std::fs::write(dir.path().join("ack"), format!("1 {a_len} 1\n")).unwrap();
    let ob = Outbox::open(dir.path(), 1 << 20).unwrap();
    assert_eq!(ob.depth().points, 2);
    assert_eq!(ob.read_batch(10).unwrap().unwrap().lines, [lines(1, "b"), lines(1, "c")].concat());
}

#[test]
fn the_next_batch_is_read_before_the_current_one_is_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let ob = Outbox::open(dir.path(), 64 << 20).unwrap();
    let big = vec![b'x'; 3 << 20];
    ob.append(&big, 1).unwrap();
    ob.append(&lines(2, "b"), 2).unwrap();
    ob.append(&big, 1).unwrap();
    assert_eq!(segment::list(dir.path()).unwrap(), vec![1, 2], "the third write starts segment 2");
    let first = ob.read_batch(1).unwrap().unwrap();
    let second = ob.read_batch_after(first.after(), 10).unwrap().unwrap();
    assert_eq!(second.lines, lines(2, "b"), "the rest of segment 1");
    let third = ob.read_batch_after(second.after(), 10).unwrap().unwrap();
    assert_eq!((third.points, third.lines.len()), (1, big.len()), "then segment 2");
    assert!(ob.read_batch_after(third.after(), 10).unwrap().is_none());
    for batch in [&first, &second, &third] {
        ob.ack(batch).unwrap();
    }
    assert_eq!(ob.depth(), Depth::default());
}
