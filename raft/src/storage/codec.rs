//! How Raft state is laid out in the node's log, byte by byte.
//!
//! Shard `s` owns stream `s` of the node-wide log (see
//! `missive_engine::log`, which frames, checksums and group-commits every
//! record). Within the stream:
//!
//! ```text
//! entry  (log index i + 1 holds Raft index i: the engine's indexes start
//!         at 1, openraft's at 0)
//!   0  1  format version = 1
//!   1  …  postcard(openraft::Entry<TypeConfig<A>>): log_id {leader_id {term,
//!         node_id}, index}, then the payload: 0 = Blank, 1 = Normal(Batch),
//!         2 = Membership {configs, nodes}
//!
//! entry with its bulk bytes in a blob file (version 2; `storage/bulk.rs`)
//!   0  1  format version = 2
//!   1  2  n: bulk values moved out, u16 LE
//!   3  n × 29  command index in the batch u32 LE ‖ the blob reference
//!         (25 bytes: version 1 ‖ file u64 ‖ offset u64 ‖ len u32 ‖ crc32
//!         u32, all LE; `missive_engine::lsm::BlobRef`)
//!   …  postcard(Entry) as in version 1, those commands' bulk bytes left
//!         empty (`App::take_bulk`); the value at the reference is the
//!         app's prefix ‖ the bytes
//!
//! meta records (Log::set_meta, per stream, newest value wins)
//!   "vote"       [1][postcard(Vote)]
//!   "committed"  [1][postcard(Option<LogId>)]
//!   "purged"     [1][postcard(LogId)]   the last purged log id
//! ```

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::{Error, Result};

/// The version byte of every record this module writes.
pub const FORMAT_VERSION: u8 = 1;
/// The version byte of an entry whose bulk bytes are in a blob file.
pub const ENTRY_WITH_BULK_VERSION: u8 = 2;
/// Bytes per moved-out bulk value in a version 2 entry's header.
const BULK_REF_LEN: usize = 4 + missive_engine::lsm::BLOB_REF_LEN;

/// A bulk value moved out of an entry into a blob file: which command of
/// the entry's batch it belongs to, and where it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BulkRef {
    /// The command's position in the batch.
    pub command: u32,
    /// The value (`prefix ‖ bytes`, see `App::take_bulk`).
    pub blob: missive_engine::lsm::BlobRef,
}

/// Meta key of the vote.
pub const META_VOTE: &[u8] = b"vote";
/// Meta key of the committed log id.
pub const META_COMMITTED: &[u8] = b"committed";
/// Meta key of the last purged log id.
pub const META_PURGED: &[u8] = b"purged";

/// A postcard output into a `Vec` allocated once at its final size,
/// growing by whole slices. postcard's `to_extend` pushes a byte at a time
/// through `Extend` and `to_stdvec` grows by doubling: for an entry holding
/// a 1 MiB upload piece that was a byte loop plus a string of reallocations
/// and copies, 7 % of the server's CPU during uploads, on the path of
/// every uploaded byte (openraft appends one entry per log flush).
struct ExactVec(Vec<u8>);

impl postcard::ser_flavors::Flavor for ExactVec {
    type Output = Vec<u8>;

    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        self.0.extend_from_slice(data);
        Ok(())
    }

    fn try_push(&mut self, data: u8) -> postcard::Result<()> {
        self.0.push(data);
        Ok(())
    }

    fn finalize(self) -> postcard::Result<Vec<u8>> {
        Ok(self.0)
    }
}

/// `prefix` followed by `postcard(v)`, in one allocation of the exact size
/// (a sizing pass first: it counts, it copies nothing).
pub fn postcard_after<T: Serialize + ?Sized>(prefix: &[u8], v: &T) -> postcard::Result<Vec<u8>> {
    let size = postcard::serialize_with_flavor(v, postcard::ser_flavors::Size::default())?;
    let mut out = Vec::with_capacity(prefix.len() + size);
    out.extend_from_slice(prefix);
    postcard::serialize_with_flavor(v, ExactVec(out))
}

