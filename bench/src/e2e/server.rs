//! The server under test: a `missived` process this run starts (fresh data
//! directory, loopback ports, an admin secret for minting tokens), or one
//! already running on a loopback address. For a process we know the pid
//! of, `/proc` gives its CPU time and resident memory.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{bail, Context, Result};

/// A running server.
pub struct Server {
    /// Where clients connect.
    pub addr: SocketAddr,
    /// The secret `POST /v1/admin/tokens` wants.
    pub admin_secret: String,
    /// The process, when this run started it.
    child: Option<Child>,
}

/// The `missived` config of a benchmark run: the defaults except the
/// limits a load generator crosses on purpose (it is one machine opening
/// thousands of sockets and sending from every one of them).
fn config_text(
    data_dir: &Path,
    connections: usize,
    message_cache_bytes: Option<u64>,
    push_webhook: Option<&str>,
) -> String {
    let mut text = format!(
        "listen = \"127.0.0.1:0\"\n\
         data_dir = {data_dir:?}\n\
         [node]\n\
         raft_listen = \"127.0.0.1:0\"\n\
         [grpc]\n\
         listen = \"127.0.0.1:0\"\n\
         [limits]\n\
         max_connections = {max}\n\
         sends_per_second = 1000\n\
         send_burst = 1000\n\
         history_rate = {{ per_second = 1000000, burst = 1000000 }}\n\
         receipt_rate = {{ per_second = 1000000, burst = 1000000 }}\n\
         create_rate = {{ per_second = 1000000, burst = 1000000 }}\n\
         upload_rate = {{ per_second = 1000000, burst = 1000000 }}\n\
         keys_rate = {{ per_second = 1000000, burst = 1000000 }}\n\
         presence_rate = {{ per_second = 1000000, burst = 1000000 }}\n\
         connect_rate_per_ip = {{ per_second = 1000000, burst = 1000000 }}\n\
         upgrade_rate_per_ip = {{ per_second = 1000000, burst = 1000000 }}\n\
         max_sockets_per_user = {max}\n",
        data_dir = data_dir.display().to_string(),
        max = connections + 1024,
    );
    if let Some(b) = message_cache_bytes {
        text.push_str(&format!("message_cache_bytes = {b}\n"));
    }
    if let Some(url) = push_webhook {
        text.push_str(&format!("[push]\nwebhook_url = \"{url}\"\n"));
    }
    text
}

/// One benchmark against a server this run starts: `missived` (`bin`, or
/// the one next to this executable) with its data in `server/` of a fresh
/// directory under `dir` (default: the system's temporary directory),
/// `measure` given the server and that fresh directory on a 2-thread
/// runtime, then the server stopped and the rows printed (a table, or
/// JSON lines with `json`).
pub fn measure_with_server(
    bin: Option<&Path>,
    dir: Option<&Path>,
    message_cache_bytes: Option<u64>,
    json: bool,
    measure: impl AsyncFnOnce(&Server, &Path) -> Result<Vec<crate::report::Row>>,
) -> Result<()> {
    let base = dir.map_or_else(std::env::temp_dir, Path::to_path_buf);
    std::fs::create_dir_all(&base)?;
    let tmp = tempfile::tempdir_in(&base)?;
    let bin = match bin {
        Some(p) => p.to_path_buf(),
        None => std::env::current_exe()?
            .parent()
            .context("exe dir")?
            .join("missived"),
    };
    let srv = Server::spawn(
        &bin,
        &tmp.path().join("server"),
        64,
        message_cache_bytes,
        None,
    )?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let rows = rt.block_on(measure(&srv, tmp.path()))?;
    drop(rt);
    srv.stop()?;
    if json {
        for r in &rows {
            println!("{}", r.json());
        }
    } else {
        crate::report::table(&rows);
    }
    Ok(())
}

