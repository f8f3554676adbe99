//! Cluster test helpers: nodes on 127.0.0.x loopback addresses, and a
//! checker of acknowledged writes.
#![allow(dead_code, reason = "each test file uses a different subset")]

pub mod proxy;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use missive_chat::command::{Command, ConversationKind, DeviceId, MessageKind, Outcome, UserId};
use missive_chat::ChatNode as Node;
use missive_chat::Error;
use missive_chat::Useq;
use missive_engine::keys::ConversationId;
use missive_engine::log::LogOptions;
use missive_engine::lsm::LsmOptions;
use missive_raft::node::{Consistency, NodeConfig, RaftTiming};
use missive_raft::{NodeId, ShardId};

/// Logs to the test's output (shown for failures), filtered by RUST_LOG
/// (default: warnings).
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_test_writer()
        .try_init();
}

/// Timing fast enough for tests, slow enough for a loaded 2-core runner.
pub fn timing() -> RaftTiming {
    RaftTiming {
        heartbeat_ms: 100,
        election_min_ms: 500,
        election_max_ms: 1000,
    }
}

/// Node `id`'s config, listening on 127.0.0.`id` (any free port).
pub fn config(id: NodeId, dir: &Path, shards: u32) -> NodeConfig {
    let ip = format!("127.0.0.{id}:0");
    config_at(id, ip.parse::<SocketAddr>().unwrap(), dir, shards)
}

/// Node `id`'s config, listening on `addr` (a restart keeps its address:
/// the membership names it).
pub fn config_at(id: NodeId, addr: SocketAddr, dir: &Path, shards: u32) -> NodeConfig {
    let mut c = NodeConfig::new(id, addr, dir.join(format!("node{id}")));
    c.shards = shards;
    c.timing = timing();
    c.log = LogOptions {
        segment_size: 4 << 20,
        preallocate: false,
        ..LogOptions::default()
    };
    c.lsm = LsmOptions {
        memtable_bytes: 1 << 20,
        block_cache_bytes: 8 << 20,
        ..LsmOptions::default()
    };
    c.snapshot_every = 200;
    c
}

/// Starts `n` nodes (ids 1..=n) on 127.0.0.1..n and bootstraps them.
pub async fn cluster(dir: &Path, n: u64, shards: u32) -> Vec<Option<Node>> {
    init_tracing();
    let mut nodes = Vec::new();
    for id in 1..=n {
        nodes.push(Node::start(config(id, dir, shards)).await.unwrap());
    }
    let nodes = bootstrap_all(nodes).await;
    for s in 1..=shards {
        wait_leader(&nodes, ShardId(s), Duration::from_secs(20)).await;
    }
    nodes
}

/// Bootstraps every node with the whole list (3 replicas per shard).
pub async fn bootstrap_all(nodes: Vec<Node>) -> Vec<Option<Node>> {
    let members: BTreeMap<NodeId, String> = nodes
        .iter()
        .map(|n| (n.id(), n.addr().to_string()))
        .collect();
    for node in &nodes {
        node.bootstrap(&members, 3).await.unwrap();
    }
    nodes.into_iter().map(Some).collect()
}

