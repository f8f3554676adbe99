//! `backup` and `restore`: a running cluster's data shards copied to a
//! directory, and put into another cluster, through a node's admin API
//! (server/src/edge/backup.rs; why each shard's copy is consistent while
//! writes go on: `missive_raft::backup`).
//!
//! # A backup directory, file by file
//!
//! ```text
//!  p0-shard-0001.msnp … one per phase and data shard: the received-
//!                      snapshot file format (missive_raft::storage::
//!                      snapshot): "MSNP", version 1, then chunks
//!                      [len u32 LE][crc32 u32 LE][postcard(Vec<(key,
//!                      value)>)], keys ascending
//!  MANIFEST.json       written last (to MANIFEST.json.tmp, fsynced, renamed):
//!                      a directory without it is an unfinished backup
//! ```
//!
//! # Phases, and the order of a restore
//!
//! The server names the phases (`GET /v1/admin/backup`; chat: the
//! conversations' keyspaces, then the users'). Every shard's phase 0 is
//! copied before any shard's phase 1, so each later phase is pinned after
//! every earlier one (see `ChatApp::backup_phases` for why). A restore
//! sends the phases in the *reverse* order: the restored cluster's fan-out
//! starts delivering the outbox entries of the first phase as soon as they
//! land, and those deliveries must go on top of the restored inboxes, not
//! be overwritten by them. Then it asks the cluster to reconcile (`POST
//! /v1/admin/restore/reconcile`: raise each conversation's counters past
//! what the inboxes hold).
//!
//! `MANIFEST.json` is one JSON object:
//!
//! ```text
//!  format        "missive-backup"
//!  version       1
//!  created_ms    when the backup began (ms since the Unix epoch)
//!  source        the URL it was taken through
//!  shard_count   the source's data shard count
//!  cluster       the source's GET /v1/admin/cluster answer (its map)
//!  phases        the keyspaces of each phase, in backup order
//!  shards[]      phase, shard, slots [lo, hi), file, applied {term, node,
//!                index} or null, served_by, chunks, pairs, bytes, crc32
//!                (of the whole file); phase by phase, shards in order
//!  crc32         crc32 of the object's compact JSON without this field
//! ```
//!
//! Each shard's `applied` is its point in time: everything acknowledged
//! before the backup of that shard began is in its file.

use std::fs::File;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, ensure, Context};
use serde_json::{json, Value};

use missive_raft::storage::snapshot::{frame_chunk, SnapshotReader, FILE_HEADER};

use crate::cluster::{call, runtime, Target, CHANGE_TIMEOUT};
use crate::render::Output;

/// The manifest's `format`.
const FORMAT: &str = "missive-backup";
/// The manifest's `version`.
const VERSION: u64 = 1;
/// The manifest's file name.
const MANIFEST: &str = "MANIFEST.json";

/// The crc32 of `manifest` without its `crc32` field, as compact JSON.
fn manifest_crc(manifest: &Value) -> anyhow::Result<u32> {
    let mut body = manifest.clone();
    if let Some(o) = body.as_object_mut() {
        o.remove("crc32");
    }
    Ok(crc32fast::hash(&serde_json::to_vec(&body)?))
}

/// Reads and checks `dir`'s manifest.
fn read_manifest(dir: &Path) -> anyhow::Result<Value> {
    let path = dir.join(MANIFEST);
    let bytes = std::fs::read(&path).with_context(|| {
        format!(
            "reading {} (a backup directory without it is unfinished)",
            path.display()
        )
    })?;
    let m: Value = serde_json::from_slice(&bytes)
        .with_context(|| format!("{} is not JSON", path.display()))?;
    ensure!(
        m["format"] == FORMAT,
        "{} is not a Missive backup manifest",
        path.display()
    );
    ensure!(
        m["version"] == VERSION,
        "{} is backup format version {}; this missivectl reads {VERSION}",
        path.display(),
        m["version"]
    );
    let crc = manifest_crc(&m)?;
    ensure!(
        m["crc32"].as_u64() == Some(u64::from(crc)),
        "{} is damaged: its checksum does not match its contents",
        path.display()
    );
    Ok(m)
}

/// Writes `bytes` to `dir/name` durably: a temporary file, fsynced,
/// renamed over, the directory fsynced.
fn write_durably(dir: &Path, name: &str, bytes: &[u8]) -> anyhow::Result<()> {
    let tmp = dir.join(format!("{name}.tmp"));
    let mut f = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, dir.join(name))?;
    File::open(dir)?.sync_all()?;
    Ok(())
}

/// One shard file's chunks and pairs, every chunk's checksum checked.
fn count_file(path: &Path) -> anyhow::Result<(u64, u64)> {
    let mut r = SnapshotReader::open(path)?;
    let (mut chunks, mut pairs) = (0u64, 0u64);
    while let Some(c) = r.next_chunk()? {
        chunks += 1;
        pairs += c.len() as u64;
    }
    Ok((chunks, pairs))
}

/// The crc32 and length of a whole file.
fn file_crc(path: &Path) -> anyhow::Result<(u32, u64)> {
    use std::io::Read as _;
    let mut f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut h = crc32fast::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut len = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        len += n as u64;
    }
    Ok((h.finalize(), len))
}

