//! Resident keys: the stock rows kept in memory beside sled ([`Store::keep_resident`]).

use super::*;

/// Resident keys are at most this long past their group (packed inline); longer ones stay in
/// sled only.
pub(super) const RESIDENT_KEY_BYTES_MAX: usize = 16;

/// A key part packed inline: its bytes as one big-endian integer, and its length (keys of
/// other lengths with the same leading bytes stay apart). One integer compare per step.
pub(super) type PackedKey = (u128, u8);

pub(super) fn pack(key: &[u8]) -> Option<PackedKey> {
    let mut bytes = [0u8; RESIDENT_KEY_BYTES_MAX];
    bytes.get_mut(..key.len())?.copy_from_slice(key);
    Some((u128::from_be_bytes(bytes), key.len() as u8))
}

/// Every region key under `prefix`, by partition, grouped by their first `group` bytes (the
/// stock rows of one DC): keys read together sit together in memory.
pub(super) struct Resident {
    pub(super) prefix: Vec<u8>,
    pub(super) group: usize,
    maps: Vec<HashMap<PackedKey, BTreeMap<PackedKey, IVec>>>,
}

impl Resident {
    pub(super) fn load(
        prefix: &[u8],
        group: usize,
        regions: &[Space],
    ) -> Result<Resident, StoreError> {
        let mut resident = Resident {
            prefix: prefix.to_vec(),
            group,
            maps: vec![HashMap::new(); regions.len()],
        };
        for (n, tree) in regions.iter().enumerate() {
            for pair in tree.scan_prefix(prefix) {
                let (key, value) = pair?;
                resident.set(n as u32, &key, Some(&value));
            }
        }
        Ok(resident)
    }

    /// A resident key's group and the rest of it; `None` for any other key.
    pub(super) fn split(&self, key: &[u8]) -> Option<(PackedKey, PackedKey)> {
        if !key.starts_with(&self.prefix) || key.len() < self.group {
            return None;
        }
        let (group, rest) = key.split_at(self.group);
        Some((pack(group)?, pack(rest)?))
    }

    /// `None` when the key is not resident (another prefix, too long): read sled.
    pub(super) fn get(&self, region: u32, key: &[u8]) -> Option<Option<IVec>> {
        let (group, rest) = self.split(key)?;
        let map = self.maps.get(region as usize)?;
        Some(map.get(&group).and_then(|rows| rows.get(&rest)).cloned())
    }

    pub(super) fn set(&mut self, region: u32, key: &[u8], value: Option<&[u8]>) {
        let Some((group, rest)) = self.split(key) else {
            return;
        };
        let Some(map) = self.maps.get_mut(region as usize) else {
            return;
        };
        match value {
            Some(value) => {
                map.entry(group)
                    .or_default()
                    .insert(rest, IVec::from(value));
            }
            None => {
                if let Some(rows) = map.get_mut(&group) {
                    rows.remove(&rest);
                    if rows.is_empty() {
                        map.remove(&group);
                    }
                }
            }
        }
    }

    pub(super) fn len(&self) -> usize {
        self.maps
            .iter()
            .flat_map(HashMap::values)
            .map(BTreeMap::len)
            .sum()
    }
}
