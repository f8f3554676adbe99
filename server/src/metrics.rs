//! What `/metrics` shows, in Prometheus' text exposition format (0.0.4):
//! the service's counters, gauges and latency histograms through
//! prometheus-client (a registry built once; the handler encodes it), then
//! the storage engine's counters and the per-shard gauges, read from the
//! node when scraped (`render_storage`, the HTTP edge).

use std::fmt::Write as _;
use std::time::Duration;

use prometheus_client::encoding::prometheus_text;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use missive_engine::log::LogStats;
use missive_engine::lsm::LsmStats;

/// A monotonically increasing count.
pub type Counter = prometheus_client::metrics::counter::Counter;

/// A value that goes up and down.
pub type Gauge = prometheus_client::metrics::gauge::Gauge;

/// A latency histogram in seconds.
#[derive(Debug, Clone)]
pub struct Latency(Histogram);

impl Default for Latency {
    fn default() -> Self {
        // 0.25 ms … ~4 s, doubling: chat latencies live between a
        // memtable read and a leader election.
        Latency(Histogram::new(exponential_buckets(0.000_25, 2.0, 15)))
    }
}

impl Latency {
    /// Records one duration.
    pub fn observe(&self, d: Duration) {
        self.0.observe(d.as_secs_f64());
    }
}

/// Everything the service counts, and the registry that exposes it.
#[derive(Debug)]
pub struct Metrics {
    /// Open client connections (TCP).
    pub connections: Gauge,
    /// Connections refused at the cap or the per-address rate.
    pub connections_refused: Counter,
    /// Open WebSocket sessions.
    pub websockets: Gauge,
    /// Messages committed (not counting duplicates' resends separately).
    pub messages_sent: Counter,
    /// Event frames queued for WebSockets.
    pub events_pushed: Counter,
    /// Requests refused by a rate limit.
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
    /// A send from its arrival to its commit on a quorum (the ack).
    pub send_commit: Latency,
    /// A history page, from the request to the rendered page.
    pub history_read: Latency,
    /// An event from its commit (its stamp) to its frame queued for a
    /// socket: fan-out, inbox write, wake, render.
    pub delivery: Latency,
    registry: Registry,
}

impl Default for Metrics {
    fn default() -> Self {
        let m = MetricsParts::default();
        let mut r = Registry::with_prefix("missive");
        // Counters are registered without `_total` and help texts without
        // a final full stop: the encoder adds both.
        r.register(
            "connections",
            "Open client connections",
            m.connections.clone(),
        );
        r.register(
            "connections_refused",
            "Connections refused at limits.max_connections or the per-address rate",
            m.connections_refused.clone(),
        );
        r.register(
            "websockets",
            "Open WebSocket sessions",
            m.websockets.clone(),
        );
        r.register(
            "messages_sent",
            "Messages committed",
            m.messages_sent.clone(),
        );
        r.register(
            "events_pushed",
            "Event frames queued for WebSockets",
            m.events_pushed.clone(),
        );
        r.register(
            "rate_limited",
            "Requests refused by a per-user or per-address rate limit",
            m.rate_limited.clone(),
        );
        r.register(
            "slow_consumers",
            "WebSockets closed for falling behind",
            m.slow_consumers.clone(),
        );
        r.register("errors", "Errors answered", m.errors.clone());
        r.register(
            "message_cache_hits",
            "Messages (events, first history pages) served from the recent-messages cache",
            m.message_cache_hits.clone(),
        );
        r.register(
            "message_cache_misses",
            "Recent-messages cache lookups that read the store",
            m.message_cache_misses.clone(),
        );
        r.register(
            "push_sent",
            "Push notifications the gateway accepted",
            m.push_sent.clone(),
        );
        r.register(
            "push_failed",
            "Push notifications given up on after retries",
            m.push_failed.clone(),
        );
        r.register(
            "push_dropped",
            "Push notifications dropped: queue full",
            m.push_dropped.clone(),
        );
        r.register(
            "send_commit_seconds",
            "A send from its arrival to its commit on a quorum",
            m.send_commit.0.clone(),
        );
        r.register(
            "history_read_seconds",
            "A history page read: membership, the page, its messages as the caller sees them",
            m.history_read.0.clone(),
        );
        r.register(
            "delivery_seconds",
            "An event from its commit to its frame queued for a WebSocket",
            m.delivery.0.clone(),
        );
        Metrics {
            connections: m.connections,
            connections_refused: m.connections_refused,
            websockets: m.websockets,
            messages_sent: m.messages_sent,
            events_pushed: m.events_pushed,
            rate_limited: m.rate_limited,
            slow_consumers: m.slow_consumers,
            errors: m.errors,
            message_cache_hits: m.message_cache_hits,
            message_cache_misses: m.message_cache_misses,
            push_sent: m.push_sent,
            push_failed: m.push_failed,
            push_dropped: m.push_dropped,
            send_commit: m.send_commit,
            history_read: m.history_read,
            delivery: m.delivery,
            registry: r,
        }
    }
}

/// The metrics before they are registered.
#[derive(Default)]
struct MetricsParts {
    connections: Gauge,
    connections_refused: Counter,
    websockets: Gauge,
    messages_sent: Counter,
    events_pushed: Counter,
    rate_limited: Counter,
    slow_consumers: Counter,
    errors: Counter,
    message_cache_hits: Counter,
    message_cache_misses: Counter,
    push_sent: Counter,
    push_failed: Counter,
    push_dropped: Counter,
    send_commit: Latency,
    history_read: Latency,
    delivery: Latency,
}

impl Metrics {
    /// The exposition text of the service's metrics.
    pub fn render(&self) -> String {
        let mut s = String::new();
        if let Err(e) = prometheus_text::encode(&mut s, &self.registry) {
            tracing::error!(error = %e, "metrics did not encode");
        }
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
