//! The JSON the server speaks: WebSocket frames, HTTP bodies, and how
//! stored records render. docs/protocol.md documents every field; this file
//! and that one change together.
//!
//! 64-bit ids (users, devices, conversations) are decimal *strings* in
//! JSON, since JavaScript numbers lose precision above 2^53; a number is
//! accepted on input. Timestamps (µs since the epoch, < 2^53 until the
//! year 2255) and seqs are numbers.

use std::sync::Arc;

use base64::Engine as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use missive_chat::apply::SystemEvent;
use missive_chat::command::{
    ConversationKind, DeviceId, HistoryVisibility, MessageKind, Retention, RevokeScope, Settings,
    UserId,
};
use missive_chat::e2ee::Envelope;
use missive_chat::records::{self, EventKind, InboxEvent, Reaction};
use missive_chat::StoredMessage;

use crate::error::ApiError;

/// A 64-bit id: a decimal string in JSON (a number is accepted on input).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Id(pub u64);

impl utoipa::PartialSchema for Id {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .pattern(Some("^[0-9]{1,20}$"))
            .description(Some(
                "a 64-bit id as a decimal string (a JSON number is accepted on input)",
            ))
            .into()
    }
}

impl utoipa::ToSchema for Id {}

impl Serialize for Id {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Id {
    /// A decimal string (what the server sends) or a JSON number; the
    /// error names what an id is, not how serde looked for one.
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct IdVisitor;
        impl serde::de::Visitor<'_> for IdVisitor {
            type Value = Id;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an id: a decimal string such as \"42\"")
            }
            fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<Id, E> {
                Ok(Id(n))
            }
            fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<Id, E> {
                u64::try_from(n)
                    .map(Id)
                    .map_err(|_| E::custom(format!("{n} is not an id (ids are not negative)")))
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Id, E> {
                s.parse()
                    .map(Id)
                    .map_err(|_| E::custom(format!("{s:?} is not a decimal id")))
            }
        }
        d.deserialize_any(IdVisitor)
    }
}

impl From<UserId> for Id {
    fn from(u: UserId) -> Self {
        Id(u.0)
    }
}

/// Conversation kinds as the protocol spells them.
pub fn conversation_kind_name(k: ConversationKind) -> &'static str {
    match k {
        ConversationKind::Direct => "direct",
        ConversationKind::Group => "group",
    }
}

/// Message kinds as the protocol spells them.
pub fn kind_name(k: MessageKind) -> &'static str {
    match k {
        MessageKind::Text => "text",
        MessageKind::Media => "media",
        MessageKind::Reply => "reply",
        MessageKind::Reaction => "reaction",
        MessageKind::Edit => "edit",
        MessageKind::Unsend => "unsend",
        MessageKind::System => "system",
        MessageKind::Encrypted => "encrypted",
    }
}

/// Parses a client-sendable kind (`system` is the server's own).
/// `reaction`, `edit` and `unsend` were labels on ordinary messages before
/// they were operations; messages stored with them still render, but a
/// new one is refused with a pointer to the operation, so that no client
/// believes it edited or unsent something while it only sent a message.
pub fn parse_kind(s: &str) -> Result<MessageKind, ApiError> {
    Ok(match s {
        "text" => MessageKind::Text,
        "media" => MessageKind::Media,
        "reply" => MessageKind::Reply,
        "encrypted" => MessageKind::Encrypted,
        "reaction" | "edit" | "unsend" => {
            return Err(ApiError::invalid(format!(
                "kind {s:?} is an operation on an earlier message, not a message: \
                 use edit, unsend or react (docs/protocol.md)"
            )))
        }
        other => {
            return Err(ApiError::invalid(format!(
                "kind {other:?} is not one of text, media, reply, encrypted"
            )))
        }
    })
}

/// A message body as sent: UTF-8 text in `body`, or any bytes in
/// `body_b64` (standard base64), not both.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct BodyIn {
    /// Text.
    #[serde(default)]
    pub body: Option<String>,
    /// Bytes, base64.
    #[serde(default)]
    pub body_b64: Option<String>,
}

/// A message body as decoded from a request, and how it was given.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Body {
    /// The bytes.
    pub bytes: Vec<u8>,
    /// Given as text (`body`): the message is indexed for search. Bytes
    /// given as bytes (`body_b64`, gRPC's `body`) are opaque (maybe
    /// ciphertext) and never indexed.
    pub text: bool,
}

impl Body {
    /// Text.
    pub fn text(t: String) -> Body {
        Body {
            bytes: t.into_bytes(),
            text: true,
        }
    }

    /// Opaque bytes.
    pub fn opaque(bytes: Vec<u8>) -> Body {
        Body { bytes, text: false }
    }

    /// Its length in bytes.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
}

