//! The chat domain's apply rules: a deterministic function of (the shard's
//! records, the leader's stamp, the command). Nothing here reads a clock, a
//! random number or anything local to the replica.
//!
//! The runtime hands every command of one state-machine call to
//! [`run`] with the same `Records` (its pending writes over the record
//! cache over the LSM: a later command sees an earlier one's effect; all
//! become one atomic batch) and the same [`Effects`] (outbox entries for
//! the fan-out worker, inbox notices for live connections), which it hands
//! back to `ChatApp::applied` once the batch is durable. The rules read
//! only keys that never expire (conversation, head, dedup, receipt, outbox
//! and user records), so the LSM's retention filter — which does use the
//! local clock — cannot make replicas diverge.
//!
//! One file per command family: `conversation` (create, membership,
//! settings), `message` (append, dedup, mentions, retention), `change`
//! (edit, unsend, react), `pin` (pin, hide), `block`, `receipt`,
//! `deliver` (inbox delivery and the outbox's clean-up), `keys` (the
//! end-to-end encryption key directory, encrypted conversations), `user` (devices,
//! profile, push tokens, tickets, revocations), `erase` (an operator's erasure of a user),
//! `restore` (raising a restored conversation's counters), and `index`
//! (the search postings every message rule keeps in step), `media`
//! (uploads, objects, grants; a media message's reference is written by
//! `message`), `push` (the push outbox's jobs, retries and dead letters).

mod block;
mod change;
mod conversation;
mod deliver;
mod erase;
mod index;
pub mod keys;
pub(crate) use index::indexed_terms;
mod media;
mod message;
mod pin;
mod push;
mod receipt;
mod restore;
mod user;

use serde::{Deserialize, Serialize};

use missive_engine::keys::ConversationId;
use missive_raft::storage::record_source::Records;
use missive_raft::Result;

use crate::command::{Command, ConversationKind, Delivery, NewMessage, Outcome, RejectCode};
use crate::ids::{Useq, UserId};
use crate::outbox_feed::Fresh;
use crate::records::{
    self, conversation_key, outbox_head_key, outbox_key, user_head_key, Conversation, EventKind,
    InboxEvent, OutboxEntry, OutboxHead,
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

/// A user's inbox grew by one event: live connections of that user read
/// from their cursor up to `useq` — or take `event` from the notice, which
/// is exactly what was stored under `useq` (applied before the notice is
/// sent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboxNotice {
    /// Whose inbox.
    pub user: UserId,
    /// Its newest useq.
    pub useq: Useq,
    /// The event stored under `useq`.
    pub event: std::sync::Arc<InboxEvent>,
}

/// What one state-machine call's commands leave for after the batch is
/// durable.
#[derive(Debug, Default)]
pub struct Effects {
    /// Outbox entries written, for the fan-out worker's feed.
    pub(crate) fresh: Vec<Fresh>,
    /// Inboxes that grew.
    pub(crate) notices: Vec<InboxNotice>,
    /// Stored messages whose value changed (edits, unsends, reactions):
    /// what this replica served of them before is stale.
    pub(crate) changed: Vec<(ConversationId, crate::ids::Seq)>,
    /// Inbox events written by local delivery (`emit`), not by `Deliver`.
    pub(crate) local: u64,
}

/// One command's run: the call's records and effects.
struct Apply<'r, 'a> {
    rec: &'r mut Records<'a>,
    fx: &'r mut Effects,
}

/// Why a body given as text is refused.
const NOT_TEXT: &str = "a text body must be UTF-8 (send other bytes as opaque bytes)";

fn reject(code: RejectCode, message: impl Into<String>) -> Outcome {
    Outcome::Rejected {
        code,
        message: message.into(),
    }
}

/// The members who may see message `seq` (with `joined` history, not
/// those who joined after it): who hears of a change to it.
fn seeing(c: &Conversation, seq: crate::ids::Seq) -> Vec<UserId> {
    c.members
        .iter()
        .copied()
        .filter(|u| c.sees(*u, seq))
        .collect()
}

fn sorted_unique(mut v: Vec<UserId>) -> Vec<UserId> {
    v.sort_unstable();
    v.dedup();
    v
}

