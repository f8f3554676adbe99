//! The online commands: a running cluster's layout and changes to where
//! shards' replicas live, through a node's admin HTTP API
//! (`/v1/admin/...`, server/src/admin.rs; any node will do — changes are
//! forwarded to each shard's leader).
//!
//! `node drain` is the one procedure built from several calls: it moves
//! every replica a node holds onto another node, one shard at a time, each
//! move a single joint configuration change (the new replica catches up
//! before it votes), and stops at the first failure so an operator sees
//! exactly which shards moved. Rerunning it continues where it stopped.
//! `node forget` then removes the drained node from the cluster map.

use std::fmt::Write as _;
use std::time::Duration;

use anyhow::{bail, Context};
use serde_json::{json, Value};

use crate::render::Output;

/// A change can wait for a new replica to catch up (minutes for a large
/// shard).
pub(crate) const CHANGE_TIMEOUT: Duration = Duration::from_secs(600);

/// Where and how to reach a node's admin API.
#[derive(Debug, Clone, clap::Args)]
pub struct Target {
    /// A node's HTTP address, e.g. http://127.0.0.1:8080.
    #[arg(long, env = "MISSIVE_URL", default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// The cluster's admin secret (auth.admin_secret).
    #[arg(long, env = "MISSIVE_ADMIN_SECRET", hide_env_values = true)]
    pub admin_secret: String,
}

