//! The fan-out worker: moves conversation events from a conversation's
//! durable outbox into its members' inboxes, which live on other shards.
//!
//! # Why an outbox, and why this cannot lose or repeat an event
//!
//! A message commits on its conversation's shard; the per-user data it
//! changes (inbox, conversation list, unread counts) lives on each
//! recipient's user shard. No Raft entry spans shards, so the two cannot be
//! written atomically. Instead the command that stores the message also
//! writes an *outbox entry* — the event and its recipients — in the same
//! atomic batch on the conversation's shard, under a dense per-conversation
//! event sequence `eseq` (`records::OutboxHead`). A crash after the commit
//! cannot lose the event: the outbox entry is as durable as the message.
//!
//! Every node runs one worker per shard; it acts while the node leads the
//! shard:
//!
//! 1. take the entries to deliver: normally those apply just wrote, handed
//!    over in memory (`outbox_feed`); after a leader change, a failure, an
//!    overflow or a snapshot, and every `SAFETY_SCAN` anyway, a scan of the
//!    shard's outbox range instead (pages ordered by conversation then
//!    eseq; entries above a conversation's `done` are always contiguous);
//! 2. write `Deliver` commands to each recipient's user shard, one
//!    conversation's items in eseq order, chunks of one shard sequentially;
//!    the next round starts only when every `Deliver` of this one
//!    succeeded, so a user shard never sees a later eseq before an earlier
//!    one from this worker;
//! 3. write `OutboxDone` to the conversation's shard, which deletes the
//!    entries up to the delivered eseq. After a scan round this is awaited;
//!    after a feed round it runs behind the next rounds (at most one in
//!    flight): until it lands the entries merely stay in the outbox, and a
//!    later scan would deliver them again, harmlessly.
//!
//! A failed `Deliver` sends the worker back to scanning: the feed's later
//! entries must not overtake the failed ones (that would be a gap, below).
//!
//! # Local delivery: recipients on the conversation's own shard
//!
//! A recipient whose inbox lives on the conversation's shard needs no
//! worker: the command that emits the event appends it to their inbox in
//! the same batch (`apply::emit`), and the outbox entry names only the
//! others — or is not written at all, `done` rising with `last`. One Raft
//! round from send to inbox instead of three. The rule applies only while
//! the conversation's outbox is drained (`done == last` before the
//! event): then every earlier event is in every recipient's inbox, so
//! the local copy is the next one each of them gets. While an entry
//! waits, it may be for a user who is local now but was not when it was
//! written (data from before this rule, a restore into another shard
//! count, a future split); delivering the newer event first would raise
//! their mark past the waiting one, which would then be skipped as a
//! repeat — lost. So while anything waits, the event goes through the
//! outbox for everyone, in order. Entries above `done` stay contiguous:
//! an eseq gets no entry only when the outbox was drained, and `done`
//! takes it at once. Which users are local is decided from the shard's
//! slot ranges, identical on every replica, so apply stays deterministic.
//!
//! A crash, a lost answer or a leader change anywhere in 1–3 makes a worker
//! (maybe another node's) repeat the page. Repeats are harmless: a user
//! shard applies an item only if its eseq is above the user's mark for that
//! conversation (`UserConv::eseq`). Gaps cannot happen: a worker sends an
//! item only when every earlier not-done eseq of its conversation for that
//! user is either earlier in the same command or was applied by one of its
//! own earlier rounds, all of which succeeded — a scan round carries the
//! whole not-done suffix in order; a feed round follows only successful
//! rounds, and the feed holds everything applied since it was activated,
//! which happens before the scan that precedes it reads the LSM. `done`
//! only rises after delivery. Two workers briefly overlapping (an old
//! leader that has not noticed yet) each keep that rule; whichever applies
//! an item first wins and the other's copy is skipped.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::JoinHandle;

use missive_engine::keys::{ConversationId, Keyspace};
use missive_engine::lsm::Direction;

use missive_raft::node::Node;
use missive_raft::{Error, Result, ShardId};

