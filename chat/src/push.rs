//! The durable push outbox: notifications waiting to wake a user's
//! devices, written in the same batch as the inbox event they announce.
//!
//! # Why in the store
//!
//! A notification decided in memory is lost when the node that holds it
//! dies, and the user's phone never wakes for that message. So the
//! `Deliver` rule writes a **job** for every message event it appends to a
//! user's inbox (someone else's message, to a user with at least one push
//! target) in the same batch: the job is as durable as the event. The
//! sender (`missived`'s `delivery::push`, on the leader of the user's
//! shard) scans its shards' jobs, skips users who are online (they got the
//! event live) and calls the provider for each device still to notify;
//! the outcome goes back through Raft:
//!
//! - `PushDone`: every device was notified (or the user is online): the
//!   job is deleted.
//! - `PushRetry`: some devices failed in a way worth retrying: the job
//!   keeps only those devices, its attempt count and the time of the next
//!   attempt (exponential backoff with jitter, computed by the sender).
//! - `PushDead`: the job is older than the sender's limit: it moves to the
//!   dead letters, which an operator lists and replays (`PushReplay`).
//!
//! The job's id is the event's: (user, useq). A leader change or a crash
//! between attempts resumes from the last recorded state, so a device
//! notified in an attempt that was recorded is never notified again for
//! that event, and no job is dropped without a record saying why. The one
//! window left is a send that succeeded just before its node died, before
//! its record committed: the next leader sends it again, with the same
//! idempotency key (`user:useq:device`) for the provider to drop.
//!
//! # Records
//!
//! ```text
//! push job      0x80 uslot:u16 user:u64 useq:u64          → PushJob
//! dead push     0x90 uslot:u16 user:u64 useq:u64          → DeadPush
//! push devices  0x30 uslot:u16 user:u64 0x0b              → PushDevices
//! ```
//!
//! Values are `[1][postcard]`. Jobs and dead letters have keyspaces of
//! their own so a shard's pending jobs are one short range (the sender's
//! scan reads nothing else). `push devices` lists the user's devices with
//! a push target: the rules read only point keys, so `SetPushToken` keeps
//! this list beside the targets, and `Deliver` reads it. (A target set by
//! an older build has no entry in the list until the device sets its token
//! again — which apps do on every start, since tokens change.)

use serde::{Deserialize, Serialize};

use missive_engine::keys::{ConversationId, Keyspace, Slot};

use crate::ids::{DeviceId, Seq, Useq, UserId};
use missive_raft::node::Consistency;

/// A notification waiting to be sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushJob {
    /// The conversation of the message.
    pub conv: ConversationId,
    /// The message's seq.
    pub seq: Seq,
    /// Who sent it.
    pub sender: UserId,
    /// When the event happened (µs, the leader's stamp).
    pub at: u64,
    /// The devices still to notify.
    pub devices: Vec<DeviceId>,
    /// Attempts that failed so far.
    pub attempts: u32,
    /// Not before this time (µs).
    pub next_micros: u64,
    /// Since when it is pending (µs: the event's time, or its replay's):
    /// its age decides when it is given up on.
    pub since_micros: u64,
}

/// A job given up on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadPush {
    /// The job as it was.
    pub job: PushJob,
    /// When it was given up (µs, the leader's stamp).
    pub died_micros: u64,
    /// Why (the last failure), for a person.
    pub reason: String,
}

/// The devices of a user that have a push target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct PushDevices {
    /// Sorted, unique.
    pub devices: Vec<DeviceId>,
}

/// The longest reason a dead letter keeps, bytes.
pub const MAX_REASON: usize = 512;

fn key(ks: Keyspace, user: UserId, useq: Useq) -> Vec<u8> {
    let mut k = Vec::with_capacity(19);
    k.push(ks as u8);
    k.extend_from_slice(&Slot::of_user(user.0).0.to_be_bytes());
    k.extend_from_slice(&user.0.to_be_bytes());
    k.extend_from_slice(&useq.0.to_be_bytes());
    k
}

/// Key of a pending job.
pub fn job_key(user: UserId, useq: Useq) -> Vec<u8> {
    key(Keyspace::Push, user, useq)
}

/// Key of a dead letter.
pub fn dead_key(user: UserId, useq: Useq) -> Vec<u8> {
    key(Keyspace::PushDead, user, useq)
}

/// (user, useq) of a job or dead-letter key.
pub fn decode_key(k: &[u8]) -> Option<(UserId, Useq)> {
    if k.len() != 19 {
        return None;
    }
    let user = u64::from_be_bytes(k[3..11].try_into().ok()?);
    let useq = u64::from_be_bytes(k[11..19].try_into().ok()?);
    Some((UserId(user), Useq(useq)))
}

