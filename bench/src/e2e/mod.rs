//! `missive-bench e2e`: chat clients against a real `missived`.
//!
//! N devices (`--connections`) hold WebSocket connections from several
//! loopback source addresses; together they send `--rate` messages/s into
//! their 1:1 conversations and (a `--group-share` of them) their groups,
//! open-loop (see `client`). Every device of every member gets every
//! message, the sender's own other devices included.
//!
//! Reported, over the measured window after the warm-up:
//! - messages/s acknowledged and deliveries/s (events at recipient devices),
//!   and the share of expected deliveries that arrived;
//! - send → `sent` (persisted, acknowledged) and send → delivered latency,
//!   p50/p99/p999/max;
//! - the server's CPU (cores) and resident memory per connection, and the
//!   generator's own CPU: both run on this machine, and a saturated
//!   generator is a result about the generator, not the server.
//!
//! # Layout
//! - `server` — the `missived` process (or an external one) and /proc.
//! - `setup` — tokens and conversations over HTTP.
//! - `client` — one device: connect, sync, send on schedule, time events.
//! - `pacer` — the thread that wakes each device at its send time.
//! - `stall` — `--stalled`: sockets that stop reading, flooded, beside the
//!   load (what a slow consumer costs the others).

mod client;
mod pacer;
mod push_sink;
pub(crate) mod server;
mod setup;
mod stall;

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use futures_util::{stream, StreamExt, TryStreamExt};
use hdrhistogram::Histogram;

use crate::report::{self, Row};
use client::Shared;
use server::Server;
use setup::Layout;

/// Command-line arguments.
#[derive(Debug, clap::Args)]
pub struct E2eArgs {
    /// Connected devices (one WebSocket each).
    #[arg(long, default_value_t = 10_000)]
    pub connections: usize,
    /// Devices per user.
    #[arg(long, default_value_t = 2)]
    pub devices: usize,
    /// Messages sent per second, all devices together.
    #[arg(long, default_value_t = 20_000.0)]
    pub rate: f64,
    /// Share of sends that go to the sender's group (the rest: 1:1).
    #[arg(long, default_value_t = 0.1)]
    pub group_share: f64,
    /// Users per group.
    #[arg(long, default_value_t = 6)]
    pub group_size: usize,
    /// Message body, bytes.
    #[arg(long, default_value_t = 100)]
    pub body: usize,
    /// Seconds of load before the measured window.
    #[arg(long, default_value_t = 5)]
    pub warmup: u64,
    /// Seconds measured.
    #[arg(long, default_value_t = 20)]
    pub seconds: u64,
    /// Seconds to keep reading after the last send.
    #[arg(long, default_value_t = 3)]
    pub drain: u64,
    /// Loopback source addresses (127.0.0.2, …) the connections spread over
    /// (one address has ~28K ephemeral ports to one server port).
    #[arg(long, default_value_t = 4)]
    pub sources: u8,
    /// Connections opened at once during the connect phase.
    #[arg(long, default_value_t = 128)]
    pub connect_parallel: usize,
    /// Worker threads of the generator.
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// What wakes a connection at its send time: `thread` (a pacing
    /// thread, tens of µs late) or `tokio` (tokio's timer: 1 ms ticks,
    /// ~0.75 ms late at the median — every latency includes it).
    #[arg(long, value_enum, default_value_t = PacerKind::Thread)]
    pub pacer: PacerKind,
    /// The `missived` binary to start [default: next to this one].
    #[arg(long)]
    pub missived: Option<PathBuf>,
    /// Use a server already running on loopback (http://IP:PORT) instead.
    #[arg(long)]
    pub url: Option<String>,
    /// The external server's `auth.admin_secret`.
    #[arg(long, env = "MISSIVE_ADMIN_SECRET", hide_env_values = true)]
    pub admin_secret: Option<String>,
    /// Where the started server keeps its data (a fresh directory inside).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Keep the started server's directory (data and `missived.log`) after
    /// the run, for a look at what the server did; its path is printed.
    #[arg(long)]
    pub keep: bool,
    /// Sockets that stop reading (of one extra user), flooded with
    /// `--flood-rate` messages/s, beside the load (see `stall`); 0: none.
    #[arg(long, default_value_t = 0)]
    pub stalled: usize,
    /// Messages/s sent to the stalled sockets' user.
    #[arg(long, default_value_t = 200.0)]
    pub flood_rate: f64,
    /// The flood's message body, bytes.
    #[arg(long, default_value_t = 2_000)]
    pub flood_body: usize,
    /// The `--stalled` sockets read after all: the anchor of a stall run
    /// (the same work for the server, no slow consumer).
    #[arg(long)]
    pub flood_readers: bool,
    /// Every device sets a push token and the started server pushes to a
    /// webhook in this process (see `push_sink`): the push outbox's cost
    /// on the live path. Every device is connected, so the notifications
    /// sent (a row of their own) should be 0.
    #[arg(long)]
    pub push: bool,
    /// Print JSON lines instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// What wakes a connection at its scheduled send time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PacerKind {
    /// A pacing thread (see `pacer`).
    Thread,
    /// tokio's timer wheel (1 ms ticks).
    Tokio,
}

