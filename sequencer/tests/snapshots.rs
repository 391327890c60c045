//! Snapshots through the state machine: a build racing the applies leaves the newest snapshot
//! whole on disk, and a node killed while installing a snapshot finishes the install when it
//! opens again, without anyone wiping its data.

use std::path::Path;
use std::sync::{Arc, Mutex};

use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine};
use openraft::{Entry, EntryPayload};
use ordo_scheduler::{Batch, ExecConfig, KvOp, Op, Txn};
use ordo_sequencer::state_machine::{CurrentSnapshot, StateMachine};
use ordo_sequencer::{LogId, TypeConfig, Waiters};
use ordo_storage::Store;

const PARTITIONS: u32 = 2;

/// Opens a node's store and state machine in `dir`, as `Node::start` lays them out.
fn open_node(dir: &Path) -> (Arc<Store>, StateMachine) {
    let store = Arc::new(Store::open(dir.join("state"), PARTITIONS).expect("open store"));
    let sm = StateMachine::open(
        store.clone(),
        ExecConfig::default(),
        Arc::new(Waiters::default()),
        &dir.join("snapshots"),
    )
    .expect("open state machine");
    (store, sm)
}

fn log_id(index: u64) -> LogId {
    openraft::testing::log_id(1, 1, index)
}

/// The entry at `index`: one epoch writing `{tag}-{index}` (and its dedupe record).
fn entry(tag: &str, index: u64) -> Entry<TypeConfig> {
    Entry {
        log_id: log_id(index),
        payload: EntryPayload::Normal(Batch {
            time_ms: 1_000 + index,
            txns: vec![Txn {
                request_id: format!("{tag}-request-{index}"),
                op: Op::Kv(vec![KvOp::Write(format!("{tag}-{index}"), index as i64)]),
            }],
        }),
    }
}

