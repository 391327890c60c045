//! One Ordo node's replication and execution core: the Raft log, the state machine over the
//! partition stores, openraft, and the epoch batcher, wired together.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use openraft::{BasicNode, ServerState, SnapshotPolicy};
use ordo_scheduler::ExecConfig;
use ordo_storage::Store;
use tokio::sync::watch;

use crate::batcher::{Clock, Sequencer, SequencerConfig};
use crate::network::NoPeers;
use crate::state_machine::StateMachine;
use crate::types::*;
use crate::waiters::Waiters;

#[derive(Clone)]
pub struct NodeConfig {
    pub node_id: NodeId,
    /// The address other nodes and clients reach this node's gRPC server at.
    pub advertise_addr: String,
    pub data_dir: PathBuf,
    /// Region partitions; fixed when the data directory is created.
    pub partitions: u32,
    pub exec: ExecConfig,
    pub sequencer: SequencerConfig,
    /// Raft log entries (epochs) between snapshots; the log behind a snapshot is purged.
    pub snapshot_every_entries: u64,
    pub clock: Clock,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("opening {what}: {detail}")]
    Open { what: &'static str, detail: String },
    #[error("raft: {0}")]
    Raft(String),
}

/// A running node. Dropping it does not stop Raft; call [`Node::shutdown`].
pub struct Node {
    pub node_id: NodeId,
    pub raft: Raft,
    pub store: Arc<Store>,
    pub sequencer: Sequencer,
    pub log: LogStore,
    /// The last applied epoch.
    pub applied_epoch: watch::Receiver<u64>,
}

impl Node {
    pub async fn start(config: NodeConfig) -> Result<Node, StartError> {
        config.sequencer.validate().map_err(StartError::Config)?;
        let open = |what: &'static str| {
            move |e: &dyn std::fmt::Display| StartError::Open {
                what,
                detail: e.to_string(),
            }
        };
        std::fs::create_dir_all(&config.data_dir).map_err(|e| open("the data directory")(&e))?;
        let store = Arc::new(
            Store::open(config.data_dir.join("state"), config.partitions)
                .map_err(|e| open("the partition stores")(&e))?,
        );
        let log = LogStore::open(config.data_dir.join("raft-log"))
            .map_err(|e| open("the raft log")(&e))?;
        let waiters = Arc::new(Waiters::default());
        let state_machine = StateMachine::open(
            store.clone(),
            config.exec.clone(),
            waiters.clone(),
            &config.data_dir.join("snapshots"),
        )
        .map_err(|e| open("the state machine")(&e))?;
        let applied_epoch = state_machine.applied_epoch();

        let raft_config = openraft::Config {
            cluster_name: "ordo".into(),
            heartbeat_interval: 50,
            election_timeout_min: 150,
            election_timeout_max: 300,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(config.snapshot_every_entries),
            max_in_snapshot_log_to_keep: config.snapshot_every_entries / 2,
            ..Default::default()
        }
        .validate()
        .map_err(|e| StartError::Config(e.to_string()))?;
        let raft = Raft::new(
            config.node_id,
            Arc::new(raft_config),
            NoPeers,
            log.clone(),
            state_machine,
        )
        .await
        .map_err(|e| StartError::Raft(e.to_string()))?;

        let initialized = raft
            .is_initialized()
            .await
            .map_err(|e| StartError::Raft(e.to_string()))?;
        if !initialized {
            let members = BTreeMap::from([(
                config.node_id,
                BasicNode {
                    addr: config.advertise_addr.clone(),
                },
            )]);
            raft.initialize(members)
                .await
                .map_err(|e| StartError::Raft(format!("initializing membership: {e}")))?;
        }
        let sequencer = Sequencer::start(
            raft.clone(),
            config.sequencer.clone(),
            waiters,
            config.clock.clone(),
        );
        Ok(Node {
            node_id: config.node_id,
            raft,
            store,
            sequencer,
            log,
            applied_epoch,
        })
    }

    /// Waits until this node leads and has applied everything it committed before.
    pub async fn wait_leader(&self, timeout: Duration) -> Result<(), StartError> {
        self.raft
            .wait(Some(timeout))
            .state(ServerState::Leader, "become leader")
            .await
            .map_err(|e| StartError::Raft(e.to_string()))?;
        Ok(())
    }

    pub async fn shutdown(&self) {
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(error = %e, "raft shutdown");
        }
        if let Err(e) = self.store.flush() {
            tracing::warn!(error = %e, "flushing the partition stores");
        }
    }
}
