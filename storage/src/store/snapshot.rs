//! Snapshots: export while commits go on, import as a diff, restore into a new store, all
//! streamed (`stream.rs`).

use std::io::{self, SeekFrom};
use std::ops::Bound;

use super::stream::{ExportSink, SnapshotReader, SnapshotSource, SnapshotWriter, META_PAIRS_MAX};
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

/// Pairs an export reads from a tree before it patches them from the capture and writes them.
pub(super) const EXPORT_BATCH_PAIRS: usize = 1_024;

/// What the first pass of an import found: the packed rows as a table (when this store packs)
/// and the applied state the snapshot holds.
struct Checked {
    table: Option<Table>,
    imported: Applied,
}

/// sled batches of at most `max` keys, each applied as it fills.
struct Batches<'a> {
    store: &'a Store,
    batch: Batch,
    keys: usize,
    max: usize,
}

impl<'a> Batches<'a> {
    fn new(store: &'a Store, max: usize) -> Self {
        Self {
            store,
            batch: Batch::default(),
            keys: 0,
            max,
        }
    }

    fn insert(&mut self, space: &Space, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        space.insert(&mut self.batch, key, value);
        self.counted()
    }

    fn remove(&mut self, space: &Space, key: &[u8]) -> Result<(), StoreError> {
        space.remove(&mut self.batch, key);
        self.counted()
    }

    fn counted(&mut self) -> Result<(), StoreError> {
        self.keys += 1;
        if self.keys >= self.max {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), StoreError> {
        if self.keys > 0 {
            #[cfg(test)]
            if let Some(left) = self
                .store
                .import_crash_after
                .lock()
                .expect("crash")
                .as_mut()
            {
                if *left == 0 {
                    return Err(StoreError::Io(io::Error::other(
                        "a crash the test injected",
                    )));
                }
                *left -= 1;
            }
            self.store
                .state
                .apply_batch(std::mem::take(&mut self.batch))?;
            self.keys = 0;
        }
        Ok(())
    }
}

impl Store {
    /// Whether a snapshot import was interrupted (by a crash) and not finished since. The store
    /// then holds a mix of the state before that import and the imported one; import the same
    /// snapshot again to finish it.
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

    /// [`Store::export_snapshot_to`] into memory: the applied state the export reflects, and
    /// the export. For tests and small stores; a node exports into files.
    pub fn export_snapshot(&self) -> Result<(Applied, Vec<u8>), StoreError> {
        let mut sink = io::Cursor::new(Vec::new());
        let (applied, _) = self.export_snapshot_to(&mut sink)?;
        Ok((applied, sink.into_inner()))
    }

