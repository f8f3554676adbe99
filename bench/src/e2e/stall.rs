//! `--stalled N`: clients that stop reading, and a flood toward them, beside
//! the measured load — to show what a slow consumer costs everyone else.
//!
//! One user outside the layout holds N sockets (one device each, receive
//! buffers of 4 KiB) that sync and then never read again; a second user
//! sends `--flood-rate` messages/s into their direct conversation over
//! HTTP, so every stalled socket has events piling up towards it: its
//! kernel buffers fill, then the server's per-socket queue, until the
//! server closes it as a slow consumer (4008, after `slow_consumer_ms`).
//! The measured devices' latencies are the result. The anchor, run
//! alternately: the same sockets and flood with `--flood-readers`, where
//! the sockets do read (and discard) — the same work for the server, no
//! slow consumer.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use futures_util::StreamExt;
use serde_json::json;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

use super::client;
use super::setup;

/// A stalled socket's receive buffer, bytes.
const RCVBUF: u32 = 4 * 1024;

/// The running stall: its sockets and its flooder.
pub struct Stall {
    sockets: Vec<JoinHandle<Ended>>,
    flood: JoinHandle<()>,
    /// Flood sends acknowledged.
    pub flooded: Arc<AtomicU64>,
    /// Flood sends refused or failed.
    pub flood_errors: Arc<AtomicU64>,
}

/// How a stalled socket ended.
enum Ended {
    /// Still open when the load ended.
    Open,
    /// The server closed it: with this close code, or by dropping the
    /// connection (a reset: a blocked socket cannot take a close frame).
    Closed(Option<u16>),
}

/// What became of the stall.
pub struct Outcome {
    /// Stalled sockets the server closed (4008, or dropped).
    pub closed: usize,
    /// Stalled sockets.
    pub sockets: usize,
    /// Flood sends acknowledged.
    pub flooded: u64,
    /// Flood sends refused or failed.
    pub flood_errors: u64,
}

/// The shape of a stall.
pub struct Shape {
    /// Stalled sockets.
    pub sockets: usize,
    /// Flood messages/s.
    pub rate: f64,
    /// Flood body, bytes.
    pub body: usize,
    /// When the flood stops and the sockets read again.
    pub until: Instant,
    /// The sockets read all along (the anchor).
    pub readers: bool,
}

/// Opens the stalled sockets for a fresh user (ids from `base`) and floods
/// them until `shape.until`.
pub async fn start(
    http: &reqwest::Client,
    addr: SocketAddr,
    admin: &str,
    base: u64,
    shape: Shape,
) -> Result<Stall> {
    let Shape {
        sockets: n,
        rate,
        body,
        until,
        readers,
    } = shape;
    let (tokens, flooder, conv) = setup::flood_pair(http, addr, admin, base, n).await?;
    let mut sockets = Vec::with_capacity(n);
    for (i, token) in tokens.iter().enumerate() {
        let (mut ws, _) = client::open(i, 4, addr, token, Some(RCVBUF)).await?;
        sockets.push(tokio::spawn(async move {
            if readers {
                // The anchor: read and discard until the load ends.
                while let Ok(Some(Ok(m))) = tokio::time::timeout_at(until.into(), ws.next()).await {
                    if let Message::Close(f) = m {
                        return Ended::Closed(f.map(|f| u16::from(f.code)));
                    }
                }
                return Ended::Open;
            }
            // Not a byte read until the load ends...
            tokio::time::sleep_until(until.into()).await;
            // ...then what the server did: closed it (a close frame, or —
            // when it could not even write that — a reset), or not.
            let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
            loop {
                match tokio::time::timeout_at(deadline, ws.next()).await {
                    Ok(Some(Ok(Message::Close(f)))) => {
                        return Ended::Closed(f.map(|f| u16::from(f.code)))
                    }
                    Ok(Some(Ok(_))) => continue,
                    Ok(Some(Err(_)) | None) => return Ended::Closed(None),
                    Err(_) => return Ended::Open,
                }
            }
        }));
    }
    let flooded = Arc::new(AtomicU64::new(0));
    let flood_errors = Arc::new(AtomicU64::new(0));
    let (ok, bad) = (Arc::clone(&flooded), Arc::clone(&flood_errors));
    let (http, url) = (
        http.clone(),
        format!("http://{addr}/v1/conversations/{conv}/messages"),
    );
    let text = "x".repeat(body.max(1));
    let flood = tokio::spawn(async move {
        let every = Duration::from_secs_f64(1.0 / rate.max(0.001));
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut k = 0u64;
        while Instant::now() < until {
            tick.tick().await;
            k += 1;
            let (http, url, auth, ok, bad) = (
                http.clone(),
                url.clone(),
                format!("Bearer {flooder}"),
                Arc::clone(&ok),
                Arc::clone(&bad),
            );
            let body = json!({"client_msg_id": format!("flood-{k}"), "body": text});
            tokio::spawn(async move {
                let r = http
                    .post(url)
                    .header("authorization", auth)
                    .json(&body)
                    .send()
                    .await;
                match r {
                    Ok(r) if r.status().is_success() => ok.fetch_add(1, Ordering::Relaxed),
                    _ => bad.fetch_add(1, Ordering::Relaxed),
                };
            });
        }
    });
    Ok(Stall {
        sockets,
        flood,
        flooded,
        flood_errors,
    })
}

impl Stall {
    /// Waits for the flood and the sockets' ends.
    pub async fn finish(self) -> Outcome {
        let _ = self.flood.await;
        let sockets = self.sockets.len();
        let mut closed = 0;
        for s in self.sockets {
            if let Ok(Ended::Closed(code)) = s.await {
                if matches!(code, None | Some(4008)) {
                    closed += 1;
                }
            }
        }
        Outcome {
            closed,
            sockets,
            flooded: self.flooded.load(Ordering::Relaxed),
            flood_errors: self.flood_errors.load(Ordering::Relaxed),
        }
    }
}
