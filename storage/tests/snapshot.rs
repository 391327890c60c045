//! Snapshot export and import against live traffic: an import never hides a key that is in
//! both states, an export does not stop commits and still reflects exactly one epoch, and an
//! import interrupted by a crash is reported on open instead of refusing the store.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use ordo_storage::{EpochCommit, EpochStamp, Part, Store, Write};

const PARTITIONS: u32 = 2;

/// Commits `epoch` (time = epoch ms) with `writes` and a raft metadata blob naming the epoch.
fn commit(store: &Store, epoch: u64, writes: Vec<(Part, Vec<Write>)>) {
    let mut commit = EpochCommit {
        stamp: Some(EpochStamp {
            epoch,
            time_ms: epoch,
        }),
        raft_meta: format!("raft-meta-{epoch}").into_bytes(),
        ..EpochCommit::default()
    };
    for (part, part_writes) in writes {
        commit.writes.entry(part).or_default().extend(part_writes);
    }
    store.commit(commit).expect("commit");
}

fn put(key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> Write {
    (key.into(), Some(value.into()))
}

fn del(key: impl Into<Vec<u8>>) -> Write {
    (key.into(), None)
}

/// Waits up to 30 s for `done`, polling.
fn wait_for(what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(1));
    }
}

/// A store holding `keys` filler keys named `{tag}-{n}` in every partition, and `shared` in
/// the global tree and p0 with value `tag`.
fn store_with(dir: &std::path::Path, tag: &str, keys: usize) -> Store {
    let store = Store::open(dir, PARTITIONS).expect("open store");
    let mut writes = Vec::new();
    for part in [Part::Global, Part::Region(0), Part::Region(1)] {
        let mut part_writes: Vec<Write> = (0..keys)
            .map(|n| put(format!("{tag}-{n:08}"), vec![7u8; 32]))
            .collect();
        part_writes.push(put("shared", tag));
        writes.push((part, part_writes));
    }
    commit(&store, 1, writes);
    store
}

#[test]
fn point_reads_during_an_import_never_miss_a_key_present_before_and_after() {
    const FILLER_KEYS: usize = 5_000;
    let dir = tempfile::tempdir().expect("temp dir");

    eprintln!("--- phase: two states that share one key and nothing else");
    let (_, snapshot_a) = store_with(&dir.path().join("a"), "a", FILLER_KEYS)
        .export_snapshot()
        .expect("export a");
    let (_, snapshot_b) = store_with(&dir.path().join("b"), "b", FILLER_KEYS)
        .export_snapshot()
        .expect("export b");
    let store = Arc::new(store_with(&dir.path().join("live"), "live", FILLER_KEYS));

    eprintln!("--- phase: readers hammer the shared key while the store flips between them");
    let importing = Arc::new(AtomicBool::new(true));
    let reading = Arc::new(AtomicUsize::new(0));
    let parts = [Part::Global, Part::Region(0)];
    let readers: Vec<_> = parts
        .into_iter()
        .map(|part| {
            let (store, importing, reading) = (store.clone(), importing.clone(), reading.clone());
            thread::spawn(move || {
                let mut reads = 0u64;
                reading.fetch_add(1, Ordering::Relaxed);
                while importing.load(Ordering::Relaxed) {
                    let value = store.get(part, b"shared").expect("get");
                    assert!(
                        value.is_some(),
                        "{part}: `shared` is in both states but was missing during an import \
                         (after {reads} reads)"
                    );
                    reads += 1;
                }
                reads
            })
        })
        .collect();
    wait_for("the readers", || {
        reading.load(Ordering::Relaxed) == parts.len()
    });
    let started = Instant::now();
    for round in 0..4 {
        let snapshot = if round % 2 == 0 {
            &snapshot_a
        } else {
            &snapshot_b
        };
        store.import_snapshot(snapshot).expect("import");
    }
    importing.store(false, Ordering::Relaxed);
    eprintln!("imports took {:?}", started.elapsed());
    for (part, reader) in parts.iter().zip(readers) {
        let reads = reader.join().expect("a reader saw `shared` missing");
        eprintln!("{part}: {reads} reads, `shared` always there");
    }

    eprintln!("--- phase: the store holds exactly the last snapshot");
    assert_eq!(store.export_snapshot().expect("export").1, snapshot_b);
    assert_eq!(
        store
            .get(Part::Region(0), b"shared")
            .expect("get")
            .as_deref(),
        Some(&b"b"[..])
    );
    assert!(store
        .get(Part::Region(1), b"a-00000000")
        .expect("get")
        .is_none());
}

/// The writes of epoch `epoch` (>= 2) in the export test: overwrites of hot keys, a new key
/// per epoch, deletes of recent new keys and of filler keys, and filler keys deleted and
/// written back, across the global tree and both regions. A pure function of the epoch, so a
/// reference store can replay it.
fn churn(epoch: u64) -> Vec<(Part, Vec<Write>)> {
    let mut p0 = vec![
        put(format!("hot-{}", epoch % 10), epoch.to_be_bytes()),
        put(format!("new-{epoch:08}"), epoch.to_be_bytes()),
    ];
    if epoch >= 5 {
        p0.push(del(format!("new-{:08}", epoch - 3)));
    }
    let mut p1 = vec![del(format!("base-{epoch:08}"))];
    if epoch >= 7 {
        p1.push(put(format!("base-{:08}", epoch - 5), epoch.to_be_bytes()));
    }
    vec![
        (Part::Global, vec![put("clock", epoch.to_be_bytes())]),
        (Part::Region(0), p0),
        (Part::Region(1), p1),
    ]
}