impl Server {
    /// Starts `missived` at `bin` with data under `dir`; waits for its
    /// "listening" line. Its log goes to `dir/missived.log`. With
    /// `message_cache_bytes`, its recent-messages cache has that size
    /// (0: off) instead of the default; with `push_webhook`, it pushes
    /// there.
    pub fn spawn(
        bin: &Path,
        dir: &Path,
        connections: usize,
        message_cache_bytes: Option<u64>,
        push_webhook: Option<&str>,
    ) -> Result<Server> {
        std::fs::create_dir_all(dir)?;
        let cfg = dir.join("missived.toml");
        let text = config_text(
            &dir.join("data"),
            connections,
            message_cache_bytes,
            push_webhook,
        );
        std::fs::write(&cfg, text)?;
        let log = std::fs::File::create(dir.join("missived.log"))?;
        let mut log_out = log.try_clone()?;
        // Guards a loopback server that lives for one run.
        let admin_secret = format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..));
        let mut child = Command::new(bin)
            .arg("--config")
            .arg(&cfg)
            .env("MISSIVE_ADMIN_SECRET", &admin_secret)
            // MISSIVED_LOG lets a profiling run see the server's own
            // timings (e.g. `missive_engine=debug` for memtable flushes).
            .env(
                "RUST_LOG",
                std::env::var("MISSIVED_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .with_context(|| {
                format!(
                    "starting {} (build it: cargo build --release --bin missived)",
                    bin.display()
                )
            })?;
        let stdout = child.stdout.take().context("missived stdout")?;
        let (tx, rx) = mpsc::channel();
        // Reads the address, then keeps draining so the child never blocks
        // on a full pipe; whatever else it prints goes to the log file,
        // where its stderr (the log) goes too.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(a) = line.strip_prefix("missived listening on http://") {
                    let _ = tx.send(a.trim().to_string());
                }
                let _ = writeln!(log_out, "{line}");
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(a) => a
                .parse()
                .with_context(|| format!("missived printed {a:?}"))?,
            Err(_) => {
                let _ = child.kill();
                bail!(
                    "missived did not start within 60 s; see {}",
                    dir.join("missived.log").display()
                );
            }
        };
        Ok(Server {
            addr,
            admin_secret,
            child: Some(child),
        })
    }

    /// A server someone else runs; it must be on this machine's loopback.
    pub fn external(url: &str, admin_secret: Option<String>) -> Result<Server> {
        let hostport = url
            .strip_prefix("http://")
            .context("--url must look like http://127.0.0.1:8080")?
            .trim_end_matches('/');
        let addr: SocketAddr = hostport
            .parse()
            .with_context(|| format!("--url {url}: expected http://IP:PORT"))?;
        if !addr.ip().is_loopback() {
            bail!("--url {url}: the benchmark only talks to loopback addresses");
        }
        let admin_secret =
            admin_secret.context("--url needs --admin-secret (the server's auth.admin_secret)")?;
        Ok(Server {
            addr,
            admin_secret,
            child: None,
        })
    }

    /// The process's CPU and memory, when this run started it.
    pub fn usage(&self) -> Option<Usage> {
        self.child.as_ref().and_then(|c| usage(Some(c.id())))
    }

    /// SIGTERM, then waits for the exit (a clean stop syncs and exits 0).
    pub fn stop(mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            let pid = libc::pid_t::try_from(child.id()).context("pid")?;
            // SAFETY: kill(2) on our own child's pid; no memory involved.
            unsafe { libc::kill(pid, libc::SIGTERM) };
            let status = child.wait()?;
            if !status.success() {
                bail!("missived exited with {status}");
            }
        }
        Ok(())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// CPU time (user + system) and resident memory of a process.
#[derive(Debug, Clone, Copy)]
pub struct Usage {
    /// CPU seconds since the process started.
    pub cpu_secs: f64,
    /// Resident set, bytes.
    pub rss_bytes: u64,
}

/// Reads `/proc/<pid>/stat` and `/proc/<pid>/status` ("self" for this
/// process). None where /proc does not exist.
pub fn usage(pid: Option<u32>) -> Option<Usage> {
    let dir = match pid {
        Some(p) => PathBuf::from(format!("/proc/{p}")),
        None => PathBuf::from("/proc/self"),
    };
    let stat = std::fs::read_to_string(dir.join("stat")).ok()?;
    // Fields after the parenthesised command name (which may hold spaces):
    // state is field 3, utime 14, stime 15 (1-based, proc(5)).
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf has no memory effects.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let status = std::fs::read_to_string(dir.join("status")).ok()?;
    let rss_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(Usage {
        cpu_secs: ticks as f64 / hz,
        rss_bytes: rss_kib * 1024,
    })
}

/// Raises this process's open-file limit to its hard limit (every
/// connection is a descriptor). Returns the limit now in force.
pub fn raise_nofile() -> u64 {
    let mut l = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit write/read the struct we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) == 0 && l.rlim_cur < l.rlim_max {
            l.rlim_cur = l.rlim_max;
            let _ = libc::setrlimit(libc::RLIMIT_NOFILE, &l);
        }
        let _ = libc::getrlimit(libc::RLIMIT_NOFILE, &mut l);
    }
    l.rlim_cur
}
