//! What `/metrics` shows, in Prometheus' text exposition format (0.0.4),
//! all through prometheus-client: the service's counters, gauges and
//! latency histograms (a registry built once; the handler encodes it),
//! then [`NodeView`] — the storage engine's counters, the fsync, apply and
//! fan-out histograms and the per-shard gauges, read from the node when
//! scraped.

use missive_raft::node::GroupStats;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{prometheus_text, DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use missive_engine::latency::Latencies;
use missive_engine::log::LogStats;
use missive_engine::lsm::LsmStats;

/// A monotonically increasing count.
pub type Counter = prometheus_client::metrics::counter::Counter;

/// Counters labelled by (provider, outcome).
pub type PushFamily =
    prometheus_client::metrics::family::Family<Vec<(&'static str, &'static str)>, Counter>;

impl Metrics {
    /// Counts one push outcome of `provider`.
    pub fn push_outcome(&self, provider: &'static str, outcome: &'static str) {
        self.push
            .get_or_create(&vec![("provider", provider), ("outcome", outcome)])
            .inc();
    }
}

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
    /// Push notifications a provider accepted (all providers).
    pub push_sent: Counter,
    /// Push attempts that failed (all providers; the job is retried or
    /// dead-lettered).
    pub push_failed: Counter,
    /// Push notifications by provider and outcome (`sent`, `failed`,
    /// `retried`, `dead_lettered`, `token_removed`).
    pub push: PushFamily,
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
            "Push attempts that failed (retried or dead-lettered after)",
            m.push_failed.clone(),
        );
        r.register(
            "push_notifications",
            "Push notifications by provider and outcome: sent, failed (an attempt), retried (a job rescheduled), dead_lettered, token_removed",
            m.push.clone(),
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
            push: m.push,
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
    push: PushFamily,
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

/// What the node shows when scraped: the storage engine's counters (the
/// node's log and its LSM: syncs, write groups, flushes, compactions,
/// stalls, the tree's shape), the fsync, apply and fan-out histograms, and
/// per shard its leader and, where this node leads, each replica's lag.
/// Read from the node at scrape time; encoded by prometheus-client as a
/// [`Collector`].
#[derive(Debug)]
pub struct NodeView {
    /// The node's log.
    pub log: LogStats,
    /// The node's LSM.
    pub lsm: LsmStats,
    /// Apply's record reads: (answered by the record caches, read from the
    /// LSM).
    pub records: (u64, u64),
    /// The state machines' apply calls.
    pub apply: Latencies,
    /// Fan-out rounds led from this node.
    pub fanout: Latencies,
    /// Inbox events written by local delivery on this replica.
    pub local_deliveries: u64,
    /// Users the rate limiters hold state for.
    pub rate_limited_users: u64,
    /// Per shard (0 is the metadata group): the leader this node believes
    /// in (0: none known).
    pub leaders: Vec<(u32, u64)>,
    /// (shard, replica, entries it lacks) for the shards this node leads.
    pub lag: Vec<(u32, u64, u64)>,
    /// The cluster map version this node holds (0: not read yet).
    pub cluster_map_version: u64,
    /// Per group of this node: its Raft state here and what the node saw
    /// of it since it started.
    pub groups: Vec<(u32, GroupStats)>,
    /// Leaderships this node handed to their shard's preferred leader.
    pub handovers: u64,
}

impl NodeView {
    /// The exposition text.
    pub fn render(self) -> String {
        let mut r = Registry::with_prefix("missive");
        r.register_collector(Box::new(self));
        let mut s = String::new();
        if let Err(e) = prometheus_text::encode(&mut s, &r) {
            tracing::error!(error = %e, "node metrics did not encode");
        }
        s
    }
}

/// A per-group metric: its name, help, and how to read it from the stats.
type GroupMetric = (&'static str, &'static str, fn(&GroupStats) -> u64);

fn counter(e: &mut DescriptorEncoder<'_>, name: &str, help: &str, v: u64) -> std::fmt::Result {
    let c = ConstCounter::new(v);
    c.encode(e.encode_descriptor(name, help, None, c.metric_type())?)
}

fn gauge<N>(e: &mut DescriptorEncoder<'_>, name: &str, help: &str, v: N) -> std::fmt::Result
where
    N: prometheus_client::encoding::EncodeGaugeValue,
{
    let g = ConstGauge::new(v);
    g.encode(e.encode_descriptor(name, help, None, g.metric_type())?)
}

fn histogram(
    e: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    h: &Latencies,
) -> std::fmt::Result {
    let mut m = e.encode_descriptor(name, help, None, MetricType::Histogram)?;
    m.encode_histogram::<NoLabelSet>(h.sum_seconds(), h.count(), &h.buckets(), None)
}

impl Collector for NodeView {
    fn encode(&self, mut e: DescriptorEncoder<'_>) -> std::fmt::Result {
        let (log, lsm) = (&self.log, &self.lsm);
        // Counters without `_total` and help without a full stop: the
        // encoder adds both.
        let counters: [(&str, &str, u64); 28] = [
            (
                "log_appends",
                "Appends to the node's log (each a batch of Raft entries)",
                log.appends,
            ),
            (
                "log_entries",
                "Entries appended to the node's log",
                log.entries,
            ),
            (
                "log_bytes_written",
                "Bytes written to log segment files",
                log.bytes_written,
            ),
            (
                "log_write_groups",
                "Group-commit writes (one or more records each)",
                log.groups,
            ),
            ("log_syncs", "fdatasyncs of the log for commits", log.syncs),
            (
                "log_segments_created",
                "Log segment files created",
                log.segments_created,
            ),
            (
                "log_segments_prepared",
                "Log segment files made (zero-filled) ahead of their roll",
                log.segments_prepared,
            ),
            (
                "log_segment_preparations_failed",
                "Preparations of the next log segment that failed (the roll made it instead; a sign of a failing or full disk)",
                log.segment_preparations_failed,
            ),
            (
                "log_segments_deleted",
                "Log segment files deleted after every shard purged them",
                log.segments_deleted,
            ),
            (
                "lsm_bytes_written",
                "Bytes of batches applied to the LSM (keys + values)",
                lsm.bytes_written,
            ),
            (
                "lsm_table_bytes_written",
                "Bytes of table files written by flushes and compactions",
                lsm.table_bytes_written,
            ),
            (
                "lsm_blob_bytes_written",
                "Bytes of blob files (large values kept out of tables) written by flushes and full compactions",
                lsm.blob_bytes_written,
            ),
            (
                "lsm_pinned_blob_bytes_written",
                "Bytes of blob files the Raft log store wrote large entries' bytes to (written once: the LSM references them)",
                lsm.pinned_blob_bytes_written,
            ),
            ("lsm_flushes", "Memtable flushes completed", lsm.flushes),
            ("lsm_compactions", "Compactions completed", lsm.compactions),
            (
                "lsm_compaction_parts",
                "Key ranges compactions merged (more than compactions when split)",
                lsm.compaction_parts,
            ),
            (
                "lsm_write_stalls",
                "Times a writer waited for a flush",
                lsm.stalls,
            ),
            (
                "lsm_write_slowdowns",
                "Times a writer slept because level 0 was deep (compaction behind)",
                lsm.slowdowns,
            ),
            (
                "lsm_write_slowdown_micros",
                "Microseconds writers slept because level 0 was deep",
                lsm.slowdown_micros,
            ),
            (
                "lsm_paced_steps",
                "Steps of table writes paced while durable writes were acknowledged",
                lsm.paced_steps,
            ),
            (
                "lsm_paced_micros",
                "Microseconds flushes and compactions slept to pace their table writes",
                lsm.paced_micros,
            ),
            (
                "lsm_memtable_inserts",
                "Versions inserted into memtables",
                lsm.memtable_inserts,
            ),
            (
                "lsm_memtable_full_searches",
                "Memtable inserts placed by a search from the skiplist's top, not from a finger near their key (the costly case)",
                lsm.memtable_full_searches,
            ),
            ("lsm_block_cache_hits", "Block cache hits", lsm.cache_hits),
            (
                "lsm_block_cache_misses",
                "Block cache misses",
                lsm.cache_misses,
            ),
            (
                "apply_record_cache_hits",
                "Records the state machines read from their record caches",
                self.records.0,
            ),
            (
                "apply_record_cache_misses",
                "Records the state machines read from the LSM (not cached)",
                self.records.1,
            ),
            (
                "deliveries_local",
                "Inbox events this replica wrote in their event's own batch (the inbox is on the conversation's shard), not through the fan-out",
                self.local_deliveries,
            ),
        ];
        for (name, help, v) in counters {
            counter(&mut e, name, help, v)?;
        }
        gauge(
            &mut e,
            "lsm_write_amplification",
            "Table bytes written per byte applied",
            lsm.write_amplification,
        )?;
        let files: Vec<i64> = lsm.files_per_level.iter().map(|&n| n as i64).collect();
        let bytes: Vec<i64> = lsm.bytes_per_level.iter().map(|&n| n as i64).collect();
        for (name, help, per_level) in [
            ("lsm_level_files", "Table files per LSM level", files),
            ("lsm_level_bytes", "Table bytes per LSM level", bytes),
        ] {
            let mut m = e.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for (level, n) in per_level.into_iter().enumerate() {
                let labels = [("level", level as u64)];
                ConstGauge::new(n).encode(m.encode_family(&labels)?)?;
            }
        }
        histogram(
            &mut e,
            "log_fsync_seconds",
            "A commit fdatasync of the node's log",
            &log.fsync,
        )?;
        histogram(
            &mut e,
            "apply_seconds",
            "A state machine's apply of a run of committed entries",
            &self.apply,
        )?;
        histogram(
            &mut e,
            "fanout_seconds",
            "An outbox entry from its commit to its Deliver committed on every recipient's shard",
            &self.fanout,
        )?;
        gauge(
            &mut e,
            "rate_limited_users",
            "Users the rate limiters hold state for (quiet ones are forgotten every minute)",
            self.rate_limited_users as i64,
        )?;
        // Who leads each group, as this node sees it — for operators, and
        // for tests that must stop a shard's leader.
        let mut m = e.encode_descriptor(
            "shard_leader",
            "The node this node believes leads the shard (0: none known; shard 0 is the metadata group)",
            None,
            MetricType::Gauge,
        )?;
        for (shard, leader) in &self.leaders {
            let labels = [("shard", u64::from(*shard))];
            ConstGauge::new(*leader as i64).encode(m.encode_family(&labels)?)?;
        }
        let mut m = e.encode_descriptor(
            "shard_replication_lag_entries",
            "On a shard's leader: log entries a replica still lacks",
            None,
            MetricType::Gauge,
        )?;
        for (shard, node, lag) in &self.lag {
            let labels = [("shard", u64::from(*shard)), ("node", *node)];
            ConstGauge::new(*lag as i64).encode(m.encode_family(&labels)?)?;
        }
        gauge(
            &mut e,
            "cluster_map_version",
            "The version of the cluster map this node holds (0: not read yet)",
            self.cluster_map_version as i64,
        )?;
        // Each group's Raft state on this replica, and its events since
        // the node started.
        let per_group: [GroupMetric; 3] = [
            (
                "shard_term",
                "The group's current term on this replica",
                |g| g.term,
            ),
            (
                "shard_log_index",
                "The last index in this replica's log of the group",
                |g| g.log_index,
            ),
            (
                "shard_applied_index",
                "The last index this replica applied",
                |g| g.applied_index,
            ),
        ];
        for (name, help, f) in per_group {
            let mut m = e.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for (shard, g) in &self.groups {
                let labels = [("shard", u64::from(*shard))];
                ConstGauge::new(f(g) as i64).encode(m.encode_family(&labels)?)?;
            }
        }
        let per_group: [GroupMetric; 4] = [
            (
                "shard_elections",
                "Terms begun in the group (elections, won or not) since this node started",
                |g| g.elections,
            ),
            (
                "shard_leader_changes",
                "Changes of the group's leader seen by this node since it started",
                |g| g.leader_changes,
            ),
            (
                "shard_snapshots",
                "Snapshots of the group built or installed here since this node started",
                |g| g.snapshots,
            ),
            (
                "shard_replica_wipes",
                "Times this node's replica of the group was wiped after its removal, since this node started",
                |g| g.wipes,
            ),
        ];
        for (name, help, f) in per_group {
            let mut m = e.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (shard, g) in &self.groups {
                let labels = [("shard", u64::from(*shard))];
                ConstCounter::new(f(g)).encode(m.encode_family(&labels)?)?;
            }
        }
        counter(
            &mut e,
            "leader_handovers",
            "Leaderships this node handed to their shard's preferred leader",
            self.handovers,
        )
    }
}
