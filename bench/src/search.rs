//! `missive-bench search`: the search index's cost and speed, against
//! PostgreSQL full-text search over the same messages.
//!
//! The workload is the engine workload's conversations (Zipf 1.1 over
//! `--conversations`) and its vocabulary: each message is 8–14 words of
//! it, in a group conversation of two users (user `r mod U` and a second
//! one mixed from `r`), so every user is in a handful of conversations,
//! some of them busy.
//!
//! Phases, in one run:
//! 1. **ingest**, twice, on fresh LSMs: the messages go through the chat
//!    apply rules (`ChatApp::apply` over the LSM, 64 commands per batch,
//!    one atomic write batch each, as a shard's state machine does) as
//!    `Send` (opaque bytes: not indexed) and as `SendText` (indexed).
//!    Reported: messages/s of the apply loop and of the apply loop plus
//!    settle (flush and full compaction), and the on/off ratio. `--rounds
//!    2` runs off, on, on, off.
//! 2. **space**: table bytes per message of each after settle; the
//!    difference is the index's bytes per message.
//! 3. **queries**, on the indexed store: `--queries` each of 1-term,
//!    2-term and prefix (3 letters) queries, limit 20, each scoped to one
//!    user's conversations (users drawn as the conversations are, by
//!    Zipf), timed around one shard's query executor
//!    (`search::query::search`: what a node runs per shard, before the
//!    scatter's round trip).
//! 4. **PostgreSQL** (`--features postgres`; the Debian `postgresql`
//!    package, see `bench/setup-postgres.sh`): a private server started
//!    here (fsync off, as Missive's ingest here), the same rows COPYed in,
//!    then a GIN index over `to_tsvector('simple', body)` and a btree over
//!    (conv, ts); the same queries as `conv = ANY($1) AND … @@
//!    to_tsquery('simple', $2) ORDER BY ts DESC, conv DESC LIMIT 20`,
//!    alternating with Missive's query by query, and their answers
//!    compared (every mismatch is counted and reported).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use missive_chat::command::{
    Command, ConversationKind, DeviceId, MessageKind, NewMessage, Outcome, SendMessage, UserId,
};
use missive_chat::search::query::{search, Filters, ShardSearch};
use missive_chat::search::tokenize;
use missive_chat::ChatApp;
use missive_engine::keys::ConversationId;
use missive_engine::lsm::{Lsm, LsmOptions, WriteBatch};
use missive_raft::app::App;
use missive_raft::storage::record_source::Records;
use missive_raft::ShardId;

use crate::report::{self, Recorder, Row};
use crate::workload::{conversation_id, Zipf, TS0, WORDS, ZIPF_S};

