//! `missivectl`: the operator's CLI for Missive data directories and
//! running clusters.
//!
//! # Layout
//!
//! - `main` — the command line (clap) and the dispatch.
//! - `render` — turning inspection results into a table for people or JSON
//!   for scripts (`--json`).
//! - `cluster` — the online commands (`cluster`, `shard`, `node`, `user`),
//!   through a node's admin HTTP API.
//! - `media` — `media list | inspect | verify | gc`, through the same API.
//! - `push` — `push dead | replay`: the push outbox's dead letters.
//! - `backup` — `backup` and `restore`: a cluster's data shards to a
//!   directory and into another cluster, through the admin API.
//!
//! The data-file commands (`log`, `sst`, `manifest`, `verify DIR`, `stats`,
//! `residue`) are offline and read-only: they open no lock and change
//! nothing, so they are safe on a live node's directory and on a copy.
//! Exit status: 0 when all is well, 1 when damage was found (the message
//! names the file and byte offset) or `residue` found the bytes, 2 when
//! the command could not run (or a cluster call failed).

mod backup;
mod cluster;
mod media;
mod push;
mod render;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use missive_engine::inspect;
use missive_engine::lsm::compaction::picker::PickerConfig;
use missive_engine::lsm::compaction::sim::{self, KeyPattern, SimConfig};

/// Inspect Missive data directories; look at and change a running cluster.
#[derive(Debug, Parser)]
#[command(name = "missivectl", version, about, long_about = None)]
struct Cli {
    /// Print JSON (one object) instead of a table.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The node log's segments and records.
    Log {
        #[command(subcommand)]
        what: LogCommand,
    },
    /// One table file: blocks, index, bloom filter, key range, compression.
    Sst {
        #[command(subcommand)]
        what: SstCommand,
    },
    /// The LSM manifest: its edits and the live tables they add up to.
    Manifest {
        #[command(subcommand)]
        what: ManifestCommand,
    },
    /// Check every checksum of every live file; exit 1 on damage.
    Verify {
        /// A data directory (with log/ and lsm/), a log directory, or an LSM directory.
        #[arg(required_unless_present_any = ["cluster", "backup"])]
        data_dir: Option<PathBuf>,
        /// Instead: compare every data shard's replicas of the running
        /// cluster at one log position (exit 1 naming any that differ).
        #[arg(long, conflicts_with_all = ["data_dir", "backup"])]
        cluster: bool,
        /// Instead: check a backup directory offline — its manifest, every
        /// shard's index or file, every chunk against its name — as a
        /// restore would before sending anything (exit 1 naming each
        /// damaged file).
        #[arg(long, value_name = "DIR", conflicts_with = "data_dir")]
        backup: Option<PathBuf>,
        /// With --cluster: a node's HTTP address.
        #[arg(long, env = "MISSIVE_URL", default_value = "http://127.0.0.1:8080")]
        url: String,
        /// With --cluster: the cluster's admin secret (auth.admin_secret).
        #[arg(
            long,
            env = "MISSIVE_ADMIN_SECRET",
            hide_env_values = true,
            required_if_eq("cluster", "true")
        )]
        admin_secret: Option<String>,
    },
    /// Files and bytes per level, amplification, log size.
    Stats {
        /// A data directory (with log/ and lsm/), a log directory, or an LSM directory.
        data_dir: PathBuf,
    },
    /// Search every file of a data directory for some bytes, raw and
    /// decoded (log records, table entries): the proof that an unsent
    /// message or an erased user is gone after `node scrub`. Exit 1 if
    /// found.
    Residue {
        /// A node's data directory.
        data_dir: PathBuf,
        /// The bytes, as UTF-8 text.
        #[arg(long, conflicts_with = "hex", required_unless_present = "hex")]
        text: Option<String>,
        /// The bytes, in hex.
        #[arg(long)]
        hex: Option<String>,
    },
    /// Run the compaction picker on a synthetic workload, without disk, and
    /// print the write and space amplification it would cause.
    CompactionSim(SimArgs),
    /// A running cluster, through any node's admin API.
    Cluster {
        #[command(subcommand)]
        what: ClusterCommand,
    },
    /// Change where one shard's replicas live (at its leader, wherever the
    /// call lands).
    Shard {
        #[command(subcommand)]
        what: ShardCommand,
    },
    /// Whole-node procedures.
    Node {
        #[command(subcommand)]
        what: NodeCommand,
    },
    /// Procedures on one user's data, cluster-wide.
    User {
        #[command(subcommand)]
        what: UserCommand,
    },
    /// The media store, cluster-wide.
    Media {
        #[command(subcommand)]
        what: MediaCommand,
    },
    /// Push notifications given up on (dead letters), cluster-wide.
    Push {
        #[command(subcommand)]
        what: PushCommand,
    },
    /// Copy every data shard of a running cluster to a new directory, each
    /// at one applied position, while it serves.
    Backup {
        #[command(flatten)]
        target: cluster::Target,
        /// The directory to write (created; must not hold a backup).
        #[arg(long)]
        out: PathBuf,
        /// An earlier backup (version 2) to make this one incremental
        /// against: the chunks it holds are hard-linked from it, not
        /// written. The new backup stays whole on its own (the base may be
        /// deleted later).
        #[arg(long)]
        base: Option<PathBuf>,
    },
    /// Put a backup into a running cluster of any node and shard count,
    /// which must be empty.
    Restore {
        #[command(flatten)]
        target: cluster::Target,
        /// The backup directory.
        #[arg(long)]
        from: PathBuf,
        /// Restore into a cluster that already holds data (the backup's
        /// records overwrite the same keys; or rerunning a restore that
        /// stopped part-way).
        #[arg(long)]
        allow_nonempty: bool,
    },
}

