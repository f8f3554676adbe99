//! Leader balance and failover, with the runtime's default Raft timing:
//! leaders spread over the nodes after bootstrap and again after a node
//! comes back; a leader's death stops writes to its shards for well under
//! the old 3–4 s. (The bound here is generous, for a loaded CI machine;
//! `missive-bench cluster` measures the real figure.)
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use crate::common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::{bootstrap_all, config_at, create_group, init_tracing, send, wait_leader};
use missive_chat::ChatNode as Node;
use missive_engine::keys::ConversationId;
use missive_raft::cluster::balance;
use missive_raft::node::RaftTiming;
use missive_raft::{NodeId, ShardId};

const SHARDS: u32 = 8;

/// How many data shards each node leads, as the leaders themselves say.
fn leaders_per_node(nodes: &[Option<Node>]) -> BTreeMap<NodeId, usize> {
    let mut count = BTreeMap::new();
    for n in nodes.iter().flatten() {
        let led = (1..=SHARDS)
            .filter(|&s| n.leader(ShardId(s)).unwrap() == Some(n.id()))
            .count();
        count.insert(n.id(), led);
    }
    count
}

/// Waits until every data shard has a leader and no node leads more than
/// ⌈8 / 3⌉ = 3 of them; returns how long it took and the spread.
async fn wait_balanced(
    nodes: &[Option<Node>],
    within: Duration,
) -> (Duration, BTreeMap<NodeId, usize>) {
    let t0 = Instant::now();
    loop {
        let count = leaders_per_node(nodes);
        let led: usize = count.values().sum();
        if led == SHARDS as usize && count.values().all(|&c| c <= 3) && count.len() == 3 {
            return (t0.elapsed(), count);
        }
        assert!(
            t0.elapsed() < within,
            "leaders not balanced within {within:?}: {count:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The first running node.
fn any(nodes: &[Option<Node>]) -> &Node {
    nodes.iter().flatten().next().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leaders_spread_at_bootstrap_and_after_a_restart_and_failover_is_quick() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let mut addrs = Vec::new();
    let mut nodes = Vec::new();
    for id in 1..=3u64 {
        let addr = format!("127.0.0.{id}:0").parse().unwrap();
        let mut c = config_at(id, addr, dir.path(), SHARDS);
        c.timing = RaftTiming::default();
        let n = Node::start(c).await.unwrap();
        addrs.push(n.addr().parse().unwrap());
        nodes.push(n);
    }
    let mut nodes = bootstrap_all(nodes).await;
    let (took, spread) = wait_balanced(&nodes, Duration::from_secs(10)).await;
    println!("balanced {took:?} after bootstrap: {spread:?}");

    // A conversation on a shard node 2 leads, to write to across its death.
    let victim: NodeId = 2;
    let slots = nodes[0].as_ref().unwrap().slots().clone();
    let conv = (1u64..)
        .map(ConversationId)
        .find(|c| {
            let s = slots.shard_of(*c);
            nodes[1].as_ref().unwrap().leader(s).unwrap() == Some(victim)
        })
        .unwrap();
    let shard = slots.shard_of(conv);
    any(&nodes)
        .write(create_group(conv, &[1, 2]), Duration::from_secs(10))
        .await
        .unwrap();

    // Node 2 dies (its groups stop answering); writes to its shard resume
    // once a survivor is elected.
    let node = nodes[1].take().unwrap();
    node.shutdown().await.unwrap();
    let killed = Instant::now();
    let mut i = 0;
    loop {
        i += 1;
        let r = any(&nodes)
            .write(
                send(conv, 1, &format!("after-{i}")),
                Duration::from_millis(100),
            )
            .await;
        if r.is_ok() {
            break;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(10),
            "no write within 10 s of the kill: {r:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let failover = killed.elapsed();
    println!("leader death → first acknowledged write on its shard: {failover:?}");
    assert!(
        failover < Duration::from_secs(3),
        "failover took {failover:?}"
    );
    assert_ne!(
        wait_leader(&nodes, shard, Duration::from_secs(5)).await,
        victim
    );

    // It comes back (same address: the membership names it) leading
    // nothing; the balancer hands its shards back.
    let mut c = config_at(victim, addrs[1], dir.path(), SHARDS);
    c.timing = RaftTiming::default();
    nodes[1] = Some(Node::start(c).await.unwrap());
    let (took, spread) = wait_balanced(&nodes, Duration::from_secs(60)).await;
    println!("balanced {took:?} after the restart: {spread:?}");
    assert!(
        spread[&victim] >= 2,
        "the restarted node leads too little: {spread:?}"
    );
    // The survivors counted the failover's election and leader change,
    // and handed the restarted node its shards back — at least one by a
    // hand-over, unless it won its share back by plain elections before a
    // balancer round (every `balance::ROUND`) could hand it anything: under
    // load its first heartbeats come late and it campaigns (CI runs:
    // {1: 3, 2: 2, 3: 3} with one hand-over; the same spread 101 ms after
    // the restart with none).
    let survivor = nodes[0].as_ref().unwrap();
    let seen = survivor.group_stats(shard).unwrap();
    assert!(seen.elections >= 2 && seen.leader_changes >= 2, "{seen:?}");
    assert!(seen.applied_index <= seen.log_index, "{seen:?}");
    let handed: u64 = [0, 2]
        .iter()
        .map(|&i| nodes[i].as_ref().unwrap().leader_handovers())
        .sum();
    assert!(
        handed >= 1 || took < balance::ROUND,
        "balanced {took:?} after the restart, handovers: {handed}"
    );

    // Everything acknowledged is still there, once.
    any(&nodes)
        .write(send(conv, 1, "after-restart"), Duration::from_secs(10))
        .await
        .unwrap();
    for n in nodes.into_iter().flatten() {
        n.shutdown().await.unwrap();
    }
}
