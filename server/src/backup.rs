//! Backups: the `Admin.Backup` stream a node serves, the backup file `ordo backup` writes, and
//! `ordo restore`, which makes a new cluster's data directory from that file.
//!
//! A backup is the store's snapshot export ([`Store::export_snapshot`]): every tree as of one
//! applied epoch, taken while the node goes on applying epochs. It carries that epoch's state
//! hash, and a restored store must reproduce it before `ordo restore` says it is done.
//!
//! The file: the line `ORDO-BACKUP 1`, one line of JSON (the header: epoch, state hash,
//! partitions, size and BLAKE3 of the state), then the state's bytes. `head -2 FILE` shows
//! what it holds. `ordo backup` writes it under a temporary name, checks size and digest,
//! fsyncs and renames, so a file under the final name is always whole.

use std::fs::{self, File};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use futures::Stream;
use ordo_proto::v1;
use ordo_storage::{EpochCommit, Store};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, Semaphore};
use tonic::Status;

/// The first line of a backup file.
const MAGIC: &str = "ORDO-BACKUP 1";
/// The longest header line `ordo restore` reads.
const HEADER_BYTES_MAX: u64 = 64 * 1024;
/// State bytes in one `BackupChunk`, at most (and at most half the node's
/// `--message-bytes-max`).
pub const CHUNK_BYTES: usize = 1024 * 1024;
/// Chunks a backup stream buffers ahead of its reader.
const CHUNKS_BUFFERED: usize = 4;
/// How long a backup stream waits for its reader to take a chunk before it gives up (and
/// frees the export file it holds).
const STALL: Duration = Duration::from_secs(60);

pub type BackupStream = Pin<Box<dyn Stream<Item = Result<v1::BackupChunk, Status>> + Send>>;

/// Serves `Admin.Backup`: one at a time per node.
#[derive(Clone)]
pub struct Backups {
    running: Arc<Semaphore>,
    chunk_bytes: usize,
}

impl Backups {
    /// For a node whose messages are at most `message_bytes_max`.
    pub fn new(message_bytes_max: usize) -> Self {
        Self {
            running: Arc::new(Semaphore::new(1)),
            chunk_bytes: CHUNK_BYTES.min(message_bytes_max / 2).max(1),
        }
    }

