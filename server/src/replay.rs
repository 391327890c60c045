//! `ordo replay`: re-executes a stopped node's Raft log from scratch in a temporary store and
//! compares the resulting state hash with the one the node recorded at the same epoch. The
//! determinism check a user can run on their own data.

use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context};
use openraft::storage::{RaftLogReader, RaftLogStorage, RaftStateMachine};
use ordo_scheduler::ExecConfig;
use ordo_sequencer::snapshot_data::SnapshotData;
use ordo_sequencer::state_machine::{load_snapshot, StateMachine};
use ordo_sequencer::{LogStore, Waiters};
use ordo_storage::{hex, Store};
use serde_json::json;

/// Entries applied per state-machine call while replaying.
const REPLAY_CHUNK_ENTRIES: u64 = 256;

pub struct ReplayReport {
    pub entries: u64,
    pub epoch: u64,
    pub replayed_hash: [u8; 32],
    pub stored_hash: Option<[u8; 32]>,
}

impl ReplayReport {
    pub fn matches(&self) -> bool {
        self.stored_hash == Some(self.replayed_hash)
    }

    pub fn json(&self) -> serde_json::Value {
        json!({
            "entries": self.entries,
            "epoch": self.epoch,
            "state_hash": hex(&self.replayed_hash),
            "stored_state_hash": self.stored_hash.map(|h| hex(&h)),
            "match": self.matches(),
        })
    }
}

pub async fn replay(data_dir: &Path, expiry_per_epoch_max: usize) -> anyhow::Result<ReplayReport> {
    if !data_dir.join("raft-log").is_dir() {
        bail!("{} holds no Ordo raft log", data_dir.display());
    }
    // Open the node's store first: it fails if the node is still running (sled's lock).
    let stored = Store::open_existing(data_dir.join("state"))
        .context("opening the node's store (is the node still running? stop it first)")?;
    let mut log = LogStore::open(data_dir.join("raft-log")).context("opening the raft log")?;
    let log_state = log.get_log_state().await.context("reading the raft log")?;
    let last = log_state.last_log_id.map(|id| id.index);
    let committed = log.committed_index().or(last);
    let Some(end) = committed else {
        bail!("the raft log is empty: nothing to replay");
    };

    let scratch = tempfile::tempdir().context("creating a scratch directory")?;
    let store = Arc::new(Store::open(
        scratch.path().join("state"),
        stored.partitions(),
    )?);
    let mut sm = StateMachine::open(
        store.clone(),
        ExecConfig {
            expiry_per_epoch_max,
            ..ExecConfig::default()
        },
        Arc::new(Waiters::default()),
        &scratch.path().join("snapshots"),
    )?;
    let mut next = 0;
    if let Some(purged) = log_state.last_purged_log_id {
        let (meta, file, offset) = load_snapshot(&data_dir.join("snapshots"))?
            .context("the log is purged but the node has no snapshot to start from")?;
        if meta.last_log_id.map(|id| id.index) < Some(purged.index) {
            bail!("the snapshot ends before the purged log; cannot replay");
        }
        next = meta.last_log_id.map(|id| id.index + 1).unwrap_or(0);
        // Read where it is: the node's file is not moved.
        sm.install_snapshot(&meta, Box::new(SnapshotData::reading(file, offset)))
            .await?;
    }
    let mut entries = 0;
    while next <= end {
        let upto = (next + REPLAY_CHUNK_ENTRIES).min(end + 1);
        let chunk = log.try_get_log_entries(next..upto).await?;
        if chunk.is_empty() {
            bail!("the raft log has a gap at index {next}");
        }
        entries += chunk.len() as u64;
        next += chunk.len() as u64;
        sm.apply(chunk).await?;
    }
    let applied = store.applied();
    let stored_hash = stored.state_hash_at(applied.epoch)?;
    Ok(ReplayReport {
        entries,
        epoch: applied.epoch,
        replayed_hash: applied.state_hash,
        stored_hash,
    })
}
