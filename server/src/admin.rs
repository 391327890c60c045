//! The `Admin` service: node status and state hashes.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use openraft::{BasicNode, ChangeMembers, ServerState};
use ordo_proto::v1;
use ordo_proto::v1::admin_client::AdminClient;
use ordo_proto::v1::admin_server::Admin;
use ordo_scheduler::{keys, reads};
use ordo_sequencer::network::Channels;
use ordo_sequencer::peers::{
    shift_port, ClusterSecret, MemberAddr, PEER_PORT_OFFSET, SECRET_METADATA_KEY,
};
use ordo_sequencer::{InitOutcome, Node};
use ordo_storage::{Part, HASH_WINDOW_EPOCHS};
use tonic::{Request, Response, Status};

use crate::fault::FaultClock;

/// State hashes listed in `Status.recent_hashes`.
const RECENT_HASHES: u64 = 16;
/// How long removing a member may take.
const MEMBERSHIP_TIMEOUT: Duration = Duration::from_secs(120);
/// How long adding a member may take: it answers once the learner has caught up, which for a
/// large state is a snapshot's transfer and install (10⁸ stock rows: about 2 minutes here).
const MEMBER_ADD_TIMEOUT: Duration = ordo_sequencer::network::SNAPSHOT_INSTALL_TIMEOUT;

pub struct AdminService {
    node: Arc<Node>,
    queue_txns_max: usize,
    /// Set on a node started with --fault-injection.
    fault_clock: Option<Arc<FaultClock>>,
    /// How this node reaches the leader's client port to proxy a membership change: with the
    /// client port's scheme (`Err`: it cannot, and says why).
    leader_channels: Result<Channels, String>,
    backups: crate::backup::Backups,
    /// Turns true when the node stops: a running backup stream ends.
    closing: tokio::sync::watch::Receiver<bool>,
    about: About,
}

/// What `Status` tells of the node beyond its Raft state.
pub struct About {
    /// When the node started serving.
    pub started: std::time::Instant,
    /// The settings every node of the cluster must share that are not recorded in the log
    /// ([`cluster_settings`]).
    pub cluster_settings: Vec<(&'static str, String)>,
    /// This node's execution settings: the initial record at cluster-init, and what status
    /// shows where the log records none.
    pub exec: ordo_scheduler::ExecConfig,
    /// The node's `--message-bytes-max`: backup chunks stay under it.
    pub message_bytes_max: usize,
}

/// The settings every node of a cluster must share and that the log does not record, in name
/// order: a node that differs in one stores the log differently, or cannot talk to its peers.
/// (The execution settings are recorded in the log; [`AdminService::status`] adds them.)
pub fn cluster_settings(partitions: u32, peer_tls: bool) -> Vec<(&'static str, String)> {
    vec![
        ("partitions", partitions.to_string()),
        ("peer_tls", if peer_tls { "on" } else { "off" }.to_string()),
        ("snapshot_format", ordo_storage::SNAPSHOT_FORMAT.to_string()),
        ("version", env!("CARGO_PKG_VERSION").to_string()),
    ]
}

impl AdminService {
    pub fn new(
        node: Arc<Node>,
        queue_txns_max: usize,
        fault_clock: Option<Arc<FaultClock>>,
        leader_channels: Result<Channels, String>,
        closing: tokio::sync::watch::Receiver<bool>,
        about: About,
    ) -> Self {
        Self {
            node,
            queue_txns_max,
            fault_clock,
            leader_channels,
            backups: crate::backup::Backups::new(about.message_bytes_max),
            closing,
            about,
        }
    }

    fn members(&self) -> Vec<v1::Member> {
        let metrics = self.node.raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership();
        let voters: BTreeSet<u64> = membership.voter_ids().collect();
        membership
            .nodes()
            .map(|(&id, node)| {
                let addr = MemberAddr::parse(&node.addr);
                v1::Member {
                    node_id: id,
                    addr: addr.client,
                    voter: voters.contains(&id),
                    peer_addr: addr.peer,
                }
            })
            .collect()
    }

