//! Counters for `/metrics`, in Prometheus' text exposition format (0.0.4).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use missive_engine::log::LogStats;
use missive_engine::lsm::LsmStats;

/// A monotonically increasing count.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds one.
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    /// The count.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down.
#[derive(Debug, Default)]
pub struct Gauge(AtomicI64);

impl Gauge {
    /// Adds one.
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    /// Subtracts one.
    pub fn dec(&self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
    /// The value.
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Everything the server counts.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Open client connections (TCP).
    pub connections: Gauge,
    /// Connections refused at the cap.
    pub connections_refused: Counter,
    /// Open WebSocket sessions.
    pub websockets: Gauge,
    /// Messages committed (not counting duplicates' resends separately).
    pub messages_sent: Counter,
    /// Event frames written to WebSockets.
    pub events_pushed: Counter,
    /// Sends refused by the rate limit.
    pub rate_limited: Counter,
    /// WebSockets closed for falling behind.
    pub slow_consumers: Counter,
    /// Error frames and error responses.
    pub errors: Counter,
    /// Recent-messages cache lookups answered from memory.
    pub message_cache_hits: Counter,
    /// Recent-messages cache lookups that read the store.
    pub message_cache_misses: Counter,
    /// Push notifications the gateway accepted.
    pub push_sent: Counter,
    /// Push notifications given up on (gateway down or refusing, event
    /// unreadable).
    pub push_failed: Counter,
    /// Push notifications dropped because the queue was full.
    pub push_dropped: Counter,
}

impl Metrics {
    /// The exposition text.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let mut line = |name: &str, kind: &str, help: &str, v: i128| {
            let _ = writeln!(s, "# HELP missive_{name} {help}");
            let _ = writeln!(s, "# TYPE missive_{name} {kind}");
            let _ = writeln!(s, "missive_{name} {v}");
        };
        line(
            "connections",
            "gauge",
            "Open client connections.",
            self.connections.get().into(),
        );
        line(
            "connections_refused_total",
            "counter",
            "Connections refused at limits.max_connections.",
            self.connections_refused.get().into(),
        );
        line(
            "websockets",
            "gauge",
            "Open WebSocket sessions.",
            self.websockets.get().into(),
        );
        line(
            "messages_sent_total",
            "counter",
            "Messages committed.",
            self.messages_sent.get().into(),
        );
        line(
            "events_pushed_total",
            "counter",
            "Event frames written to WebSockets.",
            self.events_pushed.get().into(),
        );
        line(
            "rate_limited_total",
            "counter",
            "Sends refused by the per-user rate limit.",
            self.rate_limited.get().into(),
        );
        line(
            "slow_consumers_total",
            "counter",
            "WebSockets closed for falling behind.",
            self.slow_consumers.get().into(),
        );
        line(
            "errors_total",
            "counter",
            "Errors answered.",
            self.errors.get().into(),
        );
        line(
            "message_cache_hits_total",
            "counter",
            "Messages (events, first history pages) served from the recent-messages cache.",
            self.message_cache_hits.get().into(),
        );
        line(
            "message_cache_misses_total",
            "counter",
            "Recent-messages cache lookups that read the store.",
            self.message_cache_misses.get().into(),
        );
        line(
            "push_sent_total",
            "counter",
            "Push notifications the gateway accepted.",
            self.push_sent.get().into(),
        );
        line(
            "push_failed_total",
            "counter",
            "Push notifications given up on after retries.",
            self.push_failed.get().into(),
        );
        line(
            "push_dropped_total",
            "counter",
            "Push notifications dropped: queue full.",
            self.push_dropped.get().into(),
        );
        s
    }
}

/// The storage engine's counters: the node's log (group commit) and its
/// LSM, so an operator sees syncs per second, write groups, flushes,
/// compactions, stalls and the tree's shape next to the service's counters;
/// `records` is apply's record reads (cache hits, LSM reads).
pub fn render_storage(log: &LogStats, lsm: &LsmStats, records: (u64, u64)) -> String {
    let mut s = String::new();
    let mut line = |name: &str, kind: &str, help: &str, v: &dyn std::fmt::Display| {
        let _ = writeln!(s, "# HELP missive_{name} {help}");
        let _ = writeln!(s, "# TYPE missive_{name} {kind}");
        let _ = writeln!(s, "missive_{name} {v}");
    };
    let c = "counter";
    line(
        "log_appends_total",
        c,
        "Appends to the node's log (each a batch of Raft entries).",
        &log.appends,
    );
    line(
        "log_entries_total",
        c,
        "Entries appended to the node's log.",
        &log.entries,
    );
    line(
        "log_bytes_written_total",
        c,
        "Bytes written to log segment files.",
        &log.bytes_written,
    );
    line(
        "log_write_groups_total",
        c,
        "Group-commit writes (one or more records each).",
        &log.groups,
    );
    line(
        "log_syncs_total",
        c,
        "fdatasyncs of the log for commits.",
        &log.syncs,
    );
    line(
        "log_segments_created_total",
        c,
        "Log segment files created.",
        &log.segments_created,
    );
    line(
        "log_segments_deleted_total",
        c,
        "Log segment files deleted after every shard purged them.",
        &log.segments_deleted,
    );
    line(
        "lsm_bytes_written_total",
        c,
        "Bytes of batches applied to the LSM (keys + values).",
        &lsm.bytes_written,
    );
    line(
        "lsm_table_bytes_written_total",
        c,
        "Bytes of table files written by flushes and compactions.",
        &lsm.table_bytes_written,
    );
    line(
        "lsm_flushes_total",
        c,
        "Memtable flushes completed.",
        &lsm.flushes,
    );
    line(
        "lsm_compactions_total",
        c,
        "Compactions completed.",
        &lsm.compactions,
    );
    line(
        "lsm_write_stalls_total",
        c,
        "Times a writer waited for a flush.",
        &lsm.stalls,
    );
    line(
        "lsm_block_cache_hits_total",
        c,
        "Block cache hits.",
        &lsm.cache_hits,
    );
    line(
        "lsm_block_cache_misses_total",
        c,
        "Block cache misses.",
        &lsm.cache_misses,
    );
    line(
        "apply_record_cache_hits_total",
        c,
        "Records the state machines read from their record caches.",
        &records.0,
    );
    line(
        "apply_record_cache_misses_total",
        c,
        "Records the state machines read from the LSM (not cached).",
        &records.1,
    );
    line(
        "lsm_write_amplification",
        "gauge",
        "Table bytes written per byte applied.",
        &lsm.write_amplification,
    );
    let _ = writeln!(
        s,
        "# HELP missive_lsm_level_files Table files per LSM level."
    );
    let _ = writeln!(s, "# TYPE missive_lsm_level_files gauge");
    for (level, n) in lsm.files_per_level.iter().enumerate() {
        let _ = writeln!(s, "missive_lsm_level_files{{level=\"{level}\"}} {n}");
    }
    let _ = writeln!(
        s,
        "# HELP missive_lsm_level_bytes Table bytes per LSM level."
    );
    let _ = writeln!(s, "# TYPE missive_lsm_level_bytes gauge");
    for (level, n) in lsm.bytes_per_level.iter().enumerate() {
        let _ = writeln!(s, "missive_lsm_level_bytes{{level=\"{level}\"}} {n}");
    }
    s
}