#[derive(Debug, Subcommand)]
enum UserCommand {
    /// Erase a user: their messages' bodies in every conversation
    /// (tombstoned), receipts, profile, devices, push targets and block
    /// list, on every replica; prints what was removed. Then run `node
    /// scrub` on every node so no older copy stays on disk, and `residue`
    /// to check.
    Erase {
        #[command(flatten)]
        target: cluster::Target,
        /// The user's id.
        user: u64,
    },
}

#[derive(Debug, Subcommand)]
enum ClusterCommand {
    /// Every shard: its slots, leader, voters and learners.
    Status {
        #[command(flatten)]
        target: cluster::Target,
    },
}

#[derive(Debug, Subcommand)]
enum ShardCommand {
    /// Add a voting replica on a node (it catches up as a learner first).
    Add {
        #[command(flatten)]
        at: ShardAt,
        /// The node to place it on.
        #[arg(long)]
        node: u64,
        /// That node's Raft transport address (its node.raft_listen).
        #[arg(long)]
        addr: String,
    },
    /// Remove a node's replica.
    Remove {
        #[command(flatten)]
        at: ShardAt,
        /// The node whose replica goes.
        #[arg(long)]
        node: u64,
    },
    /// Move a replica from one node to another in one change.
    Move {
        #[command(flatten)]
        at: ShardAt,
        #[command(flatten)]
        moving: MoveArgs,
    },
    /// Split the shard online: its slots from --at on (default: the middle
    /// of its run) go to a new shard on the same replicas. No data moves;
    /// writes for the moved slots pause for about one metadata write.
    Split {
        #[command(flatten)]
        at: ShardAt,
        /// The first slot the new shard takes.
        #[arg(long = "at-slot")]
        at_slot: Option<u16>,
    },
    /// Merge the shard online into the shard whose slots adjoin its own
    /// (both must have the same voters: move replicas first). No data
    /// moves; the merged shard's id is not reused.
    Merge {
        #[command(flatten)]
        at: ShardAt,
        /// The shard that takes the slots.
        #[arg(long)]
        into: u32,
    },
    /// Move replicas, one at a time, from the nodes holding the most to
    /// those holding the fewest, until every node in the cluster map holds
    /// within one of every other.
    Rebalance {
        #[command(flatten)]
        target: cluster::Target,
    },
    /// Check the shard's search index against its messages (exit 1 if
    /// they differ); with --repair, rebuild what differs through Raft.
    SearchIndex {
        #[command(flatten)]
        at: ShardAt,
        /// Rebuild the postings that are missing or stale.
        #[arg(long)]
        repair: bool,
    },
}

