//! Every stored and wire format, pinned to bytes checked in under
//! `tests/fixtures/v1/`: Raft log entries carrying every command, the log's
//! meta records, every stored record and its key, every transport frame,
//! a received-snapshot file and the node identity file.
//!
//! Each case is a value built here and the bytes an earlier build wrote for
//! it. A case passes only if this build (1) decodes the stored bytes and
//! (2) encodes the value to exactly those bytes — so a moved type, a
//! renumbered enum variant or a reordered field fails here, not on an
//! operator's data directory. A fixture file whose case is no longer built
//! here fails too (`every_stored_case_is_checked`): a format is retired on
//! purpose, never by accident.
//!
//! `MISSIVE_WRITE_FIXTURES=1 cargo test -p missive-chat --test it formats::`
//! writes the files anew; do that only for a format that is new, never to
//! make a failing case pass.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::{CommittedLeaderId, EntryPayload, Membership};
use serde::de::DeserializeOwned;
use serde::Serialize;

use missive_chat::apply::SystemEvent;
use missive_chat::command::{
    Command, ConversationKind, Delivery, DeviceId, MessageKind, NewMessage, Outcome, RejectCode,
    SendMessage, UserId,
};

use missive_chat::records::{self, *};
use missive_chat::{ChatApp, Eseq, Seq, Useq};
use missive_engine::keys::ConversationId;
use missive_raft::cluster::cluster_map;
use missive_raft::cluster::directory::{ClusterMap, ShardEntry};
use missive_raft::cluster::membership::{Change, Placement};
use missive_raft::cluster::slots::SlotMap;
use missive_raft::storage::meta::{
    applied_key, cluster_map_key, directory_range, frozen_key, owner_key, Applied, Frozen, Owner,
};
use missive_raft::storage::snapshot::ChunkCursor;
use missive_raft::transport::{read_frame, write_frame, ReadOp, ReadResult, RemoteFailure};
use missive_raft::types::{LogId, NodeAddr, SnapshotMeta, StoredMembership, Vote};

// The runtime's types as the chat domain instantiates them.
type Batch = missive_raft::app::Batch<ChatApp>;
type Entry = missive_raft::types::Entry<ChatApp>;
type Wire = missive_raft::transport::Wire<ChatApp>;
type Rpc = missive_raft::transport::Rpc<ChatApp>;
type Reply = missive_raft::transport::Reply<ChatApp>;
use missive_raft::{storage::codec, ShardId};

// ---------------------------------------------------------------------------
// The fixture container: `[u16 LE name length][name][u32 LE length][bytes]`
// repeated, one file per set.

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/v1")
}

fn writing() -> bool {
    std::env::var_os("MISSIVE_WRITE_FIXTURES").is_some_and(|v| v == "1")
}

fn read_set(set: &str) -> BTreeMap<String, Vec<u8>> {
    let path = fixture_dir().join(format!("{set}.bin"));
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut out = BTreeMap::new();
    let mut rest = bytes.as_slice();
    while !rest.is_empty() {
        let n = u16::from_le_bytes(rest[..2].try_into().unwrap()) as usize;
        let name = std::str::from_utf8(&rest[2..2 + n]).unwrap().to_string();
        rest = &rest[2 + n..];
        let len = u32::from_le_bytes(rest[..4].try_into().unwrap()) as usize;
        out.insert(name, rest[4..4 + len].to_vec());
        rest = &rest[4 + len..];
    }
    out
}

fn write_set(set: &str, cases: &BTreeMap<String, Vec<u8>>) {
    let mut out = Vec::new();
    for (name, bytes) in cases {
        out.extend_from_slice(&(name.len() as u16).to_le_bytes());
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
        out.extend_from_slice(bytes);
    }
    std::fs::create_dir_all(fixture_dir()).unwrap();
    std::fs::write(fixture_dir().join(format!("{set}.bin")), out).unwrap();
}

/// One set's cases as this build produces them; compared with (or, when
/// writing, stored as) the set's file when dropped through [`Set::finish`].
struct Set {
    name: &'static str,
    cases: BTreeMap<String, Vec<u8>>,
    failures: Vec<String>,
}

impl Set {
    fn new(name: &'static str) -> Self {
        Set {
            name,
            cases: BTreeMap::new(),
            failures: Vec::new(),
        }
    }

    /// Records `bytes` (this build's encoding of case `name`) and, unless
    /// writing, checks `decodes` on the stored bytes.
    fn case(
        &mut self,
        name: &str,
        bytes: Vec<u8>,
        decodes: impl FnOnce(&[u8]) -> Result<(), String>,
    ) {
        assert!(
            self.cases.insert(name.to_string(), bytes).is_none(),
            "case {name} twice"
        );
        if writing() {
            return;
        }
        let stored = STORED
            .lock()
            .unwrap()
            .entry(self.name)
            .or_insert_with(|| read_set(self.name))
            .clone();
        match stored.get(name) {
            None => self.failures.push(format!("{name}: no stored bytes")),
            Some(old) => {
                if let Err(e) = decodes(old) {
                    self.failures
                        .push(format!("{name}: stored bytes do not decode: {e}"));
                }
                if old != &self.cases[name] {
                    self.failures.push(format!(
                        "{name}: this build encodes {:02x?}, stored {:02x?}",
                        self.cases[name], old
                    ));
                }
            }
        }
    }

    /// A value whose encoding is `codec::encode` (`[1][postcard]`): it must
    /// decode to an equal value.
    fn versioned<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(
        &mut self,
        name: &str,
        v: &T,
    ) {
        let bytes = codec::encode("fixture", v).unwrap();
        self.case(name, bytes, |b| {
            let got: T = codec::decode("fixture", b).map_err(|e| e.to_string())?;
            (&got == v).then_some(()).ok_or(format!("decoded {got:?}"))
        });
    }

    /// Raw key bytes.
    fn key(&mut self, name: &str, k: Vec<u8>) {
        self.case(name, k, |_| Ok(()));
    }

    fn finish(self) {
        if writing() {
            write_set(self.name, &self.cases);
            return;
        }
        let stored = read_set(self.name);
        let mut failures = self.failures;
        for name in stored.keys() {
            if !self.cases.contains_key(name) {
                failures.push(format!("{name}: stored, but no longer built by this test"));
            }
        }
        assert!(
            failures.is_empty(),
            "{} format cases differ from tests/fixtures/v1/{}.bin:\n{}",
            self.name,
            self.name,
            failures.join("\n")
        );
    }
}

static STORED: Mutex<BTreeMap<&'static str, BTreeMap<String, Vec<u8>>>> =
    Mutex::new(BTreeMap::new());

// ---------------------------------------------------------------------------
// The values.

/// Checks that `b` decodes to `want`, and that the retention rule's
/// prefix-only read of `expires_at` agrees with the full decode.
fn message_decodes(b: &[u8], want: &Message) -> Result<(), String> {
    let got = records::decode_message(b).map_err(|e| e.to_string())?;
    if &got != want {
        return Err(format!("decoded {got:?}"));
    }
    match records::message_expires_at(b) {
        Ok(at) if at == want.expires_at => Ok(()),
        other => Err(format!("expires_at read alone: {other:?}")),
    }
}

fn log_id(term: u64, node: u64, index: u64) -> LogId {
    LogId::new(CommittedLeaderId::new(term, node), index)
}

fn conv() -> ConversationId {
    ConversationId(0x0123_4567_89ab_cdef)
}

/// Commands added after the first fixtures (replies; edits, unsends and
/// reactions; erasure; restore): the frames and batches that pinned "every command" then
/// (`normal_batch_of_all`, `request_append`) leave them out, so their
/// stored bytes stay what they were.
const SINCE_REPLIES: &[&str] = &[
    "post_reply",
    "post",
    "edit",
    "unsend",
    "react",
    "pin",
    "block",
    "hide",
    "send",
    "configure",
    "erase_messages",
    "erase_user",
    "restore",
    "raise_heads",
    "checkpoint",
    "send_text",
    "edit_text",
];

/// Commands added with search: their write frames come after every
/// earlier frame, so the earlier ones keep their request ids.
const SINCE_SEARCH: &[&str] = &["send_text", "edit_text", "repair_index"];

/// Commands added with media: their write frames come after every
/// earlier frame (search's `read_app` included).
const SINCE_MEDIA: &[&str] = &[
    "create_upload",
    "append_upload",
    "finish_upload",
    "store_object",
    "grant_media",
    "touch_object",
    "delete_object",
    "drop_upload",
    "drop_reference",
    "revoke_grant",
];

