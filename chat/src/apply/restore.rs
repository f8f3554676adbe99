//! `RaiseHeads`: after a restore, a conversation's counters are raised past
//! what its members' inboxes already hold (see `crate::restore`).

use missive_engine::keys::ConversationId;
use missive_raft::Result;

use super::{reject, Apply};
use crate::command::{Outcome, RejectCode};
use crate::ids::{Eseq, Seq};
use crate::records::{head_key, outbox_head_key, Head, OutboxHead};
use crate::search::postings;

impl Apply<'_, '_> {
    /// Raises the conversation's newest seq to at least `seq` and its
    /// outbox's newest (and done) eseq to at least `eseq`, so that its next
    /// message and next event come after everything any inbox holds of it.
    /// Refused (`Conflict`) while the outbox has entries not yet delivered:
    /// raising `last` over them would leave a gap among the pending entries,
    /// which the fan-out worker requires to be contiguous — the caller
    /// waits for the worker and asks again. A raise that changes nothing
    /// writes nothing.
    pub(super) fn raise_heads(
        &mut self,
        conv: ConversationId,
        seq: Seq,
        eseq: Eseq,
        stamp: u64,
    ) -> Result<Outcome> {
        let okey = outbox_head_key(conv);
        let outbox: OutboxHead = self.rec.get_as("outbox head", &okey)?.unwrap_or_default();
        if eseq > outbox.last {
            if outbox.done != outbox.last {
                return Ok(reject(
                    RejectCode::Conflict,
                    "the conversation still has deliveries pending; ask again once they are done",
                ));
            }
            self.rec.put_as(
                okey,
                &OutboxHead {
                    last: eseq,
                    done: eseq,
                },
            )?;
        }
        let hkey = head_key(conv);
        let head: Head = self.rec.get_as("head", &hkey)?.unwrap_or_default();
        if seq > head.seq {
            self.rec.put_as(hkey, &Head { ts: head.ts, seq })?;
            // Raising the head past the open search bucket's end seals it
            // (`apply::index`): its messages are still the newest, and no
            // send will take its last seq now.
            let open = postings::open_from(head.seq);
            if head.seq >= open && postings::open_from(seq) > open {
                self.seal(conv, postings::bucket_of(open), stamp)?;
            }
        }
        Ok(Outcome::Done)
    }
}
