//! The WebSocket session (`GET /v1/ws`): requests (send, receipt, history,
//! ping) answered by id, and the device's event stream (sync, then live).
//!
//! # The sync/live hand-off, and why it has no gap and no duplicate
//!
//! There is one source of events: the user's inbox in the store, in useq
//! order. A session never pushes anything the store did not give it; the
//! "live" phase is the same read loop woken by the hub instead of by the
//! previous page being full. The session registers with the hub *before*
//! its first read, and a wake that arrives while it reads is kept by the
//! `Notify` as a permit, so no growth can slip between "read to the end"
//! and "wait". The cursor only moves forward, one useq per event written,
//! so a page re-read after a wake starts exactly after the last event
//! sent. `synced` is written once, when the stream first reaches the end.
//!
//! # Slow consumers
//!
//! Frames go through one bounded queue per session. A writer blocked for
//! longer than `limits.slow_consumer_ms` (the queue stays full) closes the
//! session with code 4008 `slow_consumer`; the device reconnects and syncs
//! from its cursor, losing nothing.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::{mpsc, watch, Semaphore};

use missive_chat::command::UserId;
use missive_engine::keys::ConversationId;

use crate::auth::Caller;
use crate::error::ApiError;
use crate::http::AppState;
use crate::presence;
use crate::service::Service;
use crate::wire::{parse_kind, BodyIn, ClientFrame, ServerFrame};

/// Close codes (4000–4999 are the application's).
pub mod close {
    /// Normal closure.
    pub const NORMAL: u16 = 1000;
    /// The server is shutting down.
    pub const GOING_AWAY: u16 = 1001;
    /// A frame above `limits.max_frame_bytes`.
    pub const TOO_BIG: u16 = 1009;
    /// No frame from the client for `limits.idle_timeout_secs`.
    pub const IDLE: u16 = 4000;
    /// The session fell behind (see the module docs).
    pub const SLOW_CONSUMER: u16 = 4008;
    /// The server failed; reconnect.
    pub const INTERNAL: u16 = 4011;
}

/// Requests of one session handled concurrently (a client may pipeline).
const IN_FLIGHT: usize = 64;
/// Frame types a client may send.
const CLIENT_TYPES: [&str; 7] = [
    "send", "receipt", "history", "sync", "ping", "presence", "typing",
];

/// Frames written per flush at most.
const WRITE_BURST: usize = 64;

/// How often a live session looks in the store without a wake, when this
/// node replicates its user's shard (wakes are the live path).
const STORE_RECHECK: Duration = Duration::from_secs(30);

/// How often it looks when this node does not: one routed inbox read per
/// idle session per interval is the live path then (a degraded mode while
/// replicas move; docs/design.md §4.7).
const REMOTE_POLL: Duration = Duration::from_millis(500);

/// Why a burst was not written.
enum WriteEnd {
    /// The peer is gone.
    Closed,
    /// A frame did not serialize (our bug).
    Internal,
}

/// Serializes and writes `burst`, then flushes once.
async fn write_burst(
    sink: &mut futures_util::stream::SplitSink<WebSocket, Message>,
    burst: Vec<Out>,
    metrics: &crate::metrics::Metrics,
) -> Result<(), WriteEnd> {
    for Out::Frame(f) in burst {
        match &f {
            ServerFrame::Event { .. } => metrics.events_pushed.inc(),
            ServerFrame::Error { .. } => metrics.errors.inc(),
            _ => {}
        }
        let text = serde_json::to_string(&f).map_err(|e| {
            tracing::error!(error = %e, "frame did not serialize");
            WriteEnd::Internal
        })?;
        sink.feed(Message::Text(text.into()))
            .await
            .map_err(|_| WriteEnd::Closed)?;
    }
    sink.flush().await.map_err(|_| WriteEnd::Closed)
}

/// What the writer is asked to do.
enum Out {
    Frame(ServerFrame),
}

