//! `missivectl push dead | replay` on three real nodes: a push gateway
//! that is down leaves a dead letter once the notification is older than
//! `push.max_age_secs`; `push dead` lists it (read at the owning shard's
//! leader, whichever node is asked), and once the gateway is back, `push
//! replay --all` sends it, once.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests panic on surprises"
)]

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use common::{call, ctl};

#[test]
fn dead_push_notifications_are_listed_and_replayed_by_the_cli() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let up = Arc::new(AtomicBool::new(false));
    let got: Arc<Mutex<Vec<(String, u16)>>> = Arc::default();
    let url = rt.block_on({
        let (up, got) = (Arc::clone(&up), Arc::clone(&got));
        async move {
            let app = axum::Router::new().route(
                "/push",
                axum::routing::post(move |headers: axum::http::HeaderMap| {
                    let (up, got) = (Arc::clone(&up), Arc::clone(&got));
                    async move {
                        let key = headers
                            .get("idempotency-key")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("")
                            .to_string();
                        let status = if up.load(Ordering::SeqCst) { 204 } else { 503 };
                        got.lock().unwrap().push((key, status));
                        axum::http::StatusCode::from_u16(status).unwrap()
                    }
                }),
            );
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let url = format!("http://{}/push", l.local_addr().unwrap());
            tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
            url
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let common::Trio { nodes, urls, .. } =
        rt.block_on(common::three_nodes_with(dir.path(), "p", 2, |c| {
            c.push.webhook_url = Some(url.clone());
            c.push.retry_min_ms = 100;
            c.push.retry_max_ms = 200;
            c.push.max_age_secs = 1;
        }));
    rt.block_on(async {
        let mint = |user: &str| {
            let u = urls[0].clone();
            let user = user.to_string();
            async move {
                let (s, v) = call(
                    reqwest::Method::POST,
                    format!("{u}/v1/admin/tokens"),
                    None,
                    Some(json!({"user": user, "device": "1"})),
                )
                .await;
                assert_eq!(s, 200, "{v}");
                v["token"].as_str().unwrap().to_owned()
            }
        };
        let (alice, bob) = (mint("1").await, mint("2").await);
        let (s, v) = call(
            reqwest::Method::PUT,
            format!("{}/v1/devices/push", urls[1]),
            Some(&bob),
            Some(json!({"token": "bob-phone"})),
        )
        .await;
        assert_eq!(s, 200, "{v}");
        let (s, v) = call(
            reqwest::Method::POST,
            format!("{}/v1/conversations", urls[2]),
            Some(&alice),
            Some(json!({"kind": "direct", "peer": "2"})),
        )
        .await;
        assert_eq!(s, 201, "{v}");
        let conv = v["conv"].as_str().unwrap().to_owned();
        let (s, v) = call(
            reqwest::Method::POST,
            format!("{}/v1/conversations/{conv}/messages", urls[2]),
            Some(&alice),
            Some(json!({"client_msg_id": "m1", "body": "are you up?"})),
        )
        .await;
        assert_eq!(s, 200, "{v}");
    });

    // The gateway is down: within a few seconds the notification is dead.
    let deadline = Instant::now() + Duration::from_secs(30);
    let listed: Value = loop {
        let (code, out, err) = ctl(&["--json", "push", "dead", "--url", &urls[0]]);
        assert_eq!(code, 0, "{err}{out}");
        let v: Value = serde_json::from_str(&out).unwrap();
        if v["dead"].as_array().is_some_and(|d| !d.is_empty()) {
            break v;
        }
        assert!(Instant::now() < deadline, "no dead letter: {out}");
        std::thread::sleep(Duration::from_millis(200));
    };
    let d = &listed["dead"][0];
    assert_eq!(
        (d["user"].as_str(), d["seq"].as_u64()),
        (Some("2"), Some(1)),
        "{listed}"
    );
    assert!(d["reason"].as_str().unwrap().contains("503"), "{listed}");
    let (code, out, _) = ctl(&["push", "dead", "--url", &urls[2]]);
    assert_eq!(code, 0);
    assert!(out.contains("1 dead letters"), "any node lists it: {out}");
    let tries = got.lock().unwrap().len();
    assert!(tries >= 1);

    // Back up: replay everything; the notification is accepted once.
    up.store(true, Ordering::SeqCst);
    let (code, out, err) = ctl(&["--json", "push", "replay", "--all", "--url", &urls[1]]);
    assert_eq!(code, 0, "{err}{out}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["replayed"], 1, "{out}");
    let key = format!("{}:1", d["id"].as_str().unwrap());
    let deadline = Instant::now() + Duration::from_secs(20);
    while !got
        .lock()
        .unwrap()
        .iter()
        .any(|(k, s)| *k == key && *s == 204)
    {
        assert!(
            Instant::now() < deadline,
            "not resent: {:?}",
            got.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(800));
    let accepted = got
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, s)| *s == 204)
        .count();
    assert_eq!(accepted, 1);
    let (code, out, _) = ctl(&["push", "dead", "--url", &urls[0]]);
    assert_eq!(code, 0);
    assert!(out.contains("0 dead letters"), "{out}");
    let (code, _, err) = ctl(&["push", "replay", "--url", &urls[0], "not-an-id"]);
    assert_ne!(code, 0);
    assert!(err.contains("not a job id"), "{err}");
    rt.block_on(async {
        for n in nodes {
            n.shutdown().await.unwrap();
        }
    });
}
