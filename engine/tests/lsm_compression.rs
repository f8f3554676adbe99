//! Where the LZ4 high-compression match finder is used: tables a compaction
//! writes to the bottom level, and nothing else — and what it writes reads
//! back byte for byte (the same block format, decoded by lz4_flex).

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
    for chunk in entries().chunks(5_000) {
        let mut b = WriteBatch::new();
        for (k, v) in chunk {
            b.put(k, v);
        }
        lsm.apply(&b, None).unwrap();
        lsm.flush().unwrap();
    }
    let flushed: u64 = lsm.stats().bytes_per_level.iter().sum();
    lsm.compact_all().unwrap();
    let compacted: u64 = lsm.stats().bytes_per_level.iter().sum();
    (lsm, flushed, compacted)
}

#[test]
fn the_bottom_level_is_compressed_harder_and_reads_the_same() {
    let (fast_dir, hc_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (fast, fast_flushed, fast_bottom) = load(fast_dir.path(), None);
    let (hc, hc_flushed, hc_bottom) = load(hc_dir.path(), Some(4));

    // Flushes use the fast compressor whatever the setting.
    assert_eq!(fast_flushed, hc_flushed);
    // The bottom level is smaller with the high-compression finder.
    assert!(
        hc_bottom * 100 < fast_bottom * 95,
        "bottom level: {hc_bottom} bytes with HC vs {fast_bottom} without"
    );
    for (k, v) in entries() {
        assert_eq!(hc.get(&k).unwrap().as_deref(), Some(&v[..]));
        assert_eq!(fast.get(&k).unwrap().as_deref(), Some(&v[..]));
    }
    // And after a reopen (the tables, not the cache).
    drop(hc);
    let hc = Lsm::open(hc_dir.path(), LsmOptions::default()).unwrap();
    for (k, v) in entries().iter().step_by(97) {
        assert_eq!(hc.get(k).unwrap().as_deref(), Some(&v[..]));
    }
}
