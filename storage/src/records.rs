//! Record lists: many records in one value, each under a key of its own.
//!
//! sled's cost is per key: every key it writes copies the leaf it lands in. Records that
//! execution only writes (an epoch's orders, its dedupe entries) are therefore stored as one
//! value per epoch and partition, and found inside it by their own keys. Layout, all lengths
//! `u32` little-endian:
//!
//! ```text
//! [count] then count × ([len][key]) then count × ([len][record])
//! ```
//!
//! with the keys in strictly increasing order. The keys come first so that a reader that
//! wants only the keys ([`Store::keep_members`](crate::Store::keep_members), which indexes
//! them) stops before the records, and a reader that wants one record binary-searches the
//! keys and decodes nothing else.

use std::fmt;

/// A record list that does not parse: the value is not one (or is damaged).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordsError(String);

impl fmt::Display for RecordsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "record list: {}", self.0)
    }
}

impl std::error::Error for RecordsError {}

/// Encodes `entries` (keys strictly increasing; the caller sorts) as one record list.
///
/// Panics if the keys are out of order or a key, a record or the count does not fit a `u32`:
/// the callers build these from one epoch's writes, far below either.
pub fn encode<K: AsRef<[u8]>, R: AsRef<[u8]>>(entries: &[(K, R)]) -> Vec<u8> {
    let bytes: usize = entries
        .iter()
        .map(|(k, r)| 8 + k.as_ref().len() + r.as_ref().len())
        .sum();
    let mut out = Vec::with_capacity(4 + bytes);
    let len = |n: usize| u32::try_from(n).expect("a record list's part fits a u32");
    out.extend_from_slice(&len(entries.len()).to_le_bytes());
    let mut previous: Option<&[u8]> = None;
    for (key, _) in entries {
        let key = key.as_ref();
        assert!(
            previous.is_none_or(|p| p < key),
            "record list keys must be strictly increasing"
        );
        previous = Some(key);
        out.extend_from_slice(&len(key.len()).to_le_bytes());
        out.extend_from_slice(key);
    }
    for (_, record) in entries {
        let record = record.as_ref();
        out.extend_from_slice(&len(record.len()).to_le_bytes());
        out.extend_from_slice(record);
    }
    out
}

/// A parsed record list: its keys and records, borrowed from the value.
#[derive(Debug)]
pub struct RecordList<'a> {
    keys: Vec<&'a [u8]>,
    records: Vec<&'a [u8]>,
}

/// Reads `[len][bytes]` at `*at`, moving past it.
fn take<'a>(value: &'a [u8], at: &mut usize) -> Result<&'a [u8], RecordsError> {
    let len = value
        .get(*at..*at + 4)
        .ok_or_else(|| RecordsError(format!("a length runs past the end at byte {at}")))?;
    let len = u32::from_le_bytes(len.try_into().expect("4 bytes")) as usize;
    let start = *at + 4;
    let bytes = value
        .get(start..start.saturating_add(len))
        .ok_or_else(|| RecordsError(format!("{len} bytes at byte {start} run past the end")))?;
    *at = start + len;
    Ok(bytes)
}

/// The keys of a record list, in order, without its records: what the members index reads.
pub fn keys(value: &[u8]) -> Result<Vec<&[u8]>, RecordsError> {
    let (keys, _) = parse_keys(value)?;
    Ok(keys)
}

fn parse_keys(value: &[u8]) -> Result<(Vec<&[u8]>, usize), RecordsError> {
    let count = value
        .get(..4)
        .ok_or_else(|| RecordsError("no count".into()))?;
    let count = u32::from_le_bytes(count.try_into().expect("4 bytes")) as usize;
    // Each key takes at least its length's 4 bytes: a count beyond that is damage, and must
    // not size an allocation.
    if count > value.len() / 4 {
        return Err(RecordsError(format!(
            "{count} entries in {} bytes",
            value.len()
        )));
    }
    let mut at = 4;
    let mut keys = Vec::with_capacity(count);
    for _ in 0..count {
        let key = take(value, &mut at)?;
        if keys.last().is_some_and(|last: &&[u8]| *last >= key) {
            return Err(RecordsError(format!("keys out of order at byte {at}")));
        }
        keys.push(key);
    }
    Ok((keys, at))
}

impl<'a> RecordList<'a> {
    pub fn parse(value: &'a [u8]) -> Result<RecordList<'a>, RecordsError> {
        let (keys, mut at) = parse_keys(value)?;
        let mut records = Vec::with_capacity(keys.len());
        for _ in 0..keys.len() {
            records.push(take(value, &mut at)?);
        }
        if at != value.len() {
            return Err(RecordsError(format!(
                "{} bytes after the last record",
                value.len() - at
            )));
        }
        Ok(RecordList { keys, records })
    }

    /// The record under `key`, if the list has one.
    pub fn get(&self, key: &[u8]) -> Option<&'a [u8]> {
        let at = self.keys.binary_search(&key).ok()?;
        Some(self.records[at])
    }

    /// Every (key, record), in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&'a [u8], &'a [u8])> + '_ {
        self.keys.iter().copied().zip(self.records.iter().copied())
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// How many records a list holds, from its first bytes alone.
pub fn count(value: &[u8]) -> Result<usize, RecordsError> {
    let count = value
        .get(..4)
        .ok_or_else(|| RecordsError("no count".into()))?;
    Ok(u32::from_le_bytes(count.try_into().expect("4 bytes")) as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_list_finds_each_record_by_its_key() {
        let entries: Vec<(Vec<u8>, Vec<u8>)> = (0u32..300)
            .map(|n| {
                (
                    format!("id-{n:05}").into_bytes(),
                    vec![n as u8; n as usize % 7],
                )
            })
            .collect();
        let value = encode(&entries);
        let list = RecordList::parse(&value).unwrap();
        assert_eq!(list.len(), 300);
        assert_eq!(count(&value).unwrap(), 300);
        for (key, record) in &entries {
            assert_eq!(list.get(key), Some(record.as_slice()));
        }
        assert_eq!(list.get(b"id-00300"), None);
        assert_eq!(list.get(b""), None);
        let keys = keys(&value).unwrap();
        assert_eq!(keys.len(), 300);
        assert!(list.iter().map(|(k, _)| k).eq(keys.iter().copied()));
        let empty = encode::<&[u8], &[u8]>(&[]);
        assert!(RecordList::parse(&empty).unwrap().is_empty());
    }

    #[test]
    fn a_damaged_record_list_is_an_error_not_a_panic() {
        let value = encode(&[(b"a".as_slice(), b"one".as_slice()), (b"b", b"two")]);
        for cut in 0..value.len() {
            assert!(RecordList::parse(&value[..cut]).is_err(), "cut at {cut}");
        }
        let mut longer = value.clone();
        longer.push(0);
        assert!(RecordList::parse(&longer).is_err());
        // Keys out of order.
        let mut swapped = value.clone();
        swapped[8] = b'c';
        assert!(RecordList::parse(&swapped).is_err());
        // A count no value could hold.
        let mut huge = value;
        huge[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(keys(&huge).is_err());
    }
}
