//! An operator's check of a shard's search index against its messages,
//! and its rebuild (`POST /v1/admin/shards/{shard}/search-index`,
//! `missivectl shard search-index`).
//!
//! The check reads the shard's conversations a page at a time at the
//! shard's leader (`missive_chat::search::check`): for each, the terms of
//! every stored message against its postings. With `repair`, each
//! conversation's differences go back through Raft as `RepairIndex`
//! commands (chunks of `MAX_REPAIR`), which every replica applies from
//! its own copy of the messages — the same derivation as the send's — so
//! the rebuild is replicated and idempotent: running it again finds
//! nothing to do.

use serde::Serialize;

use missive_chat::command::{Command, Outcome, MAX_REPAIR};
use missive_raft::ShardId;

use crate::error::ApiError;
use crate::service::Service;

/// What a check (and repair) of one shard's index found and did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct IndexReport {
    /// The shard.
    pub shard: u32,
    /// Conversations checked.
    pub conversations: u64,
    /// Messages read.
    pub messages: u64,
    /// Postings read.
    pub postings: u64,
    /// Messages with a term whose posting was missing.
    pub missing: u64,
    /// Postings no visible message backed.
    pub stale: u64,
    /// With repair: postings written.
    pub written: u64,
    /// With repair: postings dropped.
    pub dropped: u64,
    /// Up to 20 differences, for a person: `"conv <id> ts <ts>: missing"`,
    /// `"conv <id> ts <ts>: stale \"term\""`.
    pub examples: Vec<String>,
}

/// Differences quoted in a report.
const EXAMPLES: usize = 20;

impl Service {
    /// Checks `shard`'s index (and repairs it if `repair`).
    pub async fn check_index(&self, shard: ShardId, repair: bool) -> Result<IndexReport, ApiError> {
        let mut report = IndexReport {
            shard: shard.0,
            ..IndexReport::default()
        };
        let Some(mut page) = self.node.index_check_start(shard) else {
            return Err(ApiError::invalid(
                "the metadata group holds no messages: name a data shard",
            ));
        };
        loop {
            let checked = self.node.check_index(shard, page.clone()).await?;
            for c in checked.convs {
                report.conversations += 1;
                report.messages += c.messages;
                report.postings += c.postings;
                report.missing += c.missing.len() as u64;
                report.stale += c.stale.len() as u64;
                for ts in c
                    .missing
                    .iter()
                    .take(EXAMPLES - report.examples.len().min(EXAMPLES))
                {
                    report
                        .examples
                        .push(format!("conv {} ts {ts}: missing", c.conv.0));
                }
                for (t, ts) in c
                    .stale
                    .iter()
                    .take(EXAMPLES - report.examples.len().min(EXAMPLES))
                {
                    report
                        .examples
                        .push(format!("conv {} ts {ts}: stale {t:?}", c.conv.0));
                }
                if !repair || (c.missing.is_empty() && c.stale.is_empty()) {
                    continue;
                }
                let mut reindex = c.missing;
                let mut drop = c.stale;
                while !reindex.is_empty() || !drop.is_empty() {
                    let r: Vec<u64> = reindex.drain(..reindex.len().min(MAX_REPAIR)).collect();
                    let d = drop.drain(..drop.len().min(MAX_REPAIR - r.len())).collect();
                    let cmd = Command::RepairIndex {
                        conv: c.conv,
                        reindex: r,
                        drop: d,
                    };
                    match self.node.write(cmd, crate::service::WRITE_WAIT).await? {
                        Outcome::Reindexed { written, dropped } => {
                            report.written += written;
                            report.dropped += dropped;
                        }
                        other => {
                            return Err(ApiError::internal(&format!(
                                "unexpected outcome {other:?}"
                            )))
                        }
                    }
                }
            }
            match checked.next {
                Some(lo) => page.lo = lo,
                None => return Ok(report),
            }
        }
    }
}
