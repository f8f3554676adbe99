//! The log store purges no further than the LSM's flushed state: building a
//! snapshot does not flush, so openraft may ask to purge entries whose
//! effects are still only in memtables — after a crash they must still be
//! in the log for openraft to re-apply.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use std::path::Path;
use std::sync::Arc;

use missive_chat::ChatApp;
use missive_engine::log::{Log, LogOptions};
use missive_engine::lsm::{Lsm, LsmOptions};

// The runtime's types as the chat domain instantiates them.
type LogStore = missive_raft::storage::log_store::LogStore<ChatApp>;
type StateMachine = missive_raft::storage::state_machine::StateMachine<ChatApp>;
type Entry = missive_raft::types::Entry<ChatApp>;
use missive_raft::cluster::slots::SlotMap;
use missive_raft::storage::state_machine::ApplyHooks;
use missive_raft::types::LogId;
use missive_raft::ShardId;
use openraft::storage::{RaftLogReader, RaftLogStorage, RaftLogStorageExt, RaftStateMachine};
use openraft::{CommittedLeaderId, EntryPayload};

const SHARD: ShardId = ShardId(1);

fn log_id(index: u64) -> LogId {
    LogId::new(CommittedLeaderId::new(1, 1), index)
}

fn entries(range: std::ops::RangeInclusive<u64>) -> Vec<Entry> {
    range
        .map(|i| Entry {
            log_id: log_id(i),
            payload: EntryPayload::Blank,
        })
        .collect()
}

struct Opened {
    lsm: Arc<Lsm>,
    store: LogStore,
    sm: StateMachine,
}

fn open(dir: &Path) -> Opened {
    let log = Arc::new(
        Log::open(
            dir.join("log"),
            LogOptions {
                segment_size: 1 << 20,
                preallocate: false,
                ..LogOptions::default()
            },
        )
        .unwrap(),
    );
    // No background flushes: the test decides what is flushed.
    let lsm = Arc::new(
        Lsm::open(
            dir.join("lsm"),
            LsmOptions {
                background: false,
                ..LsmOptions::default()
            },
        )
        .unwrap(),
    );
    let sm = StateMachine::open(
        Arc::new(ChatApp::new()),
        Arc::clone(&lsm),
        &SlotMap::even(1).unwrap(),
        SHARD,
        dir.join("snapshots"),
        Arc::new(ApplyHooks::new()),
    )
    .unwrap();
    let store = LogStore::new(log, SHARD).with_durable_horizon(Arc::clone(&lsm));
    Opened { lsm, store, sm }
}

async fn readable(store: &mut LogStore, from: u64, to: u64) -> usize {
    store
        .get_log_reader()
        .await
        .try_get_log_entries(from..=to)
        .await
        .unwrap()
        .len()
}

#[tokio::test]
async fn a_purge_stops_at_what_the_lsm_has_flushed() {
    let dir = tempfile::tempdir().unwrap();
    let mut n = open(dir.path());
    n.store.blocking_append(entries(0..=100)).await.unwrap();
    n.sm.apply(entries(0..=40)).await.unwrap();
    n.lsm.flush().unwrap();
    n.sm.apply(entries(41..=100)).await.unwrap();

    // openraft asks for 90 (its snapshot is at 100); 41..=100 are only in
    // the memtable, so the purge stops at 40.
    n.store.purge(log_id(90)).await.unwrap();
    let state = n.store.get_log_state().await.unwrap();
    assert_eq!(state.last_purged_log_id, Some(log_id(40)));
    assert_eq!(readable(&mut n.store, 41, 100).await, 60);

    // A crash now loses the memtable: the state machine is back at 40, and
    // what openraft must re-apply is still in the log.
    drop(n);
    let mut n = open(dir.path());
    let (applied, _) = n.sm.applied_state().await.unwrap();
    assert_eq!(applied, Some(log_id(40)));
    let state = n.store.get_log_state().await.unwrap();
    assert_eq!(state.last_purged_log_id, Some(log_id(40)));
    assert_eq!(state.last_log_id, Some(log_id(100)));
    assert_eq!(readable(&mut n.store, 41, 100).await, 60);

    // Re-applied and flushed, the next purge goes all the way.
    n.sm.apply(entries(41..=100)).await.unwrap();
    n.lsm.flush().unwrap();
    n.store.purge(log_id(90)).await.unwrap();
    let state = n.store.get_log_state().await.unwrap();
    assert_eq!(state.last_purged_log_id, Some(log_id(90)));
    assert_eq!(readable(&mut n.store, 91, 100).await, 10);
}

#[tokio::test]
async fn a_purge_past_the_whole_log_is_a_snapshot_install_and_goes_through() {
    let dir = tempfile::tempdir().unwrap();
    let mut n = open(dir.path());
    n.store.blocking_append(entries(0..=100)).await.unwrap();
    n.sm.apply(entries(0..=40)).await.unwrap();
    n.lsm.flush().unwrap();
    // openraft purges up to an installed snapshot's last entry without
    // waiting for the install: the whole log goes, and the log resumes
    // past the snapshot.
    n.store.purge(log_id(150)).await.unwrap();
    let state = n.store.get_log_state().await.unwrap();
    assert_eq!(state.last_purged_log_id, Some(log_id(150)));
    assert_eq!(readable(&mut n.store, 0, 150).await, 0);
    n.store.blocking_append(entries(151..=160)).await.unwrap();
    assert_eq!(readable(&mut n.store, 151, 160).await, 10);
}

/// Regression: a node restarted before its LSM ever flushed the shard
/// (no flushed position for the stream) got a snapshot from the leader;
/// the purge that precedes the install kept the whole old log, the next
/// append past the snapshot was refused as a hole ("append at Raft index
/// 1801 would leave a hole or overwrite (next is 100)") and the replica's
/// Raft core stopped (`cluster.rs`, leader loss under load, seen once
/// under a loaded full-suite run).
#[tokio::test]
async fn a_snapshot_install_purges_the_whole_log_before_anything_was_ever_flushed() {
    let dir = tempfile::tempdir().unwrap();
    let mut n = open(dir.path());
    n.store.blocking_append(entries(0..=99)).await.unwrap();
    n.sm.apply(entries(0..=99)).await.unwrap();
    assert!(n.lsm.flushed_positions().is_empty(), "nothing flushed yet");
    n.store.purge(log_id(1800)).await.unwrap();
    let state = n.store.get_log_state().await.unwrap();
    assert_eq!(state.last_purged_log_id, Some(log_id(1800)));
    assert_eq!(readable(&mut n.store, 0, 1800).await, 0);
    n.store.blocking_append(entries(1801..=1810)).await.unwrap();
    assert_eq!(readable(&mut n.store, 1801, 1810).await, 10);
}
