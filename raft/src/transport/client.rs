//! The dialing half: one connection per peer, shared by every shard, and
//! openraft's network traits on top.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use openraft::error::{
    Fatal, NetworkError, RPCError, RaftError, RemoteError, ReplicationClosed, StreamingError,
    Timeout, Unreachable,
};
use openraft::network::{RPCOption, RPCTypes, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};
use tokio::io::BufWriter;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};

use super::{read_frame, write_frame, Reply, Rpc, Wire, WIRE_VERSION};
use crate::app::App;
use crate::ids::{NodeAddr, NodeId, ShardId, Vote};
use crate::storage::snapshot::SnapshotSource;
use crate::types::TypeConfig;

/// How long a connect (TCP + hello) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// Why a call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CallError {
    /// No connection could be made (or the peer refused us).
    #[error("unreachable: {0}")]
    Unreachable(String),
    /// The connection failed while the call was outstanding.
    #[error("connection lost: {0}")]
    Lost(String),
    /// No answer in time.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

type Pending<A> = Arc<Mutex<HashMap<u64, oneshot::Sender<Reply<A>>>>>;

/// A peer's connection, behind an async lock so only one dial runs at once.
type ConnSlot<A> = Arc<tokio::sync::Mutex<Option<Arc<Conn<A>>>>>;

struct Conn<A: App> {
    tx: mpsc::Sender<Wire<A>>,
    pending: Pending<A>,
    alive: Arc<AtomicBool>,
}

/// Connections to the other nodes, shared by every shard of this node.
pub struct Peers<A: App> {
    me: NodeId,
    cluster: String,
    slots: Mutex<HashMap<NodeId, ConnSlot<A>>>,
    next_id: AtomicU64,
    /// Test hook: dial these addresses instead of the membership's (a
    /// fault-injecting proxy sits there).
    routes: RwLock<HashMap<NodeId, SocketAddr>>,
    /// The newest cluster map version any peer's response carried.
    map_seen: Arc<watch::Sender<u64>>,
    /// Peers whose last dial failed: the log says so once when one goes
    /// away and once when it is back, rather than at every retry (openraft
    /// reports each failed call at ERROR; the binary keeps those out).
    away: Mutex<HashSet<NodeId>>,
}

impl<A: App> std::fmt::Debug for Peers<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peers")
            .field("me", &self.me)
            .finish_non_exhaustive()
    }
}