impl BodyIn {
    /// The body, checked against `max` bytes.
    pub fn bytes(self, max: usize) -> Result<Body, ApiError> {
        let b = match (self.body, self.body_b64) {
            (Some(_), Some(_)) => {
                return Err(ApiError::invalid("give body or body_b64, not both"));
            }
            (Some(t), None) => Body::text(t),
            (None, Some(b)) => Body::opaque(
                base64::engine::general_purpose::STANDARD
                    .decode(b)
                    .map_err(|e| ApiError::invalid(format!("body_b64 is not base64: {e}")))?,
            ),
            (None, None) => Body::default(),
        };
        if b.len() > max {
            return Err(ApiError::new(
                axum::http::StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!("the body is {} bytes; the limit is {max}", b.len()),
            ));
        }
        Ok(b)
    }
}

/// A message as clients see it.
#[derive(Debug, Clone, Serialize)]
pub struct MessageOut {
    /// Its conversation.
    pub conv: Id,
    /// Dense per-conversation sequence number.
    pub seq: u64,
    /// Server timestamp, µs (also the history cursor).
    pub ts: u64,
    /// Sender.
    pub sender: Id,
    /// Sending device.
    pub device: Id,
    /// The sender's id for it ("" for system messages).
    pub client_msg_id: String,
    /// text, media, reply, reaction, edit, unsend or system.
    pub kind: &'static str,
    /// The body when it is UTF-8 text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// The body in base64 when it is not UTF-8.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body_b64: Option<String>,
    /// For system messages: what changed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub system: Option<SystemOut>,
    /// When it disappears (µs), if it does.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
    /// The seq of the message this one answers, on a reply.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<u64>,
    /// When the body was last replaced by an edit (µs), if it was.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub edited_at: Option<u64>,
    /// How many times it was edited (absent if never).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub edits: Option<u32>,
    /// Set if it was unsent (deleted for everyone): no body follows.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unsent: Option<UnsentOut>,
    /// Reactions: each emoji and who put it there, in the order each was
    /// first used. Sent as `{"emoji": count, …}` (absent if none); shared,
    /// since a cached message is cloned for every reader.
    #[serde(
        skip_serializing_if = "reactions_empty",
        serialize_with = "reaction_counts"
    )]
    pub reactions: Arc<[Reaction]>,
    /// Who reads it ([`MessageOut::for_viewer`]; none in the cache):
    /// written as `my_reactions`, the viewer's own emoji (absent if none),
    /// found while serializing so that rendering a page for a reader
    /// allocates nothing per reaction.
    #[serde(
        rename = "my_reactions",
        skip_serializing_if = "Viewer::reacted_to_nothing",
        serialize_with = "Viewer::emoji"
    )]
    pub viewer: Viewer,
    /// The members it mentions (absent if none).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub mentions: Vec<Id>,
    /// The bodies it had before its edits, oldest first (absent unless
    /// its conversation keeps edit history).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub prior: Vec<PriorOut>,
    /// An encrypted message's payloads, one per recipient device: never
    /// sent as such; [`MessageOut::open_for`] puts the reader device's own
    /// in `body_b64`.
    #[serde(skip)]
    pub sealed: Option<Arc<Envelope>>,
}

/// A body a message had before an edit.
#[derive(Debug, Clone, Serialize)]
pub struct PriorOut {
    /// When it was replaced (µs).
    pub replaced_at: u64,
    /// The body when it is UTF-8 text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// The body in base64 when it is not UTF-8.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body_b64: Option<String>,
}

/// A body as JSON carries it: text if UTF-8, else base64.
fn text_or_b64(body: Vec<u8>) -> (Option<String>, Option<String>) {
    match String::from_utf8(body) {
        Ok(t) => (Some(t), None),
        Err(e) => (
            None,
            Some(base64::engine::general_purpose::STANDARD.encode(e.as_bytes())),
        ),
    }
}

/// A conversation's settings as the edges send them.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct SettingsOut {
    /// `shared` or `joined`.
    pub history: &'static str,
    /// Whether edits keep the bodies they replace.
    pub keep_edits: bool,
    /// `default`, `forever` or `days`.
    pub retention: &'static str,
    /// With `days`: how many (else absent).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retention_days: Option<u32>,
}

impl From<Settings> for SettingsOut {
    fn from(s: Settings) -> Self {
        let (retention, retention_days) = match s.retention {
            Retention::NodeDefault => ("default", None),
            Retention::Forever => ("forever", None),
            Retention::Days(d) => ("days", Some(d)),
        };
        SettingsOut {
            history: match s.history {
                HistoryVisibility::Shared => "shared",
                HistoryVisibility::Joined => "joined",
            },
            keep_edits: s.keep_edits,
            retention,
            retention_days,
        }
    }
}

/// Which devices to log out, as a client (or an operator) asks.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RevokeIn {
    /// These devices.
    #[serde(default)]
    pub devices: Vec<Id>,
    /// Every device but the caller's.
    #[serde(default)]
    pub others: bool,
}

impl RevokeIn {
    /// The scope for a user's own request from `device`: exactly one of
    /// `devices` and `others`.
    pub fn scope(self, device: DeviceId) -> Result<RevokeScope, ApiError> {
        match (self.devices.is_empty(), self.others) {
            (false, false) => Ok(RevokeScope::Devices(
                self.devices.into_iter().map(|d| DeviceId(d.0)).collect(),
            )),
            (true, true) => Ok(RevokeScope::AllBut(Some(device))),
            _ => Err(ApiError::invalid(
                "give either devices (a list of device ids) or others: true",
            )),
        }
    }