/// Key of a user's push-device list.
pub fn push_devices_key(user: UserId) -> Vec<u8> {
    crate::records::user_key(user, 0x0b)
}

/// The key range `[lo, hi)` of keyspace `ks` over slots `first..end`.
pub fn slots_range(ks: Keyspace, first: u16, end: u16) -> (Vec<u8>, Vec<u8>) {
    let edge = |s: u16| {
        let mut k = vec![ks as u8];
        k.extend_from_slice(&s.to_be_bytes());
        k
    };
    let hi = if end as u32 >= u32::from(missive_engine::keys::SLOTS) {
        vec![ks as u8 + 1]
    } else {
        edge(end)
    };
    (edge(first), hi)
}

/// A job or dead letter with its id.
pub type Listed<T> = ((UserId, Useq), T);

impl crate::ChatNode {
    /// Up to `limit` pending jobs of `shard` after `after` (a job id), in
    /// key order, linearizable. The sender runs on the shard's leader, but
    /// a leader's state machine may not have applied all its log yet — a
    /// node elected after a restart, still applying: a stale read there
    /// shows jobs whose `PushDone` is committed but not applied, and they
    /// would be sent twice. The read index makes the read wait for them.
    pub async fn push_jobs(
        &self,
        shard: missive_raft::ShardId,
        after: Option<(UserId, Useq)>,
        limit: usize,
    ) -> crate::Result<Vec<Listed<PushJob>>> {
        self.listed(
            shard,
            Keyspace::Push,
            "push job",
            after,
            limit,
            Consistency::Linearizable,
        )
        .await
    }

    /// The pending job of event (user, useq), if there is one,
    /// linearizable (see [`Self::push_jobs`]: the notice that asks may
    /// come from a leader still applying old entries).
    pub async fn push_job(&self, user: UserId, useq: Useq) -> crate::Result<Option<PushJob>> {
        let shard = self.slots().shard_of_user(user.0);
        self.get_decoded(
            shard,
            Consistency::Linearizable,
            &job_key(user, useq),
            |b| crate::records::decode("push job", b),
        )
        .await
    }

    /// Up to `limit` dead letters after `after`, over every shard in
    /// order (linearizable: an operator's listing).
    pub async fn dead_pushes(
        &self,
        after: Option<(UserId, Useq)>,
        limit: usize,
    ) -> crate::Result<Vec<Listed<DeadPush>>> {
        let slots = self.slots();
        let first = after.map_or(missive_raft::ShardId(1), |(u, _)| slots.shard_of_user(u.0));
        let mut out = Vec::new();
        for shard in slots.shards().filter(|s| *s >= first) {
            let want = limit - out.len();
            let lin = Consistency::Linearizable;
            out.extend(
                self.listed(shard, Keyspace::PushDead, "dead push", after, want, lin)
                    .await?,
            );
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    async fn listed<T: serde::de::DeserializeOwned>(
        &self,
        shard: missive_raft::ShardId,
        ks: Keyspace,
        what: &'static str,
        after: Option<(UserId, Useq)>,
        limit: usize,
        consistency: Consistency,
    ) -> crate::Result<Vec<Listed<T>>> {
        let Some(range) = self.slots().slots(shard) else {
            return Ok(Vec::new());
        };
        let (mut lo, hi) = slots_range(ks, range.start, range.end);
        if let Some((u, q)) = after {
            let mut k = key(ks, u, q);
            k.push(0);
            lo = lo.max(k);
        }
        if lo >= hi || limit == 0 {
            return Ok(Vec::new());
        }
        self.scan(shard, consistency, &lo, Some(hi), limit)
            .await?
            .into_iter()
            .map(|(k, v)| {
                let id = decode_key(&k)
                    .ok_or_else(|| missive_raft::Error::malformed(what, "bad key"))?;
                Ok((id, crate::records::decode(what, &v)?))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_decode_back_and_sit_in_their_slots_range() {
        let (u, q) = (UserId(0xdead_beef), Useq(77));
        let k = job_key(u, q);
        assert_eq!(decode_key(&k), Some((u, q)));
        assert_eq!(decode_key(&dead_key(u, q)), Some((u, q)));
        let s = Slot::of_user(u.0).0;
        let (lo, hi) = slots_range(Keyspace::Push, s, s + 1);
        assert!(lo <= k && k < hi);
        let (lo, hi) = slots_range(Keyspace::Push, 0, missive_engine::keys::SLOTS);
        assert!(lo <= k && k < hi);
        assert!(!(lo <= dead_key(u, q) && dead_key(u, q) < hi));
    }
}