/// Encodes a value with the version byte in front.
pub fn encode<T: Serialize + ?Sized>(what: &'static str, v: &T) -> Result<Vec<u8>> {
    postcard_after(&[FORMAT_VERSION], v).map_err(|e| Error::malformed(what, e))
}

/// Decodes a value written by [`encode`].
pub fn decode<T: DeserializeOwned>(what: &'static str, bytes: &[u8]) -> Result<T> {
    match bytes.split_first() {
        Some((&FORMAT_VERSION, rest)) => {
            postcard::from_bytes(rest).map_err(|e| Error::malformed(what, e))
        }
        Some((v, _)) => Err(Error::malformed(
            what,
            format!("format version {v}, this build reads {FORMAT_VERSION}"),
        )),
        None => Err(Error::malformed(what, "empty record")),
    }
}

/// Encodes a log entry.
pub fn encode_entry<C: openraft::RaftTypeConfig>(e: &openraft::Entry<C>) -> Result<Vec<u8>> {
    encode("raft log entry", e)
}

/// Decodes a log entry.
pub fn decode_entry<C: openraft::RaftTypeConfig>(bytes: &[u8]) -> Result<openraft::Entry<C>> {
    decode("raft log entry", bytes)
}

/// Encodes a log entry whose bulk values were moved out to `refs`
/// (version 2; with no refs it is an ordinary version 1 entry).
pub fn encode_entry_with_bulk<C: openraft::RaftTypeConfig>(
    e: &openraft::Entry<C>,
    refs: &[BulkRef],
) -> Result<Vec<u8>> {
    if refs.is_empty() {
        return encode_entry(e);
    }
    let n = u16::try_from(refs.len())
        .map_err(|_| Error::malformed("raft log entry", "too many bulk values in one entry"))?;
    let mut head = Vec::with_capacity(3 + refs.len() * BULK_REF_LEN);
    head.push(ENTRY_WITH_BULK_VERSION);
    head.extend_from_slice(&n.to_le_bytes());
    for r in refs {
        head.extend_from_slice(&r.command.to_le_bytes());
        head.extend_from_slice(&r.blob.encode());
    }
    postcard_after(&head, e).map_err(|err| Error::malformed("raft log entry", err))
}

