//! Test bodies that run against one node and against a 3-node cluster
//! (`addrs` are the nodes' client addresses; users and devices spread over
//! them), so the delivery guarantees are checked in both topologies.

use std::net::SocketAddr;

use serde_json::json;

use missive_server::Config;

use super::{assert_consecutive, message_seqs, token, Http, Ws};

pub async fn groups_fan_out_and_removed_members_hear_nothing_after(
    addrs: &[SocketAddr],
    c: &Config,
) {
    let at = |u: u64| addrs[u as usize % addrs.len()];
    let admin = Http::new(at(1), token(c, 1, 1));
    let g = admin.group("team", &[2, 3, 4]).await;
    let mut ws: Vec<Ws> = Vec::new();
    for u in 1..=4 {
        let mut w = Ws::connect(at(u), &token(c, u, 1)).await;
        w.sync(0).await;
        ws.push(w);
    }
    admin.send(&g, "g1", "to all").await;
    for w in ws.iter_mut() {
        let e = w.event_where(|e| e["event"]["kind"] == "message").await;
        assert_eq!(e["event"]["message"]["body"], "to all");
    }
    // A non-admin cannot remove anyone.
    let u2 = Http::new(at(2), token(c, 2, 1));
    let (s, v) = u2
        .post(
            &format!("/v1/conversations/{g}/members"),
            json!({"remove": ["3"]}),
        )
        .await;
    assert_eq!((s, v["error"]["code"].as_str()), (403, Some("forbidden")));
    // The admin removes 3: everyone, 3 included, gets the change and the
    // system message.
    let (s, v) = admin
        .post(
            &format!("/v1/conversations/{g}/members"),
            json!({"remove": ["3"]}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    for w in ws.iter_mut() {
        let e = w
            .event_where(|e| {
                e["event"]["kind"] == "message" && e["event"]["message"]["kind"] == "system"
            })
            .await;
        assert_eq!(e["event"]["message"]["system"]["removed"], json!(["3"]));
    }
    // 4 leaves.
    let u4 = Http::new(at(4), token(c, 4, 1));
    let (s, _) = u4
        .post(&format!("/v1/conversations/{g}/leave"), json!({}))
        .await;
    assert_eq!(s, 200);
    admin.send(&g, "g2", "after").await;
    for i in [0usize, 1] {
        let e = ws[i]
            .event_where(|e| {
                e["event"]["kind"] == "message" && e["event"]["message"]["body"] == "after"
            })
            .await;
        assert_eq!(e["event"]["message"]["seq"], 4);
    }
    // 3 cannot read the group or send to it; its inbox has nothing after
    // its removal.
    let u3 = Http::new(at(3), token(c, 3, 1));
    let (s, v) = u3.get(&format!("/v1/conversations/{g}/messages")).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (403, Some("not_a_member"))
    );
    let (s, v) = u3
        .post(
            &format!("/v1/conversations/{g}/messages"),
            json!({"client_msg_id": "x", "body": "x"}),
        )
        .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (403, Some("not_a_member"))
    );
    let mut w3 = Ws::connect(at(3), &token(c, 3, 1)).await;
    let all = w3.sync(0).await;
    assert!(
        !all.iter().any(|e| e["event"]["message"]["body"] == "after"),
        "{all:?}"
    );
    let (_, list) = u3.get("/v1/conversations").await;
    assert_eq!(list["conversations"], json!([]), "{list}");
}

pub async fn sync_hands_off_to_live_with_no_gap_and_no_duplicate(addrs: &[SocketAddr], c: &Config) {
    let alice = Http::new(addrs[0], token(c, 1, 1));
    let conv = alice.direct(2).await;
    const N: u64 = 300;
    // Four senders race the receiver's connect-and-sync.
    let mut senders = Vec::new();
    for w in 0..4u64 {
        // Senders spread over the nodes (followers forward to leaders).
        let a = Http::new(addrs[w as usize % addrs.len()], token(c, 1, 1));
        let conv = conv.clone();
        senders.push(tokio::spawn(async move {
            for i in 0..N / 4 {
                a.send(&conv, &format!("w{w}-{i}"), "x").await;
            }
        }));
    }
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let mut bob = Ws::connect(addrs[addrs.len() - 1], &token(c, 2, 1)).await;
    let mut events = bob.sync(0).await;
    let synced_at = events.len();
    while message_seqs(&events, &conv).len() < N as usize {
        let f = bob.next().await.expect("socket closed");
        assert_ne!(f["type"], "synced", "synced twice");
        events.push(f);
    }
    for s in senders {
        s.await.unwrap();
    }
    assert_consecutive(&events, 0);
    let mut seqs = message_seqs(&events, &conv);
    assert_eq!(seqs.len(), N as usize);
    let sorted = seqs.clone();
    seqs.sort_unstable();
    assert_eq!(seqs, sorted, "messages out of order");
    assert_eq!(seqs, (1..=N).collect::<Vec<_>>());
    println!(
        "{synced_at} events before synced, {} after",
        events.len() - synced_at
    );
}

