//! The seed corpora, made by this build's own writers.
//!
//! `MISSIVE_WRITE_CORPUS=1 cargo test -p missive-fuzz --test seeds` writes
//! `corpus/<target>/` anew from: a small store's log segment, table and
//! manifest (the engine), chat's pinned format fixtures (Raft entries and
//! meta, transport frames, a received snapshot, every stored record),
//! protocol.md's frame examples, the HTTP bodies below, docs' config
//! example and the cluster signals. Without it, the test checks that
//! every target has a corpus in the repository.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use std::path::{Path, PathBuf};

use missive_fuzz::TARGETS;
use missive_server::delivery::presence::Signal;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

/// `[u16 LE name length][name][u32 LE length][bytes]` repeated: chat's
/// fixture container (chat/tests/it/formats.rs).
fn fixtures(set: &str) -> Vec<(String, Vec<u8>)> {
    let path = fuzz_dir().join(format!("../chat/tests/fixtures/v1/{set}.bin"));
    let b = std::fs::read(&path).unwrap();
    let (mut i, mut out) = (0, Vec::new());
    while i < b.len() {
        let n = u16::from_le_bytes([b[i], b[i + 1]]) as usize;
        let name = String::from_utf8(b[i + 2..i + 2 + n].to_vec()).unwrap();
        i += 2 + n;
        let l = u32::from_le_bytes(b[i..i + 4].try_into().unwrap()) as usize;
        out.push((name, b[i + 4..i + 4 + l].to_vec()));
        i += 4 + l;
    }
    out
}

/// chat_record's first byte for a fixture name (see `chat_record`).
fn record_pick(name: &str) -> Option<u8> {
    let table: &[(&str, u8)] = &[
        ("message", 0),
        ("conversation", 1),
        ("seq_index_value", 2),
        ("user_conv", 3),
        ("outbox_entry", 4),
        ("inbox_event", 5),
        ("receipt", 6),
        ("pins", 7),
        ("blocks", 8),
        ("device", 9),
        ("profile", 10),
        ("push_target", 11),
        ("ticket_uses", 12),
        ("revocations", 13),
        ("reactions", 14),
        ("head", 15),
        ("user_head", 16),
        ("outbox_head", 17),
        ("dedup", 18),
        ("hidden", 19),
        ("blocked_user", 20),
        ("system_event", 21),
        ("key_outbox", 22),
        ("key_message", 23),
    ];
    let base = name.split("_v").next().unwrap_or(name);
    table
        .iter()
        .find(|(n, _)| *n == base || *n == name)
        .map(|&(_, p)| p)
}