/// The run's seed: `MISSIVE_SEED` to replay one, else random; printed so
/// a failure can be replayed.
pub fn seed() -> u64 {
    let seed = std::env::var("MISSIVE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    println!("seed {seed}");
    fastrand::seed(seed);
    seed
}

/// Waits until every running node agrees on a leader of `shard`.
pub async fn wait_leader(nodes: &[Option<Node>], shard: ShardId, within: Duration) -> NodeId {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let leaders: HashSet<Option<NodeId>> = nodes
            .iter()
            .flatten()
            .map(|n| n.leader(shard).unwrap())
            .collect();
        if leaders.len() == 1 {
            if let Some(Some(l)) = leaders.into_iter().next() {
                if nodes.iter().flatten().any(|n| n.id() == l) {
                    return l;
                }
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no leader of {shard} within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until every running node has applied the whole log of `shard` —
/// up to the longest log any of them holds. (Equal applied indexes alone
/// are not enough: right after a write is acknowledged the leader's
/// metrics may not show it applied yet while the followers have not got
/// it, and all would agree on the index before it.)
pub async fn wait_converged(nodes: &[Option<Node>], shard: ShardId, within: Duration) {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let (applied, longest) = nodes.iter().flatten().fold(
            (HashSet::new(), None),
            |(mut applied, longest): (HashSet<Option<u64>>, Option<u64>), n| {
                let m = n.raft(shard).unwrap().metrics().borrow().clone();
                applied.insert(m.last_applied.map(|l| l.index));
                (applied, longest.max(m.last_log_index))
            },
        );
        if applied.len() == 1 && applied.contains(&longest) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "replicas of {shard} did not converge within {within:?}: {applied:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn create_group(conv: ConversationId, members: &[u64]) -> Command {
    Command::CreateConversation {
        conv,
        kind: ConversationKind::Group,
        name: format!("group {}", conv.0),
        creator: UserId(members[0]),
        members: members.iter().map(|&u| UserId(u)).collect(),
        max_members: 250,
    }
}

pub fn send(conv: ConversationId, sender: u64, client_msg_id: &str) -> Command {
    Command::AppendMessage {
        conv,
        sender: UserId(sender),
        device: DeviceId(1),
        client_msg_id: client_msg_id.to_string(),
        kind: MessageKind::Text,
        body: client_msg_id.as_bytes().to_vec(),
        expires_at: None,
    }
}

/// What a client saw of one write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    /// Acknowledged at (ts, seq).
    Ok(u64, u64),
    /// Refused before it was written.
    Failed,
    /// May or may not have been written.
    Unknown,
}

/// Records every write a client made, then checks replicas against it.
#[derive(Debug, Default, Clone)]
pub struct Checker {
    seen: Arc<Mutex<HashMap<String, Seen>>>,
}

impl Checker {
    pub fn invoke(&self, id: &str) {
        self.seen
            .lock()
            .unwrap()
            .insert(id.to_string(), Seen::Unknown);
    }

    pub fn record(&self, id: &str, r: &Result<Outcome, Error>) {
        let s = match r {
            Ok(Outcome::Appended { ts, seq, .. }) => Seen::Ok(*ts, seq.0),
            Ok(other) => panic!("unexpected outcome {other:?}"),
            // These promise nothing was written.
            Err(Error::Runtime(
                missive_raft::Error::NotLeader { .. }
                | missive_raft::Error::Unavailable { .. }
                | missive_raft::Error::Transport { .. },
            )) => Seen::Failed,
            Err(_) => Seen::Unknown,
        };
        self.seen.lock().unwrap().insert(id.to_string(), s);
    }

    pub fn get(&self, id: &str) -> Option<Seen> {
        self.seen.lock().unwrap().get(id).cloned()
    }

    /// The ids acknowledged so far.
    pub fn acked(&self) -> HashSet<String> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, s)| matches!(s, Seen::Ok(..)))
            .map(|(id, _)| id.clone())
            .collect()
    }

    pub fn oks(&self) -> usize {
        self.seen
            .lock()
            .unwrap()
            .values()
            .filter(|s| matches!(s, Seen::Ok(..)))
            .count()
    }

    /// Every acknowledged write present exactly once at its acknowledged
    /// (ts, seq) on every replica, the same order everywhere, seqs dense,
    /// nothing no client sent, nothing that failed before being written.
    pub async fn check(&self, nodes: &[Option<Node>], conv: ConversationId, sender: u64) {
        let seen = self.seen.lock().unwrap().clone();
        let mut reference: Option<Vec<(u64, u64, String)>> = None;
        for node in nodes.iter().flatten() {
            let msgs = node
                .history(conv, None, usize::MAX, Consistency::Stale)
                .await
                .unwrap();
            let mut rows: Vec<(u64, u64, String)> = msgs
                .into_iter()
                .filter(|m| m.message.sender == UserId(sender))
                .map(|m| (m.ts, m.message.seq.0, m.message.client_msg_id))
                .collect();
            rows.reverse();
            let mut ids = HashSet::new();
            for (ts, seq, id) in &rows {
                assert!(
                    ids.insert(id.clone()),
                    "node {}: {id} appears twice",
                    node.id()
                );
                match seen.get(id) {
                    None => panic!("node {}: {id} was never sent", node.id()),
                    Some(Seen::Failed) => panic!(
                        "node {}: {id} failed before being written, yet is present",
                        node.id()
                    ),
                    Some(Seen::Ok(t, s)) => {
                        assert_eq!((*t, *s), (*ts, *seq), "node {}: {id} moved", node.id())
                    }
                    Some(Seen::Unknown) => {}
                }
            }
            for (id, s) in &seen {
                if matches!(s, Seen::Ok(..)) {
                    assert!(
                        ids.contains(id),
                        "node {}: acknowledged {id} is missing",
                        node.id()
                    );
                }
            }
            match &reference {
                None => reference = Some(rows),
                Some(r) => assert_eq!(r, &rows, "node {} disagrees on the order", node.id()),
            }
        }
        let rows = reference.unwrap_or_default();
        for (i, (_, seq, _)) in rows.iter().enumerate() {
            assert_eq!(*seq, i as u64 + 1, "seq not dense");
        }
    }
}

/// Waits until the fan-out has delivered every message of `conv` to each of
/// `users`' inboxes on every replica, then checks each inbox holds exactly
/// seqs 1..=head once each, in order, with its conversation events' eseqs
/// strictly rising: nothing lost, nothing repeated across leader changes.
pub async fn check_inboxes(
    nodes: &[Option<Node>],
    conv: ConversationId,
    users: &[u64],
    within: Duration,
) {
    use missive_chat::records::EventKind;
    let deadline = tokio::time::Instant::now() + within;
    for node in nodes.iter().flatten() {
        let head = node.head(conv, Consistency::Stale).await.unwrap().seq;
        for &u in users {
            loop {
                let events = node
                    .inbox(UserId(u), Useq(0), usize::MAX, Consistency::Stale)
                    .await
                    .unwrap();
                let mut eseqs = Vec::new();
                let mut seqs = Vec::new();
                for (i, (useq, e)) in events.iter().enumerate() {
                    assert_eq!(
                        *useq,
                        Useq(i as u64 + 1),
                        "node {}: user {u}: useq gap",
                        node.id()
                    );
                    if e.conv == conv {
                        eseqs.push(e.eseq);
                        if let EventKind::Message { seq, .. } = e.event {
                            seqs.push(seq.0);
                        }
                    }
                }
                assert!(
                    eseqs.windows(2).all(|w| w[0] < w[1]),
                    "node {}: user {u}: eseqs not rising: {eseqs:?}",
                    node.id()
                );
                let want: Vec<u64> = (1..=head.0).collect();
                if seqs == want {
                    break;
                }
                assert!(
                    seqs.len() < want.len() && seqs == want[..seqs.len()],
                    "node {}: user {u}: inbox seqs are not a prefix of 1..={head}: {seqs:?}",
                    node.id()
                );
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "node {}: user {u}: fan-out delivered {} of {head} within {within:?}",
                    node.id(),
                    seqs.len()
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}
