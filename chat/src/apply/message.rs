//! `AppendMessage`: a message's dense seq and ts, deduplication by
//! (sender, client message id), and the sender's own receipt.

use missive_engine::keys::{ConversationId, Timestamp};
use missive_raft::Result;

use super::Apply;
use crate::command::{MessageKind, Outcome};
use crate::ids::{DeviceId, Seq, UserId};
use crate::records::{
    self, dedup_key, head_key, msg_key, receipt_key, Dedup, EventKind, Head, Message, Receipt,
};

impl Apply<'_, '_> {
    /// A member's send: the message stored, and everything before it read
    /// by its sender.
    #[allow(clippy::too_many_arguments, reason = "the command's fields")]
    pub(super) fn send(
        &mut self,
        conv: ConversationId,
        sender: UserId,
        device: DeviceId,
        client_msg_id: &str,
        kind: MessageKind,
        body: &[u8],
        expires_at: Option<u64>,
        stamp: u64,
    ) -> Result<Outcome> {
        let c = match self.member_of(conv, sender)? {
            Ok(c) => c,
            Err(refused) => return Ok(refused),
        };
        let out = self.append(
            conv,
            Message {
                seq: Seq::ZERO,
                sender,
                device,
                client_msg_id: client_msg_id.to_string(),
                kind,
                body: body.to_vec(),
                expires_at,
            },
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
            let key = receipt_key(conv, sender);
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

    /// Stores a message at the conversation's next (ts, seq), unless the
    /// sender already sent this client message id, and queues it for
    /// `recipients`' inboxes.
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
        let hkey = head_key(conv);
        let head: Head = self.rec.get_as("head", &hkey)?.unwrap_or_default();
        let prev = (head.seq > Seq::ZERO).then_some(Timestamp(head.ts));
        let ts = Timestamp::next_after(prev, Timestamp(stamp)).0;
        let seq = head.seq.next();
        m.seq = seq;
        self.rec.put(msg_key(conv, ts), records::encode(&m)?);
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
