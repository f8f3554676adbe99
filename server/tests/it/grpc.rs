//! The gRPC API against a real missived: the generated client sends
//! (binary bodies, idempotent resend), reads history and the conversation
//! list, sets receipts and follows the sync stream; errors carry our
//! stable codes.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use crate::common;

use std::time::Duration;

use missive_server::edge::grpc::pb;
use missive_server::edge::grpc::pb::missive_client::MissiveClient;
use missive_server::Running;
use tonic::transport::Channel;
use tonic::{Code, Request};

use common::{config, start, token, Http};

fn authed<T>(msg: T, token: &str) -> Request<T> {
    let mut r = Request::new(msg);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    r
}

fn error_code(s: &tonic::Status) -> String {
    s.metadata()
        .get("missive-error-code")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string()
}

/// A started server, a gRPC client of it and the tokens of Alice (user 1),
/// Bob (2) and Carol (3, on device `carol_device`).
async fn setup(
    carol_device: u64,
) -> (
    tempfile::TempDir,
    Running,
    MissiveClient<Channel>,
    [String; 3],
) {
    let dir = tempfile::tempdir().unwrap();
    let c = config(dir.path());
    let srv = start(c.clone()).await;
    let url = format!("http://{}", srv.grpc_addr().unwrap());
    let client = MissiveClient::<Channel>::connect(url).await.unwrap();
    let tokens = [token(&c, 1, 1), token(&c, 2, 1), token(&c, 3, carol_device)];
    (dir, srv, client, tokens)
}

/// The direct conversation of Alice (`alice` is her token) and Bob.
async fn direct(srv: &Running, alice: &str) -> u64 {
    Http::new(srv.addr(), alice.to_string())
        .direct(2)
        .await
        .parse()
        .unwrap()
}

