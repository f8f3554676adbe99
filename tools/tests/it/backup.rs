//! Backup under write load and restore into a fresh cluster of another
//! shape, over real nodes on loopback and the real `missivectl`: a
//! three-node cluster (3 shards, 3 replicas) takes messages and receipts
//! while `missivectl backup` copies it; `missivectl restore` puts the copy
//! into a new three-node cluster with 4 shards. Every message acknowledged
//! before the backup began is there, once, with its seq and body; every
//! receipt acknowledged before it too; every member's inbox holds each
//! such message once (the restored outboxes finish what the source had
//! not delivered); nothing is there that the source never acknowledged.
//! A media file sent before the backup downloads byte for byte from the
//! restored cluster. A restore into a cluster that holds data is refused, and a damaged
//! backup file is refused before anything is sent. Then an incremental
//! backup (`--base` the first) writes only what changed, links the rest,
//! and restores on its own into a one-node cluster after the first backup
//! is deleted.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests panic on surprises"
)]

use crate::common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use common::{call, ctl};

const USERS: u64 = 4;

/// Tokens for users 1..=USERS, minted by the cluster at `url`.
async fn tokens(url: &str) -> Vec<String> {
    let mut out = Vec::new();
    for user in 1..=USERS {
        let (s, v) = call(
            reqwest::Method::POST,
            format!("{url}/v1/admin/tokens"),
            None,
            Some(json!({"user": user, "device": 1})),
        )
        .await;
        assert_eq!(s, 200, "{v}");
        out.push(v["token"].as_str().unwrap().to_string());
    }
    out
}

/// One acknowledged send: (conv, seq, body).
type Sent = (String, u64, String);

/// Sends `body` as user `from` (index into `tokens`), resending with the
/// same client message id through a leader change; the acknowledged seq.
async fn send(url: &str, token: &str, conv: &str, cid: &str, body: &str) -> Option<u64> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (s, v) = call(
            reqwest::Method::POST,
            format!("{url}/v1/conversations/{conv}/messages"),
            Some(token),
            Some(json!({"client_msg_id": cid, "body": body})),
        )
        .await;
        if s == 200 {
            return v["seq"].as_u64();
        }
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every message of `conv` at `url` as (seq → body), paging back.
async fn history(url: &str, token: &str, conv: &str) -> BTreeMap<u64, String> {
    let mut out = BTreeMap::new();
    let mut before: Option<u64> = None;
    loop {
        let q = before.map_or(String::new(), |b| format!("&before={b}"));
        let (s, v) = call(
            reqwest::Method::GET,
            format!("{url}/v1/conversations/{conv}/messages?limit=200{q}"),
            Some(token),
            None,
        )
        .await;
        assert_eq!(s, 200, "{v}");
        for m in v["messages"].as_array().unwrap() {
            if m["kind"] == "system" {
                continue;
            }
            let seq = m["seq"].as_u64().unwrap();
            let body = m["body"].as_str().unwrap_or_default().to_string();
            assert!(
                out.insert(seq, body).is_none(),
                "{conv}: seq {seq} twice in history"
            );
        }
        match v["next_before"].as_u64() {
            Some(b) => before = Some(b),
            None => return out,
        }
    }
}

/// Every (conv, seq) of a `message` event in the user's inbox at `url`,
/// counted.
async fn inbox(url: &str, token: &str) -> BTreeMap<(String, u64), usize> {
    let mut out = BTreeMap::new();
    let mut after = 0u64;
    loop {
        let (s, v) = call(
            reqwest::Method::GET,
            format!("{url}/v1/sync?after={after}&limit=256"),
            Some(token),
            None,
        )
        .await;
        assert_eq!(s, 200, "{v}");
        for e in v["events"].as_array().unwrap() {
            if e["event"]["kind"] == "message" {
                let key = (
                    e["conv"].as_str().unwrap().to_string(),
                    e["event"]["seq"].as_u64().unwrap(),
                );
                *out.entry(key).or_insert(0) += 1;
            }
        }
        after = v["cursor"].as_u64().unwrap();
        if v["more"] != true {
            return out;
        }
    }
}

