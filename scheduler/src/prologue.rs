//! An epoch's prologue, before any transaction: expired dedupe entries are dropped, the units
//! of lapsed holds returned, and reservation records past their retention dropped; each
//! bounded per partition, oldest first.

use std::collections::BTreeMap;

use ordo_storage::{records, Part, Store};

use crate::exec::{corrupt, read_record, ExecConfig, ExecError, Layered, Overlay};
use crate::feed::{Cause, Event, StockChange};
use crate::holds;
use crate::model::*;

/// Dedupe entries older than both of these may be dropped.
#[derive(Clone, Copy)]
pub(crate) struct DedupeCutoff {
    pub(crate) time_ms: u64,
    pub(crate) epoch: u64,
}

/// Drops expired dedupe entries, oldest first. The expiry indexes are in time order, and time
/// grows with the epoch, so the entries old enough by both measures are a prefix of them:
/// first the per-request keys of data written before the per-epoch ones (`t`), then the
/// per-epoch keys (`T`), whole epochs at a time (at least one, so a large epoch never stalls
/// the pruning), then the per-epoch record lists (`U`) the same way.
pub(crate) fn prune_dedupe(
    store: &Store,
    part: Part,
    overlay: &mut Overlay,
    cutoff: DedupeCutoff,
    limit: usize,
) -> Result<(), ExecError> {
    if cutoff.time_ms == 0 || cutoff.epoch == 0 {
        return Ok(());
    }
    let mut dropped = 0;
    let start = [keys::DEDUPE_BY_TIME];
    let end = keys::dedupe_by_time(cutoff.time_ms, "");
    for (key, _) in store.range(part, &start, &end, limit)? {
        let request_id = keys::request_id_of_time_key(&key).unwrap_or_default();
        let mut dedupe_key = vec![keys::DEDUPE];
        dedupe_key.extend_from_slice(request_id);
        if let Some(bytes) = overlay.get(store, part, &dedupe_key)? {
            let record = DedupeRecord::decode(&bytes)
                .map_err(|e| corrupt(format!("dedupe entry {dedupe_key:?} in {part}"), e))?;
            if record.result.epoch > cutoff.epoch {
                return Ok(());
            }
        }
        overlay.put(None, dedupe_key, None);
        overlay.put(None, key.to_vec(), None);
        dropped += 1;
    }
    if dropped >= limit {
        return Ok(());
    }
    let start = [keys::DEDUPE_BY_EPOCH];
    let end = keys::dedupe_by_epoch(cutoff.time_ms, 0);
    for (key, value) in store.range(part, &start, &end, limit - dropped)? {
        let epoch = keys::epoch_of_dedupe_epoch_key(&key)
            .ok_or_else(|| ExecError::Invariant(format!("dedupe expiry key {key:?} in {part}")))?;
        if epoch > cutoff.epoch {
            break;
        }
        let record: DedupeEpoch = decode(&value)
            .map_err(|e| corrupt(format!("dedupe expiry of epoch {epoch} in {part}"), e))?;
        if dropped > 0 && dropped + record.request_ids.len() > limit {
            break;
        }
        dropped += record.request_ids.len().max(1);
        for request_id in &record.request_ids {
            overlay.put(None, keys::dedupe(request_id), None);
        }
        overlay.put(None, key.to_vec(), None);
    }
    // Then the record lists (`U`), whole epochs at a time, read a few at a time: each holds
    // an epoch's entries.
    const PAGE: usize = 16;
    let mut start = vec![keys::DEDUPE_LIST];
    let end = keys::dedupe_list(cutoff.time_ms, 0);
    while dropped < limit {
        let page = store.range(part, &start, &end, PAGE)?;
        for (key, value) in &page {
            let epoch = keys::epoch_of_dedupe_epoch_key(key).ok_or_else(|| {
                ExecError::Invariant(format!("dedupe list key {key:?} in {part}"))
            })?;
            if epoch > cutoff.epoch {
                return Ok(());
            }
            let count = records::count(value).map_err(|e| ExecError::Corrupt {
                what: format!("dedupe list of epoch {epoch} in {part}"),
                detail: e.to_string(),
            })?;
            if dropped > 0 && dropped + count > limit {
                return Ok(());
            }
            dropped += count.max(1);
            overlay.put(None, key.to_vec(), None);
        }
        match page.last() {
            Some((last, _)) if page.len() == PAGE => {
                start = last.to_vec();
                start.push(0);
            }
            _ => break,
        }
    }
    Ok(())
}

