//! Configuration: built-in defaults (one node on 127.0.0.1:8080, data
//! under ./data), overridden by a TOML file, then by environment variables
//! and flags (see `main`). Every field is documented in docs/protocol.md's
//! "Running" section; unknown keys in the file are an error, not ignored.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use missive_engine::io::IoBackend;
use serde::Deserialize;

use crate::error::{Error, Result};

/// The whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where clients connect (HTTP and WebSocket).
    pub listen: SocketAddr,
    /// Where the node keeps its data (log, tables, identity, auth secret).
    pub data_dir: PathBuf,
    /// This node in the cluster.
    pub node: NodeSection,
    /// Tokens and origins.
    pub auth: AuthSection,
    /// Sizes, rates and timeouts.
    pub limits: Limits,
    /// Push notifications to offline devices.
    pub push: PushSection,
    /// The gRPC API.
    pub grpc: GrpcSection,
    /// What members may do to messages already sent.
    pub messages: MessagesSection,
    /// Uploads and downloads of media.
    pub media: MediaSection,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            data_dir: PathBuf::from("./data"),
            node: NodeSection::default(),
            auth: AuthSection::default(),
            limits: Limits::default(),
            push: PushSection::default(),
            grpc: GrpcSection::default(),
            messages: MessagesSection::default(),
            media: MediaSection::default(),
        }
    }
}

/// Uploads and downloads of media (`crate::media`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MediaSection {
    /// The longest file one upload may declare (bytes).
    pub max_file_bytes: u64,
    /// The most bytes of finished uploads one user may hold (bytes).
    pub quota_bytes: u64,
    /// How long a signed download URL stays valid (seconds).
    pub url_ttl_secs: u64,
    /// How often the media collector runs (seconds; 0: only when an
    /// operator asks, `POST /v1/admin/media/gc`).
    pub gc_interval_secs: u64,
    /// How long an object no message names is kept after it was stored
    /// or last sent (seconds). Longer than any send, so the collector
    /// never races one (`missive_chat::media::gc`).
    pub unreferenced_grace_secs: u64,
    /// How long an upload may stay unfinished (seconds).
    pub upload_ttl_secs: u64,
}

impl Default for MediaSection {
    fn default() -> Self {
        MediaSection {
            max_file_bytes: 100 << 20,
            quota_bytes: 10 << 30,
            url_ttl_secs: 3600,
            gc_interval_secs: 3600,
            unreferenced_grace_secs: 24 * 3600,
            upload_ttl_secs: 24 * 3600,
        }
    }
}

/// What members may do to messages already sent. Every node of a cluster
/// should agree: a command carries the value of the node that took it,
/// so replicas judge alike, but two nodes configured differently answer
/// the same request differently.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MessagesSection {
    /// How long after sending its sender may edit a message, seconds.
    pub edit_window_secs: u64,
    /// How long after sending its sender may unsend a message, seconds.
    pub unsend_window_secs: u64,
    /// Whether a group's admins may unsend anyone's message, at any time.
    pub admins_may_unsend: bool,
    /// How long messages are kept in conversations that did not set their
    /// own retention, days (0: forever, the default). Applies to messages
    /// sent after it is set.
    pub retention_days: u32,
}

impl MessagesSection {
    /// The node's default retention (µs; `None`: forever).
    pub fn retention_micros(&self) -> Option<u64> {
        (self.retention_days > 0)
            .then(|| u64::from(self.retention_days).saturating_mul(86_400_000_000))
    }
}

impl Default for MessagesSection {
    fn default() -> Self {
        MessagesSection {
            edit_window_secs: 15 * 60,
            unsend_window_secs: 2 * 24 * 3600,
            admins_may_unsend: true,
            retention_days: 0,
        }
    }
}

/// The most shards a new node alone gets by default (one per
/// [`CORES_PER_DEFAULT_SHARD`] cores up to this).
pub const MAX_DEFAULT_SHARDS: u32 = 8;

/// CPU cores per shard a new node alone gets by default (at least one
/// shard): see [`Config::shards`] for the measurements behind it.
pub const CORES_PER_DEFAULT_SHARD: usize = 2;

