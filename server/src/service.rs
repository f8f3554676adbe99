//! The message service: what a caller may do, as operations over the
//! replicated store. HTTP handlers, WebSocket frames and gRPC calls all
//! call these, so the rules (membership, limits, idempotency) live in one
//! place.
//!
//! Writes go through the chat domain's commands and return only once
//! committed on a quorum and applied (persist before ack). Reads that
//! decide access (membership) are linearizable (`Service::read`): the
//! shard's leader confirms its leadership first; a follower asks the leader
//! for a read index and applies up to it; a node that does not replicate
//! the shard asks its leader over the transport. Reads that follow the
//! inbox (sync pages, heads, the messages events name) and display reads
//! (profiles, devices, receipts) take the replica's applied state, which
//! may lag and never goes backwards: a wake, or the next page, re-reads.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::http::StatusCode;

use missive_chat::command::{
    Command, ConversationKind, DeviceId, MessageKind, NewMessage, Outcome, SendMessage, UserId,
    MAX_MENTIONS_PER_MESSAGE,
};
use missive_chat::records::{
    Conversation, Device, EventKind, InboxEvent, Message, Profile, Settings, UserConv,
};
use missive_chat::{ChatNode as Node, Eseq, Seq, StoredMessage, Useq};
use missive_engine::keys::ConversationId;
use missive_raft::node::Consistency;

use crate::auth::Caller;
use crate::config::{Limits, MessagesSection};
use crate::delivery::recent::RecentMessages;
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::rate::{Class, UserRates};
use crate::wire::{EventOut, MessageOut, SettingsChange};

/// How long a write waits out an election before answering `unavailable`.
pub(crate) const WRITE_WAIT: Duration = Duration::from_secs(5);
/// The most ciphertext bytes one encrypted message carries, over all its
/// payloads (the envelope is one Raft entry).
pub const MAX_ENVELOPE_BYTES: usize = 1 << 20;
/// Longest client message id, bytes.
pub const MAX_CLIENT_MSG_ID: usize = 128;
/// Longest group or display name, bytes.
pub const MAX_NAME: usize = 256;
/// Longest device platform name, bytes.
pub const MAX_PLATFORM: usize = 32;
/// Longest push token accepted, bytes (APNs tokens are 64 hex digits, FCM
/// ~160 characters, web push subscriptions a few hundred).
pub const MAX_PUSH_TOKEN: usize = 4096;

/// A message as an edge received it, to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    /// The client's id for it (the idempotency key).
    pub client_msg_id: String,
    /// What it is.
    pub kind: MessageKind,
    /// The body, decoded.
    pub body: crate::wire::Body,
    /// Disappear this long after sending, ms.
    pub expires_in_ms: Option<u64>,
    /// The seq of the message it answers, if a reply.
    pub reply_to: Option<u64>,
    /// The users it mentions.
    pub mentions: Vec<u64>,
    /// With kind `encrypted`: a ciphertext per recipient device (the body
    /// is then empty).
    pub payloads: Vec<missive_chat::e2ee::DevicePayload>,
}

/// A committed send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SentAck {
    /// Its seq.
    pub seq: u64,
    /// Its ts.
    pub ts: u64,
    /// A resend of an already stored message.
    pub duplicate: bool,
}

/// A committed edit, unsend or reaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChangeAck {
    /// The message's seq.
    pub seq: u64,
    /// When it happened (µs; an edit's `edited_at`).
    pub at: u64,
    /// False if it changed nothing.
    pub changed: bool,
}

/// What a `configure` came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Configured {
    /// The settings after it.
    pub settings: Settings,
    /// Push previews after it, if it set them.
    pub push_previews: Option<bool>,
    /// False if it changed nothing.
    pub changed: bool,
}

/// Where a history page is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cursor {
    /// The newest messages.
    Latest,
    /// Messages older than this ts.
    Before(u64),
    /// Messages right after this ts.
    After(u64),
    /// The message at this ts and the ones around it.
    Around(u64),
}

impl Cursor {
    /// The cursor of a request's `before`, `after` and `around` (at most
    /// one).
    pub fn of(
        before: Option<u64>,
        after: Option<u64>,
        around: Option<u64>,
    ) -> Result<Cursor, ApiError> {
        match (before, after, around) {
            (None, None, None) => Ok(Cursor::Latest),
            (Some(b), None, None) => Ok(Cursor::Before(b)),
            (None, Some(a), None) => Ok(Cursor::After(a)),
            (None, None, Some(x)) => Ok(Cursor::Around(x)),
            _ => Err(ApiError::invalid(
                "give at most one of before, after and around",
            )),
        }
    }
}

/// A search as an edge received it (see protocol.md, "Search").
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SearchQuery {
    /// The words; the last one is a prefix unless the text ends in a space.
    pub text: String,
    /// Only this conversation.
    pub conv: Option<ConversationId>,
    /// Only messages from this user.
    pub sender: Option<UserId>,
    /// Only messages sent at or after this ts (µs).
    pub since: Option<u64>,
    /// Only messages sent before this ts (µs).
    pub until: Option<u64>,
    /// Only messages of this kind: `text`, `media`, `reply` or `link`.
    pub kind: Option<String>,
    /// The previous page's `next`.
    pub cursor: Option<String>,
    /// Most hits (1..=100, default 20).
    pub limit: Option<usize>,
}

/// One hit of a search: the message as the caller sees it, and where the
/// words matched.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SearchHitOut {
    /// The message.
    pub message: MessageOut,
    /// Up to 160 characters of its body around the first match.
    pub snippet: String,
    /// The matches in `snippet`: `[start, end)` in characters (Unicode
    /// scalar values).
    pub highlights: Vec<[u32; 2]>,
}

/// A page of search hits, newest first.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SearchPageOut {
    /// The hits.
    pub hits: Vec<SearchHitOut>,
    /// Pass as `cursor` for the next page; absent on the last.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

/// A history page.
#[derive(Debug, Clone)]
pub struct Page {
    /// Newest first.
    pub messages: Vec<MessageOut>,
    /// Pass as `before` for the older page; None when none is known to
    /// exist (a short page going back).
    pub next_before: Option<u64>,
    /// Pass as `after` for the newer page; None when none is known to
    /// exist.
    pub next_after: Option<u64>,
}

/// A conversation in a user's list.
#[derive(Debug, Clone)]
pub struct ListEntry {
    /// Its id.
    pub conv: ConversationId,
    /// The user's view (last seq, last activity, read watermark).
    pub view: UserConv,
}

