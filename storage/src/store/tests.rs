use super::*;

fn commit(store: &Store, epoch: u64, writes: Vec<(Part, Vec<Write>)>) {
    store
        .commit(EpochCommit {
            stamp: Some(EpochStamp {
                epoch,
                time_ms: epoch,
            }),
            writes: writes.into_iter().collect(),
            raft_meta: epoch.to_be_bytes().to_vec(),
            feed: None,
        })
        .expect("commit");
}

fn commit_feed(store: &Store, epoch: u64, entry: Option<&str>) {
    store
        .commit(EpochCommit {
            stamp: Some(EpochStamp {
                epoch,
                time_ms: epoch,
            }),
            feed: entry.map(|e| e.as_bytes().to_vec()),
            ..EpochCommit::default()
        })
        .expect("commit");
}

fn feed_epochs(page: &FeedPage) -> Vec<u64> {
    page.entries.iter().map(|(e, _)| *e).collect()
}

#[test]
fn the_feed_is_read_by_epoch_and_pruned_by_its_retention() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), 1).unwrap();
    assert_eq!(store.feed_start(), 1);
    store.set_feed_retention(FeedRetention {
        epochs: 5,
        bytes: 1 << 20,
    });
    for epoch in 1..=4 {
        // Odd epochs have events, even ones none.
        commit_feed(&store, epoch, (epoch % 2 == 1).then_some("ev"));
    }
    let page = store.feed_read(1, 100, 1 << 20).unwrap();
    assert_eq!((page.start, page.applied, page.through), (1, 4, 4));
    assert_eq!(feed_epochs(&page), vec![1, 3]);
    // A page bounded by entries ends at its last entry.
    let page = store.feed_read(1, 1, 1 << 20).unwrap();
    assert_eq!((feed_epochs(&page), page.through), (vec![1], 1));
    // Nothing applied past 4 yet: nothing new, and `through` says so.
    let page = store.feed_read(5, 100, 1 << 20).unwrap();
    assert!(page.entries.is_empty() && page.through == 4);

    for epoch in 5..=9 {
        commit_feed(&store, epoch, Some("ev"));
    }
    // The newest five epochs (5..=9) are kept.
    assert_eq!(store.feed_start(), 5);
    let page = store.feed_read(3, 100, 1 << 20).unwrap();
    assert!(page.entries.is_empty() && page.start == 5 && page.through < 3);
    assert_eq!(
        feed_epochs(&store.feed_read(5, 100, 1 << 20).unwrap()),
        vec![5, 6, 7, 8, 9]
    );

    // A byte bound drops the oldest entries first, and the start follows them.
    store.set_feed_retention(FeedRetention {
        epochs: 100,
        bytes: 6,
    });
    commit_feed(&store, 10, Some("ev"));
    assert_eq!(store.feed_bytes(), 6);
    assert_eq!(store.feed_start(), 8);
    assert_eq!(
        feed_epochs(&store.feed_read(8, 100, 1 << 20).unwrap()),
        vec![8, 9, 10]
    );

    // The start survives a restart.
    drop(store);
    let store = Store::open(dir.path(), 1).unwrap();
    assert_eq!((store.feed_start(), store.feed_bytes()), (8, 6));
}

#[test]
fn a_snapshot_import_restarts_the_feed_after_the_imported_epoch() {
    let source_dir = tempfile::tempdir().unwrap();
    let source = Store::open(source_dir.path(), 1).unwrap();
    for epoch in 1..=6 {
        commit_feed(&source, epoch, Some("ev"));
    }
    let (_, blob) = source.export_snapshot().unwrap();

    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), 1).unwrap();
    for epoch in 1..=2 {
        commit_feed(&store, epoch, Some("old"));
    }
    store.import_snapshot(&blob).unwrap();
    // Epochs 3..=6 were never executed here: the feed must not claim to have them.
    assert_eq!((store.feed_start(), store.feed_bytes()), (7, 0));
    let page = store.feed_read(1, 100, 1 << 20).unwrap();
    assert!(page.entries.is_empty() && page.start == 7);
    commit_feed(&store, 7, Some("new"));
    assert_eq!(
        feed_epochs(&store.feed_read(7, 100, 1 << 20).unwrap()),
        vec![7]
    );
}

