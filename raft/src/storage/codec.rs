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

/// Encodes a value with the version byte in front.
pub fn encode<T: Serialize + ?Sized>(what: &'static str, v: &T) -> Result<Vec<u8>> {
    postcard::to_extend(v, vec![FORMAT_VERSION]).map_err(|e| Error::malformed(what, e))
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
