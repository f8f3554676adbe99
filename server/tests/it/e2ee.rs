//! End-to-end encryption over the real server: the key directory, X3DH
//! between devices through it, per-device payloads, encrypted
//! conversations, and what the server's files hold.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use crate::common;

use std::collections::BTreeSet;
use std::path::Path;

use serde_json::{json, Value};

use common::e2ee::{send_encrypted, two_users_two_devices_each, Device};
use common::{config, start, token, Http, Ws, WAIT};

/// Every file under `dir`, read whole.
fn files(dir: &Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(files(&p));
        } else if let Ok(b) = std::fs::read(&p) {
            out.push((p, b));
        }
    }
    out
}

fn holds(files: &[(std::path::PathBuf, Vec<u8>)], needle: &str) -> bool {
    let n = needle.as_bytes();
    files
        .iter()
        .any(|(_, b)| b.windows(n.len()).any(|w| w == n))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_users_with_two_devices_each_talk_and_the_server_stores_no_plaintext() {
    let dir = tempfile::tempdir().unwrap();
    let c = config(dir.path());
    let srv = start(c.clone()).await;
    let plaintexts = two_users_two_devices_each(&[srv.addr()], &c).await;
    // A control: text sent in the clear is in the log, so the search below
    // can find what is there.
    let control = format!("plainly visible {}", common::nonce());
    let alice = Http::new(srv.addr(), token(&c, 201, 1));
    let open = alice.direct(203).await;
    alice.send(&open, "c1", &control).await;
    let stored = files(dir.path());
    assert!(
        holds(&stored, &control),
        "the control text is stored as sent"
    );
    for p in &plaintexts {
        assert!(!holds(&stored, p), "plaintext {p:?} in the server's files");
    }
    srv.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_claims_hand_out_each_one_time_key_once_and_the_owner_hears_when_low() {
    let dir = tempfile::tempdir().unwrap();
    let c = config(dir.path());
    let srv = start(c.clone()).await;
    let owner = 301u64;
    let mut d = Device::new(owner, 1, Http::new(srv.addr(), token(&c, owner, 1)));
    d.publish(12).await;
    let mut owner_ws = Ws::connect(srv.addr(), &token(&c, owner, 1)).await;
    owner_ws.sync(0).await;
    // 30 claims at once from six users, half over HTTP, half over WebSocket.
    let mut tasks = Vec::new();
    for i in 0..30u64 {
        let claimer = 302 + i % 6;
        let t = token(&c, claimer, 1);
        let addr = srv.addr();
        tasks.push(tokio::spawn(async move {
            let v: Value = if i % 2 == 0 {
                let (s, v) = Http::new(addr, t)
                    .post(&format!("/v1/users/{owner}/keys/claim"), json!({}))
                    .await;
                assert_eq!(s, 200, "{v}");
                v
            } else {
                let mut ws = Ws::connect(addr, &t).await;
                let mut seen = Vec::new();
                let f = ws
                    .request(
                        json!({"type": "claim_keys", "user": owner.to_string()}),
                        &mut seen,
                    )
                    .await;
                assert_eq!(f["type"], "device_keys", "{f}");
                f
            };
            assert_eq!(v["devices"].as_array().unwrap().len(), 1, "{v}");
            v["devices"][0]["one_time_prekey"]["id"].as_u64()
        }));
    }
    let mut ids = Vec::new();
    for t in tasks {
        ids.push(t.await.unwrap());
    }
    let handed: Vec<u64> = ids.iter().flatten().copied().collect();
    let unique: BTreeSet<u64> = handed.iter().copied().collect();
    assert_eq!(
        handed.len(),
        12,
        "exactly the 12 keys were handed out: {ids:?}"
    );
    assert_eq!(unique, (1..=12).collect(), "each once: {ids:?}");
    let (s, v) = d.http.get("/v1/keys").await;
    assert_eq!((s, v["one_time_prekeys"].as_u64()), (200, Some(0)), "{v}");
    // The owner was told twice: below 10, and out.
    let mut lows = Vec::new();
    while lows.len() < 2 {
        let ev = tokio::time::timeout(
            WAIT,
            owner_ws.event_where(|f| f["event"]["kind"] == "pre_keys_low"),
        )
        .await
        .expect("a low pre-key event");
        assert_eq!(ev["conv"], "0", "{ev}");
        assert_eq!(ev["event"]["device"], "1", "{ev}");
        lows.push(ev["event"]["remaining"].as_u64().unwrap());
    }
    assert_eq!(lows, vec![9, 0]);
    // Topping up continues; removing leaves an empty list.
    let v = d.publish(2).await;
    assert_eq!(
        (v["change"].is_null(), v["one_time_prekeys"].as_u64()),
        (true, Some(2)),
        "{v}"
    );
    let (s, v) = d.http.delete("/v1/keys").await;
    assert_eq!((s, v["change"].as_str()), (200, Some("removed")), "{v}");
    let (s, v) = d.http.get(&format!("/v1/users/{owner}/keys")).await;
    assert_eq!(
        (s, v["devices"].as_array().map(Vec::len)),
        (200, Some(0)),
        "{v}"
    );
    srv.shutdown().await.unwrap();
}

fn authed<T>(msg: T, t: &str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {t}").parse().unwrap());
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_signed_pre_key_is_refused_and_the_grpc_edge_speaks_the_directory() {
    use missive_server::edge::grpc::pb;
    use missive_server::edge::grpc::pb::missive_client::MissiveClient;
    use tonic::transport::Channel;

    let dir = tempfile::tempdir().unwrap();
    let c = config(dir.path());
    let srv = start(c.clone()).await;
    let mut d = Device::new(401, 1, Http::new(srv.addr(), token(&c, 401, 1)));
    let mut body = d.publish_body(3);
    // Flip one bit of the signed pre-key: its signature no longer holds.
    let key = body["signed_prekey"]["key"].as_str().unwrap().to_string();
    let mut raw = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, key).unwrap();
    raw[0] ^= 1;
    body["signed_prekey"]["key"] = json!(base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        raw
    ));
    let (s, v) = d.http.put("/v1/keys", body).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (400, Some("invalid")),
        "{v}"
    );
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("signature"),
        "{v}"
    );
    d.publish(3).await;

    let url = format!("http://{}", srv.grpc_addr().unwrap());
    let mut g = MissiveClient::<Channel>::connect(url).await.unwrap();
    let other = token(&c, 402, 1);
    let list = g
        .device_keys(authed(pb::DeviceKeysRequest { user: 401 }, &other))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.devices.len(), 1);
    assert_eq!(list.devices[0].identity_key, d.identity_public().to_vec());
    assert!(list.devices[0].one_time_prekey.is_none());
    let claimed = g
        .claim_keys(authed(
            pb::ClaimKeysRequest {
                user: 401,
                devices: vec![],
            },
            &other,
        ))
        .await
        .unwrap()
        .into_inner();
    // The forged body took ids 1–3 in the test client; the stored ones are 4–6.
    assert_eq!(
        claimed.devices[0].one_time_prekey.as_ref().map(|k| k.id),
        Some(4)
    );
    let status = g
        .key_status(authed(pb::KeyStatusRequest {}, &token(&c, 401, 1)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.one_time_prekeys, 2);
    // A gRPC send to an encrypted conversation with a stale device set.
    let h = Http::new(srv.addr(), other.clone());
    let conv: u64 = h.direct(401).await.parse().unwrap();
    let (s, v) = h
        .put(
            &format!("/v1/conversations/{conv}/settings"),
            json!({"encrypted": true}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let err = g
        .send(authed(
            pb::SendRequest {
                conv,
                client_msg_id: "g1".into(),
                kind: "encrypted".into(),
                payloads: vec![pb::DevicePayload {
                    user: 401,
                    device: 7,
                    ciphertext: vec![1, 2, 3],
                }],
                ..Default::default()
            },
            &other,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    let md = |k: &str| err.metadata().get(k).unwrap().to_str().unwrap().to_string();
    assert_eq!(md("missive-error-code"), "stale_devices");
    assert_eq!(md("missive-missing-devices"), "401:1");
    assert_eq!(md("missive-extra-devices"), "401:7");
    // The right set goes through, and the recipient's gRPC history holds
    // its own payload as the body.
    let ok = g
        .send(authed(
            pb::SendRequest {
                conv,
                client_msg_id: "g2".into(),
                kind: "encrypted".into(),
                payloads: vec![pb::DevicePayload {
                    user: 401,
                    device: 1,
                    ciphertext: b"sealed for 401:1".to_vec(),
                }],
                ..Default::default()
            },
            &other,
        ))
        .await
        .unwrap()
        .into_inner();
    let page = g
        .history(authed(
            pb::HistoryRequest {
                conv,
                ..Default::default()
            },
            &token(&c, 401, 1),
        ))
        .await
        .unwrap()
        .into_inner();
    let m = page.messages.iter().find(|m| m.seq == ok.seq).unwrap();
    assert_eq!(
        (m.kind.as_str(), m.body.as_slice()),
        ("encrypted", &b"sealed for 401:1"[..])
    );
    let (s, v) = send_encrypted(&h, &conv.to_string(), "g2", &[((401, 1), b"x".to_vec())]).await;
    assert_eq!((s, v["duplicate"].as_bool()), (200, Some(true)), "{v}");
    srv.shutdown().await.unwrap();
}