/// Runs the benchmark.
pub fn run(a: &E2eArgs) -> Result<()> {
    if a.rate.is_nan() || a.rate <= 0.0 || !(0.0..=1.0).contains(&a.group_share) || a.devices == 0 {
        bail!("--rate must be > 0, --group-share in 0..=1, --devices ≥ 1");
    }
    let nofile = server::raise_nofile();
    if (nofile as usize) < a.connections + 256 {
        bail!(
            "open-file limit {nofile} is below --connections {} (+256): raise `ulimit -n`",
            a.connections
        );
    }
    let base = a.dir.clone().unwrap_or_else(std::env::temp_dir);
    std::fs::create_dir_all(&base)?;
    let tmp = tempfile::tempdir_in(&base)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(a.threads.max(1))
        .enable_all()
        .build()?;
    let sink = match a.push {
        true if a.url.is_some() => bail!("--push needs a server this run starts (no --url)"),
        true => Some(rt.block_on(push_sink::Sink::start())?),
        false => None,
    };
    let srv = match &a.url {
        Some(url) => Server::external(url, a.admin_secret.clone())?,
        None => {
            let bin = match &a.missived {
                Some(p) => p.clone(),
                None => std::env::current_exe()?
                    .parent()
                    .context("exe dir")?
                    .join("missived"),
            };
            let hook = sink.as_ref().map(|s| s.url.as_str());
            Server::spawn(&bin, tmp.path(), a.connections, None, hook)?
        }
    };
    let mut rows = rt.block_on(load(a, &srv))?;
    if let Some(s) = &sink {
        let mut r = Row::single(
            "missive",
            "e2e push notifications sent",
            "calls",
            s.calls() as f64,
        );
        r.note = "every device connected: should be 0".into();
        rows.push(r);
    }
    drop(rt);
    srv.stop()?;
    if a.keep && a.url.is_none() {
        eprintln!("e2e: kept the server's directory {}", tmp.keep().display());
    }
    if a.json {
        for r in &rows {
            println!("{}", r.json());
        }
    } else {
        report::table(&rows);
    }
    Ok(())
}

fn say(a: &E2eArgs, what: &str) {
    if !a.json {
        eprintln!("e2e: {what}");
    }
}

