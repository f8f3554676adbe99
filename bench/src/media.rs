//! `missive-bench media`: uploads and downloads through a real `missived`,
//! against the same disk's raw sequential write and read in the same run.
//!
//! Phases, per file size (`--sizes`, default 1 MiB and 50 MiB), in
//! `--rounds` that alternate the anchor and Missive:
//! 1. **raw write**: the same bytes written to new files (one per upload,
//!    kept until the reads, as an upload's bytes are) in the server's data
//!    directory's filesystem, 1 MiB per `write`, one `fdatasync` per file
//!    (what an upload's acknowledgement promises: the file is durable).
//! 2. **upload**: one POST per file carrying the whole body (tus
//!    creation-with-upload; against a server that does not offer it, tus
//!    create + one PATCH), one file at a time (`--in-flight N`: N at
//!    once, as several clients upload together); the answer comes once every
//!    chunk is committed (replicated where there are replicas; this is one
//!    node) and the object stored.
//! 3. **raw read** of those files (cold: their pages dropped with
//!    `posix_fadvise(DONTNEED)` first; 1 MiB per `read` into one buffer)
//!    and **download** cold (every file of the server's data directory
//!    dropped the same way) and warm; the client streams each body and
//!    drops it as it arrives, as the raw read reuses its buffer.
//! 4. **range**: `--ranges` random 64 KiB `Range` requests over the
//!    uploaded files; p50/p99.
//!
//! Also reported: the node's bytes written (log + tables, from /metrics)
//! per byte uploaded, right after the uploads and again after the store is
//! flushed and fully compacted (`POST /v1/admin/scrub`) — the media
//! store's write amplification (docs/design.md).

use std::io::Write;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::json;

use crate::e2e::server::Server;
use crate::report::{Recorder, Row};

