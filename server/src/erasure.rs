//! An operator's erasure of a user (`POST /v1/admin/users/{user}/erase`,
//! `missivectl user erase`): their messages' bodies in every conversation
//! they were ever in, their receipts, profile, devices, push targets and
//! blocked-user list — as replicated commands, so every replica removes
//! the same — with a report of what went.
//!
//! Order: conversations first (`EraseMessages`, one span of seqs per
//! command so no Raft entry grows with the conversation), then the user's
//! own shard (`EraseUser`). Every step is idempotent, so an erasure that
//! failed half way (a node restarted, a leader changed) is finished by
//! running it again; the report then counts only what the second run
//! removed.
//!
//! This removes the data from the live state. Older versions of the
//! records stay in tables and log segments until each node's scrub
//! (`POST /v1/admin/scrub`) rewrites them; `missivectl residue` checks
//! a data directory byte by byte. The identity provider that issues the
//! user's tokens is outside Missive: revoke them there first, or the user
//! can write again.

use serde::Serialize;

use missive_chat::command::{Command, Outcome, UserId, MAX_ERASE_SPAN};
use missive_chat::Seq;
use missive_raft::node::Consistency;

use crate::error::ApiError;
use crate::service::Service;

/// What an erasure removed.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ErasureReport {
    /// The user.
    pub user: u64,
    /// Conversations searched (every one the user was ever in).
    pub conversations: u64,
    /// Messages tombstoned.
    pub messages: u64,
    /// Receipts deleted.
    pub receipts: u64,
    /// Profile, device, push-target and blocked-user records deleted.
    pub user_records: u64,
}

impl Service {
    /// Erases `user` (see the module docs).
    pub async fn erase_user(&self, user: UserId) -> Result<ErasureReport, ApiError> {
        let lin = Consistency::Linearizable;
        let mut report = ErasureReport {
            user: user.0,
            ..ErasureReport::default()
        };
        for (conv, _) in self.node.user_conversations(user, lin).await? {
            report.conversations += 1;
            let head = self.node.head(conv, lin).await?;
            let mut after = 0;
            while after < head.seq.0 {
                let upto = (after + MAX_ERASE_SPAN).min(head.seq.0);
                let cmd = Command::EraseMessages {
                    conv,
                    user,
                    after: Seq(after),
                    upto: Seq(upto),
                };
                let (removed, receipts) = self.erase(cmd).await?;
                report.messages += removed;
                report.receipts += receipts;
                after = upto;
            }
        }
        let devices = self.node.devices(user, lin).await?.into_iter().map(|d| d.0);
        let pushed = self.node.push_targets(user, lin).await?.into_iter();
        let keyed = self.node.device_keys(user, lin).await?.into_iter();
        let mut devices: Vec<_> = devices
            .chain(pushed.map(|p| p.0))
            .chain(keyed.map(|k| k.0))
            .collect();
        devices.sort_unstable();
        devices.dedup();
        let blocked = self.node.blocked_users(user, lin).await?;
        let cmd = Command::EraseUser {
            user,
            devices,
            blocked: blocked.into_iter().map(|b| b.0).collect(),
        };
        report.user_records = self.erase(cmd).await?.0;
        Ok(report)
    }

    /// Runs one erasure command: (removed, receipts).
    async fn erase(&self, cmd: Command) -> Result<(u64, u64), ApiError> {
        match self
            .node
            .write(cmd, std::time::Duration::from_secs(5))
            .await?
        {
            Outcome::Erased { removed, receipts } => Ok((removed, receipts)),
            other => Err(ApiError::internal(&format!("unexpected outcome {other:?}"))),
        }
    }
}
