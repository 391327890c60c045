//! Packed keys: the stock rows, held in memory as the state itself and in sled as chunks.
//!
//! A store packs one family of region keys ([`Store::keep_packed`](crate::Store::keep_packed)):
//! keys of one length under one prefix, with values of one length (the scheduler's stock
//! rows: `s`, DC, SKU → 16 bytes). They are not sled keys. In memory they live in blocks: the
//! rows of one group (one DC) whose rest (the SKU) differs only in its low [`BLOCK_BITS`]
//! bits, as one sorted byte array of `rest ‖ value` rows, so a row costs its own bytes plus a
//! share of its block's, with no allocation of its own. In sled each block is one chunk, a key
//! of the packed keyspace (`region ‖ group ‖ block`) whose value is the block's bytes, written
//! by the commits that change the block (behind the epochs, like every other write): a
//! million stock rows are about 31,000 sled keys instead of a million, and loading them at
//! start reads whole chunks.
//!
//! Everything that reads a region keyspace sees packed rows as if they were sled's: point
//! reads, range reads in either direction (which merge pages of the table into sled's
//! iterator), views, exports and their captures. A packed key never has a sled row as well.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock, RwLock};

use serde::{Deserialize, Serialize};
use sled::IVec;

use crate::StoreError;

/// A block holds the rows of one group whose rest differs only in these low bits: 32 SKUs of
/// one DC. Smaller blocks cost more per row in memory; larger ones more bytes per chunk write.
pub const BLOCK_BITS: u32 = 5;

/// Rows a range read copies under the table's lock at a time, at most; its first page is
/// [`FIRST_PAGE_ROWS`] (a read of a few rows copies a few), and each next one twice the last.
pub(crate) const PAGE_ROWS: usize = 1_024;
pub(crate) const FIRST_PAGE_ROWS: usize = 16;

/// Which keys are packed, and their shape.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackSpec {
    /// Every packed key starts with these bytes; every region key that does is packed.
    pub prefix: Vec<u8>,
    /// The bytes of a key that name its group, prefix included (a stock row's `s` and DC).
    pub group: usize,
    /// The length of every packed key.
    pub key_len: usize,
    /// The length of every packed value.
    pub value_len: usize,
}

/// A block: (group, rest >> [`BLOCK_BITS`]).
pub(crate) type BlockId = (u64, u64);

/// A number from up to 8 big-endian bytes.
fn be_u64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0, |n, &b| (n << 8) | u64::from(b))
}

impl PackSpec {
    pub(crate) fn check(&self) -> Result<(), StoreError> {
        let fits = !self.prefix.is_empty()
            && self.prefix.len() <= self.group
            && self.group - self.prefix.len() <= 8
            && self.key_len > self.group
            && self.key_len - self.group <= 8
            && (1..=256).contains(&self.value_len);
        match fits {
            true => Ok(()),
            false => Err(StoreError::Config(format!(
                "packed keys need a prefix, at most 8 group bytes after it, 1 to 8 bytes after \
                 the group and 1 to 256 value bytes: {self:?}"
            ))),
        }
    }

    fn rest(&self) -> usize {
        self.key_len - self.group
    }

    /// Bytes of one row in a block: the key's rest, then the value.
    fn stride(&self) -> usize {
        self.rest() + self.value_len
    }

    pub(crate) fn covers(&self, key: &[u8]) -> bool {
        key.starts_with(&self.prefix)
    }

    /// The block of a key of the packed length.
    fn block_of(&self, key: &[u8]) -> BlockId {
        (
            be_u64(&key[self.prefix.len()..self.group]),
            be_u64(&key[self.group..self.key_len]) >> BLOCK_BITS,
        )
    }

    /// `bound` cut or padded with `pad` to the packed length.
    fn padded(&self, bound: &[u8], pad: u8) -> Vec<u8> {
        let mut key = bound[..bound.len().min(self.key_len)].to_vec();
        key.resize(self.key_len, pad);
        key
    }

    /// The first block that can hold a key at or after `start`.
    fn first_block(&self, start: &[u8]) -> BlockId {
        match start.starts_with(&self.prefix) {
            true => self.block_of(&self.padded(start, 0)),
            false => (0, 0),
        }
    }

    /// The last block that can hold a key before `end` (`None`: to the keyspace's end).
    fn last_block(&self, end: Option<&[u8]>) -> BlockId {
        match end {
            Some(end) if end.starts_with(&self.prefix) => self.block_of(&self.padded(end, 0xFF)),
            _ => (u64::MAX, u64::MAX),
        }
    }

