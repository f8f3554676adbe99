//! Online shard split and merge on a 3-node cluster under a steady write
//! load: the history checker finds every acknowledged message exactly
//! once, in one order on every replica, across both; the moved
//! conversations are served by the new shard after the split (writes and
//! reads, from every node; linearizable reads during the change never miss
//! an acknowledged message) and by the old one again after the merge, whose
//! merged group every node closes; the fan-out keeps filling inboxes; and
//! both survive a restart of every node.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use crate::common;

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{cluster, config_at, create_group, send, wait_leader, Checker};
use missive_chat::ChatNode as Node;
use missive_engine::keys::{ConversationId, Slot};
use missive_raft::node::Consistency;
use missive_raft::ShardId;

const WAIT: Duration = Duration::from_secs(10);

/// Conversations of shard 1 (slots 0..2048 of 2 shards): `n` below the
/// split point 1024 and `n` above it.
fn convs(n: usize) -> (Vec<ConversationId>, Vec<ConversationId>) {
    let (mut low, mut high) = (Vec::new(), Vec::new());
    for c in 1..10_000u64 {
        let slot = Slot::of_conversation(ConversationId(c)).0;
        if slot < 1024 && low.len() < n {
            low.push(ConversationId(c));
        } else if (1024..2048).contains(&slot) && high.len() < n {
            high.push(ConversationId(c));
        }
    }
    (low, high)
}

/// One writer per conversation (`convs`: each with its checker, kept
/// across rounds), each through another node in turn, from 800 ms before
/// `change` until 1.5 s after it; then every conversation's history on
/// every replica against its checker.
async fn under_load<F: Future<Output = ()>>(
    nodes: &Arc<Vec<Option<Node>>>,
    convs: &[(ConversationId, Checker)],
    round: &str,
    change: F,
) {
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for (i, (conv, checker)) in convs.iter().enumerate() {
        let (nodes, stop, conv) = (Arc::clone(nodes), Arc::clone(&stop), *conv);
        let checker = checker.clone();
        let round = round.to_string();
        writers.push((
            conv,
            checker.clone(),
            tokio::spawn(async move {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let node = nodes[(i + n as usize) % 3].as_ref().unwrap();
                    let id = format!("{round}-c{}-m{n}", conv.0);
                    checker.invoke(&id);
                    let r = node.write(send(conv, 1, &id), WAIT).await;
                    checker.record(&id, &r);
                    n += 1;
                }
            }),
        ));
    }
    // Readers beside the writers: a linearizable read of a conversation's
    // history, through any node, holds every message acknowledged before
    // it began — across the change too (no gap).
    let mut readers = Vec::new();
    for (i, (conv, checker)) in convs.iter().enumerate() {
        let (nodes, stop, conv) = (Arc::clone(nodes), Arc::clone(&stop), *conv);
        let checker = checker.clone();
        readers.push(tokio::spawn(async move {
            let mut reads = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let before = checker.acked();
                let node = nodes[(i + 1 + reads as usize) % 3].as_ref().unwrap();
                let got: std::collections::HashSet<String> = match node
                    .history(conv, None, usize::MAX, Consistency::Linearizable)
                    .await
                {
                    Ok(h) => h.into_iter().map(|m| m.message.client_msg_id).collect(),
                    // A client is told to retry (503): the new shard
                    // electing its first leader, say.
                    Err(e) if e.is_retryable() => {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                    Err(e) => panic!("reading {conv:?}: {e}"),
                };
                if let Some(missing) = before.iter().find(|id| !got.contains(*id)) {
                    panic!(
                        "node {}: a read missed {missing}, acknowledged before it",
                        node.id()
                    );
                }
                reads += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            reads
        }));
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    change.await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, Ordering::Relaxed);
    for (_, _, w) in &mut writers {
        w.await.unwrap();
    }
    for r in readers {
        assert!(r.await.unwrap() > 10, "{round}: a reader barely read");
    }
    for (conv, checker, _) in &writers {
        assert!(
            checker.oks() > 10,
            "{round}: {conv:?}: {} acknowledged",
            checker.oks()
        );
        checker.check(nodes, *conv, 1).await;
    }
}

