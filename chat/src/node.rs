//! A node running the chat domain: the runtime's [`Node`] with
//! [`ChatApp`], its fan-out worker, and the typed reads the message
//! service calls.
//!
//! ```text
//!  ChatNode::write(cmd) ─► Node::write ─► outcome (Rejected → Error::Rejected)
//!  ChatNode::history/inbox/… ─► Node::read/get/scan on the data's shard
//!                              ─► records decoded
//!  fan-out worker (one per shard, acting while leader) ─► outbox → inboxes
//! ```
//!
//! Runtime operations (cluster map, replicas, signals, the engine) are the
//! [`Node`]'s, reached through `Deref`.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;

use missive_engine::keys::ConversationId;
use missive_raft::node::{sole_owner, Consistency, Node, NodeConfig, RELEASE_WAIT};
use missive_raft::transport::{ReadOp, ReadResult};
use missive_raft::{Error as RaftError, ShardId};

use crate::app::ChatApp;
use crate::apply::InboxNotice;
use crate::command::{Command, Outcome};
use crate::error::{Error, Result};
use crate::ids::{DeviceId, Useq, UserId};
use crate::records::{
    self, conversation_key, device_prefix, head_key, inbox_key, key_tail_u64, msg_key,
    outbox_head_key, profile_key, push_prefix, receipt_prefix, user_conv_key, user_conv_prefix,
    user_head_key, Conversation, Device, Head, InboxEvent, OutboxHead, Profile, PushTarget,
    Receipt, StoredMessage, UserConv, UserHead,
};

/// A running chat node. See the [module documentation](self).
pub struct ChatNode {
    node: Arc<Node<ChatApp>>,
    stop: watch::Sender<bool>,
    fanout: JoinHandle<()>,
}

impl std::fmt::Debug for ChatNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatNode")
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

impl std::ops::Deref for ChatNode {
    type Target = Node<ChatApp>;

    fn deref(&self) -> &Node<ChatApp> {
        &self.node
    }
}

impl ChatNode {
    /// Fan-out rounds led from this node: each outbox entry from its
    /// commit to its `Deliver`s committed on every recipient's shard.
    pub fn fanout_latencies(&self) -> missive_engine::latency::Latencies {
        self.node.app().hooks().fanout_latency.snapshot()
    }

