//! Reads of the applied state for the server edge: point lookups outside execution.
//!
//! These read the store as of the last applied epoch (`LOCAL` consistency). They never run
//! inside execution, so they may use whatever the edge needs.

use std::collections::BTreeMap;

use ordo_storage::{records, Part, Store, StoreError};

use crate::holds;
use crate::model::*;
use crate::subs;

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("corrupt record {what}: {detail}")]
    Corrupt { what: String, detail: String },
}

impl From<holds::HoldError> for ReadError {
    fn from(e: holds::HoldError) -> Self {
        match e {
            holds::HoldError::Store(e) => ReadError::Store(e),
            holds::HoldError::Corrupt { what, detail } => ReadError::Corrupt { what, detail },
        }
    }
}

fn get<T: for<'de> serde::Deserialize<'de>>(
    store: &Store,
    part: Part,
    key: &[u8],
    what: impl Fn() -> String,
) -> Result<Option<T>, ReadError> {
    match store.get(part, key)? {
        Some(bytes) => decode(&bytes).map(Some).map_err(|e| ReadError::Corrupt {
            what: what(),
            detail: e.to_string(),
        }),
        None => Ok(None),
    }
}

/// The execution settings recorded in the log, if any ([`crate::ExecSettings`]).
pub fn exec_settings(store: &Store) -> Result<Option<ExecSettingsRecord>, ReadError> {
    get(store, Part::Global, keys::EXEC_SETTINGS, || {
        "execution settings".into()
    })
}

pub fn dc(store: &Store, dc: u32) -> Result<Option<DcRecord>, ReadError> {
    get(store, Part::Global, &keys::dc(dc), || format!("dc {dc}"))
}

/// Every DC, in id order.
pub fn dcs(store: &Store) -> Result<Vec<DcRecord>, ReadError> {
    let mut out = Vec::new();
    for (key, value) in store.scan_prefix(Part::Global, &[keys::DC], usize::MAX)? {
        out.push(decode(&value).map_err(|e| ReadError::Corrupt {
            what: format!("dc at key {key:?}"),
            detail: e.to_string(),
        })?);
    }
    Ok(out)
}

pub fn item(store: &Store, sku: u32) -> Result<Option<ItemRecord>, ReadError> {
    get(store, Part::Global, &keys::item(sku), || {
        format!("item {sku}")
    })
}

/// Every catalogue item, in SKU order.
pub fn items(store: &Store) -> Result<Vec<ItemRecord>, ReadError> {
    let mut out = Vec::new();
    for (key, value) in store.scan_prefix(Part::Global, &[keys::ITEM], usize::MAX)? {
        out.push(decode(&value).map_err(|e| ReadError::Corrupt {
            what: format!("item at key {key:?}"),
            detail: e.to_string(),
        })?);
    }
    Ok(out)
}

/// The partition a DC's stock and orders live in.
/// An item's current price as last set (`None`: never set; the item's `price_cents` stands).
pub fn price(store: &Store, sku: u32) -> Result<Option<PriceRecord>, ReadError> {
    get(store, Part::Global, &keys::price(sku), || {
        format!("price of sku {sku}")
    })
}

/// An item's price history, newest first, from epochs before `before_epoch` (0: from the
/// newest), at least `limit` entries where there are that many: a page ends at an epoch's
/// edge, so the next page (before the last entry's epoch) misses none. Its last epoch comes
/// whole, so a page may run past `limit` by the changes of that SKU in that one epoch.
pub fn price_history(
    store: &Store,
    sku: u32,
    before_epoch: u64,
    limit: usize,
) -> Result<Vec<PriceRecord>, ReadError> {
    let end = match before_epoch {
        0 => keys::price_history(sku, u64::MAX),
        e => keys::price_history(sku, e),
    };
    let start = keys::price_history(sku, 0);
    fn decoded<K: std::fmt::Debug, V: AsRef<[u8]>>(
        entries: Vec<(K, V)>,
    ) -> Result<Vec<PriceRecord>, ReadError> {
        entries
            .into_iter()
            .map(|(key, value)| {
                decode::<PriceRecord>(value.as_ref()).map_err(|e| ReadError::Corrupt {
                    what: format!("price history at key {key:?}"),
                    detail: e.to_string(),
                })
            })
            .collect()
    }
    let mut out = decoded(store.range_rev(Part::Global, &start, &end, limit)?)?;
    if out.len() < limit.max(1) {
        return Ok(out);
    }
    // The page is full: its last epoch may have more entries than it took. Take that epoch
    // whole instead (one entry per transaction at most, and a batch holds at most
    // BATCH_TXNS_LIMIT).
    let last = out.last().map_or(0, |p| p.epoch);
    out.retain(|p| p.epoch != last);
    let whole = store.range_rev(
        Part::Global,
        &keys::price_history(sku, last),
        &keys::price_history(sku, last.saturating_add(1)),
        crate::BATCH_TXNS_LIMIT,
    )?;
    out.extend(decoded(whole)?);
    Ok(out)
}