/// Which node to ask, about which shard.
#[derive(Debug, clap::Args)]
struct ShardAt {
    #[command(flatten)]
    target: cluster::Target,
    /// The shard (1-based; 0 is the metadata group).
    #[arg(long)]
    shard: u32,
}

/// Where replicas move from and to.
#[derive(Debug, clap::Args)]
struct MoveArgs {
    /// The node giving up its replica(s).
    #[arg(long)]
    from: u64,
    /// The node receiving them.
    #[arg(long)]
    to: u64,
    /// The receiving node's Raft transport address (its node.raft_listen).
    #[arg(long)]
    addr: String,
}

#[derive(Debug, Subcommand)]
enum MediaCommand {
    /// List the stored objects (hash, size, type, uploaders), in key order.
    List {
        #[command(flatten)]
        target: cluster::Target,
        /// At most this many [default: all].
        #[arg(long)]
        limit: Option<usize>,
    },
    /// Everything stored about one object: record, upload, thumbnails, and
    /// the messages that name it.
    Inspect {
        #[command(flatten)]
        target: cluster::Target,
        /// The media id (64 hex digits).
        id: String,
    },
    /// Re-read every object and check its bytes against its hash (and its
    /// thumbnails are there); exit 1 naming any damaged object.
    Verify {
        #[command(flatten)]
        target: cluster::Target,
    },
    /// Run the collector now: delete every object no live message names
    /// (stored and last sent more than the grace ago), and unfinished
    /// uploads past their time, from every replica.
    Gc {
        #[command(flatten)]
        target: cluster::Target,
        /// Keep unreferenced objects stored or sent within this many
        /// seconds [default: the server's media.unreferenced_grace_secs].
        #[arg(long)]
        grace_secs: Option<u64>,
    },
}

