//! A power cut of every node at once, under load. Each node's engine log
//! lives on the engine's fault-injecting file system, whose "crash" throws
//! away every byte and directory change that was not fsynced — what a
//! power loss does and SIGKILL cannot (the page cache outlives a killed
//! process). With all three replicas cut at the same instant, nothing but
//! what each log store made durable survives anywhere, so every
//! acknowledged write must have been durable on a quorum before it was
//! acknowledged: a vote, a commit index or an append's flush callback
//! reported durable too early would lose writes here.
//!
//! (The LSM's tables are on the real file system; they only ever hold
//! effects of log entries that were synced first — the flush barrier — so
//! they survive the cut as they would a real one, and the memtables, in
//! process memory, die with the nodes.)
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use crate::common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use missive_chat::command::{Command, UserId};
use missive_chat::ChatNode as Node;
use missive_engine::io::FaultFsControl;
use missive_engine::keys::ConversationId;
use missive_raft::node::{Consistency, NodeConfig};
use missive_raft::ShardId;

use common::{bootstrap_all, config, config_at, create_group, send, wait_converged, wait_leader};
use common::{Checker, Seen};

const WAIT: Duration = Duration::from_secs(20);

/// Each disk's flush latency: long enough that a write reported durable
/// before its sync finished is likely to be caught unsynced by the cut.
const SYNC_DELAY: Duration = Duration::from_millis(5);

/// How long the writers run before the cut.
const LOAD: Duration = Duration::from_millis(1500);

fn on_disk(mut c: NodeConfig, disk: &FaultFsControl) -> NodeConfig {
    c.log.fs = Some(disk.fs());
    c
}

async fn start(id: u64, addr: Option<SocketAddr>, dir: &Path, disk: &FaultFsControl) -> Node {
    let c = match addr {
        Some(a) => config_at(id, a, dir, 1),
        None => config(id, dir, 1),
    };
    Node::start(on_disk(c, disk)).await.unwrap()
}

