//! A user's own records on the user's shard: devices, push tokens, the
//! profile.

use missive_raft::Result;

use super::Apply;
use crate::command::Outcome;
use crate::ids::{DeviceId, UserId};
use crate::records::{device_key, profile_key, push_key, Device, Profile, PushTarget};

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
}
