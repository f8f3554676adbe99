//! Ephemeral state: who is online (presence) and who is typing.
//!
//! # Why none of this is in the store
//!
//! Presence and typing are worth something only now: a "typing…" that
//! arrives after the message, or an "online" from before a crash, is worse
//! than none. So they never touch Raft or the disk. They travel as node
//! signals ([`Node::signal`]: best effort, to every node of the cluster,
//! this one included) and live in this module's memory, and every piece is
//! either refreshed or harmless to lose:
//!
//! - **Presence is a lease per (user, node).** A node announces `online`
//!   when a user's first socket opens there, `offline` (with the time) when
//!   the last one closes, and every [`REFRESH`] re-announces all its online
//!   users. Every node keeps, per user, the nodes holding a lease and when
//!   each runs out ([`LEASE`] after its last announcement), and looks for
//!   leases run out every [`EXPIRE_EVERY`]. A user is online while any
//!   lease is alive, so a lost `offline` or a crashed node costs at most
//!   one lease of stale "online", and a lost `online` is repaired by the
//!   next refresh. The bound, for watchers of a crashed node's users: its
//!   last announcement was at most `REFRESH` before the crash, so they
//!   turn offline between `LEASE − REFRESH` and `LEASE + EXPIRE_EVERY`
//!   after it (15–26 s; docs/protocol.md promises 30 s). `LEASE` is more
//!   than two refreshes, so one lost refresh does not flap a user offline.
//! - **Typing is fire-and-forget.** A client says `typing: true` every few
//!   seconds while typing and `false` when it stops; clients expire a
//!   "typing…" they have not heard again within [`TYPING_TTL_HINT_MS`].
//!   A lost signal is corrected by the next one. Each (user, conversation)
//!   may signal at most once per [`TYPING_MIN_GAP`], except a change of
//!   state, so a chatty client cannot flood the cluster.
//!
//! Frames reach local sessions through each session's small ephemeral
//! queue with `try_send`: a session too slow to take them loses them
//! (never an event of its stream, which comes from the store).
//!
//! # Signal format (node to node, inside `Rpc::Signal`)
//!
//! JSON, one object: `{"v": 1, "kind": …}` with
//! `{"kind": "online", "node": N, "users": [u, …]}`,
//! `{"kind": "offline", "node": N, "user": u, "at": µs}` or
//! `{"kind": "typing", "conv": c, "user": u, "typing": bool, "to": [u, …]}`
//! (ids as numbers). A node ignores a signal of another version.
//!
//! [`Node::signal`]: missive_raft::node::Node::signal

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use missive_chat::command::UserId;

use crate::wire::{Id, PresenceOut, ServerFrame};

/// How often a node re-announces its online users.
pub const REFRESH: Duration = Duration::from_secs(10);
/// How long an announcement keeps a user online on that node.
pub const LEASE: Duration = Duration::from_secs(25);
/// How often a node looks for leases that ran out.
pub const EXPIRE_EVERY: Duration = Duration::from_secs(1);
/// The least time between two identical typing signals of one user in one
/// conversation.
pub const TYPING_MIN_GAP: Duration = Duration::from_secs(2);
/// After how long clients should drop a "typing…" not heard again, ms
/// (documented in protocol.md; the server does not enforce it).
pub const TYPING_TTL_HINT_MS: u64 = 6_000;
/// Ephemeral frames queued per session before new ones are dropped.
pub const SESSION_QUEUE: usize = 256;
/// Users one session may watch.
pub const MAX_WATCHED: usize = 500;

const VERSION: u32 = 1;

/// A signal between nodes (see the module docs for the format).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Signal {
    /// These users have a socket on `node`.
    Online {
        /// The announcing node.
        node: u64,
        /// Users online there.
        users: Vec<u64>,
    },
    /// `user`'s last socket on `node` closed at `at` (µs).
    Offline {
        /// The announcing node.
        node: u64,
        /// The user.
        user: u64,
        /// When.
        at: u64,
    },
    /// `user` started or stopped typing in `conv`; tell `to`.
    Typing {
        /// The conversation.
        conv: u64,
        /// Who types.
        user: u64,
        /// Started (true) or stopped.
        typing: bool,
        /// The conversation's other members.
        to: Vec<u64>,
    },
    /// Some of `user`'s tokens were revoked: drop what is cached of their
    /// revocations and have their sockets check (see `revocation`).
    Revoked {
        /// The user.
        user: u64,
    },
}

#[derive(Serialize, Deserialize)]
struct Envelope {
    v: u32,
    #[serde(flatten)]
    signal: Signal,
}

