//! openraft's `SnapshotData`: a snapshot file, read and written from an offset.
//!
//! openraft streams a snapshot between nodes in chunks, reading the sender's `SnapshotData`
//! and writing the receiver's by position. Ordo's is a file (`current.snap`, or a file being
//! received), so neither side holds a snapshot in memory. Positions are relative to `base`:
//! the store export starts there, after the file's metadata region, so what goes over the
//! wire is the export alone, as it always was.

use std::collections::BTreeMap;
use std::io::{self, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncSeek, AsyncWrite, ReadBuf};

/// A snapshot's export in a file, from `base` on.
pub struct SnapshotData {
    pub(crate) file: tokio::fs::File,
    pub(crate) base: u64,
    /// This file counted as open, so that a snapshot that replaces it leaves it whole.
    /// (Before `temp`: dropped first, so that a file abandoned while it was received is
    /// freed in steps.)
    pub(crate) open: OpenFile,
    /// A file being received, removed if it is dropped before it is installed.
    pub(crate) temp: TempPath,
}

impl SnapshotData {
    /// A snapshot file to read from `base` on (the data of a snapshot to install that stays
    /// where it is, as `ordo replay` installs a node's `current.snap`).
    pub fn reading(file: std::fs::File, base: u64) -> Self {
        Self::new(file, base, TempPath::default())
    }

    pub(crate) fn new(file: std::fs::File, base: u64, temp: TempPath) -> Self {
        let open = OpenFile::count(&file);
        Self::counted(file, base, temp, open)
    }

    /// [`SnapshotData::new`] of a file already counted as open.
    pub(crate) fn counted(file: std::fs::File, base: u64, temp: TempPath, open: OpenFile) -> Self {
        Self {
            file: tokio::fs::File::from_std(file),
            base,
            open,
            temp,
        }
    }
}

impl SnapshotData {
    /// The whole export, read into memory (for tests and tools: a node streams it).
    pub async fn read_to_vec(&mut self) -> io::Result<Vec<u8>> {
        use tokio::io::{AsyncReadExt, AsyncSeekExt};
        self.seek(SeekFrom::Start(0)).await?;
        let mut data = Vec::new();
        self.read_to_end(&mut data).await?;
        Ok(data)
    }
}

/// A path removed when this is dropped, unless [`TempPath::keep`] was called.
#[derive(Default)]
pub(crate) struct TempPath(Option<PathBuf>);

impl TempPath {
    pub(crate) fn new(path: PathBuf) -> Self {
        Self(Some(path))
    }

    pub(crate) fn is_some(&self) -> bool {
        self.0.is_some()
    }

    /// The path, which is no longer removed on drop.
    pub(crate) fn keep(mut self) -> Option<PathBuf> {
        self.0.take()
    }
}

impl Drop for TempPath {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            if let Err(e) = remove_unread(&path) {
                tracing::debug!(path = %path.display(), error = %e, "removing a temporary snapshot");
            }
        }
    }
}

/// Removes the snapshot file at `path`; when no [`SnapshotData`] of this process has it
/// open, it is freed in steps (`ordo_storage::release`), else at its last close.
fn remove_unread(path: &std::path::Path) -> io::Result<()> {
    match std::fs::OpenOptions::new().write(true).open(path) {
        Ok(file) if !OpenFile::is_open(&file) => {
            std::fs::remove_file(path)?;
            ordo_storage::release::release(file);
            Ok(())
        }
        _ => std::fs::remove_file(path),
    }
}

/// Snapshot files this process has open as [`SnapshotData`], by device and inode, with how
/// many times each. A snapshot that replaces `current.snap` frees the file it replaced in
/// steps (`ordo_storage::release`) only when it is not here: freeing empties the file, and a
/// leader may still be sending it to a follower, or an install still importing it. (A file
/// still open is freed at once by its last close, as any file.)
static OPEN_FILES: Mutex<BTreeMap<(u64, u64), usize>> = Mutex::new(BTreeMap::new());

/// One count in [`OPEN_FILES`], dropped with its holder.
#[derive(Default)]
pub(crate) struct OpenFile(Option<(u64, u64)>);

impl OpenFile {
    pub(crate) fn count(file: &std::fs::File) -> OpenFile {
        let Ok(meta) = file.metadata() else {
            return OpenFile(None);
        };
        let key = (meta.dev(), meta.ino());
        *OPEN_FILES
            .lock()
            .expect("open snapshot files lock")
            .entry(key)
            .or_default() += 1;
        OpenFile(Some(key))
    }

    /// Whether `file` is open as some [`SnapshotData`] of this process.
    pub(crate) fn is_open(file: &std::fs::File) -> bool {
        let Ok(meta) = file.metadata() else {
            return true;
        };
        OPEN_FILES
            .lock()
            .expect("open snapshot files lock")
            .contains_key(&(meta.dev(), meta.ino()))
    }
}

impl Drop for OpenFile {
    fn drop(&mut self) {
        if let Some(key) = self.0.take() {
            let mut open = OPEN_FILES.lock().expect("open snapshot files lock");
            if let Some(n) = open.get_mut(&key) {
                *n -= 1;
                if *n == 0 {
                    open.remove(&key);
                }
            }
        }
    }
}

impl AsyncRead for SnapshotData {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.file).poll_read(cx, buf)
    }
}

impl AsyncWrite for SnapshotData {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.file).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.file).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.file).poll_shutdown(cx)
    }
}

impl AsyncSeek for SnapshotData {
    fn start_seek(mut self: Pin<&mut Self>, position: SeekFrom) -> io::Result<()> {
        let position = match position {
            SeekFrom::Start(n) => SeekFrom::Start(self.base.checked_add(n).ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidInput, "snapshot offset overflows")
            })?),
            other => other,
        };
        Pin::new(&mut self.file).start_seek(position)
    }

    fn poll_complete(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<u64>> {
        let base = self.base;
        Pin::new(&mut self.file)
            .poll_complete(cx)
            .map_ok(|at| at.saturating_sub(base))
    }
}
