//! Versions whose values were written to a blob file before their batch
//! (`WriteBatch::put_blob_ref`): read from the memtable through the file,
//! flushed as references (the bytes are not written again), kept across a
//! restart by the table that references them; bad references refused
//! whole.

#![allow(clippy::unwrap_used, reason = "tests")]

use super::*;
use crate::lsm::blob::{BlobWriter, BLOB_FOOTER_LEN};

fn open(dir: &std::path::Path) -> Lsm {
    Lsm::open(
        dir,
        LsmOptions {
            background: false,
            ..LsmOptions::default()
        },
    )
    .unwrap()
}

/// Writes `values` into a new blob file of `lsm`'s, as a log keeping large
/// values apart would: returns their references.
fn write_blob_file(lsm: &Lsm, values: &[Vec<u8>]) -> Vec<BlobRef> {
    let id = lsm.inner.allocate_table_id().0;
    let mut w = BlobWriter::create(&lsm.inner.tables_dir, id).unwrap();
    let refs = values.iter().map(|v| w.append(v).unwrap()).collect();
    w.finish().unwrap();
    lsm.inner.sync_tables_dir().unwrap();
    refs
}

fn value(i: u8) -> Vec<u8> {
    (0..300_000u32).map(|j| (j as u8) ^ i).collect()
}

fn blob_files(dir: &std::path::Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir.join("tables"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".blob"))
        .collect();
    v.sort();
    v
}

#[test]
fn referenced_values_read_back_before_and_after_a_flush_and_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let lsm = open(dir.path());
    let refs = write_blob_file(&lsm, &[value(1), value(2)]);
    let mut b = WriteBatch::new();
    b.put(b"a", b"small")
        .put_blob_ref(b"b", &refs[0])
        .put_blob_ref(b"c", &refs[1]);
    lsm.apply(&b, None).unwrap();

    // From the memtable: get, the shared view, a scan either way.
    let check = |lsm: &Lsm| {
        assert_eq!(lsm.get(b"b").unwrap().unwrap(), value(1));
        assert_eq!(lsm.get_shared(b"c").unwrap().unwrap(), value(2));
        let fwd = lsm.scan(b"a", None, Direction::Forward, 10).unwrap();
        let want = vec![
            (b"a".to_vec(), b"small".to_vec()),
            (b"b".to_vec(), value(1)),
            (b"c".to_vec(), value(2)),
        ];
        assert_eq!(fwd, want);
        let rev = lsm.scan(b"a", None, Direction::Reverse, 10).unwrap();
        assert_eq!(rev, want.into_iter().rev().collect::<Vec<_>>());
    };
    check(&lsm);

    // Flushed: the table takes the references, no blob byte is written
    // again, and the one blob file is the one written above.
    let before = blob_files(dir.path());
    lsm.flush().unwrap();
    assert_eq!(lsm.stats().blob_bytes_written, 0);
    assert_eq!(blob_files(dir.path()), before);
    check(&lsm);

    // The table holds the file across a restart (no orphan).
    drop(lsm);
    let lsm = open(dir.path());
    assert_eq!(blob_files(dir.path()), before);
    check(&lsm);

    // Once no table references it, the file goes like a flush's would.
    let mut d = WriteBatch::new();
    d.delete(b"b").delete(b"c");
    lsm.apply(&d, None).unwrap();
    lsm.compact_full().unwrap();
    assert_eq!(lsm.get(b"b").unwrap(), None);
    assert!(
        blob_files(dir.path()).is_empty(),
        "{:?}",
        blob_files(dir.path())
    );
}

#[test]
fn a_newer_inline_version_hides_a_referenced_one_and_the_other_way() {
    let dir = tempfile::tempdir().unwrap();
    let lsm = open(dir.path());
    let refs = write_blob_file(&lsm, &[value(3)]);
    let mut b = WriteBatch::new();
    b.put(b"k", b"old").put_blob_ref(b"k", &refs[0]);
    lsm.apply(&b, None).unwrap();
    assert_eq!(lsm.get(b"k").unwrap().unwrap(), value(3));
    let mut b = WriteBatch::new();
    b.put(b"k", b"new");
    lsm.apply(&b, None).unwrap();
    assert_eq!(lsm.get(b"k").unwrap().unwrap(), b"new");
    lsm.flush().unwrap();
    assert_eq!(lsm.get(b"k").unwrap().unwrap(), b"new");
}

