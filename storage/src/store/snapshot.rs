//! Snapshots: export while commits go on, import as a diff, restore into a new store.

use super::*;

/// What commits record while an export runs.
#[derive(Debug, Default)]
pub(super) struct Capture {
    /// (tree position, key) → the key's value when the export began (`None`: absent). Only
    /// the first write of a key records it: later writes would record values after that.
    before: BTreeMap<(usize, Vec<u8>), Option<IVec>>,
    /// Set when `before` reached the bound; recording stopped and `before` was dropped.
    overflowed: bool,
}

impl Capture {
    /// Records `key`'s current value in `tree` unless this capture has one for it already.
    /// Called by a commit before it writes, with the gate held, so the value read is the one
    /// before this commit.
    pub(super) fn record(
        &mut self,
        bound: usize,
        tree_id: usize,
        tree: &Space,
        key: &[u8],
    ) -> Result<(), StoreError> {
        if self.overflowed {
            return Ok(());
        }
        let slot = (tree_id, key.to_vec());
        if self.before.contains_key(&slot) {
            return Ok(());
        }
        if self.before.len() >= bound {
            tracing::warn!(
                keys = self.before.len(),
                "a snapshot export's capture reached its bound; the export will redo its dump \
                 with commits held"
            );
            self.overflowed = true;
            self.before = BTreeMap::new();
            return Ok(());
        }
        self.before.insert(slot, tree.get(key)?);
        Ok(())
    }
}

/// One tree's name and every key/value pair in it.
pub(super) type TreeDump = (String, Vec<(Vec<u8>, Vec<u8>)>);

#[derive(Serialize, Deserialize)]
struct SnapshotFile {
    format: u32,
    partitions: u32,
    trees: Vec<TreeDump>,
}

impl Store {
    /// Whether a snapshot import was interrupted (by a crash) and not finished since. The store
    /// then holds the state before that import; import the same snapshot again to finish it.
    pub fn import_interrupted(&self) -> bool {
        self.import_interrupted.load(Ordering::SeqCst)
    }

    /// The first step of [`Store::import_snapshot`] alone: the durable marker that an import
    /// has begun. Tests use it to leave a store as a crash during an import would; nothing
    /// else should call it.
    #[doc(hidden)]
    pub fn mark_import_started(&self) -> Result<(), StoreError> {
        self.meta.insert_now(META_IMPORTING, &[1u8])?;
        self.db.flush()?;
        Ok(())
    }

    /// Every tree with its name, in the order a snapshot lists them.
    pub(super) fn snapshot_trees(&self) -> Vec<(String, &Space)> {
        let mut trees = vec![
            ("meta".to_string(), &self.meta),
            ("hashes".to_string(), &self.hashes),
            (Part::Global.to_string(), &self.global),
        ];
        for (n, tree) in self.regions.iter().enumerate() {
            trees.push((Part::Region(n as u32).to_string(), tree));
        }
        debug_assert_eq!(trees[GLOBAL_TREE].0, "global");
        trees
    }

    /// Exports every tree, including the applied state and the hash window, as one blob.
    /// Returns the applied state the export reflects, with the blob. Commits and reads go on
    /// while it runs (see the module docs for how the blob still reflects one epoch).
    pub fn export_snapshot(&self) -> Result<(Applied, Vec<u8>), StoreError> {
        let _one = self.snapshot.lock().expect("snapshot lock");
        let applied = self.begin_capture();
        let dump = match self.dump_trees() {
            Ok(dump) => dump,
            Err(e) => {
                // Stop the capture, or every later commit would go on recording into it.
                self.capture.lock().expect("capture lock").take();
                return Err(e);
            }
        };
        let (applied, trees) = self.finish_capture(applied, dump)?;
        let blob = encode(&SnapshotFile {
            format: SNAPSHOT_FORMAT,
            partitions: self.partitions(),
            trees,
        });
        Ok((applied, blob))
    }

    /// Starts an export's capture at an epoch boundary and returns the applied state there.
    pub(super) fn begin_capture(&self) -> Applied {
        let _gate = self.gate.read().expect("epoch gate");
        let applied = self.applied();
        let mut capture = self.capture.lock().expect("capture lock");
        debug_assert!(capture.is_none(), "two exports at once");
        *capture = Some(Capture::default());
        applied
    }