/// The shard count of a new data directory for a node alone on `cores`
/// CPU cores: one per [`CORES_PER_DEFAULT_SHARD`], at least 1, at most
/// [`MAX_DEFAULT_SHARDS`].
pub fn default_shards_alone(cores: usize) -> u32 {
    let n = (cores / CORES_PER_DEFAULT_SHARD).clamp(1, MAX_DEFAULT_SHARDS as usize);
    u32::try_from(n).unwrap_or(MAX_DEFAULT_SHARDS)
}

/// The shards of a new cluster of several nodes when `node.shards` is unset.
pub const CLUSTER_DEFAULT_SHARDS: u32 = 8;

/// The node's place in the Raft cluster.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeSection {
    /// This node's id (unique in the cluster, fixed for its data dir).
    pub id: u64,
    /// Where other nodes reach this one (the Raft transport).
    pub raft_listen: SocketAddr,
    /// Shards: Raft groups the keyspace is split into, fixed when the
    /// cluster is created (`missivectl shard split` / `merge` change it
    /// online later). Unset: what the data directory was created with; for
    /// a new directory, one per two CPU cores (at least 1, at most
    /// [`MAX_DEFAULT_SHARDS`]) for a node alone, and
    /// [`CLUSTER_DEFAULT_SHARDS`] for a new cluster; a node joining a
    /// running cluster takes the cluster's. See [`Config::shards`] for why.
    pub shards: Option<u32>,
    /// Replicas per shard.
    pub replicas: usize,
    /// Every node of the cluster, this one included: id → Raft address.
    /// Empty: a cluster of this node alone. With `join`, the nodes of the
    /// running cluster to contact (this one need not be listed).
    pub peers: BTreeMap<u64, String>,
    /// Join a running cluster instead of forming one: start hosting no
    /// shard and wait for an operator to add this node's replicas
    /// (`missivectl shard add` / `move`, docs/design.md §4.7).
    pub join: bool,
    /// The log's I/O back end: `std` (pwrite + fdatasync, the default:
    /// measured faster here), `io_uring`, or `auto` (io_uring where the
    /// kernel allows it).
    pub io: IoBackend,
    /// How the store rewrites its deepest level's tables in idle time
    /// (never by a flush or a compaction): `lz4hc` (the default, at
    /// `bottom_hc_level`, 8 KiB blocks, a dictionary per table) or `zstd`
    /// (at `bottom_zstd_level`, 4 KiB blocks, a dictionary per table: ~1 %
    /// less disk per message than `lz4hc`, for reads ~3× slower on each
    /// block they miss in the cache).
    pub bottom_compression: BottomCodec,
    /// The LZ4 high-compression level (1–12) of `lz4hc`: with its
    /// dictionary, ~19 % less disk per message than the fast compressor
    /// for several times its CPU (16.5 s of idle work per 5M messages). 0: the fast compressor everywhere (with `lz4hc`).
    pub bottom_hc_level: u8,
    /// The zstd level (1–19) of `zstd`.
    pub bottom_zstd_level: u8,
    /// How many levels from the top (level 0, then level 1) store their
    /// tables uncompressed when they are not the tree's bottom: the next
    /// compaction rewrites them anyway, so compressing them costs CPU for
    /// bytes that live minutes (~40 % less compaction CPU per GB measured;
    /// docs/benchmarks.md "Uncompressed upper levels"). 0: compress every
    /// level, for a disk short of space or bandwidth. At most 2: deeper
    /// levels hold most of the data and stay compressed.
    pub uncompressed_levels: u8,
    /// MiB of log segments past which the shards holding the oldest
    /// segment snapshot and purge their logs at once, instead of after
    /// 20 000 entries: bounds the log under media uploads, whose entries
    /// are up to 1 MiB each. 0: no budget (docs/design.md §4.3.3).
    pub log_budget_mib: u64,
    /// Write each new log segment as zeros before the log uses it (on the
    /// log's helper thread, ahead of the roll), so every fdatasync of a
    /// commit flushes data only, without a journal commit for the blocks it
    /// fills: faster durable writes (a new node's first segment is zeroed
    /// when its log is created, not after a restart), at the price of
    /// writing each segment twice and slower syncs while the next one is
    /// being zeroed (docs/design.md §1). Off by default.
    pub log_zero_fill: bool,
    /// MiB per second at which each table a flush or compaction writes is
    /// written while durable writes are being acknowledged, so that the
    /// log's fdatasyncs do not wait behind megabytes of table data (never
    /// while writers are held back: docs/design.md §2.6.1). 0: never paced.
    pub paced_write_mib: u32,
}

