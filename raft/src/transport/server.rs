//! The listening half: accepts peers, checks who they are, serves their
//! calls concurrently and answers in any order.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::BufWriter;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

use super::{read_frame, write_frame, Reply, Rpc, Wire, WIRE_VERSION};
use crate::app::App;
use crate::ids::{NodeId, ShardId};

/// Serves calls addressed to this node's shards.
pub trait Dispatch<A: App>: Send + Sync + 'static {
    /// Serves one call.
    fn dispatch(
        self: Arc<Self>,
        from: NodeId,
        shard: ShardId,
        rpc: Rpc<A>,
    ) -> Pin<Box<dyn Future<Output = Reply<A>> + Send>>;

    /// The newest cluster map version this node knows of (sent with every
    /// response).
    fn map_version(&self) -> u64;

    /// A caller knows of cluster map version `v`.
    fn heard_map_version(&self, v: u64);

    /// Why node `from` may not connect, if it may not (it was removed from
    /// the cluster: a stale process must not disturb the groups it was in).
    fn refuses(&self, from: NodeId) -> Option<String>;
}

/// Responses queued per connection before its reader stops taking calls.
const OUTBOUND_QUEUE: usize = 1024;

/// Accepts connections until `stop` turns true.
pub async fn serve<A: App>(
    listener: TcpListener,
    me: NodeId,
    cluster: String,
    dispatch: Arc<dyn Dispatch<A>>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            accepted = listener.accept() => match accepted {
                Ok((sock, peer)) => {
                    let _ = sock.set_nodelay(true);
                    let d = Arc::clone(&dispatch);
                    let cluster = cluster.clone();
                    let stop = stop.clone();
                    tokio::spawn(async move {
                        if let Err(e) = connection(sock, me, cluster, d, stop).await {
                            tracing::debug!(%peer, %e, "peer connection ended");
                        }
                    });
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off, go on.
                    tracing::warn!(%e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
}

async fn connection<A: App>(
    sock: TcpStream,
    me: NodeId,
    cluster: String,
    dispatch: Arc<dyn Dispatch<A>>,
    mut stop: watch::Receiver<bool>,
) -> Result<(), super::FrameError> {
    let (mut rd, wr) = sock.into_split();
    let mut wr = BufWriter::new(wr);
    let hello = tokio::time::timeout(Duration::from_secs(5), read_frame::<A, _>(&mut rd))
        .await
        .map_err(|_| super::FrameError::Malformed("no hello within 5 s".into()))??;
    let from = match hello {
        Wire::Hello {
            version,
            cluster: c,
            from,
            to,
        } => {
            let refusal = if version != WIRE_VERSION {
                Some(format!(
                    "wire version {version}, this node speaks {WIRE_VERSION}"
                ))
            } else if c != cluster {
                Some(format!("cluster {c:?}, this node is in {cluster:?}"))
            } else if to != me {
                Some(format!("expected node {to}, this is node {me}"))
            } else {
                dispatch.refuses(from)
            };
            if let Some(reason) = refusal {
                tracing::warn!(from, %reason, "refusing a peer");
                write_frame(&mut wr, &Wire::<A>::Refused { reason }).await?;
                tokio::io::AsyncWriteExt::flush(&mut wr).await?;
                return Ok(());
            }
            from
        }
        _ => {
            return Err(super::FrameError::Malformed(
                "first frame is not a hello".into(),
            ))
        }
    };
    write_frame(&mut wr, &Wire::<A>::Welcome { node: me }).await?;
    tokio::io::AsyncWriteExt::flush(&mut wr).await?;

    let (tx, mut rx) = mpsc::channel::<Wire<A>>(OUTBOUND_QUEUE);
    let writer = tokio::spawn(async move {
        while let Some(msg) = rx.recv().await {
            write_frame(&mut wr, &msg).await?;
            // Batch what is already queued into one flush.
            while let Ok(more) = rx.try_recv() {
                write_frame(&mut wr, &more).await?;
            }
            tokio::io::AsyncWriteExt::flush(&mut wr).await?;
        }
        Ok::<(), super::FrameError>(())
    });
    let result = loop {
        let frame = tokio::select! {
            _ = stop.changed() => break Ok(()),
            f = read_frame(&mut rd) => f,
        };
        match frame {
            Ok(Wire::Request {
                id,
                shard,
                rpc,
                map_version,
            }) => {
                dispatch.heard_map_version(map_version);
                let d = Arc::clone(&dispatch);
                let tx = tx.clone();
                tokio::spawn(async move {
                    let reply = Arc::clone(&d).dispatch(from, shard, rpc).await;
                    let map_version = d.map_version();
                    let _ = tx
                        .send(Wire::Response {
                            id,
                            reply,
                            map_version,
                        })
                        .await;
                });
            }
            Ok(_) => break Err(super::FrameError::Malformed("unexpected frame".into())),
            Err(e) => break Err(e),
        }
    };
    drop(tx);
    writer.abort();
    result
}