    /// The leader's admin client, when this node is not the leader.
    fn leader_admin(&self) -> Result<Option<AdminClient<tonic::transport::Channel>>, Status> {
        let leader = self.node.raft.metrics().borrow().current_leader;
        match (leader, self.node.remote_leader()) {
            (Some(id), _) if id == self.node.node_id => Ok(None),
            (Some(id), Some((_, addr))) => {
                let channels = self.leader_channels.as_ref().map_err(|why| {
                    Status::unavailable(format!(
                        "this node is not the leader and {why}: send the change to node {id} \
                         at {}",
                        addr.client
                    ))
                })?;
                let channel = channels.get(&addr.client).map_err(Status::unavailable)?;
                Ok(Some(AdminClient::new(channel)))
            }
            (Some(id), None) => Err(Status::unavailable(format!("leader {id} has no address"))),
            (None, _) => Err(Status::unavailable(
                "no leader is known right now; retry shortly",
            )),
        }
    }

    /// Membership changes decide which addresses receive the log (and the secret, on every
    /// peer call): they need the cluster secret, like peer calls. Returns the secret, for a
    /// call proxied to the leader.
    fn authorise_membership(
        &self,
        metadata: &tonic::metadata::MetadataMap,
    ) -> Result<&ClusterSecret, Status> {
        let Some(secret) = &self.node.secret else {
            return Err(Status::failed_precondition(
                "this node was started without a cluster secret, so it cannot take peers; \
                 restart it with --cluster-secret-file (the new member needs the same file)",
            ));
        };
        let offered = metadata
            .get(SECRET_METADATA_KEY)
            .map(|v| v.as_bytes())
            .unwrap_or_default();
        if !secret.matches(offered) {
            return Err(Status::unauthenticated(
                "membership changes need the cluster secret: ordo member ... \
                 --cluster-secret-file PATH (the nodes' file)",
            ));
        }
        Ok(secret)
    }

    fn membership_response(&self) -> v1::MembershipResponse {
        v1::MembershipResponse {
            members: self.members(),
            leader_id: self
                .node
                .raft
                .metrics()
                .borrow()
                .current_leader
                .unwrap_or(0),
        }
    }
}

impl AdminService {
    /// The settings every node must share, in name order: the execution settings recorded in
    /// the log (this node's own where none are), then the others.
    fn settings(&self) -> Result<Vec<v1::Setting>, Status> {
        let exec = reads::exec_settings(&self.node.store)
            .map_err(|e| Status::internal(e.to_string()))?
            .map(|r| r.settings)
            .unwrap_or_else(|| self.about.exec.initial_settings());
        let mut settings: Vec<(&str, String)> = vec![
            (
                "expiry_per_epoch_max",
                exec.expiry_per_epoch_max.to_string(),
            ),
            (
                "reservation_ttl_max_s",
                (exec.reservation_life_max_ms / 1000).to_string(),
            ),
            (
                "reservation_ttl_s",
                (exec.reservation_ttl_default_ms / 1000).to_string(),
            ),
        ];
        settings.extend(
            self.about
                .cluster_settings
                .iter()
                .map(|(name, value)| (*name, value.clone())),
        );
        settings.sort();
        Ok(settings
            .into_iter()
            .map(|(name, value)| v1::Setting {
                name: name.to_string(),
                value,
            })
            .collect())
    }

