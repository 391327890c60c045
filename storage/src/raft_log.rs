//! The Raft log store: a segmented, checksummed write-ahead log with real fsync.
//!
//! This log, not sled, is Ordo's durability anchor: an append is acknowledged to openraft
//! (through [`LogFlushed`]) only after `fdatasync` has returned for the bytes that hold it.
//! Appends are written to the page cache at once (so they can be read back at once) and a
//! dedicated flusher thread syncs them, one fsync covering every append that arrived while the
//! previous fsync ran (group commit).
//!
//! On disk: a directory of segment files `seg-<seqno>.wal`, each a sequence of records
//! `[len: u32 LE][crc32: u32 LE][payload: len bytes]`. A payload is a one-byte tag followed by
//! the bincode of an entry, a truncation point, a purge point, a vote or the committed log id.
//! Replaying the segments in order rebuilds the state.
//!
//! Every segment starts with a header: the current vote and purge point (when there are any),
//! then the committed id, always present and always last, so that a whole header can be told
//! from a torn one. A new segment's header is written and fsynced, and the directory fsynced,
//! before any record lands in it; a purge deletes only segments before the tail. So the vote,
//! committed id and purge point survive a crash at any step of starting a segment and the
//! deletion of every older segment: on open, a newest segment whose header is torn is a torn
//! tail and is removed (the segment before it still holds the state), and an oldest segment
//! after the first whose header is torn is refused, never read as an empty log.
//!
//! A bad record (short, implausible length, checksum mismatch) that is the last thing in the
//! last segment is a torn append that was never acknowledged, and is cut off on open. A bad
//! record followed by an intact one, or a bad record in any segment but the last, is damage to
//! fsynced data: opening fails with an error that names the segment file and the offset, and
//! the node does not start.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::ops::{Bound, RangeBounds};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;