/// Command-line arguments.
#[derive(Debug, clap::Args)]
pub struct SearchArgs {
    /// Messages.
    #[arg(long, default_value_t = 5_000_000)]
    pub messages: usize,
    /// Conversations they go to (Zipf 1.1).
    #[arg(long, default_value_t = 100_000)]
    pub conversations: usize,
    /// Queries of each kind.
    #[arg(long, default_value_t = 1000)]
    pub queries: usize,
    /// Ingest rounds: 1 (off, on) or 2 (off, on, on, off).
    #[arg(long, default_value_t = 1)]
    pub rounds: usize,
    /// Workload seed.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Where the stores go (a fresh directory inside; default: the
    /// system's temporary directory).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// PostgreSQL's binaries (initdb, postgres).
    #[arg(long, default_value = "/usr/lib/postgresql/15/bin")]
    pub pg_bin: PathBuf,
    /// Skip PostgreSQL even when built with it.
    #[arg(long)]
    pub no_postgres: bool,
    /// Print JSON lines instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Commands per apply batch (the engine workload's batch).
const BATCH: usize = 64;
/// Hits per query.
const LIMIT: u32 = 20;

/// One generated message.
struct Msg {
    rank: usize,
    sender: u64,
    body: String,
}

/// The workload: messages, and who is in which conversation.
struct Chat {
    msgs: Vec<Msg>,
    members: Vec<(u64, u64)>,
    /// Each user's conversations.
    convs_of: BTreeMap<u64, Vec<ConversationId>>,
    zipf: Zipf,
}

fn members(rank: usize, users: u64) -> (u64, u64) {
    let a = rank as u64 % users;
    let mut b = (rank as u64).wrapping_mul(7919).wrapping_add(1) % users;
    if b == a {
        b = (a + 1) % users;
    }
    (a + 1, b + 1)
}

fn chat(args: &SearchArgs) -> Chat {
    let users = (args.conversations as u64 / 4).max(2);
    let zipf = Zipf::new(args.conversations, ZIPF_S);
    let mut rng = fastrand::Rng::with_seed(args.seed);
    let members: Vec<(u64, u64)> = (0..args.conversations).map(|r| members(r, users)).collect();
    let mut convs_of: BTreeMap<u64, Vec<ConversationId>> = BTreeMap::new();
    for (r, (a, b)) in members.iter().enumerate() {
        convs_of.entry(*a).or_default().push(conversation_id(r));
        convs_of.entry(*b).or_default().push(conversation_id(r));
    }
    let msgs = (0..args.messages)
        .map(|_| {
            let rank = zipf.sample(&mut rng);
            let (a, b) = members[rank];
            let n = 8 + rng.usize(..=6);
            let words: Vec<&str> = (0..n).map(|_| WORDS[rng.usize(..WORDS.len())]).collect();
            Msg {
                rank,
                sender: if rng.bool() { a } else { b },
                body: words.join(" "),
            }
        })
        .collect();
    Chat {
        msgs,
        members,
        convs_of,
        zipf,
    }
}

/// A store being filled through the chat apply rules.
struct Store {
    lsm: Lsm,
    app: ChatApp,
    dir: PathBuf,
}

impl Store {
    fn open(dir: PathBuf) -> Result<Store> {
        let app = ChatApp::new();
        let lsm = Lsm::open(
            &dir,
            LsmOptions {
                retention: app.retention(),
                ..LsmOptions::default()
            },
        )?;
        Ok(Store { lsm, app, dir })
    }

    /// Applies `cmds` as one state-machine call and one write batch; the
    /// outcomes.
    fn apply(&self, stamp: u64, cmds: &[Command]) -> Result<Vec<Outcome>> {
        let mut fx = Default::default();
        let mut rec = Records::over(&self.lsm);
        let mut out = Vec::with_capacity(cmds.len());
        for c in cmds {
            out.push(self.app.apply(ShardId(1), &mut rec, stamp, c, &mut fx)?);
        }
        let mut b = WriteBatch::new();
        for (k, v) in rec.into_writes() {
            match v {
                Some(v) => b.put(k, v),
                None => b.delete(k),
            };
        }
        self.lsm.apply(&b, None)?;
        Ok(out)
    }

    /// Bytes of the live tables.
    fn table_bytes(&self) -> Result<u64> {
        let mut n = 0;
        for e in std::fs::read_dir(self.dir.join("tables"))? {
            n += e?.metadata()?.len();
        }
        Ok(n)
    }
}

/// What one ingest measured.
struct Ingested {
    store: Store,
    apply_secs: f64,
    settle_secs: f64,
    /// Each message's (conversation, ts), in workload order.
    placed: Vec<(ConversationId, u64)>,
}

fn ingest(chat: &Chat, dir: &Path, text: bool) -> Result<Ingested> {
    let store = Store::open(dir.to_path_buf())?;
    // The conversations exist before the clock starts.
    for (chunk_no, chunk) in chat.members.chunks(BATCH).enumerate() {
        let cmds: Vec<Command> = chunk
            .iter()
            .enumerate()
            .map(|(i, (a, b))| Command::CreateConversation {
                conv: conversation_id(chunk_no * BATCH + i),
                kind: ConversationKind::Group,
                name: String::new(),
                creator: UserId(*a),
                members: vec![UserId(*a), UserId(*b)],
                max_members: 10,
            })
            .collect();
        store.apply(TS0, &cmds)?;
    }
    let mut placed = Vec::with_capacity(chat.msgs.len());
    let started = Instant::now();
    for (n, chunk) in chat.msgs.chunks(BATCH).enumerate() {
        let cmds: Vec<Command> = chunk
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let s = SendMessage {
                    message: NewMessage {
                        conv: conversation_id(m.rank),
                        sender: UserId(m.sender),
                        device: DeviceId(1),
                        client_msg_id: format!("m{}", n * BATCH + i),
                        kind: MessageKind::Text,
                        body: m.body.as_bytes().to_vec(),
                        expires_at: None,
                        reply_to: None,
                    },
                    mentions: Vec::new(),
                    default_retention_micros: None,
                };
                if text {
                    Command::SendText(s)
                } else {
                    Command::Send(s)
                }
            })
            .collect();
        let stamp = TS0 + 1_000 + n as u64 * 1_000;
        for (o, m) in store.apply(stamp, &cmds)?.into_iter().zip(chunk) {
            match o {
                Outcome::Sent { ts, .. } => placed.push((conversation_id(m.rank), ts)),
                other => bail!("a send was refused: {other:?}"),
            }
        }
    }
    let apply_secs = started.elapsed().as_secs_f64();
    let settling = Instant::now();
    store.lsm.flush()?;
    store.lsm.compact_full()?;
    let settle_secs = settling.elapsed().as_secs_f64();
    Ok(Ingested {
        store,
        apply_secs,
        settle_secs,
        placed,
    })
}