async fn apply(sm: &mut StateMachine, tag: &str, indexes: std::ops::RangeInclusive<u64>) {
    let entries: Vec<_> = indexes.map(|index| entry(tag, index)).collect();
    sm.apply(entries).await.expect("apply");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_install_interrupted_by_a_crash_is_finished_on_restart() {
    let dir = tempfile::tempdir().expect("temp dir");

    eprintln!("--- phase: a leader's snapshot at index 20");
    let (_leader_store, mut leader) = open_node(&dir.path().join("leader"));
    apply(&mut leader, "leader", 1..=20).await;
    let snapshot = leader
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .expect("build");
    let mut snapshot = snapshot;
    let data = snapshot
        .snapshot
        .read_to_vec()
        .await
        .expect("read the snapshot");
    assert_eq!(snapshot.meta.last_log_id, Some(log_id(20)));

    eprintln!("--- phase: a follower at index 5 dies while installing it");
    let follower_dir = dir.path().join("follower");
    {
        let (store, mut follower) = open_node(&follower_dir);
        apply(&mut follower, "follower", 1..=5).await;
        // What install_snapshot does before the crash: the snapshot file, then the marker.
        CurrentSnapshot::open(&follower_dir.join("snapshots"))
            .expect("snapshot dir")
            .replace_if_newer(&snapshot.meta, &data)
            .expect("write the snapshot");
        store.mark_import_started().expect("mark the import");
    }

    eprintln!("--- phase: the follower opens and holds exactly the snapshot's state");
    let (store, mut follower) = open_node(&follower_dir);
    assert!(!store.import_interrupted());
    let (last_applied, _) = follower.applied_state().await.expect("applied state");
    assert_eq!(last_applied, Some(log_id(20)));
    assert_eq!(*follower.applied_epoch().borrow(), 20);
    let (_, state) = store.export_snapshot().expect("export");
    assert!(state == data, "the follower's state is not the snapshot's");

    eprintln!("--- phase: it goes on applying from there");
    apply(&mut follower, "leader", 21..=22).await;
    assert_eq!(store.applied_epoch(), 22);
}

#[test]
fn an_interrupted_install_without_its_snapshot_file_is_an_error_that_says_so() {
    let dir = tempfile::tempdir().expect("temp dir");
    {
        let store = Store::open(dir.path().join("state"), PARTITIONS).expect("open store");
        store.mark_import_started().expect("mark the import");
    }
    let store = Arc::new(Store::open(dir.path().join("state"), PARTITIONS).expect("open store"));
    let error = StateMachine::open(
        store,
        ExecConfig::default(),
        Arc::new(Waiters::default()),
        &dir.path().join("snapshots"),
    )
    .err()
    .expect("opening must fail");
    let message = error.to_string();
    eprintln!("{message}");
    assert!(
        message.contains("interrupted") && message.contains("current.snap"),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn builds_racing_the_applies_leave_the_newest_snapshot_whole() {
    const ENTRIES: u64 = 200;
    const BUILDERS: usize = 3;
    let dir = tempfile::tempdir().expect("temp dir");
    let (_store, mut sm) = open_node(dir.path());
    apply(&mut sm, "base", 1..=1).await;

    eprintln!("--- phase: {BUILDERS} builders build over and over while {ENTRIES} entries apply");
    let built = Arc::new(Mutex::new(Vec::new()));
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut builders = Vec::new();
    for _ in 0..BUILDERS {
        let mut builder = sm.get_snapshot_builder().await;
        let (built, done) = (built.clone(), done.clone());
        builders.push(tokio::spawn(async move {
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                let snapshot = builder.build_snapshot().await.expect("build");
                built.lock().expect("built").push(snapshot.meta.last_log_id);
            }
        }));
    }
    for index in 2..=ENTRIES {
        apply(&mut sm, "race", index..=index).await;
    }
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    for builder in builders {
        builder.await.expect("a build failed");
    }

    eprintln!("--- phase: the file holds the newest build, and its data is its meta's");
    let newest = built.lock().expect("built").iter().max().copied().flatten();
    eprintln!(
        "{} builds, newest {newest:?}",
        built.lock().expect("built").len()
    );
    let mut current = sm
        .get_current_snapshot()
        .await
        .expect("read")
        .expect("a snapshot");
    assert_eq!(current.meta.last_log_id, newest);
    let data = current
        .snapshot
        .read_to_vec()
        .await
        .expect("read the snapshot");
    let restored_dir = dir.path().join("restored");
    CurrentSnapshot::open(&restored_dir.join("snapshots"))
        .expect("snapshot dir")
        .replace_if_newer(&current.meta, &data)
        .expect("copy the snapshot");
    let (_, mut restored) = open_node(&restored_dir);
    let (last_applied, _) = restored.applied_state().await.expect("applied state");
    assert_eq!(last_applied, newest);
    let left: Vec<_> = std::fs::read_dir(dir.path().join("snapshots"))
        .expect("list")
        .map(|e| e.expect("entry").file_name())
        .filter(|name| name != "current.snap")
        .collect();
    assert!(left.is_empty(), "temporary files left behind: {left:?}");
}

/// A leader in `dir/leader` at index 30: the snapshot it built, its data, and its store's
/// export.
async fn leader_snapshot(dir: &Path) -> (openraft::Snapshot<TypeConfig>, Vec<u8>, Vec<u8>) {
    let (leader_store, mut leader) = open_node(&dir.join("leader"));
    apply(&mut leader, "leader", 1..=30).await;
    let mut sent = leader
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .expect("build");
    let data = sent
        .snapshot
        .read_to_vec()
        .await
        .expect("read the snapshot");
    let (_, exported) = leader_store.export_snapshot().expect("export");
    (sent, data, exported)
}

/// A follower in `dir/follower` at index 3 of a history of its own.
async fn follower_at_3(dir: &Path) -> (std::path::PathBuf, Arc<Store>, StateMachine) {
    let follower_dir = dir.join("follower");
    let (store, mut follower) = open_node(&follower_dir);
    apply(&mut follower, "follower", 1..=3).await;
    (follower_dir, store, follower)
}

/// A snapshot received the way openraft receives one (chunks written by position into the
/// file `begin_receiving_snapshot` gives, out of order and one of them twice) installs the
/// sender's state, becomes the receiver's `current.snap`, and leaves no other file; a
/// transfer abandoned halfway leaves nothing either.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_snapshot_received_in_chunks_is_installed_from_its_file() {
    use tokio::io::{AsyncSeekExt, AsyncWriteExt};
    let dir = tempfile::tempdir().expect("temp dir");
    let (sent, data, exported) = leader_snapshot(dir.path()).await;
    assert!(data == exported, "the snapshot is not the leader's state");
    let (follower_dir, store, mut follower) = follower_at_3(dir.path()).await;
    let snapshots = follower_dir.join("snapshots");
    let files = || -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(&snapshots)
            .expect("list")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    };

    // Abandoned: the receiving file goes with it.
    let mut abandoned = follower.begin_receiving_snapshot().await.expect("begin");
    abandoned
        .write_all(&data[..data.len() / 2])
        .await
        .expect("write");
    assert_eq!(files().len(), 1, "{:?}", files());
    drop(abandoned);
    assert!(files().is_empty(), "{:?}", files());

    let mut received = follower.begin_receiving_snapshot().await.expect("begin");
    let chunk = data.len() / 3 + 1;
    let mut offsets: Vec<usize> = (0..data.len()).step_by(chunk).collect();
    offsets.reverse();
    offsets.push(0);
    for offset in offsets {
        received
            .seek(std::io::SeekFrom::Start(offset as u64))
            .await
            .expect("seek");
        let end = (offset + chunk).min(data.len());
        received.write_all(&data[offset..end]).await.expect("write");
    }
    received.shutdown().await.expect("shutdown");
    follower
        .install_snapshot(&sent.meta, received)
        .await
        .expect("install");
    let (last_applied, _) = follower.applied_state().await.expect("applied state");
    assert_eq!(last_applied, sent.meta.last_log_id);
    assert!(store.export_snapshot().expect("export").1 == exported);
    assert_eq!(files(), ["current.snap"]);
    let (meta, on_disk) = CurrentSnapshot::open(&snapshots)
        .expect("open")
        .read()
        .expect("read")
        .expect("a snapshot");
    assert_eq!(meta, sent.meta);
    assert!(on_disk == data, "current.snap does not hold what was sent");
}

