//! The chat domain as the runtime's replicated application ([`App`]).
//!
//! Everything chat-specific the runtime needs goes through here: which
//! shard a command acts on (a conversation's or a user's, by slot), the
//! apply rules (`apply`), what to do once a batch is durable (feed the
//! fan-out worker, notify live connections), and the retention rule
//! (disappearing messages).

use std::sync::Arc;

use tokio::sync::broadcast;

use missive_engine::keys::{Keyspace, Slot};
use missive_raft::app::{App, ClusterCommand, ClusterOutcome};
use missive_raft::cluster::slots::SlotMap;
use missive_raft::storage::record_source::Records;
use missive_raft::{Error, Result, ShardId};

use crate::apply::{self, Effects, InboxNotice};
use crate::command::{Command, Outcome, RejectCode, Route};
use crate::outbox_feed::OutboxFeed;
use crate::revisions::Revisions;

/// Inbox notices buffered for slow listeners (they re-read on lag).
const INBOX_NOTICES: usize = 4096;

/// What apply hands the rest of the node once a batch is durable.
#[derive(Debug)]
pub struct Hooks {
    /// Outbox entries just applied, for the fan-out worker.
    pub(crate) outbox: OutboxFeed,
    /// Every inbox that grew, on this replica. Receivers that lag lose
    /// notices, never data: they re-read from their cursor.
    pub(crate) inbox: broadcast::Sender<InboxNotice>,
    /// Which stored messages changed on this replica.
    pub(crate) revisions: Arc<Revisions>,
    /// Fan-out rounds led from this node: each outbox entry from its
    /// commit to its `Deliver`s committed on every recipient's shard.
    pub(crate) fanout_latency: missive_engine::latency::Recorder,
    /// Inbox events this replica wrote in their event's own batch (local
    /// delivery) rather than through a `Deliver`.
    pub(crate) local_deliveries: std::sync::atomic::AtomicU64,
}

/// The chat domain, as run by every shard of a node. See the
/// [module documentation](self).
#[derive(Debug)]
pub struct ChatApp {
    hooks: Arc<Hooks>,
}

impl Default for ChatApp {
    fn default() -> Self {
        Self::new()
    }
}

impl ChatApp {
    /// A new application value (one per node).
    pub fn new() -> Self {
        ChatApp {
            hooks: Arc::new(Hooks {
                outbox: OutboxFeed::default(),
                inbox: broadcast::channel(INBOX_NOTICES).0,
                revisions: Arc::default(),
                fanout_latency: Default::default(),
                local_deliveries: Default::default(),
            }),
        }
    }

    pub(crate) fn hooks(&self) -> &Arc<Hooks> {
        &self.hooks
    }
}

/// The shard a route's data lives on (None for an empty command).
fn shard_of_route(slots: &SlotMap, route: Route) -> Option<ShardId> {
    match route {
        Route::Conversation(c) => Some(slots.shard_of(c)),
        Route::User(u) => Some(slots.shard_of_user(u.0)),
        Route::Slot(s) => Some(slots.shard_of_slot(s)),
        Route::Directory => Some(ShardId::DIRECTORY),
        Route::Empty => None,
    }
}

impl App for ChatApp {
    type Command = Command;
    type Outcome = Outcome;
    type Effects = Effects;

    fn cluster(cmd: ClusterCommand) -> Command {
        match cmd {
            ClusterCommand::RegisterNode { node, addr, slots } => {
                Command::RegisterNode { node, addr, slots }
            }
            ClusterCommand::ForgetNode { node } => Command::ForgetNode { node },
            ClusterCommand::ReportPlacement {
                shard,
                voters,
                learners,
                config_index,
            } => Command::ReportPlacement {
                shard,
                voters,
                learners,
                config_index,
            },
            ClusterCommand::Restore { pairs } => Command::Restore { pairs },
            ClusterCommand::Checkpoint => Command::Checkpoint,
            ClusterCommand::ReserveSplit { parent, at } => Command::ReserveSplit { parent, at },
            ClusterCommand::RecordSplit { parent, at, child } => {
                Command::RecordSplit { parent, at, child }
            }
            ClusterCommand::Split { at, child } => Command::Split { at, child },
            ClusterCommand::Freeze { into } => Command::Freeze { into },
            ClusterCommand::Merge {
                child,
                frozen_at,
                start,
                end,
            } => Command::Merge {
                child,
                frozen_at,
                start,
                end,
            },
            ClusterCommand::RecordMerge { parent, child } => Command::RecordMerge { parent, child },
        }
    }

    fn as_cluster(cmd: &Command) -> Option<ClusterCommand> {
        Some(match cmd {
            Command::RegisterNode { node, addr, slots } => ClusterCommand::RegisterNode {
                node: *node,
                addr: addr.clone(),
                slots: slots.clone(),
            },
            Command::ForgetNode { node } => ClusterCommand::ForgetNode { node: *node },
            Command::ReportPlacement {
                shard,
                voters,
                learners,
                config_index,
            } => ClusterCommand::ReportPlacement {
                shard: *shard,
                voters: voters.clone(),
                learners: learners.clone(),
                config_index: *config_index,
            },
            Command::Restore { pairs } => ClusterCommand::Restore {
                pairs: pairs.clone(),
            },
            Command::Checkpoint => ClusterCommand::Checkpoint,
            Command::ReserveSplit { parent, at } => ClusterCommand::ReserveSplit {
                parent: *parent,
                at: *at,
            },
            Command::RecordSplit { parent, at, child } => ClusterCommand::RecordSplit {
                parent: *parent,
                at: *at,
                child: *child,
            },
            Command::Split { at, child } => ClusterCommand::Split {
                at: *at,
                child: *child,
            },
            Command::Freeze { into } => ClusterCommand::Freeze { into: *into },
            Command::Merge {
                child,
                frozen_at,
                start,
                end,
            } => ClusterCommand::Merge {
                child: *child,
                frozen_at: *frozen_at,
                start: *start,
                end: *end,
            },
            Command::RecordMerge { parent, child } => ClusterCommand::RecordMerge {
                parent: *parent,
                child: *child,
            },
            _ => return None,
        })
    }

