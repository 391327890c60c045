//! The server side of `ordo.internal.v1.Raft`: hands peers' Raft messages to openraft, takes
//! transactions forwarded by followers into this (leader's) sequencer, and answers read-index
//! requests for linearizable reads on followers.

use std::time::Duration;

use ordo_proto::internal::v1::raft_server::Raft as RaftRpc;
use ordo_proto::internal::v1::{
    forward_refusal, ForwardRefusal, ForwardRequest, ForwardResponse, RaftPayload,
    ReadIndexRequest, ReadIndexResponse,
};
use ordo_scheduler::validate::validate;
use ordo_scheduler::{Op, Txn};
use tonic::{Request, Response, Status};

use crate::batcher::{Sequencer, SubmitError};
use crate::network::{decode, encode};
use crate::types::{NodeId, Raft};
use crate::waiters::TxnFailure;

pub struct RaftService {
    pub node_id: NodeId,
    /// This node's partition count: the only one a forwarded cluster record may carry.
    pub partitions: u32,
    pub raft: Raft,
    pub sequencer: Sequencer,
    /// How long a forwarded batch may take to execute before its ids are reported failed.
    pub forward_timeout: Duration,
}

fn bad_payload(e: String) -> Status {
    Status::invalid_argument(format!("undecodable raft payload: {e}"))
}

fn reply<T: serde::Serialize>(value: &T) -> Result<Response<RaftPayload>, Status> {
    let data = encode(value).map_err(Status::internal)?;
    Ok(Response::new(RaftPayload { data }))
}

#[tonic::async_trait]
impl RaftRpc for RaftService {
    async fn append_entries(
        &self,
        request: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        let rpc = decode(&request.into_inner().data).map_err(bad_payload)?;
        reply(&self.raft.append_entries(rpc).await)
    }

    async fn vote(&self, request: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let rpc = decode(&request.into_inner().data).map_err(bad_payload)?;
        reply(&self.raft.vote(rpc).await)
    }

    async fn install_snapshot(
        &self,
        request: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        let rpc = decode(&request.into_inner().data).map_err(bad_payload)?;
        reply(&self.raft.install_snapshot(rpc).await)
    }

    async fn forward(
        &self,
        request: Request<ForwardRequest>,
    ) -> Result<Response<ForwardResponse>, Status> {
        let request = request.into_inner();
        let txns: Vec<Txn> = decode(&request.txns).map_err(bad_payload)?;
        let leader = self.raft.metrics().borrow().current_leader;
        if leader != Some(self.node_id) {
            return Err(Status::failed_precondition(format!(
                "node {} is not the leader (leader: {leader:?})",
                self.node_id
            )));
        }
        // The same validator as the edge's and execution's: a follower of another version, or
        // anything else that reaches this port, gets inadmissible transactions back unsequenced.
        let mut refused = Vec::new();
        let mut admissible = Vec::with_capacity(txns.len());
        for txn in txns {
            let verdict = validate(&txn).and_then(|()| match txn.op {
                // Only a node's own sequencer proposes the cluster record; a follower
                // forwards it at cluster-init. A replica with another count would stop on
                // it, so the leader admits only its own count.
                Op::ClusterConfig { partitions } if partitions != self.partitions => Err(format!(
                    "a cluster record with {partitions} partitions; this cluster has {}",
                    self.partitions
                )),
                _ => Ok(()),
            });
            match verdict {
                Ok(()) => admissible.push(txn),
                Err(reason) => refused.push(ForwardRefusal {
                    request_id: txn.request_id,
                    reason,
                    kind: forward_refusal::Kind::Invalid as i32,
                }),
            }
        }
        let waits = self.sequencer.submit(admissible).map_err(|e| match e {
            SubmitError::QueueFull { .. } => Status::resource_exhausted(e.to_string()),
            SubmitError::ShuttingDown => Status::unavailable(e.to_string()),
        })?;
        let deadline = tokio::time::Instant::now() + self.forward_timeout;
        let mut failed = Vec::new();
        let mut error = String::new();
        let waiters = self.sequencer.waiters().clone();
        for wait in waits {
            match tokio::time::timeout_at(deadline, wait.rx).await {
                Ok(Ok(Ok(_))) => {}
                Ok(Ok(Err(
                    e @ (TxnFailure::NotApplied(_)
                    | TxnFailure::Overloaded(_)
                    | TxnFailure::Invalid(_)),
                ))) => {
                    let kind = match e {
                        TxnFailure::Invalid(_) => forward_refusal::Kind::Invalid,
                        _ => forward_refusal::Kind::NotApplied,
                    };
                    refused.push(ForwardRefusal {
                        request_id: wait.request_id,
                        reason: e.to_string(),
                        kind: kind as i32,
                    });
                }
                Ok(Ok(Err(e))) => {
                    error = e.to_string();
                    failed.push(wait.request_id);
                }
                Ok(Err(_)) => {
                    error = "the leader is shutting down".into();
                    failed.push(wait.request_id);
                }
                Err(_) => {
                    waiters.cancel(&wait.request_id, wait.id);
                    error = "not executed in time on the leader".into();
                    failed.push(wait.request_id);
                }
            }
        }
        Ok(Response::new(ForwardResponse {
            failed_request_ids: failed,
            error,
            refused,
        }))
    }

    async fn read_index(
        &self,
        _request: Request<ReadIndexRequest>,
    ) -> Result<Response<ReadIndexResponse>, Status> {
        match self.raft.ensure_linearizable().await {
            Ok(log_id) => Ok(Response::new(ReadIndexResponse {
                read_index: log_id.map(|id| id.index).unwrap_or(0),
            })),
            Err(e) => Err(Status::unavailable(format!(
                "node {} cannot confirm leadership: {e}",
                self.node_id
            ))),
        }
    }
}