    /// Every tree's pairs as they are while it reads them: a mix of epochs, repaired by
    /// [`Store::finish_capture`]. The import marker is left out: it describes this store's
    /// disk, not the state.
    pub(super) fn dump_trees(&self) -> Result<Vec<TreeDump>, StoreError> {
        let mut dump = Vec::new();
        for (id, (name, tree)) in self.snapshot_trees().into_iter().enumerate() {
            // No `with_capacity(tree.len())`: sled counts a tree by scanning it.
            let mut pairs: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
            for kv in tree.iter() {
                let (k, v) = kv?;
                if id == META_TREE
                    && (k == META_IMPORTING || k == META_FEED_START || k == META_PACKED)
                {
                    continue;
                }
                // sled's iterator resumes after the last key it returned, so concurrent
                // writes never make it repeat a key or go back; the patch relies on that.
                debug_assert!(pairs.last().is_none_or(|(last, _)| last.as_slice() < &*k));
                pairs.push((k.to_vec(), v.to_vec()));
            }
            dump.push((name, pairs));
        }
        Ok(dump)
    }

    /// Ends the export's capture at an epoch boundary and returns the dump as of `applied`:
    /// each key a commit wrote since gets its before-image back. If the capture overflowed,
    /// dumps again with the gate held instead, as of the epoch applied now.
    pub(super) fn finish_capture(
        &self,
        applied: Applied,
        dump: Vec<TreeDump>,
    ) -> Result<(Applied, Vec<TreeDump>), StoreError> {
        let gate = self.gate.read().expect("epoch gate");
        let capture = self
            .capture
            .lock()
            .expect("capture lock")
            .take()
            .expect("the export's capture");
        if capture.overflowed {
            let dump = self.dump_trees()?;
            return Ok((self.applied(), dump));
        }
        drop(gate);
        let mut before = capture.before.into_iter().peekable();
        let mut patched = Vec::with_capacity(dump.len());
        for (id, (name, pairs)) in dump.into_iter().enumerate() {
            let mut out = Vec::with_capacity(pairs.len());
            let mut undo = std::iter::from_fn(|| before.next_if(|((tree, _), _)| *tree == id))
                .map(|((_, key), value)| (key, value))
                .peekable();
            // Both are in key order: merge them, the before-image winning on a tie (an absent
            // before-image removes the key).
            for (key, value) in pairs {
                let mut replaced = false;
                while let Some((undo_key, undo_value)) = undo.next_if(|(k, _)| *k <= key) {
                    replaced = undo_key == key;
                    if let Some(undo_value) = undo_value {
                        out.push((undo_key, undo_value.to_vec()));
                    }
                }
                if !replaced {
                    out.push((key, value));
                }
            }
            out.extend(undo.filter_map(|(key, value)| value.map(|v| (key, v.to_vec()))));
            patched.push((name, out));
        }
        Ok((applied, patched))
    }

