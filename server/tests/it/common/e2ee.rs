//! A test client for end-to-end encryption: an X3DH-style handshake over
//! the server's key directory, then ChaCha20-Poly1305 under the agreed key.
//! The server sees only public keys and ciphertext.
//!
//! Identity keys are Ed25519 (what the server verifies signatures with);
//! for Diffie-Hellman each side converts its identity key to X25519 (the
//! birational map libsodium calls `ed25519_pk_to_curve25519`). A session
//! starts with `DH(IKa, SPKb) ‖ DH(EKa, IKb) ‖ DH(EKa, SPKb) ‖ DH(EKa,
//! OPKb)` through a KDF; the first message carries Alice's identity and
//! ephemeral keys and which pre-keys she used.

use std::collections::HashMap;

use base64::Engine as _;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use serde_json::{json, Value};
use x25519_dalek::{PublicKey, StaticSecret};

use super::Http;

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(b)
}

fn unb64(s: &str) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD.decode(s).unwrap()
}

fn random32() -> [u8; 32] {
    let mut b = [0u8; 32];
    getrandom::fill(&mut b).unwrap();
    b
}

fn arr<const N: usize>(v: &[u8]) -> [u8; N] {
    v.try_into().unwrap()
}

/// The X25519 form of an Ed25519 identity public key.
fn identity_dh_public(ed: &[u8; 32]) -> PublicKey {
    PublicKey::from(
        VerifyingKey::from_bytes(ed)
            .unwrap()
            .to_montgomery()
            .to_bytes(),
    )
}

fn kdf(parts: &[[u8; 32]]) -> [u8; 32] {
    let mut ikm = Vec::new();
    for p in parts {
        ikm.extend_from_slice(p);
    }
    blake3::derive_key("missive test x3dh 2026-12-04 session key", &ikm)
}

/// One device of a user: its secrets, and its sessions with others.
pub struct Device {
    pub user: u64,
    pub device: u64,
    pub http: Http,
    identity: SigningKey,
    signed_id: u32,
    signed: StaticSecret,
    one_time: HashMap<u32, StaticSecret>,
    next_one_time: u32,
    /// (user, device) → (key, messages sent on it).
    sessions: HashMap<(u64, u64), ([u8; 32], u64)>,
}

impl Device {
    pub fn new(user: u64, device: u64, http: Http) -> Device {
        Device {
            user,
            device,
            http,
            identity: SigningKey::from_bytes(&random32()),
            signed_id: 1,
            signed: StaticSecret::from(random32()),
            one_time: HashMap::new(),
            next_one_time: 1,
            sessions: HashMap::new(),
        }
    }

    pub fn identity_public(&self) -> [u8; 32] {
        self.identity.verifying_key().to_bytes()
    }

    fn identity_dh_secret(&self) -> StaticSecret {
        StaticSecret::from(self.identity.to_scalar_bytes())
    }

    /// The publish body with `n` new one-time pre-keys.
    pub fn publish_body(&mut self, n: u32) -> Value {
        let spk = PublicKey::from(&self.signed).to_bytes();
        let mut msg = b"missive signed pre-key v1".to_vec();
        msg.extend_from_slice(&self.signed_id.to_be_bytes());
        msg.extend_from_slice(&spk);
        let sig = self.identity.sign(&msg).to_bytes();
        let mut otks = Vec::new();
        for _ in 0..n {
            let id = self.next_one_time;
            self.next_one_time += 1;
            let s = StaticSecret::from(random32());
            otks.push(json!({"id": id, "key": b64(PublicKey::from(&s).as_bytes())}));
            self.one_time.insert(id, s);
        }
        json!({
            "identity_key": b64(&self.identity_public()),
            "signed_prekey": {"id": self.signed_id, "key": b64(&spk), "signature": b64(&sig)},
            "one_time_prekeys": otks,
        })
    }