/// A query of the run: who, what, and the text of each engine.
struct Query {
    kind: &'static str,
    user: u64,
    /// Missive's query text.
    text: String,
    /// PostgreSQL's tsquery.
    tsquery: String,
}

fn queries(chat: &Chat, args: &SearchArgs) -> Vec<Query> {
    let mut rng = fastrand::Rng::with_seed(args.seed ^ 0x5EA2C4);
    let mut out = Vec::new();
    let word = |rng: &mut fastrand::Rng| WORDS[rng.usize(..WORDS.len())];
    for kind in ["1-term", "2-term", "prefix"] {
        for _ in 0..args.queries {
            let rank = chat.zipf.sample(&mut rng);
            let (a, b) = chat.members[rank];
            let user = if rng.bool() { a } else { b };
            let (text, tsquery) = match kind {
                "1-term" => {
                    let w = word(&mut rng);
                    (format!("{w} "), w.to_string())
                }
                "2-term" => {
                    let (w1, mut w2) = (word(&mut rng), word(&mut rng));
                    while w2 == w1 {
                        w2 = word(&mut rng);
                    }
                    (format!("{w1} {w2} "), format!("{w1} & {w2}"))
                }
                _ => {
                    let w = word(&mut rng);
                    let p: String = w.chars().take(3).collect();
                    (p.clone(), format!("{p}:*"))
                }
            };
            out.push(Query {
                kind,
                user,
                text,
                tsquery,
            });
        }
    }
    out
}

/// Missive's answer to `q`: (conv, ts) newest first, and how long it took.
fn missive_query(lsm: &Lsm, chat: &Chat, q: &Query) -> Result<(Vec<(u64, u64)>, Duration)> {
    let s = ShardSearch {
        user: UserId(q.user),
        convs: chat.convs_of.get(&q.user).cloned().unwrap_or_default(),
        terms: tokenize::query(&q.text),
        filters: Filters::default(),
        after: None,
        limit: LIMIT,
    };
    let t = Instant::now();
    let hits = search(lsm, &s)?;
    let took = t.elapsed();
    Ok((hits.iter().map(|h| (h.conv.0, h.ts)).collect(), took))
}