/// The deepest level's compression (`node.bottom_compression`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BottomCodec {
    /// LZ4's high-compression match finder at `node.bottom_hc_level`, with
    /// a dictionary per table.
    #[default]
    Lz4hc,
    /// zstd at `node.bottom_zstd_level`, a dictionary per table.
    Zstd,
}

impl NodeSection {
    /// The engine's setting for the deepest level.
    pub fn bottom(&self) -> Option<missive_engine::lsm::BottomCompression> {
        use missive_engine::lsm::BottomCompression;
        match self.bottom_compression {
            BottomCodec::Lz4hc => (self.bottom_hc_level > 0)
                .then(|| BottomCompression::lz4hc(i32::from(self.bottom_hc_level))),
            BottomCodec::Zstd => Some(BottomCompression::zstd(i32::from(self.bottom_zstd_level))),
        }
    }
}

impl Default for NodeSection {
    fn default() -> Self {
        NodeSection {
            id: 1,
            raft_listen: SocketAddr::from(([127, 0, 0, 1], 7080)),
            shards: None,
            replicas: 3,
            peers: BTreeMap::new(),
            join: false,
            io: IoBackend::default(),
            bottom_compression: BottomCodec::Lz4hc,
            bottom_hc_level: 9,
            bottom_zstd_level: 3,
            uncompressed_levels: 2,
            log_budget_mib: missive_raft::node::DEFAULT_LOG_BUDGET >> 20,
            log_zero_fill: false,
            paced_write_mib: 48,
        }
    }
}

/// The gRPC API (`server/proto/missive.proto`), on its own port because it
/// speaks HTTP/2 and the HTTP/WebSocket listener speaks HTTP/1.1.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GrpcSection {
    /// Serve it at all.
    pub enabled: bool,
    /// Where gRPC clients connect.
    pub listen: SocketAddr,
}

impl Default for GrpcSection {
    fn default() -> Self {
        GrpcSection {
            enabled: true,
            listen: SocketAddr::from(([127, 0, 0, 1], 8090)),
        }
    }
}

/// Push notifications: where to tell that an offline device has news.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PushSection {
    /// The operator's push gateway (`http://…` or `https://…`), for the
    /// devices APNs and FCM do not take (web push, or every device when
    /// neither is configured). Push is off if this, `apns` and `fcm` are
    /// all unset.
    pub webhook_url: Option<String>,
    /// Sent as `Authorization: Bearer <secret>` so the gateway can tell
    /// the calls are ours.
    pub webhook_secret: Option<String>,
    /// One call's deadline, ms.
    pub timeout_ms: u64,
    /// Notifications being sent at once by this node (the jobs wait in
    /// the store, so none is dropped when this is reached).
    pub queue: usize,
    /// A notification not sent this long after its event is given up on
    /// and kept as a dead letter (`missivectl push dead`), seconds.
    pub max_age_secs: u64,
    /// The wait before the first retry, ms; it doubles (with jitter) up to
    /// `retry_max_ms`.
    pub retry_min_ms: u64,
    /// The longest wait between retries, ms.
    pub retry_max_ms: u64,
    /// A PEM file of certificates trusted by the providers' TLS besides
    /// the built-in Mozilla roots (a private CA in front of the gateway).
    pub ca_file: Option<PathBuf>,
    /// Apple's push service, for `ios` (and other Apple) devices.
    pub apns: Option<ApnsSection>,
    /// Firebase Cloud Messaging, for `android` devices.
    pub fcm: Option<FcmSection>,
}

