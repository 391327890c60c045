//! The `watch` workload's price and subscription checks, part of [`crate::watch_check`]: what
//! [`crate::pricing`]'s operations recorded, against each feed's PRICE events and the final
//! prices and subscriptions.
//!
//! Every price a set asks for and every subscription's threshold is unique in the run, so an
//! event or a final value names the one operation that could have made it. Checks:
//! - for every feed that covered the final epoch, its PRICE events: each at a price some set
//!   asked for of that SKU (`watch-phantom-price`; one whose set was acknowledged carries its
//!   request id), of no definitely failed set (`watch-failed-price-present`), at most once
//!   (`watch-duplicate-price`), each starting at the SKU's price so far, from the item's ITEM
//!   event on (`watch-price-chain`); every acknowledged set's prices there through the final
//!   read (`watch-lost-price`); a set of several SKUs all or none of its prices, in one epoch
//!   (`watch-torn-prices`); and each SKU's final price and currency the last PRICE event's
//!   `after` through the read's epoch, or the price the item was created with
//!   (`watch-price-mismatch`);
//! - once, the final subscriptions against the history, asserting only what must hold whatever
//!   the operations of unknown outcome did: an acknowledged subscribe is there unless an
//!   unsubscribe of the same user and SKU that did not definitely fail may have come after it
//!   (`watch-lost-subscription`); each subscription there was made by a subscribe that did not
//!   fail, with its threshold and (acknowledged) request id (`watch-phantom-subscription`), and
//!   no subscribe or unsubscribe of that user and SKU acknowledged after that subscribe completed
//!   (`watch-stale-subscription`).

use std::collections::BTreeMap;

use serde_json::Value;

use crate::feed_record::Seen;
use crate::history::{EventType, Operation};
use crate::watch_check::Report;

/// A SKU's final price, as read.
#[derive(Clone, Debug, PartialEq)]
pub struct FinalPrice {
    pub cents: i64,
    pub currency: String,
    /// The epoch it was read at: the feed is judged through it.
    pub epoch: u64,
}

/// A test user's open price-drop subscriptions at the end, as read.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FinalSubscriptions {
    pub epoch: u64,
    /// SKU → (threshold, the latest subscribe's request id).
    pub by_sku: BTreeMap<u64, (i64, String)>,
}

/// `watch-final`'s `prices`: `[[sku, cents, currency, epoch], ...]`.
pub fn parse_prices(v: &Value) -> Result<BTreeMap<u64, FinalPrice>, String> {
    let bad = || "a price is [sku, cents, currency, epoch]".to_string();
    let mut prices = BTreeMap::new();
    for p in v.as_array().ok_or_else(bad)? {
        let (Some(sku), Some(cents), Some(currency), Some(epoch)) = (
            p.get(0).and_then(Value::as_u64),
            p.get(1).and_then(Value::as_i64),
            p.get(2).and_then(Value::as_str),
            p.get(3).and_then(Value::as_u64),
        ) else {
            return Err(bad());
        };
        let price = FinalPrice {
            cents,
            currency: currency.to_string(),
            epoch,
        };
        prices.insert(sku, price);
    }
    Ok(prices)
}

/// `watch-final`'s `subscriptions`: `[[user, epoch, [[sku, below, request_id], ...]], ...]`.
pub fn parse_subscriptions(v: &Value) -> Result<BTreeMap<String, FinalSubscriptions>, String> {
    let bad = || "subscriptions are [user, epoch, [[sku, below, request_id], ...]]".to_string();
    let mut users = BTreeMap::new();
    for u in v.as_array().ok_or_else(bad)? {
        let (Some(user), Some(epoch), Some(subs)) = (
            u.get(0).and_then(Value::as_str),
            u.get(1).and_then(Value::as_u64),
            u.get(2).and_then(Value::as_array),
        ) else {
            return Err(bad());
        };
        let mut f = FinalSubscriptions {
            epoch,
            ..FinalSubscriptions::default()
        };
        for s in subs {
            let (Some(sku), Some(below), Some(request_id)) = (
                s.get(0).and_then(Value::as_u64),
                s.get(1).and_then(Value::as_i64),
                s.get(2).and_then(Value::as_str),
            ) else {
                return Err(bad());
            };
            if f.by_sku.insert(sku, (below, request_id.into())).is_some() {
                return Err(format!("{user} has two subscriptions to sku {sku}"));
            }
        }
        users.insert(user.to_string(), f);
    }
    Ok(users)
}

