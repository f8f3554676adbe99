//! Per-stream state rebuilt from records: where each entry lives, how far the
//! stream is purged, and its small durable key/values.
//!
//! The same [`Streams::apply`] runs when recovery replays a segment and when
//! the writer has just written a group, so the state after a restart is the
//! state before it by construction.

use std::collections::{BTreeMap, HashMap, VecDeque};

use crate::log::format::{decode_checkpoint, decode_meta, RecordKind, RecordRef, MAX_INDEX};
use crate::log::StreamId;

/// Where a record lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Location {
    /// Segment sequence number.
    pub segment: u64,
    /// Byte offset of the record header within the segment.
    pub offset: u64,
    /// Header plus payload, in bytes.
    pub len: u32,
}

/// One meta value and the segment holding its newest record.
#[derive(Debug, Clone)]
pub(crate) struct MetaValue {
    pub value: Vec<u8>,
    pub segment: u64,
}

/// The state of one stream.
#[derive(Debug, Clone)]
pub(crate) struct StreamState {
    /// Index of `locs[0]`. Equals `purged + 1` except transiently during
    /// replay, before the checkpoint that explains a deleted prefix is seen.
    pub first: u64,
    /// Highest purged index (0: nothing purged).
    pub purged: u64,
    /// Segment of the newest Purge or Checkpoint record, while `purged > 0`:
    /// the record that must be carried forward before that segment goes.
    pub purge_segment: Option<u64>,
    /// Locations of entries `first, first+1, …`, oldest first.
    pub locs: VecDeque<Location>,
    /// Small durable values, by key.
    pub meta: BTreeMap<Vec<u8>, MetaValue>,
}

impl Default for StreamState {
    /// A stream never written: its first entry will be index 1.
    fn default() -> Self {
        StreamState {
            first: 1,
            purged: 0,
            purge_segment: None,
            locs: VecDeque::new(),
            meta: BTreeMap::new(),
        }
    }
}

impl StreamState {
    /// Index of the newest entry; `first - 1` when there is none.
    pub fn last(&self) -> u64 {
        self.first - 1 + self.locs.len() as u64
    }

    /// Drops entries after `keep` (entries ≤ `keep` stay).
    fn truncate_after(&mut self, keep: u64) {
        if keep + 1 < self.first {
            // Only reachable mid-replay; the final check settles it.
            self.locs.clear();
            self.first = keep + 1;
        } else {
            let keep_n = (keep + 1 - self.first) as usize;
            self.locs.truncate(keep_n);
        }
    }

    /// Drops entries ≤ `upto` and remembers the purge point.
    fn purge(&mut self, upto: u64, segment: u64) {
        if upto >= self.first {
            let drop_n = ((upto + 1 - self.first) as usize).min(self.locs.len());
            self.locs.drain(..drop_n);
            self.first = upto + 1;
        }
        if upto >= self.purged {
            self.purged = upto;
            self.purge_segment = Some(segment);
        }
    }

    /// True when nothing about the stream needs remembering.
    fn is_blank(&self) -> bool {
        self.locs.is_empty() && self.purged == 0 && self.meta.is_empty() && self.first == 1
    }
}

/// All streams of a log.
#[derive(Debug, Default)]
pub(crate) struct Streams {
    pub map: HashMap<StreamId, StreamState>,
}

