//! Media for callers: what an upload may declare, who may read an object,
//! and the signed, expiring URLs a CDN can cache without the user's token.
//! The store's side (chunks through Raft, content-addressed objects) is
//! `missive_chat::media`; the HTTP protocol (tus 1.0 uploads, Range
//! downloads) is `edge::media`.
//!
//! # Collection
//!
//! [`run_collector`] runs `missive_chat::media::gc` every
//! `media.gc_interval_secs` on the node that leads the metadata group
//! (one collector per cluster; another node takes over with the
//! leadership). `POST /v1/admin/media/gc` runs one at once.
//!
//! # Signed URLs
//!
//! `/v1/media/{id}?exp={unix seconds}&sig={64 hex}` where `sig` is
//! BLAKE3 in keyed mode over `v1\n{id}\n{exp}` under the node's media key
//! (`Auth::media_key`, derived from the token secret, so any node of a
//! cluster sharing the secret accepts any node's URL). A URL is a bearer
//! capability until `exp`: whoever holds it reads the object, which is
//! what lets a CDN cache and serve it. The access decision was made when
//! it was issued; a member removed afterwards keeps a URL they hold until
//! it expires (`media.url_ttl_secs`, default an hour).

use std::time::{SystemTime, UNIX_EPOCH};

use axum::http::StatusCode;

use missive_chat::command::UserId;
use missive_chat::media::body::{hash_hex, MediaBody};
use missive_chat::media::records::{Hash, Object, Upload, UploadId, CHUNK};
use missive_chat::media::store::Finished;
use missive_chat::ChatNode;
use missive_engine::keys::ConversationId;
use missive_raft::node::Consistency;

use crate::config::MediaSection;
use crate::error::ApiError;
use crate::rate::Class;
use crate::service::{Service, WRITE_WAIT};

/// The longest MIME type, bytes.
pub const MAX_MIME: usize = 127;
/// The longest file name, bytes.
pub const MAX_FILE_NAME: usize = 255;
/// The MIME type of a file whose client named none.
pub const DEFAULT_MIME: &str = "application/octet-stream";

/// Media settings and the URL signing key.
#[derive(Clone)]
pub struct MediaConfig {
    /// Limits and the URL lifetime.
    pub section: MediaSection,
    key: [u8; 32],
}

impl std::fmt::Debug for MediaConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MediaConfig")
            .field("section", &self.section)
            .finish_non_exhaustive()
    }
}

impl Default for MediaConfig {
    /// Default limits and a random key (URLs valid on this process only).
    fn default() -> Self {
        let mut key = [0u8; 32];
        // Without randomness the key is fixed and public: still a
        // working node, never a configured one (`server` passes the
        // derived key).
        let _ = getrandom::fill(&mut key);
        MediaConfig::new(MediaSection::default(), key)
    }
}

/// A signed download URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedUrl {
    /// Path and query, relative to the server (`/v1/media/…?exp=…&sig=…`).
    pub url: String,
    /// When it stops working (seconds since the epoch).
    pub expires_at: u64,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl MediaConfig {
    /// Settings with `key` signing URLs.
    pub fn new(section: MediaSection, key: [u8; 32]) -> Self {
        MediaConfig { section, key }
    }

    fn signature(&self, id: &str, exp: u64) -> blake3::Hash {
        blake3::keyed_hash(&self.key, format!("v1\n{id}\n{exp}").as_bytes())
    }

    /// A URL for object `hash`, valid for `media.url_ttl_secs`.
    pub fn sign(&self, hash: &Hash) -> SignedUrl {
        let id = hash_hex(hash);
        let exp = now_secs().saturating_add(self.section.url_ttl_secs);
        let sig = self.signature(&id, exp).to_hex();
        SignedUrl {
            url: format!("/v1/media/{id}?exp={exp}&sig={sig}"),
            expires_at: exp,
        }
    }

    /// Whether `sig` signs (`id`, `exp`) and `exp` has not passed. The
    /// comparison is constant-time (`blake3::Hash`'s equality).
    pub fn verify(&self, id: &str, exp: u64, sig: &str) -> bool {
        let Ok(sig) = blake3::Hash::from_hex(sig) else {
            return false;
        };
        exp > now_secs() && self.signature(id, exp) == sig
    }
}

