//! `missivectl media`: the media store through a node's admin API
//! (`/v1/admin/media…`, server/src/edge/media_admin.rs).
//!
//! `list` and `verify` walk the store a page at a time (the server bounds
//! a page), so verifying a large store is many short calls; `verify` exits
//! 1 when any object is damaged, naming it and what is wrong.

use std::fmt::Write as _;

use serde_json::{json, Value};

use crate::cluster::{call, runtime, Target};
use crate::render::Output;

/// Objects asked for per call.
const PAGE: usize = 500;

/// Walks the pages of `path` (GET or POST), `page_size()` objects per
/// call (0 stops), handing each answer to `each`.
fn walk(
    t: &Target,
    method: reqwest::Method,
    path: &str,
    mut page_size: impl FnMut() -> usize,
    mut each: impl FnMut(&Value),
) -> anyhow::Result<()> {
    let rt = runtime()?;
    let mut after: Option<String> = None;
    loop {
        let limit = page_size();
        if limit == 0 {
            return Ok(());
        }
        let mut p = format!("{path}?limit={limit}");
        if let Some(a) = &after {
            let _ = write!(p, "&after={a}");
        }
        let v = rt.block_on(call(t, method.clone(), &p, None))?;
        each(&v);
        match v["next"].as_str() {
            Some(n) => after = Some(n.to_owned()),
            None => return Ok(()),
        }
    }
}

/// `media list`: every object (or the first `limit`), in key order.
pub fn list(t: &Target, limit: Option<usize>) -> anyhow::Result<Output> {
    let objects = std::cell::RefCell::new(Vec::<Value>::new());
    walk(
        t,
        reqwest::Method::GET,
        "/media",
        || limit.map_or(PAGE, |l| l.saturating_sub(objects.borrow().len()).min(PAGE)),
        |v| {
            objects
                .borrow_mut()
                .extend(v["objects"].as_array().cloned().unwrap_or_default());
        },
    )?;
    let objects = objects.into_inner();
    let mut text = String::new();
    let mut bytes = 0u64;
    for o in &objects {
        let size = o["size"].as_u64().unwrap_or(0);
        bytes += size;
        let dims = o["image"]
            .get("width")
            .map(|w| format!(" {}x{}", w, o["image"]["height"]))
            .unwrap_or_default();
        let _ = writeln!(
            text,
            "{}  {:>12}  {}{}  uploaders {}",
            o["media_id"].as_str().unwrap_or("?"),
            size,
            o["mime"].as_str().unwrap_or("?"),
            dims,
            o["uploaders"].as_array().map_or(0, Vec::len),
        );
    }
    let _ = writeln!(text, "{} objects, {} bytes", objects.len(), bytes);
    Ok(Output {
        text,
        json: json!({ "objects": objects, "bytes": bytes }),
    })
}

/// `media inspect ID`: one object's records.
pub fn inspect(t: &Target, id: &str) -> anyhow::Result<Output> {
    let v = runtime()?.block_on(call(t, reqwest::Method::GET, &format!("/media/{id}"), None))?;
    let mut text = String::new();
    let _ = writeln!(text, "media {}", v["media_id"].as_str().unwrap_or(id));
    let _ = writeln!(text, "  size        {} bytes", v["size"]);
    let _ = writeln!(text, "  mime        {}", v["mime"].as_str().unwrap_or("?"));
    let _ = writeln!(
        text,
        "  created_at  {} µs, last used {} µs",
        v["created_at"], v["last_used"]
    );
    let _ = writeln!(
        text,
        "  upload      {} ({})",
        v["upload"].as_str().unwrap_or("?"),
        if v["upload_record"].is_null() {
            "record missing"
        } else {
            "record present"
        }
    );
    let _ = writeln!(text, "  uploaders   {}", v["uploaders"]);
    if let Some(i) = v["image"].as_object() {
        let _ = writeln!(text, "  image       {}x{}", i["width"], i["height"]);
    }
    for t in v["thumbnails_stored"].as_array().into_iter().flatten() {
        let _ = writeln!(text, "  thumbnail   {} px: {} bytes", t["size"], t["bytes"]);
    }
    let refs = v["references"].as_array().cloned().unwrap_or_default();
    let _ = writeln!(text, "  references  {}", refs.len());
    for r in &refs {
        let _ = writeln!(
            text,
            "    conversation {} seq {}",
            r["conversation"].as_str().unwrap_or("?"),
            r["seq"]
        );
    }
    Ok(Output { text, json: v })
}

/// `media verify`: every object re-read and re-hashed; `false` when any is
/// damaged.
pub fn verify(t: &Target) -> anyhow::Result<(Output, bool)> {
    let (mut objects, mut bytes) = (0u64, 0u64);
    let mut damaged: Vec<Value> = Vec::new();
    walk(
        t,
        reqwest::Method::POST,
        "/media/verify",
        || PAGE,
        |v| {
            objects += v["objects"].as_u64().unwrap_or(0);
            bytes += v["bytes"].as_u64().unwrap_or(0);
            damaged.extend(v["damaged"].as_array().cloned().unwrap_or_default());
        },
    )?;
    let mut text = String::new();
    for d in &damaged {
        let _ = writeln!(
            text,
            "DAMAGED {}: {}",
            d["media_id"].as_str().unwrap_or("?"),
            d["problem"].as_str().unwrap_or("?")
        );
    }
    let _ = writeln!(
        text,
        "{objects} objects ({bytes} bytes) verified: {}",
        if damaged.is_empty() {
            "all whole".to_owned()
        } else {
            format!("{} damaged", damaged.len())
        }
    );
    let clean = damaged.is_empty();
    Ok((
        Output {
            text,
            json: json!({ "objects": objects, "bytes": bytes, "damaged": damaged }),
        },
        clean,
    ))
}

/// `media gc`: the cluster's media collector runs now (see the server's
/// `media` module) and reports what went.
pub fn gc(t: &Target, grace_secs: Option<u64>) -> anyhow::Result<Output> {
    let path = match grace_secs {
        Some(g) => format!("/media/gc?grace_secs={g}"),
        None => "/media/gc".to_owned(),
    };
    let v = runtime()?.block_on(call(t, reqwest::Method::POST, &path, None))?;
    Ok(Output {
        text: format!(
            "media collected: {} objects ({} bytes) deleted, {} kept in their grace period, \
             {} uploads dropped; {} live references, {} dead ones removed\n",
            v["objects_deleted"],
            v["bytes_deleted"],
            v["objects_kept_young"],
            v["uploads_dropped"],
            v["live_references"],
            v["dead_references"]
        ),
        json: v,
    })
}
