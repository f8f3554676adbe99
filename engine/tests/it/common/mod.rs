//! Helpers shared by the engine's integration tests.
#![allow(dead_code)]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test helpers panic on setup failure"
)]

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use missive_engine::io::{FaultFsControl, IoBackend};
use missive_engine::log::{Log, LogOptions};

/// One I/O back end under test.
pub struct Backend {
    pub name: &'static str,
    io: Option<IoBackend>,
    fault: Option<FaultFsControl>,
    tmp: Arc<tempfile::TempDir>,
}

impl Backend {
    /// A fresh directory for one log.
    pub fn dir(&self) -> PathBuf {
        let d = self.tmp.path().join(format!("log-{}", fastrand::u64(..)));
        d
    }

    /// The fault file system's control, for the fault back end.
    pub fn fault(&self) -> Option<&FaultFsControl> {
        self.fault.as_ref()
    }

    pub fn options(&self, mut opts: LogOptions) -> LogOptions {
        match (&self.io, &self.fault) {
            (Some(io), _) => opts.io = *io,
            (None, Some(f)) => opts.fs = Some(f.fs()),
            (None, None) => {}
        }
        opts
    }

    pub fn try_open(&self, dir: &Path, opts: LogOptions) -> missive_engine::Result<Log> {
        Log::open(dir, self.options(opts))
    }

    pub fn open(&self, dir: &Path, opts: LogOptions) -> Log {
        let log = self
            .try_open(dir, opts)
            .unwrap_or_else(|e| panic!("open {} on {}: {e}", dir.display(), self.name));
        assert_eq!(log.backend(), self.name);
        log
    }
}

/// The back ends every scenario runs on: std, io_uring (where the kernel
/// allows it; said loudly where it does not), and the in-memory fault fs.
pub fn backends() -> Vec<Backend> {
    let tmp = Arc::new(tempfile::tempdir().expect("tempdir"));
    let mut v = vec![Backend {
        name: "std",
        io: Some(IoBackend::Std),
        fault: None,
        tmp: Arc::clone(&tmp),
    }];
    if IoBackend::uring_available() {
        v.push(Backend {
            name: "io_uring",
            io: Some(IoBackend::IoUring),
            fault: None,
            tmp: Arc::clone(&tmp),
        });
    } else if std::env::var_os("MISSIVE_REQUIRE_IO_URING").is_some() {
        panic!("MISSIVE_REQUIRE_IO_URING is set but this kernel refuses io_uring");
    } else {
        eprintln!("NOTE: io_uring is unavailable here; its runs are skipped");
    }
    v.push(Backend {
        name: "fault",
        io: None,
        fault: Some(FaultFsControl::new()),
        tmp,
    });
    v
}

struct ThreadWaker(std::thread::Thread);

impl Wake for ThreadWaker {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
}

/// A minimal executor for one future (the engine does not depend on tokio).
pub fn block_on<F: Future>(fut: F) -> F::Output {
    let mut fut = std::pin::pin!(fut);
    let waker = Waker::from(Arc::new(ThreadWaker(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    loop {
        if let Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::park();
    }
}
