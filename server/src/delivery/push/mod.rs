//! Push notifications: waking a user's devices when something arrived
//! while the user has no socket open anywhere — the sender of the durable
//! push outbox (`missive_chat::push` holds the records and the rules).
//!
//! # Who sends, and when
//!
//! The `Deliver` rule writes a job with every message event for a user
//! with push targets, in the batch of the event. On every node, this task
//! takes the jobs of the shards the node leads (as their events are
//! applied here, and by a scan every `SCAN_EVERY`), and for each job that
//! is due:
//!
//! - the user is online (presence has a live lease for them on some
//!   node): they got the event live; the job is done (`PushDone`);
//! - otherwise each device still to notify is sent one notification
//!   through its provider, with the idempotency key `user:useq:device`.
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
//! # Live or not
//!
//! Whether the user got the event live is decided when its notice comes
//! from apply (the moment the hub hands it to their sockets), not at the
//! next scan: a user online then is noted, and the scan marks their job
//! done without asking presence again, so one who goes offline a moment
//! later does not get a push for what they already saw. A user offline
//! then has their job (one point read) attempted at once, without a scan
//! of the shards. The periodic scan picks up the rest: retries that are
//! due, jobs of a node that just took the lead, notices missed.
//!
//! # Providers
//!
//! `providers` routes each device by its platform to APNs (`apns`), FCM
//! (`fcm`) or the operator's gateway (`webhook`); `note` is what they are
//! given. Message content goes into a notification only as a preview, for
//! a conversation whose members turned `push_previews` on, and never for
//! an end-to-end encrypted one.

mod apns;
mod fcm;
mod note;
mod providers;
mod webhook;

pub use apns::{apns_id, Apns};
pub use fcm::Fcm;
pub use note::{Notification, Preview, Sent, PREVIEW_CHARS};
pub use providers::{Providers, Route};
pub use webhook::Webhook;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use backon::{BackoffBuilder, ExponentialBuilder};
use tokio::sync::{broadcast, watch, Semaphore};

use missive_chat::apply::InboxNotice;
use missive_chat::command::{Command, DeviceId, Outcome};
use missive_chat::push::PushJob;
use missive_chat::records::{EventKind, MessageKind};
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

fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// Runs until `stop`. Does nothing if push is off (`providers` is None).
pub async fn run(
    cfg: PushSection,
    providers: Option<Providers>,
    service: Arc<Service>,
    presence: Arc<Presence>,
    mut notices: broadcast::Receiver<InboxNotice>,
    mut stop: watch::Receiver<bool>,
) {
    let Some(providers) = providers else {
        return;
    };
    let sender = Arc::new(Sender {
        providers,
        service,
        presence,
        attempts: Mutex::default(),
        live: Mutex::default(),
        slots: Arc::new(Semaphore::new(cfg.queue.max(1))),
        cfg,
    });
    let mut tick = tokio::time::interval(SCAN_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            _ = tick.tick() => sender.scan().await,
            n = notices.recv() => match n {
                Ok(n) => sender.noticed(&n),
                // Missed notices: their jobs wait for the next scan.
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => break,
            },
        }
    }
}

/// The sender's state on this node.
struct Sender {
    providers: Providers,
    service: Arc<Service>,
    presence: Arc<Presence>,
    /// Jobs being attempted now, and the ones whose attempt ended lately.
    attempts: Mutex<Attempts>,
    /// Message events applied while their user was online (delivered
    /// live), since the last scan: their jobs, if any, are done.
    live: Mutex<HashSet<(UserId, Useq)>>,
    /// Attempts running at once.
    slots: Arc<Semaphore>,
    cfg: PushSection,
}

impl Sender {
    fn leads(&self, shard: ShardId) -> bool {
        let node = &self.service.node;
        node.leader(shard).is_ok_and(|l| l == Some(node.id()))
    }

