//! The `watch` workload's checker: what each change-feed consumer received, against the final
//! state and against a reference stream.
//!
//! In: the history (the inventory workload's, judged by [`crate::inventory`] as well, and
//! [`crate::pricing`]'s price sets and subscriptions) with the
//! final state the runner read for the feed (`watch-final`, below), and one feed record per
//! consumer ([`crate::feed_record`]), the last one the reference stream read from epoch 1
//! after recovery. Out: anomalies by kind, explained,
//! what could not be checked, and per-consumer figures. A pure function of those records.
//!
//! History shape added to the inventory workload's: `{"process": "watch", "type": "ok", "f":
//! "watch-final", "value": {"stock_epoch": E, "stock": [[dc, sku, on_hand, reserved], ...],
//! "orders_epoch": E, "orders": [[order_id, request_id], ...], "prices": [[sku, cents,
//! currency, epoch], ...], "subscriptions": [[user, epoch, [[sku, below, request_id], ...]],
//! ...], "feed_starts": [[node, epoch], ...]}}`: every stock row at one epoch, every committed
//! order (`ListOrders`) as of `orders_epoch`, each SKU's price and each test user's open
//! subscriptions, read linearizably after the final reads, and where each node's feed started
//! at the end (past 1 on a node that installed a snapshot; counted, not judged). A history
//! without `prices` or `subscriptions` (older runs) has those checks left out.
//!
//! Checks, for every feed (consumers and the reference):
//! - events strictly increasing in (epoch, index): `watch-duplicate` (an event name received
//!   again), `watch-out-of-order` (one below the last, or in an epoch the feed had already
//!   passed); indexes without holes within an epoch (the feed is unfiltered): `watch-gap`;
//!   the resume token of an epoch names it, an epoch's time is after the previous epoch's, a
//!   progress never goes back: `watch-protocol` (as are what the consumer itself saw wrong on
//!   the wire: [`Record::Violation`]);
//! - over the epochs both covered, a consumer's event names are the reference's (`watch-gap`
//!   for one missing, `watch-phantom-event` for one the reference lacks) and their contents
//!   and epoch times are the same (`watch-content-mismatch`);
//! - once it covered the final epoch: its ORDER events through `orders_epoch` are the final
//!   orders, each once (`watch-missing-order`, `watch-phantom-order`, `watch-duplicate-order`),
//!   so every acknowledged order is there and no definitely failed one (`watch-lost-order`,
//!   `watch-failed-order-present`, by request id); and its STOCK events through `stock_epoch`,
//!   replayed in order from all-zero rows, each start where the row's previous one ended
//!   (`watch-stock-chain`) and end at every final row (`watch-replay-mismatch`); and its PRICE
//!   events against the price sets and the final prices ([`crate::pricing_check`]).
//!
//! Once, the final subscriptions against the subscribes and unsubscribes of the history
//! ([`crate::pricing_check`]).
//!
//! A feed that did not cover the final epoch, or no reference, leaves those checks undone and
//! says so (the verdict is then unknown unless an anomaly was found).

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

pub use crate::feed_record::{load_feeds, Feed, Record, Seen, REFERENCE};
use crate::history::{Event, Operation, Process};
use crate::pricing_check::{self, FinalPrice, FinalSubscriptions, PricingOps};

/// Anomalies listed at most (all are counted).
const EXAMPLES_MAX: usize = 50;

/// The final state the feed is checked against (the history's `watch-final`).
#[derive(Clone, Debug, Default)]
pub struct Final {
    pub stock_epoch: u64,
    /// (dc, sku) → (on_hand, reserved).
    pub stock: BTreeMap<(u64, u64), (i64, i64)>,
    pub orders_epoch: u64,
    /// order id → request id.
    pub orders: BTreeMap<u64, String>,
    /// SKU → its final price; `None` in a history from before prices were set.
    pub prices: Option<BTreeMap<u64, FinalPrice>>,
    /// Test user → their open subscriptions; `None` likewise.
    pub subscriptions: Option<BTreeMap<String, FinalSubscriptions>>,
    /// Nodes whose feed started after epoch 1 at the end (they installed a snapshot).
    pub nodes_feed_after_snapshot: u64,
}

