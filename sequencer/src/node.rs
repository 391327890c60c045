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

use crate::batcher::{BatcherContext, Clock, Sequencer, SequencerConfig};
use crate::network::{Channels, GrpcNetwork};
use crate::peers::{ClusterSecret, MemberAddr};
use crate::raft_service::RaftService;
use crate::state_machine::StateMachine;
use crate::types::*;
use crate::waiters::Waiters;

#[derive(Clone)]
pub struct NodeConfig {
    pub node_id: NodeId,
    /// Where this node is reached: its peer listener (other nodes) and its client listener
    /// (clients, leader hints). Used as its membership entry when it initialises itself.
    pub advertise: MemberAddr,
    /// The secret every peer call carries (`None`: a single node that takes no peers).
    pub secret: Option<ClusterSecret>,
    pub data_dir: PathBuf,
    /// Region partitions; fixed when the data directory is created.
    pub partitions: u32,
    /// sled's page cache, in bytes ([`ordo_storage::DEFAULT_CACHE_BYTES`] by default).
    pub store_cache_bytes: u64,
    pub exec: ExecConfig,
    pub sequencer: SequencerConfig,
    /// Raft log entries (epochs) between snapshots; the log behind a snapshot is purged.
    pub snapshot_every_entries: u64,
    pub clock: Clock,
    /// Every voter of the cluster, this node included, by id. Empty: a single-node cluster
    /// that initialises itself. Otherwise the cluster waits for [`Node::init_cluster`].
    pub peers: BTreeMap<NodeId, MemberAddr>,
    /// How long a forwarded batch may take before its transactions are reported failed.
    pub forward_timeout: Duration,
    /// The address connections to peers are made from (`None`: the kernel chooses).
    pub bind_ip: Option<std::net::IpAddr>,
    /// TLS for calls to peers (`https://`): the CA their certificates come from and this
    /// node's own certificate to present. `None`: plaintext.
    pub peer_tls: Option<Arc<dyn crate::network::PeerClientTls>>,
    /// Raft timing, in milliseconds.
    pub heartbeat_ms: u64,
    pub election_timeout_ms: (u64, u64),
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
    /// Channels to peers (Raft, forwarding, read index), shared.
    pub channels: Channels,
    /// The configured voters (for `init_cluster`); just this node when single.
    pub peers: BTreeMap<NodeId, MemberAddr>,
    /// The cluster secret, if this node has one (it can then take peers, and it authorises
    /// membership changes).
    pub secret: Option<ClusterSecret>,
    forward_timeout: Duration,
    /// `snapshots/` under the data directory.
    snapshot_dir: PathBuf,
}

/// A file in a data directory that `ordo restore` made: the state came from a backup, not from
/// this node's log. Such a node must first start alone; it then makes a snapshot of the state
/// and purges its log, so that members added later receive the state as that snapshot rather
/// than replaying a log that never held it. Removed once done.
pub const RESTORED_MARKER: &str = "restored-from-backup";

/// How long the first start of a restored data directory may take to seal it.
const SEAL_RESTORE_TIMEOUT: Duration = Duration::from_secs(300);