/// How long one shard's copy is retried while its replicas answer 503
/// (an election, a node away).
const SHARD_RETRY: std::time::Duration = std::time::Duration::from_secs(60);

/// A failure worth another try: the server answered 503.
#[derive(Debug)]
struct Unavailable(String);

impl std::fmt::Display for Unavailable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Unavailable {}

/// [`backup_shard`], started again (the file rewritten) while the server
/// answers 503, for up to [`SHARD_RETRY`].
async fn backup_shard_retrying(
    t: &Target,
    phase: u64,
    shard: u64,
    path: &Path,
) -> anyhow::Result<Value> {
    let deadline = tokio::time::Instant::now() + SHARD_RETRY;
    loop {
        match backup_shard(t, phase, shard, path).await {
            Err(e) if e.is::<Unavailable>() && tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            }
            other => return other,
        }
    }
}

/// Streams one phase of one shard into `path`; answers its manifest entry.
async fn backup_shard(t: &Target, phase: u64, shard: u64, path: &Path) -> anyhow::Result<Value> {
    let url = format!(
        "{}/v1/admin/backup/shards/{shard}?phase={phase}",
        t.url.trim_end_matches('/')
    );
    let mut resp = reqwest::Client::new()
        .get(&url)
        .header("x-admin-secret", &t.admin_secret)
        .send()
        .await
        .with_context(|| format!("calling {url}"))?;
    let status = resp.status();
    if !status.is_success() {
        let v: Value = resp.json().await.unwrap_or(Value::Null);
        let why = format!(
            "{url}: {status}: {} ({})",
            v["error"]["message"].as_str().unwrap_or("no message"),
            v["error"]["code"].as_str().unwrap_or("no code")
        );
        if status == reqwest::StatusCode::SERVICE_UNAVAILABLE {
            return Err(Unavailable(why).into());
        }
        bail!(why);
    }
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
    };
    let applied = match (
        header("x-missive-applied-index"),
        header("x-missive-applied-term"),
        header("x-missive-applied-node"),
    ) {
        (Some(index), Some(term), Some(node)) => {
            json!({ "index": index, "term": term, "node": node })
        }
        _ => Value::Null,
    };
    let served_by = header("x-missive-served-by");
    let mut f = File::create(path).with_context(|| format!("creating {}", path.display()))?;
    // A stream cut short fails here (no last chunk of the chunked body),
    // not silently as a shorter shard.
    while let Some(bytes) = resp
        .chunk()
        .await
        .with_context(|| format!("reading shard {shard}'s stream from {url}"))?
    {
        f.write_all(&bytes)?;
    }
    f.sync_all()?;
    drop(f);
    let (chunks, pairs) =
        count_file(path).with_context(|| format!("checking {}", path.display()))?;
    let (crc, bytes) = file_crc(path)?;
    Ok(json!({
        "phase": phase,
        "shard": shard,
        "file": path.file_name().and_then(|n| n.to_str()).unwrap_or_default(),
        "applied": applied,
        "served_by": served_by,
        "chunks": chunks,
        "pairs": pairs,
        "bytes": bytes,
        "crc32": crc,
    }))
}

/// `backup --out DIR`: every data shard of the cluster at `t`.
pub fn backup(t: &Target, out: &Path) -> anyhow::Result<Output> {
    if out.join(MANIFEST).exists() {
        bail!(
            "{} already holds a backup; choose a new directory",
            out.display()
        );
    }
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let created_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let rt = runtime()?;
    let plan = rt.block_on(call(t, reqwest::Method::GET, "/backup", None))?;
    let phases = plan["phases"].as_array().map_or(0, Vec::len) as u64;
    ensure!(
        phases > 0,
        "the cluster at {} named no backup phases",
        t.url
    );
    let cluster = rt.block_on(call(t, reqwest::Method::GET, "/cluster", None))?;
    let data_shards: Vec<&Value> = cluster["shards"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| s["shard"].as_u64().is_some_and(|n| n > 0))
        .collect();
    ensure!(
        !data_shards.is_empty(),
        "the cluster at {} listed no data shards",
        t.url
    );
    let mut shards = Vec::new();
    let mut text = String::new();
    for phase in 0..phases {
        for s in &data_shards {
            let shard = s["shard"].as_u64().unwrap_or_default();
            let file = format!("p{phase}-shard-{shard:04}.msnp");
            let mut entry =
                rt.block_on(backup_shard_retrying(t, phase, shard, &out.join(&file)))?;
            entry["slots"] = s["slots"].clone();
            text.push_str(&format!(
                "phase {phase} shard {shard:>3}  {} pairs in {} chunks ({} bytes) at index {}, served by node {}\n",
                entry["pairs"], entry["chunks"], entry["bytes"], entry["applied"]["index"], entry["served_by"]
            ));
            shards.push(entry);
        }
    }
    let mut manifest = json!({
        "format": FORMAT,
        "version": VERSION,
        "created_ms": created_ms,
        "source": t.url,
        "shard_count": data_shards.len(),
        "phases": plan["phases"],
        "cluster": cluster,
        "shards": shards,
    });
    manifest["crc32"] = json!(manifest_crc(&manifest)?);
    write_durably(out, MANIFEST, &serde_json::to_vec_pretty(&manifest)?)?;
    text.push_str(&format!(
        "backup of {} shards written to {}\n",
        manifest["shard_count"],
        out.display()
    ));
    Ok(Output {
        text,
        json: manifest,
    })
}

