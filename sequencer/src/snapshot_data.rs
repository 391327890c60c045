//! openraft's `SnapshotData`: a snapshot file, read and written from an offset.
//!
//! openraft streams a snapshot between nodes in chunks, reading the sender's `SnapshotData`
//! and writing the receiver's by position. Ordo's is a file (`current.snap`, or a file being
//! received), so neither side holds a snapshot in memory. Positions are relative to `base`:
//! the store export starts there, after the file's metadata region, so what goes over the
//! wire is the export alone, as it always was.

use std::io::{self, SeekFrom};
use std::path::PathBuf;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncSeek, AsyncWrite, ReadBuf};

/// A snapshot's export in a file, from `base` on.
pub struct SnapshotData {
    pub(crate) file: tokio::fs::File,
    pub(crate) base: u64,
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
        Self {
            file: tokio::fs::File::from_std(file),
            base,
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
            if let Err(e) = std::fs::remove_file(&path) {
                tracing::debug!(path = %path.display(), error = %e, "removing a temporary snapshot");
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
