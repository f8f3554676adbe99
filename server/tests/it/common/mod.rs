//! A real missived on an ephemeral loopback port, and real clients: a
//! WebSocket client (tokio-tungstenite) and an HTTP client (reqwest).
#![allow(dead_code, reason = "each test file uses a different subset")]

pub mod e2ee;
pub mod fake_push;
pub mod suites;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use missive_chat::command::{DeviceId, UserId};
use missive_server::auth::{Auth, Caller};
use missive_server::{Config, Running};

/// How long a test waits for any one expected frame.
pub const WAIT: Duration = Duration::from_secs(15);

/// A config for a test server under `dir`: loopback, ephemeral ports.
pub fn config(dir: &Path) -> Config {
    let mut c = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.to_path_buf(),
        ..Config::default()
    };
    c.node.raft_listen = "127.0.0.1:0".parse().unwrap();
    c.grpc.listen = "127.0.0.1:0".parse().unwrap();
    c.node.shards = Some(4);
    c.auth.admin_secret = Some("test-admin-secret".into());
    c.auth.allowed_origins = vec!["https://chat.example".into()];
    c.limits.sends_per_second = 10_000;
    c.limits.send_burst = 10_000;
    // The suites drive each server faster than a person would; the tests
    // of the limits lower the one they check.
    let fast = missive_server::config::Rate::new(10_000, 10_000);
    c.limits.history_rate = fast;
    c.limits.receipt_rate = fast;
    c.limits.create_rate = fast;
    c.limits.upload_rate = fast;
    c.limits.keys_rate = fast;
    c.limits.presence_rate = fast;
    c.limits.connect_rate_per_ip = fast;
    c.limits.upgrade_rate_per_ip = fast;
    c
}