    /// The scope for an operator: `devices`, or every device when none
    /// are named (`others` means nothing without a calling device).
    pub fn operator_scope(self) -> Result<RevokeScope, ApiError> {
        if self.others {
            return Err(ApiError::invalid(
                "an operator names devices, or none for every device",
            ));
        }
        Ok(if self.devices.is_empty() {
            RevokeScope::AllBut(None)
        } else {
            RevokeScope::Devices(self.devices.into_iter().map(|d| DeviceId(d.0)).collect())
        })
    }
}

/// A change of settings as a client asks for it; absent fields keep
/// their value.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SettingsIn {
    /// `shared` or `joined`.
    #[serde(default)]
    pub history: Option<String>,
    /// Whether edits keep the bodies they replace.
    #[serde(default)]
    pub keep_edits: Option<bool>,
    /// `default`, `forever` or `days`.
    #[serde(default)]
    pub retention: Option<String>,
    /// With `days`: how many (1..=36500).
    #[serde(default)]
    pub retention_days: Option<u32>,
    /// `true`: make the conversation end-to-end encrypted (one way:
    /// `false` is refused).
    #[serde(default)]
    pub encrypted: Option<bool>,
    /// Whether push notifications of its messages show a preview (the
    /// sender and the text's start); refused on in an encrypted one.
    #[serde(default)]
    pub push_previews: Option<bool>,
}

/// A parsed settings change; `None` keeps a setting as it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SettingsChange {
    /// What later members see of older messages.
    pub history: Option<HistoryVisibility>,
    /// Whether edits keep the bodies they replace.
    pub keep_edits: Option<bool>,
    /// How long messages sent from now on are kept.
    pub retention: Option<Retention>,
    /// Turn end-to-end encryption on.
    pub encrypt: bool,
    /// Push previews on or off.
    pub push_previews: Option<bool>,
}

impl SettingsIn {
    /// The change, or `invalid` naming the bad field.
    pub fn parse(self) -> Result<SettingsChange, ApiError> {
        let history = match self.history.as_deref() {
            None => None,
            Some("shared") => Some(HistoryVisibility::Shared),
            Some("joined") => Some(HistoryVisibility::Joined),
            Some(other) => {
                return Err(ApiError::invalid(format!(
                    "history is \"shared\" or \"joined\", not {other:?}"
                )))
            }
        };
        let retention = match (self.retention.as_deref(), self.retention_days) {
            (None, None) => None,
            (Some("default"), None) => Some(Retention::NodeDefault),
            (Some("forever"), None) => Some(Retention::Forever),
            (Some("days") | None, Some(d)) => Some(Retention::Days(d)),
            (Some("days"), None) => {
                return Err(ApiError::invalid("retention \"days\" needs retention_days"))
            }
            (Some("default" | "forever"), Some(_)) => {
                return Err(ApiError::invalid(
                    "retention_days goes only with retention \"days\"",
                ))
            }
            (Some(other), _) => {
                return Err(ApiError::invalid(format!(
                    "retention is \"default\", \"forever\" or \"days\", not {other:?}"
                )))
            }
        };
        let encrypt = match self.encrypted {
            Some(false) => {
                return Err(ApiError::invalid(
                    "end-to-end encryption cannot be turned off once on",
                ))
            }
            Some(true) => true,
            None => false,
        };
        if history.is_none()
            && self.keep_edits.is_none()
            && retention.is_none()
            && !encrypt
            && self.push_previews.is_none()
        {
            return Err(ApiError::invalid(
                "give at least one of history, keep_edits, retention, encrypted, push_previews",
            ));
        }
        Ok(SettingsChange {
            history,
            keep_edits: self.keep_edits,
            retention,
            encrypt,
            push_previews: self.push_previews,
        })
    }
}

fn reactions_empty(r: &Arc<[Reaction]>) -> bool {
    r.is_empty()
}

/// A message's reader and its reactions, for `my_reactions`.
#[derive(Debug, Clone, Default)]
pub struct Viewer {
    /// The reader (none: nobody's view, as cached).
    pub user: Option<UserId>,
    /// The message's reactions (shared with [`MessageOut::reactions`]).
    pub reactions: Arc<[Reaction]>,
}

impl Viewer {
    /// The emoji the reader put on the message.
    pub fn mine(&self) -> impl Iterator<Item = &str> {
        let user = self.user;
        self.reactions
            .iter()
            .filter(move |r| user.is_some_and(|u| r.users.contains(&u)))
            .map(|r| r.emoji.as_str())
    }

    fn reacted_to_nothing(&self) -> bool {
        self.mine().next().is_none()
    }

    fn emoji<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.mine())
    }
}

/// `[Reaction]` as `{"emoji": count, …}`, in order.
fn reaction_counts<S: Serializer>(r: &Arc<[Reaction]>, s: S) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    let mut m = s.serialize_map(Some(r.len()))?;
    for x in r.iter() {
        m.serialize_entry(&x.emoji, &x.users.len())?;
    }
    m.end()
}