    /// Whether some packed key can lie in `[start, end)`.
    pub(crate) fn meets(&self, start: &[u8], end: Option<&[u8]>) -> bool {
        let first = self.padded(&self.prefix, 0);
        let last = self.padded(&self.prefix, 0xFF);
        last.as_slice() >= start && end.is_none_or(|end| first.as_slice() < end)
    }

    /// The full key of a row of group `group`, into `key`, which is cleared first (a buffer a
    /// loop reuses).
    fn key_into(&self, group: u64, rest: &[u8], key: &mut Vec<u8>) {
        key.clear();
        key.extend_from_slice(&self.prefix);
        let group_bytes = self.group - self.prefix.len();
        key.extend_from_slice(&group.to_be_bytes()[8 - group_bytes..]);
        key.extend_from_slice(rest);
    }
}

/// The sled key of a block's chunk in the packed keyspace.
pub(crate) fn chunk_key(region: u32, (group, block): BlockId) -> [u8; 20] {
    let mut key = [0u8; 20];
    key[..4].copy_from_slice(&region.to_be_bytes());
    key[4..12].copy_from_slice(&group.to_be_bytes());
    key[12..].copy_from_slice(&block.to_be_bytes());
    key
}

fn parse_chunk_key(key: &[u8]) -> Result<(u32, BlockId), StoreError> {
    let bad = || StoreError::Corrupt(format!("packed chunk key {key:?}"));
    if key.len() != 20 {
        return Err(bad());
    }
    let region = u32::from_be_bytes(key[..4].try_into().map_err(|_| bad())?);
    let group = u64::from_be_bytes(key[4..12].try_into().map_err(|_| bad())?);
    let block = u64::from_be_bytes(key[12..].try_into().map_err(|_| bad())?);
    Ok((region, (group, block)))
}

/// Every packed row of a store, by region and block.
pub(crate) struct Table {
    spec: PackSpec,
    regions: Vec<BTreeMap<BlockId, Vec<u8>>>,
    rows: usize,
}

impl Table {
    pub(crate) fn new(spec: PackSpec, partitions: u32) -> Table {
        Table {
            spec,
            regions: (0..partitions).map(|_| BTreeMap::new()).collect(),
            rows: 0,
        }
    }

    pub(crate) fn spec(&self) -> &PackSpec {
        &self.spec
    }

    pub(crate) fn len(&self) -> usize {
        self.rows
    }

    pub(crate) fn get(&self, region: u32, key: &[u8]) -> Option<IVec> {
        if key.len() != self.spec.key_len {
            return None;
        }
        let rows = self
            .regions
            .get(region as usize)?
            .get(&self.spec.block_of(key))?;
        let row = find_in(rows, &key[self.spec.group..], self.spec.stride()).ok()?;
        let at = row * self.spec.stride() + self.spec.rest();
        Some(IVec::from(&rows[at..at + self.spec.value_len]))
    }

    /// Whether a write of `value` to `key` fits the table; what does not is an invariant
    /// error, refused before anything is written.
    pub(crate) fn check_write(&self, key: &[u8], value: Option<&[u8]>) -> Result<(), StoreError> {
        let fits = key.len() == self.spec.key_len
            && value.is_none_or(|value| value.len() == self.spec.value_len);
        match fits {
            true => Ok(()),
            false => Err(StoreError::Invariant(format!(
                "a write of a packed key {key:?} with {:?} bytes does not fit the packed shape \
                 ({} key bytes, {} value bytes)",
                value.map(<[u8]>::len),
                self.spec.key_len,
                self.spec.value_len
            ))),
        }
    }

    /// Writes (or, with `None`, removes) one row; returns its block. Call
    /// [`Table::check_write`] first.
    pub(crate) fn set(&mut self, region: u32, key: &[u8], value: Option<&[u8]>) -> BlockId {
        let id = self.spec.block_of(key);
        let stride = self.spec.stride();
        let rest = &key[self.spec.group..];
        let Some(map) = self.regions.get_mut(region as usize) else {
            return id;
        };
        let rows = map.entry(id).or_default();
        let (at, found) = match find_in(rows, rest, stride) {
            Ok(row) => (row * stride, true),
            Err(row) => (row * stride, false),
        };
        match (value, found) {
            (Some(value), true) => {
                rows[at + rest.len()..at + stride].copy_from_slice(value);
            }
            (Some(value), false) => {
                // Grown by one row exactly: most blocks are written once, when loaded.
                rows.reserve_exact(stride);
                rows.splice(at..at, rest.iter().chain(value).copied());
                self.rows += 1;
            }
            (None, true) => {
                rows.drain(at..at + stride);
                rows.shrink_to_fit();
                self.rows -= 1;
            }
            (None, false) => {}
        }
        if rows.is_empty() {
            map.remove(&id);
        }
        id
    }

