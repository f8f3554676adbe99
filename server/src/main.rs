//! `missived`: starts a node (`missived`, or `missived serve`), or mints a
//! development token (`missived token --user 1 --device 1`).

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

use missive_chat::command::{DeviceId, UserId};
use missive_server::auth::{Auth, Caller};
use missive_server::Config;

/// mimalloc instead of the system allocator. The store allocates two small
/// blocks per memtable entry on the apply threads and frees the whole
/// memtable at once on the flush thread: with glibc that free took ~0.5 s
/// per 64 MiB memtable (650 000 entries) and stalled the serving threads
/// that share its arenas — the e2e benchmark's latency episodes.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Turns transparent huge pages off for this process. mimalloc asks the
/// kernel for huge pages on its regions (`MADV_HUGEPAGE`); the server then
/// faults in and zeroes 2 MiB for every fresh region it touches, and it
/// touches fresh memory all the time (a memtable freed per flush, a MiB
/// buffer per media chunk). Measured on this project's 2-core machine
/// (docs/benchmarks.md, "Transparent huge pages"): 84 % of the server's CPU
/// during media uploads was the kernel's `clear_page`, and the e2e
/// benchmark's delivered p99 was 2.4–11× higher with huge pages on. Redis,
/// MongoDB and TiKV advise operators to turn them off for the same reason;
/// missived does it for itself (`PR_SET_THP_DISABLE` covers this process
/// and children it would fork — it starts none — not the machine).
/// `MISSIVE_THP=1` keeps them, for comparison.
fn disable_transparent_huge_pages() {
    if std::env::var_os("MISSIVE_THP").is_some_and(|v| v == "1") {
        return;
    }
    #[cfg(target_os = "linux")]
    {
        // SAFETY: PR_SET_THP_DISABLE takes plain integers and only sets a
        // flag on this process's memory descriptor.
        let rc = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
        if rc != 0 {
            // Not fatal: a kernel without the call serves the same, slower.
            eprintln!(
                "missived: could not turn transparent huge pages off: {}",
                std::io::Error::last_os_error()
            );
        }
    }
}

/// Missive's message server.
#[derive(Parser, Debug)]
#[command(name = "missived", version, about)]
struct Cli {
    /// A TOML config file (defaults apply to what it leaves out).
    #[arg(long, global = true, env = "MISSIVE_CONFIG")]
    config: Option<PathBuf>,
    /// Where clients connect [default: 127.0.0.1:8080].
    #[arg(long, global = true, env = "MISSIVE_LISTEN")]
    listen: Option<SocketAddr>,
    /// Where data lives [default: ./data].
    #[arg(long, global = true, env = "MISSIVE_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// This node's id [default: 1].
    #[arg(long, global = true, env = "MISSIVE_NODE_ID")]
    node_id: Option<u64>,
    /// Where gRPC clients connect [default: 127.0.0.1:8090].
    #[arg(long, global = true, env = "MISSIVE_GRPC_LISTEN")]
    grpc_listen: Option<SocketAddr>,
    /// Where other nodes reach this one [default: 127.0.0.1:7080].
    #[arg(long, global = true, env = "MISSIVE_RAFT_LISTEN")]
    raft_listen: Option<SocketAddr>,
    /// The token signing secret (else auth.secret, else <data-dir>/auth.secret).
    #[arg(
        long,
        global = true,
        env = "MISSIVE_AUTH_SECRET",
        hide_env_values = true
    )]
    auth_secret: Option<String>,
    /// Enables POST /v1/admin/tokens for callers presenting it.
    #[arg(
        long,
        global = true,
        env = "MISSIVE_ADMIN_SECRET",
        hide_env_values = true
    )]
    admin_secret: Option<String>,
    /// How the log (stderr) is written: `text` or `json` (one object per
    /// line).
    #[arg(
        long,
        global = true,
        env = "MISSIVE_LOG_FORMAT",
        value_enum,
        default_value_t
    )]
    log_format: missive_server::logging::Format,
    #[command(subcommand)]
    cmd: Option<Cmd>,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run the server (the default).
    Serve,
    /// Print a signed access token for a user's device (development).
    Token {
        /// The user id.
        #[arg(long)]
        user: u64,
        /// The device id.
        #[arg(long, default_value_t = 1)]
        device: u64,
        /// Lifetime in seconds [default: auth.token_ttl_secs].
        #[arg(long)]
        ttl_secs: Option<u64>,
    },
}

fn config(cli: &Cli) -> anyhow::Result<Config> {
    let mut c = match &cli.config {
        Some(p) => Config::from_file(p)?,
        None => Config::default(),
    };
    if let Some(v) = cli.listen {
        c.listen = v;
    }
    if let Some(v) = &cli.data_dir {
        c.data_dir = v.clone();
    }
    if let Some(v) = cli.node_id {
        c.node.id = v;
    }
    if let Some(v) = cli.grpc_listen {
        c.grpc.listen = v;
    }
    if let Some(v) = cli.raft_listen {
        c.node.raft_listen = v;
    }
    if let Some(v) = &cli.auth_secret {
        c.auth.secret = Some(v.clone());
    }
    if let Some(v) = &cli.admin_secret {
        c.auth.admin_secret = Some(v.clone());
    }
    c.validate()?;
    Ok(c)
}

fn main() -> anyhow::Result<()> {
    disable_transparent_huge_pages();
    let cli = Cli::parse();
    missive_server::logging::init(cli.log_format);
    let cfg = config(&cli)?;
    match cli.cmd {
        Some(Cmd::Token {
            user,
            device,
            ttl_secs,
        }) => {
            anyhow::ensure!(user != 0, "--user must be a non-zero id");
            let auth = Auth::load(&cfg.auth, &cfg.data_dir)?;
            let (token, _) = auth
                .access_token(
                    Caller {
                        user: UserId(user),
                        device: DeviceId(device),
                    },
                    ttl_secs,
                )
                .map_err(|e| anyhow::anyhow!("{}: {}", e.code, e.message))?;
            println!("{token}");
            Ok(())
        }
        Some(Cmd::Serve) | None => serve(cfg),
    }
}

fn serve(cfg: Config) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    rt.block_on(async {
        // Installed before the "listening" line: whoever starts us may
        // send SIGTERM as soon as it reads that line, and a signal that
        // arrived before the handler would kill the process undrained.
        let stop = StopSignals::install()?;
        let running = missive_server::start(cfg).await?;
        println!("missived listening on http://{}", running.addr());
        if let Some(g) = running.grpc_addr() {
            // Whoever read the first line may have closed stdout already;
            // that must not take the server down (println! would panic).
            use std::io::Write as _;
            let _ = writeln!(std::io::stdout(), "missived gRPC on http://{g}");
        }
        stop.wait().await?;
        tracing::info!("shutting down");
        running.shutdown().await?;
        Ok(())
    })
}

/// SIGTERM and ctrl-c, listened for from the moment of `install`.
struct StopSignals {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
}

impl StopSignals {
    fn install() -> anyhow::Result<StopSignals> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
            let int = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
            Ok(StopSignals { term, int })
        }
        #[cfg(not(unix))]
        Ok(StopSignals {})
    }

    /// Resolves at the first SIGTERM or ctrl-c.
    async fn wait(mut self) -> anyhow::Result<()> {
        #[cfg(unix)]
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
        #[cfg(not(unix))]
        tokio::signal::ctrl_c()
            .await
            .context("waiting for ctrl-c")?;
        Ok(())
    }
}
