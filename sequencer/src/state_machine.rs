//! The Raft state machine: applies committed epoch batches through the scheduler into the
//! partition stores, and answers waiting clients.
//!
//! Each normal entry becomes the next epoch: `epoch = applied + 1`, `time_ms =
//! max(previous time + 1, proposed time)`. Both come from the log and the store, never from
//! this node's clock, so every replica computes the same epochs. Execution runs on a blocking
//! thread; its writes and the Raft metadata (last applied log id, membership) are committed in
//! one atomic store commit. An execution or storage error is returned to openraft, which stops
//! the node: a replica never handles such a failure differently from its peers.
//!
//! Snapshots live in `snapshots/current.snap`. Two writers can race for it: the snapshot
//! builder (openraft runs it in its own task while entries go on being applied) and
//! [`RaftStateMachine::install_snapshot`]. Both go through [`CurrentSnapshot`]: one writer at a
//! time, each through its own temporary file that is fsynced and renamed into place, and only
//! a snapshot with a newer last log id than the file's replaces it, so a build that read the
//! store before an install finished never puts the older state back. An install writes the file
//! before it imports: if the node dies during the import, the store says so on the next open
//! ([`Store::import_interrupted`]) and [`StateMachine::open`] imports that file again.

use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine, Snapshot};
use openraft::{AnyError, EntryPayload, OptionalSend, RaftLogId, StorageIOError};
use ordo_scheduler::feed::EpochEvents;
use ordo_scheduler::held::HeldRows;
use ordo_scheduler::{epoch_time_ms, execute_epoch, ExecConfig};
use ordo_storage::{EpochCommit, EpochStamp, PacedFile, SnapshotSource, Store};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::snapshot_data::{OpenFile, SnapshotData, TempPath};
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
    /// `current.snap`, shared with the snapshot builders.
    snapshot: CurrentSnapshot,
    meta: RaftMeta,
    /// Held rows of live holds, moved by every epoch (`ordo_reservations_live`).
    held: Arc<std::sync::Mutex<HeldRows>>,
}