/// A received snapshot that fails the import's check (here: cut short) is refused before it
/// replaces the node's current snapshot, and leaves no file behind; the node's state and
/// snapshot are as they were.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_damaged_snapshot_never_replaces_the_current_one() {
    use tokio::io::AsyncWriteExt;
    let dir = tempfile::tempdir().expect("temp dir");
    let (sent, data, _) = leader_snapshot(dir.path()).await;
    let (follower_dir, store, mut follower) = follower_at_3(dir.path()).await;
    let own = follower
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .expect("build");
    let before = store.export_snapshot().expect("export").1;

    let mut received = follower.begin_receiving_snapshot().await.expect("begin");
    received
        .write_all(&data[..data.len() - 7])
        .await
        .expect("write");
    received.shutdown().await.expect("shutdown");
    let error = follower
        .install_snapshot(&sent.meta, received)
        .await
        .expect_err("a damaged snapshot must be refused");
    eprintln!("{error}");
    assert!(!store.import_interrupted());
    assert!(store.export_snapshot().expect("export").1 == before);
    let snapshots = follower_dir.join("snapshots");
    let (meta, _) = CurrentSnapshot::open(&snapshots)
        .expect("open")
        .read()
        .expect("read")
        .expect("a snapshot");
    assert_eq!(
        meta, own.meta,
        "the damaged snapshot replaced the current one"
    );
    let names: Vec<_> = std::fs::read_dir(&snapshots)
        .expect("list")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(names, ["current.snap"]);
}
