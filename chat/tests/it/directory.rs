//! The metadata group on a live cluster: every node's copy of the cluster
//! map follows bootstrap, a join, replica moves and a node's removal; a
//! joined node learns every node from a single seed (it keeps routing and
//! receiving signals after that seed dies); nodes the cluster must refuse
//! (another shard count, a forgotten id — its old process, and a new
//! machine reusing it) are refused.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use crate::common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use missive_chat::ChatNode as Node;
use missive_engine::keys::ConversationId;
use missive_raft::cluster::directory::ClusterMap;
use missive_raft::cluster::membership::Change;
use missive_raft::node::Consistency;
use missive_raft::{Error, NodeId, ShardId};

use common::{cluster, config, config_at, create_group, send};

const WAIT: Duration = Duration::from_secs(15);

/// Waits until every running node's own copy of the map (not a fresh
/// read: this checks that changes reach the copies) satisfies `ok`.
async fn every_copy(nodes: &[Option<Node>], what: &str, ok: impl Fn(&ClusterMap) -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let copies: Vec<(NodeId, std::sync::Arc<ClusterMap>)> = nodes
            .iter()
            .flatten()
            .map(|n| (n.id(), n.cluster_map()))
            .collect();
        if copies.iter().all(|(_, m)| ok(m)) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not on every node within {WAIT:?}: {copies:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn voters(m: &ClusterMap, shard: u32) -> BTreeSet<NodeId> {
    m.shards
        .get(&ShardId(shard))
        .map(|e| e.voters.clone())
        .unwrap_or_default()
}

/// A conversation on `shard`.
fn conv_on(node: &Node, shard: ShardId) -> ConversationId {
    (1..)
        .map(ConversationId)
        .find(|c| node.slots().shard_of(*c) == shard)
        .unwrap()
}

fn rejected(r: Result<(), Error>, want: &str) {
    match r {
        Err(Error::Refused(message)) if message.contains(want) => {}
        other => panic!("expected a refusal saying {want:?}, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_map_follows_joins_moves_and_removals_on_every_node() {
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = cluster(dir.path(), 3, 2).await;
    let addr = |n: &Option<Node>| n.as_ref().unwrap().addr().to_string();
    let (addr1, addr2) = (addr(&nodes[0]), addr(&nodes[1]));

    // Bootstrap: every node registered itself, every group's leader
    // reported its voters (the metadata group, shard 0, included).
    every_copy(&nodes, "the bootstrap map", |m| {
        m.nodes.len() == 3
            && m.slots.as_ref().is_some_and(|s| s.shard_count() == 2)
            && (0..=2).all(|s| voters(m, s) == BTreeSet::from([1, 2, 3]))
    })
    .await;

    // Node 4 joins knowing only node 1; every node learns of it.
    let seeds = BTreeMap::from([(1, addr1.clone())]);
    let four = Node::start(config(4, dir.path(), 2)).await.unwrap();
    four.join(&seeds).await.unwrap();
    let addr4 = four.addr().to_string();
    nodes.push(Some(four));
    every_copy(&nodes, "node 4 in the directory", |m| {
        m.nodes.get(&4) == Some(&addr4) && m.nodes.len() == 4
    })
    .await;

    // Node 2 never heard of node 4 but through the map: its signal
    // reaches it, and node 4's reaches node 3.
    let mut at4 = nodes[3].as_ref().unwrap().signals();
    let mut at3 = nodes[2].as_ref().unwrap().signals();
    nodes[1].as_ref().unwrap().signal(b"from 2".to_vec());
    nodes[3].as_ref().unwrap().signal(b"from 4".to_vec());
    for (rx, want) in [(&mut at4, &b"from 2"[..]), (&mut at3, &b"from 4"[..])] {
        tokio::time::timeout(WAIT, async { while &*rx.recv().await.unwrap() != want {} })
            .await
            .unwrap_or_else(|_| panic!("signal {want:?} not delivered"));
    }

    // A node started with another shard count is refused, and not listed.
    let five = Node::start(config(5, dir.path(), 3)).await.unwrap();
    rejected(five.join(&seeds).await, "started with 3 shards");
    five.shutdown().await.unwrap();

    // Node 1 — node 4's only seed — dies. Node 4 still serves every shard,
    // through the replicas the map names.
    let one = nodes[0].take().unwrap();
    let one_addr: std::net::SocketAddr = one.addr().parse().unwrap();
    one.shutdown().await.unwrap();
    let four = nodes[3].as_ref().unwrap();
    for s in 1..=2 {
        let conv = conv_on(four, ShardId(s));
        four.write(create_group(conv, &[1, 2]), WAIT).await.unwrap();
        four.write(send(conv, 1, "after node 1 died"), WAIT)
            .await
            .unwrap();
        let got = four
            .history(conv, None, 10, Consistency::Linearizable)
            .await
            .unwrap();
        assert_eq!(got.len(), 1, "shard {s} read back through node 4");
    }

    // Node 1 cannot be forgotten while it holds replicas.
    let two = nodes[1].as_ref().unwrap();
    rejected(two.forget_node(1).await.map(drop), "still holds replicas");

    // Drain node 1 onto node 4: the data shards first. Their leaders
    // report to the metadata group, which node 4 is not a replica of: its
    // copy follows through the versions that ride on Raft traffic.
    let before = two.cluster_map().version;
    let drain = |s: u32| {
        let addr4 = addr4.clone();
        async move {
            let p = four
                .change_replicas(
                    ShardId(s),
                    Change::Move {
                        from: 1,
                        to: 4,
                        addr: addr4,
                    },
                )
                .await
                .unwrap();
            assert_eq!(
                p.voters.keys().copied().collect::<BTreeSet<_>>(),
                [2, 3, 4].into()
            );
        }
    };
    drain(1).await;
    drain(2).await;
    every_copy(&nodes, "the data shard moves", |m| {
        m.version > before && (1..=2).all(|s| voters(m, s) == BTreeSet::from([2, 3, 4]))
    })
    .await;
    // Then the metadata group itself.
    drain(0).await;
    every_copy(&nodes, "the metadata group's move", |m| {
        voters(m, 0) == BTreeSet::from([2, 3, 4])
    })
    .await;

    // Now node 1 can be forgotten: it leaves every copy.
    two.forget_node(1).await.unwrap();
    every_copy(&nodes, "node 1 forgotten", |m| {
        !m.nodes.contains_key(&1) && m.forgotten.contains(&1)
    })
    .await;

    // Node 1's old process coming back with its data is shut out: peers
    // refuse its connections (its signal goes nowhere; node 3's, sent
    // after it, arrives).
    let stale = Node::start(config_at(1, one_addr, dir.path(), 2))
        .await
        .unwrap();
    let mut at2 = nodes[1].as_ref().unwrap().signals();
    stale.signal(b"from the stale node 1".to_vec());
    tokio::time::sleep(Duration::from_millis(500)).await;
    nodes[2].as_ref().unwrap().signal(b"from 3".to_vec());
    let first = tokio::time::timeout(WAIT, at2.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        &*first, b"from 3",
        "a forgotten node's signal was delivered"
    );
    stale.shutdown().await.unwrap();

    // A new machine reusing id 1 (a fresh data directory) is refused too,
    // saying why.
    let reborn = Node::start(config(1, &dir.path().join("reborn"), 2))
        .await
        .unwrap();
    match reborn.join(&BTreeMap::from([(2, addr2)])).await {
        Err(Error::Unavailable { reason, .. })
            if reason.contains("node 1 was removed from the cluster") => {}
        other => panic!("a reused id joined: {other:?}"),
    }
    reborn.shutdown().await.unwrap();
    let map = nodes[1]
        .as_ref()
        .unwrap()
        .refresh_cluster_map()
        .await
        .unwrap();
    assert_eq!(map.nodes.keys().copied().collect::<Vec<_>>(), [2, 3, 4]);

    for n in nodes.into_iter().flatten() {
        n.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_removed_while_its_node_was_down_retires_when_it_comes_back() {
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = cluster(dir.path(), 3, 1).await;
    let shard = ShardId(1);
    let four = Node::start(config(4, dir.path(), 1)).await.unwrap();
    let seeds = BTreeMap::from([(1, nodes[0].as_ref().unwrap().addr().to_string())]);
    four.join(&seeds).await.unwrap();
    let addr4 = four.addr().to_string();
    nodes.push(Some(four));

    // Node 3 is down while its replica of shard 1 moves to node 4: it
    // never hears the leader's Retire.
    let three = nodes[2].take().unwrap();
    let addr3: std::net::SocketAddr = three.addr().parse().unwrap();
    three.shutdown().await.unwrap();
    let change = Change::Move {
        from: 3,
        to: 4,
        addr: addr4,
    };
    nodes[0]
        .as_ref()
        .unwrap()
        .change_replicas(shard, change)
        .await
        .unwrap();

    // Back, its group's last configuration still names it a voter; its
    // copy of the map says otherwise, a replica confirms, it retires.
    let three = Node::start(config_at(3, addr3, dir.path(), 1))
        .await
        .unwrap();
    assert!(
        three.hosts(shard),
        "the restarted node still thinks it hosts the shard"
    );
    let deadline = tokio::time::Instant::now() + WAIT;
    while three.hosts(shard) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the removed replica never retired: {:?}",
            three.cluster_map()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Its copy of the shard is deleted: the group starts over empty.
    while three.group_stats(shard).unwrap().wipes == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the retired replica was not wiped"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(three.group_stats(shard).unwrap().applied_index, 0);
    assert_eq!(three.log().bounds(shard.stream()).last, 0);
    // It still hosts the metadata group (nothing moved that), and serves
    // shard 1 by routing.
    assert!(three.hosts(ShardId::DIRECTORY));
    let conv = conv_on(&three, shard);
    three
        .write(create_group(conv, &[1, 2]), WAIT)
        .await
        .unwrap();
    nodes[2] = Some(three);
    for n in nodes.into_iter().flatten() {
        n.shutdown().await.unwrap();
    }
}
