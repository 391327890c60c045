//! Known keys: which request ids exist, as counts per hash ([`Store::keep_known`]).

use super::*;

/// Which region keys under one prefix exist: a count per 64-bit hash of (region, key), so a
/// read of a key whose hash has no count is answered "absent" without reaching sled (a request
/// id never used before: nearly every order's dedupe lookup). A count is exact: a commit
/// adds one only for a key that did not exist and removes one only for a key that did,
/// reading the key first when the counts alone cannot say. Keys that share a hash share a
/// count, so a hash with a count may still name an absent key: then sled answers.
pub(super) struct Known {
    pub(super) prefix: Vec<u8>,
    counts: HashMap<u64, u32>,
}

/// A key's hash in [`Known`]: SipHash with fixed keys, the same every time in this process.
fn known_hash(region: u32, key: &[u8]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::hash::DefaultHasher::new();
    region.hash(&mut hasher);
    key.hash(&mut hasher);
    hasher.finish()
}

impl Known {
    pub(super) fn load(prefix: &[u8], regions: &[Space]) -> Result<Known, StoreError> {
        let mut known = Known {
            prefix: prefix.to_vec(),
            counts: HashMap::new(),
        };
        for (n, tree) in regions.iter().enumerate() {
            for pair in tree.scan_prefix(prefix) {
                let (key, _) = pair?;
                *known.counts.entry(known_hash(n as u32, &key)).or_default() += 1;
            }
        }
        Ok(known)
    }

    pub(super) fn covers(&self, part: Part, key: &[u8]) -> Option<u32> {
        match part {
            Part::Region(n) if key.starts_with(&self.prefix) => Some(n),
            _ => None,
        }
    }

    /// Whether the key may exist (`false`: it does not).
    pub(super) fn may_hold(&self, region: u32, key: &[u8]) -> bool {
        self.counts.contains_key(&known_hash(region, key))
    }

    /// Counts one commit's write of a covered key; `existed` says whether the key existed
    /// before it, and is asked only when the counts cannot tell.
    pub(super) fn apply(
        &mut self,
        region: u32,
        key: &[u8],
        written: bool,
        existed: impl FnOnce() -> Result<bool, StoreError>,
    ) -> Result<(), StoreError> {
        let hash = known_hash(region, key);
        match (self.counts.get(&hash).copied(), written) {
            (None, true) => {
                self.counts.insert(hash, 1);
            }
            (None, false) => {}
            (Some(count), true) => {
                if !existed()? {
                    self.counts.insert(hash, count + 1);
                }
            }
            (Some(count), false) => {
                if existed()? {
                    if count <= 1 {
                        self.counts.remove(&hash);
                    } else {
                        self.counts.insert(hash, count - 1);
                    }
                }
            }
        }
        Ok(())
    }

    pub(super) fn len(&self) -> usize {
        self.counts.values().map(|&c| c as usize).sum()
    }
}
