//! An operator's erasure of a user: `EraseMessages` (on each conversation's
//! shard, a chunk of seqs at a time) and `EraseUser` (on the user's own
//! shard).
//!
//! Erasing tombstones: each message the user sent becomes what an unsend
//! leaves (seq, ts and sender; body, prior bodies and reactions gone), by
//! the same rule on every replica, and members are told with the same
//! `unsent` event. What this removes from the *live* state is all a rule
//! can do; the older versions of those records still sit in tables and
//! log segments until the node's scrub (snapshot, log purge, full
//! compaction) drops them, which `missivectl residue` then checks byte by
//! byte.
//!
//! Like every rule, the decisions come from the seq index (sender,
//! unsent, expiry against the leader's stamp), never from message
//! records. An expired message is skipped: the engine already serves it to
//! nobody and its next compaction drops it.

use missive_engine::keys::ConversationId;
use missive_raft::Result;

use super::{reject, Apply};
use crate::command::{Outcome, RejectCode, MAX_ERASE_SPAN};
use crate::ids::{DeviceId, Seq, UserId};
use crate::records::{
    blocked_key, device_key, profile_key, push_key, receipt_key, ticket_uses_key,
};

impl Apply<'_, '_> {
    /// `EraseMessages`: `user`'s messages with seqs in `(after, upto]`
    /// become tombstones; their receipt in the conversation goes.
    pub(super) fn erase_messages(
        &mut self,
        conv: ConversationId,
        user: UserId,
        after: Seq,
        upto: Seq,
        stamp: u64,
    ) -> Result<Outcome> {
        if upto < after || upto.0 - after.0 > MAX_ERASE_SPAN {
            return Ok(reject(
                RejectCode::Invalid,
                format!("an erasure covers 0..={MAX_ERASE_SPAN} seqs, after < upto"),
            ));
        }
        // The user may have left: erasure does not need membership, only
        // the conversation (for who to tell).
        let Some(c) = self.conversation(conv)? else {
            return Ok(reject(
                RejectCode::NoSuchConversation,
                format!("conversation {} does not exist", conv.0),
            ));
        };
        let mut removed = 0;
        for n in after.0 + 1..=upto.0 {
            let seq = Seq(n);
            let Some(ix) = self.indexed(conv, seq)? else {
                continue;
            };
            let gone = ix.expires_at.is_some_and(|at| at <= stamp);
            if ix.sender != user || ix.unsent || ix.system || gone {
                continue;
            }
            self.tombstone(&c, conv, seq, ix, user, stamp)?;
            removed += 1;
        }
        let rkey = receipt_key(conv, user);
        let receipts = u64::from(self.rec.get(&rkey)?.is_some());
        self.rec.delete(rkey);
        Ok(Outcome::Erased { removed, receipts })
    }

    /// `EraseUser`: the profile, and the listed devices (with their push
    /// targets) and blocked-user entries.
    pub(super) fn erase_user(
        &mut self,
        user: UserId,
        devices: &[DeviceId],
        blocked: &[UserId],
    ) -> Result<Outcome> {
        // Revocations stay: they hold no personal data, and dropping them
        // would make revoked tokens valid again.
        // The list of devices with push targets is an index of the
        // targets, not a record of its own: deleted, not counted.
        self.rec.delete(crate::push::push_devices_key(user));
        let keys = [profile_key(user), ticket_uses_key(user)]
            .into_iter()
            .chain(devices.iter().map(|d| device_key(user, *d)))
            .chain(devices.iter().map(|d| push_key(user, *d)))
            .chain(blocked.iter().map(|b| blocked_key(user, *b)));
        let mut removed = 0;
        for d in devices {
            if let Outcome::Keys {
                change: Some(_), ..
            } = self.remove_keys(user, *d)?
            {
                removed += 1;
            }
        }
        for key in keys {
            if self.rec.get(&key)?.is_some() {
                self.rec.delete(key);
                removed += 1;
            }
        }
        Ok(Outcome::Erased {
            removed,
            receipts: 0,
        })
    }
}
