//! Push notifications against a real missived and a fake push gateway on
//! loopback: who gets one (offline users' devices with a token, not for
//! their own messages), retries, and turning a device's push off.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use crate::common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{json, Value};

use common::{config, start, token, Http, Ws};

/// What the gateway received: (Authorization header, body).
type Calls = Arc<Mutex<Vec<(String, Value)>>>;

/// A gateway that refuses its first call (503) and accepts the rest.
async fn gateway() -> (String, Calls) {
    let calls: Calls = Arc::default();
    let app = Router::new()
        .route(
            "/push",
            post(
                |State(calls): State<Calls>, headers: HeaderMap, Json(body): Json<Value>| async move {
                    let auth = headers
                        .get("authorization")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_string();
                    let mut c = calls.lock().unwrap();
                    c.push((auth, body));
                    if c.len() == 1 {
                        StatusCode::SERVICE_UNAVAILABLE
                    } else {
                        StatusCode::NO_CONTENT
                    }
                },
            ),
        )
        .with_state(Arc::clone(&calls));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/push", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    (url, calls)
}

/// Accepted notifications (the refused first call excluded) so far.
fn accepted(calls: &Calls) -> Vec<Value> {
    calls
        .lock()
        .unwrap()
        .iter()
        .skip(1)
        .map(|(_, b)| b.clone())
        .collect()
}