/// Whether a command came after the first fixtures.
fn later(name: &str) -> bool {
    SINCE_REPLIES.contains(&name)
        || SINCE_SEARCH.contains(&name)
        || SINCE_MEDIA.contains(&name)
        || SINCE_E2EE.contains(&name)
        || SINCE_PUSH.contains(&name)
        || SINCE_PREVIEWS.contains(&name)
}

/// Commands added with push previews: after every earlier frame.
const SINCE_PREVIEWS: &[&str] = &["set_push_previews"];

/// Commands added with the durable push outbox: after every earlier frame.
const SINCE_PUSH: &[&str] = &["push_done", "push_retry", "push_dead", "push_replay"];

fn push_job() -> missive_chat::push::PushJob {
    missive_chat::push::PushJob {
        conv: conv(),
        seq: Seq(5),
        sender: UserId(8),
        at: 1_700_000_000_000_005,
        devices: vec![DeviceId(1), DeviceId(3)],
        attempts: 2,
        next_micros: 1_700_000_004_000_000,
        since_micros: 1_700_000_000_000_005,
    }
}

/// Commands added with end-to-end encryption: their write frames come
/// after every earlier frame (media's included).
const SINCE_E2EE: &[&str] = &[
    "publish_keys",
    "claim_keys",
    "remove_keys",
    "encrypt",
    "note_keys",
];

fn signed_pre_key() -> missive_chat::e2ee::SignedPreKey {
    missive_chat::e2ee::SignedPreKey {
        id: 7,
        key: [0x11; 32],
        signature: [0x22; 64],
    }
}

fn device_keys() -> missive_chat::e2ee::DeviceKeys {
    missive_chat::e2ee::DeviceKeys {
        identity: [0x33; 32],
        signed: signed_pre_key(),
        since_micros: 1_700_000_000_000_003,
        first: 4,
        next: 9,
    }
}

/// Outcomes added with search, appended after every earlier frame.
fn outcomes_since_search() -> Vec<(&'static str, Outcome)> {
    vec![
        (
            "reindexed",
            Outcome::Reindexed {
                written: 3,
                dropped: 1,
            },
        ),
        ("upload", Outcome::Upload(upload_record())),
        (
            "stored",
            Outcome::Stored {
                upload: 0x0102_0304_0506_0708,
            },
        ),
        ("granted", Outcome::Granted),
        (
            "object_deleted",
            Outcome::ObjectDeleted {
                deleted: true,
                upload: 0x0102_0304_0506_0708,
                uploaders: vec![UserId(7)],
                size: 3 << 20,
            },
        ),
        (
            "keys",
            Outcome::Keys {
                change: Some(missive_chat::e2ee::KeyChange::Added),
                remaining: 5,
            },
        ),
        (
            "claimed",
            Outcome::Claimed {
                bundles: vec![missive_chat::command::Bundle {
                    device: DeviceId(2),
                    keys: device_keys(),
                    one_time: Some(missive_chat::e2ee::OneTimeKey {
                        id: 40,
                        key: [0x44; 32],
                    }),
                }],
            },
        ),
        ("encrypted_on", Outcome::EncryptedOn { changed: true }),
        (
            "rejected_encrypted",
            Outcome::Rejected {
                code: RejectCode::Encrypted,
                message: "encrypted".into(),
            },
        ),
        ("push", Outcome::Push { changed: 2 }),
        (
            "push_previews",
            Outcome::PushPreviews {
                on: true,
                changed: true,
            },
        ),
    ]
}

fn image_info() -> missive_chat::media::image::ImageInfo {
    missive_chat::media::image::ImageInfo {
        width: 4032,
        height: 3024,
        placeholder: vec![1, 2, 3, 250],
        thumbs: vec![missive_chat::media::image::ThumbInfo {
            size: 96,
            width: 96,
            height: 72,
            mime: "image/jpeg".into(),
        }],
    }
}

fn media_hash() -> [u8; 32] {
    std::array::from_fn(|i| (i as u8).wrapping_mul(37))
}

fn upload_record() -> missive_chat::media::records::Upload {
    missive_chat::media::records::Upload {
        owner: UserId(7),
        length: 3 << 20,
        received: 1 << 20,
        mime: "image/png".into(),
        name: "grüße.png".into(),
        created_at: 1_700_000_000_000_001,
        state: missive_chat::media::records::UploadState::Finished {
            hash: media_hash(),
            kept: true,
        },
    }
}

/// The commands of the first fixtures.
fn commands_v1() -> Vec<(&'static str, Command)> {
    commands()
        .into_iter()
        .filter(|(name, _)| !later(name))
        .collect()
}