/// Each member's `read` receipt in `conv` at `url`.
async fn receipts(url: &str, token: &str, conv: &str) -> BTreeMap<String, u64> {
    let (s, v) = call(
        reqwest::Method::GET,
        format!("{url}/v1/conversations/{conv}/receipts"),
        Some(token),
        None,
    )
    .await;
    assert_eq!(s, 200, "{v}");
    v["receipts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["user"].as_str().unwrap().to_string(),
                r["read"].as_u64().unwrap_or(0),
            )
        })
        .collect()
}

#[test]
fn a_backup_taken_under_load_restores_into_a_cluster_of_another_shape() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let backup_dir = dir.path().join("backup");
    let common::Trio {
        nodes: a_nodes,
        urls: a,
        ..
    } = rt.block_on(common::three_nodes(dir.path(), "a", 3));
    let a_tokens = rt.block_on(tokens(&a[0]));

    // Four groups of all four users, and messages in each; user u reads
    // group u up to the last message sent so far.
    let (convs, before) = rt.block_on(async {
        let mut convs = Vec::new();
        for g in 0..4 {
            let members: Vec<String> = (2..=USERS).map(|u| u.to_string()).collect();
            let (s, v) = call(
                reqwest::Method::POST,
                format!("{}/v1/conversations", a[g % 3]),
                Some(&a_tokens[0]),
                Some(json!({"kind": "group", "name": format!("g{g}"), "members": members})),
            )
            .await;
            assert_eq!(s, 201, "{v}");
            convs.push(v["conv"].as_str().unwrap().to_string());
        }
        let mut sent: Vec<Sent> = Vec::new();
        for i in 0..40usize {
            let conv = &convs[i % 4];
            let from = i % USERS as usize;
            let body = format!("before-{i}");
            let seq = send(&a[i % 3], &a_tokens[from], conv, &format!("b{i}"), &body)
                .await
                .expect("a send before the backup is acknowledged");
            sent.push((conv.clone(), seq, body));
        }
        let mut read = BTreeMap::new();
        for (u, conv) in convs.iter().enumerate() {
            let upto = sent
                .iter()
                .filter(|s| &s.0 == conv)
                .map(|s| s.1)
                .max()
                .unwrap();
            let (s, v) = call(
                reqwest::Method::POST,
                format!("{}/v1/conversations/{conv}/receipts", a[u % 3]),
                Some(&a_tokens[u]),
                Some(json!({"read": upto})),
            )
            .await;
            assert_eq!(s, 200, "{v}");
            read.insert(((u + 1).to_string(), conv.clone()), upto);
        }
        (convs, (sent, read))
    });
    let (sent_before, read_before) = before;
    // A file sent to the first group: its bytes (two chunks, in the
    // backup's media keyspace) must come back whole.
    let file: Vec<u8> = (0..(3u32 << 19))
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let media_id = rt.block_on(send_file(
        &a[0],
        &a[1],
        &a_tokens[0],
        &convs[0],
        "file",
        &file,
    ));

    // Load while the backup runs: every node takes sends.
    let during: Arc<Mutex<Vec<Sent>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let (a, tokens, convs) = (a.clone(), a_tokens.clone(), convs.clone());
        let (during, stop) = (Arc::clone(&during), Arc::clone(&stop));
        rt.spawn(async move {
            let mut i = 0usize;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let conv = &convs[i % 4];
                let body = format!("during-{i}");
                let url = &a[i % 3];
                if let Some(seq) = send(
                    url,
                    &tokens[i % USERS as usize],
                    conv,
                    &format!("d{i}"),
                    &body,
                )
                .await
                {
                    during.lock().unwrap().push((conv.clone(), seq, body));
                }
                i += 1;
            }
        })
    };
    // Some load first, so the backup starts mid-stream.
    while during.lock().unwrap().len() < 20 {
        std::thread::sleep(Duration::from_millis(20));
    }
    let acked_at_start: Vec<Sent> = during.lock().unwrap().clone();
    let (code, out, err) = ctl(&[
        "backup",
        "--url",
        &a[1],
        "--out",
        backup_dir.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(code, 0, "backup failed: {err}{out}");
    let manifest: Value = serde_json::from_str(&out).unwrap();
    eprintln!(
        "backup: {} files, {} acknowledged before it began",
        manifest["shards"].as_array().map_or(0, Vec::len),
        sent_before.len() + acked_at_start.len()
    );
    assert_eq!(manifest["shard_count"], 3, "{manifest}");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    rt.block_on(load).unwrap();
    let during_all = during.lock().unwrap().clone();
    eprintln!(
        "{} acknowledged while the backup ran",
        during_all.len() - acked_at_start.len()
    );
    assert!(
        during_all.len() > acked_at_start.len(),
        "writes went on while the backup ran"
    );

    // A damaged copy of the backup is refused before anything is sent.
    let damaged = dir.path().join("damaged");
    copy_dir(&backup_dir, &damaged);
    let victim = chunk_files(&damaged)
        .into_iter()
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .unwrap();
    let mut bytes = std::fs::read(&victim).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    std::fs::write(&victim, bytes).unwrap();
    // `verify --backup` finds it offline (and the original is whole).
    let (code, out, err) = ctl(&["verify", "--backup", damaged.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        out.contains("DAMAGED") && out.contains(victim.file_name().unwrap().to_str().unwrap()),
        "{out}"
    );
    let (code, out, err) = ctl(&["--json", "verify", "--backup", backup_dir.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (v["whole"].clone(), v["pairs"].clone()),
        (json!(true), manifest_pairs(&manifest))
    );

    // The new cluster: another shard count, its own secret.
    let common::Trio {
        nodes: b_nodes,
        urls: b,
        ..
    } = rt.block_on(common::three_nodes(dir.path(), "b", 4));
    let (code, out, err) = ctl(&[
        "restore",
        "--url",
        &b[0],
        "--from",
        damaged.to_str().unwrap(),
    ]);
    assert_eq!(code, 2, "{out}");
    let name = victim.file_name().unwrap().to_str().unwrap();
    assert!(err.contains(name) && err.contains("damaged"), "{err}");
    let (code, out, err) = ctl(&[
        "restore",
        "--url",
        &b[2],
        "--from",
        backup_dir.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "restore failed: {err}{out}");
    eprint!("{out}");
    // A second restore into the now non-empty cluster is refused.
    let (code, out, err) = ctl(&[
        "restore",
        "--url",
        &b[0],
        "--from",
        backup_dir.to_str().unwrap(),
    ]);
    assert_eq!(code, 2, "{out}");
    assert!(err.contains("already holds data"), "{err}");

    let b_tokens = rt.block_on(tokens(&b[1]));
    // The file: readable by another member from the restored cluster,
    // byte for byte, and whole by its hash.
    rt.block_on(async {
        let r = reqwest::Client::new()
            .get(format!(
                "{}/v1/media/{media_id}?conversation={}",
                b[2], convs[0]
            ))
            .bearer_auth(&b_tokens[1])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert!(
            r.bytes().await.unwrap() == file,
            "the restored file differs"
        );
    });
    let (code, out, err) = ctl(&["--json", "media", "verify", "--url", &b[0]]);
    assert_eq!(code, 0, "{err}{out}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (v["objects"].as_u64(), v["damaged"].clone()),
        (Some(1), json!([])),
        "{v}"
    );
    rt.block_on(async {
        // Source truth, after the load stopped.
        let mut source: BTreeMap<String, BTreeMap<u64, String>> = BTreeMap::new();
        for conv in &convs {
            source.insert(conv.clone(), history(&a[0], &a_tokens[0], conv).await);
        }
        let mut restored: BTreeMap<String, BTreeMap<u64, String>> = BTreeMap::new();
        for (i, conv) in convs.iter().enumerate() {
            restored.insert(conv.clone(), history(&b[i % 3], &b_tokens[0], conv).await);
        }
        // Everything acknowledged before the backup began, with its seq
        // and body.
        for (conv, seq, body) in sent_before.iter().chain(&acked_at_start) {
            assert_eq!(
                restored[conv].get(seq),
                Some(body),
                "{conv} seq {seq} ({body}) acknowledged before the backup is missing or changed"
            );
        }
        // Nothing the source does not hold; each conversation's seqs are
        // a prefix of the source's (a shard's copy is one point in time).
        for conv in &convs {
            let (r, s) = (&restored[conv], &source[conv]);
            for (seq, body) in r {
                assert_eq!(
                    s.get(seq),
                    Some(body),
                    "{conv} seq {seq} is not the source's"
                );
            }
            let n = r.len() as u64;
            assert_eq!(
                r.keys().copied().collect::<Vec<_>>(),
                s.keys().copied().take(n as usize).collect::<Vec<_>>(),
                "{conv}: the restored seqs are not a prefix of the source's"
            );
        }
        // Receipts acknowledged before the backup.
        for ((user, conv), upto) in &read_before {
            let r = receipts(&b[0], &b_tokens[0], conv).await;
            assert!(
                r.get(user).copied().unwrap_or(0) >= *upto,
                "{conv}: user {user}'s read receipt {upto} is gone: {r:?}"
            );
        }
        // Every member's inbox: each restored message once, eventually
        // (a message whose delivery the backup caught half-way is
        // delivered by the restored outbox).
        for (u, token) in b_tokens.iter().enumerate() {
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let got = inbox(&b[u % 3], token).await;
                if let Some(((c, s), n)) = got.iter().find(|(_, n)| **n > 1) {
                    panic!("user {}: {c} seq {s} is in the inbox {n} times", u + 1);
                }
                let missing: Vec<_> = restored
                    .iter()
                    .flat_map(|(c, m)| m.keys().map(move |s| (c.clone(), *s)))
                    .filter(|k| !got.contains_key(k))
                    .collect();
                if missing.is_empty() {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "user {}: {} restored messages never reached the inbox, e.g. {:?}",
                    u + 1,
                    missing.len(),
                    missing.first()
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        // Every inbox entry is a message the source acknowledged (one
        // acknowledged while the backup ran may be in an inbox and not in
        // its conversation's copy: the documented gap).
        let mut inboxes = Vec::new();
        for (u, token) in b_tokens.iter().enumerate() {
            let got = inbox(&b[u % 3], token).await;
            for (c, s) in got.keys() {
                assert!(
                    source[c].contains_key(s),
                    "user {}: {c} seq {s} in the inbox was never acknowledged",
                    u + 1
                );
            }
            inboxes.push(got);
        }
        // The restored cluster takes new writes after everything it holds,
        // and every member's inbox gets them (none skipped as a repeat).
        for (i, conv) in convs.iter().enumerate() {
            let next = send(&b[i % 3], &b_tokens[1], conv, "after-restore", "after")
                .await
                .expect("a send to the restored cluster is acknowledged");
            let last = restored[conv].keys().max().copied().unwrap();
            assert!(next > last, "{conv}: new seq {next} not after {last}");
            assert!(
                inboxes
                    .iter()
                    .all(|got| !got.contains_key(&(conv.clone(), next))),
                "{conv}: the new seq {next} is one an inbox already holds"
            );
            for (u, token) in b_tokens.iter().enumerate() {
                let deadline = Instant::now() + Duration::from_secs(30);
                loop {
                    let got = inbox(&b[u % 3], token).await;
                    match got.get(&(conv.clone(), next)) {
                        Some(1) => break,
                        Some(n) => panic!("user {}: {conv} seq {next} {n} times", u + 1),
                        None => {}
                    }
                    assert!(
                        Instant::now() < deadline,
                        "user {}: the new message {conv} seq {next} never reached the inbox",
                        u + 1
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    });
    for n in b_nodes {
        rt.block_on(n.shutdown()).unwrap();
    }

    // An incremental backup: more messages in one conversation and a second
    // file, then `--base` the first backup. The first file's chunks are
    // linked, not written; the first backup is deleted; the second still
    // restores everything the source holds (no load now: all of it).
    let second: Vec<u8> = (0..200_000u32).map(|i| (i % 241) as u8).collect();
    rt.block_on(async {
        for i in 0..10 {
            send(
                &a[i % 3],
                &a_tokens[0],
                &convs[1],
                &format!("i{i}"),
                &format!("incr-{i}"),
            )
            .await
            .expect("a send after the first backup is acknowledged");
        }
        send_file(&a[2], &a[0], &a_tokens[1], &convs[1], "file2", &second).await;
    });
    let incremental = dir.path().join("incremental");
    let (code, out, err) = ctl(&[
        "backup",
        "--url",
        &a[0],
        "--out",
        incremental.to_str().unwrap(),
        "--base",
        backup_dir.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(code, 0, "incremental backup failed: {err}{out}");
    let m: Value = serde_json::from_str(&out).unwrap();
    let n = |k: &str| m[k].as_u64().unwrap();
    eprintln!(
        "incremental: {} bytes of chunks, {} written, {} linked",
        n("bytes"),
        n("written_bytes"),
        n("linked_bytes")
    );
    assert_eq!(n("written_bytes") + n("linked_bytes"), n("bytes"), "{m}");
    assert!(n("linked_bytes") >= file.len() as u64, "{m}");
    assert!(n("written_bytes") < n("bytes") / 3, "{m}");
    // The first file's biggest chunk is the same file in both backups.
    use std::os::unix::fs::MetadataExt as _;
    let biggest = chunk_files(&backup_dir)
        .into_iter()
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .unwrap();
    let twin = incremental.join(biggest.strip_prefix(&backup_dir).unwrap());
    assert_eq!(
        std::fs::metadata(&biggest).unwrap().ino(),
        std::fs::metadata(&twin).unwrap().ino()
    );
    std::fs::remove_dir_all(&backup_dir).unwrap();
    // `--base` must be a finished version-2 backup.
    let (code, _, err) = ctl(&[
        "backup",
        "--url",
        &a[0],
        "--out",
        dir.path().join("never").to_str().unwrap(),
        "--base",
        backup_dir.to_str().unwrap(),
    ]);
    assert_eq!(code, 2);
    assert!(err.contains("unfinished"), "{err}");

    let (code, out, err) = ctl(&["verify", "--backup", incremental.to_str().unwrap()]);
    assert_eq!(
        code, 0,
        "the incremental backup without its base: {out}{err}"
    );

    let (c_node, c) = rt.block_on(common::one_node(dir.path(), "c", 2));
    let (code, out, err) = ctl(&[
        "restore",
        "--url",
        &c,
        "--from",
        incremental.to_str().unwrap(),
    ]);
    assert_eq!(
        code, 0,
        "restore of the incremental backup failed: {err}{out}"
    );
    let c_tokens = rt.block_on(tokens(&c));
    rt.block_on(async {
        for conv in &convs {
            let source = history(&a[0], &a_tokens[0], conv).await;
            let restored = history(&c, &c_tokens[0], conv).await;
            assert_eq!(
                restored, source,
                "{conv}: the incremental backup's copy differs"
            );
        }
        for (bytes, conv) in [(&file, &convs[0]), (&second, &convs[1])] {
            let (s, v) = call(
                reqwest::Method::GET,
                format!("{c}/v1/conversations/{conv}/messages?limit=200"),
                Some(&c_tokens[2]),
                None,
            )
            .await;
            assert_eq!(s, 200, "{v}");
            let id = v["messages"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|m| m["kind"] == "media")
                .find_map(|m| {
                    let b: Value = serde_json::from_str(m["body"].as_str()?).ok()?;
                    (b["size"].as_u64()? == bytes.len() as u64)
                        .then(|| b["media_id"].as_str().map(str::to_string))?
                })
                .unwrap();
            let r = reqwest::Client::new()
                .get(format!("{c}/v1/media/{id}?conversation={conv}"))
                .bearer_auth(&c_tokens[2])
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            assert!(
                r.bytes().await.unwrap() == *bytes,
                "a restored file differs"
            );
        }
    });
    for n in a_nodes.into_iter().chain([c_node]) {
        rt.block_on(n.shutdown()).unwrap();
    }
}

/// Uploads `bytes` through `up` and sends them to `conv` as a media
/// message through `at`; the media id.
async fn send_file(up: &str, at: &str, token: &str, conv: &str, cid: &str, bytes: &[u8]) -> String {
    let id = common::upload(up, token, bytes).await;
    let body = json!({"media_id": id, "mime": "application/octet-stream", "size": bytes.len()});
    let (s, v) = call(
        reqwest::Method::POST,
        format!("{at}/v1/conversations/{conv}/messages"),
        Some(token),
        Some(json!({"client_msg_id": cid, "kind": "media", "body": body.to_string()})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    id
}

/// The pairs a backup's manifest counts over every shard copy.
fn manifest_pairs(m: &Value) -> Value {
    json!(m["shards"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["pairs"].as_u64().unwrap())
        .sum::<u64>())
}

/// Every chunk file of a backup directory.
fn chunk_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for sub in std::fs::read_dir(dir.join("chunks")).unwrap() {
        for f in std::fs::read_dir(sub.unwrap().path()).unwrap() {
            out.push(f.unwrap().path());
        }
    }
    assert!(!out.is_empty(), "{} holds no chunks", dir.display());
    out
}

/// A copy of the directory tree `from` at `to`.
fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}
