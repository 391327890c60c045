//! The snapshot format, written and read one pair at a time, so no export, import, backup or
//! restore holds a whole state in memory.
//!
//! Format 1 (unchanged since it was a single bincode value, so older backups and snapshots
//! read the same): `format: u32`, `partitions: u32`, the tree count (`u64`), then per tree
//! its name (`u64` length, UTF-8), its pair count (`u64`) and its pairs, each key and value as
//! a `u64` length and the bytes; little-endian throughout, keys ascending within a tree. A
//! writer does not know a tree's pair count before it has read the tree, so it writes a
//! placeholder and seeks back to fill it in ([`ExportSink`]).

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write as _};
use std::os::unix::fs::FileExt;

use super::*;

/// The longest key, value or tree name a snapshot may hold: a longer length is corruption.
/// (Values the scheduler writes are at most a few megabytes; a feed entry is not in snapshots.)
pub const SNAPSHOT_ITEM_BYTES_MAX: u64 = 64 * 1024 * 1024;

/// The most pairs a snapshot's `meta` tree may hold: an import writes them in its last batch,
/// the one that completes it, so they must be few. A store's own meta is a handful of keys.
pub(super) const META_PAIRS_MAX: u64 = 1_024;

/// A key and its value, read from a snapshot.
pub(super) type OwnedPair = (Vec<u8>, Vec<u8>);

/// Buffer of a snapshot reader or writer.
const IO_BUFFER_BYTES: usize = 1024 * 1024;

/// Where an export is written: a file, or memory. A tree's pair count is filled in by seeking
/// back, and an export redone with commits held starts over by truncating.
pub trait ExportSink: io::Write + Seek {
    fn truncate_to(&mut self, len: u64) -> io::Result<()>;
}

impl ExportSink for File {
    fn truncate_to(&mut self, len: u64) -> io::Result<()> {
        self.set_len(len)
    }
}

impl ExportSink for io::Cursor<Vec<u8>> {
    fn truncate_to(&mut self, len: u64) -> io::Result<()> {
        self.get_mut().truncate(len as usize);
        Ok(())
    }
}

/// How much of an export [`PacedFile`] lets the kernel hold unwritten.
pub const WRITEBACK_BYTES: u64 = 8 * 1024 * 1024;

/// A file an export is written into with its writeback paced: each [`WRITEBACK_BYTES`]
/// written are handed to the disk at once (`sync_file_range`, write only), and the ones
/// before them waited for. Without it a whole export (hundreds of megabytes) sits in the page
/// cache until the fsync that seals it, or the kernel's writeback, sends it to the disk in one
/// burst, and the Raft log's fsyncs wait behind that burst: every order waits with them. With
/// it the disk sees the export as a steady stream, at most two windows in flight, and the
/// sealing fsync finds little left. (Elsewhere than Linux it is a plain file.)
pub struct PacedFile {
    file: File,
    pos: u64,
    /// The end of what was handed to the disk, and the start of what was handed last.
    started: u64,
    previous: u64,
}

impl PacedFile {
    /// `file`, written from its current position.
    pub fn new(mut file: File) -> io::Result<PacedFile> {
        let pos = file.stream_position()?;
        Ok(PacedFile {
            file,
            pos,
            started: pos,
            previous: pos,
        })
    }

    pub fn into_inner(self) -> File {
        self.file
    }

    /// Hands `[started, pos)` to the disk once it is a window, and waits for the window
    /// before it.
    fn pace(&mut self) -> io::Result<()> {
        if self.pos < self.started + WRITEBACK_BYTES {
            return Ok(());
        }
        if self.previous < self.started {
            write_back(&self.file, self.previous, self.started, Wait::Yes)?;
        }
        write_back(&self.file, self.started, self.pos, Wait::No)?;
        self.previous = self.started;
        self.started = self.pos;
        Ok(())
    }
}

/// Writes what of `file` is not on disk yet out one [`WRITEBACK_BYTES`] window at a time,
/// each waited for before the next is handed to the disk (`sync_file_range`): a file written
/// without [`PacedFile`] (a snapshot received in chunks) is then sealed by an fsync that finds
/// little to write, instead of sending gigabytes to the disk at once while the Raft log's
/// fsyncs wait. Not an fsync itself: the file's metadata is not written.
pub fn write_out_paced(file: &File) -> io::Result<()> {
    let len = file.metadata()?.len();
    let mut at = 0;
    while at < len {
        let to = len.min(at + WRITEBACK_BYTES);
        write_back(file, at, to, Wait::Yes)?;
        at = to;
    }
    Ok(())
}

