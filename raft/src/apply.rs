//! Applying commands: a deterministic function of (the shard's state, the
//! batch). Nothing here reads a clock, a random number or anything local to
//! the replica; time comes from the leader's stamp in the batch.
//!
//! One `Apply` accumulates the writes of every entry openraft hands the
//! state machine in one call, reading its own pending writes before the LSM
//! (a later command sees an earlier one's effect), and turns them into one
//! atomic `WriteBatch`. Reads go through the shard's record cache
//! (`record_cache`), which the state machine updates once the batch is in
//! the LSM. It reads only keys that never expire
//! (conversation, head, dedup, receipt records), so the LSM's retention
//! filter — which does use the local clock — cannot make replicas diverge.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use missive_engine::keys::{ConversationId, Timestamp};
use missive_engine::lsm::{Lsm, WriteBatch};

use crate::command::{
    Command, ConversationKind, Delivery, DeviceId, MessageKind, Outcome, RejectCode, Route, UserId,
};
use crate::directory::ClusterMap;
use crate::error::Result;
use crate::outbox_feed::Fresh;
use crate::record_cache::RecordCache;
use crate::records::{
    self, cluster_map_key, conversation_key, dedup_key, device_key, head_key, inbox_key, msg_key,
    outbox_head_key, outbox_key, profile_key, push_key, receipt_key, user_conv_key, user_head_key,
    Conversation, Dedup, Device, EventKind, Head, InboxEvent, Message, OutboxEntry, OutboxHead,
    Profile, PushTarget, Receipt, UserConv, UserHead,
};
use crate::types::ShardId;

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

/// A user's inbox grew by one event: live connections of that user read
/// from their cursor up to `useq` — or take `event` from the notice, which
/// is exactly what was stored under `useq` (applied before the notice is
/// sent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboxNotice {
    /// Whose inbox.
    pub user: UserId,
    /// Its newest useq.
    pub useq: u64,
    /// The event stored under `useq`.
    pub event: std::sync::Arc<InboxEvent>,
}

