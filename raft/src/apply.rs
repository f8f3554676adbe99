//! Applying commands: a deterministic function of (the shard's state, the
//! batch). Nothing here reads a clock, a random number or anything local to
//! the replica; time comes from the leader's stamp in the batch.
//!
//! One `Apply` accumulates the writes of every entry openraft hands the
//! state machine in one call, reading its own pending writes before the LSM
//! (a later command sees an earlier one's effect), and turns them into one
//! atomic `WriteBatch`. It reads only keys that never expire
//! (conversation, head, dedup, receipt records), so the LSM's retention
//! filter — which does use the local clock — cannot make replicas diverge.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use missive_engine::keys::{ConversationId, Timestamp};
use missive_engine::lsm::{Lsm, WriteBatch};

use crate::command::{
    Command, ConversationKind, DeviceId, MessageKind, Outcome, RejectCode, UserId,
};
use crate::error::Result;
use crate::records::{
    self, conversation_key, dedup_key, head_key, msg_key, receipt_key, Conversation, Dedup, Head,
    Message, Receipt,
};

/// The body of a `System` message written by a membership change
/// (`[version u8 = 1][postcard(SystemEvent)]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SystemEvent {
    /// Who made the change.
    pub actor: UserId,
    /// Members added.
    pub added: Vec<UserId>,
    /// Members removed (a member removing only themself left).
    pub removed: Vec<UserId>,
    /// Members made admins.
    pub promoted: Vec<UserId>,
    /// The new name, if renamed.
    pub renamed: Option<String>,
}

pub(crate) struct Apply<'a> {
    lsm: &'a Lsm,
    pending: BTreeMap<Vec<u8>, Vec<u8>>,
}

fn reject(code: RejectCode, message: impl Into<String>) -> Outcome {
    Outcome::Rejected {
        code,
        message: message.into(),
    }
}

fn sorted_unique(mut v: Vec<UserId>) -> Vec<UserId> {
    v.sort_unstable();
    v.dedup();
    v
}