/// A restore writes in batches, then imports: the same state, the same export again, and
/// only into a new store.
#[test]
fn a_restore_reaches_the_state_an_import_does_and_only_into_a_new_store() {
    let source_dir = tempfile::tempdir().unwrap();
    let source = Store::open(source_dir.path(), 2).unwrap();
    for epoch in 1..=3u64 {
        // One epoch fills more than a batch; the others overwrite a few of its keys.
        let keys = if epoch == 1 {
            RESTORE_BATCH_KEYS as u64 + 7
        } else {
            10
        };
        let writes = (0..keys)
            .map(|i| {
                (
                    format!("k{i:06}").into_bytes(),
                    Some(epoch.to_be_bytes().to_vec()),
                )
            })
            .collect();
        commit(
            &source,
            epoch,
            vec![
                (Part::Region(1), writes),
                (Part::Global, vec![put("g", "x")]),
            ],
        );
    }
    let (applied, blob) = source.export_snapshot().unwrap();

    let dir = tempfile::tempdir().unwrap();
    let restored = Store::open(dir.path(), 2).unwrap();
    restored.restore_snapshot(&blob).unwrap();
    assert_eq!(restored.applied(), applied);
    assert_eq!(
        restored.state_hash_at(3).unwrap(),
        source.state_hash_at(3).unwrap()
    );
    assert_eq!(restored.export_snapshot().unwrap().1, blob);
    assert!(!restored.import_interrupted());

    let (used_dir, other_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let used = Store::open(used_dir.path(), 2).unwrap();
    commit(&used, 1, vec![(Part::Region(0), vec![put("k", "v")])]);
    assert!(
        used.restore_snapshot(&blob).is_err(),
        "restored over a used store"
    );
    let other = Store::open(other_dir.path(), 3).unwrap();
    assert!(
        other.restore_snapshot(&blob).is_err(),
        "3 partitions took a 2-partition snapshot"
    );
}

fn put(key: &str, value: &str) -> Write {
    (key.as_bytes().to_vec(), Some(value.as_bytes().to_vec()))
}

fn del(key: &str) -> Write {
    (key.as_bytes().to_vec(), None)
}

fn seeded_store(dir: &Path) -> Store {
    let store = Store::open(dir, 2).expect("open");
    commit(
        &store,
        1,
        vec![
            (Part::Global, vec![put("dc-1", "a"), put("dc-2", "a")]),
            (
                Part::Region(0),
                vec![put("k1", "a"), put("k2", "a"), put("k3", "a")],
            ),
        ],
    );
    store
}

/// Imports into `store` the snapshot of a freshly seeded store.
fn import_seeded(store: &Store) {
    let dir = tempfile::tempdir().unwrap();
    let (_, snapshot) = seeded_store(dir.path()).export_snapshot().unwrap();
    store.import_snapshot(&snapshot).unwrap();
}

/// One tree's name and every key/value pair in it.
type TreeDump = (String, Vec<(Vec<u8>, Vec<u8>)>);

impl Store {
    /// Every tree's pairs as they are now (the store's own meta records left out, as an
    /// export leaves them out).
    fn dump_trees(&self) -> Result<Vec<TreeDump>, StoreError> {
        let mut dump = Vec::new();
        for (id, (name, tree)) in self.snapshot_trees().into_iter().enumerate() {
            let mut pairs = Vec::new();
            for kv in tree.iter() {
                let (k, v) = kv?;
                if id == META_TREE
                    && (k == META_IMPORTING || k == META_FEED_START || k == META_PACKED)
                {
                    continue;
                }
                pairs.push((k.to_vec(), v.to_vec()));
            }
            dump.push((name, pairs));
        }
        Ok(dump)
    }
}

/// Commits while an export runs change keys every way they can, in trees it has passed, is
/// in, and has not reached; the export is still the state it began at.
#[test]
fn the_capture_undoes_every_kind_of_change() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut store = seeded_store(dir.path());
    let (applied, at_begin) = store.export_snapshot().expect("export");
    // Patch after every pair, so commits land between the pairs of a tree.
    store.export_batch_pairs = 1;
    let region0 = FIRST_REGION_TREE;
    *store.export_hook.lock().unwrap() = Some(Box::new(move |store, tree, batches| {
        match (tree.checked_sub(region0), batches) {
            // Entering region 0: the global tree is behind the export, region 0 ahead.
            (Some(0), 0) => commit(
                store,
                2,
                vec![
                    // Overwritten, deleted, created.
                    (
                        Part::Global,
                        vec![put("dc-1", "b"), del("dc-2"), put("dc-3", "b")],
                    ),
                    // With epoch 3: k1 deleted and written back, k0 created and deleted, k3
                    // overwritten twice.
                    (
                        Part::Region(0),
                        vec![del("k1"), put("k0", "b"), put("k3", "b")],
                    ),
                ],
            ),
            // After region 0's first pair (k0): k0 is behind the export, k1 and k3 ahead.
            (Some(0), 1) => commit(
                store,
                3,
                vec![
                    (
                        Part::Region(0),
                        vec![put("k1", "c"), del("k0"), put("k3", "c")],
                    ),
                    (Part::Region(1), vec![put("r1", "c")]),
                ],
            ),
            _ => {}
        }
    }));
    let (exported_at, exported) = store.export_snapshot().expect("export");
    store.export_hook.lock().unwrap().take();
    assert_eq!(store.applied().epoch, 3, "the hook's commits ran");
    assert_eq!(exported_at, applied);
    assert!(
        exported == at_begin,
        "the export is not the state it began at"
    );
    assert!(store.capture.lock().expect("capture").is_none());
    // And it imports as that state.
    let other_dir = tempfile::tempdir().unwrap();
    let other = Store::open(other_dir.path(), 2).unwrap();
    other.import_snapshot(&exported).unwrap();
    assert_eq!(other.applied(), applied);
    assert_eq!(
        other.get(Part::Region(0), b"k1").unwrap().as_deref(),
        Some(&b"a"[..])
    );
    assert_eq!(other.get(Part::Region(0), b"k0").unwrap(), None);
}

#[test]
fn an_overflowing_capture_exports_again_under_the_gate() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut store = seeded_store(dir.path());
    store.capture_keys_max = 2;
    // Once: the export done again holds commits.
    let mut once = true;
    *store.export_hook.lock().unwrap() = Some(Box::new(move |store, tree, _| {
        if tree == FIRST_REGION_TREE && std::mem::take(&mut once) {
            commit(store, 2, vec![(Part::Region(0), vec![put("k1", "b")])]);
            commit(store, 3, vec![(Part::Region(0), vec![put("k2", "b")])]);
        }
    }));
    let (exported_at, exported) = store.export_snapshot().expect("export");
    store.export_hook.lock().unwrap().take();
    assert_eq!(exported_at, store.applied());
    assert_eq!(exported_at.epoch, 3);
    assert!(exported == store.export_snapshot().expect("export").1);
}

/// An export written into a file after other bytes, imported from there; and what an import
/// refuses before it changes anything.
#[test]
fn a_snapshot_streams_through_a_file() {
    use std::io::{Seek, Write as _};
    let dir = tempfile::tempdir().expect("temp dir");
    let source = seeded_store(&dir.path().join("source"));
    let mut file = tempfile::tempfile().unwrap();
    file.write_all(b"a header").unwrap();
    let (applied, len) = source.export_snapshot_to(&mut file).unwrap();
    assert_eq!(file.stream_position().unwrap(), 8 + len);
    let (_, blob) = source.export_snapshot().unwrap();
    assert_eq!(len, blob.len() as u64);

    let store = Store::open(dir.path().join("copy"), 2).unwrap();
    let whole = SnapshotSource::File {
        file: &file,
        offset: 8,
        len: None,
    };
    store.import_snapshot_from(whole).unwrap();
    assert_eq!(store.applied(), applied);
    assert!(store.export_snapshot().unwrap().1 == blob);

    // Cut short, one byte long, or shorter by a byte than a tree says: refused, and the
    // store is as it was.
    commit(&store, 2, vec![(Part::Region(1), vec![put("r9", "x")])]);
    let before = store.export_snapshot().unwrap().1;
    let mut longer = blob.clone();
    longer.push(0);
    for bad in [&blob[..blob.len() - 1], &longer[..], &blob[..20]] {
        let err = store.import_snapshot(bad).unwrap_err();
        assert!(matches!(err, StoreError::Corrupt(_)), "{err}");
        assert!(store.export_snapshot().unwrap().1 == before);
        assert!(!store.import_interrupted());
    }
    // A length past the bound is refused without reading (or allocating) it.
    let mut huge = blob[..16].to_vec();
    huge.extend_from_slice(&(SNAPSHOT_ITEM_BYTES_MAX + 1).to_le_bytes());
    let err = store.import_snapshot(&huge).unwrap_err();
    assert!(err.to_string().contains("bytes (at most"), "{err}");
}

