//! Running a search on one shard (the read path): the request a node
//! scatters to each shard holding some of the user's conversations, its
//! execution against that shard's LSM, and the highlights of a hit.
//!
//! ```text
//!  per conversation of the request (its record read first: is the user
//!  a member now? from which seq may they see?)
//!    the open bucket (seqs the head says are not sealed yet): its
//!      messages, newest first, below the cursor ─► judged one by one
//!    then the sealed buckets, newest first, from the bucket of the last
//!    seq below the cursor (a bisection of the seq index):
//!      driver postings ─► (bucket, bits) (the longest exact term's range;
//!        with only a prefix, the union of every term's under it)
//!      ─► AND the other exact terms' postings of that bucket (point reads)
//!      ─► each set bit's seq ─► seq index (ts, unsent?) ─► the message
//!    judged: visible to the user? not hidden for them? filters? its
//!    tokens hold every term? ─► a hit
//!  the conversations' hits merged, newest first, `limit` of them
//! ```
//!
//! The judgement re-reads the terms from the message itself, so a hit is
//! never a posting the message no longer backs (an edit between the
//! posting read and the message read, a stale replica), and the prefix
//! term is checked there when an exact term drove the scan. Seqs and ts
//! grow together in a conversation, so the open bucket's hits all come
//! before the sealed buckets'.

use serde::{Deserialize, Serialize};

use missive_engine::keys::{ConversationId, Timestamp};
use missive_engine::lsm::{Direction, Lsm};
use missive_raft::Result;

use super::postings::{
    self, bucket_of, end_of, posting_key, term_postings, term_prefix, Posting, BUCKET,
};
use super::tokenize::{self, QueryTerms};
use crate::command::MessageKind;
use crate::ids::{Seq, UserId};
use crate::records::{
    self, conversation_key, head_key, hidden_key, msg_key, seq_key, Head, Message,
};

/// Postings read per scan of a driver term.
const SCAN_CHUNK: usize = 256;

/// Which messages a search keeps, by what they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum KindFilter {
    /// Text messages (not replies).
    Text,
    /// Media messages.
    Media,
    /// Replies.
    Reply,
    /// Messages holding a link (`http://`, `https://` or `www.`).
    Link,
}

impl KindFilter {
    fn keeps(self, m: &Message) -> bool {
        match self {
            KindFilter::Text => m.kind == MessageKind::Text,
            KindFilter::Media => m.kind == MessageKind::Media,
            KindFilter::Reply => m.kind == MessageKind::Reply || m.reply_to.is_some(),
            KindFilter::Link => has_link(&m.body),
        }
    }
}

/// Whether a body holds something a client would show as a link.
fn has_link(body: &[u8]) -> bool {
    let lower = body.to_ascii_lowercase();
    [&b"http://"[..], b"https://", b"www."]
        .iter()
        .any(|p| lower.windows(p.len()).any(|w| w == *p))
}

/// Where a page of hits ended: hits are ordered by (ts, conversation),
/// newest first; the next page starts strictly after this one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    /// The last hit's message ts (µs).
    pub ts: u64,
    /// The last hit's conversation.
    pub conv: ConversationId,
}

impl Cursor {
    /// Whether a hit at (`ts`, `conv`) comes after the cursor.
    fn admits(&self, ts: u64, conv: ConversationId) -> bool {
        ts < self.ts || (ts == self.ts && conv < self.conv)
    }

    /// The cursor as clients carry it: `<ts>.<conv>` in decimal.
    pub fn encode(&self) -> String {
        format!("{}.{}", self.ts, self.conv.0)
    }

    /// Parses what [`Cursor::encode`] wrote.
    pub fn parse(s: &str) -> Option<Cursor> {
        let (ts, conv) = s.split_once('.')?;
        Some(Cursor {
            ts: ts.parse().ok()?,
            conv: ConversationId(conv.parse().ok()?),
        })
    }
}

/// Narrows a search beyond its words.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Filters {
    /// Only messages from this sender.
    pub sender: Option<UserId>,
    /// Only messages sent at or after this ts (µs).
    pub since: Option<u64>,
    /// Only messages sent before this ts (µs).
    pub until: Option<u64>,
    /// Only messages of this kind.
    pub kind: Option<KindFilter>,
}

