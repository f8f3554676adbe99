//! The device key directory's rules (`crate::e2ee`): publishing keys,
//! claiming one-time pre-keys exactly once, removing a device, marking a
//! conversation encrypted, and announcing device-list changes.
//!
//! A claim's exactly-once rests on two facts: the directory of a user
//! lives on one shard, whose log orders every claim; and the key a claim
//! hands out is deleted (the queue's `first` raised) in the batch that
//! answers it. Two racing claims are two entries: the second reads the
//! first's effect (the call's pending writes are visible to later
//! commands), so it takes the next key.

use missive_engine::keys::ConversationId;
use missive_raft::Result;

use super::{reject, Apply};
use crate::command::{Bundle, Outcome, RejectCode};
use crate::e2ee::keys::{device_keys_key, one_time_key, verify_signed_pre_key};
use crate::e2ee::{
    DeviceKeys, KeyChange, OneTimeKey, SignedPreKey, LOW_ONE_TIME_KEYS, MAX_ONE_TIME_KEYS,
    MAX_ONE_TIME_KEYS_PER_PUBLISH,
};
use crate::ids::{DeviceId, Eseq, UserId};
use crate::records::{self, conversation_key, EventKind, InboxEvent};

/// The conversation id account events carry (no conversation has it).
pub const ACCOUNT: ConversationId = ConversationId(0);

/// The most devices one claim names.
pub const MAX_CLAIMED_DEVICES: usize = 64;

impl Apply<'_, '_> {
    /// `PublishKeys`: the device's entry written or updated.
    pub(super) fn publish_keys(
        &mut self,
        user: UserId,
        device: DeviceId,
        identity: &[u8; 32],
        signed: &SignedPreKey,
        one_time: &[OneTimeKey],
        stamp: u64,
    ) -> Result<Outcome> {
        if let Err(why) = verify_signed_pre_key(identity, signed) {
            return Ok(reject(RejectCode::Invalid, why));
        }
        if one_time.len() > MAX_ONE_TIME_KEYS_PER_PUBLISH {
            return Ok(reject(
                RejectCode::Invalid,
                format!(
                    "publish at most {MAX_ONE_TIME_KEYS_PER_PUBLISH} one-time pre-keys at once"
                ),
            ));
        }
        let key = device_keys_key(user, device);
        let old: Option<DeviceKeys> = self.rec.get_as("device keys", &key)?;
        let (mut entry, change) = match old {
            Some(o) if o.identity == *identity => (o, None),
            Some(o) => {
                // A new identity: sessions start over, and the old
                // one-time keys (made for the old identity) go.
                for n in o.first..o.next {
                    self.rec.delete(one_time_key(user, device, n));
                }
                let fresh = DeviceKeys {
                    identity: *identity,
                    signed: *signed,
                    since_micros: stamp,
                    first: o.next,
                    next: o.next,
                };
                (fresh, Some(KeyChange::IdentityChanged))
            }
            None => {
                let fresh = DeviceKeys {
                    identity: *identity,
                    signed: *signed,
                    since_micros: stamp,
                    first: 0,
                    next: 0,
                };
                (fresh, Some(KeyChange::Added))
            }
        };
        if entry.remaining() + one_time.len() as u64 > MAX_ONE_TIME_KEYS {
            return Ok(reject(
                RejectCode::Invalid,
                format!(
                    "a device holds at most {MAX_ONE_TIME_KEYS} one-time pre-keys; it has {}",
                    entry.remaining()
                ),
            ));
        }
        entry.signed = *signed;
        for k in one_time {
            self.rec.put_as(one_time_key(user, device, entry.next), k)?;
            entry.next += 1;
        }
        self.rec.put_as(key, &entry)?;
        Ok(Outcome::Keys {
            change,
            remaining: entry.remaining(),
        })
    }