#[test]
fn a_reference_outside_its_file_or_to_no_file_is_refused_and_nothing_applied() {
    let dir = tempfile::tempdir().unwrap();
    let lsm = open(dir.path());
    let refs = write_blob_file(&lsm, &[value(4)]);
    let outside = BlobRef {
        offset: refs[0].offset + 1_000_000,
        ..refs[0]
    };
    let mut b = WriteBatch::new();
    b.put(b"x", b"1").put_blob_ref(b"y", &outside);
    let err = lsm.apply(&b, None).unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(_)), "{err}");
    let nowhere = BlobRef {
        file: refs[0].file + 1000,
        ..refs[0]
    };
    let mut b = WriteBatch::new();
    b.put(b"x", b"1").put_blob_ref(b"y", &nowhere);
    let err = lsm.apply(&b, None).unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(_)), "{err}");
    // The same words from the owner's read of its own file.
    assert!(matches!(
        lsm.blob_value(&nowhere),
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        lsm.blob_value(&outside),
        Err(Error::InvalidArgument(_))
    ));
    assert_eq!(&lsm.blob_value(&refs[0]).unwrap()[..], value(4).as_slice());
    assert_eq!(lsm.get(b"x").unwrap(), None);
    assert_eq!(lsm.get(b"y").unwrap(), None);
}

#[test]
fn a_damaged_referenced_value_is_corruption_from_the_memtable_too() {
    let dir = tempfile::tempdir().unwrap();
    let lsm = open(dir.path());
    let refs = write_blob_file(&lsm, &[value(5)]);
    // Flip a byte of the value on disk (the mapping sees the file).
    let path = blob::blob_path(&lsm.inner.tables_dir, refs[0].file);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[refs[0].offset as usize + 1000] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();
    let mut b = WriteBatch::new();
    b.put_blob_ref(b"z", &refs[0]);
    lsm.apply(&b, None).unwrap();
    let err = lsm.get(b"z").unwrap_err();
    assert!(matches!(err, Error::Corruption { .. }), "{err}");
    assert!(lsm.scan(b"", None, Direction::Forward, 10).is_err());
}

/// A file shared by a table (earlier references, flushed) and the
/// memtable (later ones): when a compaction leaves no table referencing
/// it, the memtable's references keep it, so the table the memtable
/// becomes finds it after a restart.
#[test]
fn a_file_the_memtable_still_references_outlives_its_last_table() {
    let dir = tempfile::tempdir().unwrap();
    let lsm = open(dir.path());
    let refs = write_blob_file(&lsm, &[value(6), value(7)]);
    let mut b = WriteBatch::new();
    b.put_blob_ref(b"first", &refs[0]);
    lsm.apply(&b, None).unwrap();
    lsm.flush().unwrap();
    let mut d = WriteBatch::new();
    d.delete(b"first");
    lsm.apply(&d, None).unwrap();
    lsm.flush().unwrap();
    // Only the memtable references the file once this merge is installed
    // (the tombstone drops the first reference at the bottom level).
    let mut b = WriteBatch::new();
    b.put_blob_ref(b"second", &refs[1]);
    lsm.apply(&b, None).unwrap();
    let before = blob_files(dir.path());
    lsm.compact_tables_full().unwrap();
    assert_eq!(blob_files(dir.path()), before, "the file stays");
    assert_eq!(lsm.get(b"first").unwrap(), None);
    lsm.flush().unwrap();
    drop(lsm);
    assert_eq!(blob_files(dir.path()), before);
    let lsm = open(dir.path());
    assert_eq!(lsm.get(b"second").unwrap().unwrap(), value(7));
}

/// A pinned file survives restarts with no table referencing it, until its
/// owner unpins it; then it goes at once.
#[test]
fn a_pinned_file_outlives_restarts_until_unpinned() {
    let dir = tempfile::tempdir().unwrap();
    let lsm = open(dir.path());
    let mut w = lsm.create_pinned_blob_file().unwrap();
    let r = w.append(&value(8)).unwrap();
    let id = w.finish().unwrap();
    assert_eq!(r.file, id);
    // Referenced from the memtable only, then a crash (no flush).
    let mut b = WriteBatch::new();
    b.put_blob_ref(b"k", &r);
    lsm.apply(&b, None).unwrap();
    drop(lsm);
    let lsm = open(dir.path());
    assert_eq!(lsm.pinned_blob_files(), vec![id]);
    assert_eq!(blob_files(dir.path()).len(), 1);
    // The owner applies the reference again (its log's replay).
    lsm.apply(&b, None).unwrap();
    assert_eq!(lsm.get(b"k").unwrap().unwrap(), value(8));
    lsm.flush().unwrap();
    // Unpinned while a table references it: it stays, across a restart.
    lsm.unpin_blob_file(id).unwrap();
    assert!(lsm.pinned_blob_files().is_empty());
    drop(lsm);
    let lsm = open(dir.path());
    assert_eq!(lsm.get(b"k").unwrap().unwrap(), value(8));
    // Its last reference gone, it goes.
    let mut d = WriteBatch::new();
    d.delete(b"k");
    lsm.apply(&d, None).unwrap();
    lsm.compact_full().unwrap();
    assert!(blob_files(dir.path()).is_empty());
}