    /// An event was applied here: if it may need a push and this node
    /// sends for its user, decide now whether it was delivered live.
    fn noticed(self: &Arc<Self>, n: &InboxNotice) {
        if !matches!(n.event.event, EventKind::Message { .. })
            || !self.leads(self.service.node.slots().shard_of_user(n.user.0))
        {
            return;
        }
        if self.presence.is_online(n.user) {
            if let Ok(mut l) = self.live.lock() {
                l.insert((n.user, n.useq));
            }
            return;
        }
        // Offline: its job (if the user has push targets) now, not at the
        // next scan.
        let (user, useq) = (n.user, n.useq);
        let me = Arc::clone(self);
        tokio::spawn(async move {
            let read_at = Instant::now();
            match me.service.node.push_job(user, useq).await {
                Ok(Some(job)) if job.next_micros <= now_micros() => {
                    me.start(user, useq, job, read_at);
                }
                Ok(_) => {}
                Err(e) => tracing::debug!(user = user.0, error = %e, "push: cannot read the job"),
            };
        });
    }

    /// Starts an attempt at `job`, as read at `read_at`, unless one is
    /// running or ended after that read (the job read is then older than
    /// its record) or the attempts at once are all taken (the job stays
    /// for the next scan); false in the last case.
    fn start(self: &Arc<Self>, user: UserId, useq: Useq, job: PushJob, read_at: Instant) -> bool {
        let Ok(permit) = Arc::clone(&self.slots).try_acquire_owned() else {
            return false;
        };
        let begun = self
            .attempts
            .lock()
            .is_ok_and(|mut a| a.begin((user, useq), read_at));
        if !begun {
            return true;
        }
        let me = Arc::clone(self);
        tokio::spawn(async move {
            me.attempt(user, useq, job).await;
            if let Ok(mut a) = me.attempts.lock() {
                a.end((user, useq));
            }
            drop(permit);
        });
        true
    }

    /// One pass over the due jobs of every shard this node leads.
    async fn scan(self: &Arc<Self>) {
        // Taken before the jobs are read: an event noted after this is
        // judged by the next scan (or, if its job is read now, by
        // presence, which still shows the user online).
        let live = self
            .live
            .lock()
            .map(|mut l| std::mem::take(&mut *l))
            .unwrap_or_default();
        if let Ok(mut a) = self.attempts.lock() {
            a.forget_old();
        }
        let node = &self.service.node;
        let shards: Vec<ShardId> = node.slots().shards().filter(|s| self.leads(*s)).collect();
        for shard in shards {
            let read_at = Instant::now();
            let jobs = match node.push_jobs(shard, None, SCAN_LIMIT).await {
                Ok(j) => j,
                Err(e) => {
                    tracing::debug!(shard = shard.0, error = %e, "push: cannot read the jobs");
                    continue;
                }
            };
            let now = now_micros();
            let mut done = Vec::new();
            let mut full = false;
            for ((user, useq), job) in jobs {
                if live.contains(&(user, useq)) || self.presence.is_online(user) {
                    done.push((user, useq));
                    continue;
                }
                if full || job.next_micros > now {
                    continue;
                }
                full = !self.start(user, useq, job, read_at);
            }
            if !done.is_empty() {
                self.record(Command::PushDone { jobs: done }).await;
            }
        }
    }