/// Who unsent a message, and when.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct UnsentOut {
    /// When (µs).
    pub at: u64,
    /// The sender, or the group admin who removed it.
    pub by: Id,
}

/// A membership change, as a system message describes it.
#[derive(Debug, Clone, Serialize)]
pub struct SystemOut {
    /// Who made it.
    pub actor: Id,
    /// Who joined.
    pub added: Vec<Id>,
    /// Who left or was removed.
    pub removed: Vec<Id>,
    /// Who became an admin.
    pub promoted: Vec<Id>,
    /// The new name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub renamed: Option<String>,
}

fn ids(v: &[UserId]) -> Vec<Id> {
    v.iter().map(|u| Id(u.0)).collect()
}

impl MessageOut {
    /// Renders a stored message.
    pub fn from_stored(conv: u64, m: StoredMessage) -> MessageOut {
        let mut msg = m.message;
        let reactions: Arc<[Reaction]> = std::mem::take(&mut msg.reactions).into();
        let system = (msg.kind == MessageKind::System)
            .then(|| records::decode::<SystemEvent>("system event", &msg.body).ok())
            .flatten()
            .map(|e| SystemOut {
                actor: Id(e.actor.0),
                added: ids(&e.added),
                removed: ids(&e.removed),
                promoted: ids(&e.promoted),
                renamed: e.renamed,
            });
        let mut sealed = None;
        let (body, body_b64) = if system.is_some() || msg.unsent.is_some() {
            (None, None)
        } else if msg.kind == MessageKind::Encrypted {
            // Checked in apply; a body that does not decode serves nobody.
            sealed = Envelope::decode(&msg.body).ok().map(Arc::new);
            (None, None)
        } else {
            text_or_b64(msg.body)
        };
        MessageOut {
            conv: Id(conv),
            seq: msg.seq.0,
            ts: m.ts,
            sender: Id(msg.sender.0),
            device: Id(msg.device.0),
            client_msg_id: msg.client_msg_id,
            kind: kind_name(msg.kind),
            body,
            body_b64,
            system,
            expires_at: msg.expires_at,
            reply_to: msg.reply_to.map(|s| s.0),
            edited_at: msg.edited_at,
            edits: (msg.edits > 0).then_some(msg.edits),
            unsent: msg.unsent.map(|u| UnsentOut {
                at: u.at,
                by: Id(u.by.0),
            }),
            reactions: Arc::clone(&reactions),
            viewer: Viewer {
                user: None,
                reactions,
            },
            mentions: ids(&msg.mentions),
            prior: msg
                .prior
                .into_iter()
                .map(|p| {
                    let (body, body_b64) = text_or_b64(p.body);
                    PriorOut {
                        replaced_at: p.replaced_at,
                        body,
                        body_b64,
                    }
                })
                .collect(),
            sealed,
        }
    }

    /// An encrypted message as one device reads it: its own ciphertext in
    /// `body_b64` (none for the device that sent it, or one the sender
    /// did not encrypt for). Other messages are unchanged.
    pub fn open_for(mut self, user: UserId, device: DeviceId) -> MessageOut {
        if let Some(e) = self.sealed.take() {
            self.body_b64 = e
                .for_device(user, device)
                .map(|c| base64::engine::general_purpose::STANDARD.encode(c));
        }
        self
    }

    /// This message as `viewer` sees it: which reactions are theirs.
    pub fn for_viewer(mut self, viewer: UserId) -> MessageOut {
        self.viewer.user = Some(viewer);
        self
    }
}