#[derive(Debug, Subcommand)]
enum PushCommand {
    /// List the dead letters: notifications not sent within the server's
    /// push.max_age_secs (id, conversation, devices, attempts, last error).
    Dead {
        #[command(flatten)]
        target: cluster::Target,
        /// At most this many [default: all].
        #[arg(long)]
        limit: Option<usize>,
    },
    /// Make dead letters pending again, due now (their attempts reset).
    Replay {
        #[command(flatten)]
        target: cluster::Target,
        /// Every dead letter.
        #[arg(long, conflicts_with = "jobs")]
        all: bool,
        /// Job ids (`user:useq`, as `push dead` lists them).
        #[arg(required_unless_present = "all")]
        jobs: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
enum NodeCommand {
    /// Move every replica a node holds onto another node, shard by shard,
    /// the metadata group included (then forget the drained node).
    Drain {
        #[command(flatten)]
        target: cluster::Target,
        #[command(flatten)]
        moving: MoveArgs,
    },
    /// Make what the node's replicas no longer hold (unsent messages,
    /// erased users) leave its disk: purge every group's log up to a fresh
    /// snapshot, roll the log, compact every table. This node only.
    Scrub {
        #[command(flatten)]
        target: cluster::Target,
    },
    /// Remove a drained node from the cluster map for good: its id can
    /// never rejoin and its old process is shut out. Ask another node.
    Forget {
        #[command(flatten)]
        target: cluster::Target,
        /// The node to remove.
        #[arg(long)]
        node: u64,
    },
}

#[derive(Debug, Subcommand)]
enum LogCommand {
    /// List segments (and with --records, every record).
    Dump {
        /// A data directory or a log directory.
        dir: PathBuf,
        /// List every record, not just a summary per segment.
        #[arg(long)]
        records: bool,
    },
}

#[derive(Debug, Subcommand)]
enum SstCommand {
    /// Describe one table file.
    Dump {
        /// The `.sst` file.
        file: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum ManifestCommand {
    /// Print the manifest's edits and live tables.
    Dump {
        /// A data directory or an LSM directory.
        dir: PathBuf,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Pattern {
    /// Every flush spans the whole key space (new messages in every conversation).
    Spread,
    /// Each flush covers fresh keys above the previous one.
    Sequential,
}

#[derive(Debug, clap::Args)]
struct SimArgs {
    /// Number of memtable flushes to simulate.
    #[arg(long, default_value_t = 1000)]
    flushes: u64,
    /// Size of each flushed table, MiB.
    #[arg(long, default_value_t = 64)]
    flush_mib: u64,
    /// Level-0 tables that trigger a compaction into level 1.
    #[arg(long, default_value_t = 4)]
    l0_trigger: usize,
    /// Target size of level 1, MiB.
    #[arg(long, default_value_t = 64)]
    level1_mib: u64,
    /// Each level's target is this many times the one above.
    #[arg(long, default_value_t = 10)]
    multiplier: u64,
    /// Compaction output table size, MiB.
    #[arg(long, default_value_t = 32)]
    target_mib: u64,
    /// Where flushes put their keys.
    #[arg(long, value_enum, default_value_t = Pattern::Spread)]
    pattern: Pattern,
    /// Fraction of compaction input shadowed by newer versions (0..1).
    #[arg(long, default_value_t = 0.0)]
    overwrite: f64,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(code) => code,
        Err(err) => {
            let damaged = err
                .downcast_ref::<missive_engine::Error>()
                .is_some_and(missive_engine::Error::is_corruption);
            if cli.json {
                println!(
                    "{}",
                    serde_json::json!({ "ok": false, "corruption": damaged, "error": format!("{err:#}") })
                );
            } else {
                eprintln!("error: {err:#}");
            }
            if damaged {
                ExitCode::from(1)
            } else {
                ExitCode::from(2)
            }
        }
    }
}

fn parse_hex(h: &str) -> anyhow::Result<Vec<u8>> {
    let h = h.trim();
    anyhow::ensure!(h.len() % 2 == 0, "--hex takes an even number of hex digits");
    (0..h.len())
        .step_by(2)
        .map(|i| {
            u8::from_str_radix(&h[i..i + 2], 16)
                .map_err(|_| anyhow::anyhow!("--hex: {:?} is not a hex byte", &h[i..i + 2]))
        })
        .collect()
}

fn run(cli: &Cli) -> anyhow::Result<ExitCode> {
    let mut code = ExitCode::SUCCESS;
    let out = match &cli.command {
        Command::Residue {
            data_dir,
            text,
            hex,
        } => {
            let needle = match (text, hex) {
                (Some(t), _) => t.as_bytes().to_vec(),
                (None, Some(h)) => parse_hex(h)?,
                (None, None) => anyhow::bail!("give --text or --hex"),
            };
            let s = missive_engine::residue::search(data_dir, &needle)?;
            if !s.found.is_empty() {
                code = ExitCode::from(1);
            }
            render::residue(data_dir, &s)
        }
        Command::Log {
            what: LogCommand::Dump { dir, records },
        } => {
            let layout = inspect::layout(dir)?;
            let log = layout
                .log
                .ok_or_else(|| anyhow::anyhow!("no log segments in {}", dir.display()))?;
            render::log(&inspect::dump_log(&log)?, *records)
        }
        Command::Sst {
            what: SstCommand::Dump { file },
        } => render::table(&inspect::dump_table(file)?),
        Command::Manifest {
            what: ManifestCommand::Dump { dir },
        } => {
            let layout = inspect::layout(dir)?;
            let lsm = layout
                .lsm
                .ok_or_else(|| anyhow::anyhow!("no LSM manifest (CURRENT) in {}", dir.display()))?;
            render::manifest(&inspect::dump_manifest(&lsm)?)
        }
        Command::Verify {
            cluster: true,
            url,
            admin_secret,
            ..
        } => {
            let target = cluster::Target {
                url: url.clone(),
                admin_secret: admin_secret.clone().unwrap_or_default(),
            };
            let (out, agree) = cluster::verify(&target)?;
            if !agree {
                code = ExitCode::from(1);
            }
            out
        }
        Command::Verify {
            data_dir: Some(data_dir),
            ..
        } => {
            let layout = inspect::layout(data_dir)?;
            if layout.log.is_none() && layout.lsm.is_none() {
                anyhow::bail!("{} holds neither a log nor an LSM", data_dir.display());
            }
            render::verify(&inspect::verify(data_dir)?)
        }
        Command::Verify {
            backup: Some(dir), ..
        } => {
            let (out, whole) = backup::verify(dir)?;
            if !whole {
                code = ExitCode::from(1);
            }
            out
        }
        Command::Verify { .. } => anyhow::bail!("give a data directory, --cluster or --backup"),
        Command::Stats { data_dir } => render::stats(&inspect::stats(data_dir)?),
        Command::CompactionSim(a) => {
            let mib = 1u64 << 20;
            let cfg = SimConfig {
                picker: PickerConfig {
                    l0_trigger: a.l0_trigger,
                    level1_bytes: a.level1_mib * mib,
                    multiplier: a.multiplier,
                },
                flush_bytes: a.flush_mib * mib,
                target_table_bytes: a.target_mib * mib,
                flushes: a.flushes,
                pattern: match a.pattern {
                    Pattern::Spread => KeyPattern::Spread,
                    Pattern::Sequential => KeyPattern::Sequential,
                },
                overwrite: a.overwrite,
            };
            render::sim(&cfg, &sim::simulate(&cfg))
        }
        Command::Cluster {
            what: ClusterCommand::Status { target },
        } => cluster::status(target)?,
        Command::Shard { what } => match what {
            ShardCommand::Add { at, node, addr } => cluster::shard(
                &at.target,
                at.shard,
                &cluster::Change::Add {
                    node: *node,
                    addr: addr.clone(),
                },
            )?,
            ShardCommand::Remove { at, node } => cluster::shard(
                &at.target,
                at.shard,
                &cluster::Change::Remove { node: *node },
            )?,
            ShardCommand::Move { at, moving } => cluster::shard(
                &at.target,
                at.shard,
                &cluster::Change::Move {
                    from: moving.from,
                    to: moving.to,
                    addr: moving.addr.clone(),
                },
            )?,
            ShardCommand::Rebalance { target } => cluster::rebalance(target)?,
            ShardCommand::Split { at, at_slot } => cluster::split(&at.target, at.shard, *at_slot)?,
            ShardCommand::Merge { at, into } => cluster::merge(&at.target, at.shard, *into)?,
            ShardCommand::SearchIndex { at, repair } => {
                let (out, clean) = cluster::search_index(&at.target, at.shard, *repair)?;
                if !clean {
                    code = ExitCode::from(1);
                }
                out
            }
        },
        Command::Node {
            what: NodeCommand::Drain { target, moving },
        } => cluster::drain(target, moving.from, moving.to, &moving.addr)?,
        Command::Node {
            what: NodeCommand::Forget { target, node },
        } => cluster::forget(target, *node)?,
        Command::Node {
            what: NodeCommand::Scrub { target },
        } => cluster::scrub(target)?,
        Command::User {
            what: UserCommand::Erase { target, user },
        } => cluster::erase_user(target, *user)?,
        Command::Media { what } => match what {
            MediaCommand::List { target, limit } => media::list(target, *limit)?,
            MediaCommand::Inspect { target, id } => media::inspect(target, id)?,
            MediaCommand::Verify { target } => {
                let (out, clean) = media::verify(target)?;
                if !clean {
                    code = ExitCode::from(1);
                }
                out
            }
            MediaCommand::Gc { target, grace_secs } => media::gc(target, *grace_secs)?,
        },
        Command::Push { what } => match what {
            PushCommand::Dead { target, limit } => push::dead(target, *limit)?,
            PushCommand::Replay { target, all, jobs } => push::replay(target, jobs, *all)?,
        },
        Command::Backup { target, out, base } => backup::backup(target, out, base.as_deref())?,
        Command::Restore {
            target,
            from,
            allow_nonempty,
        } => backup::restore(target, from, *allow_nonempty)?,
    };
    if cli.json {
        println!("{}", out.json);
    } else {
        print!("{}", out.text);
    }
    Ok(code)
}