impl Final {
    fn from_history(events: &[Event]) -> Result<Option<Final>, String> {
        let Some(e) = events
            .iter()
            .find(|e| e.process == Process::Named("watch".into()) && e.f == "watch-final")
        else {
            return Ok(None);
        };
        let bad = |what: &str| format!("event {}: watch-final: {what}", e.index);
        let v = &e.value;
        let mut f = Final {
            stock_epoch: v["stock_epoch"]
                .as_u64()
                .ok_or_else(|| bad("stock_epoch"))?,
            orders_epoch: v["orders_epoch"]
                .as_u64()
                .ok_or_else(|| bad("orders_epoch"))?,
            ..Final::default()
        };
        for r in v["stock"].as_array().ok_or_else(|| bad("stock"))? {
            let n = |i: usize| r.get(i).and_then(Value::as_i64);
            match (n(0), n(1), n(2), n(3)) {
                (Some(dc), Some(sku), Some(on_hand), Some(reserved)) => {
                    f.stock.insert((dc as u64, sku as u64), (on_hand, reserved));
                }
                _ => return Err(bad("a stock row is [dc, sku, on_hand, reserved]")),
            }
        }
        for o in v["orders"].as_array().ok_or_else(|| bad("orders"))? {
            match (
                o.get(0).and_then(Value::as_u64),
                o.get(1).and_then(Value::as_str),
            ) {
                (Some(id), Some(request_id)) => {
                    f.orders.insert(id, request_id.to_string());
                }
                _ => return Err(bad("an order is [order_id, request_id]")),
            }
        }
        if let Some(p) = v.get("prices") {
            f.prices = Some(pricing_check::parse_prices(p).map_err(|e| bad(&e))?);
        }
        if let Some(s) = v.get("subscriptions") {
            f.subscriptions = Some(pricing_check::parse_subscriptions(s).map_err(|e| bad(&e))?);
        }
        f.nodes_feed_after_snapshot = v["feed_starts"].as_array().map_or(0, |starts| {
            starts
                .iter()
                .filter(|s| s[1].as_u64().is_some_and(|e| e > 1))
                .count() as u64
        });
        Ok(Some(f))
    }

    /// The epoch a feed must cover to be checked against every final read it is compared with
    /// (subscriptions are not in the feed).
    fn epoch(&self) -> u64 {
        let prices = self.prices.iter().flatten().map(|(_, p)| p.epoch);
        prices.fold(self.stock_epoch.max(self.orders_epoch), u64::max)
    }
}

#[derive(Debug, Default)]
pub struct Report {
    /// Examples, at most [`EXAMPLES_MAX`], each `kind: feed: explanation`.
    pub anomalies: Vec<String>,
    pub counts: BTreeMap<&'static str, usize>,
    /// What could not be checked, and why.
    pub unchecked: Vec<String>,
    /// Per feed `watch-<name>-events`, `-epochs`, `-covered`, `-switches`, `-errors`,
    /// `-cut-off` (RESOURCE_EXHAUSTED), `-stalls`, `-stale`, `-out-of-range`, `-dawdles`,
    /// `-price-events`; `watch-events` over the consumers;
    /// `watch-nodes-feed-after-snapshot`; `watch-final-subscriptions`.
    pub stats: BTreeMap<String, u64>,
    pub consumers: usize,
}

impl Report {
    pub(crate) fn note(&mut self, kind: &'static str, feed: &str, what: String) {
        *self.counts.entry(kind).or_default() += 1;
        if self.anomalies.len() < EXAMPLES_MAX {
            self.anomalies.push(format!("{kind}: {feed}: {what}"));
        }
    }
}

