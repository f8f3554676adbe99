//! `missive-bench cluster`: replicated durable writes on a loopback cluster,
//! anchored by the same workload on one node (single-voter groups) in the
//! same run.
//!
//! For each cluster size (1, then `--nodes`) and each writer count, every
//! writer sends messages to its own conversation (conversations spread over
//! every shard) through node `writer % nodes` — a follower forwards to the
//! leader — one at a time, for `--seconds`. Reported: acknowledged
//! messages/s and commit latency p50/p99 (send → outcome, which on the
//! leader means: batched, appended, replicated to a quorum, applied). Then,
//! on the full cluster under 64 writers, the leader of shard 1 is shut down
//! and the time to the first acknowledged write on that shard is measured,
//! `--kills` times (the node is restarted and its leaderships handed back
//! between kills); the median is reported. Last, the same writer counts on
//! the full cluster with every leader moved to node 1 and the balancer off
//! — what one node taking every write costs against leaders spread.
//! With `--split`, before that, shard 1 of the full cluster is split
//! online under 64 writers (`Node::split`): the split's duration, and the
//! commit latency p99 of the writes to shard 1's conversations before,
//! during (from the call to half a second after it returned) and after.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use hdrhistogram::Histogram;
use missive_chat::command::{Command, ConversationKind, DeviceId, MessageKind, NewMessage, UserId};
use missive_chat::ChatNode as Node;
use missive_engine::keys::ConversationId;
use missive_raft::cluster::balance::preferred_leader;
use missive_raft::node::NodeConfig;
use missive_raft::ShardId;
use tokio::sync::RwLock;

/// Command-line arguments.
#[derive(Debug, clap::Args)]
pub struct ClusterArgs {
    /// Nodes of the replicated cluster (the anchor is always 1 node).
    #[arg(long, default_value_t = 3)]
    pub nodes: u64,
    /// Shards.
    #[arg(long, default_value_t = 4)]
    pub shards: u32,
    /// Concurrent writer counts to run, comma-separated.
    #[arg(long, default_value = "1,64,1024", value_delimiter = ',')]
    pub writers: Vec<usize>,
    /// Seconds per measurement.
    #[arg(long, default_value_t = 5)]
    pub seconds: u64,
    /// Message body bytes.
    #[arg(long, default_value_t = 100)]
    pub body: usize,
    /// Where the data directories go (default: the system temp dir).
    #[arg(long)]
    pub dir: Option<std::path::PathBuf>,
    /// Leader kills to measure (each followed by a restart).
    #[arg(long, default_value_t = 5)]
    pub kills: usize,
    /// Print one JSON object per result instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Split shard 1 online under load and report the split's duration
    /// and its effect on latency.
    #[arg(long)]
    pub split: bool,
}

type Nodes = Arc<RwLock<Vec<Option<Node>>>>;

/// Starts `n` nodes on 127.0.0.1..n (data under `dir/<tag>-n<n>-node<id>`)
/// and bootstraps them; `balance` runs the leader balancer. Returns the
/// nodes and their configs (with the addresses they bound: a restart must
/// reuse them, the membership names them).
async fn start_cluster(
    dir: &Path,
    n: u64,
    shards: u32,
    balance: bool,
    tag: &str,
) -> Result<(Nodes, Vec<NodeConfig>)> {
    let mut nodes = Vec::new();
    let mut configs = Vec::new();
    for id in 1..=n {
        let addr: SocketAddr = format!("127.0.0.{id}:0").parse()?;
        let mut c = NodeConfig::new(id, addr, dir.join(format!("{tag}-n{n}-node{id}")));
        c.shards = shards;
        c.balance_leaders = balance;
        let node = Node::start(c.clone())
            .await
            .with_context(|| format!("start node {id}"))?;
        c.listen = node.addr().parse()?;
        configs.push(c);
        nodes.push(node);
    }
    let members: BTreeMap<u64, String> = nodes
        .iter()
        .map(|n| (n.id(), n.addr().to_string()))
        .collect();
    for node in &nodes {
        node.bootstrap(&members, 3).await?;
    }
    let nodes: Vec<Option<Node>> = nodes.into_iter().map(Some).collect();
    for s in 1..=shards {
        wait_leader(&nodes, ShardId(s), Duration::from_secs(30)).await?;
    }
    Ok((Arc::new(RwLock::new(nodes)), configs))
}