fn note_version(seen: &watch::Sender<u64>, v: u64) {
    seen.send_if_modified(|cur| {
        let newer = v > *cur;
        if newer {
            *cur = v;
        }
        newer
    });
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl<A: App> Peers<A> {
    /// The pool of node `me` in cluster `cluster`.
    pub fn new(me: NodeId, cluster: String) -> Self {
        Peers {
            me,
            cluster,
            slots: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            routes: RwLock::new(HashMap::new()),
            map_seen: Arc::new(watch::channel(0).0),
            away: Mutex::new(HashSet::new()),
        }
    }

    /// The cluster's name this pool says hello with.
    pub fn cluster(&self) -> &str {
        &self.cluster
    }

    /// Dials `addr` whenever `target` is called (tests put a proxy there).
    pub fn set_route(&self, target: NodeId, addr: SocketAddr) {
        self.routes
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(target, addr);
    }

    /// The newest cluster map version heard of (from peers' responses, or
    /// noted with [`Peers::saw_map_version`]).
    pub fn map_versions(&self) -> watch::Receiver<u64> {
        self.map_seen.subscribe()
    }

    /// The newest cluster map version heard of.
    pub fn newest_map_version(&self) -> u64 {
        *self.map_seen.borrow()
    }

    /// Notes that version `v` of the cluster map exists.
    pub fn saw_map_version(&self, v: u64) {
        note_version(&self.map_seen, v);
    }

    /// Drops every connection (they redial on the next call).
    pub fn disconnect_all(&self) {
        lock(&self.slots).clear();
    }

    async fn conn(&self, target: NodeId, addr: &str) -> Result<Arc<Conn<A>>, CallError> {
        let slot = Arc::clone(lock(&self.slots).entry(target).or_default());
        let mut g = slot.lock().await;
        if let Some(c) = g.as_ref() {
            if c.alive.load(Ordering::Acquire) {
                return Ok(Arc::clone(c));
            }
        }
        let route = self
            .routes
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&target)
            .copied();
        let dialed = tokio::time::timeout(CONNECT_TIMEOUT, self.dial(target, addr, route))
            .await
            .map_err(|_| CallError::Unreachable(format!("connect to {addr} timed out")))
            .and_then(|dialed| dialed);
        let c = match dialed {
            Ok(c) => Arc::new(c),
            Err(e) => {
                if lock(&self.away).insert(target) {
                    tracing::warn!(peer = target, error = %e, "peer unreachable; retrying");
                }
                return Err(e);
            }
        };
        if lock(&self.away).remove(&target) {
            tracing::info!(peer = target, "peer reachable again");
        }
        *g = Some(Arc::clone(&c));
        Ok(c)
    }

    async fn dial(
        &self,
        target: NodeId,
        addr: &str,
        route: Option<SocketAddr>,
    ) -> Result<Conn<A>, CallError> {
        let sock = match route {
            Some(r) => TcpStream::connect(r).await,
            None => TcpStream::connect(addr).await,
        }
        .map_err(|e| CallError::Unreachable(format!("connect to {addr}: {e}")))?;
        let _ = sock.set_nodelay(true);
        let (mut rd, wr) = sock.into_split();
        let mut wr = BufWriter::new(wr);
        let hello = Wire::<A>::Hello {
            version: WIRE_VERSION,
            cluster: self.cluster.clone(),
            from: self.me,
            to: target,
        };
        let unreachable =
            |e: super::FrameError| CallError::Unreachable(format!("hello to {addr}: {e}"));
        write_frame(&mut wr, &hello).await.map_err(unreachable)?;
        tokio::io::AsyncWriteExt::flush(&mut wr)
            .await
            .map_err(|e| unreachable(e.into()))?;
        match read_frame::<A, _>(&mut rd).await.map_err(unreachable)? {
            Wire::Welcome { node } if node == target => {}
            Wire::Welcome { node } => {
                return Err(CallError::Unreachable(format!(
                    "{addr} is node {node}, not node {target}"
                )))
            }
            Wire::Refused { reason } => {
                return Err(CallError::Unreachable(format!(
                    "{addr} refused us: {reason}"
                )))
            }
            _ => return Err(CallError::Unreachable(format!("{addr} sent no welcome"))),
        }
        let (tx, mut rx) = mpsc::channel::<Wire<A>>(1024);
        let pending: Pending<A> = Arc::new(Mutex::new(HashMap::new()));
        let alive = Arc::new(AtomicBool::new(true));
        let (a1, a2) = (Arc::clone(&alive), Arc::clone(&alive));
        let p2 = Arc::clone(&pending);
        let seen = Arc::clone(&self.map_seen);
        tokio::spawn(async move {
            while let Some(msg) = rx.recv().await {
                let mut r = write_frame(&mut wr, &msg).await;
                while r.is_ok() {
                    match rx.try_recv() {
                        Ok(more) => r = write_frame(&mut wr, &more).await,
                        Err(_) => break,
                    }
                }
                if r.is_err() || tokio::io::AsyncWriteExt::flush(&mut wr).await.is_err() {
                    break;
                }
            }
            a1.store(false, Ordering::Release);
        });
        tokio::spawn(async move {
            while let Ok(Wire::Response {
                id,
                reply,
                map_version,
            }) = read_frame::<A, _>(&mut rd).await
            {
                note_version(&seen, map_version);
                if let Some(w) = lock(&p2).remove(&id) {
                    let _ = w.send(reply);
                }
            }
            a2.store(false, Ordering::Release);
            // Dropping the senders fails every outstanding call (with
            // `Lost("connection closed")`, which the binary's log keeps
            // out of openraft's ERROR reports: this line says it once).
            let failed = std::mem::take(&mut *lock(&p2)).len();
            tracing::info!(
                peer = target,
                failed,
                "connection to peer closed; redialing on the next call"
            );
        });
        Ok(Conn { tx, pending, alive })
    }

    /// Calls `rpc` on `target`'s `shard`, waiting at most `timeout`.
    pub async fn call(
        &self,
        target: NodeId,
        addr: &str,
        shard: ShardId,
        rpc: Rpc<A>,
        timeout: Duration,
    ) -> Result<Reply<A>, CallError> {
        let conn = self.conn(target, addr).await?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        lock(&conn.pending).insert(id, tx);
        if conn
            .tx
            .send(Wire::Request {
                id,
                shard,
                rpc,
                map_version: self.newest_map_version(),
            })
            .await
            .is_err()
        {
            lock(&conn.pending).remove(&id);
            conn.alive.store(false, Ordering::Release);
            return Err(CallError::Lost("connection closed".into()));
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(_)) => Err(CallError::Lost("connection closed".into())),
            Err(_) => {
                lock(&conn.pending).remove(&id);
                Err(CallError::Timeout(timeout))
            }
        }
    }
}

/// Makes openraft's per-peer clients for one shard.
#[derive(Debug)]
pub struct NetworkFactory<A: App> {
    peers: Arc<Peers<A>>,
    shard: ShardId,
}

impl<A: App> NetworkFactory<A> {
    /// Clients of `shard` over `peers`.
    pub fn new(peers: Arc<Peers<A>>, shard: ShardId) -> Self {
        NetworkFactory { peers, shard }
    }
}

/// One shard's client of one peer.
#[derive(Debug)]
pub struct Network<A: App> {
    peers: Arc<Peers<A>>,
    shard: ShardId,
    me: NodeId,
    target: NodeId,
    addr: String,
}

impl<A: App> RaftNetworkFactory<TypeConfig<A>> for NetworkFactory<A> {
    type Network = Network<A>;

    async fn new_client(&mut self, target: NodeId, node: &NodeAddr) -> Network<A> {
        Network {
            me: self.peers.me,
            peers: Arc::clone(&self.peers),
            shard: self.shard,
            target,
            addr: node.addr.clone(),
        }
    }
}