/// Replies over WebSocket and HTTP: a reply carries its target's seq in
/// the answer, the events and history (read on every node); a target the
/// conversation does not hold is refused and stores nothing.
pub async fn replies_name_the_message_they_answer(addrs: &[SocketAddr], c: &Config) {
    let at = |u: u64| addrs[u as usize % addrs.len()];
    let admin = Http::new(at(1), token(c, 1, 1));
    let g = admin.group("replies", &[2, 3]).await;
    let mut w2 = Ws::connect(at(2), &token(c, 2, 1)).await;
    w2.sync(0).await;
    let (first, _) = admin.send(&g, "q", "lunch?").await;
    assert_eq!(first, 1);

    // Over WebSocket.
    let mut seen = Vec::new();
    let sent = w2
        .request(
            json!({"type": "send", "conv": g, "client_msg_id": "r1", "body": "yes", "reply_to": 1}),
            &mut seen,
        )
        .await;
    assert_eq!(
        (sent["type"].as_str(), sent["seq"].as_u64()),
        (Some("sent"), Some(2)),
        "{sent}"
    );
    // Over HTTP, answering the reply.
    let u3 = Http::new(at(3), token(c, 3, 1));
    let (s, v) = u3
        .post(
            &format!("/v1/conversations/{g}/messages"),
            json!({"client_msg_id": "r2", "body": "me too", "reply_to": 2}),
        )
        .await;
    assert_eq!((s, v["seq"].as_u64()), (200, Some(3)), "{v}");
    let e = w2
        .event_where(|e| e["event"]["kind"] == "message" && e["event"]["seq"] == 3)
        .await;
    assert_eq!(e["event"]["message"]["reply_to"], 2, "{e}");

    // Refusals: nothing there, no seq 0, a system message, a non-member
    // (who learns nothing about the conversation).
    let bad = w2
        .request(
            json!({"type": "send", "conv": g, "client_msg_id": "r3", "body": "?", "reply_to": 99}),
            &mut seen,
        )
        .await;
    assert_eq!(
        (bad["type"].as_str(), bad["code"].as_str()),
        (Some("error"), Some("no_such_message")),
        "{bad}"
    );
    let post = |cid: &str, to: u64| {
        (
            format!("/v1/conversations/{g}/messages"),
            json!({"client_msg_id": cid, "body": "x", "reply_to": to}),
        )
    };
    let (path, body) = post("r4", 0);
    let (s, v) = u3.post(&path, body).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (400, Some("invalid")),
        "{v}"
    );
    let (s, _) = admin
        .post(
            &format!("/v1/conversations/{g}/members"),
            json!({"add": ["4"]}),
        )
        .await;
    assert_eq!(s, 200);
    let (path, body) = post("r5", 4);
    let (s, v) = u3.post(&path, body).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (404, Some("no_such_message")),
        "{v}"
    );
    let u5 = Http::new(at(5), token(c, 5, 1));
    let (path, body) = post("r6", 1);
    let (s, v) = u5.post(&path, body).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (403, Some("not_a_member")),
        "{v}"
    );

    // History on every node: newest first, the system message at 4, and
    // the refused replies stored nothing.
    for addr in addrs {
        let h = Http::new(*addr, token(c, 2, 1));
        let (s, v) = h.get(&format!("/v1/conversations/{g}/messages")).await;
        assert_eq!(s, 200, "{v}");
        let got: Vec<(u64, Option<u64>)> = v["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| (m["seq"].as_u64().unwrap(), m["reply_to"].as_u64()))
            .collect();
        assert_eq!(
            got,
            vec![(4, None), (3, Some(2)), (2, Some(1)), (1, None)],
            "on {addr}"
        );
    }
}