/// Unpinned with no reference anywhere: deleted now. A pin whose file was
/// never finished (a crash mid-write) is listed at open for the owner.
#[test]
fn unpinning_an_unreferenced_file_deletes_it_and_unfinished_ones_are_listed() {
    let dir = tempfile::tempdir().unwrap();
    let lsm = open(dir.path());
    let mut w = lsm.create_pinned_blob_file().unwrap();
    w.append(&value(9)).unwrap();
    let done = w.finish().unwrap();
    let mut torn = lsm.create_pinned_blob_file().unwrap();
    let torn_id = torn.id();
    torn.append(&value(10)).unwrap();
    drop(torn);
    drop(lsm);
    let lsm = open(dir.path());
    assert_eq!(lsm.pinned_blob_files(), vec![done, torn_id]);
    // The unfinished one never synced: sealed empty, nothing in it can be
    // referenced.
    let r = BlobRef {
        file: torn_id,
        offset: 24,
        len: 10,
        crc: 0,
    };
    let mut b = WriteBatch::new();
    b.put_blob_ref(b"x", &r);
    assert!(lsm.apply(&b, None).is_err());
    lsm.unpin_blob_file(torn_id).unwrap();
    lsm.unpin_blob_file(done).unwrap();
    lsm.unpin_blob_file(done).unwrap();
    assert!(blob_files(dir.path()).is_empty());
    drop(lsm);
    let lsm = open(dir.path());
    assert!(lsm.pinned_blob_files().is_empty());
}

fn put_ref(lsm: &Lsm, key: &[u8], r: &BlobRef) -> Result<SeqNo> {
    let mut b = WriteBatch::new();
    b.put_blob_ref(key, r);
    lsm.apply(&b, None)
}

/// The write-once layout's file: one pinned file appended to for a long
/// time, each value referenced a sync after its append — from the
/// memtable, from tables flushed while the file still grows, after it is
/// finished and after a restart — with no blob byte written twice.
#[test]
fn a_growing_pinned_file_is_referenced_a_sync_after_each_append() {
    let dir = tempfile::tempdir().unwrap();
    let lsm = open(dir.path());
    let mut w = lsm.create_pinned_blob_file().unwrap();
    let id = w.id();
    let r1 = w.append(&value(1)).unwrap();
    // Not synced: not referable, and nothing of the batch applied.
    let mut b = WriteBatch::new();
    b.put(b"inline", b"x").put_blob_ref(b"a", &r1);
    assert!(matches!(
        lsm.apply(&b, None),
        Err(Error::InvalidArgument(_))
    ));
    assert_eq!(lsm.get(b"inline").unwrap(), None);
    let len1 = w.sync().unwrap();
    assert_eq!(len1, r1.offset + u64::from(r1.len));
    assert_eq!(w.synced_len(), len1);
    put_ref(&lsm, b"a", &r1).unwrap();
    assert_eq!(lsm.get(b"a").unwrap().unwrap(), value(1));

    // The next value, given in pieces: refused until its sync (and not
    // readable by the owner either), then read from the same memtable as
    // the first (which now holds the longer mapping).
    let v2 = value(2);
    let r2 = w.append_parts(&[&v2[..1], &[], &v2[1..]]).unwrap();
    assert_eq!(w.len(), r2.offset + u64::from(r2.len));
    assert!(matches!(
        put_ref(&lsm, b"b", &r2),
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        lsm.blob_value(&r2),
        Err(Error::InvalidArgument(_))
    ));
    w.sync().unwrap();
    assert_eq!(&lsm.blob_value(&r2).unwrap()[..], v2.as_slice());
    assert_eq!(&lsm.blob_value(&r1).unwrap()[..], value(1).as_slice());
    put_ref(&lsm, b"b", &r2).unwrap();
    assert_eq!(lsm.get(b"a").unwrap().unwrap(), value(1));
    assert_eq!(lsm.get(b"b").unwrap().unwrap(), value(2));

    // A flush while the file grows: the table references it as it is.
    lsm.flush().unwrap();
    let r3 = w.append(&value(3)).unwrap();
    w.sync().unwrap();
    put_ref(&lsm, b"c", &r3).unwrap();
    lsm.flush().unwrap();
    for (k, i) in [(&b"a"[..], 1), (b"b", 2), (b"c", 3)] {
        assert_eq!(lsm.get(k).unwrap().unwrap(), value(i), "{k:?}");
    }
    assert_eq!(
        lsm.stats().blob_bytes_written,
        0,
        "a blob byte written twice"
    );

    // Finished: still read the same; verified whole, footer included.
    assert_eq!(w.finish().unwrap(), id);
    assert_eq!(lsm.get(b"b").unwrap().unwrap(), value(2));
    lsm.verify().unwrap();
    drop(lsm);
    let lsm = open(dir.path());
    assert_eq!(lsm.pinned_blob_files(), vec![id]);
    for (k, i) in [(&b"a"[..], 1), (b"b", 2), (b"c", 3)] {
        assert_eq!(lsm.get(k).unwrap().unwrap(), value(i), "{k:?}");
    }
    lsm.verify().unwrap();
    assert_eq!(blob_files(dir.path()).len(), 1);
}

