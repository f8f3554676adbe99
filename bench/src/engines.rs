//! The engines under test, behind one small trait.
//!
//! Missive runs as the standalone `Db` (log + LSM). RocksDB (feature
//! `rocksdb`) is configured to do the same work, as fairly as we know how:
//!
//! - WAL on; `sync = true` per durable batch (RocksDB's own group commit
//!   joins concurrent writers) and `sync = false` for `ingest`, like
//!   Missive's `SyncPolicy::Always` / `Never`;
//! - LZ4 on every level (bottommost included);
//! - a prefix bloom filter over the conversation: the same 19-byte message
//!   keys, with an 11-byte fixed prefix extractor (keyspace, slot,
//!   conversation) — the role the "8-byte prefix" plays for 16-byte
//!   keys — and 10 bits per key;
//! - the same block size (16 KiB), memtable size (64 MiB) and block cache
//!   size (LRU of the same bytes).

use std::path::{Path, PathBuf};

use anyhow::Result;
#[cfg(feature = "rocksdb")]
use missive_engine::keys::{conversation_prefix, message_key, prefix_successor};
use missive_engine::keys::{ConversationId, Timestamp, MESSAGE_KEY_LEN};

/// A batch of messages.
pub type Batch = [([u8; MESSAGE_KEY_LEN], Vec<u8>)];

/// What a benchmark needs from an engine.
pub trait Engine: Send + Sync {
    /// Writes a batch atomically (durable on return when opened with `sync`).
    fn write(&self, batch: &Batch) -> Result<()>;
    /// Flush and compact everything ("after ingest settles").
    fn settle(&self) -> Result<()>;
    /// The newest `n` messages of a conversation; returns how many.
    fn latest(&self, conv: ConversationId, n: usize) -> Result<usize>;
    /// `n` messages older than `ts`, newest first; returns how many.
    fn before(&self, conv: ConversationId, ts: Timestamp, n: usize) -> Result<usize>;
    /// Bytes of table files on disk.
    fn table_bytes(&self) -> Result<u64>;
    /// The shape of the tree (files per level), for the report.
    fn shape(&self) -> String;
    /// Runs to the end the background work the engine leaves for idle
    /// time (Missive: the LZ4-HC recompression of the deepest level;
    /// RocksDB: none — its settle already wrote its final compression).
    fn finish_idle_work(&self) -> Result<()> {
        Ok(())
    }
    /// Name prefixes of the threads doing the engine's background work
    /// (flushes, compactions), for `sustained`'s CPU accounting.
    fn background_threads(&self) -> &'static [&'static str];
    /// Block-cache misses so far, where the engine counts them cheaply
    /// (Missive); the read workloads then report misses per query by
    /// latency band.
    fn cache_misses(&self) -> Option<u64> {
        None
    }
}

/// Which engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    /// Missive's engine.
    Missive,
    /// RocksDB through the rocksdb crate (build with `--features rocksdb`).
    Rocksdb,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Missive => "missive",
            Kind::Rocksdb => "rocksdb",
        }
    }
}

/// How to open an engine.
#[derive(Debug, Clone)]
pub struct Config {
    pub dir: PathBuf,
    pub sync: bool,
    pub block_cache_bytes: u64,
    /// Missive's log I/O back end.
    pub log_io: missive_engine::io::IoBackend,
    /// Missive: zero-filled log segments (`LogOptions::zero_fill`).
    pub log_zero_fill: bool,
    /// Missive: how bottom-level tables are recompressed (`None`: fast
    /// LZ4 everywhere).
    pub bottom: Option<missive_engine::lsm::BottomCompression>,
    /// Whether RocksDB gets `bottom` too, for the like-for-like rows: its
    /// bottommost compression LZ4HC, or zstd with a dictionary of the same
    /// size trained on as many bytes, at the same level. Without it,
    /// RocksDB keeps the configuration (LZ4 on every level).
    #[cfg_attr(not(feature = "rocksdb"), allow(dead_code, reason = "RocksDB only"))]
    pub rocksdb_bottom_alike: bool,
    /// RocksDB's data block size (its default is 4 KiB; Missive's 16 KiB).
    #[cfg_attr(not(feature = "rocksdb"), allow(dead_code, reason = "RocksDB only"))]
    pub rocksdb_block_bytes: usize,
    /// Missive's `LsmOptions::subcompactions` (`None`: its default).
    pub subcompactions: Option<usize>,
    /// Missive's `LsmOptions::paced_write_rate`.
    pub paced_write_rate: Option<u64>,
    /// RocksDB's `max_subcompactions` (its default is 1).
    #[cfg_attr(not(feature = "rocksdb"), allow(dead_code, reason = "RocksDB only"))]
    pub rocksdb_subcompactions: u32,
    /// Missive's `LsmOptions::uncompressed_levels` (`None`: its default).
    pub uncompressed_levels: Option<usize>,
    /// RocksDB: this many levels from the top (level 0, then its base
    /// level, …) without compression (`compression_per_level`), the rest
    /// LZ4; 0 (RocksDB's default): LZ4 everywhere.
    #[cfg_attr(not(feature = "rocksdb"), allow(dead_code, reason = "RocksDB only"))]
    pub rocksdb_uncompressed_levels: usize,
}