/// The one refusal of a media read or upload the caller may not make,
/// whether or not the object or upload exists.
pub fn no_such_media() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "no_such_media",
        "no such media, or not yours to read",
    )
}

/// A MIME type as declared (`type/subtype`, RFC 6838's characters, at
/// most [`MAX_MIME`] bytes), lowercased; the default if empty.
pub fn check_mime(mime: &str) -> Result<String, ApiError> {
    let mime = mime.trim();
    if mime.is_empty() {
        return Ok(DEFAULT_MIME.to_owned());
    }
    let token = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b))
    };
    match mime.split_once('/') {
        Some((t, s)) if mime.len() <= MAX_MIME && token(t) && token(s) => {
            Ok(mime.to_ascii_lowercase())
        }
        _ => Err(ApiError::invalid(format!(
            "a MIME type is type/subtype (letters, digits, !#$&-^_.+), at most {MAX_MIME} bytes"
        ))),
    }
}

/// A file name as declared: at most [`MAX_FILE_NAME`] bytes, no control
/// characters; a path keeps only its last part.
pub fn check_file_name(name: &str) -> Result<String, ApiError> {
    let name = name.rsplit(['/', '\\']).next().unwrap_or_default().trim();
    if name.len() > MAX_FILE_NAME || name.chars().any(char::is_control) {
        return Err(ApiError::invalid(format!(
            "a file name is at most {MAX_FILE_NAME} bytes, without control characters"
        )));
    }
    Ok(name.to_owned())
}

fn media_error(e: missive_chat::Error) -> ApiError {
    use missive_chat::command::RejectCode;
    match e {
        missive_chat::Error::Rejected {
            code: RejectCode::NoSuchMedia,
            ..
        } => no_such_media(),
        e => e.into(),
    }
}

impl Service {
    /// Starts an upload of `length` bytes (at most `media.max_file_bytes`,
    /// and within the caller's quota).
    pub async fn create_upload(
        &self,
        who: UserId,
        length: u64,
        mime: &str,
        name: &str,
    ) -> Result<(UploadId, Upload), ApiError> {
        let (mime, name) = self.check_new_upload(who, length, mime, name).await?;
        let id = self.new_upload_id()?;
        let u = self.create_upload_as(id, who, length, mime, name).await?;
        Ok((id, u))
    }

    /// A new upload id (see [`Service::create_upload_as`]).
    pub fn new_upload_id(&self) -> Result<UploadId, ApiError> {
        ChatNode::new_upload_id().map_err(media_error)
    }