impl Signal {
    /// The bytes of `Rpc::Signal`.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(&Envelope {
            v: VERSION,
            signal: self.clone(),
        })
        .unwrap_or_default()
    }

    /// Parses a signal; None for another version or garbage (a peer of
    /// another build: ignored, not fatal).
    pub fn decode(bytes: &[u8]) -> Option<Signal> {
        match serde_json::from_slice::<Envelope>(bytes) {
            Ok(e) if e.v == VERSION => Some(e.signal),
            _ => None,
        }
    }
}

/// A session's ephemeral queue.
/// A session's queue of presence and typing frames. Boxed: tokio's
/// channel keeps a block of 32 slots per queue for the session's life,
/// and 32 frames inline were 3.6 KiB of every idle connection.
type SessionTx = mpsc::Sender<Box<ServerFrame>>;

#[derive(Default)]
struct Seen {
    /// Node → when its lease runs out.
    leases: HashMap<u64, Instant>,
    /// When the user was last seen going offline anywhere, µs.
    last_seen: Option<u64>,
}

impl Seen {
    fn online(&self, now: Instant) -> bool {
        self.leases.values().any(|&until| until > now)
    }
}

#[derive(Default)]
struct State {
    /// Sessions on this node by user: (session id, queue).
    sessions: HashMap<UserId, Vec<(u64, SessionTx)>>,
    /// The cluster's view, by user.
    seen: HashMap<UserId, Seen>,
    /// Watched user → local watching sessions.
    watchers: HashMap<UserId, Vec<(u64, SessionTx)>>,
    /// Session → the users it watches.
    watching: HashMap<u64, Vec<UserId>>,
    /// Last typing signal per (user, conversation): when, and its state.
    typing: HashMap<(UserId, u64), (Instant, bool)>,
}

/// Presence and typing of this node's sessions and the cluster's users.
pub struct Presence {
    node: u64,
    state: Mutex<State>,
    next_session: AtomicU64,
    /// Signals to send; drained by [`Presence::run`]'s caller.
    out: mpsc::UnboundedSender<Signal>,
}

impl std::fmt::Debug for Presence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Presence")
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

/// A session's registration; going offline (if it was the user's last
/// socket here) and forgetting its watches on drop.
#[derive(Debug)]
pub struct SessionGuard {
    presence: Arc<Presence>,
    user: UserId,
    /// The session's id among this node's sessions.
    pub id: u64,
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        self.presence.unregister(self.user, self.id);
    }
}

fn now_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