/// Runs one command of a data shard. `Err` only for storage failures
/// (which stop the state machine); a refused command is
/// `Ok(Outcome::Rejected)`.
pub(crate) fn run(
    records: &mut Records<'_>,
    effects: &mut Effects,
    stamp: u64,
    cmd: &Command,
) -> Result<Outcome> {
    let mut a = Apply {
        rec: records,
        fx: effects,
    };
    match cmd {
        Command::RegisterNode { .. }
        | Command::ForgetNode { .. }
        | Command::ReportPlacement { .. }
        | Command::ReserveSplit { .. }
        | Command::RecordSplit { .. }
        | Command::RecordMerge { .. } => Ok(reject(
            RejectCode::Invalid,
            "a cluster map command cannot run on a data shard",
        )),
        Command::Restore { .. }
        | Command::Checkpoint
        | Command::Split { .. }
        | Command::Freeze { .. }
        | Command::Merge { .. } => Ok(reject(
            RejectCode::Invalid,
            "a restore, a checkpoint or a split is the runtime's, not the chat rules'",
        )),
        Command::RaiseHeads { conv, seq, eseq } => a.raise_heads(*conv, *seq, *eseq, stamp),
        Command::CreateConversation {
            conv,
            kind,
            name,
            creator,
            members,
            max_members,
        } => a.create(*conv, *kind, name, *creator, members, *max_members, stamp),
        Command::ChangeMembers {
            conv,
            actor,
            add,
            remove,
            promote,
            rename,
            max_members,
        } => a.change_members(
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
        } => a
            .send(
                &NewMessage {
                    conv: *conv,
                    sender: *sender,
                    device: *device,
                    client_msg_id: client_msg_id.clone(),
                    kind: *kind,
                    body: body.clone(),
                    expires_at: *expires_at,
                    reply_to: None,
                },
                &[],
                None,
                false,
                stamp,
            )
            .map(|(out, _)| out),
        Command::Post(m) => Ok(a.send(m, &[], None, false, stamp)?.0),
        Command::SetReceipt {
            conv,
            user,
            delivered,
            read,
        } => a.set_receipt(*conv, *user, *delivered, *read, stamp),
        Command::Deliver { items } => a.deliver(items),
        Command::OutboxDone { done } => a.outbox_done(done),
        Command::RegisterDevice {
            user,
            device,
            name,
            platform,
        } => a.register_device(*user, *device, name, platform, stamp),
        Command::SetPushToken {
            user,
            device,
            token,
        } => a.set_push_token(*user, *device, token.as_deref(), stamp),
        Command::SetProfile { user, display_name } => a.set_profile(*user, display_name),
        Command::UseTicket {
            user,
            ticket,
            expires_secs,
        } => a.use_ticket(*user, *ticket, *expires_secs, stamp),
        Command::RevokeSessions { user, scope } => a.revoke_sessions(*user, scope, stamp),
        Command::Edit {
            conv,
            actor,
            seq,
            body,
            window_micros,
        } => a.edit(*conv, *actor, *seq, body, false, *window_micros, stamp),
        Command::EditText {
            conv,
            actor,
            seq,
            body,
            window_micros,
        } => match std::str::from_utf8(body) {
            Ok(_) => a.edit(*conv, *actor, *seq, body, true, *window_micros, stamp),
            Err(_) => Ok(reject(RejectCode::Invalid, NOT_TEXT)),
        },
        Command::Unsend {
            conv,
            actor,
            seq,
            window_micros,
            admins_may,
        } => a.unsend(*conv, *actor, *seq, *window_micros, *admins_may, stamp),
        Command::React {
            conv,
            user,
            seq,
            emoji,
            add,
        } => a.react(*conv, *user, *seq, emoji, *add, stamp),
        Command::Pin {
            conv,
            actor,
            seq,
            pin,
        } => a.pin(*conv, *actor, *seq, *pin, stamp),
        Command::Block {
            pair,
            blocker,
            target,
            block,
        } => a.block(*pair, *blocker, *target, *block, stamp),
        Command::Hide { conv, user, seq } => a.hide(*conv, *user, *seq, stamp),
        Command::Send(m) => a.send_mentioning(m, false, stamp),
        Command::RepairIndex {
            conv,
            reindex,
            drop,
        } => a.repair_index(*conv, reindex, drop),
        Command::SendText(m) => match std::str::from_utf8(&m.message.body) {
            Ok(_) => a.send_mentioning(m, true, stamp),
            Err(_) => Ok(reject(RejectCode::Invalid, NOT_TEXT)),
        },
        Command::Configure {
            conv,
            actor,
            history,
            keep_edits,
            retention,
        } => a.configure(*conv, *actor, *history, *keep_edits, *retention, stamp),
        Command::EraseMessages {
            conv,
            user,
            after,
            upto,
        } => a.erase_messages(*conv, *user, *after, *upto, stamp),
        Command::EraseUser {
            user,
            devices,
            blocked,
        } => a.erase_user(*user, devices, blocked),
        Command::CreateUpload {
            upload,
            owner,
            length,
            mime,
            name,
        } => a.create_upload(*upload, *owner, *length, mime, name, stamp),
        Command::AppendUpload {
            upload,
            owner,
            offset,
            bytes,
        } => a.append_upload(*upload, *owner, *offset, bytes),
        Command::FinishUpload {
            upload,
            owner,
            hash,
            keep,
        } => a.finish_upload(*upload, *owner, *hash, *keep),
        Command::StoreObject {
            hash,
            upload,
            size,
            mime,
            image,
            thumbs,
            owner,
        } => a.store_object(hash, *upload, *size, mime, image, thumbs, *owner, stamp),
        Command::GrantMedia { user, hash, grant } => a.grant_media(*user, hash, grant),
        Command::TouchObject { hash } => a.touch_object(hash, stamp),
        Command::DeleteObject { hash, unused_since } => a.delete_object(hash, *unused_since),
        Command::DropUpload { upload } => a.drop_upload(*upload),
        Command::DropReference { conv, hash, seq } => {
            a.rec
                .delete(crate::media::records::reference_key(*conv, hash, *seq));
            Ok(Outcome::Granted)
        }
        Command::RevokeGrant { user, hash } => a.revoke_grant(*user, hash),
        Command::PublishKeys {
            user,
            device,
            identity,
            signed,
            one_time,
        } => a.publish_keys(*user, *device, identity, signed, one_time, stamp),
        Command::ClaimKeys { user, devices } => a.claim_keys(*user, devices, stamp),
        Command::RemoveKeys { user, device } => a.remove_keys(*user, *device),
        Command::Encrypt { conv, actor } => a.encrypt(*conv, *actor, stamp),
        Command::NoteKeys {
            conv,
            user,
            device,
            change,
        } => a.note_keys(*conv, *user, *device, *change, stamp),
        Command::PushDone { jobs } => a.push_done(jobs),
        Command::PushRetry {
            user,
            useq,
            devices,
            attempts,
            next_micros,
        } => a.push_retry(*user, *useq, devices, *attempts, *next_micros),
        Command::PushDead { user, useq, reason } => a.push_dead(*user, *useq, reason, stamp),
        Command::PushReplay { user, useq } => a.push_replay(*user, *useq, stamp),
        Command::SetPushPreviews { conv, actor, on } => a.set_push_previews(*conv, *actor, *on),
    }
}

