//! One simulated device: a real WebSocket connection (tokio-tungstenite)
//! from one of several loopback source addresses, speaking the public
//! protocol (docs/protocol.md).
//!
//! The load is open-loop: a device's sends are scheduled at fixed times
//! (`phase + k · interval`) whatever the server does, and every latency is
//! measured from the *scheduled* time, so a server (or generator) that
//! falls behind shows up as latency instead of silently sending less
//! (coordinated omission). How late the generator itself sent is recorded
//! apart (`lag`), to tell the two apart.
//!
//! The scheduled time, in nanoseconds since the load began, travels in the
//! request id (answered in `sent`) and at the start of the body (read by
//! every recipient device from its `event`).

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde::Deserialize;
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use super::pacer::Pacer;
use super::setup::Plan;

/// An open, synced connection.
pub type Ws = WebSocketStream<TcpStream>;

/// Latencies (microseconds) shared by every connection, sharded to keep
/// lock contention off the hot path.
pub struct Hist(Vec<Mutex<Histogram<u64>>>);

const SHARDS: usize = 16;

impl Hist {
    fn new() -> Result<Hist> {
        (0..SHARDS)
            .map(|_| Ok(Mutex::new(Histogram::new_with_bounds(1, 600_000_000, 3)?)))
            .collect::<Result<_>>()
            .map(Hist)
    }

    fn record(&self, shard: usize, d: Duration) {
        if let Ok(mut h) = self.0[shard % SHARDS].lock() {
            h.saturating_record(u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1));
        }
    }

    /// All shards in one histogram.
    pub fn merged(&self) -> Histogram<u64> {
        let mut all = Histogram::new_with_bounds(1, 600_000_000, 3)
            .unwrap_or_else(|_| Histogram::new(3).unwrap_or_else(|_| std::process::abort()));
        for h in &self.0 {
            if let Ok(h) = h.lock() {
                let _ = all.add(&*h);
            }
        }
        all
    }
}

/// What every connection records into. Counters cover messages scheduled
/// inside the measured window only.
pub struct Shared {
    /// When the load began; scheduled times count from here.
    pub start: Instant,
    /// The measured window, ns since `start`: [from, to).
    pub window: (u64, u64),
    /// Sends stop at this many ns since `start`.
    pub stop_sending: u64,
    /// Connections close at this many ns since `start`.
    pub stop_reading: u64,
    /// Share of sends that go to the group.
    pub group_share: f64,
    /// Body length, bytes.
    pub body: usize,
    /// send → `sent` (committed, acknowledged).
    pub sent: Hist,
    /// send → `event` at a recipient device (one sample per device).
    pub delivered: Hist,
    /// scheduled → actually written by the generator.
    pub lag: Hist,
    /// Sends scheduled in the window.
    pub scheduled: AtomicU64,
    /// Of those, acknowledged with `sent`.
    pub acked: AtomicU64,
    /// Deliveries those sends should make (recipient devices).
    pub expected: AtomicU64,
    /// Deliveries seen.
    pub received: AtomicU64,
    /// Events whose useq did not follow the previous one.
    pub gaps: AtomicU64,
    /// Connections that ended before the run did.
    pub dropped: AtomicU64,
    /// Error frames by code.
    pub errors: Mutex<BTreeMap<String, u64>>,
    /// Per second of the window (by scheduled send time): deliveries seen,
    /// deliveries later than [`LATE`], and the latest one (µs). Tells
    /// stalls (a few bad seconds) from saturation (every second late).
    pub seconds: Vec<[AtomicU64; 3]>,
}

/// A delivery later than this counts as late in [`Shared::seconds`].
pub const LATE: Duration = Duration::from_millis(20);

impl Shared {
    /// Counters at zero; the load begins at `start`.
    pub fn new(
        start: Instant,
        warmup: Duration,
        measure: Duration,
        drain: Duration,
    ) -> Result<Self> {
        let ns = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        Ok(Shared {
            start,
            window: (ns(warmup), ns(warmup + measure)),
            stop_sending: ns(warmup + measure),
            stop_reading: ns(warmup + measure + drain),
            group_share: 0.0,
            body: 100,
            sent: Hist::new()?,
            delivered: Hist::new()?,
            lag: Hist::new()?,
            scheduled: AtomicU64::new(0),
            acked: AtomicU64::new(0),
            expected: AtomicU64::new(0),
            received: AtomicU64::new(0),
            gaps: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            errors: Mutex::new(BTreeMap::new()),
            seconds: (0..measure.as_secs().max(1))
                .map(|_| [AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)])
                .collect(),
        })
    }

    /// Counts a delivery of a send scheduled at `t` (ns since start) that
    /// took `d`.
    fn note_second(&self, t: u64, d: Duration) {
        let i = ((t.saturating_sub(self.window.0)) / 1_000_000_000) as usize;
        if let Some([all, late, worst]) = self.seconds.get(i) {
            all.fetch_add(1, Ordering::Relaxed);
            if d > LATE {
                late.fetch_add(1, Ordering::Relaxed);
            }
            worst.fetch_max(
                u64::try_from(d.as_micros()).unwrap_or(u64::MAX),
                Ordering::Relaxed,
            );
        }
    }

    fn in_window(&self, t: u64) -> bool {
        (self.window.0..self.window.1).contains(&t)
    }

    fn since(&self, t: u64) -> Duration {
        self.start.elapsed().saturating_sub(Duration::from_nanos(t))
    }

    fn error(&self, code: &str) {
        if let Ok(mut e) = self.errors.lock() {
            *e.entry(code.to_string()).or_default() += 1;
        }
    }
}