/// One of every command, with every optional field set somewhere.
fn commands() -> Vec<(&'static str, Command)> {
    vec![
        (
            "create_conversation",
            Command::CreateConversation {
                conv: conv(),
                kind: ConversationKind::Group,
                name: "the team".into(),
                creator: UserId(7),
                members: vec![UserId(7), UserId(8), UserId(300)],
                max_members: 250,
            },
        ),
        (
            "create_direct",
            Command::CreateConversation {
                conv: ConversationId(5),
                kind: ConversationKind::Direct,
                name: String::new(),
                creator: UserId(1),
                members: vec![UserId(2)],
                max_members: 250,
            },
        ),
        (
            "change_members",
            Command::ChangeMembers {
                conv: conv(),
                actor: UserId(7),
                add: vec![UserId(9)],
                remove: vec![UserId(8)],
                promote: vec![UserId(9)],
                rename: Some("renamed".into()),
                max_members: 250,
            },
        ),
        (
            "append_message",
            Command::AppendMessage {
                conv: conv(),
                sender: UserId(7),
                device: DeviceId(2),
                client_msg_id: "c-1".into(),
                kind: MessageKind::Text,
                body: b"hello \xff".to_vec(),
                expires_at: Some(1_700_000_000_000_000),
            },
        ),
        (
            "append_message_kinds",
            Command::AppendMessage {
                conv: conv(),
                sender: UserId(7),
                device: DeviceId(2),
                client_msg_id: String::new(),
                kind: MessageKind::Unsend,
                body: Vec::new(),
                expires_at: None,
            },
        ),
        (
            "set_receipt",
            Command::SetReceipt {
                conv: conv(),
                user: UserId(8),
                delivered: Some(Seq(10)),
                read: None,
            },
        ),
        (
            "deliver",
            Command::Deliver {
                items: vec![
                    Delivery {
                        user: UserId(8),
                        conv: conv(),
                        eseq: Eseq(3),
                        event: EventKind::Message {
                            seq: Seq(2),
                            ts: 1_700_000_000_000_001,
                            sender: UserId(7),
                            expires_at: None,
                        },
                        at: 1_700_000_000_000_001,
                    },
                    Delivery {
                        user: UserId(8),
                        conv: conv(),
                        eseq: Eseq(4),
                        event: EventKind::Receipt {
                            user: UserId(7),
                            delivered: Seq(2),
                            read: Seq(1),
                        },
                        at: 1_700_000_000_000_002,
                    },
                    Delivery {
                        user: UserId(8),
                        conv: conv(),
                        eseq: Eseq(5),
                        event: EventKind::Membership {
                            version: 2,
                            added: vec![UserId(9)],
                            removed: vec![UserId(8)],
                        },
                        at: 1_700_000_000_000_003,
                    },
                ],
            },
        ),
        (
            "outbox_done",
            Command::OutboxDone {
                done: vec![(conv(), Eseq(5)), (ConversationId(6), Eseq(1))],
            },
        ),
        (
            "register_device",
            Command::RegisterDevice {
                user: UserId(7),
                device: DeviceId(2),
                name: "Ana's phone".into(),
                platform: "ios".into(),
            },
        ),
        (
            "set_profile",
            Command::SetProfile {
                user: UserId(7),
                display_name: "Ana".into(),
            },
        ),
        (
            "set_push_token",
            Command::SetPushToken {
                user: UserId(7),
                device: DeviceId(2),
                token: Some("tok".into()),
            },
        ),
        (
            "clear_push_token",
            Command::SetPushToken {
                user: UserId(7),
                device: DeviceId(3),
                token: None,
            },
        ),
        (
            "register_node",
            Command::RegisterNode {
                node: 3,
                addr: "127.0.0.3:7000".into(),
                slots: SlotMap::even(4).unwrap(),
            },
        ),
        ("forget_node", Command::ForgetNode { node: 4 }),
        (
            "report_placement",
            Command::ReportPlacement {
                shard: ShardId(2),
                voters: BTreeSet::from([1, 2, 3]),
                learners: BTreeSet::from([4]),
                config_index: 17,
            },
        ),
        (
            "post_reply",
            Command::Post(NewMessage {
                conv: conv(),
                sender: UserId(7),
                device: DeviceId(2),
                client_msg_id: "c-2".into(),
                kind: MessageKind::Text,
                body: b"me too".to_vec(),
                expires_at: Some(1_700_000_000_000_000),
                reply_to: Some(Seq(1)),
            }),
        ),
        (
            "post",
            Command::Post(NewMessage {
                conv: conv(),
                sender: UserId(7),
                device: DeviceId(2),
                client_msg_id: String::new(),
                kind: MessageKind::Media,
                body: Vec::new(),
                expires_at: None,
                reply_to: None,
            }),
        ),
        (
            "edit",
            Command::Edit {
                conv: conv(),
                actor: UserId(7),
                seq: Seq(2),
                body: b"me too!".to_vec(),
                window_micros: 900_000_000,
            },
        ),
        (
            "unsend",
            Command::Unsend {
                conv: conv(),
                actor: UserId(7),
                seq: Seq(2),
                window_micros: 172_800_000_000,
                admins_may: true,
            },
        ),
        (
            "react",
            Command::React {
                conv: conv(),
                user: UserId(8),
                seq: Seq(2),
                emoji: "👍".into(),
                add: true,
            },
        ),
        (
            "pin",
            Command::Pin {
                conv: conv(),
                actor: UserId(8),
                seq: Seq(2),
                pin: true,
            },
        ),
        (
            "block",
            Command::Block {
                pair: missive_chat::direct_id(UserId(7), UserId(8)),
                blocker: UserId(7),
                target: UserId(8),
                block: true,
            },
        ),
        (
            "hide",
            Command::Hide {
                conv: conv(),
                user: UserId(8),
                seq: Seq(2),
            },
        ),
        (
            "send",
            Command::Send(SendMessage {
                message: NewMessage {
                    conv: conv(),
                    sender: UserId(7),
                    device: DeviceId(2),
                    client_msg_id: "c-9".into(),
                    kind: MessageKind::Text,
                    body: b"@bo hi".to_vec(),
                    expires_at: None,
                    reply_to: Some(Seq(2)),
                },
                mentions: vec![UserId(8), UserId(300)],
                default_retention_micros: Some(2_592_000_000_000),
            }),
        ),
        (
            "configure",
            Command::Configure {
                conv: conv(),
                actor: UserId(7),
                history: Some(HistoryVisibility::Joined),
                keep_edits: Some(true),
                retention: Some(Retention::Days(30)),
            },
        ),
        (
            "erase_messages",
            Command::EraseMessages {
                conv: conv(),
                user: UserId(8),
                after: Seq(1000),
                upto: Seq(2000),
            },
        ),
        (
            "erase_user",
            Command::EraseUser {
                user: UserId(8),
                devices: vec![DeviceId(1), DeviceId(2)],
                blocked: vec![UserId(7)],
            },
        ),
        (
            "use_ticket",
            Command::UseTicket {
                user: UserId(8),
                ticket: [0xab; 16],
                expires_secs: 1_700_000_030,
            },
        ),
        (
            "revoke_devices",
            Command::RevokeSessions {
                user: UserId(8),
                scope: missive_chat::command::RevokeScope::Devices(vec![DeviceId(2)]),
            },
        ),
        (
            "revoke_all_but",
            Command::RevokeSessions {
                user: UserId(8),
                scope: missive_chat::command::RevokeScope::AllBut(Some(DeviceId(1))),
            },
        ),
        (
            "restore",
            Command::Restore {
                pairs: vec![
                    (vec![0x10, 0, 7, 1], vec![1, 2, 3]),
                    (vec![0x30, 0, 7], vec![]),
                ],
            },
        ),
        (
            "raise_heads",
            Command::RaiseHeads {
                conv: conv(),
                seq: Seq(41),
                eseq: Eseq(97),
            },
        ),
        ("checkpoint", Command::Checkpoint),
        (
            "reserve_split",
            Command::ReserveSplit {
                parent: ShardId(2),
                at: 1500,
            },
        ),
        (
            "record_split",
            Command::RecordSplit {
                parent: ShardId(2),
                at: 1500,
                child: ShardId(9),
            },
        ),
        (
            "split",
            Command::Split {
                at: 1500,
                child: ShardId(9),
            },
        ),
        ("freeze", Command::Freeze { into: ShardId(2) }),
        (
            "merge",
            Command::Merge {
                child: ShardId(9),
                frozen_at: 4411,
                start: 1500,
                end: 2048,
            },
        ),
        (
            "record_merge",
            Command::RecordMerge {
                parent: ShardId(2),
                child: ShardId(9),
            },
        ),
        (
            "send_text",
            Command::SendText(SendMessage {
                message: NewMessage {
                    conv: conv(),
                    sender: UserId(7),
                    device: DeviceId(2),
                    client_msg_id: "c-10".into(),
                    kind: MessageKind::Text,
                    body: "Grüße aus 東京".as_bytes().to_vec(),
                    expires_at: Some(1_800_000_000_000_000),
                    reply_to: None,
                },
                mentions: vec![UserId(8)],
                default_retention_micros: None,
            }),
        ),
        (
            "edit_text",
            Command::EditText {
                conv: conv(),
                actor: UserId(7),
                seq: Seq(3),
                body: b"me three".to_vec(),
                window_micros: 900_000_000,
            },
        ),
        (
            "repair_index",
            Command::RepairIndex {
                conv: conv(),
                reindex: vec![1_700_000_000_000_005],
                drop: vec![("grüße".into(), 1_700_000_000_000_006)],
            },
        ),
        (
            "create_upload",
            Command::CreateUpload {
                upload: 0x0102_0304_0506_0708,
                owner: UserId(7),
                length: 3 << 20,
                mime: "image/png".into(),
                name: "grüße.png".into(),
            },
        ),
        (
            "append_upload",
            Command::AppendUpload {
                upload: 0x0102_0304_0506_0708,
                owner: UserId(7),
                offset: 1 << 20,
                bytes: vec![0, 1, 2, 255].into(),
            },
        ),
        (
            "finish_upload",
            Command::FinishUpload {
                upload: 0x0102_0304_0506_0708,
                owner: UserId(7),
                hash: media_hash(),
                keep: false,
            },
        ),
        (
            "store_object",
            Command::StoreObject {
                hash: media_hash(),
                upload: 0x0102_0304_0506_0708,
                size: 3 << 20,
                mime: "image/png".into(),
                image: Some(image_info()),
                thumbs: vec![(96, serde_bytes::ByteBuf::from(vec![0xff, 0xd8, 0xff]))],
                owner: UserId(7),
            },
        ),
        ("touch_object", Command::TouchObject { hash: media_hash() }),
        (
            "delete_object",
            Command::DeleteObject {
                hash: media_hash(),
                unused_since: 1_700_000_000_000_004,
            },
        ),
        (
            "drop_upload",
            Command::DropUpload {
                upload: 0x0102_0304_0506_0708,
            },
        ),
        (
            "drop_reference",
            Command::DropReference {
                conv: conv(),
                hash: media_hash(),
                seq: Seq(5),
            },
        ),
        (
            "revoke_grant",
            Command::RevokeGrant {
                user: UserId(7),
                hash: media_hash(),
            },
        ),
        (
            "grant_media",
            Command::GrantMedia {
                user: UserId(7),
                hash: media_hash(),
                grant: missive_chat::media::records::Grant {
                    size: 3 << 20,
                    mime: "image/png".into(),
                    name: "grüße.png".into(),
                    at: 1_700_000_000_000_002,
                },
            },
        ),
        (
            "publish_keys",
            Command::PublishKeys {
                user: UserId(7),
                device: DeviceId(2),
                identity: [0x33; 32],
                signed: signed_pre_key(),
                one_time: vec![missive_chat::e2ee::OneTimeKey {
                    id: 40,
                    key: [0x44; 32],
                }],
            },
        ),
        (
            "claim_keys",
            Command::ClaimKeys {
                user: UserId(7),
                devices: vec![DeviceId(1), DeviceId(2)],
            },
        ),
        (
            "remove_keys",
            Command::RemoveKeys {
                user: UserId(7),
                device: DeviceId(2),
            },
        ),
        (
            "encrypt",
            Command::Encrypt {
                conv: conv(),
                actor: UserId(7),
            },
        ),
        (
            "note_keys",
            Command::NoteKeys {
                conv: conv(),
                user: UserId(7),
                device: DeviceId(2),
                change: missive_chat::e2ee::KeyChange::IdentityChanged,
            },
        ),
        (
            "push_done",
            Command::PushDone {
                jobs: vec![(UserId(7), Useq(3)), (UserId(7), Useq(4))],
            },
        ),
        (
            "push_retry",
            Command::PushRetry {
                user: UserId(7),
                useq: Useq(3),
                devices: vec![DeviceId(2)],
                attempts: 3,
                next_micros: 1_700_000_008_000_000,
            },
        ),
        (
            "push_dead",
            Command::PushDead {
                user: UserId(7),
                useq: Useq(3),
                reason: "gateway answered 500".into(),
            },
        ),
        (
            "push_replay",
            Command::PushReplay {
                user: UserId(7),
                useq: Useq(3),
            },
        ),
        (
            "set_push_previews",
            Command::SetPushPreviews {
                conv: conv(),
                actor: UserId(7),
                on: true,
            },
        ),
    ]
}