use openraft::storage::{LogFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::{
    AnyError, ErrorSubject, ErrorVerb, LogId, OptionalSend, RaftLogId, RaftTypeConfig,
    StorageError, StorageIOError, Vote,
};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// A segment is closed and a new one started once it grows past this size.
pub const SEGMENT_BYTES_MAX: u64 = 64 * 1024 * 1024;
/// No single record (one Raft entry: one epoch batch) may be larger than this.
pub const RECORD_BYTES_MAX: usize = 256 * 1024 * 1024;
/// Appends waiting for the flusher thread; an append blocks when this many are queued.
const FLUSH_QUEUE_MAX: usize = 4096;

const TAG_ENTRY: u8 = 1;
const TAG_TRUNCATE: u8 = 2;
const TAG_PURGE: u8 = 3;
const TAG_VOTE: u8 = 4;
const TAG_COMMITTED: u8 = 5;
const RECORD_HEADER_BYTES: usize = 8;

/// Where an entry's record lies on disk.
#[derive(Clone, Copy, Debug)]
struct Loc {
    seqno: u64,
    /// Offset of the record's payload (past the header) in the segment.
    offset: u64,
    len: u32,
}

struct Segment {
    seqno: u64,
    file: Arc<File>,
    path: PathBuf,
    /// Highest entry index ever written to this segment: it may be deleted once purged past it.
    max_index: Option<u64>,
}

/// Everything the log knows, guarded by one mutex. The reader and the writer share it.
struct State<C: RaftTypeConfig> {
    dir: PathBuf,
    /// Entry index -> where its record lies, for every entry present (not purged, not truncated).
    index: BTreeMap<u64, (LogId<C::NodeId>, Loc)>,
    last_purged: Option<LogId<C::NodeId>>,
    vote: Option<Vote<C::NodeId>>,
    committed: Option<LogId<C::NodeId>>,
    /// Segments in order; the last one is being appended to. Each starts with a whole header
    /// (see `start_segment`), which is what lets a purge delete the ones before the tail.
    segments: Vec<Segment>,
    /// Bytes written to the last segment.
    tail_len: u64,
    /// The tail segment is closed once it grows past this.
    segment_bytes_max: u64,
}

enum FlushCmd<C: RaftTypeConfig> {
    Sync {
        file: Arc<File>,
        callback: LogFlushed<C>,
    },
}

/// The Raft log store. Cloning gives another handle to the same log (used as the log reader).
pub struct LogStore<C: RaftTypeConfig> {
    state: Arc<Mutex<State<C>>>,
    flusher: mpsc::SyncSender<FlushCmd<C>>,
}

impl<C: RaftTypeConfig> Clone for LogStore<C> {
    fn clone(&self) -> Self {
        Self {
            state: self.state.clone(),
            flusher: self.flusher.clone(),
        }
    }
}

fn io_err(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

fn segment_path(dir: &Path, seqno: u64) -> PathBuf {
    dir.join(format!("seg-{seqno:012}.wal"))
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

fn encode_record(tag: u8, body: &impl Serialize) -> io::Result<Vec<u8>> {
    let mut payload = vec![tag];
    bincode::serialize_into(&mut payload, body).map_err(|e| io_err(e.to_string()))?;
    if payload.len() > RECORD_BYTES_MAX {
        return Err(io_err(format!(
            "log record of {} bytes exceeds the limit of {RECORD_BYTES_MAX} bytes",
            payload.len()
        )));
    }
    let mut record = Vec::with_capacity(RECORD_HEADER_BYTES + payload.len());
    record.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    record.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    record.extend_from_slice(&payload);
    Ok(record)
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> io::Result<T> {
    bincode::deserialize(bytes).map_err(|e| io_err(format!("undecodable log record: {e}")))
}

/// The payload of the record that starts at `pos`, or why there is no whole, intact record.
fn record_at(bytes: &[u8], pos: usize) -> Result<&[u8], &'static str> {
    let header_end = pos + RECORD_HEADER_BYTES;
    if header_end > bytes.len() {
        return Err("torn record header");
    }
    let len = u32::from_le_bytes(bytes[pos..pos + 4].try_into().expect("4 bytes")) as usize;
    let crc = u32::from_le_bytes(bytes[pos + 4..header_end].try_into().expect("4 bytes"));
    if len == 0 || len > RECORD_BYTES_MAX {
        return Err("implausible record length");
    }
    if header_end + len > bytes.len() {
        return Err("torn record");
    }
    let payload = &bytes[header_end..header_end + len];
    if crc32fast::hash(payload) != crc {
        return Err("checksum mismatch");
    }
    Ok(payload)
}

/// A record that passed its checksum but does not decode: damage, named by file and offset.
fn corrupt_at(path: &Path, offset: usize, e: io::Error) -> io::Error {
    io_err(format!(
        "corrupt raft log: {e} at offset {offset} of {}",
        path.display()
    ))
}

/// Whether an intact record of a known kind starts at `pos` (the tag is checked before the
/// checksum is computed).
fn intact_record_at(bytes: &[u8], pos: usize) -> bool {
    let tag = bytes.get(pos + RECORD_HEADER_BYTES).copied();
    tag.is_some_and(|t| (TAG_ENTRY..=TAG_COMMITTED).contains(&t)) && record_at(bytes, pos).is_ok()
}

/// A record read back from a segment.
struct Record<'a> {
    /// Where the record (its length field) starts in the segment, for errors and locations.
    offset: usize,
    /// The tag byte and the bincode body.
    payload: &'a [u8],
}

/// A segment's records in order, and the length of the valid prefix they fill.
///
/// A record that cannot be read ends the segment only if it can be a torn append: in the last
/// segment, with no intact record anywhere after it. A bad record followed by an intact one is
/// damage to data that was already fsynced (appends are written in order, and each is
/// acknowledged only once synced): cutting it off would silently drop acknowledged records, so
/// that is an error and the node does not start. (A crash could in principle leave unsynced
/// pages on disk out of order and be refused too; refusing is the side on which nothing
/// acknowledged is lost.)
fn read_records<'a>(
    path: &Path,
    bytes: &'a [u8],
    is_last: bool,
) -> io::Result<(Vec<Record<'a>>, usize)> {
    let mut records = Vec::new();
    let mut pos = 0;
    while pos < bytes.len() {
        let what = match record_at(bytes, pos) {
            Ok(payload) => {
                records.push(Record {
                    offset: pos,
                    payload,
                });
                pos += RECORD_HEADER_BYTES + payload.len();
                continue;
            }
            Err(what) => what,
        };
        if !is_last {
            return Err(io_err(format!(
                "corrupt raft log: {what} at offset {pos} of {} (not the last segment)",
                path.display()
            )));
        }
        let intact_after = match what {
            // The record claims bytes past the end of the file: an append torn by a crash.
            // Nothing intact can follow it; and its partial payload (which may hold bytes a
            // client chose) is never searched for records.
            "torn record header" | "torn record" => None,
            // A whole record whose checksum fails: damage, if the file goes on after it with
            // the record an append would have written next; if it ends the file, a torn write.
            "checksum mismatch" => {
                let len =
                    u32::from_le_bytes(bytes[pos..pos + 4].try_into().expect("4 bytes")) as usize;
                let next = pos + RECORD_HEADER_BYTES + len;
                (next < bytes.len() && intact_record_at(bytes, next)).then_some(next)
            }
            // A header that is not one (a damaged length): look for any intact record after
            // it. Bounded by the segment's size; only runs on a log a crash or damage left bad.
            _ => (pos + 1..bytes.len()).find(|&at| intact_record_at(bytes, at)),
        };
        if let Some(next) = intact_after {
            return Err(io_err(format!(
                "corrupt raft log: {what} at offset {pos} of {}, followed by an intact record at \
                 offset {next}: records that were already fsynced are damaged; refusing to open \
                 the log rather than cut them off",
                path.display()
            )));
        }
        break;
    }
    Ok((records, pos))
}

/// Whether a segment starts with a whole header: votes and purge points, then the committed id
/// that every header carries and writes last. (Segments written when the committed id came
/// second in the header pass the same test.)
fn header_complete(records: &[Record]) -> bool {
    for record in records {
        match record.payload[0] {
            TAG_VOTE | TAG_PURGE => continue,
            TAG_COMMITTED => return true,
            _ => return false,
        }
    }
    false
}

impl<C> LogStore<C>
where
    C: RaftTypeConfig,
    C::Entry: Serialize + DeserializeOwned + Clone,
{
    /// Opens (or creates) the log in `dir`, replaying every segment.
    pub fn open(dir: impl AsRef<Path>) -> io::Result<Self> {
        Self::open_with_segment_bytes(dir, SEGMENT_BYTES_MAX)
    }

    /// Like [`LogStore::open`], closing segments at `segment_bytes_max` (small in tests).
    pub fn open_with_segment_bytes(
        dir: impl AsRef<Path>,
        segment_bytes_max: u64,
    ) -> io::Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        fs::create_dir_all(&dir)?;
        let mut seqnos: Vec<u64> = Vec::new();
        for dirent in fs::read_dir(&dir)? {
            let name = dirent?.file_name();
            let name = name.to_string_lossy();
            if let Some(num) = name
                .strip_prefix("seg-")
                .and_then(|n| n.strip_suffix(".wal"))
            {
                let seqno = num
                    .parse::<u64>()
                    .map_err(|_| io_err(format!("unexpected file {name} in {}", dir.display())))?;
                seqnos.push(seqno);
            }
        }
        seqnos.sort_unstable();

        let mut state = State::<C> {
            dir: dir.clone(),
            index: BTreeMap::new(),
            last_purged: None,
            vote: None,
            committed: None,
            segments: Vec::new(),
            tail_len: 0,
            segment_bytes_max,
        };
        let count = seqnos.len();
        for (i, seqno) in seqnos.into_iter().enumerate() {
            let is_last = i + 1 == count;
            state.replay_segment(seqno, is_last)?;
        }
        if state.segments.is_empty() {
            state.start_segment(1)?;
        }
        let state = Arc::new(Mutex::new(state));
        let (tx, rx) = mpsc::sync_channel(FLUSH_QUEUE_MAX);
        thread::Builder::new()
            .name("ordo-raft-log-flush".into())
            .spawn(move || flusher_loop::<C>(rx))?;
        Ok(Self { state, flusher: tx })
    }
}