pub const BLOCK_SIZE: usize = 16 << 10;
pub const MEMTABLE_BYTES: usize = 64 << 20;

pub fn open(kind: Kind, cfg: &Config) -> Result<Box<dyn Engine>> {
    match kind {
        Kind::Missive => Ok(Box::new(Missive::open(cfg)?)),
        #[cfg(feature = "rocksdb")]
        Kind::Rocksdb => Ok(Box::new(rocks::Rocks::open(cfg)?)),
        #[cfg(not(feature = "rocksdb"))]
        Kind::Rocksdb => anyhow::bail!(
            "this missive-bench was built without RocksDB: run bench/setup-rocksdb.sh, \
             or build with `--features rocksdb`"
        ),
    }
}

fn dir_bytes(dir: &Path, ext: &str) -> Result<u64> {
    let mut total = 0;
    if !dir.exists() {
        return Ok(0);
    }
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        if e.path().extension().is_some_and(|x| x == ext) {
            total += e.metadata()?.len();
        }
    }
    Ok(total)
}

struct Missive {
    db: missive_engine::lsm::Db,
    dir: PathBuf,
}

impl Missive {
    fn open(cfg: &Config) -> Result<Self> {
        use missive_engine::log::{LogOptions, SyncPolicy};
        use missive_engine::lsm::{Db, DbOptions, LsmOptions};
        let db = Db::open(
            &cfg.dir,
            DbOptions {
                log: LogOptions {
                    sync: if cfg.sync {
                        SyncPolicy::Always
                    } else {
                        SyncPolicy::Never
                    },
                    io: cfg.log_io,
                    zero_fill: cfg.log_zero_fill,
                    ..LogOptions::default()
                },
                lsm: LsmOptions {
                    memtable_bytes: MEMTABLE_BYTES,
                    block_size: BLOCK_SIZE,
                    block_cache_bytes: cfg.block_cache_bytes,
                    bottom_compression: cfg.bottom,
                    subcompactions: cfg
                        .subcompactions
                        .unwrap_or(LsmOptions::default().subcompactions),
                    uncompressed_levels: cfg
                        .uncompressed_levels
                        .unwrap_or(LsmOptions::default().uncompressed_levels),
                    paced_write_rate: cfg.paced_write_rate,
                    ..LsmOptions::default()
                },
            },
        )?;
        Ok(Missive {
            db,
            dir: cfg.dir.clone(),
        })
    }
}

impl Engine for Missive {
    fn cache_misses(&self) -> Option<u64> {
        Some(self.db.lsm().block_cache_counts().1)
    }
    fn write(&self, batch: &Batch) -> Result<()> {
        let mut b = missive_engine::lsm::WriteBatch::with_capacity(batch.len() * 128);
        for (k, v) in batch {
            b.put(k, v);
        }
        self.db.write(&b)?;
        Ok(())
    }

    fn settle(&self) -> Result<()> {
        self.db.compact_full()?;
        Ok(())
    }

    fn latest(&self, conv: ConversationId, n: usize) -> Result<usize> {
        Ok(self.db.latest(conv, n)?.len())
    }

    fn before(&self, conv: ConversationId, ts: Timestamp, n: usize) -> Result<usize> {
        Ok(self.db.before(conv, ts, n)?.len())
    }

    fn table_bytes(&self) -> Result<u64> {
        dir_bytes(&self.dir.join("lsm/tables"), "sst")
    }

    fn shape(&self) -> String {
        let s = self.db.stats();
        format!(
            "files/level {:?}; {} stalls, {} slowdowns ({:.1} s)",
            s.files_per_level,
            s.stalls,
            s.slowdowns,
            s.slowdown_micros as f64 / 1e6
        )
    }

    fn background_threads(&self) -> &'static [&'static str] {
        &["missive-lsm-"]
    }

    fn finish_idle_work(&self) -> Result<()> {
        self.db.lsm().recompress_all()?;
        Ok(())
    }
}

#[cfg(feature = "rocksdb")]
mod rocks {
    use super::*;
    use rocksdb::{
        BlockBasedOptions, Cache, DBCompressionType, Direction, IteratorMode, Options, ReadOptions,
        SliceTransform, WriteBatch, WriteOptions, DB,
    };

    pub struct Rocks {
        db: DB,
        sync: bool,
        dir: PathBuf,
        _cache: Cache,
    }

