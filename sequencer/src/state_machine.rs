//! The Raft state machine: applies committed epoch batches through the scheduler into the
//! partition stores, and answers waiting clients.
//!
//! Each normal entry becomes the next epoch: `epoch = applied + 1`, `time_ms =
//! max(previous time + 1, proposed time)`. Both come from the log and the store, never from
//! this node's clock, so every replica computes the same epochs. Execution runs on a blocking
//! thread; its writes and the Raft metadata (last applied log id, membership) are committed in
//! one atomic store commit. An execution or storage error is returned to openraft, which stops
//! the node: a replica never handles such a failure differently from its peers.

use std::fs::{self, File};
use std::io::{Cursor, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine, Snapshot};
use openraft::{AnyError, EntryPayload, OptionalSend, RaftLogId, StorageIOError};
use ordo_scheduler::{epoch_time_ms, execute_epoch, ExecConfig};
use ordo_storage::{EpochCommit, EpochStamp, Store};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::types::*;
use crate::waiters::Waiters;

/// The Raft metadata stored atomically with the state.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct RaftMeta {
    last_applied: Option<LogId>,
    membership: StoredMembership,
}

fn sm_read_err(e: impl ToString) -> StorageError {
    StorageIOError::read_state_machine(AnyError::error(e.to_string())).into()
}

fn sm_write_err(e: impl ToString) -> StorageError {
    StorageIOError::write_state_machine(AnyError::error(e.to_string())).into()
}

fn snapshot_err(e: impl ToString) -> StorageError {
    StorageIOError::write_snapshot(None, AnyError::error(e.to_string())).into()
}

fn decode_meta(bytes: &[u8]) -> Result<RaftMeta, StorageError> {
    if bytes.is_empty() {
        return Ok(RaftMeta::default());
    }
    bincode::deserialize(bytes).map_err(sm_read_err)
}

pub struct StateMachine {
    store: Arc<Store>,
    exec: ExecConfig,
    waiters: Arc<Waiters>,
    /// The applied epoch, for readers that wait for one (read-your-writes) and for status.
    applied_epoch: watch::Sender<u64>,
    snapshot_path: PathBuf,
    meta: RaftMeta,
}

impl StateMachine {
    /// Opens the state machine over `store`. If the last snapshot on disk is ahead of the store
    /// (sled lost its newest epochs in a crash after the log was purged behind the snapshot),
    /// the store is restored from the snapshot first.
    pub fn open(
        store: Arc<Store>,
        exec: ExecConfig,
        waiters: Arc<Waiters>,
        snapshot_dir: &Path,
    ) -> Result<Self, StorageError> {
        fs::create_dir_all(snapshot_dir).map_err(snapshot_err)?;
        let snapshot_path = snapshot_dir.join("current.snap");
        let mut meta = decode_meta(&store.applied().raft_meta)?;
        if let Some((snap_meta, data)) = read_snapshot_file(&snapshot_path)? {
            if snap_meta.last_log_id > meta.last_applied {
                tracing::warn!(
                    snapshot = ?snap_meta.last_log_id,
                    store = ?meta.last_applied,
                    "store is behind the last snapshot; restoring it from the snapshot"
                );
                store.import_snapshot(&data).map_err(sm_write_err)?;
                meta = decode_meta(&store.applied().raft_meta)?;
            }
        }
        let (applied_epoch, _) = watch::channel(store.applied_epoch());
        Ok(Self {
            store,
            exec,
            waiters,
            applied_epoch,
            snapshot_path,
            meta,
        })
    }

    /// Follows the applied epoch.
    pub fn applied_epoch(&self) -> watch::Receiver<u64> {
        self.applied_epoch.subscribe()
    }

    fn commit_meta(&self) -> Result<(), StorageError> {
        let raft_meta = bincode::serialize(&self.meta).map_err(sm_write_err)?;
        self.store
            .commit(EpochCommit {
                raft_meta,
                ..EpochCommit::default()
            })
            .map_err(sm_write_err)?;
        Ok(())
    }

