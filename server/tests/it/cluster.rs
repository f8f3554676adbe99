//! The delivery and sync cases against a 3-node cluster on 127.0.0.1–3:
//! clients on different nodes, writes forwarded to shard leaders, events
//! pushed from each node's own replica.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use crate::common;

use std::net::SocketAddr;

use std::time::Duration;

use serde_json::{json, Value};

use common::{assert_consecutive, config, message_seqs, suites, three_node_addrs, token, Http, Ws};
use missive_server::{Config, Running};

async fn cluster(dir: &std::path::Path) -> (Vec<Config>, Vec<Running>) {
    let (addrs, peers) = three_node_addrs();
    let mut cfgs = Vec::new();
    for i in 1..=3u64 {
        let mut c = config(&dir.join(format!("n{i}")));
        let [raft, http, grpc] = addrs[i as usize - 1];
        c.listen = http;
        c.grpc.listen = grpc;
        c.node.id = i;
        c.node.raft_listen = raft;
        c.node.peers = peers.clone();
        c.node.replicas = 3;
        c.auth.secret = Some("one secret for the whole cluster".into());
        cfgs.push(c);
    }
    let started =
        futures_util::future::join_all(cfgs.iter().cloned().map(missive_server::start)).await;
    let nodes: Vec<Running> = started.into_iter().map(|r| r.unwrap()).collect();
    // Ready: every shard has a leader as every node sees it.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    for n in &nodes {
        loop {
            let r = reqwest::get(format!("http://{}/readyz", n.addr()))
                .await
                .unwrap();
            if r.status().as_u16() == 200 {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "cluster not ready");
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
    (cfgs, nodes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_and_sync_across_nodes() {
    let dir = tempfile::tempdir().unwrap();
    let (cfgs, nodes) = cluster(dir.path()).await;
    let c = &cfgs[0];
    // Alice talks to node 1, Bob's phone to node 2, Bob's laptop to node 3.
    let alice = Http::new(nodes[0].addr(), token(c, 1, 1));
    let conv = alice.direct(2).await;
    let mut phone = Ws::connect(nodes[1].addr(), &token(c, 2, 1)).await;
    phone.sync(0).await;
    for i in 1..=20 {
        alice.send(&conv, &format!("m{i}"), &format!("{i}")).await;
    }
    let mut got = Vec::new();
    while message_seqs(&got, &conv).len() < 20 {
        got.push(phone.next().await.expect("closed"));
    }
    assert_eq!(message_seqs(&got, &conv), (1..=20).collect::<Vec<_>>());
    // The laptop was offline: it syncs everything from node 3.
    let mut laptop = Ws::connect(nodes[2].addr(), &token(c, 2, 2)).await;
    let evs = laptop.sync_until(0, &conv, 20).await;
    assert_consecutive(&evs, 0);
    assert_eq!(message_seqs(&evs, &conv), (1..=20).collect::<Vec<_>>());
    // A reply from node 3 reaches Alice on node 1, and history agrees on
    // every node.
    let mut seen = Vec::new();
    let r = laptop
        .send_text(&conv, "reply", "from the laptop", &mut seen)
        .await;
    assert_eq!(r["seq"], 21, "{r}");
    let mut a = Ws::connect(nodes[0].addr(), &token(c, 1, 1)).await;
    let evs = a.sync_until(0, &conv, 21).await;
    assert_eq!(message_seqs(&evs, &conv).last(), Some(&21));
    for n in &nodes {
        let h = Http::new(n.addr(), token(c, 2, 1));
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let (_, v) = h
                .get(&format!("/v1/conversations/{conv}/messages?limit=100"))
                .await;
            if v["messages"].as_array().map(Vec::len) == Some(21) {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "{v}");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
    for n in nodes {
        n.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tickets_are_single_use_and_revocations_reach_every_node() {
    let dir = tempfile::tempdir().unwrap();
    let (cfgs, nodes) = cluster(dir.path()).await;
    let c = &cfgs[0];
    let ticket_url = |n: &Running, t: &str| format!("ws://{}/v1/ws?ticket={t}", n.addr());
    // A ticket minted on node 1 works once, on node 2; node 3 refuses it.
    let alice_phone = Http::new(nodes[0].addr(), token(c, 1, 1));
    let (s, t) = alice_phone.post("/v1/ws-ticket", json!({})).await;
    assert_eq!(s, 200);
    let ticket = t["ticket"].as_str().unwrap().to_string();
    let (_ws, _) = tokio_tungstenite::connect_async(ticket_url(&nodes[1], &ticket))
        .await
        .unwrap();
    match tokio_tungstenite::connect_async(ticket_url(&nodes[2], &ticket)).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => {
            assert_eq!(r.status().as_u16(), 401);
            let body: Value = serde_json::from_slice(r.body().as_deref().unwrap()).unwrap();
            assert_eq!(body["error"]["code"], "ticket_used", "{body}");
        }
        other => panic!("a used ticket was not refused: {:?}", other.map(|_| ())),
    }

    // Alice's laptop has a socket on node 2; her phone, on node 1, logs
    // it out; node 3 refuses its token and the socket on node 2 closes.
    let laptop = token(c, 1, 2);
    let mut ws = Ws::connect(nodes[1].addr(), &laptop).await;
    ws.sync(0).await;
    let (s, _) = alice_phone
        .post("/v1/devices/revoke", json!({"devices": ["2"]}))
        .await;
    assert_eq!(s, 204);
    assert_eq!(ws.close_code().await, Some(4003));
    let on3 = Http::new(nodes[2].addr(), laptop);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (s, v) = on3.get("/v1/conversations").await;
        if s == 401 {
            assert_eq!(v["error"]["code"], "token_revoked");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "node 3 still takes the revoked token"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(alice_phone.get("/v1/conversations").await.0, 200);
    for n in nodes {
        n.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_and_typing_cross_nodes() {
    let dir = tempfile::tempdir().unwrap();
    let (cfgs, nodes) = cluster(dir.path()).await;
    let c = &cfgs[0];
    let conv = Http::new(nodes[0].addr(), token(c, 1, 1)).direct(2).await;
    // Alice watches Bob from node 1; Bob's phone is on node 2, his laptop
    // on node 3.
    let mut alice = Ws::connect(nodes[0].addr(), &token(c, 1, 1)).await;
    let mut seen = Vec::new();
    let state = alice
        .request(json!({"type": "presence", "users": ["2"]}), &mut seen)
        .await;
    assert_eq!(state["users"][0]["online"], false, "{state}");
    let phone = Ws::connect(nodes[1].addr(), &token(c, 2, 1)).await;
    let on = alice.frame_where("presence", |f| f["user"] == "2").await;
    assert_eq!(on["online"], true, "{on}");
    let mut laptop = Ws::connect(nodes[2].addr(), &token(c, 2, 2)).await;
    laptop
        .send_json(json!({"type": "typing", "conv": conv, "typing": true}))
        .await;
    let t = alice.frame_where("typing", |_| true).await;
    assert_eq!(t["user"], "2", "{t}");
    // The phone leaves; the laptop on node 3 keeps Bob online, so no
    // offline transition — until the laptop leaves too.
    drop(phone);
    let early = tokio::time::timeout(
        std::time::Duration::from_millis(700),
        alice.frame_where("presence", |f| f["user"] == "2"),
    )
    .await;
    assert!(
        early.is_err(),
        "offline while the laptop is still on: {early:?}"
    );
    drop(laptop);
    let off = alice.frame_where("presence", |f| f["user"] == "2").await;
    assert_eq!(off["online"], false, "{off}");
    assert!(off["last_seen"].as_u64().is_some(), "{off}");
    for n in nodes {
        n.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_on_any_node_includes_every_acknowledged_send() {
    let dir = tempfile::tempdir().unwrap();
    let (cfgs, nodes) = cluster(dir.path()).await;
    let c = &cfgs[0];
    let clients: Vec<Http> = nodes
        .iter()
        .map(|n| Http::new(n.addr(), token(c, 1, 1)))
        .collect();
    let conv = clients[0].direct(2).await;
    // Each send is acknowledged by one node, and the history read right
    // after goes to another: a follower must not answer from a replica
    // that has not applied the acknowledged write yet.
    for i in 1..=30u64 {
        let (seq, _) = clients[(i % 3) as usize]
            .send(&conv, &format!("m{i}"), "x")
            .await;
        let reader = &clients[((i + 1) % 3) as usize];
        let (s, v) = reader
            .get(&format!("/v1/conversations/{conv}/messages?limit=1"))
            .await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(
            v["messages"][0]["seq"], seq,
            "read {i} on another node: {v}"
        );
    }
    // Shard 1's leader, and only it, reports each other replica's lag;
    // once the writes stop, both catch up to 0.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let mut lags = Vec::new();
        for n in &nodes {
            let text = common::metrics(n.addr()).await;
            lags.extend(
                text.lines()
                    .filter(|l| l.starts_with("missive_shard_replication_lag_entries{shard=\"1\""))
                    .map(str::to_string),
            );
        }
        let caught_up = lags.iter().all(|l| l.ends_with(" 0"));
        if lags.len() == 2 && caught_up {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{lags:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for n in nodes {
        n.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_across_nodes_and_removed_members_hear_nothing_after() {
    let dir = tempfile::tempdir().unwrap();
    let (cfgs, nodes) = cluster(dir.path()).await;
    let addrs: Vec<SocketAddr> = nodes.iter().map(Running::addr).collect();
    suites::groups_fan_out_and_removed_members_hear_nothing_after(&addrs, &cfgs[0]).await;
    for n in nodes {
        n.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_across_nodes_name_the_message_they_answer() {
    let dir = tempfile::tempdir().unwrap();
    let (cfgs, nodes) = cluster(dir.path()).await;
    let addrs: Vec<SocketAddr> = nodes.iter().map(Running::addr).collect();
    suites::replies_name_the_message_they_answer(&addrs, &cfgs[0]).await;
    for n in nodes {
        n.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edits_unsends_and_reactions_across_nodes_follow_the_rules() {
    let dir = tempfile::tempdir().unwrap();
    let (cfgs, nodes) = cluster(dir.path()).await;
    let addrs: Vec<SocketAddr> = nodes.iter().map(Running::addr).collect();
    suites::edits_unsends_and_reactions_follow_the_rules(&addrs, &cfgs[0]).await;
    for n in nodes {
        n.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pins_and_blocks_across_nodes_follow_the_rules() {
    let dir = tempfile::tempdir().unwrap();
    let (cfgs, nodes) = cluster(dir.path()).await;
    let addrs: Vec<SocketAddr> = nodes.iter().map(Running::addr).collect();
    suites::pins_and_blocks_follow_the_rules(&addrs, &cfgs[0]).await;
    for n in nodes {
        n.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_across_nodes_scopes_hits_to_what_the_user_may_read() {
    let dir = tempfile::tempdir().unwrap();
    let (cfgs, nodes) = cluster(dir.path()).await;
    let addrs: Vec<SocketAddr> = nodes.iter().map(Running::addr).collect();
    suites::search_scopes_hits_to_what_the_user_may_read(&addrs, &cfgs[0]).await;
    for n in nodes {
        n.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mentions_and_settings_across_nodes_follow_the_rules() {
    let dir = tempfile::tempdir().unwrap();
    let (cfgs, nodes) = cluster(dir.path()).await;
    let addrs: Vec<SocketAddr> = nodes.iter().map(Running::addr).collect();
    suites::mentions_and_settings_follow_the_rules(&addrs, &cfgs[0]).await;
    for n in nodes {
        n.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_hands_off_to_live_across_nodes_with_no_gap_and_no_duplicate() {
    let dir = tempfile::tempdir().unwrap();
    let (cfgs, nodes) = cluster(dir.path()).await;
    let addrs: Vec<SocketAddr> = nodes.iter().map(Running::addr).collect();
    suites::sync_hands_off_to_live_with_no_gap_and_no_duplicate(&addrs, &cfgs[0]).await;
    for n in nodes {
        n.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_restarted_from_its_data_serves_a_device_everything_it_missed() {
    let dir = tempfile::tempdir().unwrap();
    let (cfgs, mut nodes) = cluster(dir.path()).await;
    let c = &cfgs[0];
    let alice = Http::new(nodes[0].addr(), token(c, 1, 1));
    let conv = alice.direct(2).await;
    alice.send(&conv, "m1", "one").await;
    // Bob's laptop, on node 3, saw the first message.
    let mut laptop = Ws::connect(nodes[2].addr(), &token(c, 2, 2)).await;
    let first = laptop.sync_until(0, &conv, 1).await;
    let cursor = first.last().unwrap()["useq"].as_u64().unwrap();
    drop(laptop);
    // Node 3 goes down; the other two keep a quorum and keep committing.
    let n3 = nodes.pop().unwrap();
    n3.shutdown().await.unwrap();
    for i in 2..=15 {
        alice.send(&conv, &format!("m{i}"), &format!("{i}")).await;
    }
    // It comes back from its data directory and catches up; the laptop
    // reconnects to it with its cursor.
    let n3 = missive_server::start(cfgs[2].clone()).await.unwrap();
    let mut laptop = Ws::connect(n3.addr(), &token(c, 2, 2)).await;
    let missed = laptop.sync_until(cursor, &conv, 14).await;
    assert_consecutive(&missed, cursor);
    assert_eq!(message_seqs(&missed, &conv), (2..=15).collect::<Vec<_>>());
    // History on the restarted node is linearizable too.
    let (_, h) = Http::new(n3.addr(), token(c, 2, 2))
        .get(&format!("/v1/conversations/{conv}/messages?limit=1"))
        .await;
    assert_eq!(h["messages"][0]["seq"], 15, "{h}");
    nodes.push(n3);
    for n in nodes {
        n.shutdown().await.unwrap();
    }
}

/// An admin call: (status, body).
async fn admin(
    method: reqwest::Method,
    url: String,
    secret: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = reqwest::Client::new()
        .request(method, url)
        .header("x-admin-secret", secret);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

fn voter_ids(shard: &Value) -> Vec<u64> {
    shard["voters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["node"].as_u64().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_node_is_replaced_through_the_admin_api_and_nothing_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let (cfgs, mut nodes) = cluster(dir.path()).await;
    let c = &cfgs[0];
    let secret = c.auth.admin_secret.clone().unwrap();
    let alice = Http::new(nodes[0].addr(), token(c, 1, 1));
    let conv = alice.direct(2).await;
    for i in 1..=10 {
        alice.send(&conv, &format!("m{i}"), &format!("{i}")).await;
    }

    // Node 4 joins: it hosts nothing yet, and serves everything by routing.
    let mut c4 = config(&dir.path().join("n4"));
    let p4 = common::free_ports("127.0.0.4", 3);
    c4.listen = p4[1];
    c4.grpc.listen = p4[2];
    c4.node.id = 4;
    c4.node.raft_listen = p4[0];
    c4.node.peers = cfgs[0].node.peers.clone();
    c4.node.join = true;
    // No shard count of its own: it takes the cluster's 4 (its default, 8,
    // would be refused when it registers).
    c4.node.shards = None;
    c4.auth.secret = c.auth.secret.clone();
    let n4 = missive_server::start(c4.clone()).await.unwrap();
    assert_eq!(n4.node().slots().shards().count(), 4);
    let mut laptop = Ws::connect(n4.addr(), &token(c, 2, 2)).await;
    let evs = laptop.sync_until(0, &conv, 10).await;
    assert_eq!(message_seqs(&evs, &conv), (1..=10).collect::<Vec<_>>());
    let (_, r) = Http::new(n4.addr(), token(c, 2, 2))
        .post(
            &format!("/v1/conversations/{conv}/messages"),
            json!({"client_msg_id": "from-4", "kind": "text", "body": "hi from node 4"}),
        )
        .await;
    assert_eq!(r["seq"], 11, "{r}");
    // Node 4 applies nothing, so no wake: the laptop still gets a message
    // sent on node 1 live, from its session's routed look in the store.
    alice.send(&conv, "m12", "12").await;
    let live = laptop
        .event_where(|e| e["event"]["kind"] == "message" && e["event"]["seq"] == 12)
        .await;
    assert_eq!(live["conv"], conv.as_str(), "{live}");

    // The layout, as node 4 sees it: every shard on nodes 1–3.
    let base4 = format!("http://{}/v1/admin", n4.addr());
    let (st, layout) = admin(
        reqwest::Method::GET,
        format!("{base4}/cluster"),
        &secret,
        None,
    )
    .await;
    assert_eq!(st, 200, "{layout}");
    let shards = layout["shards"].as_array().unwrap().clone();
    assert_eq!(shards.len(), 5, "the metadata group and 4 shards");
    for s in &shards {
        assert_eq!(voter_ids(s), vec![1, 2, 3], "{s}");
        assert_eq!(s["hosted_here"], false);
    }
    // Bad calls: no secret, no such shard, a bad body.
    let (st, e) = admin(
        reqwest::Method::GET,
        format!("{base4}/cluster"),
        "wrong",
        None,
    )
    .await;
    assert_eq!((st, e["error"]["code"].as_str()), (403, Some("forbidden")));
    let (st, e) = admin(
        reqwest::Method::POST,
        format!("{base4}/shards/9/move"),
        &secret,
        Some(json!({"from": 3, "to": 4, "addr": c4.node.raft_listen.to_string()})),
    )
    .await;
    assert_eq!(
        (st, e["error"]["code"].as_str()),
        (404, Some("not_found")),
        "{e}"
    );
    let (st, e) = admin(
        reqwest::Method::POST,
        format!("{base4}/shards/1/move"),
        &secret,
        Some(json!({"from": 3, "to": 4, "addr": "not an address"})),
    )
    .await;
    assert_eq!(st, 400, "{e}");

    // Node 3 dies; every replica it held moves onto node 4 (asked of node
    // 1): the survivors are a quorum of both configurations.
    let n3 = nodes.pop().unwrap();
    n3.shutdown().await.unwrap();
    let base1 = format!("http://{}/v1/admin", nodes[0].addr());
    for s in 0..=4 {
        let (st, p) = admin(
            reqwest::Method::POST,
            format!("{base1}/shards/{s}/move"),
            &secret,
            Some(json!({"from": 3, "to": 4, "addr": c4.node.raft_listen.to_string()})),
        )
        .await;
        assert_eq!(st, 200, "{p}");
        assert_eq!(voter_ids(&p), vec![1, 2, 4], "{p}");
    }
    // Nodes 1, 2 and 4 carry on.
    for i in 13..=20 {
        let (seq, _) = alice.send(&conv, &format!("m{i}"), &format!("{i}")).await;
        assert_eq!(seq, i);
    }
    // Node 4 now replicates every shard and serves the laptop live.
    let (_, layout) = admin(
        reqwest::Method::GET,
        format!("{base4}/cluster"),
        &secret,
        None,
    )
    .await;
    for s in layout["shards"].as_array().unwrap() {
        assert_eq!(s["hosted_here"], true, "{s}");
    }
    alice.send(&conv, "m21", "21").await;
    let live = laptop
        .event_where(|e| e["event"]["kind"] == "message" && e["event"]["seq"] == 21)
        .await;
    assert_eq!(live["conv"], conv.as_str(), "{live}");
    let (_, h) = Http::new(n4.addr(), token(c, 2, 2))
        .get(&format!("/v1/conversations/{conv}/messages?limit=100"))
        .await;
    let seqs: Vec<u64> = h["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, (1..=21).rev().collect::<Vec<_>>());

    // Node 3 leaves the cluster map for good: refused for a bad id and for
    // the answering node itself; retried until the moves were reported.
    let (st, e) = admin(
        reqwest::Method::DELETE,
        format!("{base1}/nodes/three"),
        &secret,
        None,
    )
    .await;
    assert_eq!((st, e["error"]["code"].as_str()), (400, Some("invalid")));
    let (st, _) = admin(
        reqwest::Method::DELETE,
        format!("{base1}/nodes/1"),
        &secret,
        None,
    )
    .await;
    assert_eq!(st, 400);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (st, r) = admin(
            reqwest::Method::DELETE,
            format!("{base1}/nodes/3"),
            &secret,
            None,
        )
        .await;
        if st == 200 {
            assert_eq!(r["forgotten"], true, "{r}");
            break;
        }
        assert_eq!(
            (st, r["error"]["code"].as_str()),
            (409, Some("conflict")),
            "{r}"
        );
        assert!(
            tokio::time::Instant::now() < deadline,
            "node 3 never forgettable: {r}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (_, layout) = admin(
        reqwest::Method::GET,
        format!("{base4}/cluster"),
        &secret,
        None,
    )
    .await;
    let listed: Vec<u64> = layout["map"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["node"].as_u64().unwrap())
        .collect();
    assert_eq!(listed, vec![1, 2, 4], "{layout}");
    assert_eq!(layout["map"]["forgotten"], json!([3]), "{layout}");
    nodes.push(n4);
    for n in nodes {
        n.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn end_to_end_encryption_across_nodes_and_the_key_directory_survives_its_leader() {
    let dir = tempfile::tempdir().unwrap();
    let (cfgs, mut nodes) = cluster(dir.path()).await;
    let c = &cfgs[0];
    let addrs: Vec<SocketAddr> = nodes.iter().map(Running::addr).collect();
    common::e2ee::two_users_two_devices_each(&addrs, c).await;

    // A device with 20 one-time keys; 5 claimed through one node.
    let owner = 501u64;
    let mut d = common::e2ee::Device::new(owner, 1, Http::new(addrs[0], token(c, owner, 1)));
    d.publish(20).await;
    let claim = |addr: SocketAddr| {
        let h = Http::new(addr, token(c, 502, 1));
        async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
            loop {
                let (s, v) = h
                    .post(&format!("/v1/users/{owner}/keys/claim"), json!({}))
                    .await;
                if s == 200 {
                    return v["devices"][0]["one_time_prekey"]["id"].as_u64().unwrap();
                }
                assert!(
                    s == 503 && tokio::time::Instant::now() < deadline,
                    "{s} {v}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(claim(addrs[i % 3]).await);
    }
    // Stop the node that leads the owner's user shard.
    let shard = nodes[0].node().slots().shard_of_user(owner);
    let leader = leader_of(addrs[0], shard.0).await;
    let victim = nodes.remove(leader as usize - 1);
    victim.shutdown().await.unwrap();
    let alive: Vec<SocketAddr> = nodes.iter().map(Running::addr).collect();
    for i in 0..5 {
        ids.push(claim(alive[i % 2]).await);
    }
    assert_eq!(ids, (1..=10).collect::<Vec<u64>>(), "in order, none twice");
    // Both survivors list the same device with the same identity, and 10
    // keys left.
    for a in &alive {
        let (s, v) = Http::new(*a, token(c, 502, 1))
            .get(&format!("/v1/users/{owner}/keys"))
            .await;
        assert_eq!(s, 200, "{v}");
        let listed = v["devices"][0]["identity_key"].as_str().unwrap();
        let want = base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            d.identity_public(),
        );
        assert_eq!(listed, want);
    }
    let (s, v) = Http::new(alive[1], token(c, owner, 1))
        .get("/v1/keys")
        .await;
    assert_eq!((s, v["one_time_prekeys"].as_u64()), (200, Some(10)), "{v}");
    for n in nodes {
        n.shutdown().await.unwrap();
    }
}

/// The node that leads `shard`, as `addr`'s metrics report it.
async fn leader_of(addr: SocketAddr, shard: u32) -> u64 {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let m = common::metrics(addr).await;
        let key = format!("missive_shard_leader{{shard=\"{shard}\"}} ");
        if let Some(l) = m
            .lines()
            .find_map(|l| l.strip_prefix(&key))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .filter(|l| *l > 0)
        {
            return l;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no leader of {shard}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every node's history of `conv` (one page) holds exactly the text
/// messages `acked` names, in seq order.
async fn history_holds(clients: &[Http], conv: &str, acked: &[u64]) {
    let mut want = acked.to_vec();
    want.sort_unstable();
    for (i, client) in clients.iter().enumerate() {
        let (s, v) = client
            .get(&format!("/v1/conversations/{conv}/messages?limit=200"))
            .await;
        assert_eq!(s, 200, "{v}");
        let seqs: Vec<u64> = v["messages"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["kind"] == "text")
            .map(|m| m["seq"].as_u64().unwrap())
            .rev()
            .collect();
        assert_eq!(seqs, want, "node {}: {conv}", i + 1);
    }
}

/// Online split through the admin API of a 3-node cluster while clients on
/// every node keep sending: every acknowledged message is in its
/// conversation's history once, in seq order with no gap, on every node;
/// the moved conversations are served by the new shard (`/v1/admin/cluster`
/// shows it, with its slots and its leader) and keep taking sends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_splits_through_the_admin_api_while_clients_send() {
    use missive_engine::keys::{ConversationId, Slot};
    let dir = tempfile::tempdir().unwrap();
    let (cfgs, nodes) = cluster(dir.path()).await;
    let c = &cfgs[0];
    let secret = c.auth.admin_secret.clone().unwrap();
    let clients: Vec<Http> = nodes
        .iter()
        .map(|n| Http::new(n.addr(), token(c, 1, 1)))
        .collect();
    // Shard 1 of 4 owns slots 0..1024; the split gives 512..1024 away.
    // Three conversations on each side of the cut.
    let slot = |conv: &str| Slot::of_conversation(ConversationId(conv.parse().unwrap())).0;
    let (mut moved, mut kept) = (Vec::new(), Vec::new());
    for i in 0..400 {
        if moved.len() == 3 && kept.len() == 3 {
            break;
        }
        let conv = clients[0].group(&format!("g{i}"), &[1, 2, 3]).await;
        match slot(&conv) {
            512..1024 if moved.len() < 3 => moved.push(conv),
            0..512 if kept.len() < 3 => kept.push(conv),
            _ => {}
        }
    }
    assert_eq!((moved.len(), kept.len()), (3, 3));
    let convs: Vec<String> = moved.iter().chain(kept.iter()).cloned().collect();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let split = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = Vec::new();
    for (i, conv) in convs.iter().enumerate() {
        let (client, conv) = (clients[i % 3].clone(), conv.clone());
        let (stop, split) = (stop.clone(), split.clone());
        writers.push(tokio::spawn(async move {
            let (mut acked, mut after_split) = (Vec::new(), 0);
            let mut n = 0;
            // Paced, so that one page of history (200) holds them all.
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && n < 180 {
                let done = split.load(std::sync::atomic::Ordering::Relaxed);
                let (seq, dup) = client.send(&conv, &format!("m{n}"), "x").await;
                assert!(!dup);
                acked.push(seq);
                after_split += usize::from(done);
                n += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            (conv, acked, after_split)
        }));
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    let (s, v) = admin(
        reqwest::Method::POST,
        format!("http://{}/v1/admin/shards/1/split", nodes[2].addr()),
        &secret,
        Some(json!({})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["parent"], 1, "{v}");
    assert_eq!(v["child"], 5, "{v}");
    assert_eq!(v["parent_slots"], json!([0, 512]), "{v}");
    assert_eq!(v["child_slots"], json!([512, 1024]), "{v}");
    split.store(true, std::sync::atomic::Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut sent = Vec::new();
    for w in writers {
        sent.push(w.await.unwrap());
    }
    for (conv, acked, after_split) in &sent {
        assert!(
            *after_split >= 3,
            "{conv}: {after_split} sends after the split"
        );
        assert!(
            acked.len() > *after_split + 3,
            "{conv}: {} sends",
            acked.len()
        );
        history_holds(&clients, conv, acked).await;
    }
    // The new shard is in the layout with its slots and a leader.
    let (s, layout) = admin(
        reqwest::Method::GET,
        format!("http://{}/v1/admin/cluster", nodes[0].addr()),
        &secret,
        None,
    )
    .await;
    assert_eq!(s, 200, "{layout}");
    let child = layout["shards"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["shard"] == 5)
        .unwrap_or_else(|| panic!("no shard 5 in {layout}"));
    assert_eq!(child["slots"], json!([512, 1024]), "{child}");
    assert!(child["leader"].as_u64().is_some(), "{child}");
    // A bad split point is refused with a clear error.
    let (s, v) = admin(
        reqwest::Method::POST,
        format!("http://{}/v1/admin/shards/5/split", nodes[1].addr()),
        &secret,
        Some(json!({"at": 4000})),
    )
    .await;
    assert_eq!(s, 400, "{v}");
    assert_eq!(v["error"]["code"], "invalid", "{v}");
    // Merging into a shard whose slots do not adjoin is refused; into
    // shard 1 it merges back, and the moved conversations keep taking
    // sends and showing every message on every node.
    let (s, v) = admin(
        reqwest::Method::POST,
        format!("http://{}/v1/admin/shards/5/merge", nodes[0].addr()),
        &secret,
        Some(json!({"into": 3})),
    )
    .await;
    assert_eq!(s, 400, "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("adjoin"),
        "{v}"
    );
    let (s, v) = admin(
        reqwest::Method::POST,
        format!("http://{}/v1/admin/shards/5/merge", nodes[0].addr()),
        &secret,
        Some(json!({"into": 1})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["parent_slots"], json!([0, 1024]), "{v}");
    for conv in &moved {
        let mut acked = sent.iter().find(|(c, ..)| c == conv).unwrap().1.clone();
        for (i, client) in clients.iter().enumerate() {
            let (seq, _) = client.send(conv, &format!("merged-{i}"), "x").await;
            acked.push(seq);
        }
        history_holds(&clients, conv, &acked).await;
    }
    for n in nodes {
        n.shutdown().await.unwrap();
    }
}
