//! Online shard split on a 3-node cluster under a steady write load: the
//! history checker finds every acknowledged message exactly once, in one
//! order on every replica; the moved conversations are served by the new
//! shard afterwards (writes and reads, from every node), their fan-out
//! keeps filling inboxes; and the split survives a restart of every node.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{cluster, config_at, create_group, send, wait_leader, Checker};
use missive_chat::ChatNode as Node;
use missive_engine::keys::{ConversationId, Slot};
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_splits_under_write_load_with_nothing_lost_or_doubled() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = cluster(dir.path(), 3, 2).await;
    let (low, high) = convs(3);
    let all: Vec<ConversationId> = low.iter().chain(high.iter()).copied().collect();
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
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for (i, &conv) in all.iter().enumerate() {
        let (nodes, stop) = (Arc::clone(&nodes), Arc::clone(&stop));
        let checker = Checker::default();
        writers.push((
            conv,
            checker.clone(),
            tokio::spawn(async move {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    // Each writer goes through another node, in turn.
                    let node = nodes[(i + n as usize) % 3].as_ref().unwrap();
                    let id = format!("c{}-m{n}", conv.0);
                    checker.invoke(&id);
                    let r = node.write(send(conv, 1, &id), WAIT).await;
                    checker.record(&id, &r);
                    n += 1;
                }
            }),
        ));
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    let done = nodes[1]
        .as_ref()
        .unwrap()
        .split(ShardId(1), None)
        .await
        .expect("split");
    assert_eq!(
        (done.parent, done.child, done.at),
        (ShardId(1), ShardId(3), 1024)
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, Ordering::Relaxed);
    let mut oks = 0;
    for (_, checker, w) in &mut writers {
        w.await.unwrap();
        oks += checker.oks();
    }
    assert!(oks > 50, "only {oks} writes were acknowledged");
    wait_leader(&nodes, ShardId(3), WAIT).await;

    // Every node routes the moved conversations to the child, and the
    // checker holds on every replica.
    for node in nodes.iter().flatten() {
        let deadline = tokio::time::Instant::now() + WAIT;
        while node.slots().shard_of(high[0]) != ShardId(3) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "node {} never learned the split",
                node.id()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(node.slots().shard_of(low[0]), ShardId(1));
    }
    for (conv, checker, _) in &writers {
        checker.check(&nodes, *conv, 1).await;
    }
    // The child's fan-out delivers what was sent to the moved
    // conversations, before and after the cut.
    common::check_inboxes(&nodes, high[0], &[1, 2, 3], Duration::from_secs(30)).await;
    common::check_inboxes(&nodes, low[0], &[1, 2, 3], Duration::from_secs(30)).await;

    // After a restart of every node the child is opened from its owner
    // record, and both halves take writes.
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
    wait_leader(&nodes, ShardId(3), Duration::from_secs(20)).await;
    for conv in [high[1], low[1]] {
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