fn outcomes() -> Vec<(&'static str, Outcome)> {
    vec![
        ("created", Outcome::Created { created: true }),
        (
            "members_changed",
            Outcome::MembersChanged {
                version: 2,
                ts: 1_700_000_000_000_000,
                seq: Seq(9),
            },
        ),
        (
            "appended",
            Outcome::Appended {
                ts: 1_700_000_000_000_000,
                seq: Seq(10),
                duplicate: true,
            },
        ),
        (
            "receipt",
            Outcome::Receipt {
                delivered: Seq(4),
                read: Seq(3),
            },
        ),
        (
            "rejected",
            Outcome::Rejected {
                code: RejectCode::NotAMember,
                message: "user 9 is not a member".into(),
            },
        ),
        (
            "delivered",
            Outcome::Delivered {
                applied: 2,
                skipped: 1,
            },
        ),
        ("done", Outcome::Done),
        ("directory", Outcome::Directory { version: 12 }),
        // Since replies (after every case above, so their frames keep
        // their request ids).
        (
            "rejected_no_such_message",
            Outcome::Rejected {
                code: RejectCode::NoSuchMessage,
                message: "no message 9".into(),
            },
        ),
        // Since edits, unsends and reactions.
        (
            "message_changed",
            Outcome::MessageChanged {
                seq: Seq(2),
                at: 1_700_000_000_000_009,
                changed: true,
            },
        ),
        (
            "rejected_too_late",
            Outcome::Rejected {
                code: RejectCode::TooLate,
                message: "too late".into(),
            },
        ),
        // Since pins and blocks.
        (
            "rejected_blocked",
            Outcome::Rejected {
                code: RejectCode::Blocked,
                message: "blocked".into(),
            },
        ),
        // Since mentions, settings and erasure.
        (
            "sent",
            Outcome::Sent {
                ts: 1_700_000_000_000_000,
                seq: Seq(11),
                duplicate: false,
                expires_at: Some(1_702_592_000_000_000),
                mentions: vec![UserId(8)],
            },
        ),
        (
            "configured",
            Outcome::Configured {
                settings: Settings {
                    history: HistoryVisibility::Joined,
                    keep_edits: true,
                    retention: Retention::Forever,
                },
                changed: true,
            },
        ),
        (
            "erased",
            Outcome::Erased {
                removed: 12,
                receipts: 1,
            },
        ),
    ]
}

fn membership() -> StoredMembership {
    let nodes: BTreeMap<u64, NodeAddr> = [
        (1, "127.0.0.1:7000"),
        (2, "127.0.0.2:7000"),
        (4, "127.0.0.4:7000"),
    ]
    .into_iter()
    .map(|(id, a)| (id, NodeAddr::new(a)))
    .collect();
    StoredMembership::new(
        Some(log_id(1, 1, 0)),
        Membership::new(vec![BTreeSet::from([1, 2])], nodes),
    )
}

fn entries() -> Vec<(String, Entry)> {
    let mut out = vec![
        (
            "blank".to_string(),
            Entry {
                log_id: log_id(2, 1, 5),
                payload: EntryPayload::Blank,
            },
        ),
        (
            "membership".to_string(),
            Entry {
                log_id: log_id(1, 1, 0),
                payload: EntryPayload::Membership(membership().membership().clone()),
            },
        ),
    ];
    for (i, (name, cmd)) in commands().into_iter().enumerate() {
        out.push((
            format!("normal_{name}"),
            Entry {
                log_id: log_id(3, 2, 100 + i as u64),
                payload: EntryPayload::Normal(Batch {
                    stamp_micros: 1_700_000_000_000_000 + i as u64,
                    commands: vec![cmd],
                }),
            },
        ));
    }
    out.push((
        "normal_batch_of_all".to_string(),
        Entry {
            log_id: log_id(3, 2, 200),
            payload: EntryPayload::Normal(Batch {
                stamp_micros: 1_700_000_000_000_999,
                commands: commands_v1().into_iter().map(|(_, c)| c).collect(),
            }),
        },
    ));
    out
}

fn entry_eq(a: &Entry, b: &Entry) -> bool {
    a.log_id == b.log_id
        && match (&a.payload, &b.payload) {
            (EntryPayload::Blank, EntryPayload::Blank) => true,
            (EntryPayload::Normal(x), EntryPayload::Normal(y)) => x == y,
            (EntryPayload::Membership(x), EntryPayload::Membership(y)) => x == y,
            _ => false,
        }
}

// ---------------------------------------------------------------------------
// The tests.

#[test]
fn raft_log_entries_and_meta_records() {
    let mut set = Set::new("entries");
    for (name, e) in entries() {
        let bytes = codec::encode_entry(&e).unwrap();
        set.case(&name, bytes, |b| {
            let got = codec::decode_entry::<missive_raft::TypeConfig<ChatApp>>(b)
                .map_err(|e| e.to_string())?;
            entry_eq(&got, &e)
                .then_some(())
                .ok_or(format!("decoded {got:?}"))
        });
    }
    set.versioned("meta_vote", &Vote::new_committed(3, 2));
    set.versioned("meta_committed", &Some(log_id(3, 2, 117)));
    set.versioned("meta_committed_none", &None::<LogId>);
    set.versioned("meta_purged", &log_id(2, 1, 50));
    set.versioned("retired_shards", &vec![2u32, 5]);
    set.finish();
}

#[test]
fn command_outcomes() {
    // Outcomes travel in forwarded writes' replies (`Reply::Write`).
    let mut set = Set::new("outcomes");
    for (name, o) in outcomes().into_iter().chain(outcomes_since_search()) {
        set.versioned(name, &o);
    }
    set.finish();
}

