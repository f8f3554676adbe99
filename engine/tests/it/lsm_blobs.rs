//! Blob files (`lsm/blob.rs`): large values live outside the tables, and
//! the disk they hold is given back once most of a file is dead — by the
//! compaction thread's idle-time pass (`reclaim_blobs`), not only by a full
//! compaction (the model test checks that one after every full
//! compaction).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests panic on surprises"
)]

use std::path::Path;

use missive_engine::lsm::{Lsm, LsmOptions, PickerConfig, WriteBatch};

fn value(i: u8) -> Vec<u8> {
    (0..100_000u32).map(|j| (j as u8).wrapping_mul(i)).collect()
}

fn key(i: u8) -> Vec<u8> {
    vec![0x70, 0, i]
}

fn open(dir: &Path) -> Lsm {
    Lsm::open(
        dir,
        LsmOptions {
            background: false,
            blob_threshold: Some(64 << 10),
            // Every flush is compacted into level 1 at once.
            picker: PickerConfig {
                l0_trigger: 1,
                ..PickerConfig::default()
            },
            ..LsmOptions::default()
        },
    )
    .unwrap()
}

/// Applies `b`, flushes, and compacts everything into level 1.
fn write_settled(lsm: &Lsm, b: &WriteBatch) {
    lsm.apply(b, None).unwrap();
    lsm.flush().unwrap();
    lsm.compact_all().unwrap();
}

/// The blob files in the directory: (count, bytes).
fn on_disk(dir: &Path) -> (usize, u64) {
    let files: Vec<u64> = std::fs::read_dir(dir.join("tables"))
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().ends_with(".blob"))
        .map(|e| e.metadata().unwrap().len())
        .collect();
    (files.len(), files.iter().sum())
}

#[test]
fn a_blob_file_mostly_dead_is_rewritten_and_its_bytes_leave_the_disk() {
    let dir = tempfile::tempdir().unwrap();
    let lsm = open(dir.path());
    let mut b = WriteBatch::new();
    for i in 0..10 {
        b.put(key(i), value(i));
    }
    write_settled(&lsm, &b);
    let (files, full) = on_disk(dir.path());
    assert_eq!(files, 1, "one flush, one blob file");
    assert!(full > 1_000_000, "ten values of 100 kB: {full} bytes");

    // Eight of ten deleted, the deletions compacted into level 1: the
    // references are gone, the file is not (two of its values live).
    let mut b = WriteBatch::new();
    for i in 0..8 {
        b.delete(key(i));
    }
    write_settled(&lsm, &b);
    assert_eq!(on_disk(dir.path()), (1, full));

    lsm.reclaim_blobs().unwrap();
    let (files, left) = on_disk(dir.path());
    assert_eq!(
        files, 1,
        "the old file replaced by one holding the live values"
    );
    assert!(
        (200_000..260_000).contains(&left),
        "two values of 100 kB left, {left} bytes on disk"
    );
    for i in 0..10 {
        let want = (i >= 8).then(|| value(i));
        assert_eq!(lsm.get(&key(i)).unwrap(), want, "key {i}");
    }
    lsm.verify().unwrap();

    // A file with less than half garbage is left alone: one of three
    // values deleted.
    let mut b = WriteBatch::new();
    b.put(key(20), value(20));
    b.put(key(21), value(21));
    b.put(key(22), value(22));
    write_settled(&lsm, &b);
    let mut b = WriteBatch::new();
    b.delete(key(20));
    write_settled(&lsm, &b);
    let before = on_disk(dir.path());
    lsm.reclaim_blobs().unwrap();
    assert_eq!(
        on_disk(dir.path()),
        before,
        "a third dead is not worth a rewrite"
    );

    // And across a reopen every live value still reads back.
    drop(lsm);
    let lsm = open(dir.path());
    for i in [8, 9, 21, 22] {
        assert_eq!(lsm.get(&key(i)).unwrap(), Some(value(i)), "key {i}");
    }
    assert_eq!(lsm.get(&key(20)).unwrap(), None);
    lsm.verify().unwrap();
}

#[test]
fn a_shared_value_reads_like_a_copy_and_outlives_its_blob_file() {
    let dir = tempfile::tempdir().unwrap();
    let lsm = open(dir.path());
    let mut b = WriteBatch::new();
    for i in 0..4 {
        b.put(key(i), value(i));
    }
    // Below the blob threshold: kept in the table itself.
    b.put(key(9), b"small");
    lsm.apply(&b, None).unwrap();

    // In the memtable, then in the tables (a blob file for the large ones).
    let shared = |i: u8| lsm.get_shared(&key(i)).unwrap().map(|v| v.to_vec());
    assert_eq!(shared(0), Some(value(0)), "from the memtable");
    lsm.flush().unwrap();
    lsm.compact_all().unwrap();
    assert_eq!(on_disk(dir.path()).0, 1);
    for i in [0, 1, 2, 3, 9] {
        assert_eq!(shared(i), lsm.get(&key(i)).unwrap(), "key {i}");
    }
    assert_eq!(shared(9).as_deref(), Some(&b"small"[..]));
    assert_eq!(shared(7), None);

    // A view taken, then every value deleted and compacted away: the file
    // is obsolete but stays while the view holds it (a download in
    // flight reads on), and leaves the disk when the view is dropped.
    let held = lsm.get_shared(&key(2)).unwrap().unwrap();
    let mut b = WriteBatch::new();
    for i in 0..4 {
        b.delete(key(i));
    }
    write_settled(&lsm, &b);
    lsm.reclaim_blobs().unwrap();
    assert_eq!(shared(2), None, "deleted");
    assert_eq!(on_disk(dir.path()).0, 1, "held by the view");
    assert_eq!(&held[..], &value(2)[..], "the view reads on");
    drop(held);
    assert_eq!(on_disk(dir.path()).0, 0, "gone with the last holder");
}