    /// Exports the store at its applied epoch into a file in `dir` (the snapshot directory)
    /// and streams it: the header, then the state in chunks. The stream ends with UNAVAILABLE when `closing` turns true (the node stops).
    pub async fn stream(
        &self,
        node_id: u64,
        store: Arc<Store>,
        dir: PathBuf,
        mut closing: tokio::sync::watch::Receiver<bool>,
    ) -> Result<BackupStream, Status> {
        let permit = self.running.clone().try_acquire_owned().map_err(|_| {
            Status::resource_exhausted(
                "a backup of this node is already running; retry when it ends",
            )
        })?;
        let (tx, rx) = mpsc::channel(CHUNKS_BUFFERED);
        let chunk_bytes = self.chunk_bytes;
        // The export runs in the stream's task: the call answers at once (the client's
        // per-attempt timeout applies to that answer), and the header follows the export.
        tokio::spawn(async move {
            let _permit = permit;
            let started = std::time::Instant::now();
            let partitions = store.partitions();
            // The export goes to a file (no state in memory), then its digest is read back:
            // both off the async threads.
            let exported = tokio::task::spawn_blocking(move || export_to_file(&store, &dir))
                .await
                .map_err(|e| e.to_string())
                .and_then(|r| r.map_err(|e| format!("{e:#}")));
            let (applied, digest, bytes, file) = match exported {
                Ok(exported) => exported,
                Err(e) => {
                    tracing::error!(error = %e, "backup: exporting the state failed");
                    let _ = tx
                        .send(Err(Status::internal(format!("exporting the state: {e}"))))
                        .await;
                    return;
                }
            };
            let header = v1::BackupHeader {
                format: ordo_storage::SNAPSHOT_FORMAT,
                node_id,
                epoch: applied.epoch,
                time_ms: applied.time_ms,
                state_hash: applied.state_hash.to_vec(),
                partitions,
                bytes,
                blake3: digest.as_bytes().to_vec(),
                version: env!("CARGO_PKG_VERSION").to_string(),
            };
            tracing::info!(
                epoch = applied.epoch,
                bytes,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "backup exported; streaming it"
            );
            // However the stream ends, the export is freed in steps (`ordo_storage::release`):
            // freed at once, hundreds of megabytes hold up the Raft log's fsyncs.
            let _release = ReleaseOnDrop(file.try_clone().ok());
            let mut file = tokio::fs::File::from_std(file);
            let mut left = bytes;
            let mut part = Some(v1::backup_chunk::Part::Header(header));
            while let Some(next) = part.take() {
                let chunk = Ok(v1::BackupChunk { part: Some(next) });
                tokio::select! {
                    sent = tx.send_timeout(chunk, STALL) => {
                        if sent.is_err() {
                            tracing::warn!("backup abandoned: its reader left or stalled");
                            return;
                        }
                    }
                    _ = closing.wait_for(|c| *c) => {
                        let _ = tx.try_send(Err(Status::unavailable(
                            "the node is stopping; the backup is incomplete",
                        )));
                        return;
                    }
                }
                if left == 0 {
                    break;
                }
                let mut data = vec![0u8; left.min(chunk_bytes as u64) as usize];
                if let Err(e) = tokio::io::AsyncReadExt::read_exact(&mut file, &mut data).await {
                    tracing::error!(error = %e, "backup: reading the export back failed");
                    let _ = tx
                        .send(Err(Status::internal(format!("reading the export: {e}"))))
                        .await;
                    return;
                }
                left -= data.len() as u64;
                part = Some(v1::backup_chunk::Part::Data(data));
            }
            tracing::info!(
                epoch = applied.epoch,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "backup sent"
            );
        });
        Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))
    }
}

/// A second handle on a backup's unlinked export, which frees it in steps when dropped.
struct ReleaseOnDrop(Option<File>);

impl Drop for ReleaseOnDrop {
    fn drop(&mut self) {
        if let Some(file) = self.0.take() {
            ordo_storage::release::release(file);
        }
    }
}

