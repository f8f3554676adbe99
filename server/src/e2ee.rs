//! End-to-end encryption at the edge (`missive_chat::e2ee` holds the
//! rules): the key directory's calls, the device-list check of an
//! encrypted send, and the announcement of device-list changes to the
//! conversations of the user whose devices changed.
//!
//! Everything here reads other shards than the one a command runs on (a
//! send's members' device lists live on their user shards), so it runs at
//! the edge, before proposing: the check is as fresh as a linearizable
//! read of each list, which is what Signal's server gives its clients too.

use base64::Engine as _;
use futures_util::stream::{self, StreamExt as _};
use serde::{Deserialize, Serialize};

use missive_chat::command::{Bundle, Command, DeviceId, Outcome, UserId};
use missive_chat::e2ee::{
    DeviceKeys, DevicePayload, Envelope, KeyChange, OneTimeKey, SignedPreKey,
};
use missive_chat::records::Conversation;
use missive_engine::keys::ConversationId;

use crate::auth::Caller;
use crate::error::{ApiError, DeviceRef, StaleDevices};
use crate::rate::Class;
use crate::service::Service;
use crate::wire::Id;

/// Conversations announced to at once after a device-list change.
const ANNOUNCE_AT_ONCE: usize = 8;

/// A device's keys as a client publishes them (JSON; gRPC fills the same).
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PublishIn {
    /// Ed25519 public key, base64 (32 bytes).
    pub identity_key: String,
    /// The signed pre-key.
    pub signed_prekey: SignedPreKeyIo,
    /// One-time pre-keys to add (at most 200).
    #[serde(default)]
    pub one_time_prekeys: Vec<OneTimeKeyIo>,
}

/// A signed pre-key on the wire.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SignedPreKeyIo {
    /// The device's id for it.
    pub id: u32,
    /// X25519 public key, base64 (32 bytes).
    pub key: String,
    /// Ed25519 signature, base64 (64 bytes), over
    /// `"missive signed pre-key v1" ‖ id (u32 BE) ‖ key`.
    pub signature: String,
}

/// A one-time pre-key on the wire.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OneTimeKeyIo {
    /// The device's id for it.
    pub id: u32,
    /// X25519 public key, base64 (32 bytes).
    pub key: String,
}

/// One device's keys as a claim or a listing answers them.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct BundleOut {
    /// The device.
    #[schema(value_type = String)]
    pub device: Id,
    /// Ed25519 identity key, base64.
    pub identity_key: String,
    /// The signed pre-key.
    pub signed_prekey: SignedPreKeyIo,
    /// A one-time pre-key, now consumed (claims only; absent if the device
    /// had none left).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub one_time_prekey: Option<OneTimeKeyIo>,
}

/// A payload of an encrypted send, as JSON gives it.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PayloadIn {
    /// The recipient.
    #[schema(value_type = String)]
    pub user: Id,
    /// Their device.
    #[schema(value_type = String)]
    pub device: Id,
    /// The ciphertext, base64.
    pub ciphertext_b64: String,
}

/// What a publish or removal answers.
#[derive(Debug, Clone, Copy)]
pub struct KeysAck {
    /// The device.
    pub device: DeviceId,
    /// Its one-time pre-keys left.
    pub remaining: u64,
    /// How the device list changed.
    pub change: Option<KeyChange>,
}

impl KeysAck {
    /// As JSON.
    pub fn json(self) -> serde_json::Value {
        serde_json::json!({
            "device": Id(self.device.0),
            "one_time_prekeys": self.remaining,
            "change": self.change.map(KeyChange::as_str),
        })
    }
}

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

/// Decodes a base64 field of exactly `N` bytes.
fn fixed<const N: usize>(field: &str, v: &str) -> Result<[u8; N], ApiError> {
    let bytes = b64()
        .decode(v)
        .map_err(|e| ApiError::invalid(format!("{field} is not base64: {e}")))?;
    bytes.try_into().map_err(|b: Vec<u8>| {
        ApiError::invalid(format!("{field} must be {N} bytes, not {}", b.len()))
    })
}

/// Raw bytes of exactly `N` (gRPC).
pub fn fixed_bytes<const N: usize>(field: &str, v: Vec<u8>) -> Result<[u8; N], ApiError> {
    v.try_into().map_err(|b: Vec<u8>| {
        ApiError::invalid(format!("{field} must be {N} bytes, not {}", b.len()))
    })
}

