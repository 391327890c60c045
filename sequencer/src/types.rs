//! The openraft type configuration: one Raft entry is one epoch batch.

use serde::{Deserialize, Serialize};

pub use ordo_scheduler::Batch;

/// What applying one Raft entry returns to the proposer. Transaction results go to waiting
/// clients through [`crate::Waiters`] instead, on every replica alike.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryApplied {
    /// The epoch the entry became, or `None` for blank and membership entries.
    pub epoch: Option<u64>,
}

openraft::declare_raft_types!(
    /// Ordo's Raft types: node ids are `u64`, nodes carry their gRPC address.
    pub TypeConfig:
        D = Batch,
        R = EntryApplied,
        NodeId = u64,
        Node = openraft::BasicNode,
        SnapshotData = crate::snapshot_data::SnapshotData,
);

pub type NodeId = u64;
pub type Raft = openraft::Raft<TypeConfig>;
pub type LogId = openraft::LogId<NodeId>;
pub type StoredMembership = openraft::StoredMembership<NodeId, openraft::BasicNode>;
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, openraft::BasicNode>;
pub type StorageError = openraft::StorageError<NodeId>;
pub type LogStore = ordo_storage::LogStore<TypeConfig>;