    /// Publishes over HTTP; the answer.
    pub async fn publish(&mut self, n: u32) -> Value {
        let body = self.publish_body(n);
        let (s, v) = self.http.put("/v1/keys", body).await;
        assert_eq!(s, 200, "{v}");
        v
    }

    /// Starts a session with each device of `bundles` (a claim's answer
    /// for `user`); the handshake header for each device.
    pub fn start_sessions(&mut self, user: u64, bundles: &Value) -> HashMap<u64, Vec<u8>> {
        let mut headers = HashMap::new();
        for b in bundles["devices"].as_array().unwrap() {
            let device: u64 = b["device"].as_str().unwrap().parse().unwrap();
            let ik: [u8; 32] = arr(&unb64(b["identity_key"].as_str().unwrap()));
            let spk = PublicKey::from(arr::<32>(&unb64(
                b["signed_prekey"]["key"].as_str().unwrap(),
            )));
            let spk_id = b["signed_prekey"]["id"].as_u64().unwrap() as u32;
            let ek = StaticSecret::from(random32());
            let mut parts = vec![
                self.identity_dh_secret().diffie_hellman(&spk).to_bytes(),
                ek.diffie_hellman(&identity_dh_public(&ik)).to_bytes(),
                ek.diffie_hellman(&spk).to_bytes(),
            ];
            let mut opk_id = u32::MAX;
            if let Some(o) = b.get("one_time_prekey") {
                opk_id = o["id"].as_u64().unwrap() as u32;
                let opk = PublicKey::from(arr::<32>(&unb64(o["key"].as_str().unwrap())));
                parts.push(ek.diffie_hellman(&opk).to_bytes());
            }
            let mut header = vec![1u8];
            header.extend_from_slice(&self.identity_public());
            header.extend_from_slice(PublicKey::from(&ek).as_bytes());
            header.extend_from_slice(&spk_id.to_be_bytes());
            header.extend_from_slice(&opk_id.to_be_bytes());
            self.sessions.insert((user, device), (kdf(&parts), 0));
            headers.insert(device, header);
        }
        headers
    }

    /// Encrypts `plain` for (user, device), whose session exists; the
    /// first message on a session carries `header`.
    pub fn seal(&mut self, to: (u64, u64), header: Option<&[u8]>, plain: &[u8]) -> Vec<u8> {
        let (key, n) = self.sessions.get_mut(&to).expect("a session");
        *n += 1;
        let mut nonce = [0u8; 12];
        nonce[4..].copy_from_slice(&n.to_be_bytes());
        let mut out = match header {
            Some(h) => h.to_vec(),
            None => vec![2u8],
        };
        // The sender is named inside the authenticated data.
        let aad = format!("{}:{}", self.user, self.device);
        let ct = ChaCha20Poly1305::new(&Key::from(*key))
            .encrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: plain,
                    aad: aad.as_bytes(),
                },
            )
            .unwrap();
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        out
    }

    /// Decrypts a payload from (user, device), starting the session from
    /// its header if it is the first.
    pub fn open(&mut self, from: (u64, u64), payload: &[u8]) -> Vec<u8> {
        let rest = match payload[0] {
            1 => {
                let ik: [u8; 32] = arr(&payload[1..33]);
                let ek = PublicKey::from(arr::<32>(&payload[33..65]));
                let spk_id = u32::from_be_bytes(arr(&payload[65..69]));
                let opk_id = u32::from_be_bytes(arr(&payload[69..73]));
                assert_eq!(spk_id, self.signed_id);
                let mut parts = vec![
                    self.signed
                        .diffie_hellman(&identity_dh_public(&ik))
                        .to_bytes(),
                    self.identity_dh_secret().diffie_hellman(&ek).to_bytes(),
                    self.signed.diffie_hellman(&ek).to_bytes(),
                ];
                if opk_id != u32::MAX {
                    // Used once: a second message naming it could not start.
                    let opk = self
                        .one_time
                        .remove(&opk_id)
                        .expect("an unused one-time key");
                    parts.push(opk.diffie_hellman(&ek).to_bytes());
                }
                self.sessions.insert(from, (kdf(&parts), 0));
                &payload[73..]
            }
            2 => &payload[1..],
            other => panic!("payload type {other}"),
        };
        let (key, _) = self.sessions.get(&from).expect("a session");
        let aad = format!("{}:{}", from.0, from.1);
        ChaCha20Poly1305::new(&Key::from(*key))
            .decrypt(
                &Nonce::from(arr::<12>(&rest[..12])),
                Payload {
                    msg: &rest[12..],
                    aad: aad.as_bytes(),
                },
            )
            .expect("decrypts")
    }

    /// Claims bundles of `user`'s devices (all, or `devices`).
    pub async fn claim(&self, user: u64, devices: &[u64]) -> Value {
        let ds: Vec<String> = devices.iter().map(|d| d.to_string()).collect();
        let (s, v) = self
            .http
            .post(
                &format!("/v1/users/{user}/keys/claim"),
                json!({ "devices": ds }),
            )
            .await;
        assert_eq!(s, 200, "{v}");
        v
    }
}

