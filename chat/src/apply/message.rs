//! Appending a message (`Post`, and `AppendMessage` written before
//! replies existed): a message's dense seq and ts, deduplication by
//! (sender, client message id), the reply's target, and the sender's own
//! receipt.

use missive_engine::keys::{ConversationId, Timestamp};
use missive_raft::Result;

use super::{reject, Apply};
use crate::command::{ConversationKind, MessageKind, NewMessage, Outcome, RejectCode};
use crate::ids::{Seq, UserId};
use crate::records::{
    self, dedup_key, head_key, msg_key, receipt_key, seq_key, Dedup, EventKind, Head, Indexed,
    Message, Receipt,
};

impl Apply<'_, '_> {
    /// A member's send: the message stored (see `append` for the
    /// reply rule), and everything before it read by its sender.
    pub(super) fn send(&mut self, new: &NewMessage, stamp: u64) -> Result<Outcome> {
        let conv = new.conv;
        let c = match self.member_of(conv, new.sender)? {
            Ok(c) => c,
            Err(refused) => return Ok(refused),
        };
        if c.kind == ConversationKind::Direct {
            let blocks = self.blocks(conv)?;
            if blocks.by.contains(&new.sender) {
                return Ok(reject(
                    RejectCode::Blocked,
                    "you blocked this user: unblock them to send",
                ));
            }
            if !blocks.by.is_empty() {
                return Ok(reject(
                    RejectCode::Blocked,
                    "this user does not accept your messages",
                ));
            }
        }
        let out = self.append(
            conv,
            Message::new(
                Seq::ZERO,
                new.sender,
                new.device,
                new.client_msg_id.clone(),
                new.kind,
                new.body.clone(),
                new.expires_at,
                new.reply_to,
            ),
            stamp,
            &c.members,
        )?;
        if let Outcome::Appended {
            seq,
            duplicate: false,
            ..
        } = out
        {
            // Sending reads everything before: the sender's own
            // messages never count as unread.
            let key = receipt_key(conv, new.sender);
            let old: Receipt = self.rec.get_as("receipt", &key)?.unwrap_or_default();
            self.rec.put_as(
                key,
                &Receipt {
                    delivered: old.delivered.max(seq),
                    read: old.read.max(seq),
                },
            )?;
        }
        Ok(out)
    }

    /// Message `seq` of `conv`, if the conversation holds it at `stamp`:
    /// indexed, not expired by `stamp`, not unsent, and not a system
    /// message (which nobody may answer, edit or react to). Decided from
    /// the seq index alone, never from the message record (see `records`:
    /// whether a replica still finds an expired message depends on its own
    /// clock and compactions).
    pub(super) fn message(
        &mut self,
        conv: ConversationId,
        seq: Seq,
        stamp: u64,
    ) -> Result<Option<Indexed>> {
        let Some(ix) = self.indexed(conv, seq)? else {
            return Ok(None);
        };
        let gone = ix.expires_at.is_some_and(|at| at <= stamp);
        Ok((!gone && !ix.system && !ix.unsent).then_some(ix))
    }

    /// The seq index entry of message `seq`, whatever its state.
    pub(super) fn indexed(&mut self, conv: ConversationId, seq: Seq) -> Result<Option<Indexed>> {
        self.rec
            .get(&seq_key(conv, seq))?
            .map(|b| records::decode_indexed(&b))
            .transpose()
    }

    /// Stores a message at the conversation's next (ts, seq), unless the
    /// sender already sent this client message id, and queues it for
    /// `recipients`' inboxes. A reply whose target the conversation does
    /// not hold is refused (`NoSuchMessage`).
    pub(super) fn append(
        &mut self,
        conv: ConversationId,
        mut m: Message,
        stamp: u64,
        recipients: &[UserId],
    ) -> Result<Outcome> {
        let dkey =
            (!m.client_msg_id.is_empty()).then(|| dedup_key(conv, m.sender, &m.client_msg_id));
        if let Some(k) = &dkey {
            if let Some(d) = self.rec.get_as::<Dedup>("dedup", k)? {
                return Ok(Outcome::Appended {
                    ts: d.ts,
                    seq: d.seq,
                    duplicate: true,
                });
            }
        }
        // Checked after dedup: a resend of a stored reply answers as the
        // original did, even once its target has expired.
        if let Some(target) = m.reply_to {
            if self.message(conv, target, stamp)?.is_none() {
                return Ok(reject(
                    RejectCode::NoSuchMessage,
                    format!("this conversation holds no message {target} to reply to"),
                ));
            }
        }
        let hkey = head_key(conv);
        let head: Head = self.rec.get_as("head", &hkey)?.unwrap_or_default();
        let prev = (head.seq > Seq::ZERO).then_some(Timestamp(head.ts));
        let ts = Timestamp::next_after(prev, Timestamp(stamp)).0;
        let seq = head.seq.next();
        m.seq = seq;
        self.rec
            .put(msg_key(conv, ts), records::encode_message(&m)?);
        let ix = Indexed {
            ts,
            expires_at: m.expires_at,
            system: m.kind == MessageKind::System,
            sender: m.sender,
            unsent: false,
        };
        self.rec
            .put(seq_key(conv, seq), records::encode_indexed(&ix)?);
        self.rec.put(hkey, records::encode(&Head { ts, seq })?);
        if let Some(k) = dkey {
            self.rec.put(k, records::encode(&Dedup { ts, seq })?);
        }
        self.emit(
            conv,
            EventKind::Message {
                seq,
                ts,
                sender: m.sender,
                expires_at: m.expires_at,
            },
            recipients.to_vec(),
            stamp,
        )?;
        Ok(Outcome::Appended {
            ts,
            seq,
            duplicate: false,
        })
    }
}
