//! The node's media operations: what the server's edges call. Writes go
//! through [`ChatNode::write`] (committed on a quorum and applied before
//! they answer); the reads that decide access are linearizable.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use missive_engine::keys::ConversationId;
use missive_raft::node::Consistency;
use missive_raft::Error as RaftError;

use super::image::{describe, is_thumbnailed, MAX_IMAGE_FILE};
use super::records::{
    self, chunk_key, chunks_for, decode_chunk, grant_key, object_key, reference_prefix,
    reference_seq, thumb_key, upload_key, Grant, Hash, Object, Upload, UploadId, UploadState,
};
use crate::command::{Command, Outcome, RejectCode};
use crate::error::{Error, Result};
use crate::ids::UserId;
use crate::node::ChatNode;
use crate::records::{conversation_key, decode_conversation, decode_indexed, seq_key};

/// The most references of one object from one conversation looked at to
/// decide a download (a file forwarded into one chat more often than this
/// is readable through any of the first ones).
const REFERENCES_LOOKED_AT: usize = 64;

/// A finished upload: its object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finished {
    /// The content hash (the media id).
    pub hash: Hash,
    /// The object.
    pub object: Object,
    /// Whether these bytes were stored before (this upload's were dropped).
    pub deduplicated: bool,
    /// The upload, finished.
    pub upload: Upload,
}

fn unexpected(what: &str, o: Outcome) -> Error {
    Error::Runtime(RaftError::malformed(
        "media outcome",
        format!("{what} answered {o:?}"),
    ))
}

fn missing_chunk(upload: UploadId, index: u32) -> Error {
    Error::Runtime(RaftError::malformed(
        "media chunk",
        format!("upload {upload:x} lacks chunk {index} below its received bytes"),
    ))
}

fn no_such_upload() -> Error {
    Error::Rejected {
        code: RejectCode::NoSuchMedia,
        message: "no such upload".into(),
    }
}

impl ChatNode {
    /// A new random upload id (never 0, so a zero id in a path is always
    /// unknown).
    pub fn new_upload_id() -> Result<UploadId> {
        let mut raw = [0u8; 8];
        getrandom::fill(&mut raw).map_err(|e| {
            Error::Runtime(RaftError::malformed(
                "upload id",
                format!("no randomness: {e}"),
            ))
        })?;
        Ok(u64::from_be_bytes(raw).max(1))
    }

    /// Starts an upload of `length` bytes for `owner` under a new random
    /// id.
    pub async fn create_upload(
        &self,
        owner: UserId,
        length: u64,
        mime: &str,
        name: &str,
        wait: Duration,
    ) -> Result<(UploadId, Upload)> {
        let upload = Self::new_upload_id()?;
        let u = self
            .create_upload_as(upload, owner, length, mime, name, wait)
            .await?;
        Ok((upload, u))
    }

    /// Starts an upload under `upload`, an id from
    /// [`ChatNode::new_upload_id`]: a caller that knows the id before the
    /// upload exists can queue its first bytes right behind it (tus
    /// creation-with-upload), in the same log entry when they meet in
    /// the shard's batcher.
    pub async fn create_upload_as(
        &self,
        upload: UploadId,
        owner: UserId,
        length: u64,
        mime: &str,
        name: &str,
        wait: Duration,
    ) -> Result<Upload> {
        let cmd = Command::CreateUpload {
            upload,
            owner,
            length,
            mime: mime.to_owned(),
            name: name.to_owned(),
        };
        match self.write(cmd, wait).await? {
            Outcome::Upload(u) => Ok(u),
            o => Err(unexpected("CreateUpload", o)),
        }
    }

    /// The upload, if it exists and `owner` owns it.
    pub async fn upload(
        &self,
        owner: UserId,
        upload: UploadId,
        consistency: Consistency,
    ) -> Result<Option<Upload>> {
        let shard = self.slots().shard_of_slot(records::upload_slot(upload));
        let Some(v) = self.get(shard, consistency, &upload_key(upload)).await? else {
            return Ok(None);
        };
        let u: Upload = crate::records::decode("upload", &v)?;
        Ok((u.owner == owner).then_some(u))
    }

    /// Appends `bytes` (within one chunk) at `offset` of `owner`'s upload.
    pub async fn append_upload(
        &self,
        owner: UserId,
        upload: UploadId,
        offset: u64,
        bytes: bytes::Bytes,
        wait: Duration,
    ) -> Result<Upload> {
        let cmd = Command::AppendUpload {
            upload,
            owner,
            offset,
            bytes,
        };
        match self.write(cmd, wait).await? {
            Outcome::Upload(u) => Ok(u),
            o => Err(unexpected("AppendUpload", o)),
        }
    }