/// A crash while a pinned file grows leaves it without a footer and with
/// a torn tail: the restart seals it after its last whole record, the
/// tables referencing its synced values read them, the owner's replay may
/// apply its references again, and a reference into the torn tail is
/// refused.
#[test]
fn an_unfinished_pinned_file_left_by_a_crash_is_sealed_after_its_last_whole_record() {
    let dir = tempfile::tempdir().unwrap();
    let lsm = open(dir.path());
    let mut w = lsm.create_pinned_blob_file().unwrap();
    let id = w.id();
    let r1 = w.append(&value(4)).unwrap();
    let r2 = w.append(&value(5)).unwrap();
    w.sync().unwrap();
    put_ref(&lsm, b"a", &r1).unwrap();
    lsm.flush().unwrap();
    put_ref(&lsm, b"b", &r2).unwrap();
    // Appended, never synced: the crash takes the writer and the memtable.
    let lost = w.append(&value(6)).unwrap();
    drop(w);
    drop(lsm);
    // What a torn write leaves after the synced records: half a record.
    let path = dir.path().join("tables").join(format!("{id:020}.blob"));
    let mut bytes = std::fs::read(&path).unwrap();
    let whole = bytes.len();
    bytes.extend_from_slice(&200_000u32.to_le_bytes());
    bytes.extend_from_slice(&[0xab; 1000]);
    std::fs::write(&path, &bytes).unwrap();

    let lsm = open(dir.path());
    assert_eq!(lsm.pinned_blob_files(), vec![id]);
    let sealed = crate::lsm::blob::BlobFile::open(&path, id).unwrap();
    assert_eq!((sealed.records, sealed.verify().unwrap()), (2, 2));
    assert_eq!(sealed.size(), (whole + BLOB_FOOTER_LEN) as u64);
    drop(sealed);
    assert_eq!(lsm.get(b"a").unwrap().unwrap(), value(4));
    assert_eq!(
        lsm.get(b"b").unwrap(),
        None,
        "the memtable went with the crash"
    );
    put_ref(&lsm, b"b", &r2).unwrap();
    assert_eq!(lsm.get(b"b").unwrap().unwrap(), value(5));
    let torn = BlobRef {
        offset: whole as u64 + 8,
        len: 100,
        ..lost
    };
    assert!(matches!(
        put_ref(&lsm, b"c", &torn),
        Err(Error::InvalidArgument(_))
    ));
    lsm.flush().unwrap();
    lsm.verify().unwrap();
    // The owner lets go; the tables keep the file until their references
    // go, then it goes.
    lsm.unpin_blob_file(id).unwrap();
    assert_eq!(blob_files(dir.path()).len(), 1);
    drop(lsm);
    let lsm = open(dir.path());
    assert_eq!(lsm.get(b"b").unwrap().unwrap(), value(5));
    let mut d = WriteBatch::new();
    d.delete(b"a").delete(b"b");
    lsm.apply(&d, None).unwrap();
    lsm.compact_full().unwrap();
    assert!(blob_files(dir.path()).is_empty());
}

/// A file finished after tables took references to it while it grew (they
/// hold the mapping from then) counts its values for the garbage rule:
/// once unpinned, a full compaction copies the live values out and the
/// deleted ones leave the disk with the file.
#[test]
fn a_file_finished_after_growing_is_reclaimed_like_any_other() {
    let dir = tempfile::tempdir().unwrap();
    let lsm = open(dir.path());
    let mut w = lsm.create_pinned_blob_file().unwrap();
    let id = w.id();
    let ra = w.append(&value(7)).unwrap();
    let rb = w.append(&value(8)).unwrap();
    w.sync().unwrap();
    put_ref(&lsm, b"a", &ra).unwrap();
    put_ref(&lsm, b"b", &rb).unwrap();
    lsm.flush().unwrap();
    w.finish().unwrap();
    lsm.unpin_blob_file(id).unwrap();
    let mut d = WriteBatch::new();
    d.delete(b"a");
    lsm.apply(&d, None).unwrap();
    lsm.compact_full().unwrap();
    assert_eq!(lsm.get(b"b").unwrap().unwrap(), value(8));
    assert_eq!(lsm.get(b"a").unwrap(), None);
    let files = blob_files(dir.path());
    assert_eq!(files.len(), 1, "{files:?}");
    assert_ne!(
        files[0],
        format!("{id:020}.blob"),
        "the file with the deleted value stays"
    );
}
