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
//! This worker runs on every node and acts for the shards the node leads:
//!
//! 1. scan the shard's outbox range (a page, ordered by conversation then
//!    eseq; entries above a conversation's `done` are always contiguous);
//! 2. write `Deliver` commands to each recipient's user shard, one
//!    conversation's items in eseq order, chunks of one shard sequentially;
//! 3. when every delivery of the page succeeded, write `OutboxDone` to the
//!    conversation's shard, which deletes the entries up to the delivered
//!    eseq.
//!
//! A crash, a lost answer or a leader change anywhere in 1–3 makes a worker
//! (maybe another node's) repeat the page. Repeats are harmless: a user
//! shard applies an item only if its eseq is above the user's mark for that
//! conversation (`UserConv::eseq`). Gaps cannot happen: an item is only ever
//! sent in a command that also carries, in order, every earlier not-done
//! eseq of its conversation for that user, and `done` only rises after all
//! of them were applied. Two workers briefly overlapping (an old leader
//! that has not noticed yet) send overlapping prefixes; whichever applies
//! first wins and the other's items are skipped.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use missive_engine::keys::{ConversationId, Keyspace};
use missive_engine::lsm::Direction;

use crate::command::{Command, Delivery};
use crate::error::{Error, Result};
use crate::node::Inner;
use crate::records::{self, decode_outbox_key, OutboxEntry};
use crate::state_machine::ApplyHooks;
use crate::types::ShardId;

/// Outbox entries read per round and shard.
const PAGE: usize = 512;
/// Items per `Deliver` command (one Raft entry carries several commands).
const CHUNK: usize = 256;
/// How often the worker looks even without a notice: a new leader must
/// drain what its predecessor left, and a failed round is retried.
const RESCAN: Duration = Duration::from_millis(500);
/// How long one write may wait out an election.
const WRITE_WAIT: Duration = Duration::from_secs(5);

/// Runs until `stop` turns true.
pub(crate) async fn run(
    inner: Arc<Inner>,
    hooks: Arc<ApplyHooks>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = hooks.outbox.notified() => {}
            _ = tokio::time::sleep(RESCAN) => {}
        }
        let shards: Vec<ShardId> = inner.groups.keys().copied().collect();
        for shard in shards {
            if !inner.leads(shard) {
                continue;
            }
            loop {
                match round(&inner, shard).await {
                    Ok(n) if n == PAGE => continue,
                    Ok(_) => break,
                    Err(e) => {
                        tracing::debug!(%shard, error = %e, "fan-out round failed; will retry");
                        break;
                    }
                }
            }
        }
    }
}

/// One page of one shard's outbox; returns how many entries it handled.
async fn round(inner: &Arc<Inner>, shard: ShardId) -> Result<usize> {
    let Some((lo, hi)) = inner
        .slots
        .key_ranges(shard)
        .into_iter()
        .find(|(lo, _)| lo.first() == Some(&(Keyspace::Outbox as u8)))
    else {
        return Ok(0);
    };
    let page = inner
        .lsm
        .scan(&lo, hi.as_deref(), Direction::Forward, PAGE)?;
    if page.is_empty() {
        return Ok(0);
    }
    let n = page.len();
    let mut by_shard: BTreeMap<ShardId, Vec<Delivery>> = BTreeMap::new();
    let mut done: BTreeMap<ConversationId, u64> = BTreeMap::new();
    for (k, v) in page {
        let (conv, eseq) = decode_outbox_key(&k)
            .ok_or_else(|| Error::malformed("outbox key", "not an outbox key"))?;
        let entry: OutboxEntry = records::decode("outbox entry", &v)?;
        for user in entry.recipients {
            by_shard
                .entry(inner.slots.shard_of_user(user))
                .or_default()
                .push(Delivery {
                    user,
                    conv,
                    eseq,
                    event: entry.event.clone(),
                    at: entry.at,
                });
        }
        done.insert(conv, eseq);
    }
    let mut sends = tokio::task::JoinSet::new();
    for (target, items) in by_shard {
        let inner = Arc::clone(inner);
        sends.spawn(async move {
            // Sequential per shard: a later chunk never lands before an
            // earlier one.
            for chunk in items.chunks(CHUNK) {
                inner
                    .write(
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
    inner
        .write(
            shard,
            Command::OutboxDone {
                done: done.into_iter().collect(),
            },
            WRITE_WAIT,
        )
        .await?;
    Ok(n)
}
