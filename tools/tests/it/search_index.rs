//! `missivectl shard search-index` over three real nodes on loopback: a
//! healthy index matches the messages; after every replica loses one
//! message's bit and gains a stray posting behind Raft's back (what an older build
//! or a bug could leave), the check exits 1 naming both, `--repair`
//! rebuilds them through Raft, a second check is clean, and search finds
//! the message again.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests panic on surprises"
)]

use crate::common;

use serde_json::{json, Value};

use missive_chat::ids::Seq;
use missive_chat::search::postings;
use missive_engine::keys::ConversationId;
use missive_engine::lsm::WriteBatch;

use common::{call, ctl, ok};

#[test]
fn a_damaged_index_is_found_and_rebuilt_through_raft() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let common::Trio { nodes, urls, .. } = rt.block_on(common::three_nodes(dir.path(), "s", 2));
    let (alice, conv, messages) = rt.block_on(async {
        let alice = ok(
            reqwest::Method::POST,
            format!("{}/v1/admin/tokens", urls[0]),
            None,
            json!({"user": 1, "device": 1}),
        )
        .await["token"]
            .as_str()
            .unwrap()
            .to_string();
        let v = ok(
            reqwest::Method::POST,
            format!("{}/v1/conversations", urls[1]),
            Some(&alice),
            json!({"kind": "direct", "peer": "2"}),
        )
        .await;
        let conv = v["conv"].as_str().unwrap().to_string();
        let mut seq = 0;
        for (i, body) in ["an apple a day", "banana bread", "apple crumble"]
            .iter()
            .enumerate()
        {
            seq = ok(
                reqwest::Method::POST,
                format!("{}/v1/conversations/{conv}/messages", urls[i % 3]),
                Some(&alice),
                json!({"client_msg_id": format!("m{i}"), "body": body}),
            )
            .await["seq"]
                .as_u64()
                .unwrap();
        }
        // Fill the first bucket, so that its postings are written.
        let mut i = 3;
        while !postings::seals(Seq(seq)) {
            seq = ok(
                reqwest::Method::POST,
                format!("{}/v1/conversations/{conv}/messages", urls[i % 3]),
                Some(&alice),
                json!({"client_msg_id": format!("m{i}"), "body": "filler"}),
            )
            .await["seq"]
                .as_u64()
                .unwrap();
            i += 1;
        }
        (alice, conv, seq)
    });
    let conv_id = ConversationId(conv.parse().unwrap());
    let shard = nodes[0].node().slots().shard_of(conv_id).0.to_string();
    let check = |url: &str, repair: bool| {
        let mut args = vec![
            "shard",
            "search-index",
            "--url",
            url,
            "--shard",
            &shard,
            "--json",
        ];
        if repair {
            args.push("--repair");
        }
        let (code, out, err) = ctl(&args);
        let v: Value = serde_json::from_str(&out).unwrap_or_else(|_| panic!("{err}{out}"));
        (code, v)
    };
    let (code, v) = check(&urls[2], false);
    assert_eq!(code, 0, "{v}");
    assert_eq!(
        (
            v["messages"].as_u64(),
            v["missing"].as_u64(),
            v["stale"].as_u64()
        ),
        (Some(messages), Some(0), Some(0)),
        "{v}"
    );

    // Every replica loses the newest "apple" message's bit and gains a
    // stray "cherry" posting, behind Raft's back — once it has applied the
    // bucket's seal (a follower may still be behind the leader that
    // acknowledged it).
    for n in &nodes {
        let lsm = n.node().lsm();
        let key = postings::posting_key(conv_id, b"apple", 0);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let mut apple = loop {
            if let Some(v) = lsm.get(&key).unwrap() {
                break postings::decode(&v).unwrap();
            }
            assert!(
                std::time::Instant::now() < deadline,
                "a replica has not sealed the bucket after 30 s"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        let seqs: Vec<Seq> = apple.seqs(0).collect();
        assert_eq!(seqs.len(), 2, "{seqs:?}");
        apple.bits &= !postings::bit(seqs[0]);
        let mut cherry = postings::Posting::default();
        cherry.add(seqs[1], None, true);
        let mut b = WriteBatch::new();
        b.put(key, postings::encode(&apple).unwrap());
        b.put(
            postings::posting_key(conv_id, b"cherry", 0),
            postings::encode(&cherry).unwrap(),
        );
        lsm.apply(&b, None).unwrap();
    }
    let search = |q: &str| {
        rt.block_on(async {
            let (s, v) = call(
                reqwest::Method::GET,
                format!("{}/v1/search?q={q}", urls[0]),
                Some(&alice),
                None,
            )
            .await;
            assert_eq!(s, 200, "{v}");
            v["hits"].as_array().unwrap().len()
        })
    };
    assert_eq!(search("apple"), 1, "the damaged posting hides a message");

    let (code, v) = check(&urls[0], false);
    assert_eq!(code, 1, "damage exits 1: {v}");
    assert_eq!(
        (v["missing"].as_u64(), v["stale"].as_u64()),
        (Some(1), Some(1)),
        "{v}"
    );
    assert!(v["examples"].to_string().contains("cherry"), "{v}");
    let (code, v) = check(&urls[1], true);
    assert_eq!(code, 0, "{v}");
    assert_eq!(
        (v["written"].as_u64(), v["dropped"].as_u64()),
        (Some(1), Some(1)),
        "{v}"
    );
    let (code, v) = check(&urls[2], false);
    assert_eq!(code, 0, "{v}");
    assert_eq!(
        (v["missing"].as_u64(), v["stale"].as_u64()),
        (Some(0), Some(0)),
        "{v}"
    );
    assert_eq!(search("apple"), 2);
    // The text names what it found.
    let (code, out, _) = ctl(&[
        "shard",
        "search-index",
        "--url",
        &urls[0],
        "--shard",
        &shard,
    ]);
    assert_eq!(code, 0);
    assert!(out.contains("the index matches the messages"), "{out}");
    for n in nodes {
        rt.block_on(n.shutdown()).unwrap();
    }
}
