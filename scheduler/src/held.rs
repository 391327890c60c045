//! The held rows of live holds, kept up to date from each epoch's writes, for the node's
//! `ordo_reservations_live` gauge.
//!
//! Every held row of an unswept hold has one due key (`x expires_at id dc sku`, see
//! [`crate::holds`]) in its row's partition; a hold is live while the epoch's time is before
//! its `expires_at`. So the live rows at an epoch are the due keys with an expiry after its
//! time: counted once when the node opens its store, then moved by each epoch's writes of due
//! keys (a key that appears, a key that goes) and by its time (keys whose expiry it passed).
//! Nothing is counted when the gauge is read, no store is read but for the keys an epoch
//! writes, and a lapsed hold the sweep has not reached yet is not live. Outside execution:
//! nothing here decides anything.

use std::collections::BTreeMap;

use ordo_storage::{Part, Store, StoreError, Write};

use crate::holds::key::parse_due;
use crate::keys;

/// Due keys by expiry, and what the last epoch's time makes of them.
#[derive(Debug, Default)]
pub struct HeldRows {
    /// Unswept held rows by `expires_at`.
    by_expiry: BTreeMap<u64, u64>,
    /// All of them.
    total: u64,
    /// Those with `expires_at <= now`: lapsed, whether swept yet or not.
    lapsed: u64,
    /// The time of the last epoch applied.
    now_ms: u64,
}

impl HeldRows {
    /// Counts the due keys `store` holds, at the time of its applied epoch.
    /// The keys are read a page at a time: a million holds never sit in memory at once.
    pub fn load(store: &Store) -> Result<Self, StoreError> {
        const PAGE_KEYS: usize = 65_536;
        let mut rows = HeldRows::default();
        let end = [keys::HOLD_DUE + 1];
        for n in 0..store.partitions() {
            let mut start = vec![keys::HOLD_DUE];
            loop {
                let page = store.range(Part::Region(n), &start, &end, PAGE_KEYS)?;
                for (key, _) in &page {
                    if let Some((expires_at, ..)) = parse_due(key) {
                        rows.add(expires_at);
                    }
                }
                match page.last() {
                    Some((last, _)) if page.len() == PAGE_KEYS => {
                        start = last.to_vec();
                        start.push(0);
                    }
                    _ => break,
                }
            }
        }
        rows.advance(store.applied_time_ms());
        Ok(rows)
    }

    /// Takes in an epoch's writes before `store` commits them (whether a written key was
    /// there before is read from the store as it stands).
    pub fn absorb(
        &mut self,
        store: &Store,
        writes: &BTreeMap<Part, Vec<Write>>,
    ) -> Result<(), StoreError> {
        for (part, writes) in writes {
            if *part == Part::Global {
                continue;
            }
            for (key, value) in writes {
                let Some((expires_at, ..)) = parse_due(key) else {
                    continue;
                };
                let existed = store.get(*part, key)?.is_some();
                match (existed, value.is_some()) {
                    (false, true) => self.add(expires_at),
                    (true, false) => self.remove(expires_at),
                    _ => {}
                }
            }
        }
        Ok(())
    }

    /// Moves to the time of the epoch just applied.
    pub fn advance(&mut self, now_ms: u64) {
        if now_ms > self.now_ms {
            let passed: u64 = self
                .by_expiry
                .range(self.now_ms + 1..=now_ms)
                .map(|(_, n)| n)
                .sum();
            self.lapsed += passed;
            self.now_ms = now_ms;
        }
    }

    /// Held rows of live holds at the last epoch's time.
    pub fn live(&self) -> u64 {
        self.total - self.lapsed
    }

    fn add(&mut self, expires_at: u64) {
        *self.by_expiry.entry(expires_at).or_default() += 1;
        self.total += 1;
        if expires_at <= self.now_ms {
            self.lapsed += 1;
        }
    }

    fn remove(&mut self, expires_at: u64) {
        if let Some(n) = self.by_expiry.get_mut(&expires_at) {
            *n -= 1;
            if *n == 0 {
                self.by_expiry.remove(&expires_at);
            }
            self.total -= 1;
            if expires_at <= self.now_ms {
                self.lapsed -= 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_rows_follow_writes_and_time() {
        let mut rows = HeldRows::default();
        rows.advance(100);
        for expires_at in [150, 150, 300] {
            rows.add(expires_at);
        }
        assert_eq!(rows.live(), 3);
        rows.advance(150);
        assert_eq!(rows.live(), 1, "a hold is live only before its expiry");
        rows.remove(150);
        assert_eq!(
            rows.live(),
            1,
            "sweeping a lapsed hold changes nothing live"
        );
        rows.add(120);
        assert_eq!(rows.live(), 1, "a key written already lapsed is not live");
        rows.remove(300);
        rows.advance(1_000);
        assert_eq!((rows.live(), rows.total), (0, 2));
    }
}
