//! Backpressure: a writer faster than compaction is slowed, then stopped,
//! so level 0 stays shallow (`lsm/background.rs`).
//!
//! Compaction is made slow on purpose with a retention hook that sleeps on
//! every value it is asked about (retention is consulted only by
//! compactions, never by flushes), so the writer is always the faster one.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests panic on surprises"
)]

use std::sync::Arc;
use std::time::Duration;

use missive_engine::keys::{message_key, ConversationId, Timestamp};
use missive_engine::lsm::retention::Retention;
use missive_engine::lsm::{Lsm, LsmOptions, PickerConfig, WriteBatch};

/// Keeps everything, slowly.
#[derive(Debug)]
struct Sluggish(Duration);

impl Retention for Sluggish {
    fn is_expired(&self, _key: &[u8], _value: &[u8], _now: Timestamp) -> bool {
        std::thread::sleep(self.0);
        false
    }
}

fn options(slowdown: usize, stop: usize) -> LsmOptions {
    LsmOptions {
        memtable_bytes: 32 << 10,
        max_immutable_memtables: 2,
        l0_slowdown_tables: slowdown,
        l0_stop_tables: stop,
        block_size: 4 << 10,
        target_table_bytes: 64 << 10,
        picker: PickerConfig {
            l0_trigger: 2,
            level1_bytes: 256 << 10,
            multiplier: 4,
        },
        retention: Some(Arc::new(Sluggish(Duration::from_micros(30)))),
        bottom_compression: None,
        ..LsmOptions::default()
    }
}

/// Writes `n` messages of 100 bytes spread over 20 conversations and
/// returns the deepest level 0 seen after any batch.
fn write(lsm: &Lsm, n: u64) -> usize {
    let mut deepest = 0;
    for i in 0..n {
        let mut b = WriteBatch::new();
        b.put(
            message_key(ConversationId(i % 20), Timestamp(i + 1)),
            vec![(i % 251) as u8; 100],
        );
        lsm.apply(&b, None).unwrap();
        deepest = deepest.max(lsm.stats().files_per_level[0]);
    }
    deepest
}

fn assert_all_there(lsm: &Lsm, n: u64) {
    let mut found = 0;
    for c in 0..20 {
        found += lsm.latest(ConversationId(c), usize::MAX).unwrap().len() as u64;
    }
    assert_eq!(found, n);
}

#[test]
fn level0_never_passes_the_stop_while_compaction_lags() {
    let tmp = tempfile::tempdir().unwrap();
    // No slowdown: only the stop holds the writer back.
    let lsm = Lsm::open(tmp.path(), options(usize::MAX, 4)).unwrap();
    // ~40 memtables' worth: with flushes free to run ahead of a compaction
    // that sleeps 100 µs per value, level 0 reaches tens of tables.
    let n = 8_000;
    let deepest = write(&lsm, n);
    assert!(deepest <= 4, "level 0 reached {deepest} tables");
    let s = lsm.stats();
    assert!(s.stalls > 0, "the writer never waited: {s:?}");
    assert_eq!(s.slowdowns, 0, "{s:?}");
    assert_all_there(&lsm, n);
}

#[test]
fn a_deep_level0_slows_writers_before_it_stops_them() {
    let tmp = tempfile::tempdir().unwrap();
    let lsm = Lsm::open(tmp.path(), options(2, 64)).unwrap();
    let n = 4_000;
    write(&lsm, n);
    let s = lsm.stats();
    assert!(s.slowdowns > 0, "no writer was slowed: {s:?}");
    assert!(s.slowdown_micros >= 1000 * s.slowdowns / 2, "{s:?}");
    assert_all_there(&lsm, n);
    // And once it is all compacted down.
    lsm.compact_full().unwrap();
    assert_eq!(lsm.stats().files_per_level[0], 0);
    assert_all_there(&lsm, n);
}