/// One shard's part of a search, as sent to a replica of it
/// (`[1][postcard(ShardSearch)]` inside the runtime's `ReadOp::App`,
/// wrapped in [`AppQuery`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardSearch {
    /// Who searches: only conversations they are a member of now, and
    /// only the messages they may see, are searched.
    pub user: UserId,
    /// The conversations of this shard to search.
    pub convs: Vec<ConversationId>,
    /// The query's terms.
    pub terms: QueryTerms,
    /// The filters.
    pub filters: Filters,
    /// Only hits after this (the previous page's end).
    pub after: Option<Cursor>,
    /// The most hits to answer.
    pub limit: u32,
}

/// A hit as a shard answers it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RawHit {
    /// The conversation.
    pub conv: ConversationId,
    /// The message's ts.
    pub ts: u64,
    /// The stored message value.
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
}

/// The chat domain's own reads (`ReadOp::App`), `[1][postcard]`.
/// Append-only enum.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AppQuery {
    /// A search of some of a shard's conversations.
    Search(ShardSearch),
    /// A page of the index check (`check`).
    CheckIndex(super::check::CheckIndex),
}

/// Answers to [`AppQuery`], `[1][postcard]`. Append-only enum.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AppAnswer {
    /// To `Search`: hits, newest first.
    Hits(Vec<RawHit>),
    /// To `CheckIndex`.
    IndexChecked(super::check::IndexCheck),
}

/// Answers `q` from `lsm` (a replica brought to the read's consistency).
pub fn answer(lsm: &Lsm, q: &AppQuery) -> Result<AppAnswer> {
    match q {
        AppQuery::Search(s) => Ok(AppAnswer::Hits(search(lsm, s)?)),
        AppQuery::CheckIndex(c) => Ok(AppAnswer::IndexChecked(super::check::check(lsm, c)?)),
    }
}

/// One shard's hits for `q`, newest first.
pub fn search(lsm: &Lsm, q: &ShardSearch) -> Result<Vec<RawHit>> {
    let limit = q.limit as usize;
    let mut hits = Vec::new();
    if limit == 0 || (q.terms.exact.is_empty() && q.terms.prefix.is_none()) {
        return Ok(hits);
    }
    for &conv in &q.convs {
        hits.extend(conversation(lsm, q, conv, limit)?);
    }
    hits.retain(|h| q.after.is_none_or(|c| c.admits(h.ts, h.conv)));
    hits.sort_by_key(|h| std::cmp::Reverse((h.ts, h.conv)));
    hits.truncate(limit);
    Ok(hits)
}

/// Up to `limit` hits of `q` in one conversation, newest first.
fn conversation(
    lsm: &Lsm,
    q: &ShardSearch,
    conv: ConversationId,
    limit: usize,
) -> Result<Vec<RawHit>> {
    let Some(c) = lsm.get(&conversation_key(conv))? else {
        return Ok(Vec::new());
    };
    let c = records::decode_conversation(&c)?;
    if !c.is_member(q.user) {
        return Ok(Vec::new());
    }
    // Candidates lie in [since, below): below the page's cursor and the
    // `until` filter.
    let mut below = q.filters.until.unwrap_or(u64::MAX);
    if let Some(cur) = q.after {
        let bound = if conv < cur.conv {
            cur.ts.saturating_add(1)
        } else {
            cur.ts
        };
        below = below.min(bound);
    }
    let since = q.filters.since.unwrap_or(0);
    if below <= since {
        return Ok(Vec::new());
    }
    let head: Head = match lsm.get(&head_key(conv))? {
        Some(v) => records::decode("head", &v)?,
        None => Head::default(),
    };
    let mut scan = Scan {
        lsm,
        q,
        conv,
        hidden_through: c.hidden_through(q.user),
        below,
        since,
        limit,
        hits: Vec::new(),
    };
    let open = postings::open_from(head.seq);
    if scan.open_bucket(open, head.seq)? && open > Seq::ZERO {
        scan.sealed_buckets(Seq(open.0 - 1))?;
    }
    Ok(scan.hits)
}

/// One conversation's search, newest first: its open bucket's messages,
/// then its sealed buckets' postings.
struct Scan<'a> {
    lsm: &'a Lsm,
    q: &'a ShardSearch,
    conv: ConversationId,
    /// The user sees only seqs above it (`joined` history).
    hidden_through: Seq,
    /// Candidates' ts lie in `[since, below)`.
    below: u64,
    since: u64,
    limit: usize,
    hits: Vec<RawHit>,
}