    /// `ClaimKeys`: a bundle per named device in the directory (the edge
    /// lists them: the rules read no ranges), each taking the device's
    /// oldest one-time pre-key. A device left with few keys is told.
    pub(super) fn claim_keys(
        &mut self,
        user: UserId,
        devices: &[DeviceId],
        stamp: u64,
    ) -> Result<Outcome> {
        if devices.len() > MAX_CLAIMED_DEVICES {
            return Ok(reject(
                RejectCode::Invalid,
                format!("claim at most {MAX_CLAIMED_DEVICES} devices at once"),
            ));
        }
        let mut wanted = devices.to_vec();
        wanted.sort_unstable();
        wanted.dedup();
        let mut bundles = Vec::with_capacity(wanted.len());
        for device in wanted {
            let key = device_keys_key(user, device);
            let Some(mut entry) = self.rec.get_as::<DeviceKeys>("device keys", &key)? else {
                continue;
            };
            let mut one_time = None;
            if entry.remaining() > 0 {
                let okey = one_time_key(user, device, entry.first);
                one_time = self.rec.get_as::<OneTimeKey>("one-time key", &okey)?;
                self.rec.delete(okey);
                entry.first += 1;
                self.rec.put_as(key, &entry)?;
                let left = entry.remaining();
                // Once on crossing the mark, and once on running out.
                if left + 1 == LOW_ONE_TIME_KEYS || left == 0 {
                    let event = InboxEvent {
                        conv: ACCOUNT,
                        eseq: Eseq(0),
                        event: EventKind::PreKeysLow {
                            device,
                            remaining: left,
                        },
                        at: stamp,
                    };
                    self.append_inbox(user, event)?;
                }
            }
            bundles.push(Bundle {
                device,
                keys: entry,
                one_time,
            });
        }
        Ok(Outcome::Claimed { bundles })
    }

    /// `RemoveKeys`: the device leaves the directory.
    pub(super) fn remove_keys(&mut self, user: UserId, device: DeviceId) -> Result<Outcome> {
        let key = device_keys_key(user, device);
        let Some(entry) = self.rec.get_as::<DeviceKeys>("device keys", &key)? else {
            return Ok(Outcome::Keys {
                change: None,
                remaining: 0,
            });
        };
        for n in entry.first..entry.next {
            self.rec.delete(one_time_key(user, device, n));
        }
        self.rec.delete(key);
        Ok(Outcome::Keys {
            change: Some(KeyChange::Removed),
            remaining: 0,
        })
    }

    /// `Encrypt`: the conversation accepts only encrypted messages from
    /// now on.
    pub(super) fn encrypt(
        &mut self,
        conv: ConversationId,
        actor: UserId,
        stamp: u64,
    ) -> Result<Outcome> {
        let mut c = match self.settable_by(conv, actor, "turn on end-to-end encryption")? {
            Ok(c) => c,
            Err(refused) => return Ok(refused),
        };
        if c.encrypted {
            return Ok(Outcome::EncryptedOn { changed: false });
        }
        c.encrypted = true;
        c.push_previews = false;
        self.rec
            .put(conversation_key(conv), records::encode_conversation(&c)?);
        self.emit(conv, EventKind::Encrypted { by: actor }, c.members, stamp)?;
        Ok(Outcome::EncryptedOn { changed: true })
    }

    /// `SetPushPreviews`: whether notifications may show the messages'
    /// content (sits here because encryption is what forbids it).
    pub(super) fn set_push_previews(
        &mut self,
        conv: ConversationId,
        actor: UserId,
        on: bool,
    ) -> Result<Outcome> {
        let mut c = match self.settable_by(conv, actor, "change its push previews")? {
            Ok(c) => c,
            Err(refused) => return Ok(refused),
        };
        if on && c.encrypted {
            return Ok(reject(
                RejectCode::Encrypted,
                "this conversation is end-to-end encrypted: push notifications never \
                 carry its messages' content",
            ));
        }
        if c.push_previews == on {
            return Ok(Outcome::PushPreviews { on, changed: false });
        }
        c.push_previews = on;
        self.rec
            .put(conversation_key(conv), records::encode_conversation(&c)?);
        Ok(Outcome::PushPreviews { on, changed: true })
    }

    /// `NoteKeys`: every member hears that `user`'s device list changed.
    pub(super) fn note_keys(
        &mut self,
        conv: ConversationId,
        user: UserId,
        device: DeviceId,
        change: KeyChange,
        stamp: u64,
    ) -> Result<Outcome> {
        let c = match self.member_of(conv, user)? {
            Ok(c) => c,
            Err(refused) => return Ok(refused),
        };
        let event = EventKind::DeviceKeys {
            user,
            device,
            change,
        };
        self.emit(conv, event, c.members, stamp)?;
        Ok(Outcome::Done)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]

    use ed25519_dalek::{Signer, SigningKey};

    use super::*;
    use crate::apply::tests::Shard;
    use crate::apply::Effects;
    use crate::command::{Command, ConversationKind, MessageKind, NewMessage, SendMessage};
    use crate::e2ee::keys::signed_message;
    use crate::e2ee::{DevicePayload, Envelope};

    const CONV: ConversationId = ConversationId(77);
    const ALICE: UserId = UserId(1);
    const BOB: UserId = UserId(2);

