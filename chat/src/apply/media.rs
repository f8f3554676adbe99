//! The media store's rules (`crate::media`): uploads taking bytes chunk by
//! chunk, finishing with their content hash, objects recorded once per
//! hash, grants to uploaders. Every decision reads records that never
//! expire (upload, object, grant), so replicas decide alike.

use missive_raft::Result;

use super::{reject, Apply};
use crate::command::{Outcome, RejectCode};
use crate::ids::UserId;
use crate::media::image::{ImageInfo, THUMB_SIZES};
use crate::media::records::{
    chunk_key, chunk_of, chunks_for, decode_chunk, encode_chunk, grant_key, object_key, thumb_key,
    upload_key, Grant, Hash, Object, Upload, UploadId, UploadState, CHUNK,
};

/// The one refusal for an upload that is missing or someone else's: the
/// same words either way, so ids cannot be probed.
fn no_such_upload() -> Outcome {
    reject(RejectCode::NoSuchMedia, "no such upload")
}

impl Apply<'_, '_> {
    /// `CreateUpload`.
    pub(super) fn create_upload(
        &mut self,
        upload: UploadId,
        owner: UserId,
        length: u64,
        mime: &str,
        name: &str,
        stamp: u64,
    ) -> Result<Outcome> {
        let key = upload_key(upload);
        if self.rec.get(&key)?.is_some() {
            // Ids are 64 random bits: a collision is a retried create
            // whose first answer was lost, or a bug; never overwrite.
            return Ok(reject(RejectCode::Conflict, "this upload id is taken"));
        }
        if u64::from(u32::MAX) * CHUNK < length {
            return Ok(reject(
                RejectCode::Invalid,
                "an upload this long cannot be stored",
            ));
        }
        let u = Upload {
            owner,
            length,
            received: 0,
            mime: mime.to_owned(),
            name: name.to_owned(),
            created_at: stamp,
            state: UploadState::Open,
        };
        self.rec.put_as(key, &u)?;
        Ok(Outcome::Upload(u))
    }

    /// The upload if it exists and `owner` owns it.
    fn owned_upload(&mut self, upload: UploadId, owner: UserId) -> Result<Option<Upload>> {
        Ok(self
            .rec
            .get_as::<Upload>("upload", &upload_key(upload))?
            .filter(|u| u.owner == owner))
    }

    /// `AppendUpload`.
    pub(super) fn append_upload(
        &mut self,
        upload: UploadId,
        owner: UserId,
        offset: u64,
        bytes: &[u8],
    ) -> Result<Outcome> {
        let Some(mut u) = self.owned_upload(upload, owner)? else {
            return Ok(no_such_upload());
        };
        if u.state != UploadState::Open {
            return Ok(reject(RejectCode::Conflict, "this upload is complete"));
        }
        if offset != u.received {
            return Ok(reject(
                RejectCode::OffsetMismatch,
                format!("this upload holds {} bytes; append from there", u.received),
            ));
        }
        let len = bytes.len() as u64;
        let end = offset.saturating_add(len);
        if end > u.length {
            return Ok(reject(
                RejectCode::Invalid,
                format!("this upload was declared {} bytes long", u.length),
            ));
        }
        if len == 0 {
            return Ok(Outcome::Upload(u));
        }
        let index = chunk_of(offset);
        if chunk_of(end - 1) != index {
            return Ok(reject(
                RejectCode::Invalid,
                "an append stays within one 1 MiB chunk",
            ));
        }
        let key = chunk_key(upload, index);
        if offset % CHUNK == 0 {
            let value = encode_chunk(bytes);
            // The log store wrote this very value to a blob file: the
            // chunk points there and its bytes are not written again.
            match self
                .rec
                .bulk_ref()
                .filter(|r| r.len as usize == value.len())
            {
                Some(r) => self.rec.put_blob_ref(key, r, value),
                None => self.rec.put(key, value),
            }
        } else {
            // The chunk's earlier bytes are stored: append to them.
            let Some(old) = self.rec.get(&key)? else {
                return Err(missive_raft::Error::malformed(
                    "media chunk",
                    format!("upload {upload:x} lacks chunk {index} below its received bytes"),
                ));
            };
            let mut v = old;
            decode_chunk(&v)?;
            v.extend_from_slice(bytes);
            self.rec.put(key, v);
        }
        u.received = end;
        self.rec.put_as(upload_key(upload), &u)?;
        Ok(Outcome::Upload(u))
    }