    /// A block's bytes (`None`: it holds no row).
    pub(crate) fn block(&self, region: u32, id: BlockId) -> Option<&[u8]> {
        self.regions
            .get(region as usize)?
            .get(&id)
            .map(Vec::as_slice)
    }

    /// Adds a block read from its chunk; the block must be new.
    pub(crate) fn load_chunk(&mut self, key: &[u8], bytes: &[u8]) -> Result<(), StoreError> {
        let (region, id) = parse_chunk_key(key)?;
        let stride = self.spec.stride();
        let rest = self.spec.rest();
        let bad = |what: &str| StoreError::Corrupt(format!("packed chunk {key:?}: {what}"));
        if bytes.is_empty() || !bytes.len().is_multiple_of(stride) {
            return Err(bad("not whole rows"));
        }
        let mut last: Option<&[u8]> = None;
        for row in bytes.chunks(stride) {
            let row_rest = &row[..rest];
            if be_u64(row_rest) >> BLOCK_BITS != id.1 || last.is_some_and(|l| l >= row_rest) {
                return Err(bad("rows out of order or outside the block"));
            }
            last = Some(row_rest);
        }
        let map = self
            .regions
            .get_mut(region as usize)
            .ok_or_else(|| bad("no such region"))?;
        if map.insert(id, bytes.to_vec()).is_some() {
            return Err(bad("a block twice"));
        }
        self.rows += bytes.len() / stride;
        Ok(())
    }

    /// Every block of `region` with its chunk key, in key order.
    pub(crate) fn chunks(&self, region: u32) -> impl Iterator<Item = ([u8; 20], &[u8])> {
        self.regions
            .get(region as usize)
            .into_iter()
            .flatten()
            .map(move |(id, rows)| (chunk_key(region, *id), rows.as_slice()))
    }

    /// At most `limit` rows of `region` with `start <= key < end` (no `end`: to the
    /// keyspace's end), ascending or descending, and past `after` in that direction.
    pub(crate) fn range(
        &self,
        region: u32,
        (start, end): (&[u8], Option<&[u8]>),
        after: Option<&[u8]>,
        descending: bool,
        limit: usize,
    ) -> Vec<(IVec, IVec)> {
        let mut out = Vec::new();
        let Some(map) = self.regions.get(region as usize) else {
            return out;
        };
        let spec = &self.spec;
        if limit == 0 || !spec.meets(start, end) {
            return out;
        }
        let (mut first, mut last) = (spec.first_block(start), spec.last_block(end));
        match (after, descending) {
            (Some(after), false) => first = first.max(spec.first_block(after)),
            (Some(after), true) => last = last.min(spec.last_block(Some(after))),
            (None, _) => {}
        }
        if first > last {
            return out;
        }
        let stride = spec.stride();
        let wanted = |key: &[u8]| {
            key >= start
                && end.is_none_or(|end| key < end)
                && after.is_none_or(|after| match descending {
                    false => key > after,
                    true => key < after,
                })
        };
        // A block's rows are sorted and `wanted` holds on an interval of keys, so a block
        // whose first and last rows are wanted is wanted whole (the common case: a long
        // read checks two keys a block, not every one).
        let mut key = Vec::with_capacity(spec.key_len);
        let mut take = |out: &mut Vec<(IVec, IVec)>, (group, _): &BlockId, rows: &Vec<u8>| {
            let mut whole = true;
            let first = rows.get(..stride);
            let last = rows.len().checked_sub(stride).map(|at| &rows[at..]);
            for row in [first, last].into_iter().flatten() {
                spec.key_into(*group, &row[..spec.rest()], &mut key);
                whole &= wanted(&key);
            }
            let mut each = |row: &[u8]| {
                spec.key_into(*group, &row[..spec.rest()], &mut key);
                if whole || wanted(&key) {
                    out.push((IVec::from(key.as_slice()), IVec::from(&row[spec.rest()..])));
                }
            };
            match descending {
                false => rows.chunks(stride).for_each(&mut each),
                true => rows.chunks(stride).rev().for_each(&mut each),
            }
        };
        let blocks = map.range(first..=last);
        let blocks: Box<dyn Iterator<Item = _>> = match descending {
            false => Box::new(blocks),
            true => Box::new(blocks.rev()),
        };
        for (id, rows) in blocks {
            take(&mut out, id, rows);
            if out.len() >= limit {
                break;
            }
        }
        out.truncate(limit);
        out
    }
}

