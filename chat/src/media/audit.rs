//! The operator's view of the media store: list the objects, inspect one,
//! and verify that the bytes stored are the bytes hashed.
//!
//! Objects are listed in key order — slot by slot (`records::object_slot`,
//! the hash's first two bytes modulo the slot count), then by hash within
//! a slot — so a page ends at a hash and the next page starts after it,
//! wherever the slots have moved in between. Every read is linearizable
//! at the owning shard's leader: an operator sees what a client would.
//!
//! Verification reads an object the way a download does (its upload's
//! chunks in order), checks that each chunk is there with the length the
//! grid implies, recomputes the BLAKE3 hash over them and compares it with
//! the id, and checks that every thumbnail the object record names is
//! stored. The engine's own checksums catch torn or rotten blocks first
//! (those come back as [`Damage::Unreadable`]); the hash catches what a
//! checksum cannot: a chunk written for the wrong index, a lost or extra
//! chunk, a bug in the upload path.

use std::collections::BTreeMap;

use missive_engine::keys::{ConversationId, Slot, SLOTS};
use missive_raft::node::Consistency;

use super::records::{
    chunks_for, decode_reference, object_key, object_slot, slot_range, thumb_key, upload_key, Hash,
    Object, Upload, CHUNK,
};
use crate::error::Result;
use crate::ids::Seq;
use crate::node::ChatNode;

/// The most objects one listing or verification page covers.
pub const MAX_PAGE: usize = 1000;

/// One page of objects, in key order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaPage {
    /// The objects, each with its hash.
    pub objects: Vec<(Hash, Object)>,
    /// Where the next page starts (after this hash); `None` at the end.
    pub next: Option<Hash>,
}

/// Everything stored about one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaDetail {
    /// The object record.
    pub object: Object,
    /// The upload whose chunks hold the bytes (`None` if it is gone:
    /// damage, which `verify` reports).
    pub upload: Option<Upload>,
    /// The thumbnails stored, by size: their encoded length in bytes.
    pub thumbnails: BTreeMap<u16, u64>,
    /// The messages that name it: (conversation, seq), live or not (the
    /// collector removes dead ones).
    pub references: Vec<(ConversationId, Seq)>,
}

/// What is wrong with a stored object.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Damage {
    /// A chunk below the object's size is not stored.
    #[error("chunk {index} is missing")]
    MissingChunk {
        /// The chunk's index on the 1 MiB grid.
        index: u32,
    },
    /// A chunk is stored with the wrong length.
    #[error("chunk {index} holds {found} bytes, the object's size implies {expected}")]
    ChunkLength {
        /// The chunk's index.
        index: u32,
        /// Bytes stored.
        found: u64,
        /// Bytes expected.
        expected: u64,
    },
    /// A chunk is stored past the object's size.
    #[error("chunk {index} lies past the object's size")]
    ExtraChunk {
        /// The chunk's index.
        index: u32,
    },
    /// The bytes do not hash to the object's id.
    #[error("the bytes hash to {found}")]
    HashMismatch {
        /// The hash of the bytes stored (hex).
        found: String,
    },
    /// A thumbnail the object record names is not stored.
    #[error("thumbnail {size} is missing")]
    MissingThumbnail {
        /// Its size (longest side), pixels.
        size: u16,
    },
    /// A read failed with a corruption error (engine checksum, undecodable
    /// record).
    #[error("unreadable: {0}")]
    Unreadable(String),
}

/// What a verification page found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyPage {
    /// Objects checked.
    pub objects: u64,
    /// Their bytes, all read.
    pub bytes: u64,
    /// The damaged ones.
    pub damaged: Vec<(Hash, Damage)>,
    /// Where the next page starts; `None` at the end.
    pub next: Option<Hash>,
}

