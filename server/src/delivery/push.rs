//! Push notifications: waking a user's devices when something arrived
//! while the user has no socket open anywhere — the sender of the durable
//! push outbox (`missive_chat::push` holds the records and the rules).
//!
//! # Who sends, and when
//!
//! The `Deliver` rule writes a job with every message event for a user
//! with push targets, in the batch of the event. On every node, this task
//! scans the jobs of the shards the node leads (every `SCAN_EVERY`, and at
//! once when an event for such a user is applied here), and for each job
//! that is due:
//!
//! - the user is online (presence has a live lease for them on some
//!   node): they got the event live; the job is done (`PushDone`);
//! - otherwise each device still to notify is sent one notification
//!   through the provider, with the idempotency key `user:useq:device`.
//!   Devices that took it, or whose token the provider reported invalid
//!   (its target is then removed: `SetPushToken` with none), are done.
//!   If none is left the job is done; if the job is older than
//!   `push.max_age_secs` it becomes a dead letter (`PushDead`); otherwise
//!   the devices left are retried after an exponential backoff with
//!   jitter (`PushRetry`, which records the attempt count and the time).
//!
//! Each outcome is a Raft write, so a restart or a leader change resumes
//! from the last recorded attempt: nothing is lost, and a device notified
//! in a recorded attempt is not notified again. A send that succeeds just
//! before its node dies, before the record commits, is sent again by the
//! next leader with the same idempotency key.
//!
//! The user's own messages (from another device) are not pushed, and
//! neither are receipts or membership changes.
//!
//! # What is sent (the webhook provider)
//!
//! One `POST` per (event, device) to `push.webhook_url`, the operator's
//! push gateway, with `Authorization: Bearer <push.webhook_secret>` if
//! set, `Idempotency-Key: <user>:<useq>:<device>` and a JSON body:
//!
//! ```json
//! {"user": "2", "device": "1", "platform": "ios", "token": "…",
//!  "conv": "133…044", "seq": 42, "sender": "1", "useq": 17,
//!  "at": 1795603118298777, "event_id": "2:17", "collapse_key": "133…044",
//!  "badge": 3}
//! ```
//!
//! No message body: clients may encrypt end to end, and a push payload
//! passes through third parties. 2xx is success; 404 and 410 mean the
//! token is no longer valid (the device's push target is removed); any
//! other answer, or none within `push.timeout_ms`, is retried.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use backon::{BackoffBuilder, ExponentialBuilder};
use serde::Serialize;
use tokio::sync::{broadcast, watch, Semaphore};

use missive_chat::apply::InboxNotice;
use missive_chat::command::{Command, DeviceId, Outcome};
use missive_chat::push::PushJob;
use missive_chat::records::EventKind;
use missive_chat::{Useq, UserId};
use missive_raft::node::Consistency;
use missive_raft::ShardId;

use crate::config::PushSection;
use crate::delivery::presence::Presence;
use crate::service::Service;
use crate::wire::Id;

/// How often the sender scans its shards' jobs without a wake-up.
const SCAN_EVERY: Duration = Duration::from_millis(500);
/// Jobs read per shard per scan.
const SCAN_LIMIT: usize = 1_024;

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
    /// The event's id, `user:useq` (the same for every device).
    pub event_id: String,
    /// Notifications of one conversation replace each other on the
    /// device (APNs `apns-collapse-id`, FCM `collapse_key`).
    pub collapse_key: String,
    /// The user's unread messages over all their conversations (the app
    /// icon's badge).
    pub badge: u64,
}

/// What one send came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sent {
    /// The provider took it.
    Ok,
    /// The token is no longer valid: stop using it.
    Gone,
    /// Try again later (why, for the dead letter).
    Retry(String),
}

/// A push provider: the operator's webhook gateway (APNs and FCM direct
/// providers are to come).
#[derive(Debug)]
pub struct Webhook {
    url: String,
    secret: Option<String>,
    client: reqwest::Client,
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

fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// Runs until `stop`. Does nothing if push is off.
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
    let sender = Arc::new(Sender {
        provider: Webhook {
            url,
            secret: cfg.webhook_secret.clone(),
            client,
        },
        service,
        presence,
        busy: Mutex::default(),
        slots: Arc::new(Semaphore::new(cfg.queue.max(1))),
        cfg,
    });
    let mut tick = tokio::time::interval(SCAN_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            _ = tick.tick() => {}
            n = notices.recv() => match n {
                // A message for a user this node may push to: scan now
                // (the user's other events need no push).
                Ok(n) if matches!(n.event.event, EventKind::Message { .. })
                    && sender.leads(sender.service.node.slots().shard_of_user(n.user.0)) => {}
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => break,
            },
        }
        sender.scan().await;
    }
}

/// The sender's state on this node.
struct Sender {
    provider: Webhook,
    service: Arc<Service>,
    presence: Arc<Presence>,
    /// Jobs being attempted now (not picked again until recorded).
    busy: Mutex<HashSet<(UserId, Useq)>>,
    /// Attempts running at once.
    slots: Arc<Semaphore>,
    cfg: PushSection,
}

impl Sender {
    fn leads(&self, shard: ShardId) -> bool {
        let node = &self.service.node;
        node.leader(shard).is_ok_and(|l| l == Some(node.id()))
    }

