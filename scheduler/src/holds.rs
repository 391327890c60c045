//! Reservation state behind one interface: where a reservation, its holds and its indexes
//! live, and the few ways execution and the edge read them. Nothing else in Ordo knows these
//! key layouts, so the state can later move to memory with the store as its checkpoint.
//!
//! Layout (big-endian integers; strings length-prefixed where a prefix scan must not match a
//! longer string):
//!
//! | key | partition | value |
//! |---|---|---|
//! | `r` id | the reservation's home ([`reservation_part`]) | [`ReservationRecord`] |
//! | `x` expires_at id dc sku | the row's partition | units held (`i64`): the sweep order |
//! | `e` dc sku expires_at id | the row's partition | units held: what a row has due |
//! | `y` prune_at id | home | nothing: when the record is dropped |
//! | `C` cart | the cart's partition ([`cart_part`]) | the cart's latest reservation id |
//! | `K` len cart id | home | nothing: reservations by cart |
//! | `u` len user id | home | nothing: reservations by user |
//!
//! A stock row's stored `reserved` counts every hold not yet swept, live or dead. The
//! *effective* row, which every read and every decision uses, subtracts the units of holds
//! that are dead at the epoch's time and not swept yet ([`effective`]), so nothing depends on
//! how far the sweep got.

use ordo_storage::{Part, Store, StoreError, Write};

use crate::model::*;

/// Key/value pairs in key order.
pub type Pairs = Vec<(Vec<u8>, Vec<u8>)>;

/// Read access to partition state: the store as committed, or the store under an executing
/// epoch's pending writes.
pub trait View {
    fn get(&self, part: Part, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;
    /// Pairs with `start <= key < end`, in key order, at most `limit`.
    fn range(
        &self,
        part: Part,
        start: &[u8],
        end: &[u8],
        limit: usize,
    ) -> Result<Pairs, StoreError>;
}

impl View for Store {
    fn get(&self, part: Part, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(Store::get(self, part, key)?.map(|v| v.to_vec()))
    }

    fn range(
        &self,
        part: Part,
        start: &[u8],
        end: &[u8],
        limit: usize,
    ) -> Result<Pairs, StoreError> {
        Ok(Store::range(self, part, start, end, limit)?
            .into_iter()
            .map(|(k, v)| (k.to_vec(), v.to_vec()))
            .collect())
    }
}

/// Why reservation state could not be read.
#[derive(Debug, thiserror::Error)]
pub enum HoldError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("corrupt reservation state {what}: {detail}")]
    Corrupt { what: String, detail: String },
}

fn corrupt(what: impl Into<String>, detail: impl std::fmt::Display) -> HoldError {
    HoldError::Corrupt {
        what: what.into(),
        detail: detail.to_string(),
    }
}

pub mod key {
    use super::keys;

    pub fn reservation(id: u64) -> Vec<u8> {
        let mut k = vec![keys::RESERVATION];
        k.extend_from_slice(&id.to_be_bytes());
        k
    }

    pub fn due(expires_at: u64, id: u64, dc: u32, sku: u32) -> Vec<u8> {
        let mut k = vec![keys::HOLD_DUE];
        k.extend_from_slice(&expires_at.to_be_bytes());
        k.extend_from_slice(&id.to_be_bytes());
        k.extend_from_slice(&dc.to_be_bytes());
        k.extend_from_slice(&sku.to_be_bytes());
        k
    }

    /// `(expires_at, id, dc, sku)` of a due key.
    pub fn parse_due(k: &[u8]) -> Option<(u64, u64, u32, u32)> {
        if k.len() != 25 || k[0] != keys::HOLD_DUE {
            return None;
        }
        Some((
            u64::from_be_bytes(k[1..9].try_into().ok()?),
            u64::from_be_bytes(k[9..17].try_into().ok()?),
            u32::from_be_bytes(k[17..21].try_into().ok()?),
            u32::from_be_bytes(k[21..25].try_into().ok()?),
        ))
    }

    /// Every due key at or before `until` sorts below this.
    pub fn due_until(until: u64) -> Vec<u8> {
        let mut k = vec![keys::HOLD_DUE];
        k.extend_from_slice(&until.saturating_add(1).to_be_bytes());
        k
    }

    pub fn row(dc: u32, sku: u32, expires_at: u64, id: u64) -> Vec<u8> {
        let mut k = row_prefix(dc, sku);
        k.extend_from_slice(&expires_at.to_be_bytes());
        k.extend_from_slice(&id.to_be_bytes());
        k
    }

    pub fn row_prefix(dc: u32, sku: u32) -> Vec<u8> {
        let mut k = vec![keys::HOLD_ROW];
        k.extend_from_slice(&dc.to_be_bytes());
        k.extend_from_slice(&sku.to_be_bytes());
        k
    }

    pub fn prune(prune_at: u64, id: u64) -> Vec<u8> {
        let mut k = vec![keys::RESERVATION_PRUNE];
        k.extend_from_slice(&prune_at.to_be_bytes());
        k.extend_from_slice(&id.to_be_bytes());
        k
    }

    pub fn cart(cart_id: &str) -> Vec<u8> {
        let mut k = vec![keys::CART];
        k.extend_from_slice(cart_id.as_bytes());
        k
    }

    /// The index prefix of `name` (a cart or a user) under `tag`.
    pub fn by(tag: u8, name: &str) -> Vec<u8> {
        let mut k = vec![tag];
        k.extend_from_slice(&(name.len() as u16).to_be_bytes());
        k.extend_from_slice(name.as_bytes());
        k
    }

