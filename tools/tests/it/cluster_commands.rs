//! The online missivectl commands against running missived nodes on
//! loopback: a single-node deployment moves to a new machine (node 2 joins,
//! `node drain` moves every shard and the metadata group onto it, `node
//! forget` removes node 1 from the cluster map), and bad calls fail with
//! the server's error code and exit status 2.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests panic on surprises"
)]

use crate::common;

use std::time::Duration;

use serde_json::Value;

use common::{ctl, free_ports, SECRET};

fn ctl_json(args: &[&str]) -> Value {
    let mut a = args.to_vec();
    a.push("--json");
    let (code, out, err) = ctl(&a);
    assert_eq!(code, 0, "{args:?} failed: {err}{out}");
    serde_json::from_str(&out).unwrap()
}

/// Node `id` on 127.0.0.`id`, its transport and HTTP ports picked together.
fn config(dir: &std::path::Path, id: u64) -> missive_server::Config {
    let ports = free_ports(&format!("127.0.0.{id}"), 2);
    let mut c = missive_server::Config {
        listen: ports[1],
        data_dir: dir.join(format!("n{id}")),
        ..missive_server::Config::default()
    };
    c.node.raft_listen = ports[0];
    c.node.id = id;
    c.node.shards = Some(3);
    c.grpc.enabled = false;
    c.auth.secret = Some("one secret for both nodes".into());
    c.auth.admin_secret = Some(SECRET.into());
    c
}

