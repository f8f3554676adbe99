//! Model-based property test of the LSM through `Db`: random batches of puts
//! and deletes, flushes, compactions, snapshots and reopens, checked after
//! every step against a `BTreeMap` — point reads, full scans in both
//! directions, bounded scans, snapshot reads and the message queries.
//! Memtables, blocks and tables are tiny so every step crosses them.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests panic on surprises"
)]

use std::collections::BTreeMap;
use std::path::Path;

use missive_engine::keys::{message_key, ConversationId, Timestamp};
use missive_engine::log::{LogOptions, SyncPolicy};
use missive_engine::lsm::{
    BottomCompression, Db, DbOptions, Direction, LsmOptions, PickerConfig, Snapshot,
};
use proptest::prelude::*;

type Model = BTreeMap<Vec<u8>, Vec<u8>>;

#[derive(Debug, Clone)]
enum Op {
    Write(Vec<(u16, Option<Vec<u8>>)>),
    Flush,
    Compact,
    CompactFull,
    /// The recompression pass over the deepest level (zstd here).
    Recompress,
    Snapshot,
    Reopen,
}

const CONVS: u64 = 3;
const TS: u64 = 40;

/// Key `i`: message keys of a few conversations, then other keyspaces.
fn key(i: u16) -> Vec<u8> {
    let i = u64::from(i);
    if i < CONVS * TS {
        message_key(ConversationId(1000 + i / TS), Timestamp(1 + i % TS)).to_vec()
    } else {
        vec![0x20, 0, (i % 7) as u8, (i % 13) as u8]
    }
}

fn op() -> impl Strategy<Value = Op> {
    let entry = (
        0u16..(CONVS * TS + 60) as u16,
        prop::option::weighted(0.8, prop::collection::vec(any::<u8>(), 0..120)),
    );
    prop_oneof![
        12 => prop::collection::vec(entry, 1..8).prop_map(Op::Write),
        2 => Just(Op::Flush),
        2 => Just(Op::Compact),
        1 => Just(Op::CompactFull),
        1 => Just(Op::Recompress),
        1 => Just(Op::Snapshot),
        1 => Just(Op::Reopen),
    ]
}

fn options(background: bool) -> DbOptions {
    DbOptions {
        log: LogOptions {
            sync: SyncPolicy::Never,
            segment_size: 64 << 10,
            ..LogOptions::default()
        },
        lsm: LsmOptions {
            memtable_bytes: 2 << 10,
            block_size: 256,
            target_table_bytes: 4 << 10,
            block_cache_bytes: 64 << 10,
            picker: PickerConfig {
                l0_trigger: 3,
                level1_bytes: 8 << 10,
                multiplier: 4,
            },
            background,
            // About half the values (0–119 bytes) go to blob files.
            blob_threshold: Some(60),
            // The bottom level's other codec, in its smallest blocks
            // (1 KiB). Tables this small train no dictionary for either
            // codec; `lsm_compression` covers the tables that do.
            bottom_compression: Some(BottomCompression::Zstd {
                level: 3,
                block_size: 256,
            }),
            ..LsmOptions::default()
        },
    }
}

fn open(dir: &Path, background: bool) -> Db {
    Db::open(dir, options(background)).unwrap()
}

type Pairs = Vec<(Vec<u8>, Vec<u8>)>;

/// Compares two lists of pairs and names the first difference briefly.
fn same(got: &Pairs, want: &Pairs, what: &str) {
    if got == want {
        return;
    }
    let at = got
        .iter()
        .zip(want)
        .position(|(a, b)| a != b)
        .unwrap_or(got.len().min(want.len()));
    let brief = |p: Option<&(Vec<u8>, Vec<u8>)>| {
        p.map(|(k, v)| format!("key {k:?} value of {} bytes", v.len()))
    };
    panic!(
        "{what}: {} pairs, expected {}; first difference at {at}: got {:?}, expected {:?}",
        got.len(),
        want.len(),
        brief(got.get(at)),
        brief(want.get(at))
    );
}