/// Checks an object's bytes: `chunk(i)` reads chunk `i` of its upload
/// (`None` when it is not stored). Pure over the reader, so the rules are
/// tested without a cluster (`tests` below).
pub async fn check_bytes<F, Fut, B>(hash: &Hash, size: u64, mut chunk: F) -> Result<Option<Damage>>
where
    F: FnMut(u32) -> Fut,
    Fut: std::future::Future<Output = Result<Option<B>>>,
    B: AsRef<[u8]>,
{
    let mut hasher = blake3::Hasher::new();
    for index in 0..chunks_for(size) {
        let expected = (size - u64::from(index) * CHUNK).min(CHUNK);
        let bytes = match chunk(index).await {
            Ok(Some(b)) => b,
            Ok(None) => return Ok(Some(Damage::MissingChunk { index })),
            Err(e) if e.is_corruption() => return Ok(Some(Damage::Unreadable(e.to_string()))),
            Err(e) => return Err(e),
        };
        let bytes = bytes.as_ref();
        if bytes.len() as u64 != expected {
            return Ok(Some(Damage::ChunkLength {
                index,
                found: bytes.len() as u64,
                expected,
            }));
        }
        hasher.update(bytes);
    }
    let found = *hasher.finalize().as_bytes();
    Ok((found != *hash).then(|| Damage::HashMismatch {
        found: super::body::hash_hex(&found),
    }))
}

impl ChatNode {
    /// Up to `limit` (at most [`MAX_PAGE`]) objects after `after`, in key
    /// order.
    pub async fn list_media(&self, after: Option<&Hash>, limit: usize) -> Result<MediaPage> {
        let limit = limit.clamp(1, MAX_PAGE);
        let lin = Consistency::Linearizable;
        let first = after.map_or(0, |h| object_slot(h).0);
        let mut objects = Vec::new();
        for slot in first..SLOTS {
            let (mut lo, hi) = slot_range(Slot(slot), 0x02);
            if let Some(h) = after.filter(|h| object_slot(h).0 == slot) {
                lo = object_key(h);
                lo.push(0);
            }
            let shard = self.slots().shard_of_slot(Slot(slot));
            let want = limit + 1 - objects.len();
            for (key, value) in self.scan(shard, lin, &lo, Some(hi), want).await? {
                let hash: Hash = key
                    .get(4..36)
                    .and_then(|h| h.try_into().ok())
                    .ok_or_else(|| missive_raft::Error::malformed("media object", "short key"))?;
                objects.push((hash, crate::records::decode("media object", &value)?));
            }
            if objects.len() > limit {
                break;
            }
        }
        let next = if objects.len() > limit {
            objects.truncate(limit);
            objects.last().map(|(h, _)| *h)
        } else {
            None
        };
        Ok(MediaPage { objects, next })
    }

    /// Everything stored about object `hash`, or `None` if there is no
    /// such object. Finding its references reads every slot's reference
    /// range (seconds on a large store): an operator's call, not a
    /// client's.
    pub async fn inspect_media(&self, hash: &Hash) -> Result<Option<MediaDetail>> {
        let lin = Consistency::Linearizable;
        let Some(object) = self.object(hash, lin).await? else {
            return Ok(None);
        };
        let up_shard = self
            .slots()
            .shard_of_slot(super::records::upload_slot(object.upload));
        let upload = self
            .get(up_shard, lin, &upload_key(object.upload))
            .await?
            .map(|v| crate::records::decode::<Upload>("upload", &v))
            .transpose()?;
        let mut thumbnails = BTreeMap::new();
        let obj_shard = self.slots().shard_of_slot(object_slot(hash));
        for t in object.image.iter().flat_map(|i| &i.thumbs) {
            if let Some(v) = self.get(obj_shard, lin, &thumb_key(hash, t.size)).await? {
                thumbnails.insert(t.size, v.len().saturating_sub(1) as u64);
            }
        }
        let mut references = Vec::new();
        for slot in 0..SLOTS {
            let (lo, hi) = slot_range(Slot(slot), 0x04);
            let shard = self.slots().shard_of_slot(Slot(slot));
            for (key, _) in self.scan(shard, lin, &lo, Some(hi), usize::MAX).await? {
                if let Some((conv, h, seq)) = decode_reference(&key) {
                    if h == *hash {
                        references.push((conv, seq));
                    }
                }
            }
        }
        Ok(Some(MediaDetail {
            object,
            upload,
            thumbnails,
            references,
        }))
    }