/// Command-line arguments.
#[derive(Debug, clap::Args)]
pub struct MediaArgs {
    /// File sizes, MiB.
    #[arg(long, value_delimiter = ',', default_values_t = [1u64, 50])]
    pub sizes: Vec<u64>,
    /// Bytes moved per size and phase, MiB (files = this / size).
    #[arg(long, default_value_t = 200)]
    pub volume: u64,
    /// Random 64 KiB range requests.
    #[arg(long, default_value_t = 2000)]
    pub ranges: usize,
    /// Rounds.
    #[arg(long, default_value_t = 2)]
    pub rounds: usize,
    /// Uploads in flight at once (several clients uploading together;
    /// the raw write anchor stays one writer, one file at a time).
    #[arg(long, default_value_t = 1)]
    pub in_flight: usize,
    /// The `missived` binary to start [default: next to this one].
    #[arg(long)]
    pub missived: Option<PathBuf>,
    /// Where the server's data and the raw files go.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Print JSON lines instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// `len` pseudo-random (incompressible) bytes: xorshift64, a word at a
/// time.
fn bytes_of(len: usize, seed: u64) -> bytes::Bytes {
    // Odd and non-zero, and distinct for distinct seeds: `seed | 1` gave
    // seeds 2k and 2k + 1 the same bytes, so half of every round's files
    // were duplicates the server deduplicated (until 2026-12-08).
    let mut x = (seed << 1) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    bytes::Bytes::from(out)
}

/// Drops a file's pages from the page cache.
fn drop_cache(path: &Path) -> Result<()> {
    let f = std::fs::File::open(path)?;
    // SAFETY: a valid open descriptor; the call only advises the kernel.
    let rc = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    if rc != 0 {
        bail!("posix_fadvise: {rc}");
    }
    Ok(())
}

fn drop_tree(dir: &Path) -> Result<()> {
    for e in std::fs::read_dir(dir)? {
        let p = e?.path();
        if p.is_dir() {
            drop_tree(&p)?;
        } else {
            let _ = drop_cache(&p);
        }
    }
    Ok(())
}

/// Reads a file through `buf`, 1 MiB per `read`; the bytes read. The raw
/// read anchor consumes its bytes the way a download does (through one
/// buffer, kept), so neither side pays for holding a whole file.
fn read_through(path: &Path, buf: &mut [u8]) -> Result<usize> {
    use std::io::Read as _;
    let mut f = std::fs::File::open(path)?;
    let mut n = 0;
    loop {
        match f.read(buf)? {
            0 => return Ok(n),
            k => n += k,
        }
    }
}

/// Downloads media `id` whole, its body streamed and dropped as it
/// arrives (what a client writing to a file or a decoder does); the bytes
/// received. Collecting a 50 MiB body instead costs the client a growing
/// buffer and its copies, which the raw read anchor does not pay.
async fn download(c: &reqwest::Client, base: &str, token: &str, id: &str) -> Result<usize> {
    let mut r = c
        .get(format!("{base}/v1/media/{id}"))
        .bearer_auth(token)
        .send()
        .await?;
    if r.status() != 200 {
        bail!("download of {id}: {}", r.status());
    }
    let mut n = 0;
    while let Some(piece) = r.chunk().await? {
        n += piece.len();
    }
    Ok(n)
}

fn mibps(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / (1 << 20) as f64 / d.as_secs_f64()
}

/// Runs the benchmark.
pub fn run(a: &MediaArgs) -> Result<()> {
    if a.sizes.is_empty() || a.rounds == 0 || a.volume == 0 || a.in_flight == 0 {
        bail!("--sizes, --rounds, --volume and --in-flight must be set");
    }
    crate::e2e::server::measure_with_server(
        a.missived.as_deref(),
        a.dir.as_deref(),
        None,
        a.json,
        async |srv, dir| measure(a, srv, dir).await,
    )
}

async fn metric(c: &reqwest::Client, srv: &Server, name: &str) -> Result<f64> {
    let text = c
        .get(format!("http://{}/metrics", srv.addr))
        .send()
        .await?
        .text()
        .await?;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .with_context(|| format!("{name} not in /metrics"))
}

async fn node_bytes_written(c: &reqwest::Client, srv: &Server) -> Result<f64> {
    // Builds before blob files have no blob counter: zero for them.
    let blobs = metric(c, srv, "missive_lsm_blob_bytes_written_total")
        .await
        .unwrap_or(0.0);
    // Builds before the log store kept large entries' bytes in blob files
    // have no such counter: zero for them.
    let bulk = metric(c, srv, "missive_lsm_pinned_blob_bytes_written_total")
        .await
        .unwrap_or(0.0);
    Ok(metric(c, srv, "missive_log_bytes_written_total").await?
        + metric(c, srv, "missive_lsm_table_bytes_written_total").await?
        + blobs
        + bulk)
}

/// Uploads `body`; its media id. `with_upload`: in the POST that creates
/// the upload (tus creation-with-upload), else in a PATCH after it.
async fn upload(
    c: &reqwest::Client,
    base: &str,
    token: &str,
    body: &bytes::Bytes,
    with_upload: bool,
) -> Result<String> {
    let mut req = c
        .post(format!("{base}/v1/media/uploads"))
        .bearer_auth(token)
        .header("Upload-Length", body.len().to_string());
    if with_upload {
        req = req
            .header("Content-Type", "application/offset+octet-stream")
            .body(body.clone());
    }
    let r = req.send().await?;
    if r.status() != 201 {
        bail!("create: {} {:?}", r.status(), r.text().await);
    }
    let r = if with_upload {
        r
    } else {
        let loc = r.headers()["location"].to_str()?.to_owned();
        let r = c
            .patch(format!("{base}{loc}"))
            .bearer_auth(token)
            .header("Content-Type", "application/offset+octet-stream")
            .header("Upload-Offset", "0")
            .body(body.clone())
            .send()
            .await?;
        if r.status() != 204 {
            bail!("patch: {} {:?}", r.status(), r.text().await);
        }
        r
    };
    Ok(r.headers()
        .get("missive-media-id")
        .context("no media id: the upload did not complete")?
        .to_str()?
        .to_owned())
}

async fn measure(a: &MediaArgs, srv: &Server, dir: &Path) -> Result<Vec<Row>> {
    let c = reqwest::Client::new();
    let base = format!("http://{}", srv.addr);
    let v: serde_json::Value = c
        .post(format!("{base}/v1/admin/tokens"))
        .header("x-admin-secret", &srv.admin_secret)
        .json(&json!({"user": "1", "device": "1"}))
        .send()
        .await?
        .json()
        .await?;
    let token = v["token"].as_str().context("token")?.to_owned();
    // Whether the server takes a file's bytes with its creation.
    let with_upload = c
        .request(reqwest::Method::OPTIONS, format!("{base}/v1/media/uploads"))
        .send()
        .await?
        .headers()
        .get("tus-extension")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|e| e.trim() == "creation-with-upload"));
    let data_dir = dir.join("server").join("data");
    let mut rows = Vec::new();
    let mut uploaded_bytes = 0u64;
    let written_before = node_bytes_written(&c, srv).await?;
    let mut ids: Vec<(String, u64)> = Vec::new();
    for &size_mib in &a.sizes {
        let size = (size_mib << 20) as usize;
        let files = (a.volume / size_mib).max(1) as usize;
        let total = (size * files) as u64;
        let (mut raw_w, mut up, mut raw_r, mut down_cold, mut down_warm) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for round in 0..a.rounds {
            // Distinct bytes per file and round: no deduplication.
            let contents: Vec<bytes::Bytes> = (0..files)
                .map(|i| bytes_of(size, (round * 1000 + i) as u64 + size_mib * 7919))
                .collect();
            // Raw write: 1 MiB writes, one fdatasync per file, each file
            // new and kept until the reads (as an upload's bytes are).
            let raw_files: Vec<PathBuf> = (0..files)
                .map(|i| dir.join(format!("raw-{i}.bin")))
                .collect();
            let t = Instant::now();
            for (body, path) in contents.iter().zip(&raw_files) {
                let mut f = std::fs::File::create(path)?;
                for piece in body.chunks(1 << 20) {
                    f.write_all(piece)?;
                }
                f.sync_data()?;
            }
            raw_w.push(mibps(total, t.elapsed()));
            // Upload.
            let t = Instant::now();
            let mut round_ids = Vec::new();
            {
                use futures_util::StreamExt as _;
                // `--in-flight` uploads at once, answers in file order.
                let got: Vec<Result<String>> = futures_util::stream::iter(contents.iter())
                    .map(|body| upload(&c, &base, &token, body, with_upload))
                    .buffered(a.in_flight)
                    .collect()
                    .await;
                for g in got {
                    round_ids.push(g?);
                }
            }
            up.push(mibps(total, t.elapsed()));
            uploaded_bytes += total;
            // Raw read, cold: every file written, its pages dropped first.
            for path in &raw_files {
                drop_cache(path)?;
            }
            let t = Instant::now();
            let mut buf = vec![0u8; 1 << 20];
            for path in &raw_files {
                let n = read_through(path, &mut buf)?;
                if n != size {
                    bail!("raw read {n} of {size}");
                }
            }
            raw_r.push(mibps(total, t.elapsed()));
            for path in &raw_files {
                std::fs::remove_file(path)?;
            }
            // Download, cold then warm.
            for (cold, out) in [(true, &mut down_cold), (false, &mut down_warm)] {
                if cold {
                    drop_tree(&data_dir)?;
                }
                let t = Instant::now();
                for (id, body) in round_ids.iter().zip(&contents) {
                    let got = download(&c, &base, &token, id).await?;
                    if got != body.len() {
                        bail!("download of {id}: {got} of {} bytes", body.len());
                    }
                }
                out.push(mibps(total, t.elapsed()));
            }
            ids.extend(round_ids.into_iter().map(|id| (id, size as u64)));
        }
        let med = |v: &mut Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let (rw, u, rr, dc, dw) = (
            med(&mut raw_w),
            med(&mut up),
            med(&mut raw_r),
            med(&mut down_cold),
            med(&mut down_warm),
        );
        let name = format!("{size_mib}MiB");
        rows.push(Row::single("raw", &format!("write-{name}"), "MiB/s", rw));
        let mut r = Row::single("missive", &format!("upload-{name}"), "MiB/s", u);
        let how = if with_upload { "POST" } else { "POST+PATCH" };
        r.note = format!(
            "{:.2}× raw write (target ≥ 0.5), {how}, {} in flight",
            u / rw,
            a.in_flight
        );
        rows.push(r);
        rows.push(Row::single(
            "raw",
            &format!("read-cold-{name}"),
            "MiB/s",
            rr,
        ));
        let mut r = Row::single("missive", &format!("download-cold-{name}"), "MiB/s", dc);
        r.note = format!("{:.2}× raw read (target ≥ 0.8)", dc / rr);
        rows.push(r);
        let mut r = Row::single("missive", &format!("download-warm-{name}"), "MiB/s", dw);
        r.note = format!("{:.2}× raw cold read", dw / rr);
        rows.push(r);
    }
    let written_after = node_bytes_written(&c, srv).await?;
    let amp = |name: &str, written: f64, note: &str| {
        let mut r = Row::single(
            "missive",
            name,
            "bytes/byte",
            (written - written_before) / uploaded_bytes as f64,
        );
        r.note = note.into();
        r
    };
    rows.push(amp(
        "write-amp-after-upload",
        written_after,
        "log + tables written per byte uploaded",
    ));

    // Range requests over everything uploaded.
    let mut rec = Recorder::new();
    let t = Instant::now();
    for _ in 0..a.ranges {
        let (id, size) = &ids[fastrand::usize(..ids.len())];
        let start = fastrand::u64(..size.saturating_sub(65_536).max(1));
        let t0 = Instant::now();
        let r = c
            .get(format!("{base}/v1/media/{id}"))
            .bearer_auth(&token)
            .header("Range", format!("bytes={start}-{}", start + 65_535))
            .send()
            .await?;
        if r.status() != 206 {
            bail!("range: {}", r.status());
        }
        let n = r.bytes().await?.len();
        if n != 65_536 {
            bail!("range: {n} bytes");
        }
        rec.record(t0.elapsed());
    }
    let rate = a.ranges as f64 / t.elapsed().as_secs_f64();
    rows.push(rec.row("missive", "range-64KiB", "req/s", rate));

    // Settled: flushed and fully compacted.
    let r = c
        .post(format!("{base}/v1/admin/scrub"))
        .header("x-admin-secret", &srv.admin_secret)
        .send()
        .await?;
    if !r.status().is_success() {
        bail!("scrub: {}", r.status());
    }
    let settled = node_bytes_written(&c, srv).await?;
    rows.push(amp(
        "write-amp-settled",
        settled,
        "after flush + full compaction",
    ));
    Ok(rows)
}