/// What `init_cluster` did.
#[derive(Debug, PartialEq, Eq)]
pub enum InitOutcome {
    Initialized,
    AlreadyInitialized,
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
            Store::open_with_cache(
                config.data_dir.join("state"),
                config.partitions,
                config.store_cache_bytes,
            )
            .map_err(|e| open("the partition stores")(&e))?,
        );
        // Stock rows are packed before anything reads the store or Raft applies to it (a
        // data directory from before is packed now, once): see `Store::keep_packed`.
        let packing = std::time::Instant::now();
        let rows = store
            .keep_packed(ordo_scheduler::keys::stock_packing())
            .map_err(|e| open("the stock rows")(&e))?;
        tracing::info!(
            rows,
            elapsed_ms = packing.elapsed().as_millis() as u64,
            "stock rows packed"
        );
        // Dedupe entries are found through an index of their lists (every transaction's
        // dedupe lookup asks it), loaded before Raft applies anything: see
        // `Store::keep_members`.
        let indexing = std::time::Instant::now();
        let ids = store
            .keep_members(&[ordo_scheduler::keys::DEDUPE_LIST])
            .map_err(|e| open("the dedupe lists")(&e))?;
        tracing::info!(
            ids,
            elapsed_ms = indexing.elapsed().as_millis() as u64,
            "dedupe lists indexed"
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
            heartbeat_interval: config.heartbeat_ms,
            election_timeout_min: config.election_timeout_ms.0,
            election_timeout_max: config.election_timeout_ms.1,
            // openraft bounds every snapshot chunk's call by this; the last chunk's call
            // lasts while the follower imports the snapshot, so it is the bound on an install.
            // Every other chunk has `SNAPSHOT_CHUNK_TIMEOUT` (network.rs).
            install_snapshot_timeout: crate::network::SNAPSHOT_INSTALL_TIMEOUT.as_millis() as u64,
            snapshot_max_chunk_size: 1024 * 1024,
            // Bounds one AppendEntries message: entries x batch_bytes_max.
            max_payload_entries: crate::network::APPEND_ENTRIES_MAX,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(config.snapshot_every_entries),
            // Keep a window of log behind each snapshot, so a follower that is a little behind
            // catches up from the log rather than racing a purge with a snapshot install.
            max_in_snapshot_log_to_keep: config.snapshot_every_entries / 2,
            ..Default::default()
        }
        .validate()
        .map_err(|e| StartError::Config(e.to_string()))?;
        let channels = Channels::new(
            config.bind_ip,
            config.secret.clone(),
            config.peer_tls.clone(),
        );
        let raft = Raft::new(
            config.node_id,
            Arc::new(raft_config),
            GrpcNetwork {
                channels: channels.clone(),
            },
            log.clone(),
            state_machine,
        )
        .await
        .map_err(|e| StartError::Raft(e.to_string()))?;

        let single = config.peers.is_empty();
        let restored = config.data_dir.join(RESTORED_MARKER);
        if restored.exists() && !single {
            return Err(StartError::Config(format!(
                "{} was restored from a backup and has not run yet: start it alone first \
                 (without --peer), then add members to it with `ordo member add`",
                config.data_dir.display()
            )));
        }
        let peers = if single {
            BTreeMap::from([(config.node_id, config.advertise.clone())])
        } else {
            if !config.peers.contains_key(&config.node_id) {
                return Err(StartError::Config(format!(
                    "the peer list must include this node ({})",
                    config.node_id
                )));
            }
            config.peers.clone()
        };
        let sequencer = Sequencer::start(BatcherContext {
            node_id: config.node_id,
            raft: raft.clone(),
            config: config.sequencer.clone(),
            waiters,
            clock: config.clock.clone(),
            channels: channels.clone(),
            forward_timeout: config.forward_timeout,
            store: store.clone(),
        });
        let node = Node {
            node_id: config.node_id,
            raft,
            store,
            sequencer,
            log,
            applied_epoch,
            channels,
            peers,
            secret: config.secret.clone(),
            forward_timeout: config.forward_timeout,
            snapshot_dir: config.data_dir.join("snapshots"),
        };
        if single {
            node.init_cluster()
                .await
                .map_err(|e| StartError::Raft(format!("initializing membership: {e}")))?;
        }
        if restored.exists() {
            node.seal_restore(&restored).await?;
        }
        Ok(node)
    }

    /// The first start of a restored data directory ([`RESTORED_MARKER`]): once this node
    /// leads and has applied its first entries, snapshot the state and purge the log up to
    /// that snapshot, then remove the marker. A crash before the end repeats it next start.
    async fn seal_restore(&self, marker: &std::path::Path) -> Result<(), StartError> {
        let raft_err = |what: &str, e: &dyn std::fmt::Display| {
            StartError::Raft(format!("sealing the restored state: {what}: {e}"))
        };
        self.wait_leader(SEAL_RESTORE_TIMEOUT).await?;
        let metrics = self
            .raft
            .wait(Some(SEAL_RESTORE_TIMEOUT))
            .metrics(
                |m| m.last_applied.is_some() && m.last_applied.map(|l| l.index) == m.last_log_index,
                "the first entries applied",
            )
            .await
            .map_err(|e| raft_err("applying", &e))?;
        let applied = metrics.last_applied.expect("waited for it");
        self.raft
            .trigger()
            .snapshot()
            .await
            .map_err(|e| raft_err("snapshot", &e))?;
        self.raft
            .wait(Some(SEAL_RESTORE_TIMEOUT))
            .metrics(
                |m| m.snapshot >= Some(applied),
                "a snapshot of the restored state",
            )
            .await
            .map_err(|e| raft_err("snapshot", &e))?;
        self.raft
            .trigger()
            .purge_log(applied.index)
            .await
            .map_err(|e| raft_err("purging the log", &e))?;
        self.raft
            .wait(Some(SEAL_RESTORE_TIMEOUT))
            .metrics(|m| m.purged >= Some(applied), "the log purged")
            .await
            .map_err(|e| raft_err("purging the log", &e))?;
        let dir = marker.parent().unwrap_or(std::path::Path::new("."));
        std::fs::remove_file(marker)
            .and_then(|()| std::fs::File::open(dir)?.sync_all())
            .map_err(|e| StartError::Open {
                what: "the restore marker",
                detail: format!("removing {}: {e}", marker.display()),
            })?;
        tracing::info!(snapshot = %applied, "restored state sealed: new members receive it as a snapshot");
        Ok(())
    }

    /// Initialises the cluster's membership from the configured peers, once. On an already
    /// initialised node (or cluster) it does nothing and says so.
    pub async fn init_cluster(&self) -> Result<InitOutcome, String> {
        let initialized = self
            .raft
            .is_initialized()
            .await
            .map_err(|e| e.to_string())?;
        if initialized {
            return Ok(InitOutcome::AlreadyInitialized);
        }
        let members: BTreeMap<NodeId, BasicNode> = self
            .peers
            .iter()
            .map(|(&id, addr)| (id, BasicNode { addr: addr.entry() }))
            .collect();
        match self.raft.initialize(members).await {
            Ok(()) => Ok(InitOutcome::Initialized),
            Err(openraft::error::RaftError::APIError(
                openraft::error::InitializeError::NotAllowed(_),
            )) => Ok(InitOutcome::AlreadyInitialized),
            Err(e) => Err(e.to_string()),
        }
    }

    /// The node's snapshot directory (`snapshots/` in its data directory): snapshot files,
    /// and the exports of backups while they are sent.
    pub fn snapshot_dir(&self) -> &std::path::Path {
        &self.snapshot_dir
    }

    /// The `ordo.internal.v1.Raft` service of this node, for the gRPC server to mount.
    pub fn raft_service(&self) -> RaftService {
        RaftService {
            node_id: self.node_id,
            partitions: self.store.partitions(),
            raft: self.raft.clone(),
            sequencer: self.sequencer.clone(),
            forward_timeout: self.forward_timeout,
        }
    }

    /// The leader this node knows of, when it is another node, with its addresses: its client
    /// address is the hint clients get, its peer address where forwards and read-index calls go.
    pub fn remote_leader(&self) -> Option<(NodeId, MemberAddr)> {
        crate::batcher::remote_leader(&self.raft, self.node_id)
            .ok()
            .flatten()
    }

    /// Waits until some node leads (this one or another) and returns its id.
    pub async fn wait_for_leader(&self, timeout: Duration) -> Result<NodeId, StartError> {
        let metrics = self
            .raft
            .wait(Some(timeout))
            .metrics(|m| m.current_leader.is_some(), "a leader is known")
            .await
            .map_err(|e| StartError::Raft(e.to_string()))?;
        Ok(metrics.current_leader.expect("waited for a leader"))
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
