//! `missivectl push dead | replay` on three real nodes: APNs (a fake on
//! loopback, HTTP/2 over TLS, see the server's `tests/it/common/fake_push.rs`)
//! down leaves a dead letter once the notification is older than
//! `push.max_age_secs`; `push dead` lists it (read at the owning shard's
//! leader, whichever node is asked), and once APNs is back, `push replay
//! --all` sends it, once.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests panic on surprises"
)]

use crate::common;
#[allow(dead_code, reason = "the server's fakes; this test uses APNs")]
#[path = "../../../server/tests/it/common/fake_push.rs"]
mod fake_push;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use common::{call, ctl};
use fake_push::{ApnsAccount, TestCa};

#[test]
fn dead_push_notifications_are_listed_and_replayed_by_the_cli() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let up = Arc::new(AtomicBool::new(false));
    let ca = TestCa::new();
    let account = ApnsAccount::new();
    let apns = rt.block_on({
        let up = Arc::clone(&up);
        fake_push::apns(
            &ca,
            &account,
            Arc::new(move |_, _| {
                let status = if up.load(Ordering::SeqCst) { 200 } else { 503 };
                (status, Duration::ZERO)
            }),
        )
    });
    let dir = tempfile::tempdir().unwrap();
    let (ca_file, key_file) = (ca.write(dir.path()), account.write(dir.path()));
    let common::Trio { nodes, urls, .. } =
        rt.block_on(common::three_nodes_with(dir.path(), "p", 2, |c| {
            c.push.ca_file = Some(ca_file.clone());
            c.push.apns = Some(missive_server::config::ApnsSection {
                key_file: key_file.clone(),
                key_id: account.key_id.clone(),
                team_id: account.team_id.clone(),
                topic: account.topic.clone(),
                endpoint: apns.url.clone(),
            });
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
            reqwest::Method::POST,
            format!("{}/v1/devices", urls[1]),
            Some(&bob),
            Some(json!({"name": "phone", "platform": "ios"})),
        )
        .await;
        assert_eq!(s, 200, "{v}");
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
    let tries = apns.log.lock().unwrap().len();
    assert!(tries >= 1);

    // Back up: replay everything; the notification is accepted once.
    up.store(true, Ordering::SeqCst);
    let (code, out, err) = ctl(&["--json", "push", "replay", "--all", "--url", &urls[1]]);
    assert_eq!(code, 0, "{err}{out}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["replayed"], 1, "{out}");
    // The same apns-id as every earlier attempt at that notification.
    let id = missive_server::delivery::push::apns_id(&format!("{}:1", d["id"].as_str().unwrap()));
    let deadline = Instant::now() + Duration::from_secs(20);
    while !apns
        .log
        .lock()
        .unwrap()
        .iter()
        .any(|g| g.id == id && g.status == 200)
    {
        assert!(Instant::now() < deadline, "not resent");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(apns.answered(200).len(), 1);
    assert!(apns.log.lock().unwrap().iter().all(|g| g.id == id));
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
