//! The JSON the server speaks: WebSocket frames, HTTP bodies, and how
//! stored records render. docs/protocol.md documents every field; this file
//! and that one change together.
//!
//! 64-bit ids (users, devices, conversations) are decimal *strings* in
//! JSON, since JavaScript numbers lose precision above 2^53; a number is
//! accepted on input. Timestamps (µs since the epoch, < 2^53 until the
//! year 2255) and seqs are numbers.

use base64::Engine as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use missive_chat::apply::SystemEvent;
use missive_chat::command::{MessageKind, UserId};
use missive_chat::records::{self, EventKind, InboxEvent};
use missive_chat::StoredMessage;

use crate::error::ApiError;

/// A 64-bit id: a decimal string in JSON (a number is accepted on input).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Id(pub u64);

impl Serialize for Id {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Id {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            S(String),
            N(u64),
        }
        match Raw::deserialize(d)? {
            Raw::N(n) => Ok(Id(n)),
            Raw::S(s) => s
                .parse()
                .map(Id)
                .map_err(|_| serde::de::Error::custom(format!("{s:?} is not a decimal id"))),
        }
    }
}

impl From<UserId> for Id {
    fn from(u: UserId) -> Self {
        Id(u.0)
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
    }
}

/// Parses a client-sendable kind (`system` is the server's own).
pub fn parse_kind(s: &str) -> Result<MessageKind, ApiError> {
    Ok(match s {
        "text" => MessageKind::Text,
        "media" => MessageKind::Media,
        "reply" => MessageKind::Reply,
        "reaction" => MessageKind::Reaction,
        "edit" => MessageKind::Edit,
        "unsend" => MessageKind::Unsend,
        other => {
            return Err(ApiError::invalid(format!(
                "kind {other:?} is not one of text, media, reply, reaction, edit, unsend"
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

impl BodyIn {
    /// The bytes, checked against `max` bytes.
    pub fn bytes(self, max: usize) -> Result<Vec<u8>, ApiError> {
        let b = match (self.body, self.body_b64) {
            (Some(_), Some(_)) => {
                return Err(ApiError::invalid("give body or body_b64, not both"));
            }
            (Some(t), None) => t.into_bytes(),
            (None, Some(b)) => base64::engine::general_purpose::STANDARD
                .decode(b)
                .map_err(|e| ApiError::invalid(format!("body_b64 is not base64: {e}")))?,
            (None, None) => Vec::new(),
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
        let msg = m.message;
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
        let (body, body_b64) = if system.is_some() {
            (None, None)
        } else {
            match String::from_utf8(msg.body) {
                Ok(t) => (Some(t), None),
                Err(e) => (
                    None,
                    Some(base64::engine::general_purpose::STANDARD.encode(e.as_bytes())),
                ),
            }
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
        }
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
        /// Page size (default 50).
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

/// Renders an inbox event (without the message body: see `sync`).
pub fn event_out(e: &InboxEvent, message: Option<MessageOut>) -> EventOut {
    match &e.event {
        EventKind::Message { seq, .. } => EventOut::Message {
            seq: seq.0,
            message: message.map(Box::new),
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
    }
}