/// APNs with token-based authentication (`delivery::push::apns`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApnsSection {
    /// The APNs auth key from Apple's developer portal (`AuthKey_….p8`,
    /// a P-256 private key in PKCS#8 PEM).
    pub key_file: PathBuf,
    /// That key's id (10 characters, in the file's name).
    pub key_id: String,
    /// The developer team's id (10 characters).
    pub team_id: String,
    /// The app's bundle id (`apns-topic`).
    pub topic: String,
    /// `https://api.push.apple.com` (the default) or, for development
    /// builds of the app, `https://api.sandbox.push.apple.com`.
    #[serde(default = "ApnsSection::production")]
    pub endpoint: String,
}

impl ApnsSection {
    /// Apple's production endpoint.
    pub fn production() -> String {
        "https://api.push.apple.com".into()
    }
}

/// FCM's HTTP v1 API with a service account (`delivery::push::fcm`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FcmSection {
    /// The service account's JSON key file (Firebase console, Project
    /// settings, Service accounts); it names the project.
    pub service_account_file: PathBuf,
    /// The API's base URL (default `https://fcm.googleapis.com`).
    #[serde(default = "FcmSection::production")]
    pub endpoint: String,
}

impl FcmSection {
    /// Google's endpoint.
    pub fn production() -> String {
        "https://fcm.googleapis.com".into()
    }
}

impl Default for PushSection {
    fn default() -> Self {
        PushSection {
            webhook_url: None,
            webhook_secret: None,
            timeout_ms: 5_000,
            queue: 64,
            max_age_secs: 86_400,
            retry_min_ms: 1_000,
            retry_max_ms: 300_000,
            ca_file: None,
            apns: None,
            fcm: None,
        }
    }
}

/// Tokens and browser origins.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthSection {
    /// The HS256 signing secret. None: a random one is created once in
    /// `<data_dir>/auth.secret` and reused (every node of a cluster must
    /// be given the same secret).
    pub secret: Option<String>,
    /// The `iss` tokens must carry.
    pub issuer: String,
    /// The `aud` tokens must carry.
    pub audience: String,
    /// Lifetime of minted access tokens, seconds.
    pub token_ttl_secs: u64,
    /// Lifetime of WebSocket tickets, seconds.
    pub ticket_ttl_secs: u64,
    /// Enables `POST /v1/admin/tokens` for callers presenting it.
    pub admin_secret: Option<String>,
    /// Origins of browser apps that may call this server from another
    /// origin (exact match, e.g. "https://chat.example.com"): CORS answers
    /// them, and their requests and WebSocket upgrades are accepted. Every
    /// other origin but the server's own (its web client) is refused;
    /// requests without an Origin header (native apps) are not affected.
    pub allowed_origins: Vec<String>,
}

impl Default for AuthSection {
    fn default() -> Self {
        AuthSection {
            secret: None,
            issuer: "missive".into(),
            audience: "missive-clients".into(),
            token_ttl_secs: 24 * 3600,
            ticket_ttl_secs: 30,
            admin_secret: None,
            allowed_origins: Vec::new(),
        }
    }
}