fn voters(shard: &Value) -> Vec<u64> {
    shard["voters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["node"].as_u64().unwrap())
        .collect()
}

/// Node 1 founds a 3-shard cluster alone; node 2 joins it holding nothing.
/// The two nodes and node 2's config.
async fn founder_and_joiner(
    dir: &std::path::Path,
) -> (
    missive_server::Running,
    missive_server::Running,
    missive_server::Config,
) {
    let c1 = config(dir, 1);
    let n1 = missive_server::start(c1.clone()).await.unwrap();
    let mut c2 = config(dir, 2);
    c2.node.join = true;
    c2.node.peers = [(1, c1.node.raft_listen.to_string())].into();
    let n2 = missive_server::start(c2.clone()).await.unwrap();
    (n1, n2, c2)
}

#[test]
fn a_single_node_deployment_is_drained_onto_a_new_node() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (n1, n2, c2) = rt.block_on(founder_and_joiner(dir.path()));
    let url1 = format!("http://{}", n1.addr());
    let url2 = format!("http://{}", n2.addr());

    let status = ctl_json(&["cluster", "status", "--url", &url2]);
    assert_eq!(status["node"], 2, "{status}");
    let shards = status["shards"].as_array().unwrap();
    assert_eq!(shards.len(), 4, "the metadata group and 3 shards");
    for s in shards {
        assert_eq!(voters(s), vec![1], "{s}");
    }
    // Node 2 registered when it joined.
    let listed: Vec<u64> = status["map"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["node"].as_u64().unwrap())
        .collect();
    assert_eq!(listed, vec![1, 2], "{status}");
    let (code, text, err) = ctl(&["cluster", "status", "--url", &url1]);
    assert_eq!(code, 0, "{err}");
    assert!(
        text.contains("shard   1") && text.contains("leader 1") && text.contains("(metadata)"),
        "{text}"
    );
    // Node 1 holds replicas: it cannot be forgotten yet.
    let (code, _, err) = ctl(&["node", "forget", "--url", &url2, "--node", "1"]);
    assert_eq!(code, 2);
    assert!(
        err.contains("conflict") && err.contains("still holds replicas"),
        "{err}"
    );

    // Bad calls: the server's code, exit status 2.
    let (code, _, err) = ctl(&[
        "shard",
        "move",
        "--url",
        &url1,
        "--shard",
        "7",
        "--from",
        "1",
        "--to",
        "2",
        "--addr",
        &c2.node.raft_listen.to_string(),
    ]);
    assert_eq!(code, 2);
    assert!(
        err.contains("not_found") && err.contains("no shard 7"),
        "{err}"
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_missivectl"))
        .args(["cluster", "status", "--url", &url1])
        .env("MISSIVE_ADMIN_SECRET", "wrong")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("forbidden"));

    // Drain node 1 onto node 2, asked of node 1.
    let raft2 = c2.node.raft_listen.to_string();
    let drain = |url: &str| {
        ctl_json(&[
            "node", "drain", "--url", url, "--from", "1", "--to", "2", "--addr", &raft2,
        ])
    };
    let drained = drain(&url1);
    assert_eq!(
        drained["moved"],
        serde_json::json!([0, 1, 2, 3]),
        "{drained}"
    );
    // Every shard is on node 2 and elects it (node 1 stepped down).
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let status = ctl_json(&["cluster", "status", "--url", &url2]);
        let shards = status["shards"].as_array().unwrap();
        let done = shards
            .iter()
            .all(|s| voters(s) == vec![2] && s["leader"] == 2 && s["hosted_here"] == true);
        if done {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "shards not led by node 2: {status}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Draining again moves nothing.
    let again = drain(&url2);
    assert_eq!(again["moved"], serde_json::json!([]), "{again}");
    // Node 1 is forgotten (once node 2 is the metadata group's leader and
    // the moves were reported: retried for a few seconds).
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (code, out, err) = ctl(&["node", "forget", "--url", &url2, "--node", "1"]);
        if code == 0 {
            assert!(out.contains("node 1 removed"), "{out}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "forget failed: {err}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let status = ctl_json(&["cluster", "status", "--url", &url2]);
    assert_eq!(
        status["map"]["forgotten"],
        serde_json::json!([1]),
        "{status}"
    );
    assert_eq!(
        status["map"]["nodes"].as_array().unwrap().len(),
        1,
        "{status}"
    );
    rt.block_on(async {
        n1.shutdown().await.unwrap();
        n2.shutdown().await.unwrap();
    });
}

#[test]
fn a_joined_node_gets_its_share_of_replicas_from_rebalance() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (n1, n2, _) = rt.block_on(founder_and_joiner(dir.path()));
    let url1 = format!("http://{}", n1.addr());

    // Node 1 holds all four groups, node 2 none: two move.
    let r = ctl_json(&["shard", "rebalance", "--url", &url1]);
    assert_eq!(r["moves"].as_array().unwrap().len(), 2, "{r}");
    assert_eq!(
        r["replicas_per_node"],
        serde_json::json!({"1": 2, "2": 2}),
        "{r}"
    );
    // The placements say so too, and a second run moves nothing.
    let status = ctl_json(&["cluster", "status", "--url", &url1]);
    let on = |node: u64| {
        status["shards"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| voters(s) == vec![node])
            .count()
    };
    assert_eq!((on(1), on(2)), (2, 2), "{status}");
    let again = ctl_json(&["shard", "rebalance", "--url", &url1]);
    assert_eq!(again["moves"], serde_json::json!([]), "{again}");
    rt.block_on(async {
        n1.shutdown().await.unwrap();
        n2.shutdown().await.unwrap();
    });
}

#[test]
fn shard_split_adds_a_shard_that_nodes_joining_later_open_too() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (n1, n2, _) = rt.block_on(founder_and_joiner(dir.path()));
    let url2 = format!("http://{}", n2.addr());

    // Asked of node 2, which holds no replica: shard 2 (slots 1365..2730)
    // gives 2000.. to a new shard 4 on node 1.
    let r = ctl_json(&[
        "shard",
        "split",
        "--url",
        &url2,
        "--shard",
        "2",
        "--at-slot",
        "2000",
    ]);
    assert_eq!(
        (&r["parent"], &r["child"], &r["at"]),
        (
            &serde_json::json!(2),
            &serde_json::json!(4),
            &serde_json::json!(2000)
        ),
        "{r}"
    );
    assert_eq!(r["parent_slots"], serde_json::json!([1365, 2000]), "{r}");
    assert_eq!(r["child_slots"], serde_json::json!([2000, 2730]), "{r}");
    let (code, text, err) = ctl(&[
        "shard",
        "split",
        "--url",
        &url2,
        "--shard",
        "2",
        "--at-slot",
        "100",
    ]);
    assert_eq!(code, 2, "{text}");
    assert!(
        err.contains("invalid") && err.contains("1365..2000"),
        "{err}"
    );

    // A node that joins now takes the founding count from the cluster and
    // opens the new shard from the cluster map.
    let mut c3 = config(dir.path(), 3);
    c3.node.join = true;
    c3.node.shards = None;
    c3.node.peers = [(1, n1_raft(&n1))].into();
    let n3 = rt.block_on(missive_server::start(c3)).unwrap();
    let url3 = format!("http://{}", n3.addr());
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let status = loop {
        let status = ctl_json(&["cluster", "status", "--url", &url3]);
        let child = status["shards"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["shard"] == 4)
            .cloned();
        if let Some(c) = child.filter(|c| c["leader"] == 1) {
            assert_eq!(c["slots"], serde_json::json!([2000, 2730]), "{c}");
            break status;
        }
        assert!(std::time::Instant::now() < deadline, "{status}");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(status["shards"].as_array().unwrap().len(), 5, "{status}");

    // And merged back: shard 2 owns its slots again, shard 4 is gone from
    // every node's layout.
    let (code, _, err) = ctl(&[
        "shard", "merge", "--url", &url3, "--shard", "4", "--into", "1",
    ]);
    assert_eq!(code, 2);
    assert!(err.contains("adjoin"), "{err}");
    let m = ctl_json(&[
        "shard", "merge", "--url", &url3, "--shard", "4", "--into", "2",
    ]);
    assert_eq!(m["parent_slots"], serde_json::json!([1365, 2730]), "{m}");
    let status = ctl_json(&["cluster", "status", "--url", &url2]);
    let shards: Vec<u64> = status["shards"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["shard"].as_u64().unwrap())
        .collect();
    assert_eq!(shards, vec![0, 1, 2, 3], "{status}");
    rt.block_on(async {
        n3.shutdown().await.unwrap();
        n1.shutdown().await.unwrap();
        n2.shutdown().await.unwrap();
    });
}

/// Node 1's transport address, as its cluster map entry names it.
fn n1_raft(n1: &missive_server::Running) -> String {
    let url = format!("http://{}", n1.addr());
    let status = ctl_json(&["cluster", "status", "--url", &url]);
    status["map"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["node"] == 1)
        .and_then(|n| n["addr"].as_str())
        .unwrap()
        .to_string()
}