    /// Fills a new, empty store with the state of a snapshot made by
    /// [`Store::export_snapshot`], for `ordo restore`: [`Store::import_snapshot`] alone
    /// writes a whole snapshot in one sled batch, which for millions of keys takes many times
    /// the snapshot's size in memory. This writes the partitions' keys first, in batches of at
    /// most [`RESTORE_BATCH_KEYS`], then imports the snapshot, whose diff is then the meta
    /// records alone. Not atomic: a store it fails on (or a crash interrupts) is to be
    /// thrown away, and nothing may read the store meanwhile.
    pub fn restore_snapshot(&self, bytes: &[u8]) -> Result<(), StoreError> {
        {
            let snapshot: SnapshotFile = decode("snapshot", bytes)?;
            let _one = self.snapshot.lock().expect("snapshot lock");
            let _gate = self.gate.write().expect("epoch gate");
            let ours = self.snapshot_trees();
            let holds_keys = ours
                .iter()
                .skip(META_TREE + 1)
                .any(|(_, space)| space.iter().next().is_some());
            if self.applied().epoch != 0 || holds_keys {
                return Err(StoreError::Config(
                    "a store is restored into only when it is new and empty".into(),
                ));
            }
            if snapshot.trees.len() != ours.len() || snapshot.partitions != self.partitions() {
                return Err(StoreError::Config(format!(
                    "snapshot has {} partitions, this store {}",
                    snapshot.partitions,
                    self.partitions()
                )));
            }
            let packed = self.packed.spec.get();
            for (id, ((_, space), (_, pairs))) in ours.iter().zip(&snapshot.trees).enumerate() {
                if id == META_TREE {
                    continue;
                }
                let region = id >= FIRST_REGION_TREE;
                let pairs = pairs
                    .iter()
                    .filter(|(k, _)| !(region && packed.is_some_and(|p| p.covers(k))));
                let mut batch = Batch::default();
                let mut in_batch = 0;
                for (k, v) in pairs {
                    space.insert(&mut batch, k, v.as_slice());
                    in_batch += 1;
                    if in_batch == RESTORE_BATCH_KEYS {
                        self.state.apply_batch(std::mem::take(&mut batch))?;
                        in_batch = 0;
                    }
                }
                self.state.apply_batch(batch)?;
            }
            // The packed keys as chunks, in batches too: the import finds them in place.
            if let Some(table) = self.packed_table_of(&snapshot.trees)? {
                self.write_chunks(&table)?;
            }
        }
        self.import_snapshot(bytes)
    }

    /// The packed rows of a snapshot's regions as a table, when this store packs (`None`
    /// otherwise). A row that does not fit the packed shape makes the snapshot corrupt.
    fn packed_table_of(&self, trees: &[TreeDump]) -> Result<Option<Table>, StoreError> {
        let Some(spec) = self.packed.spec.get() else {
            return Ok(None);
        };
        let mut table = Table::new(spec.clone(), self.partitions());
        for (n, (_, pairs)) in trees.iter().skip(FIRST_REGION_TREE).enumerate() {
            for (key, value) in pairs.iter().filter(|(k, _)| spec.covers(k)) {
                table
                    .check_write(key, Some(value))
                    .map_err(|e| StoreError::Corrupt(format!("snapshot: {e}")))?;
                table.set(n as u32, key, Some(value));
            }
        }
        Ok(Some(table))
    }