/// Sizes, rates and timeouts. Units are in the names.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest message body, bytes (after base64 decoding).
    pub max_message_bytes: usize,
    /// Largest WebSocket message or frame from a client, bytes.
    pub max_frame_bytes: usize,
    /// Largest HTTP request body, bytes.
    pub max_http_body_bytes: usize,
    /// Largest group.
    pub max_group_members: u32,
    /// Sustained sends per user per second.
    pub sends_per_second: u32,
    /// Sends a user may burst above the rate.
    pub send_burst: u32,
    /// Open client connections (HTTP and WebSocket) beyond which new ones
    /// are refused.
    pub max_connections: usize,
    /// Frames queued for one WebSocket before it counts as slow.
    pub outbound_queue: usize,
    /// Bytes of serialized frames queued for one WebSocket before it
    /// counts as slow (what a client that stops reading can pin).
    pub outbound_queue_bytes: usize,
    /// How long a slow WebSocket may block its queue before it is closed,
    /// milliseconds.
    pub slow_consumer_ms: u64,
    /// Time to read a request's headers, milliseconds.
    pub header_timeout_ms: u64,
    /// A WebSocket with no frame from the client for this long is closed,
    /// seconds (clients ping).
    pub idle_timeout_secs: u64,
    /// Largest history page.
    pub max_page: usize,
    /// Events per sync page.
    pub sync_page: usize,
    /// Memory for the recent-messages cache, bytes (0 turns it off).
    pub message_cache_bytes: u64,
    /// History pages, conversation lists and other reads of a
    /// conversation's past, per user.
    pub history_rate: Rate,
    /// Receipt writes, per user.
    pub receipt_rate: Rate,
    /// Conversations created (direct and group), per user.
    pub create_rate: Rate,
    /// Media uploads started (tus creations), per user. A chat client
    /// sends an album as one upload per photo: its own bucket, roomier
    /// than conversation creation's.
    pub upload_rate: Rate,
    /// Key directory writes (publishing or removing a device's keys),
    /// per user: a device publishes at registration and when its
    /// one-time pre-keys run low, so a low rate with room for a user
    /// setting up several devices at once.
    pub keys_rate: Rate,
    /// Presence requests and typing signals, per user.
    pub presence_rate: Rate,
    /// New TCP connections (HTTP and gRPC listeners), per client IP.
    pub connect_rate_per_ip: Rate,
    /// WebSocket upgrades and gRPC streams opened, per client IP.
    pub upgrade_rate_per_ip: Rate,
    /// Open WebSockets and gRPC streams (`Sync`, `Live`) of one user on
    /// one node; the next is refused with `too_many_sockets`.
    pub max_sockets_per_user: usize,
}

/// A sustained rate and the burst allowed above it (a token bucket of
/// `burst` tokens refilled at `per_second`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rate {
    /// Tokens added per second.
    pub per_second: u32,
    /// The bucket's size: uses allowed at once after a quiet spell.
    pub burst: u32,
}

impl Rate {
    /// `per_second` sustained, bursts of `burst`.
    pub const fn new(per_second: u32, burst: u32) -> Rate {
        Rate { per_second, burst }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message_bytes: 64 * 1024,
            max_frame_bytes: 128 * 1024,
            max_http_body_bytes: 128 * 1024,
            max_group_members: 250,
            sends_per_second: 20,
            send_burst: 50,
            max_connections: 50_000,
            outbound_queue: 1024,
            outbound_queue_bytes: 1024 * 1024,
            slow_consumer_ms: 10_000,
            header_timeout_ms: 10_000,
            idle_timeout_secs: 120,
            max_page: 200,
            sync_page: 256,
            message_cache_bytes: 64 * 1024 * 1024,
            // Scrolling back reads a page per screen; a client opening
            // reads a list and a page per visible conversation.
            history_rate: Rate::new(20, 100),
            // One per conversation read or delivered, batched by clients.
            receipt_rate: Rate::new(50, 200),
            create_rate: Rate::new(2, 20),
            upload_rate: Rate::new(10, 100),
            keys_rate: Rate::new(2, 20),
            presence_rate: Rate::new(5, 30),
            // Sized for many users behind one NAT or proxy, not for one
            // client: a reconnect storm after a restart is a burst.
            connect_rate_per_ip: Rate::new(200, 2_000),
            upgrade_rate_per_ip: Rate::new(100, 1_000),
            max_sockets_per_user: 32,
        }
    }
}

impl Limits {
    /// `slow_consumer_ms` as a duration.
    pub fn slow_consumer(&self) -> Duration {
        Duration::from_millis(self.slow_consumer_ms)
    }
}

impl Config {
    /// Defaults overridden by the TOML file at `path`.
    pub fn from_file(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            op: "read",
            path: path.display().to_string(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| Error::Config(format!("{}: {e}", path.display())))
    }

