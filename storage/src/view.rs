//! Read views: a long read at one epoch that commits do not wait for ([`Store::view`]).
//!
//! A view is opened under the epoch gate, at an epoch boundary: it notes the applied state and
//! the global tables' versions there, and joins the store's list of open views. The read then
//! runs without the gate, on its own thread, while commits go on. Each commit, before it makes
//! any write visible, records in every open view the value each key it writes had before it
//! (its before-image, the first one per key and view), as the snapshot export's capture does.
//! A read in the view reads the store as it is now and then looks the key up among the
//! before-images: a key a commit changed since the view opened was recorded before the change
//! could be seen, so whatever the read saw, the before-image is the value at the view's epoch;
//! a key no commit changed has that value in the store. A range read merges the same way, and
//! reads further while the before-images drop what it read (`range`).
//!
//! The view is found through a thread-local: on the thread that runs a view's read, every read
//! of that store ([`Store::get`], [`Store::reader`], the range reads, [`Store::applied`],
//! [`Store::global_version_of`]) answers as of the view's epoch, so the scheduler's read
//! helpers work unchanged inside it.
//!
//! Bounded: at most [`VIEWS_MAX`] views are open at once (a read past them runs under the
//! gate), and each keeps at most [`VIEW_KEYS_MAX`] before-images; past that (or when a snapshot
//! import replaces the state under it) the view is spoiled and its read runs again under the
//! gate, holding commits for that one read instead of growing further.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use sled::IVec;

use crate::store::Applied;

/// The most views open at once on one store; commits pay for each.
pub const VIEWS_MAX: usize = 16;

/// The most before-images one view keeps (about 100 bytes each).
pub const VIEW_KEYS_MAX: usize = 65_536;

/// One open view.
pub(crate) struct View {
    /// The store it belongs to ([`crate::Store`]'s id).
    pub(crate) store: u64,
    pub(crate) applied: Applied,
    /// The global tables' versions per first key byte when it opened.
    pub(crate) global_versions: Box<[u64]>,
    pub(crate) global_version: u64,
    /// [`VIEW_KEYS_MAX`] but in unit tests.
    keys_max: usize,
    before: Mutex<Before>,
}

#[derive(Default)]
struct Before {
    /// Tree position → key → the key's value at the view's epoch (`None`: absent).
    trees: BTreeMap<usize, BTreeMap<Vec<u8>, Option<IVec>>>,
    /// Keys in `trees`.
    keys: usize,
    /// Set at the bound, or by an import: the view's reads can no longer be patched.
    spoiled: bool,
}

impl View {
    pub(crate) fn new(
        store: u64,
        applied: Applied,
        global_versions: Box<[u64]>,
        global_version: u64,
        keys_max: usize,
    ) -> Self {
        Self {
            store,
            applied,
            global_versions,
            global_version,
            keys_max,
            before: Mutex::new(Before::default()),
        }
    }

    /// Whether the view still needs `key`'s before-image (a commit is about to write it).
    pub(crate) fn needs(&self, tree: usize, key: &[u8]) -> bool {
        let before = self.before.lock().expect("view lock");
        !before.spoiled && before.trees.get(&tree).is_none_or(|t| !t.contains_key(key))
    }

    /// Keeps `value` as `key`'s before-image unless the view has one (or is spoiled).
    pub(crate) fn record(&self, tree: usize, key: &[u8], value: Option<IVec>) {
        let mut before = self.before.lock().expect("view lock");
        if before.spoiled {
            return;
        }
        if before.keys >= self.keys_max {
            tracing::warn!(
                keys = before.keys,
                epoch = self.applied.epoch,
                "a read view reached its bound of before-images; its read runs again with \
                 commits held"
            );
            before.spoil();
            return;
        }
        let keys = before.trees.entry(tree).or_default();
        if !keys.contains_key(key) {
            keys.insert(key.to_vec(), value);
            before.keys += 1;
        }
    }

    /// The view can no longer answer as of its epoch (a snapshot import under it).
    pub(crate) fn spoil(&self) {
        self.before.lock().expect("view lock").spoil();
    }

    pub(crate) fn spoiled(&self) -> bool {
        self.before.lock().expect("view lock").spoiled
    }

    /// `key` as of the view's epoch, given `now`, its value read from the store before this call.
    pub(crate) fn point(&self, tree: usize, key: &[u8], now: Option<IVec>) -> Option<IVec> {
        let before = self.before.lock().expect("view lock");
        match before.trees.get(&tree).and_then(|t| t.get(key)) {
            Some(then) => then.clone(),
            None => now,
        }
    }