/// A conversation as a list page shows it.
#[derive(Debug, Clone)]
pub struct ListItem {
    /// Its id and the user's view of it.
    pub entry: ListEntry,
    /// Its record (name, kind, members); None if it could not be read
    /// (not expected: the user is a member).
    pub conversation: Option<Conversation>,
    /// The newest message as the user sees it (a tombstone if unsent; None
    /// if expired, hidden by the user, or none yet).
    pub last_message: Option<MessageOut>,
}

/// List items as the edges send them (here rather than in `wire`, so
/// that `wire` does not depend on the service).
pub fn list_out(items: Vec<ListItem>) -> Vec<crate::wire::ListItemOut> {
    items
        .into_iter()
        .map(|i| {
            let v = i.entry.view;
            let (kind, name, member_count) = match i.conversation {
                Some(c) => (
                    crate::wire::conversation_kind_name(c.kind),
                    c.name,
                    c.members.len(),
                ),
                None => ("direct", String::new(), 0),
            };
            crate::wire::ListItemOut {
                conv: crate::wire::Id(i.entry.conv.0),
                kind,
                name,
                member_count,
                last_seq: v.last_seq.0,
                last_activity: v.last_ts,
                read: v.read.0,
                delivered: v.delivered.0,
                unread: v.unread(),
                mentions: v.unread_mentions(),
                last_message: i.last_message,
            }
        })
        .collect()
}

/// Where a conversation list page starts: after the conversation whose
/// (last activity, id) this is, in the list's order (most recently active
/// first). Written `"<last_activity>-<conv>"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListCursor {
    /// Last activity (µs).
    pub last_ts: u64,
    /// Conversation id.
    pub conv: u64,
}

impl ListCursor {
    /// Parses `"<last_activity>-<conv>"`.
    pub fn parse(s: &str) -> Result<ListCursor, ApiError> {
        let bad = || {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_cursor",
                "before must be a previous page's next_before",
            )
        };
        let (ts, conv) = s.split_once('-').ok_or_else(bad)?;
        Ok(ListCursor {
            last_ts: ts.parse().map_err(|_| bad())?,
            conv: conv.parse().map_err(|_| bad())?,
        })
    }

    /// The cursor's text.
    pub fn text(self) -> String {
        format!("{}-{}", self.last_ts, self.conv)
    }
}

/// The service.
pub struct Service {
    /// The node (store and replication).
    pub node: Node,
    /// Limits.
    pub limits: Limits,
    /// What members may do to sent messages.
    pub messages: MessagesSection,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// Recent messages as clients see them.
    pub recent: RecentMessages,
    /// Per-user request rates.
    pub rates: UserRates,
    /// Media limits and the URL signing key.
    pub media: crate::media::MediaConfig,
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service").finish_non_exhaustive()
    }
}

fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

pub use missive_chat::direct_id;

fn check_name(name: &str) -> Result<(), ApiError> {
    if name.len() > MAX_NAME {
        return Err(ApiError::invalid(format!(
            "the name is {} bytes; the limit is {MAX_NAME}",
            name.len()
        )));
    }
    Ok(())
}

impl Service {
    /// A service over `node`.
    pub fn new(
        node: Node,
        limits: Limits,
        messages: MessagesSection,
        metrics: Arc<Metrics>,
    ) -> Self {
        Service {
            rates: UserRates::new(&limits, Arc::clone(&metrics)),
            recent: RecentMessages::new(
                limits.message_cache_bytes,
                node.revisions(),
                Arc::clone(&metrics),
            ),
            node,
            limits,
            messages,
            metrics,
            media: crate::media::MediaConfig::default(),
        }
    }

    /// The same service with these media settings.
    pub fn with_media(mut self, media: crate::media::MediaConfig) -> Self {
        self.media = media;
        self
    }

    /// Writes a command. A conversation that does not exist answers
    /// `not_a_member`, like one the caller is not in (see the `ApiError`
    /// conversion), so that ids cannot be probed.
    pub(crate) async fn write(&self, cmd: Command) -> Result<Outcome, ApiError> {
        Ok(self.node.write(cmd, WRITE_WAIT).await?)
    }

    /// A linearizable read on whichever replica this node holds: the
    /// leader confirms its leadership, a follower first asks the leader for
    /// a read index and applies up to it. While no leader is known (an
    /// election), or the one known cannot be reached (it died and the
    /// election has not ended yet), it retries for up to `WRITE_WAIT`,
    /// then answers `unavailable`: a read is safe to repeat.
    pub(crate) async fn read<T, F, Fut>(&self, f: F) -> Result<T, ApiError>
    where
        F: Fn(Consistency) -> Fut,
        Fut: std::future::Future<Output = missive_chat::Result<T>>,
    {
        let deadline = tokio::time::Instant::now() + WRITE_WAIT;
        loop {
            match f(Consistency::Linearizable).await {
                Err(missive_chat::Error::Runtime(
                    missive_raft::Error::NotLeader { leader: None, .. }
                    | missive_raft::Error::Transport { .. },
                )) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                r => return Ok(r?),
            }
        }
    }

    /// The conversation, if `who` is a member of it; `not_a_member` for a
    /// conversation that does not exist too, so ids cannot be probed.
    pub async fn member_conversation(
        &self,
        who: UserId,
        conv: ConversationId,
    ) -> Result<Conversation, ApiError> {
        match self.read(|c| self.node.conversation(conv, c)).await? {
            Some(c) if c.is_member(who) => Ok(c),
            _ => Err(ApiError::not_a_member()),
        }
    }