impl<C: RaftTypeConfig> State<C>
where
    C::Entry: Serialize + DeserializeOwned,
{
    /// Replays segment `seqno` into the state and adopts it, or removes it if it is the newest
    /// segment and its header never reached the disk whole.
    fn replay_segment(&mut self, seqno: u64, is_last: bool) -> io::Result<()> {
        let path = segment_path(&self.dir, seqno);
        let bytes = fs::read(&path)?;
        let (records, valid_len) = read_records(&path, &bytes, is_last)?;
        if !header_complete(&records) {
            let has_earlier = !self.segments.is_empty();
            // A crash while a segment was started leaves it with a torn header and nothing after
            // it: no record is written to a segment before its header is fsynced. What the torn
            // header holds repeats the segments before it, which are all still there (none is
            // deleted before the newest header is durable), so removing it loses nothing. The
            // log's first segment has no segment before it: torn, it means nothing was ever saved.
            if is_last && (has_earlier || seqno == 1) && self.repeats_state(&path, &records)? {
                tracing::warn!(
                    segment = %path.display(),
                    bytes = bytes.len(),
                    "removing the newest raft log segment: a crash tore its header, the segment \
                     before it holds the log's state"
                );
                fs::remove_file(&path)?;
                sync_dir(&self.dir)?;
                return Ok(());
            }
            // With no segment before it, a segment after the first one had its predecessors
            // deleted by a purge, and its header is all that held the vote.
            if !has_earlier && seqno > 1 {
                return Err(io_err(format!(
                    "corrupt raft log: {} is the oldest segment left but its header (vote, purge \
                     point, committed id) is incomplete, and the segments that held them are \
                     deleted; refusing to open the log rather than lose the vote",
                    path.display()
                )));
            }
            // Otherwise a segment that an earlier version of this log adopted with a torn header
            // and wrote to: what it holds is real, and the segments before it (if any were
            // ever written) still hold the rest of the state. Replay it as it is.
        }
        let mut max_index = None;
        for Record { offset, payload } in records {
            let body = &payload[1..];
            let corrupt = |e: io::Error| corrupt_at(&path, offset, e);
            match payload[0] {
                TAG_ENTRY => {
                    let entry: C::Entry = decode(body).map_err(corrupt)?;
                    let log_id = entry.get_log_id().clone();
                    let loc = Loc {
                        seqno,
                        offset: (offset + RECORD_HEADER_BYTES) as u64,
                        len: payload.len() as u32,
                    };
                    max_index = max_index.max(Some(log_id.index));
                    self.index.insert(log_id.index, (log_id, loc));
                }
                TAG_TRUNCATE => {
                    let since: u64 = decode(body).map_err(corrupt)?;
                    self.index.split_off(&since);
                }
                TAG_PURGE => {
                    let upto: LogId<C::NodeId> = decode(body).map_err(corrupt)?;
                    self.index = self.index.split_off(&(upto.index + 1));
                    self.last_purged = Some(upto);
                }
                TAG_VOTE => self.vote = Some(decode(body).map_err(corrupt)?),
                TAG_COMMITTED => self.committed = decode(body).map_err(corrupt)?,
                tag => return Err(corrupt(io_err(format!("unknown record tag {tag}")))),
            }
        }
        let file = OpenOptions::new().read(true).write(true).open(&path)?;
        if valid_len < bytes.len() {
            tracing::warn!(
                segment = %path.display(),
                valid_bytes = valid_len,
                "cutting a torn tail off the raft log (an append that was never acknowledged)"
            );
            file.set_len(valid_len as u64)?;
            file.sync_all()?;
        }
        self.tail_len = valid_len as u64;
        self.segments.push(Segment {
            seqno,
            file: Arc::new(file),
            path,
            max_index,
        });
        Ok(())
    }

    /// Whether every record is a vote or a purge point the state already holds: all that a
    /// header torn before its committed id can contain.
    fn repeats_state(&self, path: &Path, records: &[Record]) -> io::Result<bool> {
        for Record { offset, payload } in records {
            let body = &payload[1..];
            let corrupt = |e: io::Error| corrupt_at(path, *offset, e);
            let repeated = match payload[0] {
                TAG_VOTE => self.vote == Some(decode(body).map_err(corrupt)?),
                TAG_PURGE => self.last_purged == Some(decode(body).map_err(corrupt)?),
                _ => false,
            };
            if !repeated {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Starts segment `seqno` with its header: the vote, the purge point and the committed id,
    /// the state that must survive the deletion of older segments. The committed id is always
    /// written, and written last, so that open can tell a whole header from a torn one.
    ///
    /// Order of operations: the file is created, the header written and fsynced, then the
    /// directory fsynced; only then does the segment become the tail. So no record lands in it,
    /// and no older segment is deleted (a purge deletes only segments before the tail), until
    /// its header is on disk whole. A crash at any step leaves no new file, or one with a torn
    /// header that open removes (the segment before it holds the state), or a whole header.
    fn start_segment(&mut self, seqno: u64) -> io::Result<()> {
        let path = segment_path(&self.dir, seqno);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)?;
        let mut header = Vec::new();
        if let Some(vote) = &self.vote {
            header.extend(encode_record(TAG_VOTE, vote)?);
        }
        if let Some(purged) = &self.last_purged {
            header.extend(encode_record(TAG_PURGE, purged)?);
        }
        header.extend(encode_record(TAG_COMMITTED, &self.committed)?);
        file.write_all_at(&header, 0)?;
        file.sync_all()?;
        sync_dir(&self.dir)?;
        self.tail_len = header.len() as u64;
        self.segments.push(Segment {
            seqno,
            file: Arc::new(file),
            path,
            max_index: None,
        });
        Ok(())
    }

    fn tail(&mut self) -> &mut Segment {
        self.segments
            .last_mut()
            .expect("the log always has a segment")
    }

    /// Writes a record to the tail segment (page cache only) and returns its payload location.
    fn write_record(&mut self, record: &[u8]) -> io::Result<Loc> {
        if self.tail_len >= self.segment_bytes_max {
            // Close the full segment durably before any record lands in the next one, so that a
            // synced later segment never depends on an unsynced earlier one.
            self.tail().file.sync_data()?;
            let next = self.tail().seqno + 1;
            self.start_segment(next)?;
        }
        let offset = self.tail_len;
        let seqno = self.tail().seqno;
        self.tail().file.write_all_at(record, offset)?;
        self.tail_len += record.len() as u64;
        Ok(Loc {
            seqno,
            offset: offset + RECORD_HEADER_BYTES as u64,
            len: (record.len() - RECORD_HEADER_BYTES) as u32,
        })
    }

    fn write_synced(&mut self, record: &[u8]) -> io::Result<()> {
        self.write_record(record)?;
        self.tail().file.sync_data()
    }

    fn read_entry(&self, loc: Loc) -> io::Result<C::Entry> {
        let segment = self
            .segments
            .iter()
            .find(|s| s.seqno == loc.seqno)
            .ok_or_else(|| io_err(format!("raft log segment {} is gone", loc.seqno)))?;
        let mut payload = vec![0u8; loc.len as usize];
        segment.file.read_exact_at(&mut payload, loc.offset)?;
        if payload.first() != Some(&TAG_ENTRY) {
            return Err(io_err(
                "raft log index points at a record that is not an entry",
            ));
        }
        decode(&payload[1..])
    }

    fn last_log_id(&self) -> Option<LogId<C::NodeId>> {
        self.index
            .values()
            .next_back()
            .map(|(id, _)| id.clone())
            .or_else(|| self.last_purged.clone())
    }
}

fn flusher_loop<C: RaftTypeConfig>(rx: mpsc::Receiver<FlushCmd<C>>) {
    while let Ok(first) = rx.recv() {
        // Group commit: everything queued while the previous fsync ran is covered by one more.
        let mut batch = vec![first];
        while let Ok(more) = rx.try_recv() {
            batch.push(more);
        }
        let mut synced: Vec<Arc<File>> = Vec::new();
        let mut result: Result<(), String> = Ok(());
        for FlushCmd::Sync { file, .. } in &batch {
            if result.is_ok() && !synced.iter().any(|f| Arc::ptr_eq(f, file)) {
                let started = std::time::Instant::now();
                result = file.sync_data().map_err(|e| e.to_string());
                ordo_metrics::FSYNC.observe_duration(started.elapsed());
                synced.push(file.clone());
            }
        }
        for FlushCmd::Sync { callback, .. } in batch {
            let r = result.clone().map_err(io::Error::other);
            callback.log_io_completed(r);
        }
    }
}

fn read_err<C: RaftTypeConfig>(e: impl std::error::Error + 'static) -> StorageError<C::NodeId> {
    StorageIOError::read_logs(AnyError::new(&e)).into()
}

fn write_err<C: RaftTypeConfig>(e: impl std::error::Error + 'static) -> StorageError<C::NodeId> {
    StorageIOError::write_logs(AnyError::new(&e)).into()
}

impl<C> RaftLogReader<C> for LogStore<C>
where
    C: RaftTypeConfig,
    C::Entry: Serialize + DeserializeOwned + Clone,
{
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<C::Entry>, StorageError<C::NodeId>> {
        let state = self.state.lock().expect("raft log lock");
        let start = match range.start_bound() {
            Bound::Included(i) => Bound::Included(*i),
            Bound::Excluded(i) => Bound::Excluded(*i),
            Bound::Unbounded => Bound::Unbounded,
        };
        let end = match range.end_bound() {
            Bound::Included(i) => Bound::Included(*i),
            Bound::Excluded(i) => Bound::Excluded(*i),
            Bound::Unbounded => Bound::Unbounded,
        };
        state
            .index
            .range((start, end))
            .map(|(_, (_, loc))| state.read_entry(*loc).map_err(read_err::<C>))
            .collect()
    }
}

impl<C> RaftLogStorage<C> for LogStore<C>
where
    C: RaftTypeConfig,
    C::Entry: Serialize + DeserializeOwned + Clone,
{
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<C>, StorageError<C::NodeId>> {
        let state = self.state.lock().expect("raft log lock");
        Ok(LogState {
            last_purged_log_id: state.last_purged.clone(),
            last_log_id: state.last_log_id(),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<C::NodeId>) -> Result<(), StorageError<C::NodeId>> {
        let mut state = self.state.lock().expect("raft log lock");
        let record = encode_record(TAG_VOTE, vote)
            .map_err(|e| StorageError::from_io_error(ErrorSubject::Vote, ErrorVerb::Write, e))?;
        state
            .write_synced(&record)
            .map_err(|e| StorageError::from_io_error(ErrorSubject::Vote, ErrorVerb::Write, e))?;
        state.vote = Some(vote.clone());
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<C::NodeId>>, StorageError<C::NodeId>> {
        Ok(self.state.lock().expect("raft log lock").vote.clone())
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogId<C::NodeId>>,
    ) -> Result<(), StorageError<C::NodeId>> {
        // Written without a sync of its own: it rides on the next append's fsync. Losing it in
        // a crash only means re-applying committed entries after an election, never losing them.
        let mut state = self.state.lock().expect("raft log lock");
        let record = encode_record(TAG_COMMITTED, &committed).map_err(write_err::<C>)?;
        state.write_record(&record).map_err(write_err::<C>)?;
        state.committed = committed;
        Ok(())
    }

    async fn read_committed(
        &mut self,
    ) -> Result<Option<LogId<C::NodeId>>, StorageError<C::NodeId>> {
        Ok(self.state.lock().expect("raft log lock").committed.clone())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<C>,
    ) -> Result<(), StorageError<C::NodeId>>
    where
        I: IntoIterator<Item = C::Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let file = {
            let mut state = self.state.lock().expect("raft log lock");
            for entry in entries {
                let log_id = entry.get_log_id().clone();
                let record = encode_record(TAG_ENTRY, &entry).map_err(write_err::<C>)?;
                let loc = state.write_record(&record).map_err(write_err::<C>)?;
                let tail = state.tail();
                tail.max_index = tail.max_index.max(Some(log_id.index));
                state.index.insert(log_id.index, (log_id, loc));
            }
            state.tail().file.clone()
        };
        self.flusher
            .send(FlushCmd::Sync { file, callback })
            .map_err(|_| write_err::<C>(io_err("raft log flusher thread is gone")))?;
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<C::NodeId>) -> Result<(), StorageError<C::NodeId>> {
        let mut state = self.state.lock().expect("raft log lock");
        let record = encode_record(TAG_TRUNCATE, &log_id.index).map_err(write_err::<C>)?;
        state.write_synced(&record).map_err(write_err::<C>)?;
        state.index.split_off(&log_id.index);
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId<C::NodeId>) -> Result<(), StorageError<C::NodeId>> {
        let mut state = self.state.lock().expect("raft log lock");
        let record = encode_record(TAG_PURGE, &log_id).map_err(write_err::<C>)?;
        state.write_synced(&record).map_err(write_err::<C>)?;
        state.index = state.index.split_off(&(log_id.index + 1));
        state.last_purged = Some(log_id.clone());
        // Delete whole segments (never the tail) that hold nothing past the purge point. The
        // purge record above is synced first, and the tail's header has been on disk whole since
        // it became the tail, so the vote and committed id outlive the deleted segments.
        let mut removed = 0;
        while state.segments.len() > 1 {
            let first = &state.segments[0];
            let done = first.max_index.is_none_or(|max| max <= log_id.index);
            if !done {
                break;
            }
            // Freed in steps on a thread of its own (`release.rs`): a segment freed at once
            // would hold up the fsyncs of the appends that wait for this lock.
            crate::release::remove(&first.path).map_err(write_err::<C>)?;
            state.segments.remove(0);
            removed += 1;
        }
        if removed > 0 {
            sync_dir(&state.dir).map_err(write_err::<C>)?;
        }
        Ok(())
    }
}

impl<C: RaftTypeConfig> LogStore<C> {
    /// The last committed log index this log has been told of (for status).
    pub fn committed_index(&self) -> Option<u64> {
        let state = self.state.lock().expect("raft log lock");
        state.committed.as_ref().map(|id| id.index)
    }

    /// Number of segment files currently on disk (for tests and status).
    pub fn segment_count(&self) -> usize {
        self.state.lock().expect("raft log lock").segments.len()
    }
}