impl StateMachine {
    /// Opens the state machine over `store`. The store is restored from the last snapshot on
    /// disk first if it is behind it (sled lost its newest epochs in a crash after the log was
    /// purged behind the snapshot), or if a snapshot install was interrupted: the install wrote
    /// `current.snap` before it began importing, so importing it again finishes the install.
    pub fn open(
        store: Arc<Store>,
        exec: ExecConfig,
        waiters: Arc<Waiters>,
        snapshot_dir: &Path,
    ) -> Result<Self, StorageError> {
        let snapshot = CurrentSnapshot::open(snapshot_dir)?;
        let mut meta = decode_meta(&store.applied().raft_meta)?;
        let current = snapshot.open_current()?;
        let restore = match current {
            None if store.import_interrupted() => {
                return Err(sm_read_err(format!(
                    "a snapshot install was interrupted, but the snapshot it was installing \
                     ({}) is missing, so it cannot be finished; wipe the data directory and let \
                     the node catch up from the cluster",
                    snapshot.path.display()
                )));
            }
            None => None,
            Some((snap_meta, file, offset)) if store.import_interrupted() => {
                // An install only ever imports a snapshot past the store's state, so an older
                // file cannot be the one it was importing.
                if snap_meta.last_log_id < meta.last_applied {
                    return Err(sm_read_err(format!(
                        "a snapshot install was interrupted, but {} (up to {:?}) is older than \
                         the store (up to {:?}), so it is not the snapshot being installed; wipe \
                         the data directory and let the node catch up from the cluster",
                        snapshot.path.display(),
                        snap_meta.last_log_id,
                        meta.last_applied
                    )));
                }
                tracing::warn!(
                    snapshot = ?snap_meta.last_log_id,
                    store = ?meta.last_applied,
                    "a snapshot install was interrupted; finishing it from the snapshot on disk"
                );
                Some((file, offset))
            }
            Some((snap_meta, file, offset)) if snap_meta.last_log_id > meta.last_applied => {
                tracing::warn!(
                    snapshot = ?snap_meta.last_log_id,
                    store = ?meta.last_applied,
                    "store is behind the last snapshot; restoring it from the snapshot"
                );
                Some((file, offset))
            }
            Some(_) => None,
        };
        if let Some((file, offset)) = restore {
            let source = SnapshotSource::File {
                file: &file,
                offset,
                len: None,
            };
            store.import_snapshot_from(source).map_err(sm_write_err)?;
            meta = decode_meta(&store.applied().raft_meta)?;
        }
        let (applied_epoch, _) = watch::channel(store.applied_epoch());
        let held = HeldRows::load(&store).map_err(sm_read_err)?;
        ordo_metrics::HOLDS_LIVE.set(held.live() as i64);
        Ok(Self {
            held: Arc::new(std::sync::Mutex::new(held)),
            store,
            exec,
            waiters,
            applied_epoch,
            snapshot,
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
        let held = self.held.clone();
        let (txns, results) = tokio::task::spawn_blocking(move || {
            let output = execute_epoch(&store, &exec, epoch, time_ms, &batch.txns)
                .map_err(|e| format!("executing epoch {epoch}: {e}"))?;
            let mut held = held.lock().expect("held rows");
            held.absorb(&store, &output.writes)
                .map_err(|e| format!("counting the held rows of epoch {epoch}: {e}"))?;
            let feed = (!output.events.is_empty()).then(|| {
                EpochEvents {
                    time_ms,
                    events: output.events,
                }
                .encode()
            });
            store
                .commit(EpochCommit {
                    stamp: Some(EpochStamp { epoch, time_ms }),
                    writes: output.writes,
                    raft_meta,
                    feed,
                })
                .map_err(|e| format!("committing epoch {epoch}: {e}"))?;
            held.advance(time_ms);
            ordo_metrics::HOLDS_LIVE.set(held.live() as i64);
            Ok::<_, String>((batch.txns, output.results))
        })
        .await
        .map_err(sm_write_err)?
        .map_err(|e| {
            tracing::error!(error = %e, "the state machine cannot apply the log; stopping");
            sm_write_err(e)
        })?;
        self.meta = next_meta;
        for (txn, result) in txns.iter().zip(&results) {
            self.waiters.complete(txn, result);
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
            snapshot: self.snapshot.clone(),
        }
    }

    /// A new file in the snapshot directory that openraft writes the chunks into (removed
    /// if the transfer is abandoned).
    async fn begin_receiving_snapshot(&mut self) -> Result<Box<SnapshotData>, StorageError> {
        let current = self.snapshot.clone();
        let (file, temp) = tokio::task::spawn_blocking(move || current.create_temp())
            .await
            .map_err(snapshot_err)??;
        Ok(Box::new(SnapshotData::new(file, META_REGION_BYTES, temp)))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<SnapshotData>,
    ) -> Result<(), StorageError> {
        let SnapshotData {
            file,
            base,
            open,
            temp,
        } = *snapshot;
        let file = file.into_std().await;
        let (store, current, snapshot_meta) =
            (self.store.clone(), self.snapshot.clone(), meta.clone());
        let started = std::time::Instant::now();
        tokio::task::spawn_blocking(move || {
            let bytes = file
                .metadata()
                .map_err(sm_read_err)?
                .len()
                .saturating_sub(base);
            ordo_metrics::SNAPSHOT_BYTES.set(bytes as i64);
            // The file becomes `current.snap` before the import changes anything: if this node
            // dies during the import, the next open finishes the import from it. A newer file would stay, and finishing
            // from it would reach a state this node applied itself; but openraft installs only
            // snapshots past the applied state, and the file is never past it. A received
            // file is renamed into place; any other (`ordo replay` installs a node's own
            // `current.snap`) is copied, and stays where it is.
            // Counted as open until the import ends, so that no newer snapshot frees it.
            let (file, temp, _open) = if temp.is_some() && base == META_REGION_BYTES {
                (file, temp, open)
            } else {
                let (copy, temp) = current.copy_in(file, base)?;
                let open = OpenFile::count(&copy);
                (copy, temp, open)
            };
            // The chunks went into the page cache as they came: written out in paced
            // windows, not all at once by the fsync that seals the file.
            ordo_storage::store::write_out_paced(&file).map_err(sm_write_err)?;
            let source = SnapshotSource::File {
                file: &file,
                offset: META_REGION_BYTES,
                len: None,
            };
            // Sealed once the whole file has passed the import's check: a snapshot this node
            // cannot import never replaces its current one.
            store
                .import_snapshot_after(source, || {
                    current
                        .seal(&file, temp, &snapshot_meta)
                        .map(|_| ())
                        .map_err(|e| std::io::Error::other(e.to_string()))
                })
                .map_err(sm_write_err)?;
            HeldRows::load(&store).map_err(sm_write_err)
        })
        .await
        .map_err(sm_write_err)?
        .map(|held| {
            ordo_metrics::HOLDS_LIVE.set(held.live() as i64);
            *self.held.lock().expect("held rows") = held;
        })?;
        ordo_metrics::SNAPSHOT_INSTALL.observe_duration(started.elapsed());
        tracing::info!(
            snapshot = %meta.snapshot_id,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "snapshot installed"
        );
        self.meta = RaftMeta {
            last_applied: meta.last_log_id,
            membership: meta.last_membership.clone(),
        };
        self.commit_meta()?;
        self.applied_epoch.send_replace(self.store.applied_epoch());
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        Ok(self
            .snapshot
            .open_current_counted()?
            .map(|(meta, file, offset, open)| Snapshot {
                meta,
                snapshot: Box::new(SnapshotData::counted(
                    file,
                    offset,
                    TempPath::default(),
                    open,
                )),
            }))
    }
}

/// Builds snapshots from the store while the state machine goes on applying.
/// `ordo_snapshot_building` at 1 while it lives, whatever way the build ends.
struct Building;

impl Building {
    fn start() -> Building {
        ordo_metrics::SNAPSHOT_BUILDING.set(1);
        Building
    }
}

impl Drop for Building {
    fn drop(&mut self) {
        ordo_metrics::SNAPSHOT_BUILDING.set(0);
    }
}

pub struct SnapshotBuilder {
    store: Arc<Store>,
    snapshot: CurrentSnapshot,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    /// Returns the snapshot it built, whether or not it replaced `current.snap`: openraft
    /// reads only the returned meta, keeps it only if it is newer than the snapshot it knows
    /// (which an install that made the file newer already told it of), and purges the log no
    /// further than that meta. Meta and data always describe the same state.
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let (store, current) = (self.store.clone(), self.snapshot.clone());
        let started = std::time::Instant::now();
        let (meta, file, bytes, open) = tokio::task::spawn_blocking(move || {
            let _building = Building::start();
            let (file, temp) = current.create_temp()?;
            // Counted as open from the start: once sealed, a newer snapshot replacing it
            // must not free it while the returned `SnapshotData` has it.
            let open = OpenFile::count(&file);
            let mut paced = PacedFile::new(file).map_err(snapshot_err)?;
            let (applied, bytes) = store.export_snapshot_to(&mut paced).map_err(snapshot_err)?;
            let file = paced.into_inner();
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
            current.seal(&file, temp, &meta)?;
            Ok::<_, StorageError>((meta, file, bytes, open))
        })
        .await
        .map_err(snapshot_err)??;
        ordo_metrics::SNAPSHOT_BUILD.observe_duration(started.elapsed());
        ordo_metrics::SNAPSHOT_BYTES.set(bytes as i64);
        tracing::info!(
            snapshot = %meta.snapshot_id,
            bytes,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "snapshot built"
        );
        Ok(Snapshot {
            meta,
            snapshot: Box::new(SnapshotData::counted(
                file,
                META_REGION_BYTES,
                TempPath::default(),
                open,
            )),
        })
    }
}

/// Numbers temporary snapshot files, so no two writes in this process share one.
static SNAPSHOT_TMP_SEQ: AtomicU64 = AtomicU64::new(0);

/// `current.snap` in a node's snapshot directory: `[meta length: u32 LE][bincode meta][data]`,
/// the meta zero-padded to [`META_REGION_BYTES`] (see there). Clones share the writer lock; the state machine and its snapshot builders hold one each.
#[derive(Clone)]
pub struct CurrentSnapshot {
    path: PathBuf,
    /// Held from reading the current file's meta until the new file is renamed over it, so a
    /// writer's "is mine newer?" and its rename are one step.
    writer: Arc<Mutex<()>>,
}

impl CurrentSnapshot {
    /// Creates `dir` if needed and removes temporary files a crashed writer left behind.
    pub fn open(dir: &Path) -> Result<Self, StorageError> {
        fs::create_dir_all(dir).map_err(snapshot_err)?;
        for entry in fs::read_dir(dir).map_err(snapshot_err)? {
            let name = entry.map_err(snapshot_err)?.file_name();
            let name = name.to_string_lossy();
            // `current.tmp` is the one temporary name earlier versions used; `backup.tmp-` are
            // the exports of backups (unlinked as soon as they are made).
            if name.starts_with("current.snap.tmp-")
                || name == "current.tmp"
                || name.starts_with("backup.tmp-")
            {
                let stale = dir.join(&*name);
                tracing::debug!(path = %stale.display(), "removing a stale temporary snapshot");
                ordo_storage::release::remove(&stale).map_err(snapshot_err)?;
            }
        }
        Ok(Self::at(dir))
    }