/// Opens connection `i` from source address 127.0.0.(2 + i % sources),
/// syncs its stream from the start and returns once `synced` arrived, with
/// the cursor.
pub async fn connect(i: usize, sources: u8, server: SocketAddr, plan: &Plan) -> Result<(Ws, u64)> {
    open(i, sources, server, &plan.token, None).await
}

/// Like [`connect`] for `token`, with the socket's receive buffer set to
/// `rcvbuf` bytes if given (a small one makes a client that stops reading
/// back up the server quickly).
pub async fn open(
    i: usize,
    sources: u8,
    server: SocketAddr,
    token: &str,
    rcvbuf: Option<u32>,
) -> Result<(Ws, u64)> {
    let src = Ipv4Addr::new(127, 0, 0, 2 + (i % usize::from(sources.max(1))) as u8);
    let sock = TcpSocket::new_v4()?;
    if let Some(b) = rcvbuf {
        sock.set_recv_buffer_size(b)?;
    }
    sock.bind(SocketAddr::new(IpAddr::V4(src), 0))
        .with_context(|| format!("bind {src}"))?;
    let stream = sock.connect(server).await.context("connect")?;
    stream.set_nodelay(true)?;
    let mut req = format!("ws://{server}/v1/ws").into_client_request()?;
    req.headers_mut()
        .insert("authorization", format!("Bearer {token}").parse()?);
    // tungstenite zero-fills its whole read buffer before every read (128 KiB
    // by default): that memset was 37 % of the generator's samples, CPU taken
    // from the server it measures on the same two cores. Frames here are
    // small; the server reads with 4 KiB too.
    let config = WebSocketConfig::default().read_buffer_size(4 * 1024);
    let (mut ws, _) = tokio_tungstenite::client_async_with_config(req, stream, Some(config))
        .await
        .context("WebSocket upgrade")?;
    ws.send(Message::text(r#"{"type":"sync","after":0}"#))
        .await?;
    let mut cursor = 0;
    loop {
        let m = tokio::time::timeout(Duration::from_secs(60), ws.next())
            .await
            .context("no `synced` within 60 s")?
            .context("closed before `synced`")??;
        let Message::Text(t) = m else { continue };
        let f: Frame<'_> = serde_json::from_str(t.as_str())?;
        match f.ty.as_ref() {
            "event" => cursor = f.useq,
            "synced" => return Ok((ws, f.cursor.unwrap_or(cursor))),
            "error" => bail!("sync refused: {}", t.as_str()),
            _ => {}
        }
    }
}

#[derive(Deserialize)]
struct Frame<'a> {
    #[serde(rename = "type", borrow)]
    ty: Cow<'a, str>,
    #[serde(default, borrow)]
    id: Option<Cow<'a, str>>,
    #[serde(default)]
    useq: u64,
    #[serde(default)]
    cursor: Option<u64>,
    #[serde(default, borrow)]
    code: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    event: Option<EventIn<'a>>,
}

#[derive(Deserialize)]
struct EventIn<'a> {
    #[serde(borrow)]
    kind: Cow<'a, str>,
    #[serde(default, borrow)]
    message: Option<MessageIn<'a>>,
}

#[derive(Deserialize)]
struct MessageIn<'a> {
    #[serde(borrow)]
    sender: Cow<'a, str>,
    #[serde(borrow)]
    device: Cow<'a, str>,
    #[serde(default, borrow)]
    body: Option<Cow<'a, str>>,
}

/// The scheduled time a body carries: `t<ns>;…`.
fn body_time(body: &str) -> Option<u64> {
    body.strip_prefix('t')?.split(';').next()?.parse().ok()
}

/// A body of `len` bytes carrying `t`.
fn body(t: u64, len: usize) -> String {
    const TEXT: &str = "see you at the station at seven, I'll bring the tickets and snacks ";
    let mut b = format!("t{t};");
    while b.len() < len {
        let take = (len - b.len()).min(TEXT.len());
        b.push_str(&TEXT[..take]);
    }
    b
}

