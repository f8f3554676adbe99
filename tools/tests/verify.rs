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

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use missive_engine::lsm::{Direction, WriteBatch};
use missive_raft::ShardId;

const SECRET: &str = "verify-test-admin-secret";

fn ctl(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_missivectl"))
        .args(args)
        .env("MISSIVE_ADMIN_SECRET", SECRET)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

fn free_port(ip: &str) -> std::net::SocketAddr {
    let l = std::net::TcpListener::bind(format!("{ip}:0")).unwrap();
    l.local_addr().unwrap()
}

async fn call(method: reqwest::Method, url: String, token: Option<&str>, body: Value) -> Value {
    let mut req = reqwest::Client::new().request(method, url).json(&body);
    req = match token {
        Some(t) => req.bearer_auth(t),
        None => req.header("x-admin-secret", SECRET),
    };
    let r = req.send().await.unwrap();
    let s = r.status().as_u16();
    let v: Value = r.json().await.unwrap_or(Value::Null);
    assert!(s == 200 || s == 201, "{s} {v}");
    v
}

#[test]
fn a_changed_replica_is_named_and_the_others_agree() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let raft: Vec<_> = (1..=3)
        .map(|i| free_port(&format!("127.0.0.{i}")))
        .collect();
    let peers: BTreeMap<u64, String> = raft
        .iter()
        .enumerate()
        .map(|(i, a)| (i as u64 + 1, a.to_string()))
        .collect();
    let nodes: Vec<missive_server::Running> = rt.block_on(async {
        let mut handles = Vec::new();
        for i in 1..=3u64 {
            let mut c = missive_server::Config {
                listen: format!("127.0.0.{i}:0").parse().unwrap(),
                data_dir: dir.path().join(format!("n{i}")),
                ..missive_server::Config::default()
            };
            c.node.id = i;
            c.node.shards = Some(2);
            c.node.replicas = 3;
            c.node.raft_listen = raft[i as usize - 1];
            c.node.peers = peers.clone();
            c.grpc.enabled = false;
            c.auth.secret = Some("the verify cluster's secret".into());
            c.auth.admin_secret = Some(SECRET.into());
            handles.push(tokio::spawn(missive_server::start(c)));
        }
        let mut out = Vec::new();
        for h in handles {
            out.push(h.await.unwrap().unwrap());
        }
        out
    });
    let urls: Vec<String> = nodes
        .iter()
        .map(|n| format!("http://{}", n.addr()))
        .collect();
    rt.block_on(async {
        for u in &urls {
            let deadline = Instant::now() + Duration::from_secs(30);
            while reqwest::get(format!("{u}/readyz"))
                .await
                .map_or(true, |r| r.status().as_u16() != 200)
            {
                assert!(Instant::now() < deadline, "{u} not ready");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        let alice = call(
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
            let v = call(
                reqwest::Method::POST,
                format!("{}/v1/conversations", urls[peer as usize % 3]),
                Some(&alice),
                json!({"kind": "direct", "peer": peer.to_string()}),
            )
            .await;
            let conv = v["conv"].as_str().unwrap().to_string();
            for i in 0..5 {
                call(
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
