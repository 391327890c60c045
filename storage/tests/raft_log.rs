//! The Raft log on disk: durable across reopen, torn tails cut, corruption refused (a bad
//! record followed by intact ones included), purged segments deleted, and the vote kept through
//! a crash at any step of starting a segment.

use std::io::Cursor;

use openraft::storage::{RaftLogReader, RaftLogStorage, RaftLogStorageExt};
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, Vote};
use ordo_storage::LogStore;

openraft::declare_raft_types!(
    pub Cfg:
        D = String,
        R = String,
        SnapshotData = Cursor<Vec<u8>>,
);

type Log = LogStore<Cfg>;

fn log_id(term: u64, index: u64) -> LogId<u64> {
    LogId::new(CommittedLeaderId::new(term, 1), index)
}

fn entry(term: u64, index: u64, body: &str) -> Entry<Cfg> {
    Entry {
        log_id: log_id(term, index),
        payload: EntryPayload::Normal(body.to_string()),
    }
}

fn bodies(entries: &[Entry<Cfg>]) -> Vec<String> {
    entries
        .iter()
        .map(|e| match &e.payload {
            EntryPayload::Normal(s) => s.clone(),
            _ => String::new(),
        })
        .collect()
}

fn segments(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "wal"))
        .collect();
    v.sort();
    v
}

#[tokio::test]
async fn entries_vote_and_truncation_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut log = Log::open(dir.path()).unwrap();
        log.save_vote(&Vote::new(3, 1)).await.unwrap();
        log.blocking_append((1..=5).map(|i| entry(1, i, &format!("e{i}"))))
            .await
            .unwrap();
        log.truncate(log_id(1, 4)).await.unwrap();
        log.blocking_append([entry(2, 4, "x4")]).await.unwrap();
    }
    let mut log = Log::open(dir.path()).unwrap();
    assert_eq!(log.read_vote().await.unwrap(), Some(Vote::new(3, 1)));
    let all = log.try_get_log_entries(0..).await.unwrap();
    assert_eq!(bodies(&all), vec!["e1", "e2", "e3", "x4"]);
    let state = log.get_log_state().await.unwrap();
    assert_eq!(state.last_log_id, Some(log_id(2, 4)));
}

#[tokio::test]
async fn a_torn_tail_is_cut_and_a_corrupt_middle_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut log = Log::open_with_segment_bytes(dir.path(), 256).unwrap();
        for i in 1..=20 {
            log.blocking_append([entry(1, i, &format!("entry number {i}"))])
                .await
                .unwrap();
        }
    }
    let segs = segments(dir.path());
    assert!(segs.len() > 2, "small segments rotate: {segs:?}");

    // A crash mid-append leaves half a record at the end of the last segment.
    let last = segs.last().unwrap();
    let mut bytes = std::fs::read(last).unwrap();
    let good_len = bytes.len();
    bytes.extend_from_slice(&[40, 0, 0, 0, 1, 2, 3, 4, 9, 9]);
    std::fs::write(last, &bytes).unwrap();
    {
        let mut log = Log::open_with_segment_bytes(dir.path(), 256).unwrap();
        assert_eq!(log.try_get_log_entries(0..).await.unwrap().len(), 20);
        assert_eq!(
            std::fs::metadata(last).unwrap().len() as usize,
            good_len,
            "torn tail cut off"
        );
        log.blocking_append([entry(1, 21, "after the tear")])
            .await
            .unwrap();
    }
    let mut log = Log::open_with_segment_bytes(dir.path(), 256).unwrap();
    assert_eq!(log.try_get_log_entries(21..22).await.unwrap().len(), 1);
    drop(log);

    // A flipped byte inside an older segment is corruption, not a torn tail.
    let first = &segments(dir.path())[0];
    let mut bytes = std::fs::read(first).unwrap();
    let n = bytes.len();
    bytes[n - 3] ^= 0xff;
    std::fs::write(first, &bytes).unwrap();
    let err = Log::open_with_segment_bytes(dir.path(), 256)
        .err()
        .expect("corruption refused");
    assert!(err.to_string().contains("checksum mismatch"), "{err}");
}