    fn at(dir: &Path) -> Self {
        Self {
            path: dir.join("current.snap"),
            writer: Arc::new(Mutex::new(())),
        }
    }

    /// The current snapshot's metadata, the file open for reading, and where its export
    /// starts in it; `None` when there is no snapshot.
    pub fn open_current(&self) -> Result<Option<(SnapshotMeta, File, u64)>, StorageError> {
        let mut file = match File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(sm_read_err(e)),
        };
        let meta = self.read_meta_from(&mut file)?;
        let offset = file.stream_position().map_err(sm_read_err)?;
        Ok(Some((meta, file, offset)))
    }

    /// [`Self::open_current`], the file counted as open ([`OpenFile`]) before any newer
    /// snapshot can replace it, so that the replacing one leaves it whole.
    pub(crate) fn open_current_counted(
        &self,
    ) -> Result<Option<(SnapshotMeta, File, u64, OpenFile)>, StorageError> {
        let _writer = self.writer.lock().expect("snapshot writer lock");
        let Some((meta, file, offset)) = self.open_current()? else {
            return Ok(None);
        };
        let open = OpenFile::count(&file);
        Ok(Some((meta, file, offset, open)))
    }

    /// The snapshot's metadata and the store export, if there is a snapshot (for tests: a
    /// node never holds a whole snapshot in memory).
    pub fn read(&self) -> Result<Option<(SnapshotMeta, Vec<u8>)>, StorageError> {
        let Some((meta, mut file, _)) = self.open_current()? else {
            return Ok(None);
        };
        let mut data = Vec::new();
        file.read_to_end(&mut data).map_err(sm_read_err)?;
        Ok(Some((meta, data)))
    }