#[test]
fn stored_records_and_their_keys() {
    let mut set = Set::new("records");
    let group = Conversation {
        kind: ConversationKind::Group,
        name: "the team".into(),
        members: vec![UserId(7), UserId(8)],
        admins: vec![UserId(7)],
        version: 3,
        created_micros: 1_700_000_000_000_000,
        settings: Settings::default(),
        joined: Vec::new(),
        encrypted: false,
        push_previews: false,
    };
    // Version 1 (before settings and join seqs): read with the defaults.
    let group_v1 = codec::encode(
        "conversation v1",
        &(
            group.kind,
            &group.name,
            &group.members,
            &group.admins,
            group.version,
            group.created_micros,
        ),
    )
    .unwrap();
    set.case("conversation", group_v1, |b| {
        let got = records::decode_conversation(b).map_err(|e| e.to_string())?;
        (got == group)
            .then_some(())
            .ok_or(format!("decoded {got:?}"))
    });
    let group_v2 = Conversation {
        settings: Settings {
            history: HistoryVisibility::Joined,
            keep_edits: true,
            retention: Retention::Days(30),
        },
        joined: vec![(UserId(8), Seq(41))],
        ..group.clone()
    };
    // Version 2 (before `encrypted`): read as not encrypted.
    let mut v2_bytes = records::encode_conversation(&group_v2).unwrap();
    v2_bytes[0] = 2;
    v2_bytes.truncate(v2_bytes.len() - 2);
    set.case("conversation_v2", v2_bytes, |b| {
        let got = records::decode_conversation(b).map_err(|e| e.to_string())?;
        (got == group_v2)
            .then_some(())
            .ok_or(format!("decoded {got:?}"))
    });
    let group_v3 = Conversation {
        encrypted: true,
        ..group_v2.clone()
    };
    // Version 3 (before `push_previews`): read as previews off.
    let mut v3_bytes = records::encode_conversation(&group_v3).unwrap();
    v3_bytes[0] = 3;
    v3_bytes.pop();
    set.case("conversation_v3", v3_bytes, |b| {
        let got = records::decode_conversation(b).map_err(|e| e.to_string())?;
        (got == group_v3)
            .then_some(())
            .ok_or(format!("decoded {got:?}"))
    });
    let group_v4 = Conversation {
        encrypted: false,
        push_previews: true,
        ..group_v2.clone()
    };
    set.case(
        "conversation_v4",
        records::encode_conversation(&group_v4).unwrap(),
        |b| {
            let got = records::decode_conversation(b).map_err(|e| e.to_string())?;
            (got == group_v4)
                .then_some(())
                .ok_or(format!("decoded {got:?}"))
        },
    );
    set.versioned("device_keys", &device_keys());
    set.versioned(
        "one_time_key",
        &missive_chat::e2ee::OneTimeKey {
            id: 40,
            key: [0x44; 32],
        },
    );
    let envelope = missive_chat::e2ee::Envelope::new(vec![
        missive_chat::e2ee::DevicePayload {
            user: UserId(8),
            device: DeviceId(1),
            ciphertext: vec![0xde, 0xad],
        },
        missive_chat::e2ee::DevicePayload {
            user: UserId(7),
            device: DeviceId(2),
            ciphertext: vec![0xbe, 0xef, 0x01],
        },
    ])
    .unwrap();
    set.case("envelope", envelope.encode(), |b| {
        let got = missive_chat::e2ee::Envelope::decode(b)?;
        (got == envelope)
            .then_some(())
            .ok_or(format!("decoded {got:?}"))
    });
    set.versioned("push_job", &push_job());
    set.versioned(
        "dead_push",
        &missive_chat::push::DeadPush {
            job: push_job(),
            died_micros: 1_700_000_009_000_000,
            reason: "gateway answered 500".into(),
        },
    );
    set.versioned(
        "push_devices",
        &missive_chat::push::PushDevices {
            devices: vec![DeviceId(1), DeviceId(3)],
        },
    );
    set.key(
        "key_push_job",
        missive_chat::push::job_key(UserId(0x0a0b_0c0d), Useq(9)),
    );
    set.key(
        "key_dead_push",
        missive_chat::push::dead_key(UserId(0x0a0b_0c0d), Useq(9)),
    );
    set.key(
        "key_push_devices",
        missive_chat::push::push_devices_key(UserId(0x0a0b_0c0d)),
    );
    set.key(
        "key_device_keys",
        missive_chat::e2ee::keys::device_keys_key(UserId(0x0a0b_0c0d), DeviceId(3)),
    );
    set.key(
        "key_one_time_key",
        missive_chat::e2ee::keys::one_time_key(UserId(0x0a0b_0c0d), DeviceId(3), 9),
    );
    set.versioned(
        "head",
        &Head {
            ts: 1_700_000_000_000_005,
            seq: Seq(5),
        },
    );
    set.versioned(
        "dedup",
        &Dedup {
            ts: 1_700_000_000_000_005,
            seq: Seq(5),
        },
    );
    // Version 1 of a message (before replies): still read, no longer
    // written. Its fields, in order, are the same bytes as this tuple.
    let v1 = Message::new(
        Seq(5),
        UserId(7),
        DeviceId(2),
        "c-5".into(),
        MessageKind::Media,
        vec![0, 1, 2, 255],
        Some(1_800_000_000_000_000),
        None,
    );
    let v1_fields = (
        v1.seq,
        v1.sender,
        v1.device,
        &v1.client_msg_id,
        v1.kind,
        &v1.body,
        v1.expires_at,
    );
    let v1_bytes = codec::encode("message v1", &v1_fields).unwrap();
    set.case("message", v1_bytes, |b| message_decodes(b, &v1));
    let v2 = Message {
        reply_to: Some(Seq(4)),
        ..v1.clone()
    };
    // Version 2 (replies, before edits): version 1's fields, then reply_to.
    let mut v2_bytes = vec![2];
    v2_bytes.extend(postcard::to_allocvec(&(v1_fields, v2.reply_to)).unwrap());
    set.case("message_v2", v2_bytes, |b| message_decodes(b, &v2));
    // Version 1 of a seq index entry: still read, with an unknown sender.
    let ix_v1 = Indexed {
        ts: 1_700_000_000_000_005,
        expires_at: Some(1_800_000_000_000_000),
        system: false,
        sender: UserId(0),
        unsent: false,
    };
    let ix_v1_bytes =
        codec::encode("seq index v1", &(ix_v1.ts, ix_v1.expires_at, ix_v1.system)).unwrap();
    set.case("seq_index_value", ix_v1_bytes, |b| {
        let got = records::decode_indexed(b).map_err(|e| e.to_string())?;
        (got == ix_v1)
            .then_some(())
            .ok_or(format!("decoded {got:?}"))
    });
    let ix_v2 = Indexed {
        sender: UserId(7),
        unsent: true,
        ..ix_v1
    };
    set.case(
        "seq_index_value_v2",
        records::encode_indexed(&ix_v2).unwrap(),
        |b| {
            let got = records::decode_indexed(b).map_err(|e| e.to_string())?;
            (got == ix_v2)
                .then_some(())
                .ok_or(format!("decoded {got:?}"))
        },
    );
    let v3 = Message {
        edited_at: Some(1_700_000_000_000_009),
        edits: 2,
        unsent: Some(Unsent {
            at: 1_700_000_000_000_010,
            by: UserId(8),
        }),
        reactions: vec![Reaction {
            emoji: "👍".into(),
            users: vec![UserId(8), UserId(9)].into(),
        }],
        prior: vec![PriorBody {
            replaced_at: 1_700_000_000_000_009,
            body: b"old".to_vec(),
        }],
        ..v2.clone()
    };
    // Version 3 (edits, before mentions): version 5 without its last two
    // fields (an empty list is one 0 byte, `false` another).
    let mut v3_bytes = records::encode_message(&v3).unwrap();
    assert_eq!(v3_bytes.pop(), Some(0));
    assert_eq!(v3_bytes.pop(), Some(0));
    v3_bytes[0] = 3;
    set.case("message_v3", v3_bytes, |b| message_decodes(b, &v3));
    let v4 = Message {
        mentions: vec![UserId(8), UserId(9)],
        ..v3.clone()
    };
    // Version 4 (mentions, before search): version 5 without `text`.
    let mut v4_bytes = records::encode_message(&v4).unwrap();
    assert_eq!(v4_bytes.pop(), Some(0));
    v4_bytes[0] = 4;
    set.case("message_v4", v4_bytes, |b| message_decodes(b, &v4));
    let v5 = Message {
        text: true,
        ..v4.clone()
    };
    set.case("message_v5", records::encode_message(&v5).unwrap(), |b| {
        message_decodes(b, &v5)
    });
    // Version 1 postings (tag 0x09, one per term and message): no longer
    // written, still recognised so that the check can drop them.
    set.versioned(
        "posting",
        &missive_chat::search::postings::LegacyPosting {
            expires_at: Some(1_800_000_000_000_000),
        },
    );
    set.versioned(
        "posting_v2",
        &missive_chat::search::postings::Posting {
            expires_at: Some(1_800_000_000_000_000),
            bits: (1 << 5) | (1 << 127),
        },
    );
    set.versioned(
        "reactions",
        &Reactions {
            list: v3.reactions.clone(),
        },
    );
    set.versioned(
        "pins",
        &Pins {
            list: vec![Pin {
                seq: Seq(2),
                by: UserId(8),
                at: 1_700_000_000_000_011,
            }],
        },
    );
    set.versioned(
        "blocks",
        &Blocks {
            by: vec![UserId(7), UserId(8)],
        },
    );
    set.versioned(
        "hidden",
        &Hidden {
            at: 1_700_000_000_000_013,
        },
    );
    set.versioned(
        "blocked_user",
        &BlockedUser {
            since: 1_700_000_000_000_012,
        },
    );
    for (name, event) in [
        (
            "event_edited",
            EventKind::Edited {
                seq: Seq(2),
                ts: 1_700_000_000_000_001,
                edited_at: 1_700_000_000_000_009,
                expires_at: Some(1_800_000_000_000_000),
            },
        ),
        (
            "event_unsent",
            EventKind::Unsent {
                seq: Seq(2),
                ts: 1_700_000_000_000_001,
                by: UserId(7),
            },
        ),
        (
            "event_pinned",
            EventKind::Pinned {
                seq: Seq(2),
                by: UserId(8),
                pinned: true,
            },
        ),
        ("event_hidden", EventKind::Hidden { seq: Seq(2) }),
        (
            "event_blocked",
            EventKind::Blocked {
                user: UserId(8),
                blocked: true,
            },
        ),
        (
            "event_reacted",
            EventKind::Reacted {
                seq: Seq(2),
                user: UserId(8),
                emoji: "🎉".into(),
                added: false,
            },
        ),
        (
            "event_mentioned",
            EventKind::Mentioned {
                seq: Seq(11),
                sender: UserId(7),
            },
        ),
        (
            "event_configured",
            EventKind::Configured {
                by: UserId(7),
                settings: Settings {
                    history: HistoryVisibility::Shared,
                    keep_edits: false,
                    retention: Retention::Days(7),
                },
            },
        ),
        ("event_encrypted", EventKind::Encrypted { by: UserId(7) }),
        (
            "event_device_keys",
            EventKind::DeviceKeys {
                user: UserId(7),
                device: DeviceId(2),
                change: missive_chat::e2ee::KeyChange::Removed,
            },
        ),
        (
            "event_prekeys_low",
            EventKind::PreKeysLow {
                device: DeviceId(2),
                remaining: 9,
            },
        ),
    ] {
        set.versioned(name, &event);
    }
    for (name, kind) in [
        ("message_kind_text", MessageKind::Text),
        ("message_kind_reply", MessageKind::Reply),
        ("message_kind_reaction", MessageKind::Reaction),
        ("message_kind_edit", MessageKind::Edit),
        ("message_kind_system", MessageKind::System),
        ("message_kind_encrypted", MessageKind::Encrypted),
    ] {
        set.versioned(name, &kind);
    }
    set.versioned(
        "system_event",
        &SystemEvent {
            actor: UserId(7),
            added: vec![UserId(9)],
            removed: vec![UserId(8)],
            promoted: vec![UserId(9)],
            renamed: Some("renamed".into()),
        },
    );
    set.versioned(
        "receipt",
        &Receipt {
            delivered: Seq(5),
            read: Seq(4),
        },
    );
    set.versioned(
        "applied",
        &Applied {
            last_applied: Some(log_id(3, 2, 117)),
            membership: membership(),
        },
    );
    set.versioned(
        "applied_empty",
        &Applied {
            last_applied: None,
            membership: StoredMembership::default(),
        },
    );
    let mut map = ClusterMap::default();
    map.register(1, "127.0.0.1:7000", &SlotMap::even(4).unwrap())
        .unwrap();
    map.register(2, "127.0.0.2:7000", &SlotMap::even(4).unwrap())
        .unwrap();
    map.forgotten.insert(9);
    map.report(
        ShardId(1),
        ShardEntry {
            voters: BTreeSet::from([1, 2]),
            learners: BTreeSet::from([3]),
            config_index: 4,
        },
    );
    map.version = 6;
    // The map's record is written as version 1 while no split exists (the
    // shape builds before splits read), as version 2 after.
    let v1 = cluster_map::encode(&map).unwrap();
    let want = map.clone();
    set.case("cluster_map", v1, |b| {
        let got = cluster_map::decode(b).map_err(|e| e.to_string())?;
        (got == want)
            .then_some(())
            .ok_or(format!("decoded {got:?}"))
    });
    let mut split = map.clone();
    split.reserve(ShardId(2), 1500).unwrap();
    split.reserve(ShardId(3), 2500).unwrap();
    split.record_split(ShardId(2), 1500, ShardId(5)).unwrap();
    let v2 = cluster_map::encode(&split).unwrap();
    assert_eq!(v2[0], 2, "a map with splits is record version 2");
    set.case("cluster_map_v2", v2, |b| {
        let got = cluster_map::decode(b).map_err(|e| e.to_string())?;
        (got == split)
            .then_some(())
            .ok_or(format!("decoded {got:?}"))
    });
    set.versioned("owner", &Owner { slots: 1500..2048 });
    set.versioned(
        "frozen",
        &Frozen {
            into: ShardId(2),
            index: 4411,
        },
    );
    set.versioned(
        "outbox_head",
        &OutboxHead {
            last: Eseq(9),
            done: Eseq(4),
        },
    );
    set.versioned(
        "outbox_entry",
        &OutboxEntry {
            event: EventKind::Receipt {
                user: UserId(8),
                delivered: Seq(5),
                read: Seq(5),
            },
            recipients: vec![UserId(7), UserId(8)],
            at: 1_700_000_000_000_006,
        },
    );
    set.versioned("user_head", &UserHead { useq: Useq(77) });
    set.versioned(
        "inbox_event",
        &InboxEvent {
            conv: conv(),
            eseq: Eseq(9),
            event: EventKind::Membership {
                version: 3,
                added: vec![UserId(9)],
                removed: Vec::new(),
            },
            at: 1_700_000_000_000_007,
        },
    );
    // Version 1 (before mentions): read with none.
    let uc = UserConv {
        eseq: Eseq(9),
        member: true,
        last_seq: Seq(5),
        last_ts: 1_700_000_000_000_005,
        read: Seq(4),
        delivered: Seq(5),
        mentions: Vec::new(),
    };
    let uc_v1 = (
        uc.eseq,
        uc.member,
        uc.last_seq,
        uc.last_ts,
        uc.read,
        uc.delivered,
    );
    let uc_v1 = codec::encode("user conv v1", &uc_v1).unwrap();
    set.case("user_conv", uc_v1, |b| {
        let got = records::decode_user_conv(b).map_err(|e| e.to_string())?;
        (got == uc).then_some(()).ok_or(format!("decoded {got:?}"))
    });
    let uc_v2 = UserConv {
        mentions: vec![Seq(5)],
        ..uc.clone()
    };
    set.case(
        "user_conv_v2",
        records::encode_user_conv(&uc_v2).unwrap(),
        |b| {
            let got = records::decode_user_conv(b).map_err(|e| e.to_string())?;
            (got == uc_v2)
                .then_some(())
                .ok_or(format!("decoded {got:?}"))
        },
    );
    set.versioned(
        "device",
        &Device {
            name: "Ana's phone".into(),
            platform: "ios".into(),
            registered_micros: 1_700_000_000_000_000,
        },
    );
    set.versioned(
        "push_target",
        &PushTarget {
            token: "tok".into(),
            set_micros: 1_700_000_000_000_000,
        },
    );
    set.versioned(
        "profile",
        &Profile {
            display_name: "Ana".into(),
        },
    );
    set.versioned(
        "ticket_uses",
        &records::TicketUses {
            used: vec![([0xab; 16], 1_700_000_030)],
        },
    );
    set.versioned(
        "revocations",
        &records::Revocations {
            all_before: 1_700_000_000,
            keep: Some(DeviceId(1)),
            devices: vec![(DeviceId(2), 1_700_000_100)],
        },
    );

    let (u, d) = (UserId(0x0a0b_0c0d), DeviceId(3));
    set.key("key_conversation", conversation_key(conv()));
    set.key("key_head", head_key(conv()));
    set.key("key_dedup", dedup_key(conv(), u, "c-5"));
    set.key("key_message", msg_key(conv(), 1_700_000_000_000_005));
    set.key("key_seq_index", seq_key(conv(), Seq(5)));
    set.key("key_reactions", reactions_key(conv(), Seq(5)));
    set.key("key_pins", pins_key(conv()));
    set.key("key_hidden", hidden_key(conv(), u, Seq(5)));
    set.key(
        "key_posting",
        missive_chat::search::postings::legacy::posting_key(conv(), "grüße", 1_700_000_000_000_005),
    );
    set.key(
        "key_posting_v2",
        missive_chat::search::postings::posting_key(conv(), "grüße".as_bytes(), 3),
    );
    set.key("key_blocks", blocks_key(conv()));
    set.key("key_blocked", blocked_key(u, UserId(9)));
    set.key("key_blocked_prefix", blocked_prefix(u));
    // The pair's id is a hash of the two ids: pinned, since blocks and
    // direct conversations are stored under it.
    set.key(
        "direct_id_7_8",
        missive_chat::direct_id(UserId(8), UserId(7))
            .0
            .to_be_bytes()
            .to_vec(),
    );
    set.key("key_receipt", receipt_key(conv(), u));
    set.key("key_receipt_prefix", receipt_prefix(conv()));
    set.key("key_applied", applied_key(ShardId(3)));
    set.key("key_cluster_map", cluster_map_key());
    set.key("key_owner", owner_key(ShardId(3)));
    set.key("key_frozen", frozen_key(ShardId(3)));
    let (lo, hi) = directory_range();
    set.key("key_directory_range_lo", lo);
    set.key("key_directory_range_hi", hi.unwrap());
    set.key("key_outbox_head", outbox_head_key(conv()));
    set.key("key_outbox", outbox_key(conv(), Eseq(9)));
    set.key("key_user_head", user_head_key(u));
    set.key("key_inbox", inbox_key(u, Useq(77)));
    set.key("key_user_conv", user_conv_key(u, conv()));
    set.key("key_user_conv_prefix", user_conv_prefix(u));
    set.key("key_device", device_key(u, d));
    set.key("key_device_prefix", device_prefix(u));
    set.key("key_profile", profile_key(u));
    set.key("key_push", push_key(u, d));
    set.key("key_push_prefix", push_prefix(u));
    set.key("key_ticket_uses", records::ticket_uses_key(u));
    set.key("key_revocations", records::revocations_key(u));
    {
        use missive_chat::media::records as media;
        let upload = 0x0102_0304_0506_0708;
        set.key("key_media_upload", media::upload_key(upload));
        set.key("key_media_chunk", media::chunk_key(upload, 3));
        set.key("key_media_object", media::object_key(&media_hash()));
        set.key("key_media_thumbnail", media::thumb_key(&media_hash(), 320));
        set.key("key_media_grant", media::grant_key(u, &media_hash()));
        set.key(
            "key_media_reference",
            media::reference_key(conv(), &media_hash(), Seq(5)),
        );
        set.key("value_media_chunk", media::encode_chunk(&[9, 8, 7]));
        set.versioned("media_upload", &upload_record());
        set.versioned(
            "media_object",
            &media::Object {
                size: 3 << 20,
                mime: "image/png".into(),
                upload,
                created_at: 1_700_000_000_000_001,
                image: Some(image_info()),
                uploaders: vec![UserId(7), UserId(9)],
                last_used: 1_700_000_000_000_003,
            },
        );
        set.versioned(
            "media_grant",
            &media::Grant {
                size: 3 << 20,
                mime: "image/png".into(),
                name: "grüße.png".into(),
                at: 1_700_000_000_000_002,
            },
        );
    }
    let slots = SlotMap::even(3).unwrap();
    for shard in slots.groups() {
        for (i, (lo, hi)) in slots.key_ranges(shard).into_iter().enumerate() {
            set.key(&format!("range_{}_{i}_lo", shard.0), lo);
            set.key(&format!("range_{}_{i}_hi", shard.0), hi.unwrap_or_default());
        }
    }
    assert_eq!(
        records::decode_outbox_key(&outbox_key(conv(), Eseq(9))),
        Some((conv(), Eseq(9)))
    );
    set.finish();
}