impl SignedPreKeyIo {
    fn parse(&self) -> Result<SignedPreKey, ApiError> {
        Ok(SignedPreKey {
            id: self.id,
            key: fixed("signed_prekey.key", &self.key)?,
            signature: fixed("signed_prekey.signature", &self.signature)?,
        })
    }

    fn of(k: &SignedPreKey) -> Self {
        SignedPreKeyIo {
            id: k.id,
            key: b64().encode(k.key),
            signature: b64().encode(k.signature),
        }
    }
}

impl PublishIn {
    /// The parsed keys: (identity, signed pre-key, one-time pre-keys).
    pub fn parse(&self) -> Result<([u8; 32], SignedPreKey, Vec<OneTimeKey>), ApiError> {
        let identity = fixed("identity_key", &self.identity_key)?;
        let signed = self.signed_prekey.parse()?;
        let one_time = self
            .one_time_prekeys
            .iter()
            .map(|k| {
                Ok(OneTimeKey {
                    id: k.id,
                    key: fixed("one_time_prekeys[].key", &k.key)?,
                })
            })
            .collect::<Result<_, ApiError>>()?;
        Ok((identity, signed, one_time))
    }
}

impl PayloadIn {
    /// The payload, its ciphertext decoded.
    pub fn parse(self) -> Result<DevicePayload, ApiError> {
        Ok(DevicePayload {
            user: UserId(self.user.0),
            device: DeviceId(self.device.0),
            ciphertext: b64()
                .decode(&self.ciphertext_b64)
                .map_err(|e| ApiError::invalid(format!("ciphertext_b64 is not base64: {e}")))?,
        })
    }
}

/// A device's entry as the wire shows it.
pub fn bundle_out(device: DeviceId, keys: &DeviceKeys, one_time: Option<OneTimeKey>) -> BundleOut {
    BundleOut {
        device: Id(device.0),
        identity_key: b64().encode(keys.identity),
        signed_prekey: SignedPreKeyIo::of(&keys.signed),
        one_time_prekey: one_time.map(|k| OneTimeKeyIo {
            id: k.id,
            key: b64().encode(k.key),
        }),
    }
}

impl Service {
    /// Publishes the calling device's keys; announces a device-list
    /// change in the user's conversations.
    pub async fn publish_keys(
        &self,
        who: Caller,
        identity: [u8; 32],
        signed: SignedPreKey,
        one_time: Vec<OneTimeKey>,
    ) -> Result<KeysAck, ApiError> {
        let cmd = Command::PublishKeys {
            user: who.user,
            device: who.device,
            identity,
            signed,
            one_time,
        };
        self.keys_written(who.user, who.device, cmd).await
    }

    /// Removes one of the caller's devices from the key directory.
    pub async fn remove_keys(&self, who: Caller, device: DeviceId) -> Result<KeysAck, ApiError> {
        let cmd = Command::RemoveKeys {
            user: who.user,
            device,
        };
        self.keys_written(who.user, device, cmd).await
    }

    async fn keys_written(
        &self,
        user: UserId,
        device: DeviceId,
        cmd: Command,
    ) -> Result<KeysAck, ApiError> {
        self.rates.check(Class::Keys, user)?;
        let Outcome::Keys { change, remaining } = self.write(cmd).await? else {
            return Err(ApiError::internal(&"unexpected outcome of a key command"));
        };
        if let Some(change) = change {
            self.announce_keys(user, device, change).await;
        }
        Ok(KeysAck {
            device,
            remaining,
            change,
        })
    }