fn all_seeds() -> Vec<(&'static str, String, Vec<u8>)> {
    let tmp = tempfile::tempdir().unwrap();
    let mut out = missive_engine::fuzzing::seeds(tmp.path()).unwrap();
    for (name, bytes) in fixtures("entries") {
        let meta = |p: u8| ("raft_meta", name.clone(), [&[p][..], &bytes].concat());
        out.push(match name.as_str() {
            "meta_vote" => meta(0),
            "meta_committed" | "meta_committed_none" => meta(1),
            "meta_purged" => meta(2),
            "retired_shards" => continue,
            _ => ("raft_entry", name.clone(), bytes.clone()),
        });
    }
    for (name, bytes) in fixtures("records") {
        if name == "applied" {
            out.push(("raft_meta", name.clone(), [&[3u8][..], &bytes].concat()));
        }
        if let Some(p) = record_pick(&name) {
            out.push(("chat_record", name, [&[p][..], &bytes].concat()));
        }
    }
    for (name, bytes) in fixtures("frames") {
        out.push(("transport_frame", name, bytes));
    }
    for (name, bytes) in fixtures("snapshot") {
        out.push(("snapshot_file", name, bytes));
    }
    // Every JSON frame example of the protocol (client and server ones
    // alike: both are frames a parser must survive).
    let protocol = std::fs::read_to_string(fuzz_dir().join("../docs/protocol.md")).unwrap();
    let mut n = 0;
    for line in protocol.lines() {
        let line = line.trim_start_matches("→ ").trim();
        if line.starts_with("{\"type\"") && line.ends_with('}') {
            n += 1;
            out.push((
                "ws_frame",
                format!("protocol_{n:03}"),
                line.as_bytes().to_vec(),
            ));
        }
    }
    let bodies: &[(u8, &str, &str)] = &[
        (
            0,
            "send",
            r#"{"client_msg_id":"c1","body":"hello","mentions":["2"],"reply_to":3}"#,
        ),
        (
            0,
            "send_b64",
            r#"{"client_msg_id":"c2","kind":"text","body_b64":"aGk=","expires_in_ms":60000}"#,
        ),
        (1, "edit", r#"{"body":"hello again"}"#),
        (
            2,
            "settings",
            r#"{"history_visibility":"joined","retention_days":30,"days":7}"#,
        ),
        (3, "mint", r#"{"user":"1","device":"1","ttl_secs":3600}"#),
        (4, "revoke", r#"{"devices":["2","3"]}"#),
        (5, "profile", r#"{"display_name":"Ada"}"#),
        (6, "device", r#"{"name":"phone","platform":"ios"}"#),
        (7, "push", r#"{"token":"abc"}"#),
        (8, "create_direct", r#"{"kind":"direct","peer":"2"}"#),
        (
            8,
            "create_group",
            r#"{"kind":"group","name":"g","members":["2","3"]}"#,
        ),
        (9, "rename", r#"{"name":"new name"}"#),
        (
            10,
            "members",
            r#"{"add":["4"],"remove":["3"],"promote":["2"]}"#,
        ),
        (11, "receipt", r#"{"delivered":4,"read":3}"#),
        (12, "add_replica", r#"{"node":2,"addr":"127.0.0.2:7100"}"#),
        (
            13,
            "move_replica",
            r#"{"from":1,"to":3,"addr":"127.0.0.3:7100"}"#,
        ),
    ];
    for (pick, name, body) in bodies {
        out.push((
            "http_body",
            name.to_string(),
            [&[*pick][..], body.as_bytes()].concat(),
        ));
    }
    // The config examples: every ```toml block of the docs and README.
    for doc in ["../docs/protocol.md", "../docs/design.md", "../README.md"] {
        let text = std::fs::read_to_string(fuzz_dir().join(doc)).unwrap();
        for (i, block) in text.split("```toml").skip(1).enumerate() {
            let body = block.split("```").next().unwrap_or("");
            let stem = Path::new(doc)
                .file_stem()
                .unwrap()
                .to_string_lossy()
                .to_lowercase();
            out.push(("config", format!("{stem}_{i}"), body.as_bytes().to_vec()));
        }
    }
    let signals = [
        Signal::Online {
            node: 1,
            users: vec![1, 2, 3],
        },
        Signal::Offline {
            node: 2,
            user: 7,
            at: 1_795_603_118_298_777,
        },
        Signal::Typing {
            conv: 9,
            user: 1,
            typing: true,
            to: vec![2],
        },
        Signal::Revoked { user: 4 },
    ];
    for (i, s) in signals.iter().enumerate() {
        out.push(("signal", format!("signal_{i}"), s.encode()));
    }
    out
}

#[test]
fn every_target_has_a_seed_corpus() {
    let corpus = fuzz_dir().join("corpus");
    if std::env::var_os("MISSIVE_WRITE_CORPUS").is_some() {
        let seeds = all_seeds();
        for (target, _) in TARGETS {
            let dir = corpus.join(target);
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
        }
        for (target, name, bytes) in seeds {
            std::fs::write(corpus.join(target).join(name), bytes).unwrap();
        }
    }
    for (target, _) in TARGETS {
        let n = std::fs::read_dir(corpus.join(target)).map_or(0, |d| d.count());
        assert!(
            n > 0,
            "no seed corpus for {target}: run with MISSIVE_WRITE_CORPUS=1"
        );
    }
}