#[test]
fn an_export_paced_to_disk_is_the_same_export() {
    use std::io::{Seek, Write as _};
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Store::open(dir.path().join("big"), 2).unwrap();
    // About 2.5 windows of writeback, in several epochs.
    let value = "v".repeat(1024);
    let keys = (5 * WRITEBACK_BYTES / 2 / 1024) as usize;
    for (i, chunk) in (0..keys).collect::<Vec<_>>().chunks(4_096).enumerate() {
        let writes = chunk
            .iter()
            .map(|k| put(&format!("k{k:08}"), &value))
            .collect();
        commit(&store, i as u64 + 1, vec![(Part::Region(0), writes)]);
    }
    let (applied, blob) = store.export_snapshot().unwrap();
    assert!(blob.len() as u64 > 2 * WRITEBACK_BYTES, "{}", blob.len());

    let mut file = tempfile::tempfile().unwrap();
    file.write_all(b"a header").unwrap();
    let mut paced = PacedFile::new(file).unwrap();
    let (paced_applied, len) = store.export_snapshot_to(&mut paced).unwrap();
    let mut file = paced.into_inner();
    assert_eq!(paced_applied, applied);
    assert_eq!(len, blob.len() as u64);
    assert_eq!(file.stream_position().unwrap(), 8 + len);
    let mut back = Vec::new();
    file.seek(std::io::SeekFrom::Start(0)).unwrap();
    std::io::Read::read_to_end(&mut file, &mut back).unwrap();
    assert!(back[..8] == b"a header"[..]);
    assert!(back[8..] == blob[..], "the paced export differs");
}

/// Every read of a region, point and range both ways, against a model of what was
/// committed.
fn assert_reads(store: &Store, model: &BTreeMap<Vec<u8>, Vec<u8>>, when: &str) {
    let part = Part::Region(0);
    for n in 0..64u8 {
        let key = [b'k', n];
        assert_eq!(
            store.get(part, &key).unwrap().map(|v| v.to_vec()),
            model.get(key.as_slice()).cloned(),
            "{when}: get {key:?}"
        );
    }
    let all: Vec<(Vec<u8>, Vec<u8>)> = model.clone().into_iter().collect();
    let pairs = |found: Vec<(IVec, IVec)>| -> Vec<(Vec<u8>, Vec<u8>)> {
        found
            .into_iter()
            .map(|(k, v)| (k.to_vec(), v.to_vec()))
            .collect()
    };
    assert_eq!(
        pairs(store.scan_prefix(part, b"k", 1000).unwrap()),
        all,
        "{when}: scan"
    );
    let (lo, hi) = ([b'k', 10], [b'k', 40]);
    let inside: Vec<_> = all
        .iter()
        .filter(|(k, _)| k.as_slice() >= lo.as_slice() && k.as_slice() < hi.as_slice())
        .cloned()
        .collect();
    assert_eq!(
        pairs(store.range(part, &lo, &hi, 1000).unwrap()),
        inside,
        "{when}: range"
    );
    let mut reversed = inside.clone();
    reversed.reverse();
    reversed.truncate(5);
    assert_eq!(
        pairs(store.range_rev(part, &lo, &hi, 5).unwrap()),
        reversed,
        "{when}: range_rev"
    );
}

#[test]
fn epochs_read_back_exactly_while_sled_trails_and_after_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let mut model = BTreeMap::new();
    {
        let store = Store::open(dir.path(), 1).unwrap();
        for epoch in 1..=200u64 {
            // Each epoch writes three keys and removes one, some of them written by the
            // epochs just before (still in the overlay), some long ago (in sled).
            let mut writes = Vec::new();
            for step in 0..3u64 {
                let key = vec![b'k', ((epoch * 7 + step * 13) % 64) as u8];
                let value = format!("{epoch}.{step}").into_bytes();
                model.insert(key.clone(), value.clone());
                writes.push((key, Some(value)));
            }
            let gone = vec![b'k', ((epoch * 11) % 64) as u8];
            model.remove(&gone);
            writes.push((gone, None));
            commit(&store, epoch, vec![(Part::Region(0), writes)]);
            assert_reads(&store, &model, &format!("after epoch {epoch}"));
        }
        assert!(
            store.behind.overlay_len() > 0,
            "sled trails the epochs just committed"
        );
        store.flush().unwrap();
        assert_eq!(store.behind.overlay_len(), 0, "a flush writes every epoch");
        commit(
            &store,
            201,
            vec![(Part::Region(0), vec![(b"k\x00".to_vec(), None)])],
        );
        model.remove(b"k\x00".as_slice());
        // Dropped without a flush: what is queued is still written.
    }
    let store = Store::open(dir.path(), 1).unwrap();
    assert_eq!(store.applied_epoch(), 201);
    assert_reads(&store, &model, "after a reopen");
}

#[test]
fn known_keys_answer_what_sled_holds_through_commits_and_imports() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), 2).unwrap();
    let put = |k: &str| (k.as_bytes().to_vec(), Some(b"v".to_vec()));
    let del = |k: &str| (k.as_bytes().to_vec(), None);
    commit(
        &store,
        1,
        vec![(Part::Region(0), vec![put("d1"), put("d2")])],
    );
    // Counted from what is there when asked.
    assert_eq!(store.keep_known(b"d").unwrap(), 2);
    let exists = |store: &Store, part: u32, key: &str| {
        store
            .get(Part::Region(part), key.as_bytes())
            .unwrap()
            .is_some()
    };
    // The same key in the other partition is another key.
    assert!(exists(&store, 0, "d1") && !exists(&store, 1, "d1"));
    commit(
        &store,
        2,
        vec![
            // A rewrite, a new key, a removal, and a removal of a key never written.
            (
                Part::Region(0),
                vec![put("d1"), put("d3"), del("d2"), del("d9")],
            ),
            (Part::Region(1), vec![put("d1")]),
        ],
    );
    let count = || store.known.read().unwrap().as_ref().unwrap().len();
    assert_eq!(count(), 3, "d1 and d3 in p0, d1 in p1");
    for (part, key, there) in [
        (0, "d1", true),
        (0, "d2", false),
        (0, "d3", true),
        (0, "d9", false),
        (1, "d1", true),
        (1, "d3", false),
    ] {
        assert_eq!(exists(&store, part, key), there, "p{part} {key}");
    }
    // A key written and removed in one commit (the counts follow the commit's own order).
    commit(
        &store,
        3,
        vec![(
            Part::Region(0),
            vec![put("d4"), del("d4"), del("d1"), put("d1")],
        )],
    );
    assert_eq!(count(), 3);
    assert!(exists(&store, 0, "d1") && !exists(&store, 0, "d4"));
    // An import counts again from the imported state.
    let (_, snapshot) = store.export_snapshot().unwrap();
    commit(
        &store,
        4,
        vec![(Part::Region(0), vec![del("d1"), del("d3")])],
    );
    assert!(!exists(&store, 0, "d1"));
    store.import_snapshot(&snapshot).unwrap();
    assert_eq!(count(), 3);
    assert!(exists(&store, 0, "d1") && exists(&store, 0, "d3"));
}

