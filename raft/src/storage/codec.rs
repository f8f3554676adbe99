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
}
