//! The store's keyspaces in one sled tree.
//!
//! Every keyspace (the applied state, the hash window, the feed, the global partition, each
//! region) is the keys of the one tree `state` under a 4-byte big-endian prefix. One
//! `Tree::apply_batch` then changes any of them atomically, which is what an epoch's commit
//! needs; sled's multi-tree transactions, which the store used before, read every key they
//! write before writing it. A store from before (a tree per keyspace) is moved into `state`
//! once, when it is opened ([`migrate`]).

use std::sync::Arc;

use sled::{Batch, IVec, Tree};

use crate::behind::{Behind, Merged, Staged};
use crate::packed::{Interleave, Packed, Pages};
use crate::StoreError;

/// One keyspace: the keys of the shared tree under `prefix`, seen without it, through the
/// overlay of writes not yet in sled (`behind.rs`).
#[derive(Clone)]
pub(crate) struct Space {
    tree: Tree,
    behind: Arc<Behind>,
    prefix: [u8; 4],
    /// A region's packed keys (`packed.rs`) and the region's number: they are read from the
    /// table, never from sled.
    packed: Option<(Arc<Packed>, u32)>,
}

/// The prefixes. Region `n` is `REGION_PREFIX_BASE + n`.
pub(crate) const META_PREFIX: u32 = 0;
pub(crate) const HASHES_PREFIX: u32 = 1;
pub(crate) const FEED_PREFIX: u32 = 2;
pub(crate) const GLOBAL_PREFIX: u32 = 3;
/// The packed keys' chunks (`packed.rs`), every region's.
pub(crate) const PACKED_PREFIX: u32 = 4;
pub(crate) const REGION_PREFIX_BASE: u32 = 16;

/// The most region partitions a store can have: their prefixes stay below `u32::MAX`, whose
/// successor a range over the last keyspace would need.
pub(crate) const REGIONS_MAX: u32 = u32::MAX - REGION_PREFIX_BASE - 1;

type Pair = sled::Result<(IVec, IVec)>;

impl Space {
    pub(crate) fn new(tree: &Tree, behind: &Arc<Behind>, prefix: u32) -> Space {
        Space {
            tree: tree.clone(),
            behind: behind.clone(),
            prefix: prefix.to_be_bytes(),
            packed: None,
        }
    }

    /// Region `n`'s keyspace, whose packed keys live in `packed`.
    pub(crate) fn region(tree: &Tree, behind: &Arc<Behind>, n: u32, packed: &Arc<Packed>) -> Space {
        Space {
            packed: Some((packed.clone(), n)),
            ..Space::new(tree, behind, REGION_PREFIX_BASE + n)
        }
    }

    /// `key` with this keyspace's prefix: the key in the shared tree.
    fn full(&self, key: &[u8]) -> Vec<u8> {
        let mut full = Vec::with_capacity(self.prefix.len() + key.len());
        full.extend_from_slice(&self.prefix);
        full.extend_from_slice(key);
        full
    }

    /// The first key past this keyspace.
    fn end(&self) -> Vec<u8> {
        (u32::from_be_bytes(self.prefix) + 1).to_be_bytes().to_vec()
    }

    fn strip(&self, pairs: impl Iterator<Item = Pair>) -> impl Iterator<Item = Pair> {
        let len = self.prefix.len();
        pairs.map(move |pair| pair.map(|(k, v)| (IVec::from(&k[len..]), v)))
    }

    pub(crate) fn get(&self, key: &[u8]) -> sled::Result<Option<IVec>> {
        if let Some((packed, n)) = &self.packed {
            if packed.covers(key) {
                return Ok(packed.get(*n, key));
            }
        }
        self.get_unpacked(key)
    }

    /// [`Space::get`] of a key that is not packed: the overlay, then sled.
    pub(crate) fn get_unpacked(&self, key: &[u8]) -> sled::Result<Option<IVec>> {
        // Point reads are the hot path: build the full key on the stack when it fits.
        let mut buf = [0u8; 64];
        let len = self.prefix.len() + key.len();
        let heap;
        let full: &[u8] = match buf.get_mut(..len) {
            Some(full) => {
                full[..4].copy_from_slice(&self.prefix);
                full[4..].copy_from_slice(key);
                full
            }
            None => {
                heap = self.full(key);
                &heap
            }
        };
        match self.behind.get(full) {
            Some(staged) => Ok(staged),
            None => self.tree.get(full),
        }
    }

    /// Writes at once, outside any batch (the store's own bookkeeping at open).
    pub(crate) fn insert_now(&self, key: &[u8], value: impl Into<IVec>) -> sled::Result<()> {
        self.tree.insert(self.full(key), value)?;
        Ok(())
    }

    pub(crate) fn insert(&self, batch: &mut Batch, key: &[u8], value: impl Into<IVec>) {
        batch.insert(self.full(key), value);
    }

    pub(crate) fn remove(&self, batch: &mut Batch, key: &[u8]) {
        batch.remove(self.full(key));
    }

    /// Stages a write for an epoch's commit (`behind.rs`).
    pub(crate) fn put(&self, staged: &mut Staged, key: &[u8], value: impl Into<IVec>) {
        staged.push((IVec::from(self.full(key)), Some(value.into())));
    }

    /// Stages a removal for an epoch's commit.
    pub(crate) fn delete(&self, staged: &mut Staged, key: &[u8]) {
        staged.push((IVec::from(self.full(key)), None));
    }

