//! Fuzz targets for every decoder Missive feeds with bytes it did not
//! write in this process: from disk (log segments, tables, manifests,
//! received snapshots, stored records), from peers (Raft entries and
//! transport frames, cluster signals) and from users (WebSocket frames,
//! HTTP bodies, config files).
//!
//! # Layout
//!
//! - `src/lib.rs` — the targets: each a `fn(&[u8])` that must not panic,
//!   whatever the bytes, and checks what decodes re-encodes to the same
//!   value. The engine's and server's decoders are reached through their
//!   crates' `fuzzing` modules (the internals stay private); the runtime's
//!   and chat's are public.
//! - `fuzz_targets/` — one libFuzzer binary per target, for `cargo fuzz`
//!   (feature `libfuzzer`).
//! - `corpus/<target>/` — seed inputs, encoded by this build's own writers
//!   (`tests/seeds.rs` makes them) and kept small; `regressions/<target>/`
//!   — every input that once failed, named for what it found.
//! - `tests/replay.rs` — the short run in the test suite: every corpus and
//!   regression input, then a fixed number of seeded mutations of them, per
//!   target.
//! - `run` — the long, coverage-guided run (cargo fuzz, libFuzzer) behind
//!   `MISSIVE_FUZZ_SECONDS`.
//!
//! docs/reliability.md lists the targets with executions and findings.

use std::sync::OnceLock;

use serde::de::DeserializeOwned;
use serde::Serialize;

use missive_chat::records::{self, *};
use missive_chat::ChatApp;
use missive_raft::storage::codec;
use missive_raft::storage::snapshot::SnapshotReader;
use missive_raft::transport::{read_frame, write_frame};
use missive_raft::types::{LogId, Vote};
use missive_raft::TypeConfig;

use missive_engine::fuzzing::put_crc;

pub use missive_engine::fuzzing::{
    bloom, log_segment, manifest, table_block, table_file, write_batch,
};
pub use missive_server::fuzzing::{config, http_body, signal, ws_frame};

/// One fuzz target: its name (the `fuzz_targets/` file and the corpus
/// folder) and its entry point.
pub type Target = (&'static str, fn(&[u8]));

/// Every target.
pub const TARGETS: &[Target] = &[
    ("log_segment", log_segment),
    ("table_block", table_block),
    ("table_file", table_file),
    ("bloom", bloom),
    ("manifest", manifest),
    ("write_batch", write_batch),
    ("raft_entry", raft_entry),
    ("raft_meta", raft_meta),
    ("transport_frame", transport_frame),
    ("snapshot_file", snapshot_file),
    ("chat_record", chat_record),
    ("ws_frame", ws_frame),
    ("http_body", http_body),
    ("config", config),
    ("signal", signal),
];

fn runtime() -> Option<&'static tokio::runtime::Runtime> {
    static RT: OnceLock<Option<tokio::runtime::Runtime>> = OnceLock::new();
    RT.get_or_init(|| tokio::runtime::Builder::new_current_thread().build().ok())
        .as_ref()
}

/// What decodes re-encodes to bytes that decode to the same value.
fn round_trip<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(
    what: &'static str,
    bytes: &[u8],
) {
    if let Ok(v) = records::decode::<T>(what, bytes) {
        let again = records::encode(&v).unwrap_or_default();
        assert_eq!(records::decode::<T>(what, &again).ok(), Some(v), "{what}");
    }
}

/// A record with its own versioned codec: what `decode` reads, `encode`
/// writes back to bytes that decode to the same value.
fn versioned<T: PartialEq + std::fmt::Debug, E>(
    decode: impl Fn(&[u8]) -> Result<T, E>,
    encode: impl Fn(&T) -> Result<Vec<u8>, E>,
    bytes: &[u8],
) {
    if let Ok(v) = decode(bytes) {
        let again = encode(&v).unwrap_or_default();
        assert_eq!(decode(&again).ok(), Some(v));
    }
}

/// A Raft log entry as the log store reads it back (chat commands in
/// batches, membership, blank); what decodes re-encodes stably.
pub fn raft_entry(data: &[u8]) {
    type C = TypeConfig<ChatApp>;
    if let Ok(e) = codec::decode_entry::<C>(data) {
        let Ok(once) = codec::encode_entry(&e) else {
            panic!("a decoded entry does not encode");
        };
        let twice = codec::decode_entry::<C>(&once).and_then(|e| codec::encode_entry(&e));
        assert_eq!(twice.ok(), Some(once), "an entry re-encodes stably");
    }
}