    /// One pass over the due jobs of every shard this node leads.
    async fn scan(self: &Arc<Self>) {
        let node = &self.service.node;
        let shards: Vec<ShardId> = node.slots().shards().filter(|s| self.leads(*s)).collect();
        for shard in shards {
            let jobs = match node.push_jobs(shard, None, SCAN_LIMIT).await {
                Ok(j) => j,
                Err(e) => {
                    tracing::debug!(shard = shard.0, error = %e, "push: cannot read the jobs");
                    continue;
                }
            };
            let now = now_micros();
            let mut online = Vec::new();
            for ((user, useq), job) in jobs {
                if job.next_micros > now || self.busy_with(user, useq) {
                    continue;
                }
                if self.presence.is_online(user) {
                    online.push((user, useq));
                    continue;
                }
                let Ok(permit) = Arc::clone(&self.slots).try_acquire_owned() else {
                    break;
                };
                if let Ok(mut b) = self.busy.lock() {
                    b.insert((user, useq));
                }
                let me = Arc::clone(self);
                tokio::spawn(async move {
                    me.attempt(user, useq, job).await;
                    if let Ok(mut b) = me.busy.lock() {
                        b.remove(&(user, useq));
                    }
                    drop(permit);
                });
            }
            if !online.is_empty() {
                self.record(Command::PushDone { jobs: online }).await;
            }
        }
    }

    fn busy_with(&self, user: UserId, useq: Useq) -> bool {
        self.busy.lock().map_or(true, |b| b.contains(&(user, useq)))
    }

    /// Sends one job's notifications and records what came of them.
    async fn attempt(&self, user: UserId, useq: Useq, job: PushJob) {
        let node = &self.service.node;
        let targets = match node.push_targets(user, Consistency::Stale).await {
            Ok(t) => t,
            Err(e) => {
                tracing::debug!(user = user.0, error = %e, "push: cannot read the targets");
                return;
            }
        };
        let devices = node
            .devices(user, Consistency::Stale)
            .await
            .unwrap_or_default();
        // The app icon's count: unread messages over every conversation
        // the user is in (one scan of their views; pushes go only to
        // users who are offline, so this is not on the live path).
        let badge: u64 = node
            .user_conversations(user, Consistency::Stale)
            .await
            .unwrap_or_default()
            .iter()
            .filter(|(_, v)| v.member)
            .map(|(_, v)| v.unread())
            .sum();
        let name = Webhook::NAME;
        let metrics = &self.service.metrics;
        let mut left: Vec<DeviceId> = Vec::new();
        let mut why = String::new();
        for device in &job.devices {
            // A target removed since the job was written: nothing to send.
            let Some((_, target)) = targets.iter().find(|(d, _)| d == device) else {
                continue;
            };
            let note = Notification {
                user: Id(user.0),
                device: Id(device.0),
                platform: devices
                    .iter()
                    .find(|(d, _)| d == device)
                    .map(|(_, d)| d.platform.clone())
                    .unwrap_or_default(),
                token: target.token.clone(),
                conv: Id(job.conv.0),
                seq: job.seq.0,
                sender: Id(job.sender.0),
                useq: useq.0,
                at: job.at,
                event_id: format!("{}:{}", user.0, useq.0),
                collapse_key: job.conv.0.to_string(),
                badge,
            };
            let key = format!("{}:{}:{}", user.0, useq.0, device.0);
            match self.provider.send(&note, &key).await {
                Sent::Ok => {
                    metrics.push_sent.inc();
                    metrics.push_outcome(name, "sent");
                }
                Sent::Gone => {
                    metrics.push_outcome(name, "token_removed");
                    let clear = Command::SetPushToken {
                        user,
                        device: *device,
                        token: None,
                    };
                    self.record(clear).await;
                }
                Sent::Retry(reason) => {
                    metrics.push_failed.inc();
                    metrics.push_outcome(name, "failed");
                    tracing::debug!(user = user.0, useq = useq.0, %reason, "push attempt failed");
                    why = reason;
                    left.push(*device);
                }
            }
        }
        let now = now_micros();
        let cmd = if left.is_empty() {
            Command::PushDone {
                jobs: vec![(user, useq)],
            }
        } else if now.saturating_sub(job.since_micros)
            > self.cfg.max_age_secs.saturating_mul(1_000_000)
        {
            metrics.push_outcome(name, "dead_lettered");
            tracing::warn!(user = user.0, useq = useq.0, reason = %why, "push: dead-lettered");
            Command::PushDead {
                user,
                useq,
                reason: why,
            }
        } else {
            metrics.push_outcome(name, "retried");
            let attempts = job.attempts.saturating_add(1);
            let wait = self.backoff(attempts);
            Command::PushRetry {
                user,
                useq,
                devices: left,
                attempts,
                next_micros: now.saturating_add(wait.as_micros() as u64),
            }
        };
        self.record(cmd).await;
    }

    /// The wait before attempt `attempts + 1`: exponential from
    /// `retry_min_ms`, doubling, capped at `retry_max_ms`, with jitter.
    fn backoff(&self, attempts: u32) -> Duration {
        let min = Duration::from_millis(self.cfg.retry_min_ms);
        let max = Duration::from_millis(self.cfg.retry_max_ms.max(self.cfg.retry_min_ms));
        ExponentialBuilder::default()
            .with_min_delay(min)
            .with_max_delay(max)
            .with_factor(2.0)
            .with_jitter()
            .without_max_times()
            .build()
            .nth(attempts.saturating_sub(1) as usize)
            .unwrap_or(max)
    }

    /// Writes an outcome; a failure (this node lost the lead) is left to
    /// the next leader, which finds the job as last recorded.
    async fn record(&self, cmd: Command) {
        match self.service.write(cmd).await {
            Ok(Outcome::Rejected { code, message }) => {
                tracing::warn!(code = code.as_str(), %message, "push: outcome refused");
            }
            Ok(_) => {}
            Err(e) => tracing::debug!(error = %e.message, "push: outcome not recorded"),
        }
    }
}