    /// Tells every conversation `user` is in that their device list
    /// changed (best effort: a failure is logged; the stale-device check
    /// of every send keeps correctness).
    async fn announce_keys(&self, user: UserId, device: DeviceId, change: KeyChange) {
        let convs = match self.conversation_list(user).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(user = user.0, error = %e.message, "device-list change not announced");
                return;
            }
        };
        stream::iter(convs)
            .for_each_concurrent(ANNOUNCE_AT_ONCE, |entry| async move {
                let cmd = Command::NoteKeys {
                    conv: entry.conv,
                    user,
                    device,
                    change,
                };
                if let Err(e) = self.write(cmd).await {
                    tracing::warn!(user = user.0, conv = entry.conv.0, error = %e.message,
                        "device-list change not announced in a conversation");
                }
            })
            .await;
    }

    /// The calling device's one-time pre-keys left (0 if it published
    /// none).
    pub async fn key_status(&self, who: Caller) -> Result<KeysAck, ApiError> {
        let list = self.device_list(who.user).await?;
        let remaining = list
            .iter()
            .find(|(d, _)| *d == who.device)
            .map_or(0, |(_, k)| k.remaining());
        Ok(KeysAck {
            device: who.device,
            remaining,
            change: None,
        })
    }

    /// `user`'s device list (linearizable). A user who published no keys
    /// and one who does not exist answer alike: empty.
    pub async fn device_list(&self, user: UserId) -> Result<Vec<(DeviceId, DeviceKeys)>, ApiError> {
        self.read(|c| self.node.device_keys(user, c)).await
    }

    /// Claims a bundle for each of `user`'s devices (or the listed ones),
    /// each consuming one one-time pre-key. Rate limited like sends: a
    /// stranger draining someone's keys is limited to the send rate.
    pub async fn claim_keys(
        &self,
        who: UserId,
        user: UserId,
        mut devices: Vec<DeviceId>,
    ) -> Result<Vec<Bundle>, ApiError> {
        use missive_chat::apply::keys::MAX_CLAIMED_DEVICES;
        if devices.len() > MAX_CLAIMED_DEVICES {
            return Err(ApiError::invalid(format!(
                "claim at most {MAX_CLAIMED_DEVICES} devices at once"
            )));
        }
        self.rates.check(Class::Send, who)?;
        if devices.is_empty() {
            devices = self
                .device_list(user)
                .await?
                .into_iter()
                .map(|(d, _)| d)
                .take(MAX_CLAIMED_DEVICES)
                .collect();
        }
        if devices.is_empty() {
            return Ok(Vec::new());
        }
        match self.write(Command::ClaimKeys { user, devices }).await? {
            Outcome::Claimed { bundles } => Ok(bundles),
            other => Err(ApiError::internal(&format!("unexpected outcome {other:?}"))),
        }
    }

    /// Checks an encrypted send's payloads against the members' current
    /// device lists: every device of every member (the sender's other
    /// devices included, the sending device excluded) gets exactly one.
    /// Answers the envelope to store, or `stale_devices`.
    pub(crate) async fn seal(
        &self,
        who: Caller,
        c: &Conversation,
        payloads: Vec<DevicePayload>,
    ) -> Result<Envelope, ApiError> {
        let envelope = Envelope::new(payloads).map_err(ApiError::invalid)?;
        let lists: Vec<Result<Vec<(UserId, DeviceId)>, ApiError>> =
            stream::iter(c.members.iter().copied())
                .map(|u| async move {
                    Ok(self
                        .device_list(u)
                        .await?
                        .into_iter()
                        .map(|(d, _)| (u, d))
                        .collect())
                })
                .buffered(ANNOUNCE_AT_ONCE)
                .collect()
                .await;
        let mut want = std::collections::BTreeSet::new();
        for l in lists {
            want.extend(l?);
        }
        want.remove(&(who.user, who.device));
        let have: std::collections::BTreeSet<(UserId, DeviceId)> = envelope
            .payloads
            .iter()
            .map(|p| (p.user, p.device))
            .collect();
        let r = |(u, d): &(UserId, DeviceId)| DeviceRef {
            user: Id(u.0),
            device: Id(d.0),
        };
        let missing: Vec<DeviceRef> = want.difference(&have).map(r).collect();
        let extra: Vec<DeviceRef> = have.difference(&want).map(r).collect();
        if missing.is_empty() && extra.is_empty() {
            return Ok(envelope);
        }
        Err(ApiError::stale_devices(StaleDevices {
            missing_devices: missing,
            extra_devices: extra,
        }))
    }

    /// Marks a conversation end-to-end encrypted (see
    /// `missive_chat::e2ee`); false if it already was.
    pub async fn encrypt(&self, who: UserId, conv: ConversationId) -> Result<bool, ApiError> {
        match self.write(Command::Encrypt { conv, actor: who }).await? {
            Outcome::EncryptedOn { changed } => Ok(changed),
            other => Err(ApiError::internal(&format!("unexpected outcome {other:?}"))),
        }
    }
}
