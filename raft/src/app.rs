//! The replicated application: what the runtime replicates, and the one
//! place it meets the application's rules.
//!
//! The runtime (this crate) knows shards, logs, leaders, snapshots and the
//! cluster map; it knows nothing of what a command means. An application
//! (Missive's is the chat domain, `missive-chat`) implements [`App`]: its
//! command and outcome types, which shard a command acts on, and `apply` —
//! a deterministic function of (the shard's records, the leader's stamp,
//! the command) that reads and writes through a [`Records`] and leaves
//! side effects (notices for live listeners, work for background tasks) in
//! its `Effects`, which the runtime hands back once the batch is durable.
//!
//! ```text
//!  Node::write(cmd) ─► App::shard_of ─► batcher ─► Raft entry Batch<Command>
//!  apply (every replica): for each command
//!      metadata group:  App::as_cluster ─► the cluster map (runtime)
//!      data shard:      App::as_cluster ─► Restore: raw pairs, Checkpoint:
//!                       a pinned view for verification (runtime)
//!                       else App::apply(records, stamp, cmd, effects)
//!  ─► one atomic LSM batch ─► App::applied(shard, effects)
//! ```
//!
//! # The metadata group's commands ride in the application's type
//!
//! Every group shares one entry type, so the cluster map's commands
//! ([`ClusterCommand`]) travel as values of the application's command
//! type: [`App::cluster`] wraps one, [`App::as_cluster`] recognises one.
//! Missive's entry format was written before the runtime and the chat
//! domain were separate crates, with the three cluster commands as
//! variants 9–11 of one enum; keeping them there keeps every log entry and
//! transport frame ever written readable with no second entry version
//! (`tests/fixtures`).
//!
//! [`Records`]: crate::storage::record_source::Records

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use std::collections::BTreeSet;
use std::fmt::Debug;

use crate::cluster::slots::SlotMap;
use crate::error::Result;
use crate::ids::{NodeId, ShardId};
use crate::storage::record_source::Records;

/// The payload of one Raft entry: the leader's clock and the commands that
/// rode in that entry (the batcher packs concurrent writes of a shard into
/// one entry, since openraft 0.9 pays a log flush per entry).
///
/// Apply is a pure function of the batch and the shard's state: time comes
/// from `stamp_micros`, never from the replica's clock.
///
/// # Encoding
///
/// postcard's stable wire format: `stamp_micros` as a varint, then the
/// commands as a varint count and each command as the application encodes
/// it (see `codec` for the entry around it).
#[derive(Debug, Serialize, Deserialize)]
#[serde(bound = "")]
pub struct Batch<A: App> {
    /// The leader's clock when it proposed the entry, in microseconds since
    /// the Unix epoch: the only time apply ever sees.
    pub stamp_micros: u64,
    /// The commands, applied in order.
    pub commands: Vec<A::Command>,
}

/// What the state machine answers for a [`Batch`]: one outcome per command.
#[derive(Debug, Serialize, Deserialize)]
#[serde(bound = "")]
pub struct BatchResponse<A: App> {
    /// In command order.
    pub outcomes: Vec<A::Outcome>,
}

// By hand: a derive would ask `A` itself (a type that is never a value of
// a batch) to be `Clone` and `PartialEq`.
impl<A: App> Clone for Batch<A> {
    fn clone(&self) -> Self {
        Batch {
            stamp_micros: self.stamp_micros,
            commands: self.commands.clone(),
        }
    }
}
impl<A: App> PartialEq for Batch<A> {
    fn eq(&self, other: &Self) -> bool {
        self.stamp_micros == other.stamp_micros && self.commands == other.commands
    }
}
impl<A: App> Eq for Batch<A> {}
impl<A: App> Clone for BatchResponse<A> {
    fn clone(&self) -> Self {
        BatchResponse {
            outcomes: self.outcomes.clone(),
        }
    }
}
impl<A: App> PartialEq for BatchResponse<A> {
    fn eq(&self, other: &Self) -> bool {
        self.outcomes == other.outcomes
    }
}
impl<A: App> Eq for BatchResponse<A> {}

impl<A: App> Default for BatchResponse<A> {
    fn default() -> Self {
        BatchResponse {
            outcomes: Vec::new(),
        }
    }
}