#[tokio::test]
async fn purge_deletes_whole_old_segments_and_keeps_the_vote() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut log = Log::open_with_segment_bytes(dir.path(), 256).unwrap();
        log.save_vote(&Vote::new(7, 1)).await.unwrap();
        for i in 1..=30 {
            log.blocking_append([entry(7, i, &format!("entry number {i}"))])
                .await
                .unwrap();
        }
        let before = segments(dir.path()).len();
        log.purge(log_id(7, 25)).await.unwrap();
        assert!(segments(dir.path()).len() < before, "old segments deleted");
    }
    let mut log = Log::open_with_segment_bytes(dir.path(), 256).unwrap();
    assert_eq!(log.read_vote().await.unwrap(), Some(Vote::new(7, 1)));
    let state = log.get_log_state().await.unwrap();
    assert_eq!(state.last_purged_log_id, Some(log_id(7, 25)));
    assert_eq!(state.last_log_id, Some(log_id(7, 30)));
    let left = log.try_get_log_entries(0..).await.unwrap();
    assert_eq!(left.first().map(|e| e.log_id.index), Some(26));
}

/// The segment files of a log directory, by name, with their bytes: a disk image to restore.
fn image(dir: &std::path::Path) -> Vec<(String, Vec<u8>)> {
    segments(dir)
        .into_iter()
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&p).unwrap())
        })
        .collect()
}

