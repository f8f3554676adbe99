//! Table writes give way to the log's syncs (`lsm/pace.rs`): a background
//! flush is paced while a sync is recent, and never when the log is quiet,
//! when writers are held back, or when a caller waits for the work.
//!
//! What is checked is whether pacing applied (`LsmStats::paced_steps`),
//! never how long anything took.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests panic on surprises"
)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use missive_engine::keys::{message_key, ConversationId, Timestamp};
use missive_engine::log::SyncActivity;
use missive_engine::lsm::{Lsm, LsmOptions, WriteBatch};

/// Memtables of 2 MiB: a flush writes a table of ~2 MiB, 30-odd steps.
fn options(activity: &Arc<SyncActivity>) -> LsmOptions {
    LsmOptions {
        memtable_bytes: 2 << 20,
        bottom_compression: None,
        sync_activity: Some(Arc::clone(activity)),
        paced_write_rate: Some(48 << 20),
        ..LsmOptions::default()
    }
}

/// Records a sync every 5 ms until dropped, as a log acknowledging durable
/// writes would.
struct Syncing {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Syncing {
    fn start(activity: &Arc<SyncActivity>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let (a, s) = (Arc::clone(activity), Arc::clone(&stop));
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                a.record();
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        Syncing {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Syncing {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }
}

/// A fresh LSM on `options` (changed by `tweak`) with a log "syncing"
/// beside it.
fn open_syncing(
    dir: &std::path::Path,
    tweak: impl FnOnce(&mut LsmOptions),
) -> (Lsm, Syncing, Arc<SyncActivity>) {
    let activity = Arc::new(SyncActivity::new());
    let syncing = Syncing::start(&activity);
    let mut opts = options(&activity);
    tweak(&mut opts);
    (Lsm::open(dir, opts).unwrap(), syncing, activity)
}

/// Writes messages `from..from + n` of 200 bytes over 50 conversations.
fn write(lsm: &Lsm, from: u64, n: u64) {
    for i in from..from + n {
        let mut b = WriteBatch::new();
        b.put(
            message_key(ConversationId(i % 50), Timestamp(i + 1)),
            vec![(i % 251) as u8; 200],
        );
        lsm.apply(&b, None).unwrap();
    }
}

/// Waits (up to a minute: a correctness bound, not a timing) for the
/// background thread's first flush.
fn wait_for_a_flush(lsm: &Lsm) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while lsm.stats().flushes == 0 {
        assert!(Instant::now() < deadline, "no background flush in a minute");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn count(lsm: &Lsm) -> u64 {
    (0..50)
        .map(|c| lsm.latest(ConversationId(c), usize::MAX).unwrap().len() as u64)
        .sum()
}

#[test]
fn a_background_flush_is_paced_while_the_log_syncs() {
    let tmp = tempfile::tempdir().unwrap();
    let (lsm, _syncing, _) = open_syncing(tmp.path(), |_| {});
    // ~2.4 MiB of memtable: one rotation, one background flush.
    write(&lsm, 0, 10_000);
    wait_for_a_flush(&lsm);
    let s = lsm.stats();
    assert!(s.paced_steps > 0, "the flush was not paced: {s:?}");
    assert_eq!(count(&lsm), 10_000);
}

#[test]
fn nothing_is_paced_while_the_log_is_quiet() {
    let tmp = tempfile::tempdir().unwrap();
    let activity = Arc::new(SyncActivity::new());
    let lsm = Lsm::open(tmp.path(), options(&activity)).unwrap();
    write(&lsm, 0, 10_000);
    wait_for_a_flush(&lsm);
    assert_eq!(lsm.stats().paced_steps, 0);
    // A sync long past does not count either.
    activity.record();
    std::thread::sleep(Duration::from_millis(300));
    write(&lsm, 10_000, 10_000);
    lsm.flush().unwrap();
    lsm.compact_all().unwrap();
    assert_eq!(lsm.stats().paced_steps, 0);
    assert_eq!(count(&lsm), 20_000);
}

#[test]
fn a_callers_flush_and_compaction_are_never_paced() {
    let tmp = tempfile::tempdir().unwrap();
    // Memtables never full by themselves: only the calls below flush.
    let (lsm, _syncing, _) = open_syncing(tmp.path(), |o| o.memtable_bytes = 64 << 20);
    for round in 0..3 {
        write(&lsm, round * 5_000, 5_000);
        lsm.flush().unwrap();
    }
    lsm.compact_full().unwrap();
    let s = lsm.stats();
    assert!(s.flushes >= 3 && s.compactions >= 1, "{s:?}");
    assert_eq!(s.paced_steps, 0, "a caller waited for paced work");
    assert_eq!(count(&lsm), 15_000);
}

#[test]
fn nothing_is_paced_while_writers_are_held_back() {
    let tmp = tempfile::tempdir().unwrap();
    // One immutable slot: the memtable being flushed takes it, so writers
    // would stall at the next rotation — the flush must run flat out.
    let (lsm, _syncing, _) = open_syncing(tmp.path(), |o| o.max_immutable_memtables = 1);
    write(&lsm, 0, 10_000);
    wait_for_a_flush(&lsm);
    assert_eq!(lsm.stats().paced_steps, 0);
    assert_eq!(count(&lsm), 10_000);
}
