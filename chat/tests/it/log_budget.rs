//! The log's byte budget (`raft/src/log_budget.rs`): a node taking media
//! uploads — entries of up to a chunk each — keeps its log near the
//! budget instead of until the 20 000th entry, and loses nothing by it:
//! every acknowledged chunk reads back, before and after a restart.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use crate::common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use missive_chat::media::records::UploadId;
use missive_chat::ChatNode as Node;
use missive_chat::UserId;
use missive_engine::log::LogOptions;
use missive_raft::node::{Consistency, NodeConfig};
use missive_raft::ShardId;

const SEGMENT: u64 = 1 << 20;
const BUDGET: u64 = 4 << 20;
const PIECE: usize = 256 << 10;
const PIECES: usize = 64;

fn config(dir: &std::path::Path, budget: u64) -> NodeConfig {
    let mut c = common::config(1, dir, 1);
    c.log = LogOptions {
        segment_size: SEGMENT,
        preallocate: false,
        ..LogOptions::default()
    };
    // The entry count alone would not snapshot in this test.
    c.snapshot_every = 20_000;
    c.log_budget = budget;
    c
}

fn piece(i: usize) -> bytes::Bytes {
    (0..PIECE).map(|j| (j * 31 + i * 7) as u8).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_keep_the_log_near_its_budget_and_lose_nothing() {
    common::init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(config(dir.path(), BUDGET)).await.unwrap();
    let members = BTreeMap::from([(1, node.addr().to_string())]);
    node.bootstrap(&members, 1).await.unwrap();
    let mut nodes = vec![Some(node)];
    common::wait_leader(&nodes, ShardId(1), Duration::from_secs(20)).await;
    let wait = Duration::from_secs(10);
    let owner = UserId(7);
    let total = (PIECE * PIECES) as u64;

    // 16 MiB in pieces of 256 KiB: an entry each, four per 1 MiB segment.
    let node = nodes[0].as_ref().unwrap();
    let (upload, _) = node
        .create_upload(owner, total, "application/octet-stream", "big.bin", wait)
        .await
        .unwrap();
    let mut most = 0;
    for i in 0..PIECES {
        let at = (i * PIECE) as u64;
        let u = node
            .append_upload(owner, upload, at, piece(i), wait)
            .await
            .unwrap();
        assert_eq!(u.received, at + PIECE as u64);
        most = most.max(node.log().segment_seqs().len());
    }
    // Written 16 segments' worth; the budget is 4. The task looks twice a
    // second, so the log may run ahead of it a little while it writes.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let live = node.log().segment_seqs().len() as u64;
        if live * SEGMENT <= BUDGET + 2 * SEGMENT {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{live} segments of 1 MiB live, budget 4 MiB (at most {most} while writing)"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    check(node, upload).await;

    // A restart recovers from the tables and what is left of the log.
    let node = nodes[0].take().unwrap();
    node.shutdown().await.unwrap();
    let node = Node::start(config(dir.path(), BUDGET)).await.unwrap();
    nodes[0] = Some(node);
    common::wait_leader(&nodes, ShardId(1), Duration::from_secs(20)).await;
    check(nodes[0].as_ref().unwrap(), upload).await;
}

/// Every piece reads back from the chunks of `upload`.
async fn check(node: &Node, upload: UploadId) {
    for i in 0..PIECES {
        // Chunk c (1 MiB) holds pieces 4c..4c+3.
        let chunk = node
            .chunk(upload, (i / 4) as u32, Consistency::Linearizable)
            .await
            .unwrap()
            .expect("every acknowledged chunk is stored");
        let at = (i % 4) * PIECE;
        assert!(chunk[at..at + PIECE] == piece(i)[..], "piece {i}");
    }
}