/// Returns the units of holds dead at `now_ms` in `part`, earliest first, at most the
/// configured number. Returns whether dead holds remain (the partition is in backlog).
pub(crate) fn sweep_holds(
    store: &Store,
    part: Part,
    overlay: &mut Overlay,
    now_ms: u64,
    cfg: &ExecConfig,
) -> Result<bool, ExecError> {
    let max = cfg.expiry_per_epoch_max;
    let due = holds::due(
        &Layered {
            store,
            part,
            overlay,
        },
        part,
        now_ms,
        max.saturating_add(1),
    )?;
    let backlog = due.len() > max;
    for (due_key, dc, sku, qty) in due.into_iter().take(max) {
        let stock_key = keys::stock(dc, sku);
        let row: StockRecord = read_record(store, overlay, part, &stock_key, || {
            format!("stock dc {dc} sku {sku}")
        })?
        .unwrap_or_default();
        let reserved = row.reserved - qty;
        if reserved < 0 {
            return Err(ExecError::Invariant(format!(
                "sweeping a hold of {qty} on dc {dc} sku {sku} would leave reserved at {reserved}"
            )));
        }
        let next = StockRecord {
            on_hand: row.on_hand,
            reserved,
        };
        overlay.put(None, stock_key, Some(encode(&next)));
        ordo_metrics::HOLDS_EXPIRED.inc();
        let (_, reservation_id, _, _) = holds::key::parse_due(&due_key).unwrap_or_default();
        overlay.emit(
            None,
            Event::Stock(StockChange {
                dc,
                sku,
                before: row,
                after: next,
                cause: Cause::Expiry { reservation_id },
                request_id: String::new(),
            }),
        );
        if let Some(row_key) = holds::row_key_of_due(&due_key) {
            overlay.put(None, row_key, None);
        }
        overlay.put(None, due_key, None);
    }
    Ok(backlog)
}

/// Drops reservation records whose retention ended, at most `limit` per partition, with their
/// indexes and their cart's pointer when it still names them.
pub(crate) fn prune_reservations(
    store: &Store,
    overlays: &mut BTreeMap<Part, Overlay>,
    now_ms: u64,
    limit: usize,
) -> Result<(), ExecError> {
    let partitions = store.partitions();
    for n in 0..partitions {
        let part = Part::Region(n);
        let start = [keys::RESERVATION_PRUNE];
        let end = holds::key::prune(now_ms.saturating_add(1), 0);
        let overlay = overlays.get(&part).expect("overlay per partition");
        let expired = overlay.range(store, part, &start, &end, limit)?;
        for (prune_key, _) in expired {
            let Some(id) = holds::key::trailing_id(&prune_key) else {
                continue;
            };
            let overlay = overlays.get_mut(&part).expect("overlay per partition");
            let record = holds::reservation(
                &Layered {
                    store,
                    part,
                    overlay,
                },
                part,
                id,
            )?;
            overlay.put(None, prune_key, None);
            let Some(record) = record else {
                continue;
            };
            overlay.put(None, holds::key::reservation(id), None);
            overlay.put(
                None,
                holds::key::by_id(keys::RESERVATION_BY_USER, &record.user, id),
                None,
            );
            if record.cart_id.is_empty() {
                continue;
            }
            overlay.put(
                None,
                holds::key::by_id(keys::RESERVATION_BY_CART, &record.cart_id, id),
                None,
            );
            let cart = cart_part(&record.cart_id, partitions);
            let cart_overlay = overlays.get_mut(&cart).expect("overlay per partition");
            let latest = holds::cart(
                &Layered {
                    store,
                    part: cart,
                    overlay: cart_overlay,
                },
                cart,
                &record.cart_id,
            )?;
            if latest == Some(id) {
                cart_overlay.put(None, holds::key::cart(&record.cart_id), None);
            }
        }
    }
    Ok(())
}