    /// Whether `who` may start an upload of `length` bytes named `name` of
    /// type `mime` (rate, size, quota); the checked MIME type and name.
    pub async fn check_new_upload(
        &self,
        who: UserId,
        length: u64,
        mime: &str,
        name: &str,
    ) -> Result<(String, String), ApiError> {
        self.rates.check(Class::Upload, who)?;
        let max = self.media.section.max_file_bytes;
        if length > max {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!("a file is at most {max} bytes"),
            ));
        }
        let mime = check_mime(mime)?;
        let name = check_file_name(name)?;
        let used: u64 = self
            .read(|c| self.node.grants(who, c))
            .await?
            .iter()
            .map(|(_, g)| g.size)
            .sum();
        let quota = self.media.section.quota_bytes;
        if used.saturating_add(length) > quota {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "quota_exceeded",
                format!("your uploads hold {used} of your {quota} bytes; this file does not fit"),
            ));
        }
        Ok((mime, name))
    }

    /// Starts the upload `id` (from `ChatNode::new_upload_id`) that
    /// [`Service::check_new_upload`] allowed.
    pub async fn create_upload_as(
        &self,
        id: UploadId,
        who: UserId,
        length: u64,
        mime: String,
        name: String,
    ) -> Result<Upload, ApiError> {
        self.node
            .create_upload_as(id, who, length, &mime, &name, WRITE_WAIT)
            .await
            .map_err(media_error)
    }

    /// The caller's upload.
    pub async fn upload(&self, who: UserId, upload: UploadId) -> Result<Upload, ApiError> {
        self.read(|c| self.node.upload(who, upload, c))
            .await?
            .ok_or_else(no_such_media)
    }

    /// Appends `bytes` at `offset` of the caller's upload, one chunk's
    /// worth per write: the answer is the upload after the last write
    /// that committed. A write that fails after earlier ones committed
    /// still leaves them stored (the client resumes from the new offset).
    pub async fn append_upload(
        &self,
        who: UserId,
        upload: UploadId,
        offset: u64,
        bytes: axum::body::Bytes,
    ) -> Result<Upload, ApiError> {
        self.node
            .append_upload(who, upload, offset, bytes, WRITE_WAIT)
            .await
            .map_err(media_error)
    }

    /// Finishes the caller's upload once every byte arrived
    /// (`known`, `received_hash`: see `ChatNode::finish_upload`).
    pub async fn finish_upload(
        &self,
        who: UserId,
        upload: UploadId,
        known: Option<Upload>,
        received_hash: Option<Hash>,
    ) -> Result<Finished, ApiError> {
        self.node
            .finish_upload(who, upload, known, received_hash, WRITE_WAIT)
            .await
            .map_err(media_error)
    }

    /// The object `hash` if `who` may read it: they uploaded it, or a
    /// message of `conv` they can read now references it.
    pub async fn readable_media(
        &self,
        who: UserId,
        hash: &Hash,
        conv: Option<ConversationId>,
    ) -> Result<Object, ApiError> {
        let granted = self
            .read(|c| self.node.grant(who, hash, c))
            .await?
            .is_some();
        let allowed = granted
            || match conv {
                Some(conv) => {
                    self.read(|c| self.node.referenced_for(who, conv, hash, c))
                        .await?
                }
                None => false,
            };
        if !allowed {
            return Err(no_such_media());
        }
        self.object(hash).await
    }

    /// The object `hash`, unchecked: for a signed URL, whose signature
    /// carries the access decision.
    pub async fn object(&self, hash: &Hash) -> Result<Object, ApiError> {
        self.read(|c| self.node.object(hash, c))
            .await?
            .ok_or_else(no_such_media)
    }

    /// A signed URL for object `hash`, if `who` may read it.
    pub async fn media_url(
        &self,
        who: UserId,
        hash: &Hash,
        conv: Option<ConversationId>,
    ) -> Result<(SignedUrl, Object), ApiError> {
        self.rates.check(Class::History, who)?;
        let object = self.readable_media(who, hash, conv).await?;
        Ok((self.media.sign(hash), object))
    }

    /// A media message's body, checked before it is sent: it names an
    /// object the sender uploaded, with its true size.
    pub async fn check_media_body(&self, who: UserId, body: &[u8]) -> Result<(), ApiError> {
        let bad = || {
            ApiError::invalid(
                "a media message's body is JSON naming an uploaded object: \
                 {\"media_id\": \"<64 hex>\", \"mime\": \"…\", \"size\": n} (see docs/protocol.md)",
            )
        };
        let b = MediaBody::parse(body).ok_or_else(bad)?;
        let hash = b.hash().ok_or_else(bad)?;
        let grant = self.read(|c| self.node.grant(who, &hash, c)).await?;
        match grant {
            Some(g) if g.size == b.size => {
                // Used now: a collection running beside this send keeps it
                // (`missive_chat::media::gc`).
                self.node
                    .touch_object(&hash, WRITE_WAIT)
                    .await
                    .map_err(media_error)
            }
            Some(g) => Err(ApiError::invalid(format!(
                "media {} is {} bytes, not {}",
                b.media_id, g.size, b.size
            ))),
            None => Err(no_such_media()),
        }
    }

    /// Thumbnail `size` of object `hash` (the caller's access checked).
    pub async fn thumbnail(&self, hash: &Hash, size: u16) -> Result<Vec<u8>, ApiError> {
        match self
            .node
            .thumbnail(hash, size, Consistency::Linearizable)
            .await?
        {
            Some(t) => Ok(t),
            None => Err(ApiError::internal(&format!(
                "object {} lacks its thumbnail {size}",
                hash_hex(hash)
            ))),
        }
    }

    /// Runs one media collection over the cluster, with `grace` overriding
    /// `media.unreferenced_grace_secs` (an operator's immediate run).
    pub async fn collect_media(
        &self,
        grace: Option<std::time::Duration>,
    ) -> Result<missive_chat::media::gc::GcReport, ApiError> {
        let m = &self.media.section;
        let policy = missive_chat::media::gc::GcPolicy {
            now_micros: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_micros() as u64),
            grace: grace.unwrap_or(std::time::Duration::from_secs(m.unreferenced_grace_secs)),
            upload_ttl: std::time::Duration::from_secs(m.upload_ttl_secs),
            wait: WRITE_WAIT,
        };
        Ok(self.node.collect_media(policy).await?)
    }

    /// Reads chunk `index` of the upload holding an object's bytes.
    pub async fn media_chunk(
        &self,
        upload: UploadId,
        index: u32,
    ) -> Result<axum::body::Bytes, ApiError> {
        match self
            .node
            .chunk(upload, index, Consistency::Linearizable)
            .await?
        {
            Some(c) => Ok(c),
            None => Err(ApiError::internal(&format!(
                "upload {upload:x} lacks chunk {index} of a stored object"
            ))),
        }
    }
}

