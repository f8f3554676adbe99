//! Test bodies that run against one node and against a 3-node cluster
//! (`addrs` are the nodes' client addresses; users and devices spread over
//! them), so the delivery guarantees are checked in both topologies.

use std::net::SocketAddr;

use serde_json::{json, Value};

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

/// The newest page of `conv` as `h`'s user sees it.
async fn page(h: &Http, conv: &str) -> Vec<Value> {
    let (s, v) = h.get(&format!("/v1/conversations/{conv}/messages")).await;
    assert_eq!(s, 200, "{v}");
    v["messages"].as_array().unwrap().clone()
}

/// Message `seq` of a page.
fn at_seq(page: &[Value], seq: u64) -> Value {
    page.iter()
        .find(|m| m["seq"] == seq)
        .unwrap_or_else(|| panic!("no message {seq} in {page:?}"))
        .clone()
}

/// `(emoji, count, mine)` of a rendered message's reactions, sorted by
/// emoji (the JSON object's order is not kept by serde_json's map).
fn reactions(m: &Value) -> Vec<(String, u64, bool)> {
    let mine: Vec<&str> = m["my_reactions"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let mut out: Vec<(String, u64, bool)> = m["reactions"]
        .as_object()
        .map(|o| {
            o.iter()
                .map(|(e, n)| (e.clone(), n.as_u64().unwrap(), mine.contains(&e.as_str())))
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// Edits, unsends and reactions: who may, what history and events show,
/// what counts as unread, and the refusals. Users 1 (admin), 2 and 3 are
/// members; 5 is not.
pub async fn edits_unsends_and_reactions_follow_the_rules(addrs: &[SocketAddr], c: &Config) {
    let at = |u: u64| addrs[u as usize % addrs.len()];
    let admin = Http::new(at(1), token(c, 1, 1));
    let u2 = Http::new(at(2), token(c, 2, 1));
    let u3 = Http::new(at(3), token(c, 3, 1));
    let g = admin.group("changes", &[2, 3]).await;
    let mut w2 = Ws::connect(at(2), &token(c, 2, 1)).await;
    w2.sync(0).await;
    let (first, _) = u2.send(&g, "m1", "helo").await;
    assert_eq!(first, 1);
    let msg = |seq: u64| format!("/v1/conversations/{g}/messages/{seq}");
    let reaction = |seq: u64, emoji: &str| {
        let e: String = emoji.bytes().map(|b| format!("%{b:02X}")).collect();
        format!("/v1/conversations/{g}/messages/{seq}/reactions/{e}")
    };

    // The sender edits over WebSocket; members see an `edited` event with
    // the new body, and history shows it with edited_at and the count.
    let mut seen = Vec::new();
    let ack = w2
        .request(
            json!({"type": "edit", "conv": g, "seq": 1, "body": "hello"}),
            &mut seen,
        )
        .await;
    assert_eq!(
        (ack["type"].as_str(), ack["changed"].as_bool()),
        (Some("changed"), Some(true)),
        "{ack}"
    );
    let e = w2
        .event_seen_or_next(&mut seen, |e| e["event"]["kind"] == "edited")
        .await;
    assert_eq!(e["event"]["message"]["body"], "hello", "{e}");
    assert_eq!(e["event"]["edited_at"], ack["at"], "{e}");
    // Someone else's message: refused, over both edges.
    let (s, v) = u3.patch(&msg(1), json!({"body": "hacked"})).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (403, Some("forbidden")),
        "{v}"
    );
    let no = w2
        .request(
            json!({"type": "edit", "conv": g, "seq": 9, "body": "x"}),
            &mut seen,
        )
        .await;
    assert_eq!(no["code"], "no_such_message", "{no}");
    let (s, v) = u2.patch(&msg(1), json!({"body": ""})).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (400, Some("invalid")),
        "{v}"
    );

    // Reactions: a set per user and emoji, aggregated in history with the
    // viewer's own marked.
    let (s, v) = u3.put(&reaction(1, "👍"), json!({})).await;
    assert_eq!((s, v["changed"].as_bool()), (200, Some(true)), "{v}");
    let (s, v) = u3.put(&reaction(1, "👍"), json!({})).await;
    assert_eq!((s, v["changed"].as_bool()), (200, Some(false)), "{v}");
    let r = w2
        .request(
            json!({"type": "react", "conv": g, "seq": 1, "emoji": "👍"}),
            &mut seen,
        )
        .await;
    assert_eq!(r["changed"], true, "{r}");
    w2.request(
        json!({"type": "react", "conv": g, "seq": 1, "emoji": "🎉"}),
        &mut seen,
    )
    .await;
    let ev = w2
        .event_seen_or_next(&mut seen, |e| {
            e["event"]["kind"] == "reaction" && e["event"]["emoji"] == "🎉"
        })
        .await;
    assert_eq!(
        (ev["event"]["user"].as_str(), ev["event"]["added"].as_bool()),
        (Some("2"), Some(true))
    );
    let m3 = at_seq(&page(&u3, &g).await, 1);
    assert_eq!(m3["body"], "hello", "{m3}");
    assert_eq!(
        (m3["edits"].as_u64(), m3["edited_at"].is_u64()),
        (Some(1), true),
        "{m3}"
    );
    assert_eq!(
        reactions(&m3),
        [("🎉".to_string(), 1, false), ("👍".to_string(), 2, true)]
    );
    let m2 = at_seq(&page(&u2, &g).await, 1);
    assert_eq!(
        reactions(&m2),
        [("🎉".to_string(), 1, true), ("👍".to_string(), 2, true)]
    );
    let (s, v) = u2.delete(&reaction(1, "🎉")).await;
    assert_eq!((s, v["changed"].as_bool()), (200, Some(true)), "{v}");
    assert_eq!(
        reactions(&at_seq(&page(&u3, &g).await, 1)),
        [("👍".to_string(), 2, true)]
    );
    // Neither edits nor reactions count as unread: user 3 has one unread
    // message, however many events reached them.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (_, list) = u3.get("/v1/conversations").await;
        let entry = list["conversations"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["conv"] == g.as_str())
            .cloned()
            .unwrap();
        if entry["last_seq"] == 1 {
            assert_eq!(entry["unread"], 1, "{entry}");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{entry}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }

    // Unsend: not by another member; by the sender, a tombstone; then no
    // edit, reaction or reply finds it.
    let (s, v) = u3.delete(&msg(1)).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (403, Some("forbidden")),
        "{v}"
    );
    let un = w2
        .request(json!({"type": "unsend", "conv": g, "seq": 1}), &mut seen)
        .await;
    assert_eq!(un["changed"], true, "{un}");
    let ev = w2
        .event_seen_or_next(&mut seen, |e| e["event"]["kind"] == "unsent")
        .await;
    assert_eq!(ev["event"]["by"], "2", "{ev}");
    let (s, v) = u2.delete(&msg(1)).await;
    assert_eq!(
        (s, v["changed"].as_bool()),
        (200, Some(false)),
        "again: {v}"
    );
    for addr in addrs {
        let h = Http::new(*addr, token(c, 3, 1));
        let m = at_seq(&page(&h, &g).await, 1);
        assert_eq!(m["unsent"]["by"], "2", "on {addr}: {m}");
        assert!(
            m.get("body").is_none() && m.get("reactions").is_none() && m.get("edits").is_none(),
            "on {addr}: {m}"
        );
    }
    let (s, v) = u2.patch(&msg(1), json!({"body": "back"})).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (404, Some("no_such_message")),
        "{v}"
    );
    let (s, v) = u3.put(&reaction(1, "👍"), json!({})).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (404, Some("no_such_message")),
        "{v}"
    );

    // A group admin may unsend anyone's message (the default policy).
    let (second, _) = u3.send(&g, "m2", "spam").await;
    let (s, v) = admin.delete(&msg(second)).await;
    assert_eq!((s, v["changed"].as_bool()), (200, Some(true)), "{v}");
    assert_eq!(at_seq(&page(&u2, &g).await, second)["unsent"]["by"], "1");

    // Non-members learn nothing: the same answer as for a conversation
    // that does not exist. A member who left may no longer react.
    let (third, _) = u2.send(&g, "m3", "still here").await;
    let u5 = Http::new(at(5), token(c, 5, 1));
    for path in [
        msg(third),
        format!("/v1/conversations/12345/messages/{third}"),
    ] {
        let (s, v) = u5.patch(&path, json!({"body": "x"})).await;
        assert_eq!(
            (s, v["error"]["code"].as_str()),
            (403, Some("not_a_member")),
            "{v}"
        );
    }
    let (s, _) = u3
        .post(&format!("/v1/conversations/{g}/leave"), json!({}))
        .await;
    assert_eq!(s, 200);
    let (s, v) = u3.put(&reaction(third, "👍"), json!({})).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (403, Some("not_a_member")),
        "{v}"
    );
    // The labels that are operations now are refused as message kinds.
    let (s, v) = u2
        .post(
            &format!("/v1/conversations/{g}/messages"),
            json!({"client_msg_id": "m4", "kind": "edit", "body": "x"}),
        )
        .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (400, Some("invalid")),
        "{v}"
    );
}