/// A session's way to send frames and to end itself.
#[derive(Clone)]
struct Tx {
    frames: mpsc::Sender<Out>,
    close: watch::Sender<Option<(u16, &'static str)>>,
    slow_after: Duration,
    state: AppState,
}

impl Tx {
    /// Queues a frame; a queue that stays full closes the session.
    async fn send(&self, f: ServerFrame) -> bool {
        match tokio::time::timeout(self.slow_after, self.frames.send(Out::Frame(f))).await {
            Ok(Ok(())) => true,
            Ok(Err(_)) => false,
            Err(_) => {
                self.end(close::SLOW_CONSUMER, "slow_consumer");
                false
            }
        }
    }

    fn end(&self, code: u16, reason: &'static str) {
        self.close.send_if_modified(|c| {
            if c.is_none() {
                *c = Some((code, reason));
                true
            } else {
                false
            }
        });
    }
}

/// Runs one session until it closes.
pub async fn session(socket: WebSocket, state: AppState, who: Caller) {
    let metrics = Arc::clone(&state.service.metrics);
    metrics.websockets.inc();
    let limits = state.service.limits.clone();
    let (mut sink, mut stream) = socket.split();
    let (frames_tx, mut frames_rx) = mpsc::channel::<Out>(limits.outbound_queue);
    let (close_tx, mut close_rx) = watch::channel(None);
    // Presence and typing frames: a separate small queue, dropped when full
    // (see `presence`), so they never count toward the slow-consumer rule.
    let (eph_tx, mut eph_rx) = mpsc::channel::<ServerFrame>(presence::SESSION_QUEUE);
    let guard = state.presence.register(who.user, eph_tx.clone());
    let eph = Ephemeral {
        session: guard.id,
        tx: eph_tx,
    };
    let tx = Tx {
        frames: frames_tx,
        close: close_tx,
        slow_after: limits.slow_consumer(),
        state: state.clone(),
    };

    // The writer: the only task touching the sink.
    let slow_after = limits.slow_consumer();
    let wmetrics = Arc::clone(&metrics);
    let writer = tokio::spawn(async move {
        let reason = loop {
            tokio::select! {
                biased;
                r = close_rx.changed() => {
                    match (r, *close_rx.borrow()) {
                        (Ok(()), Some(c)) => break c,
                        (Err(_), _) => break (close::NORMAL, "closed"),
                        _ => continue,
                    }
                }
                Some(f) = eph_rx.recv() => {
                    match tokio::time::timeout(slow_after, write_burst(&mut sink, vec![Out::Frame(f)], &wmetrics)).await {
                        Ok(Ok(())) => {}
                        Ok(Err(WriteEnd::Closed)) => return,
                        Ok(Err(WriteEnd::Internal)) => break (close::INTERNAL, "internal"),
                        Err(_) => break (close::SLOW_CONSUMER, "slow_consumer"),
                    }
                }
                f = frames_rx.recv() => {
                    let Some(first) = f else { break (close::NORMAL, "closed") };
                    // Everything already queued goes out in one write: a
                    // `sent` and the sender's own echo, a burst of sync
                    // pages. A frame per syscall was the largest single
                    // cost of a busy server.
                    let mut burst = vec![first];
                    while burst.len() < WRITE_BURST {
                        match frames_rx.try_recv() {
                            Ok(f) => burst.push(f),
                            Err(_) => break,
                        }
                    }
                    match tokio::time::timeout(slow_after, write_burst(&mut sink, burst, &wmetrics)).await {
                        Ok(Ok(())) => {}
                        Ok(Err(WriteEnd::Closed)) => return,
                        Ok(Err(WriteEnd::Internal)) => break (close::INTERNAL, "internal"),
                        Err(_) => break (close::SLOW_CONSUMER, "slow_consumer"),
                    }
                }
            }
        };
        if reason.0 == close::SLOW_CONSUMER {
            wmetrics.slow_consumers.inc();
        }
        let frame = CloseFrame {
            code: reason.0,
            reason: Utf8Bytes::from_static(reason.1),
        };
        let _ = tokio::time::timeout(
            Duration::from_secs(1),
            sink.send(Message::Close(Some(frame))),
        )
        .await;
        let _ = tokio::time::timeout(Duration::from_secs(1), sink.close()).await;
    });

    let idle = Duration::from_secs(limits.idle_timeout_secs.max(1));
    let in_flight = Arc::new(Semaphore::new(IN_FLIGHT));
    let mut pump: Option<tokio::task::JoinHandle<()>> = None;
    let mut shutdown = state.shutdown.clone();
    let mut ended = tx.close.subscribe();
    loop {
        let next = tokio::select! {
            _ = shutdown.changed() => { tx.end(close::GOING_AWAY, "server shutting down"); break; }
            _ = ended.changed() => break,
            n = tokio::time::timeout(idle, stream.next()) => n,
        };
        let msg = match next {
            Err(_) => {
                tx.end(close::IDLE, "idle");
                break;
            }
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                // tungstenite refuses a message above max_message_size and
                // the stream cannot continue after it.
                let too_big =
                    e.to_string().contains("too long") || e.to_string().contains("too big");
                if too_big {
                    let _ = tx
                        .send(ServerFrame::error(
                            None,
                            &ApiError::new(
                                axum::http::StatusCode::PAYLOAD_TOO_LARGE,
                                "frame_too_large",
                                format!("frames are limited to {} bytes", limits.max_frame_bytes),
                            ),
                        ))
                        .await;
                    tx.end(close::TOO_BIG, "frame_too_large");
                }
                break;
            }
            Ok(Some(Ok(m))) => m,
        };
        let text = match msg {
            Message::Text(t) => t,
            Message::Close(_) => break,
            Message::Ping(_) | Message::Pong(_) => continue,
            Message::Binary(_) => {
                let e = ApiError::invalid("frames are JSON text; binary frames are not accepted");
                let e = ApiError {
                    code: "binary_not_supported",
                    ..e
                };
                if !tx.send(ServerFrame::error(None, &e)).await {
                    break;
                }
                continue;
            }
        };
        let frame = match parse(text.as_str()) {
            Ok(f) => f,
            Err((id, e)) => {
                if !tx.send(ServerFrame::error(id, &e)).await {
                    break;
                }
                continue;
            }
        };
        match frame {
            ClientFrame::Sync { id, after } => {
                if let Some(p) = pump.take() {
                    p.abort();
                }
                pump = Some(tokio::spawn(sync_pump(
                    tx.clone(),
                    state.clone(),
                    who,
                    after,
                    id,
                )));
            }
            ClientFrame::Ping { id } => {
                if !tx.send(ServerFrame::Pong { id }).await {
                    break;
                }
            }
            request => {
                let Ok(permit) = Arc::clone(&in_flight).acquire_owned().await else {
                    break;
                };
                let tx = tx.clone();
                let eph = eph.clone();
                tokio::spawn(async move {
                    if let Some(reply) = handle(&tx.state, who, &eph, request).await {
                        tx.send(reply).await;
                    }
                    drop(permit);
                });
            }
        }
    }
    if let Some(p) = pump.take() {
        p.abort();
    }
    tx.end(close::NORMAL, "closed");
    drop(tx);
    drop(eph);
    drop(guard);
    let _ = writer.await;
    metrics.websockets.dec();
}

