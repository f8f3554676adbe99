//! `--push`: a push webhook in this process, for the started server to
//! send its notifications to. It answers 204 and counts: with every device
//! connected, nothing should reach it, so what the run measures is the
//! push outbox's cost on the live path (a job written with every message
//! event, and the sender deciding the user got it live).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::Result;
use axum::http::StatusCode;
use axum::routing::post;

/// A running sink.
pub struct Sink {
    /// Its URL (`push.webhook_url`).
    pub url: String,
    calls: Arc<AtomicU64>,
}

impl Sink {
    /// Starts one on a loopback port (on the current tokio runtime).
    pub async fn start() -> Result<Sink> {
        let calls = Arc::new(AtomicU64::new(0));
        let counted = Arc::clone(&calls);
        let app = axum::Router::new().route(
            "/push",
            post(move || {
                counted.fetch_add(1, Ordering::Relaxed);
                async { StatusCode::NO_CONTENT }
            }),
        );
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}/push", l.local_addr()?);
        tokio::spawn(async move { axum::serve(l, app).await });
        Ok(Sink { url, calls })
    }

    /// Notifications received so far.
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }
}

/// Sets a push token for every device of `plans` (64 at a time).
pub async fn register(
    http: &reqwest::Client,
    addr: std::net::SocketAddr,
    plans: &[super::setup::Plan],
) -> Result<()> {
    use futures_util::{stream, StreamExt, TryStreamExt};
    stream::iter(plans)
        .map(|p| async move {
            let r = http
                .put(format!("http://{addr}/v1/devices/push"))
                .bearer_auth(&p.token)
                .json(&serde_json::json!({"token": format!("bench-{}-{}", p.user, p.device)}))
                .send()
                .await?;
            anyhow::ensure!(r.status().is_success(), "push token: {}", r.status());
            Ok(())
        })
        .buffer_unordered(64)
        .try_collect::<Vec<()>>()
        .await?;
    Ok(())
}
