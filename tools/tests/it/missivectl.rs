//! Every missivectl command on a real data directory written by the engine,
//! healthy and damaged.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests panic on surprises"
)]

use std::path::{Path, PathBuf};
use std::process::Command;

use missive_engine::keys::{message_key, ConversationId, Timestamp};
use missive_engine::log::LogOptions;
use missive_engine::lsm::{Db, DbOptions, LsmOptions, WriteBatch};
use serde_json::Value;

fn ctl(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_missivectl"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

fn json(args: &[&str]) -> Value {
    let mut a = args.to_vec();
    a.push("--json");
    let (code, out, err) = ctl(&a);
    assert_eq!(code, 0, "{args:?} failed: {err}{out}");
    serde_json::from_str(&out).unwrap()
}

/// A Db directory with flushed, compacted and still-in-the-log messages.
fn data_dir() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    let opts = DbOptions {
        log: LogOptions {
            segment_size: 64 << 10,
            ..LogOptions::default()
        },
        lsm: LsmOptions {
            block_size: 1024,
            background: false,
            ..LsmOptions::default()
        },
    };
    let db = Db::open(tmp.path(), opts).unwrap();
    let write = |from: u64, to: u64| {
        for i in from..to {
            let mut b = WriteBatch::new();
            b.put(
                message_key(ConversationId(i % 10), Timestamp(i + 1)),
                format!("hello from message {i}, how are you today?").into_bytes(),
            );
            db.write(&b).unwrap();
        }
    };
    write(0, 500);
    db.flush().unwrap();
    write(500, 1000);
    db.compact_full().unwrap();
    write(1000, 1200); // stays in the log
    drop(db);
    tmp
}

fn tables(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir.join("lsm/tables"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    v.sort();
    v
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn healthy_directory() {
    let tmp = data_dir();
    let d = s(tmp.path());

    let (code, out, _) = ctl(&["log", "dump", d]);
    assert_eq!(code, 0);
    assert!(out.contains(" seq ") && out.contains(" records "), "{out}");
    let log = json(&["log", "dump", d, "--records"]);
    let segs = log["segments"].as_array().unwrap();
    let kinds: Vec<&str> = segs
        .iter()
        .flat_map(|s| s["record_list"].as_array().unwrap())
        .map(|r| r["kind"].as_str().unwrap())
        .collect();
    assert!(
        kinds.contains(&"entry") && kinds.contains(&"purge"),
        "{kinds:?}"
    );

    let table = tables(tmp.path()).remove(0);
    let (code, out, _) = ctl(&["sst", "dump", s(&table)]);
    assert_eq!(code, 0);
    assert!(out.contains("msg conv="), "{out}");
    assert!(
        out.contains("format     version 2 (columnar blocks)"),
        "{out}"
    );
    let t = json(&["sst", "dump", s(&table)]);
    assert_eq!(t["entries"], 1000);
    assert_eq!(t["format_version"], 2);
    assert!(t["blocks"].as_array().unwrap().len() > 10);
    assert!(t["bloom_probes"].as_u64().unwrap() > 0);
    assert!(
        t["compression_ratio"].as_f64().unwrap() > 1.0,
        "chat-like text should compress: {t}"
    );

    let m = json(&["manifest", "dump", d]);
    assert_eq!(m["files"].as_array().unwrap().len(), 1);
    assert_eq!(m["flushed"][0][0], 1, "{m}");
    assert_eq!(m["flushed"][0][1], 1000, "{m}");

    let (code, out, err) = ctl(&["verify", d]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("every checksum holds"), "{out}");
    let v = json(&["verify", d]);
    assert_eq!(v["table_entries"], 1000);
    assert!(v["log_records"].as_u64().unwrap() >= 200);

    let st = json(&["stats", d]);
    assert_eq!(st["levels"].as_array().unwrap().len(), 7);
    assert_eq!(st["read_amplification"], 1);
    assert!((st["space_amplification"].as_f64().unwrap() - 1.0).abs() < 1e-9);

    let sim = json(&["compaction-sim", "--flushes", "60", "--flush-mib", "16"]);
    assert!(sim["write_amplification"].as_f64().unwrap() >= 1.0, "{sim}");
    assert_eq!(sim["flushed_bytes"], 60u64 * 16 * (1 << 20));
}

#[test]
fn damaged_table_is_reported_with_file_and_offset() {
    let tmp = data_dir();
    let table = tables(tmp.path()).remove(0);
    let mut bytes = std::fs::read(&table).unwrap();
    bytes[200] ^= 0xFF; // inside the first data block, which starts at 0
    std::fs::write(&table, bytes).unwrap();
    let (code, _, err) = ctl(&["verify", s(tmp.path())]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(s(&table)) && err.contains("byte offset 0"),
        "{err}"
    );
    let (code, out, _) = ctl(&["verify", s(tmp.path()), "--json"]);
    assert_eq!(code, 1);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (v["ok"].as_bool(), v["corruption"].as_bool()),
        (Some(false), Some(true)),
        "{v}"
    );
    let (code, _, err) = ctl(&["sst", "dump", s(&table)]);
    assert_eq!(code, 1, "{err}");
}

#[test]
fn damaged_log_is_reported_with_file_and_offset() {
    let tmp = data_dir();
    let log = json(&["log", "dump", s(tmp.path()), "--records"]);
    let seg = &log["segments"][0];
    let path = PathBuf::from(seg["path"].as_str().unwrap());
    let rec = &seg["record_list"][3];
    let offset = rec["offset"].as_u64().unwrap();
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[offset as usize + 30] ^= 0x01;
    std::fs::write(&path, bytes).unwrap();
    let (code, _, err) = ctl(&["verify", s(tmp.path())]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(s(&path)) && err.contains(&format!("byte offset {offset}")),
        "{err}"
    );
}

#[test]
fn missing_directory_and_bad_usage_exit_2() {
    let (code, _, err) = ctl(&["verify", "/nonexistent/missive"]);
    assert_eq!(code, 2, "{err}");
    let (code, _, _) = ctl(&["frobnicate"]);
    assert_eq!(code, 2);
    let empty = tempfile::tempdir().unwrap();
    let (code, _, err) = ctl(&["verify", s(empty.path())]);
    assert_eq!(code, 2);
    assert!(err.contains("neither a log nor an LSM"), "{err}");
}

#[test]
fn residue_finds_bytes_in_tables_and_log_and_says_when_they_are_absent() {
    let dir = data_dir();
    // Message 7 was flushed and compacted into a table; message 1100 is
    // only in the log.
    for (needle, place) in [
        ("hello from message 7,", "table entry"),
        ("hello from message 1100,", "log record"),
    ] {
        let (code, out, err) = ctl(&["residue", s(dir.path()), "--text", needle]);
        assert_eq!(code, 1, "{needle}: {err}{out}");
        assert!(out.contains(place), "{needle}: {out}");
    }
    let (code, out, _) = ctl(&["residue", s(dir.path()), "--hex", "00ff00ff00ff00ff13"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("not found"), "{out}");
    let v = json(&["residue", s(dir.path()), "--text", "never written"]);
    assert_eq!(v["found"], serde_json::json!([]), "{v}");
    assert!(v["table_entries"].as_u64().unwrap() > 0, "{v}");
    let (code, _, err) = ctl(&["residue", s(dir.path()), "--hex", "zz"]);
    assert_eq!(code, 2, "{err}");
    let (code, _, _) = ctl(&["residue", s(dir.path())]);
    assert_eq!(code, 2, "neither --text nor --hex");
}
