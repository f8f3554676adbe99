//! `missive-bench history`: what edits and reactions cost a history page.
//!
//! One `missived` (started here, like `e2e`), two groups of the same size
//! and the same messages: in `plain` nothing happened after sending; in
//! `decorated` every message was edited once and carries three reactions
//! from three members. Then, in rounds that alternate which conversation
//! goes first, `--pages` history requests of 50 messages each over HTTP
//! with `--parallel` in flight: `pageback` pages at random cursors (each
//! a message's ts, as a client's next page is) and `latest` (the newest
//! page). Reported per conversation and
//! workload: pages/s, latency, and the server's CPU per page (from
//! /proc), and the decorated/plain ratio of that CPU — the anchor is the
//! plain conversation of the same run. Pages come from the server's
//! recent-messages cache once it holds them (older pages too, since they
//! are cached when first read); `--cold` turns the cache off to measure
//! the store path.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use futures_util::{stream, StreamExt};
use serde_json::{json, Value};

use crate::e2e::server::Server;
use crate::report::{Recorder, Row};

/// Command-line arguments.
#[derive(Debug, clap::Args)]
pub struct HistoryArgs {
    /// Messages in each of the two conversations.
    #[arg(long, default_value_t = 1000)]
    pub messages: usize,
    /// Page requests per conversation, workload and round.
    #[arg(long, default_value_t = 2000)]
    pub pages: usize,
    /// Requests in flight.
    #[arg(long, default_value_t = 8)]
    pub parallel: usize,
    /// Rounds (the order of the two conversations alternates).
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Message body, bytes.
    #[arg(long, default_value_t = 100)]
    pub body: usize,
    /// Before measuring, have the server flush and fully compact its store
    /// (`POST /v1/admin/scrub`): the edits' and reactions' older versions
    /// are then gone, as in a store that has been running a while. Without
    /// it, each decorated message has five versions in the memtable.
    #[arg(long)]
    pub settle: bool,
    /// Turn the server's recent-messages cache off, so every page —
    /// the newest too — is read from the store and rendered.
    #[arg(long)]
    pub cold: bool,
    /// The `missived` binary to start [default: next to this one].
    #[arg(long)]
    pub missived: Option<PathBuf>,
    /// Where the started server keeps its data (a fresh directory inside).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Print JSON lines instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Members of both groups; users 2..=4 react.
const MEMBERS: u64 = 4;
const EMOJI: [&str; 3] = ["%F0%9F%91%8D", "%F0%9F%8E%89", "%E2%9D%A4"];

struct Client {
    http: reqwest::Client,
    base: String,
}

impl Client {
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        auth: (&str, &str),
        body: Option<Value>,
    ) -> Result<Value> {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .header(auth.0, auth.1);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req.send().await?;
        let status = r.status();
        let v: Value = r.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            bail!("{path}: {status}: {v}");
        }
        Ok(v)
    }
}

/// Runs the benchmark.
pub fn run(a: &HistoryArgs) -> Result<()> {
    if a.messages < 100 || a.pages == 0 || a.parallel == 0 || a.rounds == 0 {
        bail!("--messages ≥ 100, --pages, --parallel and --rounds ≥ 1");
    }
    crate::e2e::server::measure_with_server(
        a.missived.as_deref(),
        a.dir.as_deref(),
        a.cold.then_some(0),
        a.json,
        async |srv, _| measure(a, srv).await,
    )
}

/// A conversation ready to read: its id and its messages' ts, oldest first.
struct Conv {
    name: &'static str,
    id: String,
    ts: Vec<u64>,
}

async fn setup(a: &HistoryArgs, c: &Client, secret: &str) -> Result<(Vec<String>, [Conv; 2])> {
    let mut tokens = Vec::new();
    for u in 1..=MEMBERS {
        let v = c
            .call(
                reqwest::Method::POST,
                "/v1/admin/tokens",
                ("x-admin-secret", secret),
                Some(json!({"user": u.to_string(), "device": "1"})),
            )
            .await?;
        tokens.push(format!("Bearer {}", v["token"].as_str().context("token")?));
    }
    let others: Vec<String> = (2..=MEMBERS).map(|u| u.to_string()).collect();
    let mut convs = Vec::new();
    for name in ["plain", "decorated"] {
        let v = c
            .call(
                reqwest::Method::POST,
                "/v1/conversations",
                ("authorization", &tokens[0]),
                Some(json!({"kind": "group", "name": name, "members": others})),
            )
            .await?;
        convs.push(Conv {
            name,
            id: v["conv"].as_str().context("conv")?.to_string(),
            ts: Vec::new(),
        });
    }
    let body: String = "x".repeat(a.body);
    for conv in &mut convs {
        let path = format!("/v1/conversations/{}/messages", conv.id);
        for i in 0..a.messages {
            let v = c
                .call(
                    reqwest::Method::POST,
                    &path,
                    ("authorization", &tokens[0]),
                    Some(json!({"client_msg_id": format!("m{i}"), "body": body})),
                )
                .await?;
            conv.ts.push(v["ts"].as_u64().context("ts")?);
        }
    }
    // The decorated conversation: every message edited once (a body of the
    // same size), three reactions each. The server's send limit (1000/s per
    // user) paces this.
    let dec = &convs[1];
    let edited: String = "y".repeat(a.body);
    for seq in 1..=a.messages {
        let m = format!("/v1/conversations/{}/messages/{seq}", dec.id);
        c.call(
            reqwest::Method::PATCH,
            &m,
            ("authorization", &tokens[0]),
            Some(json!({"body": edited})),
        )
        .await?;
        for (r, e) in EMOJI.iter().enumerate() {
            c.call(
                reqwest::Method::PUT,
                &format!("{m}/reactions/{e}"),
                ("authorization", &tokens[r + 1]),
                Some(json!({})),
            )
            .await?;
        }
    }
    let [p, d]: [Conv; 2] = convs
        .try_into()
        .map_err(|_| anyhow::anyhow!("two conversations"))?;
    Ok((tokens, [p, d]))
}