async fn next_event(s: &mut tonic::Streaming<pb::Event>) -> pb::Event {
    tokio::time::timeout(Duration::from_secs(15), s.message())
        .await
        .expect("no event within the wait")
        .unwrap()
        .expect("stream ended")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_history_receipts_and_the_sync_stream_over_grpc() {
    let (_dir, srv, mut client, [alice, bob, carol]) = setup(1).await;
    let conv = direct(&srv, &alice).await;

    // Bob follows his stream: synced, and the conversation's creation (in
    // either order: the fan-out runs just behind the commit).
    let mut stream = client
        .sync(authed(pb::SyncRequest { after: 0 }, &bob))
        .await
        .unwrap()
        .into_inner();
    let (mut created, mut synced) = (false, false);
    while !(created && synced) {
        match next_event(&mut stream).await.kind {
            Some(pb::event::Kind::Membership(m)) => created |= m.added == vec![1, 2],
            Some(pb::event::Kind::Synced(_)) => synced = true,
            other => panic!("{other:?}"),
        }
    }

    // A binary body, sent twice with one client id.
    let body = vec![0xff, 0x00, 0x01, 0xfe];
    let send = pb::SendRequest {
        conv,
        client_msg_id: "g1".into(),
        kind: String::new(),
        body: body.clone(),
        expires_in_ms: 0,
        reply_to: 0,
        mentions: Vec::new(),
        text: String::new(),
        payloads: Vec::new(),
    };
    let a = client
        .send(authed(send.clone(), &alice))
        .await
        .unwrap()
        .into_inner();
    let again = client
        .send(authed(send, &alice))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((a.seq, a.duplicate), (1, false));
    assert_eq!((again.seq, again.ts, again.duplicate), (1, a.ts, true));

    // Live on Bob's stream, exactly once.
    let ev = next_event(&mut stream).await;
    let Some(pb::event::Kind::Message(m)) = ev.kind else {
        panic!("{ev:?}")
    };
    assert_eq!(m.seq, 1);
    let msg = m.message.unwrap();
    assert_eq!(
        (msg.body, msg.sender, msg.kind.as_str()),
        (body.clone(), 1, "text")
    );

    // History and the conversation list.
    let h = client
        .history(authed(
            pb::HistoryRequest {
                conv,
                before: 0,
                limit: 10,
                ..Default::default()
            },
            &bob,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(h.messages.len(), 1);
    assert_eq!(h.messages[0].body, body);
    assert_eq!(h.next_before, 0);
    let list = client
        .conversations(authed(pb::ConversationsRequest::default(), &bob))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.conversations.len(), 1);
    assert_eq!(
        (list.conversations[0].conv, list.conversations[0].unread),
        (conv, 1)
    );
    let e = &list.conversations[0];
    assert_eq!((e.kind.as_str(), e.member_count), ("direct", 2));
    assert_eq!(
        e.last_message.as_ref().map(|m| m.body.clone()),
        Some(body.clone())
    );
    assert!(list.next_before.is_empty());
    let r = client
        .set_receipt(authed(
            pb::ReceiptRequest {
                conv,
                delivered: 0,
                read: 1,
            },
            &bob,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((r.delivered, r.read), (1, 1));

    // A reply names the message it answers; history carries the name.
    let reply = |to: u64, cid: &str| pb::SendRequest {
        conv,
        client_msg_id: cid.into(),
        kind: String::new(),
        body: b"re".to_vec(),
        expires_in_ms: 0,
        reply_to: to,
        mentions: Vec::new(),
        text: String::new(),
        payloads: Vec::new(),
    };
    let r = client
        .send(authed(reply(1, "b1"), &bob))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.seq, 2);
    let h = client
        .history(authed(
            pb::HistoryRequest {
                conv,
                before: 0,
                limit: 10,
                ..Default::default()
            },
            &alice,
        ))
        .await
        .unwrap()
        .into_inner();
    let replies: Vec<(u64, u64)> = h.messages.iter().map(|m| (m.seq, m.reply_to)).collect();
    assert_eq!(replies, vec![(2, 1), (1, 0)]);
    let e = client.send(authed(reply(9, "b2"), &bob)).await.unwrap_err();
    assert_eq!(
        (e.code(), error_code(&e).as_str()),
        (Code::NotFound, "no_such_message")
    );

    // Edit, react and unsend: the same rules as the other edges.
    let r = client
        .edit(authed(
            pb::EditRequest {
                conv,
                seq: 2,
                body: b"re!".to_vec(),
                text: String::new(),
            },
            &bob,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(r.changed && r.at > 0);
    let e = client
        .edit(authed(
            pb::EditRequest {
                conv,
                seq: 2,
                body: b"not yours".to_vec(),
                text: String::new(),
            },
            &alice,
        ))
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), error_code(&e).as_str()),
        (Code::PermissionDenied, "forbidden")
    );
    let react = |add: bool| pb::ReactRequest {
        conv,
        seq: 2,
        emoji: "👍".into(),
        add,
    };
    assert!(
        client
            .react(authed(react(true), &alice))
            .await
            .unwrap()
            .into_inner()
            .changed
    );
    let page = |who: &str| {
        authed(
            pb::HistoryRequest {
                conv,
                before: 0,
                limit: 10,
                ..Default::default()
            },
            who,
        )
    };
    let h = client.history(page(&alice)).await.unwrap().into_inner();
    let m = &h.messages[0];
    assert_eq!((m.seq, m.body.as_slice(), m.edits), (2, &b"re!"[..], 1));
    let got: Vec<(String, u32, bool)> = m
        .reactions
        .iter()
        .map(|r| (r.emoji.clone(), r.count, r.mine))
        .collect();
    assert_eq!(got, [("👍".to_string(), 1, true)]);
    assert!(
        !client
            .history(page(&bob))
            .await
            .unwrap()
            .into_inner()
            .messages[0]
            .reactions[0]
            .mine
    );
    let r = client
        .unsend(authed(pb::MessageRef { conv, seq: 2 }, &bob))
        .await
        .unwrap()
        .into_inner();
    assert!(r.changed);
    let h = client.history(page(&alice)).await.unwrap().into_inner();
    let m = &h.messages[0];
    assert!(
        m.unsent_at > 0 && m.unsent_by == m.sender && m.body.is_empty() && m.reactions.is_empty()
    );
    let e = client.react(authed(react(true), &alice)).await.unwrap_err();
    assert_eq!(
        (e.code(), error_code(&e).as_str()),
        (Code::NotFound, "no_such_message")
    );

    // Pins and blocks.
    let r = client
        .pin(authed(
            pb::PinRequest {
                conv,
                seq: 1,
                pin: true,
            },
            &bob,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(r.changed);
    let pins = client
        .pins(authed(pb::ConversationRequest { conv }, &alice))
        .await
        .unwrap()
        .into_inner()
        .pins;
    assert_eq!(
        pins.iter().map(|p| (p.seq, p.by)).collect::<Vec<_>>(),
        [(1, 2)]
    );
    assert!(pins[0].message.is_some());
    let e = client
        .pins(authed(pb::ConversationRequest { conv }, &carol))
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), error_code(&e).as_str()),
        (Code::PermissionDenied, "not_a_member")
    );
    let b = client
        .block(authed(
            pb::BlockRequest {
                user: 1,
                block: true,
            },
            &bob,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(b.blocked);
    let e = client
        .send(authed(reply(0, "blocked-1"), &alice))
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), error_code(&e).as_str()),
        (Code::PermissionDenied, "blocked")
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let list = client
            .blocks(authed(pb::BlocksRequest {}, &bob))
            .await
            .unwrap()
            .into_inner()
            .users;
        if list.iter().any(|u| u.user == 1) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{list:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    client
        .block(authed(
            pb::BlockRequest {
                user: 1,
                block: false,
            },
            &bob,
        ))
        .await
        .unwrap();

    // Mentions raise the mentioned member's count in their list.
    let mut m = reply(0, "mention-1");
    m.mentions = vec![1, 99];
    let sent = client.send(authed(m, &bob)).await.unwrap().into_inner();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let list = client
            .conversations(authed(pb::ConversationsRequest::default(), &alice))
            .await
            .unwrap()
            .into_inner()
            .conversations;
        let entry = list.iter().find(|e| e.conv == conv).unwrap();
        if entry.mentions == 1 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{entry:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let h = client.history(page(&alice)).await.unwrap().into_inner();
    let m = h.messages.iter().find(|m| m.seq == sent.seq).unwrap();
    assert_eq!(m.mentions, [1], "only members count");

    // Settings: either member of a direct conversation; bad values and
    // non-members are refused.
    let configure = |history: &str, retention: &str, days: u32| pb::ConfigureRequest {
        conv,
        history: history.into(),
        keep_edits: Some(true),
        retention: retention.into(),
        retention_days: days,
        encrypted: None,
        push_previews: None,
    };
    let info = client
        .configure(authed(configure("joined", "days", 3), &alice))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        info.settings,
        Some(pb::Settings {
            history: "joined".into(),
            keep_edits: true,
            retention: "days".into(),
            retention_days: 3,
        })
    );
    assert!(!info.push_previews);
    let previews = pb::ConfigureRequest {
        push_previews: Some(true),
        ..configure("", "", 0)
    };
    let previews = pb::ConfigureRequest {
        keep_edits: None,
        ..previews
    };
    let info = client
        .configure(authed(previews, &alice))
        .await
        .unwrap()
        .into_inner();
    assert!(info.push_previews, "{info:?}");
    let e = client
        .configure(authed(configure("sometimes", "", 0), &alice))
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), error_code(&e).as_str()),
        (Code::InvalidArgument, "invalid")
    );
    let e = client
        .configure(authed(configure("shared", "", 0), &carol))
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), error_code(&e).as_str()),
        (Code::PermissionDenied, "not_a_member")
    );
    let info = client
        .conversation(authed(pb::ConversationRequest { conv }, &bob))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.settings.map(|s| s.retention_days), Some(3));

    // Errors: no token, someone else's conversation, a bad page size.
    let e = client
        .history(Request::new(pb::HistoryRequest {
            conv,
            before: 0,
            limit: 10,
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), error_code(&e).as_str()),
        (Code::Unauthenticated, "unauthorized")
    );
    let e = client
        .history(authed(
            pb::HistoryRequest {
                conv,
                before: 0,
                limit: 10,
                ..Default::default()
            },
            &carol,
        ))
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), error_code(&e).as_str()),
        (Code::PermissionDenied, "not_a_member")
    );
    let e = client
        .history(authed(
            pb::HistoryRequest {
                conv,
                before: 0,
                limit: 1000,
                ..Default::default()
            },
            &bob,
        ))
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), error_code(&e).as_str()),
        (Code::InvalidArgument, "invalid")
    );

    // Shutdown ends the open stream instead of waiting on it.
    srv.shutdown().await.unwrap();
    let end = tokio::time::timeout(Duration::from_secs(10), async {
        // Events still queued (Bob's own receipt) come first.
        while let Ok(Some(_)) = stream.message().await {}
    })
    .await;
    assert!(end.is_ok(), "the stream outlived the server");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_only_client_manages_conversations_devices_and_its_profile() {
    let (_dir, srv, mut client, [alice, bob, carol]) = setup(7).await;
    let code = |e: tonic::Status| (e.code(), error_code(&e));

    // A direct conversation: created once, found the second time.
    let first = client
        .create_direct(authed(pb::CreateDirectRequest { peer: 2 }, &alice))
        .await
        .unwrap()
        .into_inner();
    let second = client
        .create_direct(authed(pb::CreateDirectRequest { peer: 1 }, &bob))
        .await
        .unwrap()
        .into_inner();
    assert!(first.created && !second.created);
    assert_eq!(first.conv, second.conv);
    let e = client
        .create_direct(authed(pb::CreateDirectRequest { peer: 1 }, &alice))
        .await
        .unwrap_err();
    assert_eq!(code(e), (Code::InvalidArgument, "invalid".into()));

    // A group: Alice its admin; Bob may not remove Carol until promoted.
    let g = client
        .create_group(authed(
            pb::CreateGroupRequest {
                name: "trip".into(),
                members: vec![2, 3],
            },
            &alice,
        ))
        .await
        .unwrap()
        .into_inner();
    let info_client = client.clone();
    let info = |who: String| {
        let mut client = info_client.clone();
        async move {
            client
                .conversation(authed(pb::ConversationRequest { conv: g.conv }, &who))
                .await
                .map(|r| r.into_inner())
        }
    };
    let i = info(carol.clone()).await.unwrap();
    assert_eq!(
        (
            i.kind.as_str(),
            i.name.as_str(),
            i.members.clone(),
            i.admins.clone()
        ),
        ("group", "trip", vec![1, 2, 3], vec![1])
    );
    let change = |remove: Vec<u64>, promote: Vec<u64>, rename: &str| pb::ChangeMembersRequest {
        conv: g.conv,
        add: vec![],
        remove,
        promote,
        rename: rename.into(),
    };
    let e = client
        .change_members(authed(change(vec![3], vec![], ""), &bob))
        .await
        .unwrap_err();
    assert_eq!(code(e), (Code::PermissionDenied, "forbidden".into()));
    let e = client
        .change_members(authed(change(vec![], vec![], ""), &alice))
        .await
        .unwrap_err();
    assert_eq!(code(e), (Code::InvalidArgument, "invalid".into()));
    client
        .change_members(authed(change(vec![], vec![2], "trip 2026"), &alice))
        .await
        .unwrap();
    let r = client
        .change_members(authed(change(vec![3], vec![], ""), &bob))
        .await
        .unwrap()
        .into_inner();
    assert!(r.seq > 0);
    // Carol is out: she can no longer see it.
    let e = info(carol.clone()).await.unwrap_err();
    assert_eq!(code(e), (Code::PermissionDenied, "not_a_member".into()));
    let left = client
        .leave(authed(pb::ConversationRequest { conv: g.conv }, &bob))
        .await
        .unwrap()
        .into_inner();
    assert!(left.seq > r.seq && left.version > r.version);
    let i = info(alice.clone()).await.unwrap();
    assert_eq!(
        (i.name.as_str(), i.members, i.admins),
        ("trip 2026", vec![1], vec![1])
    );
    assert_eq!(i.last_seq, left.seq, "every change is a system message");

    // Profile and devices of the calling device (Carol's device 7).
    client
        .set_profile(authed(
            pb::SetProfileRequest {
                display_name: "Carol".into(),
            },
            &carol,
        ))
        .await
        .unwrap();
    let p = client
        .profile(authed(pb::ProfileRequest { user: 3 }, &alice))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((p.user, p.display_name.as_str()), (3, "Carol"));
    let e = client
        .set_profile(authed(
            pb::SetProfileRequest {
                display_name: "x".repeat(300),
            },
            &carol,
        ))
        .await
        .unwrap_err();
    assert_eq!(code(e), (Code::InvalidArgument, "invalid".into()));
    let dev = client
        .register_device(authed(
            pb::RegisterDeviceRequest {
                name: "Carol's phone".into(),
                platform: "android".into(),
            },
            &carol,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(dev.device, 7);
    let set = client
        .set_push_token(authed(
            pb::PushTokenRequest {
                token: "fcm-token".into(),
            },
            &carol,
        ))
        .await
        .unwrap()
        .into_inner();
    let cleared = client
        .set_push_token(authed(
            pb::PushTokenRequest {
                token: String::new(),
            },
            &carol,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(set.push && !cleared.push);
    let list = client
        .devices(authed(pb::DevicesRequest {}, &carol))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.devices.len(), 1);
    assert_eq!(
        (
            list.devices[0].device,
            list.devices[0].name.as_str(),
            list.devices[0].platform.as_str()
        ),
        (7, "Carol's phone", "android")
    );
    srv.shutdown().await.unwrap();
}

async fn next_live(s: &mut tonic::Streaming<pb::LiveEvent>) -> pb::live_event::Kind {
    tokio::time::timeout(Duration::from_secs(15), s.message())
        .await
        .expect("no live event within the wait")
        .unwrap()
        .expect("stream ended")
        .kind
        .expect("an event of a known kind")
}

/// Typing and presence for a gRPC-only client: `Live` makes its caller
/// online and carries the watched users' presence and other members'
/// typing; `Typing` announces.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typing_and_presence_over_grpc() {
    let (_dir, srv, mut client, [alice, bob, carol]) = setup(1).await;
    let conv = direct(&srv, &alice).await;

    // Alice watches Bob (a contact) and Carol (not one: hidden).
    let mut live = client
        .live(authed(pb::LiveRequest { watch: vec![2, 3] }, &alice))
        .await
        .unwrap()
        .into_inner();
    let pb::live_event::Kind::Now(now) = next_live(&mut live).await else {
        panic!("the first event is the presence now")
    };
    assert_eq!(now.hidden, vec![3]);
    assert_eq!(now.users.len(), 1);
    assert_eq!((now.users[0].user, now.users[0].online), (2, false));

    // Bob's Live stream makes him online.
    let bob_live = client
        .live(authed(pb::LiveRequest { watch: vec![] }, &bob))
        .await
        .unwrap()
        .into_inner();
    let pb::live_event::Kind::Presence(p) = next_live(&mut live).await else {
        panic!("a presence change")
    };
    assert_eq!((p.user, p.online), (2, true));

    // Bob types; Alice's stream says so.
    client
        .typing(authed(pb::TypingRequest { conv, typing: true }, &bob))
        .await
        .unwrap();
    let pb::live_event::Kind::Typing(t) = next_live(&mut live).await else {
        panic!("a typing event")
    };
    assert_eq!((t.conv, t.user, t.typing), (conv, 2, true));

    // Carol is no member: refused with the stable code.
    let e = client
        .typing(authed(pb::TypingRequest { conv, typing: true }, &carol))
        .await
        .unwrap_err();
    assert_eq!(error_code(&e), "not_a_member", "{e:?}");
    // A watch list over the limit is bad input.
    let e = client
        .live(authed(
            pb::LiveRequest {
                watch: (1..=501).collect(),
            },
            &carol,
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");

    // Bob's stream closes: offline, with when.
    drop(bob_live);
    let pb::live_event::Kind::Presence(p) = next_live(&mut live).await else {
        panic!("a presence change")
    };
    assert_eq!((p.user, p.online), (2, false));
    assert!(p.last_seen_micros > 0);
    srv.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_call_echoes_a_request_id_in_its_metadata() {
    let (_dir, srv, mut client, [alice, _, _]) = setup(1).await;
    let id = |m: &tonic::metadata::MetadataMap| {
        m.get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    // The server makes one…
    let a = client
        .blocks(authed(pb::BlocksRequest {}, &alice))
        .await
        .unwrap();
    let b = client
        .blocks(authed(pb::BlocksRequest {}, &alice))
        .await
        .unwrap();
    let (first, second) = (id(a.metadata()), id(b.metadata()));
    assert!(!first.is_empty() && first != second, "{first:?} {second:?}");
    // …keeps the client's own…
    let mut req = authed(pb::BlocksRequest {}, &alice);
    req.metadata_mut()
        .insert("x-request-id", "client-chosen-7".parse().unwrap());
    let r = client.blocks(req).await.unwrap();
    assert_eq!(id(r.metadata()), "client-chosen-7");
    // …and names it on a refusal too.
    let e = client
        .blocks(authed(pb::BlocksRequest {}, "not a token"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    assert!(!id(e.metadata()).is_empty(), "{e:?}");
    srv.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_over_grpc_finds_text_never_bytes() {
    let (_dir, srv, mut client, [alice, bob, carol]) = setup(1).await;
    let conv = direct(&srv, &alice).await;
    let send = |cid: &str, text: &str, body: &[u8]| pb::SendRequest {
        conv,
        client_msg_id: cid.into(),
        text: text.into(),
        body: body.to_vec(),
        ..Default::default()
    };
    // `text` is indexed; the same words as bytes in `body` are not.
    let t = client
        .send(authed(
            send("t1", "Lunch at Zoë's? 東京駅 at noon", b""),
            &alice,
        ))
        .await
        .unwrap()
        .into_inner();
    client
        .send(authed(send("b1", "", b"lunch secret"), &alice))
        .await
        .unwrap();
    let e = client
        .send(authed(send("x1", "both", b"both"), &alice))
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), error_code(&e).as_str()),
        (Code::InvalidArgument, "invalid")
    );
    let search = |query: &str| pb::SearchRequest {
        query: query.into(),
        ..Default::default()
    };
    let r = client
        .search(authed(search("zoe"), &bob))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.hits.len(), 1, "{r:?}");
    let hit = &r.hits[0];
    assert_eq!(hit.message.as_ref().map(|m| m.seq), Some(t.seq));
    assert_eq!(hit.snippet, "Lunch at Zoë's? 東京駅 at noon");
    // "Zoë's" is one word (UAX #29): characters 9..14.
    assert_eq!(
        hit.highlights
            .iter()
            .map(|h| (h.start, h.end))
            .collect::<Vec<_>>(),
        vec![(9, 14)]
    );
    assert!(r.next.is_empty());
    for q in ["東京 ", "lunch "] {
        let r = client
            .search(authed(search(q), &alice))
            .await
            .unwrap()
            .into_inner();
        let seqs: Vec<u64> = r
            .hits
            .iter()
            .filter_map(|h| h.message.as_ref())
            .map(|m| m.seq)
            .collect();
        assert_eq!(seqs, vec![t.seq], "{q}");
    }
    // Carol is not in the conversation: nothing, and a filter naming it
    // is refused like any conversation-scoped call.
    let r = client
        .search(authed(search("lunch"), &carol))
        .await
        .unwrap()
        .into_inner();
    assert!(r.hits.is_empty());
    let e = client
        .search(authed(
            pb::SearchRequest {
                conv,
                ..search("lunch")
            },
            &carol,
        ))
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), error_code(&e).as_str()),
        (Code::PermissionDenied, "not_a_member")
    );
    let e = client
        .search(authed(search("..."), &alice))
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), error_code(&e).as_str()),
        (Code::InvalidArgument, "invalid")
    );
    // An edit given as text re-indexes; as bytes, the message leaves the
    // index.
    let edit = |text: &str, body: &[u8]| pb::EditRequest {
        conv,
        seq: t.seq,
        text: text.into(),
        body: body.to_vec(),
    };
    client
        .edit(authed(edit("dinner instead", b""), &alice))
        .await
        .unwrap();
    let hits = |r: pb::SearchReply| r.hits.len();
    let searcher = client.clone();
    let found = |q: &'static str| {
        let mut c = searcher.clone();
        let tok = bob.clone();
        async move {
            hits(
                c.search(authed(search(q), &tok))
                    .await
                    .unwrap()
                    .into_inner(),
            )
        }
    };
    assert_eq!((found("dinner").await, found("lunch").await), (1, 0));
    client
        .edit(authed(edit("", b"dinner as bytes"), &alice))
        .await
        .unwrap();
    assert_eq!(found("dinner").await, 0);
    srv.shutdown().await.unwrap();
}
