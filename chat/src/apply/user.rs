//! A user's own records on the user's shard: devices, push tokens, the
//! profile, redeemed tickets and token revocations.

use missive_raft::Result;

use super::reject;
use super::Apply;
use crate::command::{Outcome, RejectCode, RevokeScope, MAX_LIVE_TICKETS, MAX_REVOKED_DEVICES};
use crate::ids::{DeviceId, UserId};
use crate::records::{
    device_key, profile_key, push_key, revocations_key, ticket_uses_key, Device, Profile,
    PushTarget, Revocations, TicketUses,
};

/// The leader's stamp (µs) in whole seconds, the unit of token times.
fn stamp_secs(stamp: u64) -> u64 {
    stamp / 1_000_000
}

impl Apply<'_, '_> {
    /// Registers (or renames) a device; its registration time is kept.
    pub(super) fn register_device(
        &mut self,
        user: UserId,
        device: DeviceId,
        name: &str,
        platform: &str,
        stamp: u64,
    ) -> Result<Outcome> {
        let key = device_key(user, device);
        let registered_micros = self
            .rec
            .get_as::<Device>("device", &key)?
            .map_or(stamp, |d| d.registered_micros);
        self.rec.put_as(
            key,
            &Device {
                name: name.to_string(),
                platform: platform.to_string(),
                registered_micros,
            },
        )?;
        Ok(Outcome::Done)
    }

    /// Sets or (with `None`) clears a device's push token.
    pub(super) fn set_push_token(
        &mut self,
        user: UserId,
        device: DeviceId,
        token: Option<&str>,
        stamp: u64,
    ) -> Result<Outcome> {
        let key = push_key(user, device);
        match token {
            Some(token) => self.rec.put_as(
                key,
                &PushTarget {
                    token: token.to_string(),
                    set_micros: stamp,
                },
            )?,
            None => self.rec.delete(key),
        }
        self.note_push_device(user, device, token.is_some())?;
        Ok(Outcome::Done)
    }

    /// Sets the user's profile.
    pub(super) fn set_profile(&mut self, user: UserId, display_name: &str) -> Result<Outcome> {
        self.rec.put_as(
            profile_key(user),
            &Profile {
                display_name: display_name.to_string(),
            },
        )?;
        Ok(Outcome::Done)
    }

    /// Redeems a ticket once. Expired ids are dropped first (by the
    /// leader's stamp, the same on every replica), so the record holds
    /// only the tickets that could still be presented.
    pub(super) fn use_ticket(
        &mut self,
        user: UserId,
        ticket: [u8; 16],
        expires_secs: u64,
        stamp: u64,
    ) -> Result<Outcome> {
        let now = stamp_secs(stamp);
        if expires_secs < now {
            return Ok(reject(RejectCode::TooLate, "the ticket has expired"));
        }
        let key = ticket_uses_key(user);
        let mut uses = self
            .rec
            .get_as::<TicketUses>("ticket uses", &key)?
            .unwrap_or_default();
        uses.used.retain(|(_, exp)| *exp >= now);
        if uses.used.iter().any(|(id, _)| *id == ticket) {
            return Ok(reject(RejectCode::Conflict, "the ticket was used already"));
        }
        if uses.used.len() >= MAX_LIVE_TICKETS {
            return Ok(reject(
                RejectCode::Invalid,
                "too many tickets redeemed in their lifetime; wait and retry",
            ));
        }
        uses.used.push((ticket, expires_secs));
        self.rec.put_as(key, &uses)?;
        Ok(Outcome::Done)
    }

    /// Revokes the tokens of `scope`'s devices issued up to the stamp.
    pub(super) fn revoke_sessions(
        &mut self,
        user: UserId,
        scope: &RevokeScope,
        stamp: u64,
    ) -> Result<Outcome> {
        let now = stamp_secs(stamp);
        let key = revocations_key(user);
        let mut r = self
            .rec
            .get_as::<Revocations>("revocations", &key)?
            .unwrap_or_default();
        match scope {
            RevokeScope::AllBut(keep) => {
                r.all_before = now;
                r.keep = *keep;
                // Per-device entries at or before `now` say nothing more,
                // except the kept device's own.
                r.devices
                    .retain(|(d, until)| *until > now || *keep == Some(*d));
            }
            RevokeScope::Devices(devices) => {
                if devices.is_empty() || devices.len() > MAX_REVOKED_DEVICES {
                    return Ok(reject(
                        RejectCode::Invalid,
                        format!("name 1 to {MAX_REVOKED_DEVICES} devices"),
                    ));
                }
                for d in devices {
                    match r.devices.iter_mut().find(|(x, _)| x == d) {
                        Some(e) => e.1 = now,
                        None => r.devices.push((*d, now)),
                    }
                }
                // Entries covered by `all_before` for that device add nothing.
                let (all, keep) = (r.all_before, r.keep);
                r.devices
                    .retain(|(d, until)| *until > all || keep == Some(*d));
            }
        }
        self.rec.put_as(key, &r)?;
        Ok(Outcome::Done)
    }
}