/// Waits until every shard is led by its preferred leader (the balancer's
/// rule), i.e. leaders are spread again.
async fn wait_preferred(nodes: &Nodes, shards: u32, within: Duration) -> Result<()> {
    let deadline = Instant::now() + within;
    loop {
        let settled = {
            let g = nodes.read().await;
            let ids: Vec<u64> = g.iter().flatten().map(|n| n.id()).collect();
            (1..=shards).all(|s| {
                let want = preferred_leader(ShardId(s), ids.iter().copied());
                g.iter()
                    .flatten()
                    .all(|n| n.leader(ShardId(s)).ok().flatten() == want)
            })
        };
        if settled {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "leaders not back on their preferred nodes within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Moves every shard's leadership to node `to` (the balancer must be off).
async fn lead_all_from(nodes: &Nodes, to: u64, shards: u32) -> Result<()> {
    for s in 1..=shards {
        let shard = ShardId(s);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let g = nodes.read().await;
            let node = g
                .iter()
                .flatten()
                .find(|n| n.id() == to)
                .context("no such node")?;
            if node.leader(shard)? == Some(to) {
                break;
            }
            node.raft(shard)?.trigger().elect().await?;
            drop(g);
            anyhow::ensure!(Instant::now() < deadline, "node {to} did not take {shard}");
            tokio::time::sleep(Duration::from_millis(700)).await;
        }
    }
    Ok(())
}

async fn wait_leader(nodes: &[Option<Node>], shard: ShardId, within: Duration) -> Result<u64> {
    let deadline = Instant::now() + within;
    loop {
        let ls: std::collections::HashSet<Option<u64>> = nodes
            .iter()
            .flatten()
            .map(|n| n.leader(shard).ok().flatten())
            .collect();
        if let (1, Some(Some(l))) = (ls.len(), ls.iter().next()) {
            if nodes.iter().flatten().any(|n| n.id() == *l) {
                return Ok(*l);
            }
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "no leader of {shard} within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn message(conv: ConversationId, id: String, body: &[u8]) -> Command {
    Command::Post(NewMessage {
        conv,
        sender: UserId(1),
        device: DeviceId(1),
        client_msg_id: id,
        kind: MessageKind::Text,
        body: body.to_vec(),
        expires_at: None,
        reply_to: None,
    })
}

/// A conversation per writer, created up front.
async fn conversations(nodes: &Nodes, base: u64, n: usize) -> Result<Vec<ConversationId>> {
    let g = nodes.read().await;
    let node = g.iter().flatten().next().context("no node")?;
    let mut out = Vec::with_capacity(n);
    for i in 0..n as u64 {
        let conv = ConversationId(base + i);
        node.write(
            Command::CreateConversation {
                conv,
                kind: ConversationKind::Group,
                name: String::new(),
                creator: UserId(1),
                members: vec![UserId(1), UserId(2)],
                max_members: 250,
            },
            Duration::from_secs(10),
        )
        .await?;
        out.push(conv);
    }
    Ok(out)
}

struct Measured {
    msgs_per_s: f64,
    p50_us: u64,
    p99_us: u64,
    errors: u64,
}

/// Writer `w` sends one message to `conv` through a live node (writers
/// spread over the nodes by number); whether it was acknowledged.
async fn send_one(nodes: &Nodes, w: usize, conv: ConversationId, id: String, body: &[u8]) -> bool {
    let g = nodes.read().await;
    let live: Vec<&Node> = g.iter().flatten().collect();
    live[w % live.len()]
        .write(message(conv, id, body), Duration::from_secs(10))
        .await
        .is_ok()
}

async fn measure(nodes: &Nodes, convs: &[ConversationId], seconds: u64, body: usize) -> Measured {
    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(AtomicU64::new(0));
    let hist = Arc::new(Mutex::new(
        Histogram::<u64>::new(3).unwrap_or_else(|_| unreachable!()),
    ));
    let body = vec![b'x'; body];
    let mut tasks = Vec::new();
    for (w, conv) in convs.iter().copied().enumerate() {
        let (nodes, stop, errors, hist, body) = (
            nodes.clone(),
            stop.clone(),
            errors.clone(),
            hist.clone(),
            body.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut local = Histogram::<u64>::new(3).unwrap_or_else(|_| unreachable!());
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let t = Instant::now();
                if send_one(&nodes, w, conv, format!("{w}-{i}"), &body).await {
                    let _ = local.record(t.elapsed().as_micros() as u64);
                } else {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
            }
            if let Ok(mut h) = hist.lock() {
                let _ = h.add(&local);
            }
        }));
    }
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let h = hist
        .lock()
        .map(|h| h.clone())
        .unwrap_or_else(|_| unreachable!());
    Measured {
        msgs_per_s: h.len() as f64 / elapsed,
        p50_us: h.value_at_quantile(0.5),
        p99_us: h.value_at_quantile(0.99),
        errors: errors.load(Ordering::Relaxed),
    }
}

/// Runs the benchmark.
pub fn run(a: &ClusterArgs) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(run_async(a))
}

async fn run_async(a: &ClusterArgs) -> Result<()> {
    let base = a.dir.clone().unwrap_or_else(std::env::temp_dir);
    std::fs::create_dir_all(&base)?;
    let tmp = tempfile::tempdir_in(&base)?;
    if !a.json {
        println!(
            "{:<10} {:>8} {:>12} {:>10} {:>10} {:>8}",
            "cluster", "writers", "msgs/s", "p50 ms", "p99 ms", "errors"
        );
    }
    for &n in &[1, a.nodes] {
        let (nodes, configs) = start_cluster(tmp.path(), n, a.shards, true, "spread").await?;
        let mut next_conv = 1_000_000u64;
        let name = if n == 1 {
            "1 node".to_string()
        } else {
            format!("{n} nodes")
        };
        measure_all(a, &nodes, &name, &mut next_conv).await?;
        if n > 1 {
            let mut times = Vec::new();
            for k in 0..a.kills {
                let (t, killed) = leader_kill(&nodes, next_conv).await?;
                next_conv += 20_000;
                times.push(t);
                if a.json {
                    println!(
                        "{}",
                        serde_json::json!({"bench": "leader-kill", "nodes": n, "kill": k + 1, "first_write_ms": t.as_secs_f64() * 1e3})
                    );
                } else {
                    println!(
                        "leader kill {} → first acknowledged write on its shard: {:.0} ms",
                        k + 1,
                        t.as_secs_f64() * 1e3
                    );
                }
                // Back up, caught up, and leading its shards again.
                let node = Node::start(configs[killed as usize - 1].clone()).await?;
                nodes.write().await[killed as usize - 1] = Some(node);
                wait_preferred(&nodes, a.shards, Duration::from_secs(120)).await?;
            }
            times.sort();
            if let Some(median) = times.get(times.len() / 2) {
                if a.json {
                    println!(
                        "{}",
                        serde_json::json!({"bench": "leader-kill-median", "nodes": n, "kills": times.len(), "first_write_ms": median.as_secs_f64() * 1e3})
                    );
                } else {
                    println!(
                        "leader kill → first write, median of {}: {:.0} ms",
                        times.len(),
                        median.as_secs_f64() * 1e3
                    );
                }
            }
        }
        if n > 1 && a.split {
            let r = split_under_load(&nodes, next_conv, a.body).await?;
            next_conv += 100_000;
            report_split(a, n, &r);
        }
        let _ = next_conv;
        shutdown(&nodes).await?;
        if n > 1 {
            // The anchor for balance: the same writes with one node
            // leading every shard.
            let (nodes, _) = start_cluster(tmp.path(), n, a.shards, false, "one").await?;
            lead_all_from(&nodes, 1, a.shards).await?;
            let mut next = 1_000_000u64;
            measure_all(
                a,
                &nodes,
                &format!("{n} nodes, leaders all on node 1"),
                &mut next,
            )
            .await?;
            shutdown(&nodes).await?;
        }
    }
    Ok(())
}

/// Every writer count of `a` on `nodes`, one line (or JSON object) each.
async fn measure_all(
    a: &ClusterArgs,
    nodes: &Nodes,
    name: &str,
    next_conv: &mut u64,
) -> Result<()> {
    for &w in &a.writers {
        let convs = conversations(nodes, *next_conv, w).await?;
        *next_conv += w as u64;
        let m = measure(nodes, &convs, a.seconds, a.body).await;
        if a.json {
            println!(
                "{}",
                serde_json::json!({"bench": "cluster", "cluster": name, "writers": w, "msgs_per_s": m.msgs_per_s,
                    "p50_us": m.p50_us, "p99_us": m.p99_us, "errors": m.errors})
            );
        } else {
            println!(
                "{:<10} {:>8} {:>12.0} {:>10.2} {:>10.2} {:>8}",
                name,
                w,
                m.msgs_per_s,
                m.p50_us as f64 / 1000.0,
                m.p99_us as f64 / 1000.0,
                m.errors
            );
        }
    }
    Ok(())
}

async fn shutdown(nodes: &Nodes) -> Result<()> {
    let mut g = nodes.write().await;
    for node in g.iter_mut().filter_map(Option::take) {
        node.shutdown().await?;
    }
    Ok(())
}

/// Under 64 writers, shuts down shard 1's leader; returns the time until a
/// write to a shard-1 conversation is acknowledged again, and which node
/// it shut down.
async fn leader_kill(nodes: &Nodes, base: u64) -> Result<(Duration, u64)> {
    let shard = ShardId(1);
    let conv = {
        let g = nodes.read().await;
        let slots = g
            .iter()
            .flatten()
            .next()
            .context("no node")?
            .slots()
            .clone();
        (base..)
            .map(ConversationId)
            .find(|c| slots.shard_of(*c) == shard)
            .context("no conversation")?
    };
    let convs = conversations(nodes, conv.0, 1).await?;
    let load_convs = conversations(nodes, base + 10_000, 64).await?;
    let load = {
        let nodes = nodes.clone();
        tokio::spawn(async move { measure(&nodes, &load_convs, 4, 100).await })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (killed, victim) = {
        let mut g = nodes.write().await;
        let leader = wait_leader(&g, shard, Duration::from_secs(10)).await?;
        let node = g[leader as usize - 1]
            .take()
            .context("leader already gone")?;
        node.shutdown().await?;
        (Instant::now(), leader)
    };
    let mut i = 0u64;
    loop {
        i += 1;
        let ok = {
            let g = nodes.read().await;
            let node = g.iter().flatten().next().context("no node left")?;
            node.write(
                message(convs[0], format!("kill-{i}"), b"x"),
                Duration::from_millis(100),
            )
            .await
            .is_ok()
        };
        if ok {
            let t = killed.elapsed();
            let _ = load.await;
            return Ok((t, victim));
        }
        anyhow::ensure!(
            killed.elapsed() < Duration::from_secs(60),
            "no write within 60 s of the kill"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// What [`split_under_load`] saw.
struct SplitRun {
    took: Duration,
    /// (before, during, after): p99 µs and writes, of shard 1's writes.
    windows: [(u64, u64); 3],
    errors: u64,
}

fn report_split(a: &ClusterArgs, n: u64, r: &SplitRun) {
    let [b, d, f] = r.windows;
    if a.json {
        println!(
            "{}",
            serde_json::json!({"bench": "split", "nodes": n, "took_ms": r.took.as_secs_f64() * 1e3,
                "p99_before_us": b.0, "writes_before": b.1, "p99_during_us": d.0, "writes_during": d.1,
                "p99_after_us": f.0, "writes_after": f.1, "errors": r.errors})
        );
    } else {
        println!(
            "split of shard 1 under 64 writers: {:.0} ms; its writes' p99 before {:.2} ms ({} writes), during {:.2} ms ({}), after {:.2} ms ({}); errors {}",
            r.took.as_secs_f64() * 1e3,
            b.0 as f64 / 1e3,
            b.1,
            d.0 as f64 / 1e3,
            d.1,
            f.0 as f64 / 1e3,
            f.1,
            r.errors
        );
    }
}

/// Under 64 writers (conversations over every shard), splits shard 1 at
/// its middle slot after 3 s, runs 3 s more, and measures the latency of
/// the writes to shard 1's conversations in three windows.
async fn split_under_load(nodes: &Nodes, base: u64, body: usize) -> Result<SplitRun> {
    let convs = conversations(nodes, base, 64).await?;
    let (parent_slots, start) = {
        let g = nodes.read().await;
        let node = g.iter().flatten().next().context("no node")?;
        let slots = node.slots();
        (
            slots.slots(ShardId(1)).context("no shard 1")?,
            Instant::now(),
        )
    };
    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(AtomicU64::new(0));
    // (when it was sent, relative to start; latency µs) of shard 1's writes.
    let seen: Arc<Mutex<Vec<(Duration, u64)>>> = Arc::default();
    let body = vec![b'x'; body];
    let mut tasks = Vec::new();
    for (w, conv) in convs.iter().copied().enumerate() {
        let ours = parent_slots.contains(&missive_engine::keys::Slot::of_conversation(conv).0);
        let (nodes, stop, errors, seen, body) = (
            nodes.clone(),
            stop.clone(),
            errors.clone(),
            seen.clone(),
            body.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut local = Vec::new();
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let t = Instant::now();
                if !send_one(&nodes, w, conv, format!("split-{w}-{i}"), &body).await {
                    errors.fetch_add(1, Ordering::Relaxed);
                } else if ours {
                    local.push((t - start, t.elapsed().as_micros() as u64));
                }
            }
            if let Ok(mut s) = seen.lock() {
                s.extend(local);
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let called = start.elapsed();
    let t = Instant::now();
    {
        let g = nodes.read().await;
        let node = g.iter().flatten().next().context("no node")?;
        node.split(ShardId(1), None).await?;
    }
    let took = t.elapsed();
    let settled = start.elapsed() + Duration::from_millis(500);
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    let seen = seen.lock().map(|s| s.clone()).unwrap_or_default();
    let window = |lo: Duration, hi: Duration| {
        let mut h = Histogram::<u64>::new(3).unwrap_or_else(|_| unreachable!());
        for (at, us) in &seen {
            if *at >= lo && *at < hi {
                let _ = h.record(*us);
            }
        }
        (h.value_at_quantile(0.99), h.len())
    };
    Ok(SplitRun {
        took,
        windows: [
            window(Duration::ZERO, called),
            window(called, settled),
            window(settled, Duration::MAX),
        ],
        errors: errors.load(Ordering::Relaxed),
    })
}