/// Parses a frame; on failure, the request id if one was readable.
fn parse(text: &str) -> Result<ClientFrame, (Option<String>, ApiError)> {
    // A well-formed frame in one pass; only a bad one goes through a JSON
    // value, to name its id and type in the error.
    if let Ok(f) = serde_json::from_str::<ClientFrame>(text) {
        return Ok(f);
    }
    let v: serde_json::Value = serde_json::from_str(text).map_err(|e| {
        (
            None,
            ApiError {
                code: "malformed_frame",
                ..ApiError::invalid(format!("not JSON: {e}"))
            },
        )
    })?;
    let id = v.get("id").and_then(|i| i.as_str()).map(str::to_string);
    let ty = v
        .get("type")
        .and_then(|t| t.as_str())
        .unwrap_or("")
        .to_string();
    if !CLIENT_TYPES.contains(&ty.as_str()) {
        return Err((
            id,
            ApiError {
                code: "unknown_frame_type",
                ..ApiError::invalid(format!(
                    "type {ty:?} is not one of {}",
                    CLIENT_TYPES.join(", ")
                ))
            },
        ));
    }
    serde_json::from_value(v).map_err(|e| {
        (
            id,
            ApiError {
                code: "malformed_frame",
                ..ApiError::invalid(format!("bad {ty} frame: {e}"))
            },
        )
    })
}