    impl Rocks {
        pub fn open(cfg: &Config) -> Result<Self> {
            let mut opts = Options::default();
            opts.create_if_missing(true);
            opts.set_compression_type(DBCompressionType::Lz4);
            use missive_engine::lsm::BottomCompression;
            match cfg.bottom.filter(|_| cfg.rocksdb_bottom_alike) {
                Some(BottomCompression::Lz4Hc { level, .. }) => {
                    opts.set_bottommost_compression_type(DBCompressionType::Lz4hc);
                    // window bits and strategy are zlib's; ignored by LZ4HC.
                    opts.set_bottommost_compression_options(-14, level, 0, 0, true);
                }
                Some(BottomCompression::Zstd { level, .. }) => {
                    // Missive's dictionary: 16 KiB per table, trained on
                    // 100× that (`table::codec`); RocksDB trains one per
                    // bottommost compaction output file likewise.
                    opts.set_bottommost_compression_type(DBCompressionType::Zstd);
                    opts.set_bottommost_compression_options(-14, level, 0, 16 << 10, true);
                    opts.set_bottommost_zstd_max_train_bytes(100 * (16 << 10), true);
                }
                _ => opts.set_bottommost_compression_type(DBCompressionType::Lz4),
            }
            if cfg.rocksdb_uncompressed_levels > 0 {
                // With dynamic level sizes (RocksDB's default), entry 1
                // applies to the base level, the one level 0 compacts into.
                let per_level: Vec<DBCompressionType> = (0..7)
                    .map(|l| {
                        if l < cfg.rocksdb_uncompressed_levels {
                            DBCompressionType::None
                        } else {
                            DBCompressionType::Lz4
                        }
                    })
                    .collect();
                opts.set_compression_per_level(&per_level);
            }
            opts.set_write_buffer_size(MEMTABLE_BYTES);
            opts.set_max_subcompactions(cfg.rocksdb_subcompactions);
            opts.set_prefix_extractor(SliceTransform::create_fixed_prefix(
                missive_engine::keys::CONVERSATION_PREFIX_LEN,
            ));
            let mut table = BlockBasedOptions::default();
            table.set_block_size(cfg.rocksdb_block_bytes);
            table.set_bloom_filter(10.0, false);
            let cache = Cache::new_lru_cache(cfg.block_cache_bytes as usize);
            table.set_block_cache(&cache);
            opts.set_block_based_table_factory(&table);
            let db = DB::open(&opts, &cfg.dir)?;
            Ok(Rocks {
                db,
                sync: cfg.sync,
                dir: cfg.dir.clone(),
                _cache: cache,
            })
        }

        fn scan_from(&self, start: &[u8], conv: ConversationId, n: usize) -> Result<usize> {
            let prefix = conversation_prefix(conv);
            let mut ro = ReadOptions::default();
            ro.set_prefix_same_as_start(true);
            if let Some(end) = prefix_successor(&prefix) {
                ro.set_iterate_upper_bound(end);
            }
            let mut count = 0;
            for item in self
                .db
                .iterator_opt(IteratorMode::From(start, Direction::Forward), ro)
            {
                let (_, v) = item?;
                std::hint::black_box(v.len());
                count += 1;
                if count == n {
                    break;
                }
            }
            Ok(count)
        }
    }

    impl Engine for Rocks {
        fn write(&self, batch: &Batch) -> Result<()> {
            let mut b = WriteBatch::default();
            for (k, v) in batch {
                b.put(k, v);
            }
            let mut wo = WriteOptions::default();
            wo.set_sync(self.sync);
            self.db.write_opt(b, &wo)?;
            Ok(())
        }

        fn settle(&self) -> Result<()> {
            self.db.flush()?;
            self.db.compact_range(None::<&[u8]>, None::<&[u8]>);
            Ok(())
        }

        fn latest(&self, conv: ConversationId, n: usize) -> Result<usize> {
            self.scan_from(&conversation_prefix(conv), conv, n)
        }

        fn before(&self, conv: ConversationId, ts: Timestamp, n: usize) -> Result<usize> {
            let Some(older) = ts.0.checked_sub(1) else {
                return Ok(0);
            };
            self.scan_from(&message_key(conv, Timestamp(older)), conv, n)
        }

        fn table_bytes(&self) -> Result<u64> {
            dir_bytes(&self.dir, "sst")
        }

        fn shape(&self) -> String {
            let levels: Vec<String> = (0..7)
                .map(|l| {
                    self.db
                        .property_value(format!("rocksdb.num-files-at-level{l}").as_str())
                        .ok()
                        .flatten()
                        .unwrap_or_default()
                })
                .collect();
            format!("files/level [{}]", levels.join(", "))
        }

        fn background_threads(&self) -> &'static [&'static str] {
            // RocksDB names its pool threads rocksdb:low / :high / :bottom.
            &["rocksdb:"]
        }
    }
}
