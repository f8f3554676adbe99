//! Where the bottom level's compression (LZ4's high-compression match
//! finder, or zstd with a dictionary per table) is used: the recompression
//! pass over the deepest level's tables, never a flush or a compaction —
//! and what it writes reads back byte for byte, also after a reopen, with
//! values in blob files too; a damaged dictionary is named at open.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests panic on surprises"
)]

use missive_engine::lsm::{BottomCompression, Lsm, LsmOptions, WriteBatch};
use missive_engine::Error;

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
fn load(dir: &std::path::Path, bottom: Option<BottomCompression>) -> (Lsm, u64, u64) {
    let lsm = Lsm::open(
        dir,
        LsmOptions {
            background: false,
            bottom_compression: bottom,
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

const CODECS: [BottomCompression; 2] = [BottomCompression::LZ4HC, BottomCompression::ZSTD];

#[test]
fn compactions_write_the_fast_compressor_and_the_pass_recompresses_the_bottom() {
    for codec in CODECS {
        recompresses_the_bottom(codec);
    }
}

fn recompresses_the_bottom(codec: BottomCompression) {
    let (fast_dir, hc_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (fast, fast_flushed, fast_bottom) = load(fast_dir.path(), None);
    let (hc, hc_flushed, hc_bottom) = load(hc_dir.path(), Some(codec));

    // Flushes and compactions use the fast compressor whatever the
    // setting: the bottom's codec is never on their path.
    assert_eq!(fast_flushed, hc_flushed, "{codec:?}");
    assert_eq!(fast_bottom, hc_bottom, "{codec:?}");
    assert!(!deepest(&hc).0);

    // The pass rewrites the deepest level: smaller, same reads.
    hc.recompress_all().unwrap();
    let recompressed: u64 = hc.stats().bytes_per_level.iter().sum();
    assert!(
        recompressed * 100 < fast_bottom * 95,
        "{codec:?}: bottom level {recompressed} bytes recompressed vs {fast_bottom} without"
    );
    let (all, tables) = deepest(&hc);
    assert!(all && tables > 0);
    assert_eq!(hc.stats().tables_recompressed as usize, tables);
    // Without a bottom codec there is nothing to do.
    fast.recompress_all().unwrap();
    assert_eq!(fast.stats().tables_recompressed, 0);
    assert!(!deepest(&fast).0);
    for (k, v) in entries() {
        assert_eq!(hc.get(&k).unwrap().as_deref(), Some(&v[..]), "{codec:?}");
        assert_eq!(fast.get(&k).unwrap().as_deref(), Some(&v[..]));
    }
    // A second pass finds nothing left.
    hc.recompress_all().unwrap();
    assert_eq!(hc.stats().tables_recompressed as usize, tables);

    // After a reopen (with the default codec: a table's own format says
    // how to read it): the tables read the same, verify, and the manifest
    // still says they were recompressed (the pass does not redo them).
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
        assert_eq!(hc.get(k).unwrap().as_deref(), Some(&v[..]), "{codec:?}");
    }
    hc.verify().unwrap();
    // The table dump names each block's codec: both bottom codecs train a
    // dictionary per table (its size is checked exactly for zstd below).
    for t in bottom_tables(&hc, hc_dir.path()) {
        let dump = missive_engine::inspect::dump_table(&t).unwrap();
        let want = match codec {
            BottomCompression::Lz4Hc { .. } => "lz4+dictionary",
            _ => "zstd",
        };
        assert!(dump.blocks.iter().all(|b| b.codec == want), "{t:?}");
        assert!(dump.dictionary_bytes > 0, "{t:?}");
    }
}

/// The deepest level's table files of a store.
fn bottom_tables(lsm: &Lsm, dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let files = lsm.files();
    let level = files.iter().rev().find(|l| !l.is_empty()).unwrap();
    level
        .iter()
        .map(|f| dir.join("tables").join(format!("{:020}.sst", f.id.0)))
        .collect()
}

/// zstd tables carry their dictionary: a version 4 table, its flags and
/// the dictionary first in the file, blob references kept beside it.
#[test]
fn zstd_tables_carry_a_dictionary_and_keep_blob_references() {
    let dir = tempfile::tempdir().unwrap();
    let opts = LsmOptions {
        background: false,
        bottom_compression: Some(BottomCompression::ZSTD),
        blob_threshold: Some(400),
        ..LsmOptions::default()
    };
    let lsm = Lsm::open(dir.path(), opts.clone()).unwrap();
    fill(&lsm);
    // Every 100th entry gets a value long enough for a blob file.
    let mut big = WriteBatch::new();
    for (k, v) in entries().iter().step_by(100) {
        big.put(k, v.repeat(5));
    }
    lsm.apply(&big, None).unwrap();
    lsm.flush().unwrap();
    lsm.compact_all().unwrap();
    lsm.recompress_all().unwrap();
    assert!(lsm.stats().blob_files > 0);
    let expect = |i: usize, v: &Vec<u8>| if i % 100 == 0 { v.repeat(5) } else { v.clone() };
    for (i, (k, v)) in entries().iter().enumerate() {
        assert_eq!(lsm.get(k).unwrap(), Some(expect(i, v)), "entry {i}");
    }
    let tables = bottom_tables(&lsm, dir.path());
    drop(lsm);
    let mut with_blobs = 0;
    for t in &tables {
        let b = std::fs::read(t).unwrap();
        let foot = &b[b.len() - 64..];
        assert_eq!(u16::from_le_bytes([foot[48], foot[49]]), 4, "{t:?}");
        let flags = u16::from_le_bytes([foot[50], foot[51]]);
        assert_ne!(flags & 2, 0, "{t:?} has no dictionary");
        with_blobs += usize::from(flags & 1 != 0);
        // The table dump (missivectl) names the dictionary and its size:
        // all of the file before the first block but the dictionary's CRC.
        let dump = missive_engine::inspect::dump_table(t).unwrap();
        let first = dump.blocks.first().unwrap().offset;
        assert_eq!(dump.dictionary_bytes, first - 4, "{t:?}");
        assert!(dump.blocks.iter().any(|b| b.codec == "zstd"), "{t:?}");
    }
    assert!(with_blobs > 0, "no bottom table lists blob files");
    let lsm = Lsm::open(dir.path(), opts).unwrap();
    lsm.verify().unwrap();
    for (i, (k, v)) in entries().iter().enumerate().step_by(50) {
        assert_eq!(
            lsm.get(k).unwrap(),
            Some(expect(i, v)),
            "entry {i} after reopen"
        );
    }
}

/// One flipped byte in a table's dictionary fails its open, naming the
/// file and the dictionary, instead of decoding blocks wrongly.
#[test]
fn a_damaged_dictionary_is_named_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let (lsm, _, _) = load(dir.path(), Some(BottomCompression::ZSTD));
    lsm.recompress_all().unwrap();
    let table = bottom_tables(&lsm, dir.path()).remove(0);
    drop(lsm);
    let mut b = std::fs::read(&table).unwrap();
    b[100] ^= 0x20;
    std::fs::write(&table, b).unwrap();
    let Err(err) = Lsm::open(
        dir.path(),
        LsmOptions {
            background: false,
            ..LsmOptions::default()
        },
    ) else {
        panic!("a table with a damaged dictionary opened");
    };
    match err {
        Error::Corruption { file, reason, .. } => {
            assert_eq!(file, table);
            assert!(reason.contains("dictionary"), "{reason}");
        }
        other => panic!("not a corruption error: {other:?}"),
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