fn placement() -> Placement {
    Placement {
        shard: ShardId(2),
        voters: BTreeMap::from([
            (1, "127.0.0.1:7000".to_string()),
            (2, "127.0.0.2:7000".to_string()),
        ]),
        learners: BTreeMap::from([(3, "127.0.0.3:7000".to_string())]),
        leader: Some(2),
        config_index: 17,
        changing: true,
    }
}

fn frames() -> Vec<(String, Wire)> {
    let meta = SnapshotMeta {
        last_log_id: Some(log_id(3, 2, 117)),
        last_membership: membership(),
        snapshot_id: "2-3-2-117".into(),
    };
    let request = |id: u64, rpc: Rpc| Wire::Request {
        id,
        shard: ShardId(2),
        rpc,
        map_version: 6,
    };
    let response = |id: u64, reply: Reply| Wire::Response {
        id,
        reply,
        map_version: 6,
    };
    let mut out: Vec<(String, Wire)> = vec![
        (
            "hello".into(),
            Wire::Hello {
                version: missive_raft::transport::WIRE_VERSION,
                cluster: "missive".into(),
                from: 1,
                to: 2,
            },
        ),
        ("welcome".into(), Wire::Welcome { node: 2 }),
        (
            "refused".into(),
            Wire::Refused {
                reason: "node 9 was removed from the cluster".into(),
            },
        ),
    ];
    let mut rpcs: Vec<(String, Rpc)> = vec![
        (
            "append".into(),
            Rpc::Append(AppendEntriesRequest {
                vote: Vote::new_committed(3, 2),
                prev_log_id: Some(log_id(3, 2, 99)),
                entries: entries()
                    .into_iter()
                    .filter(|(name, _)| {
                        let name = name.trim_start_matches("normal_");
                        !later(name)
                    })
                    .map(|(_, e)| e)
                    .collect(),
                leader_commit: Some(log_id(3, 2, 98)),
            }),
        ),
        (
            "vote".into(),
            Rpc::Vote(VoteRequest {
                vote: Vote::new(4, 1),
                last_log_id: Some(log_id(3, 2, 117)),
            }),
        ),
        (
            "snapshot_chunk".into(),
            Rpc::SnapshotChunk {
                snapshot_id: "2-3-2-117".into(),
                seq: 1,
                chunk: vec![
                    (b"k1".to_vec(), b"v1".to_vec()),
                    (b"k2".to_vec(), Vec::new()),
                ],
            },
        ),
        (
            "snapshot_done".into(),
            Rpc::SnapshotDone {
                snapshot_id: "2-3-2-117".into(),
                chunks: 2,
                vote: Vote::new_committed(3, 2),
                meta,
            },
        ),
        ("read_index".into(), Rpc::ReadIndex),
        (
            "signal".into(),
            Rpc::Signal {
                payload: vec![1, 2, 3],
            },
        ),
        ("locate".into(), Rpc::Locate),
        (
            "change_replicas_add".into(),
            Rpc::ChangeReplicas {
                change: Change::Add {
                    node: 4,
                    addr: "127.0.0.4:7000".into(),
                },
            },
        ),
        (
            "change_replicas_remove".into(),
            Rpc::ChangeReplicas {
                change: Change::Remove { node: 4 },
            },
        ),
        (
            "change_replicas_move".into(),
            Rpc::ChangeReplicas {
                change: Change::Move {
                    from: 1,
                    to: 4,
                    addr: "127.0.0.4:7000".into(),
                },
            },
        ),
        (
            "retire".into(),
            Rpc::Retire {
                removed_at: log_id(3, 2, 120),
            },
        ),
        (
            "read_get".into(),
            Rpc::Read {
                op: ReadOp::Get {
                    key: head_key(conv()),
                },
                linearizable: true,
            },
        ),
        (
            "read_scan".into(),
            Rpc::Read {
                op: ReadOp::Scan {
                    lo: user_conv_prefix(UserId(7)),
                    hi: Some(device_prefix(UserId(7))),
                    reverse: true,
                    limit: 50,
                },
                linearizable: false,
            },
        ),
        (
            "read_latest".into(),
            Rpc::Read {
                op: ReadOp::Latest {
                    conv: conv().0,
                    limit: 20,
                },
                linearizable: true,
            },
        ),
        (
            "read_before".into(),
            Rpc::Read {
                op: ReadOp::Before {
                    conv: conv().0,
                    ts: 1_700_000_000_000_005,
                    limit: 20,
                },
                linearizable: false,
            },
        ),
    ];
    let (previews, before_previews): (Vec<_>, Vec<_>) = commands()
        .into_iter()
        .partition(|(name, _)| SINCE_PREVIEWS.contains(name));
    let (push, before_push): (Vec<_>, Vec<_>) = before_previews
        .into_iter()
        .partition(|(name, _)| SINCE_PUSH.contains(name));
    let (e2ee, before_e2ee): (Vec<_>, Vec<_>) = before_push
        .into_iter()
        .partition(|(name, _)| SINCE_E2EE.contains(name));
    let (media, earlier): (Vec<_>, Vec<_>) = before_e2ee
        .into_iter()
        .partition(|(name, _)| SINCE_MEDIA.contains(name));
    let (later, first): (Vec<_>, Vec<_>) = earlier
        .into_iter()
        .partition(|(name, _)| SINCE_SEARCH.contains(name));
    for (name, cmd) in first {
        rpcs.push((format!("write_{name}"), Rpc::Write { command: cmd }));
    }
    // Appended: every earlier case keeps its request id.
    rpcs.push(("campaign".into(), Rpc::Campaign));
    rpcs.push((
        "read_backup_open".into(),
        Rpc::Read {
            op: ReadOp::BackupOpen { phase: 1 },
            linearizable: true,
        },
    ));
    rpcs.push((
        "read_backup_chunk".into(),
        Rpc::Read {
            op: ReadOp::BackupChunk {
                token: 7,
                cursor: ChunkCursor::default(),
            },
            linearizable: false,
        },
    ));
    rpcs.push((
        "read_checksum".into(),
        Rpc::Read {
            op: ReadOp::Checksum { index: 1_583 },
            linearizable: false,
        },
    ));
    for (name, cmd) in later {
        rpcs.push((format!("write_{name}"), Rpc::Write { command: cmd }));
    }
    rpcs.push((
        "read_app".into(),
        Rpc::Read {
            op: ReadOp::App {
                query: vec![1, 0, 9],
            },
            linearizable: true,
        },
    ));
    for (name, cmd) in media {
        rpcs.push((format!("write_{name}"), Rpc::Write { command: cmd }));
    }
    for (name, cmd) in e2ee {
        rpcs.push((format!("write_{name}"), Rpc::Write { command: cmd }));
    }
    for (name, cmd) in push {
        rpcs.push((format!("write_{name}"), Rpc::Write { command: cmd }));
    }
    for (name, cmd) in previews {
        rpcs.push((format!("write_{name}"), Rpc::Write { command: cmd }));
    }
    for (i, (name, rpc)) in rpcs.into_iter().enumerate() {
        out.push((format!("request_{name}"), request(i as u64 + 1, rpc)));
    }
    let mut replies: Vec<(String, Reply)> = vec![
        (
            "append".into(),
            Reply::Append(Ok(AppendEntriesResponse::Success)),
        ),
        (
            "append_conflict".into(),
            Reply::Append(Ok(AppendEntriesResponse::Conflict)),
        ),
        (
            "vote".into(),
            Reply::Vote(Ok(VoteResponse {
                vote: Vote::new(4, 1),
                vote_granted: true,
                last_log_id: Some(log_id(3, 2, 117)),
            })),
        ),
        ("chunk".into(), Reply::Chunk(Ok(()))),
        (
            "chunk_failed".into(),
            Reply::Chunk(Err("expected chunk 1".into())),
        ),
        (
            "snapshot".into(),
            Reply::Snapshot(Ok(SnapshotResponse::new(Vote::new_committed(3, 2)))),
        ),
        (
            "write_not_leader".into(),
            Reply::Write(Err(RemoteFailure::NotLeader {
                leader: Some((2, "127.0.0.2:7000".into())),
            })),
        ),
        (
            "write_unavailable".into(),
            Reply::Write(Err(RemoteFailure::Unavailable("no quorum".into()))),
        ),
        (
            "write_unknown".into(),
            Reply::Write(Err(RemoteFailure::Unknown("leader lost".into()))),
        ),
        (
            "write_failed".into(),
            Reply::Write(Err(RemoteFailure::Failed("disk".into()))),
        ),
        (
            "read_misrouted".into(),
            Reply::Read(Err(RemoteFailure::Misrouted(
                "slot 1600 is not shard-2's".into(),
            ))),
        ),
        ("signal".into(), Reply::Signal),
        ("read_index".into(), Reply::ReadIndex(Ok(Some(117)))),
        ("read_index_none".into(), Reply::ReadIndex(Ok(None))),
        ("locate".into(), Reply::Locate(Some(placement()))),
        ("locate_none".into(), Reply::Locate(None)),
        (
            "change_replicas".into(),
            Reply::ChangeReplicas(Ok(placement())),
        ),
        (
            "change_replicas_invalid".into(),
            Reply::ChangeReplicas(Err(RemoteFailure::Invalid("node 4 is a replica".into()))),
        ),
        ("retired".into(), Reply::Retired),
        (
            "read_value".into(),
            Reply::Read(Ok(ReadResult::Value(Some(vec![1, 2])))),
        ),
        (
            "read_pairs".into(),
            Reply::Read(Ok(ReadResult::Pairs(vec![(vec![1], vec![2])]))),
        ),
        (
            "read_messages".into(),
            Reply::Read(Ok(ReadResult::Messages(vec![(
                1_700_000_000_000_005,
                vec![3],
            )]))),
        ),
        (
            "failed".into(),
            Reply::Failed("shard-9 is not hosted here".into()),
        ),
    ];
    for (name, o) in outcomes() {
        replies.push((format!("write_{name}"), Reply::Write(Ok(o))));
    }
    // Appended: every earlier case keeps its response id.
    replies.push(("campaigning".into(), Reply::Campaigning));
    replies.push((
        "read_backup_opened".into(),
        Reply::Read(Ok(ReadResult::BackupOpened {
            token: 7,
            applied: Some(log_id(3, 1, 1_583)),
            node: 2,
            addr: "127.0.0.2:7081".into(),
        })),
    ));
    replies.push((
        "read_backup_chunk".into(),
        Reply::Read(Ok(ReadResult::BackupChunk {
            pairs: vec![(vec![0x10, 0, 7, 1], vec![1, 2, 3])],
            next: Some(ChunkCursor::default()),
        })),
    ));
    replies.push((
        "read_checksum".into(),
        Reply::Read(Ok(ReadResult::Checksum(missive_raft::verify::Checksum {
            pairs: 513,
            hash: 0x0123_4567_89ab_cdef,
        }))),
    ));
    replies.push((
        "read_app".into(),
        Reply::Read(Ok(ReadResult::App(vec![1, 0, 0]))),
    ));
    for (name, o) in outcomes_since_search() {
        replies.push((format!("write_{name}"), Reply::Write(Ok(o))));
    }
    for (i, (name, reply)) in replies.into_iter().enumerate() {
        out.push((format!("response_{name}"), response(i as u64 + 1, reply)));
    }
    out
}