    /// Finishes `owner`'s upload whose bytes all arrived: hashes them,
    /// stores the object (once per hash), and grants it to the owner.
    /// Idempotent: a finish retried after a crash or a lost answer
    /// completes the steps the first one did not.
    ///
    /// `received_hash` is the BLAKE3 of every byte of the upload, from
    /// offset 0, as this node committed them (the edge hashes a PATCH that
    /// carried the whole file while it streams it): it spares reading the
    /// upload back. Without it (a resumed upload) the bytes are read back
    /// and hashed. Images are read back either way, to be decoded.
    ///
    /// `known` is the upload as a write of the caller's just committed it
    /// (the last piece's answer): it spares reading the record again. Its
    /// state may be stale by then (another request finished the upload):
    /// every step below is idempotent and checked by its apply rule.
    pub async fn finish_upload(
        &self,
        owner: UserId,
        upload: UploadId,
        known: Option<Upload>,
        received_hash: Option<Hash>,
        wait: Duration,
    ) -> Result<Finished> {
        let u = match known.filter(|u| u.owner == owner) {
            Some(u) => u,
            None => self
                .upload(owner, upload, Consistency::Linearizable)
                .await?
                .ok_or_else(no_such_upload)?,
        };
        let stored_before = |hash: Hash| async move {
            Ok::<_, Error>(
                self.object(&hash, Consistency::Linearizable)
                    .await?
                    .is_some(),
            )
        };
        let (hash, image, thumbs) = match u.state {
            UploadState::Finished { hash, .. } => (hash, None, Vec::new()),
            UploadState::Open if u.received == u.length => {
                if is_thumbnailed(&u.mime) && u.length <= MAX_IMAGE_FILE {
                    // An image is read whole (at most MAX_IMAGE_FILE) to
                    // decode it; its thumbnails ride with the object.
                    let bytes = self.read_upload(upload, u.length).await?;
                    let hash = *blake3::hash(&bytes).as_bytes();
                    if stored_before(hash).await? {
                        (hash, None, Vec::new())
                    } else {
                        let mime = u.mime.clone();
                        let described =
                            tokio::task::spawn_blocking(move || describe(&mime, &bytes))
                                .await
                                .map_err(|e| {
                                    Error::Runtime(RaftError::malformed("image", e.to_string()))
                                })?;
                        match described {
                            Ok(Some((info, thumbs))) => (hash, Some(info), thumbs),
                            Ok(None) => (hash, None, Vec::new()),
                            Err(e) => {
                                return Err(Error::Rejected {
                                    code: RejectCode::BadImage,
                                    message: e.to_string(),
                                })
                            }
                        }
                    }
                } else {
                    let hash = match received_hash {
                        Some(h) => h,
                        None => self.hash_upload(upload, u.length).await?,
                    };
                    (hash, None, Vec::new())
                }
            }
            UploadState::Open => {
                return Err(Error::Rejected {
                    code: RejectCode::Invalid,
                    message: format!("this upload holds {} of {} bytes", u.received, u.length),
                })
            }
        };
        let store = Command::StoreObject {
            hash,
            upload,
            size: u.length,
            mime: u.mime.clone(),
            image,
            thumbs: thumbs
                .into_iter()
                .map(|t| (t.info.size, serde_bytes::ByteBuf::from(t.bytes)))
                .collect(),
            owner,
        };
        let holder = match self.write(store, wait).await? {
            Outcome::Stored { upload } => upload,
            o => return Err(unexpected("StoreObject", o)),
        };
        // The object is stored (its bytes held by `holder`): closing the
        // upload, granting it to its owner and reading the object back
        // depend on nothing but that, so they go together (three rounds
        // in one wait). A crash between them leaves an open upload (its
        // owner's retry finishes it: each step is idempotent) or a grant
        // on an object whose bytes are stored — never an object without
        // bytes.
        let finish = Command::FinishUpload {
            upload,
            owner,
            hash,
            keep: holder == upload,
        };
        let grant = Command::GrantMedia {
            user: owner,
            hash,
            grant: Grant {
                size: u.length,
                mime: u.mime.clone(),
                name: u.name.clone(),
                at: u.created_at,
            },
        };
        let (finished, granted, object) = tokio::join!(
            self.write(finish, wait),
            self.write(grant, wait),
            self.object(&hash, Consistency::Linearizable)
        );
        let finished = match finished? {
            Outcome::Upload(f) => f,
            o => return Err(unexpected("FinishUpload", o)),
        };
        granted?;
        let object =
            object?.ok_or_else(|| unexpected("StoreObject", Outcome::Stored { upload: holder }))?;
        Ok(Finished {
            hash,
            object,
            deduplicated: holder != upload,
            upload: finished,
        })
    }

