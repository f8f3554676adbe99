//! Delivery end to end against a real missived: online delivery with all
//! receipt states, multi-device, offline sync across a restart, idempotent
//! resend, groups, history paging across flushed tables, and the sync/live
//! hand-off under concurrent sends.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use crate::common;

use std::time::Duration;

use serde_json::json;

use common::{
    assert_consecutive, config, message_seqs, metric, metrics, start, suites, token, Http, Ws,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_to_one_online_with_receipts_and_every_device() {
    let dir = tempfile::tempdir().unwrap();
    let c = config(dir.path());
    let srv = start(c.clone()).await;
    let alice = Http::new(srv.addr(), token(&c, 1, 1));
    let conv = alice.direct(2).await;

    let mut a1 = Ws::connect(srv.addr(), &token(&c, 1, 1)).await;
    let mut a2 = Ws::connect(srv.addr(), &token(&c, 1, 2)).await;
    let mut b1 = Ws::connect(srv.addr(), &token(&c, 2, 1)).await;
    for ws in [&mut a1, &mut a2, &mut b1] {
        let mut evs = ws.sync(0).await;
        // The conversation's creation is each member's first event (the
        // fan-out may deliver it just after `synced`).
        if evs.is_empty() {
            evs.push(ws.event_where(|_| true).await);
        }
        assert_eq!(evs[0]["event"]["kind"], "membership", "{evs:?}");
        assert_eq!(evs[0]["useq"], 1, "{evs:?}");
    }

    let mut seen = Vec::new();
    let sent = a1.send_text(&conv, "m1", "hello bob", &mut seen).await;
    assert_eq!(sent["type"], "sent", "{sent}");
    assert_eq!(sent["seq"], 1);
    assert_eq!(sent["duplicate"], false);

    // The recipient and the sender's other device get it at once.
    for ws in [&mut b1, &mut a2] {
        let e = ws.event_where(|e| e["event"]["kind"] == "message").await;
        assert_eq!(e["event"]["message"]["body"], "hello bob");
        assert_eq!(e["event"]["message"]["sender"], "1");
        assert_eq!(e["event"]["message"]["seq"], 1);
    }

    // Bob's device acks DELIVERED, then marks READ; Alice's devices see both.
    let r = b1
        .request(
            json!({"type": "receipt", "conv": conv, "delivered": 1}),
            &mut seen,
        )
        .await;
    assert_eq!(
        (
            r["type"].as_str(),
            r["delivered"].as_u64(),
            r["read"].as_u64()
        ),
        (Some("receipt_set"), Some(1), Some(0))
    );
    for ws in [&mut a1, &mut a2] {
        let e = ws
            .event_where(|e| e["event"]["kind"] == "receipt" && e["event"]["user"] == "2")
            .await;
        assert_eq!(
            (
                e["event"]["delivered"].as_u64(),
                e["event"]["read"].as_u64()
            ),
            (Some(1), Some(0))
        );
    }
    b1.request(
        json!({"type": "receipt", "conv": conv, "read": 1}),
        &mut seen,
    )
    .await;
    for ws in [&mut a1, &mut a2] {
        let e = ws
            .event_where(|e| e["event"]["kind"] == "receipt" && e["event"]["read"] == 1)
            .await;
        assert_eq!(e["event"]["user"], "2");
    }
    // Bob's list shows nothing unread now; Alice's own message never was.
    let bob = Http::new(srv.addr(), token(&c, 2, 1));
    let (_, list) = bob.get("/v1/conversations").await;
    assert_eq!(list["conversations"][0]["unread"], 0, "{list}");
    let (_, list) = alice.get("/v1/conversations").await;
    assert_eq!(list["conversations"][0]["unread"], 0, "{list}");
    srv.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_device_syncs_everything_across_a_restart_then_goes_live() {
    let dir = tempfile::tempdir().unwrap();
    let c = config(dir.path());
    let srv = start(c.clone()).await;
    let alice = Http::new(srv.addr(), token(&c, 1, 1));
    let conv = alice.direct(2).await;
    // Bob's phone saw the first message, then went offline.
    alice.send(&conv, "m1", "one").await;
    let mut bob = Ws::connect(srv.addr(), &token(&c, 2, 1)).await;
    let first = bob.sync_until(0, &conv, 1).await;
    assert_eq!(message_seqs(&first, &conv), vec![1]);
    let cursor = first.last().unwrap()["useq"].as_u64().unwrap();
    drop(bob);
    for i in 2..=20 {
        alice
            .send(&conv, &format!("m{i}"), &format!("msg {i}"))
            .await;
    }
    let group = alice.group("later", &[2, 3]).await;
    srv.shutdown().await.unwrap();

    // A restart later, Bob reconnects with his cursor.
    let srv = start(c.clone()).await;
    let mut bob = Ws::connect(srv.addr(), &token(&c, 2, 1)).await;
    let missed = bob.sync_until(cursor, &conv, 19).await;
    assert_consecutive(&missed, cursor);
    assert_eq!(message_seqs(&missed, &conv), (2..=20).collect::<Vec<_>>());
    // ...including the conversation he was added to meanwhile (its
    // outbox entry may still have been waiting at the shutdown: the new
    // process's fan-out delivers it).
    let mut missed = missed;
    let added = |e: &serde_json::Value| {
        e["conv"] == group.as_str()
            && e["event"]["kind"] == "membership"
            && e["event"]["added"]
                .as_array()
                .unwrap()
                .contains(&json!("2"))
    };
    while !missed.iter().any(added) {
        missed.push(bob.next().await.expect("socket closed"));
    }
    assert_consecutive(&missed, cursor);
    // Then live, with no gap after the last synced event.
    let last = missed.last().unwrap()["useq"].as_u64().unwrap();
    let alice = Http::new(srv.addr(), token(&c, 1, 1));
    alice.send(&conv, "m21", "live").await;
    let e = bob.event_where(|e| e["event"]["kind"] == "message").await;
    assert_eq!(e["useq"].as_u64().unwrap(), last + 1);
    assert_eq!(e["event"]["message"]["seq"], 21);
    srv.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resend_returns_the_original_and_nobody_sees_it_twice() {
    let dir = tempfile::tempdir().unwrap();
    let c = config(dir.path());
    let srv = start(c.clone()).await;
    let alice = Http::new(srv.addr(), token(&c, 1, 1));
    let conv = alice.direct(2).await;
    let mut a = Ws::connect(srv.addr(), &token(&c, 1, 1)).await;
    a.sync(0).await;
    let mut seen = Vec::new();
    let first = a.send_text(&conv, "same-id", "hi", &mut seen).await;
    let again = a.send_text(&conv, "same-id", "hi", &mut seen).await;
    assert_eq!(
        (first["seq"].clone(), first["ts"].clone()),
        (again["seq"].clone(), again["ts"].clone())
    );
    assert_eq!(again["duplicate"], true);
    // Over HTTP too.
    assert_eq!(alice.send(&conv, "same-id", "hi").await, (1, true));
    alice.send(&conv, "next", "after").await;
    let mut bob = Ws::connect(srv.addr(), &token(&c, 2, 1)).await;
    let evs = bob.sync_until(0, &conv, 2).await;
    assert_eq!(message_seqs(&evs, &conv), vec![1, 2]);
    let (_, h) = alice
        .get(&format!("/v1/conversations/{conv}/messages"))
        .await;
    assert_eq!(h["messages"].as_array().unwrap().len(), 2, "{h}");
    srv.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_fan_out_and_removed_members_hear_nothing_after() {
    let dir = tempfile::tempdir().unwrap();
    let c = config(dir.path());
    let srv = start(c.clone()).await;
    suites::groups_fan_out_and_removed_members_hear_nothing_after(&[srv.addr()], &c).await;
    srv.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn older_pages_come_from_the_cache_once_read_and_never_stale() {
    let dir = tempfile::tempdir().unwrap();
    let c = config(dir.path());
    let srv = start(c.clone()).await;
    let alice = Http::new(srv.addr(), token(&c, 1, 1));
    let conv = alice.direct(2).await;
    for i in 1..=120 {
        alice.send(&conv, &format!("a{i}"), &format!("m{i}")).await;
    }
    let pages = || async {
        let mut out = Vec::new();
        let mut before: Option<u64> = None;
        loop {
            let q = match before {
                Some(b) => format!("/v1/conversations/{conv}/messages?limit=50&before={b}"),
                None => format!("/v1/conversations/{conv}/messages?limit=50"),
            };
            let (s, v) = alice.get(&q).await;
            assert_eq!(s, 200, "{v}");
            out.extend(v["messages"].as_array().unwrap().iter().cloned());
            match v["next_before"].as_u64() {
                Some(b) => before = Some(b),
                None => return out,
            }
        }
    };
    let hits = || async {
        let m = metrics(srv.addr()).await;
        metric(&m, "missive_message_cache_hits_total").unwrap_or(0.0)
    };
    let first = pages().await;
    assert_eq!(first.len(), 120);
    let before = hits().await;
    let again = pages().await;
    assert!(
        hits().await >= before + 3.0,
        "the older pages were served from the cache"
    );
    assert_eq!(first.len(), again.len());
    // A change to a cached older message shows on the next read.
    let (s, _) = alice
        .patch(
            &format!("/v1/conversations/{conv}/messages/30"),
            json!({"body": "m30 fixed"}),
        )
        .await;
    assert_eq!(s, 200);
    let (s, _) = alice
        .delete(&format!("/v1/conversations/{conv}/messages/20"))
        .await;
    assert_eq!(s, 200);
    let after = pages().await;
    let at = |seq: u64| after.iter().find(|m| m["seq"] == seq).unwrap().clone();
    assert_eq!(at(30)["body"], "m30 fixed", "{}", at(30));
    assert!(at(20)["unsent"].is_object() && at(20).get("body").is_none());
    assert_eq!(at(21)["body"], "m21");
    srv.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_pages_back_across_flushed_tables() {
    let dir = tempfile::tempdir().unwrap();
    let c = config(dir.path());
    let srv = start(c.clone()).await;
    let alice = Http::new(srv.addr(), token(&c, 1, 1));
    let conv = alice.direct(2).await;
    for i in 1..=60 {
        alice.send(&conv, &format!("a{i}"), &format!("{i}")).await;
    }
    srv.node().lsm().flush().unwrap();
    for i in 61..=120 {
        alice.send(&conv, &format!("a{i}"), &format!("{i}")).await;
    }
    srv.node().lsm().flush().unwrap();
    for i in 121..=130 {
        alice.send(&conv, &format!("a{i}"), &format!("{i}")).await;
    }
    let mut seqs = Vec::new();
    let mut before: Option<u64> = None;
    let mut pages = 0;
    loop {
        let q = match before {
            Some(b) => format!("/v1/conversations/{conv}/messages?limit=50&before={b}"),
            None => format!("/v1/conversations/{conv}/messages?limit=50"),
        };
        let (s, v) = alice.get(&q).await;
        assert_eq!(s, 200, "{v}");
        pages += 1;
        for m in v["messages"].as_array().unwrap() {
            seqs.push(m["seq"].as_u64().unwrap());
        }
        match v["next_before"].as_u64() {
            Some(b) => before = Some(b),
            None => break,
        }
    }
    assert_eq!(seqs, (1..=130).rev().collect::<Vec<_>>());
    assert!(pages >= 3);
    // The same over the socket.
    let mut ws = Ws::connect(srv.addr(), &token(&c, 2, 1)).await;
    let mut seen = Vec::new();
    let page = ws
        .request(
            json!({"type": "history", "conv": conv, "limit": 10, "before": 1}),
            &mut seen,
        )
        .await;
    assert_eq!(page["messages"], json!([]), "{page}");
    let page = ws
        .request(
            json!({"type": "history", "conv": conv, "limit": 10}),
            &mut seen,
        )
        .await;
    assert_eq!(page["messages"][0]["seq"], 130);
    let bad = ws
        .request(
            json!({"type": "history", "conv": conv, "limit": 100000}),
            &mut seen,
        )
        .await;
    assert_eq!(bad["code"], "invalid");
    // The engine's counters are on /metrics: the two flushes, the log's
    // syncs and entries (130 sends and their fan-out), the record cache,
    // the tables.
    let text = metrics(srv.addr()).await;
    let value =
        |name: &str| metric(&text, name).unwrap_or_else(|| panic!("{name} missing:\n{text}"));
    assert!(value("missive_lsm_flushes_total") >= 2.0, "{text}");
    assert!(value("missive_log_entries_total") >= 130.0, "{text}");
    assert!(value("missive_log_syncs_total") >= 1.0, "{text}");
    // On a healthy disk no preparation of a next segment fails.
    assert_eq!(
        value("missive_log_segment_preparations_failed_total"),
        0.0,
        "{text}"
    );
    // Each of the 130 messages inserted its record (and more) into a
    // memtable; a full search places a minority of them.
    let inserts = value("missive_lsm_memtable_inserts_total");
    assert!(inserts >= 130.0, "{text}");
    assert!(
        value("missive_lsm_memtable_full_searches_total") < inserts,
        "{text}"
    );
    // Every send after the first found the conversation's records in the
    // state machine's record cache, flushes or not.
    assert!(
        value("missive_apply_record_cache_hits_total") >= 129.0 * 2.0,
        "{text}"
    );
    let tables: f64 = (0..7)
        .filter_map(|l| metric(&text, &format!("missive_lsm_level_files{{level=\"{l}\"}}")))
        .sum();
    assert!(tables >= 1.0, "{text}");
    srv.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_hands_off_to_live_with_no_gap_and_no_duplicate() {
    let dir = tempfile::tempdir().unwrap();
    let c = config(dir.path());
    let srv = start(c.clone()).await;
    suites::sync_hands_off_to_live_with_no_gap_and_no_duplicate(&[srv.addr()], &c).await;
    srv.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disappearing_message_is_readable_until_it_expires_then_gone_everywhere() {
    const LIFE_MS: u64 = 3000;
    let dir = tempfile::tempdir().unwrap();
    let c = config(dir.path());
    let srv = start(c.clone()).await;
    let alice = Http::new(srv.addr(), token(&c, 1, 1));
    let bob = Http::new(srv.addr(), token(&c, 2, 1));
    let conv = alice.direct(2).await;
    let mut phone = Ws::connect(srv.addr(), &token(&c, 2, 1)).await;
    phone.sync(0).await;

    let sent_at = std::time::Instant::now();
    let (s, v) = alice
        .post(
            &format!("/v1/conversations/{conv}/messages"),
            json!({"client_msg_id": "poof", "body": "poof", "expires_in_ms": LIFE_MS}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["seq"], 1);
    alice.send(&conv, "stays", "stays").await;

    // Before it expires: live, and in history with its expiry.
    let live = phone.event_where(|e| e["event"]["seq"] == 1).await;
    let m = &live["event"]["message"];
    if m.is_null() {
        assert!(
            sent_at.elapsed().as_millis() >= u128::from(LIFE_MS),
            "rendered without its message before it expired: {live}"
        );
    } else {
        assert_eq!(m["body"], "poof", "{live}");
        assert!(m["expires_at"].as_u64().is_some(), "{live}");
    }
    let (_, h) = bob.get(&format!("/v1/conversations/{conv}/messages")).await;
    if sent_at.elapsed().as_millis() < u128::from(LIFE_MS) {
        let bodies: Vec<_> = h["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["body"].clone())
            .collect();
        assert_eq!(bodies, vec![json!("stays"), json!("poof")], "{h}");
    }

    // After: gone from history (the first page, which the recent-messages
    // cache would serve, and a page before a cursor), and a device syncing
    // now gets the event — seq 1 was sent, so there is no gap — without it.
    let left = Duration::from_millis(LIFE_MS + 200).saturating_sub(sent_at.elapsed());
    tokio::time::sleep(left).await;
    for q in ["", "?before=18446744073709551615"] {
        let (s, h) = bob
            .get(&format!("/v1/conversations/{conv}/messages{q}"))
            .await;
        assert_eq!(s, 200, "{h}");
        let seqs: Vec<_> = h["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["seq"].clone())
            .collect();
        assert_eq!(seqs, vec![json!(2)], "{q}: {h}");
    }
    let mut laptop = Ws::connect(srv.addr(), &token(&c, 2, 2)).await;
    let evs = laptop.sync_until(0, &conv, 2).await;
    assert_eq!(message_seqs(&evs, &conv), vec![1, 2]);
    let first = evs.iter().find(|e| e["event"]["seq"] == 1).unwrap();
    assert!(first["event"]["message"].is_null(), "{first}");
    let second = evs.iter().find(|e| e["event"]["seq"] == 2).unwrap();
    assert_eq!(second["event"]["message"]["body"], "stays");
    srv.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edits_unsends_and_reactions_follow_the_rules() {
    let dir = tempfile::tempdir().unwrap();
    let c = config(dir.path());
    let srv = start(c.clone()).await;
    suites::edits_unsends_and_reactions_follow_the_rules(&[srv.addr()], &c).await;
    srv.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pins_and_blocks_follow_the_rules() {
    let dir = tempfile::tempdir().unwrap();
    let c = config(dir.path());
    let srv = start(c.clone()).await;
    suites::pins_and_blocks_follow_the_rules(&[srv.addr()], &c).await;
    srv.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mentions_and_settings_follow_the_rules() {
    let dir = tempfile::tempdir().unwrap();
    let c = config(dir.path());
    let srv = start(c.clone()).await;
    suites::mentions_and_settings_follow_the_rules(&[srv.addr()], &c).await;
    srv.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edits_and_unsends_close_with_their_windows_but_admins_may_still_unsend() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.messages.edit_window_secs = 1;
    c.messages.unsend_window_secs = 1;
    let srv = start(c.clone()).await;
    let admin = Http::new(srv.addr(), token(&c, 1, 1));
    let u2 = Http::new(srv.addr(), token(&c, 2, 1));
    let g = admin.group("windows", &[2]).await;
    let (seq, _) = u2.send(&g, "m1", "hi").await;
    let path = format!("/v1/conversations/{g}/messages/{seq}");
    let (s, v) = u2.patch(&path, json!({"body": "within"})).await;
    assert_eq!((s, v["changed"].as_bool()), (200, Some(true)), "{v}");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let (s, v) = u2.patch(&path, json!({"body": "late"})).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (403, Some("too_late")),
        "{v}"
    );
    let (s, v) = u2.delete(&path).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (403, Some("too_late")),
        "{v}"
    );
    let (s, v) = admin.delete(&path).await;
    assert_eq!((s, v["changed"].as_bool()), (200, Some(true)), "{v}");
    srv.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_name_the_message_they_answer() {
    let dir = tempfile::tempdir().unwrap();
    let c = config(dir.path());
    let srv = start(c.clone()).await;
    suites::replies_name_the_message_they_answer(&[srv.addr()], &c).await;
    srv.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_pages_forward_and_around_a_message() {
    let dir = tempfile::tempdir().unwrap();
    let c = config(dir.path());
    let srv = start(c.clone()).await;
    let alice = Http::new(srv.addr(), token(&c, 1, 1));
    let conv = alice.direct(2).await;
    for i in 1..=30 {
        alice.send(&conv, &format!("m{i}"), &format!("{i}")).await;
    }
    let path = format!("/v1/conversations/{conv}/messages");
    let (_, all) = alice.get(&format!("{path}?limit=30")).await;
    // ts by seq.
    let ts: std::collections::HashMap<u64, u64> = all["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["seq"].as_u64().unwrap(), m["ts"].as_u64().unwrap()))
        .collect();
    let seqs = |v: &serde_json::Value| -> Vec<u64> {
        v["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["seq"].as_u64().unwrap())
            .collect()
    };
    // Forward from seq 10: the five right after it, newest first.
    let (s, v) = alice
        .get(&format!("{path}?after={}&limit=5", ts[&10]))
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(seqs(&v), [15, 14, 13, 12, 11]);
    assert_eq!(v["next_after"], ts[&15], "{v}");
    let (_, v) = alice
        .get(&format!("{path}?after={}&limit=5", v["next_after"]))
        .await;
    assert_eq!(seqs(&v), [20, 19, 18, 17, 16]);
    // The end going forward: a short page, no next_after.
    let (_, v) = alice
        .get(&format!("{path}?after={}&limit=5", ts[&28]))
        .await;
    assert_eq!(seqs(&v), [30, 29]);
    assert!(v["next_after"].is_null(), "{v}");
    // Around seq 20: it and up to half a page on each side.
    let (_, v) = alice
        .get(&format!("{path}?around={}&limit=6", ts[&20]))
        .await;
    assert_eq!(seqs(&v), [23, 22, 21, 20, 19, 18]);
    assert_eq!(
        (v["next_before"].as_u64(), v["next_after"].as_u64()),
        (Some(ts[&18]), Some(ts[&23]))
    );
    // Over the WebSocket too.
    let mut ws = Ws::connect(srv.addr(), &token(&c, 2, 1)).await;
    let page = ws
        .request(
            json!({"type": "history", "conv": conv, "around": ts[&1], "limit": 4}),
            &mut Vec::new(),
        )
        .await;
    assert_eq!(seqs(&page), [3, 2, 1], "{page}");
    // One cursor at a time; none is 0.
    let (s, v) = alice
        .get(&format!("{path}?before={}&after={}", ts[&5], ts[&3]))
        .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (400, Some("invalid")),
        "{v}"
    );
    let (s, v) = alice.get(&format!("{path}?around=0")).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (400, Some("bad_cursor")),
        "{v}"
    );
    srv.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_conversation_list_pages_by_activity_with_previews() {
    let dir = tempfile::tempdir().unwrap();
    let c = config(dir.path());
    let srv = start(c.clone()).await;
    let alice = Http::new(srv.addr(), token(&c, 1, 1));
    // Five conversations, active in this order: direct with 2..=5, then a
    // group; the list is newest activity first.
    let mut convs = Vec::new();
    for peer in 2..=5 {
        let d = alice.direct(peer).await;
        alice
            .send(&d, &format!("to{peer}"), &format!("hello {peer}"))
            .await;
        convs.push(d);
    }
    let g = alice.group("the group", &[2, 3]).await;
    alice.send(&g, "g1", "group hello").await;
    convs.push(g.clone());
    convs.reverse();
    // The list is fed by fan-out (the same step that sends the sender's
    // devices their own `message` event), so it may trail a send's answer
    // by a moment: wait until the last send shows before paging.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, v) = alice.get("/v1/conversations?limit=1").await;
        if v["conversations"][0]["last_message"]["body"] == "group hello" {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{v}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut got = Vec::new();
    let mut before: Option<String> = None;
    loop {
        let path = match &before {
            Some(b) => format!("/v1/conversations?limit=2&before={b}"),
            None => "/v1/conversations?limit=2".to_string(),
        };
        let (s, v) = alice.get(&path).await;
        assert_eq!(s, 200, "{v}");
        let page = v["conversations"].as_array().unwrap().clone();
        assert!(page.len() <= 2);
        got.extend(page);
        match v["next_before"].as_str() {
            Some(b) => before = Some(b.to_string()),
            None => break,
        }
    }
    let ids: Vec<&str> = got.iter().map(|e| e["conv"].as_str().unwrap()).collect();
    assert_eq!(ids, convs.iter().map(String::as_str).collect::<Vec<_>>());
    let group = &got[0];
    assert_eq!(
        (
            group["kind"].as_str(),
            group["name"].as_str(),
            group["member_count"].as_u64()
        ),
        (Some("group"), Some("the group"), Some(3)),
        "{group}"
    );
    assert_eq!(group["last_message"]["body"], "group hello", "{group}");
    assert_eq!(got[1]["last_message"]["body"], "hello 5");
    // The preview follows unsend (a tombstone) and delete-for-me (none).
    let (s, _) = alice
        .delete(&format!("/v1/conversations/{g}/messages/1"))
        .await;
    assert_eq!(s, 200);
    let d5 = &convs[1];
    let (s, _) = alice
        .post(
            &format!("/v1/conversations/{d5}/messages/1/hide"),
            json!({}),
        )
        .await;
    assert_eq!(s, 200);
    let mut ws = Ws::connect(srv.addr(), &token(&c, 1, 1)).await;
    let page = ws
        .request(
            json!({"type": "conversations", "limit": 2}),
            &mut Vec::new(),
        )
        .await;
    let first = &page["conversations"];
    assert_eq!(first[0]["last_message"]["unsent"]["by"], "1", "{page}");
    assert!(first[1]["last_message"].is_null(), "{page}");
    assert!(page["next_before"].is_string(), "{page}");
    let (s, v) = alice.get("/v1/conversations?before=nonsense").await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (400, Some("bad_cursor")),
        "{v}"
    );
    srv.shutdown().await.unwrap();
}

/// Alice (user 1) sends three messages to Bob (user 2) in their direct
/// conversation while Bob's socket is live; returns once Bob got them all
/// (with Bob's socket, still open).
async fn three_to_bob_live(
    addr: std::net::SocketAddr,
    c: &missive_server::Config,
) -> (Http, String, Ws) {
    let alice = Http::new(addr, token(c, 1, 1));
    let conv = alice.direct(2).await;
    let mut bob = Ws::connect(addr, &token(c, 2, 1)).await;
    bob.sync(0).await;
    for i in 0..3 {
        alice.send(&conv, &format!("h{i}"), "hi").await;
    }
    for i in 0..3 {
        let body = format!("h{i}");
        bob.event_where(|e| e["event"]["message"]["client_msg_id"] == body.as_str())
            .await;
    }
    (alice, conv, bob)
}

/// With one shard every inbox is on every conversation's shard: each
/// event reaches its members in its own batch (local delivery), nothing
/// goes through the fan-out, and live sessions still get every message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_one_shard_every_event_is_delivered_in_its_own_batch() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.node.shards = Some(1);
    let srv = start(c.clone()).await;
    let _live = three_to_bob_live(srv.addr(), &c).await;
    let text = common::metrics(srv.addr()).await;
    let count =
        |name: &str| common::metric(&text, name).unwrap_or_else(|| panic!("no {name}:\n{text}"));
    // The creation and three messages, each to both members.
    assert_eq!(count("missive_deliveries_local_total"), 8.0, "{text}");
    assert_eq!(count("missive_fanout_seconds_count"), 0.0, "{text}");
    srv.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_show_latency_histograms_for_sends_history_and_live_delivery() {
    let dir = tempfile::tempdir().unwrap();
    let c = config(dir.path());
    let srv = start(c.clone()).await;
    let (alice, conv, _bob) = three_to_bob_live(srv.addr(), &c).await;
    let (s, _) = alice
        .get(&format!("/v1/conversations/{conv}/messages"))
        .await;
    assert_eq!(s, 200);
    let text = common::metrics(srv.addr()).await;
    let count =
        |name: &str| common::metric(&text, name).unwrap_or_else(|| panic!("no {name}:\n{text}"));
    assert_eq!(count("missive_send_commit_seconds_count"), 3.0);
    assert!(count("missive_send_commit_seconds_sum") > 0.0);
    assert_eq!(count("missive_history_read_seconds_count"), 1.0);
    assert!(count("missive_delivery_seconds_count") >= 3.0, "{text}");
    // Buckets are cumulative and end with +Inf = count.
    assert_eq!(
        count("missive_send_commit_seconds_bucket{le=\"+Inf\"}"),
        3.0
    );
    // The counters kept their names.
    assert_eq!(count("missive_messages_sent_total"), 3.0);
    assert!(count("missive_websockets") >= 1.0);
    // The storage side: every commit was fsynced and applied, and each
    // message fanned out to both inboxes before Bob saw it.
    assert!(count("missive_log_fsync_seconds_count") >= 3.0, "{text}");
    assert_eq!(
        count("missive_log_fsync_seconds_bucket{le=\"+Inf\"}"),
        count("missive_log_fsync_seconds_count")
    );
    assert!(count("missive_apply_seconds_count") >= 3.0, "{text}");
    assert!(count("missive_fanout_seconds_count") >= 3.0, "{text}");
    assert!(count("missive_log_syncs_total") >= 3.0);
    assert!(count("missive_lsm_level_files{level=\"0\"}") >= 0.0);
    // One node: it leads every shard, and there is no replica to lag.
    assert_eq!(count("missive_shard_leader{shard=\"1\"}"), 1.0);
    assert!(
        !text.contains("missive_shard_replication_lag_entries{"),
        "{text}"
    );
    // Each group's Raft state: it elected itself once, applied what it
    // logged (the sends are on some shard, so some group moved past its
    // first entries), and nobody handed anything over.
    assert_eq!(count("missive_shard_elections_total{shard=\"1\"}"), 1.0);
    assert_eq!(count("missive_shard_term{shard=\"1\"}"), 1.0);
    assert!(count("missive_shard_leader_changes_total{shard=\"1\"}") >= 1.0);
    let applied: f64 = (1..=4)
        .map(|s| count(&format!("missive_shard_applied_index{{shard=\"{s}\"}}")))
        .sum();
    let logged: f64 = (1..=4)
        .map(|s| count(&format!("missive_shard_log_index{{shard=\"{s}\"}}")))
        .sum();
    assert!(applied >= 4.0 + 3.0 && applied <= logged, "{text}");
    assert!(count("missive_shard_snapshots_total{shard=\"1\"}") >= 0.0);
    assert_eq!(count("missive_leader_handovers_total"), 0.0);
    srv.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_scopes_hits_to_what_the_user_may_read() {
    let dir = tempfile::tempdir().unwrap();
    let c = config(dir.path());
    let srv = start(c.clone()).await;
    suites::search_scopes_hits_to_what_the_user_may_read(&[srv.addr()], &c).await;
    srv.shutdown().await.unwrap();
}