/// Numbers the export files of backups in this process.
static EXPORT_SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Exports the store into a new file in `dir`, unlinked at once (so nothing is left behind,
/// whatever happens, and the disk space comes back when the file is closed), and reads its
/// BLAKE3 back. Returns the applied state it reflects, the digest, its size, and the file
/// positioned at its start.
fn export_to_file(
    store: &Store,
    dir: &Path,
) -> anyhow::Result<(ordo_storage::Applied, blake3::Hash, u64, File)> {
    let path = dir.join(format!(
        "backup.tmp-{}-{}",
        std::process::id(),
        EXPORT_SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    let file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .with_context(|| format!("creating {}", path.display()))?;
    fs::remove_file(&path).with_context(|| format!("unlinking {}", path.display()))?;
    // Paced: a burst of the whole export's writeback would hold up the Raft log's fsyncs.
    let mut paced = ordo_storage::PacedFile::new(file)?;
    let (applied, bytes) = store.export_snapshot_to(&mut paced)?;
    let mut file = paced.into_inner();
    file.seek(SeekFrom::Start(0))?;
    let mut hasher = blake3::Hasher::new();
    let hashed = std::io::copy(&mut (&file).take(bytes), &mut hasher)?;
    anyhow::ensure!(hashed == bytes, "the export is {hashed} bytes, not {bytes}");
    file.seek(SeekFrom::Start(0))?;
    Ok((applied, hasher.finalize(), bytes, file))
}

/// A backup file's header line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    pub format: u32,
    pub node_id: u64,
    pub epoch: u64,
    pub time_ms: u64,
    /// Hex.
    pub state_hash: String,
    pub partitions: u32,
    pub bytes: u64,
    /// Hex.
    pub blake3: String,
    pub version: String,
}

impl Header {
    fn from_wire(h: &v1::BackupHeader) -> Self {
        Self {
            format: h.format,
            node_id: h.node_id,
            epoch: h.epoch,
            time_ms: h.time_ms,
            state_hash: ordo_storage::hex(&h.state_hash),
            partitions: h.partitions,
            bytes: h.bytes,
            blake3: ordo_storage::hex(&h.blake3),
            version: h.version.clone(),
        }
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::to_value(self).expect("a header is JSON")
    }
}

/// The temporary name a backup is written under.
fn partial_path(out: &Path) -> PathBuf {
    let mut name = out.file_name().unwrap_or_default().to_os_string();
    name.push(".partial");
    out.with_file_name(name)
}

/// `ordo backup`: streams a backup from the node `client` talks to into `out`. Refuses to
/// replace an existing file unless `force`.
pub async fn backup(
    client: &ordo_client::Client,
    out: &Path,
    force: bool,
) -> anyhow::Result<Header> {
    anyhow::ensure!(
        force || !out.exists(),
        "{} exists; choose another --out, or give --force to replace it",
        out.display()
    );
    let mut stream = client.backup().await?;
    let header = match stream.message().await.map_err(ordo_client::Error::from)? {
        Some(v1::BackupChunk {
            part: Some(v1::backup_chunk::Part::Header(h)),
        }) => h,
        _ => anyhow::bail!("the node's backup did not start with its header"),
    };
    let partial = partial_path(out);
    let written = async {
        // The whole state, orders and users included: readable by its owner only.
        let mut options = fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options
            .open(&partial)
            .with_context(|| format!("creating {}", partial.display()))?;
        let line = Header::from_wire(&header);
        writeln!(file, "{MAGIC}")?;
        writeln!(file, "{}", line.json())?;
        let mut hasher = blake3::Hasher::new();
        let mut received = 0u64;
        while let Some(chunk) = stream.message().await.map_err(ordo_client::Error::from)? {
            let Some(v1::backup_chunk::Part::Data(data)) = chunk.part else {
                anyhow::bail!("the node's backup had a second header");
            };
            received += data.len() as u64;
            anyhow::ensure!(
                received <= header.bytes,
                "the node sent more than the {} bytes it announced",
                header.bytes
            );
            hasher.update(&data);
            file.write_all(&data)?;
        }
        anyhow::ensure!(
            received == header.bytes,
            "the backup stream ended after {received} of {} bytes",
            header.bytes
        );
        anyhow::ensure!(
            hasher.finalize().as_bytes()[..] == header.blake3[..],
            "the backup's BLAKE3 does not match the one the node announced"
        );
        file.sync_all()?;
        fs::rename(&partial, out)?;
        sync_parent(out)?;
        Ok(line)
    }
    .await;
    if written.is_err() {
        let _ = fs::remove_file(&partial);
    }
    written.with_context(|| format!("writing {}", out.display()))
}

fn sync_parent(path: &Path) -> std::io::Result<()> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    File::open(parent)?.sync_all()
}

/// Opens a backup file and checks its state against the header's size and digest, reading it
/// through once. Returns the header, the file, and where the state starts in it.
pub fn open(path: &Path) -> anyhow::Result<(Header, File, u64)> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut reader = BufReader::new(&file);
    let mut line = String::new();
    (&mut reader)
        .take(HEADER_BYTES_MAX)
        .read_line(&mut line)
        .with_context(|| format!("reading {}", path.display()))?;
    anyhow::ensure!(
        line.trim_end() == MAGIC,
        "{} is not an Ordo backup (it does not start with {MAGIC:?})",
        path.display()
    );
    let mut offset = line.len() as u64;
    line.clear();
    (&mut reader)
        .take(HEADER_BYTES_MAX)
        .read_line(&mut line)
        .with_context(|| format!("reading {}", path.display()))?;
    offset += line.len() as u64;
    let header: Header = serde_json::from_str(&line)
        .with_context(|| format!("{}: the header line is not a backup header", path.display()))?;
    anyhow::ensure!(
        header.format == ordo_storage::SNAPSHOT_FORMAT,
        "{}: backup format {} is not {} (made by Ordo {}; restore it with that version)",
        path.display(),
        header.format,
        ordo_storage::SNAPSHOT_FORMAT,
        header.version
    );
    let mut hasher = blake3::Hasher::new();
    // One byte past the announced size, so a longer file is caught without reading it all.
    let read = std::io::copy(
        &mut (&mut reader).take(header.bytes.saturating_add(1)),
        &mut hasher,
    )
    .with_context(|| format!("reading {}", path.display()))?;
    anyhow::ensure!(
        read == header.bytes,
        "{} holds {read}{} bytes of state, its header says {}: the file is damaged",
        path.display(),
        if read > header.bytes { " or more" } else { "" },
        header.bytes
    );
    anyhow::ensure!(
        ordo_storage::hex(hasher.finalize().as_bytes()) == header.blake3,
        "{}: the state's BLAKE3 does not match its header: the file is damaged",
        path.display()
    );
    drop(reader);
    Ok((header, file, offset))
}

