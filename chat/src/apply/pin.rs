//! `Pin` and `Hide`: what members mark on messages without changing them.
//! Pins are a conversation's bounded list any member edits; pinning reads
//! the seq index (the message must exist at the leader's stamp); the list
//! is a record that never expires, so every replica decides alike. An
//! unsend unpins its message. `Hide` ("delete for me") records one
//! member's hidden seqs, which history skips for that member only.

use missive_engine::keys::ConversationId;
use missive_raft::Result;

use super::{reject, seeing, Apply};
use crate::command::{Outcome, RejectCode, MAX_PINS};
use crate::ids::{Seq, UserId};
use crate::records::{hidden_key, pins_key, EventKind, Hidden, Pin, Pins};

impl Apply<'_, '_> {
    /// `Pin`.
    pub(super) fn pin(
        &mut self,
        conv: ConversationId,
        actor: UserId,
        seq: Seq,
        pin: bool,
        stamp: u64,
    ) -> Result<Outcome> {
        let c = match self.member_of(conv, actor)? {
            Ok(c) => c,
            Err(refused) => return Ok(refused),
        };
        let key = pins_key(conv);
        let mut pins: Pins = self.rec.get_as("pins", &key)?.unwrap_or_default();
        let at = pins.list.iter().position(|p| p.seq == seq);
        let unchanged = Outcome::MessageChanged {
            seq,
            at: stamp,
            changed: false,
        };
        if pin {
            if !c.sees(actor, seq) || self.message(conv, seq, stamp)?.is_none() {
                return Ok(reject(
                    RejectCode::NoSuchMessage,
                    format!("this conversation holds no message {seq} that can be pinned"),
                ));
            }
            if at.is_some() {
                return Ok(unchanged);
            }
            if pins.list.len() >= MAX_PINS {
                return Ok(reject(
                    RejectCode::Invalid,
                    format!(
                        "a conversation has at most {MAX_PINS} pinned messages; unpin one first"
                    ),
                ));
            }
            let new = Pin {
                seq,
                by: actor,
                at: stamp,
            };
            pins.list.insert(0, new);
        } else {
            let Some(i) = at else {
                return Ok(unchanged);
            };
            pins.list.remove(i);
        }
        self.put_pins(conv, &pins)?;
        let event = EventKind::Pinned {
            seq,
            by: actor,
            pinned: pin,
        };
        self.emit(conv, event, seeing(&c, seq), stamp)?;
        Ok(Outcome::MessageChanged {
            seq,
            at: stamp,
            changed: true,
        })
    }

    /// `Hide`: message `seq` deleted for `user` only.
    pub(super) fn hide(
        &mut self,
        conv: ConversationId,
        user: UserId,
        seq: Seq,
        stamp: u64,
    ) -> Result<Outcome> {
        if let Err(refused) = self.member_of(conv, user)? {
            return Ok(refused);
        }
        // Any message the conversation ever indexed: hiding a tombstone or
        // an expired one is harmless and what a client clearing its view
        // expects.
        if self.indexed(conv, seq)?.is_none() {
            return Ok(reject(
                RejectCode::NoSuchMessage,
                format!("this conversation holds no message {seq}"),
            ));
        }
        let key = hidden_key(conv, user, seq);
        if self.rec.get(&key)?.is_some() {
            return Ok(Outcome::MessageChanged {
                seq,
                at: stamp,
                changed: false,
            });
        }
        self.rec.put_as(key, &Hidden { at: stamp })?;
        self.emit(conv, EventKind::Hidden { seq }, vec![user], stamp)?;
        Ok(Outcome::MessageChanged {
            seq,
            at: stamp,
            changed: true,
        })
    }

    /// Drops `seq` from the conversation's pins, if there (no event).
    pub(super) fn unpin(&mut self, conv: ConversationId, seq: Seq) -> Result<()> {
        let key = pins_key(conv);
        let Some(mut pins) = self.rec.get_as::<Pins>("pins", &key)? else {
            return Ok(());
        };
        let before = pins.list.len();
        pins.list.retain(|p| p.seq != seq);
        if pins.list.len() != before {
            self.put_pins(conv, &pins)?;
        }
        Ok(())
    }

    fn put_pins(&mut self, conv: ConversationId, pins: &Pins) -> Result<()> {
        if pins.list.is_empty() {
            self.rec.delete(pins_key(conv));
            Ok(())
        } else {
            self.rec.put_as(pins_key(conv), pins)
        }
    }
}