    /// What the lock screen may show of the job's message: only if its
    /// conversation allows previews and is not encrypted, and only a text
    /// or a reply.
    async fn preview(&self, job: &PushJob) -> Option<Preview> {
        let node = &self.service.node;
        let conv = node
            .conversation(job.conv, Consistency::Stale)
            .await
            .ok()??;
        if conv.encrypted || !conv.push_previews {
            return None;
        }
        let m = node
            .message_by_seq(job.conv, job.seq, Consistency::Stale)
            .await
            .ok()??
            .message;
        if m.unsent.is_some() || !matches!(m.kind, MessageKind::Text | MessageKind::Reply) {
            return None;
        }
        let text = std::str::from_utf8(&m.body).ok()?;
        let name = node
            .profile(job.sender, Consistency::Stale)
            .await
            .map(|p| p.display_name)
            .unwrap_or_default();
        let title = if name.is_empty() {
            job.sender.0.to_string()
        } else {
            name
        };
        Some(Preview::new(title, text))
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
        let preview = self.preview(&job).await;
        let metrics = &self.service.metrics;
        let mut left: Vec<DeviceId> = Vec::new();
        let mut why = String::new();
        // The provider of the last failure, for the job's own outcome.
        let mut last = Webhook::NAME;
        for device in &job.devices {
            // A target removed since the job was written: nothing to send.
            let Some((_, target)) = targets.iter().find(|(d, _)| d == device) else {
                continue;
            };
            let platform = devices
                .iter()
                .find(|(d, _)| d == device)
                .map(|(_, d)| d.platform.clone())
                .unwrap_or_default();
            let Some(route) = self.providers.route(&platform) else {
                metrics.push_outcome("none", "no_provider");
                continue;
            };
            let name = route.name();
            let note = Notification {
                user: Id(user.0),
                device: Id(device.0),
                platform,
                token: target.token.clone(),
                conv: Id(job.conv.0),
                seq: job.seq.0,
                sender: Id(job.sender.0),
                useq: useq.0,
                at: job.at,
                event_id: format!("{}:{}", user.0, useq.0),
                collapse_key: job.conv.0.to_string(),
                badge,
                preview: preview.clone(),
            };
            let key = format!("{}:{}:{}", user.0, useq.0, device.0);
            match route.send(&note, &key).await {
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
                    tracing::debug!(user = user.0, useq = useq.0, provider = name, %reason, "push attempt failed");
                    why = format!("{name}: {reason}");
                    last = name;
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
            metrics.push_outcome(last, "dead_lettered");
            tracing::warn!(user = user.0, useq = useq.0, reason = %why, "push: dead-lettered");
            Command::PushDead {
                user,
                useq,
                reason: why,
            }
        } else {
            metrics.push_outcome(last, "retried");
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

/// The jobs being attempted on this node and those whose attempt ended
/// lately. A job read before its attempt's outcome was recorded is stale
/// (it still lists devices that were notified): a scan or a notice that
/// read it then must not start it again.
#[derive(Debug, Default)]
struct Attempts {
    running: HashSet<(UserId, Useq)>,
    /// When each recent attempt ended (after its outcome was recorded).
    ended: HashMap<(UserId, Useq), Instant>,
}

/// How long an ended attempt is remembered: far longer than a read of
/// the jobs takes.
const REMEMBER: Duration = Duration::from_secs(30);

impl Attempts {
    /// Marks `job` (as read at `read_at`) running, if it may start.
    fn begin(&mut self, job: (UserId, Useq), read_at: Instant) -> bool {
        if self.ended.get(&job).is_some_and(|e| *e >= read_at) {
            return false;
        }
        self.running.insert(job)
    }

    /// `job`'s attempt ended, its outcome recorded (or not: then the job
    /// is as last recorded, and a later read is right about it).
    fn end(&mut self, job: (UserId, Useq)) {
        self.running.remove(&job);
        self.ended.insert(job, Instant::now());
    }

    fn forget_old(&mut self) {
        self.ended.retain(|_, e| e.elapsed() < REMEMBER);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_read_before_its_attempt_ended_is_not_started_again() {
        let mut a = Attempts::default();
        let job = (UserId(2), Useq(7));
        let before = Instant::now();
        assert!(a.begin(job, before));
        assert!(!a.begin(job, Instant::now()), "running");
        a.end(job);
        assert!(!a.begin(job, before), "read before the end: stale");
        assert!(a.begin(job, Instant::now()), "read after the end");
    }
}
