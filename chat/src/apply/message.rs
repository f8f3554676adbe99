//! Appending a message (`Send`, and `Post` and `AppendMessage` written
//! before mentions and replies existed): a message's dense seq and ts,
//! deduplication by (sender, client message id), the reply's target, its
//! mentions, its expiry by the conversation's retention, and the sender's
//! own receipt.

use missive_engine::keys::{ConversationId, Timestamp};
use missive_raft::Result;

use super::{reject, sorted_unique, Apply};
use crate::command::{
    ConversationKind, MessageKind, NewMessage, Outcome, RejectCode, Retention, SendMessage,
    MAX_MENTIONS_PER_MESSAGE,
};
use crate::e2ee::Envelope;
use crate::ids::{Seq, UserId};
use crate::media::body::MediaBody;
use crate::media::records::reference_key;
use crate::records::{
    self, dedup_key, head_key, msg_key, receipt_key, seq_key, Conversation, Dedup, EventKind, Head,
    Indexed, Message, Receipt,
};
use crate::search::postings;

/// µs in a day.
const DAY_MICROS: u64 = 86_400_000_000;

/// How long `c` keeps a message sent now (µs; `None`: forever).
fn retention_micros(c: &Conversation, node_default: Option<u64>) -> Option<u64> {
    match c.settings.retention {
        Retention::NodeDefault => node_default,
        Retention::Forever => None,
        Retention::Days(d) => Some(u64::from(d).saturating_mul(DAY_MICROS)),
    }
}

/// What an end-to-end encrypted conversation accepts (`crate::e2ee`):
/// only encrypted messages; and what an encrypted message must be: an
/// envelope, given as bytes, whose payloads are for members only.
fn encryption_rule(c: &Conversation, new: &NewMessage, text: bool) -> Result<(), Outcome> {
    if new.kind != MessageKind::Encrypted {
        if c.encrypted && new.kind != MessageKind::System {
            return Err(reject(
                RejectCode::Encrypted,
                "this conversation is end-to-end encrypted: send kind encrypted, \
                 with one ciphertext per recipient device",
            ));
        }
        return Ok(());
    }
    if text {
        return Err(reject(
            RejectCode::Invalid,
            "an encrypted message carries payloads, not text",
        ));
    }
    let envelope = Envelope::decode(&new.body).map_err(|why| reject(RejectCode::Invalid, why))?;
    if let Some(u) = envelope.users().into_iter().find(|u| !c.is_member(*u)) {
        return Err(reject(
            RejectCode::Invalid,
            format!("a payload is for user {}, who is not a member", u.0),
        ));
    }
    Ok(())
}

impl Apply<'_, '_> {
    /// `Send` and `SendText` (`text`): [`Self::send`] with mentions and
    /// the node's default retention.
    pub(super) fn send_mentioning(
        &mut self,
        m: &SendMessage,
        text: bool,
        stamp: u64,
    ) -> Result<Outcome> {
        if m.mentions.len() > MAX_MENTIONS_PER_MESSAGE {
            return Ok(reject(
                RejectCode::Invalid,
                format!("a message mentions at most {MAX_MENTIONS_PER_MESSAGE} users"),
            ));
        }
        let keep_default = m.default_retention_micros;
        let (out, stored) = self.send(&m.message, &m.mentions, keep_default, text, stamp)?;
        Ok(match (out, stored) {
            (Outcome::Appended { ts, seq, duplicate }, stored) => Outcome::Sent {
                ts,
                seq,
                duplicate,
                expires_at: stored.as_ref().and_then(|s| s.expires_at),
                mentions: stored.map(|s| s.mentions).unwrap_or_default(),
            },
            (other, _) => other,
        })
    }