/// One subscription.
pub fn subscription(
    store: &Store,
    sku: u32,
    tag: subs::SubTag,
    user: &str,
) -> Result<Option<subs::SubscriptionRecord>, ReadError> {
    let part = subs::subs_part(sku, store.partitions());
    get(
        store,
        part,
        &subs::key::subscription(sku, tag, user),
        || format!("subscription of {user:?} to sku {sku}"),
    )
}

/// A user's subscriptions (open and closed), by SKU and kind, at most `limit`.
pub fn user_subscriptions(
    store: &Store,
    user: &str,
    limit: usize,
) -> Result<Vec<subs::SubscriptionRecord>, ReadError> {
    let mut found = Vec::new();
    for n in 0..store.partitions() {
        for (key, _) in store.scan_prefix(Part::Region(n), &subs::key::user_prefix(user), limit)? {
            if let Some(entry) = subs::key::parse_by_user(&key) {
                found.push(entry);
            }
        }
    }
    found.sort_unstable();
    found.truncate(limit);
    let mut out = Vec::with_capacity(found.len());
    for (sku, tag) in found {
        let tag = match tag {
            1 => subs::SubTag::PriceDrop,
            _ => subs::SubTag::BackInStock,
        };
        out.extend(subscription(store, sku, tag, user)?);
    }
    Ok(out)
}

/// The subscriptions of `sku` and `tag` whose users fall in shard `shard` of `shards`
/// ([`subs::user_shard`]), after user `after` (`None`: from the first), in (bucket, user)
/// order, at most `limit`: one page of a fan-out. Reads that shard's range of the index only.
pub fn subscribers(
    store: &Store,
    sku: u32,
    tag: subs::SubTag,
    (shard, shards): (u32, u32),
    after: Option<&str>,
    limit: usize,
) -> Result<Vec<subs::SubscriptionRecord>, ReadError> {
    let part = subs::subs_part(sku, store.partitions());
    let (mut start, end) = subs::key::shard_range(sku, tag, shard, shards);
    if let Some(user) = after {
        let mut k = subs::key::subscription(sku, tag, user);
        k.push(0);
        start = start.max(k);
    }
    if start >= end {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for (key, value) in store.range(part, &start, &end, limit)? {
        out.push(decode(&value).map_err(|e| ReadError::Corrupt {
            what: format!("subscription at key {key:?}"),
            detail: e.to_string(),
        })?);
    }
    Ok(out)
}

/// Whether the store holds subscriptions in the index's first layout
/// ([`subs::key::SUBSCRIPTION_UNBUCKETED`]), which this Ordo does not read.
pub fn has_unbucketed_subscriptions(store: &Store) -> Result<bool, ReadError> {
    for n in 0..store.partitions() {
        let prefix = [subs::key::SUBSCRIPTION_UNBUCKETED];
        if !store.scan_prefix(Part::Region(n), &prefix, 1)?.is_empty() {
            return Ok(true);
        }
    }
    Ok(false)
}

pub fn part_of(store: &Store, dc: &DcRecord) -> Part {
    Part::Region(dc.region % store.partitions())
}

/// Stock of `sku` at a known DC (zero when never stocked), as of the applied epoch: holds
/// dead at its time count as released, swept or not.
pub fn stock(store: &Store, dc: &DcRecord, sku: u32) -> Result<StockRecord, ReadError> {
    Stocks::new(store).get(dc, sku)
}

/// Many stock rows of one applied epoch (use inside [`Store::consistent`]): the epoch's time
/// and whether each partition has dead holds left to sweep are looked up once, not per row.
pub struct Stocks<'a> {
    store: &'a Store,
    /// Stock rows are read through one take of the store's packed table lock.
    rows: ordo_storage::Reader<'a>,
    now_ms: u64,
    /// Per partition: whether its earliest unswept hold is dead at `now_ms`.
    backlog: BTreeMap<Part, bool>,
}

