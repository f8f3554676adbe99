//! Retention: expired messages are never returned, even before compaction,
//! and are physically gone from the table files after compaction.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests panic on surprises"
)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use missive_engine::keys::{message_key, ConversationId, Timestamp};
use missive_engine::lsm::{Lsm, LsmOptions, MessageRetention, WriteBatch};

/// Test values: `expires_at u64 LE` (0 = never), then a marker.
fn value(expires_at: u64, marker: &str) -> Vec<u8> {
    let mut v = expires_at.to_le_bytes().to_vec();
    v.extend_from_slice(marker.as_bytes());
    v
}

fn open(dir: &std::path::Path, clock: Arc<AtomicU64>) -> Lsm {
    let retention = MessageRetention {
        expires_at: |v: &[u8]| {
            let at = u64::from_le_bytes(v.get(..8)?.try_into().ok()?);
            (at != 0).then_some(Timestamp(at))
        },
        // Conversation 2 keeps messages for 1000 µs.
        window: |c: ConversationId| (c.0 == 2).then_some(1000),
    };
    Lsm::open(
        dir,
        LsmOptions {
            compression: false,
            background: false,
            retention: Some(Arc::new(retention)),
            clock: Some(Arc::new(move || Timestamp(clock.load(Ordering::SeqCst)))),
            ..LsmOptions::default()
        },
    )
    .unwrap()
}

fn put(lsm: &Lsm, conv: u64, ts: u64, v: Vec<u8>) {
    let mut b = WriteBatch::new();
    b.put(message_key(ConversationId(conv), Timestamp(ts)), v);
    lsm.apply(&b, None).unwrap();
}

fn table_bytes(dir: &std::path::Path) -> Vec<u8> {
    let mut all = Vec::new();
    for e in std::fs::read_dir(dir.join("tables")).unwrap() {
        all.extend(std::fs::read(e.unwrap().path()).unwrap());
    }
    all
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

#[test]
fn expired_messages_are_hidden_at_once_and_gone_after_compaction() {
    let tmp = tempfile::tempdir().unwrap();
    let clock = Arc::new(AtomicU64::new(10_000));
    let lsm = open(tmp.path(), Arc::clone(&clock));
    put(&lsm, 1, 100, value(0, "KEEP-forever"));
    put(&lsm, 1, 200, value(20_000, "DISAPPEAR-at-20000"));
    put(&lsm, 1, 300, value(50_000, "DISAPPEAR-at-50000"));
    put(&lsm, 2, 9_500, value(0, "WINDOW-old"));
    put(&lsm, 2, 10_000, value(0, "WINDOW-new"));

    let conv1 = |lsm: &Lsm| -> Vec<u64> {
        lsm.latest(ConversationId(1), 10)
            .unwrap()
            .iter()
            .map(|m| m.ts.0)
            .collect()
    };
    let conv2 = |lsm: &Lsm| -> Vec<u64> {
        lsm.latest(ConversationId(2), 10)
            .unwrap()
            .iter()
            .map(|m| m.ts.0)
            .collect()
    };
    assert_eq!(conv1(&lsm), vec![300, 200, 100]);
    assert_eq!(conv2(&lsm), vec![10_000, 9_500]);

    // Time passes: in the memtable, expired messages vanish from reads.
    clock.store(30_000, Ordering::SeqCst);
    assert_eq!(conv1(&lsm), vec![300, 100]);
    assert_eq!(
        conv2(&lsm),
        Vec::<u64>::new(),
        "both are older than the 1000 µs window"
    );
    assert!(lsm
        .get(&message_key(ConversationId(1), Timestamp(200)))
        .unwrap()
        .is_none());

    // Flushed but not compacted: still hidden, still on disk.
    lsm.flush().unwrap();
    assert_eq!(conv1(&lsm), vec![300, 100]);
    assert_eq!(
        lsm.after(ConversationId(1), Timestamp(0), 10)
            .unwrap()
            .len(),
        2
    );
    assert!(contains(&table_bytes(tmp.path()), "DISAPPEAR-at-20000"));

    // Compaction drops them from the files.
    lsm.compact_full().unwrap();
    let bytes = table_bytes(tmp.path());
    assert!(
        !contains(&bytes, "DISAPPEAR-at-20000"),
        "expired message still on disk"
    );
    assert!(
        !contains(&bytes, "WINDOW-old"),
        "message past the window still on disk"
    );
    assert!(
        contains(&bytes, "DISAPPEAR-at-50000"),
        "a live message was dropped"
    );
    assert!(contains(&bytes, "KEEP-forever"));
    assert_eq!(conv1(&lsm), vec![300, 100]);

    // And later the other one goes too, across a reopen.
    drop(lsm);
    clock.store(60_000, Ordering::SeqCst);
    let lsm = open(tmp.path(), Arc::clone(&clock));
    assert_eq!(conv1(&lsm), vec![100]);
    lsm.compact_full().unwrap();
    assert!(!contains(&table_bytes(tmp.path()), "DISAPPEAR-at-50000"));
}
