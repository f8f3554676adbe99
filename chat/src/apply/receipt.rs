//! `SetReceipt`: a member's delivered and read watermarks.

use missive_engine::keys::ConversationId;
use missive_raft::Result;

use super::Apply;
use crate::command::Outcome;
use crate::ids::{Seq, UserId};
use crate::records::{self, head_key, receipt_key, EventKind, Head, Receipt};

impl Apply<'_, '_> {
    /// Raises `user`'s watermarks: they only rise, never past the newest
    /// message, and read implies delivered. A change is an event for every
    /// member.
    pub(super) fn set_receipt(
        &mut self,
        conv: ConversationId,
        user: UserId,
        delivered: Option<Seq>,
        read: Option<Seq>,
        stamp: u64,
    ) -> Result<Outcome> {
        let c = match self.member_of(conv, user)? {
            Ok(c) => c,
            Err(refused) => return Ok(refused),
        };
        let head: Head = self
            .rec
            .get_as("head", &head_key(conv))?
            .unwrap_or_default();
        let key = receipt_key(conv, user);
        let old: Receipt = self.rec.get_as("receipt", &key)?.unwrap_or_default();
        let read = old.read.max(read.unwrap_or(Seq::ZERO)).min(head.seq);
        let delivered = old
            .delivered
            .max(delivered.unwrap_or(Seq::ZERO))
            .max(read)
            .min(head.seq);
        let new = Receipt { delivered, read };
        if new != old {
            self.rec.put(key, records::encode(&new)?);
            self.emit(
                conv,
                EventKind::Receipt {
                    user,
                    delivered,
                    read,
                },
                c.members,
                stamp,
            )?;
        }
        Ok(Outcome::Receipt { delivered, read })
    }
}
