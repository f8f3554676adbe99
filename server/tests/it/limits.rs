//! Who may do what, and what bad or excessive input gets: authorization,
//! tokens, single-use tickets and revocation, Origin, the rate limits and
//! the socket cap, malformed and oversize frames, a slow consumer, and
//! SIGTERM on the real binary.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use crate::common;

use std::time::Duration;

use serde_json::{json, Value};

use common::{config, message_seqs, start, token, Http, Ws};
use missive_chat::command::{DeviceId, UserId};
use missive_server::auth::{Auth, Caller};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_members_with_valid_tokens_get_in() {
    let dir = tempfile::tempdir().unwrap();
    let c = config(dir.path());
    let srv = start(c.clone()).await;
    let alice = Http::new(srv.addr(), token(&c, 1, 1));
    let conv = alice.direct(2).await;
    alice.send(&conv, "m1", "secret").await;

    // A third user cannot read or write the conversation.
    let eve = Http::new(srv.addr(), token(&c, 3, 1));
    let (s, v) = eve.get(&format!("/v1/conversations/{conv}/messages")).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (403, Some("not_a_member"))
    );
    let (s, _) = eve.get(&format!("/v1/conversations/{conv}")).await;
    assert_eq!(s, 403);
    let mut ws = Ws::connect(srv.addr(), &token(&c, 3, 1)).await;
    let mut seen = Vec::new();
    let r = ws
        .request(json!({"type": "history", "conv": conv}), &mut seen)
        .await;
    assert_eq!(r["code"], "not_a_member");
    let r = ws.send_text(&conv, "x", "x", &mut seen).await;
    assert_eq!(r["code"], "not_a_member");

    // No token, a forged one, an expired one.
    let anon = Http::new(srv.addr(), String::new());
    let (s, v) = anon.get("/v1/conversations").await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (401, Some("unauthorized"))
    );
    let mut other = c.clone();
    other.auth.secret = Some("a-different-secret-of-enough-length".into());
    let forged = Http::new(srv.addr(), token(&other, 1, 1));
    let (s, _) = forged.get("/v1/conversations").await;
    assert_eq!(s, 401);
    let auth = Auth::load(&c.auth, &c.data_dir).unwrap();
    let who = Caller {
        user: UserId(1),
        device: DeviceId(1),
    };
    let (short, _) = auth.access_token(who, Some(1)).unwrap();
    // Past the expiry and the 30 s leeway is too long for a test: forge
    // an old token with the right secret instead.
    let old = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &missive_server::auth::Claims {
            sub: "1".into(),
            dev: "1".into(),
            typ: "access".into(),
            iss: c.auth.issuer.clone(),
            aud: c.auth.audience.clone(),
            iat: 1_000,
            exp: 2_000,
            jti: None,
        },
        &jsonwebtoken::EncodingKey::from_secret(
            &std::fs::read(dir.path().join("auth.secret")).unwrap(),
        ),
    )
    .unwrap();
    let (s, v) = Http::new(srv.addr(), old).get("/v1/conversations").await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (401, Some("token_expired"))
    );
    // A 1-second token still works within its life.
    let (s, _) = Http::new(srv.addr(), short).get("/v1/conversations").await;
    assert_eq!(s, 200);
    assert!(Ws::try_connect(srv.addr(), Some("garbage"), None, None)
        .await
        .is_err());
    assert!(Ws::try_connect(srv.addr(), None, None, None).await.is_err());

    // Browsers: a ticket from the allowed origin works; a wrong origin and
    // an access token passed as a ticket do not.
    let (s, t) = alice.post("/v1/ws-ticket", json!({})).await;
    assert_eq!(s, 200);
    let ticket = t["ticket"].as_str().unwrap();
    let mut b = Ws::try_connect(srv.addr(), None, Some(ticket), Some("https://chat.example"))
        .await
        .unwrap();
    let evs = b.sync_until(0, &conv, 1).await;
    assert_eq!(message_seqs(&evs, &conv), vec![1]);
    // A ticket is redeemed once: replayed, it is refused.
    let r = Ws::try_connect(srv.addr(), None, Some(ticket), Some("https://chat.example")).await;
    assert_eq!(upgrade_refusal(r), (401, "ticket_used".to_string()));
    assert!(
        Ws::try_connect(srv.addr(), None, Some(ticket), Some("https://evil.example"))
            .await
            .is_err()
    );
    assert!(Ws::try_connect(srv.addr(), None, Some(&alice.token), None)
        .await
        .is_err());

    // The admin mint endpoint wants the admin secret.
    let (s, _) = anon
        .post("/v1/admin/tokens", json!({"user": "5", "device": "1"}))
        .await;
    assert_eq!(s, 403);
    let r = reqwest::Client::new()
        .post(format!("http://{}/v1/admin/tokens", srv.addr()))
        .header("x-admin-secret", "test-admin-secret")
        .json(&json!({"user": "5", "device": "1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let minted: serde_json::Value = r.json().await.unwrap();
    let five = Http::new(srv.addr(), minted["token"].as_str().unwrap().to_string());
    assert_eq!(five.get("/v1/conversations").await.0, 200);
    srv.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_beyond_the_rate_are_refused_with_a_retry_hint() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.limits.sends_per_second = 1;
    c.limits.send_burst = 3;
    let srv = start(c.clone()).await;
    let alice = Http::new(srv.addr(), token(&c, 1, 1));
    let conv = alice.direct(2).await;
    let mut codes = Vec::new();
    for i in 0..5 {
        let (s, v) = alice
            .post(
                &format!("/v1/conversations/{conv}/messages"),
                json!({"client_msg_id": format!("r{i}"), "body": "x"}),
            )
            .await;
        codes.push(s);
        if s == 429 {
            assert_eq!(v["error"]["code"], "rate_limited");
            assert!(v["error"]["retry_after_ms"].as_u64().unwrap() > 0);
        }
    }
    assert_eq!(codes, vec![200, 200, 200, 429, 429]);
    // Another user has their own bucket.
    let bob = Http::new(srv.addr(), token(&c, 2, 1));
    assert_eq!(bob.send(&conv, "b1", "hi").await.0, 4);
    srv.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_frames_get_error_frames_and_the_socket_stays_open() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.limits.max_message_bytes = 1000;
    c.limits.max_frame_bytes = 4000;
    let srv = start(c.clone()).await;
    let alice = Http::new(srv.addr(), token(&c, 1, 1));
    let conv = alice.direct(2).await;
    let mut ws = Ws::connect(srv.addr(), &token(&c, 1, 1)).await;
    let mut seen = Vec::new();

    ws.send_raw("{not json").await;
    let e = ws.next().await.unwrap();
    assert_eq!(
        (e["type"].as_str(), e["code"].as_str()),
        (Some("error"), Some("malformed_frame"))
    );
    ws.send_raw(r#"{"type":"teleport","id":"t1"}"#).await;
    let e = ws.next().await.unwrap();
    assert_eq!(
        (e["code"].as_str(), e["id"].as_str()),
        (Some("unknown_frame_type"), Some("t1"))
    );
    // JSON that is not an object with a type is not a frame at all.
    for not_a_frame in ["[1,2,3]", r#""hi""#, "{}", r#"{"type":7}"#] {
        ws.send_raw(not_a_frame).await;
        let e = ws.next().await.unwrap();
        assert_eq!(e["code"], "malformed_frame", "{not_a_frame}: {e}");
    }
    // Every request type the protocol lists is known (a bad one is
    // malformed, not unknown), and the message names the field, not
    // serde's internals.
    ws.send_raw(r#"{"type":"configure","id":"c1"}"#).await;
    let e = ws.next().await.unwrap();
    assert_eq!(
        (e["code"].as_str(), e["id"].as_str()),
        (Some("malformed_frame"), Some("c1"))
    );
    ws.send_raw(r#"{"type":"history","id":"h1","conv":{"x":1}}"#)
        .await;
    let e = ws.next().await.unwrap();
    assert_eq!(e["code"], "malformed_frame");
    let m = e["message"].as_str().unwrap();
    assert!(!m.contains("untagged") && !m.contains("Raw"), "{m}");
    ws.send_raw(r#"{"type":"send","id":"s1","conv":"1"}"#).await;
    let e = ws.next().await.unwrap();
    assert_eq!(
        (e["code"].as_str(), e["id"].as_str()),
        (Some("malformed_frame"), Some("s1"))
    );
    let r = ws
        .request(
            json!({"type": "send", "conv": conv, "client_msg_id": "big", "body": "x".repeat(1001)}),
            &mut seen,
        )
        .await;
    assert_eq!(r["code"], "too_large");
    let r = ws
        .request(
            json!({"type": "send", "conv": conv, "client_msg_id": "b64", "body_b64": "!!!"}),
            &mut seen,
        )
        .await;
    assert_eq!(r["code"], "invalid");
    // A cursor beyond the stream is refused at once (it used to take the
    // 5 s a lagging replica was given to catch up).
    let asked = std::time::Instant::now();
    let r = ws
        .request(json!({"type": "sync", "after": 99}), &mut seen)
        .await;
    assert_eq!(r["code"], "bad_cursor", "{r}");
    assert!(
        asked.elapsed() < Duration::from_secs(3),
        "{:?}",
        asked.elapsed()
    );
    // Still open: a ping and a real send work.
    let r = ws.request(json!({"type": "ping"}), &mut seen).await;
    assert_eq!(r["type"], "pong");
    let r = ws
        .request(
            json!({"type": "send", "conv": conv, "client_msg_id": "ok", "body_b64": "AAEC/w=="}),
            &mut seen,
        )
        .await;
    assert_eq!(r["type"], "sent", "{r}");
    // Binary bodies come back as base64.
    let (_, h) = alice
        .get(&format!("/v1/conversations/{conv}/messages"))
        .await;
    assert_eq!(h["messages"][0]["body_b64"], "AAEC/w==");
    // HTTP: malformed JSON and bad cursors have codes too.
    let r = reqwest::Client::new()
        .post(format!(
            "http://{}/v1/conversations/{conv}/messages",
            srv.addr()
        ))
        .bearer_auth(&alice.token)
        .header("content-type", "application/json")
        .body("{oops")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "malformed_json");
    let (s, v) = alice
        .get(&format!("/v1/conversations/{conv}/messages?before=0"))
        .await;
    assert_eq!((s, v["error"]["code"].as_str()), (400, Some("bad_cursor")));
    let (s, v) = alice
        .get(&format!("/v1/conversations/{conv}/messages?before=abc"))
        .await;
    assert_eq!((s, v["error"]["code"].as_str()), (400, Some("invalid")));
    let (s, v) = alice.get("/v1/sync?after=1000").await;
    assert_eq!((s, v["error"]["code"].as_str()), (400, Some("bad_cursor")));
    // A frame above the frame limit closes the socket with 1009.
    ws.send_raw(&format!(r#"{{"type":"ping","id":"{}"}}"#, "x".repeat(5000)))
        .await;
    assert_eq!(ws.close_code().await, Some(1009));
    srv.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_directory_keeps_its_shard_count_when_the_config_omits_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.node.shards = Some(3);
    let srv = start(c.clone()).await;
    let alice = Http::new(srv.addr(), token(&c, 1, 1));
    let conv = alice.direct(2).await;
    alice.send(&conv, "k1", "before").await;
    srv.shutdown().await.unwrap();
    // Unset now: the directory's 3, whatever this machine's core count.
    c.node.shards = None;
    let srv = start(c.clone()).await;
    assert_eq!(srv.node().slots().shards().count(), 3);
    let alice = Http::new(srv.addr(), token(&c, 1, 1));
    let (status, page) = alice
        .get(&format!("/v1/conversations/{conv}/messages?limit=10"))
        .await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["messages"].as_array().unwrap().len(), 1, "{page}");
    srv.shutdown().await.unwrap();
    // Set to something else: refused, naming both counts.
    c.node.shards = Some(5);
    let err = missive_server::start(c)
        .await
        .expect_err("started with 5 shards");
    let text = err.to_string();
    assert!(
        text.contains("3 shards") && text.contains("with 5"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_consumer_is_closed_and_catches_up_by_sync() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.limits.outbound_queue = 4;
    c.limits.slow_consumer_ms = 300;
    let srv = start(c.clone()).await;
    let alice = Http::new(srv.addr(), token(&c, 1, 1));
    let conv = alice.direct(2).await;
    // Bob asks for events and then never reads.
    let mut bob = Ws::connect(srv.addr(), &token(&c, 2, 1)).await;
    bob.send_json(json!({"type": "sync", "after": 0})).await;
    let body = "y".repeat(60_000);
    const N: u64 = 300;
    for i in 1..=N {
        alice.send(&conv, &format!("s{i}"), &body).await;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let text = common::metrics(srv.addr()).await;
        if common::metric(&text, "missive_slow_consumers_total") == Some(1.0) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never closed:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(bob.close_code().await, Some(4008));
    // Reconnect and sync: everything is there, in order.
    let mut bob = Ws::connect(srv.addr(), &token(&c, 2, 1)).await;
    let evs = bob.sync_until(0, &conv, N as usize).await;
    assert_eq!(message_seqs(&evs, &conv), (1..=N).collect::<Vec<_>>());
    srv.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_again_loses_its_connection_not_just_its_stream() {
    // The writer blocks on the socket first (a long queue): it gives up
    // after slow_consumer_ms, and the connection must go with it — before,
    // the session kept reading a socket it no longer wrote to until the
    // idle timeout (120 s), a zombie holding its buffers.
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.limits.outbound_queue = 1024;
    c.limits.slow_consumer_ms = 300;
    let srv = start(c.clone()).await;
    let alice = Http::new(srv.addr(), token(&c, 1, 1));
    let conv = alice.direct(2).await;
    let mut bob = Ws::connect(srv.addr(), &token(&c, 2, 1)).await;
    bob.send_json(json!({"type": "sync", "after": 0})).await;
    let body = "z".repeat(60_000);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut i = 0;
    loop {
        // Bob never reads: sends fill the socket until the server gives up.
        for _ in 0..20 {
            i += 1;
            alice.send(&conv, &format!("z{i}"), &body).await;
        }
        let text = common::metrics(srv.addr()).await;
        if common::metric(&text, "missive_slow_consumers_total") == Some(1.0) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never slow:\n{text}"
        );
    }
    // The session is gone, not only its writer.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let text = common::metrics(srv.addr()).await;
        if common::metric(&text, "missive_websockets") == Some(0.0) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the slow consumer's session outlived its writer:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(bob);
    srv.shutdown().await.unwrap();
}

/// The real binary on ephemeral loopback ports with data in `dir`, and
/// `extra` flags.
fn missived_on_loopback(dir: &std::path::Path, extra: &[&str]) -> std::process::Command {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_missived"));
    c.args(extra)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--raft-listen",
            "127.0.0.1:0",
            "--grpc-listen",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(dir);
    c
}

#[test]
fn sigterm_drains_and_exits_zero() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let mut child = missived_on_loopback(dir.path(), &[])
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(
        line.starts_with("missived listening on http://127.0.0.1:"),
        "{line}"
    );
    let status = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let code = child.wait().unwrap();
    assert_eq!(code.code(), Some(0), "{code:?}");
    // The data directory is whole: the next start opens it.
    let again = std::process::Command::new(env!("CARGO_BIN_EXE_missived"))
        .args(["token", "--user", "1", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(again.status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_answer_carries_a_request_id_and_a_clients_own_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let c = config(dir.path());
    let srv = start(c.clone()).await;
    let http = reqwest::Client::new();
    let mut seen = std::collections::HashSet::new();
    for path in ["/healthz", "/v1/conversations", "/v1/no-such-endpoint"] {
        let r = http
            .get(format!("http://{}{path}", srv.addr()))
            .send()
            .await
            .unwrap();
        let id = r
            .headers()
            .get("x-request-id")
            .unwrap_or_else(|| panic!("no x-request-id on {path}"))
            .to_str()
            .unwrap()
            .to_string();
        assert!(!id.is_empty() && seen.insert(id.clone()), "{id} repeated");
    }
    let r = http
        .get(format!("http://{}/v1/conversations", srv.addr()))
        .bearer_auth(token(&c, 1, 1))
        .header("x-request-id", "client-trace-42")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.headers()["x-request-id"], "client-trace-42");
    srv.shutdown().await.unwrap();
}

#[test]
fn the_log_can_be_json_one_object_per_line() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let mut child = missived_on_loopback(dir.path(), &["--log-format", "json"])
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = Vec::new();
    // Up to the "listening" line: every line one JSON object with a level
    // and a message.
    loop {
        let line = lines.next().expect("the log ended").unwrap();
        let v: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(v["level"].is_string(), "{line}");
        let msg = v["fields"]["message"].as_str().unwrap_or("").to_string();
        seen.push(msg.clone());
        if msg == "missived listening" {
            break;
        }
        assert!(seen.len() < 500, "no listening line in {seen:?}");
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Every conversation-scoped call a stranger can make to `conv`, with
/// the answer each got: HTTP (status, code, message) and WebSocket
/// (code, message).
async fn probe_as_stranger(eve: &Http, ws: &mut Ws, conv: &str) -> Vec<(String, Value)> {
    let c = format!("/v1/conversations/{conv}");
    let http = [
        ("GET", c.clone(), None),
        ("PATCH", c.clone(), Some(json!({"name": "mine"}))),
        (
            "PUT",
            format!("{c}/settings"),
            Some(json!({"history": "shared"})),
        ),
        ("POST", format!("{c}/members"), Some(json!({"add": ["3"]}))),
        ("POST", format!("{c}/leave"), Some(json!({}))),
        ("GET", format!("{c}/messages"), None),
        (
            "POST",
            format!("{c}/messages"),
            Some(json!({"client_msg_id": "e1", "body": "hi"})),
        ),
        (
            "PATCH",
            format!("{c}/messages/1"),
            Some(json!({"body": "x"})),
        ),
        ("DELETE", format!("{c}/messages/1"), None),
        (
            "PUT",
            format!("{c}/messages/1/reactions/%F0%9F%91%8D"),
            Some(json!({})),
        ),
        ("POST", format!("{c}/messages/1/hide"), Some(json!({}))),
        ("GET", format!("{c}/pins"), None),
        ("PUT", format!("{c}/pins/1"), Some(json!({}))),
        ("GET", format!("{c}/receipts"), None),
        ("POST", format!("{c}/receipts"), Some(json!({"read": 1}))),
    ];
    let mut answers = Vec::new();
    for (method, path, body) in http {
        let (s, v) = match method {
            "GET" => eve.get(&path).await,
            "POST" => eve.post(&path, body.unwrap()).await,
            "PUT" => eve.put(&path, body.unwrap()).await,
            "PATCH" => eve.patch(&path, body.unwrap()).await,
            _ => eve.delete(&path).await,
        };
        let what = format!("{method} {}", path.replace(conv, "{conv}"));
        answers.push((what, json!([s, v["error"]["code"], v["error"]["message"]])));
    }
    let frames = [
        json!({"type": "history", "conv": conv}),
        json!({"type": "send", "conv": conv, "client_msg_id": "e2", "body": "hi"}),
        json!({"type": "configure", "conv": conv, "history": "joined"}),
        json!({"type": "edit", "conv": conv, "seq": 1, "body": "x"}),
        json!({"type": "unsend", "conv": conv, "seq": 1}),
        json!({"type": "react", "conv": conv, "seq": 1, "emoji": "👍"}),
        json!({"type": "pin", "conv": conv, "seq": 1}),
        json!({"type": "pins", "conv": conv}),
        json!({"type": "hide", "conv": conv, "seq": 1}),
        json!({"type": "receipt", "conv": conv, "read": 1}),
    ];
    let mut seen = Vec::new();
    for f in frames {
        let what = format!("ws {}", f["type"]);
        let r = ws.request(f, &mut seen).await;
        answers.push((what, json!([r["type"], r["code"], r["message"]])));
    }
    answers
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stranger_cannot_tell_whether_a_conversation_exists_or_what_it_is() {
    let dir = tempfile::tempdir().unwrap();
    let c = config(dir.path());
    let srv = start(c.clone()).await;
    let alice = Http::new(srv.addr(), token(&c, 1, 1));
    let eve = Http::new(srv.addr(), token(&c, 3, 1));
    let mut ws = Ws::connect(srv.addr(), &token(&c, 3, 1)).await;
    // A direct conversation's id is a function of the pair: eve can
    // compute alice and bob's before and after they talk.
    let pair = missive_chat::ids::direct_id(UserId(1), UserId(2))
        .0
        .to_string();
    let untouched = probe_as_stranger(&eve, &mut ws, &pair).await;
    assert_eq!(alice.direct(2).await, pair);
    alice.send(&pair, "m1", "hello bob").await;
    let talking = probe_as_stranger(&eve, &mut ws, &pair).await;
    let group = alice.group("g", &[2]).await;
    alice.send(&group, "m1", "hello all").await;
    let a_group = probe_as_stranger(&eve, &mut ws, &group).await;
    let nothing = probe_as_stranger(&eve, &mut ws, "123456789").await;
    for (i, (what, answer)) in untouched.iter().enumerate() {
        assert!(
            answer[1] == "not_a_member",
            "{what} before they talked: {answer}"
        );
        for other in [&talking, &a_group, &nothing] {
            assert_eq!(&other[i], &untouched[i], "{what} tells them apart");
        }
    }
    srv.shutdown().await.unwrap();
}

/// The code of a refused WebSocket upgrade (its HTTP answer's body).
fn upgrade_refusal(r: Result<Ws, tokio_tungstenite::tungstenite::Error>) -> (u16, String) {
    match r {
        Ok(_) => panic!("the upgrade was accepted"),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            let body: Value = serde_json::from_slice(resp.body().as_deref().unwrap_or(b"{}"))
                .unwrap_or(Value::Null);
            (
                resp.status().as_u16(),
                body["error"]["code"].as_str().unwrap_or("").to_string(),
            )
        }
        Err(e) => panic!("not an HTTP refusal: {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_receipts_creation_uploads_keys_and_presence_each_have_a_rate_per_user() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    let two = missive_server::config::Rate::new(1, 2);
    c.limits.history_rate = two;
    c.limits.receipt_rate = two;
    c.limits.create_rate = two;
    c.limits.upload_rate = two;
    c.limits.keys_rate = two;
    c.limits.presence_rate = two;
    let srv = start(c.clone()).await;
    let alice = Http::new(srv.addr(), token(&c, 1, 1));
    let bob = Http::new(srv.addr(), token(&c, 2, 1));
    // Creation: two, then refused; Bob has his own bucket.
    let conv = alice.direct(2).await;
    let direct = |peer: &str| json!({"kind": "direct", "peer": peer});
    let (s, _) = alice.post("/v1/conversations", direct("3")).await;
    assert_eq!(s, 201);
    let (s, v) = alice.post("/v1/conversations", direct("4")).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (429, Some("rate_limited"))
    );
    assert!(v["error"]["retry_after_ms"].as_u64().unwrap() > 0);
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("conversations created"));
    let (s, _) = bob.post("/v1/conversations", direct("5")).await;
    assert_eq!(s, 201);
    // Uploads started: a bucket of their own (Alice's creations are
    // spent), two, then refused in their own words.
    let start_upload = || {
        alice
            .client
            .post(format!("{}/v1/media/uploads", alice.base))
            .bearer_auth(&alice.token)
            .header("Upload-Length", "10")
            .send()
    };
    for _ in 0..2 {
        assert_eq!(start_upload().await.unwrap().status(), 201);
    }
    let r = start_upload().await.unwrap();
    assert_eq!(r.status(), 429);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "rate_limited");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("uploads started"));
    // Key directory writes: their own bucket too (they used to count as
    // conversation creations and were refused in those words).
    for want in [200, 200, 429] {
        let (s, v) = alice.delete("/v1/keys").await;
        assert_eq!(s, want, "{v}");
        if s == 429 {
            assert_eq!(v["error"]["code"], "rate_limited");
            assert!(v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("key directory writes"));
        }
    }
    // History (pages, lists, pins, receipts read): two, then refused.
    let history = format!("/v1/conversations/{conv}/messages");
    assert_eq!(alice.get(&history).await.0, 200);
    assert_eq!(alice.get("/v1/conversations").await.0, 200);
    let (s, v) = alice.get(&format!("/v1/conversations/{conv}/pins")).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (429, Some("rate_limited"))
    );
    // Sends are another class: not refused by the history bucket.
    alice.send(&conv, "m1", "hi").await;
    // Receipts: two, then refused.
    let receipt = format!("/v1/conversations/{conv}/receipts");
    for want in [200, 200, 429] {
        let (s, _) = bob.post(&receipt, json!({"read": 1})).await;
        assert_eq!(s, want);
    }
    // Presence and typing over the socket: two, then an error frame.
    let mut ws = Ws::connect(srv.addr(), &token(&c, 1, 1)).await;
    let mut seen = Vec::new();
    for want in ["presence_state", "presence_state", "rate_limited"] {
        let r = ws
            .request(json!({"type": "presence", "users": ["2"]}), &mut seen)
            .await;
        let got = r["code"].as_str().unwrap_or(r["type"].as_str().unwrap());
        assert_eq!(got, want, "{r}");
    }
    srv.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_user_holds_at_most_the_socket_cap_on_a_node() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.limits.max_sockets_per_user = 3;
    let srv = start(c.clone()).await;
    let alice = token(&c, 1, 1);
    let mut open = Vec::new();
    for _ in 0..3 {
        open.push(Ws::connect(srv.addr(), &alice).await);
    }
    let r = Ws::try_connect(srv.addr(), Some(&token(&c, 1, 2)), None, None).await;
    assert_eq!(upgrade_refusal(r), (429, "too_many_sockets".to_string()));
    // gRPC streams count too.
    let url = format!("http://{}", srv.grpc_addr().unwrap());
    let mut g = missive_server::edge::grpc::pb::missive_client::MissiveClient::connect(url)
        .await
        .unwrap();
    let mut req = tonic::Request::new(missive_server::edge::grpc::pb::SyncRequest { after: 0 });
    req.metadata_mut()
        .insert("authorization", format!("Bearer {alice}").parse().unwrap());
    let e = g.sync(req).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::ResourceExhausted);
    // Another user is not affected; a closed socket frees its place.
    let _bob = Ws::connect(srv.addr(), &token(&c, 2, 1)).await;
    drop(open.pop());
    let mut again = None;
    for _ in 0..100 {
        match Ws::try_connect(srv.addr(), Some(&alice), None, None).await {
            Ok(w) => {
                again = Some(w);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    assert!(again.is_some(), "the closed socket's place was not freed");
    srv.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_and_upgrades_are_rate_limited_per_client_address() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.limits.upgrade_rate_per_ip = missive_server::config::Rate::new(1, 2);
    let srv = start(c.clone()).await;
    let alice = token(&c, 1, 1);
    let _a = Ws::connect(srv.addr(), &alice).await;
    let _b = Ws::connect(srv.addr(), &alice).await;
    let r = Ws::try_connect(srv.addr(), Some(&alice), None, None).await;
    assert_eq!(upgrade_refusal(r), (429, "rate_limited".to_string()));
    srv.shutdown().await.unwrap();

    // New connections: beyond the burst, closed at accept.
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.limits.connect_rate_per_ip = missive_server::config::Rate::new(1, 3);
    let srv = start(c.clone()).await;
    let mut answered = Vec::new();
    for _ in 0..5 {
        let mut s = tokio::net::TcpStream::connect(srv.addr()).await.unwrap();
        let _ = s
            .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .await;
        let mut buf = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
        answered.push(buf.starts_with(b"HTTP/1.1 200"));
    }
    assert_eq!(answered, vec![true, true, true, false, false]);
    // Another client address has its own bucket.
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    let mut s = sock.connect(srv.addr()).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&buf);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    let m = text.split("\r\n\r\n").nth(1).unwrap_or("");
    assert!(common::metric(m, "missive_connections_refused_total").unwrap() >= 2.0);
    srv.shutdown().await.unwrap();
}

/// Waits for the next second: tokens carry seconds, and one issued in the
/// very second of a revocation counts as revoked.
async fn next_second() {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    tokio::time::sleep(Duration::from_nanos(
        1_000_000_000 - u64::from(now.subsec_nanos()) + 1_000_000,
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logging_out_other_devices_revokes_their_tokens_and_closes_their_sockets() {
    let dir = tempfile::tempdir().unwrap();
    let c = config(dir.path());
    let srv = start(c.clone()).await;
    let (d1, d2, d3) = (token(&c, 1, 1), token(&c, 1, 2), token(&c, 1, 3));
    let phone = Http::new(srv.addr(), d1.clone());
    let laptop = Http::new(srv.addr(), d2.clone());
    let tablet = Http::new(srv.addr(), d3.clone());
    let conv = phone.direct(2).await;
    assert_eq!(laptop.get("/v1/conversations").await.0, 200);
    // The laptop has a socket and a gRPC stream open.
    let mut ws = Ws::connect(srv.addr(), &d2).await;
    ws.sync(0).await;
    let url = format!("http://{}", srv.grpc_addr().unwrap());
    let mut g = missive_server::edge::grpc::pb::missive_client::MissiveClient::connect(url)
        .await
        .unwrap();
    let mut req = tonic::Request::new(missive_server::edge::grpc::pb::SyncRequest { after: 0 });
    req.metadata_mut()
        .insert("authorization", format!("Bearer {d2}").parse().unwrap());
    let mut stream = g.sync(req).await.unwrap().into_inner();

    // Bad requests first.
    let (s, v) = phone.post("/v1/devices/revoke", json!({})).await;
    assert_eq!((s, v["error"]["code"].as_str()), (400, Some("invalid")));
    let (s, _) = phone
        .post(
            "/v1/devices/revoke",
            json!({"others": true, "devices": ["2"]}),
        )
        .await;
    assert_eq!(s, 400);

    // The phone logs out the other devices.
    let (s, _) = phone
        .post("/v1/devices/revoke", json!({"others": true}))
        .await;
    assert_eq!(s, 204);
    let (s, v) = laptop.get("/v1/conversations").await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (401, Some("token_revoked"))
    );
    assert_eq!(tablet.get("/v1/conversations").await.0, 401);
    assert_eq!(ws.close_code().await, Some(4003));
    let end = tokio::time::timeout(common::WAIT, async {
        loop {
            match stream.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => return None,
                Err(e) => return Some(e),
            }
        }
    })
    .await
    .expect("the stream did not end");
    let e = end.expect("the stream ended without a status");
    assert_eq!(e.code(), tonic::Code::Unauthenticated);
    assert_eq!(
        e.metadata()
            .get("missive-error-code")
            .map(|v| v.to_str().unwrap()),
        Some("token_revoked")
    );
    let r = Ws::try_connect(srv.addr(), Some(&d2), None, None).await;
    assert_eq!(upgrade_refusal(r), (401, "token_revoked".to_string()));
    // The phone goes on.
    phone.send(&conv, "still-here", "hi").await;

    // A new sign-in (a token issued after the revocation) works again.
    next_second().await;
    let laptop = Http::new(srv.addr(), token(&c, 1, 2));
    assert_eq!(laptop.get("/v1/conversations").await.0, 200);

    // One device over the socket's frame; and an operator, every device.
    let mut ws1 = Ws::connect(srv.addr(), &d1).await;
    let mut seen = Vec::new();
    let r = ws1
        .request(json!({"type": "revoke", "devices": ["2"]}), &mut seen)
        .await;
    assert_eq!(r["type"], "revoked", "{r}");
    assert_eq!(laptop.get("/v1/conversations").await.0, 401);
    assert_eq!(phone.get("/v1/conversations").await.0, 200);
    let admin = reqwest::Client::new();
    let r = admin
        .post(format!("http://{}/v1/admin/users/1/revoke", srv.addr()))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403, "the admin secret is needed");
    let r = admin
        .post(format!("http://{}/v1/admin/users/1/revoke", srv.addr()))
        .header("x-admin-secret", "test-admin-secret")
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 204);
    assert_eq!(phone.get("/v1/conversations").await.0, 401);
    assert_eq!(ws1.close_code().await, Some(4003));
    // Another user is untouched.
    let bob = Http::new(srv.addr(), token(&c, 2, 1));
    assert_eq!(bob.get("/v1/conversations").await.0, 200);
    srv.shutdown().await.unwrap();
}
