//! The FCM provider: Firebase Cloud Messaging's HTTP v1 API with OAuth 2.0
//! service-account authentication.
//!
//! # Authentication
//!
//! The service account's JSON key file (from the Firebase console) names
//! the project, the account's email, its RSA private key and the token
//! endpoint. An access token is had by posting a JWT signed with that key
//! (RS256; claims `iss` = the email, `scope` =
//! `https://www.googleapis.com/auth/firebase.messaging`, `aud` = the
//! token endpoint, `iat`, `exp` = `iat` + 1 h) to the token endpoint as
//! `grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer`, the OAuth 2.0
//! JWT bearer grant (RFC 7523). The answer's `access_token` is used until
//! a minute before its `expires_in`, or until FCM answers 401. One refresh
//! runs at a time; sends wait for it.
//!
//! # One notification
//!
//! `POST <endpoint>/v1/projects/<project>/messages:send` with
//! `Authorization: Bearer <access token>` and, without a preview, a data
//! message (every value a string, as FCM requires) that wakes the app to
//! fetch the event by `useq`:
//!
//! ```json
//! {"message": {"token": "…",
//!   "data": {"conv": "133…044", "seq": "42", "sender": "1", "useq": "17",
//!            "event_id": "2:17", "badge": "3"},
//!   "android": {"collapse_key": "133…044", "priority": "HIGH",
//!               "ttl": "86400s"}}}
//! ```
//!
//! With a preview, `android.notification` adds `{"title", "body", "tag":
//! <conv>, "notification_count": <badge>}`. FCM has no idempotency key:
//! a resend after a crash carries the same `event_id` and collapse key, so
//! the device shows it once.
//!
//! # Answers
//!
//! 200 is success. 404, or an error naming `UNREGISTERED` or
//! `SENDER_ID_MISMATCH`, means the token is no good here: the target is
//! removed. 401 renews the access token; that and everything else (400 on
//! a bad payload, 429, 500, 503, no answer) are retried.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Deserialize;
use serde_json::json;

use super::note::{Notification, Sent};
use crate::config::FcmSection;
use crate::error::{Error, Result};

/// The scope an access token must carry to send.
pub const SCOPE: &str = "https://www.googleapis.com/auth/firebase.messaging";

/// An access token is renewed this long before it expires.
const EARLY: Duration = Duration::from_secs(60);

/// The fields of a service-account key file that are used.
#[derive(Debug, Deserialize)]
struct ServiceAccount {
    project_id: String,
    #[serde(default)]
    private_key_id: Option<String>,
    private_key: String,
    client_email: String,
    token_uri: String,
}

/// Firebase Cloud Messaging, for one project.
pub struct Fcm {
    client: reqwest::Client,
    send_url: String,
    token_uri: String,
    client_email: String,
    key_id: Option<String>,
    key: EncodingKey,
    /// Seconds an undelivered notification stays worth delivering.
    max_age_secs: u64,
    /// The access token and when it stops being used.
    token: tokio::sync::Mutex<Option<(String, Instant)>>,
}

impl std::fmt::Debug for Fcm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fcm")
            .field("send_url", &self.send_url)
            .field("client_email", &self.client_email)
            .finish_non_exhaustive()
    }
}

impl Fcm {
    /// The name in metrics.
    pub const NAME: &'static str = "fcm";

    /// The provider of `cfg`, its service account read and its key
    /// checked now (no token is asked for until the first send).
    pub fn new(cfg: &FcmSection, client: reqwest::Client, max_age_secs: u64) -> Result<Fcm> {
        let path = cfg.service_account_file.display().to_string();
        let raw = std::fs::read(&cfg.service_account_file).map_err(|source| Error::Io {
            op: "read the FCM service account",
            path: path.clone(),
            source,
        })?;
        let sa: ServiceAccount = serde_json::from_slice(&raw).map_err(|e| {
            Error::Config(format!(
                "push.fcm.service_account_file {path}: not a service-account key file \
                 (project_id, private_key, client_email, token_uri): {e}"
            ))
        })?;
        let key = EncodingKey::from_rsa_pem(sa.private_key.as_bytes()).map_err(|e| {
            Error::Config(format!(
                "push.fcm.service_account_file {path}: private_key is not an RSA key in PEM: {e}"
            ))
        })?;
        if !sa.token_uri.starts_with("https://") {
            return Err(Error::Config(format!(
                "push.fcm.service_account_file {path}: token_uri must be https://"
            )));
        }
        let fcm = Fcm {
            client,
            send_url: format!(
                "{}/v1/projects/{}/messages:send",
                cfg.endpoint.trim_end_matches('/'),
                sa.project_id
            ),
            token_uri: sa.token_uri,
            client_email: sa.client_email,
            key_id: sa.private_key_id,
            key,
            max_age_secs,
            token: tokio::sync::Mutex::new(None),
        };
        // Signing once proves the key works with RS256 before the first push.
        fcm.assertion()?;
        Ok(fcm)
    }