    /// A member's send: the message stored (see `append` for the
    /// reply rule), and everything before it read by its sender. Of
    /// `mentions`, the members other than the sender are kept in the
    /// message and told (a `Mentioned` event after the message's own);
    /// the message expires by the conversation's retention (or the
    /// node's, `node_retention`), or earlier if the sender asked; a body
    /// given as `text` is indexed for search. With the
    /// outcome, the message as stored, if this call stored it.
    pub(super) fn send(
        &mut self,
        new: &NewMessage,
        mentions: &[UserId],
        node_retention: Option<u64>,
        text: bool,
        stamp: u64,
    ) -> Result<(Outcome, Option<Message>)> {
        let conv = new.conv;
        let c = match self.member_of(conv, new.sender)? {
            Ok(c) => c,
            Err(refused) => return Ok((refused, None)),
        };
        if c.kind == ConversationKind::Direct {
            let blocks = self.blocks(conv)?;
            if blocks.by.contains(&new.sender) {
                let why = "you blocked this user: unblock them to send";
                return Ok((reject(RejectCode::Blocked, why), None));
            }
            if !blocks.by.is_empty() {
                let why = "this user does not accept your messages";
                return Ok((reject(RejectCode::Blocked, why), None));
            }
        }
        if let Err(refused) = encryption_rule(&c, new, text) {
            return Ok((refused, None));
        }
        if new.reply_to.is_some_and(|t| !c.sees(new.sender, t)) {
            let why = "this conversation holds no such message to reply to";
            return Ok((reject(RejectCode::NoSuchMessage, why), None));
        }
        let mut m = Message::new(
            Seq::ZERO,
            new.sender,
            new.device,
            new.client_msg_id.clone(),
            new.kind,
            new.body.clone(),
            new.expires_at,
            new.reply_to,
        );
        m.text = text;
        m.mentions = sorted_unique(
            mentions
                .iter()
                .copied()
                .filter(|u| *u != new.sender && c.is_member(*u))
                .collect(),
        );
        let keep = retention_micros(&c, node_retention);
        let out = self.append(conv, &mut m, keep, stamp, &c.members)?;
        let Outcome::Appended {
            seq,
            duplicate: false,
            ..
        } = out
        else {
            return Ok((out, None));
        };
        let event = EventKind::Mentioned {
            seq,
            sender: new.sender,
        };
        self.emit(conv, event, m.mentions.clone(), stamp)?;
        // Sending reads everything before: the sender's own messages
        // never count as unread.
        let key = receipt_key(conv, new.sender);
        let old: Receipt = self.rec.get_as("receipt", &key)?.unwrap_or_default();
        self.rec.put_as(
            key,
            &Receipt {
                delivered: old.delivered.max(seq),
                read: old.read.max(seq),
            },
        )?;
        Ok((out, Some(m)))
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
    /// not hold is refused (`NoSuchMessage`). With `keep` (µs), the
    /// message expires that long after its ts at the latest: retention
    /// rides on the same expiry as disappearing messages, so the engine's
    /// reads and compactions enforce both alike.
    pub(super) fn append(
        &mut self,
        conv: ConversationId,
        m: &mut Message,
        keep: Option<u64>,
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
        if let Some(keep) = keep {
            let until = ts.saturating_add(keep);
            m.expires_at = Some(m.expires_at.map_or(until, |at| at.min(until)));
        }
        self.rec.put(msg_key(conv, ts), records::encode_message(m)?);
        let ix = Indexed {
            ts,
            expires_at: m.expires_at,
            system: m.kind == MessageKind::System,
            sender: m.sender,
            unsent: false,
        };
        self.rec
            .put(seq_key(conv, seq), records::encode_indexed(&ix)?);
        if m.kind == MessageKind::Media {
            // The reference lets the members read the object; what it
            // decides is judged from the seq index (unsent, expiry), so it
            // is never rewritten.
            if let Some(hash) = MediaBody::parse(&m.body).and_then(|b| b.hash()) {
                self.rec.put(reference_key(conv, &hash, seq), vec![1]);
            }
        }
        self.rec.put(hkey, records::encode(&Head { ts, seq })?);
        if postings::seals(seq) {
            // This message completes its bucket: the bucket's search
            // postings go in this batch (`apply::index`).
            self.seal(conv, postings::bucket_of(seq), stamp)?;
        }
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