/// What happened, in an `event` frame.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum EventOut {
    /// A message; `message` is null if it expired before it could be read.
    Message {
        /// The message's seq in its conversation, always present, so a
        /// client can tell an expired message from a gap.
        seq: u64,
        /// The message (boxed: it is most of the frame's size, and the
        /// other events are small).
        message: Option<Box<MessageOut>>,
    },
    /// A member's receipt watermarks rose.
    Receipt {
        /// Whose.
        user: Id,
        /// Delivered up to this seq.
        delivered: u64,
        /// Read up to this seq.
        read: u64,
    },
    /// Members joined or left (the conversation's creation included).
    Membership {
        /// Membership version after the change.
        version: u64,
        /// Who joined.
        added: Vec<Id>,
        /// Who left or was removed.
        removed: Vec<Id>,
    },
    /// A message was edited; `message` is its new state (null if it
    /// expired or was unsent since).
    Edited {
        /// The message's seq.
        seq: u64,
        /// When it was edited (µs).
        edited_at: u64,
        /// The message now.
        message: Option<Box<MessageOut>>,
    },
    /// A message was deleted for everyone: drop its body.
    Unsent {
        /// The message's seq.
        seq: u64,
        /// Who unsent it.
        by: Id,
    },
    /// A member pinned or unpinned a message.
    Pin {
        /// The message's seq.
        seq: u64,
        /// Who.
        by: Id,
        /// Pinned (true) or unpinned.
        pinned: bool,
    },
    /// You (on some device) deleted a message for yourself: hide it.
    Hidden {
        /// The message's seq.
        seq: u64,
    },
    /// You (on some device) blocked or unblocked a user.
    Block {
        /// The other user.
        user: Id,
        /// Blocked (true) or unblocked.
        blocked: bool,
    },
    /// A member added or removed an emoji on a message.
    Reaction {
        /// The message's seq.
        seq: u64,
        /// Who.
        user: Id,
        /// The emoji.
        emoji: String,
        /// Added (true) or removed.
        added: bool,
    },
    /// A message mentions you (right after its `message` event).
    Mention {
        /// The message's seq.
        seq: u64,
        /// Who sent it.
        sender: Id,
    },
    /// The conversation's settings changed.
    Settings {
        /// Who changed them.
        by: Id,
        /// The settings now.
        settings: SettingsOut,
    },
    /// The conversation became end-to-end encrypted.
    Encrypted {
        /// Who turned it on.
        by: Id,
    },
    /// A member's device list changed: a device was `added`, changed its
    /// identity key (`identity_changed`), or was `removed`.
    DeviceKeys {
        /// Whose device.
        user: Id,
        /// The device.
        device: Id,
        /// What changed.
        change: &'static str,
    },
    /// One of your devices is running out of one-time pre-keys (an
    /// account event, conversation "0").
    PreKeysLow {
        /// The device that should publish more.
        device: Id,
        /// How many it has left.
        remaining: u64,
    },
}

/// Server → client frames on the WebSocket.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame {
    /// A send was durably committed.
    Sent {
        /// The request id the client gave.
        id: String,
        /// The conversation.
        conv: Id,
        /// Its seq.
        seq: u64,
        /// Its ts.
        ts: u64,
        /// True if this resend matched an already stored message.
        duplicate: bool,
    },
    /// Receipt watermarks after a `receipt` request.
    ReceiptSet {
        /// The request id.
        id: String,
        /// The conversation.
        conv: Id,
        /// Delivered up to.
        delivered: u64,
        /// Read up to.
        read: u64,
    },
    /// An `edit`, `unsend` or `react` was durably committed.
    Changed {
        /// The request id.
        id: String,
        /// The conversation.
        conv: Id,
        /// The message.
        seq: u64,
        /// When the change happened (µs; an edit's `edited_at`).
        at: u64,
        /// False if it changed nothing (a repeated unsend, a reaction
        /// already there or already gone).
        changed: bool,
    },
    /// A conversation's settings (answer to `configure`).
    Settings {
        /// The request id.
        id: String,
        /// The conversation.
        conv: Id,
        /// The settings now.
        settings: SettingsOut,
        /// Whether push notifications show previews now, if the request
        /// set it.
        #[serde(skip_serializing_if = "Option::is_none")]
        push_previews: Option<bool>,
        /// False if the request changed nothing.
        changed: bool,
    },
    /// This device's keys (answer to `publish_keys`, `key_status`,
    /// `remove_keys`).
    Keys {
        /// The request id.
        id: String,
        /// The device.
        device: Id,
        /// One-time pre-keys it has left.
        one_time_prekeys: u64,
        /// `added`, `identity_changed`, `removed`, or null.
        change: Option<&'static str>,
    },
    /// A user's devices' keys (answer to `device_keys`, `claim_keys`).
    DeviceKeys {
        /// The request id.
        id: String,
        /// The user.
        user: Id,
        /// Their devices.
        devices: Vec<crate::e2ee::BundleOut>,
    },
    /// A conversation's pinned messages (answer to `pins`).
    Pins {
        /// The request id.
        id: String,
        /// The conversation.
        conv: Id,
        /// Most recently pinned first.
        pins: Vec<PinOut>,
    },
    /// A `block` was committed.
    BlockSet {
        /// The request id.
        id: String,
        /// The other user.
        user: Id,
        /// Blocked now (true) or not.
        blocked: bool,
    },
    /// A `revoke` was committed (the tokens it names stop working on
    /// every node within seconds).
    Revoked {
        /// The request id.
        id: String,
    },
    /// A page of your conversation list (answer to `conversations`).
    Conversations {
        /// The request id.
        id: String,
        /// Most recently active first.
        conversations: Vec<ListItemOut>,
        /// Pass as `before` for the next page; absent on the last.
        #[serde(skip_serializing_if = "Option::is_none")]
        next_before: Option<String>,
    },
    /// The users you block (answer to `blocks`).
    Blocks {
        /// The request id.
        id: String,
        /// Who, and since when.
        users: Vec<BlockedOut>,
    },
    /// A history page.
    History {
        /// The request id.
        id: String,
        /// The conversation.
        conv: Id,
        /// Newest first.
        messages: Vec<MessageOut>,
        /// Pass as `before` for the next (older) page; absent at the start.
        #[serde(skip_serializing_if = "Option::is_none")]
        next_before: Option<u64>,
        /// Pass as `after` for the newer page; absent when it is not
        /// known to exist (the newest page, a short page going forward).
        #[serde(skip_serializing_if = "Option::is_none")]
        next_after: Option<u64>,
    },
    /// A page of search hits (answer to `search`), newest first.
    SearchResult {
        /// The request id.
        id: String,
        /// The hits.
        hits: Vec<crate::service::SearchHitOut>,
        /// Pass as `cursor` for the next page; absent on the last.
        #[serde(skip_serializing_if = "Option::is_none")]
        next: Option<String>,
    },
    /// A signed download URL (answer to `media_url`).
    MediaUrl {
        /// The request id.
        id: String,
        /// The object (64 hex digits).
        media_id: String,
        /// Path and query to GET, relative to the server; no token needed.
        url: String,
        /// When the URL stops working (seconds since the epoch).
        expires_at: u64,
        /// The object's MIME type.
        mime: String,
        /// Its length (bytes).
        size: u64,
    },
    /// One inbox event (sync and live alike).
    Event {
        /// The user's event sequence number: the sync cursor.
        useq: u64,
        /// The conversation.
        conv: Id,
        /// When (µs).
        at: u64,
        /// What.
        event: EventOut,
    },
    /// Sync reached the newest event; live events follow.
    Synced {
        /// The cursor at that moment.
        cursor: u64,
    },
    /// Answer to a ping.
    Pong {
        /// The request id.
        id: String,
    },
    /// A request or frame failed; the connection stays open.
    Error {
        /// The request id, if the frame had one.
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<String>,
        /// Stable code.
        code: String,
        /// For a person.
        message: String,
        /// When to retry.
        #[serde(skip_serializing_if = "Option::is_none")]
        retry_after_ms: Option<u64>,
        /// With `stale_devices`: `missing_devices` and `extra_devices`.
        #[serde(flatten)]
        stale: Option<Box<crate::error::StaleDevices>>,
    },
    /// Answer to `presence`: the watched users now.
    PresenceState {
        /// The request id.
        id: String,
        /// Users you may watch, and their presence.
        users: Vec<PresenceOut>,
        /// Users you asked for but share no conversation with (not watched).
        hidden: Vec<Id>,
    },
    /// A watched user came online or went offline.
    Presence(PresenceOut),
    /// Another member started or stopped typing.
    Typing {
        /// The conversation.
        conv: Id,
        /// Who.
        user: Id,
        /// Started (true) or stopped.
        typing: bool,
    },
}