/// A session's handle on its ephemeral (presence, typing) queue.
#[derive(Clone)]
struct Ephemeral {
    session: u64,
    tx: mpsc::Sender<ServerFrame>,
}

/// Answers one request frame (`typing` has no answer unless it fails).
async fn handle(
    state: &AppState,
    who: Caller,
    eph: &Ephemeral,
    f: ClientFrame,
) -> Option<ServerFrame> {
    let svc = &state.service;
    let reply = match f {
        ClientFrame::Send {
            id,
            conv,
            client_msg_id,
            kind,
            body,
            body_b64,
            expires_in_ms,
        } => {
            let r = async {
                let kind = parse_kind(kind.as_deref().unwrap_or("text"))?;
                let body = BodyIn { body, body_b64 }.bytes(svc.limits.max_message_bytes)?;
                svc.send(
                    who,
                    ConversationId(conv.0),
                    client_msg_id,
                    kind,
                    body,
                    expires_in_ms,
                )
                .await
            }
            .await;
            match r {
                Ok(a) => ServerFrame::Sent {
                    id,
                    conv,
                    seq: a.seq,
                    ts: a.ts,
                    duplicate: a.duplicate,
                },
                Err(e) => ServerFrame::error(Some(id), &e),
            }
        }
        ClientFrame::Receipt {
            id,
            conv,
            delivered,
            read,
        } => match svc
            .set_receipt(who.user, ConversationId(conv.0), delivered, read)
            .await
        {
            Ok((delivered, read)) => ServerFrame::ReceiptSet {
                id,
                conv,
                delivered,
                read,
            },
            Err(e) => ServerFrame::error(Some(id), &e),
        },
        ClientFrame::History {
            id,
            conv,
            before,
            limit,
        } => match svc
            .history(who.user, ConversationId(conv.0), before, limit)
            .await
        {
            Ok((messages, next_before)) => ServerFrame::History {
                id,
                conv,
                messages,
                next_before,
            },
            Err(e) => ServerFrame::error(Some(id), &e),
        },
        ClientFrame::Presence { id, users } => {
            let r = async {
                let (watch, hidden) = watch_list(svc, who.user, &users).await?;
                let now = state.presence.watch(eph.session, &eph.tx, &watch);
                Ok::<_, ApiError>((now, hidden))
            }
            .await;
            match r {
                Ok((users, hidden)) => ServerFrame::PresenceState {
                    id,
                    users,
                    hidden: hidden.into_iter().map(|u| crate::wire::Id(u.0)).collect(),
                },
                Err(e) => ServerFrame::error(Some(id), &e),
            }
        }
        ClientFrame::Typing { id, conv, typing } => {
            match announce_typing(state, who.user, ConversationId(conv.0), typing).await {
                Ok(()) => return None,
                Err(e) => ServerFrame::error(id, &e),
            }
        }
        ClientFrame::Sync { .. } | ClientFrame::Ping { .. } => ServerFrame::error(
            None,
            &ApiError::internal(&"sync and ping are handled by the session"),
        ),
    };
    Some(reply)
}

/// A presence watch list checked (at most 500; duplicates dropped) and split
/// into the users `who` may watch — those sharing a conversation with
/// them — and the rest, which stay hidden. Shared by the WebSocket's
/// `presence` frame and gRPC's `Live`.
pub(crate) async fn watch_list(
    svc: &Service,
    who: UserId,
    users: &[crate::wire::Id],
) -> Result<(Vec<UserId>, Vec<UserId>), ApiError> {
    let users = presence::dedup_watch_list(users).map_err(ApiError::invalid)?;
    let allowed = svc.contacts_among(who, &users).await?;
    Ok(users.into_iter().partition(|u| allowed.contains(u)))
}

