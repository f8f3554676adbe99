//! `backup` and `restore`: a running cluster's data shards copied to a
//! directory, and put into another cluster, through a node's admin API
//! (server/src/edge/backup.rs; why each shard's copy is consistent while
//! writes go on: `missive_raft::backup`).
//!
//! # A backup directory, file by file
//!
//! ```text
//!  chunks/ab/ab12…ef.msnc  every chunk of every shard, once: one frame of
//!                          the snapshot format, named by its BLAKE3 hash
//!                          (`store`: the layout byte by byte)
//!  p0-shard-0001.idx       one per phase and data shard: the shard's
//!                          chunks in order (hash, length, pairs; crc32)
//!  MANIFEST.json           written last (to MANIFEST.json.tmp, fsynced, renamed):
//!                          a directory without it is an unfinished backup
//! ```
//!
//! The chunks are cut where the keys say (`chunker`), not where the
//! server's ~1 MiB frames end, so a later backup given `--base` (an earlier
//! one) stores only the chunks that changed and hard-links the rest from
//! it: an incremental backup that is still a whole one (`store`). Version
//! 1 backups (one `p0-shard-0001.msnp` file per phase and shard, the
//! server's stream as received) are still restored.
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
//!  version       2 (1: one file per shard, no chunks)
//!  created_ms    when the backup began (ms since the Unix epoch)
//!  source        the URL it was taken through
//!  base          null, or {dir, created_ms} of the backup it linked from
//!  shard_count   the source's data shard count
//!  cluster       the source's GET /v1/admin/cluster answer (its map)
//!  phases        the keyspaces of each phase, in backup order
//!  shards[]      phase, shard, slots [lo, hi), index (file name),
//!                applied {term, node, index} or null, served_by, chunks,
//!                pairs, bytes (of its chunks), crc32 (of the index file),
//!                written / linked (chunks) and written_bytes / linked_bytes;
//!                phase by phase, shards in order (version 1: file,
//!                chunks, pairs, bytes, crc32 of the file)
//!  bytes, written_bytes, linked_bytes   the sums over every shard
//!  crc32         crc32 of the object's compact JSON without this field
//! ```
//!
//! Each shard's `applied` is its point in time: everything acknowledged
//! before the backup of that shard began is in its file.

mod chunker;
mod store;

use std::fs::File;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, ensure, Context};
use serde_json::{json, Value};

use missive_raft::storage::snapshot::{
    frame_chunk, unframe_chunk, Chunk, SnapshotReader, FILE_HEADER,
};

use crate::cluster::{call, runtime, Target, CHANGE_TIMEOUT};
use crate::render::Output;
use chunker::{Chunker, FrameStream};
use store::{ChunkStore, IndexEntry};

/// The manifest's `format`.
const FORMAT: &str = "missive-backup";
/// The manifest's `version` this missivectl writes.
const VERSION: u64 = 2;
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

/// Reads and checks `dir`'s manifest (version 1 or 2).
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
        m["version"] == 1 || m["version"] == VERSION,
        "{} is backup format version {}; this missivectl reads 1 and {VERSION}",
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

/// A restore call carries about this many bytes of keys and values (the
/// server's chunk size; it takes frames up to 16 MiB).
const RESTORE_FRAME_BYTES: usize = 1 << 20;

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

/// Where one phase of one shard goes.
struct ShardTarget<'a> {
    /// The backup directory.
    out: &'a Path,
    /// The index file's name in it.
    index: String,
    /// The chunk files, shared by every attempt at this shard (a chunk a
    /// failed attempt wrote is not written again).
    store: ChunkStore,
}

/// [`backup_shard`], started again while the server answers 503, for up
/// to [`SHARD_RETRY`].
async fn backup_shard_retrying(
    t: &Target,
    phase: u64,
    shard: u64,
    to: &mut ShardTarget<'_>,
) -> anyhow::Result<Value> {
    let deadline = tokio::time::Instant::now() + SHARD_RETRY;
    loop {
        match backup_shard(t, phase, shard, to).await {
            Err(e) if e.is::<Unavailable>() && tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            }
            other => return other,
        }
    }
}

