//! The state machine's record cache never answers with a value the LSM no
//! longer holds: not after its own writes, not after a snapshot replaced
//! the shard's data.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use std::path::Path;
use std::sync::Arc;

use missive_chat::command::{Command, ConversationKind, DeviceId, MessageKind, Outcome, UserId};
use missive_chat::ChatApp;
use missive_engine::keys::ConversationId;
use missive_engine::lsm::{Lsm, LsmOptions};
use missive_raft::cluster::slots::SlotMap;
use missive_raft::storage::state_machine::ApplyHooks;
use missive_raft::types::LogId;

// The runtime's types as the chat domain instantiates them.
type Batch = missive_raft::app::Batch<ChatApp>;
type BatchResponse = missive_raft::app::BatchResponse<ChatApp>;
type Entry = missive_raft::types::Entry<ChatApp>;
type StateMachine = missive_raft::storage::state_machine::StateMachine<ChatApp>;
use missive_raft::ShardId;
use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine};
use openraft::{CommittedLeaderId, EntryPayload};

const SHARD: ShardId = ShardId(1);
const CONV: ConversationId = ConversationId(7);

fn open(dir: &Path) -> (StateMachine, Arc<ApplyHooks>, Arc<Lsm>) {
    let lsm = Arc::new(Lsm::open(dir.join("lsm"), LsmOptions::default()).unwrap());
    let hooks = Arc::new(ApplyHooks::new());
    let sm = StateMachine::open(
        Arc::new(ChatApp::new()),
        Arc::clone(&lsm),
        &SlotMap::even(1).unwrap(),
        SHARD,
        dir.join("snapshots"),
        Arc::clone(&hooks),
    )
    .unwrap();
    (sm, hooks, lsm)
}

fn entry(index: u64, commands: Vec<Command>) -> Entry {
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
        payload: EntryPayload::Normal(Batch {
            stamp_micros: 1_700_000_000_000_000 + index * 1_000,
            commands,
        }),
    }
}

fn create() -> Command {
    Command::CreateConversation {
        conv: CONV,
        kind: ConversationKind::Direct,
        name: String::new(),
        creator: UserId(1),
        members: vec![UserId(1), UserId(2)],
        max_members: 250,
    }
}

fn send(id: &str) -> Command {
    Command::AppendMessage {
        conv: CONV,
        sender: UserId(1),
        device: DeviceId(1),
        client_msg_id: id.to_string(),
        kind: MessageKind::Text,
        body: b"hello".to_vec(),
        expires_at: None,
    }
}

/// Applies one entry of `commands` at `index`; the outcomes.
async fn apply(sm: &mut StateMachine, index: u64, commands: Vec<Command>) -> Vec<Outcome> {
    let mut out: Vec<BatchResponse> = sm.apply([entry(index, commands)]).await.unwrap();
    out.pop().unwrap().outcomes
}

fn seq(o: &Outcome) -> u64 {
    match o {
        Outcome::Appended { seq, .. } => seq.0,
        other => panic!("not appended: {other:?}"),
    }
}

#[tokio::test]
async fn a_snapshot_install_is_never_answered_from_the_cache() {
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (mut a, a_hooks, _) = open(a_dir.path());
    let (mut b, _, _) = open(b_dir.path());

    // A: the conversation and two messages; its head (seq 2) is cached —
    // the second send read what the first wrote.
    apply(&mut a, 1, vec![create()]).await;
    assert_eq!(seq(&apply(&mut a, 2, vec![send("a1")]).await[0]), 1);
    assert_eq!(seq(&apply(&mut a, 3, vec![send("a2")]).await[0]), 2);
    assert!(
        a_hooks
            .record_hits
            .load(std::sync::atomic::Ordering::Relaxed)
            > 0
    );

    // B, further on: five messages. Its snapshot replaces A's state.
    apply(&mut b, 1, vec![create()]).await;
    for i in 0..5 {
        apply(&mut b, 2 + i, vec![send(&format!("b{i}"))]).await;
    }
    let snap = b
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    assert_eq!(snap.meta.last_log_id.unwrap().index, 6);
    a.install_snapshot(&snap.meta, snap.snapshot).await.unwrap();

    // The next message follows B's five: the cached head (seq 2) is gone.
    assert_eq!(seq(&apply(&mut a, 7, vec![send("a3")]).await[0]), 6);
    // And B's client message ids are B's: a resend of one is a duplicate
    // with B's seq, a resend of A's pre-snapshot one is new.
    let again = apply(&mut a, 8, vec![send("b4"), send("a1")]).await;
    assert!(matches!(
        again[0],
        Outcome::Appended {
            seq: missive_chat::Seq(5),
            duplicate: true,
            ..
        }
    ));
    assert!(matches!(
        again[1],
        Outcome::Appended {
            seq: missive_chat::Seq(7),
            duplicate: false,
            ..
        }
    ));
}

#[tokio::test]
async fn cached_records_follow_every_write() {
    let dir = tempfile::tempdir().unwrap();
    let mut index = 0;
    {
        let (mut sm, hooks, lsm) = open(dir.path());
        index += 1;
        apply(&mut sm, index, vec![create()]).await;
        // Many entries of several sends each: every read after the first is
        // a cache hit, and the seq stays dense.
        let mut expect = 1;
        for round in 0..50 {
            index += 1;
            let cmds = (0..4).map(|i| send(&format!("m{round}-{i}"))).collect();
            for o in apply(&mut sm, index, cmds).await {
                assert_eq!(seq(&o), expect);
                expect += 1;
            }
        }
        let hits = hooks.record_hits.load(std::sync::atomic::Ordering::Relaxed);
        let misses = hooks
            .record_misses
            .load(std::sync::atomic::Ordering::Relaxed);
        // Each message's dedup record is looked up absent (a miss, never
        // cached), and so is the recipient's push-device list: with one
        // shard both members are local, so the message's own batch
        // delivers it to their inboxes (local delivery) and asks whether
        // the recipient has push targets. The conversation, head, outbox
        // head, the pair's blocks and the members' inbox heads and views
        // come from the cache or the entry's own writes after their first
        // read (a few misses per conversation, none per message).
        assert!(misses <= 2 * 200 + 20, "hits {hits}, misses {misses}");
        assert!(hits >= 200, "hits {hits}, misses {misses}");
        // What the node does before it stops (the LSM has no log of its
        // own; the Raft log would replay the rest).
        lsm.flush().unwrap();
    }
    // A fresh state machine on the same LSM (a restart: empty cache)
    // continues from what the LSM holds.
    let (mut sm, _, _) = open(dir.path());
    index += 1;
    assert_eq!(
        seq(&apply(&mut sm, index, vec![send("last")]).await[0]),
        201
    );
}