/// What the checks need of one operation.
struct Change {
    /// `f at event N`, for explanations.
    what: String,
    /// `Info` for an unknown outcome.
    completion: EventType,
    /// From the answer: acknowledged operations only.
    request_id: Option<String>,
    invoke_index: u64,
    /// `u64::MAX` for an unknown outcome.
    complete_index: u64,
}

impl Change {
    fn of(op: &Operation) -> Change {
        let completion = match op.completion {
            Some(c) if !op.is_indeterminate() => c,
            _ => EventType::Info,
        };
        Change {
            what: format!("{} at event {}", op.f, op.invoke_index),
            completion,
            request_id: op.complete_value["request_id"]
                .as_str()
                .filter(|_| op.is_ok())
                .map(str::to_string),
            invoke_index: op.invoke_index,
            complete_index: op.complete_index,
        }
    }
}

/// A `set-price` or `set-prices`.
struct PriceSet {
    change: Change,
    /// (sku, cents).
    prices: Vec<(u64, i64)>,
}

/// A `subscribe` (with its threshold) or an `unsubscribe` (`below: None`).
struct SubChange {
    change: Change,
    below: Option<i64>,
}

/// The history's price sets and subscription changes.
#[derive(Default)]
pub struct PricingOps {
    sets: Vec<PriceSet>,
    /// (sku, cents) → the set in `sets` that asked for it.
    by_price: BTreeMap<(u64, i64), usize>,
    /// (user, sku) → its subscribes and unsubscribes, in invocation order.
    subs: BTreeMap<(String, u64), Vec<SubChange>>,
}

impl PricingOps {
    /// Errors mean a malformed history, or prices or thresholds not unique (which the checks
    /// rely on).
    pub fn from_ops(ops: &[Operation]) -> Result<PricingOps, String> {
        let mut p = PricingOps::default();
        for op in ops {
            let what = format!("operation {} at event {}", op.f, op.invoke_index);
            let v = &op.invoke_value;
            match op.f.as_str() {
                "set-price" | "set-prices" => {
                    let mut prices = Vec::new();
                    for price in v["prices"].as_array().into_iter().flatten() {
                        match (
                            price.get(0).and_then(Value::as_u64),
                            price.get(1).and_then(Value::as_i64),
                        ) {
                            (Some(sku), Some(cents)) => prices.push((sku, cents)),
                            _ => return Err(format!("{what}: a price is [sku, cents]")),
                        }
                    }
                    if prices.is_empty() {
                        return Err(format!("{what}: no prices"));
                    }
                    for &key in &prices {
                        if p.by_price.insert(key, p.sets.len()).is_some() {
                            return Err(format!(
                                "{what}: sku {} price {} asked for twice (prices are unique)",
                                key.0, key.1
                            ));
                        }
                    }
                    let change = Change::of(op);
                    p.sets.push(PriceSet { change, prices });
                }
                "subscribe" | "unsubscribe" => {
                    let (Some(user), Some(sku)) = (v["user"].as_str(), v["sku"].as_u64()) else {
                        return Err(format!("{what}: needs a user and a sku"));
                    };
                    let below = match op.f.as_str() {
                        "subscribe" => Some(
                            v["below"]
                                .as_i64()
                                .ok_or_else(|| format!("{what}: needs a threshold (below)"))?,
                        ),
                        _ => None,
                    };
                    let list = p.subs.entry((user.to_string(), sku)).or_default();
                    if below.is_some() && list.iter().any(|s| s.below == below) {
                        return Err(format!(
                            "{what}: threshold {below:?} asked for twice (thresholds are unique)"
                        ));
                    }
                    let change = Change::of(op);
                    list.push(SubChange { change, below });
                }
                _ => {}
            }
        }
        Ok(p)
    }

    pub fn has_price_sets(&self) -> bool {
        !self.sets.is_empty()
    }

    pub fn has_subscription_changes(&self) -> bool {
        !self.subs.is_empty()
    }
}

/// A PRICE event's fields: (sku, before, after, currency, request id).
fn price_event(body: &Value) -> Option<(u64, i64, i64, &str, &str)> {
    Some((
        body["sku"].as_u64()?,
        body["before"].as_i64()?,
        body["after"].as_i64()?,
        body["currency"].as_str()?,
        body["request_id"].as_str()?,
    ))
}

