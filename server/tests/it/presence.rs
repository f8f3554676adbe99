//! Presence and typing against a real missived: who may watch whom, the
//! online/offline transitions as sockets open and close, typing reaching
//! the other members and refused outside one's conversations.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use crate::common;

use serde_json::json;

use common::{config, start, token, Http, Ws};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contacts_see_each_other_come_and_go_and_type() {
    let dir = tempfile::tempdir().unwrap();
    let c = config(dir.path());
    let srv = start(c.clone()).await;
    let alice_http = Http::new(srv.addr(), token(&c, 1, 1));
    let direct = alice_http.direct(2).await;
    let group = alice_http.group("book club", &[4]).await;
    let mut alice = Ws::connect(srv.addr(), &token(&c, 1, 1)).await;
    let mut seen = Vec::new();

    // Bob (direct) and Dave (group) are contacts; Carol shares nothing.
    let state = alice
        .request(
            json!({"type": "presence", "users": ["2", "3", "4", "2"]}),
            &mut seen,
        )
        .await;
    assert_eq!(state["type"], "presence_state", "{state}");
    assert_eq!(
        state["users"],
        json!([
            {"user": "2", "online": false, "last_seen": null},
            {"user": "4", "online": false, "last_seen": null}
        ]),
        "{state}"
    );
    assert_eq!(state["hidden"], json!(["3"]));

    // Bob comes online.
    let mut bob = Ws::connect(srv.addr(), &token(&c, 2, 1)).await;
    let on = alice.frame_where("presence", |f| f["user"] == "2").await;
    assert_eq!(on["online"], true, "{on}");

    // Bob types in their conversation: Alice hears it, Bob does not.
    bob.send_json(json!({"type": "typing", "conv": direct, "typing": true}))
        .await;
    let t = alice.frame_where("typing", |_| true).await;
    assert_eq!(
        t,
        json!({"type": "typing", "conv": direct, "user": "2", "typing": true})
    );
    // Typing where Bob is not a member is refused, with the request id.
    let mut bob_seen = Vec::new();
    let refused = bob
        .request(
            json!({"type": "typing", "conv": group, "typing": true}),
            &mut bob_seen,
        )
        .await;
    assert_eq!(refused["code"], "not_a_member", "{refused}");
    assert!(
        bob_seen.iter().all(|f| f["type"] != "typing"),
        "typing is never echoed to the typist: {bob_seen:?}"
    );

    // Bob's last socket closes: offline, with when.
    drop(bob);
    let off = alice
        .frame_where("presence", |f| f["user"] == "2" && f["online"] == false)
        .await;
    assert!(off["last_seen"].as_u64().unwrap() > 0, "{off}");

    // Too many users in one request.
    let many: Vec<String> = (1..=501).map(|u| u.to_string()).collect();
    let bad = alice
        .request(json!({"type": "presence", "users": many}), &mut seen)
        .await;
    assert_eq!(bad["code"], "invalid", "{bad}");
    srv.shutdown().await.unwrap();
}