    /// The BLAKE3 hash of an upload's `length` bytes, read back chunk by
    /// chunk (one chunk in memory at a time).
    async fn hash_upload(&self, upload: UploadId, length: u64) -> Result<Hash> {
        let mut hasher = blake3::Hasher::new();
        for i in 0..chunks_for(length) {
            let chunk = self
                .chunk(upload, i, Consistency::Linearizable)
                .await?
                .ok_or_else(|| missing_chunk(upload, i))?;
            hasher.update(&chunk);
        }
        Ok(*hasher.finalize().as_bytes())
    }

    /// An upload's `length` bytes, whole.
    async fn read_upload(&self, upload: UploadId, length: u64) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(length as usize);
        for i in 0..chunks_for(length) {
            let chunk = self
                .chunk(upload, i, Consistency::Linearizable)
                .await?
                .ok_or_else(|| missing_chunk(upload, i))?;
            out.extend_from_slice(&chunk);
        }
        Ok(out)
    }

    /// Thumbnail `size` of object `hash`.
    pub async fn thumbnail(
        &self,
        hash: &Hash,
        size: u16,
        consistency: Consistency,
    ) -> Result<Option<Vec<u8>>> {
        let shard = self.slots().shard_of_slot(records::object_slot(hash));
        let Some(mut v) = self.get(shard, consistency, &thumb_key(hash, size)).await? else {
            return Ok(None);
        };
        decode_chunk(&v)?;
        v.remove(0);
        Ok(Some(v))
    }

    /// Chunk `index` of an upload's bytes. Read here, a stored chunk is a
    /// view of the engine's blob file (no copy of the megabyte).
    pub async fn chunk(
        &self,
        upload: UploadId,
        index: u32,
        consistency: Consistency,
    ) -> Result<Option<Bytes>> {
        let shard = self.slots().shard_of_slot(records::upload_slot(upload));
        let Some(v) = self
            .get_shared(shard, consistency, &chunk_key(upload, index))
            .await?
        else {
            return Ok(None);
        };
        let header = v.len() - decode_chunk(&v)?.len();
        Ok(Some(v.slice(header..)))
    }

    /// The object stored under `hash`.
    pub async fn object(&self, hash: &Hash, consistency: Consistency) -> Result<Option<Object>> {
        let shard = self.slots().shard_of_slot(records::object_slot(hash));
        let v = self.get(shard, consistency, &object_key(hash)).await?;
        Ok(v.map(|v| crate::records::decode("media object", &v))
            .transpose()?)
    }

    /// `user`'s grant on `hash` (they uploaded it).
    pub async fn grant(
        &self,
        user: UserId,
        hash: &Hash,
        consistency: Consistency,
    ) -> Result<Option<Grant>> {
        let shard = self.slots().shard_of_user(user.0);
        let v = self.get(shard, consistency, &grant_key(user, hash)).await?;
        Ok(v.map(|v| crate::records::decode("media grant", &v))
            .transpose()?)
    }

    /// `user`'s grants (what they uploaded), by hash.
    pub async fn grants(
        &self,
        user: UserId,
        consistency: Consistency,
    ) -> Result<Vec<(Hash, Grant)>> {
        let shard = self.slots().shard_of_user(user.0);
        let lo = records::grants_prefix(user);
        let hi = missive_engine::keys::prefix_successor(&lo);
        self.scan(shard, consistency, &lo, hi, usize::MAX)
            .await?
            .into_iter()
            .map(|(k, v)| {
                let hash: Hash = k
                    .get(lo.len()..)
                    .and_then(|h| h.try_into().ok())
                    .ok_or_else(|| RaftError::malformed("media grant", "short key"))?;
                Ok((hash, crate::records::decode("media grant", &v)?))
            })
            .collect()
    }

    /// Whether `user` can read, in `conv` now, a message that references
    /// `hash`: a member, the message visible to them (history
    /// visibility), not unsent, not expired.
    pub async fn referenced_for(
        &self,
        user: UserId,
        conv: ConversationId,
        hash: &Hash,
        consistency: Consistency,
    ) -> Result<bool> {
        let shard = self.slots().shard_of(conv);
        let Some(c) = self
            .get(shard, consistency, &conversation_key(conv))
            .await?
        else {
            return Ok(false);
        };
        let c = decode_conversation(&c)?;
        if !c.is_member(user) {
            return Ok(false);
        }
        let lo = reference_prefix(conv, hash);
        let hi = missive_engine::keys::prefix_successor(&lo);
        let refs = self
            .scan(shard, consistency, &lo, hi, REFERENCES_LOOKED_AT)
            .await?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
        for (k, _) in refs {
            let Some(seq) = reference_seq(&k) else {
                continue;
            };
            if !c.sees(user, seq) {
                continue;
            }
            let Some(ix) = self.get(shard, consistency, &seq_key(conv, seq)).await? else {
                continue;
            };
            let ix = decode_indexed(&ix)?;
            if !ix.unsent && ix.expires_at.is_none_or(|at| at > now) {
                return Ok(true);
            }
        }
        Ok(false)
    }
}
