//! The device key directory: what a device publishes, how its signature
//! is checked, and where it is stored on the owner's user shard.
//!
//! ```text
//! device keys   0x30 uslot:u16 user:u64 0x09 dev:u64          → DeviceKeys
//! one-time key  0x30 uslot:u16 user:u64 0x0a dev:u64 n:u64    → OneTimeKey
//! ```
//!
//! Values are `[version u8 = 1][postcard]` like every record
//! (`crate::records`). A device's one-time pre-keys form a queue: the
//! `n`-th key ever published for it lives under `n`; [`DeviceKeys`] holds
//! the queue's bounds (`first` is the oldest key left, `next` the `n` of
//! the next key published), so a claim reads and deletes one key by its
//! exact key — the apply rules read only point keys — and the count left
//! is `next - first`.

use ed25519_dalek::{Signature, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::ids::{DeviceId, UserId};
use crate::records::user_key;

/// The most one-time pre-keys stored for one device.
pub const MAX_ONE_TIME_KEYS: u64 = 1_000;

/// The most one-time pre-keys one publish carries.
pub const MAX_ONE_TIME_KEYS_PER_PUBLISH: usize = 200;

/// Below this many one-time pre-keys left, a claim tells the owner
/// (`EventKind::PreKeysLow`).
pub const LOW_ONE_TIME_KEYS: u64 = 10;

/// What the identity key signs: this tag, the signed pre-key's id (u32
/// big-endian) and its 32 bytes.
pub const SIGNED_PRE_KEY_CONTEXT: &[u8] = b"missive signed pre-key v1";

/// A medium-term X25519 public key, signed by the device's identity key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedPreKey {
    /// The device's id for it (clients name it in their first message).
    pub id: u32,
    /// The X25519 public key.
    pub key: [u8; 32],
    /// Ed25519 signature by the identity key over [`signed_message`].
    #[serde(with = "serde_bytes")]
    pub signature: [u8; 64],
}

/// A single-use X25519 public key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct OneTimeKey {
    /// The device's id for it.
    pub id: u32,
    /// The X25519 public key.
    pub key: [u8; 32],
}

/// A device's entry in the directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceKeys {
    /// The Ed25519 identity public key.
    pub identity: [u8; 32],
    /// The current signed pre-key.
    pub signed: SignedPreKey,
    /// When the identity key was first published (µs, leader's stamp).
    pub since_micros: u64,
    /// The queue position of the oldest one-time pre-key left.
    pub first: u64,
    /// The queue position the next published one-time pre-key gets.
    pub next: u64,
}

impl DeviceKeys {
    /// One-time pre-keys left.
    pub fn remaining(&self) -> u64 {
        self.next - self.first
    }
}

/// How a user's device list changed (`EventKind::DeviceKeys`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum KeyChange {
    /// A device published keys for the first time.
    Added,
    /// A device published a different identity key: sessions with it must
    /// start over, and its users may want to compare safety numbers.
    IdentityChanged,
    /// A device left the directory.
    Removed,
}

impl KeyChange {
    /// The stable name the protocol uses.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyChange::Added => "added",
            KeyChange::IdentityChanged => "identity_changed",
            KeyChange::Removed => "removed",
        }
    }
}

/// The bytes a signed pre-key's signature covers.
pub fn signed_message(spk: &SignedPreKey) -> Vec<u8> {
    let mut m = Vec::with_capacity(SIGNED_PRE_KEY_CONTEXT.len() + 36);
    m.extend_from_slice(SIGNED_PRE_KEY_CONTEXT);
    m.extend_from_slice(&spk.id.to_be_bytes());
    m.extend_from_slice(&spk.key);
    m
}

/// Checks that `identity` is an Ed25519 public key and signed `spk`
/// (strict verification: no malleable or small-order forms). The error is
/// for a person.
pub fn verify_signed_pre_key(
    identity: &[u8; 32],
    spk: &SignedPreKey,
) -> std::result::Result<(), &'static str> {
    let key = VerifyingKey::from_bytes(identity)
        .map_err(|_| "the identity key is not an Ed25519 public key")?;
    if key.is_weak() {
        return Err("the identity key is a weak (small-order) Ed25519 key");
    }
    let sig = Signature::from_bytes(&spk.signature);
    key.verify_strict(&signed_message(spk), &sig)
        .map_err(|_| "the signed pre-key's signature does not verify against the identity key")
}

/// Key of a device's directory entry.
pub fn device_keys_key(user: UserId, device: DeviceId) -> Vec<u8> {
    let mut k = user_key(user, 0x09);
    k.extend_from_slice(&device.0.to_be_bytes());
    k
}

/// Prefix of every directory entry of a user.
pub fn device_keys_prefix(user: UserId) -> Vec<u8> {
    user_key(user, 0x09)
}

/// Key of a device's `n`-th one-time pre-key.
pub fn one_time_key(user: UserId, device: DeviceId, n: u64) -> Vec<u8> {
    let mut k = user_key(user, 0x0a);
    k.extend_from_slice(&device.0.to_be_bytes());
    k.extend_from_slice(&n.to_be_bytes());
    k
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::{Signer, SigningKey};

    fn signed(sk: &SigningKey, id: u32, key: [u8; 32]) -> SignedPreKey {
        let mut spk = SignedPreKey {
            id,
            key,
            signature: [0; 64],
        };
        spk.signature = sk.sign(&signed_message(&spk)).to_bytes();
        spk
    }

    #[test]
    fn a_signature_verifies_only_over_its_own_key_and_id() {
        let sk = SigningKey::from_bytes(&[7; 32]);
        let identity = sk.verifying_key().to_bytes();
        let spk = signed(&sk, 3, [9; 32]);
        assert_eq!(verify_signed_pre_key(&identity, &spk), Ok(()));
        let other_key = SignedPreKey {
            key: [8; 32],
            ..spk
        };
        assert!(verify_signed_pre_key(&identity, &other_key).is_err());
        let other_id = SignedPreKey { id: 4, ..spk };
        assert!(verify_signed_pre_key(&identity, &other_id).is_err());
        let stranger = SigningKey::from_bytes(&[1; 32]).verifying_key().to_bytes();
        assert!(verify_signed_pre_key(&stranger, &spk).is_err());
        // The identity point of order 1 is weak: anything "verifies".
        let mut weak = [0u8; 32];
        weak[0] = 1;
        assert!(verify_signed_pre_key(&weak, &spk).is_err());
    }

    #[test]
    fn one_time_keys_sort_by_device_then_position() {
        let u = UserId(5);
        assert!(one_time_key(u, DeviceId(1), 9) < one_time_key(u, DeviceId(1), 10));
        assert!(one_time_key(u, DeviceId(1), u64::MAX) < one_time_key(u, DeviceId(2), 0));
        assert!(device_keys_key(u, DeviceId(3)).starts_with(&device_keys_prefix(u)));
    }
}
