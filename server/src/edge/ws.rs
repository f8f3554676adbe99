//! The WebSocket session (`GET /v1/ws`): requests (send, receipt, history,
//! ping) answered by id, and the device's event stream (sync, then live:
//! `delivery::sync`, whose essay says why the hand-off has no gap and no
//! duplicate).
//!
//! # Slow consumers
//!
//! Frames go through one bounded queue per session, bounded twice: in
//! frames (`limits.outbound_queue`) and in bytes
//! (`limits.outbound_queue_bytes`: frames are serialized when queued, and
//! each holds its length of the session's byte budget until written), so
//! what a client that stops reading pins in the server's memory is known
//! whatever the messages' sizes. A queue that stays full, or a writer
//! blocked on the socket, for longer than `limits.slow_consumer_ms` closes
//! the session with code 4008 `slow_consumer` (or drops the connection,
//! when the socket cannot take even that); the device reconnects and
//! syncs from its cursor, losing nothing.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use tokio::sync::{mpsc, watch, Semaphore};

use missive_engine::keys::ConversationId;

use crate::auth::{Caller, Token};
use crate::delivery::presence;
use crate::delivery::sync::{announce_typing, sync_pump, watch_list, FrameSink};
use crate::error::ApiError;
use crate::service::Outgoing;
use crate::sockets::SocketSlot;
use crate::state::AppState;
use crate::wire::{parse_kind, BodyIn, ClientFrame, RevokeIn, ServerFrame, SettingsIn};
use missive_chat::{DeviceId, UserId};

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
    /// The session's token was revoked (the device was logged out).
    pub const REVOKED: u16 = 4003;
    /// The session fell behind (see the module docs).
    pub const SLOW_CONSUMER: u16 = 4008;
    /// The server failed; reconnect.
    pub const INTERNAL: u16 = 4011;
}

/// Requests of one session handled concurrently (a client may pipeline).
const IN_FLIGHT: usize = 64;
/// Frame types a client may send.
const CLIENT_TYPES: [&str; 25] = [
    "send",
    "configure",
    "edit",
    "unsend",
    "react",
    "pin",
    "pins",
    "hide",
    "block",
    "blocks",
    "conversations",
    "receipt",
    "history",
    "search",
    "sync",
    "ping",
    "presence",
    "typing",
    "revoke",
    "media_url",
    "publish_keys",
    "key_status",
    "device_keys",
    "claim_keys",
    "remove_keys",
];

/// Frames written per flush at most.
const WRITE_BURST: usize = 64;

/// Why a burst was not written.
enum WriteEnd {
    /// The peer is gone.
    Closed,
    /// A frame did not serialize (our bug).
    Internal,
}

/// Serializes a frame, counting what it is.
fn render(f: &ServerFrame, metrics: &crate::metrics::Metrics) -> Result<String, WriteEnd> {
    match f {
        ServerFrame::Event { .. } => {
            metrics.events_pushed.inc();
        }
        ServerFrame::Error { .. } => {
            metrics.errors.inc();
        }
        _ => {}
    }
    serde_json::to_string(f).map_err(|e| {
        tracing::error!(error = %e, "frame did not serialize");
        WriteEnd::Internal
    })
}

/// Writes `burst`, then flushes once; each frame's bytes go back to
/// `budget` (when the frames came from the budgeted queue) as it is handed
/// to the socket.
async fn write_burst<K: Sink<Message> + Unpin>(
    sink: &mut K,
    burst: Vec<Utf8Bytes>,
    budget: Option<&Budget>,
) -> Result<(), WriteEnd> {
    for text in burst {
        let len = text.len();
        sink.feed(Message::Text(text))
            .await
            .map_err(|_| WriteEnd::Closed)?;
        if let Some(b) = budget {
            b.give_back(len);
        }
    }
    sink.flush().await.map_err(|_| WriteEnd::Closed)
}

/// A session's byte budget for queued frames
/// (`limits.outbound_queue_bytes`): a frame takes its length (at least 1,
/// at most the whole budget) when it is queued, and the writer gives that
/// back once the frame is handed to the socket. The frames carry no permit
/// of their own: a permit is 16 bytes in each of the queue's slots, and
/// the queue keeps a block of 32 slots for the session's life. The writer
/// closes the budget when it ends, so no sender waits on it any more.
struct Budget {
    room: Semaphore,
    bytes: usize,
}

impl Budget {
    /// What a frame of `len` bytes takes of the budget.
    fn cost(&self, len: usize) -> u32 {
        u32::try_from(len.clamp(1, self.bytes)).unwrap_or(u32::MAX)
    }