/// A pinned message.
#[derive(Debug, Clone, Serialize)]
pub struct PinOut {
    /// Its seq.
    pub seq: u64,
    /// Who pinned it.
    pub by: Id,
    /// When (µs).
    pub at: u64,
    /// The message as you see it; null if it expired since.
    pub message: Option<MessageOut>,
}

/// A user you block.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct BlockedOut {
    /// The user.
    pub user: Id,
    /// Since when (µs).
    pub since: u64,
}

/// One user's presence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PresenceOut {
    /// The user.
    pub user: Id,
    /// Has a socket open on some node now.
    pub online: bool,
    /// When their last socket closed (µs), if any node saw it.
    pub last_seen: Option<u64>,
}

impl ServerFrame {
    /// An error frame for `e`.
    pub fn error(id: Option<String>, e: &ApiError) -> ServerFrame {
        ServerFrame::Error {
            id,
            code: e.code.to_string(),
            message: e.message.clone(),
            retry_after_ms: e.retry_after_ms,
            stale: e.stale.clone(),
        }
    }
}

/// Client → server frames on the WebSocket.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientFrame {
    /// Send a message.
    Send {
        /// Request id, echoed in the answer.
        id: String,
        /// The conversation.
        conv: Id,
        /// The client's id for the message (idempotency key, ≤ 128 bytes).
        client_msg_id: String,
        /// Message kind (default text).
        #[serde(default)]
        kind: Option<String>,
        /// Text body.
        #[serde(default)]
        body: Option<String>,
        /// Binary body, base64.
        #[serde(default)]
        body_b64: Option<String>,
        /// Disappear this long after sending, ms.
        #[serde(default)]
        expires_in_ms: Option<u64>,
        /// The seq of the message this one answers.
        #[serde(default)]
        reply_to: Option<u64>,
        /// The users it mentions (at most 50).
        #[serde(default)]
        mentions: Vec<Id>,
        /// With kind `encrypted`: one ciphertext per recipient device.
        #[serde(default)]
        payloads: Vec<crate::e2ee::PayloadIn>,
    },
    /// Change a conversation's settings.
    Configure {
        /// Request id.
        id: String,
        /// The conversation.
        conv: Id,
        /// `shared` or `joined`.
        #[serde(default)]
        history: Option<String>,
        /// Whether edits keep the bodies they replace.
        #[serde(default)]
        keep_edits: Option<bool>,
        /// `default`, `forever` or `days`.
        #[serde(default)]
        retention: Option<String>,
        /// With `days`: how many.
        #[serde(default)]
        retention_days: Option<u32>,
        /// `true`: make it end-to-end encrypted (one way).
        #[serde(default)]
        encrypted: Option<bool>,
        /// Whether push notifications show a preview.
        #[serde(default)]
        push_previews: Option<bool>,
    },
    /// Publish this device's end-to-end encryption keys.
    PublishKeys {
        /// Request id.
        id: String,
        /// The keys.
        #[serde(flatten)]
        keys: crate::e2ee::PublishIn,
    },
    /// This device's one-time pre-keys left.
    KeyStatus {
        /// Request id.
        id: String,
    },
    /// A user's device list (nothing consumed).
    DeviceKeys {
        /// Request id.
        id: String,
        /// The user.
        user: Id,
    },
    /// A bundle per device of a user, each consuming a one-time pre-key.
    ClaimKeys {
        /// Request id.
        id: String,
        /// The user.
        user: Id,
        /// Only these devices (default: all).
        #[serde(default)]
        devices: Vec<Id>,
    },
    /// Remove one of this user's devices (default: this one) from the key
    /// directory.
    RemoveKeys {
        /// Request id.
        id: String,
        /// The device.
        #[serde(default)]
        device: Option<Id>,
    },
    /// Replace the body of a message this user sent.
    Edit {
        /// Request id.
        id: String,
        /// The conversation.
        conv: Id,
        /// The message.
        seq: u64,
        /// Text body.
        #[serde(default)]
        body: Option<String>,
        /// Binary body, base64.
        #[serde(default)]
        body_b64: Option<String>,
    },
    /// Delete a message for everyone.
    Unsend {
        /// Request id.
        id: String,
        /// The conversation.
        conv: Id,
        /// The message.
        seq: u64,
    },
    /// Add (or, with `add: false`, remove) an emoji on a message.
    React {
        /// Request id.
        id: String,
        /// The conversation.
        conv: Id,
        /// The message.
        seq: u64,
        /// The emoji.
        emoji: String,
        /// Add (default) or remove.
        #[serde(default = "yes")]
        add: bool,
    },
    /// Pin (or, with `pin: false`, unpin) a message.
    Pin {
        /// Request id.
        id: String,
        /// The conversation.
        conv: Id,
        /// The message.
        seq: u64,
        /// Pin (default) or unpin.
        #[serde(default = "yes")]
        pin: bool,
    },
    /// Read a conversation's pinned messages.
    Pins {
        /// Request id.
        id: String,
        /// The conversation.
        conv: Id,
    },
    /// Delete a message for yourself only.
    Hide {
        /// Request id.
        id: String,
        /// The conversation.
        conv: Id,
        /// The message.
        seq: u64,
    },
    /// Block (or, with `block: false`, unblock) a user.
    Block {
        /// Request id.
        id: String,
        /// The user.
        user: Id,
        /// Block (default) or unblock.
        #[serde(default = "yes")]
        block: bool,
    },
    /// Read the users you block.
    Blocks {
        /// Request id.
        id: String,
    },
    /// Log devices out: revoke the tokens of `devices`, or with `others`
    /// every device's but this one's.
    Revoke {
        /// Request id.
        id: String,
        /// Devices to log out.
        #[serde(default)]
        devices: Vec<Id>,
        /// Every device but this one.
        #[serde(default)]
        others: bool,
    },
    /// Read a page of your conversation list.
    Conversations {
        /// Request id.
        id: String,
        /// A previous page's `next_before`.
        #[serde(default)]
        before: Option<String>,
        /// Page size (default 50).
        #[serde(default)]
        limit: Option<usize>,
    },
    /// Raise this user's receipt watermarks.
    Receipt {
        /// Request id.
        id: String,
        /// The conversation.
        conv: Id,
        /// Delivered up to this seq.
        #[serde(default)]
        delivered: Option<u64>,
        /// Read up to this seq.
        #[serde(default)]
        read: Option<u64>,
    },
    /// Read a history page.
    History {
        /// Request id.
        id: String,
        /// The conversation.
        conv: Id,
        /// Only messages older than this ts (a previous page's
        /// `next_before`).
        #[serde(default)]
        before: Option<u64>,
        /// Only messages newer than this ts (a page's `next_after`).
        #[serde(default)]
        after: Option<u64>,
        /// The message at this ts and the ones around it.
        #[serde(default)]
        around: Option<u64>,
        /// Page size (default 50).
        #[serde(default)]
        limit: Option<usize>,
    },
    /// Search the caller's messages (see protocol.md, "Search").
    Search {
        /// Request id.
        id: String,
        /// The words; the last is a prefix unless the text ends in a space.
        q: String,
        /// Only this conversation.
        #[serde(default)]
        conv: Option<Id>,
        /// Only messages from this user.
        #[serde(default)]
        sender: Option<Id>,
        /// Only messages sent at or after this ts (µs).
        #[serde(default)]
        since: Option<u64>,
        /// Only messages sent before this ts (µs).
        #[serde(default)]
        until: Option<u64>,
        /// text, media, reply or link.
        #[serde(default)]
        kind: Option<String>,
        /// The previous page's `next`.
        #[serde(default)]
        cursor: Option<String>,
        /// 1..=100 (default 20).
        #[serde(default)]
        limit: Option<usize>,
    },
    /// Start (or restart) the event stream after `after` (the last useq
    /// the device processed; 0 for everything).
    Sync {
        /// Request id, echoed only on an error (a bad cursor).
        #[serde(default)]
        id: Option<String>,
        /// The cursor.
        after: u64,
    },
    /// Keep-alive.
    Ping {
        /// Request id.
        id: String,
    },
    /// Watch these users' presence (replaces what this socket watched).
    Presence {
        /// Request id.
        id: String,
        /// Users to watch (at most 500).
        users: Vec<Id>,
    },
    /// A signed, expiring URL to download a media object.
    MediaUrl {
        /// Request id.
        id: String,
        /// The object (64 hex digits).
        media: String,
        /// The conversation whose message names it (unless you uploaded it).
        #[serde(default)]
        conv: Option<Id>,
    },
    /// This user started or stopped typing in `conv`. No answer unless it
    /// fails.
    Typing {
        /// Request id, echoed only on an error.
        #[serde(default)]
        id: Option<String>,
        /// The conversation.
        conv: Id,
        /// Started (true) or stopped.
        typing: bool,
    },
}