    /// Verifies one object (module docs): `None` when it is whole.
    pub async fn verify_object(&self, hash: &Hash, object: &Object) -> Result<Option<Damage>> {
        let lin = Consistency::Linearizable;
        let upload = object.upload;
        if let Some(d) = check_bytes(hash, object.size, |i| self.chunk(upload, i, lin)).await? {
            return Ok(Some(d));
        }
        // Nothing may follow the last chunk either: a longer upload would
        // mean the size in the record is wrong.
        let past = chunks_for(object.size);
        if self.chunk(upload, past, lin).await?.is_some() {
            return Ok(Some(Damage::ExtraChunk { index: past }));
        }
        let shard = self.slots().shard_of_slot(object_slot(hash));
        for t in object.image.iter().flat_map(|i| &i.thumbs) {
            if self
                .get(shard, lin, &thumb_key(hash, t.size))
                .await?
                .is_none()
            {
                return Ok(Some(Damage::MissingThumbnail { size: t.size }));
            }
        }
        Ok(None)
    }

    /// Verifies up to `limit` objects after `after` (a page of
    /// [`ChatNode::list_media`]).
    pub async fn verify_media(&self, after: Option<&Hash>, limit: usize) -> Result<VerifyPage> {
        let page = self.list_media(after, limit).await?;
        let mut out = VerifyPage {
            next: page.next,
            ..VerifyPage::default()
        };
        for (hash, object) in &page.objects {
            out.objects += 1;
            out.bytes += object.size;
            if let Some(d) = self.verify_object(hash, object).await? {
                out.damaged.push((*hash, d));
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]

    use super::*;

    fn bytes(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 % 251) as u8).collect()
    }

    /// Checks `data` stored as `chunks` (index → bytes) against `hash`.
    fn check(hash: &Hash, size: u64, chunks: &BTreeMap<u32, Vec<u8>>) -> Option<Damage> {
        let read = |i: u32| {
            let c = chunks.get(&i).cloned();
            async move { Ok(c) }
        };
        block_on(check_bytes(hash, size, read)).unwrap()
    }

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    fn grid(data: &[u8]) -> BTreeMap<u32, Vec<u8>> {
        data.chunks(CHUNK as usize)
            .enumerate()
            .map(|(i, c)| (i as u32, c.to_vec()))
            .collect()
    }

    #[test]
    fn whole_objects_pass_and_every_kind_of_damage_is_named() {
        let data = bytes(2 * CHUNK as usize + 12_345);
        let hash = *blake3::hash(&data).as_bytes();
        let size = data.len() as u64;
        let chunks = grid(&data);
        assert_eq!(check(&hash, size, &chunks), None);
        // The empty object has no chunk.
        let empty = *blake3::hash(b"").as_bytes();
        assert_eq!(check(&empty, 0, &BTreeMap::new()), None);

        let mut lost = chunks.clone();
        lost.remove(&1);
        assert_eq!(
            check(&hash, size, &lost),
            Some(Damage::MissingChunk { index: 1 })
        );

        let mut short = chunks.clone();
        short.get_mut(&2).unwrap().pop();
        assert_eq!(
            check(&hash, size, &short),
            Some(Damage::ChunkLength {
                index: 2,
                found: 12_344,
                expected: 12_345
            })
        );

        let mut flipped = chunks.clone();
        flipped.get_mut(&0).unwrap()[100] ^= 1;
        let mut changed = data.clone();
        changed[100] ^= 1;
        assert_eq!(
            check(&hash, size, &flipped),
            Some(Damage::HashMismatch {
                found: super::super::body::hash_hex(blake3::hash(&changed).as_bytes())
            })
        );

        // Two chunks swapped: every length right, the hash says no.
        let mut swapped = grid(&bytes(2 * CHUNK as usize));
        let full = bytes(2 * CHUNK as usize);
        let full_hash = *blake3::hash(&full).as_bytes();
        let (a, b) = (swapped[&0].clone(), swapped[&1].clone());
        swapped.insert(0, b);
        swapped.insert(1, a);
        assert!(matches!(
            check(&full_hash, full.len() as u64, &swapped),
            Some(Damage::HashMismatch { .. })
        ));
    }
}