/// The Raft meta records (vote, committed, purged) and the applied state,
/// the first byte picking which.
pub fn raft_meta(data: &[u8]) {
    let Some((&pick, b)) = data.split_first() else {
        return;
    };
    match pick % 4 {
        0 => round_trip::<Vote>("vote", b),
        1 => round_trip::<Option<LogId>>("committed", b),
        2 => round_trip::<LogId>("purged", b),
        _ => {
            if let Ok(a) = codec::decode::<missive_raft::storage::meta::Applied>("applied", b) {
                let again = codec::encode("applied", &a).unwrap_or_default();
                let twice =
                    codec::decode::<missive_raft::storage::meta::Applied>("applied", &again)
                        .and_then(|a| codec::encode("applied", &a));
                assert_eq!(twice.ok(), Some(again));
            }
        }
    }
}

/// A transport frame as a peer's connection reads it (the checksum
/// resealed, so the body decoder is reached); what decodes is written and
/// read back to the same bytes.
pub fn transport_frame(data: &[u8]) {
    let Some(rt) = runtime() else { return };
    let mut sealed = data.to_vec();
    if sealed.len() >= 8 {
        let len = u32::from_le_bytes([sealed[0], sealed[1], sealed[2], sealed[3]]) as usize;
        put_crc(&mut sealed, 4, 8..8usize.saturating_add(len));
    }
    for bytes in [data, &sealed[..]] {
        rt.block_on(async {
            let mut r = bytes;
            let Ok(wire) = read_frame::<ChatApp, _>(&mut r).await else {
                return;
            };
            let mut once = Vec::new();
            if write_frame(&mut once, &wire).await.is_err() {
                return;
            }
            let mut back = &once[..];
            let Ok(again) = read_frame::<ChatApp, _>(&mut back).await else {
                panic!("a frame written from a decoded one does not read back");
            };
            let mut twice = Vec::new();
            let _ = write_frame(&mut twice, &again).await;
            assert_eq!(once, twice, "a frame re-encodes stably");
        });
    }
}

/// A received snapshot file (its chunks' checksums resealed), read chunk by
/// chunk as installing it does.
pub fn snapshot_file(data: &[u8]) {
    let mut sealed = data.to_vec();
    let mut pos = 5;
    while let Some(h) = sealed.get(pos..pos + 8) {
        let len = u32::from_le_bytes([h[0], h[1], h[2], h[3]]) as usize;
        let Some(end) = (pos + 8).checked_add(len).filter(|&e| e <= sealed.len()) else {
            break;
        };
        put_crc(&mut sealed, pos + 4, pos + 8..end);
        pos = end;
    }
    let path = missive_engine::fuzzing::scratch_file("snapshot.bin");
    for bytes in [data, &sealed[..]] {
        if std::fs::write(&path, bytes).is_err() {
            return;
        }
        let opened = SnapshotReader::open(&path);
        // The open file outlives the name.
        let _ = std::fs::remove_file(&path);
        let Ok(mut r) = opened else {
            continue;
        };
        // Each chunk holds at least its header's bytes: a bounded loop.
        for _ in 0..=bytes.len() / 8 {
            match r.next_chunk() {
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
    }
}

/// A stored chat record or key, the first byte picking which decoder.
pub fn chat_record(data: &[u8]) {
    let Some((&pick, b)) = data.split_first() else {
        return;
    };
    match pick % 24 {
        0 => versioned(decode_message, encode_message, b),
        1 => versioned(decode_conversation, encode_conversation, b),
        2 => versioned(decode_indexed, encode_indexed, b),
        3 => versioned(decode_user_conv, encode_user_conv, b),
        4 => round_trip::<OutboxEntry>("outbox entry", b),
        5 => round_trip::<InboxEvent>("inbox event", b),
        6 => round_trip::<Receipt>("receipt", b),
        7 => round_trip::<Pins>("pins", b),
        8 => round_trip::<Blocks>("blocks", b),
        9 => round_trip::<Device>("device", b),
        10 => round_trip::<Profile>("profile", b),
        11 => round_trip::<PushTarget>("push target", b),
        12 => round_trip::<TicketUses>("ticket uses", b),
        13 => round_trip::<Revocations>("revocations", b),
        14 => round_trip::<Reactions>("reactions", b),
        15 => round_trip::<Head>("head", b),
        16 => round_trip::<UserHead>("user head", b),
        17 => round_trip::<OutboxHead>("outbox head", b),
        18 => round_trip::<Dedup>("dedup", b),
        19 => round_trip::<Hidden>("hidden", b),
        20 => round_trip::<BlockedUser>("blocked user", b),
        21 => round_trip::<missive_chat::apply::SystemEvent>("system event", b),
        22 => {
            if let Some((conv, eseq)) = decode_outbox_key(b) {
                assert_eq!(
                    decode_outbox_key(&outbox_key(conv, eseq)),
                    Some((conv, eseq))
                );
            }
        }
        _ => {
            let _ = missive_engine::keys::decode_message_key(b);
        }
    }
}
