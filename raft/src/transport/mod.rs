//! Node-to-node transport: one TCP connection per ordered node pair,
//! multiplexing every shard's Raft RPCs (and forwarded client writes, and
//! the server's ephemeral signals: presence, typing).
//!
//! # Why length-framed TCP
//!
//! Raft traffic between two nodes is a stream of small request/response
//! pairs tagged with a shard. gRPC or HTTP/2 would add a second framing,
//! flow-control windows and a header table per message, for features we do
//! not use (we never talk to a node that is not `missived`); a length frame
//! with a checksum, a request id and postcard bodies is a few dozen lines,
//! keeps one connection's requests pipelined (a slow snapshot chunk of one
//! shard does not block another shard's heartbeat: each request is served
//! by its own task and answered out of order), and costs ~10 bytes a message.
//!
//! # Wire format, byte by byte
//!
//! ```text
//! frame   0  4  payload length n (u32 LE, at most MAX_FRAME)
//!         4  4  crc32 (crc32fast) of the payload (u32 LE)
//!         8  n  postcard(Wire)
//! ```
//!
//! A connection opens with `Wire::Hello { version, cluster, from, to }`
//! from the dialer; the listener answers `Welcome { node }` only if `to` is
//! its own id and `cluster` its cluster name (a node restarted on another
//! address, or a misconfigured peer, is refused, not served) and `from` is
//! not a node removed from the cluster (the cluster map's tombstones), else
//! `Refused { reason }` and closes. Then the dialer sends `Request { id,
//! shard, rpc, map_version }` frames and the listener answers `Response {
//! id, reply, map_version }` in any order. `map_version` is the newest
//! cluster map version the sender knows of, so news of a map change
//! spreads with ordinary traffic, heartbeats included (see
//! `cluster::directory`). Any decode or checksum failure closes the
//! connection; the dialer reconnects on the next call.
//!
//! # Failure → openraft
//!
//! A refused or failed connect is `Unreachable` (openraft backs off before
//! retrying that peer); a connection lost mid-call is a `NetworkError`; no
//! reply within the RPC's deadline is a `Timeout`.
//!
//! # Layout
//!
//! - this file — the wire: frames, `Wire`, every `Rpc` and its `Reply`.
//! - `client` — the connection pool ([`client::Peers`]) and openraft's
//!   network adapter over it.
//! - `server` — the listener: handshake, frames in, replies out.
//! - `dispatch` — what this node does with each `Rpc`.
//! - `failure` — errors across the wire, both ways.

pub mod client;
mod dispatch;
pub(crate) mod failure;
pub mod server;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use openraft::error::{Fatal, RaftError};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};

use crate::app::App;
use crate::cluster::placement::{Change, Placement};
use crate::ids::{LogId, NodeId, ShardId, SnapshotMeta, Vote};
use crate::storage::snapshot::{Chunk, ChunkCursor};
use crate::types::TypeConfig;

/// The protocol version in `Hello`.
/// 2: responses carry the responder's cluster map version.
pub const WIRE_VERSION: u32 = 2;
/// The largest frame accepted.
pub const MAX_FRAME: usize = 256 << 20;

/// One frame's payload.
#[derive(Debug, Serialize, Deserialize)]
#[serde(bound = "")]
pub enum Wire<A: App> {
    /// Dialer → listener, first frame.
    Hello {
        /// [`WIRE_VERSION`].
        version: u32,
        /// The cluster's name; both ends must agree.
        cluster: String,
        /// The dialer's node id.
        from: NodeId,
        /// The node id the dialer expects to reach.
        to: NodeId,
    },
    /// Listener → dialer: accepted.
    Welcome {
        /// The listener's node id.
        node: NodeId,
    },
    /// Listener → dialer: refused, then the connection closes.
    Refused {
        /// Why.
        reason: String,
    },
    /// A call.
    Request {
        /// Matches the response.
        id: u64,
        /// The group addressed.
        shard: ShardId,
        /// The call.
        rpc: Rpc<A>,
        /// The newest cluster map version the caller knows of.
        map_version: u64,
    },
    /// A call's answer.
    Response {
        /// The request's id.
        id: u64,
        /// The answer.
        reply: Reply<A>,
        /// The newest cluster map version the responder knows of: a caller
        /// holding an older map re-reads it (see `directory`).
        map_version: u64,
    },
}