/// Streams one phase of one shard into chunk files and its index; answers
/// its manifest entry.
async fn backup_shard(
    t: &Target,
    phase: u64,
    shard: u64,
    to: &mut ShardTarget<'_>,
) -> anyhow::Result<Value> {
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
    let mut stream = FrameStream::default();
    let mut chunker = Chunker::default();
    let mut entries: Vec<IndexEntry> = Vec::new();
    // A stream cut short fails here (no last chunk of the chunked body),
    // not silently as a shorter shard.
    while let Some(bytes) = resp
        .chunk()
        .await
        .with_context(|| format!("reading shard {shard}'s stream from {url}"))?
    {
        stream.push(&bytes);
        while let Some(pairs) = stream.next_chunk()? {
            for (k, v) in pairs {
                for closed in chunker.push(k, v) {
                    entries.push(to.store.put(&closed)?);
                }
            }
        }
    }
    stream
        .finish()
        .with_context(|| format!("reading shard {shard}'s stream from {url}"))?;
    if let Some(last) = chunker.finish() {
        entries.push(to.store.put(&last)?);
    }
    // The chunks are durable before the index naming them is written.
    to.store.sync()?;
    let index = store::encode_index(&entries)?;
    write_durably(to.out, &to.index, &index)?;
    Ok(json!({
        "phase": phase,
        "shard": shard,
        "index": to.index,
        "applied": applied,
        "served_by": served_by,
        "chunks": entries.len(),
        "pairs": entries.iter().map(|e| u64::from(e.pairs)).sum::<u64>(),
        "bytes": entries.iter().map(|e| u64::from(e.len)).sum::<u64>(),
        "crc32": crc32fast::hash(&index),
    }))
}

/// `backup --out DIR [--base EARLIER]`: every data shard of the cluster
/// at `t`; the chunks `base` (an earlier version-2 backup) holds are
/// hard-linked from it instead of written.
pub fn backup(t: &Target, out: &Path, base: Option<&Path>) -> anyhow::Result<Output> {
    if out.join(MANIFEST).exists() {
        bail!(
            "{} already holds a backup; choose a new directory",
            out.display()
        );
    }
    let base_info = match base {
        None => Value::Null,
        Some(b) => {
            let m = read_manifest(b).context("--base must be a finished backup")?;
            ensure!(
                m["version"] == VERSION,
                "{} is a version-{} backup (one file per shard, no chunks to link); take a full \
                 backup first and give that as --base",
                b.display(),
                m["version"]
            );
            json!({ "dir": b.display().to_string(), "created_ms": m["created_ms"] })
        }
    };
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
    let (mut bytes, mut written_bytes, mut linked_bytes) = (0u64, 0u64, 0u64);
    for phase in 0..phases {
        for s in &data_shards {
            let shard = s["shard"].as_u64().unwrap_or_default();
            let mut to = ShardTarget {
                out,
                index: format!("p{phase}-shard-{shard:04}.idx"),
                store: ChunkStore::new(out, base),
            };
            let mut entry = rt.block_on(backup_shard_retrying(t, phase, shard, &mut to))?;
            let c = to.store.counts;
            entry["slots"] = s["slots"].clone();
            entry["written"] = json!(c.written);
            entry["written_bytes"] = json!(c.written_bytes);
            entry["linked"] = json!(c.linked);
            entry["linked_bytes"] = json!(c.linked_bytes);
            if c.base_damaged > 0 {
                entry["base_damaged"] = json!(c.base_damaged);
                text.push_str(&format!(
                    "warning: {} chunks of the base did not match their names; written afresh\n",
                    c.base_damaged
                ));
            }
            bytes += entry["bytes"].as_u64().unwrap_or(0);
            written_bytes += c.written_bytes;
            linked_bytes += c.linked_bytes;
            text.push_str(&format!(
                "phase {phase} shard {shard:>3}  {} pairs in {} chunks ({} bytes; {} written, {} linked) at index {}, served by node {}\n",
                entry["pairs"], entry["chunks"], entry["bytes"], c.written_bytes, c.linked_bytes, entry["applied"]["index"], entry["served_by"]
            ));
            shards.push(entry);
        }
    }
    let mut manifest = json!({
        "format": FORMAT,
        "version": VERSION,
        "created_ms": created_ms,
        "source": t.url,
        "base": base_info,
        "shard_count": data_shards.len(),
        "phases": plan["phases"],
        "cluster": cluster,
        "shards": shards,
        "bytes": bytes,
        "written_bytes": written_bytes,
        "linked_bytes": linked_bytes,
    });
    manifest["crc32"] = json!(manifest_crc(&manifest)?);
    write_durably(out, MANIFEST, &serde_json::to_vec_pretty(&manifest)?)?;
    text.push_str(&format!(
        "backup of {} shards written to {}: {bytes} bytes of chunks, {written_bytes} written, \
         {linked_bytes} linked from {}\n",
        manifest["shard_count"],
        out.display(),
        base.map_or_else(|| "no base".to_string(), |b| b.display().to_string())
    ));
    Ok(Output {
        text,
        json: manifest,
    })
}

