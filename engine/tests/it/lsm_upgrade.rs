//! A data directory written before table format version 2 (fixture:
//! `tests/fixtures/lsm-v1`, two level-0 tables written by the engine at
//! ef590a8 — 300 keys, then every third overwritten and every fifth
//! deleted) opens, reads the same, and is rewritten as version 2 by a
//! full compaction, with nothing lost.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests panic on surprises"
)]

use std::path::Path;

use missive_engine::inspect::dump_table;
use missive_engine::lsm::{Lsm, LsmOptions};

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), dest).unwrap();
        }
    }
}

/// What the fixture holds for key `i`.
fn expected(i: u32) -> Option<Vec<u8>> {
    if i % 5 == 0 {
        None
    } else if i % 3 == 0 {
        Some(format!("v2-{i}").into_bytes())
    } else {
        Some(format!("v1-{i}-see you at the office tomorrow").into_bytes())
    }
}

fn check(lsm: &Lsm) {
    for i in 0..300u32 {
        let got = lsm.get(format!("k{i:03}").as_bytes()).unwrap();
        assert_eq!(got, expected(i), "k{i:03}");
    }
}

fn table_versions(dir: &Path) -> Vec<u16> {
    let mut v: Vec<u16> = std::fs::read_dir(dir.join("tables"))
        .unwrap()
        .map(|e| dump_table(&e.unwrap().path()).unwrap().format_version)
        .collect();
    v.sort_unstable();
    v
}

#[test]
fn version_1_tables_read_the_same_and_compact_into_version_2() {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/lsm-v1");
    let tmp = tempfile::tempdir().unwrap();
    copy_dir(&fixture, tmp.path());
    assert_eq!(table_versions(tmp.path()), [1, 1]);

    let opts = || LsmOptions {
        background: false,
        ..LsmOptions::default()
    };
    let lsm = Lsm::open(tmp.path(), opts()).unwrap();
    check(&lsm);
    lsm.compact_full().unwrap();
    check(&lsm);
    drop(lsm);
    // Dropped tables are deleted when their last reader goes.
    assert_eq!(table_versions(tmp.path()), [2]);

    let lsm = Lsm::open(tmp.path(), opts()).unwrap();
    check(&lsm);
}