    /// Gives back what a frame of `len` bytes took.
    fn give_back(&self, len: usize) {
        self.room.add_permits(self.cost(len) as usize);
    }
}

/// Closes the budget when the writer ends, however it ends.
struct CloseBudget(Arc<Budget>);

impl Drop for CloseBudget {
    fn drop(&mut self) {
        self.0.room.close();
    }
}

/// A session's way to send frames and to end itself.
#[derive(Clone)]
struct Tx {
    frames: mpsc::Sender<Utf8Bytes>,
    /// Bytes of serialized frames the queue may hold.
    budget: Arc<Budget>,
    close: watch::Sender<Option<(u16, &'static str)>>,
    slow_after: Duration,
    state: AppState,
}

impl Tx {
    /// Serializes and queues a frame; a queue that stays full (in frames
    /// or in bytes) closes the session.
    async fn send(&self, f: ServerFrame) -> bool {
        // An ended session renders nothing more: its sync and live tasks
        // notice the end only at their next send. The writer closes the
        // queue when it gives up on its own (a stalled socket), before it
        // spends up to two seconds on the close handshake.
        if self.close.borrow().is_some() || self.frames.is_closed() {
            return false;
        }
        let text = match render(&f, &self.state.service.metrics) {
            Ok(t) => t,
            Err(_) => {
                self.end(close::INTERNAL, "internal");
                return false;
            }
        };
        let n = self.budget.cost(text.len());
        // Almost always the queue has room at once: queued without a
        // timer or a wait. Both the budget and the channel hand free room
        // to waiters first, so this never overtakes a frame already
        // waiting (and one task's frames stay in order regardless: it
        // sends the next only once this one is queued).
        if let Ok(taken) = self.budget.room.try_acquire_many(n) {
            // Given back by the writer (`Budget::give_back`).
            taken.forget();
            return match self.frames.try_send(text.into()) {
                Ok(()) => true,
                Err(mpsc::error::TrySendError::Closed(_)) => false,
                Err(mpsc::error::TrySendError::Full(text)) => Box::pin(self.queue(text)).await,
            };
        }
        // Boxed: the waiting path's state (a timer, the two waits) would
        // otherwise be part of every task that sends — each session's
        // sync pump and reader among them — for their whole lives.
        Box::pin(self.queue_waiting(text, n)).await
    }

    /// Queues `text` (its budget already taken), waiting at most
    /// `slow_after` for room.
    async fn queue(&self, text: Utf8Bytes) -> bool {
        match tokio::time::timeout(self.slow_after, self.frames.send(text)).await {
            Ok(sent) => sent.is_ok(),
            Err(_) => {
                self.end(close::SLOW_CONSUMER, "slow_consumer");
                false
            }
        }
    }