/// Whether [`write_back`] waits for the range to be on the disk.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Wait {
    Yes,
    No,
}

/// Hands `file`'s bytes `[from, to)` to the disk (`sync_file_range`): with [`Wait::Yes`],
/// waits for earlier writeback of the range and for this one too; with [`Wait::No`], only
/// starts it. Not an fsync: no metadata is written. (Elsewhere than Linux, nothing.)
fn write_back(file: &File, from: u64, to: u64, wait: Wait) -> io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        let flags = match wait {
            Wait::Yes => {
                libc::SYNC_FILE_RANGE_WAIT_BEFORE
                    | libc::SYNC_FILE_RANGE_WRITE
                    | libc::SYNC_FILE_RANGE_WAIT_AFTER
            }
            Wait::No => libc::SYNC_FILE_RANGE_WRITE,
        };
        let (off, len) = (
            from as libc::off64_t,
            to.saturating_sub(from) as libc::off64_t,
        );
        // SAFETY: a plain system call on a file descriptor `file` keeps open.
        if unsafe { libc::sync_file_range(file.as_raw_fd(), off, len, flags) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (file, from, to, wait);
    Ok(())
}

impl io::Write for PacedFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        self.pos += n as u64;
        self.pace()?;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

impl Seek for PacedFile {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        // A seek back (a tree's pair count, a truncation) writes a few bytes there; pacing
        // counts forward progress only, from the furthest point handed to the disk.
        self.pos = self.file.seek(to)?;
        Ok(self.pos)
    }
}

impl ExportSink for PacedFile {
    fn truncate_to(&mut self, len: u64) -> io::Result<()> {
        self.file.set_len(len)?;
        self.started = self.started.min(len);
        self.previous = self.previous.min(len);
        Ok(())
    }
}

/// Where a snapshot to import is: in memory, or in a file from `offset`, `len` bytes long
/// (`None`: to the file's end). An import reads it twice (it checks the whole snapshot before
/// it changes anything), so a file is read by position and never moved.
#[derive(Clone, Copy)]
pub enum SnapshotSource<'a> {
    Bytes(&'a [u8]),
    File {
        file: &'a File,
        offset: u64,
        len: Option<u64>,
    },
}

impl<'a> SnapshotSource<'a> {
    fn reader(&self) -> Box<dyn Read + 'a> {
        match *self {
            SnapshotSource::Bytes(bytes) => Box::new(bytes),
            SnapshotSource::File { file, offset, len } => Box::new(BufReader::with_capacity(
                IO_BUFFER_BYTES,
                FileAt {
                    file,
                    pos: offset,
                    end: len.map(|len| offset.saturating_add(len)),
                },
            )),
        }
    }
}

/// Reads a file by position (`pread`), up to `end`.
struct FileAt<'a> {
    file: &'a File,
    pos: u64,
    end: Option<u64>,
}

impl Read for FileAt<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let room = match self.end {
            Some(end) => end.saturating_sub(self.pos).min(buf.len() as u64) as usize,
            None => buf.len(),
        };
        let n = self.file.read_at(&mut buf[..room], self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

/// Writes the format, one pair at a time.
pub(super) struct SnapshotWriter<'s, S: ExportSink> {
    out: BufWriter<&'s mut S>,
    /// Where the open tree's pair count is, and its pairs so far.
    tree: Option<(u64, u64)>,
}

impl<'s, S: ExportSink> SnapshotWriter<'s, S> {
    /// Starts a snapshot of `trees` trees at the sink's position.
    pub(super) fn new(sink: &'s mut S, partitions: u32, trees: usize) -> io::Result<Self> {
        let mut out = BufWriter::with_capacity(IO_BUFFER_BYTES, sink);
        out.write_all(&SNAPSHOT_FORMAT.to_le_bytes())?;
        out.write_all(&partitions.to_le_bytes())?;
        out.write_all(&(trees as u64).to_le_bytes())?;
        Ok(Self { out, tree: None })
    }

    fn bytes(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.out.write_all(&(bytes.len() as u64).to_le_bytes())?;
        self.out.write_all(bytes)
    }

    pub(super) fn begin_tree(&mut self, name: &str) -> io::Result<()> {
        debug_assert!(self.tree.is_none(), "a tree begun inside another");
        self.bytes(name.as_bytes())?;
        let at = self.out.stream_position()?;
        self.out.write_all(&0u64.to_le_bytes())?;
        self.tree = Some((at, 0));
        Ok(())
    }

    pub(super) fn pair(&mut self, key: &[u8], value: &[u8]) -> io::Result<()> {
        let (_, count) = self.tree.as_mut().expect("a pair outside a tree");
        *count += 1;
        self.bytes(key)?;
        self.bytes(value)
    }

