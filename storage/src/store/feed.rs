//! The change feed's keyspace: retention, reads, and the writes each commit adds.

use super::*;

/// How much of the change feed a node keeps: an epoch's events are dropped once they are more
/// than `epochs` epochs old, or, oldest first, while the feed holds more than `bytes`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FeedRetention {
    pub epochs: u64,
    pub bytes: u64,
}

impl Default for FeedRetention {
    fn default() -> Self {
        Self {
            epochs: 1_000_000,
            bytes: 256 * 1024 * 1024,
        }
    }
}

/// At most this many feed entries are dropped by one commit (each commit adds at most one, so
/// pruning keeps up; after the retention shrinks it catches up over a few commits).
pub const FEED_PRUNE_PER_COMMIT_MAX: usize = 64;

/// A read of the change feed ([`Store::feed_read`]).
#[derive(Debug, Default)]
pub struct FeedPage {
    /// The oldest epoch whose events are kept. A read from before it returned nothing.
    pub start: u64,
    /// The epoch applied when the page was read.
    pub applied: u64,
    /// Every epoch from the read's `from` through this one is in `entries` or had no events.
    /// Below `from - 1` when nothing newer was applied (or `from` is before `start`).
    pub through: u64,
    /// `(epoch, encoded events)` in epoch order.
    pub entries: Vec<(u64, IVec)>,
}

/// Where the feed stands; changed under the epoch gate.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct FeedState {
    /// Every epoch from here to the applied one has its events in the feed (or had none).
    pub(super) start: u64,
    /// Bytes of the values in the feed tree.
    pub(super) bytes: u64,
    pub(super) retention: FeedRetention,
}

/// A feed key's epoch.
pub(super) fn feed_epoch(key: &[u8]) -> Result<u64, StoreError> {
    let bytes =
        <[u8; 8]>::try_from(key).map_err(|_| StoreError::Corrupt(format!("feed key {key:?}")))?;
    Ok(u64::from_be_bytes(bytes))
}

impl Store {
    /// Sets how much of the change feed this node keeps (from the next commit on).
    pub fn set_feed_retention(&self, retention: FeedRetention) {
        self.feed.lock().expect("feed lock").retention = retention;
    }

    /// The oldest epoch whose events the feed keeps.
    pub fn feed_start(&self) -> u64 {
        self.feed.lock().expect("feed lock").start
    }

    /// Bytes of events the feed holds.
    pub fn feed_bytes(&self) -> u64 {
        self.feed.lock().expect("feed lock").bytes
    }

    /// The feed's entries from epoch `from` on, up to the applied epoch, at most `epochs_max`
    /// entries and about `bytes_max` bytes (at least one entry when there is one).
    ///
    /// It takes no lock a commit waits for, so readers never delay epochs. It is still exact:
    /// an epoch's entry is written with the epoch, so every entry up to the applied epoch read
    /// first is there; and a commit that prunes moves the start before it removes entries, so
    /// if the start read last is not past `from`, nothing this read needed was removed while it
    /// ran (otherwise the page is empty and its `start` says why).
    pub fn feed_read(
        &self,
        from: u64,
        epochs_max: usize,
        bytes_max: usize,
    ) -> Result<FeedPage, StoreError> {
        let applied = self.applied_epoch();
        let start = self.feed_start();
        let from = from.max(1);
        let mut page = FeedPage {
            start,
            applied,
            through: from - 1,
            entries: Vec::new(),
        };
        if from < start || from > applied {
            return Ok(page);
        }
        page.through = applied;
        let mut bytes = 0usize;
        for kv in self.feed_tree.range(&from.to_be_bytes(), None) {
            let (key, value) = kv?;
            let epoch = feed_epoch(&key)?;
            if epoch > applied {
                break;
            }
            bytes += value.len();
            page.entries.push((epoch, value));
            if page.entries.len() >= epochs_max || bytes >= bytes_max {
                page.through = epoch;
                break;
            }
        }
        let start = self.feed_start();
        if from < start {
            return Ok(FeedPage {
                start,
                applied,
                through: from - 1,
                entries: Vec::new(),
            });
        }
        Ok(page)
    }

    /// The feed's writes for epoch `epoch`: its entry, and the entries retention drops, with
    /// the new start in `meta`; returns the feed after it, and how many of the oldest
    /// `entries` it dropped. Runs under the epoch gate (nothing else changes the feed).
    pub(super) fn feed_commit(
        &self,
        feed: &FeedState,
        entries: &VecDeque<(u64, u64)>,
        epoch: u64,
        entry: Option<&[u8]>,
        batch: &mut Staged,
    ) -> (FeedState, usize) {
        let mut next = *feed;
        if let Some(entry) = entry {
            self.feed_tree.put(batch, &epoch.to_be_bytes(), entry);
            next.bytes += entry.len() as u64;
        }
        let retention = feed.retention;
        // Keep the newest `epochs` epochs, this one included.
        let mut start = feed
            .start
            .max((epoch + 1).saturating_sub(retention.epochs.max(1)));
        let mut pruned = 0;
        for &(old, bytes) in entries.iter().take(FEED_PRUNE_PER_COMMIT_MAX) {
            if old >= epoch || (old >= start && next.bytes <= retention.bytes) {
                break;
            }
            self.feed_tree.delete(batch, &old.to_be_bytes());
            next.bytes = next.bytes.saturating_sub(bytes);
            start = start.max(old + 1);
            pruned += 1;
        }
        if start != feed.start {
            self.meta.put(batch, META_FEED_START, encode(&start));
            next.start = start;
        }
        (next, pruned)
    }
}