/// Decodes a log entry of either version: the entry (its moved-out bulk
/// bytes empty) and where they are.
pub fn decode_stored_entry<C: openraft::RaftTypeConfig>(
    bytes: &[u8],
) -> Result<(openraft::Entry<C>, Vec<BulkRef>)> {
    const WHAT: &str = "raft log entry";
    if bytes.first() != Some(&ENTRY_WITH_BULK_VERSION) {
        return Ok((decode_entry(bytes)?, Vec::new()));
    }
    let short = || Error::malformed(WHAT, "a version 2 entry cut short in its bulk references");
    let n = bytes.get(1..3).ok_or_else(short)?;
    let n = usize::from(u16::from_le_bytes([n[0], n[1]]));
    let body = 3 + n * BULK_REF_LEN;
    let heads = bytes.get(3..body).ok_or_else(short)?;
    let refs = heads
        .chunks_exact(BULK_REF_LEN)
        .map(|h| {
            let command = u32::from_le_bytes([h[0], h[1], h[2], h[3]]);
            let blob = missive_engine::lsm::BlobRef::decode(&h[4..])
                .ok_or_else(|| Error::malformed(WHAT, "a malformed blob reference"))?;
            Ok(BulkRef { command, blob })
        })
        .collect::<Result<Vec<_>>>()?;
    let e = postcard::from_bytes(&bytes[body..]).map_err(|err| Error::malformed(WHAT, err))?;
    Ok((e, refs))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;
    use crate::app::Batch;
    use crate::test_app::{Kv, KvCommand};
    use crate::types::Entry;
    use openraft::{CommittedLeaderId, EntryPayload, LogId, Membership};
    use std::collections::{BTreeMap, BTreeSet};

    #[test]
    fn postcard_after_is_postcard_behind_the_prefix_in_one_allocation() {
        let v = (7u64, vec![5u8; 100_000], "x");
        let out = postcard_after(&[1, 2], &v).unwrap();
        let mut want = vec![1, 2];
        want.extend(postcard::to_stdvec(&v).unwrap());
        assert_eq!(out, want);
        assert_eq!(out.capacity(), out.len());
    }

    #[test]
    fn entries_round_trip_and_reject_other_versions() {
        let log_id = LogId::new(CommittedLeaderId::new(3, 2), 17);
        let mut nodes = BTreeMap::new();
        nodes.insert(1, openraft::BasicNode::new("127.0.0.1:1"));
        nodes.insert(2, openraft::BasicNode::new("127.0.0.2:1"));
        let payloads = vec![
            EntryPayload::Blank,
            EntryPayload::Normal(Batch::<Kv> {
                stamp_micros: 42,
                commands: vec![KvCommand::Put {
                    key: vec![0x10, 1],
                    value: vec![0, 255, 7],
                }],
            }),
            EntryPayload::Membership(Membership::new(vec![BTreeSet::from([1, 2])], nodes)),
        ];
        for payload in payloads {
            let e = Entry::<Kv> { log_id, payload };
            let bytes = encode_entry(&e).unwrap();
            assert_eq!(bytes[0], FORMAT_VERSION);
            let back = decode_entry::<crate::TypeConfig<Kv>>(&bytes).unwrap();
            assert_eq!(format!("{back:?}"), format!("{e:?}"));
            let mut other = bytes.clone();
            other[0] = 2;
            assert!(decode_entry::<crate::TypeConfig<Kv>>(&other).is_err());
            assert!(
                decode_entry::<crate::TypeConfig<Kv>>(&bytes[..bytes.len() - 1]).is_err()
                    || bytes.len() < 3
            );
        }
    }

    #[test]
    fn an_entry_with_bulk_references_round_trips_and_a_cut_one_is_refused() {
        let log_id = LogId::new(CommittedLeaderId::new(3, 2), 17);
        let e = Entry::<Kv> {
            log_id,
            payload: EntryPayload::Normal(Batch::<Kv> {
                stamp_micros: 42,
                commands: vec![
                    KvCommand::Delete { key: vec![1] },
                    KvCommand::Put {
                        key: vec![2],
                        value: Vec::new(),
                    },
                ],
            }),
        };
        let refs = [BulkRef {
            command: 1,
            blob: missive_engine::lsm::BlobRef {
                file: 9,
                offset: 24,
                len: 1 << 20,
                crc: 0xdead_beef,
            },
        }];
        let bytes = encode_entry_with_bulk(&e, &refs).unwrap();
        assert_eq!(bytes[0], ENTRY_WITH_BULK_VERSION);
        let (back, got) = decode_stored_entry::<crate::TypeConfig<Kv>>(&bytes).unwrap();
        assert_eq!(format!("{back:?}"), format!("{e:?}"));
        assert_eq!(got, refs);
        // No references: a version 1 entry, read by both decoders.
        let plain = encode_entry_with_bulk(&e, &[]).unwrap();
        assert_eq!(plain[0], FORMAT_VERSION);
        assert!(decode_stored_entry::<crate::TypeConfig<Kv>>(&plain)
            .unwrap()
            .1
            .is_empty());
        // Cut anywhere in the header or the entry: an error, never a panic.
        for cut in [1, 2, 3, 20, 31, 32, bytes.len() - 1] {
            assert!(
                decode_stored_entry::<crate::TypeConfig<Kv>>(&bytes[..cut]).is_err(),
                "{cut}"
            );
        }
        // The old decoder refuses a version 2 entry instead of misreading it.
        assert!(decode_entry::<crate::TypeConfig<Kv>>(&bytes).is_err());
    }
}