    pub(super) fn end_tree(&mut self) -> io::Result<()> {
        let (at, count) = self.tree.take().expect("a tree to end");
        let end = self.out.stream_position()?;
        self.out.seek(SeekFrom::Start(at))?;
        self.out.write_all(&count.to_le_bytes())?;
        self.out.seek(SeekFrom::Start(end))?;
        Ok(())
    }

    /// Flushes what is buffered; returns the sink's position (the snapshot's end).
    pub(super) fn finish(mut self) -> io::Result<u64> {
        self.out.flush()?;
        self.out.stream_position()
    }
}

/// Reads the format, one pair at a time, refusing what the format does not allow: another
/// format, a length past [`SNAPSHOT_ITEM_BYTES_MAX`], a name that is not UTF-8, bytes after
/// the last tree. Nothing is allocated on a length's word before the bytes are there.
pub(super) struct SnapshotReader<'a> {
    input: Box<dyn Read + 'a>,
    pub(super) partitions: u32,
    trees_left: u64,
    pairs_left: u64,
}

fn corrupt(what: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("snapshot: {what}"))
}

impl<'a> SnapshotReader<'a> {
    pub(super) fn open(source: &SnapshotSource<'a>) -> Result<Self, StoreError> {
        let mut reader = Self {
            input: source.reader(),
            partitions: 0,
            trees_left: 0,
            pairs_left: 0,
        };
        let format = reader.u32()?;
        if format != SNAPSHOT_FORMAT {
            return Err(corrupt(format!("format {format} is not {SNAPSHOT_FORMAT}")));
        }
        reader.partitions = reader.u32()?;
        reader.trees_left = reader.u64()?;
        Ok(reader)
    }

    fn fill(&mut self, buf: &mut [u8]) -> Result<(), StoreError> {
        self.input.read_exact(buf).map_err(|e| match e.kind() {
            io::ErrorKind::UnexpectedEof => corrupt("it ends early"),
            _ => StoreError::Io(e),
        })
    }

    fn u32(&mut self) -> Result<u32, StoreError> {
        let mut word = [0u8; 4];
        self.fill(&mut word)?;
        Ok(u32::from_le_bytes(word))
    }

    fn u64(&mut self) -> Result<u64, StoreError> {
        let mut word = [0u8; 8];
        self.fill(&mut word)?;
        Ok(u64::from_le_bytes(word))
    }

    fn bytes(&mut self) -> Result<Vec<u8>, StoreError> {
        let len = self.u64()?;
        if len > SNAPSHOT_ITEM_BYTES_MAX {
            return Err(corrupt(format!(
                "an item of {len} bytes (at most {SNAPSHOT_ITEM_BYTES_MAX})"
            )));
        }
        // Grown as the bytes arrive: a corrupt length costs no more than the bytes there are.
        let mut bytes = Vec::with_capacity((len as usize).min(64 * 1024));
        let read = (&mut self.input)
            .take(len)
            .read_to_end(&mut bytes)
            .map_err(StoreError::Io)?;
        if read as u64 != len {
            return Err(corrupt("it ends early"));
        }
        Ok(bytes)
    }

    /// The next tree's name and pair count, or `None` after the last. The previous tree's
    /// pairs must all have been read.
    pub(super) fn next_tree(&mut self) -> Result<Option<(String, u64)>, StoreError> {
        debug_assert_eq!(self.pairs_left, 0, "a tree left unread");
        if self.trees_left == 0 {
            // Nothing may follow the last tree.
            let mut byte = [0u8; 1];
            return match self.input.read(&mut byte).map_err(StoreError::Io)? {
                0 => Ok(None),
                _ => Err(corrupt("bytes after its last tree")),
            };
        }
        self.trees_left -= 1;
        let name = String::from_utf8(self.bytes()?).map_err(|_| corrupt("a tree name"))?;
        self.pairs_left = self.u64()?;
        Ok(Some((name, self.pairs_left)))
    }

    /// The open tree's next pair, or `None` after its last.
    pub(super) fn next_pair(&mut self) -> Result<Option<OwnedPair>, StoreError> {
        if self.pairs_left == 0 {
            return Ok(None);
        }
        self.pairs_left -= 1;
        let key = self.bytes()?;
        let value = self.bytes()?;
        Ok(Some((key, value)))
    }

    /// The open tree's pairs, as an iterator.
    pub(super) fn pairs(
        &mut self,
    ) -> impl Iterator<Item = Result<OwnedPair, StoreError>> + use<'_, 'a> {
        std::iter::from_fn(move || self.next_pair().transpose())
    }
}