    /// Takes `n` bytes of the budget for `text` and queues it, waiting at
    /// most `slow_after` for both.
    async fn queue_waiting(&self, text: String, n: u32) -> bool {
        let queued = async {
            // Closed: the writer has ended.
            let Ok(taken) = self.budget.room.acquire_many(n).await else {
                return false;
            };
            taken.forget();
            self.frames.send(text.into()).await.is_ok()
        };
        match tokio::time::timeout(self.slow_after, queued).await {
            Ok(sent) => sent,
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

/// Runs one session on an upgraded connection until it closes (or its
/// token is revoked: 4003); its place under the user's socket cap is given
/// back then.
///
/// Not an `async fn`: the session's state is `run`'s alone. A wrapper
/// future would keep its own copy of the arguments (a generator keeps its
/// arguments for its whole life) beside `run`'s, for as long as the
/// connection lives; and the socket goes in boxed, so the one copy of it
/// is the one the split halves share.
pub fn session(
    socket: WebSocket,
    state: AppState,
    token: Token,
    slot: SocketSlot,
) -> impl std::future::Future<Output = ()> + Send {
    let revoked = Arc::clone(&state.revoked).until_revoked(
        Arc::clone(&state.service),
        token,
        slot.revocations(),
    );
    run(
        Box::new(socket),
        state,
        token.caller,
        Box::pin(revoked),
        slot,
    )
}

/// Runs one session over any message stream and sink until it closes (or
/// `revoked` resolves): a WebSocket in production, a pair of channels in
/// the tests below. `revoked` is best boxed: the session keeps it for its
/// whole life. `held` (the socket's place under its user's cap) is
/// dropped when the session ends.
pub async fn run<S, E>(
    socket: S,
    state: AppState,
    who: Caller,
    revoked: impl std::future::Future<Output = ()> + Send,
    held: impl Send,
) where
    S: Stream<Item = Result<Message, E>> + Sink<Message> + Send + 'static,
    <S as Sink<Message>>::Error: Send,
    E: SocketError,
{
    let metrics = Arc::clone(&state.service.metrics);
    metrics.websockets.inc();
    // Borrowed, not cloned: a copy would sit in every session's state.
    let limits = &state.service.limits;
    let (mut sink, mut stream) = socket.split();
    let (frames_tx, mut frames_rx) = mpsc::channel::<Utf8Bytes>(limits.outbound_queue);
    let (close_tx, mut close_rx) = watch::channel(None);
    // Presence and typing frames: a separate small queue, dropped when full
    // (see `presence`), so they never count toward the slow-consumer rule.
    let (eph_tx, mut eph_rx) = mpsc::channel::<Box<ServerFrame>>(presence::SESSION_QUEUE);
    let guard = state.presence.register(who.user, eph_tx.clone());
    let eph = Ephemeral {
        session: guard.id,
        tx: eph_tx,
    };
    let budget_bytes = limits.outbound_queue_bytes.max(1);
    let tx = Tx {
        frames: frames_tx,
        budget: Arc::new(Budget {
            room: Semaphore::new(budget_bytes),
            bytes: budget_bytes,
        }),
        close: close_tx,
        slow_after: limits.slow_consumer(),
        state: state.clone(),
    };

    // The writer: the only task touching the sink.
    let slow_after = limits.slow_consumer();
    let wmetrics = Arc::clone(&metrics);
    let budget = Arc::clone(&tx.budget);
    let mut writer = tokio::spawn(async move {
        let _closing = CloseBudget(Arc::clone(&budget));
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
                    let text = match render(&f, &wmetrics) {
                        Ok(t) => t,
                        Err(_) => break (close::INTERNAL, "internal"),
                    };
                    let out = vec![text.into()];
                    match tokio::time::timeout(slow_after, write_burst(&mut sink, out, None)).await {
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
                    match tokio::time::timeout(slow_after, write_burst(&mut sink, burst, Some(&budget))).await {
                        Ok(Ok(())) => {}
                        Ok(Err(WriteEnd::Closed)) => return,
                        Ok(Err(WriteEnd::Internal)) => break (close::INTERNAL, "internal"),
                        Err(_) => break (close::SLOW_CONSUMER, "slow_consumer"),
                    }
                }
            }
        };
        // Nothing more is queued (or rendered) for a socket we are leaving,
        // and no sender waits for budget.
        frames_rx.close();
        budget.room.close();
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
    let mut writer_done = false;
    let revoked = std::pin::pin!(revoked);
    let mut revoked = revoked;
    loop {
        let next = tokio::select! {
            _ = shutdown.changed() => { tx.end(close::GOING_AWAY, "server shutting down"); break; }
            () = &mut revoked => { tx.end(close::REVOKED, "token_revoked"); break; }
            _ = ended.changed() => break,
            // The writer ended on its own (the peer is gone, or it was
            // blocked past `slow_consumer_ms`): the session ends with it,
            // and dropping both halves closes the connection. Before, the
            // read half kept a stalled client's socket open until its idle
            // timeout, with nothing left to write to it.
            _ = &mut writer => {
                writer_done = true;
                break;
            }
            n = tokio::time::timeout(idle, stream.next()) => n,
        };
        let msg = match next {
            Err(_) => {
                tx.end(close::IDLE, "idle");
                break;
            }
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                // tungstenite refuses a message (or a frame) above its
                // limit and the stream cannot continue after it.
                if e.too_big() {
                    let _ = tx
                        .send(ServerFrame::error(
                            None,
                            &ApiError::new(
                                axum::http::StatusCode::PAYLOAD_TOO_LARGE,
                                "frame_too_large",
                                format!(
                                    "frames are limited to {} bytes",
                                    state.service.limits.max_frame_bytes
                                ),
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
    if !writer_done {
        let _ = writer.await;
    }
    metrics.websockets.dec();
    drop(held);
}

/// A failure of the socket a session reads.
pub trait SocketError: Send {
    /// Whether the peer sent a message (or frame) above the size limit.
    fn too_big(self) -> bool;
}

impl SocketError for axum::Error {
    fn too_big(self) -> bool {
        use tokio_tungstenite::tungstenite::error::{CapacityError, Error as WsError};
        matches!(
            self.into_inner().downcast_ref::<WsError>(),
            Some(WsError::Capacity(CapacityError::MessageTooLong { .. }))
        )
    }
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
    // `[1,2,3]`, `"hi"`, `{}`: not a frame at all, rather than a frame of
    // a type we do not know.
    let Some(ty) = v.get("type").and_then(|t| t.as_str()).map(str::to_string) else {
        return Err((
            id,
            ApiError {
                code: "malformed_frame",
                ..ApiError::invalid("a frame is a JSON object with a string \"type\"")
            },
        ));
    };
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

/// Fuzz entry (cargo feature `fuzzing`): a client frame's text parsed as
/// a session parses it; a refusal's code.
#[cfg(feature = "fuzzing")]
pub(crate) fn fuzz_parse(text: &str) -> Result<(), ApiError> {
    parse(text).map(drop).map_err(|(_, e)| e)
}

/// A session's handle on its ephemeral (presence, typing) queue.
#[derive(Clone)]
struct Ephemeral {
    session: u64,
    tx: mpsc::Sender<Box<ServerFrame>>,
}

/// The answer to an `edit`, `unsend` or `react`.
fn changed(
    id: String,
    conv: crate::wire::Id,
    r: Result<crate::service::ChangeAck, ApiError>,
) -> ServerFrame {
    match r {
        Ok(a) => ServerFrame::Changed {
            id,
            conv,
            seq: a.seq,
            at: a.at,
            changed: a.changed,
        },
        Err(e) => ServerFrame::error(Some(id), &e),
    }
}

/// Answers one request frame (`typing` has no answer unless it fails).
/// The answer to a key-directory frame about this device.
fn keys_frame(id: String, r: Result<crate::e2ee::KeysAck, ApiError>) -> ServerFrame {
    match r {
        Ok(a) => ServerFrame::Keys {
            id,
            device: crate::wire::Id(a.device.0),
            one_time_prekeys: a.remaining,
            change: a.change.map(|c| c.as_str()),
        },
        Err(e) => ServerFrame::error(Some(id), &e),
    }
}

/// A key-directory frame's answer (boxed by the caller: `handle`'s
/// future is large enough already).
async fn key_frame(svc: &crate::service::Service, who: Caller, f: ClientFrame) -> ServerFrame {
    match f {
        ClientFrame::PublishKeys { id, keys } => {
            let r = async {
                let (identity, signed, one_time) = keys.parse()?;
                svc.publish_keys(who, identity, signed, one_time).await
            }
            .await;
            keys_frame(id, r)
        }
        ClientFrame::KeyStatus { id } => keys_frame(id, svc.key_status(who).await),
        ClientFrame::RemoveKeys { id, device } => {
            let device = device.map_or(who.device, |d| DeviceId(d.0));
            keys_frame(id, svc.remove_keys(who, device).await)
        }
        ClientFrame::DeviceKeys { id, user } => match svc.device_list(UserId(user.0)).await {
            Ok(list) => ServerFrame::DeviceKeys {
                id,
                user,
                devices: list
                    .iter()
                    .map(|(d, k)| crate::e2ee::bundle_out(*d, k, None))
                    .collect(),
            },
            Err(e) => ServerFrame::error(Some(id), &e),
        },
        ClientFrame::ClaimKeys { id, user, devices } => {
            let devices = devices.into_iter().map(|d| DeviceId(d.0)).collect();
            match svc.claim_keys(who.user, UserId(user.0), devices).await {
                Ok(bundles) => ServerFrame::DeviceKeys {
                    id,
                    user,
                    devices: bundles
                        .iter()
                        .map(|b| crate::e2ee::bundle_out(b.device, &b.keys, b.one_time))
                        .collect(),
                },
                Err(e) => ServerFrame::error(Some(id), &e),
            }
        }
        other => ServerFrame::error(
            None,
            &ApiError::internal(&format!("not a key frame: {other:?}")),
        ),
    }
}

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
            reply_to,
            mentions,
            payloads,
        } => {
            let r = async {
                let kind = parse_kind(kind.as_deref().unwrap_or("text"))?;
                let body = BodyIn { body, body_b64 }.bytes(svc.limits.max_message_bytes)?;
                let payloads = payloads
                    .into_iter()
                    .map(crate::e2ee::PayloadIn::parse)
                    .collect::<Result<_, _>>()?;
                let out = Outgoing {
                    client_msg_id,
                    kind,
                    body,
                    expires_in_ms,
                    reply_to,
                    mentions: mentions.into_iter().map(|m| m.0).collect(),
                    payloads,
                };
                svc.send(who, ConversationId(conv.0), out).await
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
        ClientFrame::Configure {
            id,
            conv,
            history,
            keep_edits,
            retention,
            retention_days,
            encrypted,
            push_previews,
        } => {
            let change = SettingsIn {
                history,
                keep_edits,
                retention,
                retention_days,
                encrypted,
                push_previews,
            };
            let r = match change.parse() {
                Ok(c) => svc.configure(who.user, ConversationId(conv.0), c).await,
                Err(e) => Err(e),
            };
            match r {
                Ok(done) => ServerFrame::Settings {
                    id,
                    conv,
                    settings: done.settings.into(),
                    push_previews: done.push_previews,
                    changed: done.changed,
                },
                Err(e) => ServerFrame::error(Some(id), &e),
            }
        }
        ClientFrame::Edit {
            id,
            conv,
            seq,
            body,
            body_b64,
        } => {
            let r = async {
                let body = BodyIn { body, body_b64 }.bytes(svc.limits.max_message_bytes)?;
                svc.edit(who.user, ConversationId(conv.0), seq, body).await
            }
            .await;
            changed(id, conv, r)
        }
        ClientFrame::Unsend { id, conv, seq } => {
            let r = svc.unsend(who.user, ConversationId(conv.0), seq).await;
            changed(id, conv, r)
        }
        ClientFrame::React {
            id,
            conv,
            seq,
            emoji,
            add,
        } => {
            let r = svc
                .react(who.user, ConversationId(conv.0), seq, emoji, add)
                .await;
            changed(id, conv, r)
        }
        ClientFrame::Hide { id, conv, seq } => {
            let r = svc.hide(who.user, ConversationId(conv.0), seq).await;
            changed(id, conv, r)
        }
        ClientFrame::Pin { id, conv, seq, pin } => {
            let r = svc.pin(who.user, ConversationId(conv.0), seq, pin).await;
            changed(id, conv, r)
        }
        ClientFrame::Pins { id, conv } => match svc.pins(who, ConversationId(conv.0)).await {
            Ok(list) => ServerFrame::Pins {
                id,
                conv,
                pins: crate::wire::pins_out(list),
            },
            Err(e) => ServerFrame::error(Some(id), &e),
        },
        ClientFrame::Block { id, user, block } => {
            match svc
                .block(who.user, missive_chat::UserId(user.0), block)
                .await
            {
                Ok(()) => ServerFrame::BlockSet {
                    id,
                    user,
                    blocked: block,
                },
                Err(e) => ServerFrame::error(Some(id), &e),
            }
        }
        ClientFrame::Revoke {
            id,
            devices,
            others,
        } => {
            let r = match (RevokeIn { devices, others }).scope(who.device) {
                Ok(scope) => state.revoke(who.user, scope).await,
                Err(e) => Err(e),
            };
            match r {
                Ok(()) => ServerFrame::Revoked { id },
                Err(e) => ServerFrame::error(Some(id), &e),
            }
        }
        ClientFrame::Conversations { id, before, limit } => {
            let r = async {
                let before = before
                    .as_deref()
                    .map(crate::service::ListCursor::parse)
                    .transpose()?;
                svc.conversation_page(who.user, before, limit).await
            }
            .await;
            match r {
                Ok((items, next)) => ServerFrame::Conversations {
                    id,
                    conversations: crate::service::list_out(items),
                    next_before: next.map(crate::service::ListCursor::text),
                },
                Err(e) => ServerFrame::error(Some(id), &e),
            }
        }
        f @ (ClientFrame::PublishKeys { .. }
        | ClientFrame::KeyStatus { .. }
        | ClientFrame::RemoveKeys { .. }
        | ClientFrame::DeviceKeys { .. }
        | ClientFrame::ClaimKeys { .. }) => Box::pin(key_frame(svc, who, f)).await,
        ClientFrame::Blocks { id } => match svc.blocked(who.user).await {
            Ok(list) => ServerFrame::Blocks {
                id,
                users: crate::wire::blocked_out(list),
            },
            Err(e) => ServerFrame::error(Some(id), &e),
        },
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
            after,
            around,
            limit,
        } => {
            let r = async {
                let cursor = crate::service::Cursor::of(before, after, around)?;
                svc.history(who, ConversationId(conv.0), cursor, limit)
                    .await
            }
            .await;
            match r {
                Ok(p) => ServerFrame::History {
                    id,
                    conv,
                    messages: p.messages,
                    next_before: p.next_before,
                    next_after: p.next_after,
                },
                Err(e) => ServerFrame::error(Some(id), &e),
            }
        }
        ClientFrame::Search {
            id,
            q,
            conv,
            sender,
            since,
            until,
            kind,
            cursor,
            limit,
        } => {
            let query = crate::service::SearchQuery {
                text: q,
                conv: conv.map(|c| ConversationId(c.0)),
                sender: sender.map(|u| missive_chat::UserId(u.0)),
                since,
                until,
                kind,
                cursor,
                limit,
            };
            match svc.search(who.user, query).await {
                Ok(p) => ServerFrame::SearchResult {
                    id,
                    hits: p.hits,
                    next: p.next,
                },
                Err(e) => ServerFrame::error(Some(id), &e),
            }
        }
        ClientFrame::MediaUrl { id, media, conv } => {
            let r = async {
                let hash = missive_chat::media::body::parse_hash(&media)
                    .ok_or_else(crate::media::no_such_media)?;
                let conv = conv.map(|c| ConversationId(c.0));
                svc.media_url(who.user, &hash, conv).await
            };
            match r.await {
                Ok((url, object)) => ServerFrame::MediaUrl {
                    id,
                    media_id: media.to_ascii_lowercase(),
                    url: url.url,
                    expires_at: url.expires_at,
                    mime: object.mime,
                    size: object.size,
                },
                Err(e) => ServerFrame::error(Some(id), &e),
            }
        }
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

impl FrameSink for Tx {
    async fn send(&self, f: ServerFrame) -> bool {
        Tx::send(self, f).await
    }
}

#[cfg(test)]
mod tests {
    //! The session's logic without a socket: a pair of channels stands in
    //! for the WebSocket, over a real one-node store in a temp directory.
    #![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

    use std::collections::BTreeMap;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use axum::extract::ws::Message;
    use futures_util::{Sink, Stream};
    use tokio::sync::{mpsc, watch};

    use missive_chat::command::{Command, ConversationKind};
    use missive_chat::{ChatNode, DeviceId, UserId};
    use missive_engine::keys::ConversationId;
    use missive_raft::node::NodeConfig;

    use super::*;
    use crate::auth::Auth;
    use crate::config::{AuthSection, Limits};
    use crate::delivery::hub::Hub;
    use crate::delivery::presence::Presence;
    use crate::metrics::Metrics;
    use crate::service::Service;

    /// The list that tells an unknown type from a malformed frame must
    /// name every frame the server reads: serde lists the variants it
    /// expected when it meets an unknown one.
    #[test]
    fn the_known_frame_types_are_the_client_frames() {
        let e = serde_json::from_str::<ClientFrame>(r#"{"type":"no-such-type"}"#)
            .unwrap_err()
            .to_string();
        let listed = e.split("expected one of").nth(1).expect(&e);
        // "`send`, `configure`, … `typing` at line 1 column 24"
        let mut variants: Vec<&str> = listed.split('`').skip(1).step_by(2).collect();
        let mut known = CLIENT_TYPES.to_vec();
        variants.sort_unstable();
        known.sort_unstable();
        assert_eq!(variants, known, "from {e}");
    }

    /// The server's end of a connection: client frames in, server frames
    /// out.
    struct Duplex {
        from_client: mpsc::UnboundedReceiver<Result<Message, String>>,
        to_client: mpsc::UnboundedSender<Message>,
        /// A client that reads nothing: the socket never takes a frame.
        stalled: bool,
    }

    /// The channel stand-in fails only when a test says so.
    impl super::SocketError for String {
        fn too_big(self) -> bool {
            self == "too big"
        }
    }

    impl Stream for Duplex {
        type Item = Result<Message, String>;
        fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
            self.get_mut().from_client.poll_recv(cx)
        }
    }

    impl Sink<Message> for Duplex {
        type Error = String;
        fn poll_ready(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), String>> {
            if self.stalled {
                return Poll::Pending;
            }
            Poll::Ready(Ok(()))
        }
        fn start_send(self: Pin<&mut Self>, m: Message) -> Result<(), String> {
            self.get_mut().to_client.send(m).map_err(|e| e.to_string())
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), String>> {
            Poll::Ready(Ok(()))
        }
        fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), String>> {
            Poll::Ready(Ok(()))
        }
    }

    struct Client {
        send: mpsc::UnboundedSender<Result<Message, String>>,
        recv: mpsc::UnboundedReceiver<Message>,
    }

    impl Client {
        fn text(&self, t: &str) {
            self.send.send(Ok(Message::Text(t.into()))).unwrap();
        }

        /// The next frame, as JSON (a close frame as `{"close": code}`).
        async fn next(&mut self) -> serde_json::Value {
            let m = tokio::time::timeout(Duration::from_secs(10), self.recv.recv())
                .await
                .expect("a frame within 10 s")
                .expect("the session is open");
            match m {
                Message::Text(t) => serde_json::from_str(t.as_str()).unwrap(),
                Message::Close(c) => serde_json::json!({ "close": c.map(|c| c.code) }),
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    /// A one-node server's state; the sender ends it when dropped.
    async fn state(dir: &std::path::Path, limits: Limits) -> (AppState, watch::Sender<bool>) {
        let mut ncfg = NodeConfig::new(1, "127.0.0.1:0".parse().unwrap(), dir.join("data"));
        ncfg.shards = 1;
        let node = ChatNode::start(ncfg).await.unwrap();
        let members = BTreeMap::from([(1, node.addr().to_string())]);
        node.bootstrap(&members, 1).await.unwrap();
        let hub = Arc::new(Hub::default());
        let (stop, stop_rx) = watch::channel(false);
        tokio::spawn(Arc::clone(&hub).run(
            node.inbox_notices(),
            node.snapshot_installs(),
            stop_rx.clone(),
        ));
        let metrics = Arc::new(Metrics::default());
        let service = Arc::new(Service::new(
            node,
            limits,
            crate::config::MessagesSection::default(),
            metrics,
        ));
        let (presence, _outgoing) = Presence::new(1);
        let state = AppState::new(
            service,
            Arc::new(Auth::load(&AuthSection::default(), dir).unwrap()),
            hub,
            presence,
            stop_rx,
        );
        (state, stop)
    }

    /// User 1's session over a channel pair (its socket `stalled` or
    /// not): the client's sender, its receiver, the session's task.
    fn open_session(
        state: &AppState,
        stalled: bool,
    ) -> (
        mpsc::UnboundedSender<Result<Message, String>>,
        mpsc::UnboundedReceiver<Message>,
        tokio::task::JoinHandle<()>,
    ) {
        let (send, from_client) = mpsc::unbounded_channel();
        let (to_client, recv) = mpsc::unbounded_channel();
        let who = Caller {
            user: UserId(1),
            device: DeviceId(1),
        };
        let session = tokio::spawn(run(
            Duplex {
                from_client,
                to_client,
                stalled,
            },
            state.clone(),
            who,
            std::future::pending(),
            (),
        ));
        (send, recv, session)
    }

    /// Every open connection keeps a session's tasks for its whole life,
    /// so their state is per-connection memory (docs/benchmarks.md,
    /// "Memory per connection"): a read's or a wait's state inline in them
    /// made an idle connection ~29 KiB, with all of this ~10 KiB. The
    /// bounds leave room for compiler versions, not for another read
    /// inlined (an inbox page's read alone is ~3 KiB).
    #[tokio::test]
    async fn an_idle_sessions_tasks_stay_small() {
        let dir = tempfile::tempdir().unwrap();
        let (state, _stop) = state(dir.path(), Limits::default()).await;
        let who = Caller {
            user: UserId(1),
            device: DeviceId(1),
        };
        let (_send, from_client) = mpsc::unbounded_channel();
        let (to_client, _recv) = mpsc::unbounded_channel();
        let socket = Duplex {
            from_client,
            to_client,
            stalled: false,
        };
        let token = Token {
            caller: who,
            issued_at: 0,
            expires_at: u64::MAX,
            id: None,
        };
        let revoked = Arc::clone(&state.revoked).until_revoked(
            Arc::clone(&state.service),
            token,
            watch::channel(0).1,
        );
        let revoked_bytes = std::mem::size_of_val(&revoked);
        let session = run(socket, state.clone(), who, Box::pin(revoked), ());
        let session_bytes = std::mem::size_of_val(&session);
        let (frames, _queued) = mpsc::channel(1);
        let tx = Tx {
            frames,
            budget: Arc::new(Budget {
                room: Semaphore::new(1),
                bytes: 1,
            }),
            close: watch::channel(None).0,
            slow_after: Duration::from_secs(1),
            state: state.clone(),
        };
        let pump_bytes = std::mem::size_of_val(&sync_pump(tx, state, who, 0, None));
        assert!(
            revoked_bytes <= 512,
            "revocation watch: {revoked_bytes} bytes"
        );
        assert!(session_bytes <= 2048, "session: {session_bytes} bytes");
        assert!(pump_bytes <= 1024, "sync pump: {pump_bytes} bytes");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_session_answers_frames_then_syncs_and_goes_live_without_a_socket() {
        let dir = tempfile::tempdir().unwrap();
        let (state, _stop) = state(dir.path(), Limits::default()).await;
        let (send, recv, session) = open_session(&state, false);
        let mut c = Client { send, recv };

        c.text(r#"{"type":"ping","id":"p1"}"#);
        let f = c.next().await;
        assert_eq!(
            (f["type"].as_str(), f["id"].as_str()),
            (Some("pong"), Some("p1"))
        );
        // A bad frame is answered with an error, and the session goes on.
        c.text("not json");
        let f = c.next().await;
        assert_eq!(f["type"], "error", "{f}");
        assert_eq!(f["code"], "malformed_frame", "{f}");
        c.send.send(Ok(Message::Binary(vec![1, 2].into()))).unwrap();
        let f = c.next().await;
        assert_eq!(f["code"], "binary_not_supported", "{f}");

        // Sync from the start: nothing yet, then live.
        c.text(r#"{"type":"sync","id":"s","after":0}"#);
        let f = c.next().await;
        assert_eq!(f["type"], "synced", "{f}");
        state
            .service
            .node
            .write(
                Command::CreateConversation {
                    conv: ConversationId(5),
                    kind: ConversationKind::Direct,
                    name: String::new(),
                    creator: UserId(1),
                    members: vec![UserId(2)],
                    max_members: 250,
                },
                Duration::from_secs(5),
            )
            .await
            .unwrap();
        // The fan-out puts the creation in user 1's inbox; the session
        // pushes it live.
        let f = c.next().await;
        assert_eq!(
            (f["type"].as_str(), f["useq"].as_u64()),
            (Some("event"), Some(1)),
            "{f}"
        );
        assert_eq!(f["conv"], "5", "{f}");

        // A second `sync` replaces the stream: from its cursor again, then
        // `synced`, and the old stream sends nothing more.
        c.text(r#"{"type":"sync","id":"s2","after":0}"#);
        let f = c.next().await;
        assert_eq!(
            (f["type"].as_str(), f["useq"].as_u64()),
            (Some("event"), Some(1)),
            "{f}"
        );
        let f = c.next().await;
        assert_eq!(
            (f["type"].as_str(), f["cursor"].as_u64()),
            (Some("synced"), Some(1)),
            "{f}"
        );
        c.text(r#"{"type":"ping","id":"p2"}"#);
        let f = c.next().await;
        assert_eq!(
            (f["type"].as_str(), f["id"].as_str()),
            (Some("pong"), Some("p2")),
            "{f}"
        );

        // The client going away ends the session.
        drop(c.send);
        tokio::time::timeout(Duration::from_secs(10), session)
            .await
            .expect("the session ends")
            .unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_client_that_reads_nothing_pins_at_most_the_byte_budget() {
        // Room for 1 024 frames, but only 20 KB: with ~5 KB events, the
        // queue takes four (and the writer, stuck on the socket, one).
        let dir = tempfile::tempdir().unwrap();
        let limits = Limits {
            outbound_queue: 1024,
            outbound_queue_bytes: 20_000,
            slow_consumer_ms: 500,
            ..Limits::default()
        };
        let (state, _stop) = state(dir.path(), limits).await;
        let (send, _recv, session) = open_session(&state, true);
        let svc = &state.service;
        svc.create_direct(UserId(2), UserId(1)).await.unwrap();
        let conv = crate::service::direct_id(UserId(2), UserId(1));
        for i in 0..40 {
            let out = crate::service::Outgoing {
                client_msg_id: format!("m{i}"),
                kind: missive_chat::command::MessageKind::Text,
                body: crate::wire::Body::opaque(vec![b'x'; 5_000]),
                expires_in_ms: None,
                reply_to: None,
                mentions: Vec::new(),
                payloads: Vec::new(),
            };
            let sender = Caller {
                user: UserId(2),
                device: DeviceId(1),
            };
            svc.send(sender, conv, out).await.unwrap();
        }
        send.send(Ok(Message::Text(r#"{"type":"sync","after":0}"#.into())))
            .unwrap();
        // The session gives up on the client...
        tokio::time::timeout(Duration::from_secs(20), session)
            .await
            .expect("the stalled session ends")
            .unwrap();
        assert_eq!(svc.metrics.slow_consumers.get(), 1);
        // ...having rendered (queued) no more than the budget allows: the
        // creation event, four or five 5 KB messages, and the one that
        // waited for room.
        let queued = svc.metrics.events_pushed.get();
        assert!(
            (2..=7).contains(&queued),
            "{queued} events queued for a client that reads nothing"
        );
    }
}