    /// Replaces the whole store with a snapshot made by [`Store::export_snapshot`], as a diff
    /// applied in one sled batch (see the module docs).
    pub fn import_snapshot(&self, bytes: &[u8]) -> Result<(), StoreError> {
        let snapshot: SnapshotFile = decode("snapshot", bytes)?;
        if snapshot.format != SNAPSHOT_FORMAT {
            return Err(StoreError::Corrupt(format!(
                "snapshot format {} is not {SNAPSHOT_FORMAT}",
                snapshot.format
            )));
        }
        if snapshot.partitions != self.partitions() {
            return Err(StoreError::Config(format!(
                "snapshot has {} partitions, this node {}",
                snapshot.partitions,
                self.partitions()
            )));
        }
        let ours = self.snapshot_trees();
        let names: Vec<&str> = snapshot.trees.iter().map(|(n, _)| n.as_str()).collect();
        if names != ours.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>() {
            return Err(StoreError::Corrupt(format!(
                "snapshot trees {names:?} are not this store's"
            )));
        }
        let _one = self.snapshot.lock().expect("snapshot lock");
        // The gate keeps commits and consistent reads out; point reads and `applied()` go on.
        let _gate = self.gate.write().expect("epoch gate");
        // Its writes record no before-images: the open views' reads run again.
        for view in self.views.lock().expect("views lock").iter() {
            view.spoil();
        }
        // sled alone holds the state from here: the diff below is read from it and written
        // to it directly.
        // The packed rows first: a snapshot whose rows do not fit is refused before the
        // import is marked as begun.
        let table = self.packed_table_of(&snapshot.trees)?;
        self.behind.sync()?;
        self.mark_import_started()?;
        let mut batch = Batch::default();
        for (id, ((_, space), (_, pairs))) in ours.iter().zip(&snapshot.trees).enumerate() {
            let packed = table
                .as_ref()
                .map(Table::spec)
                .filter(|_| id >= FIRST_REGION_TREE);
            let wanted = pairs
                .iter()
                .filter(|(k, _)| !packed.is_some_and(|p| p.covers(k)))
                .map(|(k, v)| (k.as_slice(), v.as_slice()));
            diff(space, space.iter_unpacked(), wanted, &mut batch)?;
        }
        if let Some(table) = &table {
            let wanted = (0..self.partitions()).flat_map(|n| table.chunks(n));
            let wanted: Vec<([u8; 20], &[u8])> = wanted.collect();
            let wanted = wanted.iter().map(|(k, v)| (k.as_slice(), *v));
            diff(&self.chunks, self.chunks.iter(), wanted, &mut batch)?;
            // The store's own record, which no snapshot holds.
            self.meta
                .insert(&mut batch, META_PACKED, encode(table.spec()));
        }
        // The diff removes the marker (no snapshot holds it); say so outright, so the import
        // is done exactly when this batch is.
        self.meta.remove(&mut batch, META_IMPORTING);
        // The feed restarts after the imported epoch: what this node kept before it may end
        // before the snapshot's epoch, and a gap must never look like epochs without events.
        let imported: Applied = match snapshot.trees[META_TREE]
            .1
            .iter()
            .find(|(k, _)| k.as_slice() == META_APPLIED)
        {
            Some((_, bytes)) => decode("snapshot applied state", bytes)?,
            None => Applied::default(),
        };
        let feed_start = imported.epoch + 1;
        self.meta
            .insert(&mut batch, META_FEED_START, encode(&feed_start));
        for kv in self.feed_tree.iter() {
            self.feed_tree.remove(&mut batch, &kv?.0);
        }
        let mut feed = self.feed.lock().expect("feed lock");
        // Before the entries go, for the lock-free readers (see `feed_read`).
        feed.start = feed_start;
        let mut known = self.known.write().expect("known lock");
        let mut packed = self.packed.table.write().expect("packed lock");
        self.state.apply_batch(batch)?;
        if table.is_some() {
            *packed = table;
        }
        drop(packed);
        feed.bytes = 0;
        self.feed_entries.lock().expect("feed entries lock").clear();
        drop(feed);
        if let Some(prefix) = known.as_ref().map(|k| k.prefix.clone()) {
            // Without the counts every read reaches sled, which is exact.
            *known = Known::load(&prefix, &self.regions)
                .inspect_err(|e| tracing::warn!(error = %e, "known keys dropped after an import"))
                .ok();
        }
        drop(known);
        self.db.flush()?;
        *self.applied.lock().expect("applied lock") = match self.meta.get(META_APPLIED)? {
            Some(bytes) => decode("applied state", &bytes)?,
            None => Applied {
                chain: HashChain::new(self.partitions()),
                ..Applied::default()
            },
        };
        self.import_interrupted.store(false, Ordering::SeqCst);
        self.global_changed(None::<std::iter::Empty<&[u8]>>);
        Ok(())
    }
}

/// Adds to `batch` what turns `space` into exactly `pairs` (sorted by key, as exported):
/// removes the keys `pairs` lacks and writes the pairs whose value differs. It never clears
/// the keyspace.
fn diff<'p>(
    space: &Space,
    existing: impl Iterator<Item = sled::Result<(IVec, IVec)>>,
    wanted: impl Iterator<Item = (&'p [u8], &'p [u8])>,
    batch: &mut Batch,
) -> Result<(), StoreError> {
    let mut wanted = wanted.peekable();
    for kv in existing {
        let (key, value) = kv?;
        while let Some((k, v)) = wanted.next_if(|(k, _)| *k < &*key) {
            space.insert(batch, k, v);
        }
        match wanted.next_if(|(k, _)| *k == &*key) {
            Some((_, v)) if v == &*value => {}
            Some((k, v)) => space.insert(batch, k, v),
            None => space.remove(batch, &key),
        }
    }
    for (k, v) in wanted {
        space.insert(batch, k, v);
    }
    Ok(())
}
