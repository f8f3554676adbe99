//! Replication end to end: a single-voter node, and a 3-node cluster on
//! 127.0.0.x that loses its leader under a steady write load.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use crate::common;

use std::time::{Duration, Instant};

use common::{
    cluster, config, config_at, create_group, send, wait_converged, wait_leader, Checker,
};
use missive_chat::command::{Outcome, UserId};
use missive_chat::ChatNode as Node;
use missive_chat::{Error, Seq};
use missive_engine::keys::ConversationId;
use missive_raft::node::Consistency;
use missive_raft::ShardId;

const WAIT: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_node_is_a_cluster_of_one_and_replays_its_log_on_restart() {
    let dir = tempfile::tempdir().unwrap();
    let conv = ConversationId(5);
    let mut nodes = cluster(dir.path(), 1, 1).await;
    let node = nodes[0].take().unwrap();
    assert_eq!(
        node.write(create_group(conv, &[1, 2]), WAIT).await.unwrap(),
        Outcome::Created { created: true }
    );
    for i in 1..=50u64 {
        match node
            .write(send(conv, 1, &format!("m{i}")), WAIT)
            .await
            .unwrap()
        {
            Outcome::Appended { seq, duplicate, .. } => {
                assert_eq!(seq, Seq(i));
                assert!(!duplicate);
            }
            o => panic!("{o:?}"),
        }
    }
    // A resend answers with the original position.
    let again = node.write(send(conv, 1, "m7"), WAIT).await.unwrap();
    assert!(
        matches!(
            again,
            Outcome::Appended {
                seq: Seq(7),
                duplicate: true,
                ..
            }
        ),
        "{again:?}"
    );
    // A non-member is refused, deterministically, by the state machine.
    let refused = node.write(send(conv, 9, "x"), WAIT).await;
    assert!(
        matches!(refused, Err(Error::Rejected { .. })),
        "{refused:?}"
    );
    let before = node
        .history(conv, None, 1000, Consistency::Linearizable)
        .await
        .unwrap();
    node.shutdown().await.unwrap();

    let mut nodes = vec![Some(Node::start(config(1, dir.path(), 1)).await.unwrap())];
    wait_leader(&nodes, ShardId(1), Duration::from_secs(20)).await;
    let node = nodes[0].take().unwrap();
    let after = node
        .history(conv, None, 1000, Consistency::Linearizable)
        .await
        .unwrap();
    assert_eq!(before, after);
    match node.write(send(conv, 1, "m51"), WAIT).await.unwrap() {
        Outcome::Appended { seq, .. } => assert_eq!(seq, Seq(51)),
        o => panic!("{o:?}"),
    }
    // Every message reached both members' inboxes once, across the
    // restart, and the sender's own messages count as read.
    let nodes = vec![Some(node)];
    common::check_inboxes(&nodes, conv, &[1, 2], WAIT).await;
    let node = nodes.into_iter().flatten().next().unwrap();
    let sender = node
        .user_conversation(UserId(1), conv, Consistency::Linearizable)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (sender.member, sender.last_seq, sender.unread()),
        (true, Seq(51), 0)
    );
    let other = node
        .user_conversation(UserId(2), conv, Consistency::Linearizable)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((other.member, other.unread()), (true, 51));
    node.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_loss_under_load_loses_no_acknowledged_write() {
    let seed = common::seed();
    let dir = tempfile::tempdir().unwrap();
    let conv = ConversationId(seed % 1000 + 1);
    let nodes = cluster(dir.path(), 3, 1).await;
    let shard = ShardId(1);
    nodes[0]
        .as_ref()
        .unwrap()
        .write(create_group(conv, &[1, 2]), WAIT)
        .await
        .unwrap();

    let checker = Checker::default();
    let shared = std::sync::Arc::new(tokio::sync::RwLock::new(nodes));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // When the old leader was back, and every write invoked after that
    // whose outcome was unknown (there should be none: see below).
    let restarted = std::sync::Arc::new(std::sync::Mutex::new(None::<Instant>));
    let late_unknown = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut writers = Vec::new();
    for w in 0..4u64 {
        let (checker, shared, stop) = (checker.clone(), shared.clone(), stop.clone());
        let (restarted, late_unknown) = (restarted.clone(), late_unknown.clone());
        writers.push(tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                i += 1;
                let id = format!("w{w}-{i}");
                checker.invoke(&id);
                let (invoked, r) = {
                    let nodes = shared.read().await;
                    let live: Vec<&Node> = nodes.iter().flatten().collect();
                    let node = live[(w as usize + i as usize) % live.len()];
                    let invoked = Instant::now();
                    let r = node.write(send(conv, 1, &id), Duration::from_secs(5)).await;
                    (invoked, r)
                };
                let after_restart = restarted.lock().unwrap().is_some_and(|t| invoked > t);
                if after_restart
                    && matches!(r, Err(Error::Runtime(missive_raft::Error::Unknown { .. })))
                {
                    late_unknown
                        .lock()
                        .unwrap()
                        .push((id.clone(), invoked.elapsed()));
                }
                checker.record(&id, &r);
                if r.is_err() {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let oks_before = checker.oks();
    assert!(oks_before > 0, "no write succeeded before the kill");

    // Kill the leader.
    let (leader, leader_addr, killed_at) = {
        let mut nodes = shared.write().await;
        let leader = wait_leader(&nodes, shard, WAIT).await;
        let node = nodes[leader as usize - 1].take().unwrap();
        let addr = node.addr().parse().unwrap();
        node.shutdown().await.unwrap();
        (leader, addr, Instant::now())
    };
    println!("killed leader {leader}");
    let oks_at_kill = checker.oks();
    let new_leader = {
        let nodes = shared.read().await;
        wait_leader(&nodes, shard, Duration::from_secs(20)).await
    };
    assert_ne!(new_leader, leader);
    let deadline = Instant::now() + Duration::from_secs(20);
    while checker.oks() <= oks_at_kill {
        assert!(
            Instant::now() < deadline,
            "writes did not resume after the leader died"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    println!("first write after the kill: {:?}", killed_at.elapsed());
    tokio::time::sleep(Duration::from_millis(1000)).await;

    // The old leader comes back from its data directory and catches up.
    {
        let mut nodes = shared.write().await;
        nodes[leader as usize - 1] = Some(
            Node::start(config_at(leader, leader_addr, dir.path(), 1))
                .await
                .unwrap(),
        );
        *restarted.lock().unwrap() = Some(Instant::now());
    }
    tokio::time::sleep(Duration::from_millis(1000)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
    // openraft restores a restarted former leader as leader of its old
    // term; writes through it used to hang for the 10 s apply timeout and
    // come back Unknown. The batcher confirms leadership first now.
    let late_unknown = late_unknown.lock().unwrap().clone();
    assert!(
        late_unknown.is_empty(),
        "writes after the restart ended Unknown: {late_unknown:?}"
    );
    let nodes = std::sync::Arc::try_unwrap(shared)
        .ok()
        .unwrap()
        .into_inner();
    wait_converged(&nodes, shard, Duration::from_secs(30)).await;
    println!("acknowledged writes: {}", checker.oks());
    let m = nodes[leader as usize - 1]
        .as_ref()
        .unwrap()
        .raft(shard)
        .unwrap()
        .metrics()
        .borrow()
        .clone();
    println!(
        "restarted node: applied {:?}, snapshot {:?}, purged {:?}",
        m.last_applied, m.snapshot, m.purged
    );
    checker.check(&nodes, conv, 1).await;
    // The fan-out survived the leader change too: each member's inbox on
    // every replica holds every message once, in order.
    common::check_inboxes(&nodes, conv, &[1, 2], Duration::from_secs(30)).await;
    for n in nodes.into_iter().flatten() {
        n.shutdown().await.unwrap();
    }
}