/// A marker unique to this run (hex nanoseconds since the epoch), so a
/// search of the server's files cannot find bytes an earlier run left.
pub fn nonce() -> String {
    format!(
        "{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    )
}

/// Starts a server.
pub async fn start(c: Config) -> Running {
    missive_server::start(c).await.unwrap()
}

/// The server's `/metrics` text.
pub async fn metrics(addr: SocketAddr) -> String {
    reqwest::get(format!("http://{addr}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// The value of the sample named exactly `name` (labels included) in a
/// `/metrics` text, if present.
pub fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .map(|v| v.parse().unwrap())
}

/// Every listener of three nodes on 127.0.0.1, .2 and .3: for node `i`,
/// `[raft, http, grpc]` on 127.0.0.`i`, picked together by [`free_ports`]
/// (a released transport port could otherwise be handed to another node's
/// `:0` listener on the same address before the transport binds it) — and
/// the `node.peers` map of the three transports.
pub fn three_node_addrs() -> (
    Vec<[SocketAddr; 3]>,
    std::collections::BTreeMap<u64, String>,
) {
    let addrs: Vec<[SocketAddr; 3]> = (1..=3)
        .map(|i| {
            let p = free_ports(&format!("127.0.0.{i}"), 3);
            [p[0], p[1], p[2]]
        })
        .collect();
    let raft: Vec<SocketAddr> = addrs.iter().map(|a| a[0]).collect();
    let peers = peers_of(&raft);
    (addrs, peers)
}

/// The `peers` map of nodes 1, 2, … whose transports listen on `raft`.
pub fn peers_of(raft: &[SocketAddr]) -> std::collections::BTreeMap<u64, String> {
    raft.iter()
        .enumerate()
        .map(|(i, a)| (i as u64 + 1, a.to_string()))
        .collect()
}

/// A free port on `ip` (bound then released).
pub fn free_port(ip: &str) -> SocketAddr {
    free_ports(ip, 1)[0]
}

/// `n` distinct free ports on `ip`: every one stays bound until all are
/// picked, so the kernel cannot hand the same port out twice (two
/// `free_port` calls in a row may get the same one back, and a node then
/// fails to listen on its second address).
pub fn free_ports(ip: &str, n: usize) -> Vec<SocketAddr> {
    let held: Vec<std::net::TcpListener> = (0..n)
        .map(|_| std::net::TcpListener::bind(format!("{ip}:0")).unwrap())
        .collect();
    held.iter().map(|l| l.local_addr().unwrap()).collect()
}

/// An access token for (user, device), signed with the server's secret.
pub fn token(c: &Config, user: u64, device: u64) -> String {
    let auth = Auth::load(&c.auth, &c.data_dir).unwrap();
    auth.access_token(
        Caller {
            user: UserId(user),
            device: DeviceId(device),
        },
        None,
    )
    .unwrap()
    .0
}

/// An HTTP client bound to a server and a token.
#[derive(Clone)]
pub struct Http {
    pub base: String,
    pub token: String,
    pub client: reqwest::Client,
}

impl Http {
    pub fn new(addr: SocketAddr, token: String) -> Http {
        Http {
            base: format!("http://{addr}"),
            token,
            client: reqwest::Client::new(),
        }
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let r = self
            .client
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }

    pub async fn put(&self, path: &str, body: Value) -> (u16, Value) {
        self.call(reqwest::Method::PUT, path, Some(body)).await
    }

    pub async fn patch(&self, path: &str, body: Value) -> (u16, Value) {
        self.call(reqwest::Method::PATCH, path, Some(body)).await
    }

    pub async fn delete(&self, path: &str) -> (u16, Value) {
        self.call(reqwest::Method::DELETE, path, None).await
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut req = self
            .client
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// Creates the direct conversation with `peer`; its id.
    pub async fn direct(&self, peer: u64) -> String {
        let (s, v) = self
            .post(
                "/v1/conversations",
                json!({"kind": "direct", "peer": peer.to_string()}),
            )
            .await;
        assert!(s == 200 || s == 201, "{s} {v}");
        v["conv"].as_str().unwrap().to_string()
    }

    /// Creates a group; its id.
    pub async fn group(&self, name: &str, members: &[u64]) -> String {
        let m: Vec<String> = members.iter().map(|u| u.to_string()).collect();
        let (s, v) = self
            .post(
                "/v1/conversations",
                json!({"kind": "group", "name": name, "members": m}),
            )
            .await;
        assert_eq!(s, 201, "{v}");
        v["conv"].as_str().unwrap().to_string()
    }

    /// Sends a text message over HTTP; (seq, duplicate). Like a client
    /// following docs/protocol.md, it resends (same client message id, so
    /// at most once) after `unavailable` — a shard electing a leader, as
    /// when a test stops one — for up to 30 s.
    pub async fn send(&self, conv: &str, client_msg_id: &str, body: &str) -> (u64, bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let (s, v) = loop {
            let (s, v) = self
                .post(
                    &format!("/v1/conversations/{conv}/messages"),
                    json!({"client_msg_id": client_msg_id, "body": body}),
                )
                .await;
            if s != 503
                || v["error"]["code"] != "unavailable"
                || tokio::time::Instant::now() > deadline
            {
                break (s, v);
            }
            let wait = v["error"]["retry_after_ms"].as_u64().unwrap_or(500);
            tokio::time::sleep(Duration::from_millis(wait)).await;
        };
        assert_eq!(s, 200, "{v}");
        (
            v["seq"].as_u64().unwrap(),
            v["duplicate"].as_bool().unwrap(),
        )
    }
}

/// A WebSocket client.
pub struct Ws {
    pub stream: WebSocketStream<MaybeTlsStream<TcpStream>>,
    next_id: u64,
}

impl Ws {
    /// Connects with `Authorization: Bearer`.
    pub async fn connect(addr: SocketAddr, token: &str) -> Ws {
        Self::try_connect(addr, Some(token), None, None)
            .await
            .unwrap()
    }

    /// Connects with any of a bearer token, a ticket and an Origin.
    pub async fn try_connect(
        addr: SocketAddr,
        token: Option<&str>,
        ticket: Option<&str>,
        origin: Option<&str>,
    ) -> Result<Ws, tokio_tungstenite::tungstenite::Error> {
        let url = match ticket {
            Some(t) => format!("ws://{addr}/v1/ws?ticket={t}"),
            None => format!("ws://{addr}/v1/ws"),
        };
        let mut req = url.into_client_request()?;
        if let Some(t) = token {
            req.headers_mut()
                .insert("authorization", format!("Bearer {t}").parse().unwrap());
        }
        if let Some(o) = origin {
            req.headers_mut().insert("origin", o.parse().unwrap());
        }
        let (stream, _) = tokio_tungstenite::connect_async(req).await?;
        Ok(Ws { stream, next_id: 0 })
    }

    pub async fn send_raw(&mut self, text: &str) {
        self.stream
            .send(Message::Text(text.to_string().into()))
            .await
            .unwrap();
    }

    pub async fn send_json(&mut self, v: Value) {
        self.send_raw(&v.to_string()).await;
    }

    fn id(&mut self) -> String {
        self.next_id += 1;
        format!("r{}", self.next_id)
    }

    /// The next text frame as JSON (None when the socket closed).
    pub async fn next(&mut self) -> Option<Value> {
        loop {
            let m = tokio::time::timeout(WAIT, self.stream.next())
                .await
                .expect("no frame within the wait")?;
            match m {
                Ok(Message::Text(t)) => return Some(serde_json::from_str(&t).unwrap()),
                Ok(Message::Close(_)) | Err(_) => return None,
                Ok(_) => continue,
            }
        }
    }

    /// The close frame's code, reading past anything before it.
    pub async fn close_code(&mut self) -> Option<u16> {
        loop {
            let m = tokio::time::timeout(WAIT, self.stream.next())
                .await
                .expect("no close within the wait")?;
            match m {
                Ok(Message::Close(Some(f))) => return Some(u16::from(f.code)),
                Ok(Message::Close(None)) | Err(_) => return None,
                Ok(_) => continue,
            }
        }
    }

    /// Reads frames until one of `ty` (events are kept for later checks).
    pub async fn until(&mut self, ty: &str, seen: &mut Vec<Value>) -> Value {
        loop {
            let f = self.next().await.expect("socket closed");
            if f["type"] == ty {
                return f;
            }
            seen.push(f);
        }
    }

    /// Sends a request and returns the answer with its id (events that
    /// arrive meanwhile go to `seen`).
    pub async fn request(&mut self, mut v: Value, seen: &mut Vec<Value>) -> Value {
        let id = self.id();
        v["id"] = json!(id);
        self.send_json(v).await;
        loop {
            let f = self.next().await.expect("socket closed");
            if f["id"] == json!(id) {
                return f;
            }
            seen.push(f);
        }
    }

    /// Sends a text message; the answer frame.
    pub async fn send_text(
        &mut self,
        conv: &str,
        cmid: &str,
        body: &str,
        seen: &mut Vec<Value>,
    ) -> Value {
        self.request(
            json!({"type": "send", "conv": conv, "client_msg_id": cmid, "body": body}),
            seen,
        )
        .await
    }

    /// Starts the event stream after `after` and collects events until
    /// `synced`; returns them.
    pub async fn sync(&mut self, after: u64) -> Vec<Value> {
        self.send_json(json!({"type": "sync", "after": after}))
            .await;
        let mut events = Vec::new();
        let _ = self.until("synced", &mut events).await;
        events
    }

    /// Syncs after `after`, then keeps reading until `n` messages of
    /// `conv` arrived (the fan-out to inboxes runs just behind the ack, so
    /// a sync right after a send may reach `synced` before its event).
    pub async fn sync_until(&mut self, after: u64, conv: &str, n: usize) -> Vec<Value> {
        let mut events = self.sync(after).await;
        while message_seqs(&events, conv).len() < n {
            let f = self.next().await.expect("socket closed");
            events.push(f);
        }
        events
    }

    /// Reads frames until one of type `ty` satisfies `pred`; returns it.
    pub async fn frame_where(&mut self, ty: &str, pred: impl Fn(&Value) -> bool) -> Value {
        loop {
            let f = self.next().await.expect("socket closed");
            if f["type"] == ty && pred(&f) {
                return f;
            }
        }
    }

    /// Reads events until `pred` holds for one; returns it.
    /// The first event matching `pred` among the frames a `request` set
    /// aside in `seen` (taken out), else the next one read: an event may
    /// arrive before the answer to the request that caused it.
    pub async fn event_seen_or_next(
        &mut self,
        seen: &mut Vec<Value>,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        if let Some(i) = seen.iter().position(|f| f["type"] == "event" && pred(f)) {
            return seen.remove(i);
        }
        self.event_where(pred).await
    }

    pub async fn event_where(&mut self, pred: impl Fn(&Value) -> bool) -> Value {
        loop {
            let f = self.next().await.expect("socket closed");
            if f["type"] == "event" && pred(&f) {
                return f;
            }
        }
    }
}

/// The message events (by seq) of `conv` among `events`.
pub fn message_seqs(events: &[Value], conv: &str) -> Vec<u64> {
    events
        .iter()
        .filter(|e| e["type"] == "event" && e["conv"] == conv && e["event"]["kind"] == "message")
        .map(|e| e["event"]["seq"].as_u64().unwrap())
        .collect()
}

/// Checks that events' useqs are consecutive from `after + 1`.
pub fn assert_consecutive(events: &[Value], after: u64) {
    let useqs: Vec<u64> = events
        .iter()
        .filter(|e| e["type"] == "event")
        .map(|e| e["useq"].as_u64().unwrap())
        .collect();
    let want: Vec<u64> = (after + 1..after + 1 + useqs.len() as u64).collect();
    assert_eq!(useqs, want, "events are not consecutive after {after}");
}