pub fn run(args: &SearchArgs) -> Result<()> {
    if args.rounds == 0 || args.rounds > 2 {
        bail!("--rounds is 1 or 2");
    }
    let base = tempfile::Builder::new()
        .prefix("missive-bench-search")
        .tempdir_in(args.dir.clone().unwrap_or_else(std::env::temp_dir))?;
    eprintln!("generating {} messages…", args.messages);
    let chat = chat(args);
    let mut rows = Vec::new();
    let order: &[bool] = if args.rounds == 2 {
        &[false, true, true, false]
    } else {
        &[false, true]
    };
    let mut apply = [Vec::new(), Vec::new()];
    let mut total = [Vec::new(), Vec::new()];
    let mut bytes = [0u64; 2];
    let mut indexed = None;
    for (i, &text) in order.iter().enumerate() {
        let name = if text { "index on" } else { "index off" };
        eprintln!("ingest {name}…");
        let got = ingest(&chat, &base.path().join(format!("ingest{i}")), text)?;
        let n = chat.msgs.len() as f64;
        apply[usize::from(text)].push(n / got.apply_secs);
        total[usize::from(text)].push(n / (got.apply_secs + got.settle_secs));
        let st = got.store.lsm.stats();
        let mut row = Row::single(
            &format!("missive {name}"),
            "ingest",
            "msgs/s",
            n / got.apply_secs,
        );
        row.note = format!(
            "{:.1} memtable inserts/msg, {:.1} % placed by a full search, {} stalls",
            st.memtable_inserts as f64 / n,
            100.0 * st.memtable_full_searches as f64 / st.memtable_inserts.max(1) as f64,
            st.stalls
        );
        rows.push(row);
        rows.push(Row::single(
            &format!("missive {name}"),
            "ingest+settle",
            "msgs/s",
            n / (got.apply_secs + got.settle_secs),
        ));
        bytes[usize::from(text)] = got.store.table_bytes()?;
        if text {
            indexed = Some(got);
        }
    }
    let mean = |v: &Vec<f64>| v.iter().sum::<f64>() / v.len() as f64;
    let n = chat.msgs.len() as f64;
    let mut ratio = |what: &str, v: &[Vec<f64>; 2]| {
        let on_off = mean(&v[1]) / mean(&v[0]);
        let mut r = Row::single("missive", what, "on/off", on_off);
        r.note = format!("{on_off:.3}; target ≥ 0.6");
        rows.push(r);
    };
    ratio("ingest", &apply);
    ratio("ingest+settle", &total);
    rows.push(Row::single(
        "missive index off",
        "space",
        "table B/msg",
        bytes[0] as f64 / n,
    ));
    rows.push(Row::single(
        "missive index on",
        "space",
        "table B/msg",
        bytes[1] as f64 / n,
    ));
    rows.push(Row::single(
        "missive",
        "space",
        "index B/msg",
        (bytes[1] as f64 - bytes[0] as f64) / n,
    ));
    let Some(indexed) = indexed else {
        bail!("no indexed run");
    };
    let qs = queries(&chat, args);
    #[cfg(feature = "postgres")]
    let mut pg = if args.no_postgres {
        None
    } else {
        eprintln!(
            "PostgreSQL: starting, loading {} rows, indexing…",
            chat.msgs.len()
        );
        let mut pg = pg::Pg::start(&args.pg_bin, &base.path().join("pg"))?;
        let loaded = pg.load(&chat, &indexed.placed)?;
        rows.push(Row::single(
            "postgres",
            "ingest (COPY)",
            "msgs/s",
            n / loaded.copy_secs,
        ));
        rows.push(Row::single(
            "postgres",
            "ingest+index",
            "msgs/s",
            n / (loaded.copy_secs + loaded.index_secs),
        ));
        rows.push(Row::single(
            "postgres",
            "space",
            "table B/msg",
            loaded.table_bytes as f64 / n,
        ));
        rows.push(Row::single(
            "postgres",
            "space",
            "index B/msg",
            loaded.index_bytes as f64 / n,
        ));
        rows.push(Row::single(
            "postgres",
            "space",
            "(conv, ts) btree B/msg",
            loaded.btree_bytes as f64 / n,
        ));
        Some(pg)
    };
    #[cfg(not(feature = "postgres"))]
    let _ = &indexed.placed;
    eprintln!("queries…");
    #[allow(unused_mut, reason = "written with --features postgres")]
    let mut mismatches: BTreeMap<&str, usize> = BTreeMap::new();
    let mut recs: BTreeMap<(&str, &str), Recorder> = BTreeMap::new();
    let mut hits: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, q) in qs.iter().enumerate() {
        // Alternate which engine goes first, query by query.
        let missive_first = i % 2 == 0;
        let mut ours = None;
        if missive_first {
            ours = Some(missive_query(&indexed.store.lsm, &chat, q)?);
        }
        #[cfg(feature = "postgres")]
        if let Some(pg) = pg.as_mut() {
            let convs = chat.convs_of.get(&q.user).cloned().unwrap_or_default();
            let (theirs, took) = pg.query(&convs, &q.tsquery)?;
            recs.entry(("postgres", q.kind))
                .or_insert_with(Recorder::new)
                .record(took);
            if ours.is_none() {
                ours = Some(missive_query(&indexed.store.lsm, &chat, q)?);
            }
            if ours.as_ref().map(|o| &o.0) != Some(&theirs) {
                *mismatches.entry(q.kind).or_default() += 1;
            }
        }
        let (got, took) = match ours {
            Some(o) => o,
            None => missive_query(&indexed.store.lsm, &chat, q)?,
        };
        *hits.entry(q.kind).or_default() += got.len();
        recs.entry(("missive", q.kind))
            .or_insert_with(Recorder::new)
            .record(took);
        let _ = &q.tsquery;
    }
    for ((engine, kind), r) in &recs {
        let mut row = r.row(
            engine,
            &format!("query {kind}"),
            "queries",
            args.queries as f64,
        );
        if *engine == "missive" {
            let per_query = hits.get(kind).copied().unwrap_or(0) as f64 / args.queries as f64;
            row.note = if recs.contains_key(&("postgres", *kind)) {
                format!(
                    "{per_query:.1} hits/query; {} answers differ from postgres",
                    mismatches.get(kind).copied().unwrap_or(0)
                )
            } else {
                format!("{per_query:.1} hits/query; not compared (no postgres run)")
            };
        }
        rows.push(row);
    }
    for kind in ["1-term", "2-term", "prefix"] {
        if let (Some(m), Some(p)) = (recs.get(&("missive", kind)), recs.get(&("postgres", kind))) {
            let (m, p) = (m.row("", "", "", 0.0), p.row("", "", "", 0.0));
            let mut r = Row::single(
                "missive/postgres",
                &format!("query {kind} p99"),
                "ratio",
                m.p99_us / p.p99_us,
            );
            r.note = format!(
                "p99 ratio {:.4}, p50 ratio {:.4}; target p99 ≤ 0.5",
                m.p99_us / p.p99_us,
                m.p50_us / p.p50_us
            );
            rows.push(r);
        }
    }
    if args.json {
        for r in &rows {
            println!("{}", r.json());
        }
    } else {
        report::table(&rows);
    }
    Ok(())
}