    /// The shard count to start the node with: `node.shards` if set; else
    /// the count the data directory was created with (so an existing node
    /// starts as it always has); else, for a new directory, one shard per
    /// two CPU cores ([`default_shards_alone`]) for a node alone and
    /// [`CLUSTER_DEFAULT_SHARDS`] for a new cluster; `None` for a node
    /// joining a running cluster, which takes the cluster's count
    /// (`missive_raft::cluster::directory::cluster_shard_count`).
    ///
    /// Why so few for a node alone: each shard is a Raft group with its own
    /// log stream, apply loop and batches, and on one node more groups only
    /// split the same load into smaller batches and more wake-ups — and
    /// fewer groups keep more of a message's recipients on its
    /// conversation's shard, where it reaches their inboxes in its own Raft
    /// round (local delivery) instead of a `Deliver` round on theirs.
    /// Measured on a 2-core machine (`missive-bench e2e`, 10 000
    /// connections, docs/benchmarks.md "One shard per two cores"): at
    /// 3 000 msgs/s 1 shard took 14 % less server CPU per message than 2
    /// and about halved the delivered p50; 2 shards had in turn beaten 8
    /// (delivered p50 4–5 vs 9–12 ms at 5 000 msgs/s). A shard still gets
    /// two cores so that a larger machine applies in parallel: one apply
    /// loop is one thread. The count is recorded when the directory is
    /// created and changes only by an online split or merge (`missivectl
    /// shard split` / `merge`, docs/protocol.md), which is also how a node
    /// that grows into a cluster gets enough shards to spread leaders over
    /// its nodes. A cluster's nodes must agree on the count, so cluster
    /// members do not derive it from their own hardware.
    pub fn shards(&self) -> Result<Option<u32>> {
        if let Some(n) = self.node.shards {
            return Ok(Some(n));
        }
        let recorded = missive_raft::node::recorded_shards(&self.data_dir).map_err(|e| {
            Error::Config(format!(
                "reading the shard count recorded in {}: {e}",
                self.data_dir.display()
            ))
        })?;
        if let Some(n) = recorded {
            return Ok(Some(n));
        }
        if self.node.join {
            return Ok(None);
        }
        let alone = self.node.peers.keys().all(|&id| id == self.node.id);
        Ok(Some(if alone {
            let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
            default_shards_alone(cores)
        } else {
            CLUSTER_DEFAULT_SHARDS
        }))
    }

    /// Checks values that parse but cannot work.
    pub fn validate(&self) -> Result<()> {
        let l = &self.limits;
        let bad = |m: &str| Err(Error::Config(m.to_string()));
        if self.node.id == 0 {
            return bad("node.id must be at least 1");
        }
        if self.node.shards == Some(0) {
            return bad("node.shards must be at least 1");
        }
        if self.node.bottom_hc_level > 12 {
            return bad("node.bottom_hc_level must be 0 (off) to 12");
        }
        if !(1..=19).contains(&self.node.bottom_zstd_level) {
            return bad("node.bottom_zstd_level must be 1 to 19");
        }
        if self.node.uncompressed_levels > 2 {
            return bad("node.uncompressed_levels must be 0 (compress every level) to 2");
        }
        if self.node.join {
            if self.node.peers.keys().all(|&id| id == self.node.id) {
                return bad("node.join needs node.peers to name at least one running node");
            }
        } else if !self.node.peers.is_empty() && !self.node.peers.contains_key(&self.node.id) {
            return bad("node.peers must include this node's own id");
        }
        if l.max_message_bytes == 0 || l.max_frame_bytes < l.max_message_bytes {
            return bad("limits.max_frame_bytes must be at least limits.max_message_bytes (> 0)");
        }
        if self.media.max_file_bytes == 0 || self.media.url_ttl_secs == 0 {
            return bad("media.max_file_bytes and media.url_ttl_secs must be positive");
        }
        if l.max_group_members < 2 {
            return bad("limits.max_group_members must be at least 2");
        }
        if l.sends_per_second == 0 || l.send_burst == 0 {
            return bad("limits.sends_per_second and limits.send_burst must be positive");
        }
        let rates = [
            ("history_rate", l.history_rate),
            ("receipt_rate", l.receipt_rate),
            ("create_rate", l.create_rate),
            ("upload_rate", l.upload_rate),
            ("keys_rate", l.keys_rate),
            ("presence_rate", l.presence_rate),
            ("connect_rate_per_ip", l.connect_rate_per_ip),
            ("upgrade_rate_per_ip", l.upgrade_rate_per_ip),
        ];
        if let Some((name, _)) = rates
            .iter()
            .find(|(_, r)| r.per_second == 0 || r.burst == 0)
        {
            return bad(&format!(
                "limits.{name}: per_second and burst must be positive"
            ));
        }
        if l.max_sockets_per_user == 0 {
            return bad("limits.max_sockets_per_user must be positive");
        }
        if l.outbound_queue_bytes == 0 || l.outbound_queue_bytes > u32::MAX as usize {
            return bad("limits.outbound_queue_bytes must be 1 to 4 GiB");
        }
        if l.outbound_queue == 0 || l.max_page == 0 || l.sync_page == 0 || l.max_connections == 0 {
            return bad(
                "limits.outbound_queue, max_page, sync_page and max_connections must be positive",
            );
        }
        if let Some(o) = self.auth.allowed_origins.iter().find(|o| !is_origin(o)) {
            return bad(&format!(
                "auth.allowed_origins: {o:?} is not an origin: write scheme://host[:port], \
                 e.g. \"https://chat.example.com\" (no path, no trailing slash)"
            ));
        }
        if self.auth.token_ttl_secs == 0 || self.auth.ticket_ttl_secs == 0 {
            return bad("auth.token_ttl_secs and auth.ticket_ttl_secs must be positive");
        }
        if let Some(u) = &self.push.webhook_url {
            if !is_http_url(u, "http://") && !is_http_url(u, "https://") {
                return bad("push.webhook_url must be an http:// or https:// URL");
            }
        }
        if let Some(a) = &self.push.apns {
            if !is_http_url(&a.endpoint, "https://") {
                return bad("push.apns.endpoint must be an https:// URL (APNs is HTTP/2 over TLS)");
            }
            if a.key_id.is_empty() || a.team_id.is_empty() || a.topic.is_empty() {
                return bad(
                    "push.apns: key_id, team_id and topic (the app's bundle id) are needed",
                );
            }
        }
        if let Some(f) = &self.push.fcm {
            if !is_http_url(&f.endpoint, "https://") {
                return bad("push.fcm.endpoint must be an https:// URL");
            }
        }
        if self.push.timeout_ms == 0 || self.push.queue == 0 {
            return bad("push.timeout_ms and push.queue must be positive");
        }
        Ok(())
    }
}