async fn wait_for(calls: &Calls, n: usize) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let got = accepted(calls);
        if got.len() >= n {
            return got;
        }
        assert!(tokio::time::Instant::now() < deadline, "only {got:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A server over `dir` pushing to [`gateway`] with its secret: the
/// server, its config (for tokens), and what the gateway receives.
async fn pushing_to_gateway(
    dir: &std::path::Path,
) -> (missive_server::Running, missive_server::Config, Calls) {
    let (url, calls) = gateway().await;
    let mut c = config(dir);
    c.push.webhook_url = Some(url);
    c.push.webhook_secret = Some("gw-secret".into());
    let srv = start(c.clone()).await;
    (srv, c, calls)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_devices_with_a_token_are_notified_once_per_message() {
    let dir = tempfile::tempdir().unwrap();
    let (srv, c, calls) = pushing_to_gateway(dir.path()).await;
    let alice = Http::new(srv.addr(), token(&c, 1, 1));
    let bob_phone = Http::new(srv.addr(), token(&c, 2, 1));
    let (s, v) = bob_phone
        .post(
            "/v1/devices",
            json!({"name": "Bob's phone", "platform": "ios"}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = bob_phone
        .put("/v1/devices/push", json!({"token": ""}))
        .await;
    assert_eq!((s, v["error"]["code"].clone()), (400, json!("invalid")));
    let (s, v) = bob_phone
        .put("/v1/devices/push", json!({"token": "tok-phone"}))
        .await;
    assert_eq!(s, 200, "{v}");
    let conv = alice.direct(2).await;

    // Bob is offline: his phone (the only device with a token) hears of
    // seq 1, through one retry.
    alice.send(&conv, "m1", "hi").await;
    let got = wait_for(&calls, 1).await;
    assert_eq!(got[0]["user"], "2");
    assert_eq!(got[0]["device"], "1");
    assert_eq!(got[0]["platform"], "ios");
    assert_eq!(got[0]["token"], "tok-phone");
    assert_eq!(got[0]["conv"], json!(conv));
    assert_eq!(got[0]["seq"], 1);
    assert_eq!(got[0]["sender"], "1");
    assert_eq!(got[0]["badge"], 1, "one unread message");
    assert!(
        got[0].get("body").is_none(),
        "no content in a push: {}",
        got[0]
    );
    assert_eq!(calls.lock().unwrap()[0].0, "Bearer gw-secret");

    // Online (Alice sees him come online): no push for seq 2.
    let mut alice_ws = Ws::connect(srv.addr(), &token(&c, 1, 1)).await;
    let mut seen = Vec::new();
    alice_ws
        .request(json!({"type": "presence", "users": ["2"]}), &mut seen)
        .await;
    let mut bob_ws = Ws::connect(srv.addr(), &token(&c, 2, 2)).await;
    bob_ws.sync(0).await;
    alice_ws
        .frame_where("presence", |f| f["user"] == "2" && f["online"] == true)
        .await;
    alice.send(&conv, "m2", "are you there").await;
    // Delivered live before he leaves (a push decision is made when the
    // event reaches his inbox).
    bob_ws.event_where(|e| e["event"]["seq"] == 2).await;
    drop(bob_ws);
    alice_ws
        .frame_where("presence", |f| f["user"] == "2" && f["online"] == false)
        .await;
    // Offline again: his own message (from another device) is not pushed
    // to him, Alice's next one is.
    bob_phone.send(&conv, "b3", "from the laptop, later").await;
    alice.send(&conv, "m4", "ok").await;
    let got = wait_for(&calls, 2).await;
    assert_eq!(got[1]["seq"], 4, "{got:?}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let seqs: Vec<_> = accepted(&calls).iter().map(|b| b["seq"].clone()).collect();
    assert_eq!(seqs, vec![json!(1), json!(4)]);

    // Push off for the phone: nothing more.
    let (s, v) = bob_phone.delete("/v1/devices/push").await;
    assert_eq!((s, v["push"].clone()), (200, json!(false)));
    alice.send(&conv, "m5", "bye").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(accepted(&calls).len(), 2);
    let m = common::metrics(srv.addr()).await;
    assert_eq!(
        common::metric(&m, "missive_push_sent_total"),
        Some(2.0),
        "{m}"
    );
    srv.shutdown().await.unwrap();
}

/// Every delivery reads the user's list of push devices, and the store
/// remembers that a user has none (so that it does not search for the
/// list on each delivery): a token set later, or removed, must still
/// decide the next message's push.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_set_after_messages_without_one_decides_the_next_push() {
    let dir = tempfile::tempdir().unwrap();
    let (srv, c, calls) = pushing_to_gateway(dir.path()).await;
    let alice = Http::new(srv.addr(), token(&c, 1, 1));
    let bob_phone = Http::new(srv.addr(), token(&c, 2, 1));
    let conv = alice.direct(2).await;
    // Bob has no token yet: two messages, no push.
    alice.send(&conv, "m1", "hi").await;
    alice.send(&conv, "m2", "anyone?").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        calls.lock().unwrap().is_empty(),
        "{:?}",
        calls.lock().unwrap()
    );

    let (s, v) = bob_phone
        .post(
            "/v1/devices",
            json!({"name": "Bob's phone", "platform": "android"}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = bob_phone
        .put("/v1/devices/push", json!({"token": "tok-late"}))
        .await;
    assert_eq!(s, 200, "{v}");
    alice.send(&conv, "m3", "there you are").await;
    let got = wait_for(&calls, 1).await;
    assert_eq!(
        (got[0]["seq"].clone(), got[0]["token"].clone()),
        (json!(3), json!("tok-late"))
    );

    // Removed again: the next message is not pushed.
    let (s, v) = bob_phone.delete("/v1/devices/push").await;
    assert_eq!((s, v["push"].clone()), (200, json!(false)));
    alice.send(&conv, "m4", "bye").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let seqs: Vec<_> = accepted(&calls).iter().map(|b| b["seq"].clone()).collect();
    assert_eq!(seqs, vec![json!(3)]);
    srv.shutdown().await.unwrap();
}

/// A gateway whose answer for each call `answer` decides from the token
/// and how many calls that idempotency key had before; what it received:
/// (idempotency key, status answered, body).
type Log = Arc<Mutex<Vec<(String, u16, Value)>>>;

async fn scripted(answer: fn(&str, usize) -> u16) -> (String, Log) {
    let log: Log = Arc::default();
    let app = Router::new()
        .route(
            "/push",
            post(
                move |State(log): State<Log>, headers: HeaderMap, Json(body): Json<Value>| async move {
                    let key = headers
                        .get("idempotency-key")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_string();
                    let mut l = log.lock().unwrap();
                    let before = l.iter().filter(|(k, _, _)| *k == key).count();
                    let status = answer(body["token"].as_str().unwrap_or(""), before);
                    l.push((key, status, body));
                    StatusCode::from_u16(status).unwrap()
                },
            ),
        )
        .with_state(Arc::clone(&log));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/push", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    (url, log)
}

async fn until(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !ok() {
        assert!(tokio::time::Instant::now() < deadline, "waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_pushes_become_dead_letters_that_replay_and_a_gone_token_is_dropped() {
    // "tok-down" fails until it has been refused 4 times; "tok-gone" is
    // unregistered (410).
    let (url, log) = scripted(|token, before| match token {
        "tok-gone" => 410,
        _ if before < 4 => 500,
        _ => 204,
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.push.webhook_url = Some(url);
    c.push.retry_min_ms = 100;
    c.push.retry_max_ms = 200;
    c.push.max_age_secs = 1;
    let srv = start(c.clone()).await;
    let alice = Http::new(srv.addr(), token(&c, 1, 1));
    let phone = Http::new(srv.addr(), token(&c, 2, 1));
    let tablet = Http::new(srv.addr(), token(&c, 2, 2));
    let (s, _) = phone
        .put("/v1/devices/push", json!({"token": "tok-down"}))
        .await;
    assert_eq!(s, 200);
    let (s, _) = tablet
        .put("/v1/devices/push", json!({"token": "tok-gone"}))
        .await;
    assert_eq!(s, 200);
    let conv = alice.direct(2).await;
    alice.send(&conv, "m1", "hi").await;

    // The tablet's token is dropped at the first answer; the phone's
    // attempts fail until the job is older than a second: a dead letter.
    let admin = |path: &str| {
        reqwest::Client::new()
            .request(reqwest::Method::GET, format!("http://{}{path}", srv.addr()))
            .header("x-admin-secret", "test-admin-secret")
    };
    let mut dead = Value::Null;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while dead["dead"].as_array().is_none_or(Vec::is_empty) {
        assert!(tokio::time::Instant::now() < deadline, "no dead letter");
        tokio::time::sleep(Duration::from_millis(100)).await;
        dead = admin("/v1/admin/push/dead")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
    }
    let d = &dead["dead"][0];
    assert_eq!(
        (d["user"].as_str(), d["seq"].as_u64()),
        (Some("2"), Some(1)),
        "{dead}"
    );
    assert_eq!(
        d["devices"],
        json!(["1"]),
        "the gone tablet is not retried: {dead}"
    );
    assert!(d["attempts"].as_u64().unwrap() >= 1, "{dead}");
    assert!(d["reason"].as_str().unwrap().contains("500"), "{dead}");
    let tries = log.lock().unwrap().len();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        log.lock().unwrap().len(),
        tries,
        "a dead letter is not retried"
    );

    // Carol writes too (another conversation, pushed on its own), then a
    // second message from Alice: only the phone has a target now, and the
    // badge counts both conversations' unread messages (2 + 1).
    let carol = Http::new(srv.addr(), token(&c, 3, 1));
    let other = carol.direct(2).await;
    carol.send(&other, "c1", "hello from carol").await;
    until("carol's message pushed", || {
        log.lock()
            .unwrap()
            .iter()
            .any(|(_, _, b)| b["conv"] == other.as_str())
    })
    .await;
    alice.send(&conv, "m2", "again").await;
    until("m2 tried", || {
        log.lock()
            .unwrap()
            .iter()
            .any(|(_, _, b)| b["seq"] == 2 && b["conv"] == conv.as_str())
    })
    .await;
    let badge = log
        .lock()
        .unwrap()
        .iter()
        .find(|(_, _, b)| b["seq"] == 2 && b["conv"] == conv.as_str())
        .map(|(_, _, b)| b["badge"].clone());
    assert_eq!(badge, Some(json!(3)));
    assert!(log
        .lock()
        .unwrap()
        .iter()
        .all(|(_, _, b)| b["seq"] != 2 || b["token"] == "tok-down"));
    assert_eq!(
        log.lock()
            .unwrap()
            .iter()
            .filter(|(_, s, _)| *s == 410)
            .count(),
        1,
        "the gone token was used once"
    );

    // Replay: the phone's gateway now accepts (it refused 4 times).
    let id = d["id"].as_str().unwrap().to_string();
    assert_eq!(id, format!("2:{}", d["useq"]), "{dead}");
    let v: Value = reqwest::Client::new()
        .post(format!("http://{}/v1/admin/push/replay", srv.addr()))
        .header("x-admin-secret", "test-admin-secret")
        .json(&json!({"jobs": [&id]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["replayed"], 1, "{v}");
    until("the replayed notification accepted", || {
        log.lock()
            .unwrap()
            .iter()
            .any(|(k, s, b)| *s == 204 && b["seq"] == 1 && *k == format!("{id}:1"))
    })
    .await;
    let m = common::metrics(srv.addr()).await;
    let outcome = |o: &str| {
        common::metric(
            &m,
            &format!("missive_push_notifications_total{{provider=\"webhook\",outcome=\"{o}\"}}"),
        )
    };
    assert_eq!(outcome("token_removed"), Some(1.0), "{m}");
    assert!(outcome("dead_lettered").unwrap_or(0.0) >= 1.0, "{m}");
    assert!(outcome("retried").unwrap_or(0.0) >= 1.0, "{m}");
    assert!(outcome("sent").unwrap_or(0.0) >= 1.0, "{m}");
    srv.shutdown().await.unwrap();
}