/// Waits until every node routes `conv` to `shard`.
async fn routed(nodes: &[Option<Node>], conv: ConversationId, shard: ShardId) {
    for node in nodes.iter().flatten() {
        let deadline = tokio::time::Instant::now() + WAIT;
        while node.slots().shard_of(conv) != shard {
            assert!(
                tokio::time::Instant::now() < deadline,
                "node {} never routed {conv:?} to {shard}",
                node.id()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_splits_and_merges_under_write_load_with_nothing_lost_or_doubled() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = cluster(dir.path(), 3, 2).await;
    let (low, high) = convs(3);
    let all: Vec<ConversationId> = low.iter().chain(high.iter()).copied().collect();
    let checked: Vec<(ConversationId, Checker)> =
        all.iter().map(|c| (*c, Checker::default())).collect();
    let first = nodes[0].as_ref().unwrap();
    // The first node registers a tick after the metadata group forms; the
    // split needs the slot map it records.
    let deadline = tokio::time::Instant::now() + WAIT;
    while first
        .refresh_cluster_map()
        .await
        .map_or(true, |m| m.slots.is_none())
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no slot map recorded"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for &c in &all {
        first
            .write(create_group(c, &[1, 2, 3]), WAIT)
            .await
            .unwrap();
    }
    let nodes = Arc::new(nodes);

    // Split shard 1 at its middle slot, through a node of its choosing.
    let splitter = Arc::clone(&nodes);
    under_load(&nodes, &checked, "split", async move {
        let done = splitter[1]
            .as_ref()
            .unwrap()
            .split(ShardId(1), None)
            .await
            .expect("split");
        assert_eq!(
            (done.parent, done.child, done.at),
            (ShardId(1), ShardId(3), 1024)
        );
    })
    .await;
    wait_leader(&nodes, ShardId(3), WAIT).await;
    routed(&nodes, high[0], ShardId(3)).await;
    routed(&nodes, low[0], ShardId(1)).await;
    // The child's fan-out delivers what was sent to the moved
    // conversations, before and after the cut.
    common::check_inboxes(&nodes, high[0], &[1, 2, 3], Duration::from_secs(30)).await;
    common::check_inboxes(&nodes, low[0], &[1, 2, 3], Duration::from_secs(30)).await;

    // Merge it back, through another node.
    let merger = Arc::clone(&nodes);
    under_load(&nodes, &checked, "merge", async move {
        let done = merger[2]
            .as_ref()
            .unwrap()
            .merge(ShardId(1), ShardId(3))
            .await
            .expect("merge");
        assert_eq!((done.parent, done.child), (ShardId(1), ShardId(3)));
    })
    .await;
    routed(&nodes, high[0], ShardId(1)).await;
    for node in nodes.iter().flatten() {
        let deadline = tokio::time::Instant::now() + WAIT;
        while node.groups().any(|g| g == ShardId(3)) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "node {} kept the merged group",
                node.id()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    common::check_inboxes(&nodes, high[1], &[1, 2, 3], Duration::from_secs(30)).await;

    // After a restart of every node the merged group stays closed, and
    // both halves take writes on shard 1.
    let Ok(mut nodes) = Arc::try_unwrap(nodes) else {
        panic!("a writer still holds the nodes");
    };
    let mut addrs = Vec::new();
    for slot in nodes.iter_mut() {
        let node = slot.take().unwrap();
        addrs.push(node.addr().parse().unwrap());
        node.shutdown().await.unwrap();
    }
    for (i, addr) in addrs.into_iter().enumerate() {
        let id = i as u64 + 1;
        nodes[i] = Some(
            Node::start(config_at(id, addr, dir.path(), 2))
                .await
                .unwrap(),
        );
    }
    wait_leader(&nodes, ShardId(1), Duration::from_secs(20)).await;
    for node in nodes.iter().flatten() {
        assert!(!node.groups().any(|g| g == ShardId(3)), "reopened");
    }
    for conv in [high[2], low[2]] {
        let id = format!("after-restart-{}", conv.0);
        let r = nodes[2]
            .as_ref()
            .unwrap()
            .write(send(conv, 2, &id), WAIT)
            .await;
        assert!(
            matches!(r, Ok(missive_chat::command::Outcome::Appended { .. })),
            "{r:?}"
        );
    }
    for node in nodes.into_iter().flatten() {
        node.shutdown().await.unwrap();
    }
}