/// `ordo restore`: makes `data_dir` (absent or empty) the data directory of a new node holding
/// the backup's state at its epoch, with no Raft history: started alone it initialises a new
/// single-node cluster that goes on from the next epoch, and grows with `ordo member add`
/// (its first start snapshots the state and purges the log first, so new members receive the
/// state as that snapshot; see [`ordo_sequencer::RESTORED_MARKER`]).
pub fn restore(from: &Path, data_dir: &Path) -> anyhow::Result<Header> {
    if let Ok(mut entries) = fs::read_dir(data_dir) {
        anyhow::ensure!(
            entries.next().is_none(),
            "{} is not empty: restore into a new data directory",
            data_dir.display()
        );
    }
    let (header, file, offset) = open(from)?;
    fs::create_dir_all(data_dir).with_context(|| format!("creating {}", data_dir.display()))?;
    let state_dir = data_dir.join("state");
    let restored = (|| {
        // A small page cache: the restore writes each key once and reads it once more.
        let store = Store::open_with_cache(&state_dir, header.partitions, 64 * 1024 * 1024)?;
        // The stock rows go in as the node keeps them: packed.
        store.keep_packed(ordo_scheduler::keys::stock_packing())?;
        store.restore_snapshot_from(ordo_storage::SnapshotSource::File {
            file: &file,
            offset,
            len: Some(header.bytes),
        })?;
        let applied = store.applied();
        anyhow::ensure!(
            applied.epoch == header.epoch && ordo_storage::hex(&applied.state_hash) == header.state_hash,
            "the restored state is at epoch {} with state hash {}, the backup says epoch {} with {}",
            applied.epoch,
            ordo_storage::hex(&applied.state_hash),
            header.epoch,
            header.state_hash
        );
        // A new cluster: no last applied log id, no membership (the backup's name the old
        // cluster's nodes). The epoch, its time and the hash chain go on as they were.
        store.commit(EpochCommit::default())?;
        store.flush()?;
        drop(store);
        // The node's first start seals the state into a snapshot before it takes members
        // (`Node::start`); it reads this marker for that.
        fs::write(
            data_dir.join(ordo_sequencer::RESTORED_MARKER),
            format!("{}\n", header.json()),
        )?;
        sync_tree(data_dir)?;
        Ok(())
    })();
    if let Err(e) = restored {
        // Leave nothing that looks like a data directory.
        let _ = fs::remove_dir_all(&state_dir);
        let _ = fs::remove_file(data_dir.join(ordo_sequencer::RESTORED_MARKER));
        return Err(e.context(format!("restoring into {}", data_dir.display())));
    }
    Ok(header)
}

/// fsyncs every file and directory under `dir`, and `dir` itself.
fn sync_tree(dir: &Path) -> std::io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            sync_tree(&entry.path())?;
        } else {
            File::open(entry.path())?.sync_all()?;
        }
    }
    File::open(dir)?.sync_all()
}