/// A call to a shard on another node.
#[derive(Debug, Serialize, Deserialize)]
#[serde(bound = "")]
pub enum Rpc<A: App> {
    /// Raft AppendEntries (also heartbeats).
    Append(AppendEntriesRequest<TypeConfig<A>>),
    /// Raft RequestVote.
    Vote(VoteRequest<NodeId>),
    /// One chunk of a snapshot (`seq` from 0, in order).
    SnapshotChunk {
        /// Which snapshot.
        snapshot_id: String,
        /// The chunk's number.
        seq: u64,
        /// Its key/value pairs.
        chunk: Chunk,
    },
    /// The snapshot's end: install it.
    SnapshotDone {
        /// Which snapshot.
        snapshot_id: String,
        /// Chunks sent.
        chunks: u64,
        /// The leader's vote.
        vote: Vote,
        /// Its metadata.
        meta: SnapshotMeta,
    },
    /// A client write forwarded by a follower to the leader.
    Write {
        /// The command.
        command: A::Command,
    },
    /// A follower asks the shard's leader for a read index: the leader
    /// confirms its leadership with a quorum and answers its commit point;
    /// the follower waits until it has applied that far, then reads
    /// locally (Raft's read-index protocol for follower reads).
    ReadIndex,
    /// An ephemeral signal for the server above (typing, presence): not a
    /// Raft message, not stored, lossy. Its `shard` is ignored. Opaque
    /// bytes here; the server defines and versions their format.
    Signal {
        /// The server's payload.
        payload: Vec<u8>,
    },
    /// Where are this shard's replicas? Any node answers with its view.
    Locate,
    /// Change the shard's replicas (forwarded to its leader).
    ChangeReplicas {
        /// The change.
        change: Change,
    },
    /// The leader tells a removed replica that it is one no longer: stop
    /// campaigning (see `membership`).
    Retire {
        /// The log id of the configuration that removed it.
        removed_at: LogId,
    },
    /// A read on behalf of a node that is not a replica of the shard; the
    /// receiver reads at `linearizable` (else stale) consistency.
    Read {
        /// What to read.
        op: ReadOp,
        /// Linearizable (true) or stale.
        linearizable: bool,
    },
    /// The shard's leader asks this voter to campaign now: it is the
    /// shard's preferred leader (`cluster::balance`). Appended last, as
    /// every new variant must be (postcard numbers variants in order).
    Campaign,
}

/// One read of the shard's data in the LSM.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ReadOp {
    /// One key.
    Get {
        /// The key.
        key: Vec<u8>,
    },
    /// Keys in `[lo, hi)` in order, at most `limit`.
    Scan {
        /// Lower bound (inclusive).
        lo: Vec<u8>,
        /// Upper bound (exclusive; None: to the end).
        hi: Option<Vec<u8>>,
        /// Newest (highest key) first.
        reverse: bool,
        /// Most pairs returned.
        limit: u64,
    },
    /// The newest `limit` messages of a conversation.
    Latest {
        /// The conversation.
        conv: u64,
        /// Most messages.
        limit: u64,
    },
    /// Up to `limit` messages of a conversation older than `ts`.
    Before {
        /// The conversation.
        conv: u64,
        /// Exclusive upper bound.
        ts: u64,
        /// Most messages.
        limit: u64,
    },
    /// Up to `limit` messages of a conversation newer than `ts`, oldest
    /// first (the ones right after `ts`).
    After {
        /// The conversation.
        conv: u64,
        /// Exclusive lower bound.
        ts: u64,
        /// Most messages.
        limit: u64,
    },
    /// Pin the shard's state for a backup (see `backup`): the keyspaces
    /// of [`crate::App::backup_phases`]'s phase `phase`; answered with
    /// `BackupOpened`. Appended last, as every new variant must be.
    BackupOpen {
        /// Which phase's keyspaces.
        phase: u32,
    },
    /// The next chunk of a backup this node pinned.
    BackupChunk {
        /// The stream's token (`BackupOpened`).
        token: u64,
        /// Where the previous chunk ended (the default: the start).
        cursor: ChunkCursor,
    },
    /// This replica's checksum of the view it pinned at a verification
    /// checkpoint (see `verify`), once its apply gets there.
    Checksum {
        /// The checkpoint entry's index.
        index: u64,
    },
    /// The application's own query, run on one replica against its LSM
    /// (see [`crate::App::query`]): one round trip for a read that would
    /// otherwise take many gets and scans. The bytes are the
    /// application's format; answered with `App`.
    App {
        /// The query.
        query: Vec<u8>,
    },
}