    /// The before-images of `tree` with `start <= key < end` (`end` None: to the tree's end),
    /// in key order.
    fn changed(
        &self,
        tree: usize,
        start: &[u8],
        end: Option<&[u8]>,
    ) -> Vec<(Vec<u8>, Option<IVec>)> {
        use std::ops::Bound::{Excluded, Included, Unbounded};
        let before = self.before.lock().expect("view lock");
        let Some(keys) = before.trees.get(&tree) else {
            return Vec::new();
        };
        let bounds: (_, std::ops::Bound<&[u8]>) = match end {
            // An empty range (BTreeMap's `range` panics on a reversed one).
            Some(end) if end <= start => return Vec::new(),
            Some(end) => (Included(start), Excluded(end)),
            None => (Included(start), Unbounded),
        };
        keys.range::<[u8], _>(bounds)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// Up to `limit` pairs of `tree` with `start <= key < end`, ascending (or descending with
    /// `rev`), as of the view's epoch. `read_now(after, n)` reads up to `n` pairs of the store
    /// as it is now, in the same order, past the key `after` (`None`: from the range's first).
    ///
    /// Every key no commit changed since the view opened is in the store throughout, so the
    /// reads find it; the others come from the before-images, taken after the reads. A page
    /// that the before-images leave short is read further.
    pub(crate) fn range<E>(
        &self,
        tree: usize,
        (start, end): (&[u8], Option<&[u8]>),
        limit: usize,
        rev: bool,
        mut read_now: impl FnMut(Option<&[u8]>, usize) -> Result<Vec<(IVec, IVec)>, E>,
    ) -> Result<Vec<(IVec, IVec)>, E> {
        let mut now: Vec<(IVec, IVec)> = Vec::new();
        loop {
            if limit == 0 {
                return Ok(Vec::new());
            }
            let more = read_now(now.last().map(|(k, _)| &k[..]), limit)?;
            let exhausted = more.len() < limit;
            now.extend(more);
            let changed = self.changed(tree, start, end);
            // The part of the range the reads have covered: all of it once they ran out.
            let covered = |key: &[u8]| match (exhausted, now.last()) {
                (true, _) | (_, None) => true,
                (false, Some((last, _))) => match rev {
                    false => key <= &last[..],
                    true => key >= &last[..],
                },
            };
            let mut out: Vec<(IVec, IVec)> = now
                .iter()
                .filter(|(k, _)| {
                    changed
                        .binary_search_by(|(c, _)| c[..].cmp(&k[..]))
                        .is_err()
                })
                .cloned()
                .collect();
            out.extend(
                changed
                    .into_iter()
                    .filter(|(k, _)| covered(k))
                    .filter_map(|(k, v)| v.map(|v| (IVec::from(k), v))),
            );
            match rev {
                false => out.sort_by(|a, b| a.0.cmp(&b.0)),
                true => out.sort_by(|a, b| b.0.cmp(&a.0)),
            }
            if out.len() >= limit || exhausted {
                out.truncate(limit);
                return Ok(out);
            }
        }
    }
}

impl Before {
    fn spoil(&mut self) {
        self.spoiled = true;
        self.trees = BTreeMap::new();
        self.keys = 0;
    }
}

thread_local! {
    /// The view this thread reads in, if any.
    static CURRENT: RefCell<Option<Arc<View>>> = const { RefCell::new(None) };
}

/// The view this thread reads `store` in, if any.
pub(crate) fn current(store: u64) -> Option<Arc<View>> {
    CURRENT.with(|c| c.borrow().as_ref().filter(|v| v.store == store).cloned())
}

/// Makes `view` this thread's, and open in its store, until dropped (a panicking read
/// included).
pub(crate) struct Entered<'a> {
    view: Arc<View>,
    open: &'a Mutex<Vec<Arc<View>>>,
}

impl<'a> Entered<'a> {
    pub(crate) fn enter(view: Arc<View>, open: &'a Mutex<Vec<Arc<View>>>) -> Self {
        CURRENT.with(|c| *c.borrow_mut() = Some(view.clone()));
        Entered { view, open }
    }
}

impl Drop for Entered<'_> {
    fn drop(&mut self) {
        CURRENT.with(|c| *c.borrow_mut() = None);
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        open.retain(|v| !Arc::ptr_eq(v, &self.view));
    }
}
