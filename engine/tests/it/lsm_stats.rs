//! Write stalls and the stats a server exports.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests panic on surprises"
)]

use missive_engine::keys::{message_key, ConversationId, Timestamp};
use missive_engine::lsm::{Lsm, LsmOptions, PickerConfig, WriteBatch};

#[test]
fn stalls_are_counted_and_stats_describe_the_tree() {
    let tmp = tempfile::tempdir().unwrap();
    let lsm = Lsm::open(
        tmp.path(),
        LsmOptions {
            memtable_bytes: 4 << 10,
            max_immutable_memtables: 1,
            block_size: 1024,
            target_table_bytes: 16 << 10,
            picker: PickerConfig {
                l0_trigger: 2,
                level1_bytes: 32 << 10,
                multiplier: 4,
            },
            // No flusher thread: a writer that finds the immutable slot
            // taken must stall (and, here, flush itself).
            background: false,
            ..LsmOptions::default()
        },
    )
    .unwrap();
    // Values that do not compress, so table bytes really are at least
    // the bytes written.
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    for i in 0..2_000u64 {
        let value: Vec<u8> = (0..100)
            .map(|_| {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (x >> 56) as u8
            })
            .collect();
        let mut b = WriteBatch::new();
        b.put(message_key(ConversationId(i % 50), Timestamp(i + 1)), value);
        lsm.apply(&b, None).unwrap();
        if i % 200 == 0 {
            lsm.compact_all().unwrap();
        }
    }
    lsm.compact_all().unwrap();
    let s = lsm.stats();
    assert!(s.stalls > 0, "{s:?}");
    assert!(s.flushes > 10, "{s:?}");
    assert!(s.compactions > 0, "{s:?}");
    assert!(s.files_per_level[1..].iter().sum::<usize>() > 0, "{s:?}");
    assert!(s.write_amplification >= 1.0, "{s:?}");
    assert!(s.space_amplification >= 1.0, "{s:?}");
    assert!(s.read_amplification >= 1, "{s:?}");
    let before = lsm.stats();
    assert_eq!(lsm.latest(ConversationId(3), 5).unwrap().len(), 5);
    let after = lsm.stats();
    assert!(after.cache_hits + after.cache_misses > before.cache_hits + before.cache_misses);
}

#[test]
fn a_second_opener_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let _first = Lsm::open(tmp.path(), LsmOptions::default()).unwrap();
    let err = Lsm::open(tmp.path(), LsmOptions::default()).unwrap_err();
    assert!(matches!(err, missive_engine::Error::Locked { .. }), "{err}");
}

#[test]
fn a_failing_flush_barrier_records_no_log_position() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    use missive_engine::log::StreamId;

    let tmp = tempfile::tempdir().unwrap();
    let lsm = Lsm::open(
        tmp.path(),
        LsmOptions {
            background: false,
            ..LsmOptions::default()
        },
    )
    .unwrap();
    let log_durable = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&log_durable);
    lsm.set_flush_barrier(move || {
        if flag.load(Ordering::SeqCst) {
            Ok(())
        } else {
            Err(missive_engine::Error::Closed)
        }
    });
    let mut b = WriteBatch::new();
    b.put(b"k", b"v");
    lsm.apply(&b, Some((StreamId(1), 42))).unwrap();
    assert!(lsm.flush().is_err());
    assert_eq!(lsm.flushed_positions().get(&StreamId(1)), None);
    assert_eq!(lsm.get(b"k").unwrap().as_deref(), Some(&b"v"[..]));
    log_durable.store(true, Ordering::SeqCst);
    lsm.flush().unwrap();
    assert_eq!(lsm.flushed_positions().get(&StreamId(1)), Some(&42));
    drop(lsm);
    let lsm = Lsm::open(tmp.path(), LsmOptions::default()).unwrap();
    assert_eq!(lsm.flushed_positions().get(&StreamId(1)), Some(&42));
    assert_eq!(lsm.get(b"k").unwrap().as_deref(), Some(&b"v"[..]));
}

#[test]
fn a_forgotten_position_stays_forgotten_and_restarts_lower() {
    use missive_engine::log::StreamId;

    let tmp = tempfile::tempdir().unwrap();
    let opts = || LsmOptions {
        background: false,
        ..LsmOptions::default()
    };
    let lsm = Lsm::open(tmp.path(), opts()).unwrap();
    let mut b = WriteBatch::new();
    b.put(b"a", b"1");
    lsm.apply(&b, Some((StreamId(3), 500))).unwrap();
    lsm.apply(&b, Some((StreamId(4), 9))).unwrap();
    lsm.flush().unwrap();
    // Noted in a memtable but not yet flushed: forgotten as well.
    lsm.apply(&b, Some((StreamId(3), 501))).unwrap();
    lsm.forget_position(StreamId(3)).unwrap();
    assert_eq!(lsm.flushed_positions().get(&StreamId(3)), None);
    lsm.flush().unwrap();
    assert_eq!(lsm.flushed_positions().get(&StreamId(3)), None);
    // The stream starts over lower; other streams keep theirs.
    lsm.apply(&b, Some((StreamId(3), 2))).unwrap();
    lsm.flush().unwrap();
    assert_eq!(lsm.flushed_positions().get(&StreamId(3)), Some(&2));
    drop(lsm);
    let lsm = Lsm::open(tmp.path(), opts()).unwrap();
    assert_eq!(lsm.flushed_positions().get(&StreamId(3)), Some(&2));
    assert_eq!(lsm.flushed_positions().get(&StreamId(4)), Some(&9));
    // Forgotten with nothing after it, across a restart too.
    lsm.forget_position(StreamId(4)).unwrap();
    drop(lsm);
    let lsm = Lsm::open(tmp.path(), opts()).unwrap();
    assert_eq!(lsm.flushed_positions().get(&StreamId(4)), None);
}
