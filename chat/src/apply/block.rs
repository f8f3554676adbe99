//! `Block`: one user blocking another. The pair's blocks live on the
//! shard of their direct conversation's id (`ids::direct_id`), where the
//! rules that need them run — sending in that conversation, creating it —
//! so apply decides from a record of its own shard. The blocker's own list
//! (on the blocker's user shard) follows through the outbox like every
//! cross-shard effect: the `Blocked` event goes to the blocker alone, and
//! inbox delivery records it (`deliver`). The blocked user is told nothing.

use missive_engine::keys::ConversationId;
use missive_raft::Result;

use super::{reject, Apply};
use crate::command::{Outcome, RejectCode};
use crate::ids::{direct_id, UserId};
use crate::records::{blocks_key, Blocks, EventKind};

impl Apply<'_, '_> {
    /// `Block`.
    pub(super) fn block(
        &mut self,
        pair: ConversationId,
        blocker: UserId,
        target: UserId,
        block: bool,
        stamp: u64,
    ) -> Result<Outcome> {
        if blocker == target || target.0 == 0 || pair != direct_id(blocker, target) {
            return Ok(reject(
                RejectCode::Invalid,
                "a block names another user and their pair's direct conversation",
            ));
        }
        let mut b = self.blocks(pair)?;
        if b.by.contains(&blocker) == block {
            return Ok(Outcome::Done);
        }
        if block {
            b.by.push(blocker);
            b.by.sort_unstable();
        } else {
            b.by.retain(|u| *u != blocker);
        }
        // Kept when empty (see `blocks`).
        self.rec.put_as(blocks_key(pair), &b)?;
        let event = EventKind::Blocked {
            user: target,
            blocked: block,
        };
        self.emit(pair, event, vec![blocker], stamp)?;
        Ok(Outcome::Done)
    }

    /// The blocks of the pair whose direct conversation is `pair`. Every
    /// direct send reads them, and the record cache keeps only records
    /// that exist (an absent key costs an LSM lookup each time), so an
    /// absent record is written empty on first read: a direct
    /// conversation's blocks are then one cached read per send.
    pub(super) fn blocks(&mut self, pair: ConversationId) -> Result<Blocks> {
        let key = blocks_key(pair);
        match self.rec.get_as::<Blocks>("blocks", &key)? {
            Some(b) => Ok(b),
            None => {
                let b = Blocks::default();
                self.rec.put_as(key, &b)?;
                Ok(b)
            }
        }
    }
}