impl Scan<'_> {
    /// Reads the open bucket's messages (seqs `open..=newest`) below the
    /// cursor, newest first; whether the search goes on to older ones.
    fn open_bucket(&mut self, open: Seq, newest: Seq) -> Result<bool> {
        // No more messages than the bucket has seqs: a page never reaches
        // far into the sealed ones.
        let chunk = (newest.0 + 1).saturating_sub(open.0).min(OPEN_CHUNK as u64) as usize;
        if chunk == 0 {
            return Ok(true);
        }
        let mut at = self.below;
        loop {
            let page = self.lsm.before(self.conv, Timestamp(at), chunk)?;
            for sm in &page {
                let m = records::decode_message(&sm.value)?;
                if m.seq < open {
                    return Ok(true);
                }
                if sm.ts.0 < self.since {
                    return Ok(false);
                }
                if !self.judge(sm.ts.0, &m, &sm.value)? {
                    return Ok(false);
                }
            }
            match page.last() {
                Some(sm) if page.len() == chunk => at = sm.ts.0,
                _ => return Ok(true),
            }
        }
    }

    /// Reads the sealed buckets' postings from the bucket of `last` (the
    /// newest sealed seq) down, each candidate message checked.
    fn sealed_buckets(&mut self, last: Seq) -> Result<()> {
        let (lsm, conv) = (self.lsm, self.conv);
        let top = self.last_seq_below(last)?;
        if top == Seq::ZERO {
            return Ok(());
        }
        let driver = self.q.terms.exact.iter().max_by_key(|t| t.len());
        let mut streams = match driver {
            Some(d) => vec![TermStream::new(conv, d.as_bytes(), bucket_of(top))],
            // Only a prefix: every term under it, merged bucket by bucket.
            None => {
                let prefix = self.q.terms.prefix.as_deref().unwrap_or_default();
                terms_under(lsm, conv, prefix)?
                    .iter()
                    .map(|t| TermStream::new(conv, t, bucket_of(top)))
                    .collect()
            }
        };
        while let Some((bucket, mut bits)) = next_bucket(lsm, &mut streams)? {
            if bucket == bucket_of(top) {
                // Seqs above `top` are at or past the cursor.
                bits &= u128::MAX >> (127 - (top.0 & (BUCKET - 1)));
            }
            for t in &self.q.terms.exact {
                if bits == 0 {
                    break;
                }
                if Some(t) != driver {
                    bits &= match lsm.get(&posting_key(conv, t.as_bytes(), bucket))? {
                        Some(v) => postings::decode(&v)?.bits,
                        None => 0,
                    };
                }
            }
            let found = Posting {
                bits,
                expires_at: None,
            };
            for seq in found.seqs(bucket) {
                let Some(ix) = indexed(lsm, conv, seq)? else {
                    continue;
                };
                if ix.ts >= self.below || ix.unsent || ix.system {
                    continue;
                }
                if ix.ts < self.since {
                    return Ok(());
                }
                let Some(value) = lsm.get(&msg_key(conv, ix.ts))? else {
                    continue;
                };
                let m = records::decode_message(&value)?;
                if !self.judge(ix.ts, &m, &value)? {
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    /// The newest seq at or below `last` stored before the cursor
    /// (`below`), found by bisecting the seq index (ts grows with seq);
    /// `last` itself when there is no cursor or a seq has no index entry
    /// (messages stored before the index existed: candidates are then
    /// checked one by one).
    fn last_seq_below(&self, last: Seq) -> Result<Seq> {
        if self.below == u64::MAX {
            return Ok(last);
        }
        let (mut lo, mut hi) = (0u64, last.0);
        while lo < hi {
            let mid = lo + (hi - lo).div_ceil(2);
            match indexed(self.lsm, self.conv, Seq(mid))? {
                Some(ix) if ix.ts < self.below => lo = mid,
                Some(_) => hi = mid - 1,
                None => return Ok(last),
            }
        }
        Ok(Seq(lo))
    }

    /// Keeps the message `m` stored at `ts` (its stored value `value`) if
    /// it matches and the user may see it; whether the page wants more.
    fn judge(&mut self, ts: u64, m: &Message, value: &[u8]) -> Result<bool> {
        if let Some(h) = candidate(
            self.lsm,
            self.q,
            self.conv,
            ts,
            m,
            value,
            self.hidden_through,
        )? {
            self.hits.push(h);
        }
        Ok(self.hits.len() < self.limit)
    }
}

/// The seq index entry of `seq` in `conv`.
fn indexed(lsm: &Lsm, conv: ConversationId, seq: Seq) -> Result<Option<records::Indexed>> {
    lsm.get(&seq_key(conv, seq))?
        .map(|v| records::decode_indexed(&v))
        .transpose()
}

/// Messages of the open bucket read per scan.
const OPEN_CHUNK: usize = 64;

/// The distinct terms of `conv`'s postings that start with `prefix`, in
/// order: one seek per term (after a term's postings, the next term starts
/// past `term 0x00 …`, that is at `term 0x01`).
fn terms_under(lsm: &Lsm, conv: ConversationId, prefix: &str) -> Result<Vec<Vec<u8>>> {
    let lo = term_prefix(conv, prefix);
    let hi = end_of(&lo);
    let base = postings::conversation_postings(conv).len();
    let mut at = lo;
    let mut terms = Vec::new();
    while let Some((k, _)) = lsm
        .scan(&at, Some(&hi), Direction::Forward, 1)?
        .into_iter()
        .next()
    {
        let Some((term, _)) = postings::decode_key(&k) else {
            break;
        };
        terms.push(term.to_vec());
        at = k[..base + term.len()].to_vec();
        at.push(1);
    }
    Ok(terms)
}

/// One term's postings in a conversation, read newest bucket first in
/// chunks.
struct TermStream {
    /// Where the next chunk starts.
    lo: Vec<u8>,
    /// The end of the term's postings.
    hi: Vec<u8>,
    /// Read, not yet taken (newest first): (bucket, bits).
    buf: std::collections::VecDeque<(u64, u128)>,
    /// The range is read to its end.
    done: bool,
}

impl TermStream {
    /// The postings of `term` (UTF-8 bytes) in `conv` from bucket `from`
    /// down.
    fn new(conv: ConversationId, term: &[u8], from: u64) -> TermStream {
        TermStream {
            lo: posting_key(conv, term, from),
            hi: end_of(&term_postings(conv, term)),
            buf: Default::default(),
            done: false,
        }
    }

    /// The newest bucket not yet taken, reading a chunk if needed.
    fn peek(&mut self, lsm: &Lsm) -> Result<Option<(u64, u128)>> {
        if self.buf.is_empty() && !self.done {
            let chunk = lsm.scan(&self.lo, Some(&self.hi), Direction::Forward, SCAN_CHUNK)?;
            self.done = chunk.len() < SCAN_CHUNK;
            if let Some((k, _)) = chunk.last() {
                self.lo = k.clone();
                self.lo.push(0);
            }
            for (k, v) in &chunk {
                if let Some((_, bucket)) = postings::decode_key(k) {
                    self.buf.push_back((bucket, postings::decode(v)?.bits));
                }
            }
        }
        Ok(self.buf.front().copied())
    }
}

/// The newest bucket at the head of any stream, taken from every stream
/// holding it, with the union of their bits.
fn next_bucket(lsm: &Lsm, streams: &mut [TermStream]) -> Result<Option<(u64, u128)>> {
    let mut newest: Option<u64> = None;
    for s in streams.iter_mut() {
        if let Some((b, _)) = s.peek(lsm)? {
            newest = Some(newest.map_or(b, |n| n.max(b)));
        }
    }
    let Some(bucket) = newest else {
        return Ok(None);
    };
    let mut bits = 0;
    for s in streams.iter_mut() {
        if let Some(&(b, more)) = s.buf.front() {
            if b == bucket {
                bits |= more;
                s.buf.pop_front();
            }
        }
    }
    Ok(Some((bucket, bits)))
}

/// The hit for the message `m` of `conv` stored at `ts` (`value`), if it
/// matches `q` and the user may see it.
fn candidate(
    lsm: &Lsm,
    q: &ShardSearch,
    conv: ConversationId,
    ts: u64,
    m: &Message,
    value: &[u8],
    hidden_through: Seq,
) -> Result<Option<RawHit>> {
    if m.seq <= hidden_through
        || q.filters.sender.is_some_and(|s| s != m.sender)
        || q.filters.kind.is_some_and(|k| !k.keeps(m))
    {
        return Ok(None);
    }
    let terms = crate::apply::indexed_terms(m);
    let has_prefix = q
        .terms
        .prefix
        .as_ref()
        .is_none_or(|p| terms.iter().any(|t| t.starts_with(p.as_str())));
    if !has_prefix || !q.terms.exact.iter().all(|t| terms.contains(t)) {
        return Ok(None);
    }
    if lsm.get(&hidden_key(conv, q.user, m.seq))?.is_some() {
        return Ok(None);
    }
    Ok(Some(RawHit {
        conv,
        ts,
        value: value.to_vec(),
    }))
}

/// Where in `text` the query's terms occur, as byte ranges, sorted and
/// merged (overlapping CJK bigrams and unigrams become one range).
pub fn matches(text: &str, terms: &QueryTerms) -> Vec<(usize, usize)> {
    let mut ranges: Vec<(usize, usize)> = tokenize::tokens(text)
        .into_iter()
        .filter(|t| {
            terms.exact.contains(&t.term)
                || terms
                    .prefix
                    .as_ref()
                    .is_some_and(|p| t.term.starts_with(p.as_str()))
        })
        .map(|t| (t.start, t.end))
        .collect();
    ranges.sort_unstable();
    let mut merged: Vec<(usize, usize)> = Vec::with_capacity(ranges.len());
    for (s, e) in ranges {
        match merged.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ => merged.push((s, e)),
        }
    }
    merged
}

/// Characters of context a snippet keeps before its first highlight.
const SNIPPET_LEAD: usize = 40;
/// The longest snippet, in characters.
const SNIPPET_CHARS: usize = 160;

/// A snippet of `text` around its first match and the matches inside it,
/// as `[start, end)` offsets in characters (Unicode scalar values) of the
/// snippet.
pub fn snippet(text: &str, terms: &QueryTerms) -> (String, Vec<(u32, u32)>) {
    let found = matches(text, terms);
    // Byte offset → char offset, over the whole text.
    let starts: Vec<usize> = text.char_indices().map(|(i, _)| i).collect();
    let char_at = |byte: usize| starts.partition_point(|&b| b < byte);
    let first = found.first().map_or(0, |m| char_at(m.0));
    let from = first.saturating_sub(SNIPPET_LEAD);
    let to = (from + SNIPPET_CHARS).min(starts.len());
    let byte = |c: usize| starts.get(c).copied().unwrap_or(text.len());
    let out = text[byte(from)..byte(to)].to_string();
    let highlights = found
        .iter()
        .map(|&(s, e)| (char_at(s), char_at(e)))
        .filter(|&(s, e)| s >= from && e <= to)
        .map(|(s, e)| ((s - from) as u32, (e - from) as u32))
        .collect();
    (out, highlights)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snippet_centres_on_the_first_match_and_counts_characters() {
        let q = tokenize::query("grüß ");
        let text = format!("{} Grüß dich, grüß", "é".repeat(100));
        let (s, h) = snippet(&text, &q);
        // From 40 characters before the first match to the end.
        assert_eq!(
            s.chars().count(),
            text.chars().count() - (101 - SNIPPET_LEAD)
        );
        let chars: Vec<char> = s.chars().collect();
        let words: Vec<String> = h
            .iter()
            .map(|&(a, b)| chars[a as usize..b as usize].iter().collect())
            .collect();
        assert_eq!(words, ["Grüß", "grüß"]);
    }

    #[test]
    fn matches_merge_overlapping_cjk_ranges() {
        let q = tokenize::query("東京 ");
        assert_eq!(matches("x 東京都", &q), vec![(2, 8)]);
    }

    #[test]
    fn links_and_cursors() {
        assert!(has_link(b"see HTTPS://x.org"));
        assert!(!has_link(b"no link here"));
        let c = Cursor {
            ts: 5,
            conv: ConversationId(9),
        };
        assert_eq!(Cursor::parse(&c.encode()), Some(c));
        assert_eq!(Cursor::parse("5"), None);
        assert!(c.admits(4, ConversationId(10)) && c.admits(5, ConversationId(8)));
        assert!(!c.admits(5, ConversationId(9)) && !c.admits(6, ConversationId(1)));
    }
}