async fn measure(a: &HistoryArgs, srv: &Server) -> Result<Vec<Row>> {
    let c = Client {
        http: reqwest::Client::new(),
        base: format!("http://{}", srv.addr),
    };
    let t = Instant::now();
    let (tokens, convs) = setup(a, &c, &srv.admin_secret).await?;
    if !a.json {
        eprintln!(
            "history: two conversations of {} messages ready in {:.1} s",
            a.messages,
            t.elapsed().as_secs_f64()
        );
    }
    if a.settle {
        let t = Instant::now();
        c.call(
            reqwest::Method::POST,
            "/v1/admin/scrub",
            ("x-admin-secret", &srv.admin_secret),
            None,
        )
        .await?;
        if !a.json {
            eprintln!(
                "history: flushed and compacted in {:.1} s",
                t.elapsed().as_secs_f64()
            );
        }
    }
    let check = c
        .call(
            reqwest::Method::GET,
            &format!("/v1/conversations/{}/messages?limit=1", convs[1].id),
            ("authorization", &tokens[1]),
            None,
        )
        .await?;
    if check["messages"][0]["reactions"]
        .as_object()
        .map_or(0, serde_json::Map::len)
        != 3
        || check["messages"][0]["edits"] != 1
    {
        bail!("the decorated conversation is not decorated: {check}");
    }
    // The size of a page as sent (the newest 50), per conversation.
    let mut page_bytes = Vec::new();
    for conv in &convs {
        let body = c
            .http
            .get(format!(
                "{}/v1/conversations/{}/messages?limit=50",
                c.base, conv.id
            ))
            .header("authorization", &tokens[1])
            .send()
            .await?
            .text()
            .await?;
        page_bytes.push((conv.name, body.len()));
    }
    let mut rows = Vec::new();
    // (conversation, workload) → latencies, pages, wall seconds, CPU seconds.
    let mut totals: Vec<(String, Recorder, usize, f64, f64)> = Vec::new();
    for round in 0..a.rounds {
        let order: Vec<&Conv> = if round % 2 == 0 {
            vec![&convs[0], &convs[1]]
        } else {
            vec![&convs[1], &convs[0]]
        };
        for conv in order {
            for workload in ["pageback", "latest"] {
                let before = srv.usage().context("/proc of missived")?;
                let t = Instant::now();
                let lat = pages(a, &c, &tokens[1], conv, workload).await?;
                let wall = t.elapsed().as_secs_f64();
                let after = srv.usage().context("/proc of missived")?;
                let key = format!("{}/{workload}", conv.name);
                let cpu = after.cpu_secs - before.cpu_secs;
                match totals.iter_mut().find(|x| x.0 == key) {
                    Some(x) => {
                        x.1.merge(&lat);
                        x.2 += a.pages;
                        x.3 += wall;
                        x.4 += cpu;
                    }
                    None => totals.push((key, lat, a.pages, wall, cpu)),
                }
            }
        }
    }
    let cpu_per_page = |key: &str| {
        totals
            .iter()
            .find(|x| x.0 == key)
            .map(|x| x.4 / x.2 as f64 * 1e6)
    };
    for (key, lat, n, wall, cpu) in &totals {
        let mut row = lat.row(
            "missive",
            &format!("history-{key}"),
            "pages/s",
            *n as f64 / wall,
        );
        let bytes = page_bytes
            .iter()
            .find(|(name, _)| key.starts_with(name))
            .map_or(0, |(_, b)| *b);
        row.note = format!(
            "server CPU {:.0} µs/page; {bytes} bytes/page",
            cpu / *n as f64 * 1e6
        );
        rows.push(row);
    }
    for w in ["pageback", "latest"] {
        if let (Some(p), Some(d)) = (
            cpu_per_page(&format!("plain/{w}")),
            cpu_per_page(&format!("decorated/{w}")),
        ) {
            let mut r = Row::single(
                "missive",
                &format!("history-{w}-cpu-ratio"),
                "decorated/plain",
                d / p,
            );
            r.note = format!("server CPU per page {d:.0} / {p:.0} µs (target ≤ 1.3)");
            rows.push(r);
        }
    }
    Ok(rows)
}

/// `a.pages` page requests of 50 with `a.parallel` in flight; their
/// latencies.
async fn pages(
    a: &HistoryArgs,
    c: &Client,
    token: &str,
    conv: &Conv,
    workload: &str,
) -> Result<Recorder> {
    let paths: Vec<String> = (0..a.pages)
        .map(|_| match workload {
            "latest" => format!("/v1/conversations/{}/messages?limit=50", conv.id),
            _ => {
                // A cursor with at least 50 older messages.
                let i = fastrand::usize(50..conv.ts.len());
                format!(
                    "/v1/conversations/{}/messages?limit=50&before={}",
                    conv.id, conv.ts[i]
                )
            }
        })
        .collect();
    let results: Vec<Result<Duration>> = stream::iter(paths)
        .map(|p| async move {
            let t = Instant::now();
            let v = c
                .call(reqwest::Method::GET, &p, ("authorization", token), None)
                .await?;
            let n = v["messages"].as_array().map_or(0, Vec::len);
            if n != 50 {
                bail!("{p}: {n} messages, not 50");
            }
            Ok(t.elapsed())
        })
        .buffer_unordered(a.parallel)
        .collect()
        .await;
    let mut rec = Recorder::new();
    for r in results {
        rec.record(r?);
    }
    Ok(rec)
}
