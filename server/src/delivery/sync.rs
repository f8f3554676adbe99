//! The sync engine, the same for every edge: a device's event stream from
//! its cursor through the store, then live — over a WebSocket session
//! (`edge::ws`) or a gRPC response stream (`edge::grpc`), through
//! [`FrameSink`]. Also the presence and typing checks both edges share.
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

use std::time::Duration;

use missive_chat::command::UserId;
use missive_engine::keys::ConversationId;

use crate::auth::Caller;
use crate::delivery::presence;
use crate::error::ApiError;
use crate::rate::Class;
use crate::service::Service;
use crate::state::AppState;
use crate::wire::ServerFrame;

/// How often a live session looks in the store without a wake, when this
/// node replicates its user's shard (wakes are the live path).
const STORE_RECHECK: Duration = Duration::from_secs(30);

/// How often it looks when this node does not: one routed inbox read per
/// idle session per interval is the live path then (a degraded mode while
/// replicas move; docs/design.md §4.7).
const REMOTE_POLL: Duration = Duration::from_millis(500);

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
    svc.rates.check(Class::Presence, who)?;
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
    state.service.rates.check(Class::Presence, who)?;
    let c = state.service.member_conversation(who, conv).await?;
    // Members who block `who` do not see them type.
    let blockers = state.service.blockers_among(who, &c.members).await?;
    let to = c
        .members
        .iter()
        .filter(|m| !blockers.contains(m))
        .map(|m| m.0)
        .collect();
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

/// Streams the user's inbox after `after`, then follows it live.
///
/// Not an `async fn`: the stream's state lives once, in [`Pump`] (a
/// generator keeps its arguments for its whole life beside whatever it
/// moves them into), and a live session spends its life in the small
/// wait between rounds, not in a round (see [`Pump::run`]).
pub(crate) fn sync_pump<S: FrameSink>(
    tx: S,
    state: AppState,
    who: Caller,
    after: u64,
    id: Option<String>,
) -> impl std::future::Future<Output = ()> + Send {
    Pump {
        // Registered before the first read: see the module docs.
        sub: state.hub.subscribe(who.user),
        tx,
        state,
        who,
        after,
        id,
        cursor: after,
        synced: false,
        look_in_store: false,
        cursor_checked: false,
    }
    .run()
}

/// One device's event stream (see [`sync_pump`]).
struct Pump<S> {
    tx: S,
    state: AppState,
    who: Caller,
    /// The cursor the device asked from.
    after: u64,
    /// The request's id, for its `bad_cursor` error.
    id: Option<String>,
    sub: crate::delivery::hub::Subscription,
    /// The last useq sent.
    cursor: u64,
    /// Whether the stream has reached the end once (`synced` was sent).
    synced: bool,
    /// Whether the next round reads the store rather than the hub's ring.
    look_in_store: bool,
    /// Whether `after` was checked against the leader's head (see
    /// `Service::check_cursor`): then only this replica is behind.
    cursor_checked: bool,
}

/// What a round of the pump leaves to do.
enum Round {
    /// Read again at once.
    Again,
    /// Caught up: wait for a wake, or this long.
    Wait(Duration),
    /// The receiver is gone (or the cursor was refused).
    End,
}

impl<S: FrameSink> Pump<S> {
    async fn run(mut self) {
        loop {
            // Boxed: a round (reads, renders, sends) holds far more state
            // than the wait between rounds, and inline it made every idle
            // session's pump ~1 KiB larger.
            match Box::pin(self.round()).await {
                Round::Again => {}
                Round::End => return,
                Round::Wait(recheck) => {
                    self.look_in_store = tokio::select! {
                        _ = self.sub.wake.notified() => false,
                        _ = tokio::time::sleep(recheck) => true,
                    };
                }
            }
        }
    }

    /// Reads one page after the cursor and sends it.
    async fn round(&mut self) -> Round {
        let svc = &self.state.service;
        let who = self.who;
        let page = svc.limits.sync_page;
        // Live, the hub's ring usually holds exactly what the wake was for;
        // it answers only when it can vouch for everything after the cursor.
        let from_ring = (self.synced && !self.look_in_store)
            .then(|| self.state.hub.after(who.user, self.cursor, page))
            .flatten()
            .map(|evs| {
                let head = evs.last().map_or(self.cursor, |(u, _)| *u);
                (evs, head)
            });
        let page_read = match from_ring {
            Some(p) => Ok(p),
            None => svc.inbox_page(who.user, self.cursor, page).await,
        };
        let (events, head) = match page_read {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(user = who.user.0, error = %e.message, "sync read failed; retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
                return Round::Again;
            }
        };
        if self.after > head && !self.synced {
            if !self.cursor_checked {
                match svc.check_cursor(who.user, self.after).await {
                    Ok(()) => self.cursor_checked = true,
                    Err(e) if e.code == "bad_cursor" => {
                        self.tx.send(ServerFrame::error(self.id.take(), &e)).await;
                        return Round::End;
                    }
                    // No leader to ask right now: look again shortly.
                    Err(_) => {}
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            return Round::Again;
        }
        let full = events.len() == page;
        for (useq, e) in events {
            let event = match svc.render_event(&e, who).await {
                Ok(ev) => ev,
                Err(err) => {
                    tracing::warn!(user = who.user.0, error = %err.message, "event's message not readable yet");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    break;
                }
            };
            if self.synced {
                // Live: how long from the event's commit to here (a
                // synced-up backlog would only measure how long the device
                // was away).
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_micros() as u64);
                svc.metrics
                    .delivery
                    .observe(Duration::from_micros(now.saturating_sub(e.at)));
            }
            let frame = ServerFrame::Event {
                useq,
                conv: crate::wire::Id(e.conv.0),
                at: e.at,
                event,
            };
            if !self.tx.send(frame).await {
                return Round::End;
            }
            self.cursor = useq;
        }
        if full {
            return Round::Again;
        }
        if !self.synced && self.cursor >= head {
            self.synced = true;
            if !self
                .tx
                .send(ServerFrame::Synced {
                    cursor: self.cursor,
                })
                .await
            {
                return Round::End;
            }
        }
        self.look_in_store = false;
        if self.cursor < head {
            return Round::Again;
        }
        // A periodic look in the store as well: rarely where this node
        // replicates the user's shard (in case a wake was never sent — a
        // replica applying through a snapshot it has not announced), often
        // where it does not (a node that joined and hosts nothing yet, or
        // whose replica moved away): wakes come only from apply here, so
        // there the look is the live path.
        let user_shard = svc.node.slots().shard_of_user(who.user.0);
        Round::Wait(if svc.node.hosts(user_shard) {
            STORE_RECHECK
        } else {
            REMOTE_POLL
        })
    }
}