impl<'a> Stocks<'a> {
    pub fn new(store: &'a Store) -> Self {
        Self {
            store,
            rows: store.reader(),
            now_ms: store.applied_time_ms(),
            backlog: BTreeMap::new(),
        }
    }

    pub fn get(&mut self, dc: &DcRecord, sku: u32) -> Result<StockRecord, ReadError> {
        let store = self.store;
        let part = part_of(store, dc);
        let stored = match self.rows.get(part, &keys::stock(dc.dc, sku))? {
            Some(bytes) => decode(&bytes).map_err(|e| ReadError::Corrupt {
                what: format!("stock dc {} sku {sku}", dc.dc),
                detail: e.to_string(),
            })?,
            None => StockRecord::default(),
        };
        let backlog = match self.backlog.get(&part) {
            Some(&b) => b,
            None => {
                let b = holds::first_due(store, part)?.is_some_and(|at| at <= self.now_ms);
                self.backlog.insert(part, b);
                b
            }
        };
        let dead = match backlog {
            true => holds::dead_on_row(store, part, dc.dc, sku, self.now_ms)?,
            false => 0,
        };
        Ok(holds::effective(stored, dead))
    }
}

/// A reservation by id, from its home partition.
pub fn reservation(store: &Store, id: u64) -> Result<Option<ReservationRecord>, ReadError> {
    let part = reservation_part(id, store.partitions());
    Ok(holds::reservation(store, part, id)?)
}

