//! `CreateConversation` and `ChangeMembers`: who is in a conversation, who
//! administers it, and the system message each change writes.

use missive_engine::keys::ConversationId;
use missive_raft::Result;

use super::{reject, sorted_unique, Apply, SystemEvent};
use crate::command::{ConversationKind, MessageKind, Outcome, RejectCode};
use crate::ids::{DeviceId, Seq, UserId};
use crate::records::{self, conversation_key, Conversation, EventKind, Message};

impl Apply<'_, '_> {
    #[allow(clippy::too_many_arguments, reason = "the command's fields")]
    pub(super) fn create(
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
        if let Some(existing) = self.rec.get_as::<Conversation>("conversation", &key)? {
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
        if kind == ConversationKind::Direct && !self.blocks(conv)?.by.is_empty() {
            return Ok(reject(
                RejectCode::Blocked,
                "you cannot start a conversation with this user",
            ));
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
        self.rec.put(key, records::encode(&c)?);
        self.emit(
            conv,
            EventKind::Membership {
                version: 1,
                added: c.members.clone(),
                removed: Vec::new(),
            },
            c.members,
            stamp,
        )?;
        Ok(Outcome::Created { created: true })
    }

    #[allow(clippy::too_many_arguments, reason = "the command's fields")]
    pub(super) fn change_members(
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
        let Some(mut c) = self.rec.get_as::<Conversation>("conversation", &key)? else {
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
        // Everyone before and after hears of the change: a removed member
        // learns of their removal, and nothing after it.
        let audience = sorted_unique(c.members.iter().chain(&members).copied().collect());
        c.members = members;
        c.admins = admins;
        c.version += 1;
        if let Some(n) = rename {
            c.name = n.to_string();
        }
        let version = c.version;
        self.rec.put(key, records::encode(&c)?);
        self.emit(
            conv,
            EventKind::Membership {
                version,
                added: add.clone(),
                removed: remove.clone(),
            },
            audience.clone(),
            stamp,
        )?;
        let event = SystemEvent {
            actor,
            added: add,
            removed: remove,
            promoted,
            renamed: rename.map(str::to_string),
        };
        let out = self.append(
            conv,
            Message::new(
                Seq::ZERO,
                actor,
                DeviceId(0),
                String::new(),
                MessageKind::System,
                records::encode(&event)?,
                None,
                None,
            ),
            stamp,
            &audience,
        )?;
        Ok(match out {
            Outcome::Appended { ts, seq, .. } => Outcome::MembersChanged { version, ts, seq },
            other => other,
        })
    }
}