    /// The merged pairs with `start <= full key < end`: the overlay's entries are taken
    /// first, then sled's iterator opened (see `behind.rs` for why that order is exact); with
    /// `packed`, the packed rows in the range are merged in.
    fn merged(
        &self,
        start: Vec<u8>,
        end: Vec<u8>,
        descending: bool,
        packed: bool,
    ) -> Box<dyn Iterator<Item = Pair> + Send> {
        let rows = match &self.packed {
            Some((table, n)) if packed => {
                // The range within this keyspace; an end past it (this keyspace's end, or
                // the successor of a prefix of 0xFF bytes) is no end.
                let within = (
                    start.strip_prefix(&self.prefix[..]).unwrap_or_default(),
                    end.strip_prefix(&self.prefix[..]),
                );
                table
                    .meets(within.0, within.1)
                    .then(|| Pages::new(table.clone(), *n, within, descending))
            }
            _ => None,
        };
        let staged = self.behind.range(&start, &end);
        let on_disk = self.tree.range(start..end);
        let pairs: Box<dyn Iterator<Item = Pair> + Send> = if descending {
            Box::new(Merged::new(on_disk.rev(), staged, true))
        } else {
            Box::new(Merged::new(on_disk, staged, false))
        };
        let pairs = Box::new(self.strip(pairs));
        match rows {
            Some(rows) => Box::new(Interleave::new(pairs, rows, descending)),
            None => pairs,
        }
    }

    /// Every pair, in key order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = Pair> {
        self.merged(self.prefix.to_vec(), self.end(), false, true)
    }

    /// Every pair that is not packed (sled's and the overlay's), in key order.
    pub(crate) fn iter_unpacked(&self) -> impl Iterator<Item = Pair> {
        self.merged(self.prefix.to_vec(), self.end(), false, false)
    }

    /// The pairs whose key starts with `prefix`, in key order.
    pub(crate) fn scan_prefix(&self, prefix: &[u8]) -> impl Iterator<Item = Pair> {
        let start = self.full(prefix);
        let end = successor(&start).unwrap_or_else(|| self.end());
        self.merged(start, end, false, true)
    }

    /// [`Space::scan_prefix`] of sled's and the overlay's pairs alone.
    pub(crate) fn scan_prefix_unpacked(&self, prefix: &[u8]) -> impl Iterator<Item = Pair> {
        let start = self.full(prefix);
        let end = successor(&start).unwrap_or_else(|| self.end());
        self.merged(start, end, false, false)
    }

    /// The pairs with `start <= key < end` (no `end`: to the end of the keyspace).
    pub(crate) fn range(&self, start: &[u8], end: Option<&[u8]>) -> impl Iterator<Item = Pair> {
        let end = match end {
            Some(end) => self.full(end),
            None => self.end(),
        };
        self.merged(self.full(start), end, false, true)
    }

    /// [`Space::range`] in descending key order.
    pub(crate) fn range_rev(&self, start: &[u8], end: &[u8]) -> impl Iterator<Item = Pair> {
        self.merged(self.full(start), self.full(end), true, true)
    }
}

/// The first key past every key that starts with `prefix` (`None`: there is none).
pub(crate) fn successor(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut next = prefix.to_vec();
    while let Some(last) = next.pop() {
        if last < u8::MAX {
            next.push(last + 1);
            return Some(next);
        }
    }
    None
}

/// The name of the shared tree.
pub(crate) const STATE_TREE: &str = "state";

/// Pairs copied per batch while migrating.
const MIGRATE_BATCH_PAIRS: usize = 10_000;

/// Moves a store with a tree per keyspace (`meta`, `hashes`, `feed`, `global`, `p0`, `p1`, …)
/// into `state`, then drops those trees, `meta` last; returns how many pairs it moved. Nothing
/// else writes while it runs, and each step only copies or drops, so a crash part way leaves
/// a store it finishes next time: `meta` is there until everything else is.
pub(crate) fn migrate(
    db: &sled::Db,
    state: &Tree,
    behind: &Arc<Behind>,
) -> Result<u64, StoreError> {
    let mut old: Vec<(IVec, u32)> = Vec::new();
    for name in db.tree_names() {
        let prefix = match &*name {
            b"meta" => META_PREFIX,
            b"hashes" => HASHES_PREFIX,
            b"feed" => FEED_PREFIX,
            b"global" => GLOBAL_PREFIX,
            other => match other
                .strip_prefix(b"p")
                .and_then(|n| std::str::from_utf8(n).ok())
                .and_then(|n| n.parse::<u32>().ok())
                .filter(|&n| n <= REGIONS_MAX)
            {
                Some(n) => REGION_PREFIX_BASE + n,
                None => continue,
            },
        };
        old.push((name, prefix));
    }
    // `meta` last: while it is there, the migration has not finished.
    old.sort_by_key(|(_, prefix)| *prefix == META_PREFIX);
    let mut moved = 0u64;
    for (name, prefix) in &old {
        let tree = db.open_tree(name)?;
        let space = Space::new(state, behind, *prefix);
        let mut batch = Batch::default();
        let mut in_batch = 0;
        for pair in tree.iter() {
            let (k, v) = pair?;
            space.insert(&mut batch, &k, v);
            in_batch += 1;
            moved += 1;
            if in_batch == MIGRATE_BATCH_PAIRS {
                state.apply_batch(std::mem::take(&mut batch))?;
                in_batch = 0;
            }
        }
        state.apply_batch(batch)?;
    }
    if old.is_empty() {
        return Ok(0);
    }
    // Everything copied is on disk before anything is dropped.
    db.flush()?;
    for (name, _) in &old {
        db.drop_tree(name)?;
        db.flush()?;
    }
    Ok(moved)
}
