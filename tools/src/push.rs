//! `missivectl push`: the push outbox's dead letters through a node's
//! admin API (`/v1/admin/push/…`, server/src/edge/push_admin.rs).

use std::fmt::Write as _;

use serde_json::{json, Value};

use crate::cluster::{call, runtime, Target};
use crate::render::Output;

/// Dead letters asked for per call.
const PAGE: usize = 500;

/// `push dead`: every dead letter (or the first `limit`), in key order.
pub fn dead(t: &Target, limit: Option<usize>) -> anyhow::Result<Output> {
    let rt = runtime()?;
    let mut all: Vec<Value> = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let want = limit.map_or(PAGE, |l| l.saturating_sub(all.len()).min(PAGE));
        if want == 0 {
            break;
        }
        let mut p = format!("/push/dead?limit={want}");
        if let Some(a) = &after {
            let _ = write!(p, "&after={a}");
        }
        let v = rt.block_on(call(t, reqwest::Method::GET, &p, None))?;
        all.extend(v["dead"].as_array().cloned().unwrap_or_default());
        match v["next"].as_str() {
            Some(n) => after = Some(n.to_owned()),
            None => break,
        }
    }
    let mut text = String::new();
    for d in &all {
        let _ = writeln!(
            text,
            "{}  conv {} seq {}  devices {}  attempts {}  died {} µs: {}",
            d["id"].as_str().unwrap_or("?"),
            d["conv"].as_str().unwrap_or("?"),
            d["seq"],
            d["devices"].as_array().map_or(0, Vec::len),
            d["attempts"],
            d["died_at"],
            d["reason"].as_str().unwrap_or(""),
        );
    }
    let _ = writeln!(text, "{} dead letters", all.len());
    Ok(Output {
        text,
        json: json!({ "dead": all }),
    })
}

/// `push replay`: the named jobs, or every dead letter.
pub fn replay(t: &Target, jobs: &[String], all: bool) -> anyhow::Result<Output> {
    let rt = runtime()?;
    let mut replayed = 0u64;
    if all {
        // A call replays at most 1000; repeat until one replays fewer.
        loop {
            let v = rt.block_on(call(
                t,
                reqwest::Method::POST,
                "/push/replay",
                Some(json!({"all": true})),
            ))?;
            let n = v["replayed"].as_u64().unwrap_or(0);
            replayed += n;
            if n < 1_000 {
                break;
            }
        }
    } else {
        let v = rt.block_on(call(
            t,
            reqwest::Method::POST,
            "/push/replay",
            Some(json!({ "jobs": jobs })),
        ))?;
        replayed = v["replayed"].as_u64().unwrap_or(0);
    }
    Ok(Output {
        text: format!("{replayed} replayed\n"),
        json: json!({ "replayed": replayed }),
    })
}