/// Pins (any member; bounded; an unsend unpins; non-members read nothing)
/// and blocks (no direct messages either way, no new direct conversation,
/// no presence or typing for the blocked; group messages still arrive;
/// unblock restores).
pub async fn pins_and_blocks_follow_the_rules(addrs: &[SocketAddr], c: &Config) {
    let at = |u: u64| addrs[u as usize % addrs.len()];
    let http = |u: u64| Http::new(at(u), token(c, u, 1));
    let (u1, u2, u3) = (http(1), http(2), http(3));
    let g = u1.group("pins", &[2, 3]).await;
    let mut w2 = Ws::connect(at(2), &token(c, 2, 1)).await;
    w2.sync(0).await;
    u2.send(&g, "a", "first").await;
    u2.send(&g, "b", "second").await;
    let mut seen = Vec::new();
    let ack = w2
        .request(json!({"type": "pin", "conv": g, "seq": 1}), &mut seen)
        .await;
    assert_eq!(
        (ack["type"].as_str(), ack["changed"].as_bool()),
        (Some("changed"), Some(true)),
        "{ack}"
    );
    let ev = w2
        .event_seen_or_next(&mut seen, |e| e["event"]["kind"] == "pin")
        .await;
    assert_eq!(
        (ev["event"]["seq"].as_u64(), ev["event"]["by"].as_str()),
        (Some(1), Some("2")),
        "{ev}"
    );
    let (s, v) = u3
        .put(&format!("/v1/conversations/{g}/pins/2"), json!({}))
        .await;
    assert_eq!((s, v["changed"].as_bool()), (200, Some(true)), "{v}");
    let (s, v) = u3.get(&format!("/v1/conversations/{g}/pins")).await;
    assert_eq!(s, 200, "{v}");
    let pins: Vec<(u64, String, String)> = v["pins"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["seq"].as_u64().unwrap(),
                p["by"].as_str().unwrap().to_string(),
                p["message"]["body"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            )
        })
        .collect();
    assert_eq!(
        pins,
        [
            (2, "3".into(), "second".into()),
            (1, "2".into(), "first".into())
        ],
        "{v}"
    );
    // Non-members read nothing (whether or not the conversation exists).
    let u5 = http(5);
    for conv in [g.as_str(), "4242"] {
        let (s, v) = u5.get(&format!("/v1/conversations/{conv}/pins")).await;
        assert_eq!(
            (s, v["error"]["code"].as_str()),
            (403, Some("not_a_member")),
            "{v}"
        );
    }
    let mut w5 = Ws::connect(at(5), &token(c, 5, 1)).await;
    let no = w5
        .request(json!({"type": "pins", "conv": g}), &mut Vec::new())
        .await;
    assert_eq!(no["code"], "not_a_member", "{no}");
    let (s, v) = u5
        .put(&format!("/v1/conversations/{g}/pins/1"), json!({}))
        .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (403, Some("not_a_member")),
        "{v}"
    );
    // An unsent message leaves the pins; pinning nothing is refused.
    let (s, _) = u2
        .delete(&format!("/v1/conversations/{g}/messages/2"))
        .await;
    assert_eq!(s, 200);
    let got = w2
        .request(json!({"type": "pins", "conv": g}), &mut seen)
        .await;
    let seqs: Vec<u64> = got["pins"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, [1], "{got}");
    let (s, v) = u3
        .put(&format!("/v1/conversations/{g}/pins/2"), json!({}))
        .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (404, Some("no_such_message")),
        "{v}"
    );
    let (s, v) = u3.delete(&format!("/v1/conversations/{g}/pins/1")).await;
    assert_eq!((s, v["changed"].as_bool()), (200, Some(true)), "{v}");
    // Delete for me: gone from 3's history on every device, not from 2's.
    let (s, v) = u3
        .post(&format!("/v1/conversations/{g}/messages/1/hide"), json!({}))
        .await;
    assert_eq!((s, v["changed"].as_bool()), (200, Some(true)), "{v}");
    let seqs = |h: &Http| {
        let h = h.clone();
        let g = g.clone();
        async move {
            let (_, v) = h.get(&format!("/v1/conversations/{g}/messages")).await;
            v["messages"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| m["seq"].as_u64().unwrap())
                .collect::<Vec<u64>>()
        }
    };
    assert_eq!(seqs(&u3).await, [2]);
    assert_eq!(
        seqs(&Http::new(at(4), token(c, 3, 2))).await,
        [2],
        "3's other device"
    );
    assert_eq!(seqs(&u2).await, [2, 1]);
    let hid = w2
        .request(json!({"type": "hide", "conv": g, "seq": 9}), &mut seen)
        .await;
    assert_eq!(hid["code"], "no_such_message", "{hid}");

    // Blocks. Users 6 and 7 talk directly, then 6 blocks 7.
    let (u6, u7) = (http(6), http(7));
    let d = u6.direct(7).await;
    u7.send(&d, "hi", "hi").await;
    let mut w7 = Ws::connect(at(7), &token(c, 7, 1)).await;
    let before = w7
        .request(json!({"type": "presence", "users": ["6"]}), &mut Vec::new())
        .await;
    assert_eq!(
        before["hidden"],
        json!([]),
        "they share a conversation: {before}"
    );
    let g2 = u6.group("with a blocked member", &[7]).await;
    let mut w6 = Ws::connect(at(6), &token(c, 6, 1)).await;
    w6.sync(0).await;
    // The block's event may arrive before its answer: keep what the
    // request sets aside.
    let mut seen6 = Vec::new();
    let set = w6
        .request(json!({"type": "block", "user": "7"}), &mut seen6)
        .await;
    assert_eq!(
        (set["type"].as_str(), set["blocked"].as_bool()),
        (Some("block_set"), Some(true)),
        "{set}"
    );
    // Neither sends in the direct conversation, with a clear code.
    for (who, cid) in [(&u7, "after"), (&u6, "mine")] {
        let (s, v) = who
            .post(
                &format!("/v1/conversations/{d}/messages"),
                json!({"client_msg_id": cid, "body": "x"}),
            )
            .await;
        assert_eq!(
            (s, v["error"]["code"].as_str()),
            (403, Some("blocked")),
            "{v}"
        );
    }
    // 6's devices learn of the block; 6's list shows it.
    let ev = w6
        .event_seen_or_next(&mut seen6, |e| e["event"]["kind"] == "block")
        .await;
    assert_eq!(ev["event"]["user"], "7", "{ev}");
    let (s, v) = u6.get("/v1/blocks").await;
    assert_eq!(
        (s, v["blocked"][0]["user"].as_str()),
        (200, Some("7")),
        "{v}"
    );
    // 7 no longer sees 6's presence, nor 6 see… only the blocker hides.
    let after = w7
        .request(json!({"type": "presence", "users": ["6"]}), &mut Vec::new())
        .await;
    assert_eq!(after["hidden"], json!(["6"]), "{after}");
    // 7's typing in a shared group does not reach 6, but 7's group
    // messages do (a client filters them by its block list).
    w7.send_json(json!({"type": "typing", "conv": g2, "typing": true}))
        .await;
    u7.send(&g2, "g", "in the group").await;
    let mut frames = Vec::new();
    loop {
        let f = w6.next().await.expect("closed");
        let is_msg =
            f["type"] == "event" && f["conv"] == g2.as_str() && f["event"]["kind"] == "message";
        frames.push(f);
        if is_msg {
            break;
        }
    }
    assert!(
        !frames
            .iter()
            .any(|f| f["type"] == "typing" && f["user"] == "7"),
        "{frames:?}"
    );
    // No new direct conversation with someone who blocks you (or whom you
    // block) either.
    let (u8, u9) = (http(8), http(9));
    let (s, _) = u8.put("/v1/blocks/9", json!({})).await;
    assert_eq!(s, 200);
    let (s, v) = u9
        .post("/v1/conversations", json!({"kind": "direct", "peer": "8"}))
        .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (403, Some("blocked")),
        "{v}"
    );
    // Unblocking restores.
    let (s, v) = u6.delete("/v1/blocks/7").await;
    assert_eq!((s, v["blocked"].as_bool()), (200, Some(false)), "{v}");
    let (seq, _) = u7.send(&d, "again", "hello again").await;
    assert_eq!(seq, 2);
    let (s, v) = u6.put("/v1/blocks/6", json!({})).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (400, Some("invalid")),
        "{v}"
    );
}