use crate::app::{ChatApp, Hooks};
use crate::command::{Command, Delivery};
use crate::ids::Eseq;
use crate::outbox_feed::Take;
use crate::records::{self, decode_outbox_key};

/// Outbox entries read per scan round.
const PAGE: usize = 512;
/// Items per `Deliver` command (one Raft entry carries several commands).
const CHUNK: usize = 256;
/// How often an idle worker looks: a new leader must drain what its
/// predecessor left, and pending `OutboxDone`s go out.
const TICK: Duration = Duration::from_millis(500);
/// A full scan at least this often while leading, even when the feed
/// vouches for completeness: the outbox, not the feed, is the truth.
const SAFETY_SCAN: Duration = Duration::from_secs(10);
/// How long one write may wait out an election.
const WRITE_WAIT: Duration = Duration::from_secs(5);

/// Runs one worker per shard of this node until `stop` turns true, and
/// one more for each group a split opens here later.
pub(crate) async fn run(
    inner: Arc<Node<ChatApp>>,
    hooks: Arc<Hooks>,
    mut stop: watch::Receiver<bool>,
) {
    let mut workers = tokio::task::JoinSet::new();
    let mut running = std::collections::BTreeSet::new();
    let mut added = inner.groups_changed();
    loop {
        // The metadata group has no outboxes.
        let shards: Vec<ShardId> = inner.groups().filter(|s| !s.is_directory()).collect();
        for shard in shards {
            if running.insert(shard) {
                workers.spawn(shard_worker(
                    Arc::clone(&inner),
                    Arc::clone(&hooks),
                    shard,
                    stop.clone(),
                ));
            }
        }
        tokio::select! {
            r = stop.changed() => if r.is_err() || *stop.borrow() { break },
            r = added.changed() => if r.is_err() { break },
        }
    }
    while workers.join_next().await.is_some() {}
}

async fn shard_worker(
    inner: Arc<Node<ChatApp>>,
    hooks: Arc<Hooks>,
    shard: ShardId,
    mut stop: watch::Receiver<bool>,
) {
    let feed = &hooks.outbox;
    let wake = feed.waker(shard);
    let mut last_scan: Option<Instant> = None;
    let mut done = DonePipe::default();
    loop {
        tokio::select! {
            r = stop.changed() => {
                if r.is_err() || *stop.borrow() {
                    done.abort();
                    return;
                }
            }
            _ = wake.notified() => {}
            _ = tokio::time::sleep(TICK) => {}
        }
        if !inner.leads(shard) {
            feed.deactivate(shard);
            last_scan = None;
            continue;
        }
        if last_scan.is_none_or(|t| t.elapsed() >= SAFETY_SCAN) {
            feed.deactivate(shard);
        }
        let r = match feed.take(shard) {
            Take::Scan => {
                last_scan = Some(Instant::now());
                scan(&inner, shard).await
            }
            Take::Fresh(fresh) if fresh.is_empty() => Ok(()),
            Take::Fresh(fresh) => {
                deliver(&inner, fresh.into_iter().map(|f| (f.conv, f.eseq, f.entry)))
                    .await
                    .map(|d| done.add(d))
            }
        };
        if let Err(e) = r {
            tracing::debug!(%shard, error = %e, "fan-out round failed; will scan");
            feed.deactivate(shard);
        }
        done.flush(&inner, shard);
    }
}

/// `OutboxDone` marks of feed rounds, written behind them.
#[derive(Default)]
struct DonePipe {
    pending: BTreeMap<ConversationId, Eseq>,
    in_flight: Option<JoinHandle<()>>,
}

impl DonePipe {
    fn add(&mut self, done: BTreeMap<ConversationId, Eseq>) {
        for (conv, eseq) in done {
            let e = self.pending.entry(conv).or_default();
            *e = (*e).max(eseq);
        }
    }

