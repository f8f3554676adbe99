//! Starting and stopping a node's server: the store (a raft `Node`,
//! bootstrapped as a cluster of one or with the configured peers), the
//! fan-in of inbox notices, and the HTTP/WebSocket listener.
//!
//! The listener is hyper's HTTP/1 connection driver rather than plain
//! `axum::serve`, for two limits that one lacks: a header-read timeout
//! (a slowloris holds no connection longer than `limits.header_timeout_ms`)
//! and a cap on open connections (`limits.max_connections`; the next one
//! is closed at accept).
//!
//! Shutdown (SIGTERM in `main`): stop accepting; ask every connection to
//! finish its request and every WebSocket to close with 1001; wait for them
//! (bounded); then stop the node, whose log syncs everything it wrote.
//! Nothing acknowledged depends on that last step — every ack waited for
//! its commit — it only makes the next start replay less.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinHandle;

use missive_chat::ChatNode as Node;
use missive_raft::node::NodeConfig;

use crate::auth::Auth;
use crate::config::Config;
use crate::delivery::hub::Hub;
use crate::delivery::presence::{Presence, Signal};
use crate::edge::http::router;
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::rate::IpRates;
use crate::service::Service;
use crate::state::AppState;

/// How long shutdown waits for open connections to finish.
const DRAIN: Duration = Duration::from_secs(10);

/// A running server.
pub struct Running {
    addr: SocketAddr,
    grpc_addr: Option<SocketAddr>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    service: Arc<Service>,
    open: Arc<Semaphore>,
    max_connections: usize,
}

impl std::fmt::Debug for Running {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Running")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

/// Starts the node and its server.
pub async fn start(cfg: Config) -> Result<Running> {
    cfg.validate()?;
    std::fs::create_dir_all(&cfg.data_dir).map_err(|source| Error::Io {
        op: "create",
        path: cfg.data_dir.display().to_string(),
        source,
    })?;
    let auth = Arc::new(Auth::load(&cfg.auth, &cfg.data_dir)?);
    // Push keys are read now: a bad one stops the start with its reason.
    let push = crate::delivery::push::Providers::load(&cfg.push)?;
    let mut ncfg = NodeConfig::new(cfg.node.id, cfg.node.raft_listen, cfg.data_dir.clone());
    ncfg.shards = match cfg.shards()? {
        Some(n) => n,
        // Joining: the cluster's count, asked of the seeds.
        None => {
            missive_raft::cluster::directory::cluster_shard_count::<missive_chat::ChatApp>(
                cfg.node.id,
                &ncfg.cluster,
                &cfg.node.peers,
                missive_raft::cluster::directory::JOIN_WAIT,
            )
            .await?
        }
    };
    tracing::info!(shards = ncfg.shards, "shard count");
    ncfg.log.io = cfg.node.io;
    ncfg.log.zero_fill = cfg.node.log_zero_fill;
    ncfg.log_budget = cfg.node.log_budget_mib.saturating_mul(1 << 20);
    ncfg.lsm.bottom_compression = cfg.node.bottom();
    ncfg.lsm.uncompressed_levels = usize::from(cfg.node.uncompressed_levels);
    ncfg.lsm.paced_write_rate =
        (cfg.node.paced_write_mib > 0).then(|| u64::from(cfg.node.paced_write_mib) << 20);
    let node = Node::start(ncfg).await?;
    if cfg.node.join {
        node.join(&cfg.node.peers).await?;
    } else {
        let (members, replicas) = if cfg.node.peers.is_empty() {
            (BTreeMap::from([(cfg.node.id, node.addr().to_string())]), 1)
        } else {
            (cfg.node.peers.clone(), cfg.node.replicas)
        };
        node.bootstrap(&members, replicas).await?;
    }

    let listener = TcpListener::bind(cfg.listen)
        .await
        .map_err(|source| Error::Io {
            op: "listen on",
            path: cfg.listen.to_string(),
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| Error::Io {
        op: "read address of",
        path: cfg.listen.to_string(),
        source,
    })?;
    let metrics = Arc::new(Metrics::default());
    let hub = Arc::new(Hub::default());
    let (stop, stop_rx) = watch::channel(false);
    let hub_task = tokio::spawn(Arc::clone(&hub).run(
        node.inbox_notices(),
        node.snapshot_installs(),
        stop_rx.clone(),
    ));
    let signals = node.signals();
    let service = Arc::new(
        Service::new(
            node,
            cfg.limits.clone(),
            cfg.messages.clone(),
            Arc::clone(&metrics),
        )
        .with_media(crate::media::MediaConfig::new(
            cfg.media.clone(),
            auth.media_key(),
        )),
    );
    let (presence, outgoing) = Presence::new(cfg.node.id);
    let push_task = tokio::spawn(crate::delivery::push::run(
        cfg.push.clone(),
        push,
        Arc::clone(&service),
        Arc::clone(&presence),
        service.node.inbox_notices(),
        stop_rx.clone(),
    ));
    let collector_task = tokio::spawn(crate::media::run_collector(
        Arc::clone(&service),
        stop_rx.clone(),
    ));
    let state = AppState::new(Arc::clone(&service), auth, hub, presence, stop_rx.clone());
    let presence_task = tokio::spawn(run_signals(
        state.clone(),
        signals,
        outgoing,
        stop_rx.clone(),
    ));
    let grpc = match cfg.grpc.enabled {
        true => {
            let l = crate::edge::grpc::bind(cfg.grpc.listen)
                .await
                .map_err(|source| Error::Io {
                    op: "listen (gRPC) on",
                    path: cfg.grpc.listen.to_string(),
                    source,
                })?;
            let a = l.local_addr().map_err(|source| Error::Io {
                op: "read address of",
                path: cfg.grpc.listen.to_string(),
                source,
            })?;
            Some((l, a))
        }
        false => None,
    };
    let grpc_addr = grpc.as_ref().map(|(_, a)| *a);
    let grpc_task = grpc
        .map(|(l, _)| tokio::spawn(crate::edge::grpc::serve(l, state.clone(), stop_rx.clone())));
    let open = Arc::new(Semaphore::new(cfg.limits.max_connections));
    let ips = Arc::clone(&state.ips);
    let accept = tokio::spawn(accept_loop(
        listener,
        router(state),
        ips,
        Arc::clone(&open),
        metrics,
        Duration::from_millis(cfg.limits.header_timeout_ms.max(1)),
        stop_rx,
    ));
    tracing::info!(%addr, data_dir = %cfg.data_dir.display(), "missived listening");
    let mut tasks = vec![hub_task, presence_task, push_task, collector_task, accept];
    tasks.extend(grpc_task);
    Ok(Running {
        addr,
        grpc_addr,
        stop,
        tasks,
        service,
        open,
        max_connections: cfg.limits.max_connections,
    })
}

/// Carries signals between this node and the cluster: presence and
/// typing (outgoing to every node, incoming ones — this node's too — into
/// `presence`, and the periodic lease refresh), and revocations (incoming:
/// forget the cached copy, wake the user's sockets; see `revocation`).
async fn run_signals(
    state: AppState,
    mut incoming: tokio::sync::broadcast::Receiver<Arc<[u8]>>,
    mut outgoing: tokio::sync::mpsc::UnboundedReceiver<Signal>,
    mut stop: watch::Receiver<bool>,
) {
    let (presence, service) = (&state.presence, &state.service);
    let mut refresh = tokio::time::interval(crate::delivery::presence::REFRESH);
    refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut expire = tokio::time::interval(crate::delivery::presence::EXPIRE_EVERY);
    expire.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = refresh.tick() => presence.refresh(),
            _ = expire.tick() => presence.expire(),
            s = outgoing.recv() => match s {
                Some(s) => service.node.signal(s.encode()),
                None => return,
            },
            r = incoming.recv() => match r {
                Ok(bytes) => match Signal::decode(&bytes) {
                    Some(Signal::Revoked { user }) => {
                        let user = missive_chat::command::UserId(user);
                        state.revoked.forget(user);
                        state.sockets.wake(user);
                    }
                    Some(s) => presence.receive(s),
                    None => tracing::debug!("ignored a signal of another version"),
                },
                // Lost signals are repaired by the next refresh (see presence).
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    tracing::debug!(missed = n, "presence signals lagged");
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            },
        }
    }
}