fn yes() -> bool {
    true
}

/// Renders an inbox event with the message it names, if it names one
/// (read by the caller: see `Service::render_event`).
pub fn event_out(e: &InboxEvent, message: Option<MessageOut>) -> EventOut {
    match &e.event {
        EventKind::Message { seq, .. } => EventOut::Message {
            seq: seq.0,
            message: message.map(Box::new),
        },
        EventKind::Edited { seq, edited_at, .. } => EventOut::Edited {
            seq: seq.0,
            edited_at: *edited_at,
            message: message.map(Box::new),
        },
        EventKind::Unsent { seq, by, .. } => EventOut::Unsent {
            seq: seq.0,
            by: Id(by.0),
        },
        EventKind::Pinned { seq, by, pinned } => EventOut::Pin {
            seq: seq.0,
            by: Id(by.0),
            pinned: *pinned,
        },
        EventKind::Hidden { seq } => EventOut::Hidden { seq: seq.0 },
        EventKind::Mentioned { seq, sender } => EventOut::Mention {
            seq: seq.0,
            sender: Id(sender.0),
        },
        EventKind::Configured { by, settings } => EventOut::Settings {
            by: Id(by.0),
            settings: (*settings).into(),
        },
        EventKind::Blocked { user, blocked } => EventOut::Block {
            user: Id(user.0),
            blocked: *blocked,
        },
        EventKind::Reacted {
            seq,
            user,
            emoji,
            added,
        } => EventOut::Reaction {
            seq: seq.0,
            user: Id(user.0),
            emoji: emoji.clone(),
            added: *added,
        },
        EventKind::Receipt {
            user,
            delivered,
            read,
        } => EventOut::Receipt {
            user: Id(user.0),
            delivered: delivered.0,
            read: read.0,
        },
        EventKind::Membership {
            version,
            added,
            removed,
        } => EventOut::Membership {
            version: *version,
            added: ids(added),
            removed: ids(removed),
        },
        EventKind::Encrypted { by } => EventOut::Encrypted { by: Id(by.0) },
        EventKind::DeviceKeys {
            user,
            device,
            change,
        } => EventOut::DeviceKeys {
            user: Id(user.0),
            device: Id(device.0),
            change: change.as_str(),
        },
        EventKind::PreKeysLow { device, remaining } => EventOut::PreKeysLow {
            device: Id(device.0),
            remaining: *remaining,
        },
    }
}