pub(crate) struct Apply<'a> {
    lsm: &'a Lsm,
    /// The shard's records read before, as stored (its module's essay).
    cache: &'a mut RecordCache,
    /// The group applying: the metadata group runs only metadata commands,
    /// a data shard only data commands.
    shard: ShardId,
    /// Writes so far; `None` deletes.
    pending: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    /// Outbox entries written, for the fan-out worker's feed.
    pub(crate) fresh: Vec<Fresh>,
    /// Inboxes that grew.
    pub(crate) notices: Vec<InboxNotice>,
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
    pub(crate) fn new(lsm: &'a Lsm, cache: &'a mut RecordCache, shard: ShardId) -> Self {
        Apply {
            lsm,
            cache,
            shard,
            pending: BTreeMap::new(),
            fresh: Vec::new(),
            notices: Vec::new(),
        }
    }

    /// The record under `key`: this batch's own write, else the cache, else
    /// the LSM (and then the cache holds it too).
    fn get_as<T: serde::de::DeserializeOwned>(
        &mut self,
        what: &'static str,
        key: &[u8],
    ) -> Result<Option<T>> {
        if let Some(v) = self.pending.get(key) {
            return v.as_deref().map(|v| records::decode(what, v)).transpose();
        }
        if let Some(v) = self.cache.get(key) {
            return records::decode(what, v).map(Some);
        }
        let Some(v) = self.lsm.get(key)? else {
            return Ok(None);
        };
        self.cache.loaded(key, &v);
        records::decode(what, &v).map(Some)
    }

    pub(crate) fn put(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.pending.insert(key, Some(value));
    }

    fn delete(&mut self, key: Vec<u8>) {
        self.pending.insert(key, None);
    }

    fn put_as<T: Serialize>(&mut self, key: Vec<u8>, v: &T) -> Result<()> {
        let bytes = records::encode(v)?;
        self.put(key, bytes);
        Ok(())
    }

    /// The accumulated writes, as one atomic batch.
    pub(crate) fn batch(&self) -> WriteBatch {
        let mut b = WriteBatch::new();
        for (k, v) in &self.pending {
            match v {
                Some(v) => b.put(k, v),
                None => b.delete(k),
            };
        }
        b
    }

    /// Call once [`Apply::batch`]'s batch is in the LSM: the cache takes
    /// the written values.
    pub(crate) fn written(self) {
        for (k, v) in &self.pending {
            self.cache.written(k, v.as_deref());
        }
    }

    /// Queues `event` in the conversation's outbox for `recipients`.
    fn emit(
        &mut self,
        conv: ConversationId,
        event: EventKind,
        recipients: Vec<UserId>,
        at: u64,
    ) -> Result<()> {
        if recipients.is_empty() {
            return Ok(());
        }
        let hkey = outbox_head_key(conv);
        let mut head: OutboxHead = self.get_as("outbox head", &hkey)?.unwrap_or_default();
        head.last += 1;
        let entry = OutboxEntry {
            event,
            recipients,
            at,
        };
        self.put_as(outbox_key(conv, head.last), &entry)?;
        self.put_as(hkey, &head)?;
        self.fresh.push(Fresh {
            conv,
            eseq: head.last,
            entry,
        });
        Ok(())
    }

    /// Runs one command. `Err` only for storage failures (which stop the
    /// state machine); a refused command is `Ok(Outcome::Rejected)`.
    pub(crate) fn run(&mut self, stamp: u64, cmd: &Command) -> Result<Outcome> {
        if (cmd.route() == Route::Directory) != self.shard.is_directory() {
            return Ok(reject(
                RejectCode::Invalid,
                format!("{:?} cannot run on {}", cmd.route(), self.shard),
            ));
        }
        match cmd {
            Command::RegisterNode { .. }
            | Command::ForgetNode { .. }
            | Command::ReportPlacement { .. } => {
                let key = cluster_map_key();
                let mut map: ClusterMap = self.get_as("cluster map", &key)?.unwrap_or_default();
                let before = map.version;
                let out = crate::directory::execute(&mut map, cmd);
                if map.version != before {
                    self.put_as(key, &map)?;
                }
                Ok(out)
            }
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
                let c = match self.member_of(*conv, *sender)? {
                    Ok(c) => c,
                    Err(refused) => return Ok(refused),
                };
                let out = self.append(
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
                    let key = receipt_key(*conv, *sender);
                    let old: Receipt = self.get_as("receipt", &key)?.unwrap_or_default();
                    self.put_as(
                        key,
                        &Receipt {
                            delivered: old.delivered.max(seq),
                            read: old.read.max(seq),
                        },
                    )?;
                }
                Ok(out)
            }
            Command::SetReceipt {
                conv,
                user,
                delivered,
                read,
            } => {
                let c = match self.member_of(*conv, *user)? {
                    Ok(c) => c,
                    Err(refused) => return Ok(refused),
                };
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
                    self.emit(
                        *conv,
                        EventKind::Receipt {
                            user: *user,
                            delivered,
                            read,
                        },
                        c.members,
                        stamp,
                    )?;
                }
                Ok(Outcome::Receipt { delivered, read })
            }
            Command::Deliver { items } => self.deliver(items),
            Command::OutboxDone { done } => {
                for (conv, upto) in done {
                    let hkey = outbox_head_key(*conv);
                    let mut head: OutboxHead =
                        self.get_as("outbox head", &hkey)?.unwrap_or_default();
                    let upto = (*upto).min(head.last);
                    if upto <= head.done {
                        continue;
                    }
                    for eseq in head.done + 1..=upto {
                        self.delete(outbox_key(*conv, eseq));
                    }
                    head.done = upto;
                    self.put_as(hkey, &head)?;
                }
                Ok(Outcome::Done)
            }
            Command::RegisterDevice {
                user,
                device,
                name,
                platform,
            } => {
                let key = device_key(*user, *device);
                let registered_micros = self
                    .get_as::<Device>("device", &key)?
                    .map_or(stamp, |d| d.registered_micros);
                self.put_as(
                    key,
                    &Device {
                        name: name.clone(),
                        platform: platform.clone(),
                        registered_micros,
                    },
                )?;
                Ok(Outcome::Done)
            }
            Command::SetPushToken {
                user,
                device,
                token,
            } => {
                let key = push_key(*user, *device);
                match token {
                    Some(token) => self.put_as(
                        key,
                        &PushTarget {
                            token: token.clone(),
                            set_micros: stamp,
                        },
                    )?,
                    None => self.delete(key),
                }
                Ok(Outcome::Done)
            }
            Command::SetProfile { user, display_name } => {
                self.put_as(
                    profile_key(*user),
                    &Profile {
                        display_name: display_name.clone(),
                    },
                )?;
                Ok(Outcome::Done)
            }
        }
    }

    /// Appends each new item to its user's inbox and updates the user's
    /// view of the conversation. An item at or below the user's applied
    /// eseq for its conversation is a repeat (the fan-out worker resends
    /// after a crash or a leader change) and is skipped; the worker sends
    /// one conversation's items in eseq order, always from the oldest not
    /// yet done, so "above the mark" is also "the next one".
    fn deliver(&mut self, items: &[Delivery]) -> Result<Outcome> {
        let (mut applied, mut skipped) = (0, 0);
        for d in items {
            let ckey = user_conv_key(d.user, d.conv);
            let mut uc: UserConv = self.get_as("user conversation", &ckey)?.unwrap_or_default();
            if d.eseq <= uc.eseq {
                skipped += 1;
                continue;
            }
            uc.eseq = d.eseq;
            match &d.event {
                EventKind::Message {
                    seq, ts, sender, ..
                } => {
                    uc.last_seq = uc.last_seq.max(*seq);
                    uc.last_ts = uc.last_ts.max(*ts);
                    if *sender == d.user {
                        uc.read = uc.read.max(*seq);
                        uc.delivered = uc.delivered.max(*seq);
                    }
                }
                EventKind::Receipt {
                    user,
                    delivered,
                    read,
                } if *user == d.user => {
                    uc.read = uc.read.max(*read);
                    uc.delivered = uc.delivered.max(*delivered);
                }
                EventKind::Receipt { .. } => {}
                EventKind::Membership { added, removed, .. } => {
                    if added.contains(&d.user) {
                        uc.member = true;
                        uc.last_ts = uc.last_ts.max(d.at);
                    }
                    if removed.contains(&d.user) {
                        uc.member = false;
                    }
                }
            }
            self.put_as(ckey, &uc)?;
            let hkey = user_head_key(d.user);
            let mut head: UserHead = self.get_as("user head", &hkey)?.unwrap_or_default();
            head.useq += 1;
            let event = InboxEvent {
                conv: d.conv,
                eseq: d.eseq,
                event: d.event.clone(),
                at: d.at,
            };
            self.put_as(inbox_key(d.user, head.useq), &event)?;
            self.put_as(hkey, &head)?;
            self.notices.push(InboxNotice {
                user: d.user,
                useq: head.useq,
                event: std::sync::Arc::new(event),
            });
            applied += 1;
        }
        Ok(Outcome::Delivered { applied, skipped })
    }

    /// The conversation, if it exists and `user` is a member; else the
    /// rejection to answer with.
    fn member_of(
        &mut self,
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
        self.put(key, records::encode(&c)?);
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
            &audience,
        )?;
        Ok(match out {
            Outcome::Appended { ts, seq, .. } => Outcome::MembersChanged { version, ts, seq },
            other => other,
        })
    }

    /// Stores a message at the conversation's next (ts, seq), unless the
    /// sender already sent this client message id, and queues it for
    /// `recipients`' inboxes.
    fn append(
        &mut self,
        conv: ConversationId,
        mut m: Message,
        stamp: u64,
        recipients: &[UserId],
    ) -> Result<Outcome> {
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