/// What one feed delivered, its own consistency checked.
struct Walk {
    /// (epoch, index) → event, first delivery.
    events: BTreeMap<(u64, u32), Seen>,
    /// Epoch → its time, as delivered.
    times: BTreeMap<u64, u64>,
    /// The highest epoch the feed covered (by an epoch's last message or a progress).
    covered: u64,
}

fn walk(feed: &Feed, report: &mut Report) -> Walk {
    let name = feed.name.as_str();
    let mut w = Walk {
        events: BTreeMap::new(),
        times: BTreeMap::new(),
        covered: 0,
    };
    let mut last: Option<(u64, u32)> = None;
    let mut last_time: Option<(u64, u64)> = None;
    let stat = |report: &mut Report, what: &str, n: u64| {
        *report
            .stats
            .entry(format!("watch-{name}-{what}"))
            .or_default() += n;
    };
    for r in &feed.records {
        match r {
            Record::Epoch {
                epoch,
                epoch_time_ms,
                token,
                events,
                ..
            } => {
                stat(report, "epochs", 1);
                stat(report, "events", events.len() as u64);
                if *token != format!("ordo1.{epoch}") {
                    report.note(
                        "watch-protocol",
                        name,
                        format!("epoch {epoch} came with resume token {token:?}"),
                    );
                }
                if let Some((e, t)) = last_time {
                    if *epoch > e && *epoch_time_ms <= t {
                        report.note(
                            "watch-protocol",
                            name,
                            format!(
                                "epoch {epoch}'s time {epoch_time_ms} is not after epoch {e}'s {t}"
                            ),
                        );
                    }
                }
                last_time = Some((*epoch, *epoch_time_ms));
                let passed = *epoch <= w.covered;
                let mut next_index = 0u32;
                for ev in events {
                    let id = (*epoch, ev.index);
                    if w.events.contains_key(&id) {
                        report.note(
                            "watch-duplicate",
                            name,
                            format!("event {id:?} ({}) received again", ev.kind),
                        );
                        continue;
                    }
                    if passed || last.is_some_and(|l| id < l) {
                        report.note(
                            "watch-out-of-order",
                            name,
                            format!(
                                "event {id:?} ({}) after {last:?}, covered through epoch {}",
                                ev.kind, w.covered
                            ),
                        );
                    } else if ev.index > next_index {
                        report.note(
                            "watch-gap",
                            name,
                            format!(
                                "epoch {epoch}: indexes {next_index}..{} missing before {}",
                                ev.index - 1,
                                ev.index
                            ),
                        );
                    }
                    next_index = next_index.max(ev.index + 1);
                    if ev.kind == "price" {
                        stat(report, "price-events", 1);
                    }
                    last = last.max(Some(id));
                    w.events.insert(id, ev.clone());
                }
                w.times.entry(*epoch).or_insert(*epoch_time_ms);
                w.covered = w.covered.max(*epoch);
            }
            Record::Progress { epoch, .. } => {
                if *epoch < w.covered {
                    report.note(
                        "watch-protocol",
                        name,
                        format!("progress to epoch {epoch} after covering {}", w.covered),
                    );
                }
                w.covered = w.covered.max(*epoch);
            }
            Record::Violation { node, what, .. } => {
                report.note("watch-protocol", name, format!("node {node}: {what}"));
            }
            Record::Switch { .. } => stat(report, "switches", 1),
            Record::Error { code, .. } => {
                stat(report, "errors", 1);
                // The node cut a consumer off that stopped reading.
                if code == "ResourceExhausted" {
                    stat(report, "cut-off", 1);
                }
            }
            Record::Stall { .. } => stat(report, "stalls", 1),
            Record::Stale { .. } => stat(report, "stale", 1),
            Record::OutOfRange { .. } => stat(report, "out-of-range", 1),
            Record::Dawdle { .. } => stat(report, "dawdles", 1),
            Record::Open { .. } | Record::End { .. } => {}
        }
    }
    stat(report, "covered", w.covered);
    w
}