    fn cluster_outcome(outcome: ClusterOutcome) -> Outcome {
        match outcome {
            Ok(version) => Outcome::Directory { version },
            Err(message) => Outcome::Rejected {
                code: RejectCode::Conflict,
                message,
            },
        }
    }

    fn as_cluster_outcome(outcome: &Outcome) -> Option<ClusterOutcome> {
        match outcome {
            Outcome::Directory { version } => Some(Ok(*version)),
            Outcome::Rejected {
                code: RejectCode::Conflict,
                message,
            } => Some(Err(message.clone())),
            _ => None,
        }
    }

    fn misrouted(message: String) -> Outcome {
        Outcome::Rejected {
            code: RejectCode::Misrouted,
            message,
        }
    }

    fn is_misrouted(outcome: &Outcome) -> bool {
        matches!(
            outcome,
            Outcome::Rejected {
                code: RejectCode::Misrouted,
                ..
            }
        )
    }

    fn slots_of(&self, cmd: &Command) -> Vec<Slot> {
        cmd.routes()
            .into_iter()
            .filter_map(|r| match r {
                Route::Conversation(c) => Some(Slot::of_conversation(c)),
                Route::User(u) => Some(Slot::of_user(u.0)),
                Route::Slot(s) => Some(s),
                Route::Directory | Route::Empty => None,
            })
            .collect()
    }

    fn shard_of(&self, slots: &SlotMap, cmd: &Command) -> Result<ShardId> {
        let mut shard = None;
        for r in cmd.routes() {
            let s = shard_of_route(slots, r).ok_or_else(|| {
                Error::InvalidArgument("the command names no conversation or user".into())
            })?;
            if shard.is_some_and(|x| x != s) {
                return Err(Error::InvalidArgument(
                    "the command's items live on more than one shard".into(),
                ));
            }
            shard = Some(s);
        }
        shard.ok_or_else(|| Error::InvalidArgument("the command is empty".into()))
    }

    fn is_system(cmd: &Command) -> bool {
        matches!(cmd, Command::Deliver { .. } | Command::OutboxDone { .. })
    }

    fn bulk_bytes(cmd: &Command) -> usize {
        match cmd {
            Command::AppendUpload { bytes, .. } => bytes.len(),
            _ => 0,
        }
    }

    /// An upload's piece, as the chunk value it becomes
    /// (`media::records::encode_chunk`: version 1 ‖ bytes) — the value a
    /// piece starting a chunk is stored as, by reference
    /// (`apply/media.rs`).
    fn take_bulk(cmd: &mut Command) -> Option<(&'static [u8], bytes::Bytes)> {
        match cmd {
            Command::AppendUpload { bytes, .. } => {
                Some((crate::media::records::CHUNK_PREFIX, std::mem::take(bytes)))
            }
            _ => None,
        }
    }

    fn put_bulk(cmd: &mut Command, b: bytes::Bytes) {
        if let Command::AppendUpload { bytes, .. } = cmd {
            *bytes = b;
        }
    }

    fn apply(
        &self,
        _shard: ShardId,
        records: &mut Records<'_>,
        stamp_micros: u64,
        cmd: &Command,
        effects: &mut Effects,
    ) -> Result<Outcome> {
        apply::run(records, effects, stamp_micros, cmd)
    }

    fn applied(&self, shard: ShardId, effects: Effects) {
        self.hooks
            .local_deliveries
            .fetch_add(effects.local, std::sync::atomic::Ordering::Relaxed);
        for (conv, seq) in effects.changed {
            self.hooks.revisions.changed(conv, seq);
        }
        if !effects.fresh.is_empty() {
            self.hooks.outbox.push(shard, effects.fresh);
        }
        for n in effects.notices {
            // No receiver is not an error: nobody is connected.
            let _ = self.hooks.inbox.send(n);
        }
    }

    fn installed(&self, shard: ShardId) {
        // Outboxes and inboxes may have grown without a notice each, and
        // messages changed without a revision each.
        self.hooks.outbox.invalidate(shard);
        self.hooks.revisions.all_changed();
    }

    /// Conversations' records first, users' second: an inbox is filled
    /// from a conversation's outbox by later writes on the user's shard,
    /// and the outbox forgets an entry only once every inbox has it, so a
    /// users' copy taken after the conversations' copy holds every
    /// delivery the conversations' copy counts as done (see
    /// `crate::restore` for the other direction).
    fn backup_phases(&self) -> Vec<Vec<Keyspace>> {
        vec![
            vec![
                Keyspace::Message,
                Keyspace::Conversation,
                Keyspace::Receipt,
                Keyspace::Outbox,
                Keyspace::Media,
            ],
            // Push jobs are written with inbox events: the users' phase.
            vec![Keyspace::User, Keyspace::Push, Keyspace::PushDead],
        ]
    }

    fn query(
        &self,
        _shard: ShardId,
        lsm: &missive_engine::lsm::Lsm,
        query: &[u8],
    ) -> Result<Vec<u8>> {
        let q: crate::search::query::AppQuery = crate::records::decode("chat query", query)?;
        crate::records::encode(&crate::search::query::answer(lsm, &q)?)
    }

    fn retention(&self) -> Option<Arc<dyn missive_engine::lsm::Retention>> {
        Some(crate::retention::message_retention())
    }
}