impl Presence {
    /// Presence for node `node`; signals to send come out of the receiver.
    pub fn new(node: u64) -> (Arc<Self>, mpsc::UnboundedReceiver<Signal>) {
        let (out, rx) = mpsc::unbounded_channel();
        let p = Presence {
            node,
            state: Mutex::new(State::default()),
            next_session: AtomicU64::new(1),
            out,
        };
        (Arc::new(p), rx)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn emit(&self, s: Signal) {
        let _ = self.out.send(s);
    }

    /// Registers a socket of `user` whose ephemeral frames go to `tx`.
    pub fn register(self: &Arc<Self>, user: UserId, tx: SessionTx) -> SessionGuard {
        let id = self.next_session.fetch_add(1, Ordering::Relaxed);
        let first = {
            let mut st = self.lock();
            let v = st.sessions.entry(user).or_default();
            v.push((id, tx));
            v.len() == 1
        };
        if first {
            self.emit(Signal::Online {
                node: self.node,
                users: vec![user.0],
            });
        }
        SessionGuard {
            presence: Arc::clone(self),
            user,
            id,
        }
    }

    fn unregister(&self, user: UserId, id: u64) {
        let last = {
            let mut st = self.lock();
            forget_watches(&mut st, id);
            match st.sessions.get_mut(&user) {
                Some(v) => {
                    v.retain(|(s, _)| *s != id);
                    let empty = v.is_empty();
                    if empty {
                        st.sessions.remove(&user);
                    }
                    empty
                }
                None => false,
            }
        };
        if last {
            self.emit(Signal::Offline {
                node: self.node,
                user: user.0,
                at: now_micros(),
            });
        }
    }

    /// Whether `user` has a live lease on any node.
    pub fn is_online(&self, user: UserId) -> bool {
        self.lock()
            .seen
            .get(&user)
            .is_some_and(|s| s.online(Instant::now()))
    }

    /// Makes session `id` watch exactly `users` (replacing what it watched)
    /// and returns their presence now.
    pub fn watch(&self, id: u64, tx: &SessionTx, users: &[UserId]) -> Vec<PresenceOut> {
        let now = Instant::now();
        let mut st = self.lock();
        forget_watches(&mut st, id);
        for u in users {
            st.watchers.entry(*u).or_default().push((id, tx.clone()));
        }
        st.watching.insert(id, users.to_vec());
        users
            .iter()
            .map(|u| presence_out(*u, st.seen.get(u), now))
            .collect()
    }

    /// Announces `user` typing (or not) in `conv` to `to`, unless the same
    /// state was announced within [`TYPING_MIN_GAP`].
    pub fn typing(&self, user: UserId, conv: u64, typing: bool, to: Vec<u64>) {
        let now = Instant::now();
        {
            let mut st = self.lock();
            if let Some(&(at, was)) = st.typing.get(&(user, conv)) {
                if was == typing && now.duration_since(at) < TYPING_MIN_GAP {
                    return;
                }
            }
            st.typing.insert((user, conv), (now, typing));
        }
        self.emit(Signal::Typing {
            conv,
            user: user.0,
            typing,
            to,
        });
    }

    /// Turns offline the users whose last lease ran out (every
    /// [`EXPIRE_EVERY`]), telling their watchers here.
    pub fn expire(&self) {
        self.expire_at(Instant::now());
    }

    fn expire_at(&self, now: Instant) {
        let mut st = self.lock();
        let expired: Vec<UserId> = st
            .seen
            .iter_mut()
            .filter_map(|(u, s)| {
                let was = !s.leases.is_empty();
                s.leases.retain(|_, until| *until > now);
                (was && s.leases.is_empty()).then_some(*u)
            })
            .collect();
        for u in expired {
            let out = presence_out(u, st.seen.get(&u), now);
            notify(&st, u, &out);
        }
    }

    /// The periodic re-announcement of this node's online users (and the
    /// chance to forget old typing state).
    pub fn refresh(&self) {
        let now = Instant::now();
        let users: Vec<u64> = {
            let mut st = self.lock();
            st.typing
                .retain(|_, (at, _)| now.duration_since(*at) < TYPING_MIN_GAP * 4);
            st.sessions.keys().map(|u| u.0).collect()
        };
        if !users.is_empty() {
            self.emit(Signal::Online {
                node: self.node,
                users,
            });
        }
    }

    /// Applies a signal from any node (this one included).
    pub fn receive(&self, s: Signal) {
        let now = Instant::now();
        let mut st = self.lock();
        match s {
            // The server's signal loop handles these (`revocation`).
            Signal::Revoked { .. } => {}
            Signal::Online { node, users } => {
                for u in users.into_iter().map(UserId) {
                    let seen = st.seen.entry(u).or_default();
                    let was = seen.online(now);
                    seen.leases.insert(node, now + LEASE);
                    if !was {
                        let out = presence_out(u, Some(seen), now);
                        notify(&st, u, &out);
                    }
                }
            }
            Signal::Offline { node, user, at } => {
                let u = UserId(user);
                let seen = st.seen.entry(u).or_default();
                let was = seen.online(now);
                seen.leases.remove(&node);
                seen.last_seen = Some(seen.last_seen.map_or(at, |l| l.max(at)));
                if was && !seen.online(now) {
                    let out = presence_out(u, Some(seen), now);
                    notify(&st, u, &out);
                }
            }
            Signal::Typing {
                conv,
                user,
                typing,
                to,
            } => {
                for r in to.into_iter().map(UserId) {
                    if r.0 == user {
                        continue;
                    }
                    for (_, tx) in st.sessions.get(&r).into_iter().flatten() {
                        let _ = tx.try_send(Box::new(ServerFrame::Typing {
                            conv: Id(conv),
                            user: Id(user),
                            typing,
                        }));
                    }
                }
            }
        }
    }
}

fn forget_watches(st: &mut State, id: u64) {
    for u in st.watching.remove(&id).unwrap_or_default() {
        if let Some(v) = st.watchers.get_mut(&u) {
            v.retain(|(s, _)| *s != id);
            if v.is_empty() {
                st.watchers.remove(&u);
            }
        }
    }
}

fn presence_out(user: UserId, seen: Option<&Seen>, now: Instant) -> PresenceOut {
    PresenceOut {
        user: Id(user.0),
        online: seen.is_some_and(|s| s.online(now)),
        last_seen: seen.and_then(|s| s.last_seen),
    }
}

fn notify(st: &State, user: UserId, out: &PresenceOut) {
    for (_, tx) in st.watchers.get(&user).into_iter().flatten() {
        let _ = tx.try_send(Box::new(ServerFrame::Presence(out.clone())));
    }
}

/// Distinct users of `users`, at most [`MAX_WATCHED`].
pub fn dedup_watch_list(users: &[Id]) -> Result<Vec<UserId>, String> {
    if users.len() > MAX_WATCHED {
        return Err(format!("at most {MAX_WATCHED} users per presence request"));
    }
    let mut seen = HashSet::new();
    Ok(users
        .iter()
        .map(|u| UserId(u.0))
        .filter(|u| seen.insert(*u))
        .collect())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]