/// `conv`'s entry in `h`'s conversation list once `ok` holds for it
/// (the list follows the user's inbox, which the fan-out fills a moment
/// after the write).
async fn list_entry_when(h: &Http, conv: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let (s, v) = h.get("/v1/conversations").await;
        assert_eq!(s, 200, "{v}");
        let entry = v["conversations"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["conv"] == conv)
            .cloned();
        match entry {
            Some(e) if ok(&e) => return e,
            other if std::time::Instant::now() > deadline => {
                panic!("{conv} never matched; last: {other:?}")
            }
            _ => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
        }
    }
}

/// Mentions and conversation settings: who is told and counted, who may
/// change settings, and what each setting does to later messages and
/// members. Users 1 (admin), 2 and 3 are members; 4 joins later; 5 never.
pub async fn mentions_and_settings_follow_the_rules(addrs: &[SocketAddr], c: &Config) {
    let at = |u: u64| addrs[u as usize % addrs.len()];
    let http = |u: u64| Http::new(at(u), token(c, u, 1));
    let (u1, u2, u4, u5) = (http(1), http(2), http(4), http(5));
    let g = u1.group("mentions", &[2, 3]).await;
    let mut w2 = Ws::connect(at(2), &token(c, 2, 1)).await;
    w2.sync(0).await;

    // Mentions: over HTTP and over the socket; a non-member is dropped.
    let (s, v) = u1
        .post(
            &format!("/v1/conversations/{g}/messages"),
            json!({"client_msg_id": "m1", "body": "@2 @9 look", "mentions": ["2", 9]}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let first = v["seq"].as_u64().unwrap();
    let ev = w2.event_where(|e| e["event"]["kind"] == "mention").await;
    assert_eq!(
        (ev["event"]["seq"].as_u64(), ev["event"]["sender"].as_str()),
        (Some(first), Some("1")),
        "{ev}"
    );
    let mut w3 = Ws::connect(at(3), &token(c, 3, 1)).await;
    let sent = w3
        .request(
            json!({"type": "send", "conv": g, "client_msg_id": "m2", "body": "@2 too",
                   "mentions": ["2"]}),
            &mut Vec::new(),
        )
        .await;
    assert_eq!(sent["type"], "sent", "{sent}");
    let m = at_seq(&page(&u2, &g).await, first);
    assert_eq!(m["mentions"], json!(["2"]), "{m}");
    let e = list_entry_when(&u2, &g, |e| e["mentions"] == 2).await;
    assert_eq!(e["unread"], 2, "{e}");
    let (s, _) = u2
        .post(
            &format!("/v1/conversations/{g}/receipts"),
            json!({"read": first}),
        )
        .await;
    assert_eq!(s, 200);
    list_entry_when(&u2, &g, |e| e["mentions"] == 1).await;
    let too_many: Vec<u64> = (1..=51).collect();
    let (s, v) = u1
        .post(
            &format!("/v1/conversations/{g}/messages"),
            json!({"client_msg_id": "m3", "body": "x", "mentions": too_many}),
        )
        .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (400, Some("invalid")),
        "{v}"
    );

    // Settings: a group's admins only; bad values say which.
    let settings = format!("/v1/conversations/{g}/settings");
    let (s, v) = u2.put(&settings, json!({"keep_edits": true})).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (403, Some("forbidden")),
        "{v}"
    );
    for conv in [g.as_str(), "4242"] {
        let (s, v) = u5
            .put(
                &format!("/v1/conversations/{conv}/settings"),
                json!({"keep_edits": true}),
            )
            .await;
        assert_eq!(
            (s, v["error"]["code"].as_str()),
            (403, Some("not_a_member")),
            "{v}"
        );
    }
    for bad in [
        json!({}),
        json!({"history": "everyone"}),
        json!({"retention": "days"}),
        json!({"retention": "days", "retention_days": 0}),
        json!({"retention": "forever", "retention_days": 3}),
    ] {
        let (s, v) = u1.put(&settings, bad.clone()).await;
        assert_eq!(
            (s, v["error"]["code"].as_str()),
            (400, Some("invalid")),
            "{bad}: {v}"
        );
    }
    let (s, v) = u1
        .put(
            &settings,
            json!({"history": "joined", "keep_edits": true, "retention": "days",
                   "retention_days": 7}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        v["settings"],
        json!({"history": "joined", "keep_edits": true, "retention": "days",
               "retention_days": 7}),
        "{v}"
    );
    let ev = w2.event_where(|e| e["event"]["kind"] == "settings").await;
    assert_eq!(ev["event"]["settings"]["history"], "joined", "{ev}");
    let (_, info) = u2.get(&format!("/v1/conversations/{g}")).await;
    assert_eq!(info["settings"]["retention_days"], 7, "{info}");

    // Retention: a message sent now expires 7 days after its ts.
    let (kept, _) = u1.send(&g, "r1", "kept a week").await;
    let m = at_seq(&page(&u1, &g).await, kept);
    let week = 7 * 86_400_000_000u64;
    assert_eq!(
        m["expires_at"].as_u64(),
        Some(m["ts"].as_u64().unwrap() + week),
        "{m}"
    );
    // Edit history: kept now.
    let (s, v) = u1
        .patch(
            &format!("/v1/conversations/{g}/messages/{kept}"),
            json!({"body": "kept a week!"}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let m = at_seq(&page(&u2, &g).await, kept);
    assert_eq!(m["body"], "kept a week!", "{m}");
    assert_eq!(m["prior"][0]["body"], "kept a week", "{m}");

    // Joined history: 4 sees from the message that added them on, and
    // cannot touch what came before.
    let (s, v) = u1
        .post(
            &format!("/v1/conversations/{g}/members"),
            json!({"add": ["4"]}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let joined_at = v["seq"].as_u64().unwrap();
    let seqs =
        |p: Vec<Value>| -> Vec<u64> { p.iter().map(|m| m["seq"].as_u64().unwrap()).collect() };
    assert_eq!(seqs(page(&u4, &g).await), [joined_at]);
    let (s, v) = u4
        .get(&format!(
            "/v1/conversations/{g}/messages?before={}",
            m["ts"]
        ))
        .await;
    assert_eq!(
        (s, v["messages"].as_array().map(Vec::len)),
        (200, Some(0)),
        "{v}"
    );
    assert!(v["next_before"].is_null(), "{v}");
    let (s, v) = u4
        .put(
            &format!("/v1/conversations/{g}/messages/{kept}/reactions/👍"),
            json!({}),
        )
        .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (404, Some("no_such_message")),
        "{v}"
    );
    // Over the socket, back to shared: 4 sees everything.
    let mut w1 = Ws::connect(at(1), &token(c, 1, 1)).await;
    let ack = w1
        .request(
            json!({"type": "configure", "conv": g, "history": "shared"}),
            &mut Vec::new(),
        )
        .await;
    assert_eq!(
        (
            ack["type"].as_str(),
            ack["changed"].as_bool(),
            ack["settings"]["history"].as_str()
        ),
        (Some("settings"), Some(true), Some("shared")),
        "{ack}"
    );
    let all = seqs(page(&u4, &g).await);
    assert!(all.contains(&first) && all.contains(&kept), "{all:?}");
    // Push previews: an admin's setting too, answered with its value.
    let ack = w1
        .request(
            json!({"type": "configure", "conv": g, "push_previews": true}),
            &mut Vec::new(),
        )
        .await;
    assert_eq!(
        (ack["push_previews"].as_bool(), ack["changed"].as_bool()),
        (Some(true), Some(true)),
        "{ack}"
    );
    let no = w3
        .request(
            json!({"type": "configure", "conv": g, "push_previews": false}),
            &mut Vec::new(),
        )
        .await;
    assert_eq!(no["code"], "forbidden", "{no}");
    let no = w3
        .request(
            json!({"type": "configure", "conv": g, "history": "joined"}),
            &mut Vec::new(),
        )
        .await;
    assert_eq!(no["code"], "forbidden", "{no}");
}

/// The seqs and conversations of `who`'s search hits for `q` (query string
/// parameters after `q=`), over HTTP; asserts 200.
async fn search_hits(h: &Http, q: &str) -> Vec<(String, u64)> {
    let (s, v) = h.get(&format!("/v1/search?q={q}")).await;
    assert_eq!(s, 200, "search {q}: {v}");
    v["hits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            (
                h["message"]["conv"].as_str().unwrap().to_string(),
                h["message"]["seq"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// Search: a user's hits come only from conversations they are in now
/// (not one they left, not what came before they joined with `joined`
/// history), edits and unsends show at once, opaque bodies are never
/// found, and bad queries get clear errors. Over HTTP and WebSocket.
pub async fn search_scopes_hits_to_what_the_user_may_read(addrs: &[SocketAddr], c: &Config) {
    let at = |u: u64| addrs[u as usize % addrs.len()];
    let u = |n: u64| Http::new(at(n), token(c, n, 1));
    let (u1, u2, u3, u4, u5) = (u(1), u(2), u(3), u(4), u(5));
    let g = u1.group("search", &[2, 3]).await;
    let (s1, _) = u1.send(&g, "s1", "The quarterly Report is ready").await;
    // Sent as opaque bytes: the same words, never indexed.
    let (s, v) = u2
        .post(
            &format!("/v1/conversations/{g}/messages"),
            json!({"client_msg_id": "s2", "body_b64": "cmVwb3J0IHNlY3JldA=="}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let (s3, _) = u2.send(&g, "s3", "Café au lait, rapport prêt").await;
    let d45 = u4.direct(5).await;
    let (d1, _) = u4.send(&d45, "d1", "my report, not yours").await;

    // Words, folded case and accents, the last one a prefix.
    let mine = vec![(g.clone(), s1)];
    assert_eq!(search_hits(&u1, "report%20").await, mine);
    assert_eq!(search_hits(&u3, "REP").await, mine);
    assert_eq!(search_hits(&u1, "quarterly%20rep").await, mine);
    assert_eq!(search_hits(&u2, "cafe%20pret").await, vec![(g.clone(), s3)]);
    assert_eq!(search_hits(&u1, "secret").await, vec![], "opaque bodies");
    assert_eq!(search_hits(&u4, "report").await, vec![(d45.clone(), d1)]);
    assert_eq!(search_hits(&u5, "report").await, vec![(d45.clone(), d1)]);
    // The answer's snippet and highlights (characters of the snippet).
    let (_, v) = u1.get("/v1/search?q=report").await;
    let hit = &v["hits"][0];
    assert_eq!(hit["snippet"], "The quarterly Report is ready", "{v}");
    assert_eq!(hit["highlights"], json!([[14, 20]]), "{v}");
    assert_eq!(hit["message"]["body"], "The quarterly Report is ready");
    assert!(v.get("next").is_none(), "a short page is the last: {v}");

    // Filters: conversation, sender, kind, time.
    assert_eq!(
        search_hits(&u1, &format!("report&conv={g}&sender=1&kind=text")).await,
        mine
    );
    assert_eq!(search_hits(&u1, "report&sender=2").await, vec![]);
    assert_eq!(search_hits(&u1, "report&kind=link").await, vec![]);
    assert_eq!(search_hits(&u1, "report&until=1").await, vec![]);
    // A conversation filter naming one the caller is not in: the answer
    // every conversation-scoped call gives, existing or not.
    for other in [d45.as_str(), "12345"] {
        let (s, v) = u1.get(&format!("/v1/search?q=report&conv={other}")).await;
        assert_eq!(
            (s, v["error"]["code"].as_str()),
            (403, Some("not_a_member")),
            "{v}"
        );
    }
    // Bad queries.
    for (q, code) in [
        ("%20%2C%2C", "invalid"),
        ("report&kind=gif", "invalid"),
        ("report&cursor=zz", "bad_cursor"),
        ("report&limit=0", "invalid"),
        ("report&limit=101", "invalid"),
        ("report&since=5&until=5", "invalid"),
    ] {
        let (s, v) = u1.get(&format!("/v1/search?q={q}")).await;
        assert_eq!(
            (s, v["error"]["code"].as_str()),
            (400, Some(code)),
            "{q}: {v}"
        );
    }

    // Pages: newest first, the cursor continues with no gap or repeat.
    let mut sent = vec![s1];
    for i in 0..4 {
        sent.push(
            u1.send(&g, &format!("p{i}"), &format!("report page {i}"))
                .await
                .0,
        );
    }
    sent.reverse();
    let mut paged = Vec::new();
    let mut cursor = String::new();
    loop {
        let (s, v) = u3
            .get(&format!("/v1/search?q=report&limit=2&cursor={cursor}"))
            .await;
        assert_eq!(s, 200, "{v}");
        for h in v["hits"].as_array().unwrap() {
            paged.push(h["message"]["seq"].as_u64().unwrap());
        }
        match v["next"].as_str() {
            Some(n) => cursor = n.to_string(),
            None => break,
        }
    }
    assert_eq!(paged, sent);

    // An edit re-indexes at once; an unsend removes the hit at once.
    let (s, v) = u1
        .patch(
            &format!("/v1/conversations/{g}/messages/{s1}"),
            json!({"body": "The annual summary is ready"}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(search_hits(&u2, "annual").await, vec![(g.clone(), s1)]);
    assert!(!search_hits(&u2, "quarterly")
        .await
        .contains(&(g.clone(), s1)));
    let (s, v) = u1
        .delete(&format!("/v1/conversations/{g}/messages/{s1}"))
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(search_hits(&u2, "annual").await, vec![]);

    // With `joined` history, a member added later finds nothing from
    // before they joined, and what is sent after.
    let (s, v) = u1
        .put(
            &format!("/v1/conversations/{g}/settings"),
            json!({"history": "joined"}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = u1
        .post(
            &format!("/v1/conversations/{g}/members"),
            json!({"add": ["5"]}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(search_hits(&u5, &format!("page&conv={g}")).await, vec![]);
    let (late, _) = u1.send(&g, "late", "report page late").await;
    assert_eq!(
        search_hits(&u5, &format!("page&conv={g}")).await,
        vec![(g.clone(), late)]
    );
    // A member who left finds nothing of the conversation any more.
    assert!(!search_hits(&u3, "page").await.is_empty());
    let (s, _) = u3
        .post(&format!("/v1/conversations/{g}/leave"), json!({}))
        .await;
    assert_eq!(s, 200);
    assert_eq!(search_hits(&u3, "page").await, vec![]);

    // The WebSocket answers the same.
    let mut w = Ws::connect(at(2), &token(c, 2, 1)).await;
    let mut seen = Vec::new();
    let f = w
        .request(
            json!({"type": "search", "q": "page", "limit": 3}),
            &mut seen,
        )
        .await;
    assert_eq!(f["type"], "search_result", "{f}");
    let seqs: Vec<u64> = f["hits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["message"]["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, [vec![late], sent[..2].to_vec()].concat(), "{f}");
    let next = f["next"].as_str().unwrap().to_string();
    let f = w
        .request(
            json!({"type": "search", "q": "page", "limit": 3, "cursor": next}),
            &mut seen,
        )
        .await;
    assert_eq!(f["hits"].as_array().unwrap().len(), 2, "{f}");
    let f = w
        .request(json!({"type": "search", "q": "  "}), &mut seen)
        .await;
    assert_eq!(
        (f["type"].as_str(), f["code"].as_str()),
        (Some("error"), Some("invalid")),
        "{f}"
    );
}
