//! `missivectl verify --cluster` over three real nodes on loopback: while
//! messages are written, every shard's replicas agree at one log position;
//! after one replica's copy of a stored message is changed behind Raft's
//! back (the bytes a disk or a bug could flip), the command exits 1 and
//! names that node for that shard, and only that one.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests panic on surprises"
)]

use crate::common;

use serde_json::{json, Value};

use missive_engine::lsm::{Direction, WriteBatch};
use missive_raft::ShardId;

use common::{ctl, ok};

#[test]
fn a_changed_replica_is_named_and_the_others_agree() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let common::Trio { nodes, urls, .. } = rt.block_on(common::three_nodes(dir.path(), "n", 2));
    rt.block_on(async {
        let alice = ok(
            reqwest::Method::POST,
            format!("{}/v1/admin/tokens", urls[0]),
            None,
            json!({"user": 1, "device": 1}),
        )
        .await["token"]
            .as_str()
            .unwrap()
            .to_string();
        // Conversations on both shards, with messages.
        for peer in 2..=9u64 {
            let v = ok(
                reqwest::Method::POST,
                format!("{}/v1/conversations", urls[peer as usize % 3]),
                Some(&alice),
                json!({"kind": "direct", "peer": peer.to_string()}),
            )
            .await;
            let conv = v["conv"].as_str().unwrap().to_string();
            for i in 0..5 {
                ok(
                    reqwest::Method::POST,
                    format!("{}/v1/conversations/{conv}/messages", urls[i % 3]),
                    Some(&alice),
                    json!({"client_msg_id": format!("m{peer}-{i}"), "body": format!("hello {i}")}),
                )
                .await;
            }
        }
    });

    // Healthy: every shard's three replicas agree.
    let (code, out, err) = ctl(&["verify", "--cluster", "--url", &urls[1], "--json"]);
    assert_eq!(code, 0, "{err}{out}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["agree"], true, "{v}");
    for s in v["shards"].as_array().unwrap() {
        let sums: Vec<&Value> = s["replicas"].as_array().unwrap().iter().collect();
        assert_eq!(sums.len(), 3, "{s}");
        assert!(sums[0]["pairs"].as_u64().unwrap() > 0, "{s}");
    }

    // Node 3's copy of one of shard 1's messages changes, behind Raft.
    let lsm = nodes[2].node().lsm();
    let (lo, hi) = nodes[2].node().slots().key_ranges(ShardId(1))[0].clone();
    let (key, mut value) = lsm
        .scan(&lo, hi.as_deref(), Direction::Forward, 1)
        .unwrap()
        .pop()
        .expect("shard 1 holds a message");
    let last = value.len() - 1;
    value[last] ^= 0x20;
    let mut b = WriteBatch::new();
    b.put(&key, &value);
    lsm.apply(&b, None).unwrap();

    let (code, out, err) = ctl(&["verify", "--cluster", "--url", &urls[0], "--json"]);
    assert_eq!(code, 1, "a changed replica is damage: {err}{out}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["agree"], false, "{v}");
    for s in v["shards"].as_array().unwrap() {
        if s["shard"] == 1 {
            assert_eq!(s["diverging"], json!([3]), "{s}");
            assert_eq!(s["silent"], json!([]), "{s}");
        } else {
            assert_eq!(s["agree"], true, "{s}");
        }
    }
    // The text names it too.
    let (code, out, _) = ctl(&["verify", "--cluster", "--url", &urls[2]]);
    assert_eq!(code, 1);
    assert!(out.contains("DIVERGING [3]"), "{out}");
    for n in nodes {
        rt.block_on(n.shutdown()).unwrap();
    }
}