/// Whether `u` starts with `scheme` and names something after it.
fn is_http_url(u: &str, scheme: &str) -> bool {
    u.starts_with(scheme) && u.len() > scheme.len()
}

/// Whether `o` is a browser origin as a browser writes it in `Origin`:
/// `http://` or `https://`, then a host and optional port, nothing after.
fn is_origin(o: &str) -> bool {
    let rest = o
        .strip_prefix("http://")
        .or_else(|| o.strip_prefix("https://"));
    rest.is_some_and(|a| {
        !a.is_empty()
            && a.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;

    #[test]
    fn the_log_budget_defaults_to_a_gibibyte_and_can_be_turned_off() {
        let parse = |text: &str| toml::from_str::<Config>(text).unwrap();
        assert_eq!(Config::default().node.log_budget_mib, 1024);
        assert_eq!(parse("[node]\nlog_budget_mib = 0\n").node.log_budget_mib, 0);
        assert_eq!(parse("[node]\nid = 2\n").node.log_budget_mib, 1024);
    }

    #[test]
    fn table_writes_are_paced_at_48_mib_unless_set_to_zero() {
        let parse = |text: &str| toml::from_str::<Config>(text).unwrap();
        assert_eq!(Config::default().node.paced_write_mib, 48);
        assert_eq!(
            parse("[node]\npaced_write_mib = 0\n").node.paced_write_mib,
            0
        );
        assert!(toml::from_str::<Config>("[node]\npaced_write_mib = -1\n").is_err());
    }

    #[test]
    fn zero_filled_log_segments_are_off_unless_asked_for() {
        let parse = |text: &str| toml::from_str::<Config>(text).unwrap();
        assert!(!Config::default().node.log_zero_fill);
        assert!(parse("[node]\nlog_zero_fill = true\n").node.log_zero_fill);
        assert!(toml::from_str::<Config>("[node]\nlog_zero_fill = 1\n").is_err());
    }

    #[test]
    fn the_compression_knobs_are_read_and_checked() {
        let parse = |text: &str| toml::from_str::<Config>(text).unwrap();
        let d = Config::default().node;
        /// The key, its default, how to read it, a value it refuses.
        type Knob = (&'static str, u8, fn(&NodeSection) -> u8, u8);
        let knobs: [Knob; 2] = [
            ("bottom_hc_level", 9, |n| n.bottom_hc_level, 13),
            ("uncompressed_levels", 2, |n| n.uncompressed_levels, 3),
        ];
        for (key, default, get, too_high) in knobs {
            assert_eq!(get(&d), default, "{key}");
            let off = parse(&format!("[node]\n{key} = 0\n"));
            assert_eq!(get(&off.node), 0, "{key}");
            assert!(off.validate().is_ok(), "{key}");
            let err = parse(&format!("[node]\n{key} = {too_high}\n"))
                .validate()
                .unwrap_err();
            assert!(err.to_string().contains(key), "{err}");
        }
        use missive_engine::lsm::BottomCompression;
        assert_eq!(d.bottom(), Some(BottomCompression::LZ4HC));
        let zstd = parse("[node]\nbottom_compression = \"zstd\"\nbottom_zstd_level = 6\n");
        assert!(zstd.validate().is_ok());
        assert!(matches!(
            zstd.node.bottom(),
            Some(BottomCompression::Zstd { level: 6, .. })
        ));
        for bad in ["bottom_zstd_level = 0", "bottom_zstd_level = 20"] {
            let err = parse(&format!("[node]\n{bad}\n")).validate().unwrap_err();
            assert!(err.to_string().contains("bottom_zstd_level"), "{err}");
        }
        assert!(toml::from_str::<Config>("[node]\nbottom_compression = \"gzip\"\n").is_err());
    }

    #[test]
    fn a_node_alone_gets_one_shard_per_two_cores_at_least_one_at_most_eight() {
        let got: Vec<u32> = [0, 1, 2, 3, 4, 5, 8, 15, 16, 17, 64]
            .into_iter()
            .map(default_shards_alone)
            .collect();
        assert_eq!(got, [1, 1, 1, 1, 2, 2, 4, 7, 8, 8, 8]);
    }

    #[test]
    fn the_shard_count_of_a_new_directory_follows_the_cores_alone_is_fixed_in_a_new_cluster_and_asked_when_joining(
    ) {
        let dir = tempfile::tempdir().unwrap();
        let mut c = Config {
            data_dir: dir.path().to_path_buf(),
            ..Config::default()
        };
        let cores = std::thread::available_parallelism().unwrap().get();
        let want = default_shards_alone(cores);
        assert_eq!(
            c.shards().unwrap(),
            Some(want),
            "a node alone: one per two cores"
        );
        c.node.peers.insert(1, "127.0.0.1:7080".into());
        assert_eq!(
            c.shards().unwrap(),
            Some(want),
            "listing only itself is still alone"
        );
        c.node.peers.insert(2, "127.0.0.2:7080".into());
        assert_eq!(c.shards().unwrap(), Some(CLUSTER_DEFAULT_SHARDS));
        c.node.join = true;
        assert_eq!(c.shards().unwrap(), None, "a joining node asks the cluster");
        c.node.shards = Some(5);
        assert_eq!(c.shards().unwrap(), Some(5), "an explicit count wins");
        let zero = toml::from_str::<Config>("[node]\nshards = 0\n").unwrap();
        let err = zero.validate().unwrap_err();
        assert!(err.to_string().contains("node.shards"), "{err}");
    }

    #[test]
    fn allowed_origins_must_be_origins_as_a_browser_writes_them() {
        let with = |o: &str| {
            let mut c = Config::default();
            c.auth.allowed_origins = vec![o.to_string()];
            c.validate()
        };
        for good in [
            "https://chat.example.com",
            "http://127.0.0.1:5173",
            "http://[::1]:8080",
        ] {
            assert!(with(good).is_ok(), "{good}");
        }
        for bad in [
            "https://chat.example.com/",
            "chat.example.com",
            "https://",
            "*",
            "https://a.example/app",
        ] {
            let err = with(bad).unwrap_err();
            assert!(
                err.to_string().contains("auth.allowed_origins"),
                "{bad}: {err}"
            );
        }
    }
}