/// Checks one shard file against its manifest entry before anything of it
/// is sent.
fn check_shard_file(dir: &Path, entry: &Value) -> anyhow::Result<PathBuf> {
    let name = entry["file"].as_str().unwrap_or_default();
    ensure!(
        !name.is_empty() && !name.contains('/') && !name.contains(".."),
        "the manifest names a bad shard file {name:?}"
    );
    let path = dir.join(name);
    let (crc, len) = file_crc(&path)?;
    ensure!(
        entry["bytes"].as_u64() == Some(len) && entry["crc32"].as_u64() == Some(u64::from(crc)),
        "{} is not the file the backup wrote (its length or checksum differs)",
        path.display()
    );
    let mut head = [0u8; 5];
    use std::io::Read as _;
    File::open(&path)?.read_exact(&mut head)?;
    ensure!(
        &head == FILE_HEADER,
        "{} has no MSNP header",
        path.display()
    );
    Ok(path)
}

/// `restore --from DIR`: every shard file into the cluster at `t`, which
/// must be empty unless `allow_nonempty`.
pub fn restore(t: &Target, from: &Path, allow_nonempty: bool) -> anyhow::Result<Output> {
    let manifest = read_manifest(from)?;
    let mut entries = manifest["shards"].as_array().cloned().unwrap_or_default();
    // The last phase first (see the module documentation).
    entries.sort_by_key(|e| std::cmp::Reverse(e["phase"].as_u64().unwrap_or(0)));
    let files = entries
        .iter()
        .map(|e| check_shard_file(from, e))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let rt = runtime()?;
    let check = rt.block_on(call(t, reqwest::Method::GET, "/restore", None))?;
    if check["empty"] != true && !allow_nonempty {
        let full: Vec<String> = check["shards"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|s| s["empty"] != true)
            .map(|s| s["shard"].to_string())
            .collect();
        bail!(
            "the cluster at {} already holds data (shards {}); a restore goes into a new, empty \
             cluster (--allow-nonempty adds the backup's records to it anyway)",
            t.url,
            full.join(", ")
        );
    }
    let url = format!("{}/v1/admin/restore", t.url.trim_end_matches('/'));
    let client = reqwest::Client::new();
    let mut total = 0u64;
    let mut text = String::new();
    let mut done = Vec::new();
    for (entry, path) in entries.iter().zip(&files) {
        let mut r = SnapshotReader::open(path)?;
        let mut pairs = 0u64;
        while let Some(chunk) = r.next_chunk()? {
            let frame = frame_chunk(&chunk)?;
            let v = rt.block_on(async {
                let resp = client
                    .post(&url)
                    .header("x-admin-secret", &t.admin_secret)
                    .header("content-type", "application/octet-stream")
                    .timeout(CHANGE_TIMEOUT)
                    .body(frame)
                    .send()
                    .await
                    .with_context(|| format!("calling {url}"))?;
                let status = resp.status();
                let v: Value = resp.json().await.unwrap_or(Value::Null);
                if !status.is_success() {
                    bail!(
                        "{url}: {status}: {} ({}); the records sent so far are in place, and \
                         running the restore again with --allow-nonempty puts them again, \
                         harmlessly",
                        v["error"]["message"].as_str().unwrap_or("no message"),
                        v["error"]["code"].as_str().unwrap_or("no code")
                    );
                }
                Ok(v)
            })?;
            pairs += v["pairs"].as_u64().unwrap_or(0);
        }
        ensure!(
            entry["pairs"].as_u64() == Some(pairs),
            "{} held {pairs} pairs, the manifest says {}",
            path.display(),
            entry["pairs"]
        );
        text.push_str(&format!(
            "phase {} shard {:>3} of the backup: {pairs} pairs restored\n",
            entry["phase"], entry["shard"]
        ));
        total += pairs;
        done.push(json!({ "phase": entry["phase"], "shard": entry["shard"], "pairs": pairs }));
    }
    let reconciled = rt.block_on(call(t, reqwest::Method::POST, "/restore/reconcile", None))?;
    text.push_str(&format!(
        "reconciled: {} conversations seen in {} inbox views, {} raised past what the inboxes hold\n",
        reconciled["conversations"], reconciled["views"], reconciled["raised"]
    ));
    text.push_str(&format!(
        "{total} pairs of {} backed-up shards restored into the cluster at {} ({} shards)\n",
        manifest["shard_count"], t.url, check["shard_count"]
    ));
    Ok(Output {
        text,
        json: json!({
            "pairs": total,
            "files": done,
            "target_shard_count": check["shard_count"],
            "reconciled": reconciled,
        }),
    })
}