/// A name a manifest gives for a file in the backup directory, refused if
/// it could lead out of it.
fn file_in(dir: &Path, entry: &Value, field: &str) -> anyhow::Result<PathBuf> {
    let name = entry[field].as_str().unwrap_or_default();
    ensure!(
        !name.is_empty() && !name.contains('/') && !name.contains(".."),
        "the manifest names a bad shard {field} {name:?}"
    );
    Ok(dir.join(name))
}

/// One phase of one shard of a backup, checked and ready to send.
enum ShardCopy {
    /// Version 1: one snapshot-format file.
    File(PathBuf),
    /// Version 2: chunk files, in order.
    Chunks(Vec<IndexEntry>),
}

/// Checks one shard's files against its manifest entry before anything of
/// the backup is sent: a version-1 file's length, checksum and header; a
/// version-2 index's checksum and every chunk it names (length, hash,
/// frame, pairs).
fn check_shard(dir: &Path, version: u64, entry: &Value) -> anyhow::Result<ShardCopy> {
    if version == 1 {
        let path = file_in(dir, entry, "file")?;
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
        return Ok(ShardCopy::File(path));
    }
    let path = file_in(dir, entry, "index")?;
    let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    ensure!(
        entry["crc32"].as_u64() == Some(u64::from(crc32fast::hash(&bytes))),
        "{} is not the index the backup wrote (its checksum differs)",
        path.display()
    );
    let entries = store::decode_index(&bytes, &path.display().to_string())?;
    ensure!(
        entry["chunks"].as_u64() == Some(entries.len() as u64),
        "{} names {} chunks, the manifest says {}",
        path.display(),
        entries.len(),
        entry["chunks"]
    );
    for e in &entries {
        store::read_chunk(dir, e).with_context(|| {
            format!(
                "phase {} shard {} of the backup",
                entry["phase"], entry["shard"]
            )
        })?;
    }
    Ok(ShardCopy::Chunks(entries))
}

impl ShardCopy {
    /// Hands each restore frame of the shard to `send` in order.
    fn for_each_frame(
        &self,
        dir: &Path,
        mut send: impl FnMut(Vec<u8>) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        match self {
            ShardCopy::File(path) => {
                let mut r = SnapshotReader::open(path)?;
                while let Some(chunk) = r.next_chunk()? {
                    send(frame_chunk(&chunk)?)?;
                }
            }
            ShardCopy::Chunks(entries) => {
                // Chunks average a few KiB; each restore call is a Raft
                // round per shard it reaches, so they go in frames of
                // ~1 MiB, as the server's own chunks were.
                let mut pairs: Chunk = Vec::new();
                let mut bytes = 0usize;
                for e in entries {
                    for (k, v) in unframe_chunk(&store::read_chunk(dir, e)?)? {
                        bytes += k.len() + v.len();
                        pairs.push((k, v));
                    }
                    if bytes >= RESTORE_FRAME_BYTES {
                        send(frame_chunk(&std::mem::take(&mut pairs))?)?;
                        bytes = 0;
                    }
                }
                if !pairs.is_empty() {
                    send(frame_chunk(&pairs)?)?;
                }
            }
        }
        Ok(())
    }
}

