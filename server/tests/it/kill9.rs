//! Three `missived` processes on 127.0.0.1–3; under a steady load of
//! sends through every node, the leader of the conversation's shard is
//! killed with SIGKILL. A new leader takes over and sends succeed again;
//! after the killed process restarts from its data directory, every
//! acknowledged send is in the conversation exactly once, in the same
//! order on all three replicas, and nothing appears that no client sent;
//! both members' inboxes hold every stored message once, in order (one
//! member's inbox is on the conversation's shard — local delivery — the
//! other's is reached through the outbox).
//! The same kill during a media upload loses no acknowledged byte, and
//! the media stays downloadable from the survivors; during one-time key
//! claims through every node it hands out no key twice and every node
//! agrees on what is left; while a push notification waits to retry
//! (through the webhook, or fake APNs and FCM), the next leader sends it
//! and nobody sends it twice.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use crate::common;

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;

use common::{free_port, free_ports, peers_of, token, Http};
use missive_chat::command::UserId;
use missive_engine::keys::ConversationId;
use missive_raft::cluster::slots::SlotMap;
use missive_server::Config;

const SECRET: &str = "one secret for the kill -9 cluster";
const SHARDS: u32 = 2;

struct Proc {
    child: Child,
    config: std::path::PathBuf,
    addr: SocketAddr,
}

fn spawn(config: &Path) -> Child {
    spawn_logging(config, Some("error"))
}

/// Starts `missived` with its log (stderr) appended to `<config>.log`, at
/// `level` (`RUST_LOG`; None: the binary's default).
fn spawn_logging(config: &Path, level: Option<&str>) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(config.with_extension("log"))
        .unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_missived"));
    cmd.args(["--config"]).arg(config).env_remove("RUST_LOG");
    if let Some(level) = level {
        cmd.env("RUST_LOG", level);
    }
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::from(log))
        .spawn()
        .unwrap()
}

/// Waits for the "listening" line (the port is fixed by the config, but
/// the line says the node is up). A node that exits first fails the test
/// with its log (`config` with the extension `log`), which says why.
fn wait_listening(child: &mut Child, config: &Path) {
    let mut out = BufReader::new(child.stdout.take().unwrap());
    // Log lines (peers not up yet) may come first.
    loop {
        let mut line = String::new();
        if out.read_line(&mut line).unwrap() == 0 {
            let log = std::fs::read_to_string(config.with_extension("log")).unwrap_or_default();
            panic!("missived exited before listening; its log:\n{log}");
        }
        if line.starts_with("missived listening") {
            break;
        }
    }
    // Keep draining so a later line never meets a closed pipe.
    std::thread::spawn(move || for _ in out.lines() {});
}

