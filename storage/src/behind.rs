//! sled written behind the epochs: the checkpoint.
//!
//! An epoch's commit no longer writes sled itself. It puts its writes in an in-memory overlay
//! that every read of the store consults first, and queues them for one writer thread. The
//! writer takes whatever is queued when it is free, and writes it to sled in batches of whole
//! commits (at most about [`APPLY_KEYS_MAX`] keys each), each of which also moves the applied
//! watermark to its last epoch: sled is always exactly at some epoch, the one executed or a
//! few behind it. Under load the writer is busy while epochs queue, so one batch covers many
//! epochs (a group commit that clocks itself); idle, each epoch is written as it comes. That is
//! safe because sled never was the durability anchor: the Raft log is, its entries past the
//! last snapshot are kept, and a node that restarts re-applies the log from sled's watermark.
//! What it buys: sled's B-tree writes, its page copies and its log serialisation leave the
//! epoch's critical path (the next epoch executes while sled writes the last), and a key
//! written by several queued epochs (a hot stock row, the watermark) is written once.
//!
//! Readers see exactly what they saw before. A point read finds a key in the overlay or,
//! if the overlay does not hold it, in sled, which then holds its latest value: an entry
//! leaves the overlay only after sled holds it, and only inside a commit (with the epoch gate
//! held for writing), so no consistent read and no execution ever runs while entries leave.
//! A range read takes the overlay's entries in its range first, then merges them into sled's
//! iterator, the overlay winning on equal keys (a deleted key in the overlay hides sled's).
//!
//! Bounded: a commit waits while [`PENDING_KEYS_MAX`] keys are queued and unwritten, so a
//! slow disk slows the epochs instead of growing memory. A sled error in the writer stops
//! the node at its next commit, as a failed commit did before.

use std::collections::BTreeMap;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use sled::{Batch, IVec, Tree};

use crate::StoreError;

/// The most keys (about; whole commits) one sled batch of the writer holds: sled's
/// `apply_batch` holds a lock every sled read waits for, so a batch is kept short.
pub const APPLY_KEYS_MAX: usize = 2_048;

/// A commit waits while this many keys are queued for sled and not written: the bound on the
/// overlay (with the keys of one commit and those written but not yet dropped from it).
pub const PENDING_KEYS_MAX: usize = 262_144;

/// One commit's writes: full keys of the shared tree, `None` removes.
pub(crate) type Staged = Vec<(IVec, Option<IVec>)>;

/// Each key written and not yet known to be in sled: the number of the last commit that wrote
/// it, and its value (`None`: removed).
type Overlay = BTreeMap<IVec, (u64, Option<IVec>)>;

#[derive(Default)]
struct Queue {
    /// Commits staged and not yet taken by the writer, in commit order.
    pending: Vec<(u64, Staged)>,
    pending_keys: usize,
    /// Keys the writer is writing now.
    in_flight_keys: usize,
    /// Commits written to sled whose keys may still be in the overlay.
    written: Vec<(u64, Staged)>,
    /// The number the next commit gets.
    next_seq: u64,
    stop: bool,
    /// The writer's sled error; every later commit fails with it.
    failed: Option<String>,
}

struct Shared {
    overlay: Mutex<Overlay>,
    queue: Mutex<Queue>,
    /// The writer waits on it for work.
    work: Condvar,
    /// Commits and syncs wait on it for the writer.
    done: Condvar,
}

/// The overlay and its writer thread. [`Behind::stop`] (or dropping it) writes what is queued
/// and stops the thread.
pub(crate) struct Behind {
    shared: Arc<Shared>,
    writer: Mutex<Option<JoinHandle<()>>>,
}

fn poisoned<T>(_: T) -> StoreError {
    StoreError::Checkpoint("a thread panicked holding the write-behind lock".into())
}

