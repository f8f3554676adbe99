//! The push outbox's rules (`crate::push`): a job written with each
//! message event for a user with push targets (by `deliver`), and what the
//! sender records of its attempts.

use missive_raft::Result;

use super::Apply;
use crate::command::Outcome;
use crate::ids::{DeviceId, Useq, UserId};
use crate::push::{
    dead_key, job_key, push_devices_key, DeadPush, PushDevices, PushJob, MAX_REASON,
};
use crate::records::InboxEvent;

impl Apply<'_, '_> {
    /// Writes the push job of a message event just appended to `user`'s
    /// inbox at `useq`, if the user has devices with push targets.
    pub(super) fn push_job(&mut self, user: UserId, useq: Useq, e: &InboxEvent) -> Result<()> {
        let crate::records::EventKind::Message { seq, sender, .. } = e.event else {
            return Ok(());
        };
        if sender == user {
            return Ok(());
        }
        let Some(list) = self
            .rec
            .get_as_often_absent::<PushDevices>("push devices", &push_devices_key(user))?
            .filter(|l| !l.devices.is_empty())
        else {
            return Ok(());
        };
        let job = PushJob {
            conv: e.conv,
            seq,
            sender,
            at: e.at,
            devices: list.devices,
            attempts: 0,
            next_micros: e.at,
            since_micros: e.at,
        };
        self.rec.put_as(job_key(user, useq), &job)
    }

    /// Keeps the push-device list beside a target being set or cleared.
    pub(super) fn note_push_device(
        &mut self,
        user: UserId,
        device: DeviceId,
        set: bool,
    ) -> Result<()> {
        let key = push_devices_key(user);
        let mut list: PushDevices = self.rec.get_as("push devices", &key)?.unwrap_or_default();
        let at = list.devices.binary_search(&device);
        match (set, at) {
            (true, Err(i)) => list.devices.insert(i, device),
            (false, Ok(i)) => {
                list.devices.remove(i);
            }
            _ => return Ok(()),
        }
        if list.devices.is_empty() {
            self.rec.delete(key);
            Ok(())
        } else {
            self.rec.put_as(key, &list)
        }
    }

    /// `PushDone`: the jobs are deleted.
    pub(super) fn push_done(&mut self, jobs: &[(UserId, Useq)]) -> Result<Outcome> {
        let mut changed = 0;
        for (user, useq) in jobs {
            let key = job_key(*user, *useq);
            if self.rec.get(&key)?.is_some() {
                self.rec.delete(key);
                changed += 1;
            }
        }
        Ok(Outcome::Push { changed })
    }

    /// `PushRetry`: the job keeps `devices`, its attempts and next time.
    pub(super) fn push_retry(
        &mut self,
        user: UserId,
        useq: Useq,
        devices: &[DeviceId],
        attempts: u32,
        next_micros: u64,
    ) -> Result<Outcome> {
        let key = job_key(user, useq);
        let Some(mut job) = self.rec.get_as::<PushJob>("push job", &key)? else {
            return Ok(Outcome::Push { changed: 0 });
        };
        job.devices.retain(|d| devices.contains(d));
        job.attempts = attempts;
        job.next_micros = next_micros;
        self.rec.put_as(key, &job)?;
        Ok(Outcome::Push { changed: 1 })
    }

    /// `PushDead`: the job becomes a dead letter.
    pub(super) fn push_dead(
        &mut self,
        user: UserId,
        useq: Useq,
        reason: &str,
        stamp: u64,
    ) -> Result<Outcome> {
        let key = job_key(user, useq);
        let Some(job) = self.rec.get_as::<PushJob>("push job", &key)? else {
            return Ok(Outcome::Push { changed: 0 });
        };
        let mut reason = reason.to_string();
        if reason.len() > MAX_REASON {
            let mut end = MAX_REASON;
            while !reason.is_char_boundary(end) {
                end -= 1;
            }
            reason.truncate(end);
        }
        self.rec.delete(key);
        let dead = DeadPush {
            job,
            died_micros: stamp,
            reason,
        };
        self.rec.put_as(dead_key(user, useq), &dead)?;
        Ok(Outcome::Push { changed: 1 })
    }