#[allow(clippy::too_many_arguments, reason = "the listener's parts, named")]
async fn accept_loop(
    listener: TcpListener,
    app: axum::Router,
    ips: Arc<IpRates>,
    open: Arc<Semaphore>,
    metrics: Arc<Metrics>,
    header_timeout: Duration,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let (sock, peer) = tokio::select! {
            _ = stop.changed() => return,
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        if !ips.connect(peer.ip()) {
            drop(sock);
            continue;
        }
        let Ok(permit) = Arc::clone(&open).try_acquire_owned() else {
            metrics.connections_refused.inc();
            drop(sock);
            continue;
        };
        let _ = sock.set_nodelay(true);
        // Handlers that limit per client address read it from here.
        let svc = TowerToHyperService::new(tower::util::MapRequest::new(
            app.clone(),
            move |mut req: hyper::Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(ConnectInfo(peer));
                req
            },
        ));
        let metrics = Arc::clone(&metrics);
        let mut stop = stop.clone();
        tokio::spawn(async move {
            metrics.connections.inc();
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
                .serve_connection(TokioIo::new(sock), svc)
                .with_upgrades();
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = stop.changed() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(DRAIN, conn.as_mut()).await;
                }
            }
            metrics.connections.dec();
            drop(permit);
        });
    }
}

impl Running {
    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where the gRPC API listens, if it is on.
    pub fn grpc_addr(&self) -> Option<SocketAddr> {
        self.grpc_addr
    }

    /// The node under the server.
    pub fn node(&self) -> &Node {
        &self.service.node
    }

    /// Stops accepting, drains connections, stops the node.
    pub async fn shutdown(self) -> Result<()> {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
        // Connections (and upgraded WebSockets) hold the service; wait for
        // them to go.
        let deadline = tokio::time::Instant::now() + DRAIN;
        let mut service = self.service;
        loop {
            match Arc::try_unwrap(service) {
                Ok(s) => {
                    s.node.shutdown().await?;
                    tracing::info!("missived stopped");
                    return Ok(());
                }
                Err(s) if tokio::time::Instant::now() >= deadline => {
                    let open = self.max_connections - self.open.available_permits();
                    tracing::warn!(
                        open,
                        "connections still open after the drain; stopping anyway"
                    );
                    // The log syncs on drop; acknowledged writes were
                    // durable before their acks anyway.
                    drop(s);
                    return Ok(());
                }
                Err(s) => {
                    service = s;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    }
}