/// `verify --backup DIR`: every shard of the backup checked as a restore
/// checks it, without stopping at the first damage. Answers the report and
/// whether the backup is whole. A manifest that cannot be read is an
/// error (nothing else can be checked without it).
pub fn verify(dir: &Path) -> anyhow::Result<(Output, bool)> {
    let manifest = read_manifest(dir)?;
    let version = manifest["version"].as_u64().unwrap_or(0);
    let entries = manifest["shards"].as_array().cloned().unwrap_or_default();
    let mut damaged = Vec::new();
    let mut text = String::new();
    let (mut chunks, mut pairs) = (0u64, 0u64);
    for e in &entries {
        match check_shard(dir, version, e) {
            Ok(copy) => {
                chunks += match &copy {
                    ShardCopy::File(_) => e["chunks"].as_u64().unwrap_or(0),
                    ShardCopy::Chunks(c) => c.len() as u64,
                };
                pairs += e["pairs"].as_u64().unwrap_or(0);
            }
            Err(err) => {
                text.push_str(&format!(
                    "DAMAGED phase {} shard {}: {err:#}\n",
                    e["phase"], e["shard"]
                ));
                damaged.push(json!({
                    "phase": e["phase"],
                    "shard": e["shard"],
                    "error": format!("{err:#}"),
                }));
            }
        }
    }
    let whole = damaged.is_empty();
    text.push_str(&format!(
        "{}: backup version {version} of {} shards (created_ms {}), {} shard copies, \
         {chunks} chunks, {pairs} pairs: {}\n",
        dir.display(),
        manifest["shard_count"],
        manifest["created_ms"],
        entries.len(),
        if whole {
            "whole".to_string()
        } else {
            format!("{} shard copies damaged", damaged.len())
        }
    ));
    Ok((
        Output {
            text,
            json: json!({
                "version": version,
                "shard_copies": entries.len(),
                "chunks": chunks,
                "pairs": pairs,
                "whole": whole,
                "damaged": damaged,
            }),
        },
        whole,
    ))
}

/// Restore calls a restore keeps in flight.
const RESTORE_IN_FLIGHT: usize = 2;

/// The pairs one finished restore call put.
fn restored_pairs(
    done: Result<anyhow::Result<Value>, tokio::task::JoinError>,
) -> anyhow::Result<u64> {
    let v = done.context("a restore call's task failed")??;
    Ok(v["pairs"].as_u64().unwrap_or(0))
}