    /// Sends a message (rate limited per user).
    pub async fn send(
        &self,
        who: Caller,
        conv: ConversationId,
        out: Outgoing,
    ) -> Result<SentAck, ApiError> {
        let Outgoing {
            client_msg_id,
            kind,
            body,
            expires_in_ms,
            reply_to,
            mentions,
            payloads,
        } = out;
        if mentions.len() > MAX_MENTIONS_PER_MESSAGE {
            return Err(ApiError::invalid(format!(
                "a message mentions at most {MAX_MENTIONS_PER_MESSAGE} users"
            )));
        }
        if reply_to == Some(0) {
            return Err(ApiError::invalid(
                "reply_to must be the seq (1 or more) of the message answered",
            ));
        }
        if client_msg_id.is_empty() || client_msg_id.len() > MAX_CLIENT_MSG_ID {
            return Err(ApiError::invalid(format!(
                "client_msg_id must be 1..={MAX_CLIENT_MSG_ID} bytes"
            )));
        }
        if body.len() > self.limits.max_message_bytes {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!(
                    "the body is {} bytes; the limit is {}",
                    body.len(),
                    self.limits.max_message_bytes
                ),
            ));
        }
        // Boxed: the device-list reads nest deep enough to overflow the
        // compiler's layout query limit in the WebSocket handler's future.
        let body = Box::pin(self.encrypted_body(who, conv, kind, body, payloads)).await?;
        self.check_rate(who.user)?;
        if kind == MessageKind::Media {
            self.check_media_body(who.user, &body.bytes).await?;
        }
        let expires_at = match expires_in_ms {
            Some(0) => return Err(ApiError::invalid("expires_in_ms must be positive")),
            Some(ms) => Some(now_micros().saturating_add(ms.saturating_mul(1000))),
            None => None,
        };
        // Kept for the cache: every recipient device renders this message.
        let text = body.text;
        let mut message = Message::new(
            Seq::ZERO,
            who.user,
            who.device,
            client_msg_id,
            kind,
            body.bytes,
            expires_at,
            reply_to.map(Seq),
        );
        message.text = text;
        let mark = self.recent.mark();
        let started = std::time::Instant::now();
        let out = self
            .write((if text {
                Command::SendText
            } else {
                Command::Send
            })(SendMessage {
                message: NewMessage {
                    conv,
                    sender: who.user,
                    device: who.device,
                    client_msg_id: message.client_msg_id.clone(),
                    kind,
                    body: message.body.clone(),
                    expires_at,
                    reply_to: message.reply_to,
                },
                mentions: mentions.into_iter().map(UserId).collect(),
                default_retention_micros: self.messages.retention_micros(),
            }))
            .await?;
        match out {
            Outcome::Sent {
                ts,
                seq,
                duplicate,
                expires_at,
                mentions,
            } => {
                self.metrics.messages_sent.inc();
                self.metrics.send_commit.observe(started.elapsed());
                if !duplicate && self.cacheable(conv) {
                    message.seq = seq;
                    message.expires_at = expires_at;
                    message.mentions = mentions;
                    let m = MessageOut::from_stored(conv.0, StoredMessage { ts, message });
                    self.recent.insert(&m, mark);
                }
                Ok(SentAck {
                    seq: seq.0,
                    ts,
                    duplicate,
                })
            }
            other => Err(ApiError::internal(&format!("unexpected outcome {other:?}"))),
        }
    }

    /// The body of an encrypted send: its payloads, checked against the
    /// members' device lists, as one envelope (see `crate::e2ee`). Other
    /// kinds keep their body and may not carry payloads.
    async fn encrypted_body(
        &self,
        who: Caller,
        conv: ConversationId,
        kind: MessageKind,
        body: crate::wire::Body,
        payloads: Vec<missive_chat::e2ee::DevicePayload>,
    ) -> Result<crate::wire::Body, ApiError> {
        if kind != MessageKind::Encrypted {
            if !payloads.is_empty() {
                return Err(ApiError::invalid(
                    "payloads go only with kind \"encrypted\"",
                ));
            }
            return Ok(body);
        }
        if !body.is_empty() {
            return Err(ApiError::invalid(
                "an encrypted message carries payloads, not a body",
            ));
        }
        let max = self.limits.max_message_bytes;
        let total: usize = payloads.iter().map(|p| p.ciphertext.len()).sum();
        if payloads.iter().any(|p| p.ciphertext.len() > max) || total > MAX_ENVELOPE_BYTES {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!(
                    "each ciphertext is limited to {max} bytes and all of them to \
                     {MAX_ENVELOPE_BYTES}"
                ),
            ));
        }
        let c = self.member_conversation(who.user, conv).await?;
        let envelope = self.seal(who, &c, payloads).await?;
        Ok(crate::wire::Body::opaque(envelope.encode()))
    }

    /// Whether this node may cache `conv`'s messages: it replicates the
    /// conversation's shard, so it sees every change to them (see
    /// `delivery::recent`).
    fn cacheable(&self, conv: ConversationId) -> bool {
        self.node.hosts(self.node.slots().shard_of(conv))
    }

    /// Users the rate limiters hold state for, summed over the classes
    /// (the quiet are forgotten).
    pub fn rate_limited_users(&self) -> usize {
        self.rates.users()
    }

    /// Counts one write against `who`'s send rate.
    fn check_rate(&self, who: UserId) -> Result<(), ApiError> {
        self.rates.check(Class::Send, who)
    }

    /// Runs an edit, unsend or reaction (rate limited like sends). A
    /// conversation that does not exist answers `not_a_member`, as every
    /// conversation-scoped call does, so ids cannot be probed.
    async fn change(&self, who: UserId, seq: u64, cmd: Command) -> Result<ChangeAck, ApiError> {
        if seq == 0 {
            return Err(ApiError::invalid("seq must be a message's seq (1 or more)"));
        }
        self.check_rate(who)?;
        match self.write(cmd).await? {
            Outcome::MessageChanged { seq, at, changed } => Ok(ChangeAck {
                seq: seq.0,
                at,
                changed,
            }),
            other => Err(ApiError::internal(&format!("unexpected outcome {other:?}"))),
        }
    }

    /// Replaces the body of a message `who` sent (within
    /// `messages.edit_window_secs`).
    pub async fn edit(
        &self,
        who: UserId,
        conv: ConversationId,
        seq: u64,
        body: crate::wire::Body,
    ) -> Result<ChangeAck, ApiError> {
        if body.is_empty() {
            return Err(ApiError::invalid(
                "an edit needs a body (unsend removes a message)",
            ));
        }
        if body.len() > self.limits.max_message_bytes {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!(
                    "the body is {} bytes; the limit is {}",
                    body.len(),
                    self.limits.max_message_bytes
                ),
            ));
        }
        let (seq_, window_micros) = (
            Seq(seq),
            self.messages.edit_window_secs.saturating_mul(1_000_000),
        );
        let cmd = if body.text {
            Command::EditText {
                conv,
                actor: who,
                seq: seq_,
                body: body.bytes,
                window_micros,
            }
        } else {
            Command::Edit {
                conv,
                actor: who,
                seq: seq_,
                body: body.bytes,
                window_micros,
            }
        };
        self.change(who, seq, cmd).await
    }

    /// Deletes a message for everyone (its sender within
    /// `messages.unsend_window_secs`; a group admin if
    /// `messages.admins_may_unsend`).
    pub async fn unsend(
        &self,
        who: UserId,
        conv: ConversationId,
        seq: u64,
    ) -> Result<ChangeAck, ApiError> {
        let cmd = Command::Unsend {
            conv,
            actor: who,
            seq: Seq(seq),
            window_micros: self.messages.unsend_window_secs.saturating_mul(1_000_000),
            admins_may: self.messages.admins_may_unsend,
        };
        self.change(who, seq, cmd).await
    }

    /// Adds (or removes) `who`'s emoji on a message.
    pub async fn react(
        &self,
        who: UserId,
        conv: ConversationId,
        seq: u64,
        emoji: String,
        add: bool,
    ) -> Result<ChangeAck, ApiError> {
        let max = missive_chat::command::MAX_EMOJI_BYTES;
        if emoji.is_empty() || emoji.len() > max {
            return Err(ApiError::invalid(format!("an emoji is 1..={max} bytes")));
        }
        let cmd = Command::React {
            conv,
            user: who,
            seq: Seq(seq),
            emoji,
            add,
        };
        self.change(who, seq, cmd).await
    }

    /// Pins (`pin`) or unpins a message of a conversation `who` is in.
    pub async fn pin(
        &self,
        who: UserId,
        conv: ConversationId,
        seq: u64,
        pin: bool,
    ) -> Result<ChangeAck, ApiError> {
        let cmd = Command::Pin {
            conv,
            actor: who,
            seq: Seq(seq),
            pin,
        };
        self.change(who, seq, cmd).await
    }

    /// A conversation's pinned messages (members only), most recently
    /// pinned first, each with the message as `who` sees it (None if it
    /// expired since).
    pub async fn pins(
        &self,
        caller: Caller,
        conv: ConversationId,
    ) -> Result<Vec<(missive_chat::records::Pin, Option<MessageOut>)>, ApiError> {
        let who = caller.user;
        self.rates.check(Class::History, who)?;
        let c = self.member_conversation(who, conv).await?;
        let pins = self.read(|c| self.node.pins(conv, c)).await?;
        let mut out = Vec::with_capacity(pins.list.len());
        for p in pins.list.into_iter().filter(|p| c.sees(who, p.seq)) {
            let m = self
                .node
                .message_by_seq(conv, p.seq, Consistency::Stale)
                .await?
                .map(|m| {
                    MessageOut::from_stored(conv.0, m)
                        .for_viewer(who)
                        .open_for(who, caller.device)
                });
            out.push((p, m));
        }
        Ok(out)
    }

    /// Deletes a message for `who` only: their history no longer shows it.
    pub async fn hide(
        &self,
        who: UserId,
        conv: ConversationId,
        seq: u64,
    ) -> Result<ChangeAck, ApiError> {
        let cmd = Command::Hide {
            conv,
            user: who,
            seq: Seq(seq),
        };
        self.change(who, seq, cmd).await
    }

    /// `who` blocks (`block`) or unblocks `target`.
    pub async fn block(&self, who: UserId, target: UserId, block: bool) -> Result<(), ApiError> {
        if target == who || target.0 == 0 {
            return Err(ApiError::invalid(
                "block another user (not yourself, not 0)",
            ));
        }
        self.check_rate(who)?;
        let cmd = Command::Block {
            pair: direct_id(who, target),
            blocker: who,
            target,
            block,
        };
        self.write_done(cmd).await
    }

    /// The users `who` blocks, with since when (µs).
    pub async fn blocked(&self, who: UserId) -> Result<Vec<(UserId, u64)>, ApiError> {
        Ok(self
            .node
            .blocked_users(who, Consistency::Stale)
            .await?
            .into_iter()
            .map(|(u, b)| (u, b.since))
            .collect())
    }

    /// Which of `users` block `who` (they hide their presence and typing
    /// from `who`).
    pub async fn blockers_among(
        &self,
        who: UserId,
        users: &[UserId],
    ) -> Result<std::collections::HashSet<UserId>, ApiError> {
        let checks = users
            .iter()
            .filter(|u| **u != who)
            .map(|u| async move { (*u, self.node.blocks(*u, who, Consistency::Stale).await) });
        let mut out = std::collections::HashSet::new();
        for (u, r) in futures_util::future::join_all(checks).await {
            if r? {
                out.insert(u);
            }
        }
        Ok(out)
    }

    /// Creates (or finds) the direct conversation of `who` and `peer`.
    pub async fn create_direct(
        &self,
        who: UserId,
        peer: UserId,
    ) -> Result<(ConversationId, bool), ApiError> {
        if peer == who || peer.0 == 0 {
            return Err(ApiError::invalid(
                "a direct conversation needs another user",
            ));
        }
        let conv = direct_id(who, peer);
        self.rates.check(Class::Create, who)?;
        let created = self
            .create(
                conv,
                ConversationKind::Direct,
                String::new(),
                who,
                vec![peer],
            )
            .await?;
        Ok((conv, created))
    }

    /// Creates a group with `who` as its admin.
    pub async fn create_group(
        &self,
        who: UserId,
        name: String,
        members: Vec<UserId>,
    ) -> Result<ConversationId, ApiError> {
        check_name(&name)?;
        if members.iter().any(|u| u.0 == 0) {
            return Err(ApiError::invalid("user id 0 does not exist"));
        }
        self.rates.check(Class::Create, who)?;
        let mut raw = [0u8; 8];
        getrandom::fill(&mut raw).map_err(|e| ApiError::internal(&e))?;
        let conv = ConversationId(u64::from_be_bytes(raw).max(1));
        self.create(conv, ConversationKind::Group, name, who, members)
            .await?;
        Ok(conv)
    }

    async fn create(
        &self,
        conv: ConversationId,
        kind: ConversationKind,
        name: String,
        creator: UserId,
        members: Vec<UserId>,
    ) -> Result<bool, ApiError> {
        match self
            .write(Command::CreateConversation {
                conv,
                kind,
                name,
                creator,
                members,
                max_members: self.limits.max_group_members,
            })
            .await?
        {
            Outcome::Created { created } => Ok(created),
            other => Err(ApiError::internal(&format!("unexpected outcome {other:?}"))),
        }
    }

    /// Adds, removes, promotes members or renames (admins; anyone may
    /// remove only themself: leave). Returns the system message's seq.
    pub async fn change_members(
        &self,
        who: UserId,
        conv: ConversationId,
        add: Vec<UserId>,
        remove: Vec<UserId>,
        promote: Vec<UserId>,
        rename: Option<String>,
    ) -> Result<(u64, u64), ApiError> {
        if let Some(n) = &rename {
            check_name(n)?;
        }
        if add.iter().any(|u| u.0 == 0) {
            return Err(ApiError::invalid("user id 0 does not exist"));
        }
        match self
            .write(Command::ChangeMembers {
                conv,
                actor: who,
                add,
                remove,
                promote,
                rename,
                max_members: self.limits.max_group_members,
            })
            .await?
        {
            Outcome::MembersChanged { version, seq, .. } => Ok((version, seq.0)),
            other => Err(ApiError::internal(&format!("unexpected outcome {other:?}"))),
        }
    }

    /// `who` leaves a conversation (a removal of themself).
    pub async fn leave(&self, who: UserId, conv: ConversationId) -> Result<(u64, u64), ApiError> {
        self.change_members(who, conv, vec![], vec![who], vec![], None)
            .await
    }

    /// A conversation's record and its newest seq, for a member.
    pub async fn conversation_info(
        &self,
        who: UserId,
        conv: ConversationId,
    ) -> Result<(Conversation, u64), ApiError> {
        let c = self.member_conversation(who, conv).await?;
        let head = self.node.head(conv, Consistency::Stale).await?;
        Ok((c, head.seq.0))
    }

    /// Changes a conversation's settings (see `Command::Configure`), and
    /// first turns end-to-end encryption on if asked (`Command::Encrypt`),
    /// then push previews on or off (`Command::SetPushPreviews`, so that
    /// encrypting and asking for previews at once is refused).
    pub async fn configure(
        &self,
        who: UserId,
        conv: ConversationId,
        change: SettingsChange,
    ) -> Result<Configured, ApiError> {
        let encrypted = change.encrypt && self.encrypt(who, conv).await?;
        let mut previews_changed = false;
        let push_previews = match change.push_previews {
            None => None,
            Some(on) => {
                let cmd = Command::SetPushPreviews {
                    conv,
                    actor: who,
                    on,
                };
                match self.write(cmd).await? {
                    Outcome::PushPreviews { on, changed } => {
                        previews_changed = changed;
                        Some(on)
                    }
                    other => {
                        return Err(ApiError::internal(&format!("unexpected outcome {other:?}")))
                    }
                }
            }
        };
        if change.history.is_none() && change.keep_edits.is_none() && change.retention.is_none() {
            // Nothing for `Configure` to change: the settings as they are,
            // read rather than written (the commands above left them).
            let c = self.member_conversation(who, conv).await?;
            return Ok(Configured {
                settings: c.settings,
                push_previews,
                changed: encrypted || previews_changed,
            });
        }
        let cmd = Command::Configure {
            conv,
            actor: who,
            history: change.history,
            keep_edits: change.keep_edits,
            retention: change.retention,
        };
        match self.write(cmd).await? {
            Outcome::Configured { settings, changed } => Ok(Configured {
                settings,
                push_previews,
                changed: changed || encrypted || previews_changed,
            }),
            other => Err(ApiError::internal(&format!("unexpected outcome {other:?}"))),
        }
    }

    /// A user's profile (empty if never set).
    pub async fn profile(&self, user: UserId) -> Result<Profile, ApiError> {
        Ok(self.node.profile(user, Consistency::Stale).await?)
    }

    /// Sets `who`'s display name.
    pub async fn set_profile(&self, who: UserId, display_name: String) -> Result<(), ApiError> {
        if display_name.len() > MAX_NAME {
            return Err(ApiError::invalid("display_name is too long"));
        }
        let cmd = Command::SetProfile {
            user: who,
            display_name,
        };
        self.write_done(cmd).await
    }

    /// `who`'s devices.
    pub async fn devices(&self, who: UserId) -> Result<Vec<(DeviceId, Device)>, ApiError> {
        Ok(self.node.devices(who, Consistency::Stale).await?)
    }

    /// Registers (or renames) the calling device.
    pub async fn register_device(
        &self,
        who: Caller,
        name: String,
        platform: String,
    ) -> Result<(), ApiError> {
        if name.len() > MAX_NAME || platform.len() > MAX_PLATFORM {
            return Err(ApiError::invalid(format!(
                "name (≤ {MAX_NAME} bytes) or platform (≤ {MAX_PLATFORM}) too long"
            )));
        }
        let cmd = Command::RegisterDevice {
            user: who.user,
            device: who.device,
            name,
            platform,
        };
        self.write_done(cmd).await
    }

    /// Sets (`Some`) or clears (`None`) the calling device's push token.
    pub async fn set_push_token(&self, who: Caller, token: Option<String>) -> Result<(), ApiError> {
        if token
            .as_ref()
            .is_some_and(|t| t.is_empty() || t.len() > MAX_PUSH_TOKEN)
        {
            return Err(ApiError::invalid(format!(
                "token must be 1..={MAX_PUSH_TOKEN} bytes"
            )));
        }
        let cmd = Command::SetPushToken {
            user: who.user,
            device: who.device,
            token,
        };
        self.write_done(cmd).await
    }

    /// Redeems a WebSocket ticket (once, across the cluster: the user's
    /// shard remembers the ids it redeemed until they expire).
    pub async fn use_ticket(
        &self,
        who: UserId,
        id: [u8; 16],
        expires_secs: u64,
    ) -> Result<(), ApiError> {
        use missive_chat::command::RejectCode as R;
        let cmd = Command::UseTicket {
            user: who,
            ticket: id,
            expires_secs,
        };
        match self.node.write(cmd, WRITE_WAIT).await {
            Ok(_) => Ok(()),
            Err(missive_chat::Error::Rejected { code, .. }) => Err(match code {
                R::Conflict => ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "ticket_used",
                    "this ticket was used already; get a new one",
                ),
                R::TooLate => ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "token_expired",
                    "the ticket has expired; get a new one",
                ),
                _ => ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate_limited",
                    "too many tickets redeemed in the last minute; wait and retry",
                )
                .retry_after(1_000),
            }),
            Err(e) => Err(e.into()),
        }
    }

    /// Revokes the tokens of `scope`'s devices of `who` issued up to now.
    pub async fn revoke_sessions(
        &self,
        who: UserId,
        scope: missive_chat::command::RevokeScope,
    ) -> Result<(), ApiError> {
        if let missive_chat::command::RevokeScope::Devices(d) = &scope {
            let max = missive_chat::command::MAX_REVOKED_DEVICES;
            if d.is_empty() || d.len() > max {
                return Err(ApiError::invalid(format!("name 1 to {max} devices")));
            }
        }
        self.write_done(Command::RevokeSessions { user: who, scope })
            .await
    }

    /// A write whose outcome is `Done`.
    async fn write_done(&self, cmd: Command) -> Result<(), ApiError> {
        match self.write(cmd).await? {
            Outcome::Done => Ok(()),
            other => Err(ApiError::internal(&format!("unexpected outcome {other:?}"))),
        }
    }

    /// Every member's receipt watermarks in `conv` (members only).
    pub async fn receipts(
        &self,
        who: UserId,
        conv: ConversationId,
    ) -> Result<Vec<(UserId, missive_chat::records::Receipt)>, ApiError> {
        self.rates.check(Class::History, who)?;
        self.member_conversation(who, conv).await?;
        Ok(self.node.receipts(conv, Consistency::Stale).await?)
    }

    /// Raises `who`'s receipt watermarks.
    pub async fn set_receipt(
        &self,
        who: UserId,
        conv: ConversationId,
        delivered: Option<u64>,
        read: Option<u64>,
    ) -> Result<(u64, u64), ApiError> {
        if delivered.is_none() && read.is_none() {
            return Err(ApiError::invalid("give delivered, read or both"));
        }
        self.rates.check(Class::Receipt, who)?;
        match self
            .write(Command::SetReceipt {
                conv,
                user: who,
                delivered: delivered.map(Seq),
                read: read.map(Seq),
            })
            .await?
        {
            Outcome::Receipt { delivered, read } => Ok((delivered.0, read.0)),
            other => Err(ApiError::internal(&format!("unexpected outcome {other:?}"))),
        }
    }

    /// A history page, newest first, with the cursors of the pages next
    /// to it (timed into `history_read_seconds`).
    pub async fn history(
        &self,
        who: Caller,
        conv: ConversationId,
        cursor: Cursor,
        limit: Option<usize>,
    ) -> Result<Page, ApiError> {
        let started = std::time::Instant::now();
        let page = self.history_page(who, conv, cursor, limit).await;
        if page.is_ok() {
            self.metrics.history_read.observe(started.elapsed());
        }
        page
    }

    async fn history_page(
        &self,
        caller: Caller,
        conv: ConversationId,
        cursor: Cursor,
        limit: Option<usize>,
    ) -> Result<Page, ApiError> {
        let who = caller.user;
        let limit = limit.unwrap_or(50);
        if limit == 0 || limit > self.limits.max_page {
            return Err(ApiError::invalid(format!(
                "limit must be 1..={}",
                self.limits.max_page
            )));
        }
        if matches!(
            cursor,
            Cursor::Before(0) | Cursor::After(0) | Cursor::Around(0)
        ) {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_cursor",
                "a cursor is a message ts from a previous page (or a message's ts)",
            ));
        }
        self.rates.check(Class::History, who)?;
        let c = self.member_conversation(who, conv).await?;
        let full = |v: &Vec<MessageOut>, n: usize| v.len() == n;
        let page = match cursor {
            Cursor::Latest => {
                let messages = self.latest(conv, limit).await?;
                Page {
                    next_before: full(&messages, limit)
                        .then(|| messages.last().map(|m| m.ts))
                        .flatten(),
                    next_after: None,
                    messages,
                }
            }
            Cursor::Before(ts) => {
                let messages = self.older(conv, ts, limit).await?;
                Page {
                    next_before: full(&messages, limit)
                        .then(|| messages.last().map(|m| m.ts))
                        .flatten(),
                    next_after: messages.first().map(|m| m.ts),
                    messages,
                }
            }
            Cursor::After(ts) => {
                let messages = self.newer(conv, ts, limit).await?;
                Page {
                    next_before: messages.last().map(|m| m.ts),
                    next_after: full(&messages, limit)
                        .then(|| messages.first().map(|m| m.ts))
                        .flatten(),
                    messages,
                }
            }
            Cursor::Around(ts) => {
                // The message at `ts` (if any) and up to half a page on
                // each side of it.
                let newer_n = limit / 2;
                let older_n = limit - newer_n;
                let mut messages = self.newer(conv, ts, newer_n).await?;
                let older = self.older(conv, ts.saturating_add(1), older_n).await?;
                let next_after = (newer_n > 0 && full(&messages, newer_n))
                    .then(|| messages.first().map(|m| m.ts))
                    .flatten();
                let next_before = full(&older, older_n)
                    .then(|| older.last().map(|m| m.ts))
                    .flatten();
                messages.extend(older);
                Page {
                    messages,
                    next_before,
                    next_after,
                }
            }
        };
        // What `who` deleted for themself goes; the cursors stay those of
        // the unfiltered page, so paging neither stops early nor skips.
        // Stale is enough: the membership check above was linearizable, so
        // this replica has applied everything acknowledged before the
        // request (the user's own hides included) — a second read index
        // per page would cost a leader round trip for nothing.
        let hidden = match (page.messages.last(), page.messages.first()) {
            (Some(lo), Some(hi)) => {
                let (lo, hi) = (Seq(lo.seq), Seq(hi.seq));
                self.node
                    .hidden_between(conv, who, lo, hi, Consistency::Stale)
                    .await?
            }
            _ => Vec::new(),
        };
        // With `joined` history, what came before `who` joined is not
        // theirs to see, and nothing older is worth paging back to.
        let first_seen = c.hidden_through(who);
        let next_before = match page.messages.last() {
            Some(m) if Seq(m.seq) <= first_seen.next() => None,
            _ => page.next_before,
        };
        let messages = page
            .messages
            .into_iter()
            .filter(|m| c.sees(who, Seq(m.seq)) && !hidden.contains(&Seq(m.seq)))
            .map(|m| m.for_viewer(who).open_for(who, caller.device))
            .collect();
        Ok(Page {
            messages,
            next_before,
            ..page
        })
    }

    /// The newest `limit` messages, newest first: from the recent cache if
    /// it holds every seq of them, else from the store (which fills it).
    async fn latest(
        &self,
        conv: ConversationId,
        limit: usize,
    ) -> Result<Vec<MessageOut>, ApiError> {
        let cacheable = self.cacheable(conv);
        if cacheable {
            let head = self.read(|c| self.node.head(conv, c)).await?;
            if let Some(p) = self.cached_page(conv, head.seq.0, limit) {
                return Ok(p);
            }
        }
        self.read_page(conv, None, limit, cacheable).await
    }

    /// The page of up to `limit` messages from seq `hi` down, newest
    /// first, if the recent cache holds every one of them (none: `hi` 0).
    fn cached_page(&self, conv: ConversationId, hi: u64, limit: usize) -> Option<Vec<MessageOut>> {
        let lo = hi.saturating_sub(limit as u64 - 1).max(1);
        match hi {
            0 => Some(Vec::new()),
            hi => self.recent.range(conv.0, lo, hi, now_micros()),
        }
    }

    /// Up to `limit` messages older than `before` (the newest without it),
    /// newest first, read from the store and, if `cache`, remembered in
    /// the recent cache.
    async fn read_page(
        &self,
        conv: ConversationId,
        before: Option<u64>,
        limit: usize,
        cache: bool,
    ) -> Result<Vec<MessageOut>, ApiError> {
        let mark = self.recent.mark();
        let stored = self
            .read(|c| self.node.history(conv, before, limit, c))
            .await?;
        let msgs: Vec<MessageOut> = stored
            .into_iter()
            .map(|m| MessageOut::from_stored(conv.0, m))
            .collect();
        if cache {
            msgs.iter().for_each(|m| self.recent.insert(m, mark));
        }
        Ok(msgs)
    }

    /// Up to `limit` messages older than `ts`, newest first: from the
    /// recent cache when `ts` is a message's (the usual cursor: the oldest
    /// of the page before) and the cache holds every seq below it down to
    /// a full page, else from the store (which fills the cache, so a
    /// reader scrolling back through a busy conversation, and the next
    /// reader after them, pay the store once).
    async fn older(
        &self,
        conv: ConversationId,
        ts: u64,
        limit: usize,
    ) -> Result<Vec<MessageOut>, ApiError> {
        let cacheable = self.cacheable(conv);
        if cacheable {
            // Stale is current enough: the caller's membership check was
            // linearizable (see `history`).
            let cursor = self.node.message_at(conv, ts, Consistency::Stale).await?;
            let below = cursor.map(|at| at.message.seq.0.saturating_sub(1));
            if let Some(page) = below.and_then(|hi| self.cached_page(conv, hi, limit)) {
                return Ok(page);
            }
        }
        self.read_page(conv, Some(ts), limit, cacheable).await
    }

    /// Up to `limit` messages right after `ts`, newest first.
    async fn newer(
        &self,
        conv: ConversationId,
        ts: u64,
        limit: usize,
    ) -> Result<Vec<MessageOut>, ApiError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let stored = self
            .read(|c| self.node.history_after(conv, ts, limit, c))
            .await?;
        Ok(stored
            .into_iter()
            .rev()
            .map(|m| MessageOut::from_stored(conv.0, m))
            .collect())
    }

    /// Which of `users` share a conversation with `who` and do not block
    /// `who` (whose presence `who` may watch); `who` is always among them. Direct conversations
    /// are checked by id first (one read each); only users not found that
    /// way cost a walk over `who`'s group conversations.
    pub async fn contacts_among(
        &self,
        who: UserId,
        users: &[UserId],
    ) -> Result<std::collections::HashSet<UserId>, ApiError> {
        let mut allowed = std::collections::HashSet::new();
        let mut rest = Vec::new();
        for &u in users {
            if u == who {
                allowed.insert(u);
                continue;
            }
            let direct = direct_id(who, u);
            match self.read(|c| self.node.conversation(direct, c)).await? {
                Some(c) if c.is_member(who) && c.is_member(u) => {
                    allowed.insert(u);
                }
                _ => rest.push(u),
            }
        }
        if rest.is_empty() {
            return self.without_blockers(who, allowed).await;
        }
        for entry in self.conversation_list(who).await? {
            let Some(c) = self.read(|k| self.node.conversation(entry.conv, k)).await? else {
                continue;
            };
            if c.kind != ConversationKind::Group {
                continue;
            }
            rest.retain(|u| {
                let shared = c.is_member(*u);
                if shared {
                    allowed.insert(*u);
                }
                !shared
            });
            if rest.is_empty() {
                break;
            }
        }
        self.without_blockers(who, allowed).await
    }

    /// `allowed` less the users who block `who`.
    async fn without_blockers(
        &self,
        who: UserId,
        mut allowed: std::collections::HashSet<UserId>,
    ) -> Result<std::collections::HashSet<UserId>, ApiError> {
        let users: Vec<UserId> = allowed.iter().copied().collect();
        for u in self.blockers_among(who, &users).await? {
            allowed.remove(&u);
        }
        Ok(allowed)
    }

    /// The user's conversations they are a member of, most recently
    /// active first.
    pub async fn conversation_list(&self, who: UserId) -> Result<Vec<ListEntry>, ApiError> {
        let mut list: Vec<ListEntry> = self
            .read(|c| self.node.user_conversations(who, c))
            .await?
            .into_iter()
            .filter(|(_, v)| v.member)
            .map(|(conv, view)| ListEntry { conv, view })
            .collect();
        list.sort_by(|a, b| {
            b.view
                .last_ts
                .cmp(&a.view.last_ts)
                .then(a.conv.cmp(&b.conv))
        });
        Ok(list)
    }

    /// A page of `who`'s conversation list, most recently active first,
    /// after `before`; and the cursor of the next page (None on the last).
    /// Each item carries the conversation's name, kind and members and
    /// its newest message as `who` sees it.
    pub async fn conversation_page(
        &self,
        who: UserId,
        before: Option<ListCursor>,
        limit: Option<usize>,
    ) -> Result<(Vec<ListItem>, Option<ListCursor>), ApiError> {
        let limit = limit.unwrap_or(50);
        if limit == 0 || limit > self.limits.max_page {
            return Err(ApiError::invalid(format!(
                "limit must be 1..={}",
                self.limits.max_page
            )));
        }
        self.rates.check(Class::History, who)?;
        let key = |e: &ListEntry| ListCursor {
            last_ts: e.view.last_ts,
            conv: e.conv.0,
        };
        // The list's order: last activity descending, then id ascending.
        let after = |e: &ListEntry, c: &ListCursor| {
            let k = key(e);
            k.last_ts < c.last_ts || (k.last_ts == c.last_ts && k.conv > c.conv)
        };
        let all = self.conversation_list(who).await?;
        let mut rest = all
            .into_iter()
            .filter(|e| before.as_ref().is_none_or(|c| after(e, c)));
        let page: Vec<ListEntry> = rest.by_ref().take(limit).collect();
        let next = (rest.next().is_some())
            .then(|| page.last().map(key))
            .flatten();
        let mut items = Vec::with_capacity(page.len());
        for entry in page {
            let conversation = self
                .node
                .conversation(entry.conv, Consistency::Stale)
                .await?;
            let last_message = self.last_message(who, &entry).await?;
            items.push(ListItem {
                entry,
                conversation,
                last_message,
            });
        }
        Ok((items, next))
    }

    /// The newest message of a list entry as `who` sees it.
    async fn last_message(
        &self,
        who: UserId,
        e: &ListEntry,
    ) -> Result<Option<MessageOut>, ApiError> {
        let seq = e.view.last_seq;
        if seq == Seq::ZERO {
            return Ok(None);
        }
        let hidden = self
            .node
            .hidden_between(e.conv, who, seq, seq, Consistency::Stale)
            .await?;
        if !hidden.is_empty() {
            return Ok(None);
        }
        let now = now_micros();
        if self.cacheable(e.conv) {
            if let Some(m) = self.recent.get(e.conv.0, seq.0, now) {
                return Ok(Some(m.for_viewer(who)));
            }
        }
        Ok(self
            .node
            .message_by_seq(e.conv, seq, Consistency::Stale)
            .await?
            .map(|m| MessageOut::from_stored(e.conv.0, m).for_viewer(who)))
    }

    /// `bad_cursor` if `after` is beyond `who`'s newest event — judged
    /// on the leader's state (a read index), so that a cursor handed out
    /// by a replica ahead of this one is not refused while this one
    /// catches up, and a cursor that is really wrong is refused at once.
    /// Callers ask only when a local page's head is below `after`.
    pub async fn check_cursor(&self, who: UserId, after: u64) -> Result<(), ApiError> {
        let head = self.read(|c| self.node.user_head(who, c)).await?.useq.0;
        if after <= head {
            return Ok(());
        }
        Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_cursor",
            format!("cursor {after} is beyond this user's newest event {head}"),
        ))
    }

    /// A page of inbox events after `after`, and the newest useq now.
    pub async fn inbox_page(
        &self,
        who: UserId,
        after: u64,
        limit: usize,
    ) -> Result<(Vec<(u64, InboxEvent)>, u64), ApiError> {
        let head = self.node.user_head(who, Consistency::Stale).await?.useq;
        let events = self
            .node
            .inbox(who, Useq(after), limit, Consistency::Stale)
            .await?;
        let events = events.into_iter().map(|(n, e)| (n.0, e)).collect();
        Ok((events, head.0))
    }

    /// The message an inbox event names, from this replica, once it holds
    /// it at least `at_least` as changed as the event says (`done`). The
    /// message committed before its event was fanned out, but this replica
    /// may apply the conversation's shard a little later than the user's:
    /// wait briefly. None if it expired (disappearing messages).
    ///
    /// Once this replica's conversation has applied the event itself (its
    /// outbox reached `eseq`: the change and its event are one batch) the
    /// message is as the event left it or later, and is answered as it is
    /// — or None if absent. That is also the end of the wait for an event
    /// a restored inbox holds from past its conversation's copy (see
    /// `missive_chat::restore`): its change is never coming.
    async fn event_message(
        &self,
        conv: ConversationId,
        (seq, eseq): (u64, Eseq),
        ts: u64,
        expires_at: Option<u64>,
        done: impl Fn(&MessageOut) -> bool,
    ) -> Result<Option<MessageOut>, ApiError> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        let cacheable = self.cacheable(conv);
        loop {
            let now = now_micros();
            if expires_at.is_some_and(|e| e <= now) {
                return Ok(None);
            }
            if let Some(m) = cacheable
                .then(|| self.recent.get(conv.0, seq, now))
                .flatten()
            {
                if done(&m) {
                    return Ok(Some(m));
                }
            }
            let mark = self.recent.mark();
            let found = match self.node.message_at(conv, ts, Consistency::Stale).await? {
                Some(m) => {
                    let m = MessageOut::from_stored(conv.0, m);
                    if cacheable {
                        self.recent.insert(&m, mark);
                    }
                    if done(&m) {
                        return Ok(Some(m));
                    }
                    Some(m)
                }
                None => None,
            };
            let applied = self.node.outbox_head(conv, Consistency::Stale).await?.last;
            if applied >= eseq {
                return Ok(found);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "this replica has not caught up with the message yet",
                )
                .retry_after(500));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// An inbox event as `viewer` sees it, with the message it names read
    /// in (a new message, or an edited one in its state since the edit).
    pub async fn render_event(&self, e: &InboxEvent, viewer: Caller) -> Result<EventOut, ApiError> {
        let message = match &e.event {
            EventKind::Message {
                seq,
                ts,
                expires_at,
                ..
            } => {
                self.event_message(e.conv, (seq.0, e.eseq), *ts, *expires_at, |_| true)
                    .await?
            }
            EventKind::Edited {
                seq,
                ts,
                edited_at,
                expires_at,
            } => {
                // Not the version before the edit (a lagging replica): the
                // edit's, a later one's, or the tombstone.
                let edited = |m: &MessageOut| {
                    m.unsent.is_some() || m.edited_at.is_some_and(|at| at >= *edited_at)
                };
                self.event_message(e.conv, (seq.0, e.eseq), *ts, *expires_at, edited)
                    .await?
            }
            _ => None,
        };
        Ok(crate::wire::event_out(
            e,
            message.map(|m| {
                m.for_viewer(viewer.user)
                    .open_for(viewer.user, viewer.device)
            }),
        ))
    }

    /// A page of `who`'s search (see protocol.md, "Search"): messages of
    /// the conversations they are in now (and may see), holding every
    /// word, newest first. Rate limited like history reads. A conversation
    /// filter naming one they are not in answers `not_a_member`, as every
    /// conversation-scoped call does.
    pub async fn search(&self, who: UserId, q: SearchQuery) -> Result<SearchPageOut, ApiError> {
        use missive_chat::search::{Cursor as SearchCursor, Filters, KindFilter, SearchRequest};
        let limit = q.limit.unwrap_or(20);
        let kind = match q.kind.as_deref() {
            None | Some("") => None,
            Some("text") => Some(KindFilter::Text),
            Some("media") => Some(KindFilter::Media),
            Some("reply") => Some(KindFilter::Reply),
            Some("link") => Some(KindFilter::Link),
            Some(other) => {
                return Err(ApiError::invalid(format!(
                    "kind {other:?} is not one of text, media, reply, link"
                )))
            }
        };
        let after = match q.cursor.as_deref() {
            None | Some("") => None,
            Some(c) => Some(SearchCursor::parse(c).ok_or_else(|| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "bad_cursor",
                    "a search cursor is the `next` of a previous page",
                )
            })?),
        };
        if let (Some(since), Some(until)) = (q.since, q.until) {
            if since >= until {
                return Err(ApiError::invalid("since must be before until"));
            }
        }
        self.rates.check(Class::History, who)?;
        if let Some(conv) = q.conv {
            self.member_conversation(who, conv).await?;
        }
        let req = SearchRequest {
            text: q.text,
            conv: q.conv,
            filters: Filters {
                sender: q.sender,
                since: q.since,
                until: q.until,
                kind,
            },
            after,
            limit,
        };
        let page = self.read(|c| self.node.search(who, &req, c)).await?;
        Ok(SearchPageOut {
            hits: page
                .hits
                .into_iter()
                .map(|h| SearchHitOut {
                    message: MessageOut::from_stored(h.conv.0, h.message).for_viewer(who),
                    snippet: h.snippet,
                    highlights: h.highlights.into_iter().map(|(a, b)| [a, b]).collect(),
                })
                .collect(),
            next: page.next.map(|c| c.encode()),
        })
    }
}