/// Record lists under `U`, indexed by their record keys: a lookup names every list that holds
/// the key (in its own partition), through rewrites, removals, a reopen and an import; and a
/// value that is not a record list is refused by the commit that writes it.
#[test]
fn record_lists_are_found_by_their_record_keys_through_commits_and_imports() {
    let dir = tempfile::tempdir().unwrap();
    let list = |ids: &[&str]| {
        let entries: Vec<(&[u8], &[u8])> = ids
            .iter()
            .map(|id| (id.as_bytes(), b"r".as_slice()))
            .collect();
        crate::records::encode(&entries)
    };
    let put = |k: &str, ids: &[&str]| (k.as_bytes().to_vec(), Some(list(ids)));
    let del = |k: &str| (k.as_bytes().to_vec(), None);
    let holding = |store: &Store, part: Part, id: &str| -> Vec<String> {
        store
            .lists_holding(part, id.as_bytes())
            .unwrap()
            .into_iter()
            .map(|k| String::from_utf8(k).unwrap())
            .collect()
    };
    {
        let store = Store::open(dir.path(), 2).unwrap();
        assert!(
            store.lists_holding(Part::Region(0), b"a").is_err(),
            "no index yet"
        );
        commit(
            &store,
            1,
            vec![(Part::Region(0), vec![put("U1", &["a", "b"])])],
        );
        assert_eq!(store.keep_members(b"U").unwrap(), 2);
        assert_eq!(
            store.keep_members(b"U").unwrap(),
            2,
            "asked again: the same"
        );
        assert!(store.keep_members(b"V").is_err(), "one prefix per store");
        commit(
            &store,
            2,
            vec![
                (Part::Region(0), vec![put("U2", &["b", "c"])]),
                (Part::Region(1), vec![put("U2", &["a"])]),
                (Part::Global, vec![put("U2", &["g"])]),
            ],
        );
        assert_eq!(holding(&store, Part::Region(0), "a"), ["U1"]);
        // In key order, whatever order the lists were indexed in.
        assert_eq!(holding(&store, Part::Region(0), "b"), ["U1", "U2"]);
        assert_eq!(holding(&store, Part::Region(1), "a"), ["U2"]);
        assert!(holding(&store, Part::Region(1), "b").is_empty());
        assert_eq!(holding(&store, Part::Global, "g"), ["U2"]);
        // A rewrite replaces what a list names; a removal drops it.
        commit(
            &store,
            3,
            vec![(
                Part::Region(0),
                vec![put("U1", &["d"]), del("U2"), del("U9")],
            )],
        );
        assert!(holding(&store, Part::Region(0), "a").is_empty());
        assert!(holding(&store, Part::Region(0), "b").is_empty());
        assert_eq!(holding(&store, Part::Region(0), "d"), ["U1"]);
        // Not a record list: the commit fails, and the index is as it was.
        let bad = (b"U3".to_vec(), Some(vec![9, 9]));
        let err = store.commit(EpochCommit {
            stamp: Some(EpochStamp {
                epoch: 4,
                time_ms: 4,
            }),
            writes: BTreeMap::from([(Part::Region(0), vec![bad])]),
            raft_meta: Vec::new(),
            feed: None,
        });
        assert!(err.is_err());
        assert_eq!(holding(&store, Part::Region(0), "d"), ["U1"]);
    }
    // Reopened (the failed commit stopped that store), and indexed again from sled.
    let store = Store::open(dir.path(), 2).unwrap();
    assert_eq!(store.keep_members(b"U").unwrap(), 3, "d in p0, a in p1, g");
    assert_eq!(holding(&store, Part::Region(1), "a"), ["U2"]);
    // An import indexes the imported state.
    let (_, snapshot) = store.export_snapshot().unwrap();
    commit(
        &store,
        4,
        vec![(Part::Region(0), vec![del("U1"), put("U5", &["e"])])],
    );
    assert!(holding(&store, Part::Region(0), "d").is_empty());
    store.import_snapshot(&snapshot).unwrap();
    assert_eq!(holding(&store, Part::Region(0), "d"), ["U1"]);
    assert!(holding(&store, Part::Region(0), "e").is_empty());
    // A snapshot whose value under the prefix is not a record list (from a store that does
    // not index it) is refused before the import changes anything.
    let other = tempfile::tempdir().unwrap();
    let unindexed = Store::open(other.path(), 2).unwrap();
    commit(
        &unindexed,
        1,
        vec![(Part::Region(1), vec![(b"U7".to_vec(), Some(vec![9, 9]))])],
    );
    let (_, bad) = unindexed.export_snapshot().unwrap();
    let err = store.import_snapshot(&bad).unwrap_err();
    assert!(err.to_string().contains("record list"), "{err}");
    assert_eq!(holding(&store, Part::Region(0), "d"), ["U1"]);
    assert_eq!(store.applied_epoch(), 3);
}

fn stock_spec() -> PackSpec {
    PackSpec {
        prefix: b"s".to_vec(),
        group: 3,
        key_len: 5,
        value_len: 2,
    }
}

/// A packed key: `s`, two group bytes, two more.
fn skey(group: u8, rest: u16) -> Vec<u8> {
    let mut key = vec![b's', 0, group];
    key.extend_from_slice(&rest.to_be_bytes());
    key
}

