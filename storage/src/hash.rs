//! The running state hash: BLAKE3, chained epoch by epoch, per partition.
//!
//! Each partition's hash absorbs, at every epoch in which the partition changed, the epoch
//! number and the partition's writes in execution order. The state hash of an epoch combines
//! the epoch, its sequencer time and every partition's chained hash. Two replicas that applied
//! the same log agree on it at every epoch; a disagreement means they diverged.

use serde::{Deserialize, Serialize};

use crate::store::{Part, Write};

/// A 32-byte BLAKE3 digest.
pub type StateHash = [u8; 32];

/// The chained hash of every partition (index 0 is the global partition, then regions).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HashChain {
    parts: Vec<StateHash>,
}

impl HashChain {
    pub fn new(partitions: u32) -> Self {
        Self {
            parts: vec![[0u8; 32]; partitions as usize + 1],
        }
    }

    fn slot(part: Part) -> usize {
        match part {
            Part::Global => 0,
            Part::Region(n) => n as usize + 1,
        }
    }

    /// Folds one epoch's writes to `part` into its chained hash.
    pub fn absorb(&mut self, part: Part, epoch: u64, writes: &[Write]) {
        let slot = Self::slot(part);
        let mut hasher = blake3::Hasher::new();
        hasher.update(&self.parts[slot]);
        hasher.update(&epoch.to_le_bytes());
        for (key, value) in writes {
            hasher.update(&(key.len() as u64).to_le_bytes());
            hasher.update(key);
            match value {
                Some(value) => {
                    hasher.update(&[1]);
                    hasher.update(&(value.len() as u64).to_le_bytes());
                    hasher.update(value);
                }
                None => {
                    hasher.update(&[0]);
                }
            }
        }
        self.parts[slot] = *hasher.finalize().as_bytes();
    }

    /// The state hash at `epoch`: the epoch, its time and every partition's chained hash.
    pub fn state_hash(&self, epoch: u64, time_ms: u64) -> StateHash {
        let mut hasher = blake3::Hasher::new();
        hasher.update(b"ordo-state-v1");
        hasher.update(&epoch.to_le_bytes());
        hasher.update(&time_ms.to_le_bytes());
        for part in &self.parts {
            hasher.update(part);
        }
        *hasher.finalize().as_bytes()
    }
}

/// Lower-case hex of a hash, for humans and JSON.
pub fn hex(hash: &[u8]) -> String {
    hash.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_writes_same_hash_and_order_matters() {
        let w1: Vec<Write> = vec![(b"a".to_vec(), Some(b"1".to_vec())), (b"b".to_vec(), None)];
        let w2: Vec<Write> = vec![(b"b".to_vec(), None), (b"a".to_vec(), Some(b"1".to_vec()))];
        let mut x = HashChain::new(2);
        let mut y = HashChain::new(2);
        x.absorb(Part::Region(1), 1, &w1);
        y.absorb(Part::Region(1), 1, &w1);
        assert_eq!(x.state_hash(1, 5), y.state_hash(1, 5));
        let mut z = HashChain::new(2);
        z.absorb(Part::Region(1), 1, &w2);
        assert_ne!(x.state_hash(1, 5), z.state_hash(1, 5));
        // The same writes in another partition are another state.
        let mut p = HashChain::new(2);
        p.absorb(Part::Region(0), 1, &w1);
        assert_ne!(x.state_hash(1, 5), p.state_hash(1, 5));
    }
}
