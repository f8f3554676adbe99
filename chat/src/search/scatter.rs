//! A user's search over every shard holding their conversations: scatter
//! one [`ShardSearch`] per shard, merge the hits newest first.
//!
//! The conversations come from the user's own list (on their shard), but
//! whether the user may read each one is decided on the conversation's
//! shard, from its record, in the same read as the postings: a list that
//! lags (a conversation just left) never lets a hit through.

use std::collections::BTreeMap;
use std::sync::Arc;

use missive_engine::keys::ConversationId;
use missive_raft::node::{Consistency, Node};
use missive_raft::ShardId;

use super::query::{AppAnswer, AppQuery, Cursor, Filters, RawHit, ShardSearch};
use super::tokenize;
use crate::app::ChatApp;
use crate::command::RejectCode;
use crate::error::{Error, Result};
use crate::ids::UserId;
use crate::records;
use crate::records::StoredMessage;

/// The most hits one page holds.
pub const MAX_PAGE: usize = 100;
/// The longest query, bytes.
pub const MAX_QUERY_BYTES: usize = 1024;
/// The most terms one query requires.
pub const MAX_TERMS: usize = 16;

/// What a user searches for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SearchRequest {
    /// The words (the last one a prefix while it is being typed).
    pub text: String,
    /// Only this conversation.
    pub conv: Option<ConversationId>,
    /// The other filters.
    pub filters: Filters,
    /// Where the previous page ended.
    pub after: Option<Cursor>,
    /// The most hits (1..=[`MAX_PAGE`]).
    pub limit: usize,
}

/// One message found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchHit {
    /// Its conversation.
    pub conv: ConversationId,
    /// The message.
    pub message: StoredMessage,
    /// Up to 160 characters of its body around the first match.
    pub snippet: String,
    /// The matches in `snippet`, `[start, end)` in characters.
    pub highlights: Vec<(u32, u32)>,
}

/// A page of hits, newest first.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SearchPage {
    /// The hits.
    pub hits: Vec<SearchHit>,
    /// Pass it back for the next page (None: this was the last).
    pub next: Option<Cursor>,
}

fn invalid(message: impl Into<String>) -> Error {
    Error::Rejected {
        code: RejectCode::Invalid,
        message: message.into(),
    }
}

/// Runs `req` for `user` (see the module docs).
pub(crate) async fn search(
    node: &Arc<Node<ChatApp>>,
    user: UserId,
    req: &SearchRequest,
    consistency: Consistency,
    user_convs: Vec<ConversationId>,
) -> Result<SearchPage> {
    if req.text.len() > MAX_QUERY_BYTES {
        return Err(invalid(format!(
            "a query is at most {MAX_QUERY_BYTES} bytes"
        )));
    }
    if req.limit == 0 || req.limit > MAX_PAGE {
        return Err(invalid(format!("limit must be 1..={MAX_PAGE}")));
    }
    let terms = tokenize::query(&req.text);
    let count = terms.exact.len() + usize::from(terms.prefix.is_some());
    if count == 0 {
        return Err(invalid("a query needs at least one word"));
    }
    if count > MAX_TERMS {
        return Err(invalid(format!("a query has at most {MAX_TERMS} words")));
    }
    let mut by_shard: BTreeMap<ShardId, Vec<ConversationId>> = BTreeMap::new();
    for c in user_convs {
        if req.conv.is_none_or(|only| only == c) {
            by_shard
                .entry(node.slots().shard_of(c))
                .or_default()
                .push(c);
        }
    }
    let mut tasks = tokio::task::JoinSet::new();
    for (shard, convs) in by_shard {
        let q = AppQuery::Search(ShardSearch {
            user,
            convs,
            terms: terms.clone(),
            filters: req.filters.clone(),
            after: req.after,
            limit: req.limit as u32,
        });
        let bytes = records::encode(&q)?;
        let node = Arc::clone(node);
        tasks.spawn(async move { node.query(shard, consistency, bytes).await });
    }
    let mut hits: Vec<RawHit> = Vec::new();
    while let Some(done) = tasks.join_next().await {
        let bytes = done.map_err(|e| {
            Error::Runtime(missive_raft::Error::malformed("search", e.to_string()))
        })??;
        match records::decode("search answer", &bytes)? {
            AppAnswer::Hits(h) => hits.extend(h),
            other => {
                let why = format!("answered {other:?}");
                return Err(missive_raft::Error::malformed("search", why).into());
            }
        }
    }
    hits.sort_by_key(|h| std::cmp::Reverse((h.ts, h.conv)));
    hits.truncate(req.limit);
    // A full page may have more after it; a short one is the last.
    let next = (hits.len() == req.limit)
        .then(|| {
            hits.last().map(|h| Cursor {
                ts: h.ts,
                conv: h.conv,
            })
        })
        .flatten();
    let hits = hits
        .into_iter()
        .map(|h| {
            let message = records::decode_message(&h.value)?;
            let text = String::from_utf8_lossy(&message.body);
            let (snippet, highlights) = super::query::snippet(&text, &terms);
            Ok(SearchHit {
                conv: h.conv,
                message: StoredMessage { ts: h.ts, message },
                snippet,
                highlights,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(SearchPage { hits, next })
}