fn check(db: &Db, model: &Model) {
    let all: Vec<_> = model.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    same(
        &db.scan(&[], None, Direction::Forward, usize::MAX).unwrap(),
        &all,
        "forward scan",
    );
    let mut rev = all.clone();
    rev.reverse();
    same(
        &db.scan(&[], None, Direction::Reverse, usize::MAX).unwrap(),
        &rev,
        "reverse scan",
    );
    for i in (0..(CONVS * TS + 60) as u16).step_by(7) {
        let k = key(i);
        assert!(
            db.get(&k).unwrap() == model.get(&k).cloned(),
            "get key {i} differs from the model"
        );
    }
    // Bounded scans both ways over a middle range.
    let (lo, hi) = (key(20), key(70));
    let want: Vec<_> = model
        .range(lo.clone()..hi.clone())
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    same(
        &db.scan(&lo, Some(&hi), Direction::Forward, 5).unwrap(),
        &want.iter().take(5).cloned().collect(),
        "bounded forward scan",
    );
    same(
        &db.scan(&lo, Some(&hi), Direction::Reverse, 5).unwrap(),
        &want.iter().rev().take(5).cloned().collect(),
        "bounded reverse scan",
    );
    for c in 0..CONVS {
        let conv = ConversationId(1000 + c);
        // Model's messages of this conversation, newest first.
        let msgs: Vec<(u64, Vec<u8>)> = (1..=TS)
            .rev()
            .filter_map(|ts| {
                model
                    .get(&message_key(conv, Timestamp(ts)).to_vec())
                    .map(|v| (ts, v.clone()))
            })
            .collect();
        let got: Vec<_> = db
            .latest(conv, 7)
            .unwrap()
            .into_iter()
            .map(|m| (m.ts.0, m.value))
            .collect();
        assert_eq!(
            got,
            msgs.iter().take(7).cloned().collect::<Vec<_>>(),
            "latest of {c}"
        );
        for cursor in [1u64, 15, 30, TS + 1] {
            let got: Vec<_> = db
                .before(conv, Timestamp(cursor), 4)
                .unwrap()
                .into_iter()
                .map(|m| (m.ts.0, m.value))
                .collect();
            let want: Vec<_> = msgs
                .iter()
                .filter(|(ts, _)| *ts < cursor)
                .take(4)
                .cloned()
                .collect();
            assert_eq!(got, want, "before {cursor} of {c}");
            let got: Vec<_> = db
                .after(conv, Timestamp(cursor), 4)
                .unwrap()
                .into_iter()
                .map(|m| (m.ts.0, m.value))
                .collect();
            let want: Vec<_> = msgs
                .iter()
                .rev()
                .filter(|(ts, _)| *ts > cursor)
                .take(4)
                .cloned()
                .collect();
            assert_eq!(got, want, "after {cursor} of {c}");
        }
    }
}

fn check_snapshot(db: &Db, snap: &Snapshot, model: &Model) {
    for i in (0..(CONVS * TS + 60) as u16).step_by(5) {
        let k = key(i);
        assert!(
            db.get_at(&k, snap).unwrap() == model.get(&k).cloned(),
            "snapshot get key {i} differs from the model"
        );
    }
    let all: Vec<_> = model.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    same(
        &db.lsm()
            .scan_at(&[], None, Direction::Forward, usize::MAX, snap)
            .unwrap(),
        &all,
        "snapshot scan",
    );
}

fn run(ops: Vec<Op>, background: bool) {
    let tmp = tempfile::tempdir().unwrap();
    let mut db = Some(open(tmp.path(), background));
    let mut model = Model::new();
    let mut snaps: Vec<(Snapshot, Model)> = Vec::new();
    for op in ops {
        let d = db.as_ref().unwrap();
        match op {
            Op::Write(entries) => {
                let mut b = missive_engine::lsm::WriteBatch::new();
                for (i, v) in entries {
                    match v {
                        Some(v) => {
                            b.put(key(i), v.clone());
                            model.insert(key(i), v);
                        }
                        None => {
                            b.delete(key(i));
                            model.remove(&key(i));
                        }
                    }
                }
                d.write(&b).unwrap();
            }
            Op::Flush => d.flush().unwrap(),
            Op::Compact => {
                d.lsm().compact_all().unwrap();
            }
            Op::CompactFull => {
                d.compact_full().unwrap();
                if !background && snaps.is_empty() {
                    no_blob_garbage(tmp.path(), d);
                }
            }
            Op::Recompress => d.lsm().recompress_all().unwrap(),
            Op::Snapshot => {
                if snaps.len() >= 2 {
                    snaps.remove(0);
                }
                snaps.push((d.snapshot(), model.clone()));
            }
            Op::Reopen => {
                snaps.clear();
                drop(db.take());
                db = Some(open(tmp.path(), background));
            }
        }
        let d = db.as_ref().unwrap();
        check(d, &model);
        for (s, m) in &snaps {
            check_snapshot(d, s, m);
        }
    }
    db.as_ref().unwrap().verify().unwrap();
}

/// After a full compaction with no snapshot open, every blob file on disk
/// is referenced and holds no deleted value: a value deleted or replaced
/// is gone from the disk, not only from reads.
fn no_blob_garbage(dir: &Path, db: &Db) {
    let on_disk: Vec<_> = std::fs::read_dir(dir.join("lsm").join("tables"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".blob"))
        .collect();
    let stats = db.lsm().stats();
    assert_eq!(
        on_disk.len(),
        stats.blob_files,
        "blob files on disk vs referenced"
    );
    let big: Vec<usize> = db
        .scan(&[], None, Direction::Forward, usize::MAX)
        .unwrap()
        .iter()
        .map(|(_, v)| v.len())
        .filter(|&n| n >= 60)
        .collect();
    let live: usize = big.iter().sum();
    let held: u64 = on_disk.iter().map(|e| e.metadata().unwrap().len()).sum();
    // Each file adds its header and footer, each value its record header.
    let overhead = stats.blob_files as u64 * 48;
    let records = big.len() as u64 * 8;
    assert_eq!(
        held,
        live as u64 + overhead + records,
        "blob bytes beyond the live values"
    );
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(32)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn lsm_matches_model(ops in prop::collection::vec(op(), 1..80), background in any::<bool>()) {
        run(ops, background);
    }
}