/// The chunk size appends are cut at (re-exported for the edge).
pub const APPEND_CHUNK: u64 = CHUNK;

/// Runs the media collector every `media.gc_interval_secs` while this node
/// leads the metadata group, until `stop` turns true.
pub async fn run_collector(
    svc: std::sync::Arc<Service>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let every = svc.media.section.gc_interval_secs;
    if every == 0 {
        return;
    }
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(every));
    tick.tick().await;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        let me = svc.node.id();
        let leads = svc
            .node
            .leader(missive_raft::ShardId::DIRECTORY)
            .ok()
            .flatten()
            == Some(me);
        if !leads {
            continue;
        }
        match svc.collect_media(None).await {
            Ok(r) => tracing::info!(?r, "media collected"),
            Err(e) => {
                tracing::warn!(error = %e.message, "media collection failed; next run retries")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signed_urls_check_their_signature_and_expiry() {
        let m = MediaConfig::new(MediaSection::default(), [7; 32]);
        let h: Hash = [3; 32];
        let s = m.sign(&h);
        let id = hash_hex(&h);
        let (_, q) = s.url.split_once('?').unwrap_or_default();
        let mut exp = 0;
        let mut sig = "";
        for kv in q.split('&') {
            match kv.split_once('=') {
                Some(("exp", v)) => exp = v.parse().unwrap_or_default(),
                Some(("sig", v)) => sig = v,
                _ => {}
            }
        }
        assert_eq!(exp, s.expires_at);
        assert!(m.verify(&id, exp, sig));
        assert!(!m.verify(&id, exp + 1, sig), "another expiry");
        assert!(!m.verify(&hash_hex(&[4; 32]), exp, sig), "another object");
        assert!(!m.verify(&id, exp, &"0".repeat(64)));
        assert!(!m.verify(&id, exp, "zz"));
        let other = MediaConfig::new(MediaSection::default(), [8; 32]);
        assert!(!other.verify(&id, exp, sig), "another key");
        let past = now_secs() - 1;
        let sig_past = m.signature(&id, past).to_hex();
        assert!(!m.verify(&id, past, &sig_past), "expired");
    }

    #[test]
    fn mime_types_and_file_names_are_checked() {
        assert_eq!(check_mime("").ok().as_deref(), Some(DEFAULT_MIME));
        assert_eq!(check_mime("Image/PNG").ok().as_deref(), Some("image/png"));
        assert!(check_mime("image").is_err());
        assert!(check_mime("text/html; charset=utf-8").is_err());
        assert_eq!(
            check_file_name("../../etc/passwd").ok().as_deref(),
            Some("passwd")
        );
        assert_eq!(
            check_file_name("C:\\x\\cat.png").ok().as_deref(),
            Some("cat.png")
        );
        assert!(check_file_name("a\nb").is_err());
    }
}
