//! The Raft log on disk: durable across reopen, torn tails cut, corruption refused, purged
//! segments deleted.

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
