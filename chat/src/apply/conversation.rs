//! `CreateConversation`, `ChangeMembers` and `Configure`: who is in a
//! conversation, who administers it, when each member joined, the system
//! message each membership change writes, and the conversation's
//! settings.

use missive_engine::keys::ConversationId;
use missive_raft::Result;

use super::{reject, sorted_unique, Apply, SystemEvent};
use crate::command::{
    ConversationKind, HistoryVisibility, MessageKind, Outcome, RejectCode, Retention, Settings,
    MAX_RETENTION_DAYS,
};
use crate::ids::{DeviceId, Seq, UserId};
use crate::records::{self, conversation_key, head_key, Conversation, EventKind, Head, Message};

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
        if let Some(existing) = self.conversation(conv)? {
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
            settings: Settings::default(),
            joined: Vec::new(),
            encrypted: false,
            push_previews: false,
        };
        self.rec.put(key, records::encode_conversation(&c)?);
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
        // Membership first: a stranger must not learn the kind.
        let mut c = match self.member_of(conv, actor)? {
            Ok(c) => c,
            Err(refused) => return Ok(refused),
        };
        if c.kind != ConversationKind::Group {
            return Ok(reject(
                RejectCode::Invalid,
                "a direct conversation's members cannot change",
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
        // Who joins now joins after everything so far: with `joined`
        // history they see from the system message that adds them on. A
        // re-added member's earlier join is replaced; a removed one's goes.
        let before: Head = self
            .rec
            .get_as("head", &head_key(conv))?
            .unwrap_or_default();
        c.joined
            .retain(|(u, _)| remove.binary_search(u).is_err() && add.binary_search(u).is_err());
        c.joined.extend(add.iter().map(|u| (*u, before.seq)));
        c.joined.sort_unstable();
        let version = c.version;
        self.rec.put(key, records::encode_conversation(&c)?);
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
        let mut system = Message::new(
            Seq::ZERO,
            actor,
            DeviceId(0),
            String::new(),
            MessageKind::System,
            records::encode(&event)?,
            None,
            None,
        );
        let out = self.append(conv, &mut system, None, stamp, &audience)?;
        Ok(match out {
            Outcome::Appended { ts, seq, .. } => Outcome::MembersChanged { version, ts, seq },
            other => other,
        })
    }

    /// `Configure`: a group's admin (or either member of a direct
    /// conversation) changes its settings; everyone is told.
    pub(super) fn configure(
        &mut self,
        conv: ConversationId,
        actor: UserId,
        history: Option<HistoryVisibility>,
        keep_edits: Option<bool>,
        retention: Option<Retention>,
        stamp: u64,
    ) -> Result<Outcome> {
        let mut c = match self.settable_by(conv, actor, "change its settings")? {
            Ok(c) => c,
            Err(refused) => return Ok(refused),
        };
        if let Some(Retention::Days(d)) = retention {
            if d == 0 || d > MAX_RETENTION_DAYS {
                return Ok(reject(
                    RejectCode::Invalid,
                    format!("retention is 1..={MAX_RETENTION_DAYS} days (or forever)"),
                ));
            }
        }
        let before = c.settings;
        let s = &mut c.settings;
        s.history = history.unwrap_or(s.history);
        s.keep_edits = keep_edits.unwrap_or(s.keep_edits);
        s.retention = retention.unwrap_or(s.retention);
        let settings = c.settings;
        if settings == before {
            return Ok(Outcome::Configured {
                settings,
                changed: false,
            });
        }
        self.rec
            .put(conversation_key(conv), records::encode_conversation(&c)?);
        let event = EventKind::Configured {
            by: actor,
            settings,
        };
        self.emit(conv, event, c.members, stamp)?;
        Ok(Outcome::Configured {
            settings,
            changed: true,
        })
    }
}
