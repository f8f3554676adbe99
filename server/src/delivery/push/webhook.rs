//! The webhook provider: the operator's own push gateway.
//!
//! One `POST` per (event, device) to `push.webhook_url`, with
//! `Authorization: Bearer <push.webhook_secret>` if set,
//! `Idempotency-Key: <user>:<useq>:<device>` and the [`Notification`] as
//! JSON. 2xx is success; 404 and 410 mean the token is no longer valid
//! (the device's push target is removed); any other answer, or none within
//! `push.timeout_ms`, is retried.

use super::note::{Notification, Sent};

/// The operator's gateway.
#[derive(Debug)]
pub struct Webhook {
    pub(super) url: String,
    pub(super) secret: Option<String>,
    pub(super) client: reqwest::Client,
}

impl Webhook {
    /// The name in metrics.
    pub const NAME: &'static str = "webhook";

    /// Sends one notification.
    pub async fn send(&self, note: &Notification, key: &str) -> Sent {
        let mut req = self
            .client
            .post(&self.url)
            .header("idempotency-key", key)
            .json(note);
        if let Some(s) = &self.secret {
            req = req.bearer_auth(s);
        }
        match req.send().await {
            Ok(r) if r.status().is_success() => Sent::Ok,
            Ok(r) if r.status().as_u16() == 404 || r.status().as_u16() == 410 => Sent::Gone,
            Ok(r) => Sent::Retry(format!("the gateway answered {}", r.status())),
            Err(e) => Sent::Retry(format!("the gateway is unreachable: {e}")),
        }
    }
}