/// Where a row with this rest is, or would go, in a block's rows.
fn find_in(rows: &[u8], rest: &[u8], stride: usize) -> Result<usize, usize> {
    let (mut lo, mut hi) = (0, rows.len() / stride);
    while lo < hi {
        let mid = (lo + hi) / 2;
        match rows[mid * stride..mid * stride + rest.len()].cmp(rest) {
            std::cmp::Ordering::Less => lo = mid + 1,
            std::cmp::Ordering::Greater => hi = mid,
            std::cmp::Ordering::Equal => return Ok(mid),
        }
    }
    Err(lo)
}

/// A store's packed keys: their shape once packing is on, and the table. The spec is set
/// after the table is in place, so a reader that sees the spec finds the table.
#[derive(Default)]
pub(crate) struct Packed {
    pub(crate) spec: OnceLock<PackSpec>,
    pub(crate) table: RwLock<Option<Table>>,
}

impl Packed {
    pub(crate) fn covers(&self, key: &[u8]) -> bool {
        self.spec.get().is_some_and(|spec| spec.covers(key))
    }

    pub(crate) fn meets(&self, start: &[u8], end: Option<&[u8]>) -> bool {
        self.spec.get().is_some_and(|spec| spec.meets(start, end))
    }

    pub(crate) fn get(&self, region: u32, key: &[u8]) -> Option<IVec> {
        let table = self.table.read().expect("packed lock");
        table.as_ref().and_then(|t| t.get(region, key))
    }
}

/// The packed rows of a range of one region, read a page at a time, each page under a short
/// hold of the table's lock. Like sled's iterators it never repeats a key or goes back:
/// each page starts past the last key of the one before.
pub(crate) struct Pages {
    packed: Arc<Packed>,
    region: u32,
    start: Vec<u8>,
    end: Option<Vec<u8>>,
    descending: bool,
    after: Option<Vec<u8>>,
    page: std::vec::IntoIter<(IVec, IVec)>,
    /// Rows the next page asks for.
    next_rows: usize,
    done: bool,
}

impl Pages {
    pub(crate) fn new(
        packed: Arc<Packed>,
        region: u32,
        (start, end): (&[u8], Option<&[u8]>),
        descending: bool,
    ) -> Pages {
        Pages {
            packed,
            region,
            start: start.to_vec(),
            end: end.map(<[u8]>::to_vec),
            descending,
            after: None,
            page: Vec::new().into_iter(),
            next_rows: FIRST_PAGE_ROWS,
            done: false,
        }
    }
}

impl Iterator for Pages {
    type Item = (IVec, IVec);

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(pair) = self.page.next() {
                return Some(pair);
            }
            if self.done {
                return None;
            }
            let page = {
                let table = self.packed.table.read().expect("packed lock");
                table.as_ref().map_or_else(Vec::new, |t| {
                    t.range(
                        self.region,
                        (&self.start, self.end.as_deref()),
                        self.after.as_deref(),
                        self.descending,
                        self.next_rows,
                    )
                })
            };
            self.done = page.len() < self.next_rows;
            self.next_rows = (self.next_rows * 2).min(PAGE_ROWS);
            self.after = page.last().map(|(key, _)| key.to_vec());
            self.page = page.into_iter();
        }
    }
}

/// Two iterators over disjoint keys, each in key order (or descending), as one.
pub(crate) struct Interleave<I: Iterator<Item = sled::Result<(IVec, IVec)>>> {
    sled: std::iter::Peekable<I>,
    packed: std::iter::Peekable<Pages>,
    descending: bool,
}

impl<I: Iterator<Item = sled::Result<(IVec, IVec)>>> Interleave<I> {
    pub(crate) fn new(sled: I, packed: Pages, descending: bool) -> Self {
        Interleave {
            sled: sled.peekable(),
            packed: packed.peekable(),
            descending,
        }
    }
}

impl<I: Iterator<Item = sled::Result<(IVec, IVec)>>> Iterator for Interleave<I> {
    type Item = sled::Result<(IVec, IVec)>;