async fn load(a: &E2eArgs, srv: &Server) -> Result<Vec<Row>> {
    let layout = Layout {
        users: a.connections / a.devices,
        devices: a.devices,
        group_size: a.group_size,
        user_base: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs()
            * 100_000,
    };
    let http = reqwest::Client::new();
    let t = Instant::now();
    let plans = setup::prepare(&http, srv.addr, &srv.admin_secret, layout).await?;
    if a.push {
        push_sink::register(&http, srv.addr, &plans).await?;
    }
    say(
        a,
        &format!(
            "{} users, {} devices: tokens and conversations in {:.1} s",
            layout.users,
            plans.len(),
            t.elapsed().as_secs_f64()
        ),
    );
    let idle = srv.usage();
    let t = Instant::now();
    let sources = a.sources;
    let addr = srv.addr;
    let conns: Vec<(client::Ws, u64)> = stream::iter(plans.iter().enumerate())
        .map(|(i, p)| async move {
            client::connect(i, sources, addr, p)
                .await
                .with_context(|| format!("connection {i}"))
        })
        .buffered(a.connect_parallel.max(1))
        .try_collect()
        .await?;
    let connected = srv.usage();
    say(
        a,
        &format!(
            "{} connections open and synced in {:.1} s; load: {} msgs/s for {} s + {} s warm-up",
            conns.len(),
            t.elapsed().as_secs_f64(),
            a.rate,
            a.seconds,
            a.warmup
        ),
    );

    let start = Instant::now() + Duration::from_millis(200);
    let sh = Arc::new(Shared {
        group_share: a.group_share,
        body: a.body.max(24),
        ..Shared::new(
            start,
            Duration::from_secs(a.warmup),
            Duration::from_secs(a.seconds),
            Duration::from_secs(a.drain),
        )?
    });
    let pacer = match a.pacer {
        PacerKind::Thread => Some(pacer::Pacer::start()?),
        PacerKind::Tokio => None,
    };
    let stall = match a.stalled {
        0 => None,
        n => Some(
            stall::start(
                &http,
                srv.addr,
                &srv.admin_secret,
                layout.user_base + layout.users as u64 + 10,
                stall::Shape {
                    sockets: n,
                    rate: a.flood_rate,
                    body: a.flood_body,
                    until: start + Duration::from_secs(a.warmup + a.seconds),
                    readers: a.flood_readers,
                },
            )
            .await?,
        ),
    };
    let per_conn = a.rate / conns.len() as f64;
    let mut tasks = Vec::with_capacity(conns.len());
    for (i, ((ws, cursor), plan)) in conns.into_iter().zip(plans).enumerate() {
        let sh = Arc::clone(&sh);
        let pacer = pacer.clone();
        tasks.push(tokio::spawn(async move {
            client::run(i, ws, cursor, plan, per_conn, &sh, pacer.as_deref()).await;
        }));
    }
    // CPU over the measured window only.
    tokio::time::sleep_until((start + Duration::from_secs(a.warmup)).into()).await;
    // To line the timeline below up with the server's log.
    let window_start = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let (srv0, gen0) = (srv.usage(), server::usage(None));
    tokio::time::sleep(Duration::from_secs(a.seconds)).await;
    let (srv1, gen1) = (srv.usage(), server::usage(None));
    for t in tasks {
        let _ = t.await;
    }
    let stalled = match stall {
        Some(st) => {
            let o = st.finish().await;
            format!(
                "; {} {} sockets, {} closed by the server, flood {} sent / {} failed",
                o.sockets,
                if a.flood_readers {
                    "reading"
                } else {
                    "stalled"
                },
                o.closed,
                o.flooded,
                o.flood_errors
            )
        }
        None => String::new(),
    };

    let secs = a.seconds as f64;
    let n = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    // Diagnostics, not a result: where in the window the late ones were.
    let timeline: Vec<String> = sh
        .seconds
        .iter()
        .map(|[all, late, worst]| {
            format!(
                "{}/{} late, worst {:.0} ms",
                n(late),
                n(all),
                n(worst) as f64 / 1000.0
            )
        })
        .collect();
    eprintln!(
        "e2e: deliveries over {} ms, per second of the window (from {:.3} s since the epoch): {}",
        client::LATE.as_millis(),
        window_start.as_secs_f64(),
        timeline.join(" | ")
    );
    let (scheduled, acked) = (n(&sh.scheduled), n(&sh.acked));
    let (expected, received) = (n(&sh.expected), n(&sh.received));
    let errors = sh
        .errors
        .lock()
        .map(|e| format!("{e:?}"))
        .unwrap_or_default();
    let mut rows = vec![
        hist_row(
            "send→sent",
            "msgs/s",
            acked as f64 / secs,
            &sh.sent.merged(),
            format!("{scheduled} scheduled, {acked} acked; errors {errors}"),
        ),
        hist_row(
            "send→delivered",
            "deliveries/s",
            received as f64 / secs,
            &sh.delivered.merged(),
            format!(
                "{received} of {expected} expected ({:.2}%); useq gaps {}; dropped connections {}",
                100.0 * received as f64 / expected.max(1) as f64,
                n(&sh.gaps),
                n(&sh.dropped)
            ),
        ),
        hist_row(
            "generator lag",
            "sends/s",
            scheduled as f64 / secs,
            &sh.lag.merged(),
            "scheduled → written by the generator".into(),
        ),
    ];
    let cores = |a: Option<server::Usage>, b: Option<server::Usage>| match (a, b) {
        (Some(a), Some(b)) => Some((b.cpu_secs - a.cpu_secs) / secs),
        _ => None,
    };
    if let Some(c) = cores(srv0, srv1) {
        rows.push(Row::single("missive", "e2e server cpu", "cores", c));
        // The scale issue's measure: server CPU time per acknowledged send
        // (every delivery, receipt and sync read it caused included).
        if acked > 0 {
            let mut r = Row::single(
                "missive",
                "e2e server cpu/message",
                "µs",
                c * secs * 1e6 / acked as f64,
            );
            r.note = format!("{c:.3} cores over {acked} acked sends");
            rows.push(r);
        }
    }
    if let Some(c) = cores(gen0, gen1) {
        rows.push(Row::single("missive", "e2e generator cpu", "cores", c));
    }
    if let (Some(i), Some(c), Some(l)) = (idle, connected, srv1) {
        let per = |u: &server::Usage| {
            u.rss_bytes.saturating_sub(i.rss_bytes) as f64 / plans_len(a) as f64 / 1024.0
        };
        let mut r = Row::single("missive", "e2e server rss/connection", "KiB", per(&c));
        r.note = format!(
            "idle {:.0} MiB → connected {:.0} MiB → under load {:.0} MiB ({:.1} KiB/conn)",
            i.rss_bytes as f64 / 1048576.0,
            c.rss_bytes as f64 / 1048576.0,
            l.rss_bytes as f64 / 1048576.0,
            per(&l)
        );
        rows.push(r);
    }
    for r in &mut rows {
        r.note = format!(
            "{} conns, {} devices/user, {} msgs/s target, {:.0}% groups of {}{stalled}; {}",
            a.connections,
            a.devices,
            a.rate,
            a.group_share * 100.0,
            a.group_size,
            r.note
        );
    }
    Ok(rows)
}

fn plans_len(a: &E2eArgs) -> usize {
    (a.connections / a.devices) * a.devices
}

fn hist_row(workload: &str, unit: &str, rate: f64, h: &Histogram<u64>, note: String) -> Row {
    let q = |q: f64| h.value_at_quantile(q) as f64;
    Row {
        engine: "missive".into(),
        workload: format!("e2e {workload}"),
        unit: unit.into(),
        rate,
        p50_us: q(0.5),
        p99_us: q(0.99),
        p999_us: q(0.999),
        max_us: h.max() as f64,
        note,
    }
}