    /// Inbox events this replica wrote in their event's own batch, the
    /// recipient's inbox being on the conversation's shard (local
    /// delivery), since the node started.
    pub fn local_deliveries(&self) -> u64 {
        self.node
            .app()
            .hooks()
            .local_deliveries
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Starts the node (recovering its data directory) and its fan-out
    /// worker.
    pub async fn start(cfg: NodeConfig) -> Result<ChatNode> {
        let app = Arc::new(ChatApp::new());
        let hooks = Arc::clone(app.hooks());
        let node = Arc::new(Node::start(cfg, app).await?);
        let (stop, stop_rx) = watch::channel(false);
        let fanout = tokio::spawn(crate::fanout::run(Arc::clone(&node), hooks, stop_rx));
        Ok(ChatNode { node, stop, fanout })
    }

    /// Runs a command on its conversation's or user's shard (see
    /// [`Node::write`]); a refused command is [`Error::Rejected`].
    pub async fn write(&self, command: Command, election_wait: Duration) -> Result<Outcome> {
        match self.node.write(command, election_wait).await? {
            Outcome::Rejected { code, message } => Err(Error::Rejected { code, message }),
            o => Ok(o),
        }
    }

    /// Notices of inboxes growing on this replica. A receiver that lags
    /// gets `RecvError::Lagged` and must re-read every inbox it follows.
    pub fn inbox_notices(&self) -> broadcast::Receiver<InboxNotice> {
        self.node.app().hooks().inbox.subscribe()
    }

    /// Which stored messages changed on this replica (for caches of
    /// rendered messages; see [`Revisions`](crate::revisions::Revisions)).
    pub fn revisions(&self) -> Arc<crate::revisions::Revisions> {
        Arc::clone(&self.node.app().hooks().revisions)
    }

    /// Stops the fan-out worker, then the node (see [`Node::shutdown`]).
    pub async fn shutdown(self) -> Result<()> {
        let _ = self.stop.send(true);
        self.fanout.abort();
        let _ = self.fanout.await;
        let deadline = tokio::time::Instant::now() + RELEASE_WAIT;
        let node = sole_owner(self.node, "the node", deadline).await?;
        Ok(node.shutdown().await?)
    }

    /// Up to `limit` messages of `conv` older than `before` (all if None),
    /// newest first.
    pub async fn history(
        &self,
        conv: ConversationId,
        before: Option<u64>,
        limit: usize,
        consistency: Consistency,
    ) -> Result<Vec<StoredMessage>> {
        let limit = limit as u64;
        let op = match before {
            Some(ts) => ReadOp::Before {
                conv: conv.0,
                ts,
                limit,
            },
            None => ReadOp::Latest {
                conv: conv.0,
                limit,
            },
        };
        self.messages(conv, op, consistency).await
    }

    /// Up to `limit` messages of `conv` newer than `after`, oldest first
    /// (the ones right after it).
    pub async fn history_after(
        &self,
        conv: ConversationId,
        after: u64,
        limit: usize,
        consistency: Consistency,
    ) -> Result<Vec<StoredMessage>> {
        let op = ReadOp::After {
            conv: conv.0,
            ts: after,
            limit: limit as u64,
        };
        self.messages(conv, op, consistency).await
    }

    async fn messages(
        &self,
        conv: ConversationId,
        op: ReadOp,
        consistency: Consistency,
    ) -> Result<Vec<StoredMessage>> {
        let shard = self.node.slots().shard_of(conv);
        let ReadResult::Messages(raw) = self.node.read(shard, consistency, op).await? else {
            return Err(RaftError::malformed("history", "answer of the wrong kind").into());
        };
        raw.into_iter()
            .map(|(ts, value)| {
                Ok(StoredMessage {
                    ts,
                    message: records::decode_message(&value)?,
                })
            })
            .collect()
    }

    /// A page of `user`'s search (see `crate::search`): the messages of
    /// the conversations they are a member of now (of `req.conv` only, if
    /// set) that they may see and that hold every word of `req.text`,
    /// newest first. A query without words, too long, or with a bad limit
    /// is refused (`Invalid`).
    pub async fn search(
        &self,
        user: UserId,
        req: &crate::search::SearchRequest,
        consistency: Consistency,
    ) -> Result<crate::search::SearchPage> {
        let convs = match req.conv {
            Some(c) => vec![c],
            None => self
                .user_conversations(user, consistency)
                .await?
                .into_iter()
                .map(|(c, _)| c)
                .collect(),
        };
        crate::search::scatter::search(&self.node, user, req, consistency, convs).await
    }

    /// The first page of `shard`'s index check (None: not a data shard).
    pub fn index_check_start(&self, shard: ShardId) -> Option<crate::search::check::CheckIndex> {
        crate::search::check::conversation_range(&self.node.slots().key_ranges(shard))
    }

    /// One page of `shard`'s index check (see `crate::search::check`),
    /// read at the shard's leader.
    pub async fn check_index(
        &self,
        shard: ShardId,
        page: crate::search::check::CheckIndex,
    ) -> Result<crate::search::check::IndexCheck> {
        use crate::search::query::{AppAnswer, AppQuery};
        let q = records::encode(&AppQuery::CheckIndex(page))?;
        let bytes = self.node.query(shard, Consistency::Linearizable, q).await?;
        match records::decode("index check", &bytes)? {
            AppAnswer::IndexChecked(c) => Ok(c),
            other => {
                let why = format!("answered {other:?}");
                Err(RaftError::malformed("index check", why).into())
            }
        }
    }

    /// A conversation's record.
    pub async fn conversation(
        &self,
        conv: ConversationId,
        consistency: Consistency,
    ) -> Result<Option<Conversation>> {
        let shard = self.node.slots().shard_of(conv);
        let key = conversation_key(conv);
        self.get_decoded(shard, consistency, &key, records::decode_conversation)
            .await
    }

    /// A conversation's newest position.
    pub async fn head(&self, conv: ConversationId, consistency: Consistency) -> Result<Head> {
        let shard = self.node.slots().shard_of(conv);
        self.get_record(shard, consistency, "head", &head_key(conv))
            .await
            .map(Option::unwrap_or_default)
    }

    /// A conversation's outbox position: its newest event and the newest
    /// one every recipient has.
    pub async fn outbox_head(
        &self,
        conv: ConversationId,
        consistency: Consistency,
    ) -> Result<OutboxHead> {
        let shard = self.node.slots().shard_of(conv);
        self.get_record(shard, consistency, "outbox head", &outbox_head_key(conv))
            .await
            .map(Option::unwrap_or_default)
    }

    /// Every member's receipt watermarks in a conversation.
    pub async fn receipts(
        &self,
        conv: ConversationId,
        consistency: Consistency,
    ) -> Result<Vec<(UserId, Receipt)>> {
        let prefix = receipt_prefix(conv);
        let end = missive_engine::keys::prefix_successor(&prefix);
        let shard = self.node.slots().shard_of(conv);
        self.node
            .scan(shard, consistency, &prefix, end, usize::MAX)
            .await?
            .into_iter()
            .map(|(k, v)| {
                let user = k
                    .get(11..19)
                    .and_then(|b| b.try_into().ok())
                    .map(u64::from_be_bytes)
                    .ok_or_else(|| RaftError::malformed("receipt key", "short key"))?;
                Ok((UserId(user), records::decode("receipt", &v)?))
            })
            .collect()
    }

    /// A user's newest inbox position.
    pub async fn user_head(&self, user: UserId, consistency: Consistency) -> Result<UserHead> {
        let shard = self.node.slots().shard_of_user(user.0);
        self.get_record(shard, consistency, "user head", &user_head_key(user))
            .await
            .map(Option::unwrap_or_default)
    }

    /// Up to `limit` inbox events of `user` after `after`, oldest first,
    /// with their useqs.
    pub async fn inbox(
        &self,
        user: UserId,
        after: Useq,
        limit: usize,
        consistency: Consistency,
    ) -> Result<Vec<(Useq, InboxEvent)>> {
        let lo = inbox_key(user, after.next());
        let hi = inbox_key(user, Useq(u64::MAX));
        let shard = self.node.slots().shard_of_user(user.0);
        let events = self
            .scan_records(shard, consistency, "inbox event", &lo, hi, limit)
            .await?;
        Ok(events.into_iter().map(|(n, e)| (Useq(n), e)).collect())
    }

    /// Every conversation a user has been in, with their view of it.
    pub async fn user_conversations(
        &self,
        user: UserId,
        consistency: Consistency,
    ) -> Result<Vec<(ConversationId, UserConv)>> {
        let prefix = user_conv_prefix(user);
        let end = missive_engine::keys::prefix_successor(&prefix);
        let shard = self.node.slots().shard_of_user(user.0);
        self.node
            .scan(shard, consistency, &prefix, end, usize::MAX)
            .await?
            .into_iter()
            .map(|(k, v)| {
                let c = key_tail_u64(&k)
                    .ok_or_else(|| RaftError::malformed("user conversation", "short key"))?;
                Ok((ConversationId(c), records::decode_user_conv(&v)?))
            })
            .collect()
    }

    /// A user's view of one conversation.
    pub async fn user_conversation(
        &self,
        user: UserId,
        conv: ConversationId,
        consistency: Consistency,
    ) -> Result<Option<UserConv>> {
        let shard = self.node.slots().shard_of_user(user.0);
        let key = user_conv_key(user, conv);
        self.get_decoded(shard, consistency, &key, records::decode_user_conv)
            .await
    }

    /// A user's registered devices.
    pub async fn devices(
        &self,
        user: UserId,
        consistency: Consistency,
    ) -> Result<Vec<(DeviceId, Device)>> {
        Ok(self
            .user_records(user, consistency, "device", &device_prefix(user))
            .await?
            .into_iter()
            .map(|(d, dev)| (DeviceId(d), dev))
            .collect())
    }

    /// A user's device list for end-to-end encryption: every device in
    /// the key directory with its identity key and signed pre-key.
    pub async fn device_keys(
        &self,
        user: UserId,
        consistency: Consistency,
    ) -> Result<Vec<(DeviceId, crate::e2ee::DeviceKeys)>> {
        let prefix = crate::e2ee::keys::device_keys_prefix(user);
        Ok(self
            .user_records(user, consistency, "device keys", &prefix)
            .await?
            .into_iter()
            .map(|(d, k)| (DeviceId(d), k))
            .collect())
    }

    /// A user's devices' push targets.
    pub async fn push_targets(
        &self,
        user: UserId,
        consistency: Consistency,
    ) -> Result<Vec<(DeviceId, PushTarget)>> {
        Ok(self
            .user_records(user, consistency, "push target", &push_prefix(user))
            .await?
            .into_iter()
            .map(|(d, t)| (DeviceId(d), t))
            .collect())
    }

    /// A user's records under `prefix` (on the user's shard, read at
    /// `consistency`), by the id that ends each key. User-keyspace
    /// prefixes never end in 0xFF bytes only, so the successor exists.
    async fn user_records<T: serde::de::DeserializeOwned>(
        &self,
        user: UserId,
        consistency: Consistency,
        what: &'static str,
        prefix: &[u8],
    ) -> Result<Vec<(u64, T)>> {
        let shard = self.node.slots().shard_of_user(user.0);
        let end = missive_engine::keys::prefix_successor(prefix).unwrap_or_default();
        self.scan_records(shard, consistency, what, prefix, end, usize::MAX)
            .await
    }

    /// A user's profile (empty if never set).
    pub async fn profile(&self, user: UserId, consistency: Consistency) -> Result<Profile> {
        let shard = self.node.slots().shard_of_user(user.0);
        self.get_record(shard, consistency, "profile", &profile_key(user))
            .await
            .map(Option::unwrap_or_default)
    }

    /// Which of `user`'s tokens are revoked (none if never set).
    pub async fn revocations(
        &self,
        user: UserId,
        consistency: Consistency,
    ) -> Result<records::Revocations> {
        let shard = self.node.slots().shard_of_user(user.0);
        self.get_record(
            shard,
            consistency,
            "revocations",
            &records::revocations_key(user),
        )
        .await
        .map(Option::unwrap_or_default)
    }

    /// The users `user` blocks (their own list, on their shard), with
    /// since when.
    pub async fn blocked_users(
        &self,
        user: UserId,
        consistency: Consistency,
    ) -> Result<Vec<(UserId, records::BlockedUser)>> {
        Ok(self
            .user_records(
                user,
                consistency,
                "blocked user",
                &records::blocked_prefix(user),
            )
            .await?
            .into_iter()
            .map(|(u, b)| (UserId(u), b))
            .collect())
    }

    /// Whether `by` blocks `other` (read on the pair's shard, where the
    /// rules read it).
    pub async fn blocks(
        &self,
        by: UserId,
        other: UserId,
        consistency: Consistency,
    ) -> Result<bool> {
        let pair = crate::ids::direct_id(by, other);
        let shard = self.node.slots().shard_of(pair);
        let b: Option<records::Blocks> = self
            .get_record(shard, consistency, "blocks", &records::blocks_key(pair))
            .await?;
        Ok(b.is_some_and(|b| b.by.contains(&by)))
    }

    /// The seqs of `conv` that `user` hid ("delete for me"), ascending (at
    /// most `limit`).
    pub async fn hidden(
        &self,
        conv: ConversationId,
        user: UserId,
        limit: usize,
        consistency: Consistency,
    ) -> Result<Vec<crate::ids::Seq>> {
        let shard = self.node.slots().shard_of(conv);
        let prefix = records::hidden_prefix(conv, user);
        let end = missive_engine::keys::prefix_successor(&prefix).unwrap_or_default();
        Ok(self
            .scan_records::<records::Hidden>(shard, consistency, "hidden", &prefix, end, limit)
            .await?
            .into_iter()
            .map(|(seq, _)| crate::ids::Seq(seq))
            .collect())
    }

    /// The seqs in `lo..=hi` of `conv` that `user` hid, ascending (one
    /// seek: a history page asks for its own range).
    pub async fn hidden_between(
        &self,
        conv: ConversationId,
        user: UserId,
        lo: crate::ids::Seq,
        hi: crate::ids::Seq,
        consistency: Consistency,
    ) -> Result<Vec<crate::ids::Seq>> {
        let shard = self.node.slots().shard_of(conv);
        let from = records::hidden_key(conv, user, lo);
        let to = records::hidden_key(conv, user, hi.next());
        Ok(self
            .scan_records::<records::Hidden>(shard, consistency, "hidden", &from, to, usize::MAX)
            .await?
            .into_iter()
            .map(|(seq, _)| crate::ids::Seq(seq))
            .collect())
    }

    /// A conversation's pinned messages, most recently pinned first.
    pub async fn pins(
        &self,
        conv: ConversationId,
        consistency: Consistency,
    ) -> Result<records::Pins> {
        let shard = self.node.slots().shard_of(conv);
        Ok(self
            .get_record(shard, consistency, "pins", &records::pins_key(conv))
            .await?
            .unwrap_or_default())
    }

    /// Message `seq` of `conv`, through the seq index (None if never
    /// indexed, or expired).
    pub async fn message_by_seq(
        &self,
        conv: ConversationId,
        seq: crate::ids::Seq,
        consistency: Consistency,
    ) -> Result<Option<StoredMessage>> {
        let shard = self.node.slots().shard_of(conv);
        let Some(ix) = self
            .node
            .get(shard, consistency, &records::seq_key(conv, seq))
            .await?
        else {
            return Ok(None);
        };
        let ix = records::decode_indexed(&ix)?;
        self.message_at(conv, ix.ts, consistency).await
    }

    /// The message of `conv` stored at `ts`, if it is here (and not
    /// expired).
    pub async fn message_at(
        &self,
        conv: ConversationId,
        ts: u64,
        consistency: Consistency,
    ) -> Result<Option<StoredMessage>> {
        let shard = self.node.slots().shard_of(conv);
        let v = self
            .node
            .get(shard, consistency, &msg_key(conv, ts))
            .await?;
        Ok(v.map(|v| records::decode_message(&v))
            .transpose()?
            .map(|message| StoredMessage { ts, message }))
    }

    async fn get_record<T: serde::de::DeserializeOwned>(
        &self,
        shard: ShardId,
        consistency: Consistency,
        what: &'static str,
        key: &[u8],
    ) -> Result<Option<T>> {
        self.get_decoded(shard, consistency, key, |v| records::decode(what, v))
            .await
    }

    /// The record under `key`, decoded by `decode` (for the records whose
    /// version moved past 1).
    pub(crate) async fn get_decoded<T>(
        &self,
        shard: ShardId,
        consistency: Consistency,
        key: &[u8],
        decode: impl Fn(&[u8]) -> missive_raft::Result<T>,
    ) -> Result<Option<T>> {
        let v = self.node.get(shard, consistency, key).await?;
        Ok(v.map(|v| decode(&v)).transpose()?)
    }

    /// Records in `[lo, hi)` keyed by a trailing u64, in key order.
    async fn scan_records<T: serde::de::DeserializeOwned>(
        &self,
        shard: ShardId,
        consistency: Consistency,
        what: &'static str,
        lo: &[u8],
        hi: Vec<u8>,
        limit: usize,
    ) -> Result<Vec<(u64, T)>> {
        self.node
            .scan(shard, consistency, lo, Some(hi), limit)
            .await?
            .into_iter()
            .map(|(k, v)| {
                let n = key_tail_u64(&k).ok_or_else(|| RaftError::malformed(what, "short key"))?;
                Ok((n, records::decode(what, &v)?))
            })
            .collect()
    }
}