pub(crate) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// One admin call; a non-2xx answer becomes an error carrying the server's
/// code and message.
pub(crate) async fn call(
    t: &Target,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> anyhow::Result<Value> {
    let url = format!("{}/v1/admin{path}", t.url.trim_end_matches('/'));
    let mut req = reqwest::Client::new()
        .request(method, &url)
        .header("x-admin-secret", &t.admin_secret)
        .timeout(CHANGE_TIMEOUT);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.with_context(|| format!("calling {url}"))?;
    let status = resp.status();
    let v: Value = resp
        .json()
        .await
        .with_context(|| format!("reading the answer of {url} ({status})"))?;
    if !status.is_success() {
        bail!(
            "{url}: {status}: {} ({})",
            v["error"]["message"].as_str().unwrap_or("no message"),
            v["error"]["code"].as_str().unwrap_or("no code")
        );
    }
    Ok(v)
}

fn ids(nodes: &Value) -> String {
    nodes
        .as_array()
        .map(|a| {
            a.iter()
                .map(|n| format!("{}@{}", n["node"], n["addr"].as_str().unwrap_or("?")))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default()
}

fn placement_line(p: &Value) -> String {
    let leader = p["leader"].as_u64().map_or("-".into(), |l| l.to_string());
    let slots = match (p["slots"][0].as_u64(), p["slots"][1].as_u64()) {
        (Some(a), Some(b)) => format!("{a}..{b}"),
        _ if p["shard"] == 0 => "(metadata)".into(),
        _ => "?".into(),
    };
    let mut line = format!(
        "shard {:>3}  slots {:<11} leader {:<3} voters {}",
        p["shard"].as_u64().unwrap_or(0),
        slots,
        leader,
        ids(&p["voters"])
    );
    if p["learners"].as_array().is_some_and(|a| !a.is_empty()) {
        let _ = write!(line, "  learners {}", ids(&p["learners"]));
    }
    if p["changing"] == true {
        line.push_str("  (change in progress)");
    }
    if let Some(e) = p["error"].as_str() {
        let _ = write!(line, "  error: {e}");
    }
    line
}

/// `cluster status`.
pub fn status(t: &Target) -> anyhow::Result<Output> {
    let v = runtime()?.block_on(call(t, reqwest::Method::GET, "/cluster", None))?;
    let mut text = format!(
        "as seen by node {} (raft {})\n",
        v["node"],
        v["raft_addr"].as_str().unwrap_or("?")
    );
    let map = &v["map"];
    let _ = writeln!(text, "cluster map version {}", map["version"]);
    for n in map["nodes"].as_array().into_iter().flatten() {
        let held: Vec<String> = n["replicas"]
            .as_array()
            .into_iter()
            .flatten()
            .map(ToString::to_string)
            .collect();
        let _ = writeln!(
            text,
            "node {:>3}  {:<21} replicas of shards [{}]",
            n["node"],
            n["addr"].as_str().unwrap_or("?"),
            held.join(", ")
        );
    }
    if let Some(gone) = map["forgotten"].as_array().filter(|a| !a.is_empty()) {
        let gone: Vec<String> = gone.iter().map(ToString::to_string).collect();
        let _ = writeln!(text, "removed nodes: {}", gone.join(", "));
    }
    if let Some(e) = map["error"].as_str() {
        let _ = writeln!(
            text,
            "(this node's copy: the metadata group did not answer: {e})"
        );
    }
    for s in v["shards"].as_array().into_iter().flatten() {
        let _ = writeln!(text, "{}", placement_line(s));
    }
    Ok(Output { text, json: v })
}

/// `node forget`.
/// `node scrub`: the node at `t` purges, rolls its log and compacts, so
/// what its replicas no longer hold leaves its disk.
pub fn scrub(t: &Target) -> anyhow::Result<Output> {
    let v = runtime()?.block_on(call(t, reqwest::Method::POST, "/scrub", None))?;
    let groups = v["groups"].as_array().map_or(0, Vec::len);
    Ok(Output {
        text: format!(
            "node {}: {groups} groups purged up to a fresh snapshot; log segments {} -> {}; {} tables after compaction\n",
            v["node"], v["log_segments_before"], v["log_segments_after"], v["tables"]
        ),
        json: v,
    })
}

/// `user erase`: the cluster erases `user` (see the server's `erasure`
/// module) and reports what went.
pub fn erase_user(t: &Target, user: u64) -> anyhow::Result<Output> {
    let path = format!("/users/{user}/erase");
    let v = runtime()?.block_on(call(t, reqwest::Method::POST, &path, None))?;
    Ok(Output {
        text: format!(
            "user {user} erased: {} conversations searched, {} messages tombstoned, {} receipts and {} profile/device/push/block records removed\n\
             older copies stay on disk until `missivectl node scrub` runs on every node\n",
            v["conversations"], v["messages"], v["receipts"], v["user_records"]
        ),
        json: v,
    })
}

pub fn forget(t: &Target, node: u64) -> anyhow::Result<Output> {
    let path = format!("/nodes/{node}");
    let v = runtime()?.block_on(call(t, reqwest::Method::DELETE, &path, None))?;
    Ok(Output {
        text: format!(
            "node {node} removed from the cluster (map version {})\n",
            v["map_version"]
        ),
        json: v,
    })
}

/// One replica change of one shard.
pub enum Change {
    /// Add `node` at `addr`.
    Add { node: u64, addr: String },
    /// Remove `node`.
    Remove { node: u64 },
    /// Move `from` → `to` at `addr`.
    Move { from: u64, to: u64, addr: String },
}

async fn change(t: &Target, shard: u32, c: &Change) -> anyhow::Result<Value> {
    match c {
        Change::Add { node, addr } => {
            let body = json!({ "node": node, "addr": addr });
            call(
                t,
                reqwest::Method::POST,
                &format!("/shards/{shard}/replicas"),
                Some(body),
            )
            .await
        }
        Change::Remove { node } => {
            let path = format!("/shards/{shard}/replicas/{node}");
            call(t, reqwest::Method::DELETE, &path, None).await
        }
        Change::Move { from, to, addr } => {
            let body = json!({ "from": from, "to": to, "addr": addr });
            call(
                t,
                reqwest::Method::POST,
                &format!("/shards/{shard}/move"),
                Some(body),
            )
            .await
        }
    }
}

/// `shard add|remove|move`.
pub fn shard(t: &Target, shard: u32, c: &Change) -> anyhow::Result<Output> {
    let p = runtime()?.block_on(change(t, shard, c))?;
    Ok(Output {
        text: format!("{}\n", placement_line(&p)),
        json: p,
    })
}

/// `shard split`: the shard's slots from `at` (default: its middle slot)
/// go to a new shard on the same replicas, online.
pub fn split(t: &Target, shard: u32, at: Option<u16>) -> anyhow::Result<Output> {
    let body = json!({ "at": at });
    let out = runtime()?.block_on(call(
        t,
        reqwest::Method::POST,
        &format!("/shards/{shard}/split"),
        Some(body),
    ))?;
    let run = |v: &Value| match (v[0].as_u64(), v[1].as_u64()) {
        (Some(a), Some(b)) => format!("{a}..{b}"),
        _ => "?".into(),
    };
    let text = format!(
        "shard {} split at slot {} (its log index {}) in {} ms: shard {} keeps slots {}, new shard {} takes {}\n",
        out["parent"],
        out["at"],
        out["cut_index"],
        out["took_ms"],
        out["parent"],
        run(&out["parent_slots"]),
        out["child"],
        run(&out["child_slots"]),
    );
    Ok(Output { text, json: out })
}

/// `shard merge`: every slot of `shard` goes back to `into`, whose run
/// adjoins it, online (the two must have the same voters).
pub fn merge(t: &Target, shard: u32, into: u32) -> anyhow::Result<Output> {
    let out = runtime()?.block_on(call(
        t,
        reqwest::Method::POST,
        &format!("/shards/{shard}/merge"),
        Some(json!({ "into": into })),
    ))?;
    let run = match (
        out["parent_slots"][0].as_u64(),
        out["parent_slots"][1].as_u64(),
    ) {
        (Some(a), Some(b)) => format!("{a}..{b}"),
        _ => "?".into(),
    };
    let text = format!(
        "shard {} merged into shard {} (frozen at its log index {}, merged at {}) in {} ms: shard {} owns slots {}\n",
        out["child"], out["parent"], out["frozen_at"], out["merge_index"], out["took_ms"], out["parent"], run,
    );
    Ok(Output { text, json: out })
}

/// `node drain`: every replica on `from` moves to `to`.
pub fn drain(t: &Target, from: u64, to: u64, addr: &str) -> anyhow::Result<Output> {
    let rt = runtime()?;
    let layout = rt.block_on(call(t, reqwest::Method::GET, "/cluster", None))?;
    let mut text = String::new();
    let mut moved = Vec::new();
    for s in layout["shards"].as_array().into_iter().flatten() {
        if let Some(e) = s["error"].as_str() {
            bail!("shard {}: cannot see its replicas: {e}", s["shard"]);
        }
        let on_from = s["voters"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|n| n["node"].as_u64() == Some(from));
        if !on_from {
            continue;
        }
        let shard = s["shard"]
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .context("a shard number in the layout")?;
        let c = Change::Move {
            from,
            to,
            addr: addr.to_string(),
        };
        let p = rt
            .block_on(change(t, shard, &c))
            .with_context(|| format!("moving shard {shard} (shards before it moved: {moved:?})"))?;
        let _ = writeln!(text, "{}", placement_line(&p));
        moved.push(shard);
    }
    let _ = writeln!(
        text,
        "node {from} holds no replica now ({} moved to node {to})",
        moved.len()
    );
    Ok(Output {
        text,
        json: json!({ "ok": true, "moved": moved, "from": from, "to": to }),
    })
}

/// `shard rebalance`: moves replicas from the nodes holding the most to
/// those holding the fewest (the metadata group counts like a shard), one
/// joint change at a time, until no two nodes differ by more than one.
/// It plans from the live placements (`GET /v1/admin/cluster`) and stops
/// at the first failure; rerunning it continues from where it stopped.
pub fn rebalance(t: &Target) -> anyhow::Result<Output> {
    let rt = runtime()?;
    let layout = rt.block_on(call(t, reqwest::Method::GET, "/cluster", None))?;
    let mut addrs = std::collections::BTreeMap::new();
    for n in layout["map"]["nodes"].as_array().into_iter().flatten() {
        if let (Some(id), Some(addr)) = (n["node"].as_u64(), n["addr"].as_str()) {
            addrs.insert(id, addr.to_string());
        }
    }
    let mut held: std::collections::BTreeMap<u64, std::collections::BTreeSet<u32>> =
        addrs.keys().map(|id| (*id, Default::default())).collect();
    for s in layout["shards"].as_array().into_iter().flatten() {
        if let Some(e) = s["error"].as_str() {
            bail!("shard {}: cannot see its replicas: {e}", s["shard"]);
        }
        let shard = s["shard"]
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .context("a shard number in the layout")?;
        for v in s["voters"].as_array().into_iter().flatten() {
            if let Some(id) = v["node"].as_u64() {
                held.entry(id).or_default().insert(shard);
            }
        }
    }
    let mut text = String::new();
    let mut moves = Vec::new();
    let most_moves: usize = held.values().map(std::collections::BTreeSet::len).sum();
    while moves.len() < most_moves {
        // Fullest first (lowest id on ties), emptiest last.
        let Some((&from, full)) = held
            .iter()
            .max_by_key(|(id, s)| (s.len(), std::cmp::Reverse(**id)))
        else {
            break;
        };
        let Some((&to, empty)) = held.iter().min_by_key(|(id, s)| (s.len(), **id)) else {
            break;
        };
        if full.len() <= empty.len() + 1 {
            break;
        }
        let Some(&shard) = full.iter().find(|s| !empty.contains(s)) else {
            break;
        };
        let addr = addrs
            .get(&to)
            .with_context(|| format!("node {to} has no address in the cluster map"))?
            .clone();
        let c = Change::Move { from, to, addr };
        let p = rt.block_on(change(t, shard, &c)).with_context(|| {
            format!(
                "moving shard {shard} from node {from} to node {to} (moves before it: {moves:?})"
            )
        })?;
        let _ = writeln!(text, "{}", placement_line(&p));
        moves.push(json!({ "shard": shard, "from": from, "to": to }));
        if let Some(s) = held.get_mut(&from) {
            s.remove(&shard);
        }
        if let Some(s) = held.get_mut(&to) {
            s.insert(shard);
        }
    }
    let counts: std::collections::BTreeMap<u64, usize> =
        held.iter().map(|(id, s)| (*id, s.len())).collect();
    let _ = writeln!(
        text,
        "{} replicas moved; replicas per node now: {}",
        moves.len(),
        counts
            .iter()
            .map(|(id, n)| format!("node {id}: {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(Output {
        text,
        json: json!({ "ok": true, "moves": moves, "replicas_per_node": counts }),
    })
}

/// `verify --cluster`: every data shard's replicas compared at one log
/// position (the server's `missive_raft::verify`); whether all agree.
pub fn verify(t: &Target) -> anyhow::Result<(Output, bool)> {
    let v = runtime()?.block_on(call(t, reqwest::Method::POST, "/verify", None))?;
    let mut text = String::new();
    for s in v["shards"].as_array().into_iter().flatten() {
        let state = if s["agree"] == true {
            "replicas agree".to_string()
        } else {
            format!("DIVERGING {} SILENT {}", s["diverging"], s["silent"])
        };
        let _ = writeln!(
            text,
            "shard {:>3} at index {:<8} {state}",
            s["shard"].as_u64().unwrap_or(0),
            s["index"]
        );
        for r in s["replicas"].as_array().into_iter().flatten() {
            let sum = match (r["pairs"].as_u64(), r["hash"].as_str()) {
                (Some(p), Some(h)) => format!("{p} pairs, xxh3 {h}"),
                _ => format!("no checksum: {}", r["error"].as_str().unwrap_or("?")),
            };
            let _ = writeln!(text, "    node {:<3} {sum}", r["node"]);
        }
    }
    let agree = v["agree"] == true;
    text.push_str(if agree {
        "every shard's replicas hold the same bytes\n"
    } else {
        "replicas differ or did not answer: see above\n"
    });
    Ok((Output { text, json: v }, agree))
}

/// `shard search-index`: the report, and whether the index now matches
/// the messages (clean, or repaired).
pub fn search_index(t: &Target, shard: u32, repair: bool) -> anyhow::Result<(Output, bool)> {
    let path = format!("/shards/{shard}/search-index");
    let body = serde_json::json!({ "repair": repair });
    let v = runtime()?.block_on(call(t, reqwest::Method::POST, &path, Some(body)))?;
    let n = |k: &str| v[k].as_u64().unwrap_or(0);
    let mut text = format!(
        "shard {shard}: {} conversations, {} messages, {} postings\n",
        n("conversations"),
        n("messages"),
        n("postings")
    );
    let differs = n("missing") + n("stale") > 0;
    if differs {
        let _ = writeln!(
            text,
            "  {} messages missing postings, {} stale postings",
            n("missing"),
            n("stale")
        );
        for e in v["examples"].as_array().into_iter().flatten() {
            let _ = writeln!(text, "    {}", e.as_str().unwrap_or("?"));
        }
    }
    if repair && differs {
        let _ = writeln!(
            text,
            "  repaired: {} postings written, {} dropped",
            n("written"),
            n("dropped")
        );
    }
    text.push_str(match (differs, repair) {
        (false, _) => "the index matches the messages\n",
        (true, true) => "rebuilt through Raft: run again to confirm\n",
        (true, false) => "the index differs from the messages: --repair rebuilds it\n",
    });
    Ok((Output { text, json: v }, !differs || repair))
}