/// Everything a reader can see of region `part` of `store`, for comparing two stores.
fn region_reads(store: &Store, part: Part) -> Vec<String> {
    let mut seen = Vec::new();
    let text = |pairs: Vec<(IVec, IVec)>| format!("{pairs:?}");
    seen.push(text(store.range(part, b"", &[0xFF], 10_000).unwrap()));
    seen.push(text(store.range_rev(part, b"", &[0xFF], 10_000).unwrap()));
    seen.push(text(store.range(part, b"r", &skey(2, 40), 10_000).unwrap()));
    seen.push(text(
        store.range_rev(part, &skey(1, 7), b"t", 10_000).unwrap(),
    ));
    seen.push(text(
        store.range(part, &skey(1, 0), &skey(1, 99), 3).unwrap(),
    ));
    seen.push(text(
        store.range_rev(part, &skey(3, 0), &skey(3, 99), 3).unwrap(),
    ));
    for group in 0..4 {
        seen.push(text(
            store
                .scan_prefix(part, &skey(group, 0)[..3], 10_000)
                .unwrap(),
        ));
        seen.push(format!(
            "{:?}",
            store.count_prefix(part, &skey(group, 0)[..3], 7)
        ));
    }
    let reader = store.reader();
    for group in 0..4 {
        for rest in 0..100 {
            seen.push(format!(
                "{:?}",
                reader.get(part, &skey(group, rest)).unwrap()
            ));
        }
    }
    drop(reader);
    for key in ["r1", "r2", "t1", "t2"] {
        seen.push(format!("{:?}", store.get(part, key.as_bytes()).unwrap()));
    }
    seen
}

/// Random writes to packed keys (`s`, 4 groups of 100) and to keys either side of them.
fn random_packed_writes(seed: &mut u64) -> Vec<Write> {
    let mut writes = Vec::new();
    for _ in 0..24 {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        let key = match *seed % 8 {
            0 => format!("r{}", *seed % 3).into_bytes(),
            1 => format!("t{}", *seed % 3).into_bytes(),
            _ => skey((*seed >> 8) as u8 % 4, (*seed >> 16) as u16 % 100),
        };
        let value = match (*seed >> 32) % 4 {
            0 => None,
            _ => Some(((*seed >> 40) as u16).to_be_bytes().to_vec()),
        };
        writes.push((key, value));
    }
    writes
}

/// A packed store answers every read as a store that does not pack, through packing with keys
/// already there, commits, exports (the same bytes), an import, a misfit write and a reopen.
#[test]
fn packed_keys_read_as_sled_keys_would() {
    let (plain_dir, packed_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let plain = Store::open(plain_dir.path(), 2).unwrap();
    let packed = Store::open(packed_dir.path(), 2).unwrap();
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let same = |plain: &Store, packed: &Store, when: &str| {
        for part in [Part::Region(0), Part::Region(1)] {
            assert_eq!(
                region_reads(plain, part),
                region_reads(packed, part),
                "{when}"
            );
        }
        assert_eq!(plain.applied(), packed.applied(), "{when}");
    };
    for epoch in 1..=3 {
        let writes = vec![(Part::Region(0), random_packed_writes(&mut seed))];
        commit(&plain, epoch, writes.clone());
        commit(&packed, epoch, writes);
    }
    // Packing moves the keys already there.
    let rows = packed.keep_packed(stock_spec()).unwrap();
    assert!(rows > 10, "{rows} rows packed");
    assert_eq!(packed.packed_rows(), rows);
    assert_eq!(packed.regions[0].scan_prefix_unpacked(b"s").count(), 0);
    assert!(packed.chunks.iter().count() > 0);
    same(&plain, &packed, "after packing");
    let mut snapshot_at_10 = None;
    for epoch in 4..=30 {
        let writes = vec![
            (
                Part::Region(epoch as u32 % 2),
                random_packed_writes(&mut seed),
            ),
            (Part::Region(0), random_packed_writes(&mut seed)),
        ];
        commit(&plain, epoch, writes.clone());
        commit(&packed, epoch, writes);
        same(&plain, &packed, &format!("epoch {epoch}"));
        if epoch == 10 {
            let (a, blob) = plain.export_snapshot().unwrap();
            let (b, packed_blob) = packed.export_snapshot().unwrap();
            assert_eq!((a, &blob), (b, &packed_blob), "exports are the same bytes");
            snapshot_at_10 = Some(blob);
        }
    }
    // A misfit write is refused and changes nothing.
    for misfit in [
        (skey(1, 1)[..4].to_vec(), Some(vec![1, 2])),
        (skey(1, 1), Some(vec![1])),
    ] {
        let refused = packed.commit(EpochCommit {
            stamp: Some(EpochStamp {
                epoch: 31,
                time_ms: 31,
            }),
            writes: [(Part::Region(0), vec![misfit])].into_iter().collect(),
            ..EpochCommit::default()
        });
        assert!(
            matches!(refused, Err(StoreError::Invariant(_))),
            "{refused:?}"
        );
    }
    same(&plain, &packed, "after misfits");
    // An import makes the packed keys the snapshot's; the chunks follow.
    let snapshot = snapshot_at_10.unwrap();
    plain.import_snapshot(&snapshot).unwrap();
    packed.import_snapshot(&snapshot).unwrap();
    same(&plain, &packed, "after an import");
    for epoch in 11..=14 {
        let writes = vec![(Part::Region(1), random_packed_writes(&mut seed))];
        commit(&plain, epoch, writes.clone());
        commit(&packed, epoch, writes);
    }
    // Reopened, the store packs from its chunks.
    let rows = packed.packed_rows();
    drop(packed);
    let packed = Store::open_existing(packed_dir.path()).unwrap();
    assert_eq!(packed.packed_rows(), rows);
    same(&plain, &packed, "after a reopen");
    assert_eq!(packed.keep_packed(stock_spec()).unwrap(), rows);
    let other = PackSpec {
        value_len: 3,
        ..stock_spec()
    };
    assert!(matches!(
        packed.keep_packed(other),
        Err(StoreError::Config(_))
    ));
    // A restore into a new packed store reaches the same state.
    let restored_dir = tempfile::tempdir().unwrap();
    let restored = Store::open(restored_dir.path(), 2).unwrap();
    restored.keep_packed(stock_spec()).unwrap();
    let (_, blob) = plain.export_snapshot().unwrap();
    restored.restore_snapshot(&blob).unwrap();
    same(&plain, &restored, "after a restore");
}

/// A range to the end of a region's keyspace whose prefix ends in 0xFF bytes (region 239)
/// reads what is there, packed or not.
#[test]
fn a_range_to_the_end_of_the_last_byte_keyspace_reads_packed_rows() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), 240).unwrap();
    store.keep_packed(stock_spec()).unwrap();
    let part = Part::Region(239);
    commit(
        &store,
        1,
        vec![(part, vec![(skey(1, 1), Some(vec![0, 5])), put("t1", "a")])],
    );
    let keys = |pairs: Vec<(IVec, IVec)>| -> Vec<Vec<u8>> {
        pairs.into_iter().map(|(k, _)| k.to_vec()).collect()
    };
    let all = vec![skey(1, 1), b"t1".to_vec()];
    assert_eq!(keys(store.scan_prefix(part, b"", 10).unwrap()), all);
    assert_eq!(
        keys(store.scan_prefix(part, &[0xFF], 10).unwrap()),
        Vec::<Vec<u8>>::new()
    );
    assert_eq!(store.count_prefix(part, b"", 10).unwrap(), 2);
}

