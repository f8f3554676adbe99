//! Media leaves every replica's disk once no live message names it: three
//! real nodes (loopback, 3 replicas), a file with a unique marker
//! uploaded and sent, then unsent; `missivectl media gc` collects it and,
//! after `missivectl node scrub` on each node, `missivectl residue` finds
//! the marker on no replica — while a file still sent is still found.
//! On the way, `missivectl media list | inspect | verify` show what is
//! stored and check it.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests panic on surprises"
)]

use crate::common;

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use common::{call, ctl, found, upload};

#[test]
fn collected_media_leaves_no_byte_on_any_replica_after_a_scrub() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let common::Trio { nodes, urls, cfgs } = rt.block_on(common::three_nodes(dir.path(), "m", 2));
    let nonce = common::nonce();
    let gone = format!("media-bytes-{nonce}-collect-me");
    let kept = format!("media-bytes-{nonce}-still-sent");
    let (conv, ids) = rt.block_on(async {
        let (s, v) = call(
            reqwest::Method::POST,
            format!("{}/v1/admin/tokens", urls[0]),
            None,
            Some(json!({"user": "1", "device": "1"})),
        )
        .await;
        assert_eq!(s, 200, "{v}");
        let alice = v["token"].as_str().unwrap().to_owned();
        let (s, v) = call(
            reqwest::Method::POST,
            format!("{}/v1/conversations", urls[0]),
            Some(&alice),
            Some(json!({"kind": "direct", "peer": "2"})),
        )
        .await;
        assert_eq!(s, 201, "{v}");
        let conv = v["conv"].as_str().unwrap().to_owned();
        let mut seqs = Vec::new();
        let mut ids = Vec::new();
        for (i, text) in [&gone, &kept].into_iter().enumerate() {
            // 1.5 MiB: two chunks, the marker in each.
            let mut body = text.repeat((3 << 19) / text.len() + 1).into_bytes();
            body.truncate(3 << 19);
            let id = upload(&urls[0], &alice, &body).await;
            let m = json!({"media_id": id, "mime": "application/octet-stream", "size": body.len()});
            let (s, v) = call(
                reqwest::Method::POST,
                format!("{}/v1/conversations/{conv}/messages", urls[0]),
                Some(&alice),
                Some(json!({"client_msg_id": format!("m{i}"), "kind": "media", "body": m.to_string()})),
            )
            .await;
            assert_eq!(s, 200, "{v}");
            seqs.push(v["seq"].as_u64().unwrap());
            ids.push(id);
        }
        let (s, v) = call(
            reqwest::Method::DELETE,
            format!("{}/v1/conversations/{conv}/messages/{}", urls[0], seqs[0]),
            Some(&alice),
            None,
        )
        .await;
        assert_eq!(s, 200, "{v}");
        (conv, ids)
    });
    // What the operator sees: both objects, each whole; the kept one named
    // by its message.
    let json = |args: &[&str]| {
        let (code, out, err) = ctl(args);
        (
            code,
            serde_json::from_str::<Value>(&out).unwrap_or(Value::Null),
            err,
        )
    };
    let (code, v, err) = json(&["--json", "media", "list", "--url", &urls[2]]);
    assert_eq!(code, 0, "{err}");
    let mut listed: Vec<&str> = v["objects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["media_id"].as_str().unwrap())
        .collect();
    listed.sort_unstable();
    let mut want: Vec<&str> = ids.iter().map(String::as_str).collect();
    want.sort_unstable();
    assert_eq!(listed, want, "{v}");
    assert_eq!(v["bytes"], 2 * (3 << 19), "{v}");
    let (code, v, err) = json(&["--json", "media", "inspect", "--url", &urls[1], &ids[1]]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(v["size"], 3 << 19, "{v}");
    assert_eq!(v["uploaders"], json!(["1"]), "{v}");
    assert!(v["upload_record"]["media_id"] == ids[1].as_str(), "{v}");
    let refs = v["references"].as_array().unwrap();
    assert_eq!(refs.len(), 1, "{v}");
    assert_eq!(refs[0]["conversation"], conv.as_str(), "{v}");
    let (code, v, err) = json(&["--json", "media", "verify", "--url", &urls[0]]);
    assert_eq!(code, 0, "{err}{v}");
    assert_eq!(v["objects"], 2, "{v}");
    assert_eq!(v["damaged"], json!([]), "{v}");
    let (code, _, err) = ctl(&["media", "inspect", "--url", &urls[0], &"ab".repeat(32)]);
    assert_eq!(code, 2, "an unknown id is an error");
    assert!(err.contains("no_such_media"), "{err}");
    // Every replica has both files before the collection.
    for c in &cfgs {
        let deadline = Instant::now() + Duration::from_secs(15);
        while !(found(&c.data_dir, &gone) && found(&c.data_dir, &kept)) && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(200));
        }
        assert!(found(&c.data_dir, &gone), "{}", c.data_dir.display());
    }
    let (code, out, err) = ctl(&[
        "--json",
        "media",
        "gc",
        "--url",
        &urls[1],
        "--grace-secs",
        "0",
    ]);
    assert_eq!(code, 0, "{err}{out}");
    let report: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["objects_deleted"], 1, "{report}");
    assert_eq!(report["live_references"], 1, "{report}");
    let (code, v, err) = json(&["--json", "media", "verify", "--url", &urls[2]]);
    assert_eq!(code, 0, "{err}{v}");
    assert_eq!(v["objects"], 1, "only the sent file is left: {v}");
    for u in &urls {
        let (code, out, err) = ctl(&["node", "scrub", "--url", u]);
        assert_eq!(code, 0, "{err}{out}");
    }
    for c in &cfgs {
        let d = &c.data_dir;
        assert!(
            !found(d, &gone),
            "{}: collected media still on disk",
            d.display()
        );
        assert!(
            found(d, &kept),
            "{}: media still sent is missing",
            d.display()
        );
    }
    rt.block_on(async {
        for n in nodes {
            n.shutdown().await.unwrap();
        }
    });
}