impl Behind {
    pub(crate) fn start(tree: &Tree) -> Result<Behind, StoreError> {
        let shared = Arc::new(Shared {
            overlay: Mutex::new(BTreeMap::new()),
            queue: Mutex::new(Queue::default()),
            work: Condvar::new(),
            done: Condvar::new(),
        });
        let writer = {
            let (shared, tree) = (shared.clone(), tree.clone());
            std::thread::Builder::new()
                .name("ordo-checkpoint".into())
                .spawn(move || {
                    let run = std::panic::AssertUnwindSafe(|| write_loop(&shared, &tree));
                    if std::panic::catch_unwind(run).is_err() {
                        // Commits and syncs must not wait for a writer that is gone.
                        let mut queue = shared.queue.lock().unwrap_or_else(|p| p.into_inner());
                        queue.failed = Some("the sled writer panicked".into());
                        shared.done.notify_all();
                    }
                })
                .map_err(|e| StoreError::Checkpoint(format!("starting the writer: {e}")))?
        };
        Ok(Behind {
            shared,
            writer: Mutex::new(Some(writer)),
        })
    }

    /// The value the store holds for `full`: `Some(found)` when the overlay decides it,
    /// `None` when sled does.
    pub(crate) fn get(&self, full: &[u8]) -> Option<Option<IVec>> {
        let overlay = self.shared.overlay.lock().expect("overlay lock");
        overlay.get(full).map(|(_, value)| value.clone())
    }

    /// The overlay's entries with `start <= key < end`, in key order.
    pub(crate) fn range(&self, start: &[u8], end: &[u8]) -> Vec<(IVec, Option<IVec>)> {
        if start >= end {
            return Vec::new();
        }
        let overlay = self.shared.overlay.lock().expect("overlay lock");
        overlay
            .range::<[u8], _>((
                std::ops::Bound::Included(start),
                std::ops::Bound::Excluded(end),
            ))
            .map(|(key, (_, value))| (key.clone(), value.clone()))
            .collect()
    }

    /// Waits while the writer is [`PENDING_KEYS_MAX`] keys behind, then drops from the overlay
    /// what sled now holds. Only a commit or an import calls it, with the epoch gate held for
    /// writing (see the module docs).
    pub(crate) fn make_room(&self) -> Result<(), StoreError> {
        self.wait_then_drop_written(|queue| {
            queue.pending_keys + queue.in_flight_keys >= PENDING_KEYS_MAX
        })
    }

    /// Waits while `behind` holds (or the writer failed), then drops from the overlay what
    /// sled holds.
    fn wait_then_drop_written(&self, behind: impl Fn(&Queue) -> bool) -> Result<(), StoreError> {
        let mut queue = self.shared.queue.lock().map_err(poisoned)?;
        while queue.failed.is_none() && behind(&queue) {
            queue = self.shared.done.wait(queue).map_err(poisoned)?;
        }
        if let Some(e) = &queue.failed {
            return Err(StoreError::Checkpoint(e.clone()));
        }
        let written = std::mem::take(&mut queue.written);
        drop(queue);
        self.drop_written(written);
        Ok(())
    }

    /// Entries whose last write is among `written` (so sled holds their value) leave the
    /// overlay; those written again since stay.
    fn drop_written(&self, written: Vec<(u64, Staged)>) {
        let Some(through) = written.last().map(|(seq, _)| *seq) else {
            return;
        };
        let mut overlay = self.shared.overlay.lock().expect("overlay lock");
        for (_, writes) in &written {
            for (key, _) in writes {
                if overlay.get(key).is_some_and(|(seq, _)| *seq <= through) {
                    overlay.remove(key);
                }
            }
        }
    }

    /// Puts a commit's writes in the overlay and queues them for sled. Call
    /// [`Behind::make_room`] first, under the same hold of the epoch gate.
    pub(crate) fn stage(&self, writes: Staged) {
        let mut queue = self.shared.queue.lock().expect("queue lock");
        let seq = queue.next_seq;
        queue.next_seq += 1;
        {
            let mut overlay = self.shared.overlay.lock().expect("overlay lock");
            for (key, value) in &writes {
                overlay.insert(key.clone(), (seq, value.clone()));
            }
        }
        let was_idle = queue.pending.is_empty();
        queue.pending_keys += writes.len();
        queue.pending.push((seq, writes));
        if was_idle {
            self.shared.work.notify_one();
        }
    }