/// What a packing interrupted by a crash leaves is finished at the next open: chunks without
/// the recorded shape are dropped (the keys are still the state), keys under the prefix
/// beside the recorded shape are dropped (the chunks are the state).
#[test]
fn an_interrupted_packing_is_finished_at_the_next_open() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), 2).unwrap();
    commit(
        &store,
        1,
        vec![(Part::Region(0), vec![(skey(1, 1), Some(vec![0, 5]))])],
    );
    store.flush().unwrap();
    // A crash after the chunks, before the record: a chunk of other rows is there.
    let mut stray = Batch::default();
    store.chunks.insert(
        &mut stray,
        &crate::packed::chunk_key(0, (1, 0)),
        &[0, 2, 0, 9][..],
    );
    store.state.apply_batch(stray).unwrap();
    drop(store);
    let store = Store::open_existing(dir.path()).unwrap();
    assert_eq!(store.chunks.iter().count(), 0, "the stray chunk is dropped");
    assert_eq!(store.packed_rows(), 0);
    assert_eq!(
        store.get(Part::Region(0), &skey(1, 1)).unwrap().as_deref(),
        Some(&[0, 5][..])
    );
    assert_eq!(store.get(Part::Region(0), &skey(1, 2)).unwrap(), None);
    assert_eq!(store.keep_packed(stock_spec()).unwrap(), 1);
    // A crash after the record, before the keys went: a key is left in sled beside it.
    let mut stray = Batch::default();
    store.regions[0].insert(&mut stray, &skey(1, 1), &[0, 7][..]);
    store.regions[0].insert(&mut stray, &skey(3, 3), &[0, 7][..]);
    store.state.apply_batch(stray).unwrap();
    drop(store);
    let store = Store::open_existing(dir.path()).unwrap();
    assert_eq!(store.regions[0].scan_prefix_unpacked(b"s").count(), 0);
    assert_eq!(store.packed_rows(), 1);
    assert_eq!(
        store.get(Part::Region(0), &skey(1, 1)).unwrap().as_deref(),
        Some(&[0, 5][..])
    );
    assert_eq!(store.get(Part::Region(0), &skey(3, 3)).unwrap(), None);
}

/// The global partition's read cache answers what sled holds through commits that write,
/// overwrite and delete cached keys, and through an import.
#[test]
fn the_global_cache_answers_what_sled_holds() {
    let dir = tempfile::tempdir().unwrap();
    let store = seeded_store(dir.path());
    let check = |store: &Store| {
        for key in ["dc-1", "dc-2", "dc-3"] {
            let sled = store.global.get(key.as_bytes()).unwrap();
            // Twice: the first read may fill the cache, the second is answered from it.
            for _ in 0..2 {
                assert_eq!(
                    store.get(Part::Global, key.as_bytes()).unwrap(),
                    sled,
                    "{key}"
                );
            }
        }
    };
    check(&store);
    assert_eq!(store.global_cache.lock().unwrap().len(), 2);
    let version = store.global_version();
    commit(
        &store,
        2,
        vec![(
            Part::Global,
            vec![put("dc-1", "b"), del("dc-2"), put("dc-3", "c")],
        )],
    );
    assert!(store.global_version() > version);
    check(&store);
    assert_eq!(
        store.get(Part::Global, b"dc-1").unwrap().as_deref(),
        Some(&b"b"[..])
    );
    // A commit that writes only a region leaves the cache as it was.
    commit(&store, 3, vec![(Part::Region(0), vec![put("dc-1", "z")])]);
    check(&store);
    import_seeded(&store);
    check(&store);
    assert_eq!(store.get(Part::Global, b"dc-3").unwrap(), None);
}

/// A read that got a value from sled before a commit replaced it does not put it in the
/// cache after the commit: the next read answers the commit's value.
#[test]
fn the_global_cache_never_keeps_a_value_a_commit_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let store = std::sync::Arc::new(seeded_store(dir.path()));
    let weak = std::sync::Arc::downgrade(&store);
    *store.before_global_fill.lock().unwrap() = Some(Box::new(move || {
        let store = weak.upgrade().unwrap();
        let epoch = store.applied_epoch() + 1;
        commit(
            &store,
            epoch,
            vec![(Part::Global, vec![put("dc-1", "new")])],
        );
    }));
    // This read saw "a" in sled; the hook then committed "new".
    assert_eq!(
        store.get(Part::Global, b"dc-1").unwrap().as_deref(),
        Some(&b"a"[..])
    );
    store.before_global_fill.lock().unwrap().take();
    assert_eq!(
        store.get(Part::Global, b"dc-1").unwrap().as_deref(),
        Some(&b"new"[..])
    );
}