/// Runs device `i`'s load until `shared.stop_reading`: sends at `rate`
/// messages/s, reads and times everything that arrives.
pub async fn run(
    i: usize,
    mut ws: Ws,
    cursor: u64,
    plan: Plan,
    rate: f64,
    sh: &Shared,
    pacer: Option<&Pacer>,
) {
    let interval = Duration::from_secs_f64(1.0 / rate.max(1e-9));
    let interval_ns = u64::try_from(interval.as_nanos()).unwrap_or(u64::MAX);
    let mut next = fastrand::u64(0..interval_ns.max(1));
    let (me_user, me_device) = (plan.user.to_string(), plan.device.to_string());
    let mut useq = cursor;
    let mut k = 0u64;
    let end = sh.start + Duration::from_nanos(sh.stop_reading);
    let mut tick = Tick::new(pacer, sh.start + Duration::from_nanos(next));
    loop {
        let sending = next < sh.stop_sending;
        tokio::select! {
            biased;
            m = ws.next() => {
                let Some(Ok(m)) = m else {
                    sh.dropped.fetch_add(1, Ordering::Relaxed);
                    return;
                };
                let Message::Text(text) = m else { continue };
                let Ok(f) = serde_json::from_str::<Frame<'_>>(text.as_str()) else {
                    sh.error("bench_unparsable_frame");
                    continue;
                };
                on_frame(i, f, &mut useq, (&me_user, &me_device), sh);
            }
            () = tick.wait(), if sending => {
                let t = next;
                next += interval_ns;
                k += 1;
                tick = Tick::new(pacer, sh.start + Duration::from_nanos(next));
                let (conv, fanout) = match &plan.group {
                    Some(g) if fastrand::f64() < sh.group_share => g,
                    _ => &plan.direct,
                };
                let frame = format!(
                    r#"{{"type":"send","id":"{t}","conv":"{conv}","client_msg_id":"{}-{k}","body":"{}"}}"#,
                    plan.device,
                    body(t, sh.body)
                );
                if sh.in_window(t) {
                    sh.scheduled.fetch_add(1, Ordering::Relaxed);
                    sh.expected.fetch_add(*fanout, Ordering::Relaxed);
                    sh.lag.record(i, sh.since(t));
                }
                if ws.send(Message::text(frame)).await.is_err() {
                    sh.dropped.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            }
            _ = tokio::time::sleep_until(end.into()) => break,
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), ws.close(None)).await;
}

/// A connection's wait for its next send time: on the pacing thread, or on
/// tokio's timer (`--pacer tokio`, 1 ms ticks).
enum Tick {
    Tokio(std::pin::Pin<Box<tokio::time::Sleep>>),
    Paced(tokio::sync::oneshot::Receiver<()>),
}

impl Tick {
    fn new(pacer: Option<&Pacer>, at: Instant) -> Tick {
        match pacer {
            Some(p) => Tick::Paced(p.until(at)),
            None => Tick::Tokio(Box::pin(tokio::time::sleep_until(at.into()))),
        }
    }

    /// Completes at the time (once: a fired tick is replaced, never
    /// polled again).
    async fn wait(&mut self) {
        match self {
            Tick::Tokio(s) => s.as_mut().await,
            Tick::Paced(r) => {
                // The pacer only goes away with the run.
                let _ = r.await;
            }
        }
    }
}

fn on_frame(i: usize, f: Frame<'_>, useq: &mut u64, me: (&str, &str), sh: &Shared) {
    match f.ty.as_ref() {
        "sent" => {
            if let Some(t) = f.id.and_then(|id| id.parse::<u64>().ok()) {
                if sh.in_window(t) {
                    sh.acked.fetch_add(1, Ordering::Relaxed);
                    sh.sent.record(i, sh.since(t));
                }
            }
        }
        "event" => {
            if f.useq != *useq + 1 {
                sh.gaps.fetch_add(1, Ordering::Relaxed);
            }
            *useq = f.useq;
            let Some(EventIn {
                kind,
                message: Some(m),
            }) = f.event
            else {
                return;
            };
            if kind != "message" || (m.sender == me.0 && m.device == me.1) {
                return;
            }
            if let Some(t) = m.body.as_deref().and_then(body_time) {
                if sh.in_window(t) {
                    sh.received.fetch_add(1, Ordering::Relaxed);
                    let d = sh.since(t);
                    sh.delivered.record(i, d);
                    sh.note_second(t, d);
                }
            }
        }
        "error" => sh.error(f.code.as_deref().unwrap_or("?")),
        _ => {}
    }
}
