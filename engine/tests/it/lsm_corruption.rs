//! Corruption tests for the LSM's files: a data block, the index, the
//! footer, the manifest, and a missing table each give a clear error naming
//! the file (and offset); `verify()` walks every checksum.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests panic on surprises"
)]

use std::path::{Path, PathBuf};

use missive_engine::keys::{message_key, ConversationId, Timestamp};
use missive_engine::lsm::{Lsm, LsmOptions, WriteBatch};
use missive_engine::Error;

fn options() -> LsmOptions {
    LsmOptions {
        block_size: 512,
        compression: false,
        background: false,
        ..LsmOptions::default()
    }
}

/// A store with one flushed table of 200 messages; returns the table path.
fn build(dir: &Path) -> PathBuf {
    let lsm = Lsm::open(dir, options()).unwrap();
    for i in 0..200u64 {
        let mut b = WriteBatch::new();
        b.put(
            message_key(ConversationId(5), Timestamp(i + 1)),
            vec![i as u8; 60],
        );
        lsm.apply(&b, None).unwrap();
    }
    lsm.flush().unwrap();
    drop(lsm);
    let tables = dir.join("tables");
    let mut names: Vec<_> = std::fs::read_dir(&tables)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    names.sort();
    assert_eq!(names.len(), 1);
    names.remove(0)
}

fn flip(path: &Path, at: usize) {
    let mut b = std::fs::read(path).unwrap();
    b[at] ^= 0x20;
    std::fs::write(path, b).unwrap();
}

fn corruption(err: Error) -> (PathBuf, u64, String) {
    match err {
        Error::Corruption {
            file,
            offset,
            reason,
        } => (file, offset, reason),
        other => panic!("expected a corruption error, got {other}"),
    }
}

#[test]
fn flipped_data_block_is_reported_by_verify_and_by_reads() {
    let tmp = tempfile::tempdir().unwrap();
    let table = build(tmp.path());
    flip(&table, 100); // inside the first data block
    let lsm = Lsm::open(tmp.path(), options()).unwrap(); // blocks are checked lazily
    let (file, offset, reason) = corruption(lsm.verify().unwrap_err());
    assert_eq!((file, offset), (table.clone(), 0));
    assert!(reason.contains("data block checksum"), "{reason}");
    // Block 0 holds the newest messages (keys run newest first): a read
    // through it fails the same way instead of returning garbage.
    let err = lsm.latest(ConversationId(5), 10).unwrap_err();
    assert!(err.is_corruption(), "{err}");
    let err = lsm
        .get(&message_key(ConversationId(5), Timestamp(200)))
        .unwrap_err();
    assert!(err.is_corruption(), "{err}");
}

#[test]
fn flipped_index_and_footer_fail_open() {
    for (what, from_end) in [("index", 64 + 8), ("footer", 20)] {
        let tmp = tempfile::tempdir().unwrap();
        let table = build(tmp.path());
        let len = std::fs::metadata(&table).unwrap().len() as usize;
        flip(&table, len - from_end);
        let (file, _, reason) = corruption(Lsm::open(tmp.path(), options()).unwrap_err());
        assert_eq!(file, table, "{what}");
        assert!(reason.contains(what), "{what}: {reason}");
    }
}

#[test]
fn manifest_damage() {
    let tmp = tempfile::tempdir().unwrap();
    build(tmp.path());
    let lsm = Lsm::open(tmp.path(), options()).unwrap();
    let mut b = WriteBatch::new();
    b.put(b"extra", b"v");
    lsm.apply(&b, None).unwrap();
    lsm.flush().unwrap(); // a second record after the snapshot record
    drop(lsm);
    let current = std::fs::read_to_string(tmp.path().join("CURRENT")).unwrap();
    let manifest = tmp.path().join(current.trim_end());
    let good = std::fs::read(&manifest).unwrap();

    // A torn final record is a crash mid-append: ignored, the rest loads.
    std::fs::write(&manifest, &good[..good.len() - 3]).unwrap();
    let lsm = Lsm::open(tmp.path(), options()).unwrap();
    assert!(lsm
        .get(&message_key(ConversationId(5), Timestamp(1)))
        .unwrap()
        .is_some());
    drop(lsm);

    // A bad record followed by an intact one is corruption: make a
    // manifest with two records and damage the first.
    let lsm = Lsm::open(tmp.path(), options()).unwrap();
    let mut b = WriteBatch::new();
    b.put(b"more", b"v");
    lsm.apply(&b, None).unwrap();
    lsm.flush().unwrap();
    drop(lsm);
    let current = std::fs::read_to_string(tmp.path().join("CURRENT")).unwrap();
    let manifest = tmp.path().join(current.trim_end());
    flip(&manifest, 16 + 10); // inside the first record, after the 16-byte header
    let (file, offset, reason) = corruption(Lsm::open(tmp.path(), options()).unwrap_err());
    assert_eq!((file, offset), (manifest.clone(), 16));
    assert!(reason.contains("followed by intact"), "{reason}");

    // A damaged header.
    let mut bytes = std::fs::read(&manifest).unwrap();
    bytes[16 + 10] ^= 0x20; // undo
    bytes[1] ^= 0x20;
    std::fs::write(&manifest, &bytes).unwrap();
    let (_, _, reason) = corruption(Lsm::open(tmp.path(), options()).unwrap_err());
    assert!(reason.contains("magic"), "{reason}");
}

#[test]
fn a_missing_table_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let table = build(tmp.path());
    std::fs::remove_file(&table).unwrap();
    let (file, _, reason) = corruption(Lsm::open(tmp.path(), options()).unwrap_err());
    assert_eq!(file, table);
    assert!(reason.contains("missing"), "{reason}");
}

#[test]
fn verify_counts_every_version_of_a_healthy_store() {
    let tmp = tempfile::tempdir().unwrap();
    build(tmp.path());
    let lsm = Lsm::open(tmp.path(), options()).unwrap();
    assert_eq!(lsm.verify().unwrap(), 200);
}
