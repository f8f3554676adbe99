//! The unsend and erasure proof over three real nodes (loopback, 3
//! replicas): an unsent message's body, a body an edit replaced, and the
//! messages, profile and device of a user erased with `missivectl user
//! erase` are on every replica's disk after they were written —
//! `missivectl residue` finds them — and after `missivectl node scrub` on
//! each node no table and no log segment of any replica holds them, while
//! the messages still there are still found (the search sees through
//! compressed tables and log records, so "not found" means gone).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests panic on surprises"
)]

use crate::common;

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use common::{call, ctl, found};

#[test]
fn unsent_and_edited_away_bodies_leave_no_byte_on_any_replica_after_a_scrub() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let common::Trio { nodes, urls, cfgs } = rt.block_on(common::three_nodes(dir.path(), "n", 2));

    let nonce = common::nonce();
    let secret = format!("unsent-body-{nonce}-please-forget-me");
    let draft = format!("draft-body-{nonce}-replaced-by-an-edit");
    let kept = format!("kept-body-{nonce}-still-here");
    let edited = format!("final-body-{nonce}-after-the-edit");
    // What user 3 (Carol) leaves before she is erased.
    let carols = [
        format!("carol-body-{nonce}-one"),
        format!("carol-body-{nonce}-two"),
        format!("carol-profile-{nonce}"),
        format!("carol-device-{nonce}"),
    ];
    let (alice, conv) = rt.block_on(async {
        let mint = |user: u64| {
            let url = format!("{}/v1/admin/tokens", urls[0]);
            async move {
                let (s, v) = call(
                    reqwest::Method::POST,
                    url,
                    None,
                    Some(json!({"user": user, "device": 1})),
                )
                .await;
                assert_eq!(s, 200, "{v}");
                v["token"].as_str().unwrap().to_string()
            }
        };
        let (alice, bob, carol) = (mint(1).await, mint(2).await, mint(3).await);
        let (s, v) = call(
            reqwest::Method::POST,
            format!("{}/v1/conversations", urls[1]),
            Some(&alice),
            Some(json!({"kind": "direct", "peer": "2"})),
        )
        .await;
        assert_eq!(s, 201, "{v}");
        let conv = v["conv"].as_str().unwrap().to_string();
        let msgs = format!("{}/v1/conversations/{conv}/messages", urls[2]);
        for (cid, body) in [("k", &kept), ("s", &secret), ("d", &draft)] {
            let (s, v) = call(
                reqwest::Method::POST,
                msgs.clone(),
                Some(&alice),
                Some(json!({"client_msg_id": cid, "body": body})),
            )
            .await;
            assert_eq!(s, 200, "{v}");
        }
        let (s, v) = call(
            reqwest::Method::PUT,
            format!("{msgs}/2/reactions/%F0%9F%91%80"),
            Some(&bob),
            Some(json!({})),
        )
        .await;
        assert_eq!(s, 200, "{v}");
        let (s, v) = call(
            reqwest::Method::PATCH,
            format!("{msgs}/3"),
            Some(&alice),
            Some(json!({"body": edited})),
        )
        .await;
        assert_eq!(s, 200, "{v}");
        let (s, v) = call(
            reqwest::Method::DELETE,
            format!("{msgs}/2"),
            Some(&alice),
            None,
        )
        .await;
        assert_eq!((s, v["changed"].as_bool()), (200, Some(true)), "{v}");
        // Every replica has applied the unsend (each serves the tombstone
        // from its own state).
        until_every_node_serves(&urls, &bob, &conv, |h| {
            h["messages"]
                .as_array()
                .is_some_and(|m| m.iter().any(|m| m["seq"] == 2 && m["unsent"].is_object()))
        })
        .await;
        // Carol talks in a group with Alice, with a profile and a device.
        let (s, v) = call(
            reqwest::Method::POST,
            format!("{}/v1/conversations", urls[0]),
            Some(&alice),
            Some(json!({"kind": "group", "name": "g", "members": ["3"]})),
        )
        .await;
        assert_eq!(s, 201, "{v}");
        let group = v["conv"].as_str().unwrap().to_string();
        let gmsgs = format!("{}/v1/conversations/{group}/messages", urls[1]);
        for (cid, body) in [("c1", &carols[0]), ("c2", &carols[1])] {
            let (s, v) = call(
                reqwest::Method::POST,
                gmsgs.clone(),
                Some(&carol),
                Some(json!({"client_msg_id": cid, "body": body})),
            )
            .await;
            assert_eq!(s, 200, "{v}");
        }
        let me = format!("{}/v1/users/me", urls[2]);
        let (s, v) = call(
            reqwest::Method::PUT,
            me,
            Some(&carol),
            Some(json!({"display_name": carols[2]})),
        )
        .await;
        assert_eq!(s, 200, "{v}");
        let devices = format!("{}/v1/devices", urls[2]);
        let (s, v) = call(
            reqwest::Method::POST,
            devices,
            Some(&carol),
            Some(json!({"name": carols[3], "platform": "ios"})),
        )
        .await;
        assert_eq!(s, 200, "{v}");
        // Every replica has Carol's messages before she is erased.
        until_every_node_serves(&urls, &alice, &group, |h| {
            h["messages"].as_array().is_some_and(|m| m.len() == 2)
        })
        .await;
        let (code, out, err) = ctl(&["--json", "user", "erase", "--url", &urls[1], "3"]);
        assert_eq!(code, 0, "{err}{out}");
        let report: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(
            (
                report["conversations"].as_u64(),
                report["messages"].as_u64(),
                report["receipts"].as_u64(),
                report["user_records"].as_u64()
            ),
            (Some(1), Some(2), Some(1), Some(2)),
            "{report}"
        );
        until_every_node_serves(&urls, &alice, &group, |h| {
            h["messages"].as_array().is_some_and(|m| {
                m.iter()
                    .filter(|m| m["sender"] == "3")
                    .all(|m| m["unsent"].is_object() && m.get("body").is_none())
            })
        })
        .await;
        (alice, conv)
    });

    // Before the scrub the bodies are on every replica's disk: the search
    // can fail this test. A replica may still be catching up (a commit
    // needs two of three, and the third may have started after its leader
    // first tried it), so each is given a few seconds to get them.
    for c in &cfgs {
        let deadline = Instant::now() + Duration::from_secs(15);
        while !found(&c.data_dir, &secret) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(200));
        }
        assert!(
            found(&c.data_dir, &secret),
            "{}: the unsent body was never found",
            c.data_dir.display()
        );
        assert!(found(&c.data_dir, &draft), "{}", c.data_dir.display());
        for gone in &carols {
            assert!(found(&c.data_dir, gone), "{gone}: never found");
        }
    }
    for u in &urls {
        let (code, out, err) = ctl(&["node", "scrub", "--url", u]);
        assert_eq!(code, 0, "{err}{out}");
        assert!(out.contains("groups purged"), "{out}");
    }
    for c in &cfgs {
        let d = &c.data_dir;
        assert!(
            !found(d, &secret),
            "{}: the unsent body is still on disk",
            d.display()
        );
        assert!(
            !found(d, &draft),
            "{}: the body an edit replaced is still on disk",
            d.display()
        );
        for gone in &carols {
            assert!(
                !found(d, gone),
                "{}: {gone} of the erased user is still on disk",
                d.display()
            );
        }
        assert!(
            found(d, &kept),
            "{}: a live message is missing",
            d.display()
        );
        assert!(
            found(d, &edited),
            "{}: the edited body is missing",
            d.display()
        );
    }
    // The nodes still serve after the scrub (their logs purged to the
    // end): a new message is stored and every replica serves it.
    rt.block_on(async {
        let msgs = format!("{}/v1/conversations/{conv}/messages", urls[0]);
        let (s, v) = call(
            reqwest::Method::POST,
            msgs,
            Some(&alice),
            Some(json!({"client_msg_id": "after", "body": "after the scrub"})),
        )
        .await;
        assert_eq!((s, v["seq"].as_u64()), (200, Some(4)), "{v}");
        until_every_node_serves(&urls, &alice, &conv, |h| h["messages"][0]["seq"] == 4).await;
    });
    for n in nodes {
        rt.block_on(n.shutdown()).unwrap();
    }
}

/// Waits (up to 10 s each) until every node's newest history page of
/// `conv` satisfies `done` — each node serves it from its own replica.
async fn until_every_node_serves(
    urls: &[String],
    token: &str,
    conv: &str,
    done: impl Fn(&Value) -> bool,
) {
    for u in urls {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let path = format!("{u}/v1/conversations/{conv}/messages");
            let (_, h) = call(reqwest::Method::GET, path, Some(token), None).await;
            if done(&h) {
                break;
            }
            assert!(Instant::now() < deadline, "{u}: {h}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