/// Pins as the edges send them.
pub fn pins_out(list: Vec<(records::Pin, Option<MessageOut>)>) -> Vec<PinOut> {
    list.into_iter()
        .map(|(p, message)| PinOut {
            seq: p.seq.0,
            by: Id(p.by.0),
            at: p.at,
            message,
        })
        .collect()
}

/// Blocked users as the edges send them.
pub fn blocked_out(list: Vec<(UserId, u64)>) -> Vec<BlockedOut> {
    list.into_iter()
        .map(|(u, since)| BlockedOut {
            user: Id(u.0),
            since,
        })
        .collect()
}

/// A conversation list entry as the edges send it.
#[derive(Debug, Clone, Serialize)]
pub struct ListItemOut {
    /// The conversation.
    pub conv: Id,
    /// `direct` or `group`.
    pub kind: &'static str,
    /// The group's name ("" for direct conversations).
    pub name: String,
    /// Members.
    pub member_count: usize,
    /// The newest seq you got.
    pub last_seq: u64,
    /// Its ts: the conversation's last activity (µs).
    pub last_activity: u64,
    /// Your read watermark.
    pub read: u64,
    /// Your delivered watermark.
    pub delivered: u64,
    /// Messages after your read watermark.
    pub unread: u64,
    /// Unread messages that mention you.
    pub mentions: usize,
    /// The newest message as you see it (a tombstone if unsent; null if
    /// expired, deleted for you, or none yet).
    pub last_message: Option<MessageOut>,
}