async fn wait_ready(addrs: &[SocketAddr]) {
    let deadline = Instant::now() + Duration::from_secs(60);
    for a in addrs {
        loop {
            let ok = reqwest::get(format!("http://{a}/readyz"))
                .await
                .is_ok_and(|r| r.status().as_u16() == 200);
            if ok {
                break;
            }
            assert!(Instant::now() < deadline, "{a} not ready");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

async fn leader_of(addr: SocketAddr, shard: u32) -> u64 {
    let m = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let key = format!("missive_shard_leader{{shard=\"{shard}\"}} ");
    m.lines()
        .find_map(|l| l.strip_prefix(&key))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// Every message of `conv` as node `addr` holds it, oldest first:
/// (seq, client_msg_id).
async fn all_messages(h: &Http, conv: &str) -> Vec<(u64, String)> {
    let mut out = Vec::new();
    let mut before: Option<u64> = None;
    loop {
        let q = match before {
            Some(b) => format!("/v1/conversations/{conv}/messages?limit=200&before={b}"),
            None => format!("/v1/conversations/{conv}/messages?limit=200"),
        };
        let (s, v) = h.get(&q).await;
        assert_eq!(s, 200, "{v}");
        for m in v["messages"].as_array().unwrap() {
            out.push((
                m["seq"].as_u64().unwrap(),
                m["client_msg_id"].as_str().unwrap().to_string(),
            ));
        }
        match v["next_before"].as_u64() {
            Some(b) => before = Some(b),
            None => break,
        }
    }
    out.reverse();
    out
}

/// Three `missived` processes on 127.0.0.1–3 with data under `dir`, ready;
/// their client addresses, and a config whose secret signs their tokens.
async fn start_cluster(dir: &Path) -> (Vec<Proc>, Vec<SocketAddr>, Config) {
    start_cluster_logging(dir, Some("error")).await
}

/// [`start_cluster`] with the nodes' log level (see [`spawn_logging`]).
async fn start_cluster_logging(
    dir: &Path,
    level: Option<&str>,
) -> (Vec<Proc>, Vec<SocketAddr>, Config) {
    start_cluster_with(dir, level, "").await
}

/// [`start_cluster_logging`] with `extra` appended to every node's
/// config (TOML sections).
async fn start_cluster_with(
    dir: &Path,
    level: Option<&str>,
    extra: &str,
) -> (Vec<Proc>, Vec<SocketAddr>, Config) {
    // Each node's transport and HTTP ports, picked together so they differ.
    let (raft, http): (Vec<SocketAddr>, Vec<SocketAddr>) = (1..=3)
        .map(|i| {
            let p = free_ports(&format!("127.0.0.{i}"), 2);
            (p[0], p[1])
        })
        .unzip();
    let peers = peers_of(&raft);
    let peers_toml = peers
        .iter()
        .map(|(id, a)| format!("{id} = \"{a}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let mut procs = Vec::new();
    for i in 0..3usize {
        let data = dir.join(format!("n{}", i + 1));
        let cfg = dir.join(format!("n{}.toml", i + 1));
        std::fs::write(
            &cfg,
            format!(
                "listen = \"{}\"\ndata_dir = {:?}\n[node]\nid = {}\nraft_listen = \"{}\"\n\
                 shards = {SHARDS}\nreplicas = 3\npeers = {{ {peers_toml} }}\n\
                 [auth]\nsecret = \"{SECRET}\"\n[grpc]\nenabled = false\n\
                 [limits]\nsends_per_second = 100000\nsend_burst = 100000\n\
                 history_rate = {{ per_second = 100000, burst = 100000 }}\n{extra}",
                http[i],
                data.display().to_string(),
                i + 1,
                raft[i]
            ),
        )
        .unwrap();
        let mut child = spawn_logging(&cfg, level);
        wait_listening(&mut child, &cfg);
        procs.push(Proc {
            child,
            config: cfg,
            addr: http[i],
        });
    }
    wait_ready(&http).await;
    // Tokens signed with the cluster's secret.
    let mut tc = Config {
        data_dir: dir.join("tokens"),
        ..Config::default()
    };
    tc.auth.secret = Some(SECRET.into());
    (procs, http, tc)
}

#[derive(Default)]
struct Record {
    invoked: HashSet<String>,
    ok: HashSet<String>,
    /// Ok sends invoked after the kill.
    ok_after_kill: usize,
    /// When the first of those was acknowledged.
    first_after_kill: Option<Instant>,
    /// The bodies of refusals (503s while a leader is elected).
    refusals: Vec<String>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_a_shard_leader_under_load_loses_no_acknowledged_send() {
    let dir = tempfile::tempdir().unwrap();
    let (mut procs, http, tc) = start_cluster(dir.path()).await;
    let alice = token(&tc, 1, 1);
    // Bob's inbox is on the conversation's shard and Alice's is not: each
    // message reaches Bob in its own Raft batch (local delivery) and
    // Alice through the outbox and a Deliver on her shard; both must
    // survive the kill.
    let slots = SlotMap::even(SHARDS).unwrap();
    let bob = (2..1000u64)
        .find(|&b| {
            let home = slots.shard_of(missive_chat::direct_id(UserId(1), UserId(b)));
            slots.shard_of_user(b) == home && slots.shard_of_user(1) != home
        })
        .expect("some peer shares the conversation's shard and user 1 does not");
    let conv = Http::new(http[0], alice.clone()).direct(bob).await;
    let shard = slots.shard_of(ConversationId(conv.parse().unwrap())).0;
    let victim = leader_of(http[0], shard).await;
    assert!((1..=3).contains(&victim), "no leader for shard {shard}");
    println!("shard {shard} of {conv} is led by node {victim}; killing it under load");

    // Four writers, each through its own node in turn (skipping the dead).
    let killed_at: Arc<Mutex<Option<Instant>>> = Arc::default();
    let dead: Arc<Mutex<Option<usize>>> = Arc::default();
    let rec: Arc<Mutex<Record>> = Arc::default();
    let done: Arc<std::sync::atomic::AtomicBool> = Arc::default();
    let mut writers = Vec::new();
    for w in 0..4u64 {
        let (http, alice, conv) = (http.clone(), alice.clone(), conv.clone());
        let (killed_at, dead, rec, done) =
            (killed_at.clone(), dead.clone(), rec.clone(), done.clone());
        writers.push(tokio::spawn(async move {
            let client = reqwest::Client::builder()
                .timeout(Duration::from_secs(12))
                .build()
                .unwrap();
            let mut i = 0u64;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                let mut n = ((w + i) % 3) as usize;
                if *dead.lock().unwrap() == Some(n) {
                    n = (n + 1) % 3;
                }
                let id = format!("w{w}-{i}");
                i += 1;
                let started = Instant::now();
                rec.lock().unwrap().invoked.insert(id.clone());
                let r = client
                    .post(format!(
                        "http://{}/v1/conversations/{conv}/messages",
                        http[n]
                    ))
                    .bearer_auth(&alice)
                    .json(&json!({"client_msg_id": id, "body": "x"}))
                    .send()
                    .await;
                let ok = match r {
                    Ok(r) if r.status().as_u16() == 200 => true,
                    Ok(r) => {
                        let body = r.text().await.unwrap_or_default();
                        rec.lock().unwrap().refusals.push(body);
                        false
                    }
                    Err(_) => false,
                };
                if ok {
                    let mut g = rec.lock().unwrap();
                    g.ok.insert(id);
                    if killed_at.lock().unwrap().is_some_and(|k| started > k) {
                        g.ok_after_kill += 1;
                        g.first_after_kill.get_or_insert_with(Instant::now);
                    }
                } else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let v = (victim - 1) as usize;
    *dead.lock().unwrap() = Some(v);
    procs[v].child.kill().unwrap(); // SIGKILL
    procs[v].child.wait().unwrap();
    let kill = Instant::now();
    *killed_at.lock().unwrap() = Some(kill);
    // Load goes on until 200 sends started after the kill were
    // acknowledged (a new leader is serving), or 60 s.
    while rec.lock().unwrap().ok_after_kill < 200 && kill.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
    let (invoked, ok, ok_after_kill, first) = {
        let g = rec.lock().unwrap();
        (
            g.invoked.clone(),
            g.ok.clone(),
            g.ok_after_kill,
            g.first_after_kill,
        )
    };
    println!(
        "{} sends invoked, {} acknowledged, {ok_after_kill} of them started after the kill; \
         the first of those acknowledged {:?} after it",
        invoked.len(),
        ok.len(),
        first.map(|f| f - kill)
    );
    assert!(
        ok_after_kill >= 200,
        "sends did not resume after the leader was killed"
    );
    // Refusals while the shard had no leader name no node and no internal
    // address (the raft error behind them does).
    let refusals = rec.lock().unwrap().refusals.clone();
    println!("{} refusals, e.g. {:?}", refusals.len(), refusals.first());
    // ("a node being away" is fine; "node 2" is not.)
    let names_a_node = |b: &str| {
        b.match_indices("node ")
            .any(|(i, _)| b[i + 5..].starts_with(|c: char| c.is_ascii_digit()))
    };
    for body in &refusals {
        assert!(
            !body.contains("127.0.0.") && !names_a_node(body),
            "a refusal leaks cluster internals: {body}"
        );
    }

    // The killed node restarts from its data directory and catches up.
    let mut child = spawn(&procs[v].config);
    wait_listening(&mut child, &procs[v].config);
    procs[v].child = child;
    wait_ready(&http).await;

    let mut views: HashMap<usize, Vec<(u64, String)>> = HashMap::new();
    for (i, p) in procs.iter().enumerate() {
        views.insert(
            i,
            all_messages(&Http::new(p.addr, alice.clone()), &conv).await,
        );
    }
    let first = &views[&0];
    for (i, view) in &views {
        assert_eq!(view, first, "node {} differs from node 1", i + 1);
    }
    let seqs: Vec<u64> = first.iter().map(|(s, _)| *s).collect();
    assert_eq!(
        seqs,
        (1..=first.len() as u64).collect::<Vec<_>>(),
        "seqs not dense"
    );
    let mut seen = HashSet::new();
    for (_, id) in first {
        assert!(seen.insert(id.clone()), "{id} stored twice");
        assert!(invoked.contains(id), "{id} was never sent");
    }
    let missing: Vec<_> = ok.iter().filter(|id| !seen.contains(*id)).collect();
    assert!(missing.is_empty(), "acknowledged but lost: {missing:?}");
    // Every stored message is in both members' inboxes once, in order,
    // read through every node (a replica still catching up answers a
    // shorter stream for a moment: asked again for up to 60 s).
    let bob_token = token(&tc, bob, 1);
    for p in &procs {
        for (who, t) in [("alice", &alice), ("bob", &bob_token)] {
            let h = Http::new(p.addr, t.clone());
            let deadline = Instant::now() + Duration::from_secs(60);
            let mut got = inbox_seqs(&h, &conv).await;
            while got != seqs && got.len() < seqs.len() && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(200)).await;
                got = inbox_seqs(&h, &conv).await;
            }
            assert_eq!(got, seqs, "{who}'s inbox through {}", p.addr);
        }
    }
    for mut p in procs {
        let _ = p.child.kill();
        let _ = p.child.wait();
    }
}

/// The seqs of `conv`'s message events in the caller's inbox, in useq
/// order (`GET /v1/sync` from the start, page by page; retried while the
/// node is still catching up).
async fn inbox_seqs(h: &Http, conv: &str) -> Vec<u64> {
    let mut seqs = Vec::new();
    let mut after = 0u64;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (s, v) = h.get(&format!("/v1/sync?after={after}&limit=256")).await;
        if s != 200 {
            assert!(Instant::now() < deadline, "sync: {s} {v}");
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        }
        for e in v["events"].as_array().unwrap() {
            if e["conv"] == conv && e["event"]["kind"] == "message" {
                seqs.push(e["event"]["seq"].as_u64().unwrap());
            }
        }
        after = v["cursor"].as_u64().unwrap();
        if v["more"] != true {
            return seqs;
        }
    }
}

/// One change through the first alive node that takes it: retried (on
/// another node, after a pause) while the answer is retryable — a leader
/// is being elected — for up to 60 s. The answer's body.
async fn change_until_done(
    nodes: &[SocketAddr],
    dead: Option<usize>,
    token: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> serde_json::Value {
    let r = until_answered(nodes, dead, |c, a| {
        let mut req = c
            .request(method.clone(), format!("http://{a}{path}"))
            .bearer_auth(token);
        if let Some(b) = &body {
            req = req.json(b);
        }
        req
    })
    .await;
    let status = r.status().as_u16();
    let v: serde_json::Value = r.json().await.unwrap_or_default();
    assert_eq!(status, 200, "{method} {path}: {v}");
    v
}

/// Every message of `conv` as node `addr` serves it, oldest first, with
/// what edits, unsends and reactions made of it (`edited_at` kept: it is
/// the leader's stamp, the same on every replica).
async fn changed_messages(h: &Http, conv: &str) -> Vec<serde_json::Value> {
    let (s, v) = h
        .get(&format!("/v1/conversations/{conv}/messages?limit=200"))
        .await;
    assert_eq!(s, 200, "{v}");
    let mut out: Vec<serde_json::Value> = v["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            json!({
                "seq": m["seq"], "body": m["body"], "edits": m["edits"],
                "edited_at": m["edited_at"], "unsent": m["unsent"], "reactions": m["reactions"],
                "my_reactions": m["my_reactions"],
            })
        })
        .collect();
    out.reverse();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edits_unsends_and_reactions_are_identical_on_every_replica_after_a_leader_kill() {
    let dir = tempfile::tempdir().unwrap();
    let (mut procs, http, tc) = start_cluster(dir.path()).await;
    let (alice, bob, carol) = (token(&tc, 1, 1), token(&tc, 2, 1), token(&tc, 3, 1));
    let conv = Http::new(http[0], alice.clone())
        .group("kill", &[2, 3])
        .await;
    let msgs = format!("/v1/conversations/{conv}/messages");
    // Alice's messages are seqs 1..=30.
    for i in 0..30 {
        let v = change_until_done(
            &http,
            None,
            &alice,
            reqwest::Method::POST,
            &msgs,
            Some(json!({"client_msg_id": format!("m{i}"), "body": format!("body {i}")})),
        )
        .await;
        assert_eq!(v["seq"], i + 1, "{v}");
    }
    // Changes before and after the kill: edits (Alice), reactions (Bob,
    // Carol; some removed), unsends (Alice).
    let changes = |from: u64, to: u64| {
        let mut c: Vec<(String, reqwest::Method, String, Option<serde_json::Value>)> = Vec::new();
        for seq in from..to {
            let m = format!("{msgs}/{seq}");
            match seq % 4 {
                0 => c.push((
                    alice.clone(),
                    reqwest::Method::PATCH,
                    m,
                    Some(json!({"body": format!("edited {seq}")})),
                )),
                1 => {
                    c.push((
                        bob.clone(),
                        reqwest::Method::PUT,
                        format!("{m}/reactions/%F0%9F%91%8D"),
                        Some(json!({})),
                    ));
                    c.push((
                        carol.clone(),
                        reqwest::Method::PUT,
                        format!("{m}/reactions/%F0%9F%91%8D"),
                        Some(json!({})),
                    ));
                    c.push((
                        carol.clone(),
                        reqwest::Method::PUT,
                        format!("{m}/reactions/%F0%9F%8E%89"),
                        Some(json!({})),
                    ));
                }
                2 => {
                    c.push((
                        bob.clone(),
                        reqwest::Method::PUT,
                        format!("{m}/reactions/%F0%9F%98%82"),
                        Some(json!({})),
                    ));
                    c.push((
                        bob.clone(),
                        reqwest::Method::DELETE,
                        format!("{m}/reactions/%F0%9F%98%82"),
                        None,
                    ));
                }
                _ => c.push((alice.clone(), reqwest::Method::DELETE, m, None)),
            }
        }
        c
    };
    for (tok, method, path, body) in changes(1, 17) {
        change_until_done(&http, None, &tok, method, &path, body).await;
    }
    let conv_id: u64 = conv.parse().unwrap();
    let shard = SlotMap::even(SHARDS)
        .unwrap()
        .shard_of(ConversationId(conv_id))
        .0;
    let victim = leader_of(http[0], shard).await;
    assert!((1..=3).contains(&victim), "no leader for shard {shard}");
    let v = (victim - 1) as usize;
    procs[v].child.kill().unwrap(); // SIGKILL
    procs[v].child.wait().unwrap();
    for (tok, method, path, body) in changes(17, 31) {
        change_until_done(&http, Some(v), &tok, method, &path, body).await;
    }
    // The killed node comes back from its data directory and catches up.
    let mut child = spawn(&procs[v].config);
    wait_listening(&mut child, &procs[v].config);
    procs[v].child = child;
    wait_ready(&http).await;

    let mut views = Vec::new();
    for p in &procs {
        views.push(changed_messages(&Http::new(p.addr, bob.clone()), &conv).await);
    }
    for (i, view) in views.iter().enumerate() {
        assert_eq!(view, &views[0], "node {} differs from node 1", i + 1);
    }
    // And they are what the changes made: every kind present, as expected.
    let view = &views[0];
    assert_eq!(view.len(), 30, "{view:?}");
    for m in view {
        let seq = m["seq"].as_u64().unwrap();
        match seq % 4 {
            0 => assert_eq!(m["body"], format!("edited {seq}"), "{m}"),
            1 => assert_eq!(
                (&m["reactions"], &m["my_reactions"]),
                (&json!({"👍": 2, "🎉": 1}), &json!(["👍"])),
                "{m}"
            ),
            2 => assert!(
                m["reactions"].is_null() && m["body"] == format!("body {}", seq - 1),
                "{m}"
            ),
            _ => assert!(m["unsent"]["by"] == "1" && m["body"].is_null(), "{m}"),
        }
    }
    for mut p in procs {
        let _ = p.child.kill();
        let _ = p.child.wait();
    }
}

/// What an operator sees in the logs of a cluster that starts normally,
/// written to files (not a terminal): no colour escapes, and no ERROR
/// line — each node used to log openraft's "Can not initialize" for every
/// group another voter had formed first, and on every restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_normal_cluster_start_and_restart_log_no_error_and_no_colour() {
    let dir = tempfile::tempdir().unwrap();
    let (mut procs, http, tc) = start_cluster_logging(dir.path(), None).await;
    Http::new(http[0], token(&tc, 1, 1)).direct(2).await;
    // A restart of every node (a rolling upgrade, one at a time).
    for p in &mut procs {
        let term = Command::new("kill")
            .args(["-TERM", &p.child.id().to_string()])
            .status()
            .unwrap();
        assert!(term.success());
        p.child.wait().unwrap();
        let mut child = spawn_logging(&p.config, None);
        wait_listening(&mut child, &p.config);
        p.child = child;
        wait_ready(&http).await;
    }
    Http::new(http[1], token(&tc, 2, 1)).direct(1).await;
    for p in &mut procs {
        p.child.kill().unwrap();
        p.child.wait().unwrap();
        let log = std::fs::read_to_string(p.config.with_extension("log")).unwrap();
        assert!(log.contains(" INFO "), "nothing logged? {log}");
        assert!(
            !log.contains('\u{1b}'),
            "colour escapes in a log file:\n{log}"
        );
        let errors: Vec<&str> = log.lines().filter(|l| l.contains("ERROR")).collect();
        assert!(
            errors.is_empty(),
            "ERROR lines on a normal start:\n{errors:#?}"
        );
    }
}

/// The seqs of `token`'s search hits for `q` on the node at `addr`, every
/// page, retrying while the node answers `unavailable` (an election).
async fn search_on(addr: SocketAddr, token: &str, q: &str) -> Vec<u64> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(12))
        .build()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seqs = Vec::new();
    let mut cursor = String::new();
    loop {
        let url = format!("http://{addr}/v1/search?q={q}&limit=7&cursor={cursor}");
        let r = client.get(url).bearer_auth(token).send().await;
        let (status, v) = match r {
            Ok(r) => (
                r.status().as_u16(),
                r.json::<serde_json::Value>().await.unwrap_or_default(),
            ),
            Err(_) => (503, serde_json::Value::Null),
        };
        match status {
            200 => {
                for h in v["hits"].as_array().unwrap() {
                    seqs.push(h["message"]["seq"].as_u64().unwrap());
                }
                match v["next"].as_str() {
                    Some(n) => cursor = n.to_string(),
                    None => return seqs,
                }
            }
            503 | 504 => {
                assert!(Instant::now() < deadline, "search on {addr} never answered");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            other => panic!("search {q} on {addr}: {other} {v}"),
        }
    }
}

/// Search is answered from the index every replica keeps in the message's
/// own batch: after the conversation's shard leader is killed (changes
/// made before and after), every node — the restarted one too — answers
/// every query the same, and as the changes say.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_answers_the_same_on_every_node_after_a_leader_kill() {
    let dir = tempfile::tempdir().unwrap();
    let (mut procs, http, tc) = start_cluster(dir.path()).await;
    let (alice, bob) = (token(&tc, 1, 1), token(&tc, 2, 1));
    let conv = Http::new(http[0], alice.clone())
        .group("find", &[2, 3])
        .await;
    let msgs = format!("/v1/conversations/{conv}/messages");
    let send = |i: u64| {
        (
            reqwest::Method::POST,
            msgs.clone(),
            Some(
                json!({"client_msg_id": format!("m{i}"), "body": format!("w{} common {i}", i % 3)}),
            ),
        )
    };
    // Seqs 1..=130 — the first 127 fill the conversation's first search
    // bucket, whose postings the 127th send writes — then: seq 1 edited
    // out of "common" before the kill, seq 2 unsent after it (both in the
    // sealed bucket), and five more sends.
    const BEFORE: u64 = 130;
    const AFTER: u64 = 135;
    for i in 1..=BEFORE {
        let (m, p, b) = send(i);
        change_until_done(&http, None, &alice, m, &p, b).await;
    }
    let edit = json!({"body": "w1 no longer"});
    change_until_done(
        &http,
        None,
        &alice,
        reqwest::Method::PATCH,
        &format!("{msgs}/1"),
        Some(edit),
    )
    .await;
    let conv_id: u64 = conv.parse().unwrap();
    let shard = SlotMap::even(SHARDS)
        .unwrap()
        .shard_of(ConversationId(conv_id))
        .0;
    let victim = leader_of(http[0], shard).await;
    assert!((1..=3).contains(&victim), "no leader for shard {shard}");
    let v = (victim - 1) as usize;
    procs[v].child.kill().unwrap(); // SIGKILL
    procs[v].child.wait().unwrap();
    change_until_done(
        &http,
        Some(v),
        &alice,
        reqwest::Method::DELETE,
        &format!("{msgs}/2"),
        None,
    )
    .await;
    for i in BEFORE + 1..=AFTER {
        let (m, p, b) = send(i);
        change_until_done(&http, Some(v), &alice, m, &p, b).await;
    }
    let want = |f: &dyn Fn(u64) -> bool| (3..=AFTER).rev().filter(|s| f(*s)).collect::<Vec<u64>>();
    let queries: Vec<(&str, Vec<u64>)> = vec![
        ("common", want(&|_| true)),
        ("w0%20common%20", want(&|s| s % 3 == 0)),
        ("w1", [want(&|s| s % 3 == 1), vec![1]].concat()),
        ("no%20long", vec![1]),
    ];
    for (i, p) in procs.iter().enumerate().filter(|(i, _)| *i != v) {
        for (q, expect) in &queries {
            assert_eq!(
                &search_on(p.addr, &bob, q).await,
                expect,
                "node {} {q}",
                i + 1
            );
        }
    }
    // The killed node comes back from its data directory and catches up.
    let mut child = spawn(&procs[v].config);
    wait_listening(&mut child, &procs[v].config);
    procs[v].child = child;
    wait_ready(&http).await;
    for (i, p) in procs.iter().enumerate() {
        for (q, expect) in &queries {
            assert_eq!(
                &search_on(p.addr, &bob, q).await,
                expect,
                "node {} {q}",
                i + 1
            );
        }
    }
    for mut p in procs {
        let _ = p.child.kill();
        let _ = p.child.wait();
    }
}

/// Sends the request `build` makes to the nodes in turn (skipping `dead`)
/// until one answers other than 503/504; that answer.
async fn until_answered(
    nodes: &[SocketAddr],
    dead: Option<usize>,
    build: impl Fn(&reqwest::Client, SocketAddr) -> reqwest::RequestBuilder,
) -> reqwest::Response {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(12))
        .build()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    for attempt in 0usize.. {
        let n = (0..nodes.len())
            .map(|k| (attempt + k) % nodes.len())
            .find(|k| Some(*k) != dead)
            .unwrap();
        if let Ok(r) = build(&client, nodes[n]).send().await {
            if !matches!(r.status().as_u16(), 503 | 504) {
                return r;
            }
        }
        assert!(Instant::now() < deadline, "never answered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    unreachable!()
}

/// A media upload to three replicas: its shard's leader is killed after
/// 1.5 MiB were acknowledged, while a PATCH to it is mid-body; the upload
/// resumes through another node
/// from at least that offset and finishes with the exact bytes. Then,
/// with the node back, the upload shard's leader is killed again and a
/// conversation member still downloads every byte (and a Range) from
/// each of the other nodes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn media_survives_the_kill_of_its_shard_leader_mid_upload_and_after() {
    let dir = tempfile::tempdir().unwrap();
    let (mut procs, http, tc) = start_cluster(dir.path()).await;
    let (alice, bob) = (token(&tc, 1, 1), token(&tc, 2, 1));
    let data: Vec<u8> = {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        (0..(7 << 19))
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    };
    let r = until_answered(&http, None, |c, a| {
        c.post(format!("http://{a}/v1/media/uploads"))
            .bearer_auth(&alice)
            .header("Upload-Length", data.len().to_string())
    })
    .await;
    assert_eq!(r.status(), 201);
    let path = r.headers()["location"].to_str().unwrap().to_owned();
    let acked = 3 << 19;
    let patch = |from: usize, to: usize, node: SocketAddr| {
        let (alice, path, body) = (alice.clone(), path.clone(), data[from..to].to_vec());
        async move {
            reqwest::Client::new()
                .patch(format!("http://{node}{path}"))
                .bearer_auth(&alice)
                .header("Content-Type", "application/offset+octet-stream")
                .header("Upload-Offset", from.to_string())
                .body(body)
                .send()
                .await
                .unwrap()
        }
    };
    let r = patch(0, acked, http[0]).await;
    assert_eq!(r.status(), 204);
    assert_eq!(r.headers()["upload-offset"], acked.to_string().as_str());

    let slots = SlotMap::even(SHARDS).unwrap();
    let shard_of = |path: &str| {
        let upload = u64::from_str_radix(path.rsplit('/').next().unwrap(), 16).unwrap();
        slots
            .shard_of_slot(missive_chat::media::records::upload_slot(upload))
            .0
    };

    // A whole file in one PATCH to a node that does not lead the upload's
    // shard: its pieces, four in flight, are forwarded one call each and
    // may overtake each other (the later is refused on its offset and
    // sent again); every byte must land in place.
    let other: Vec<u8> = data.iter().rev().copied().collect();
    let r = until_answered(&http, None, |c, a| {
        c.post(format!("http://{a}/v1/media/uploads"))
            .bearer_auth(&alice)
            .header("Upload-Length", other.len().to_string())
    })
    .await;
    let other_path = r.headers()["location"].to_str().unwrap().to_owned();
    let leader = leader_of(http[0], shard_of(&other_path)).await;
    let follower = http[leader as usize % 3];
    let r = reqwest::Client::new()
        .patch(format!("http://{follower}{other_path}"))
        .bearer_auth(&alice)
        .header("Content-Type", "application/offset+octet-stream")
        .header("Upload-Offset", "0")
        .body(other.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204, "a PATCH through a follower");
    assert_eq!(
        r.headers()["missive-media-id"],
        blake3::hash(&other).to_hex().as_str()
    );

    // tus creation-with-upload through every node: the creation and the
    // first piece are queued together; through a node that does not lead
    // the new upload's shard they are forwarded one call each, and a piece
    // that arrives before the creation is refused and sent again.
    let mut through_followers = 0;
    for (i, node) in http.iter().enumerate() {
        let body: Vec<u8> = data[i * 1000..i * 1000 + (3 << 19)].to_vec();
        let r = reqwest::Client::new()
            .post(format!("http://{node}/v1/media/uploads"))
            .bearer_auth(&alice)
            .header("Upload-Length", body.len().to_string())
            .header("Content-Type", "application/offset+octet-stream")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201, "creation-with-upload through {node}");
        assert_eq!(
            r.headers()["missive-media-id"],
            blake3::hash(&body).to_hex().as_str()
        );
        let made = r.headers()["location"].to_str().unwrap();
        if leader_of(http[0], shard_of(made)).await != i as u64 + 1 {
            through_followers += 1;
        }
    }
    assert!(through_followers > 0, "no upload went through a follower");

    let shard = shard_of(&path);
    let victim = leader_of(http[0], shard).await;
    let v = (victim - 1) as usize;
    // A PATCH in flight to the victim: part of its body sent (past the
    // next chunk boundary), the rest never comes — the process dies.
    let mut inflight = tokio::net::TcpStream::connect(http[v]).await.unwrap();
    let head = format!(
        "PATCH {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {alice}\r\n\
         Content-Type: application/offset+octet-stream\r\nUpload-Offset: {acked}\r\n\
         Content-Length: {}\r\n\r\n",
        http[v],
        data.len() - acked
    );
    {
        use tokio::io::AsyncWriteExt;
        inflight.write_all(head.as_bytes()).await.unwrap();
        inflight
            .write_all(&data[acked..acked + 700_000])
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    procs[v].child.kill().unwrap(); // SIGKILL
    procs[v].child.wait().unwrap();
    drop(inflight);

    // Resume through the others: HEAD says at least what was acknowledged.
    let offset: usize = loop {
        let r = until_answered(&http, Some(v), |c, a| {
            c.head(format!("http://{a}{path}")).bearer_auth(&alice)
        })
        .await;
        assert_eq!(r.status(), 200);
        let at: usize = r.headers()["upload-offset"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(at >= acked, "acknowledged {acked}, the store holds {at}");
        let node = http[(v + 1) % 3];
        let r = patch(at, data.len(), node).await;
        match r.status().as_u16() {
            204 => {
                break r.headers()["upload-offset"]
                    .to_str()
                    .unwrap()
                    .parse()
                    .unwrap()
            }
            503 | 504 | 409 => tokio::time::sleep(Duration::from_millis(100)).await,
            s => panic!("resume: {s} {:?}", r.text().await),
        }
    };
    assert_eq!(offset, data.len());
    let r = until_answered(&http, Some(v), |c, a| {
        c.get(format!("http://{a}{path}")).bearer_auth(&alice)
    })
    .await;
    let status: serde_json::Value = r.json().await.unwrap();
    let id = status["media_id"].as_str().unwrap().to_owned();
    assert_eq!(id, blake3::hash(&data).to_hex().as_str());

    // Alice sends it to Bob.
    let r = until_answered(&http, Some(v), |c, a| {
        c.post(format!("http://{a}/v1/conversations"))
            .bearer_auth(&alice)
            .json(&json!({"kind": "direct", "peer": "2"}))
    })
    .await;
    assert!(matches!(r.status().as_u16(), 200 | 201));
    let conv = r.json::<serde_json::Value>().await.unwrap()["conv"]
        .as_str()
        .unwrap()
        .to_owned();
    let body = json!({"media_id": id, "mime": "application/octet-stream", "size": data.len()});
    change_until_done(
        &http,
        Some(v),
        &alice,
        reqwest::Method::POST,
        &format!("/v1/conversations/{conv}/messages"),
        Some(json!({"client_msg_id": "m1", "kind": "media", "body": body.to_string()})),
    )
    .await;

    // The killed node comes back; then the upload shard's leader dies.
    let mut child = spawn(&procs[v].config);
    wait_listening(&mut child, &procs[v].config);
    procs[v].child = child;
    wait_ready(&http).await;
    let victim = leader_of(http[(v + 1) % 3], shard).await;
    let v = (victim - 1) as usize;
    procs[v].child.kill().unwrap();
    procs[v].child.wait().unwrap();
    for (n, node) in http.iter().enumerate().filter(|(n, _)| *n != v) {
        let url = format!("/v1/media/{id}?conversation={conv}");
        let r = until_answered(&[*node], None, |c, a| {
            c.get(format!("http://{a}{url}")).bearer_auth(&bob)
        })
        .await;
        assert_eq!(r.status(), 200, "node {n}");
        assert!(r.bytes().await.unwrap() == data, "node {n}: bytes differ");
        let r = until_answered(&[*node], None, |c, a| {
            c.get(format!("http://{a}{url}"))
                .bearer_auth(&bob)
                .header("Range", "bytes=1048000-1049000")
        })
        .await;
        assert_eq!(r.status(), 206, "node {n}");
        assert!(r.bytes().await.unwrap() == data[1_048_000..=1_049_000]);
    }
    for p in &mut procs {
        let _ = p.child.kill();
        let _ = p.child.wait();
    }
}

/// A push gateway on loopback that refuses the first call of each
/// idempotency key (500) and accepts every later one; (url, what it got:
/// (key, status)).
async fn flaky_gateway() -> (String, Arc<Mutex<Vec<(String, u16)>>>) {
    use axum::http::{HeaderMap, StatusCode};
    let log: Arc<Mutex<Vec<(String, u16)>>> = Arc::default();
    let l2 = Arc::clone(&log);
    let app = axum::Router::new().route(
        "/push",
        axum::routing::post(move |headers: HeaderMap| {
            let log = Arc::clone(&l2);
            async move {
                let key = headers
                    .get("idempotency-key")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_string();
                let mut l = log.lock().unwrap();
                let status = if l.iter().any(|(k, _)| *k == key) {
                    204
                } else {
                    500
                };
                l.push((key, status));
                StatusCode::from_u16(status).unwrap()
            }
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/push", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    (url, log)
}

/// One `missived` process on 127.0.0.1 whose config has `push` (TOML
/// lines under `[push]`, sections after it allowed) and push retries every
/// 1.5 s; ready, with the config's path and a config that mints tokens
/// for it.
async fn push_node(dir: &Path, push: &str) -> (Child, SocketAddr, std::path::PathBuf, Config) {
    let http = free_port("127.0.0.1");
    let cfg = dir.join("n1.toml");
    std::fs::write(
        &cfg,
        format!(
            "listen = \"{http}\"\ndata_dir = {:?}\n[node]\nshards = {SHARDS}\n\
             raft_listen = \"127.0.0.1:0\"\n[auth]\nsecret = \"{SECRET}\"\n\
             [grpc]\nenabled = false\n\
             [push]\nretry_min_ms = 1500\nretry_max_ms = 1500\n{push}",
            dir.join("n1").display().to_string(),
        ),
    )
    .unwrap();
    let mut child = spawn(&cfg);
    wait_listening(&mut child, &cfg);
    wait_ready(&[http]).await;
    let mut tc = Config {
        data_dir: dir.join("tokens"),
        ..Config::default()
    };
    tc.auth.secret = Some(SECRET.into());
    (child, http, cfg, tc)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_retry_loses_no_push_notification_and_sends_none_twice() {
    let (url, log) = flaky_gateway().await;
    let dir = tempfile::tempdir().unwrap();
    let (mut child, http, cfg, tc) =
        push_node(dir.path(), &format!("webhook_url = \"{url}\"\n")).await;
    let alice = Http::new(http, token(&tc, 1, 1));
    let phone = Http::new(http, token(&tc, 2, 1));
    let (s, v) = phone.put("/v1/devices/push", json!({"token": "tok"})).await;
    assert_eq!(s, 200, "{v}");
    let conv = alice.direct(2).await;
    // m1's first attempt fails; kill the node while it waits to retry,
    // right after m2 is acknowledged (its job written, maybe not tried).
    alice.send(&conv, "m1", "one").await;
    let deadline = Instant::now() + Duration::from_secs(15);
    while log.lock().unwrap().is_empty() {
        assert!(Instant::now() < deadline, "no first attempt");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    alice.send(&conv, "m2", "two").await;
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let before: Vec<(String, u16)> = log.lock().unwrap().clone();
    assert!(
        before.iter().all(|(_, s)| *s == 500),
        "killed before any retry: {before:?}"
    );

    let mut child = spawn(&cfg);
    wait_listening(&mut child, &cfg);
    wait_ready(&[http]).await;
    // Both events are accepted, once each.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let accepted: Vec<String> = log
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, s)| *s == 204)
            .map(|(k, _)| k.clone())
            .collect();
        if accepted.len() >= 2 {
            break;
        }
        assert!(Instant::now() < deadline, "accepted only {accepted:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Settle: no late duplicate.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let log = log.lock().unwrap().clone();
    let mut accepted: Vec<String> = log
        .iter()
        .filter(|(_, s)| *s == 204)
        .map(|(k, _)| k.clone())
        .collect();
    accepted.sort();
    let keys: HashSet<&String> = log.iter().map(|(k, _)| k).collect();
    assert_eq!(keys.len(), 2, "two events, one device: {log:?}");
    assert_eq!(accepted.len(), 2, "each accepted once: {log:?}");
    assert_ne!(accepted[0], accepted[1], "{log:?}");
    let _ = child.kill();
    let _ = child.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_retry_through_apns_and_fcm_loses_no_notification_and_sends_none_twice() {
    use common::fake_push::{self, ApnsAccount, TestCa};
    // Both providers refuse the first request for each notification and
    // accept every later one.
    let flaky = || -> fake_push::Script {
        Arc::new(|_, before| match before {
            0 => (503, Duration::ZERO),
            _ => (200, Duration::ZERO),
        })
    };
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let account = ApnsAccount::new();
    let apns = fake_push::apns(&ca, &account, flaky()).await;
    let (fcm, sa) = fake_push::fcm(&ca, dir.path(), flaky()).await;
    let (mut child, http, cfg, tc) = push_node(
        dir.path(),
        &format!(
            "ca_file = {:?}\n\
             [push.apns]\nkey_file = {:?}\nkey_id = \"{}\"\nteam_id = \"{}\"\n\
             topic = \"{}\"\nendpoint = \"{}\"\n\
             [push.fcm]\nservice_account_file = {:?}\nendpoint = \"{}\"\n",
            ca.write(dir.path()).display().to_string(),
            account.write(dir.path()).display().to_string(),
            account.key_id,
            account.team_id,
            account.topic,
            apns.url,
            sa.display().to_string(),
            fcm.url,
        ),
    )
    .await;
    let alice = Http::new(http, token(&tc, 1, 1));
    for (device, platform) in [(1, "ios"), (2, "android")] {
        let h = Http::new(http, token(&tc, 2, device));
        let (s, v) = h
            .post(
                "/v1/devices",
                json!({"name": platform, "platform": platform}),
            )
            .await;
        assert_eq!(s, 200, "{v}");
        let (s, v) = h
            .put(
                "/v1/devices/push",
                json!({"token": format!("tok-{platform}")}),
            )
            .await;
        assert_eq!(s, 200, "{v}");
    }
    let conv = alice.direct(2).await;
    // m1's first attempts fail; kill the node while it waits to retry,
    // right after m2 is acknowledged (its job written, maybe not tried).
    alice.send(&conv, "m1", "one").await;
    apns.until("m1's first APNs attempt", |l| !l.is_empty())
        .await;
    fcm.until("m1's first FCM attempt", |l| !l.is_empty()).await;
    alice.send(&conv, "m2", "two").await;
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    for fake in [&apns, &fcm] {
        let before = fake.log.lock().unwrap().clone();
        assert!(
            before.iter().all(|g| g.status == 503),
            "killed before any retry: {:?}",
            before.iter().map(|g| (&g.id, g.status)).collect::<Vec<_>>()
        );
    }

    let mut child = spawn(&cfg);
    wait_listening(&mut child, &cfg);
    wait_ready(&[http]).await;
    // Both events reach both devices, once each.
    for fake in [&apns, &fcm] {
        fake.until("both events accepted", |l| {
            l.iter().filter(|g| g.status == 200).count() >= 2
        })
        .await;
    }
    // Settle: no late duplicate.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for (name, fake) in [("apns", &apns), ("fcm", &fcm)] {
        let log = fake.log.lock().unwrap().clone();
        let ids: HashSet<&String> = log.iter().map(|g| &g.id).collect();
        assert_eq!(ids.len(), 2, "{name}: two events, one device: {log:?}");
        let mut accepted: Vec<&String> = log
            .iter()
            .filter(|g| g.status == 200)
            .map(|g| &g.id)
            .collect();
        accepted.sort();
        accepted.dedup();
        assert_eq!(
            log.iter().filter(|g| g.status == 200).count(),
            2,
            "{name}: each accepted once: {log:?}"
        );
        assert_eq!(accepted.len(), 2, "{name}: {log:?}");
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Restarts node `i` (0-based) of `procs` from its config; ready.
async fn restart(procs: &mut [Proc], i: usize) {
    let mut child = spawn(&procs[i].config);
    wait_listening(&mut child, &procs[i].config);
    procs[i].child = child;
    wait_ready(&[procs[i].addr]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_the_push_senders_node_mid_retry_hands_the_job_on_and_sends_none_twice() {
    use common::fake_push::{self, ApnsAccount, TestCa};
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let account = ApnsAccount::new();
    // The first request for each notification fails, later ones succeed.
    let apns = fake_push::apns(
        &ca,
        &account,
        Arc::new(|_, before| match before {
            0 => (503, Duration::ZERO),
            _ => (200, Duration::ZERO),
        }),
    )
    .await;
    let extra = format!(
        "[push]\nretry_min_ms = 2000\nretry_max_ms = 2000\nca_file = {:?}\n\
         [push.apns]\nkey_file = {:?}\nkey_id = \"{}\"\nteam_id = \"{}\"\n\
         topic = \"{}\"\nendpoint = \"{}\"\n",
        ca.write(dir.path()).display().to_string(),
        account.write(dir.path()).display().to_string(),
        account.key_id,
        account.team_id,
        account.topic,
        apns.url,
    );
    let (mut procs, http, tc) = start_cluster_with(dir.path(), Some("error"), &extra).await;
    let bob = Http::new(http[1], token(&tc, 2, 1));
    let (s, v) = bob
        .post("/v1/devices", json!({"name": "phone", "platform": "ios"}))
        .await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = bob.put("/v1/devices/push", json!({"token": "tok"})).await;
    assert_eq!(s, 200, "{v}");
    let alice = Http::new(http[0], token(&tc, 1, 1));
    let conv = alice.direct(2).await;
    // Bob's jobs live on his user shard; its leader sends them.
    let shard = SlotMap::even(SHARDS).unwrap().shard_of_user(2).0;
    let leader = leader_of(http[0], shard).await as usize;
    alice.send(&conv, "m1", "one").await;
    apns.until("m1's first attempt", |l| !l.is_empty()).await;
    alice.send(&conv, "m2", "two").await;
    procs[leader - 1].child.kill().unwrap(); // SIGKILL
    procs[leader - 1].child.wait().unwrap();
    // The new leader of the shard sends both, m1 when its retry is due.
    apns.until("both accepted after the kill", |l| {
        l.iter().filter(|g| g.status == 200).count() >= 2
    })
    .await;
    restart(&mut procs, leader - 1).await;
    // Settle: neither the new leader nor the restarted node sends again.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let log = apns.log.lock().unwrap().clone();
    let ids: HashSet<&String> = log.iter().map(|g| &g.id).collect();
    let accepted: Vec<&String> = log
        .iter()
        .filter(|g| g.status == 200)
        .map(|g| &g.id)
        .collect();
    let distinct: HashSet<&&String> = accepted.iter().collect();
    let seen: Vec<(&String, u16)> = log.iter().map(|g| (&g.id, g.status)).collect();
    assert_eq!(ids.len(), 2, "two events, one device: {seen:?}");
    assert_eq!(accepted.len(), 2, "each accepted once: {seen:?}");
    assert_eq!(distinct.len(), 2, "{seen:?}");
    for p in &mut procs {
        let _ = p.child.kill();
        let _ = p.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_the_key_directorys_leader_under_concurrent_claims_hands_out_no_key_twice() {
    let dir = tempfile::tempdir().unwrap();
    let (mut procs, http, tc) = start_cluster(dir.path()).await;
    let owner = 77u64;
    let mut d = common::e2ee::Device::new(owner, 1, Http::new(http[0], token(&tc, owner, 1)));
    d.publish(60).await;
    let shard = SlotMap::even(SHARDS).unwrap().shard_of_user(owner).0;
    let leader = leader_of(http[0], shard).await as usize;
    // Claimers on every node, claiming until told to stop; each keeps the
    // ids it was answered (a claim that dies with the node is not
    // answered: its key may be gone unseen, never handed out twice).
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let killed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut claimers = Vec::new();
    for (i, addr) in http.iter().enumerate() {
        // A plain client: the killed node refuses connections for a while.
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap();
        let url = format!("http://{addr}/v1/users/{owner}/keys/claim");
        let bearer = token(&tc, 100 + i as u64, 1);
        let (stop, killed) = (Arc::clone(&stop), Arc::clone(&killed));
        claimers.push(tokio::spawn(async move {
            // (id, whether the claim started after the kill)
            let mut got = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let after = killed.load(std::sync::atomic::Ordering::SeqCst);
                let r = client
                    .post(&url)
                    .bearer_auth(&bearer)
                    .json(&json!({}))
                    .send()
                    .await;
                if let Ok(r) = r.and_then(reqwest::Response::error_for_status) {
                    let v: serde_json::Value = r.json().await.unwrap_or_default();
                    if let Some(id) = v["devices"][0]["one_time_prekey"]["id"].as_u64() {
                        got.push((id, after));
                    }
                }
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
            got
        }));
    }
    tokio::time::sleep(Duration::from_millis(600)).await;
    procs[leader - 1].child.kill().unwrap(); // SIGKILL
    procs[leader - 1].child.wait().unwrap();
    killed.store(true, std::sync::atomic::Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    restart(&mut procs, leader - 1).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut got = Vec::new();
    for c in claimers {
        got.extend(c.await.unwrap());
    }
    let ids: Vec<u64> = got.iter().map(|(id, _)| *id).collect();
    let n = ids.len();
    let distinct: HashSet<u64> = ids.iter().copied().collect();
    assert_eq!(distinct.len(), n, "a key handed out twice: {ids:?}");
    let after = got.iter().filter(|(_, a)| *a).count();
    assert!(
        after > 0 && n > after,
        "claims answered before and after the kill: {got:?}"
    );
    // Every node, the restarted one too, agrees on what is left and on
    // the device's identity; claiming the rest hands out none seen.
    let left = |addr: SocketAddr| {
        let h = Http::new(addr, token(&tc, owner, 1));
        async move {
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                let (s, v) = h.get("/v1/keys").await;
                if s == 200 {
                    return v["one_time_prekeys"].as_u64().unwrap();
                }
                assert!(Instant::now() < deadline, "{s} {v}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    let remaining = left(http[0]).await;
    for a in &http[1..] {
        assert_eq!(left(*a).await, remaining, "node {a}");
    }
    assert!(
        remaining as usize + n <= 60,
        "{remaining} left, {n} claimed"
    );
    let want = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        d.identity_public(),
    );
    let mut rest = Vec::new();
    for i in 0..remaining {
        let h = Http::new(http[i as usize % 3], token(&tc, 200, 1));
        let (s, v) = h
            .post(&format!("/v1/users/{owner}/keys/claim"), json!({}))
            .await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["devices"][0]["identity_key"], want.as_str(), "{v}");
        rest.push(v["devices"][0]["one_time_prekey"]["id"].as_u64().unwrap());
    }
    assert!(
        rest.iter().all(|id| !distinct.contains(id)),
        "{rest:?} vs {ids:?}"
    );
    for p in &mut procs {
        let _ = p.child.kill();
        let _ = p.child.wait();
    }
}