impl Streams {
    /// Applies one record found at `segment`/`offset`. `Err` names a broken
    /// invariant (an entry that does not continue its stream, a malformed
    /// payload): corruption in recovery, a bug in the live writer.
    pub fn apply(&mut self, rec: &RecordRef<'_>, segment: u64, offset: u64) -> Result<(), String> {
        if rec.kind == RecordKind::Seal {
            return Ok(());
        }
        if rec.index > MAX_INDEX {
            return Err(format!(
                "record names entry {}, beyond the largest index {MAX_INDEX}",
                rec.index
            ));
        }
        let s = self.map.entry(rec.stream).or_default();
        match rec.kind {
            RecordKind::Entry | RecordKind::EntryLz4 => {
                let next = s.last() + 1;
                if rec.index != next {
                    if s.locs.is_empty() && rec.index > next {
                        // The stream's older records were in segments already
                        // deleted; the purge point arrives later in a
                        // Checkpoint and the final check verifies it.
                        s.first = rec.index;
                    } else {
                        return Err(format!(
                            "stream {} entry {} does not follow entry {}",
                            rec.stream.0,
                            rec.index,
                            next - 1
                        ));
                    }
                }
                s.locs.push_back(Location {
                    segment,
                    offset,
                    len: rec.total_len() as u32,
                });
            }
            RecordKind::Meta => {
                let (k, v) = decode_meta(rec.payload).ok_or("malformed meta record")?;
                s.meta.insert(
                    k.to_vec(),
                    MetaValue {
                        value: v.to_vec(),
                        segment,
                    },
                );
            }
            RecordKind::Truncate => s.truncate_after(rec.index),
            RecordKind::Purge => s.purge(rec.index, segment),
            RecordKind::Checkpoint => {
                let meta = decode_checkpoint(rec.payload).ok_or("malformed checkpoint record")?;
                s.purge(rec.index, segment);
                if rec.index == 0 {
                    s.purge_segment = None;
                }
                for (k, v) in meta {
                    s.meta.insert(
                        k.to_vec(),
                        MetaValue {
                            value: v.to_vec(),
                            segment,
                        },
                    );
                }
            }
            RecordKind::Reset => *s = StreamState::default(),
            RecordKind::Seal => {}
        }
        Ok(())
    }

    /// After replay: every stream's entries must start right after its purge
    /// point. Returns the first stream that has a hole, with its first
    /// surviving entry's location and the missing range.
    pub fn find_hole(&self) -> Option<(StreamId, Location, u64, u64)> {
        self.map.iter().find_map(|(id, s)| {
            if s.first != s.purged + 1 {
                let loc = s.locs.front().copied()?;
                Some((*id, loc, s.purged + 1, s.first - 1))
            } else {
                None
            }
        })
    }

    /// Drops streams with nothing to remember (all entries truncated, no
    /// purge, no meta), so they restart at index 1 as after a restart.
    pub fn forget_blank(&mut self) {
        self.map.retain(|_, s| !s.is_blank());
    }

    /// The oldest segment any stream still needs: its oldest live entry, or
    /// a Purge/Checkpoint/Meta record not yet carried forward.
    pub fn oldest_needed_entry_segment(&self) -> Option<u64> {
        self.map
            .values()
            .filter_map(|s| s.locs.front().map(|l| l.segment))
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(kind: RecordKind, stream: u64, index: u64, payload: &[u8]) -> RecordRef<'_> {
        RecordRef {
            kind,
            stream: StreamId(stream),
            index,
            payload,
        }
    }

    #[test]
    fn entries_truncate_purge() {
        let mut st = Streams::default();
        for i in 1..=10 {
            st.apply(&rec(RecordKind::Entry, 1, i, b"x"), 1, i * 100)
                .unwrap();
        }
        st.apply(&rec(RecordKind::Truncate, 1, 6, b""), 1, 0)
            .unwrap();
        assert_eq!(st.map[&StreamId(1)].last(), 6);
        st.apply(&rec(RecordKind::Purge, 1, 3, b""), 2, 0).unwrap();
        let s = &st.map[&StreamId(1)];
        assert_eq!((s.first, s.last(), s.purged), (4, 6, 3));
        assert!(st.apply(&rec(RecordKind::Entry, 1, 9, b"x"), 2, 0).is_err());
        st.apply(&rec(RecordKind::Purge, 1, 20, b""), 2, 0).unwrap();
        let s = &st.map[&StreamId(1)];
        assert_eq!((s.first, s.last()), (21, 20));
        assert!(st.find_hole().is_none());
    }

    #[test]
    fn replay_after_deleted_prefix_needs_checkpoint() {
        let mut st = Streams::default();
        st.apply(&rec(RecordKind::Entry, 1, 41, b"x"), 5, 32)
            .unwrap();
        assert!(st.find_hole().is_some());
        let cp = crate::log::format::encode_checkpoint(std::iter::empty());
        st.apply(&rec(RecordKind::Checkpoint, 1, 40, &cp), 6, 32)
            .unwrap();
        assert!(st.find_hole().is_none());
    }
}
