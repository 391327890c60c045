//! openraft's own storage test suite, run against Ordo's Raft log (segmented fsynced WAL) and
//! state machine (scheduler over sled), each in a fresh temporary directory.

use std::sync::Arc;

use openraft::testing::{StoreBuilder, Suite};
use openraft::StorageError;
use ordo_scheduler::ExecConfig;
use ordo_sequencer::state_machine::StateMachine;
use ordo_sequencer::{LogStore, TypeConfig, Waiters};
use ordo_storage::Store;

struct Builder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for Builder {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError<u64>> {
        let dir = tempfile::tempdir().expect("temp dir");
        let log = LogStore::open(dir.path().join("raft-log")).expect("open log");
        let store = Arc::new(Store::open(dir.path().join("state"), 2).expect("open store"));
        let sm = StateMachine::open(
            store,
            ExecConfig::default(),
            Arc::new(Waiters::default()),
            &dir.path().join("snapshots"),
        )?;
        Ok((dir, log, sm))
    }
}

#[test]
fn log_store_and_state_machine_pass_openraft_suite() {
    Suite::test_all(Builder).expect("openraft storage suite");
}
