//! Changing a stored message: `Edit`, `Unsend` and `React`.
//!
//! Every decision here comes from records that never expire — the seq
//! index (sender, ts, unsent, expiry judged against the leader's stamp)
//! and the reactions record — never from the message record, which a
//! replica may already have dropped by its own clock (see `records`,
//! "What the rules read"). The message record is then rewritten under its
//! unchanged key, so history and sync serve the new state with the same
//! single read as before, and compaction drops the old versions.

use missive_engine::keys::ConversationId;
use missive_raft::Result;

use super::index::indexed_terms;
use super::{reject, seeing, Apply};
use crate::command::{
    ConversationKind, Outcome, RejectCode, MAX_EMOJIS_PER_MESSAGE, MAX_EMOJIS_PER_USER,
    MAX_EMOJI_BYTES, MAX_PRIOR_BODIES,
};
use crate::ids::{Seq, UserId};
use crate::records::{
    self, msg_key, reactions_key, seq_key, Conversation, EventKind, Indexed, Message, PriorBody,
    Reaction, Reactions, Unsent,
};

fn no_such(seq: Seq) -> Outcome {
    reject(
        RejectCode::NoSuchMessage,
        format!("this conversation holds no message {seq} that can be changed"),
    )
}

/// Whole seconds in `micros`, for messages to people.
fn secs(micros: u64) -> u64 {
    micros / 1_000_000
}

/// Why an emoji is refused, if it is.
fn bad_emoji(emoji: &str) -> Option<String> {
    if emoji.is_empty() || emoji.len() > MAX_EMOJI_BYTES {
        return Some(format!("an emoji is 1..={MAX_EMOJI_BYTES} bytes"));
    }
    emoji
        .chars()
        .any(|c| c.is_control() || c.is_whitespace())
        .then(|| "an emoji holds no spaces or control characters".to_string())
}

impl Apply<'_, '_> {
    /// `Edit` (`text`: `EditText`): the sender replaces the body of a
    /// message they sent less than `window` µs ago; the search index
    /// follows (a body given as opaque bytes is not indexed).
    #[allow(clippy::too_many_arguments, reason = "the command's fields")]
    pub(super) fn edit(
        &mut self,
        conv: ConversationId,
        actor: UserId,
        seq: Seq,
        body: &[u8],
        text: bool,
        window: u64,
        stamp: u64,
    ) -> Result<Outcome> {
        let c = match self.member_of(conv, actor)? {
            Ok(c) => c,
            Err(refused) => return Ok(refused),
        };
        if c.encrypted {
            return Ok(reject(
                RejectCode::Encrypted,
                "messages of an end-to-end encrypted conversation cannot be edited \
                 (unsend it and send it again)",
            ));
        }
        if body.is_empty() {
            return Ok(reject(
                RejectCode::Invalid,
                "an edit needs a body (unsend removes a message)",
            ));
        }
        let Some(ix) = self
            .message(conv, seq, stamp)?
            .filter(|_| c.sees(actor, seq))
        else {
            return Ok(no_such(seq));
        };
        if ix.sender != actor {
            return Ok(reject(
                RejectCode::Forbidden,
                "only a message's sender may edit it",
            ));
        }
        if stamp.saturating_sub(ix.ts) > window {
            return Ok(reject(
                RejectCode::TooLate,
                format!(
                    "message {seq} can no longer be edited: edits are allowed for {} s after sending",
                    secs(window)
                ),
            ));
        }
        let keep = c.settings.keep_edits;
        let mut terms = None;
        self.rewrite(conv, seq, &ix, |m| {
            let before = indexed_terms(m);
            let old = std::mem::replace(&mut m.body, body.to_vec());
            m.text = text;
            if keep {
                m.prior.push(PriorBody {
                    replaced_at: stamp,
                    body: old,
                });
                let over = m.prior.len().saturating_sub(MAX_PRIOR_BODIES);
                m.prior.drain(..over);
            }
            m.edited_at = Some(stamp);
            m.edits = m.edits.saturating_add(1);
            terms = Some((before, indexed_terms(m)));
        })?;
        if let Some((before, after)) = terms {
            self.reindex(conv, seq, ix.expires_at, &before, &after)?;
        }
        let event = EventKind::Edited {
            seq,
            ts: ix.ts,
            edited_at: stamp,
            expires_at: ix.expires_at,
        };
        self.emit(conv, event, seeing(&c, seq), stamp)?;
        Ok(Outcome::MessageChanged {
            seq,
            at: stamp,
            changed: true,
        })
    }

    /// `Unsend`: the message becomes a tombstone; its reactions record
    /// goes, and its index entry says so, so no later rule finds it.
    pub(super) fn unsend(
        &mut self,
        conv: ConversationId,
        actor: UserId,
        seq: Seq,
        window: u64,
        admins_may: bool,
        stamp: u64,
    ) -> Result<Outcome> {
        let c = match self.member_of(conv, actor)? {
            Ok(c) => c,
            Err(refused) => return Ok(refused),
        };
        let Some(ix) = self.indexed(conv, seq)?.filter(|_| c.sees(actor, seq)) else {
            return Ok(no_such(seq));
        };
        if ix.system || ix.expires_at.is_some_and(|at| at <= stamp) {
            return Ok(no_such(seq));
        }
        if ix.unsent {
            return Ok(Outcome::MessageChanged {
                seq,
                at: stamp,
                changed: false,
            });
        }
        let as_sender = ix.sender == actor && stamp.saturating_sub(ix.ts) <= window;
        let as_admin = admins_may && c.kind == ConversationKind::Group && c.is_admin(actor);
        if !as_sender && !as_admin {
            return Ok(if ix.sender == actor {
                reject(
                    RejectCode::TooLate,
                    format!(
                        "message {seq} can no longer be unsent: unsending is allowed for {} s after sending",
                        secs(window)
                    ),
                )
            } else {
                reject(
                    RejectCode::Forbidden,
                    "only a message's sender (or a group admin) may unsend it",
                )
            });
        }
        self.tombstone(&c, conv, seq, ix, actor, stamp)?;
        Ok(Outcome::MessageChanged {
            seq,
            at: stamp,
            changed: true,
        })
    }