    /// The signed JWT that the token endpoint exchanges for an access token.
    fn assertion(&self) -> Result<String> {
        let mut header = Header::new(Algorithm::RS256);
        header.kid = self.key_id.clone();
        let iat = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let claims = json!({
            "iss": self.client_email,
            "scope": SCOPE,
            "aud": self.token_uri,
            "iat": iat,
            "exp": iat + 3_600,
        });
        jsonwebtoken::encode(&header, &claims, &self.key)
            .map_err(|e| Error::Config(format!("cannot sign the FCM token request: {e}")))
    }

    /// The current access token, fetched if there is none or it is due.
    async fn access_token(&self) -> Result<String, String> {
        let mut t = self.token.lock().await;
        if let Some((tok, until)) = t.as_ref() {
            if Instant::now() < *until {
                return Ok(tok.clone());
            }
        }
        let assertion = self.assertion().map_err(|e| e.to_string())?;
        // The JWT is base64url and dots: nothing in it needs escaping.
        let form = format!(
            "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer&assertion={assertion}"
        );
        let r = self
            .client
            .post(&self.token_uri)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form)
            .send()
            .await
            .map_err(|e| format!("the OAuth token endpoint is unreachable: {e}"))?;
        if !r.status().is_success() {
            return Err(format!("the OAuth token endpoint answered {}", r.status()));
        }
        #[derive(Deserialize)]
        struct Answer {
            access_token: String,
            expires_in: u64,
        }
        let a: Answer = r
            .json()
            .await
            .map_err(|e| format!("the OAuth token endpoint's answer is not a token: {e}"))?;
        let life = Duration::from_secs(a.expires_in).saturating_sub(EARLY);
        *t = Some((a.access_token.clone(), Instant::now() + life));
        Ok(a.access_token)
    }

    /// Sends one notification.
    pub async fn send(&self, note: &Notification, _key: &str) -> Sent {
        let token = match self.access_token().await {
            Ok(t) => t,
            Err(why) => return Sent::Retry(why),
        };
        let mut android = json!({
            "collapse_key": note.collapse_key,
            "priority": "HIGH",
            "ttl": format!("{}s", self.max_age_secs),
        });
        if let Some(p) = &note.preview {
            android["notification"] = json!({
                "title": p.title,
                "body": p.body,
                "tag": note.collapse_key,
                "notification_count": note.badge,
            });
        }
        let body = json!({"message": {
            "token": note.token,
            "data": {
                "conv": note.conv.0.to_string(),
                "seq": note.seq.to_string(),
                "sender": note.sender.0.to_string(),
                "useq": note.useq.to_string(),
                "event_id": note.event_id,
                "badge": note.badge.to_string(),
            },
            "android": android,
        }});
        let sent = self
            .client
            .post(&self.send_url)
            .bearer_auth(&token)
            .json(&body)
            .send()
            .await;
        let r = match sent {
            Ok(r) => r,
            Err(e) => return Sent::Retry(format!("FCM is unreachable: {e}")),
        };
        let status = r.status().as_u16();
        if status == 200 {
            return Sent::Ok;
        }
        let text = r.text().await.unwrap_or_default();
        if status == 404 || text.contains("UNREGISTERED") || text.contains("SENDER_ID_MISMATCH") {
            return Sent::Gone;
        }
        if status == 401 {
            *self.token.lock().await = None;
        }
        let err = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v["error"]["status"].as_str().map(str::to_owned))
            .unwrap_or_default();
        Sent::Retry(format!("FCM answered {status} {err}"))
    }
}