    /// `FinishUpload`.
    pub(super) fn finish_upload(
        &mut self,
        upload: UploadId,
        owner: UserId,
        hash: Hash,
        keep: bool,
    ) -> Result<Outcome> {
        let Some(mut u) = self.owned_upload(upload, owner)? else {
            return Ok(no_such_upload());
        };
        match u.state {
            UploadState::Open if u.received == u.length => {}
            UploadState::Open => {
                return Ok(reject(
                    RejectCode::Invalid,
                    format!("this upload holds {} of {} bytes", u.received, u.length),
                ))
            }
            // Idempotent: a retried finish answers as the first did.
            UploadState::Finished { hash: h, .. } if h == hash => return Ok(Outcome::Upload(u)),
            UploadState::Finished { .. } => {
                return Ok(reject(
                    RejectCode::Conflict,
                    "this upload finished with another hash",
                ))
            }
        }
        if !keep {
            for i in 0..chunks_for(u.length) {
                self.rec.delete(chunk_key(upload, i));
            }
        }
        u.state = UploadState::Finished { hash, kept: keep };
        self.rec.put_as(upload_key(upload), &u)?;
        Ok(Outcome::Upload(u))
    }

    /// `StoreObject`: the object and its thumbnails, in one batch.
    #[allow(clippy::too_many_arguments, reason = "the command's fields")]
    pub(super) fn store_object(
        &mut self,
        hash: &Hash,
        upload: UploadId,
        size: u64,
        mime: &str,
        image: &Option<ImageInfo>,
        thumbs: &[(u16, serde_bytes::ByteBuf)],
        owner: UserId,
        stamp: u64,
    ) -> Result<Outcome> {
        let key = object_key(hash);
        if let Some(mut o) = self.rec.get_as::<Object>("media object", &key)? {
            // Stored again: used now (a collection in progress must not
            // delete what this upload is about to rely on).
            if !o.uploaders.contains(&owner) {
                o.uploaders.push(owner);
            }
            o.last_used = stamp;
            self.rec.put_as(key, &o)?;
            return Ok(Outcome::Stored { upload: o.upload });
        }
        for (size, bytes) in thumbs {
            self.rec.put(thumb_key(hash, *size), encode_chunk(bytes));
        }
        let o = Object {
            size,
            mime: mime.to_owned(),
            upload,
            created_at: stamp,
            image: image.clone(),
            uploaders: vec![owner],
            last_used: stamp,
        };
        self.rec.put_as(key, &o)?;
        Ok(Outcome::Stored { upload })
    }

    /// `TouchObject`.
    pub(super) fn touch_object(&mut self, hash: &Hash, stamp: u64) -> Result<Outcome> {
        let key = object_key(hash);
        let Some(mut o) = self.rec.get_as::<Object>("media object", &key)? else {
            return Ok(reject(RejectCode::NoSuchMedia, "no such media"));
        };
        o.last_used = o.last_used.max(stamp);
        self.rec.put_as(key, &o)?;
        Ok(Outcome::Granted)
    }

    /// `DeleteObject`.
    pub(super) fn delete_object(&mut self, hash: &Hash, unused_since: u64) -> Result<Outcome> {
        let key = object_key(hash);
        let Some(o) = self.rec.get_as::<Object>("media object", &key)? else {
            return Ok(reject(RejectCode::NoSuchMedia, "no such media"));
        };
        let deleted = o.created_at < unused_since && o.last_used < unused_since;
        if deleted {
            // Every size a thumbnail may have been stored under (the
            // record lists what was made; tombstones for the rest cost a
            // few bytes).
            let made = o.image.iter().flat_map(|i| i.thumbs.iter().map(|t| t.size));
            for size in THUMB_SIZES.into_iter().chain(made) {
                self.rec.delete(thumb_key(hash, size));
            }
            self.rec.delete(key);
        }
        Ok(Outcome::ObjectDeleted {
            deleted,
            upload: o.upload,
            uploaders: o.uploaders,
            size: o.size,
        })
    }

    /// `DropUpload`.
    pub(super) fn drop_upload(&mut self, upload: UploadId) -> Result<Outcome> {
        let key = upload_key(upload);
        if let Some(u) = self.rec.get_as::<Upload>("upload", &key)? {
            for i in 0..chunks_for(u.received) {
                self.rec.delete(chunk_key(upload, i));
            }
            self.rec.delete(key);
        }
        Ok(Outcome::Granted)
    }

    /// `RevokeGrant`.
    pub(super) fn revoke_grant(&mut self, user: UserId, hash: &Hash) -> Result<Outcome> {
        self.rec.delete(grant_key(user, hash));
        Ok(Outcome::Granted)
    }

    /// `GrantMedia`.
    pub(super) fn grant_media(
        &mut self,
        user: UserId,
        hash: &Hash,
        grant: &Grant,
    ) -> Result<Outcome> {
        let key = grant_key(user, hash);
        if self.rec.get(&key)?.is_none() {
            self.rec.put_as(key, grant)?;
        }
        Ok(Outcome::Granted)
    }
}