    fn publish(sk: &SigningKey, device: u64, spk_id: u32, otks: std::ops::Range<u32>) -> Command {
        let mut signed = SignedPreKey {
            id: spk_id,
            key: [spk_id as u8; 32],
            signature: [0; 64],
        };
        signed.signature = sk.sign(&signed_message(&signed)).to_bytes();
        Command::PublishKeys {
            user: ALICE,
            device: DeviceId(device),
            identity: sk.verifying_key().to_bytes(),
            signed,
            one_time: otks
                .map(|id| OneTimeKey {
                    id,
                    key: [id as u8; 32],
                })
                .collect(),
        }
    }

    fn claim(s: &mut Shard, devices: &[u64]) -> (Vec<Bundle>, Effects) {
        let cmd = Command::ClaimKeys {
            user: ALICE,
            devices: devices.iter().map(|d| DeviceId(*d)).collect(),
        };
        match s.apply(cmd) {
            (Outcome::Claimed { bundles }, fx) => (bundles, fx),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn each_one_time_key_is_handed_out_once_and_the_owner_hears_when_few_are_left() {
        let mut s = Shard::default();
        let sk = SigningKey::from_bytes(&[3; 32]);
        let (out, _) = s.apply(publish(&sk, 1, 1, 0..12));
        assert_eq!(
            out,
            Outcome::Keys {
                change: Some(KeyChange::Added),
                remaining: 12
            }
        );
        let mut seen = Vec::new();
        let mut lows = Vec::new();
        for _ in 0..14 {
            let (b, fx) = claim(&mut s, &[1, 9]);
            assert_eq!(b.len(), 1, "device 9 is not in the directory");
            assert_eq!(b[0].keys.identity, sk.verifying_key().to_bytes());
            if let Some(k) = b[0].one_time {
                seen.push(k.id);
            }
            for n in fx.notices {
                assert_eq!(n.event.conv, ACCOUNT);
                lows.push(n.event.event.clone());
            }
        }
        assert_eq!(
            seen,
            (0..12).collect::<Vec<_>>(),
            "oldest first, never twice"
        );
        assert_eq!(
            lows,
            vec![
                EventKind::PreKeysLow {
                    device: DeviceId(1),
                    remaining: 9
                },
                EventKind::PreKeysLow {
                    device: DeviceId(1),
                    remaining: 0
                },
            ]
        );
        // Topping up continues the queue.
        let (out, _) = s.apply(publish(&sk, 1, 2, 100..103));
        assert_eq!(
            out,
            Outcome::Keys {
                change: None,
                remaining: 3
            }
        );
        let (b, _) = claim(&mut s, &[1]);
        assert_eq!(b[0].one_time.map(|k| k.id), Some(100));
        assert_eq!(b[0].keys.signed.id, 2, "the newest signed pre-key");
    }

    #[test]
    fn a_bad_signature_is_refused_and_a_new_identity_drops_the_old_keys() {
        let mut s = Shard::default();
        let sk = SigningKey::from_bytes(&[3; 32]);
        let Command::PublishKeys {
            user,
            device,
            identity,
            mut signed,
            one_time,
        } = publish(&sk, 1, 1, 0..3)
        else {
            unreachable!()
        };
        signed.key[0] ^= 1;
        let forged = Command::PublishKeys {
            user,
            device,
            identity,
            signed,
            one_time,
        };
        assert!(matches!(
            s.apply(forged).0,
            Outcome::Rejected {
                code: RejectCode::Invalid,
                ..
            }
        ));
        assert!(s.kv.is_empty(), "nothing of a refused publish is stored");
        s.apply(publish(&sk, 1, 1, 0..3));
        let other = SigningKey::from_bytes(&[4; 32]);
        let (out, _) = s.apply(publish(&other, 1, 1, 50..51));
        assert_eq!(
            out,
            Outcome::Keys {
                change: Some(KeyChange::IdentityChanged),
                remaining: 1
            }
        );
        let (b, _) = claim(&mut s, &[1]);
        assert_eq!(b[0].one_time.map(|k| k.id), Some(50));
        assert_eq!(b[0].keys.identity, other.verifying_key().to_bytes());
        let (out, _) = s.apply(Command::RemoveKeys {
            user: ALICE,
            device: DeviceId(1),
        });
        assert_eq!(
            out,
            Outcome::Keys {
                change: Some(KeyChange::Removed),
                remaining: 0
            }
        );
        assert!(s.kv.keys().all(|k| k[11] != 0x09 && k[11] != 0x0a));
        assert!(claim(&mut s, &[1]).0.is_empty());
    }

    fn message(kind: MessageKind, body: Vec<u8>, cid: &str) -> Command {
        Command::Send(SendMessage {
            message: NewMessage {
                conv: CONV,
                sender: ALICE,
                device: DeviceId(1),
                client_msg_id: cid.into(),
                kind,
                body,
                expires_at: None,
                reply_to: None,
            },
            mentions: vec![],
            default_retention_micros: None,
        })
    }

    fn code(o: &Outcome) -> Option<RejectCode> {
        match o {
            Outcome::Rejected { code, .. } => Some(*code),
            _ => None,
        }
    }

    #[test]
    fn push_previews_are_an_admins_choice_and_end_with_encryption() {
        let mut s = Shard::default();
        s.apply(Command::CreateConversation {
            conv: CONV,
            kind: ConversationKind::Group,
            name: "g".into(),
            creator: ALICE,
            members: vec![ALICE, BOB],
            max_members: 5,
        });
        let set = |actor, on| Command::SetPushPreviews {
            conv: CONV,
            actor,
            on,
        };
        assert_eq!(
            code(&s.apply(set(BOB, true)).0),
            Some(RejectCode::Forbidden)
        );
        assert_eq!(
            code(&s.apply(set(UserId(9), true)).0),
            Some(RejectCode::NotAMember)
        );
        let on = Outcome::PushPreviews {
            on: true,
            changed: true,
        };
        assert_eq!(s.apply(set(ALICE, true)).0, on);
        assert_eq!(
            s.apply(set(ALICE, true)).0,
            Outcome::PushPreviews {
                on: true,
                changed: false
            }
        );
        let stored = |s: &Shard| {
            let bytes = &s.kv[&conversation_key(CONV)];
            records::decode_conversation(bytes).unwrap().push_previews
        };
        assert!(stored(&s));
        s.apply(Command::Encrypt {
            conv: CONV,
            actor: ALICE,
        });
        assert!(!stored(&s), "encryption turns previews off");
        assert_eq!(
            code(&s.apply(set(ALICE, true)).0),
            Some(RejectCode::Encrypted)
        );
    }

    #[test]
    fn an_encrypted_conversation_takes_only_envelopes_for_its_members() {
        let mut s = Shard::default();
        s.apply(Command::CreateConversation {
            conv: CONV,
            kind: ConversationKind::Group,
            name: "g".into(),
            creator: ALICE,
            members: vec![ALICE, BOB],
            max_members: 5,
        });
        assert_eq!(
            code(&s.apply(message(MessageKind::Text, b"x".to_vec(), "1")).0),
            None
        );
        let by_bob = Command::Encrypt {
            conv: CONV,
            actor: BOB,
        };
        assert_eq!(code(&s.apply(by_bob).0), Some(RejectCode::Forbidden));
        let on = Command::Encrypt {
            conv: CONV,
            actor: ALICE,
        };
        assert_eq!(
            s.apply(on.clone()).0,
            Outcome::EncryptedOn { changed: true }
        );
        assert_eq!(s.apply(on).0, Outcome::EncryptedOn { changed: false });
        for kind in [MessageKind::Text, MessageKind::Media, MessageKind::Reply] {
            let o = s.apply(message(kind, b"plain".to_vec(), "2")).0;
            assert_eq!(code(&o), Some(RejectCode::Encrypted), "{kind:?}");
        }
        let env = |users: &[u64]| {
            Envelope::new(
                users
                    .iter()
                    .map(|u| DevicePayload {
                        user: UserId(*u),
                        device: DeviceId(1),
                        ciphertext: b"sealed".to_vec(),
                    })
                    .collect(),
            )
            .unwrap()
            .encode()
        };
        let stranger = s
            .apply(message(MessageKind::Encrypted, env(&[2, 3]), "3"))
            .0;
        assert_eq!(code(&stranger), Some(RejectCode::Invalid));
        let garbage = s
            .apply(message(MessageKind::Encrypted, b"\x01\xff".to_vec(), "4"))
            .0;
        assert_eq!(code(&garbage), Some(RejectCode::Invalid));
        let ok = s.apply(message(MessageKind::Encrypted, env(&[2]), "5")).0;
        assert!(matches!(ok, Outcome::Sent { .. }), "{ok:?}");
        let edit = Command::Edit {
            conv: CONV,
            actor: ALICE,
            seq: crate::ids::Seq(2),
            body: b"y".to_vec(),
            window_micros: u64::MAX,
        };
        assert_eq!(code(&s.apply(edit).0), Some(RejectCode::Encrypted));
        let note = Command::NoteKeys {
            conv: CONV,
            user: UserId(3),
            device: DeviceId(1),
            change: KeyChange::Added,
        };
        assert_eq!(code(&s.apply(note).0), Some(RejectCode::NotAMember));
    }
}
