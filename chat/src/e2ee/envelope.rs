//! An encrypted message's body: one ciphertext per recipient device,
//! stored once in the message record.
//!
//! ```text
//! body = [version u8 = 1][postcard(Envelope)]
//! Envelope = payloads: varint n, then n × DevicePayload
//! DevicePayload = user: varint u64, device: varint u64,
//!                 ciphertext: varint len, len bytes
//! ```
//!
//! Payloads are sorted by (user, device) and unique, so a device's payload
//! is found by binary search when a message is rendered for it.

use serde::{Deserialize, Serialize};

use crate::ids::{DeviceId, UserId};

/// The version byte of an encoded [`Envelope`].
pub const ENVELOPE_VERSION: u8 = 1;

/// The most payloads (recipient devices) one encrypted message carries.
pub const MAX_PAYLOADS: usize = 1_024;

/// One recipient device's ciphertext.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DevicePayload {
    /// The recipient.
    pub user: UserId,
    /// Their device.
    pub device: DeviceId,
    /// What the sender encrypted for that device (opaque here).
    #[serde(with = "serde_bytes")]
    pub ciphertext: Vec<u8>,
}

/// Every recipient device's ciphertext of one message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Envelope {
    /// Sorted by (user, device), unique, none empty.
    pub payloads: Vec<DevicePayload>,
}

/// Why an envelope is refused (for a person).
pub type Refusal = String;

impl Envelope {
    /// An envelope of these payloads, sorted; refused if one is empty, a
    /// device is named twice, there are none or more than
    /// [`MAX_PAYLOADS`].
    pub fn new(mut payloads: Vec<DevicePayload>) -> Result<Envelope, Refusal> {
        if payloads.is_empty() {
            return Err("an encrypted message needs at least one payload".into());
        }
        if payloads.len() > MAX_PAYLOADS {
            return Err(format!(
                "an encrypted message carries at most {MAX_PAYLOADS} payloads, not {}",
                payloads.len()
            ));
        }
        payloads.sort_by_key(|p| (p.user, p.device));
        for w in payloads.windows(2) {
            if (w[0].user, w[0].device) == (w[1].user, w[1].device) {
                return Err(format!(
                    "device {} of user {} has two payloads",
                    w[0].device.0, w[0].user.0
                ));
            }
        }
        if let Some(p) = payloads.iter().find(|p| p.ciphertext.is_empty()) {
            return Err(format!(
                "the payload for device {} of user {} is empty",
                p.device.0, p.user.0
            ));
        }
        Ok(Envelope { payloads })
    }

    /// The stored body.
    pub fn encode(&self) -> Vec<u8> {
        // Writing into a Vec cannot fail.
        postcard::to_extend(self, vec![ENVELOPE_VERSION]).unwrap_or_default()
    }

    /// Decodes and checks a stored or proposed body.
    pub fn decode(body: &[u8]) -> Result<Envelope, Refusal> {
        match body.split_first() {
            Some((&ENVELOPE_VERSION, rest)) => {
                let e: Envelope = postcard::from_bytes(rest)
                    .map_err(|e| format!("the encrypted body does not decode: {e}"))?;
                Envelope::new(e.payloads)
            }
            Some((v, _)) => Err(format!(
                "encrypted body version {v}; this build reads {ENVELOPE_VERSION}"
            )),
            None => Err("the encrypted body is empty".into()),
        }
    }

    /// The ciphertext for one device, if the message has one for it.
    pub fn for_device(&self, user: UserId, device: DeviceId) -> Option<&[u8]> {
        self.payloads
            .binary_search_by_key(&(user, device), |p| (p.user, p.device))
            .ok()
            .map(|i| self.payloads[i].ciphertext.as_slice())
    }

    /// The users it is for, sorted, unique.
    pub fn users(&self) -> Vec<UserId> {
        let mut u: Vec<UserId> = self.payloads.iter().map(|p| p.user).collect();
        u.dedup();
        u
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(u: u64, d: u64, c: &[u8]) -> DevicePayload {
        DevicePayload {
            user: UserId(u),
            device: DeviceId(d),
            ciphertext: c.to_vec(),
        }
    }

    #[test]
    fn an_envelope_round_trips_and_finds_each_devices_payload() {
        let e =
            Envelope::new(vec![p(2, 1, b"b"), p(1, 9, b"a"), p(2, 0, b"c")]).unwrap_or_default();
        let back = Envelope::decode(&e.encode());
        assert_eq!(back.as_ref(), Ok(&e));
        assert_eq!(e.for_device(UserId(2), DeviceId(1)), Some(&b"b"[..]));
        assert_eq!(e.for_device(UserId(1), DeviceId(9)), Some(&b"a"[..]));
        assert_eq!(e.for_device(UserId(1), DeviceId(1)), None);
        assert_eq!(e.users(), vec![UserId(1), UserId(2)]);
    }

    #[test]
    fn bad_envelopes_are_refused() {
        assert!(Envelope::new(vec![]).is_err());
        assert!(Envelope::new(vec![p(1, 1, b"x"), p(1, 1, b"y")]).is_err());
        assert!(Envelope::new(vec![p(1, 1, b"")]).is_err());
        assert!(Envelope::decode(b"").is_err());
        assert!(Envelope::decode(b"\x02\x00").is_err());
        assert!(Envelope::decode(b"\x01\xff").is_err());
        assert!(Envelope::decode(&[1, 0]).is_err(), "no payloads");
    }
}
