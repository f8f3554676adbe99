//! The APNs provider: Apple's push service over HTTP/2 with token-based
//! authentication.
//!
//! # Authentication
//!
//! A provider token is a JWT signed with the team's APNs auth key (a P-256
//! key, the `.p8` file Apple hands out, PKCS#8 PEM) using ES256: header
//! `{"alg": "ES256", "kid": <key id>}`, claims `{"iss": <team id>, "iat":
//! <seconds>}`. Apple refuses a token older than an hour and one renewed
//! more often than every 20 minutes, so one token is shared by every send
//! and renewed after [`TOKEN_LIFE`], or at once when APNs calls it expired
//! or invalid.
//!
//! # One notification
//!
//! `POST <endpoint>/3/device/<token>` over HTTP/2 (APNs speaks nothing
//! else; the client is HTTP/2 only), with:
//!
//! | header | value |
//! |---|---|
//! | `authorization` | `bearer <provider token>` |
//! | `apns-topic` | `push.apns.topic` (the app's bundle id) |
//! | `apns-push-type` | `alert` |
//! | `apns-priority` | `10` (deliver now) |
//! | `apns-expiration` | the event's time + `push.max_age_secs`, in s |
//! | `apns-collapse-id` | the conversation id (a newer one replaces it) |
//! | `apns-id` | a UUID derived from `user:useq:device`: the same for a resend |
//!
//! and a body without the message's content unless the conversation
//! allows previews:
//!
//! ```json
//! {"aps": {"alert": {"loc-key": "MISSIVE_NEW_MESSAGE"}, "badge": 3,
//!          "sound": "default", "thread-id": "133…044", "mutable-content": 1},
//!  "missive": {"conv": "133…044", "seq": 42, "sender": "1", "useq": 17,
//!              "event_id": "2:17"}}
//! ```
//!
//! The app localizes `MISSIVE_NEW_MESSAGE`; `mutable-content` lets its
//! notification service extension fetch (and decrypt) the message by
//! `useq` before it is shown. With a preview, `alert` is `{"title":
//! <sender>, "body": <text>}`.
//!
//! # Answers
//!
//! 200 is success. 410 (`Unregistered`), and 400 `BadDeviceToken` or
//! `DeviceTokenNotForTopic`, mean the token is no good: the target is
//! removed. 403 `ExpiredProviderToken`/`InvalidProviderToken` renew the
//! provider token; that and everything else (429, 500, 503, no answer)
//! are retried.

use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;

use super::note::{Notification, Sent};
use crate::config::ApnsSection;
use crate::error::{Error, Result};

/// How long one provider token is used (Apple: at most an hour, renewed
/// at most every 20 minutes).
pub const TOKEN_LIFE: Duration = Duration::from_secs(40 * 60);

/// Apple's push service, for one app (topic).
pub struct Apns {
    client: reqwest::Client,
    /// `<endpoint>/3/device/`.
    base: String,
    topic: String,
    key_id: String,
    team_id: String,
    key: EncodingKey,
    /// Seconds an undelivered notification stays worth delivering.
    max_age_secs: u64,
    /// The provider token and when it was made.
    token: Mutex<Option<(String, Instant)>>,
}

impl std::fmt::Debug for Apns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Apns")
            .field("base", &self.base)
            .field("topic", &self.topic)
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

impl Apns {
    /// The name in metrics.
    pub const NAME: &'static str = "apns";

    /// The provider of `cfg`, its key read and checked now (a bad key is
    /// a configuration error at start, not a failure at the first push).
    pub fn new(cfg: &ApnsSection, client: reqwest::Client, max_age_secs: u64) -> Result<Apns> {
        let pem = std::fs::read(&cfg.key_file).map_err(|source| Error::Io {
            op: "read the APNs key",
            path: cfg.key_file.display().to_string(),
            source,
        })?;
        let key = EncodingKey::from_ec_pem(&pem).map_err(|e| {
            Error::Config(format!(
                "push.apns.key_file {}: not a P-256 private key in PKCS#8 PEM \
                 (the .p8 file from Apple): {e}",
                cfg.key_file.display()
            ))
        })?;
        let apns = Apns {
            client,
            base: format!("{}/3/device/", cfg.endpoint.trim_end_matches('/')),
            topic: cfg.topic.clone(),
            key_id: cfg.key_id.clone(),
            team_id: cfg.team_id.clone(),
            key,
            max_age_secs,
            token: Mutex::new(None),
        };
        apns.provider_token()?;
        Ok(apns)
    }