fn base_store(dir: &std::path::Path, keys: usize) -> Store {
    let store = Store::open(dir, PARTITIONS).expect("open store");
    let filler: Vec<Write> = (0..keys)
        .map(|n| put(format!("base-{n:08}"), vec![3u8; 64]))
        .collect();
    commit(
        &store,
        1,
        vec![
            (Part::Region(1), filler),
            (Part::Global, vec![put("clock", 1u64.to_be_bytes())]),
        ],
    );
    store
}

#[test]
fn an_export_lets_commits_run_and_still_reflects_exactly_one_epoch() {
    const BASE_KEYS: usize = 20_000;
    let dir = tempfile::tempdir().expect("temp dir");

    eprintln!("--- phase: a store with {BASE_KEYS} keys and a thread committing epochs");
    let store = Arc::new(base_store(&dir.path().join("live"), BASE_KEYS));
    let stop = Arc::new(AtomicBool::new(false));
    let last_epoch = Arc::new(AtomicU64::new(1));
    let committer = {
        let (store, stop, last_epoch) = (store.clone(), stop.clone(), last_epoch.clone());
        thread::spawn(move || {
            let mut epoch = 1;
            while !stop.load(Ordering::Relaxed) {
                epoch += 1;
                commit(&store, epoch, churn(epoch));
                last_epoch.store(epoch, Ordering::Relaxed);
            }
        })
    };
    wait_for("the first commits", || {
        last_epoch.load(Ordering::Relaxed) >= 10
    });

    eprintln!("--- phase: export while the commits go on");
    let before = last_epoch.load(Ordering::Relaxed);
    let started = Instant::now();
    let (applied, blob) = store.export_snapshot().expect("export");
    let export_time = started.elapsed();
    let after = last_epoch.load(Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    committer.join().expect("committer");
    eprintln!(
        "export at epoch {} took {export_time:?}; epochs {before}..{after} committed during it",
        applied.epoch
    );
    assert!(
        after >= before + 3,
        "only {} epochs committed during the export: it blocked commits",
        after - before
    );
    assert!(before <= applied.epoch && applied.epoch <= after);

    eprintln!("--- phase: the export equals a store that stopped at its epoch");
    let reference = base_store(&dir.path().join("reference"), BASE_KEYS);
    for epoch in 2..=applied.epoch {
        commit(&reference, epoch, churn(epoch));
    }
    assert_eq!(reference.applied(), applied);
    let (_, reference_blob) = reference.export_snapshot().expect("export reference");
    let restored = Store::open(dir.path().join("restored"), PARTITIONS).expect("open");
    restored.import_snapshot(&blob).expect("import");
    assert_eq!(restored.applied(), applied);
    assert_eq!(
        restored.applied().state_hash,
        reference.applied().state_hash
    );
    for (part, key) in [
        (Part::Global, "clock".to_string()),
        (Part::Region(0), format!("hot-{}", applied.epoch % 10)),
        (Part::Region(0), format!("new-{:08}", applied.epoch)),
        (Part::Region(0), format!("new-{:08}", applied.epoch + 1)),
        (Part::Region(1), format!("base-{:08}", applied.epoch)),
        (Part::Region(1), format!("base-{:08}", applied.epoch + 1)),
    ] {
        assert_eq!(
            restored.get(part, key.as_bytes()).expect("get"),
            reference.get(part, key.as_bytes()).expect("get"),
            "{part} {key}"
        );
    }
    assert!(
        blob == reference_blob,
        "the export differs from the state at epoch {}",
        applied.epoch
    );
}

#[test]
fn an_interrupted_import_is_reported_on_open_and_finished_by_importing_again() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (_, snapshot) = store_with(&dir.path().join("source"), "new", 100)
        .export_snapshot()
        .expect("export");
    let live = dir.path().join("live");

    eprintln!("--- phase: a crash right after an import began");
    let store = store_with(&live, "old", 100);
    assert!(!store.import_interrupted());
    store.mark_import_started().expect("mark");
    drop(store);

    eprintln!("--- phase: the store opens, says so, and holds the state before the import");
    let store = Store::open(&live, PARTITIONS).expect("a store with an interrupted import opens");
    assert!(store.import_interrupted());
    assert_eq!(
        store.get(Part::Global, b"shared").expect("get").as_deref(),
        Some(&b"old"[..])
    );
    let (_, exported) = store.export_snapshot().expect("export");
    let (_, clean) = store_with(&dir.path().join("clean"), "old", 100)
        .export_snapshot()
        .expect("export");
    assert!(
        exported == clean,
        "an export carried this store's import marker"
    );

    eprintln!("--- phase: importing the snapshot again finishes the import, durably");
    store.import_snapshot(&snapshot).expect("import");
    assert!(!store.import_interrupted());
    drop(store);
    let store = Store::open_existing(&live).expect("reopen");
    assert!(!store.import_interrupted());
    assert_eq!(store.export_snapshot().expect("export").1, snapshot);
}