    fn next(&mut self) -> Option<Self::Item> {
        let sled_first = match (self.sled.peek(), self.packed.peek()) {
            (None, None) => return None,
            (Some(_), None) | (Some(Err(_)), _) => true,
            (None, Some(_)) => false,
            (Some(Ok((a, _))), Some((b, _))) => (a < b) != self.descending,
        };
        match sled_first {
            true => self.sled.next(),
            false => self.packed.next().map(Ok),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> PackSpec {
        PackSpec {
            prefix: b"s".to_vec(),
            group: 5,
            key_len: 9,
            value_len: 2,
        }
    }

    fn key(dc: u32, sku: u32) -> Vec<u8> {
        let mut k = b"s".to_vec();
        k.extend_from_slice(&dc.to_be_bytes());
        k.extend_from_slice(&sku.to_be_bytes());
        k
    }

    #[test]
    fn rows_read_back_in_every_direction_from_any_bound() {
        let mut table = Table::new(spec(), 2);
        let mut model = BTreeMap::new();
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..3_000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let k = key((seed % 5) as u32 * 0x0101_0101, (seed >> 8) as u32 % 200);
            let value = [(seed >> 32) as u8, 7];
            let write = !(seed >> 40).is_multiple_of(4);
            let value = write.then_some(&value[..]);
            table.check_write(&k, value).unwrap();
            table.set(1, &k, value);
            match value {
                Some(v) => model.insert(k, v.to_vec()),
                None => model.remove(&k),
            };
        }
        assert_eq!(table.len(), model.len());
        for (k, v) in &model {
            assert_eq!(table.get(1, k).as_deref(), Some(v.as_slice()));
            assert_eq!(table.get(0, k), None);
        }
        let all = |t: &Table, bounds: (&[u8], Option<&[u8]>), after: Option<&[u8]>, desc| {
            let mut out = Vec::new();
            let mut after = after.map(<[u8]>::to_vec);
            loop {
                let page = t.range(1, bounds, after.as_deref(), desc, 7);
                after = page.last().map(|(k, _)| k.to_vec());
                let n = page.len();
                out.extend(page.into_iter().map(|(k, v)| (k.to_vec(), v.to_vec())));
                if n < 7 {
                    return out;
                }
            }
        };
        let bounds: Vec<(Vec<u8>, Option<Vec<u8>>)> = vec![
            (vec![], None),
            (b"s".to_vec(), Some(b"t".to_vec())),
            (
                key(0x0202_0202, 0)[..5].to_vec(),
                Some(key(0x0303_0303, 0)[..5].to_vec()),
            ),
            (key(0x0101_0101, 40), Some(key(0x0404_0404, 17))),
            (vec![b's', 2], Some(vec![b's', 3, 3, 3, 3, 0, 0, 0, 100, 9])),
            (b"a".to_vec(), Some(b"b".to_vec())),
        ];
        for (start, end) in &bounds {
            let want: Vec<(Vec<u8>, Vec<u8>)> = model
                .iter()
                .filter(|(k, _)| k.as_slice() >= start.as_slice())
                .filter(|(k, _)| end.as_ref().is_none_or(|e| k.as_slice() < e.as_slice()))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            let b = (start.as_slice(), end.as_deref());
            assert_eq!(all(&table, b, None, false), want, "{start:?}..{end:?}");
            let rev: Vec<_> = want.iter().rev().cloned().collect();
            assert_eq!(
                all(&table, b, None, true),
                rev,
                "{start:?}..{end:?} descending"
            );
        }
    }

    #[test]
    fn chunks_load_back_into_the_same_table_and_bad_ones_are_refused() {
        let mut table = Table::new(spec(), 2);
        for sku in [3u32, 1, 64, 2, 33, 1_000_000] {
            table.set(0, &key(9, sku), Some(&[sku as u8, 1]));
        }
        table.set(1, &key(4, 5), Some(&[0, 0]));
        table.set(0, &key(9, 2), None);
        let mut again = Table::new(spec(), 2);
        for region in 0..2 {
            for (k, bytes) in table.chunks(region) {
                again.load_chunk(&k, bytes).unwrap();
            }
        }
        assert_eq!(again.len(), 6);
        for sku in [3u32, 1, 64, 33, 1_000_000] {
            assert_eq!(again.get(0, &key(9, sku)), table.get(0, &key(9, sku)));
        }
        assert_eq!(again.get(0, &key(9, 2)), None);
        let (k, bytes) = table.chunks(0).next().unwrap();
        let mut fresh = Table::new(spec(), 2);
        assert!(fresh.load_chunk(&k, &bytes[1..]).is_err(), "torn rows");
        let mut swapped = bytes.to_vec();
        swapped.rotate_left(6);
        assert!(fresh.load_chunk(&k, &swapped).is_err(), "out of order");
        assert!(fresh.load_chunk(&k[1..], bytes).is_err(), "short key");
        assert!(table.check_write(&key(9, 1)[..8], None).is_err());
        assert!(table.check_write(&key(9, 1), Some(&[1, 2, 3])).is_err());
    }
}