    /// Only the snapshot's metadata, without reading its data.
    fn read_meta(&self) -> Result<Option<SnapshotMeta>, StorageError> {
        match File::open(&self.path) {
            Ok(mut file) => Ok(Some(self.read_meta_from(&mut file)?)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(sm_read_err(e)),
        }
    }

    fn read_meta_from(&self, file: &mut File) -> Result<SnapshotMeta, StorageError> {
        let truncated = |_| sm_read_err(format!("snapshot {} is truncated", self.path.display()));
        let mut len = [0u8; 4];
        file.read_exact(&mut len).map_err(truncated)?;
        let len = u32::from_le_bytes(len) as u64;
        if len > META_REGION_BYTES {
            return Err(sm_read_err(format!(
                "snapshot {}: metadata of {len} bytes",
                self.path.display()
            )));
        }
        let mut meta = vec![0u8; len as usize];
        file.read_exact(&mut meta).map_err(truncated)?;
        // Zeros may follow the metadata in its region; bincode reads past none of them.
        bincode::deserialize(&meta).map_err(sm_read_err)
    }

    /// A new temporary file in the snapshot directory for a snapshot being built or
    /// received, positioned where its export starts ([`META_REGION_BYTES`]). Dropping the
    /// [`TempPath`] removes it.
    pub(crate) fn create_temp(&self) -> Result<(File, TempPath), StorageError> {
        let tmp = self.path.with_file_name(format!(
            "current.snap.tmp-{}-{}",
            std::process::id(),
            SNAPSHOT_TMP_SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let mut file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(|e| snapshot_err(format!("creating {}: {e}", tmp.display())))?;
        let temp = TempPath::new(tmp);
        file.seek(SeekFrom::Start(META_REGION_BYTES))
            .map_err(snapshot_err)?;
        Ok((file, temp))
    }

    /// A new temporary file ([`Self::create_temp`]) holding the export in `file` from `base` on.
    fn copy_in(&self, mut file: File, base: u64) -> Result<(File, TempPath), StorageError> {
        let (mut copy, temp) = self.create_temp()?;
        file.seek(SeekFrom::Start(base))
            .and_then(|_| std::io::copy(&mut file, &mut copy))
            .map_err(|e| snapshot_err(format!("copying a snapshot: {e}")))?;
        Ok((copy, temp))
    }

    /// Writes `meta` into the metadata region of `file` (made by [`Self::create_temp`], its
    /// export written), fsyncs it, and makes it the current snapshot if its last log id is
    /// newer than the current one's: renamed over it, the directory fsynced, so a reader
    /// always finds a whole snapshot. Otherwise the file is removed. Either way `file` stays
    /// readable. Returns whether it replaced the current snapshot.
    pub(crate) fn seal(
        &self,
        file: &File,
        temp: TempPath,
        meta: &SnapshotMeta,
    ) -> Result<bool, StorageError> {
        let meta_bytes = bincode::serialize(meta).map_err(snapshot_err)?;
        let region = META_REGION_BYTES - 4;
        if meta_bytes.len() as u64 > region {
            return Err(snapshot_err(format!(
                "snapshot metadata of {} bytes does not fit its {region}",
                meta_bytes.len()
            )));
        }
        let mut head = (region as u32).to_le_bytes().to_vec();
        head.extend_from_slice(&meta_bytes);
        file.write_all_at(&head, 0)
            .and_then(|()| file.sync_all())
            .map_err(|e| snapshot_err(format!("writing a snapshot: {e}")))?;
        let _writer = self.writer.lock().expect("snapshot writer lock");
        if let Some(current) = self.read_meta()? {
            if meta.last_log_id <= current.last_log_id {
                tracing::debug!(
                    snapshot = ?meta.last_log_id,
                    current = ?current.last_log_id,
                    "keeping the current snapshot: this one is not newer"
                );
                return Ok(false);
            }
        }
        let Some(tmp) = temp.keep() else {
            return Err(snapshot_err(
                "a snapshot file to seal has no temporary path",
            ));
        };
        // The file this one replaces: the rename would free it at once, which holds up the
        // Raft log's fsyncs (`ordo_storage::release`); kept open across it, and freed in
        // steps after, unless a `SnapshotData` of this process still reads it.
        let replaced = fs::OpenOptions::new().write(true).open(&self.path).ok();
        if let Err(e) = fs::rename(&tmp, &self.path) {
            // Best effort: a leftover is removed by the next open anyway.
            let _ = fs::remove_file(&tmp);
            return Err(snapshot_err(format!(
                "writing snapshot {}: {e}",
                self.path.display()
            )));
        }
        if let Some(dir) = self.path.parent() {
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(snapshot_err)?;
        }
        if let Some(replaced) = replaced.filter(|f| !OpenFile::is_open(f)) {
            ordo_storage::release::release(replaced);
        }
        Ok(true)
    }

    /// Makes `(meta, data)` the current snapshot if its last log id is newer than the current
    /// one's; otherwise leaves the file alone. Returns whether it replaced the file.
    pub fn replace_if_newer(&self, meta: &SnapshotMeta, data: &[u8]) -> Result<bool, StorageError> {
        let (mut file, temp) = self.create_temp()?;
        file.write_all(data).map_err(snapshot_err)?;
        self.seal(&file, temp, meta)
    }
}

/// The current snapshot in `snapshot_dir`, if any: its metadata, the file open for reading,
/// and where the store export starts in it.
pub fn load_snapshot(
    snapshot_dir: &Path,
) -> Result<Option<(SnapshotMeta, File, u64)>, StorageError> {
    CurrentSnapshot::at(snapshot_dir).open_current()
}

/// Bytes at the start of a snapshot file that Ordo writes for its metadata:
/// `[length: u32 LE][bincode meta]`, zeros after the meta up to the length. The export
/// follows, so a file can be received (or built) before its metadata is written. Files
/// written before (the region exactly the meta's length) read the same.
pub const META_REGION_BYTES: u64 = 64 * 1024;

#[cfg(test)]
mod tests {
    use super::*;

    fn meta_at(index: u64) -> SnapshotMeta {
        SnapshotMeta {
            last_log_id: Some(openraft::testing::log_id(1, 1, index)),
            last_membership: StoredMembership::default(),
            snapshot_id: format!("i{index}"),
        }
    }

    /// A snapshot body that names its index in every byte, sized so writes take a while.
    fn data_at(index: u64) -> Vec<u8> {
        vec![index as u8; 256 * 1024 + index as usize]
    }

    #[test]
    fn an_older_snapshot_never_replaces_a_newer_one() {
        let dir = tempfile::tempdir().expect("temp dir");
        let current = CurrentSnapshot::open(dir.path()).expect("open");
        assert!(current
            .replace_if_newer(&meta_at(20), &data_at(20))
            .expect("write 20"));
        assert!(!current
            .replace_if_newer(&meta_at(10), &data_at(10))
            .expect("write 10"));
        let (meta, data) = current.read().expect("read").expect("a snapshot");
        assert_eq!(meta, meta_at(20), "snapshot 10 replaced snapshot 20");
        assert!(data == data_at(20));
        assert!(current
            .replace_if_newer(&meta_at(30), &data_at(30))
            .expect("write 30"));
        let (meta, _) = current.read().expect("read").expect("a snapshot");
        assert_eq!(meta, meta_at(30));
    }

    #[test]
    fn concurrent_writers_leave_the_newest_whole_snapshot() {
        const WRITERS: u64 = 4;
        const WRITES_EACH: u64 = 16;
        let dir = tempfile::tempdir().expect("temp dir");
        let current = CurrentSnapshot::open(dir.path()).expect("open");
        let writers: Vec<_> = (0..WRITERS)
            .map(|writer| {
                let current = current.clone();
                std::thread::spawn(move || {
                    for n in 0..WRITES_EACH {
                        let index = n * WRITERS + writer + 1;
                        current
                            .replace_if_newer(&meta_at(index), &data_at(index))
                            .unwrap_or_else(|e| panic!("writing snapshot {index}: {e}"));
                    }
                })
            })
            .collect();
        for writer in writers {
            writer.join().expect("a writer failed");
        }
        let newest = WRITERS * WRITES_EACH;
        let (meta, data) = current.read().expect("read").expect("a snapshot");
        assert_eq!(meta, meta_at(newest));
        assert!(data == data_at(newest), "the data is not its meta's");
        let left: Vec<_> = fs::read_dir(dir.path())
            .expect("list")
            .map(|e| e.expect("entry").file_name())
            .filter(|name| name != "current.snap")
            .collect();
        assert!(left.is_empty(), "temporary files left behind: {left:?}");
    }

    /// A `current.snap` written before the metadata region (the data right after the meta)
    /// reads the same; one written now has its data at the region's end, and reads the way
    /// older builds read it (the zeros after the meta are ignored).
    #[test]
    fn snapshot_files_of_either_layout_read_the_same() {
        let dir = tempfile::tempdir().expect("temp dir");
        let meta = meta_at(7);
        let data = data_at(7);
        let meta_bytes = bincode::serialize(&meta).expect("meta");
        let mut old = (meta_bytes.len() as u32).to_le_bytes().to_vec();
        old.extend_from_slice(&meta_bytes);
        old.extend_from_slice(&data);
        fs::write(dir.path().join("current.snap"), &old).expect("write");
        let current = CurrentSnapshot::open(dir.path()).expect("open");
        let (read_meta, _, offset) = current.open_current().expect("open").expect("a snapshot");
        assert_eq!(
            (read_meta, offset),
            (meta.clone(), 4 + meta_bytes.len() as u64)
        );
        let (_, read_data) = current.read().expect("read").expect("a snapshot");
        assert!(read_data == data);

        assert!(current
            .replace_if_newer(&meta_at(8), &data_at(8))
            .expect("write"));
        let (_, _, offset) = current.open_current().expect("open").expect("a snapshot");
        assert_eq!(offset, META_REGION_BYTES);
        // What an older build does: the length, that many bytes, bincode.
        let new = fs::read(dir.path().join("current.snap")).expect("read");
        let len = u32::from_le_bytes(new[..4].try_into().expect("4 bytes")) as usize;
        let old_reading: SnapshotMeta = bincode::deserialize(&new[4..4 + len]).expect("meta");
        assert_eq!(old_reading, meta_at(8));
        assert!(new[4 + len..] == data_at(8)[..]);
    }

    #[test]
    fn opening_removes_stale_temporary_files() {
        let dir = tempfile::tempdir().expect("temp dir");
        let current = CurrentSnapshot::open(dir.path()).expect("open");
        current
            .replace_if_newer(&meta_at(5), &data_at(5))
            .expect("write");
        for stale in [
            "current.snap.tmp-1-0",
            "current.snap.tmp-77-3",
            "current.tmp",
        ] {
            fs::write(dir.path().join(stale), b"half a snapshot").expect("write stale");
        }
        let current = CurrentSnapshot::open(dir.path()).expect("reopen");
        let names: Vec<_> = fs::read_dir(dir.path())
            .expect("list")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, ["current.snap"]);
        let (meta, _) = current.read().expect("read").expect("a snapshot");
        assert_eq!(meta, meta_at(5));
    }

    /// A replaced snapshot is freed in steps, except one a `SnapshotData` still reads:
    /// that one stays whole until it is closed.
    #[tokio::test]
    async fn a_replaced_snapshot_is_freed_unless_it_is_being_read() {
        let dir = tempfile::tempdir().expect("temp dir");
        let current = CurrentSnapshot::open(dir.path()).expect("open");
        let big = |index: u64| {
            vec![index as u8; (ordo_storage::release::RELEASE_STEP_BYTES * 2) as usize]
        };
        let shrinks = |file: &File| {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
            while file.metadata().expect("metadata").len()
                > ordo_storage::release::RELEASE_STEP_BYTES + META_REGION_BYTES
            {
                if std::time::Instant::now() > deadline {
                    return false;
                }
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            true
        };

        // Replaced while nothing of this process reads it: freed.
        assert!(current
            .replace_if_newer(&meta_at(10), &big(10))
            .expect("write 10"));
        let (_, watcher, _) = current.open_current().expect("open").expect("a snapshot");
        assert!(current
            .replace_if_newer(&meta_at(20), &big(20))
            .expect("write 20"));
        assert!(shrinks(&watcher), "the replaced snapshot was not freed");

        // Replaced while a leader sends it: it reads whole to its end.
        let (meta, file, offset, open) = current
            .open_current_counted()
            .expect("open")
            .expect("a snapshot");
        assert_eq!(meta, meta_at(20));
        let mut sending = SnapshotData::counted(file, offset, TempPath::default(), open);
        assert!(current
            .replace_if_newer(&meta_at(30), &big(30))
            .expect("write 30"));
        std::thread::sleep(std::time::Duration::from_millis(100));
        let sent = sending.read_to_vec().await.expect("read");
        assert!(sent == big(20), "a snapshot being sent was freed under it");
        let (meta, _) = current.read().expect("read").expect("a snapshot");
        assert_eq!(meta, meta_at(30));
    }
}