/// `restore --from DIR`: every shard of the backup into the cluster at
/// `t`, which must be empty unless `allow_nonempty`.
pub fn restore(t: &Target, from: &Path, allow_nonempty: bool) -> anyhow::Result<Output> {
    let manifest = read_manifest(from)?;
    let version = manifest["version"].as_u64().unwrap_or(0);
    let mut entries = manifest["shards"].as_array().cloned().unwrap_or_default();
    // The last phase first (see the module documentation).
    entries.sort_by_key(|e| std::cmp::Reverse(e["phase"].as_u64().unwrap_or(0)));
    let copies = entries
        .iter()
        .map(|e| check_shard(from, version, e))
        .collect::<anyhow::Result<Vec<_>>>()?;
    // Two workers: calls in flight make progress while this thread reads
    // and checks the next frame.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
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
    for (entry, copy) in entries.iter().zip(&copies) {
        let mut pairs = 0u64;
        // Up to RESTORE_IN_FLIGHT calls at once: the next frame is read,
        // checked and sent while the cluster writes the one before. Frames
        // of one shard copy hold disjoint keys, so their order does not
        // matter; a copy is finished before the next begins (phases stay
        // in order).
        let mut in_flight = std::collections::VecDeque::new();
        copy.for_each_frame(from, |frame| {
            if in_flight.len() >= RESTORE_IN_FLIGHT {
                if let Some(call) = in_flight.pop_front() {
                    pairs += restored_pairs(rt.block_on(call))?;
                }
            }
            let (client, url, secret) = (client.clone(), url.clone(), t.admin_secret.clone());
            in_flight.push_back(rt.spawn(async move {
                let resp = client
                    .post(&url)
                    .header("x-admin-secret", &secret)
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
            }));
            Ok(())
        })?;
        for call in in_flight {
            pairs += restored_pairs(rt.block_on(call))?;
        }
        ensure!(
            entry["pairs"].as_u64() == Some(pairs),
            "phase {} shard {} of the backup held {pairs} pairs, the manifest says {}",
            entry["phase"],
            entry["shard"],
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]

    use super::*;

    /// Every pair a checked shard copy sends.
    fn sent(dir: &Path, copy: &ShardCopy) -> Chunk {
        let mut pairs = Chunk::new();
        copy.for_each_frame(dir, |frame| {
            pairs.extend(unframe_chunk(&frame)?);
            Ok(())
        })
        .unwrap();
        pairs
    }

    #[test]
    fn version_1_and_2_backups_of_the_same_pairs_restore_the_same_pairs() {
        let dir = tempfile::tempdir().unwrap();
        let pairs: Chunk = (0..5_000u32)
            .map(|i| (i.to_be_bytes().to_vec(), vec![i as u8; (i % 300) as usize]))
            .chain([(b"\xffbig".to_vec(), vec![7; 200_000])])
            .collect();
        // Version 1: the server's stream, as received.
        let mut v1 = FILE_HEADER.to_vec();
        for c in pairs.chunks(900) {
            v1.extend(frame_chunk(&c.to_vec()).unwrap());
        }
        std::fs::write(dir.path().join("p0-shard-0001.msnp"), &v1).unwrap();
        let (crc, len) = file_crc(&dir.path().join("p0-shard-0001.msnp")).unwrap();
        let e1 = json!({"phase": 0, "shard": 1, "file": "p0-shard-0001.msnp", "bytes": len, "crc32": crc});
        let c1 = check_shard(dir.path(), 1, &e1).unwrap();
        assert_eq!(sent(dir.path(), &c1), pairs);

        // Version 2: chunks at key boundaries and an index.
        let mut store = ChunkStore::new(dir.path(), None);
        let mut chunker = Chunker::default();
        let mut entries = Vec::new();
        for (k, v) in pairs.clone() {
            for c in chunker.push(k, v) {
                entries.push(store.put(&c).unwrap());
            }
        }
        entries.extend(chunker.finish().map(|c| store.put(&c).unwrap()));
        store.sync().unwrap();
        let index = store::encode_index(&entries).unwrap();
        std::fs::write(dir.path().join("p0-shard-0001.idx"), &index).unwrap();
        let e2 = json!({"phase": 0, "shard": 1, "index": "p0-shard-0001.idx",
            "chunks": entries.len(), "crc32": crc32fast::hash(&index)});
        let c2 = check_shard(dir.path(), 2, &e2).unwrap();
        assert_eq!(sent(dir.path(), &c2), pairs);

        // A damaged chunk is refused at the check, naming the shard.
        let victim = store::chunk_path(dir.path(), &entries[entries.len() / 2].hash);
        let mut bytes = std::fs::read(&victim).unwrap();
        bytes[10] ^= 1;
        std::fs::write(&victim, bytes).unwrap();
        let err = format!("{:#}", check_shard(dir.path(), 2, &e2).err().unwrap());
        assert!(
            err.contains("phase 0 shard 1") && err.contains("damaged"),
            "{err}"
        );
        // A manifest naming a file outside the directory is refused.
        let e3 = json!({"phase": 0, "shard": 1, "index": "../x.idx", "chunks": 0, "crc32": 0});
        assert!(check_shard(dir.path(), 2, &e3).is_err());
    }
}