    pub fn by_id(tag: u8, name: &str, id: u64) -> Vec<u8> {
        let mut k = by(tag, name);
        k.extend_from_slice(&id.to_be_bytes());
        k
    }

    /// The id at the end of an index or prune key.
    pub fn trailing_id(k: &[u8]) -> Option<u64> {
        let at = k.len().checked_sub(8)?;
        Some(u64::from_be_bytes(k[at..].try_into().ok()?))
    }
}

fn qty_of(bytes: &[u8], what: impl Fn() -> String) -> Result<i64, HoldError> {
    decode::<i64>(bytes).map_err(|e| corrupt(what(), e))
}

pub fn reservation(
    view: &impl View,
    part: Part,
    id: u64,
) -> Result<Option<ReservationRecord>, HoldError> {
    match view.get(part, &key::reservation(id))? {
        Some(bytes) => decode(&bytes)
            .map(Some)
            .map_err(|e| corrupt(format!("reservation {id}"), e)),
        None => Ok(None),
    }
}

/// The latest reservation made for `cart_id` (it may have ended).
pub fn cart(view: &impl View, part: Part, cart_id: &str) -> Result<Option<u64>, HoldError> {
    match view.get(part, &key::cart(cart_id))? {
        Some(bytes) => decode(&bytes)
            .map(Some)
            .map_err(|e| corrupt(format!("cart {cart_id:?}"), e)),
        None => Ok(None),
    }
}

/// Units of holds on the row that are dead at `now_ms` but not swept yet.
pub fn dead_on_row(
    view: &impl View,
    part: Part,
    dc: u32,
    sku: u32,
    now_ms: u64,
) -> Result<i64, HoldError> {
    let start = key::row_prefix(dc, sku);
    let mut end = start.clone();
    end.extend_from_slice(&now_ms.saturating_add(1).to_be_bytes());
    let mut dead: i64 = 0;
    for (k, v) in view.range(part, &start, &end, usize::MAX)? {
        let qty = qty_of(&v, || format!("hold {k:?} in {part}"))?;
        dead = dead.saturating_add(qty);
    }
    Ok(dead)
}

/// The row as reads and decisions see it at `now_ms`: dead holds count as released.
pub fn effective(stored: StockRecord, dead: i64) -> StockRecord {
    StockRecord {
        on_hand: stored.on_hand,
        reserved: stored.reserved.saturating_sub(dead).max(0),
    }
}

/// The expiry time of the earliest hold in `part` that is not swept yet.
pub fn first_due(view: &impl View, part: Part) -> Result<Option<u64>, HoldError> {
    let start = [keys::HOLD_DUE];
    let end = [keys::HOLD_DUE + 1];
    Ok(view
        .range(part, &start, &end, 1)?
        .first()
        .and_then(|(k, _)| key::parse_due(k))
        .map(|(at, ..)| at))
}

/// Holds in `part` dead at `now_ms`, in `(expires_at, reservation_id)` order, at most `limit`:
/// `(due key, dc, sku, units)`.
pub type DueHold = (Vec<u8>, u32, u32, i64);

pub fn due(
    view: &impl View,
    part: Part,
    now_ms: u64,
    limit: usize,
) -> Result<Vec<DueHold>, HoldError> {
    let start = [keys::HOLD_DUE];
    let end = key::due_until(now_ms);
    let mut out = Vec::new();
    for (k, v) in view.range(part, &start, &end, limit)? {
        let (_, _, dc, sku) =
            key::parse_due(&k).ok_or_else(|| corrupt(format!("due key {k:?}"), "bad length"))?;
        let qty = qty_of(&v, || format!("hold {k:?} in {part}"))?;
        out.push((k, dc, sku, qty));
    }
    Ok(out)
}

/// The writes that record `qty` units of `dc`/`sku` held by reservation `id` until `expires_at`
/// (`qty` 0: the writes that remove that hold).
pub fn hold_writes(id: u64, expires_at: u64, dc: u32, sku: u32, qty: i64) -> [Write; 2] {
    let value = (qty > 0).then(|| encode(&qty));
    [
        (key::due(expires_at, id, dc, sku), value.clone()),
        (key::row(dc, sku, expires_at, id), value),
    ]
}

/// The row key of a due key, for the sweep to remove both.
pub fn row_key_of_due(due_key: &[u8]) -> Option<Vec<u8>> {
    let (at, id, dc, sku) = key::parse_due(due_key)?;
    Some(key::row(dc, sku, at, id))
}

/// Reservation ids of `name` (a cart with [`keys::RESERVATION_BY_CART`] or a user with
/// [`keys::RESERVATION_BY_USER`]) above `after`, in id order, at most `limit`, from every
/// partition.
pub fn ids_by(
    store: &Store,
    tag: u8,
    name: &str,
    after: u64,
    limit: usize,
) -> Result<Vec<u64>, HoldError> {
    let Some(first) = after.checked_add(1) else {
        return Ok(Vec::new());
    };
    let start = key::by_id(tag, name, first);
    let end = key::by_id(tag, name, u64::MAX);
    let mut ids = Vec::new();
    for n in 0..store.partitions() {
        for (k, _) in View::range(store, Part::Region(n), &start, &end, limit)? {
            ids.extend(key::trailing_id(&k));
        }
    }
    ids.sort_unstable();
    ids.dedup();
    ids.truncate(limit);
    Ok(ids)
}
