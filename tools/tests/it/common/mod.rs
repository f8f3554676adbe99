//! What the missivectl tests share: running the real `missivectl`, calling
//! a node's HTTP API, and three `missived` nodes on 127.0.0.1–3.

#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "each test uses some of these; tests panic on surprises"
)]

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// The admin secret of every test cluster.
pub const SECRET: &str = "missivectl-test-admin-secret";

/// Runs `missivectl args` with the admin secret: (exit code, stdout,
/// stderr).
pub fn ctl(args: &[&str]) -> (i32, String, String) {
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

/// Whether `missivectl residue` finds `needle` in `dir` (exit 1) or
/// not (exit 0); anything else, or an unreadable file, fails the test.
pub fn found(dir: &Path, needle: &str) -> bool {
    let (code, out, err) = ctl(&["residue", dir.to_str().unwrap(), "--text", needle]);
    assert!(code == 0 || code == 1, "residue failed: {err}{out}");
    assert!(!out.contains("unreadable"), "{out}");
    code == 1
}

/// `n` distinct free ports on `ip`, each bound until all are picked, then
/// released. A node's transport and HTTP listener are picked together so
/// the HTTP listener is never handed the transport's released port.
pub fn free_ports(ip: &str, n: usize) -> Vec<std::net::SocketAddr> {
    let held: Vec<std::net::TcpListener> = (0..n)
        .map(|_| std::net::TcpListener::bind(format!("{ip}:0")).unwrap())
        .collect();
    held.iter().map(|l| l.local_addr().unwrap()).collect()
}

/// (status, body) of one call with a bearer token, or the admin secret
/// when `token` is None; status 0 when the call itself failed.
pub async fn call(
    method: reqwest::Method,
    url: String,
    token: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = reqwest::Client::new()
        .request(method, url)
        .timeout(Duration::from_secs(30));
    req = match token {
        Some(t) => req.bearer_auth(t),
        None => req.header("x-admin-secret", SECRET),
    };
    if let Some(b) = body {
        req = req.json(&b);
    }
    match req.send().await {
        Ok(r) => {
            let s = r.status().as_u16();
            (s, r.json().await.unwrap_or(Value::Null))
        }
        Err(e) => (0, json!({ "transport": e.to_string() })),
    }
}

/// One call that must succeed (200 or 201); its answer.
pub async fn ok(method: reqwest::Method, url: String, token: Option<&str>, body: Value) -> Value {
    let (s, v) = call(method, url, token, Some(body)).await;
    assert!(s == 200 || s == 201, "{s} {v}");
    v
}

/// Three running nodes, their HTTP base URLs and their configs.
pub struct Trio {
    pub nodes: Vec<missive_server::Running>,
    pub urls: Vec<String>,
    pub cfgs: Vec<missive_server::Config>,
}

/// Three nodes of one cluster on 127.0.0.1–3 (`shards` shards, 3
/// replicas), data under `dir/{name}{1,2,3}`, every node ready.
pub async fn three_nodes(dir: &Path, name: &str, shards: u32) -> Trio {
    three_nodes_with(dir, name, shards, |_| {}).await
}

/// [`three_nodes`] with each config changed by `change` before it starts.
pub async fn three_nodes_with(
    dir: &Path,
    name: &str,
    shards: u32,
    change: impl Fn(&mut missive_server::Config),
) -> Trio {
    // [raft, http] of each node.
    let ports: Vec<_> = (1..=3)
        .map(|i| free_ports(&format!("127.0.0.{i}"), 2))
        .collect();
    let raft: Vec<_> = ports.iter().map(|p| p[0]).collect();
    let peers: BTreeMap<u64, String> = raft
        .iter()
        .enumerate()
        .map(|(i, a)| (i as u64 + 1, a.to_string()))
        .collect();
    let mut cfgs = Vec::new();
    for i in 1..=3u64 {
        let mut c = missive_server::Config {
            listen: ports[i as usize - 1][1],
            data_dir: dir.join(format!("{name}{i}")),
            ..missive_server::Config::default()
        };
        c.node.id = i;
        c.node.shards = Some(shards);
        c.node.replicas = 3;
        c.node.raft_listen = raft[i as usize - 1];
        c.node.peers = peers.clone();
        c.grpc.enabled = false;
        c.auth.secret = Some(format!("the {name} cluster's secret"));
        c.auth.admin_secret = Some(SECRET.into());
        c.limits.sends_per_second = 10_000;
        c.limits.send_burst = 10_000;
        change(&mut c);
        cfgs.push(c);
    }
    let handles: Vec<_> = cfgs
        .iter()
        .cloned()
        .map(|c| tokio::spawn(missive_server::start(c)))
        .collect();
    let mut nodes = Vec::new();
    for h in handles {
        nodes.push(h.await.unwrap().unwrap());
    }
    let urls: Vec<String> = nodes
        .iter()
        .map(|n| format!("http://{}", n.addr()))
        .collect();
    for u in &urls {
        ready(u).await;
    }
    Trio { nodes, urls, cfgs }
}

/// Waits (up to 30 s) until the node at `url` answers `/readyz` 200.
pub async fn ready(url: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while reqwest::get(format!("{url}/readyz"))
        .await
        .map_or(true, |r| r.status().as_u16() != 200)
    {
        assert!(Instant::now() < deadline, "{url} not ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One node alone (`shards` shards) on 127.0.0.1, data under
/// `dir/{name}`, ready; its HTTP base URL.
pub async fn one_node(dir: &Path, name: &str, shards: u32) -> (missive_server::Running, String) {
    let [raft, http] = free_ports("127.0.0.1", 2)[..] else {
        unreachable!("free_ports returns as many as asked")
    };
    let mut c = missive_server::Config {
        listen: http,
        data_dir: dir.join(name),
        ..missive_server::Config::default()
    };
    c.node.shards = Some(shards);
    c.node.raft_listen = raft;
    c.grpc.enabled = false;
    c.auth.secret = Some(format!("the {name} node's secret"));
    c.auth.admin_secret = Some(SECRET.into());
    let node = missive_server::start(c).await.unwrap();
    let url = format!("http://{}", node.addr());
    ready(&url).await;
    (node, url)
}

/// Uploads `body` with `token` (tus: create, one PATCH); its media id.
pub async fn upload(url: &str, token: &str, body: &[u8]) -> String {
    let c = reqwest::Client::new();
    let r = c
        .post(format!("{url}/v1/media/uploads"))
        .bearer_auth(token)
        .header("Upload-Length", body.len().to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let loc = r.headers()["location"].to_str().unwrap().to_owned();
    let r = c
        .patch(format!("{url}{loc}"))
        .bearer_auth(token)
        .header("Content-Type", "application/offset+octet-stream")
        .header("Upload-Offset", "0")
        .body(body.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    r.headers()["missive-media-id"].to_str().unwrap().to_owned()
}

/// A marker unique to this run (hex nanoseconds since the epoch), so a
/// residue search cannot find bytes an earlier run left behind.
pub fn nonce() -> String {
    format!(
        "{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    )
}