/// A [`ReadOp`]'s answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ReadResult {
    /// To `Get`.
    Value(Option<Vec<u8>>),
    /// To `Scan`: key/value pairs.
    Pairs(Vec<(Vec<u8>, Vec<u8>)>),
    /// To `Latest` / `Before`: (ts, value), newest first.
    Messages(Vec<(u64, Vec<u8>)>),
    /// To `BackupOpen`: the pinned stream.
    BackupOpened {
        /// Names the stream in `BackupChunk`.
        token: u64,
        /// The log id the pinned state reflects.
        applied: Option<LogId>,
        /// The node that pinned it (and serves its chunks).
        node: NodeId,
        /// That node's transport address.
        addr: String,
    },
    /// To `BackupChunk`: pairs in key order (empty: the stream ended) and
    /// the cursor after them.
    BackupChunk {
        /// The pairs.
        pairs: Chunk,
        /// Pass it to the next call.
        next: Option<ChunkCursor>,
    },
    /// To `Checksum`.
    Checksum(crate::verify::Checksum),
    /// To `App`: the application's answer, in its format.
    App(Vec<u8>),
}

/// An error carried back from a forwarded write.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum RemoteFailure {
    /// The target is not the leader either.
    NotLeader {
        /// The leader it knows of.
        leader: Option<(NodeId, String)>,
    },
    /// Nothing was written; retry later.
    Unavailable(String),
    /// The outcome is unknown.
    Unknown(String),
    /// Anything else.
    Failed(String),
    /// The request was invalid (a bad membership change, …).
    Invalid(String),
    /// The shard no longer owns the slot read (it split): route again.
    Misrouted(String),
}

/// A call's answer.
#[derive(Debug, Serialize, Deserialize)]
#[serde(bound = "")]
pub enum Reply<A: App> {
    /// To `Append`.
    Append(Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>),
    /// To `Vote`.
    Vote(Result<VoteResponse<NodeId>, RaftError<NodeId>>),
    /// To `SnapshotChunk`.
    Chunk(Result<(), String>),
    /// To `SnapshotDone`.
    Snapshot(Result<SnapshotResponse<NodeId>, Fatal<NodeId>>),
    /// To `Write`.
    Write(Result<A::Outcome, RemoteFailure>),
    /// To `Signal`: handed to the server's subscribers.
    Signal,
    /// To `ReadIndex`: the log index to apply up to before reading (None:
    /// nothing committed yet).
    ReadIndex(Result<Option<u64>, RemoteFailure>),
    /// To `Locate`: the answering node's view (None: it is not a replica
    /// or knows no configuration).
    Locate(Option<Placement>),
    /// To `ChangeReplicas`: the placement after the change.
    ChangeReplicas(Result<Placement, RemoteFailure>),
    /// To `Retire`.
    Retired,
    /// To `Read`.
    Read(Result<ReadResult, RemoteFailure>),
    /// The call could not be served at all (no such shard, shutting down).
    Failed(String),
    /// To `Campaign`: the election started.
    Campaigning,
}

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The connection failed or closed.
    #[error("connection: {0}")]
    Io(#[from] std::io::Error),
    /// A bad length, checksum or body.
    #[error("malformed frame: {0}")]
    Malformed(String),
}

/// Writes one frame.
pub async fn write_frame<A: App, W: AsyncWrite + Unpin>(
    w: &mut W,
    msg: &Wire<A>,
) -> Result<(), FrameError> {
    let payload = crate::storage::codec::postcard_after(&[], msg)
        .map_err(|e| FrameError::Malformed(e.to_string()))?;
    if payload.len() > MAX_FRAME {
        return Err(FrameError::Malformed(format!(
            "frame of {} bytes exceeds {MAX_FRAME}",
            payload.len()
        )));
    }
    let mut head = [0u8; 8];
    head[..4].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    head[4..].copy_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    w.write_all(&head).await?;
    w.write_all(&payload).await?;
    Ok(())
}

/// Reads one frame.
pub async fn read_frame<A: App, R: AsyncRead + Unpin>(r: &mut R) -> Result<Wire<A>, FrameError> {
    let mut head = [0u8; 8];
    r.read_exact(&mut head).await?;
    let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
    let crc = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
    if len > MAX_FRAME {
        return Err(FrameError::Malformed(format!(
            "frame length {len} exceeds {MAX_FRAME}"
        )));
    }
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload).await?;
    if crc32fast::hash(&payload) != crc {
        return Err(FrameError::Malformed("checksum mismatch".into()));
    }
    postcard::from_bytes(&payload).map_err(|e| FrameError::Malformed(e.to_string()))
}