    /// The current provider token, renewed if it is due.
    fn provider_token(&self) -> Result<String> {
        let mut t = self
            .token
            .lock()
            .map_err(|_| Error::Config("the APNs token lock is poisoned".into()))?;
        if let Some((tok, made)) = t.as_ref() {
            if made.elapsed() < TOKEN_LIFE {
                return Ok(tok.clone());
            }
        }
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.key_id.clone());
        let claims = json!({"iss": self.team_id, "iat": now_secs()});
        let tok = jsonwebtoken::encode(&header, &claims, &self.key)
            .map_err(|e| Error::Config(format!("cannot sign an APNs provider token: {e}")))?;
        *t = Some((tok.clone(), Instant::now()));
        Ok(tok)
    }

    /// Drops the provider token (APNs called it expired or invalid).
    fn renew(&self) {
        if let Ok(mut t) = self.token.lock() {
            *t = None;
        }
    }

    /// Sends one notification.
    pub async fn send(&self, note: &Notification, key: &str) -> Sent {
        let token = match self.provider_token() {
            Ok(t) => t,
            Err(e) => return Sent::Retry(e.to_string()),
        };
        let alert = match &note.preview {
            Some(p) => json!({"title": p.title, "body": p.body}),
            None => json!({"loc-key": "MISSIVE_NEW_MESSAGE"}),
        };
        let body = json!({
            "aps": {
                "alert": alert,
                "badge": note.badge,
                "sound": "default",
                "thread-id": note.collapse_key,
                "mutable-content": 1,
            },
            "missive": {
                "conv": note.conv,
                "seq": note.seq,
                "sender": note.sender,
                "useq": note.useq,
                "event_id": note.event_id,
            },
        });
        let expires = (note.at / 1_000_000).saturating_add(self.max_age_secs);
        let sent = self
            .client
            .post(format!("{}{}", self.base, note.token))
            .header("authorization", format!("bearer {token}"))
            .header("apns-topic", &self.topic)
            .header("apns-push-type", "alert")
            .header("apns-priority", "10")
            .header("apns-expiration", expires.to_string())
            .header("apns-collapse-id", &note.collapse_key)
            .header("apns-id", apns_id(key))
            .json(&body)
            .send()
            .await;
        let r = match sent {
            Ok(r) => r,
            Err(e) => return Sent::Retry(format!("APNs is unreachable: {e}")),
        };
        let status = r.status().as_u16();
        if status == 200 {
            return Sent::Ok;
        }
        let reason = r
            .json::<serde_json::Value>()
            .await
            .ok()
            .and_then(|v| v["reason"].as_str().map(str::to_owned))
            .unwrap_or_default();
        match (status, reason.as_str()) {
            (410, _) | (400, "BadDeviceToken" | "DeviceTokenNotForTopic") => Sent::Gone,
            (403, "ExpiredProviderToken" | "InvalidProviderToken") => {
                self.renew();
                Sent::Retry(format!("APNs answered {status} {reason}"))
            }
            _ => Sent::Retry(format!("APNs answered {status} {reason}")),
        }
    }
}

/// The `apns-id` of idempotency key `key`: a UUID (version 8, RFC 9562's
/// custom kind) made of its BLAKE3 hash, so a notification sent again
/// after a crash carries the id it had.
pub fn apns_id(key: &str) -> String {
    let h = blake3::hash(key.as_bytes());
    let mut b = [0u8; 16];
    b.copy_from_slice(&h.as_bytes()[..16]);
    b[6] = (b[6] & 0x0f) | 0x80;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex: String = b.iter().map(|x| format!("{x:02X}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_apns_id_is_a_canonical_uuid_fixed_by_its_key() {
        let a = apns_id("2:17:1");
        assert_eq!(a, apns_id("2:17:1"));
        assert_ne!(a, apns_id("2:17:2"));
        let parts: Vec<usize> = a.split('-').map(str::len).collect();
        assert_eq!(parts, vec![8, 4, 4, 4, 12]);
        assert_eq!(&a[14..15], "8", "version 8: {a}");
        assert!("89AB".contains(&a[19..20]), "RFC variant: {a}");
    }
}
