//! After a restore: raising each conversation's counters past what its
//! members' restored inboxes hold.
//!
//! # Why a restored cluster needs this
//!
//! A backup copies a conversation's records (its messages, heads and
//! outbox) in its first phase and users' records (inboxes, each user's
//! view of each conversation) in its second (`ChatApp::backup_phases`), so
//! every delivery the copied outbox counts as done is in the copied
//! inboxes. The reverse does not hold: a message acknowledged between the
//! two phases can be missing from its conversation's copy while its
//! delivery made it into a member's inbox copy. That member's view then
//! records an eseq (and seq) beyond the restored conversation's, and
//! without a repair the restored cluster would number its next events
//! from the lower counter — and the member's shard would skip them as
//! repeats (`Deliver` skips any eseq at or below the mark), losing them
//! from that inbox. [`ChatNode::reconcile_restored`] reads every user's
//! view of every conversation and raises each conversation's newest seq
//! and outbox eseq to the highest any view holds (`Command::RaiseHeads`):
//! the next message and event come after all of them. The messages of the
//! gap stay what they were for the backup: acknowledged while it ran, not
//! in the copy of their conversation (seqs missing from its history, as
//! after an expiry), shown only in the inboxes that got them.
//!
//! A raise is refused while the conversation still has deliveries pending
//! (the restored fan-out worker is finishing what the source had not
//! delivered); the reconcile waits and asks again.

use std::collections::BTreeMap;
use std::time::Duration;

use missive_engine::keys::{ConversationId, Keyspace};
use missive_raft::node::Consistency;

use crate::command::{Command, RejectCode};
use crate::error::{Error, Result};
use crate::ids::{Eseq, Seq};
use crate::node::ChatNode;
use crate::records;

/// Records read per scan call.
const PAGE: usize = 1024;
/// How long a raise waits for a conversation's pending deliveries.
const PENDING_WAIT: Duration = Duration::from_secs(60);
/// How long one write waits out an election.
const WRITE_WAIT: Duration = Duration::from_secs(10);

/// What a reconcile did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Reconciled {
    /// Users' views of conversations read.
    pub views: u64,
    /// Conversations those views name.
    pub conversations: u64,
    /// Conversations whose counters were raised.
    pub raised: u64,
}

impl ChatNode {
    /// Raises every conversation's counters past what any member's view of
    /// it holds (see the module documentation). Idempotent; run it once a
    /// restore's records are all in, before clients write.
    pub async fn reconcile_restored(&self) -> Result<Reconciled> {
        let mut report = Reconciled::default();
        // Per conversation: the newest seq and eseq any view holds.
        let mut need: BTreeMap<ConversationId, (Seq, Eseq)> = BTreeMap::new();
        let slots = self.slots().clone();
        for shard in slots.shards() {
            for (lo, hi) in slots.key_ranges_of(shard, &[Keyspace::User]) {
                let mut start = lo;
                loop {
                    let page = self
                        .scan(shard, Consistency::Linearizable, &start, hi.clone(), PAGE)
                        .await?;
                    for (k, v) in &page {
                        let Some((_, conv)) = records::decode_user_conv_key(k) else {
                            continue;
                        };
                        let uc = records::decode_user_conv(v)?;
                        report.views += 1;
                        let e = need.entry(conv).or_default();
                        e.0 = e.0.max(uc.last_seq);
                        e.1 = e.1.max(uc.eseq);
                    }
                    match page.last() {
                        Some((k, _)) if page.len() == PAGE => {
                            start = k.clone();
                            start.push(0);
                        }
                        _ => break,
                    }
                }
            }
        }
        report.conversations = need.len() as u64;
        for (conv, (seq, eseq)) in need {
            let head = self.head(conv, Consistency::Linearizable).await?;
            let outbox = self.outbox_head(conv, Consistency::Linearizable).await?;
            if seq <= head.seq && eseq <= outbox.last {
                continue;
            }
            let deadline = tokio::time::Instant::now() + PENDING_WAIT;
            loop {
                match self
                    .write(Command::RaiseHeads { conv, seq, eseq }, WRITE_WAIT)
                    .await
                {
                    Ok(_) => break,
                    Err(Error::Rejected {
                        code: RejectCode::Conflict,
                        ..
                    }) if tokio::time::Instant::now() < deadline => {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    Err(e) => return Err(e),
                }
            }
            tracing::info!(
                conv = conv.0,
                seq = seq.0,
                eseq = eseq.0,
                "restored conversation's counters raised"
            );
            report.raised += 1;
        }
        Ok(report)
    }
}