#[cfg(feature = "postgres")]
mod pg {
    //! A private PostgreSQL server for the anchor.

    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    use std::path::Path;
    use std::process::{Child, Command};
    use std::time::{Duration, Instant};

    use anyhow::{bail, Context, Result};
    use missive_engine::keys::ConversationId;

    use super::Chat;

    /// u64 ids into bigint, order kept (the sign bit flipped).
    fn id(v: u64) -> i64 {
        (v ^ (1 << 63)) as i64
    }

    fn unid(v: i64) -> u64 {
        (v as u64) ^ (1 << 63)
    }

    pub struct Pg {
        child: Child,
        client: postgres::Client,
        stmt: postgres::Statement,
    }

    pub struct Loaded {
        pub copy_secs: f64,
        pub index_secs: f64,
        pub table_bytes: u64,
        pub index_bytes: u64,
        pub btree_bytes: u64,
    }

    /// Runs as the `postgres` user when this process is root (PostgreSQL
    /// refuses to run as root).
    fn as_pg_user(cmd: &mut Command) -> Result<()> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Ok(());
        }
        let out = Command::new("id").args(["-u", "postgres"]).output()?;
        let uid: u32 = String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .context("running as root needs a `postgres` user (the Debian package makes one)")?;
        let out = Command::new("id").args(["-g", "postgres"]).output()?;
        let gid: u32 = String::from_utf8_lossy(&out.stdout).trim().parse()?;
        cmd.uid(uid).gid(gid);
        Ok(())
    }

    fn chown_to_pg(p: &Path) -> Result<()> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            let ok = Command::new("chown")
                .arg("postgres:postgres")
                .arg(p)
                .status()?;
            if !ok.success() {
                bail!("chown {} failed", p.display());
            }
        }
        Ok(())
    }

    impl Pg {
        pub fn start(bin: &Path, dir: &Path) -> Result<Pg> {
            std::fs::create_dir_all(dir)?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
            chown_to_pg(dir)?;
            let data = dir.join("data");
            let mut init = Command::new(bin.join("initdb"));
            init.args(["-D"]).arg(&data).args([
                "-U",
                "bench",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
            ]);
            as_pg_user(&mut init)?;
            let out = init.output().with_context(|| {
                format!(
                    "running {}/initdb (bench/setup-postgres.sh installs it)",
                    bin.display()
                )
            })?;
            if !out.status.success() {
                bail!("initdb: {}", String::from_utf8_lossy(&out.stderr));
            }
            let port = std::net::TcpListener::bind("127.0.0.1:0")?
                .local_addr()?
                .port();
            let mut srv = Command::new(bin.join("postgres"));
            srv.arg("-D")
                .arg(&data)
                .args(["-p", &port.to_string(), "-k"])
                .arg(dir)
                .args([
                    "-c",
                    "listen_addresses=127.0.0.1",
                    "-c",
                    "fsync=off",
                    "-c",
                    "synchronous_commit=off",
                    "-c",
                    "full_page_writes=off",
                    "-c",
                    "shared_buffers=1GB",
                    "-c",
                    "maintenance_work_mem=1GB",
                    "-c",
                    "work_mem=64MB",
                    "-c",
                    "max_wal_size=8GB",
                    "-c",
                    "jit=off",
                ])
                .stdout(std::process::Stdio::null())
                .stderr(std::fs::File::create(dir.join("log"))?);
            as_pg_user(&mut srv)?;
            let child = srv.spawn()?;
            let deadline = Instant::now() + Duration::from_secs(60);
            let url = format!("host=127.0.0.1 port={port} user=bench dbname=postgres");
            let client = loop {
                match postgres::Client::connect(&url, postgres::NoTls) {
                    Ok(c) => break c,
                    Err(e) if Instant::now() > deadline => bail!("PostgreSQL did not start: {e}"),
                    Err(_) => std::thread::sleep(Duration::from_millis(100)),
                }
            };
            let mut client = client;
            client.batch_execute(
                "CREATE TABLE m (conv bigint NOT NULL, ts bigint NOT NULL, sender bigint NOT NULL, body text NOT NULL)",
            )?;
            let stmt = client.prepare(
                "SELECT conv, ts FROM m WHERE conv = ANY($1) \
                 AND to_tsvector('simple', body) @@ to_tsquery('simple', $2) \
                 ORDER BY ts DESC, conv DESC LIMIT 20",
            )?;
            Ok(Pg {
                child,
                client,
                stmt,
            })
        }

        pub fn load(&mut self, chat: &Chat, placed: &[(ConversationId, u64)]) -> Result<Loaded> {
            use std::io::Write as _;
            if chat.msgs.len() != placed.len() {
                bail!("{} messages, {} placed", chat.msgs.len(), placed.len());
            }
            let t = Instant::now();
            let mut w = self
                .client
                .copy_in("COPY m (conv, ts, sender, body) FROM STDIN")?;
            let mut buf = Vec::with_capacity(1 << 20);
            for (m, (conv, ts)) in chat.msgs.iter().zip(placed) {
                // Bodies are words and spaces: nothing COPY's text format
                // would need escaped.
                writeln!(buf, "{}\t{}\t{}\t{}", id(conv.0), ts, m.sender, m.body)?;
                if buf.len() >= 1 << 20 {
                    w.write_all(&buf)?;
                    buf.clear();
                }
            }
            w.write_all(&buf)?;
            w.finish()?;
            let copy_secs = t.elapsed().as_secs_f64();
            let t = Instant::now();
            self.client.batch_execute(
                "CREATE INDEX m_tsv ON m USING gin (to_tsvector('simple', body)); \
                 CREATE INDEX m_conv_ts ON m (conv, ts DESC);",
            )?;
            // Not in the batch: VACUUM cannot run inside its transaction.
            self.client.batch_execute("VACUUM ANALYZE m")?;
            let index_secs = t.elapsed().as_secs_f64();
            let row = self.client.query_one(
                "SELECT pg_table_size('m'), pg_relation_size('m_tsv'), pg_relation_size('m_conv_ts')",
                &[],
            )?;
            let (table, gin, btree): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
            Ok(Loaded {
                copy_secs,
                index_secs,
                table_bytes: table as u64,
                index_bytes: gin as u64,
                btree_bytes: btree as u64,
            })
        }

        pub fn query(
            &mut self,
            convs: &[ConversationId],
            tsquery: &str,
        ) -> Result<(Vec<(u64, u64)>, Duration)> {
            let ids: Vec<i64> = convs.iter().map(|c| id(c.0)).collect();
            let t = Instant::now();
            let rows = self.client.query(&self.stmt, &[&ids, &tsquery])?;
            let took = t.elapsed();
            Ok((
                rows.iter()
                    .map(|r| (unid(r.get::<_, i64>(0)), r.get::<_, i64>(1) as u64))
                    .collect(),
                took,
            ))
        }
    }

    impl Drop for Pg {
        fn drop(&mut self) {
            // SAFETY: sending SIGINT (fast shutdown) to our own child.
            unsafe {
                libc::kill(self.child.id() as i32, libc::SIGINT);
            }
            let _ = self.child.wait();
        }
    }
}