    async fn apply_batch(&mut self, log_id: LogId, batch: Batch) -> Result<u64, StorageError> {
        let previous = self.store.applied();
        let epoch = previous.epoch + 1;
        let time_ms = epoch_time_ms(previous.time_ms, batch.time_ms);
        let next_meta = RaftMeta {
            last_applied: Some(log_id),
            membership: self.meta.membership.clone(),
        };
        let raft_meta = bincode::serialize(&next_meta).map_err(sm_write_err)?;
        let store = self.store.clone();
        let exec = self.exec.clone();
        let results = tokio::task::spawn_blocking(move || {
            let output = execute_epoch(&store, &exec, epoch, time_ms, &batch.txns)
                .map_err(|e| format!("executing epoch {epoch}: {e}"))?;
            store
                .commit(EpochCommit {
                    stamp: Some(EpochStamp { epoch, time_ms }),
                    writes: output.writes,
                    raft_meta,
                })
                .map_err(|e| format!("committing epoch {epoch}: {e}"))?;
            Ok::<_, String>(output.results)
        })
        .await
        .map_err(sm_write_err)?
        .map_err(|e| {
            tracing::error!(error = %e, "the state machine cannot apply the log; stopping");
            sm_write_err(e)
        })?;
        self.meta = next_meta;
        for result in &results {
            self.waiters.complete(result);
        }
        self.applied_epoch.send_replace(epoch);
        Ok(epoch)
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        Ok((self.meta.last_applied, self.meta.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<EntryApplied>, StorageError>
    where
        I: IntoIterator<Item = openraft::Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut replies = Vec::new();
        for entry in entries {
            let log_id = *entry.get_log_id();
            match entry.payload {
                EntryPayload::Blank => {
                    self.meta.last_applied = Some(log_id);
                    self.commit_meta()?;
                    replies.push(EntryApplied { epoch: None });
                }
                EntryPayload::Membership(membership) => {
                    self.meta.last_applied = Some(log_id);
                    self.meta.membership = StoredMembership::new(Some(log_id), membership);
                    self.commit_meta()?;
                    replies.push(EntryApplied { epoch: None });
                }
                EntryPayload::Normal(batch) => {
                    let epoch = self.apply_batch(log_id, batch).await?;
                    replies.push(EntryApplied { epoch: Some(epoch) });
                }
            }
        }
        Ok(replies)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder {
            store: self.store.clone(),
            path: self.snapshot_path.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let data = snapshot.into_inner();
        write_snapshot_file(&self.snapshot_path, meta, &data)?;
        let store = self.store.clone();
        let data_for_store = data;
        tokio::task::spawn_blocking(move || store.import_snapshot(&data_for_store))
            .await
            .map_err(sm_write_err)?
            .map_err(sm_write_err)?;
        self.meta = RaftMeta {
            last_applied: meta.last_log_id,
            membership: meta.last_membership.clone(),
        };
        self.commit_meta()?;
        self.applied_epoch.send_replace(self.store.applied_epoch());
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        Ok(
            read_snapshot_file(&self.snapshot_path)?.map(|(meta, data)| Snapshot {
                meta,
                snapshot: Box::new(Cursor::new(data)),
            }),
        )
    }
}

/// Builds snapshots from the store while the state machine goes on applying.
pub struct SnapshotBuilder {
    store: Arc<Store>,
    path: PathBuf,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let store = self.store.clone();
        let (applied, data) = tokio::task::spawn_blocking(move || store.export_snapshot())
            .await
            .map_err(snapshot_err)?
            .map_err(snapshot_err)?;
        let raft_meta = decode_meta(&applied.raft_meta)?;
        let snapshot_id = format!(
            "e{}-i{}",
            applied.epoch,
            raft_meta.last_applied.map(|id| id.index).unwrap_or(0)
        );
        let meta = SnapshotMeta {
            last_log_id: raft_meta.last_applied,
            last_membership: raft_meta.membership,
            snapshot_id,
        };
        write_snapshot_file(&self.path, &meta, &data)?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

/// `[meta length: u32 LE][bincode meta][data]`, written to a temporary file, fsynced and
/// renamed into place, so the current snapshot is always whole.
fn write_snapshot_file(path: &Path, meta: &SnapshotMeta, data: &[u8]) -> Result<(), StorageError> {
    let meta_bytes = bincode::serialize(meta).map_err(snapshot_err)?;
    let tmp = path.with_extension("tmp");
    let mut file = File::create(&tmp).map_err(snapshot_err)?;
    file.write_all(&(meta_bytes.len() as u32).to_le_bytes())
        .and_then(|_| file.write_all(&meta_bytes))
        .and_then(|_| file.write_all(data))
        .and_then(|_| file.sync_all())
        .map_err(snapshot_err)?;
    fs::rename(&tmp, path).map_err(snapshot_err)?;
    if let Some(dir) = path.parent() {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(snapshot_err)?;
    }
    Ok(())
}

/// The current snapshot in `snapshot_dir`, if any: its metadata and the store export.
pub fn load_snapshot(snapshot_dir: &Path) -> Result<Option<(SnapshotMeta, Vec<u8>)>, StorageError> {
    read_snapshot_file(&snapshot_dir.join("current.snap"))
}

fn read_snapshot_file(path: &Path) -> Result<Option<(SnapshotMeta, Vec<u8>)>, StorageError> {
    let mut file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(sm_read_err(e)),
    };
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).map_err(sm_read_err)?;
    if bytes.len() < 4 {
        return Err(sm_read_err(format!(
            "snapshot {} is truncated",
            path.display()
        )));
    }
    let meta_len = u32::from_le_bytes(bytes[..4].try_into().expect("4 bytes")) as usize;
    let meta_end = 4 + meta_len;
    if bytes.len() < meta_end {
        return Err(sm_read_err(format!(
            "snapshot {} is truncated",
            path.display()
        )));
    }
    let meta: SnapshotMeta = bincode::deserialize(&bytes[4..meta_end]).map_err(sm_read_err)?;
    Ok(Some((meta, bytes.split_off(meta_end))))
}