impl<'a> Apply<'a> {
    pub(crate) fn new(lsm: &'a Lsm) -> Self {
        Apply {
            lsm,
            pending: BTreeMap::new(),
        }
    }

    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        if let Some(v) = self.pending.get(key) {
            return Ok(Some(v.clone()));
        }
        Ok(self.lsm.get(key)?)
    }

    fn get_as<T: serde::de::DeserializeOwned>(
        &self,
        what: &'static str,
        key: &[u8],
    ) -> Result<Option<T>> {
        self.get(key)?
            .map(|v| records::decode(what, &v))
            .transpose()
    }

    pub(crate) fn put(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.pending.insert(key, value);
    }

    /// The accumulated writes, as one atomic batch.
    pub(crate) fn into_batch(self) -> WriteBatch {
        let mut b = WriteBatch::new();
        for (k, v) in &self.pending {
            b.put(k, v);
        }
        b
    }

    /// Runs one command. `Err` only for storage failures (which stop the
    /// state machine); a refused command is `Ok(Outcome::Rejected)`.
    pub(crate) fn run(&mut self, stamp: u64, cmd: &Command) -> Result<Outcome> {
        match cmd {
            Command::CreateConversation {
                conv,
                kind,
                name,
                creator,
                members,
                max_members,
            } => self.create(*conv, *kind, name, *creator, members, *max_members, stamp),
            Command::ChangeMembers {
                conv,
                actor,
                add,
                remove,
                promote,
                rename,
                max_members,
            } => self.change_members(
                *conv,
                *actor,
                add,
                remove,
                promote,
                rename.as_deref(),
                *max_members,
                stamp,
            ),
            Command::AppendMessage {
                conv,
                sender,
                device,
                client_msg_id,
                kind,
                body,
                expires_at,
            } => {
                if let Err(refused) = self.member_of(*conv, *sender)? {
                    return Ok(refused);
                }
                self.append(
                    *conv,
                    Message {
                        seq: 0,
                        sender: *sender,
                        device: *device,
                        client_msg_id: client_msg_id.clone(),
                        kind: *kind,
                        body: body.clone(),
                        expires_at: *expires_at,
                    },
                    stamp,
                )
            }
            Command::SetReceipt {
                conv,
                user,
                delivered,
                read,
            } => {
                if let Err(refused) = self.member_of(*conv, *user)? {
                    return Ok(refused);
                }
                let head: Head = self.get_as("head", &head_key(*conv))?.unwrap_or_default();
                let key = receipt_key(*conv, *user);
                let old: Receipt = self.get_as("receipt", &key)?.unwrap_or_default();
                // Watermarks only rise, never past the newest message; read
                // implies delivered.
                let read = old.read.max(read.unwrap_or(0)).min(head.seq);
                let delivered = old
                    .delivered
                    .max(delivered.unwrap_or(0))
                    .max(read)
                    .min(head.seq);
                let new = Receipt { delivered, read };
                if new != old {
                    self.put(key, records::encode(&new)?);
                }
                Ok(Outcome::Receipt { delivered, read })
            }
        }
    }

    /// The conversation, if it exists and `user` is a member; else the
    /// rejection to answer with.
    fn member_of(
        &self,
        conv: ConversationId,
        user: UserId,
    ) -> Result<std::result::Result<Conversation, Outcome>> {
        let Some(c) = self.get_as::<Conversation>("conversation", &conversation_key(conv))? else {
            return Ok(Err(reject(
                RejectCode::NoSuchConversation,
                format!("conversation {} does not exist", conv.0),
            )));
        };
        if !c.is_member(user) {
            return Ok(Err(reject(
                RejectCode::NotAMember,
                format!("user {} is not a member of conversation {}", user.0, conv.0),
            )));
        }
        Ok(Ok(c))
    }

    #[allow(clippy::too_many_arguments, reason = "the command's fields")]
    fn create(
        &mut self,
        conv: ConversationId,
        kind: ConversationKind,
        name: &str,
        creator: UserId,
        members: &[UserId],
        max_members: u32,
        stamp: u64,
    ) -> Result<Outcome> {
        let mut members = members.to_vec();
        members.push(creator);
        let members = sorted_unique(members);
        match kind {
            ConversationKind::Direct if members.len() != 2 => {
                return Ok(reject(
                    RejectCode::Invalid,
                    format!(
                        "a direct conversation has exactly 2 members, not {}",
                        members.len()
                    ),
                ));
            }
            _ if members.len() > max_members as usize => {
                return Ok(reject(
                    RejectCode::Invalid,
                    format!(
                        "{} members exceed the limit of {max_members}",
                        members.len()
                    ),
                ));
            }
            _ => {}
        }
        let key = conversation_key(conv);
        if let Some(existing) = self.get_as::<Conversation>("conversation", &key)? {
            let same = existing.kind == kind
                && (kind == ConversationKind::Group || existing.members == members);
            return Ok(if same {
                Outcome::Created { created: false }
            } else {
                reject(
                    RejectCode::Conflict,
                    format!("conversation {} exists with other settings", conv.0),
                )
            });
        }
        let c = Conversation {
            kind,
            name: name.to_string(),
            admins: if kind == ConversationKind::Group {
                vec![creator]
            } else {
                Vec::new()
            },
            members,
            version: 1,
            created_micros: stamp,
        };
        self.put(key, records::encode(&c)?);
        Ok(Outcome::Created { created: true })
    }

    #[allow(clippy::too_many_arguments, reason = "the command's fields")]
    fn change_members(
        &mut self,
        conv: ConversationId,
        actor: UserId,
        add: &[UserId],
        remove: &[UserId],
        promote: &[UserId],
        rename: Option<&str>,
        max_members: u32,
        stamp: u64,
    ) -> Result<Outcome> {
        let key = conversation_key(conv);
        let Some(mut c) = self.get_as::<Conversation>("conversation", &key)? else {
            return Ok(reject(
                RejectCode::NoSuchConversation,
                format!("conversation {} does not exist", conv.0),
            ));
        };
        if c.kind != ConversationKind::Group {
            return Ok(reject(
                RejectCode::Invalid,
                "a direct conversation's members cannot change",
            ));
        }
        if !c.is_member(actor) {
            return Ok(reject(
                RejectCode::NotAMember,
                format!(
                    "user {} is not a member of conversation {}",
                    actor.0, conv.0
                ),
            ));
        }
        let leaving = add.is_empty() && promote.is_empty() && rename.is_none() && remove == [actor];
        if !leaving && !c.is_admin(actor) {
            return Ok(reject(
                RejectCode::Forbidden,
                format!("only an admin of conversation {} can change it", conv.0),
            ));
        }
        let add = sorted_unique(add.iter().copied().filter(|u| !c.is_member(*u)).collect());
        let remove = sorted_unique(remove.iter().copied().filter(|u| c.is_member(*u)).collect());
        let mut members: Vec<UserId> = c
            .members
            .iter()
            .copied()
            .chain(add.iter().copied())
            .filter(|u| remove.binary_search(u).is_err())
            .collect();
        members = sorted_unique(members);
        if members.len() > max_members as usize {
            return Ok(reject(
                RejectCode::Invalid,
                format!(
                    "{} members exceed the limit of {max_members}",
                    members.len()
                ),
            ));
        }
        let promoted: Vec<UserId> = sorted_unique(
            promote
                .iter()
                .copied()
                .filter(|u| members.binary_search(u).is_ok() && !c.is_admin(*u))
                .collect(),
        );
        let mut admins: Vec<UserId> = c
            .admins
            .iter()
            .chain(&promoted)
            .copied()
            .filter(|u| members.binary_search(u).is_ok())
            .collect();
        admins = sorted_unique(admins);
        // A group never loses its last admin while it has members: the
        // lowest id left is promoted (deterministic on every replica).
        if admins.is_empty() {
            if let Some(first) = members.first() {
                admins.push(*first);
            }
        }
        c.members = members;
        c.admins = admins;
        c.version += 1;
        if let Some(n) = rename {
            c.name = n.to_string();
        }
        let version = c.version;
        self.put(key, records::encode(&c)?);
        let event = SystemEvent {
            actor,
            added: add,
            removed: remove,
            promoted,
            renamed: rename.map(str::to_string),
        };
        let out = self.append(
            conv,
            Message {
                seq: 0,
                sender: actor,
                device: DeviceId(0),
                client_msg_id: String::new(),
                kind: MessageKind::System,
                body: records::encode(&event)?,
                expires_at: None,
            },
            stamp,
        )?;
        Ok(match out {
            Outcome::Appended { ts, seq, .. } => Outcome::MembersChanged { version, ts, seq },
            other => other,
        })
    }

    /// Stores a message at the conversation's next (ts, seq), unless the
    /// sender already sent this client message id.
    fn append(&mut self, conv: ConversationId, mut m: Message, stamp: u64) -> Result<Outcome> {
        let dkey =
            (!m.client_msg_id.is_empty()).then(|| dedup_key(conv, m.sender, &m.client_msg_id));
        if let Some(k) = &dkey {
            if let Some(d) = self.get_as::<Dedup>("dedup", k)? {
                return Ok(Outcome::Appended {
                    ts: d.ts,
                    seq: d.seq,
                    duplicate: true,
                });
            }
        }
        let hkey = head_key(conv);
        let head: Head = self.get_as("head", &hkey)?.unwrap_or_default();
        let prev = (head.seq > 0).then_some(Timestamp(head.ts));
        let ts = Timestamp::next_after(prev, Timestamp(stamp)).0;
        let seq = head.seq + 1;
        m.seq = seq;
        self.put(msg_key(conv, ts), records::encode(&m)?);
        self.put(hkey, records::encode(&Head { ts, seq })?);
        if let Some(k) = dkey {
            self.put(k, records::encode(&Dedup { ts, seq })?);
        }
        Ok(Outcome::Appended {
            ts,
            seq,
            duplicate: false,
        })
    }
}
