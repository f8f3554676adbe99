//! `Deliver` (the fan-out worker's write into users' inboxes) and
//! `OutboxDone` (its clean-up of the conversation's outbox).

use missive_engine::keys::ConversationId;
use missive_raft::Result;

use super::{Apply, InboxNotice};
use crate::command::{Delivery, Outcome};
use crate::ids::{Eseq, UserId};
use crate::records::{
    self, blocked_key, inbox_key, outbox_head_key, outbox_key, user_conv_key, user_head_key,
    BlockedUser, EventKind, InboxEvent, OutboxHead, UserConv, UserHead, MAX_MENTIONS,
};

impl Apply<'_, '_> {
    /// Appends each new item to its user's inbox and updates the user's
    /// view of the conversation. An item at or below the user's applied
    /// eseq for its conversation is a repeat (the fan-out worker resends
    /// after a crash or a leader change) and is skipped; the worker sends
    /// one conversation's items in eseq order, always from the oldest not
    /// yet done, so "above the mark" is also "the next one".
    pub(super) fn deliver(&mut self, items: &[Delivery]) -> Result<Outcome> {
        let (mut applied, mut skipped) = (0, 0);
        for d in items {
            if self.deliver_one(d)? {
                applied += 1;
            } else {
                skipped += 1;
            }
        }
        Ok(Outcome::Delivered { applied, skipped })
    }

    /// One item of [`Self::deliver`] (also run by `emit` for a recipient
    /// whose data is on the conversation's own shard): false if it was a
    /// repeat and skipped.
    pub(super) fn deliver_one(&mut self, d: &Delivery) -> Result<bool> {
        let ckey = user_conv_key(d.user, d.conv);
        let mut uc: UserConv = self
            .rec
            .get(&ckey)?
            .map(|b| records::decode_user_conv(&b))
            .transpose()?
            .unwrap_or_default();
        if d.eseq <= uc.eseq {
            return Ok(false);
        }
        uc.eseq = d.eseq;
        match &d.event {
            EventKind::Message {
                seq, ts, sender, ..
            } => {
                uc.last_seq = uc.last_seq.max(*seq);
                uc.last_ts = uc.last_ts.max(*ts);
                if *sender == d.user {
                    uc.read = uc.read.max(*seq);
                    uc.delivered = uc.delivered.max(*seq);
                    uc.prune_mentions();
                }
            }
            EventKind::Receipt {
                user,
                delivered,
                read,
            } if *user == d.user => {
                uc.read = uc.read.max(*read);
                uc.delivered = uc.delivered.max(*delivered);
                uc.prune_mentions();
            }
            // Arrives right after its message's event, so usually
            // unread; one the user already read does not count.
            EventKind::Mentioned { seq, .. } => {
                if *seq > uc.read && !uc.mentions.contains(seq) {
                    uc.mentions.push(*seq);
                    let over = uc.mentions.len().saturating_sub(MAX_MENTIONS);
                    uc.mentions.drain(..over);
                }
            }
            // A withdrawn message mentions nobody any more.
            EventKind::Unsent { seq, .. } => uc.mentions.retain(|s| s != seq),
            // Changes to a stored message are not new messages: no
            // unread, no activity (the list does not reorder).
            EventKind::Receipt { .. }
            | EventKind::Edited { .. }
            | EventKind::Reacted { .. }
            | EventKind::Pinned { .. }
            | EventKind::Hidden { .. }
            | EventKind::Configured { .. }
            | EventKind::Encrypted { .. }
            | EventKind::DeviceKeys { .. }
            | EventKind::PreKeysLow { .. } => {}
            // Only the blocker gets it: their own list follows.
            EventKind::Blocked { user, blocked } => {
                let key = blocked_key(d.user, *user);
                if *blocked {
                    self.rec.put_as(key, &BlockedUser { since: d.at })?;
                } else {
                    self.rec.delete(key);
                }
            }
            EventKind::Membership { added, removed, .. } => {
                if added.contains(&d.user) {
                    uc.member = true;
                    uc.last_ts = uc.last_ts.max(d.at);
                }
                if removed.contains(&d.user) {
                    uc.member = false;
                }
            }
        }
        self.rec.put(ckey, records::encode_user_conv(&uc)?);
        let event = InboxEvent {
            conv: d.conv,
            eseq: d.eseq,
            event: d.event.clone(),
            at: d.at,
        };
        self.append_inbox(d.user, event)?;
        Ok(true)
    }

    /// Appends one event to `user`'s inbox (the user is on this shard),
    /// with its push job if it calls for one, and tells live connections.
    pub(super) fn append_inbox(&mut self, user: UserId, event: InboxEvent) -> Result<()> {
        let hkey = user_head_key(user);
        let mut head: UserHead = self.rec.get_as("user head", &hkey)?.unwrap_or_default();
        head.useq = head.useq.next();
        self.rec.put_as(inbox_key(user, head.useq), &event)?;
        self.rec.put_as(hkey, &head)?;
        // The notification that may wake the user's devices, in the same
        // batch as the event it announces (`crate::push`).
        self.push_job(user, head.useq, &event)?;
        self.fx.notices.push(InboxNotice {
            user,
            useq: head.useq,
            event: std::sync::Arc::new(event),
        });
        Ok(())
    }

    /// Deletes fanned-out outbox entries up to each conversation's `upto`.
    pub(super) fn outbox_done(&mut self, done: &[(ConversationId, Eseq)]) -> Result<Outcome> {
        for (conv, upto) in done {
            let hkey = outbox_head_key(*conv);
            let mut head: OutboxHead = self.rec.get_as("outbox head", &hkey)?.unwrap_or_default();
            let upto = (*upto).min(head.last);
            if upto <= head.done {
                continue;
            }
            for eseq in head.done.0 + 1..=upto.0 {
                self.rec.delete(outbox_key(*conv, Eseq(eseq)));
            }
            head.done = upto;
            self.rec.put_as(hkey, &head)?;
        }
        Ok(Outcome::Done)
    }
}