    /// Starts an `OutboxDone` for what is pending unless one is running.
    fn flush(&mut self, inner: &Arc<Node<ChatApp>>, shard: ShardId) {
        if self.pending.is_empty() || self.in_flight.as_ref().is_some_and(|h| !h.is_finished()) {
            return;
        }
        let done: Vec<(ConversationId, Eseq)> =
            std::mem::take(&mut self.pending).into_iter().collect();
        let inner = Arc::clone(inner);
        self.in_flight = Some(tokio::spawn(async move {
            if let Err(e) = inner
                .write_to(shard, Command::OutboxDone { done }, WRITE_WAIT)
                .await
            {
                // The entries stay in the outbox; a later scan redoes them.
                tracing::debug!(%shard, error = %e, "outbox-done failed");
            }
        }));
    }

    fn abort(&mut self) {
        if let Some(h) = self.in_flight.take() {
            h.abort();
        }
    }
}

/// Scan rounds until the shard's outbox is drained.
async fn scan(inner: &Arc<Node<ChatApp>>, shard: ShardId) -> Result<()> {
    while round(inner, shard).await? == PAGE {}
    Ok(())
}

/// One page of one shard's outbox; returns how many entries it handled.
async fn round(inner: &Arc<Node<ChatApp>>, shard: ShardId) -> Result<usize> {
    let Some((lo, hi)) = inner
        .slots()
        .key_ranges(shard)
        .into_iter()
        .find(|(lo, _)| lo.first() == Some(&(Keyspace::Outbox as u8)))
    else {
        return Ok(0);
    };
    let page = inner
        .lsm()
        .scan(&lo, hi.as_deref(), Direction::Forward, PAGE)?;
    if page.is_empty() {
        return Ok(0);
    }
    let n = page.len();
    let entries = page
        .into_iter()
        .map(|(k, v)| {
            let (conv, eseq) = decode_outbox_key(&k)
                .ok_or_else(|| Error::malformed("outbox key", "not an outbox key"))?;
            Ok((conv, eseq, records::decode("outbox entry", &v)?))
        })
        .collect::<Result<Vec<_>>>()?;
    let done = deliver(inner, entries).await?;
    inner
        .write_to(
            shard,
            Command::OutboxDone {
                done: done.into_iter().collect(),
            },
            WRITE_WAIT,
        )
        .await?;
    Ok(n)
}

/// Writes `Deliver`s for `entries` (each conversation's in eseq order) to
/// the recipients' user shards, every target shard concurrently; returns
/// the newest eseq delivered per conversation, once all succeeded.
async fn deliver(
    inner: &Arc<Node<ChatApp>>,
    entries: impl IntoIterator<Item = (ConversationId, Eseq, records::OutboxEntry)>,
) -> Result<BTreeMap<ConversationId, Eseq>> {
    let mut by_shard: BTreeMap<ShardId, Vec<Delivery>> = BTreeMap::new();
    let mut done: BTreeMap<ConversationId, Eseq> = BTreeMap::new();
    let mut stamps = Vec::new();
    for (conv, eseq, entry) in entries {
        stamps.push(entry.at);
        for user in entry.recipients {
            by_shard
                .entry(inner.slots().shard_of_user(user.0))
                .or_default()
                .push(Delivery {
                    user,
                    conv,
                    eseq,
                    event: entry.event.clone(),
                    at: entry.at,
                });
        }
        let d = done.entry(conv).or_default();
        *d = (*d).max(eseq);
    }
    let mut sends = tokio::task::JoinSet::new();
    for (target, items) in by_shard {
        let inner = Arc::clone(inner);
        sends.spawn(async move {
            // Sequential per shard: a later chunk never lands before an
            // earlier one.
            for chunk in items.chunks(CHUNK) {
                inner
                    .write_to(
                        target,
                        Command::Deliver {
                            items: chunk.to_vec(),
                        },
                        WRITE_WAIT,
                    )
                    .await?;
            }
            Ok::<(), Error>(())
        });
    }
    while let Some(r) = sends.join_next().await {
        r.map_err(|e| Error::Fatal(format!("fan-out task: {e}")))??;
    }
    // Commit (the leader's stamp) to every recipient's inbox written; the
    // clocks of two nodes may differ, as for the delivery histogram.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
    let fanout = &inner.app().hooks().fanout_latency;
    for at in stamps {
        fanout.record(std::time::Duration::from_micros(now.saturating_sub(at)));
    }
    Ok(done)
}
