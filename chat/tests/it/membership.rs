//! Membership procedures on a live cluster: a fourth node joins hosting
//! nothing and serves reads and writes by routing them; a shard's replica
//! moves from its leader to the new node under a steady write load; the
//! removed replica retires (stops campaigning, across a restart) and is
//! revived when added back.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use crate::common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use missive_chat::ChatNode as Node;
use missive_engine::keys::ConversationId;
use missive_raft::cluster::membership::Change;
use missive_raft::node::Consistency;
use missive_raft::{Error, NodeId, ShardId};

use common::{cluster, config, config_at, create_group, send, wait_leader, Checker};

const WAIT: Duration = Duration::from_secs(10);

/// The term `node` holds for `shard` now.
fn term(node: &Node, shard: ShardId) -> u64 {
    node.raft(shard).unwrap().metrics().borrow().current_term
}

/// Waits until the nodes hosting `shard` agree on a leader that is one of
/// them.
async fn leader_among_hosts(nodes: &[Option<Node>], shard: ShardId) -> NodeId {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let seen: BTreeSet<Option<NodeId>> = nodes
            .iter()
            .flatten()
            .filter(|n| n.hosts(shard))
            .map(|n| n.leader(shard).unwrap())
            .collect();
        if let [Some(l)] = seen.iter().copied().collect::<Vec<_>>()[..] {
            if nodes
                .iter()
                .flatten()
                .any(|n| n.id() == l && n.hosts(shard))
            {
                return l;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "hosts of {shard} agree on no leader: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn voters(node: &Node, shard: ShardId) -> BTreeSet<NodeId> {
    node.voters(shard).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_moves_off_its_leader_to_a_new_node_under_load_and_loses_nothing() {
    let seed = common::seed();
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = cluster(dir.path(), 3, 2).await;
    let conv = ConversationId(seed % 1000 + 1);
    let shard = nodes[0].as_ref().unwrap().slots().shard_of(conv);
    let seeds: BTreeMap<NodeId, String> = nodes
        .iter()
        .flatten()
        .map(|n| (n.id(), n.addr().to_string()))
        .collect();

    let leader = wait_leader(&nodes, shard, WAIT).await;

    // Node 4 joins: it hosts nothing, yet reads and writes through it work.
    let four = Node::start(config(4, dir.path(), 2)).await.unwrap();
    four.join(&seeds).await.unwrap();
    assert!(!four.hosts(shard));
    four.write(create_group(conv, &[1, 2]), WAIT).await.unwrap();
    let checker = Checker::default();
    checker.invoke("via-4");
    let first = four.write(send(conv, 1, "via-4"), WAIT).await;
    checker.record("via-4", &first);
    let got = four
        .history(conv, None, 10, Consistency::Linearizable)
        .await
        .unwrap();
    assert_eq!(got.len(), 1, "the message, read back through node 4");
    assert_eq!(got[0].message.client_msg_id, "via-4");
    println!("write through the joined node: {first:?}");
    let four_addr = four.addr().to_string();
    nodes.push(Some(four));

    // Writers through node 4 (routed) and through a node that stays.
    let stays = (1..=3).find(|&i| i != leader).unwrap();
    let shared = Arc::new(tokio::sync::RwLock::new(nodes));
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for (w, via) in [(0u64, 4u64), (1, stays)] {
        let (checker, shared, stop) = (checker.clone(), shared.clone(), stop.clone());
        writers.push(tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let id = format!("w{w}-{i}");
                checker.invoke(&id);
                let r = {
                    let nodes = shared.read().await;
                    let node = nodes[via as usize - 1].as_ref().unwrap();
                    node.write(send(conv, 1, &id), Duration::from_secs(5)).await
                };
                checker.record(&id, &r);
                if r.is_err() {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    let before = checker.oks();
    assert!(before > 0, "no write succeeded before the move");

    // Move the leader's replica to node 4, asked of node 4 (it forwards the
    // change to the leader).
    let placement = {
        let nodes = shared.read().await;
        nodes[3]
            .as_ref()
            .unwrap()
            .change_replicas(
                shard,
                Change::Move {
                    from: leader,
                    to: 4,
                    addr: four_addr.clone(),
                },
            )
            .await
            .unwrap()
    };
    println!("moved {shard} from node {leader} to node 4: {placement:?}");
    let want: BTreeSet<NodeId> = [1, 2, 3, 4].into_iter().filter(|&n| n != leader).collect();
    assert_eq!(
        placement.voters.keys().copied().collect::<BTreeSet<_>>(),
        want
    );
    {
        let nodes = shared.read().await;
        let new_leader = leader_among_hosts(&nodes, shard).await;
        assert_ne!(new_leader, leader, "the removed node still leads");
        assert!(nodes[3].as_ref().unwrap().hosts(shard));
        let old = nodes[leader as usize - 1].as_ref().unwrap();
        assert!(!old.hosts(shard), "the removed replica is not retired");
    }
    // Writes keep being acknowledged after the move.
    let at_move = checker.oks();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while checker.oks() < at_move + 20 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "writes did not continue after the move"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The removed replica's data leaves the node: wiped from its LSM (and
    // its log), gone from its table files after a compaction — while a
    // replica that holds the shard still has the conversation's messages
    // in its files (so the search below can find what it looks for).
    {
        let nodes = shared.read().await;
        let old = nodes[leader as usize - 1].as_ref().unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while old.group_stats(shard).unwrap().wipes == 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the removed replica was not wiped"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let ranges = old.slots().key_ranges(shard);
        for (lo, hi) in &ranges {
            let left = old
                .lsm()
                .scan(
                    lo,
                    hi.as_deref(),
                    missive_engine::lsm::Direction::Forward,
                    10,
                )
                .unwrap();
            assert!(left.is_empty(), "the wiped replica still reads {left:?}");
        }
        let bounds = old.log().bounds(shard.stream());
        assert_eq!(
            bounds.last, 0,
            "the wiped replica's log still has {bounds:?}"
        );
        let needle = missive_engine::keys::conversation_prefix(conv);
        let files = |id: NodeId| {
            dir.path()
                .join(format!("node{id}"))
                .join("lsm")
                .join("tables")
        };
        old.lsm().compact_full().unwrap();
        // A table the compaction replaced is deleted when its last reader
        // lets go (a scan or snapshot of another shard on this node may
        // still hold the old version for a moment), so wait for that —
        // briefly: nothing holds a version for long.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let found = missive_engine::residue::search(&files(leader), &needle).unwrap();
            if found.found.is_empty() {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "left in the tables: {:?}",
                found.found
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let four = nodes[3].as_ref().unwrap();
        four.lsm().flush().unwrap();
        let held = missive_engine::residue::search(&files(4), &needle).unwrap();
        assert!(!held.found.is_empty(), "a replica's tables hold no message");
    }
    // The retired replica does not campaign: its term stays put while the
    // others elect and lead (it would rise every 0.5–1 s otherwise).
    {
        let nodes = shared.read().await;
        let old = nodes[leader as usize - 1].as_ref().unwrap();
        let t0 = term(old, shard);
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert_eq!(term(old, shard), t0, "the retired replica campaigns");
    }
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
    let mut nodes = Arc::try_unwrap(shared).ok().unwrap().into_inner();
    println!(
        "acknowledged writes: {} ({before} before the move)",
        checker.oks()
    );

    // Every acknowledged write, once, in order, on every replica of the new
    // configuration.
    let replicas: Vec<Option<Node>> = nodes
        .iter_mut()
        .map(|n| match n {
            Some(node) if voters(node, shard).contains(&node.id()) && node.hosts(shard) => n.take(),
            _ => None,
        })
        .collect();
    common::wait_converged(&replicas, shard, Duration::from_secs(30)).await;
    checker.check(&replicas, conv, 1).await;
    for (slot, n) in nodes.iter_mut().zip(replicas) {
        if n.is_some() {
            *slot = n;
        }
    }
    // The removed node still answers for the shard, by routing: a
    // linearizable read there sees what node 4 sees.
    let old = nodes[leader as usize - 1].as_ref().unwrap();
    let a = old
        .history(conv, None, usize::MAX, Consistency::Linearizable)
        .await
        .unwrap();
    let b = nodes[3]
        .as_ref()
        .unwrap()
        .history(conv, None, usize::MAX, Consistency::Linearizable)
        .await
        .unwrap();
    assert_eq!(
        a.iter().map(|m| m.ts).collect::<Vec<_>>(),
        b.iter().map(|m| m.ts).collect::<Vec<_>>()
    );

    // Retirement survives a restart.
    let old = nodes[leader as usize - 1].take().unwrap();
    let old_addr = old.addr().parse().unwrap();
    old.shutdown().await.unwrap();
    let old = Node::start(config_at(leader, old_addr, dir.path(), 2))
        .await
        .unwrap();
    old.join(&seeds).await.unwrap();
    assert!(!old.hosts(shard), "retirement forgotten across a restart");
    // (Metrics show term 0 until the group has loaded its vote.)
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t0 = term(&old, shard);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        term(&old, shard),
        t0,
        "the restarted retired replica campaigns"
    );

    // Added back, it is revived; then a follower's replica is removed: a
    // removed follower never hears of the configuration without it, and
    // only retirement keeps it from campaigning.
    let addr = old.addr().to_string();
    nodes[leader as usize - 1] = Some(old);
    let p = nodes[3]
        .as_ref()
        .unwrap()
        .change_replicas(shard, Change::Add { node: leader, addr })
        .await
        .unwrap();
    assert!(p.voters.contains_key(&leader), "{p:?}");
    assert!(nodes[leader as usize - 1].as_ref().unwrap().hosts(shard));
    let now = leader_among_hosts(&nodes, shard).await;
    let follower = [4, stays, leader].into_iter().find(|&n| n != now).unwrap();
    let p = nodes[now as usize - 1]
        .as_ref()
        .unwrap()
        .change_replicas(shard, Change::Remove { node: follower })
        .await
        .unwrap();
    println!("removed follower {follower} of {shard} (leader {now}): {p:?}");
    assert_eq!(p.voters.len(), 3, "{p:?}");
    assert!(!p.voters.contains_key(&follower));
    let gone = nodes[follower as usize - 1].take().unwrap();
    assert!(!gone.hosts(shard), "the removed follower is not retired");
    let t0 = term(&gone, shard);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(term(&gone, shard), t0, "the removed follower campaigns");
    leader_among_hosts(&nodes, shard).await;
    let hosts: Vec<Option<Node>> = nodes
        .iter_mut()
        .map(|n| n.take_if(|n| n.hosts(shard)))
        .collect();
    common::wait_converged(&hosts, shard, Duration::from_secs(30)).await;
    checker.check(&hosts, conv, 1).await;
    for (slot, n) in nodes.iter_mut().zip(hosts) {
        if n.is_some() {
            *slot = n;
        }
    }
    nodes[follower as usize - 1] = Some(gone);

    // Bad changes are refused with a clear error.
    let n = nodes[stays as usize - 1].as_ref().unwrap();
    let e = n
        .change_replicas(
            shard,
            Change::Move {
                from: 9,
                to: 4,
                addr: four_addr,
            },
        )
        .await
        .unwrap_err();
    assert!(matches!(e, Error::InvalidArgument(_)), "{e:?}");

    for n in nodes.into_iter().flatten() {
        n.shutdown().await.unwrap();
    }
}

/// A crash between retirement and the end of the wipe leaves the shard in
/// `RETIRED` with its data still there: the next start wipes it before the
/// group opens. Added back, the empty replica is filled again by its
/// leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wipe_cut_short_is_finished_at_the_next_start() {
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = cluster(dir.path(), 3, 2).await;
    let conv = ConversationId(common::seed() % 1000 + 1);
    let shard = nodes[0].as_ref().unwrap().slots().shard_of(conv);
    let other = ShardId(3 - shard.0);
    let one = nodes[0].as_ref().unwrap();
    one.write(create_group(conv, &[1, 2]), WAIT).await.unwrap();
    for i in 0..50 {
        one.write(send(conv, 1, &format!("m{i}")), WAIT)
            .await
            .unwrap();
    }
    common::wait_converged(&nodes, shard, WAIT).await;

    // Node 3 stops; the shard's replica there is removed meanwhile (so no
    // Retire reaches it); its RETIRED file is made to say what it would
    // have, had the notice arrived just before a crash.
    let three = nodes[2].take().unwrap();
    let addr = three.addr().parse().unwrap();
    assert!(three.group_stats(shard).unwrap().applied_index > 0);
    three.shutdown().await.unwrap();
    let p = nodes[0]
        .as_ref()
        .unwrap()
        .change_replicas(shard, Change::Remove { node: 3 })
        .await
        .unwrap();
    assert!(!p.voters.contains_key(&3), "{p:?}");
    let retired = |dir: &std::path::Path| {
        missive_raft::cluster::retired::Retired::load(&dir.join("node3")).unwrap()
    };
    assert!(retired(dir.path()).retire(shard).unwrap());

    let three = Node::start(config_at(3, addr, dir.path(), 2))
        .await
        .unwrap();
    let stats = three.group_stats(shard).unwrap();
    assert_eq!((stats.wipes, stats.applied_index), (1, 0), "{stats:?}");
    assert_eq!(three.log().bounds(shard.stream()).last, 0);
    assert!(
        retired(dir.path()).all().is_empty(),
        "a wiped shard stays in RETIRED"
    );
    assert!(!three.hosts(shard));
    // The other shard was left alone.
    assert_eq!(three.group_stats(other).unwrap().wipes, 0);
    assert!(three.group_stats(other).unwrap().applied_index > 0);
    let addr = three.addr().to_string();
    nodes[2] = Some(three);

    // Added back, it is filled again: every message, read from node 3's
    // own replica.
    let p = nodes[0]
        .as_ref()
        .unwrap()
        .change_replicas(shard, Change::Add { node: 3, addr })
        .await
        .unwrap();
    assert!(p.voters.contains_key(&3), "{p:?}");
    common::wait_converged(&nodes, shard, Duration::from_secs(30)).await;
    let three = nodes[2].as_ref().unwrap();
    assert!(three.hosts(shard));
    let mine = three
        .history(conv, None, usize::MAX, Consistency::Stale)
        .await
        .unwrap();
    assert_eq!(mine.len(), 50, "node 3's replica after the refill");
    for n in nodes.into_iter().flatten() {
        n.shutdown().await.unwrap();
    }
}