    /// `PushReplay`: a dead letter is pending again, due now.
    pub(super) fn push_replay(&mut self, user: UserId, useq: Useq, stamp: u64) -> Result<Outcome> {
        let key = dead_key(user, useq);
        let Some(dead) = self.rec.get_as::<DeadPush>("dead push", &key)? else {
            return Ok(Outcome::Push { changed: 0 });
        };
        self.rec.delete(key);
        let job = PushJob {
            attempts: 0,
            next_micros: stamp,
            since_micros: stamp,
            ..dead.job
        };
        self.rec.put_as(job_key(user, useq), &job)?;
        Ok(Outcome::Push { changed: 1 })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]

    use missive_engine::keys::ConversationId;

    use super::*;
    use crate::apply::tests::Shard;
    use crate::command::{Command, Delivery};
    use crate::ids::{Eseq, Seq};
    use crate::records::EventKind;

    trait Jobs {
        fn job(&self, user: u64, useq: u64) -> Option<PushJob>;
    }

    impl Jobs for Shard {
        fn job(&self, user: u64, useq: u64) -> Option<PushJob> {
            let v = self.kv.get(&job_key(UserId(user), Useq(useq)))?;
            Some(crate::records::decode("job", v).unwrap())
        }
    }

    fn message(user: u64, eseq: u64, sender: u64) -> Command {
        Command::Deliver {
            items: vec![Delivery {
                user: UserId(user),
                conv: ConversationId(9),
                eseq: Eseq(eseq),
                event: EventKind::Message {
                    seq: Seq(eseq),
                    ts: 500 + eseq,
                    sender: UserId(sender),
                    expires_at: None,
                },
                at: 600 + eseq,
            }],
        }
    }

    fn token(device: u64, token: Option<&str>) -> Command {
        Command::SetPushToken {
            user: UserId(2),
            device: DeviceId(device),
            token: token.map(str::to_string),
        }
    }

    #[test]
    fn a_job_is_written_with_each_pushable_event_and_follows_its_attempts() {
        let mut s = Shard::default();
        s.out(message(2, 1, 1));
        assert_eq!(s.job(2, 1), None, "no push target: no job");
        s.out(token(5, Some("t5")));
        s.out(token(3, Some("t3")));
        s.out(message(2, 2, 1));
        s.out(message(2, 3, 2));
        let job = s.job(2, 2).unwrap();
        assert_eq!(job.devices, vec![DeviceId(3), DeviceId(5)]);
        assert_eq!(
            (job.seq, job.sender, job.at, job.next_micros),
            (Seq(2), UserId(1), 602, 602)
        );
        assert_eq!(s.job(2, 3), None, "the user's own message is not pushed");
        s.out(token(5, None));
        s.out(message(2, 4, 1));
        assert_eq!(s.job(2, 4).unwrap().devices, vec![DeviceId(3)]);

        let retry = Command::PushRetry {
            user: UserId(2),
            useq: Useq(2),
            devices: vec![DeviceId(5)],
            attempts: 1,
            next_micros: 9_000,
        };
        assert_eq!(s.out(retry), Outcome::Push { changed: 1 });
        let job = s.job(2, 2).unwrap();
        assert_eq!(
            (job.devices, job.attempts, job.next_micros),
            (vec![DeviceId(5)], 1, 9_000)
        );
        let dead = Command::PushDead {
            user: UserId(2),
            useq: Useq(2),
            reason: "x".repeat(MAX_REASON + 10),
        };
        assert_eq!(s.out(dead.clone()), Outcome::Push { changed: 1 });
        assert_eq!(s.out(dead), Outcome::Push { changed: 0 }, "moved once");
        assert_eq!(s.job(2, 2), None);
        let d: DeadPush =
            crate::records::decode("dead", &s.kv[&dead_key(UserId(2), Useq(2))]).unwrap();
        assert_eq!(d.reason.len(), MAX_REASON);
        let replay = Command::PushReplay {
            user: UserId(2),
            useq: Useq(2),
        };
        assert_eq!(s.out(replay), Outcome::Push { changed: 1 });
        let job = s.job(2, 2).unwrap();
        assert_eq!((job.attempts, job.devices.clone()), (0, vec![DeviceId(5)]));
        assert!(!s.kv.contains_key(&dead_key(UserId(2), Useq(2))));
        let done = Command::PushDone {
            jobs: vec![
                (UserId(2), Useq(2)),
                (UserId(2), Useq(4)),
                (UserId(2), Useq(99)),
            ],
        };
        assert_eq!(s.out(done), Outcome::Push { changed: 2 });
        assert_eq!((s.job(2, 2), s.job(2, 4)), (None, None));
    }
}