impl Apply<'_, '_> {
    /// Gives `event` the conversation's next eseq and sends it to
    /// `recipients`: into the inboxes of those whose data is on this
    /// shard at once, in this batch, when nothing of the conversation is
    /// waiting in its outbox; through the outbox (the fan-out worker,
    /// `crate::fanout`) for the others — and for everyone while earlier
    /// events still wait there, so no recipient gets an event before an
    /// earlier one (the fan-out essay's "local delivery").
    pub(super) fn emit(
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
        let mut head: OutboxHead = self.rec.get_as("outbox head", &hkey)?.unwrap_or_default();
        let drained = head.done == head.last;
        head.last = head.last.next();
        let (local, remote): (Vec<UserId>, Vec<UserId>) = if drained {
            recipients
                .into_iter()
                .partition(|u| self.rec.owns(&user_head_key(*u)))
        } else {
            (Vec::new(), recipients)
        };
        for user in local {
            let delivered = self.deliver_one(&Delivery {
                user,
                conv,
                eseq: head.last,
                event: event.clone(),
                at,
            })?;
            self.fx.local += u64::from(delivered);
        }
        if remote.is_empty() {
            // Nothing to fan out: the event is done where it happened,
            // and the outbox stays drained for the next one.
            head.done = head.last;
            self.rec.put_as(hkey, &head)?;
            return Ok(());
        }
        let entry = OutboxEntry {
            event,
            recipients: remote,
            at,
        };
        self.rec.put_as(outbox_key(conv, head.last), &entry)?;
        self.rec.put_as(hkey, &head)?;
        self.fx.fresh.push(Fresh {
            conv,
            eseq: head.last,
            entry,
        });
        Ok(())
    }

    /// The conversation's record, if it exists.
    pub(super) fn conversation(&mut self, conv: ConversationId) -> Result<Option<Conversation>> {
        self.rec
            .get(&conversation_key(conv))?
            .map(|b| records::decode_conversation(&b))
            .transpose()
    }

    /// The conversation, if it exists and `user` is a member; else the
    /// rejection to answer with.
    pub(super) fn member_of(
        &mut self,
        conv: ConversationId,
        user: UserId,
    ) -> Result<std::result::Result<Conversation, Outcome>> {
        let Some(c) = self.conversation(conv)? else {
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

    /// `conv` if `actor` may change its settings: a group's admin, or
    /// either member of a direct conversation; otherwise the refusal
    /// (`forbidden` saying only a group's admins may `what`).
    pub(super) fn settable_by(
        &mut self,
        conv: ConversationId,
        actor: UserId,
        what: &str,
    ) -> Result<std::result::Result<Conversation, Outcome>> {
        let c = match self.member_of(conv, actor)? {
            Ok(c) => c,
            Err(refused) => return Ok(Err(refused)),
        };
        if c.kind == ConversationKind::Group && !c.is_admin(actor) {
            return Ok(Err(reject(
                RejectCode::Forbidden,
                format!("only a group's admins may {what}"),
            )));
        }
        Ok(Ok(c))
    }
}

#[cfg(test)]
mod tests;