    /// Makes message `seq` (indexed as `ix`, not yet unsent) a tombstone
    /// unsent by `by`: its index entry says so (no later rule finds it),
    /// its reactions record and pin go, its record keeps only seq, ts and
    /// sender, and the members who could see it are told.
    pub(super) fn tombstone(
        &mut self,
        c: &Conversation,
        conv: ConversationId,
        seq: Seq,
        mut ix: Indexed,
        by: UserId,
        stamp: u64,
    ) -> Result<()> {
        ix.unsent = true;
        self.rec
            .put(seq_key(conv, seq), records::encode_indexed(&ix)?);
        self.rec.delete(reactions_key(conv, seq));
        // A tombstone stays unpinned (members drop it from their pin list
        // on the `unsent` event).
        self.unpin(conv, seq)?;
        let mut before = None;
        self.rewrite(conv, seq, &ix, |m| {
            before = Some(indexed_terms(m));
            m.body = Vec::new();
            m.edited_at = None;
            m.edits = 0;
            m.reactions = Vec::new();
            m.prior = Vec::new();
            m.unsent = Some(Unsent { at: stamp, by });
        })?;
        if let Some(before) = before {
            self.reindex(conv, seq, ix.expires_at, &before, &Default::default())?;
        }
        let event = EventKind::Unsent { seq, ts: ix.ts, by };
        self.emit(conv, event, seeing(c, seq), stamp)
    }

    /// `React`: one user's emoji added to (or removed from) a message.
    pub(super) fn react(
        &mut self,
        conv: ConversationId,
        user: UserId,
        seq: Seq,
        emoji: &str,
        add: bool,
        stamp: u64,
    ) -> Result<Outcome> {
        let c = match self.member_of(conv, user)? {
            Ok(c) => c,
            Err(refused) => return Ok(refused),
        };
        if let Some(why) = bad_emoji(emoji) {
            return Ok(reject(RejectCode::Invalid, why));
        }
        let Some(ix) = self
            .message(conv, seq, stamp)?
            .filter(|_| c.sees(user, seq))
        else {
            return Ok(no_such(seq));
        };
        let key = reactions_key(conv, seq);
        let mut r: Reactions = self.rec.get_as("reactions", &key)?.unwrap_or_default();
        let unchanged = Outcome::MessageChanged {
            seq,
            at: stamp,
            changed: false,
        };
        let pos = r.list.iter().position(|x| x.emoji == emoji);
        if add {
            if pos.is_some_and(|i| r.list[i].users.contains(&user)) {
                return Ok(unchanged);
            }
            let mine = r.list.iter().filter(|x| x.users.contains(&user)).count();
            if mine >= MAX_EMOJIS_PER_USER {
                return Ok(reject(
                    RejectCode::Invalid,
                    format!("one user puts at most {MAX_EMOJIS_PER_USER} emoji on a message"),
                ));
            }
            match pos {
                Some(i) => r.list[i].users.push(user),
                None if r.list.len() >= MAX_EMOJIS_PER_MESSAGE => {
                    return Ok(reject(
                        RejectCode::Invalid,
                        format!(
                            "a message carries at most {MAX_EMOJIS_PER_MESSAGE} distinct emoji"
                        ),
                    ));
                }
                None => r.list.push(Reaction {
                    emoji: emoji.into(),
                    users: smallvec::smallvec![user],
                }),
            }
        } else {
            let Some(i) = pos.filter(|i| r.list[*i].users.contains(&user)) else {
                return Ok(unchanged);
            };
            r.list[i].users.retain(|u| *u != user);
            if r.list[i].users.is_empty() {
                r.list.remove(i);
            }
        }
        if r.list.is_empty() {
            self.rec.delete(key);
        } else {
            self.rec.put_as(key, &r)?;
        }
        self.rewrite(conv, seq, &ix, |m| m.reactions = r.list.clone())?;
        let event = EventKind::Reacted {
            seq,
            user,
            emoji: emoji.to_string(),
            added: add,
        };
        self.emit(conv, event, seeing(&c, seq), stamp)?;
        Ok(Outcome::MessageChanged {
            seq,
            at: stamp,
            changed: true,
        })
    }

    /// Rewrites message `seq`'s record under its key with `change`
    /// applied, if this replica still holds it. One that does not has
    /// dropped it as expired by its own clock and serves it to nobody; the
    /// rewrite would carry the same `expires_at` (see `records`).
    fn rewrite(
        &mut self,
        conv: ConversationId,
        seq: Seq,
        ix: &Indexed,
        change: impl FnOnce(&mut Message),
    ) -> Result<()> {
        // Whatever this replica holds, what it served before is stale.
        self.fx.changed.push((conv, seq));
        let key = msg_key(conv, ix.ts);
        let Some(bytes) = self.rec.get(&key)? else {
            return Ok(());
        };
        let mut m = records::decode_message(&bytes)?;
        change(&mut m);
        self.rec.put(key, records::encode_message(&m)?);
        Ok(())
    }
}