/// A command of the runtime rather than the application: the metadata
/// group's (shard 0) commands, which replicate the cluster map (see
/// `directory`), and [`ClusterCommand::Restore`], which a data shard runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClusterCommand {
    /// Records (or re-addresses) a node in the map's directory. Refused if
    /// the node's slot map is not the cluster's (it was started with
    /// another shard count).
    RegisterNode {
        /// The node.
        node: NodeId,
        /// Its transport address.
        addr: String,
        /// Its slot → shard map.
        slots: SlotMap,
    },
    /// Drops a node from the directory. Refused while the map places any
    /// replica on it.
    ForgetNode {
        /// The node.
        node: NodeId,
    },
    /// A group's leader reports its configuration. Ignored if the map
    /// already holds a later one (a deposed leader's report).
    ReportPlacement {
        /// The group (a data shard, or the metadata group itself).
        shard: ShardId,
        /// Its voters.
        voters: BTreeSet<NodeId>,
        /// Its learners.
        learners: BTreeSet<NodeId>,
        /// The log index of that configuration.
        config_index: u64,
    },
    /// Puts key/value pairs of a backup into a data shard as they are
    /// (`crate::backup`): the application's records, written below its
    /// rules. Refused whole, on every replica, if any key lies outside the
    /// shard's key ranges; refused on the metadata group. The shard's
    /// listeners then hear what a snapshot install tells them
    /// ([`App::installed`]): the records changed without notices.
    Restore {
        /// The pairs, keys in the shard's ranges.
        pairs: Vec<(Vec<u8>, Vec<u8>)>,
    },
    /// Marks a point in a data shard's log where every replica pins a view
    /// of its state for comparison (`crate::verify`): the state after
    /// every entry before this one. Its outcome is its entry's index.
    /// Refused on the metadata group.
    Checkpoint,
    /// Metadata group: reserves the id of the shard a split of `parent` at
    /// slot `at` will create (`ClusterMap::reserve`; the id is read back
    /// from the map).
    ReserveSplit {
        /// The shard to split.
        parent: ShardId,
        /// The first slot the child takes.
        at: u16,
    },
    /// Metadata group: the split of `parent` at `at` into `child` is cut
    /// in the parent's log; route the child's slots to it. Idempotent.
    RecordSplit {
        /// The shard split.
        parent: ShardId,
        /// The first slot the child took.
        at: u16,
        /// The new shard.
        child: ShardId,
    },
    /// A data shard: gives its slots from `at` on to the new shard `child`
    /// (the cut; see `state_machine`'s essay). Its outcome is the cut's
    /// log index; refused, the same on every replica, unless the shard
    /// owns `at` and a slot below it, `child` has no state on record here,
    /// and the shard's configuration is not joint.
    Split {
        /// The first slot the child takes.
        at: u16,
        /// The new shard (reserved in the cluster map).
        child: ShardId,
    },
    /// A data shard about to be merged into `into`: from this entry on it
    /// refuses every command (misrouted). Its outcome is the entry's log
    /// index, which the parent's `Merge` names (`cluster::merge`).
    Freeze {
        /// The shard that takes its slots.
        into: ShardId,
    },
    /// A data shard takes `child`'s slots `start..end` once this replica's
    /// copy of `child` has applied its freeze at `frozen_at` (every
    /// replica waits for that, so all take the same data). Refused unless
    /// the slots adjoin its own.
    Merge {
        /// The frozen shard.
        child: ShardId,
        /// Its freeze's log index.
        frozen_at: u64,
        /// Its first slot.
        start: u16,
        /// The slot after its last.
        end: u16,
    },
    /// Metadata group: the merge of `child` into `parent` is made; route
    /// the child's slots to the parent. Idempotent.
    RecordMerge {
        /// The shard that took the slots.
        parent: ShardId,
        /// The merged shard (it owns nothing after).
        child: ShardId,
    },
}

/// A cluster command's outcome: the map's version after it (not bumped if
/// it changed nothing), or why the map refused it.
pub type ClusterOutcome = std::result::Result<u64, String>;

/// What a command or an outcome must be: stored in log entries and sent
/// between nodes (serde), compared in tests, shared across tasks. Every
/// type with these traits is one.
pub trait Payload:
    Serialize + DeserializeOwned + Debug + Clone + PartialEq + Eq + Send + Sync + 'static
{
}

impl<T> Payload for T where
    T: Serialize + DeserializeOwned + Debug + Clone + PartialEq + Eq + Send + Sync + 'static
{
}

/// Bulk bytes (see [`App::bulk_bytes`]) a log entry carries at most,
/// unless one command alone carries more: the batcher closes an entry
/// before a command that would take it past this. 1 MiB, an upload's chunk:
/// a large file crosses the log as many entries of one chunk each, never as
/// one entry of many chunks (docs/design.md §4.3.3).
pub const ENTRY_BULK_BYTES: usize = 1 << 20;