/// A fresh directory holding `files`: the disk as a crash left it.
fn restore(files: &[(String, Vec<u8>)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (name, bytes) in files {
        std::fs::write(dir.path().join(name), bytes).unwrap();
    }
    dir
}

/// Where each record of a segment starts, read with the documented framing
/// `[len: u32 LE][crc32: u32 LE][tag + bincode: len bytes]`.
fn record_starts(bytes: &[u8]) -> Vec<usize> {
    let mut starts = Vec::new();
    let mut pos = 0;
    while pos + 8 <= bytes.len() {
        starts.push(pos);
        pos += 8 + u32::from_le_bytes(bytes[pos..pos + 4].try_into().unwrap()) as usize;
    }
    starts
}

/// Bytes of a segment's header: every record before its first entry (tag 1).
fn header_bytes(bytes: &[u8]) -> usize {
    record_starts(bytes)
        .into_iter()
        .find(|&start| bytes[start + 8] == 1)
        .unwrap_or(bytes.len())
}

/// Asserts the durable state a reopened log reports.
async fn assert_durable(
    log: &mut Log,
    vote: Vote<u64>,
    committed: Option<LogId<u64>>,
    purged: LogId<u64>,
    what: &str,
) {
    assert_eq!(log.read_vote().await.unwrap(), Some(vote), "vote, {what}");
    assert_eq!(
        log.read_committed().await.unwrap(),
        committed,
        "committed id, {what}"
    );
    let state = log.get_log_state().await.unwrap();
    assert_eq!(
        state.last_purged_log_id,
        Some(purged),
        "purge point, {what}"
    );
}

#[tokio::test]
async fn a_crash_at_any_step_of_starting_a_segment_keeps_the_vote() {
    const SEGMENT_BYTES: u64 = 256;
    let vote = Vote::new(5, 1);
    let committed = Some(log_id(5, 6));
    let purged = log_id(5, 10);

    eprintln!(
        "--- phase: vote, committed id and purge point saved, every older segment purged away"
    );
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open_with_segment_bytes(dir.path(), SEGMENT_BYTES).unwrap();
    log.save_vote(&vote).await.unwrap();
    for i in 1..=10 {
        log.blocking_append([entry(5, i, &format!("entry number {i}"))])
            .await
            .unwrap();
    }
    log.save_committed(committed).await.unwrap();
    log.purge(purged).await.unwrap();
    assert_eq!(log.segment_count(), 1, "only the tail segment is left");

    eprintln!("--- phase: appends fill the tail until a new segment starts");
    let mut index = 10;
    while log.segment_count() == 1 {
        index += 1;
        log.blocking_append([entry(5, index, &format!("entry number {index}"))])
            .await
            .unwrap();
    }
    let rolled = image(dir.path());
    assert_eq!(rolled.len(), 2, "the old segment and the new one");
    let new_len = rolled[1].1.len();

    eprintln!(
        "--- phase: a purge deletes the old segment: the vote lives only in the new one's header"
    );
    let purged_all = log_id(5, index);
    log.purge(purged_all).await.unwrap();
    let after_purge = image(dir.path());
    assert_eq!(after_purge.len(), 1, "the old segment is deleted");
    assert_eq!(after_purge[0].0, rolled[1].0);
    drop(log);

    eprintln!(
        "--- phase: a crash while the new segment starts ({new_len} bytes): it is missing or \
         holds any prefix, the old one is intact; reopen, keep going, purge the old one, reopen"
    );
    let mut cuts = vec![None];
    cuts.extend((0..=new_len).map(Some));
    for cut in cuts {
        let mut files = rolled.clone();
        match cut {
            None => drop(files.pop()),
            Some(n) => files[1].1.truncate(n),
        }
        let what = format!("new segment cut to {cut:?} bytes");
        let crashed = restore(&files);
        let mut log = Log::open_with_segment_bytes(crashed.path(), SEGMENT_BYTES).unwrap();
        assert_durable(&mut log, vote, committed, purged, &what).await;
        let last = log.get_log_state().await.unwrap().last_log_id.unwrap();
        let next = last.index + 1;
        log.blocking_append([entry(5, next, "after the crash")])
            .await
            .unwrap();
        log.purge(log_id(5, next)).await.unwrap();
        assert_eq!(log.segment_count(), 1, "old segment purged away, {what}");
        drop(log);
        let mut log = Log::open_with_segment_bytes(crashed.path(), SEGMENT_BYTES).unwrap();
        let what = format!("{what}, then appended, purged and reopened");
        assert_durable(&mut log, vote, committed, log_id(5, next), &what).await;
    }

    eprintln!("--- phase: a crash during the purge: its record is durable, the old segment deleted or not");
    let not_yet_deleted = vec![rolled[0].clone(), after_purge[0].clone()];
    for (files, what) in [
        (not_yet_deleted, "old segment not yet deleted"),
        (after_purge.clone(), "old segment deleted"),
    ] {
        let crashed = restore(&files);
        let mut log = Log::open_with_segment_bytes(crashed.path(), SEGMENT_BYTES).unwrap();
        assert_durable(&mut log, vote, committed, purged_all, what).await;
    }

    let bytes = &after_purge[0].1;
    let header = header_bytes(bytes);
    eprintln!(
        "--- phase: the only segment left torn anywhere past its {header}-byte header: the vote stays"
    );
    for n in header..=bytes.len() {
        let mut files = after_purge.clone();
        files[0].1.truncate(n);
        let crashed = restore(&files);
        let mut log = Log::open_with_segment_bytes(crashed.path(), SEGMENT_BYTES).unwrap();
        let what = format!("only segment cut to {n} bytes");
        assert_eq!(log.read_vote().await.unwrap(), Some(vote), "vote, {what}");
        assert_eq!(log.read_committed().await.unwrap(), committed, "{what}");
        let state = log.get_log_state().await.unwrap();
        assert!(state.last_purged_log_id >= Some(purged), "{what}");
    }

    eprintln!(
        "--- phase: the only segment left torn inside its header is refused, never read as an \
         empty log"
    );
    for n in 0..header {
        let mut files = after_purge.clone();
        files[0].1.truncate(n);
        let crashed = restore(&files);
        let err = Log::open_with_segment_bytes(crashed.path(), SEGMENT_BYTES)
            .err()
            .unwrap_or_else(|| panic!("only segment cut to {n} bytes opened as a log"));
        assert!(err.to_string().contains("corrupt"), "{err}");
    }
}

#[tokio::test]
async fn a_bad_record_followed_by_valid_ones_is_corruption_not_a_torn_tail() {
    eprintln!("--- phase: a vote and ten entries in one segment");
    let dir = tempfile::tempdir().unwrap();
    {
        let mut log = Log::open(dir.path()).unwrap();
        log.save_vote(&Vote::new(2, 1)).await.unwrap();
        for i in 1..=10 {
            log.blocking_append([entry(2, i, &format!("entry number {i}"))])
                .await
                .unwrap();
        }
    }
    let segs = segments(dir.path());
    assert_eq!(segs.len(), 1);
    let path = &segs[0];
    let name = path.file_name().unwrap().to_string_lossy().into_owned();
    let pristine = std::fs::read(path).unwrap();
    let starts = record_starts(&pristine);
    let early = starts[starts.len() - 8];
    let last = *starts.last().unwrap();

    /// Damages the record that starts at the given offset.
    type Damage = fn(&mut [u8], usize);
    let damages: [(&str, Damage); 2] = [
        ("a flipped payload byte", |bytes, start| {
            bytes[start + 12] ^= 0x40
        }),
        ("an implausible length", |bytes, start| {
            bytes[start..start + 4].copy_from_slice(&u32::MAX.to_le_bytes())
        }),
    ];
    for (damage, apply) in damages {
        eprintln!("--- phase: {damage} in an early record of the last segment is refused");
        let mut bytes = pristine.clone();
        apply(&mut bytes, early);
        std::fs::write(path, &bytes).unwrap();
        let err = Log::open(dir.path())
            .err()
            .unwrap_or_else(|| panic!("{damage} at offset {early} was cut off as a torn tail"));
        let msg = err.to_string();
        assert!(msg.contains("corrupt"), "{msg}");
        assert!(msg.contains(&name), "names the segment: {msg}");
        assert!(
            msg.contains(&format!("offset {early}")),
            "names the offset: {msg}"
        );
        assert_eq!(
            std::fs::read(path).unwrap(),
            bytes,
            "a refused log is left as it was"
        );

        eprintln!("--- phase: {damage} in the final record is a torn tail, cut silently");
        let mut bytes = pristine.clone();
        apply(&mut bytes, last);
        std::fs::write(path, &bytes).unwrap();
        let mut log = Log::open(dir.path()).unwrap();
        let left = log.try_get_log_entries(0..).await.unwrap();
        assert_eq!(left.len(), 9, "the final entry is cut");
        assert_eq!(log.read_vote().await.unwrap(), Some(Vote::new(2, 1)));
        drop(log);
        assert_eq!(std::fs::metadata(path).unwrap().len() as usize, last);
        std::fs::write(path, &pristine).unwrap();
    }

    eprintln!("--- phase: a truncated final record is still cut silently");
    std::fs::write(path, &pristine[..pristine.len() - 3]).unwrap();
    let mut log = Log::open(dir.path()).unwrap();
    assert_eq!(log.try_get_log_entries(0..).await.unwrap().len(), 9);
    drop(log);

    eprintln!("--- phase: a torn append whose partial payload looks like a record is still torn");
    // What a client put in an entry (a user name, a key) may happen to be the bytes of a
    // record; inside a torn append it must not make the log look damaged.
    let mut bytes = pristine.clone();
    bytes.extend_from_slice(&1000u32.to_le_bytes());
    bytes.extend_from_slice(&0u32.to_le_bytes());
    bytes.extend_from_slice(&pristine[starts[1]..starts[2]]);
    std::fs::write(path, &bytes).unwrap();
    let mut log = Log::open(dir.path()).unwrap();
    assert_eq!(log.try_get_log_entries(0..).await.unwrap().len(), 10);
}
