//! The `Admin` service: node status and state hashes.

use std::sync::Arc;

use openraft::ServerState;
use ordo_proto::v1;
use ordo_proto::v1::admin_server::Admin;
use ordo_sequencer::Node;
use tonic::{Request, Response, Status};

pub struct AdminService {
    node: Arc<Node>,
}

impl AdminService {
    pub fn new(node: Arc<Node>) -> Self {
        Self { node }
    }
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
        Ok(Response::new(v1::StatusResponse {
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
}