/// Three nodes, each on its own fault-injecting disk, bootstrapped, with a
/// leader for shard 1: the nodes, their disks and their addresses.
async fn three_on_fault_disks(
    dir: &Path,
    sync_delay: Duration,
) -> (Vec<Option<Node>>, Vec<FaultFsControl>, Vec<SocketAddr>) {
    let disks: Vec<FaultFsControl> = (0..3).map(|_| FaultFsControl::new()).collect();
    for d in &disks {
        d.set_sync_delay(sync_delay);
    }
    let mut started = Vec::new();
    for (i, disk) in disks.iter().enumerate() {
        started.push(start(i as u64 + 1, None, dir, disk).await);
    }
    let addrs: Vec<SocketAddr> = started.iter().map(|n| n.addr().parse().unwrap()).collect();
    let nodes = bootstrap_all(started).await;
    wait_leader(&nodes, ShardId(1), WAIT).await;
    (nodes, disks, addrs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_power_cut_of_every_node_at_once_loses_no_acknowledged_write() {
    common::init_tracing();
    let seed = common::seed();
    let dir = tempfile::tempdir().unwrap();
    let (nodes, disks, addrs) = three_on_fault_disks(dir.path(), SYNC_DELAY).await;
    let shard = ShardId(1);
    let conv = ConversationId(seed % 1000 + 1);
    nodes[0]
        .as_ref()
        .unwrap()
        .write(create_group(conv, &[1, 2]), WAIT)
        .await
        .unwrap();

    // One writer through each node; the cut hits all three disks at one
    // instant while writes are in flight.
    let checker = Checker::default();
    let cut = AtomicBool::new(false);
    let writer = |i: usize| {
        let (checker, cut, node) = (&checker, &cut, nodes[i].as_ref().unwrap());
        async move {
            let mut n = 0;
            while !cut.load(Ordering::Acquire) {
                let id = format!("w{i}-{n}");
                checker.invoke(&id);
                let r = node.write(send(conv, 1, &id), Duration::from_secs(2)).await;
                checker.record(&id, &r);
                n += 1;
            }
        }
    };
    let power = async {
        tokio::time::sleep(LOAD).await;
        for d in &disks {
            d.crash();
        }
        cut.store(true, Ordering::Release);
    };
    tokio::join!(writer(0), writer(1), writer(2), power);
    let acked = checker.oks();
    println!("{acked} writes acknowledged before the cut");
    assert!(acked >= 20, "too few writes to mean anything: {acked}");

    // The processes die too (their logs' handles already fail with EIO).
    for n in nodes.into_iter().flatten() {
        let _ = n.shutdown().await;
    }

    // Power back: every node restarts from what its disk kept.
    let mut back = Vec::new();
    for (i, disk) in disks.iter().enumerate() {
        back.push(Some(
            start(i as u64 + 1, Some(addrs[i]), dir.path(), disk).await,
        ));
    }
    wait_leader(&back, shard, WAIT).await;
    // A write after the restart commits, so every replica applies the
    // whole surviving log.
    checker.invoke("after");
    let after = back[0]
        .as_ref()
        .unwrap()
        .write(send(conv, 1, "after"), WAIT)
        .await;
    checker.record("after", &after);
    assert!(
        matches!(checker.get("after"), Some(Seen::Ok(..))),
        "{after:?}"
    );
    wait_converged(&back, shard, WAIT).await;
    checker.check(&back, conv, 1).await;
    for n in back.into_iter().flatten() {
        n.shutdown().await.unwrap();
    }
}

/// A stale read right after a power cut shows nothing older than a stale
/// read showed before it. The log store writes openraft's commit point
/// without waiting for its sync (waiting cost a second fdatasync per Raft
/// round), so a cut can take the record of a follower's last commit with
/// it, and openraft re-applies at boot only up to the record. Here a
/// follower comes back alone: it cannot learn the commit point from
/// anyone, so a stale read there must wait (and fail when no leader
/// comes) rather than serve the older state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_read_after_a_power_cut_is_not_older_than_before_it() {
    common::init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let (nodes, disks, addrs) = three_on_fault_disks(dir.path(), Duration::ZERO).await;
    let shard = ShardId(1);
    let leader = nodes[0].as_ref().unwrap().leader(shard).unwrap().unwrap();
    let l = usize::try_from(leader).unwrap() - 1;
    let f = (l + 1) % 3;
    let user = UserId(7);
    let name = |i: u32| format!("name {i}");
    // A slow disk: the follower's sync of its last commit record is still
    // in flight when the power goes.
    for d in &disks {
        d.set_sync_delay(Duration::from_millis(100));
    }
    for i in 1..=5 {
        let set = Command::SetProfile {
            user,
            display_name: name(i),
        };
        nodes[l].as_ref().unwrap().write(set, WAIT).await.unwrap();
    }
    // The follower learns the last commit from the leader's next message,
    // records it, applies, and serves it.
    let follower = nodes[f].as_ref().unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    while follower
        .profile(user, Consistency::Stale)
        .await
        .unwrap()
        .display_name
        != name(5)
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the follower never applied"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    for d in &disks {
        d.crash();
    }
    for n in nodes.into_iter().flatten() {
        let _ = n.shutdown().await;
    }

    // The follower comes back alone.
    let id = f as u64 + 1;
    let mut back: Vec<Option<Node>> = vec![None, None, None];
    back[f] = Some(start(id, Some(addrs[f]), dir.path(), &disks[f]).await);
    let alone = back[f]
        .as_ref()
        .unwrap()
        .profile(user, Consistency::Stale)
        .await;
    match &alone {
        Ok(p) => assert_eq!(p.display_name, name(5), "a stale read went backwards"),
        Err(e) => assert!(e.is_retryable(), "{e:?}"),
    }
    // With the others back it confirms the commit point and serves it.
    for (i, disk) in disks.iter().enumerate() {
        if i != f {
            back[i] = Some(start(i as u64 + 1, Some(addrs[i]), dir.path(), disk).await);
        }
    }
    wait_leader(&back, shard, WAIT).await;
    let again = back[f]
        .as_ref()
        .unwrap()
        .profile(user, Consistency::Stale)
        .await
        .unwrap();
    assert_eq!(again.display_name, name(5));
    for n in back.into_iter().flatten() {
        n.shutdown().await.unwrap();
    }
}