/// A consumer's events against the reference's, over the epochs both covered.
fn compare(name: &str, w: &Walk, reference: &Walk, report: &mut Report) {
    let upto = w.covered.min(reference.covered);
    let range = ..=(upto, u32::MAX);
    for (id, ev) in reference.events.range(range) {
        match w.events.get(id) {
            None => report.note(
                "watch-gap",
                name,
                format!("event {id:?} ({}) of the reference never came", ev.kind),
            ),
            Some(mine) if mine.digest != ev.digest => report.note(
                "watch-content-mismatch",
                name,
                format!(
                    "event {id:?}: {} here, {} in the reference",
                    mine.body, ev.body
                ),
            ),
            Some(_) => {}
        }
    }
    for (id, ev) in w.events.range(range) {
        if !reference.events.contains_key(id) {
            report.note(
                "watch-phantom-event",
                name,
                format!(
                    "event {id:?} ({}: {}) is not in the reference",
                    ev.kind, ev.body
                ),
            );
        }
    }
    for (epoch, t) in w.times.range(..=upto) {
        if let Some(rt) = reference.times.get(epoch).filter(|rt| *rt != t) {
            report.note(
                "watch-content-mismatch",
                name,
                format!("epoch {epoch}'s time is {t} here, {rt} in the reference"),
            );
        }
    }
}

fn level(v: &Value) -> Option<(i64, i64)> {
    Some((v.get(0)?.as_i64()?, v.get(1)?.as_i64()?))
}

/// The final checks of a feed that covered the final epoch.
fn against_final(
    name: &str,
    w: &Walk,
    fin: &Final,
    ops: &[Operation],
    pricing: &PricingOps,
    report: &mut Report,
) {
    // Orders: the ORDER events through orders_epoch are the final orders, each once.
    let mut seen: BTreeMap<u64, (u64, u32)> = BTreeMap::new();
    let mut request_ids = BTreeSet::new();
    for (id, ev) in w.events.range(..=(fin.orders_epoch, u32::MAX)) {
        if ev.kind != "order" {
            continue;
        }
        let Some(order_id) = ev.body["order_id"].as_u64() else {
            report.note(
                "watch-protocol",
                name,
                format!("order event {id:?} has no id"),
            );
            continue;
        };
        if let Some(request_id) = ev.body["request_id"].as_str() {
            request_ids.insert(request_id.to_string());
        }
        if let Some(first) = seen.insert(order_id, *id) {
            report.note(
                "watch-duplicate-order",
                name,
                format!("order {order_id} in events {first:?} and {id:?}"),
            );
        }
        if !fin.orders.contains_key(&order_id) {
            report.note(
                "watch-phantom-order",
                name,
                format!("event {id:?} commits order {order_id}, which ListOrders lacks"),
            );
        }
    }
    for (order_id, request_id) in &fin.orders {
        if !seen.contains_key(order_id) {
            report.note(
                "watch-missing-order",
                name,
                format!("order {order_id} ({request_id}) of ListOrders has no ORDER event"),
            );
        }
    }
    for op in ops {
        if !matches!(op.f.as_str(), "order" | "nearby-order") || op.is_indeterminate() {
            continue;
        }
        let Some(request_id) = op.invoke_value["request_id"].as_str() else {
            continue;
        };
        match (op.is_ok(), request_ids.contains(request_id)) {
            (true, false) => report.note(
                "watch-lost-order",
                name,
                format!("acknowledged order {request_id} has no ORDER event"),
            ),
            (false, true) => report.note(
                "watch-failed-order-present",
                name,
                format!("failed order {request_id} has an ORDER event"),
            ),
            _ => {}
        }
    }

    // Stock: replayed from zero, each event where the row's last one ended, ending at the
    // final rows.
    let mut rows: BTreeMap<(u64, u64), (i64, i64)> = BTreeMap::new();
    for (id, ev) in w.events.range(..=(fin.stock_epoch, u32::MAX)) {
        if ev.kind != "stock" {
            continue;
        }
        let b = &ev.body;
        let (Some(dc), Some(sku), Some(before), Some(after)) = (
            b["dc"].as_u64(),
            b["sku"].as_u64(),
            level(&b["before"]),
            level(&b["after"]),
        ) else {
            report.note("watch-protocol", name, format!("stock event {id:?}: {b}"));
            continue;
        };
        let row = rows.entry((dc, sku)).or_default();
        if *row != before {
            report.note(
                "watch-stock-chain",
                name,
                format!(
                    "event {id:?} ({}) on dc {dc} sku {sku} starts at {before:?}, the row was at \
                     {row:?}",
                    b["cause"]
                ),
            );
        }
        *row = after;
    }
    for (key, want) in &fin.stock {
        let got = rows.get(key).copied().unwrap_or_default();
        if got != *want {
            report.note(
                "watch-replay-mismatch",
                name,
                format!(
                    "dc {} sku {}: the events replay to (on_hand, reserved) {got:?}, the final \
                     read at epoch {} is {want:?}",
                    key.0, key.1, fin.stock_epoch
                ),
            );
        }
    }

    if let Some(prices) = &fin.prices {
        pricing_check::check_feed(name, &w.events, prices, pricing, report);
    }
}

