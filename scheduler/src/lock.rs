//! A deterministic lock manager (Calvin): locks are requested in log order and granted in
//! the order they were requested, so two transactions that touch the same key always run in
//! log order, while transactions with disjoint keys are free to run in any order, or at once.
//! There are no deadlocks: every transaction asks for all its locks up front, in log order.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// What a transaction locks in one partition.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum LockKey {
    Stock {
        dc: u32,
        sku: u32,
    },
    Dedupe(String),
    Kv(String),
    /// A reservation, in every partition a transaction on it touches.
    Reservation(u64),
    /// A cart's pointer to its latest reservation, in the cart's partition.
    Cart(String),
    /// A subscription (SKU, kind byte, user), in the SKU's subscription partition.
    Subscription(u32, u8, String),
}

/// Per-key FIFO queues of transaction sequence numbers (their index in the epoch batch).
#[derive(Default)]
pub struct LockManager {
    queues: BTreeMap<LockKey, VecDeque<usize>>,
    /// Locks each waiting transaction still lacks.
    missing: BTreeMap<usize, usize>,
    /// Keys each transaction holds or waits for, to release them.
    held: BTreeMap<usize, Vec<LockKey>>,
}

impl LockManager {
    /// Requests every key for `seq`. Must be called in increasing `seq` order. Returns whether
    /// all locks were granted at once.
    pub fn request(&mut self, seq: usize, keys: Vec<LockKey>) -> bool {
        let keys: Vec<LockKey> = keys
            .into_iter()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let mut missing = 0;
        for key in &keys {
            let queue = self.queues.entry(key.clone()).or_default();
            debug_assert!(
                queue.back().is_none_or(|&last| last < seq),
                "locks requested out of log order"
            );
            if !queue.is_empty() {
                missing += 1;
            }
            queue.push_back(seq);
        }
        self.held.insert(seq, keys);
        if missing > 0 {
            self.missing.insert(seq, missing);
        }
        missing == 0
    }

    /// Releases every lock of `seq` and returns the transactions that now hold all their locks.
    pub fn release(&mut self, seq: usize) -> Vec<usize> {
        let mut ready = Vec::new();
        for key in self.held.remove(&seq).unwrap_or_default() {
            let queue = self.queues.get_mut(&key).expect("held key has a queue");
            let head = queue.pop_front();
            assert_eq!(head, Some(seq), "released a lock that was not granted");
            match queue.front() {
                Some(&next) => {
                    let missing = self.missing.get_mut(&next).expect("waiter is counted");
                    *missing -= 1;
                    if *missing == 0 {
                        self.missing.remove(&next);
                        ready.push(next);
                    }
                }
                None => {
                    self.queues.remove(&key);
                }
            }
        }
        ready
    }

    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stock(dc: u32, sku: u32) -> LockKey {
        LockKey::Stock { dc, sku }
    }

    #[test]
    fn conflicting_transactions_run_in_log_order_and_others_at_once() {
        let mut lm = LockManager::default();
        assert!(lm.request(0, vec![stock(1, 1)]));
        assert!(!lm.request(1, vec![stock(1, 1), stock(1, 2)]));
        assert!(
            lm.request(2, vec![stock(2, 2)]),
            "disjoint keys are granted at once"
        );
        assert!(!lm.request(3, vec![stock(1, 2)]));
        assert_eq!(lm.release(2), Vec::<usize>::new());
        assert_eq!(lm.release(0), vec![1]);
        assert_eq!(lm.release(1), vec![3]);
        assert_eq!(lm.release(3), Vec::<usize>::new());
        assert!(lm.is_empty());
    }

    #[test]
    fn duplicate_keys_in_one_request_count_once() {
        let mut lm = LockManager::default();
        assert!(lm.request(0, vec![stock(1, 1), stock(1, 1)]));
        assert!(!lm.request(1, vec![stock(1, 1)]));
        assert_eq!(lm.release(0), vec![1]);
    }
}
