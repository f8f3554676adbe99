//! What a flush keeps: every version some reader can still see, and no
//! other (the LSM model test checks the reads across flushes at random; this
//! pins down which versions go).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests panic on surprises"
)]

use missive_engine::lsm::{Lsm, LsmOptions, WriteBatch};

fn put(lsm: &Lsm, key: &[u8], value: &[u8]) {
    let mut b = WriteBatch::new();
    b.put(key, value);
    lsm.apply(&b, None).unwrap();
}

fn delete(lsm: &Lsm, key: &[u8]) {
    let mut b = WriteBatch::new();
    b.delete(key);
    lsm.apply(&b, None).unwrap();
}

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

#[test]
fn a_flush_leaves_out_versions_no_reader_can_see() {
    let tmp = tempfile::tempdir().unwrap();
    let lsm = open(tmp.path());
    // An older table holding c0: if the flush lost the tombstone below,
    // c0 would come back.
    put(&lsm, b"c", b"c0");
    lsm.flush().unwrap();
    assert_eq!(lsm.stats().flush_versions_dropped, 0);

    for v in [&b"a1"[..], b"a2", b"a3"] {
        put(&lsm, b"a", v);
    }
    put(&lsm, b"c", b"c1");
    delete(&lsm, b"c");
    put(&lsm, b"b", b"b1");
    let snap = lsm.snapshot();
    put(&lsm, b"b", b"b2");
    // Hidden from the current view but not from `snap`: kept.
    put(&lsm, b"d", b"d1");
    put(&lsm, b"d", b"d2");
    lsm.flush().unwrap();

    // a1 and a2 (a3 hides them from everyone) and c1 (the tombstone does).
    assert_eq!(lsm.stats().flush_versions_dropped, 3);
    assert_eq!(lsm.get(b"a").unwrap().as_deref(), Some(&b"a3"[..]));
    assert_eq!(lsm.get(b"b").unwrap().as_deref(), Some(&b"b2"[..]));
    assert_eq!(
        lsm.get_at(b"b", &snap).unwrap().as_deref(),
        Some(&b"b1"[..])
    );
    assert_eq!(lsm.get(b"c").unwrap(), None);
    assert_eq!(lsm.get_at(b"d", &snap).unwrap(), None);
    assert_eq!(lsm.get(b"d").unwrap().as_deref(), Some(&b"d2"[..]));

    // A version whose successor is not yet published is still the one
    // readers see: kept.
    let mut b = WriteBatch::new();
    b.put(b"a", b"a4");
    let seq = lsm.apply_unpublished(&b, None).unwrap();
    lsm.flush().unwrap();
    assert_eq!(lsm.stats().flush_versions_dropped, 3);
    assert_eq!(lsm.get(b"a").unwrap().as_deref(), Some(&b"a3"[..]));
    lsm.publish(seq);
    assert_eq!(lsm.get(b"a").unwrap().as_deref(), Some(&b"a4"[..]));
    drop(snap);

    // The same answers from the tables alone after a reopen.
    drop(lsm);
    let lsm = open(tmp.path());
    assert_eq!(lsm.get(b"a").unwrap().as_deref(), Some(&b"a4"[..]));
    assert_eq!(lsm.get(b"b").unwrap().as_deref(), Some(&b"b2"[..]));
    assert_eq!(lsm.get(b"c").unwrap(), None);
}