/// Checks every feed against the history's final state and the reference (the feed named
/// [`REFERENCE`]). Errors mean malformed input.
pub fn check(events: &[Event], ops: &[Operation], feeds: &[Feed]) -> Result<Report, String> {
    let mut report = Report::default();
    let fin = Final::from_history(events)?;
    let pricing = PricingOps::from_ops(ops)?;
    match &fin {
        None => report
            .unchecked
            .push("the history has no watch-final: nothing checked against it".into()),
        Some(f) => {
            report.stats.insert(
                "watch-nodes-feed-after-snapshot".into(),
                f.nodes_feed_after_snapshot,
            );
            if f.prices.is_none() && pricing.has_price_sets() {
                report
                    .unchecked
                    .push("watch-final has no prices: price sets not checked".into());
            }
            match &f.subscriptions {
                Some(subs) => {
                    let n = subs.values().map(|s| s.by_sku.len() as u64).sum();
                    report.stats.insert("watch-final-subscriptions".into(), n);
                    pricing_check::check_subscriptions(subs, &pricing, &mut report);
                }
                None if pricing.has_subscription_changes() => report
                    .unchecked
                    .push("watch-final has no subscriptions: subscribes not checked".into()),
                None => {}
            }
        }
    }
    let walks: Vec<(&str, Walk)> = feeds
        .iter()
        .map(|f| (f.name.as_str(), walk(f, &mut report)))
        .collect();
    let reference = walks.iter().find(|(n, _)| *n == REFERENCE).map(|(_, w)| w);
    match reference {
        None => report
            .unchecked
            .push("no reference stream: consumers not compared with one".into()),
        Some(r) if fin.as_ref().is_some_and(|f| r.covered < f.epoch()) => report.unchecked.push(
            format!("the reference covered only through epoch {}", r.covered),
        ),
        _ => {}
    }
    for (name, w) in &walks {
        if *name != REFERENCE {
            report.consumers += 1;
            *report.stats.entry("watch-events".into()).or_default() += w.events.len() as u64;
            if let Some(r) = reference {
                compare(name, w, r, &mut report);
            }
        }
        let Some(fin) = &fin else { continue };
        if w.covered >= fin.epoch() {
            against_final(name, w, fin, ops, &pricing, &mut report);
        } else {
            report.unchecked.push(format!(
                "{name} covered only through epoch {}, not the final epoch {}: its orders, \
                 stock and prices not checked",
                w.covered,
                fin.epoch()
            ));
        }
    }
    if report.consumers == 0 {
        report.unchecked.push("no consumer's feed record".into());
    }
    Ok(report)
}

#[cfg(test)]
#[path = "watch_check_tests.rs"]
mod tests;