impl<A: App> Network<A> {
    fn rpc_error<E: std::error::Error>(
        &self,
        e: CallError,
        action: RPCTypes,
    ) -> RPCError<NodeId, NodeAddr, E> {
        match e {
            CallError::Unreachable(_) => RPCError::Unreachable(Unreachable::new(&e)),
            CallError::Lost(_) => RPCError::Network(NetworkError::new(&e)),
            CallError::Timeout(d) => RPCError::Timeout(Timeout {
                action,
                id: self.me,
                target: self.target,
                timeout: d,
            }),
        }
    }

    async fn call(&self, rpc: Rpc<A>, timeout: Duration) -> Result<Reply<A>, CallError> {
        self.peers
            .call(self.target, &self.addr, self.shard, rpc, timeout)
            .await
    }
}

fn unexpected<A: App>(reply: &Reply<A>) -> CallError {
    match reply {
        Reply::Failed(s) => CallError::Lost(s.clone()),
        other => CallError::Lost(format!("unexpected reply {other:?}")),
    }
}

impl<A: App> RaftNetwork<TypeConfig<A>> for Network<A> {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig<A>>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, NodeAddr, RaftError<NodeId>>> {
        match self.call(Rpc::Append(rpc), option.hard_ttl()).await {
            Ok(Reply::Append(Ok(r))) => Ok(r),
            Ok(Reply::Append(Err(e))) => {
                Err(RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            Ok(other) => Err(self.rpc_error(unexpected(&other), RPCTypes::AppendEntries)),
            Err(e) => Err(self.rpc_error(e, RPCTypes::AppendEntries)),
        }
    }

    async fn install_snapshot(
        &mut self,
        _rpc: openraft::raft::InstallSnapshotRequest<TypeConfig<A>>,
        _option: RPCOption,
    ) -> Result<
        openraft::raft::InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, NodeAddr, RaftError<NodeId, openraft::error::InstallSnapshotError>>,
    > {
        // With generic snapshot data openraft sends snapshots through
        // `full_snapshot` only.
        Err(RPCError::Network(NetworkError::new(&CallError::Lost(
            "chunked install_snapshot is not used; snapshots go through full_snapshot".into(),
        ))))
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, NodeAddr, RaftError<NodeId>>> {
        match self.call(Rpc::Vote(rpc), option.hard_ttl()).await {
            Ok(Reply::Vote(Ok(r))) => Ok(r),
            Ok(Reply::Vote(Err(e))) => Err(RPCError::RemoteError(RemoteError::new(self.target, e))),
            Ok(other) => Err(self.rpc_error(unexpected(&other), RPCTypes::Vote)),
            Err(e) => Err(self.rpc_error(e, RPCTypes::Vote)),
        }
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: openraft::Snapshot<TypeConfig<A>>,
        cancel: impl Future<Output = ReplicationClosed> + Send + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<NodeId>, StreamingError<TypeConfig<A>, Fatal<NodeId>>> {
        let send = async {
            let snapshot_id = snapshot.meta.snapshot_id.clone();
            let mut src = SnapshotSource::new(&snapshot.snapshot)
                .map_err(|e| StreamingError::Network(NetworkError::new(&e)))?;
            let mut seq = 0u64;
            let to_streaming = |e: CallError| -> StreamingError<TypeConfig<A>, Fatal<NodeId>> {
                match e {
                    CallError::Unreachable(_) => StreamingError::Unreachable(Unreachable::new(&e)),
                    _ => StreamingError::Network(NetworkError::new(&e)),
                }
            };
            loop {
                let chunk = src
                    .next_chunk()
                    .map_err(|e| StreamingError::Network(NetworkError::new(&e)))?;
                let Some(chunk) = chunk else { break };
                let rpc = Rpc::SnapshotChunk {
                    snapshot_id: snapshot_id.clone(),
                    seq,
                    chunk,
                };
                match self
                    .call(rpc, option.hard_ttl())
                    .await
                    .map_err(to_streaming)?
                {
                    Reply::Chunk(Ok(())) => {}
                    Reply::Chunk(Err(s)) => return Err(to_streaming(CallError::Lost(s))),
                    other => return Err(to_streaming(unexpected(&other))),
                }
                seq += 1;
            }
            let done = Rpc::SnapshotDone {
                snapshot_id,
                chunks: seq,
                vote,
                meta: snapshot.meta.clone(),
            };
            // Installing can take a while (a flush): allow more time.
            match self
                .call(done, option.hard_ttl().max(Duration::from_secs(30)))
                .await
                .map_err(to_streaming)?
            {
                Reply::Snapshot(Ok(r)) => Ok(r),
                Reply::Snapshot(Err(f)) => Err(StreamingError::RemoteError(RemoteError::new(
                    self.target,
                    f,
                ))),
                other => Err(to_streaming(unexpected(&other))),
            }
        };
        tokio::select! {
            closed = cancel => Err(StreamingError::Closed(closed)),
            r = send => r,
        }
    }
}
