//! Where the LZ4 high-compression match finder is used: the recompression
//! pass over the deepest level's tables, never a flush or a compaction —
//! and what it writes reads back byte for byte (the same block format,
//! decoded by lz4_flex), also after a reopen.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests panic on surprises"
)]

use missive_engine::lsm::{Lsm, LsmOptions, WriteBatch};

const WORDS: &[&str] = &[
    "see", "you", "tomorrow", "at", "the", "office", "coffee", "later", "running", "late", "sorry",
    "weekend", "plans", "dinner", "sounds", "good",
];

/// Chat-like values: a few random bytes, then words.
fn value(rng: &mut fastrand::Rng) -> Vec<u8> {
    let mut v: Vec<u8> = (0..12).map(|_| rng.u8(..)).collect();
    while v.len() < 100 {
        v.extend_from_slice(WORDS[rng.usize(..WORDS.len())].as_bytes());
        v.push(b' ');
    }
    v
}

fn entries() -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut rng = fastrand::Rng::with_seed(7);
    (0..20_000u32)
        .map(|i| {
            let mut k = (i % 50).to_be_bytes().to_vec();
            k.extend_from_slice(&(u32::MAX - i).to_be_bytes());
            (k, value(&mut rng))
        })
        .collect()
}

/// Writes the entries in four flushes.
fn fill(lsm: &Lsm) {
    for chunk in entries().chunks(5_000) {
        let mut b = WriteBatch::new();
        for (k, v) in chunk {
            b.put(k, v);
        }
        lsm.apply(&b, None).unwrap();
        lsm.flush().unwrap();
    }
}

/// Writes the entries in four flushes, then compacts everything to the
/// bottom; returns the table bytes after the flushes and after the
/// compaction.
fn load(dir: &std::path::Path, bottom_hc_level: Option<i32>) -> (Lsm, u64, u64) {
    let lsm = Lsm::open(
        dir,
        LsmOptions {
            background: false,
            bottom_hc_level,
            ..LsmOptions::default()
        },
    )
    .unwrap();
    fill(&lsm);
    let flushed: u64 = lsm.stats().bytes_per_level.iter().sum();
    lsm.compact_all().unwrap();
    let compacted: u64 = lsm.stats().bytes_per_level.iter().sum();
    (lsm, flushed, compacted)
}

/// Whether every table of the deepest level was rewritten by the
/// recompression pass, and how many tables that level has.
fn deepest(lsm: &Lsm) -> (bool, usize) {
    let files = lsm.files();
    let level = files.iter().rev().find(|l| !l.is_empty()).unwrap();
    (level.iter().all(|f| f.recompressed), level.len())
}

#[test]
fn compactions_write_the_fast_compressor_and_the_pass_recompresses_the_bottom() {
    let (fast_dir, hc_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (fast, fast_flushed, fast_bottom) = load(fast_dir.path(), None);
    let (hc, hc_flushed, hc_bottom) = load(hc_dir.path(), Some(4));

    // Flushes and compactions use the fast compressor whatever the
    // setting: HC is never on their path.
    assert_eq!(fast_flushed, hc_flushed);
    assert_eq!(fast_bottom, hc_bottom);
    assert!(!deepest(&hc).0);

    // The pass rewrites the deepest level with HC: smaller, same reads.
    hc.recompress_all().unwrap();
    let recompressed: u64 = hc.stats().bytes_per_level.iter().sum();
    assert!(
        recompressed * 100 < fast_bottom * 95,
        "bottom level: {recompressed} bytes recompressed vs {fast_bottom} without"
    );
    let (all, tables) = deepest(&hc);
    assert!(all && tables > 0);
    assert_eq!(hc.stats().tables_recompressed as usize, tables);
    // Without an HC level there is nothing to do.
    fast.recompress_all().unwrap();
    assert_eq!(fast.stats().tables_recompressed, 0);
    assert!(!deepest(&fast).0);
    for (k, v) in entries() {
        assert_eq!(hc.get(&k).unwrap().as_deref(), Some(&v[..]));
        assert_eq!(fast.get(&k).unwrap().as_deref(), Some(&v[..]));
    }
    // A second pass finds nothing left.
    hc.recompress_all().unwrap();
    assert_eq!(hc.stats().tables_recompressed as usize, tables);

    // After a reopen: the tables read the same and the manifest still
    // says they were recompressed (the pass does not redo them).
    drop(hc);
    let hc = Lsm::open(
        hc_dir.path(),
        LsmOptions {
            background: false,
            ..LsmOptions::default()
        },
    )
    .unwrap();
    assert_eq!(deepest(&hc), (true, tables));
    hc.recompress_all().unwrap();
    assert_eq!(hc.stats().tables_recompressed, 0);
    for (k, v) in entries().iter().step_by(97) {
        assert_eq!(hc.get(k).unwrap().as_deref(), Some(&v[..]));
    }
}

/// The background thread runs the pass by itself once it is idle.
#[test]
fn the_background_thread_recompresses_when_idle() {
    let dir = tempfile::tempdir().unwrap();
    let lsm = Lsm::open(
        dir.path(),
        LsmOptions {
            background: true,
            ..LsmOptions::default()
        },
    )
    .unwrap();
    fill(&lsm);
    lsm.compact_all().unwrap();
    // Generous: the pass starts after 5 s without work, and the thread
    // wakes at least every 500 ms.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !deepest(&lsm).0 {
        assert!(std::time::Instant::now() < deadline, "{:?}", lsm.stats());
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    for (k, v) in entries().iter().step_by(31) {
        assert_eq!(lsm.get(k).unwrap().as_deref(), Some(&v[..]));
    }
}
