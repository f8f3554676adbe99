//! openraft's storage conformance suite against the real log store (a
//! stream of an engine log on disk) and the real state machine (an LSM on
//! disk): every test gets a fresh data directory.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use std::sync::Arc;

use missive_chat::ChatApp;
use missive_engine::log::{Log, LogOptions};
use missive_engine::lsm::{Lsm, LsmOptions};

// The runtime's types as the chat domain instantiates them.
type LogStore = missive_raft::storage::log_store::LogStore<ChatApp>;
type StateMachine = missive_raft::storage::state_machine::StateMachine<ChatApp>;
type TypeConfig = missive_raft::TypeConfig<ChatApp>;
use missive_raft::cluster::slots::SlotMap;
use missive_raft::storage::state_machine::ApplyHooks;
use missive_raft::types::StorageError;
use missive_raft::ShardId;
use openraft::testing::{StoreBuilder, Suite};

struct Builder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for Builder {
    async fn build(&self) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError> {
        let dir = tempfile::tempdir().unwrap();
        let log = Arc::new(
            Log::open(
                dir.path().join("log"),
                LogOptions {
                    segment_size: 1 << 20,
                    preallocate: false,
                    ..LogOptions::default()
                },
            )
            .unwrap(),
        );
        let lsm = Arc::new(Lsm::open(dir.path().join("lsm"), LsmOptions::default()).unwrap());
        let slots = SlotMap::even(1).unwrap();
        let shard = ShardId(1);
        let sm = StateMachine::open(
            Arc::new(ChatApp::new()),
            lsm,
            &slots,
            shard,
            dir.path().join("snapshots"),
            Arc::new(ApplyHooks::new()),
        )
        .unwrap();
        Ok((dir, LogStore::new(log, shard), sm))
    }
}

#[test]
fn openraft_storage_suite() {
    Suite::test_all(Builder).unwrap();
}
