//! The binary's log: plain text on stderr (colour only at a terminal), or
//! one JSON object per line (`--log-format json`, for a log pipeline),
//! filtered by `RUST_LOG` (default `info,openraft=warn`), with openraft's
//! reports of an unreachable peer kept out.
//!
//! openraft logs every call to a peer that could not be reached at ERROR
//! (votes: "while requesting vote", or "timeout" when one hangs — with a
//! "timeout after … when Vote" error either way;
//! replication: "RPCError"), every append or heartbeat past its deadline
//! ("timeout after … when AppendEntries"), and every call cut short by a
//! peer closing its connection. In a cluster whose nodes start one after
//! another, or while one restarts, each election and each replication
//! retry produces them: an operator reading ERROR lines on a healthy
//! start learns to ignore ERROR. So these events are dropped, and the transport says it
//! instead, once per change: WARN "peer unreachable; retrying" when a
//! peer goes away, INFO "peer reachable again" when it is back, INFO
//! "connection to peer closed" when a connection ends.
//! Any other failed call (a peer that answered with garbage, say) still
//! logs at ERROR.

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Format {
    /// For people: one line per event, colour only at a terminal.
    #[default]
    Text,
    /// For machines: one JSON object per line (`timestamp`, `level`,
    /// `target`, `fields` with `message`, and `spans` — the request's,
    /// with its `request_id`).
    Json,
}

/// Starts the process-wide log.
pub fn init(format: Format) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn"));
    let base = tracing_subscriber::registry()
        .with(QuietUnreachablePeers)
        .with(filter);
    match format {
        Format::Text => {
            let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
            base.with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(ansi)
                    .with_writer(std::io::stderr),
            )
            .init();
        }
        Format::Json => base
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_span_list(true)
                    .with_writer(std::io::stderr),
            )
            .init(),
    }
}

/// Drops openraft's ERROR events about a call to a peer that could not be
/// reached (see the module docs).
#[derive(Debug, Clone, Copy)]
pub struct QuietUnreachablePeers;

impl<S: Subscriber> Layer<S> for QuietUnreachablePeers {
    fn event_enabled(&self, event: &Event<'_>, _: Context<'_, S>) -> bool {
        let m = event.metadata();
        if *m.level() != Level::ERROR || !m.target().starts_with("openraft") {
            return true;
        }
        let mut f = Fields::default();
        event.record(&mut f);
        // openraft's `RPCError::Unreachable` reads "Unreachable node: …";
        // a vote whose own deadline passed, "timeout after … when Vote …".
        // A call cut by the peer closing its connection (a restart) reads
        // "NetworkError: … connection lost: connection closed" (the
        // transport's wording: `missive_raft::transport::client`).
        // A heartbeat or append past its deadline (60 ms since failover
        // was tuned, see raft's timing) reads "timeout after … when
        // AppendEntries …": on a loaded 2-core machine it happens on a
        // healthy start (CI saw one), and openraft retries at once. A peer
        // that stays away still shows as the transport's WARN.
        // A vote past its deadline comes either way: "timeout" from the
        // call, or "while requesting vote" from the election with the
        // same "timeout after … when Vote" error (CI saw the second while
        // a node restarted: the others' votes to it ran out).
        let unreachable = f.error.starts_with("Unreachable node")
            || (f.error.starts_with("NetworkError")
                && f.error.ends_with("connection lost: connection closed"))
            || (f.message == "timeout" && f.error.contains(" when Vote "))
            || (f.error.starts_with("timeout after")
                && (f.error.contains(" when Vote ") || f.error.contains(" when AppendEntries ")));
        !unreachable
    }
}

/// The two fields the filter reads, as text.
#[derive(Default)]
struct Fields {
    message: String,
    error: String,
}

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        match field.name() {
            "message" => self.message = format!("{value:?}"),
            // openraft names it `error` in most places, `err` in some.
            "error" | "err" => self.error = format!("{value:?}"),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use tracing_subscriber::layer::SubscriberExt;

    use super::*;

    /// Counts the events that reach it.
    struct Count(Arc<AtomicUsize>);

    impl<S: Subscriber> Layer<S> for Count {
        fn on_event(&self, _: &Event<'_>, _: Context<'_, S>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[test]
    fn unreachable_peers_are_dropped_and_other_errors_are_not() {
        let n = Arc::new(AtomicUsize::new(0));
        let sub = tracing_subscriber::registry()
            .with(QuietUnreachablePeers)
            .with(Count(Arc::clone(&n)));
        tracing::subscriber::with_default(sub, || {
            let unreachable = "Unreachable node: unreachable: connect to 127.0.0.2:1: refused";
            tracing::error!(target: "openraft::core::raft_core", error = %unreachable, target = 2, "while requesting vote");
            tracing::error!(target: "openraft::replication", err = %unreachable, "RPCError");
            let closed = "NetworkError: missive_raft::transport::client::CallError: connection lost: connection closed";
            tracing::error!(target: "openraft::replication", err = %closed, "RPCError");
            tracing::error!(target: "openraft::core::raft_core", error = %"timeout after 1s when Vote 1->2", "timeout");
            tracing::error!(target: "openraft::core::raft_core", error = %"timeout after 200ms when Vote 3->2 target=2", "while requesting vote");
            tracing::error!(target: "openraft::replication", err = %"timeout after 60ms when AppendEntries 1->3", "RPCError");
            tracing::error!(target: "openraft::replication", err = %"timeout after 1s when AppendEntries 1->2", "timeout");
        });
        assert_eq!(n.load(Ordering::Relaxed), 0);
        tracing::subscriber::with_default(
            tracing_subscriber::registry()
                .with(QuietUnreachablePeers)
                .with(Count(Arc::clone(&n))),
            || {
                tracing::error!(target: "openraft::core::raft_core", error = %"decode: bad frame", "while requesting vote");
                tracing::error!(target: "openraft::replication", err = %"NetworkError: connection lost: unexpected reply", "RPCError");
                tracing::error!(target: "openraft::core::raft_core", error = %"storage: I/O", "storage failed");
                tracing::error!(target: "missive_raft", error = %"unreachable", "while requesting vote");
                tracing::warn!(target: "openraft::core::raft_core", error = %"unreachable", "while requesting vote");
            },
        );
        assert_eq!(n.load(Ordering::Relaxed), 5);
    }
}