/// A replicated application. See the [module documentation](self).
///
/// One value of it lives per node, shared by every shard's state machine:
/// `apply` runs on one shard at a time per shard, shards in parallel.
pub trait App: Debug + Send + Sync + 'static {
    /// A command, as stored in log entries and forwarded between nodes.
    /// Its encoding is a stored format: append-only, never renumbered.
    type Command: Payload;
    /// A command's outcome (forwarded writes carry it back).
    type Outcome: Payload;
    /// What one state-machine call's commands leave for after the batch is
    /// durable (see [`App::applied`]).
    type Effects: Default + Send;

    /// `cmd` as the application's command type.
    fn cluster(cmd: ClusterCommand) -> Self::Command;

    /// The cluster command `cmd` is, if it is one.
    fn as_cluster(cmd: &Self::Command) -> Option<ClusterCommand>;

    /// A cluster command's outcome as the application's outcome type.
    fn cluster_outcome(outcome: ClusterOutcome) -> Self::Outcome;

    /// The cluster outcome `outcome` is, if it is one.
    fn as_cluster_outcome(outcome: &Self::Outcome) -> Option<ClusterOutcome>;

    /// The outcome of a command that reached a group it cannot run on (an
    /// application command on the metadata group, or the reverse):
    /// refused, the same on every replica.
    fn misrouted(message: String) -> Self::Outcome;

    /// The one data shard `cmd` acts on. A command spanning shards, or
    /// naming nothing, is refused here, before anything is proposed.
    fn shard_of(&self, slots: &SlotMap, cmd: &Self::Command) -> Result<ShardId>;

    /// The slots an application command acts on. Apply refuses a command
    /// naming a slot its shard does not own (a writer routed by a map from
    /// before a split) with [`App::misrouted`], and the writer refreshes
    /// its map and tries again. Empty: nothing to check.
    fn slots_of(&self, cmd: &Self::Command) -> Vec<missive_engine::keys::Slot>;

    /// Whether `outcome` is [`App::misrouted`]'s: nothing was written, the
    /// command belongs to another shard.
    fn is_misrouted(outcome: &Self::Outcome) -> bool;

    /// Whether `cmd` is the node's own background work (served before
    /// client writes in the shard's batcher; see `batcher`).
    fn is_system(cmd: &Self::Command) -> bool;

    /// The bulk bytes `cmd` carries (a piece of an upload), 0 for an
    /// ordinary command. The shard's batcher puts at most
    /// [`ENTRY_BULK_BYTES`] of them in one log entry (see
    /// `write/batcher.rs`).
    fn bulk_bytes(_cmd: &Self::Command) -> usize {
        0
    }

    /// Moves `cmd`'s bulk bytes out of it, as the value they become in the
    /// LSM: `(prefix, bytes)`, stored as `prefix ‖ bytes` (a stored
    /// format's version byte, then the bytes). The log store writes an
    /// entry's bulk values into a pinned blob file instead of the log
    /// record (`storage/bulk.rs`) and hands apply their reference
    /// ([`Records::bulk_ref`]), so the bytes are written once. `None` (the
    /// default) for a command with none; [`App::put_bulk`] puts them back.
    fn take_bulk(_cmd: &mut Self::Command) -> Option<(&'static [u8], bytes::Bytes)> {
        None
    }

    /// Puts back bytes [`App::take_bulk`] took (without its prefix).
    fn put_bulk(_cmd: &mut Self::Command, _bytes: bytes::Bytes) {}

    /// Runs one command of a data shard. Deterministic: reads only
    /// `records` and `stamp_micros`. `Err` only for storage failures (they
    /// stop the state machine); a refused command is an `Ok` outcome.
    fn apply(
        &self,
        shard: ShardId,
        records: &mut Records<'_>,
        stamp_micros: u64,
        cmd: &Self::Command,
        effects: &mut Self::Effects,
    ) -> Result<Self::Outcome>;

    /// The batch whose commands produced `effects` is in the LSM (on this
    /// replica: every replica calls this).
    fn applied(&self, shard: ShardId, effects: Self::Effects);

    /// A snapshot replaced `shard`'s data here: whatever the application
    /// derived from notices may have missed changes.
    fn installed(&self, shard: ShardId);

    /// The order in which a backup copies the keyspaces of the data
    /// shards: every shard's first phase, then every shard's second, and
    /// so on, each phase pinned after the previous one ended (see
    /// `backup`). An application whose records in one keyspace are derived
    /// from another's by later, asynchronous writes on other shards (an
    /// inbox filled from a conversation's outbox) copies the source first,
    /// so that nothing the copy of the source counts as done is missing
    /// from the copy of the derived records. The phases together name
    /// every keyspace of [`crate::cluster::slots::SLOTTED_KEYSPACES`] once.
    /// The default: one phase of all of them.
    fn backup_phases(&self) -> Vec<Vec<missive_engine::keys::Keyspace>> {
        vec![crate::cluster::slots::SLOTTED_KEYSPACES.to_vec()]
    }

    /// Answers one of the application's own queries (`ReadOp::App`) from
    /// this replica's LSM, which the runtime has brought up to the read's
    /// consistency. Reads only `shard`'s keys. The default answers none.
    fn query(
        &self,
        shard: ShardId,
        lsm: &missive_engine::lsm::Lsm,
        query: &[u8],
    ) -> Result<Vec<u8>> {
        let _ = (shard, lsm, query);
        Err(crate::Error::InvalidArgument(
            "this application answers no queries of its own".into(),
        ))
    }

    /// The LSM's retention rule for the application's data (which keys
    /// expire), if it has one. A node whose config sets no rule runs this.
    fn retention(&self) -> Option<std::sync::Arc<dyn missive_engine::lsm::Retention>> {
        None
    }
}