    /// Waits until sled holds every commit staged so far, then empties the overlay of them.
    /// With the epoch gate held for writing, the overlay is empty afterwards and sled alone
    /// is the state.
    pub(crate) fn sync(&self) -> Result<(), StoreError> {
        self.wait_then_drop_written(|queue| !queue.pending.is_empty() || queue.in_flight_keys > 0)
    }

    /// Keys in the overlay (for tests).
    #[cfg(test)]
    pub(crate) fn overlay_len(&self) -> usize {
        self.shared.overlay.lock().expect("overlay lock").len()
    }
}

impl Behind {
    /// Writes what is queued to sled and stops the writer; later commits are not written.
    pub(crate) fn stop(&self) {
        if let Ok(mut queue) = self.shared.queue.lock() {
            queue.stop = true;
        }
        self.shared.work.notify_one();
        let writer = self.writer.lock().ok().and_then(|mut w| w.take());
        if let Some(writer) = writer {
            let _ = writer.join();
        }
    }
}

impl Drop for Behind {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The writer: takes what commits staged, writes it in sled batches of whole commits, and
/// reports each batch written.
fn write_loop(shared: &Shared, tree: &Tree) {
    loop {
        let taken = {
            let Ok(mut queue) = shared.queue.lock() else {
                return;
            };
            while queue.pending.is_empty() && !queue.stop {
                queue = match shared.work.wait(queue) {
                    Ok(queue) => queue,
                    Err(_) => return,
                };
            }
            if queue.pending.is_empty() {
                return;
            }
            queue.in_flight_keys = std::mem::take(&mut queue.pending_keys);
            std::mem::take(&mut queue.pending)
        };
        let mut taken = taken.into_iter().peekable();
        while taken.peek().is_some() {
            // Whole commits, up to about `APPLY_KEYS_MAX` keys: sled then always holds the
            // state after some commit, and no batch holds sled's lock for long.
            let mut chunk = Vec::new();
            let mut batch = Batch::default();
            let mut keys = 0;
            while let Some((seq, writes)) = taken.next_if(|_| keys < APPLY_KEYS_MAX) {
                for (key, value) in &writes {
                    match value {
                        Some(value) => batch.insert(key.clone(), value.clone()),
                        None => batch.remove(key.clone()),
                    }
                }
                keys += writes.len();
                chunk.push((seq, writes));
            }
            let result = tree.apply_batch(batch);
            let Ok(mut queue) = shared.queue.lock() else {
                return;
            };
            queue.in_flight_keys = queue.in_flight_keys.saturating_sub(keys);
            match result {
                Ok(()) => queue.written.extend(chunk),
                Err(e) => {
                    tracing::error!(error = %e, "writing epochs to sled failed; the node stops");
                    queue.failed = Some(format!("writing epochs to sled: {e}"));
                    queue.in_flight_keys = 0;
                }
            }
            shared.done.notify_all();
            if queue.failed.is_some() {
                return;
            }
        }
    }
}

/// Merges a range's overlay entries (taken before `sled` was opened) into sled's pairs over
/// the same range: in key order, or descending when `descending`; the overlay wins on an
/// equal key, and its removals hide sled's pairs.
pub(crate) struct Merged<I: Iterator<Item = sled::Result<(IVec, IVec)>>> {
    sled: std::iter::Peekable<I>,
    overlay: std::iter::Peekable<std::vec::IntoIter<(IVec, Option<IVec>)>>,
    descending: bool,
}

impl<I: Iterator<Item = sled::Result<(IVec, IVec)>>> Merged<I> {
    pub(crate) fn new(sled: I, mut overlay: Vec<(IVec, Option<IVec>)>, descending: bool) -> Self {
        if descending {
            overlay.reverse();
        }
        Merged {
            sled: sled.peekable(),
            overlay: overlay.into_iter().peekable(),
            descending,
        }
    }
}

impl<I: Iterator<Item = sled::Result<(IVec, IVec)>>> Iterator for Merged<I> {
    type Item = sled::Result<(IVec, IVec)>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let order = match (self.sled.peek(), self.overlay.peek()) {
                (None, None) => return None,
                (Some(Err(_)), _) | (Some(_), None) => return self.sled.next(),
                (None, Some(_)) => std::cmp::Ordering::Greater,
                (Some(Ok((on_disk, _))), Some((staged, _))) => {
                    let order = on_disk.cmp(staged);
                    if self.descending {
                        order.reverse()
                    } else {
                        order
                    }
                }
            };
            match order {
                std::cmp::Ordering::Less => return self.sled.next(),
                std::cmp::Ordering::Equal => {
                    self.sled.next();
                }
                std::cmp::Ordering::Greater => {}
            }
            let (key, value) = self.overlay.next().expect("peeked");
            if let Some(value) = value {
                return Some(Ok((key, value)));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(items: &[(&str, &str)]) -> Vec<sled::Result<(IVec, IVec)>> {
        items
            .iter()
            .map(|(k, v)| Ok((IVec::from(k.as_bytes()), IVec::from(v.as_bytes()))))
            .collect()
    }

    fn staged(items: &[(&str, Option<&str>)]) -> Vec<(IVec, Option<IVec>)> {
        items
            .iter()
            .map(|(k, v)| {
                (
                    IVec::from(k.as_bytes()),
                    v.map(|v| IVec::from(v.as_bytes())),
                )
            })
            .collect()
    }

    fn text(merged: impl Iterator<Item = sled::Result<(IVec, IVec)>>) -> Vec<String> {
        merged
            .map(|pair| {
                let (k, v) = pair.unwrap();
                format!(
                    "{}={}",
                    String::from_utf8_lossy(&k),
                    String::from_utf8_lossy(&v)
                )
            })
            .collect()
    }

    #[test]
    fn the_overlay_wins_and_its_removals_hide_sleds_pairs_both_ways() {
        let on_disk = [("a", "1"), ("c", "3"), ("e", "5"), ("g", "7")];
        let overlay = [
            ("b", Some("20")),
            ("c", None),
            ("e", Some("50")),
            ("f", None),
            ("h", Some("80")),
        ];
        let forward = Merged::new(pairs(&on_disk).into_iter(), staged(&overlay), false);
        assert_eq!(text(forward), ["a=1", "b=20", "e=50", "g=7", "h=80"]);
        let backward = Merged::new(pairs(&on_disk).into_iter().rev(), staged(&overlay), true);
        assert_eq!(text(backward), ["h=80", "g=7", "e=50", "b=20", "a=1"]);
    }

    #[test]
    fn commits_reach_sled_in_order_and_leave_the_overlay_once_written() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        let tree = db.open_tree("t").unwrap();
        let behind = Behind::start(&tree).unwrap();
        for n in 0..10u8 {
            behind.make_room().unwrap();
            // Every commit rewrites "k"; commit n also writes its own key.
            behind.stage(staged(&[
                ("k", Some(&n.to_string())),
                (&format!("own{n}"), Some("x")),
            ]));
        }
        // Readers see the last commit before sled does.
        assert_eq!(behind.get(b"k"), Some(Some(IVec::from(b"9"))));
        behind.sync().unwrap();
        assert_eq!(behind.overlay_len(), 0);
        assert_eq!(tree.get(b"k").unwrap(), Some(IVec::from(b"9")));
        assert_eq!(tree.len(), 11);
        // A key written again after the writer took it stays until that write is in sled.
        behind.stage(staged(&[("k", None)]));
        assert_eq!(behind.get(b"k"), Some(None));
        drop(behind);
        assert_eq!(
            tree.get(b"k").unwrap(),
            None,
            "dropping writes what is queued"
        );
    }
}