    /// Writes every tree, including the applied state and the hash window, into `sink` from
    /// its position, pair by pair. Returns the applied state the export reflects and the
    /// bytes written. Commits and reads go on while it runs (see the module docs for how the
    /// export still reflects one epoch); memory beyond a buffer is the capture's, at most
    /// [`EXPORT_CAPTURE_KEYS_MAX`] before-images.
    pub fn export_snapshot_to<S: ExportSink>(
        &self,
        sink: &mut S,
    ) -> Result<(Applied, u64), StoreError> {
        let _one = self.snapshot.lock().expect("snapshot lock");
        let start = sink.stream_position()?;
        let applied = self.begin_capture();
        let streamed = self.write_export(sink, true);
        // Stop the capture at an epoch boundary, whatever happened: every later commit would
        // go on recording into it.
        let gate = self.gate.read().expect("epoch gate");
        let capture = self
            .capture
            .lock()
            .expect("capture lock")
            .take()
            .expect("the export's capture");
        if let Some(end) = streamed? {
            // Freeing the before-images (as many as the commits made while the export ran)
            // need not hold commits up.
            drop(gate);
            drop(capture);
            return Ok((applied, end - start));
        }
        drop(capture);
        // The capture overflowed: export again with commits held, as of the epoch now.
        ordo_metrics::SNAPSHOT_EXPORT_RESTARTS.inc();
        sink.seek(SeekFrom::Start(start))?;
        sink.truncate_to(start)?;
        let end = self
            .write_export(sink, false)?
            .expect("an export without a capture is never abandoned");
        drop(gate);
        Ok((self.applied(), end - start))
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

    /// Writes every tree into `sink`. With `patch`, the pairs read (a mix of epochs while
    /// commits go on) are put back to the capture's epoch as they are written; `None` when the
    /// capture overflowed, and what was written is to be thrown away. The import marker and
    /// the store's own records are left out: they describe this store's disk, not the state.
    fn write_export<S: ExportSink>(
        &self,
        sink: &mut S,
        patch: bool,
    ) -> Result<Option<u64>, StoreError> {
        let trees = self.snapshot_trees();
        let mut out = SnapshotWriter::new(sink, self.partitions(), trees.len())?;
        let mut read: Vec<(IVec, IVec)> = Vec::with_capacity(self.export_batch_pairs);
        for (id, (name, tree)) in trees.iter().enumerate() {
            #[cfg(test)]
            self.run_export_hook(id, 0);
            out.begin_tree(name)?;
            let mut after: Option<IVec> = None;
            #[cfg(test)]
            let mut batches = 0;
            for kv in tree.iter() {
                let (k, v) = kv?;
                if id == META_TREE
                    && (k == META_IMPORTING || k == META_FEED_START || k == META_PACKED)
                {
                    continue;
                }
                read.push((k, v));
                if read.len() < self.export_batch_pairs {
                    continue;
                }
                if !self.write_patched(&mut out, id, &mut after, &mut read, patch, false)? {
                    return Ok(None);
                }
                #[cfg(test)]
                {
                    batches += 1;
                    self.run_export_hook(id, batches);
                }
            }
            if !self.write_patched(&mut out, id, &mut after, &mut read, patch, true)? {
                return Ok(None);
            }
            out.end_tree()?;
        }
        Ok(Some(out.finish()?))
    }

    /// Writes `read` (pairs of tree `id` just read, ascending, all past `after`) as of the
    /// capture's epoch, and with `last` the before-images of the tree's keys past them. A key
    /// a commit wrote before the export read it has its before-image in the capture (recorded
    /// before the write); a key the export's epoch had that was gone when the export passed
    /// its place has one too; a before-image recorded after the export passed a key holds
    /// what the export read there. So patching each batch right after reading it is exact.
    /// Returns false when the capture overflowed.
    fn write_patched<S: ExportSink>(
        &self,
        out: &mut SnapshotWriter<'_, S>,
        id: usize,
        after: &mut Option<IVec>,
        read: &mut Vec<(IVec, IVec)>,
        patch: bool,
        last: bool,
    ) -> Result<bool, StoreError> {
        let mut patched: Vec<(IVec, IVec)> = Vec::with_capacity(read.len());
        if !patch {
            patched.append(read);
        } else {
            let lo = match after.as_deref() {
                Some(after) => Bound::Excluded((id, after.to_vec())),
                None => Bound::Included((id, Vec::new())),
            };
            let hi = match read.last() {
                Some((k, _)) if !last => Bound::Included((id, k.to_vec())),
                _ => Bound::Excluded((id + 1, Vec::new())),
            };
            if let (Some(after), Some((first, _))) = (after.as_deref(), read.first()) {
                if after >= &first[..] {
                    return Err(StoreError::Invariant(format!(
                        "an export read key {first:?} of tree {id} after {after:?}"
                    )));
                }
            }
            // The capture's lock only while patching: commits record into it.
            let capture = self.capture.lock().expect("capture lock");
            let capture = capture.as_ref().expect("the export's capture");
            if capture.overflowed {
                read.clear();
                return Ok(false);
            }
            let mut undo = capture.before.range((lo, hi)).peekable();
            for (key, value) in read.drain(..) {
                // Keys gone when the export passed their place: back, when the epoch had them.
                while let Some(((_, k), v)) = undo.next_if(|((_, k), _)| k.as_slice() < &key[..]) {
                    if let Some(v) = v {
                        patched.push((IVec::from(k.as_slice()), v.clone()));
                    }
                }
                match undo.next_if(|((_, k), _)| k.as_slice() == &key[..]) {
                    Some((_, Some(before))) => patched.push((key, before.clone())),
                    Some((_, None)) => {}
                    None => patched.push((key, value)),
                }
            }
            // With `last`: the tree's keys past everything read.
            for ((_, k), v) in undo {
                if let Some(v) = v {
                    patched.push((IVec::from(k.as_slice()), v.clone()));
                }
            }
        }
        if let Some((k, _)) = patched.last() {
            *after = Some(k.clone());
        }
        for (k, v) in &patched {
            out.pair(k, v)?;
        }
        Ok(true)
    }

    /// Fills a new, empty store with the state of a snapshot made by
    /// [`Store::export_snapshot`], for `ordo restore`. [`Store::restore_snapshot_from`] in
    /// memory.
    pub fn restore_snapshot(&self, bytes: &[u8]) -> Result<(), StoreError> {
        self.restore_snapshot_from(SnapshotSource::Bytes(bytes))
    }

    /// Fills a new, empty store with the state of a snapshot: refuses a store that holds
    /// anything, then imports. Not atomic: a store it fails on (or a crash interrupts) is to
    /// be thrown away, and nothing may read the store meanwhile.
    pub fn restore_snapshot_from(&self, source: SnapshotSource<'_>) -> Result<(), StoreError> {
        {
            let _one = self.snapshot.lock().expect("snapshot lock");
            let _gate = self.gate.write().expect("epoch gate");
            let holds_keys = self
                .snapshot_trees()
                .iter()
                .skip(META_TREE + 1)
                .any(|(_, space)| space.iter().next().is_some());
            if self.applied().epoch != 0 || holds_keys {
                return Err(StoreError::Config(
                    "a store is restored into only when it is new and empty".into(),
                ));
            }
        }
        self.import_snapshot_from(source)
    }

    /// The first pass of an import: reads the whole snapshot, checks its shape (format,
    /// partitions, trees, keys ascending, packed rows that fit) and builds the packed table.
    fn check_snapshot(&self, source: SnapshotSource<'_>) -> Result<Checked, StoreError> {
        let mut reader = SnapshotReader::open(&source)?;
        if reader.partitions != self.partitions() {
            return Err(StoreError::Config(format!(
                "snapshot has {} partitions, this node {}",
                reader.partitions,
                self.partitions()
            )));
        }
        let ours = self.snapshot_trees();
        let mut table = self
            .packed
            .spec
            .get()
            .map(|spec| Table::new(spec.clone(), self.partitions()));
        // Values the members index reads must be record lists: checked here, so that a
        // snapshot with one that is not fails before it changes anything.
        let members_prefix = self
            .members
            .read()
            .expect("members lock")
            .as_ref()
            .map(|m| m.prefix.clone());
        let mut imported = None;
        for (id, (name, _)) in ours.iter().enumerate() {
            let Some((theirs, pairs)) = reader.next_tree()? else {
                return Err(StoreError::Corrupt(format!(
                    "snapshot has {id} trees, this store {}",
                    ours.len()
                )));
            };
            if theirs != *name {
                return Err(StoreError::Corrupt(format!(
                    "snapshot tree {theirs:?} where this store has {name:?}"
                )));
            }
            if id == META_TREE && pairs > META_PAIRS_MAX {
                return Err(StoreError::Corrupt(format!(
                    "snapshot meta has {pairs} pairs (at most {META_PAIRS_MAX})"
                )));
            }
            let mut last: Option<Vec<u8>> = None;
            while let Some((key, value)) = reader.next_pair()? {
                if last.as_ref().is_some_and(|last| *last >= key) {
                    return Err(StoreError::Corrupt(format!(
                        "snapshot tree {name}: keys out of order"
                    )));
                }
                if id == META_TREE && key == META_APPLIED {
                    imported = Some(decode::<Applied>("snapshot applied state", &value)?);
                }
                let indexed = id == GLOBAL_TREE || id >= FIRST_REGION_TREE;
                if let Some(prefix) = members_prefix.as_ref().filter(|_| indexed) {
                    if key.starts_with(prefix) {
                        crate::records::keys(&value).map_err(|e| {
                            StoreError::Corrupt(format!("snapshot tree {name}: {key:?}: {e}"))
                        })?;
                    }
                }
                if let Some(table) = table.as_mut().filter(|_| id >= FIRST_REGION_TREE) {
                    if table.spec().covers(&key) {
                        table
                            .check_write(&key, Some(&value))
                            .map_err(|e| StoreError::Corrupt(format!("snapshot: {e}")))?;
                        table.set((id - FIRST_REGION_TREE) as u32, &key, Some(&value));
                    }
                }
                last = Some(key);
            }
        }
        if reader.next_tree()?.is_some() {
            return Err(StoreError::Corrupt(format!(
                "snapshot has more trees than this store's {}",
                ours.len()
            )));
        }
        Ok(Checked {
            table,
            imported: imported.unwrap_or_default(),
        })
    }

    /// [`Store::import_snapshot_from`] in memory.
    pub fn import_snapshot(&self, bytes: &[u8]) -> Result<(), StoreError> {
        self.import_snapshot_from(SnapshotSource::Bytes(bytes))
    }

    /// Replaces the whole store with a snapshot made by [`Store::export_snapshot_to`]: reads
    /// it once to check it (nothing changes if it is refused), then again to apply it as a
    /// diff in batches of at most [`RESTORE_BATCH_KEYS`] keys, so memory beyond the state is
    /// one batch and a read buffer (see the module docs).
    pub fn import_snapshot_from(&self, source: SnapshotSource<'_>) -> Result<(), StoreError> {
        self.import_snapshot_after(source, || Ok(()))
    }

    /// [`Store::import_snapshot_from`], running `checked` once the whole snapshot has passed
    /// the check and before anything changes (a node makes the file its current snapshot
    /// there, so a snapshot it cannot import never replaces a good one). An error from it
    /// changes nothing either.
    pub fn import_snapshot_after(
        &self,
        source: SnapshotSource<'_>,
        checked: impl FnOnce() -> io::Result<()>,
    ) -> Result<(), StoreError> {
        let table = self.check_snapshot(source)?;
        checked()?;
        let _one = self.snapshot.lock().expect("snapshot lock");
        // The gate keeps commits and consistent reads out; point reads and `applied()` go on.
        let _gate = self.gate.write().expect("epoch gate");
        // Its writes record no before-images: the open views' reads run again.
        for view in self.views.lock().expect("views lock").iter() {
            view.spoil();
        }
        // sled alone holds the state from here: the diff below is read from it and written
        // to it directly.
        self.behind.sync()?;
        self.mark_import_started()?;
        let applied = self.apply_snapshot(source, table);
        if applied.is_err() {
            // The store is a mix of both states now (a crash would leave the same): say so,
            // whatever the caller does next.
            self.import_interrupted.store(true, Ordering::SeqCst);
        }
        applied
    }

    /// The second read of an import, under the snapshot lock and the gate, the marker set.
    fn apply_snapshot(
        &self,
        source: SnapshotSource<'_>,
        checked: Checked,
    ) -> Result<(), StoreError> {
        let mut out = Batches::new(self, self.import_batch_keys);
        let ours = self.snapshot_trees();
        let packed = checked.table.as_ref().map(Table::spec);
        let mut reader = SnapshotReader::open(&source)?;
        let mut meta_pairs = Vec::new();
        for (id, (_, space)) in ours.iter().enumerate() {
            reader
                .next_tree()?
                .ok_or_else(|| StoreError::Corrupt("snapshot changed while imported".into()))?;
            if id == META_TREE {
                // Last, in the batch that completes the import.
                meta_pairs = reader.pairs().collect::<Result<Vec<_>, _>>()?;
                continue;
            }
            let packed = packed.filter(|_| id >= FIRST_REGION_TREE);
            let wanted = reader
                .pairs()
                .filter(|pair| !matches!(pair, Ok((k, _)) if packed.is_some_and(|p| p.covers(k))));
            diff(space, space.iter_unpacked(), wanted, &mut out)?;
        }
        if let Some(table) = &checked.table {
            let wanted = (0..self.partitions())
                .flat_map(|n| table.chunks(n))
                .map(|(k, v)| Ok((k.to_vec(), v.to_vec())));
            diff(&self.chunks, self.chunks.iter(), wanted, &mut out)?;
        }
        // The feed restarts after the imported epoch: what this node kept before it may end
        // before the snapshot's epoch, and a gap must never look like epochs without events.
        // The new start is written before any entry goes.
        let feed_start = checked.imported.epoch + 1;
        out.flush()?;
        self.meta.insert_now(META_FEED_START, encode(&feed_start))?;
        // Before the entries go, for the lock-free readers (see `feed_read`).
        self.feed.lock().expect("feed lock").start = feed_start;
        for kv in self.feed_tree.iter() {
            out.remove(&self.feed_tree, &kv?.0)?;
        }
        out.flush()?;
        // All of it durable before the batch that removes the marker.
        self.db.flush()?;
        let mut last = Batches::new(self, usize::MAX);
        let own = |k: &[u8]| k == META_IMPORTING || k == META_FEED_START || k == META_PACKED;
        let existing = self
            .meta
            .iter_unpacked()
            .filter(|kv| !matches!(kv, Ok((k, _)) if own(k)));
        diff(
            &self.meta,
            existing,
            meta_pairs.into_iter().map(Ok),
            &mut last,
        )?;
        if let Some(table) = &checked.table {
            // The store's own record, which no snapshot holds.
            self.meta
                .insert(&mut last.batch, META_PACKED, encode(table.spec()));
        }
        // The import is done exactly when this batch is.
        self.meta.remove(&mut last.batch, META_IMPORTING);
        let mut feed = self.feed.lock().expect("feed lock");
        let mut known = self.known.write().expect("known lock");
        let mut packed = self.packed.table.write().expect("packed lock");
        self.state.apply_batch(last.batch)?;
        if checked.table.is_some() {
            *packed = checked.table;
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
        let mut members = self.members.write().expect("members lock");
        if let Some(prefix) = members.as_ref().map(|m| m.prefix.clone()) {
            // No read is exact without the index: a lookup would miss what it names.
            *members = None;
            let loaded = Members::load(&prefix, self.all_trees())?;
            loaded.publish();
            *members = Some(loaded);
        }
        drop(members);
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

/// Adds to `out` what turns `space` into exactly `wanted` (sorted by key, as exported):
/// removes the keys `wanted` lacks and writes the pairs whose value differs. It never clears
/// the keyspace.
fn diff(
    space: &Space,
    existing: impl Iterator<Item = sled::Result<(IVec, IVec)>>,
    wanted: impl Iterator<Item = Result<(Vec<u8>, Vec<u8>), StoreError>>,
    out: &mut Batches<'_>,
) -> Result<(), StoreError> {
    let mut wanted = wanted;
    let mut next = wanted.next().transpose()?;
    for kv in existing {
        let (key, value) = kv?;
        while let Some((k, v)) = next.take_if(|(k, _)| k.as_slice() < &*key) {
            out.insert(space, &k, &v)?;
            next = wanted.next().transpose()?;
        }
        match next.take_if(|(k, _)| k.as_slice() == &*key) {
            Some((_, v)) => {
                if v.as_slice() != &*value {
                    out.insert(space, &key, &v)?;
                }
                next = wanted.next().transpose()?;
            }
            None => out.remove(space, &key)?,
        }
    }
    while let Some((k, v)) = next {
        out.insert(space, &k, &v)?;
        next = wanted.next().transpose()?;
    }
    Ok(())
}

#[cfg(test)]
impl Store {
    fn run_export_hook(&self, tree: usize, batches: usize) {
        if let Some(hook) = self.export_hook.lock().expect("hook lock").as_mut() {
            hook(self, tree, batches);
        }
    }
}
