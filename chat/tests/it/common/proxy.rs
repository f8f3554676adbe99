//! A fault-injecting TCP proxy for one direction of one node pair: pass,
//! refuse, blackhole or delay the bytes between two nodes, switchable while
//! connections are open.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// What the proxy does with traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Forward bytes as they come.
    Pass,
    /// Close every connection, accept none.
    Refuse,
    /// Keep connections open but drop every byte (a silent partition).
    Blackhole,
    /// Forward each read after this long.
    Delay(Duration),
}

/// A running proxy.
pub struct Proxy {
    /// Where to dial instead of the target.
    pub addr: SocketAddr,
    mode: Arc<watch::Sender<Mode>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Proxy {
    /// Listens on `bind` (a loopback address, any port) and forwards to `target`.
    pub async fn start(bind: &str, target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind(bind).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = watch::channel(Mode::Pass);
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                if *rx.borrow() == Mode::Refuse {
                    continue;
                }
                let rx = rx.clone();
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(target).await else {
                        return;
                    };
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    let a = tokio::spawn(pump(cr, sw, rx.clone()));
                    let b = tokio::spawn(pump(sr, cw, rx));
                    let _ = tokio::join!(a, b);
                });
            }
        });
        Proxy {
            addr,
            mode: Arc::new(tx),
            task,
        }
    }

    /// Switches the mode (applies to open connections too).
    pub fn set(&self, mode: Mode) {
        self.mode.send_replace(mode);
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut mode: watch::Receiver<Mode>,
) {
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = tokio::select! {
            r = from.read(&mut buf) => match r { Ok(0) | Err(_) => return, Ok(n) => n },
            changed = mode.changed() => {
                if changed.is_err() || *mode.borrow() == Mode::Refuse { return }
                continue;
            }
        };
        let m = *mode.borrow();
        match m {
            Mode::Pass => {}
            Mode::Refuse => return,
            Mode::Blackhole => continue,
            Mode::Delay(d) => tokio::time::sleep(d).await,
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