    use super::*;

    fn frames(rx: &mut mpsc::Receiver<Box<ServerFrame>>) -> Vec<String> {
        let mut v = Vec::new();
        while let Ok(f) = rx.try_recv() {
            v.push(serde_json::to_string(&f).unwrap());
        }
        v
    }

    #[test]
    fn signals_round_trip_and_other_versions_are_ignored() {
        let s = Signal::Typing {
            conv: 7,
            user: 1,
            typing: true,
            to: vec![2, 3],
        };
        assert_eq!(Signal::decode(&s.encode()), Some(s));
        assert_eq!(
            Signal::decode(br#"{"v":2,"kind":"online","node":1,"users":[1]}"#),
            None
        );
        assert_eq!(Signal::decode(b"not json"), None);
    }

    #[test]
    fn a_user_is_online_while_any_node_holds_a_lease() {
        let (p, mut out) = Presence::new(1);
        let (tx, mut rx) = mpsc::channel(16);
        let watcher = p.register(UserId(9), tx.clone());
        assert_eq!(
            out.try_recv().unwrap(),
            Signal::Online {
                node: 1,
                users: vec![9]
            }
        );
        let now = p.watch(watcher.id, &tx, &[UserId(2)]);
        assert!(!now[0].online);
        // Online on nodes 2 and 3: one transition, not two.
        p.receive(Signal::Online {
            node: 2,
            users: vec![2],
        });
        p.receive(Signal::Online {
            node: 3,
            users: vec![2],
        });
        assert_eq!(frames(&mut rx).len(), 1);
        // Gone from node 2 only: still online.
        p.receive(Signal::Offline {
            node: 2,
            user: 2,
            at: 100,
        });
        assert!(frames(&mut rx).is_empty());
        p.receive(Signal::Offline {
            node: 3,
            user: 2,
            at: 200,
        });
        let f = frames(&mut rx);
        assert_eq!(f.len(), 1);
        assert!(
            f[0].contains(r#""online":false"#) && f[0].contains(r#""last_seen":200"#),
            "{f:?}"
        );
        // The watcher's own last socket closing announces it offline.
        drop(watcher);
        assert!(matches!(
            out.try_recv().unwrap(),
            Signal::Offline {
                node: 1,
                user: 9,
                ..
            }
        ));
    }

    #[test]
    fn a_crashed_nodes_users_go_offline_when_their_lease_runs_out_within_the_promised_bound() {
        // The promise of docs/protocol.md: offline within 30 s of a crash,
        // and no flapping when one refresh is lost.
        const {
            assert!(LEASE.as_secs() + EXPIRE_EVERY.as_secs() <= 30);
            assert!(LEASE.as_secs() > 2 * REFRESH.as_secs());
        };
        let (p, _out) = Presence::new(1);
        let (tx, mut rx) = mpsc::channel(16);
        let w = p.register(UserId(9), tx.clone());
        p.watch(w.id, &tx, &[UserId(2)]);
        // Node 2's last announcement, then it dies.
        p.receive(Signal::Online {
            node: 2,
            users: vec![2],
        });
        let announced = Instant::now();
        assert_eq!(frames(&mut rx).len(), 1);
        p.expire_at(announced + LEASE - Duration::from_millis(500));
        assert!(
            frames(&mut rx).is_empty(),
            "offline before the lease ran out"
        );
        p.expire_at(announced + LEASE + Duration::from_millis(500));
        let f = frames(&mut rx);
        assert_eq!(f.len(), 1, "{f:?}");
        assert!(f[0].contains(r#""online":false"#), "{f:?}");
    }

    #[test]
    fn typing_reaches_the_other_members_sessions_and_is_throttled() {
        let (p, mut out) = Presence::new(1);
        let (tx_a, mut rx_a) = mpsc::channel(16);
        let (tx_b, mut rx_b) = mpsc::channel(16);
        let _a = p.register(UserId(1), tx_a);
        let _b = p.register(UserId(2), tx_b);
        while out.try_recv().is_ok() {}
        p.typing(UserId(1), 5, true, vec![1, 2]);
        p.typing(UserId(1), 5, true, vec![1, 2]);
        let sent: Vec<Signal> = std::iter::from_fn(|| out.try_recv().ok()).collect();
        assert_eq!(sent.len(), 1, "the repeat within the gap is dropped");
        p.receive(sent[0].clone());
        assert_eq!(frames(&mut rx_b).len(), 1);
        assert!(frames(&mut rx_a).is_empty(), "not echoed to the typist");
        // A change of state always goes out.
        p.typing(UserId(1), 5, false, vec![1, 2]);
        assert!(out.try_recv().is_ok());
    }
}