/// Whose reservations to list.
#[derive(Clone, Copy, Debug)]
pub enum ReservationsOf<'a> {
    Cart(&'a str),
    User(&'a str),
}

/// Reservations of a cart or a user with ids above `after`, in id order, at most `limit`.
pub fn reservations(
    store: &Store,
    of: ReservationsOf<'_>,
    after: u64,
    limit: usize,
) -> Result<Vec<ReservationRecord>, ReadError> {
    let (tag, name) = match of {
        ReservationsOf::Cart(cart) => (keys::RESERVATION_BY_CART, cart),
        ReservationsOf::User(user) => (keys::RESERVATION_BY_USER, user),
    };
    let mut out = Vec::new();
    for id in holds::ids_by(store, tag, name, after, limit)? {
        out.extend(reservation(store, id)?);
    }
    Ok(out)
}

/// When the earliest hold not swept yet lapses, over every partition: the leader cuts an
/// epoch at that time even when no transaction comes, so holds lapse on an idle cluster.
pub fn next_hold_due(store: &Store) -> Result<Option<u64>, ReadError> {
    let mut first: Option<u64> = None;
    for n in 0..store.partitions() {
        if let Some(at) = holds::first_due(store, Part::Region(n))? {
            first = Some(first.map_or(at, |f| f.min(at)));
        }
    }
    Ok(first)
}

/// A record of a list (`keys::ORDER_LIST`, `keys::DEDUPE_LIST`) that does not decode.
fn corrupt_list(what: String, e: impl std::fmt::Display) -> ReadError {
    ReadError::Corrupt {
        what,
        detail: e.to_string(),
    }
}

pub fn order(store: &Store, order_id: u64) -> Result<Option<OrderRecord>, ReadError> {
    // Its epoch's order list in the partition that holds it; then, for orders from before
    // the lists, a key of its own.
    let list_key = keys::order_list(order_id >> ORDER_SEQ_BITS);
    let id = order_id.to_be_bytes();
    let what = || format!("order {order_id}");
    for n in 0..store.partitions() {
        if let Some(value) = store.get(Part::Region(n), &list_key)? {
            let list = records::RecordList::parse(&value).map_err(|e| corrupt_list(what(), e))?;
            if let Some(bytes) = list.get(&id) {
                return decode(bytes).map(Some).map_err(|e| corrupt_list(what(), e));
            }
        }
    }
    for n in 0..store.partitions() {
        let found = get(store, Part::Region(n), &keys::order(order_id), what)?;
        if found.is_some() {
            return Ok(found);
        }
    }
    Ok(None)
}

/// Order lists read at a time by [`orders_after`].
const ORDER_LISTS_PAGE: usize = 16;

/// Committed orders with ids above `after`, in id order, at most `limit` (from every
/// partition; an order lives in its request id's home partition).
pub fn orders_after(
    store: &Store,
    after: u64,
    limit: usize,
) -> Result<Vec<OrderRecord>, ReadError> {
    let Some(start_id) = after.checked_add(1) else {
        return Ok(Vec::new());
    };
    let mut orders = Vec::new();
    for n in 0..store.partitions() {
        let part = Part::Region(n);
        // The lists: each holds an epoch's orders, in id order.
        let mut start = keys::order_list(start_id >> ORDER_SEQ_BITS);
        let end = [keys::ORDER_LIST + 1];
        let mut found = 0;
        'lists: loop {
            let page = store.range(part, &start, &end, ORDER_LISTS_PAGE)?;
            for (key, value) in &page {
                let list = records::RecordList::parse(value)
                    .map_err(|e| corrupt_list(format!("order list at key {key:?}"), e))?;
                for (id, bytes) in list.iter() {
                    let id = <[u8; 8]>::try_from(id)
                        .map(u64::from_be_bytes)
                        .map_err(|e| {
                            corrupt_list(format!("an order id in the list at key {key:?}"), e)
                        })?;
                    if id < start_id {
                        continue;
                    }
                    let order: OrderRecord =
                        decode(bytes).map_err(|e| corrupt_list(format!("order {id}"), e))?;
                    orders.push(order);
                    found += 1;
                    if found >= limit {
                        break 'lists;
                    }
                }
            }
            match page.last() {
                Some((last, _)) if page.len() == ORDER_LISTS_PAGE => {
                    start = last.to_vec();
                    start.push(0);
                }
                _ => break,
            }
        }
        // Orders from before the lists, a key each.
        let start = keys::order(start_id);
        let end = [keys::ORDER + 1];
        for (key, value) in store.range(part, &start, &end, limit)? {
            let order: OrderRecord = decode(&value).map_err(|e| ReadError::Corrupt {
                what: format!("order at key {key:?}"),
                detail: e.to_string(),
            })?;
            orders.push(order);
        }
    }
    orders.sort_by_key(|o| o.order_id);
    orders.truncate(limit);
    Ok(orders)
}

/// The remembered result of `request_id` with the digest of its request: from its home
/// partition (or the global one, for DC and catalogue changes), or, for entries written before
/// homes were chosen by request id, from whichever partition holds it. In each, from the
/// record lists the store's index names, then from a key of its own (entries written before
/// the lists).
pub fn dedupe(store: &Store, request_id: &str) -> Result<Option<DedupeRecord>, ReadError> {
    let key = keys::dedupe(request_id);
    let home = request_part(request_id, store.partitions());
    let others = (0..store.partitions())
        .map(Part::Region)
        .filter(|&p| p != home);
    let what = || format!("dedupe {request_id:?}");
    for part in [home, Part::Global].into_iter().chain(others) {
        for list_key in store.lists_holding(part, request_id.as_bytes())? {
            let Some(value) = store.get(part, &list_key)? else {
                continue;
            };
            let list = records::RecordList::parse(&value).map_err(|e| corrupt_list(what(), e))?;
            if let Some(bytes) = list.get(request_id.as_bytes()) {
                return DedupeRecord::decode(bytes)
                    .map(Some)
                    .map_err(|e| corrupt_list(what(), e));
            }
        }
        if let Some(bytes) = store.get(part, &key)? {
            return DedupeRecord::decode(&bytes)
                .map(Some)
                .map_err(|e| corrupt_list(what(), e));
        }
    }
    Ok(None)
}

/// How many keys start with `prefix` in `part`, counting at most `limit` (e.g. whether any DC
/// exists yet, for the demo seeder).
pub fn count_prefix(
    store: &Store,
    part: Part,
    prefix: u8,
    limit: usize,
) -> Result<usize, ReadError> {
    Ok(store.count_prefix(part, &[prefix], limit)?)
}