/// POSTs a send to `conv` with these payloads ((user, device) → bytes),
/// retrying while a shard elects; (status, answer).
pub async fn send_encrypted(
    http: &Http,
    conv: &str,
    cmid: &str,
    payloads: &[((u64, u64), Vec<u8>)],
) -> (u16, Value) {
    let p: Vec<Value> = payloads
        .iter()
        .map(|((u, d), c)| {
            json!({"user": u.to_string(), "device": d.to_string(), "ciphertext_b64": b64(c)})
        })
        .collect();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let (s, v) = http
            .post(
                &format!("/v1/conversations/{conv}/messages"),
                json!({"client_msg_id": cmid, "kind": "encrypted", "payloads": p}),
            )
            .await;
        if s != 503 || tokio::time::Instant::now() > deadline {
            return (s, v);
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// The (user, device) pairs a `stale_devices` answer names under `field`.
pub fn named(v: &Value, field: &str) -> Vec<(u64, u64)> {
    v["error"][field]
        .as_array()
        .unwrap_or_else(|| panic!("{field} in {v}"))
        .iter()
        .map(|d| {
            (
                d["user"].as_str().unwrap().parse().unwrap(),
                d["device"].as_str().unwrap().parse().unwrap(),
            )
        })
        .collect()
}

/// The ciphertext (base64) this reader's copy of message `seq` of `conv`
/// carries, read from its history.
pub async fn history_payload(http: &Http, conv: &str, seq: u64) -> Option<Vec<u8>> {
    let (s, v) = http
        .get(&format!("/v1/conversations/{conv}/messages?limit=50"))
        .await;
    assert_eq!(s, 200, "{v}");
    let m = v["messages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["seq"] == seq)
        .unwrap_or_else(|| panic!("seq {seq} in {v}"))
        .clone();
    assert_eq!(m["kind"], "encrypted", "{m}");
    assert!(m.get("body").is_none(), "{m}");
    m["body_b64"].as_str().map(unb64)
}

/// Two users with two devices each run X3DH through the server (devices
/// on `addrs[i % n]`), in a conversation marked encrypted: plaintext is
/// refused, a stale device set is refused naming what is missing and
/// extra, each device reads only its own payload (live, in sync and in
/// history), and a reply goes back. The plaintexts sent, for the caller
/// to look for in the server's files.
pub async fn two_users_two_devices_each(
    addrs: &[std::net::SocketAddr],
    c: &missive_server::Config,
) -> Vec<String> {
    use super::{token, Ws, WAIT};
    let at = |i: usize| addrs[i % addrs.len()];
    let (a, b) = (201u64, 202u64);
    let mut a1 = Device::new(a, 1, Http::new(at(0), token(c, a, 1)));
    let mut a2 = Device::new(a, 2, Http::new(at(1), token(c, a, 2)));
    let mut b1 = Device::new(b, 1, Http::new(at(2), token(c, b, 1)));
    let mut b2 = Device::new(b, 2, Http::new(at(3), token(c, b, 2)));
    for d in [&mut a1, &mut a2, &mut b1, &mut b2] {
        let v = d.publish(5).await;
        assert_eq!(
            (v["change"].as_str(), v["one_time_prekeys"].as_u64()),
            (Some("added"), Some(5)),
            "{v}"
        );
    }
    let conv = a1.http.direct(b).await;
    let (s, v) = a1
        .http
        .put(
            &format!("/v1/conversations/{conv}/settings"),
            json!({"encrypted": true}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = b1
        .http
        .put(
            &format!("/v1/conversations/{conv}/settings"),
            json!({"encrypted": false}),
        )
        .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (400, Some("invalid")),
        "{v}"
    );
    let (s, v) = b2.http.get(&format!("/v1/conversations/{conv}")).await;
    assert_eq!((s, v["encrypted"].as_bool()), (200, Some(true)), "{v}");
    let (s, v) = a1
        .http
        .post(
            &format!("/v1/conversations/{conv}/messages"),
            json!({"client_msg_id": "plain", "body": "in the clear"}),
        )
        .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (400, Some("encrypted")),
        "{v}"
    );

    // B's device list, as anyone sees it: their identity keys.
    let (s, v) = a2.http.get(&format!("/v1/users/{b}/keys")).await;
    assert_eq!(s, 200, "{v}");
    let listed: Vec<String> = v["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["identity_key"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        listed,
        vec![b64(&b1.identity_public()), b64(&b2.identity_public())]
    );
    assert!(
        v["devices"][0].get("one_time_prekey").is_none(),
        "a listing consumes nothing"
    );

    // B1 listens live from the start.
    let mut b1_ws = Ws::connect(at(2), &token(c, b, 1)).await;
    b1_ws.sync(0).await;

    // A1 starts sessions with B's devices and A's own other device.
    let b_bundles = a1.claim(b, &[]).await;
    assert_eq!(
        b_bundles["devices"].as_array().unwrap().len(),
        2,
        "{b_bundles}"
    );
    let mut headers: HashMap<(u64, u64), Vec<u8>> = HashMap::new();
    for (d, h) in a1.start_sessions(b, &b_bundles) {
        headers.insert((b, d), h);
    }
    let own = a1.claim(a, &[2]).await;
    for (d, h) in a1.start_sessions(a, &own) {
        headers.insert((a, d), h);
    }
    let first = format!("meet at the old mill at {}", super::nonce());
    let targets = [(b, 1), (b, 2), (a, 2)];
    let sealed: Vec<((u64, u64), Vec<u8>)> = targets
        .iter()
        .map(|t| (*t, a1.seal(*t, Some(&headers[t]), first.as_bytes())))
        .collect();

    // Stale sets: a device missing, then one that is not in the lists.
    let (s, v) = send_encrypted(&a1.http, &conv, "m1", &sealed[..1]).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (409, Some("stale_devices")),
        "{v}"
    );
    assert_eq!(named(&v, "missing_devices"), vec![(a, 2), (b, 2)]);
    assert_eq!(named(&v, "extra_devices"), vec![]);
    let mut extra = sealed.clone();
    extra.push(((b, 9), vec![1, 2, 3]));
    let (s, v) = send_encrypted(&a1.http, &conv, "m1", &extra).await;
    assert_eq!(s, 409, "{v}");
    assert_eq!(named(&v, "missing_devices"), vec![]);
    assert_eq!(named(&v, "extra_devices"), vec![(b, 9)]);

    let (s, v) = send_encrypted(&a1.http, &conv, "m1", &sealed).await;
    assert_eq!(s, 200, "{v}");
    let seq = v["seq"].as_u64().unwrap();

    // B1 live: its own payload, which opens to the plaintext.
    let ev = tokio::time::timeout(
        WAIT,
        b1_ws.event_where(|f| f["event"]["kind"] == "message" && f["conv"] == conv.as_str()),
    )
    .await
    .expect("the message reaches B1");
    let m = &ev["event"]["message"];
    assert_eq!(m["kind"], "encrypted", "{ev}");
    let mine = unb64(m["body_b64"].as_str().unwrap());
    assert_eq!(mine, sealed[0].1, "B1 gets exactly its own payload");
    assert_eq!(b1.open((a, 1), &mine), first.as_bytes());

    // B2 from history, A2 from a sync: each its own; A1 (the sender) none.
    let b2_payload = history_payload(&b2.http, &conv, seq).await.unwrap();
    assert_eq!(b2_payload, sealed[1].1);
    assert_eq!(b2.open((a, 1), &b2_payload), first.as_bytes());
    let mut a2_ws = Ws::connect(at(1), &token(c, a, 2)).await;
    let events = a2_ws.sync_until(0, &conv, 1).await;
    let m = events
        .iter()
        .find(|f| f["event"]["kind"] == "message" && f["conv"] == conv.as_str())
        .unwrap();
    let a2_payload = unb64(m["event"]["message"]["body_b64"].as_str().unwrap());
    assert_eq!(a2.open((a, 1), &a2_payload), first.as_bytes());
    assert_eq!(history_payload(&a1.http, &conv, seq).await, None);

    // B2 answers: a new session with A2 and B1, the existing one with A1.
    let mut reply_headers: HashMap<(u64, u64), Vec<u8>> = HashMap::new();
    let to_a2 = b2.claim(a, &[2]).await;
    for (d, h) in b2.start_sessions(a, &to_a2) {
        reply_headers.insert((a, d), h);
    }
    let to_b1 = b2.claim(b, &[1]).await;
    for (d, h) in b2.start_sessions(b, &to_b1) {
        reply_headers.insert((b, d), h);
    }
    let second = format!("the mill burned down in {}", super::nonce());
    let reply: Vec<((u64, u64), Vec<u8>)> = [(a, 1), (a, 2), (b, 1)]
        .iter()
        .map(|t| {
            let h = reply_headers.get(t).map(Vec::as_slice);
            (*t, b2.seal(*t, h, second.as_bytes()))
        })
        .collect();
    let (s, v) = send_encrypted(&b2.http, &conv, "r1", &reply).await;
    assert_eq!(s, 200, "{v}");
    let rseq = v["seq"].as_u64().unwrap();
    let got = history_payload(&a1.http, &conv, rseq).await.unwrap();
    assert_eq!(a1.open((b, 2), &got), second.as_bytes());
    let got = history_payload(&a2.http, &conv, rseq).await.unwrap();
    assert_eq!(a2.open((b, 2), &got), second.as_bytes());

    // B2 reinstalls (a new identity): A hears of it in the conversation.
    let mut a1_ws = Ws::connect(at(0), &token(c, a, 1)).await;
    a1_ws.sync(0).await;
    let mut b2_new = Device::new(b, 2, b2.http.clone());
    let v = b2_new.publish(3).await;
    assert_eq!(v["change"], "identity_changed", "{v}");
    let ev = tokio::time::timeout(
        WAIT,
        a1_ws.event_where(|f| f["event"]["kind"] == "device_keys"),
    )
    .await
    .expect("A1 hears of B2's new identity");
    assert_eq!(ev["conv"], conv.as_str());
    assert_eq!(ev["event"]["user"], b.to_string());
    assert_eq!(ev["event"]["device"], "2");
    assert_eq!(ev["event"]["change"], "identity_changed");
    vec![first, second]
}