#[test]
fn transport_frames() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let mut set = Set::new("frames");
    for (name, wire) in frames() {
        let mut bytes = Vec::new();
        rt.block_on(write_frame(&mut bytes, &wire)).unwrap();
        let want = format!("{wire:?}");
        set.case(&name, bytes, |b| {
            let mut r = b;
            let got = rt
                .block_on(read_frame::<ChatApp, _>(&mut r))
                .map_err(|e| e.to_string())?;
            // Wire has no PartialEq (openraft's error types lack one);
            // the byte comparison is the real check, this one names a
            // variant that decoded as another.
            (format!("{got:?}") == want)
                .then_some(())
                .ok_or(format!("decoded {got:?}"))
        });
    }
    set.finish();
}

#[test]
fn received_snapshot_file() {
    use missive_raft::storage::snapshot::{SnapshotReader, SnapshotWriter};
    let chunks: Vec<Vec<(Vec<u8>, Vec<u8>)>> = vec![
        vec![
            (conversation_key(conv()), vec![1, 7]),
            (head_key(conv()), vec![1, 9, 9]),
        ],
        Vec::new(),
        vec![(inbox_key(UserId(7), Useq(1)), vec![1, 0])],
    ];
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("recv.snap");
    let mut w = SnapshotWriter::create(&path).unwrap();
    for c in &chunks {
        w.push(c).unwrap();
    }
    w.finish().unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let mut set = Set::new("snapshot");
    set.case("received_file", bytes, |b| {
        let p = dir.path().join("stored.snap");
        std::fs::write(&p, b).map_err(|e| e.to_string())?;
        let mut r = SnapshotReader::open(&p).map_err(|e| e.to_string())?;
        let mut got = Vec::new();
        while let Some(c) = r.next_chunk().map_err(|e| e.to_string())? {
            got.push(c);
        }
        (got == chunks).then_some(()).ok_or(format!("read {got:?}"))
    });
    set.finish();
}

#[test]
fn node_identity_file() {
    // `<data>/NODE`: the node's id, cluster name and shard count. Written
    // by a node's first start; read at every start after.
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let mut cfg = missive_raft::node::NodeConfig::new(
        7,
        "127.0.0.1:0".parse().unwrap(),
        dir.path().join("n"),
    );
    cfg.shards = 3;
    cfg.cluster = "fixture".into();
    rt.block_on(async {
        let node = missive_chat::ChatNode::start(cfg).await.unwrap();
        node.shutdown().await.unwrap();
    });
    let bytes = std::fs::read(dir.path().join("n/NODE")).unwrap();
    let mut set = Set::new("identity");
    set.case("node_file", bytes, |b| {
        let d = dir.path().join("stored");
        std::fs::create_dir_all(&d).map_err(|e| e.to_string())?;
        std::fs::write(d.join("NODE"), b).map_err(|e| e.to_string())?;
        match missive_raft::node::recorded_shards(&d) {
            Ok(Some(3)) => Ok(()),
            other => Err(format!("recorded_shards: {other:?}")),
        }
    });
    set.finish();
}