/// A store written with a tree per keyspace (the layout before `space.rs`) opens with the
/// same state, feed and applied epoch, moved into the one tree, and the old trees gone.
#[test]
fn a_store_with_a_tree_per_partition_is_moved_into_one() {
    let new_dir = tempfile::tempdir().unwrap();
    let (dump, feed, applied) = {
        let store = seeded_store(new_dir.path());
        commit_feed(&store, 2, Some("ev-2"));
        let feed: Vec<(IVec, IVec)> = store.feed_tree.iter().map(Result::unwrap).collect();
        let meta_feed_start = store.meta.get(META_FEED_START).unwrap().unwrap();
        let mut dump = store.dump_trees().unwrap();
        dump[META_TREE]
            .1
            .push((META_FEED_START.to_vec(), meta_feed_start.to_vec()));
        (dump, feed, store.applied())
    };
    let old_dir = tempfile::tempdir().unwrap();
    {
        let db = sled::open(old_dir.path()).unwrap();
        for (name, pairs) in &dump {
            let tree = db.open_tree(name).unwrap();
            for (k, v) in pairs {
                tree.insert(k.as_slice(), v.as_slice()).unwrap();
            }
        }
        let tree = db.open_tree("feed").unwrap();
        for (k, v) in &feed {
            tree.insert(k, v).unwrap();
        }
        db.flush().unwrap();
    }
    let store = Store::open(old_dir.path(), 2).unwrap();
    assert_eq!(store.applied(), applied);
    assert_eq!(store.dump_trees().unwrap()[1..], dump[1..]);
    assert_eq!(
        store.get(Part::Region(0), b"k2").unwrap().as_deref(),
        Some(&b"a"[..])
    );
    assert_eq!(
        store.get(Part::Global, b"dc-2").unwrap().as_deref(),
        Some(&b"a"[..])
    );
    let page = store.feed_read(1, 100, 1 << 20).unwrap();
    assert_eq!(feed_epochs(&page), vec![2]);
    let names: Vec<IVec> = store.db.tree_names();
    for old in ["meta", "hashes", "feed", "global", "p0", "p1"] {
        assert!(
            !names.iter().any(|n| &**n == old.as_bytes()),
            "{old} is still there"
        );
    }
    // It goes on as any store, and opens again without moving anything.
    commit(&store, 3, vec![(Part::Region(1), vec![put("k9", "z")])]);
    drop(store);
    let store = Store::open(old_dir.path(), 2).unwrap();
    assert_eq!(store.applied_epoch(), 3);
    assert_eq!(
        store.get(Part::Region(1), b"k9").unwrap().as_deref(),
        Some(&b"z"[..])
    );
}

/// Random writes to `k0`..`k63` of region 0 (and a global key), applied to `model`.
fn random_writes(seed: &mut u64, model: &mut BTreeMap<Vec<u8>, Vec<u8>>) -> Vec<Write> {
    let mut writes = Vec::new();
    for _ in 0..8 {
        // xorshift: deterministic, no dependency.
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        let key = vec![b'k', (*seed % 64) as u8];
        match (*seed >> 8) % 3 {
            0 => {
                model.remove(&key);
                writes.push((key, None));
            }
            _ => {
                let value = (*seed >> 16).to_be_bytes().to_vec();
                model.insert(key.clone(), value.clone());
                writes.push((key, Some(value)));
            }
        }
    }
    writes
}

/// [`assert_reads`] and more: short pages both ways, counts, the packed reader, the
/// applied epoch.
fn assert_view_reads(store: &Store, model: &BTreeMap<Vec<u8>, Vec<u8>>, epoch: u64, when: &str) {
    assert_reads(store, model, when);
    assert_eq!(store.applied_epoch(), epoch, "{when}: applied epoch");
    assert_eq!(store.applied_time_ms(), epoch, "{when}: applied time");
    let part = Part::Region(0);
    let reader = store.reader();
    for n in 0..64u8 {
        let key = [b'k', n];
        assert_eq!(
            reader.get(part, &key).unwrap().map(|v| v.to_vec()),
            model.get(key.as_slice()).cloned(),
            "{when}: reader get {key:?}"
        );
    }
    drop(reader);
    let keys: Vec<Vec<u8>> = model.keys().cloned().collect();
    for limit in [1, 2, 3, 7] {
        let found: Vec<Vec<u8>> = store
            .range(part, b"k", b"l", limit)
            .unwrap()
            .into_iter()
            .map(|(k, _)| k.to_vec())
            .collect();
        assert_eq!(
            found,
            keys[..limit.min(keys.len())],
            "{when}: range {limit}"
        );
        let found: Vec<Vec<u8>> = store
            .range_rev(part, b"k", b"l", limit)
            .unwrap()
            .into_iter()
            .map(|(k, _)| k.to_vec())
            .collect();
        let mut last: Vec<Vec<u8>> = keys.iter().rev().take(limit).cloned().collect();
        last.truncate(limit);
        assert_eq!(found, last, "{when}: range_rev {limit}");
    }
    assert_eq!(
        store.count_prefix(part, b"k", 1000).unwrap(),
        model.len(),
        "{when}: count"
    );
}

/// Runs `read` in a view of `store` on a thread of its own, with the view's epoch, the
/// number of the run, and `pause`: in the first run, `pause` says the view is open (on the
/// first receiver returned) and waits until the test lets it go on (on the sender); in a
/// run after it, it does nothing.
fn paused_view<T: Send + 'static>(
    store: &Arc<Store>,
    mut read: impl FnMut(&Store, u64, usize, &dyn Fn()) -> T + Send + 'static,
) -> (
    std::sync::mpsc::Receiver<()>,
    std::sync::mpsc::Sender<()>,
    std::thread::JoinHandle<T>,
) {
    let (opened_tx, opened) = std::sync::mpsc::channel();
    let (go, go_rx) = std::sync::mpsc::channel::<()>();
    let store = store.clone();
    let reader = std::thread::spawn(move || {
        let mut runs = 0;
        store.view(|epoch| {
            runs += 1;
            let pause = || {
                if runs == 1 {
                    opened_tx.send(()).expect("send");
                    go_rx.recv().expect("the test lets the read go on");
                }
            };
            read(&store, epoch, runs, &pause)
        })
    });
    (opened, go, reader)
}

