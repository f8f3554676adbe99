//! Which provider a device is sent through, and the TLS clients they share.
//!
//! A device goes by the platform it registered: `ios` (and `macos`,
//! `ipados`, `watchos`) through APNs when `[push.apns]` is configured,
//! `android` through FCM when `[push.fcm]` is; every other device, and
//! these when their provider is not configured, through the webhook
//! gateway if there is one. A device no provider takes is skipped (its
//! notification is counted `no_provider`).
//!
//! TLS is rustls with the Mozilla root store built in (webpki-roots: the
//! binary needs no system certificates), plus the certificates of
//! `push.ca_file` (a private CA: a corporate proxy, or the tests' fake
//! APNs and FCM).

use std::time::Duration;

use super::apns::Apns;
use super::fcm::Fcm;
use super::note::{Notification, Sent};
use super::webhook::Webhook;
use crate::config::PushSection;
use crate::error::{Error, Result};

/// The providers this node sends through.
#[derive(Debug)]
pub struct Providers {
    apns: Option<Apns>,
    fcm: Option<Fcm>,
    webhook: Option<Webhook>,
}

/// The provider one device is sent through.
#[derive(Debug, Clone, Copy)]
pub enum Route<'a> {
    /// Apple's push service.
    Apns(&'a Apns),
    /// Firebase Cloud Messaging.
    Fcm(&'a Fcm),
    /// The operator's gateway.
    Webhook(&'a Webhook),
}

impl Route<'_> {
    /// The provider's name in metrics.
    pub fn name(&self) -> &'static str {
        match self {
            Route::Apns(_) => Apns::NAME,
            Route::Fcm(_) => Fcm::NAME,
            Route::Webhook(_) => Webhook::NAME,
        }
    }

    /// Sends one notification with idempotency key `key`.
    pub async fn send(&self, note: &Notification, key: &str) -> Sent {
        match self {
            Route::Apns(p) => p.send(note, key).await,
            Route::Fcm(p) => p.send(note, key).await,
            Route::Webhook(p) => p.send(note, key).await,
        }
    }
}

impl Providers {
    /// The providers `cfg` configures, keys read and checked; `None` if
    /// it configures none (push is off).
    pub fn load(cfg: &PushSection) -> Result<Option<Providers>> {
        if cfg.apns.is_none() && cfg.fcm.is_none() && cfg.webhook_url.is_none() {
            return Ok(None);
        }
        let roots = extra_roots(cfg)?;
        let timeout = Duration::from_millis(cfg.timeout_ms);
        let apns = match &cfg.apns {
            Some(a) => Some(Apns::new(
                a,
                client(&roots, timeout, true)?,
                cfg.max_age_secs,
            )?),
            None => None,
        };
        let fcm = match &cfg.fcm {
            Some(f) => Some(Fcm::new(
                f,
                client(&roots, timeout, false)?,
                cfg.max_age_secs,
            )?),
            None => None,
        };
        let webhook = match &cfg.webhook_url {
            Some(url) => Some(Webhook {
                url: url.clone(),
                secret: cfg.webhook_secret.clone(),
                client: client(&roots, timeout, false)?,
            }),
            None => None,
        };
        Ok(Some(Providers { apns, fcm, webhook }))
    }

    /// The provider for a device of `platform`, if any takes it.
    pub fn route(&self, platform: &str) -> Option<Route<'_>> {
        let p = platform.to_ascii_lowercase();
        let direct = match p.as_str() {
            "ios" | "ipados" | "macos" | "watchos" => self.apns.as_ref().map(Route::Apns),
            "android" => self.fcm.as_ref().map(Route::Fcm),
            _ => None,
        };
        direct.or(self.webhook.as_ref().map(Route::Webhook))
    }
}

/// The certificates of `push.ca_file`, if set.
fn extra_roots(cfg: &PushSection) -> Result<Vec<reqwest::Certificate>> {
    let Some(path) = &cfg.ca_file else {
        return Ok(Vec::new());
    };
    let pem = std::fs::read(path).map_err(|source| Error::Io {
        op: "read",
        path: path.display().to_string(),
        source,
    })?;
    let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
        Error::Config(format!(
            "push.ca_file {}: not PEM certificates: {e}",
            path.display()
        ))
    })?;
    if certs.is_empty() {
        return Err(Error::Config(format!(
            "push.ca_file {}: holds no certificate",
            path.display()
        )));
    }
    Ok(certs)
}

/// An HTTP client over rustls trusting the built-in roots and `roots`;
/// `h2_only`: HTTP/2 and nothing else (APNs).
fn client(
    roots: &[reqwest::Certificate],
    timeout: Duration,
    h2_only: bool,
) -> Result<reqwest::Client> {
    let mut b = reqwest::Client::builder()
        .use_rustls_tls()
        .timeout(timeout)
        .connect_timeout(timeout)
        .pool_idle_timeout(Duration::from_secs(600))
        .user_agent(concat!("missived/", env!("CARGO_PKG_VERSION")));
    for c in roots {
        b = b.add_root_certificate(c.clone());
    }
    if h2_only {
        b = b.http2_prior_knowledge();
    }
    b.build()
        .map_err(|e| Error::Config(format!("cannot build the push HTTP client: {e}")))
}