/// Announces that `who` started or stopped typing in `conv`, to its other
/// members, if `who` is a member (`not_a_member` otherwise). Shared by the
/// WebSocket's `typing` frame and gRPC's `Typing`.
pub(crate) async fn announce_typing(
    state: &AppState,
    who: UserId,
    conv: ConversationId,
    typing: bool,
) -> Result<(), ApiError> {
    let c = state.service.member_conversation(who, conv).await?;
    let to = c.members.iter().map(|m| m.0).collect();
    state.presence.typing(who, conv.0, typing, to);
    Ok(())
}

/// Where a sync stream's frames go: a WebSocket session here, a gRPC
/// response stream in `grpc`. `send` is false once the receiver is gone
/// (or was too slow and has been ended).
pub(crate) trait FrameSink: Send + Sync + 'static {
    /// Queues a frame for the client.
    fn send(&self, f: ServerFrame) -> impl std::future::Future<Output = bool> + Send;
}

impl FrameSink for Tx {
    async fn send(&self, f: ServerFrame) -> bool {
        Tx::send(self, f).await
    }
}

/// Streams the user's inbox after `after`, then follows it live.
pub(crate) async fn sync_pump<S: FrameSink>(
    tx: S,
    state: AppState,
    who: Caller,
    after: u64,
    id: Option<String>,
) {
    let svc = Arc::clone(&state.service);
    // Registered before the first read: see the module docs.
    let sub = state.hub.subscribe(who.user);
    let page = svc.limits.sync_page;
    let mut cursor = after;
    let mut synced = false;
    let mut look_in_store = false;
    // A cursor from a replica ahead of this one: give this one time to
    // catch up before calling the cursor bad.
    let patience = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        // Live, the hub's ring usually holds exactly what the wake was for;
        // it answers only when it can vouch for everything after the cursor.
        let from_ring = (synced && !look_in_store)
            .then(|| state.hub.after(who.user, cursor, page))
            .flatten()
            .map(|evs| {
                let head = evs.last().map_or(cursor, |(u, _)| *u);
                (evs, head)
            });
        let page_read = match from_ring {
            Some(p) => Ok(p),
            None => svc.inbox_page(who.user, cursor, page).await,
        };
        let (events, head) = match page_read {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(user = who.user.0, error = %e.message, "sync read failed; retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        if after > head && !synced {
            if tokio::time::Instant::now() < patience {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            let e = ApiError {
                code: "bad_cursor",
                ..ApiError::invalid(format!(
                    "cursor {after} is beyond this user's newest event {head}"
                ))
            };
            tx.send(ServerFrame::error(id, &e)).await;
            return;
        }
        let full = events.len() == page;
        for (useq, e) in events {
            let event = match svc.render_event(&e).await {
                Ok(ev) => ev,
                Err(err) => {
                    tracing::warn!(user = who.user.0, error = %err.message, "event's message not readable yet");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    break;
                }
            };
            let frame = ServerFrame::Event {
                useq,
                conv: crate::wire::Id(e.conv.0),
                at: e.at,
                event,
            };
            if !tx.send(frame).await {
                return;
            }
            cursor = useq;
        }
        if full {
            continue;
        }
        if !synced && cursor >= head {
            synced = true;
            if !tx.send(ServerFrame::Synced { cursor }).await {
                return;
            }
        }
        look_in_store = false;
        if cursor >= head {
            // A periodic look in the store as well: rarely where this node
            // replicates the user's shard (in case a wake was never sent —
            // a replica applying through a snapshot it has not announced),
            // often where it does not (a node that joined and hosts nothing
            // yet, or whose replica moved away): wakes come only from apply
            // here, so there the look is the live path.
            let user_shard = svc.node.slots().shard_of_user(who.user.0);
            let recheck = if svc.node.hosts(user_shard) {
                STORE_RECHECK
            } else {
                REMOTE_POLL
            };
            look_in_store = tokio::select! {
                _ = sub.wake.notified() => false,
                _ = tokio::time::sleep(recheck) => true,
            };
        }
    }
}