    /// Refuses to add a node that holds another history than this cluster's: one that
    /// initialised a cluster of its own (started without `--peer`, or restored from a backup)
    /// would keep the epochs it applied there, and replicas would diverge. Its state hash at
    /// its applied epoch must be this node's at that epoch; a node that never applied an
    /// epoch passes. It fails closed: a node that cannot be asked (not started yet, another
    /// secret or CA), or whose epoch is older than the hashes this node keeps, is refused
    /// with what to do, never let in unchecked.
    async fn check_history(
        &self,
        node_id: u64,
        addr: &str,
        metadata: &tonic::metadata::MetadataMap,
    ) -> Result<(), Status> {
        let unchecked = |why: String| {
            Status::unavailable(format!(
                "add_member: cannot check the history of node {node_id} at {addr}: {why}. \
                 Start it first with --peer {node_id}=... (itself) so that it waits to be \
                 added, and make sure this node reaches its client port"
            ))
        };
        let channels = self
            .leader_channels
            .as_ref()
            .map_err(|e| unchecked(format!("no channel to it: {e}")))?;
        let channel = channels
            .get(addr)
            .map_err(|e| unchecked(format!("no channel to it: {e}")))?;
        let mut request = Request::new(v1::StatusRequest {});
        if let Some(token) = metadata.get("authorization") {
            request
                .metadata_mut()
                .insert("authorization", token.clone());
        }
        let status = tokio::time::timeout(
            Duration::from_secs(3),
            AdminClient::new(channel).status(request),
        )
        .await;
        let theirs = match status {
            Ok(Ok(answer)) => answer.into_inner(),
            Ok(Err(e)) => {
                tracing::warn!(node_id, addr, error = %e, "could not ask a new member for its history");
                return Err(unchecked(format!(
                    "it answered {:?}: {}",
                    e.code(),
                    e.message()
                )));
            }
            Err(_) => return Err(unchecked("it did not answer within 3 s".into())),
        };
        if theirs.applied_epoch == 0 {
            return Ok(());
        }
        let ours = self
            .node
            .store
            .state_hash_at(theirs.applied_epoch)
            .map_err(|e| Status::internal(e.to_string()))?;
        match ours {
            Some(hash) if hash[..] == theirs.state_hash[..] => Ok(()),
            None if theirs.applied_epoch < self.node.store.applied_epoch() => {
                Err(Status::failed_precondition(format!(
                    "add_member: node {node_id} at {addr} is at epoch {}, older than the state \
                     hashes this node keeps (the last {HASH_WINDOW_EPOCHS} epochs), so its \
                     history cannot be checked. Stop it, empty its data directory and start it \
                     with --peer {node_id}=... (itself): it then installs a snapshot",
                    theirs.applied_epoch
                )))
            }
            _ => Err(Status::failed_precondition(format!(
                "node {node_id} at {addr} holds another history than this cluster's (its \
                 state at epoch {} is not this cluster's): it initialised a cluster of its own. \
                 Stop it, empty its data directory and start it with --peer {node_id}=... \
                 (itself) so that it waits to be added",
                theirs.applied_epoch
            ))),
        }
    }
}

/// A request to the leader's Admin service carrying this node's secret.
/// A membership change proxied to the leader: the secret, and the caller's token (the
/// leader checks it as this node did).
fn with_secret<T>(
    message: T,
    secret: &ClusterSecret,
    metadata: &tonic::metadata::MetadataMap,
) -> Request<T> {
    let mut request = secret.attach(Request::new(message));
    if let Some(token) = metadata.get("authorization") {
        request
            .metadata_mut()
            .insert("authorization", token.clone());
    }
    request
}

fn raft_err(e: impl std::fmt::Display) -> Status {
    Status::unavailable(format!("membership change failed: {e}"))
}

pub fn role_name(state: ServerState) -> &'static str {
    match state {
        ServerState::Leader => "leader",
        ServerState::Follower => "follower",
        ServerState::Candidate => "candidate",
        ServerState::Learner => "learner",
        ServerState::Shutdown => "shutdown",
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    type BackupStream = crate::backup::BackupStream;

    async fn backup(
        &self,
        _request: Request<v1::BackupRequest>,
    ) -> Result<Response<Self::BackupStream>, Status> {
        let stream = self
            .backups
            .stream(
                self.node.node_id,
                self.node.store.clone(),
                self.node.snapshot_dir().to_path_buf(),
                self.closing.clone(),
            )
            .await?;
        Ok(Response::new(stream))
    }

    async fn status(
        &self,
        _request: Request<v1::StatusRequest>,
    ) -> Result<Response<v1::StatusResponse>, Status> {
        let metrics = self.node.raft.metrics().borrow().clone();
        let applied = self.node.store.applied();
        let applied_index = metrics.last_applied.map(|id| id.index).unwrap_or(0);
        let commit_index = self
            .node
            .log
            .committed_index()
            .unwrap_or(0)
            .max(applied_index);
        let recent_hashes = (0..RECENT_HASHES.min(applied.epoch))
            .filter_map(|back| {
                let epoch = applied.epoch - back;
                let hash = self.node.store.state_hash_at(epoch).ok().flatten()?;
                Some(v1::EpochHash {
                    epoch,
                    state_hash: hash.to_vec(),
                })
            })
            .collect();
        let initialized = metrics
            .membership_config
            .membership()
            .nodes()
            .next()
            .is_some();
        Ok(Response::new(v1::StatusResponse {
            members: self.members(),
            recent_hashes,
            initialized,
            node_id: self.node.node_id,
            role: role_name(metrics.state).to_string(),
            leader_id: metrics.current_leader.unwrap_or(0),
            term: metrics.current_term,
            applied_epoch: applied.epoch,
            commit_index,
            applied_index,
            state_hash: applied.state_hash.to_vec(),
            partitions: self.node.store.partitions(),
            queued_txns: self.node.sequencer.queued() as u64,
            version: env!("CARGO_PKG_VERSION").to_string(),
            uptime_ms: self.about.started.elapsed().as_millis() as u64,
            cluster_settings: self.settings()?,
        }))
    }

    async fn get_state_hash(
        &self,
        request: Request<v1::GetStateHashRequest>,
    ) -> Result<Response<v1::GetStateHashResponse>, Status> {
        let epoch = request.into_inner().epoch;
        let hash = self
            .node
            .store
            .state_hash_at(epoch)
            .map_err(|e| Status::internal(e.to_string()))?
            .ok_or_else(|| {
                Status::not_found(format!(
                    "no state hash for epoch {epoch}: not applied yet, or older than the kept window"
                ))
            })?;
        Ok(Response::new(v1::GetStateHashResponse {
            epoch,
            state_hash: hash.to_vec(),
        }))
    }

    async fn init_cluster(
        &self,
        request: Request<v1::InitClusterRequest>,
    ) -> Result<Response<v1::InitClusterResponse>, Status> {
        let demo_data = request.into_inner().demo_data;
        let outcome = self
            .node
            .init_cluster()
            .await
            .map_err(|e| Status::unavailable(format!("initialising the cluster: {e}")))?;
        let leader_id = self
            .node
            .wait_for_leader(Duration::from_secs(30))
            .await
            .map_err(|e| Status::unavailable(format!("no leader was elected: {e}")))?;
        crate::serve::record_cluster_config(&self.node, &self.about.exec)
            .await
            .map_err(|e| Status::unavailable(format!("{e:#}")))?;
        let mut message = match outcome {
            InitOutcome::Initialized => format!(
                "cluster initialised with {} voters; leader is node {leader_id}",
                self.node.peers.len()
            ),
            InitOutcome::AlreadyInitialized => format!(
                "the cluster was already initialised; nothing changed (leader is node {leader_id})"
            ),
        };
        let mut demo_txns = 0;
        if demo_data {
            let has_dcs = reads::count_prefix(&self.node.store, Part::Global, keys::DC, 1)
                .map_err(|e| Status::internal(e.to_string()))?
                > 0;
            if has_dcs {
                message.push_str("; demo data not loaded: the cluster already has DCs");
            } else {
                demo_txns = crate::demo::seed(&self.node, self.queue_txns_max, &Default::default())
                    .await
                    .map_err(|e| Status::unavailable(format!("loading demo data: {e:#}")))?
                    .0 as u64;
                message.push_str(&format!("; demo data loaded ({demo_txns} transactions)"));
            }
        }
        Ok(Response::new(v1::InitClusterResponse {
            initialized: outcome == InitOutcome::Initialized,
            message,
            leader_id,
            members: self.members(),
            demo_txns,
        }))
    }

    async fn add_member(
        &self,
        request: Request<v1::AddMemberRequest>,
    ) -> Result<Response<v1::MembershipResponse>, Status> {
        let request_metadata = request.metadata().clone();
        let r = request.into_inner();
        if r.node_id == 0 || r.addr.is_empty() {
            return Err(Status::invalid_argument(
                "add_member: node_id must be at least 1 and addr (host:port) is required",
            ));
        }
        let peer = match r.peer_addr.as_str() {
            "" => shift_port(&r.addr, i32::from(PEER_PORT_OFFSET)).ok_or_else(|| {
                Status::invalid_argument(format!(
                    "add_member: no peer_addr given, and {:?} + {PEER_PORT_OFFSET} is no address",
                    r.addr
                ))
            })?,
            given => given.to_string(),
        };
        for (what, addr) in [("addr", &r.addr), ("peer_addr", &peer)] {
            if addr.contains(',') || !addr.contains(':') || addr.len() > 256 {
                return Err(Status::invalid_argument(format!(
                    "add_member: {what} {addr:?} is not HOST:PORT"
                )));
            }
        }
        let secret = self.authorise_membership(&request_metadata)?;
        if let Some(mut leader) = self.leader_admin()? {
            return leader
                .add_member(with_secret(r, secret, &request_metadata))
                .await;
        }
        self.check_history(r.node_id, &r.addr, &request_metadata)
            .await?;
        let raft = &self.node.raft;
        let node = BasicNode {
            addr: MemberAddr {
                peer,
                client: r.addr.clone(),
            }
            .entry(),
        };
        tokio::time::timeout(MEMBER_ADD_TIMEOUT, async {
            raft.add_learner(r.node_id, node, true)
                .await
                .map_err(raft_err)?;
            raft.change_membership(
                ChangeMembers::AddVoterIds(BTreeSet::from([r.node_id])),
                false,
            )
            .await
            .map_err(raft_err)?;
            Ok::<_, Status>(())
        })
        .await
        .map_err(|_| Status::deadline_exceeded("the new member did not catch up in time"))??;
        Ok(Response::new(self.membership_response()))
    }

    async fn remove_member(
        &self,
        request: Request<v1::RemoveMemberRequest>,
    ) -> Result<Response<v1::MembershipResponse>, Status> {
        let secret = self.authorise_membership(request.metadata())?;
        let metadata = request.metadata().clone();
        let r = request.into_inner();
        if let Some(mut leader) = self.leader_admin()? {
            return leader
                .remove_member(with_secret(r, secret, &metadata))
                .await;
        }
        let known = self.members();
        let Some(member) = known.iter().find(|m| m.node_id == r.node_id) else {
            return Err(Status::not_found(format!(
                "node {} is not a member",
                r.node_id
            )));
        };
        let change = if member.voter {
            if known.iter().filter(|m| m.voter).count() == 1 {
                return Err(Status::failed_precondition("cannot remove the last voter"));
            }
            ChangeMembers::RemoveVoters(BTreeSet::from([r.node_id]))
        } else {
            ChangeMembers::RemoveNodes(BTreeSet::from([r.node_id]))
        };
        tokio::time::timeout(
            MEMBERSHIP_TIMEOUT,
            self.node.raft.change_membership(change, false),
        )
        .await
        .map_err(|_| Status::deadline_exceeded("the membership change did not commit in time"))?
        .map_err(raft_err)?;
        Ok(Response::new(self.membership_response()))
    }

    async fn set_execution_settings(
        &self,
        request: Request<v1::SetExecutionSettingsRequest>,
    ) -> Result<Response<v1::SetExecutionSettingsResponse>, Status> {
        let r = request.into_inner();
        let current = reads::exec_settings(&self.node.store)
            .map_err(|e| Status::internal(e.to_string()))?
            .map(|r| r.settings)
            .unwrap_or_else(|| self.about.exec.initial_settings());
        let keep_or = |given: u32, current: u64, unit: u64| match given {
            0 => current,
            n => u64::from(n) * unit,
        };
        let settings = ordo_scheduler::ExecSettings {
            reservation_ttl_default_ms: keep_or(
                r.reservation_ttl_s,
                current.reservation_ttl_default_ms,
                1000,
            ),
            reservation_life_max_ms: keep_or(
                r.reservation_ttl_max_s,
                current.reservation_life_max_ms,
                1000,
            ),
            expiry_per_epoch_max: keep_or(r.expiry_per_epoch_max, current.expiry_per_epoch_max, 1),
            initial: false,
        };
        let txn = ordo_scheduler::Txn {
            // Each change its own request: a change is a set, so a repeat does no harm.
            request_id: format!(
                "ordo-exec-settings-set-{}",
                crate::random::hex(
                    &crate::random::bytes::<16>("a request id")
                        .map_err(|e| Status::internal(format!("{e:#}")))?
                )
            ),
            op: ordo_scheduler::Op::ExecSettings(settings),
        };
        ordo_scheduler::validate::validate(&txn)
            .map_err(|e| Status::invalid_argument(format!("set_execution_settings: {e}")))?;
        let waits = self
            .node
            .sequencer
            .submit(vec![txn])
            .map_err(|e| Status::unavailable(format!("set_execution_settings: {e}")))?;
        let mut epoch = 0;
        for wait in waits {
            let result = tokio::time::timeout(Duration::from_secs(30), wait.rx)
                .await
                .map_err(|_| {
                    Status::deadline_exceeded("set_execution_settings: no result in 30 s")
                })?
                .map_err(|_| Status::unavailable("set_execution_settings: the node is stopping"))?
                .map_err(|e| Status::unavailable(format!("set_execution_settings: {e}")))?;
            if let ordo_scheduler::Outcome::Refused { reason, .. } = result.outcome {
                return Err(Status::invalid_argument(format!(
                    "set_execution_settings: {reason}"
                )));
            }
            epoch = result.epoch;
        }
        Ok(Response::new(v1::SetExecutionSettingsResponse {
            reservation_ttl_s: (settings.reservation_ttl_default_ms / 1000) as u32,
            reservation_ttl_max_s: (settings.reservation_life_max_ms / 1000) as u32,
            expiry_per_epoch_max: settings.expiry_per_epoch_max as u32,
            epoch,
        }))
    }

    async fn set_clock_fault(
        &self,
        request: Request<v1::SetClockFaultRequest>,
    ) -> Result<Response<v1::SetClockFaultResponse>, Status> {
        let Some(clock) = &self.fault_clock else {
            return Err(Status::failed_precondition(format!(
                "node {} does not accept fault injection; start it with --fault-injection \
                 (for fault tests only)",
                self.node.node_id
            )));
        };
        let r = request.into_inner();
        clock
            .set(r.offset_ms, r.strobe_ms, r.strobe_period_ms)
            .map_err(|e| Status::invalid_argument(format!("set_clock_fault: {e}")))?;
        tracing::warn!(
            offset_ms = r.offset_ms,
            strobe_ms = r.strobe_ms,
            strobe_period_ms = r.strobe_period_ms,
            "clock fault set"
        );
        Ok(Response::new(v1::SetClockFaultResponse {
            clock_ms: clock.now_ms(),
        }))
    }
}