/// The checks of one feed's PRICE (and ITEM) events; `events` are the feed's, in order,
/// through an epoch at or past every final price's.
pub fn check_feed(
    name: &str,
    events: &BTreeMap<(u64, u32), Seen>,
    finals: &BTreeMap<u64, FinalPrice>,
    ops: &PricingOps,
    report: &mut Report,
) {
    // SKU → (cents, currency) so far, from its ITEM event on.
    let mut current: BTreeMap<u64, (i64, String)> = BTreeMap::new();
    // The same as of each final read's epoch.
    let mut at_final: BTreeMap<u64, (i64, String)> = BTreeMap::new();
    // (sku, cents) → the events that set it.
    let mut hits: BTreeMap<(u64, i64), Vec<(u64, u32)>> = BTreeMap::new();
    for (id, ev) in events {
        let sku = match ev.kind.as_str() {
            "item" => {
                let (Some(sku), Some(cents)) =
                    (ev.body["sku"].as_u64(), ev.body["price_cents"].as_i64())
                else {
                    report.note(
                        "watch-protocol",
                        name,
                        format!("item event {id:?}: {}", ev.body),
                    );
                    continue;
                };
                // The item's creation; later ITEM events that change the price come with a
                // PRICE event.
                current.entry(sku).or_insert((cents, String::new()));
                sku
            }
            "price" => {
                let Some((sku, before, after, currency, request_id)) = price_event(&ev.body) else {
                    report.note(
                        "watch-protocol",
                        name,
                        format!("price event {id:?}: {}", ev.body),
                    );
                    continue;
                };
                if let Some((cents, _)) = current.get(&sku).filter(|(c, _)| *c != before) {
                    report.note(
                        "watch-price-chain",
                        name,
                        format!(
                            "event {id:?} moves sku {sku} from {before} cents, the price was \
                             {cents}"
                        ),
                    );
                }
                current.insert(sku, (after, currency.to_string()));
                match ops.by_price.get(&(sku, after)).map(|&i| &ops.sets[i]) {
                    None => report.note(
                        "watch-phantom-price",
                        name,
                        format!(
                            "event {id:?} sets sku {sku} to {after} cents, which no set asked for"
                        ),
                    ),
                    Some(set) if set.change.completion == EventType::Fail => report.note(
                        "watch-failed-price-present",
                        name,
                        format!(
                            "event {id:?} sets sku {sku} to {after} cents, asked for by {}, which \
                             definitely failed",
                            set.change.what
                        ),
                    ),
                    Some(set) => {
                        let acked = set.change.request_id.as_ref();
                        if let Some(acked) = acked.filter(|acked| *acked != request_id) {
                            report.note(
                                "watch-phantom-price",
                                name,
                                format!(
                                    "event {id:?} sets sku {sku} to {after} cents by request \
                                     {request_id:?}; the set that asked for it, {}, was \
                                     acknowledged as {acked:?}",
                                    set.change.what
                                ),
                            );
                        }
                    }
                }
                hits.entry((sku, after)).or_default().push(*id);
                sku
            }
            _ => continue,
        };
        if finals.get(&sku).is_some_and(|f| id.0 <= f.epoch) {
            if let Some(c) = current.get(&sku) {
                at_final.insert(sku, c.clone());
            }
        }
    }
    for ((sku, cents), ids) in hits.iter().filter(|(_, ids)| ids.len() > 1) {
        report.note(
            "watch-duplicate-price",
            name,
            format!("sku {sku} set to {cents} cents by events {ids:?}"),
        );
    }
    for set in &ops.sets {
        let found: Vec<Option<&(u64, u32)>> = set
            .prices
            .iter()
            .map(|key| hits.get(key).and_then(|ids| ids.first()))
            .collect();
        if set.change.completion == EventType::Ok {
            for (&(sku, cents), id) in set.prices.iter().zip(&found) {
                let Some(read) = finals.get(&sku) else {
                    continue;
                };
                if !id.is_some_and(|id| id.0 <= read.epoch) {
                    report.note(
                        "watch-lost-price",
                        name,
                        format!(
                            "{} ({:?}) was acknowledged setting sku {sku} to {cents} cents; no \
                             PRICE event through the final read's epoch {} does",
                            set.change.what,
                            set.change.request_id.as_deref().unwrap_or(""),
                            read.epoch
                        ),
                    );
                }
            }
        }
        let epochs: std::collections::BTreeSet<u64> =
            found.iter().flatten().map(|id| id.0).collect();
        let present = found.iter().filter(|id| id.is_some()).count();
        if present > 0 && (present < found.len() || epochs.len() > 1) {
            report.note(
                "watch-torn-prices",
                name,
                format!(
                    "{} set {:?} in one transaction; the feed has {present} of them, in epochs \
                     {epochs:?}",
                    set.change.what, set.prices
                ),
            );
        }
    }
    for (sku, read) in finals {
        let want = (read.cents, read.currency.clone());
        match at_final.get(sku) {
            Some(got) if *got == want => {}
            got => report.note(
                "watch-price-mismatch",
                name,
                format!(
                    "sku {sku}: the final read at epoch {} gives {} cents {:?}; the feed's events \
                     through it give {}",
                    read.epoch,
                    read.cents,
                    read.currency,
                    got.map_or("none".to_string(), |(c, cur)| format!("{c} cents {cur:?}"))
                ),
            ),
        }
    }
}

