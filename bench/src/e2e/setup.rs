//! Before the load: a token for every device (the admin mint endpoint) and
//! the conversations, all over the server's public HTTP API.
//!
//! Users `base, base+1, …` have `devices` devices each. Users 2k and 2k+1
//! share a direct conversation; consecutive runs of `group_size` users form
//! a group (created by its first member). A device's sends go to its
//! direct conversation or, with probability `group_share`, to its group.

use anyhow::{bail, Context, Result};
use futures_util::{stream, StreamExt, TryStreamExt};
use serde_json::{json, Value};

/// Concurrent setup requests.
const PARALLEL: usize = 64;

/// The shape of the population.
#[derive(Debug, Clone, Copy)]
pub struct Layout {
    /// Users (an even number: they pair up).
    pub users: usize,
    /// Devices per user, all connected.
    pub devices: usize,
    /// Members per group.
    pub group_size: usize,
    /// The first user id (a fresh range per run keeps runs apart on a
    /// server that outlives them).
    pub user_base: u64,
}

/// What one connection needs.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The device's user.
    pub user: u64,
    /// The device.
    pub device: u64,
    /// Its access token.
    pub token: String,
    /// Its user's direct conversation, and the devices a message there
    /// reaches besides the sending one.
    pub direct: (String, u64),
    /// Its user's group, if the user is in one, and the same count.
    pub group: Option<(String, u64)>,
}

struct Api<'a> {
    http: &'a reqwest::Client,
    base: String,
}

impl Api<'_> {
    async fn post(&self, path: &str, auth: (&str, &str), body: Value) -> Result<Value> {
        let r = self
            .http
            .post(format!("{}{path}", self.base))
            .header(auth.0, auth.1)
            .json(&body)
            .send()
            .await
            .with_context(|| format!("POST {path}"))?;
        let status = r.status();
        let v: Value = r
            .json()
            .await
            .with_context(|| format!("POST {path}: body"))?;
        if !status.is_success() {
            bail!("POST {path}: {status}: {v}");
        }
        Ok(v)
    }

    async fn token(&self, admin: &str, user: u64, device: u64) -> Result<String> {
        let v = self
            .post(
                "/v1/admin/tokens",
                ("x-admin-secret", admin),
                json!({"user": user.to_string(), "device": device.to_string()}),
            )
            .await?;
        Ok(v["token"].as_str().context("token in answer")?.to_string())
    }

    async fn create(&self, token: &str, body: Value) -> Result<String> {
        let v = self
            .post(
                "/v1/conversations",
                ("authorization", &format!("Bearer {token}")),
                body,
            )
            .await?;
        Ok(v["conv"].as_str().context("conv in answer")?.to_string())
    }
}

/// Mints the tokens and creates the conversations; one plan per device,
/// user-major.
pub async fn prepare(
    http: &reqwest::Client,
    addr: std::net::SocketAddr,
    admin: &str,
    l: Layout,
) -> Result<Vec<Plan>> {
    if l.users < 2 || l.users % 2 != 0 {
        bail!(
            "{} users: connections / devices must be an even number ≥ 2",
            l.users
        );
    }
    if l.group_size < 2 {
        bail!("--group-size must be at least 2");
    }
    let api = Api {
        http,
        base: format!("http://{addr}"),
    };
    let user = |i: usize| l.user_base + i as u64;
    let devices: Vec<(usize, u64)> = (0..l.users)
        .flat_map(|i| (1..=l.devices as u64).map(move |d| (i, d)))
        .collect();
    let tokens: Vec<String> = stream::iter(devices.iter().copied())
        .map(|(i, d)| api.token(admin, user(i), d))
        .buffered(PARALLEL)
        .try_collect()
        .await?;
    // A user's first device's token creates their conversations.
    let first = |i: usize| tokens[i * l.devices].as_str();
    let directs: Vec<String> = stream::iter((0..l.users).step_by(2))
        .map(|i| {
            api.create(
                first(i),
                json!({"kind": "direct", "peer": user(i + 1).to_string()}),
            )
        })
        .buffered(PARALLEL)
        .try_collect()
        .await?;
    let chunks: Vec<(usize, usize)> = (0..l.users)
        .step_by(l.group_size)
        .map(|s| (s, (s + l.group_size).min(l.users)))
        .filter(|(s, e)| e - s >= 2)
        .collect();
    let groups: Vec<String> = stream::iter(chunks.iter().copied())
        .map(|(s, e)| {
            let others: Vec<String> = (s + 1..e).map(|i| user(i).to_string()).collect();
            api.create(
                first(s),
                json!({"kind": "group", "name": format!("bench {s}"), "members": others}),
            )
        })
        .buffered(PARALLEL)
        .try_collect()
        .await?;
    let fanout = |members: usize| (members * l.devices) as u64 - 1;
    let plans = devices
        .iter()
        .zip(tokens)
        .map(|(&(i, d), token)| {
            let group = chunks
                .iter()
                .position(|(s, e)| (*s..*e).contains(&i))
                .map(|g| (groups[g].clone(), fanout(chunks[g].1 - chunks[g].0)));
            Plan {
                user: user(i),
                device: d,
                token,
                direct: (directs[i / 2].clone(), fanout(2)),
                group,
            }
        })
        .collect();
    Ok(plans)
}

/// A pair of users apart from the layout's (ids from `base`): the one
/// whose sockets stall and the one who floods them, with their direct
/// conversation. Returns (stalled user's token for `devices` devices,
/// flooder's token, conversation).
pub async fn flood_pair(
    http: &reqwest::Client,
    addr: std::net::SocketAddr,
    admin: &str,
    base: u64,
    devices: usize,
) -> Result<(Vec<String>, String, String)> {
    let api = Api {
        http,
        base: format!("http://{addr}"),
    };
    let (stalled, flooder) = (base, base + 1);
    let mut tokens = Vec::with_capacity(devices);
    for d in 1..=devices as u64 {
        tokens.push(api.token(admin, stalled, d).await?);
    }
    let f = api.token(admin, flooder, 1).await?;
    let conv = api
        .create(&f, json!({"kind": "direct", "peer": stalled.to_string()}))
        .await?;
    Ok((tokens, f, conv))
}
