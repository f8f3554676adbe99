//! A media message's body: a small JSON object naming a stored object.
//!
//! ```json
//! {"media_id": "<64 hex digits: the BLAKE3 hash>", "mime": "image/png",
//!  "size": 48213, "name": "cat.png", "width": 640, "height": 480,
//!  "duration_ms": null, "placeholder": null}
//! ```
//!
//! Only `media_id` decides anything (the message's reference to the
//! object, which lets the conversation's members read it); the rest is for
//! display, checked against the object by the server when sent.

use serde::{Deserialize, Serialize};

use super::records::Hash;

/// The longest media body, bytes.
pub const MAX_MEDIA_BODY: usize = 4096;

/// A media message's body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MediaBody {
    /// The object: its content hash, 64 lowercase hex digits.
    pub media_id: String,
    /// Its MIME type.
    pub mime: String,
    /// Its length (bytes).
    pub size: u64,
    /// Its file name, if any.
    #[serde(default)]
    pub name: String,
    /// Image or video width (pixels), where known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub width: Option<u32>,
    /// Image or video height (pixels), where known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub height: Option<u32>,
    /// Audio or video length (ms), where known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
}

impl MediaBody {
    /// Parses a body; None if it is not a media body (ciphertext, or
    /// malformed).
    pub fn parse(body: &[u8]) -> Option<MediaBody> {
        if body.len() > MAX_MEDIA_BODY {
            return None;
        }
        let b: MediaBody = serde_json::from_slice(body).ok()?;
        parse_hash(&b.media_id)?;
        Some(b)
    }

    /// The object's hash.
    pub fn hash(&self) -> Option<Hash> {
        parse_hash(&self.media_id)
    }
}

/// A hash as 64 lowercase hex digits (a media id).
pub fn hash_hex(hash: &Hash) -> String {
    use std::fmt::Write;
    hash.iter().fold(String::with_capacity(64), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// Parses a media id (64 hex digits, either case).
pub fn parse_hash(s: &str) -> Option<Hash> {
    if s.len() != 64 || !s.is_ascii() {
        return None;
    }
    let mut h = [0u8; 32];
    for (i, byte) in h.iter_mut().enumerate() {
        *byte = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(h)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_ids_round_trip_and_reject_what_is_not_one() {
        let h: Hash = std::array::from_fn(|i| (i * 7) as u8);
        assert_eq!(parse_hash(&hash_hex(&h)), Some(h));
        assert_eq!(parse_hash(&hash_hex(&h).to_uppercase()), Some(h));
        assert_eq!(parse_hash("00"), None);
        assert_eq!(parse_hash(&"g".repeat(64)), None);
        assert_eq!(parse_hash(&"é".repeat(32)), None);
        let body = format!(
            r#"{{"media_id":"{}","mime":"image/png","size":3}}"#,
            hash_hex(&h)
        );
        assert_eq!(
            MediaBody::parse(body.as_bytes()).and_then(|b| b.hash()),
            Some(h)
        );
        assert_eq!(MediaBody::parse(b"\x00\x01ciphertext"), None);
        assert_eq!(
            MediaBody::parse(br#"{"media_id":"x","mime":"a","size":1}"#),
            None
        );
    }
}