/// The final subscriptions against the history's subscribes and unsubscribes (users the final
/// read lacks are not judged).
pub fn check_subscriptions(
    finals: &BTreeMap<String, FinalSubscriptions>,
    ops: &PricingOps,
    report: &mut Report,
) {
    const WHERE: &str = "final subscriptions";
    let none: Vec<SubChange> = Vec::new();
    for (user, f) in finals {
        for (sku, (below, request_id)) in &f.by_sku {
            let changes = ops.subs.get(&(user.clone(), *sku)).unwrap_or(&none);
            let Some(maker) = changes.iter().find(|s| s.below == Some(*below)) else {
                report.note(
                    "watch-phantom-subscription",
                    WHERE,
                    format!(
                        "{user} is subscribed to sku {sku} below {below} (request {request_id:?}), \
                         which no subscribe asked for"
                    ),
                );
                continue;
            };
            let c = &maker.change;
            if c.completion == EventType::Fail {
                report.note(
                    "watch-phantom-subscription",
                    WHERE,
                    format!(
                        "{user} is subscribed to sku {sku} below {below}, asked for by {}, which \
                         definitely failed",
                        c.what
                    ),
                );
                continue;
            }
            if let Some(acked) = c.request_id.as_ref().filter(|acked| *acked != request_id) {
                report.note(
                    "watch-phantom-subscription",
                    WHERE,
                    format!(
                        "{user}'s subscription to sku {sku} below {below} was made by request \
                         {request_id:?}; {}, which asked for it, was acknowledged as {acked:?}",
                        c.what
                    ),
                );
            }
            // Anything acknowledged on this (user, sku) that began after the maker completed
            // took effect after it, so the maker's threshold cannot be what is left.
            if let Some(later) = changes.iter().find(|s| {
                s.change.completion == EventType::Ok && s.change.invoke_index > c.complete_index
            }) {
                report.note(
                    "watch-stale-subscription",
                    WHERE,
                    format!(
                        "{user}'s subscription to sku {sku} is still {}'s (below {below}), though \
                         {}, invoked after it completed, was acknowledged",
                        c.what, later.change.what
                    ),
                );
            }
        }
    }
    for ((user, sku), changes) in &ops.subs {
        let Some(f) = finals.get(user) else { continue };
        if f.by_sku.contains_key(sku) {
            continue;
        }
        for s in changes
            .iter()
            .filter(|s| s.below.is_some() && s.change.completion == EventType::Ok)
        {
            // An unsubscribe may have come after it unless it definitely failed or was
            // acknowledged before the subscribe began.
            let undone = changes.iter().any(|u| {
                u.below.is_none()
                    && u.change.completion != EventType::Fail
                    && u.change.complete_index >= s.change.invoke_index
            });
            if !undone {
                report.note(
                    "watch-lost-subscription",
                    WHERE,
                    format!(
                        "{} ({:?}) was acknowledged subscribing {user} to sku {sku}, and no \
                         unsubscribe may have come after it; the final read at epoch {} has none",
                        s.change.what,
                        s.change.request_id.as_deref().unwrap_or(""),
                        f.epoch
                    ),
                );
            }
        }
    }
}
