//! Push notifications: telling a user's devices that something arrived
//! while the user has no socket open anywhere.
//!
//! # Who sends, and how often
//!
//! Every replica of a user's shard applies the `Deliver` that appends a
//! message event to the user's inbox, and every one of them publishes an
//! inbox notice. Only the node that leads the user's shard at that moment
//! acts on it, so a cluster sends one notification per event, not one per
//! replica. The guarantee is best effort, like the platforms' own push
//! services: a leader change between apply and send can lose one, and a
//! restart that re-applies entries not yet flushed can repeat one. Nothing
//! is lost for the user — the event is in their inbox, and the device
//! syncs it when it opens the app; a push only wakes it up.
//!
//! A user counts as offline when presence (see `presence`) has no live
//! lease for them on any node. Their own messages (sent from another
//! device) are not pushed, and neither are receipts or membership changes.
//!
//! # What is sent
//!
//! One `POST` per (event, device with a push token) to
//! `push.webhook_url`, the operator's push gateway (which holds the APNs /
//! FCM credentials), with `Authorization: Bearer <push.webhook_secret>` if
//! set and a JSON body:
//!
//! ```json
//! {"user": "2", "device": "1", "platform": "ios", "token": "…",
//!  "conv": "133…044", "seq": 42, "sender": "1", "useq": 17,
//!  "at": 1795603118298777}
//! ```
//!
//! No message body: clients may encrypt end to end, and a push payload
//! passes through third parties. A 2xx answer is success; anything else is
//! retried twice (after 0.5 s and 2 s), then counted as failed.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::{broadcast, mpsc, watch};

use missive_chat::apply::InboxNotice;
use missive_chat::records::EventKind;
use missive_raft::node::Consistency;

use crate::config::PushSection;
use crate::delivery::presence::Presence;
use crate::service::Service;
use crate::wire::Id;

/// Tasks calling the gateway at once.
const WORKERS: usize = 4;
/// Waits before the second and third attempt.
const RETRY_AFTER: [Duration; 2] = [Duration::from_millis(500), Duration::from_secs(2)];

/// One notification's body.
#[derive(Debug, Clone, Serialize)]
pub struct Notification {
    /// The recipient.
    pub user: Id,
    /// Their device.
    pub device: Id,
    /// The device's platform, as registered ("" if it never registered).
    pub platform: String,
    /// The device's push token.
    pub token: String,
    /// The conversation.
    pub conv: Id,
    /// The message's seq.
    pub seq: u64,
    /// Who sent it.
    pub sender: Id,
    /// The event's position in the user's stream (a sync cursor below it
    /// fetches it).
    pub useq: u64,
    /// When the event happened, µs.
    pub at: u64,
}

/// Runs until `stop`: picks the notices this node must act on and feeds
/// the gateway workers. Does nothing if push is off.
pub async fn run(
    cfg: PushSection,
    service: Arc<Service>,
    presence: Arc<Presence>,
    mut notices: broadcast::Receiver<InboxNotice>,
    mut stop: watch::Receiver<bool>,
) {
    let Some(url) = cfg.webhook_url.clone() else {
        return;
    };
    let client = match reqwest::Client::builder()
        .timeout(Duration::from_millis(cfg.timeout_ms))
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "push: cannot build the HTTP client; push is off");
            return;
        }
    };
    let (tx, rx) = mpsc::channel::<InboxNotice>(cfg.queue);
    let rx = Arc::new(tokio::sync::Mutex::new(rx));
    let gateway = Arc::new(Gateway {
        url,
        secret: cfg.webhook_secret.clone(),
        client,
    });
    let workers: Vec<_> = (0..WORKERS)
        .map(|_| {
            tokio::spawn(worker(
                Arc::clone(&rx),
                Arc::clone(&service),
                Arc::clone(&gateway),
            ))
        })
        .collect();
    loop {
        let n = tokio::select! {
            _ = stop.changed() => break,
            n = notices.recv() => n,
        };
        let n = match n {
            Ok(n) => n,
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                service.metrics.push_dropped.inc_by(missed);
                continue;
            }
            Err(broadcast::error::RecvError::Closed) => break,
        };
        let node = &service.node;
        let leads = node
            .leader(node.slots().shard_of_user(n.user.0))
            .is_ok_and(|l| l == Some(node.id()));
        if !leads || presence.is_online(n.user) {
            continue;
        }
        if tx.try_send(n).is_err() {
            service.metrics.push_dropped.inc();
        }
    }
    drop(tx);
    for w in workers {
        w.abort();
    }
}

struct Gateway {
    url: String,
    secret: Option<String>,
    client: reqwest::Client,
}

async fn worker(
    rx: Arc<tokio::sync::Mutex<mpsc::Receiver<InboxNotice>>>,
    service: Arc<Service>,
    gateway: Arc<Gateway>,
) {
    loop {
        let Some(n) = rx.lock().await.recv().await else {
            return;
        };
        match notifications(&service, &n).await {
            Ok(list) => {
                for note in list {
                    if gateway.send(&note).await {
                        service.metrics.push_sent.inc();
                    } else {
                        service.metrics.push_failed.inc();
                    }
                }
            }
            Err(e) => {
                service.metrics.push_failed.inc();
                tracing::warn!(user = n.user.0, error = %e, "push: cannot read the event");
            }
        }
    }
}

/// The notifications one inbox event (carried by its notice) calls for:
/// one per device with a push token, if it is someone else's message.
async fn notifications(
    service: &Service,
    n: &InboxNotice,
) -> Result<Vec<Notification>, missive_chat::Error> {
    let node = &service.node;
    let (useq, e) = (n.useq, &n.event);
    let EventKind::Message { seq, sender, .. } = e.event else {
        return Ok(Vec::new());
    };
    if sender == n.user {
        return Ok(Vec::new());
    }
    let targets = node.push_targets(n.user, Consistency::Stale).await?;
    if targets.is_empty() {
        return Ok(Vec::new());
    }
    let devices = node.devices(n.user, Consistency::Stale).await?;
    Ok(targets
        .into_iter()
        .map(|(device, t)| Notification {
            user: Id(n.user.0),
            device: Id(device.0),
            platform: devices
                .iter()
                .find(|(d, _)| *d == device)
                .map(|(_, d)| d.platform.clone())
                .unwrap_or_default(),
            token: t.token,
            conv: Id(e.conv.0),
            seq: seq.0,
            sender: Id(sender.0),
            useq: useq.0,
            at: e.at,
        })
        .collect())
}

impl Gateway {
    /// Delivers one notification, retrying; whether the gateway took it.
    async fn send(&self, note: &Notification) -> bool {
        for attempt in 0..=RETRY_AFTER.len() {
            let mut req = self.client.post(&self.url).json(note);
            if let Some(s) = &self.secret {
                req = req.bearer_auth(s);
            }
            match req.send().await {
                Ok(r) if r.status().is_success() => return true,
                Ok(r) => tracing::debug!(status = %r.status(), attempt, "push gateway refused"),
                Err(e) => tracing::debug!(error = %e, attempt, "push gateway unreachable"),
            }
            if let Some(wait) = RETRY_AFTER.get(attempt) {
                tokio::time::sleep(*wait).await;
            }
        }
        false
    }
}
