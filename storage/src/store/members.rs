//! Members: which record list holds a given record key ([`Store::keep_members`]).

use super::*;
use crate::records;

/// For every value under one prefix (each a [record list](crate::records)), the hashes of
/// its record keys, so a lookup of one record key names the values that may hold it without
/// reading any. A hash of (tree, record key): SipHash with fixed keys, the same every time in
/// this process. Hashes collide, so a value named may not hold the key after all; the caller
/// reads it and looks. About 28 bytes a record key: 20 in the map, 8 in its value's slot.
pub(super) struct Members {
    pub(super) prefix: Vec<u8>,
    /// Record key hash → the slot of a value that lists it.
    first: HashMap<u64, u32>,
    /// The further slots of a hash that more than one value (or one value twice) lists.
    more: HashMap<u64, Vec<u32>>,
    slots: Vec<Option<Slot>>,
    free: Vec<u32>,
    /// (tree, key) → its slot.
    by_key: HashMap<(usize, Box<[u8]>), u32>,
    members: usize,
}

struct Slot {
    tree: usize,
    key: Box<[u8]>,
    hashes: Vec<u64>,
}

fn member_hash(tree: usize, member: &[u8]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::hash::DefaultHasher::new();
    tree.hash(&mut hasher);
    member.hash(&mut hasher);
    hasher.finish()
}

fn unreadable(tree: usize, key: &[u8], e: records::RecordsError) -> StoreError {
    StoreError::Corrupt(format!("the value of {key:?} in tree {tree}: {e}"))
}

impl Members {
    /// Indexes every value under `prefix` in `trees` (each with its tree id).
    pub(super) fn load<'a>(
        prefix: &[u8],
        trees: impl Iterator<Item = (usize, &'a Space)>,
    ) -> Result<Members, StoreError> {
        let mut members = Members {
            prefix: prefix.to_vec(),
            first: HashMap::new(),
            more: HashMap::new(),
            slots: Vec::new(),
            free: Vec::new(),
            by_key: HashMap::new(),
            members: 0,
        };
        for (tree, space) in trees {
            for pair in space.scan_prefix(prefix) {
                let (key, value) = pair?;
                members.apply(tree, &key, Some(&value))?;
            }
        }
        Ok(members)
    }

    pub(super) fn covers(&self, key: &[u8]) -> bool {
        key.starts_with(&self.prefix)
    }

    /// The keys of the values in `tree` that may list `member`, in key order: a function of
    /// the stored state, whatever slots the history of commits gave them.
    pub(super) fn candidates(&self, tree: usize, member: &[u8]) -> Vec<Vec<u8>> {
        let hash = member_hash(tree, member);
        let Some(&first) = self.first.get(&hash) else {
            return Vec::new();
        };
        let more = self.more.get(&hash).into_iter().flatten().copied();
        let mut keys: Vec<Vec<u8>> = std::iter::once(first)
            .chain(more)
            .filter_map(|s| self.slots[s as usize].as_ref())
            .filter(|slot| slot.tree == tree)
            .map(|slot| slot.key.to_vec())
            .collect();
        keys.sort_unstable();
        keys.dedup();
        keys
    }

    /// A commit's write of a covered key: the value it replaces (if any) leaves the index,
    /// the new one (if any) enters it.
    pub(super) fn apply(
        &mut self,
        tree: usize,
        key: &[u8],
        value: Option<&[u8]>,
    ) -> Result<(), StoreError> {
        // Parsed before anything changes, so a damaged value leaves the index as it was.
        let hashes: Option<Vec<u64>> = value
            .map(|value| {
                records::keys(value)
                    .map(|keys| keys.iter().map(|m| member_hash(tree, m)).collect())
                    .map_err(|e| unreadable(tree, key, e))
            })
            .transpose()?;
        if let Some(slot) = self.by_key.remove(&(tree, Box::from(key))) {
            self.remove_slot(slot);
        }
        let Some(hashes) = hashes else {
            return Ok(());
        };
        let slot = match self.free.pop() {
            Some(slot) => slot,
            None => {
                self.slots.push(None);
                u32::try_from(self.slots.len() - 1)
                    .map_err(|_| StoreError::Config("more than 2^32 record lists indexed".into()))?
            }
        };
        for &hash in &hashes {
            match self.first.entry(hash) {
                std::collections::hash_map::Entry::Vacant(e) => {
                    e.insert(slot);
                }
                std::collections::hash_map::Entry::Occupied(_) => {
                    self.more.entry(hash).or_default().push(slot);
                }
            }
        }
        self.members += hashes.len();
        self.by_key.insert((tree, Box::from(key)), slot);
        self.slots[slot as usize] = Some(Slot {
            tree,
            key: Box::from(key),
            hashes,
        });
        Ok(())
    }

    fn remove_slot(&mut self, slot: u32) {
        let Some(removed) = self.slots[slot as usize].take() else {
            return;
        };
        for hash in &removed.hashes {
            if self.first.get(hash) == Some(&slot) {
                match self.more.get_mut(hash).and_then(|more| more.pop()) {
                    Some(next) => {
                        self.first.insert(*hash, next);
                    }
                    None => {
                        self.first.remove(hash);
                    }
                }
            } else if let Some(more) = self.more.get_mut(hash) {
                if let Some(at) = more.iter().position(|&s| s == slot) {
                    more.swap_remove(at);
                }
            }
            if self.more.get(hash).is_some_and(|more| more.is_empty()) {
                self.more.remove(hash);
            }
        }
        self.members -= removed.hashes.len();
        self.free.push(slot);
    }

    /// Publishes how many record keys are indexed (`ordo_dedupe_ids`: the one prefix a node
    /// indexes is its dedupe lists').
    pub(super) fn publish(&self) {
        ordo_metrics::DEDUPE_IDS.set(self.members as i64);
    }

    /// How many record keys are indexed.
    pub(super) fn len(&self) -> usize {
        self.members
    }

    /// How many values are indexed.
    pub(super) fn lists(&self) -> usize {
        self.by_key.len()
    }
}