#[test]
fn a_view_reads_its_epoch_while_commits_go_on() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Arc::new(Store::open(dir.path(), 2).expect("open"));
    store
        .keep_packed(PackSpec {
            prefix: b"k".to_vec(),
            group: 1,
            key_len: 2,
            value_len: 8,
        })
        .expect("packed");
    let (mut seed, mut model) = (0x9e37_79b9_7f4a_7c15u64, BTreeMap::new());
    for epoch in 1..=5 {
        let writes = random_writes(&mut seed, &mut model);
        commit(&store, epoch, vec![(Part::Region(0), writes)]);
    }
    let at_view = model.clone();
    let (opened, committed, reader) = paused_view(&store, move |store, epoch, runs, pause| {
        assert_view_reads(store, &at_view, 5, "view, before the commits");
        pause();
        assert_view_reads(store, &at_view, 5, "view, after the commits");
        (epoch, runs)
    });
    opened.recv().expect("the view opened");
    // Commits while the view's read is open: they must not wait for it.
    let (done_tx, done) = std::sync::mpsc::channel();
    let writer = {
        let store = store.clone();
        let mut model = model.clone();
        std::thread::spawn(move || {
            for epoch in 6..=40 {
                let writes = random_writes(&mut seed, &mut model);
                commit(&store, epoch, vec![(Part::Region(0), writes)]);
            }
            done_tx.send(model).expect("send");
        })
    };
    let model = done
        .recv_timeout(std::time::Duration::from_secs(60))
        .expect("35 commits done while a view's read was open (they waited for it)");
    writer.join().expect("writer");
    committed.send(()).expect("send");
    let (epoch, runs) = reader.join().expect("the view's reads");
    assert_eq!((epoch, runs), (5, 1), "read once, at epoch 5");
    assert!(store.views.lock().expect("views").is_empty());
    assert_view_reads(&store, &model, 40, "after the view");
    // Commits with no view open record nothing.
    commit(
        &store,
        41,
        vec![(Part::Region(0), vec![put("k1", "zzzzzzzz")])],
    );
    assert_eq!(
        store.get(Part::Region(0), b"k1").unwrap().as_deref(),
        Some(&b"zzzzzzzz"[..])
    );
}

#[test]
fn a_view_past_its_bound_reads_again_under_the_gate() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut store = seeded_store(dir.path());
    store.view_keys_max = 2;
    let store = Arc::new(store);
    let (opened, committed, reader) = paused_view(&store, |store, epoch, runs, pause| {
        pause();
        let k3 = store.get(Part::Region(0), b"k3").unwrap();
        (epoch, runs, k3.map(|v| v.to_vec()))
    });
    opened.recv().expect("the view opened");
    let writes = vec![put("k1", "b"), put("k2", "b"), put("k3", "b")];
    commit(&store, 2, vec![(Part::Region(0), writes)]);
    committed.send(()).expect("send");
    // Three keys changed past a bound of two: the first read's answers are dropped and
    // the read runs again, under the gate, at the epoch applied then.
    let (epoch, runs, k3) = reader.join().expect("the view's reads");
    assert_eq!((epoch, runs, k3), (2, 2, Some(b"b".to_vec())));
}

#[test]
fn an_import_under_a_view_sends_its_read_round_again() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Arc::new(seeded_store(dir.path()));
    let (opened, imported, reader) = paused_view(&store, |_, epoch, runs, pause| {
        pause();
        (epoch, runs)
    });
    opened.recv().expect("the view opened");
    let other = tempfile::tempdir().expect("temp dir");
    let source = Store::open(other.path(), 2).expect("open");
    for epoch in 1..=3 {
        commit(
            &source,
            epoch,
            vec![(Part::Region(0), vec![put("k9", "z")])],
        );
    }
    let (_, blob) = source.export_snapshot().expect("export");
    store.import_snapshot(&blob).expect("import");
    imported.send(()).expect("send");
    assert_eq!(reader.join().expect("the view's reads"), (3, 2));
}

/// A snapshot import stopped after any of its batches (as a crash would stop it) leaves a
/// store that says so when it opens again, and importing the same snapshot then reaches
/// exactly the snapshot's state, packed rows and all, which a further open keeps.
#[test]
fn an_import_stopped_after_any_batch_is_finished_by_importing_again() {
    let dir = tempfile::tempdir().unwrap();
    // The snapshot: packed rows in both regions, other region keys, the global tree.
    let source = Store::open(dir.path().join("source"), 2).unwrap();
    source.keep_packed(stock_spec()).unwrap();
    let mut writes = vec![put("r-a", "1"), put("t-b", "2")];
    for rest in (0..60).step_by(3) {
        writes.push((skey(1, rest), Some(vec![1, rest as u8])));
    }
    commit(
        &source,
        1,
        vec![
            (Part::Global, vec![put("dc-1", "a")]),
            (Part::Region(0), writes.clone()),
            (Part::Region(1), writes[..8].to_vec()),
        ],
    );
    let (applied, snapshot) = source.export_snapshot().unwrap();
    // The state it replaces: some of the same keys with other values, keys it lacks, a feed.
    let seed = |path: &Path| {
        let store = Store::open(path, 2).unwrap();
        store.keep_packed(stock_spec()).unwrap();
        let mut writes = vec![put("r-a", "old"), put("r-z", "gone")];
        for rest in (0..90).step_by(2) {
            writes.push((skey(1, rest), Some(vec![9, rest as u8])));
        }
        for epoch in 1..=3 {
            store
                .commit(EpochCommit {
                    stamp: Some(EpochStamp {
                        epoch,
                        time_ms: epoch,
                    }),
                    writes: vec![(Part::Region(0), writes.clone())]
                        .into_iter()
                        .collect(),
                    feed: Some(b"ev".to_vec()),
                    ..EpochCommit::default()
                })
                .unwrap();
        }
        store
    };
    let mut crashed = 0;
    for after in 0.. {
        let path = dir.path().join(format!("target-{after}"));
        let mut store = seed(&path);
        store.import_batch_keys = 1;
        *store.import_crash_after.lock().unwrap() = Some(after);
        match store.import_snapshot(&snapshot) {
            Ok(()) => break,
            Err(StoreError::Io(_)) => crashed += 1,
            Err(e) => panic!("stopped after {after} batches: {e}"),
        }
        drop(store);
        let store = Store::open(&path, 2).unwrap();
        store.keep_packed(stock_spec()).unwrap();
        assert!(store.import_interrupted(), "stopped after {after} batches");
        store.import_snapshot(&snapshot).unwrap();
        assert!(!store.import_interrupted());
        assert_eq!(store.applied(), applied);
        assert!(
            store.export_snapshot().unwrap().1 == snapshot,
            "after {after} batches"
        );
        assert_eq!(store.feed_start(), applied.epoch + 1);
        drop(store);
        let store = Store::open(&path, 2).unwrap();
        store.keep_packed(stock_spec()).unwrap();
        assert!(!store.import_interrupted());
        assert!(
            store.export_snapshot().unwrap().1 == snapshot,
            "reopened, {after}"
        );
        for part in [Part::Region(0), Part::Region(1)] {
            assert_eq!(region_reads(&store, part), region_reads(&source, part));
        }
    }
    assert!(crashed >= 10, "only {crashed} stopping points");
}
