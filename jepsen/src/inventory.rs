//! The inventory checker: orders (single- and multi-DC), restocks and stock reads.
//!
//! History shape (what the runner writes):
//! - `{"process": "setup", "type": "ok", "f": "init", "value": {"stock": [[dc, sku, qty], ...]}}`
//! - `f = "order"`: value `{"request_id": ID, "lines": [[dc, sku, qty], ...]}` on invoke;
//!   `ok` = committed (all-or-nothing), `fail` = rejected (no effect), `info` = unknown;
//! - `f = "restock"`: value `[dc, sku, delta]`;
//! - `f = "restock-dc"`: value `[dc, [[sku, delta], ...]]`, every line or none;
//! - `f = "read"`: `ok` value `[[dc, sku, on_hand], ...]` (rows may add `reserved`);
//! - `f = "final-read"`, after healing: `ok` value `{"stock": [[dc, sku, on_hand], ...],
//!   "orders": [request ids of every committed order], "order_lines": {request id: [[dc, sku,
//!   allocated], ...]}}` (`order_lines` since nearby orders; older histories lack it);
//! - reservations (`reserve`, `confirm`, `cancel`, `extend`, and the final read's `holds`), as
//!   [`crate::cart`] describes them;
//! - nearby (split-fill) orders (`nearby-order`), as [`crate::nearby`] describes them.
//!
//! Checks: no read below zero; every acknowledged order is in the final orders, once; no order
//! is there that was rejected or never invoked (a confirm's order is the reservations
//! checker's); the final read gives an order the lines it asked for; and per (dc, sku): final
//! = initial + restocks − committed orders − units of confirmed holds, where an indeterminate
//! order counts iff the final orders hold it, indeterminate restocks may each have applied or
//! not, and a hold counts iff its final status is confirmed. Nearby orders count like orders,
//! with the lines the server chose ([`crate::split`] checks them and says what each took);
//! holds are [`crate::reservations`]'s to check. Their anomalies join these.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use crate::history::{Event, EventType, Operation, Process};
use crate::{reservations, split};

type Key = (u64, u64);
/// `[dc, sku, n]`: a quantity at a key.
type Row = (u64, u64, i64);

fn rows(value: &Value, what: &str) -> Result<Vec<Row>, String> {
    let list = value
        .as_array()
        .ok_or_else(|| format!("{what}: expected [[dc, sku, n], ...]"))?;
    list.iter()
        .map(|r| {
            // Stock rows may carry `reserved` after on_hand.
            let r = r.as_array().filter(|r| r.len() >= 3);
            match r.map(|r| (r[0].as_u64(), r[1].as_u64(), r[2].as_i64())) {
                Some((Some(dc), Some(sku), Some(n))) => Ok((dc, sku, n)),
                _ => Err(format!("{what}: each row is [dc, sku, n] of integers")),
            }
        })
        .collect()
}

pub struct Report {
    /// Examples, at most [`EXAMPLES_MAX`], each `kind: explanation`.
    pub anomalies: Vec<String>,
    /// Every anomaly counted by kind: `negative-read`, `lost-order`, `rejected-order-present`,
    /// `phantom-order`, `duplicate-order`, `order-lines-mismatch`, `stock-mismatch`, and the
    /// reservations and split-order checkers'.
    pub counts: BTreeMap<&'static str, usize>,
    /// Keys whose stock could not be checked (too many indeterminate restocks to search, or a
    /// committed nearby order of unknown outcome whose lines are not known).
    pub unchecked: Vec<String>,
    pub orders_ok: usize,
    pub orders_indeterminate: usize,
    pub keys: usize,
    /// What the reservations checker found (its anomalies are in `anomalies` and `counts`).
    pub holds: reservations::Report,
    /// What the split-order checker found (its anomalies are in `anomalies` and `counts`).
    pub nearby: split::Report,
}

/// Distinct subset sums of one key's indeterminate restocks tracked, at most (small deltas
/// keep this far below the limit however many restocks there are).
const SUBSET_SUMS_MAX: usize = 1_000_000;
/// Anomalies listed at most.
const EXAMPLES_MAX: usize = 50;

/// Whether some subset of `deltas` sums to `target`; `None` when the search grows too big.
fn subset_sums_to(deltas: &[i64], target: i64) -> Option<bool> {
    let mut sums = BTreeSet::from([0i64]);
    for d in deltas {
        let next: Vec<i64> = sums.iter().map(|s| s + d).collect();
        sums.extend(next);
        if sums.len() > SUBSET_SUMS_MAX {
            return None;
        }
    }
    Some(sums.contains(&target))
}

pub fn check(events: &[Event], ops: &[Operation]) -> Result<Report, String> {
    let mut anomalies = Vec::new();
    let mut counts: BTreeMap<&'static str, usize> = BTreeMap::new();
    let mut unchecked = Vec::new();
    let mut note = |kind: &'static str, a: String| {
        *counts.entry(kind).or_default() += 1;
        if anomalies.len() < EXAMPLES_MAX {
            anomalies.push(format!("{kind}: {a}"));
        }
    };
    let mut initial: BTreeMap<Key, i64> = BTreeMap::new();
    for e in events {
        if e.process == Process::Named("setup".into()) && e.f == "init" {
            for (dc, sku, n) in rows(&e.value["stock"], &format!("event {} init", e.index))? {
                initial.insert((dc, sku), n);
            }
        }
    }
    let mut final_stock: Option<BTreeMap<Key, i64>> = None;
    let mut final_orders: Option<Vec<String>> = None;
    let mut final_lines: Option<BTreeMap<String, Vec<Row>>> = None;
    let mut expected: BTreeMap<Key, i64> = initial.clone();
    let mut unknown_restocks: BTreeMap<Key, Vec<i64>> = BTreeMap::new();
    let mut invoked: BTreeMap<String, (EventType, Vec<Row>)> = BTreeMap::new();
    let (mut orders_ok, mut orders_indeterminate) = (0, 0);

    for (i, op) in ops.iter().enumerate() {
        let what = format!("operation {i} ({} at event {})", op.f, op.invoke_index);
        let completion = if op.is_indeterminate() {
            EventType::Info
        } else {
            op.completion.expect("completed")
        };
        match op.f.as_str() {
            "order" => {
                let id = op.invoke_value["request_id"]
                    .as_str()
                    .ok_or_else(|| format!("{what}: an order needs a request_id"))?
                    .to_string();
                let lines = rows(&op.invoke_value["lines"], &what)?;
                match completion {
                    EventType::Ok => orders_ok += 1,
                    EventType::Info => orders_indeterminate += 1,
                    _ => {}
                }
                invoked.insert(id, (completion, lines));
            }
            "restock" => {
                let v = op.invoke_value.as_array().filter(|v| v.len() == 3);
                let (dc, sku, delta) =
                    match v.map(|v| (v[0].as_u64(), v[1].as_u64(), v[2].as_i64())) {
                        Some((Some(dc), Some(sku), Some(d))) => (dc, sku, d),
                        _ => return Err(format!("{what}: a restock is [dc, sku, delta]")),
                    };
                match completion {
                    EventType::Ok => *expected.entry((dc, sku)).or_default() += delta,
                    EventType::Info => unknown_restocks.entry((dc, sku)).or_default().push(delta),
                    _ => {}
                }
            }
            "restock-dc" => {
                // Every line applied or none; each key's check takes its line on its own,
                // which admits every outcome the whole transaction can have.
                let bad = || format!("{what}: a DC's restock is [dc, [[sku, delta], ...]]");
                let v = op.invoke_value.as_array().filter(|v| v.len() == 2);
                let dc = v.and_then(|v| v[0].as_u64()).ok_or_else(bad)?;
                let lines = v.and_then(|v| v[1].as_array()).ok_or_else(bad)?;
                for line in lines {
                    let line = line.as_array().filter(|l| l.len() == 2).ok_or_else(bad)?;
                    let sku = line[0].as_u64().ok_or_else(bad)?;
                    let delta = line[1].as_i64().ok_or_else(bad)?;
                    match completion {
                        EventType::Ok => *expected.entry((dc, sku)).or_default() += delta,
                        EventType::Info => {
                            unknown_restocks.entry((dc, sku)).or_default().push(delta)
                        }
                        _ => {}
                    }
                }
            }
            "read" if completion == EventType::Ok => {
                for (dc, sku, n) in rows(&op.complete_value, &what)? {
                    if n < 0 {
                        note(
                            "negative-read",
                            format!("{what}: dc {dc} sku {sku} read at {n}, below zero"),
                        );
                    }
                }
            }
            "final-read" if completion == EventType::Ok => {
                let stock = rows(&op.complete_value["stock"], &what)?;
                for &(dc, sku, n) in &stock {
                    if n < 0 {
                        note(
                            "negative-read",
                            format!("{what}: dc {dc} sku {sku} final stock {n}, below zero"),
                        );
                    }
                }
                final_stock = Some(
                    stock
                        .into_iter()
                        .map(|(dc, sku, n)| ((dc, sku), n))
                        .collect(),
                );
                let orders = op.complete_value["orders"]
                    .as_array()
                    .ok_or_else(|| format!("{what}: orders must be a list of request ids"))?;
                final_orders = Some(
                    orders
                        .iter()
                        .filter_map(|o| o.as_str().map(String::from))
                        .collect(),
                );
                if let Some(lines) = op.complete_value.get("order_lines") {
                    let lines = lines.as_object().ok_or_else(|| {
                        format!("{what}: order_lines must map request ids to [[dc, sku, n], ...]")
                    })?;
                    let mut by_id = BTreeMap::new();
                    for (id, l) in lines {
                        by_id.insert(id.clone(), rows(l, &format!("{what}: order_lines {id}"))?);
                    }
                    final_lines = Some(by_id);
                }
            }
            _ => {}
        }
    }
    let (Some(final_stock), Some(final_order_list)) = (final_stock, final_orders) else {
        return Err("the history has no final-read: nothing to check the stock against".into());
    };
    let mut final_orders = BTreeSet::new();
    for id in &final_order_list {
        if !final_orders.insert(id.clone()) {
            note(
                "duplicate-order",
                format!("order {id} is in the final orders more than once"),
            );
        }
    }

    for (id, (completion, lines)) in &invoked {
        let present = final_orders.contains(id);
        match completion {
            EventType::Ok if !present => note(
                "lost-order",
                format!("order {id} was acknowledged but is missing (lost)"),
            ),
            EventType::Fail if present => note(
                "rejected-order-present",
                format!("order {id} was rejected but is present"),
            ),
            _ => {}
        }
        if present {
            for &(dc, sku, qty) in lines {
                *expected.entry((dc, sku)).or_default() -= qty;
            }
            // Ordinary orders are all-or-nothing: each line allocated in full.
            let listed = final_lines.as_ref().and_then(|l| l.get(id));
            if let Some(listed) = listed.map(|l| split::by_key(l)) {
                let asked = split::by_key(lines);
                if listed != asked {
                    note(
                        "order-lines-mismatch",
                        format!(
                            "order {id} asked for {} but the final read lists {}",
                            split::render(&asked),
                            split::render(&listed)
                        ),
                    );
                }
            }
        }
    }
    let nearby = split::check(
        ops,
        &split::FinalOrders {
            present: &final_orders,
            lines: final_lines.as_ref(),
        },
    )?;
    for (key, units) in &nearby.taken_units {
        *expected.entry(*key).or_default() -= units;
    }
    let holds = reservations::check(events, ops)?;
    for (key, units) in &holds.confirmed_units {
        *expected.entry(*key).or_default() -= units;
    }
    let accounted: BTreeSet<String> = invoked
        .keys()
        .chain(&holds.confirm_request_ids)
        .chain(&nearby.request_ids)
        .cloned()
        .collect();
    for id in final_orders.difference(&accounted) {
        note(
            "phantom-order",
            format!("order {id} is present but was never invoked"),
        );
    }
    let keys: BTreeSet<Key> = expected.keys().chain(final_stock.keys()).copied().collect();
    for key in &keys {
        let (dc, sku) = key;
        if let Some(why) = nearby.unknown_keys.get(key) {
            unchecked.push(format!("dc {dc} sku {sku}: {why}; not checked"));
            continue;
        }
        let want = expected.get(key).copied().unwrap_or(0);
        let got = final_stock.get(key).copied().unwrap_or(0);
        let unknown = unknown_restocks.get(key).map(Vec::as_slice).unwrap_or(&[]);
        match subset_sums_to(unknown, got - want) {
            Some(true) => {}
            Some(false) => note("stock-mismatch", format!(
                "dc {dc} sku {sku}: final stock {got}, expected {want} (initial + restocks - committed orders - confirmed holds){}",
                if unknown.is_empty() { String::new() } else { format!(" plus some of the {} indeterminate restocks", unknown.len()) }
            )),
            None => unchecked.push(format!(
                "dc {dc} sku {sku}: the {} indeterminate restocks have over {SUBSET_SUMS_MAX} subset sums; not checked",
                unknown.len()
            )),
        }
    }
    for (kind, n) in holds.counts.iter().chain(&nearby.counts) {
        *counts.entry(kind).or_default() += n;
    }
    for a in holds.anomalies.iter().chain(&nearby.anomalies) {
        if anomalies.len() < EXAMPLES_MAX {
            anomalies.push(a.clone());
        }
    }
    Ok(Report {
        anomalies,
        counts,
        unchecked,
        orders_ok,
        orders_indeterminate,
        keys: keys.len(),
        holds,
        nearby,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::pair;
    use serde_json::json;

    fn history(final_stock: Value, final_orders: Value) -> Vec<Event> {
        let mut events = Vec::new();
        let mut push = |p: Process, kind: &str, f: &str, value: Value| {
            let i = events.len() as u64;
            events.push(Event {
                index: i,
                time_ns: i,
                process: p,
                kind: serde_json::from_value(json!(kind)).unwrap(),
                f: f.into(),
                value,
                key: None,
            });
        };
        let c = Process::Client;
        push(
            Process::Named("setup".into()),
            "ok",
            "init",
            json!({"stock": [[1, 1, 10], [2, 1, 5]]}),
        );
        let o1 = json!({"request_id": "o1", "lines": [[1, 1, 3], [2, 1, 1]]});
        push(c(1), "invoke", "order", o1.clone());
        push(c(1), "ok", "order", o1);
        let o2 = json!({"request_id": "o2", "lines": [[1, 1, 20]]});
        push(c(2), "invoke", "order", o2.clone());
        push(c(2), "fail", "order", o2);
        let o3 = json!({"request_id": "o3", "lines": [[2, 1, 2]]});
        push(c(3), "invoke", "order", o3.clone());
        push(c(3), "info", "order", o3);
        push(c(4), "invoke", "restock", json!([1, 1, 4]));
        push(c(4), "info", "restock", json!([1, 1, 4]));
        push(c(5), "invoke", "read", Value::Null);
        push(c(5), "ok", "read", json!([[1, 1, 7]]));
        push(c(6), "invoke", "final-read", Value::Null);
        push(
            c(6),
            "ok",
            "final-read",
            json!({"stock": final_stock, "orders": final_orders}),
        );
        events
    }

    fn anomalies(events: &[Event]) -> Vec<String> {
        check(events, &pair(events).unwrap()).unwrap().anomalies
    }

    #[test]
    fn consistent_histories_pass_with_or_without_the_indeterminate_ops() {
        // o3 applied, restock applied.
        let h = history(json!([[1, 1, 11], [2, 1, 2]]), json!(["o1", "o3"]));
        assert!(anomalies(&h).is_empty(), "{:?}", anomalies(&h));
        // o3 not applied, restock not applied.
        let h = history(json!([[1, 1, 7], [2, 1, 4]]), json!(["o1"]));
        assert!(anomalies(&h).is_empty(), "{:?}", anomalies(&h));
    }

    #[test]
    fn lost_phantom_rejected_negative_and_miscounted_are_caught() {
        let lost = history(json!([[1, 1, 10], [2, 1, 5]]), json!([]));
        assert!(anomalies(&lost)
            .iter()
            .any(|a| a.contains("o1 was acknowledged but is missing")));
        let phantom = history(json!([[1, 1, 7], [2, 1, 4]]), json!(["o1", "zz"]));
        assert!(anomalies(&phantom)
            .iter()
            .any(|a| a.contains("zz is present but was never invoked")));
        let rejected = history(json!([[1, 1, -13], [2, 1, 4]]), json!(["o1", "o2"]));
        let a = anomalies(&rejected);
        assert!(
            a.iter()
                .any(|a| a.contains("o2 was rejected but is present")),
            "{a:?}"
        );
        assert!(a.iter().any(|a| a.contains("below zero")), "{a:?}");
        // One unit vanished: neither explained by orders nor by the indeterminate restock.
        let drift = history(json!([[1, 1, 6], [2, 1, 4]]), json!(["o1"]));
        assert!(anomalies(&drift)
            .iter()
            .any(|a| a.contains("dc 1 sku 1: final stock 6, expected 7")));
    }

    /// The clean history above with an acknowledged (or, `info`, unknown) restock of DC 1's
    /// SKU 1 by 2 units as a DC's restock, before its final read.
    fn with_restock_dc(kind: &str, final_stock: Value) -> Vec<Event> {
        let mut events = history(final_stock, json!(["o1", "o3"]));
        let final_read = events.pop().unwrap();
        let invoke_final = events.pop().unwrap();
        for k in ["invoke", kind] {
            let i = events.len() as u64;
            events.push(Event {
                index: i,
                time_ns: i,
                process: Process::Client(9),
                kind: serde_json::from_value(json!(k)).unwrap(),
                f: "restock-dc".into(),
                value: json!([1, [[1, 2]]]),
                key: None,
            });
        }
        for mut e in [invoke_final, final_read] {
            e.index = events.len() as u64;
            e.time_ns = e.index;
            events.push(e);
        }
        events
    }

    #[test]
    fn a_dcs_restock_counts_each_line_it_applied() {
        let applied = with_restock_dc("ok", json!([[1, 1, 13], [2, 1, 2]]));
        assert!(anomalies(&applied).is_empty(), "{:?}", anomalies(&applied));
        let missed = with_restock_dc("ok", json!([[1, 1, 11], [2, 1, 2]]));
        assert!(
            anomalies(&missed)
                .iter()
                .any(|a| a.contains("dc 1 sku 1: final stock 11, expected 9")),
            "{:?}",
            anomalies(&missed)
        );
        // Unknown: either outcome passes (with the unknown restock of 4 applied or not).
        for n in [7, 9, 11, 13] {
            let stock = json!([[1, 1, n], [2, 1, 2]]);
            let unknown = with_restock_dc("info", stock);
            assert!(anomalies(&unknown).is_empty(), "{:?}", anomalies(&unknown));
        }
    }

    /// The clean history above with holds: h1 confirmed (2 units of dc 1 sku 1, by confirm
    /// c1, whose order is in the final orders), h2 expired. Final stock and reserved as given.
    fn with_holds(final_stock: Value, final_orders: Value) -> Vec<Event> {
        // The same history without its final read (an invocation and its completion).
        let mut events = history(json!([]), json!([]));
        let final_read = events.pop().unwrap();
        events.pop();
        let mut push = |p: u64, kind: &str, f: &str, value: Value| {
            let i = events.len() as u64;
            events.push(Event {
                index: i,
                time_ns: i,
                process: Process::Client(p),
                kind: serde_json::from_value(json!(kind)).unwrap(),
                f: f.into(),
                value,
                key: None,
            });
        };
        for (id, rid, line) in [(1, "r1", json!([1, 1, 2])), (2, "r2", json!([2, 1, 1]))] {
            let v = json!({"request_id": rid, "lines": [line], "ttl_s": 1, "cart_id": "",
                           "partial": false});
            push(7, "invoke", "reserve", v.clone());
            let mut ok = v;
            ok["id"] = json!(id);
            ok["expires_at_ms"] = json!(2_000);
            ok["created_ms"] = json!(1_000);
            ok["held"] = json!([line]);
            push(7, "ok", "reserve", ok);
        }
        let c = json!({"request_id": "c1", "id": 1});
        push(8, "invoke", "confirm", c.clone());
        let mut ok = c;
        ok["order_id"] = json!(77);
        ok["epoch_time_ms"] = json!(1_500);
        ok["lines"] = json!([[1, 1, 2]]);
        push(8, "ok", "confirm", ok);
        push(6, "invoke", "final-read", Value::Null);
        let hold = |id: u64, rid: &str, status: &str, order_id: u64, held: Value| {
            json!({"id": id, "request_id": rid, "status": status, "expires_at_ms": 2_000,
                   "created_ms": 1_000, "order_id": order_id, "cart_id": "", "held": held})
        };
        let holds = json!([
            hold(1, "r1", "confirmed", 77, json!([[1, 1, 2]])),
            hold(2, "r2", "expired", 0, json!([[2, 1, 1]])),
        ]);
        push(
            6,
            "ok",
            "final-read",
            json!({"stock": final_stock, "orders": final_orders, "holds": holds,
                   "listed": holds}),
        );
        assert_eq!(final_read.f, "final-read");
        events
    }

    #[test]
    fn confirmed_holds_count_against_the_stock_and_their_orders_are_no_phantoms() {
        // o1 (3 of dc 1) and h1 (2 of dc 1) committed; o3 and the restock did not apply.
        let h = with_holds(json!([[1, 1, 5, 0], [2, 1, 4, 0]]), json!(["o1", "c1"]));
        let report = check(&h, &pair(&h).unwrap()).unwrap();
        assert!(report.counts.is_empty(), "{:?}", report.anomalies);
        assert_eq!(report.holds.holds, 2);
        // Without h1's units taken, the stock does not add up; a confirm's order is expected.
        let h = with_holds(json!([[1, 1, 7, 0], [2, 1, 4, 0]]), json!(["o1", "c1"]));
        let a = anomalies(&h);
        assert!(
            a.iter().any(|a| a.contains(
                "dc 1 sku 1: final stock 7, expected 5 (initial + restocks - committed orders - confirmed holds)"
            )),
            "{a:?}"
        );
        assert!(!a.iter().any(|a| a.contains("phantom-order")), "{a:?}");
        // The confirm's order missing: the hold checker's, joined to these counts.
        let h = with_holds(json!([[1, 1, 5, 0], [2, 1, 4, 0]]), json!(["o1"]));
        let report = check(&h, &pair(&h).unwrap()).unwrap();
        assert_eq!(
            report.counts.get("lost-confirm"),
            Some(&1),
            "{:?}",
            report.anomalies
        );
    }

    /// The clean history above (o1 committed, o3 not, the restock not applied) with two nearby
    /// orders for sku 1 near a point whose circle holds DCs 1, 2 and 3: n1, acknowledged,
    /// split over DC 1 (3 units) and DC 2 (1 unit); n2, of unknown outcome, 2 units. The
    /// final read's value is `final_read`.
    fn with_nearby(final_read: Value) -> Vec<Event> {
        let mut events = history(json!([]), json!([]));
        events.truncate(events.len() - 2);
        let mut push = |p: u64, kind: &str, value: Value| {
            let i = events.len() as u64;
            events.push(Event {
                index: i,
                time_ns: i,
                process: Process::Client(p),
                kind: serde_json::from_value(json!(kind)).unwrap(),
                f: "nearby-order".into(),
                value,
                key: None,
            });
        };
        let ask = |id: &str, qty: i64| {
            json!({"request_id": id, "at": "middle", "lat": 52.5, "lon": 13.4,
                   "radius_m": 5_000, "lines": [[1, qty]], "policy": "nearest-first",
                   "max_dcs": 2, "partial": false, "candidates": [1, 2, 3]})
        };
        push(7, "invoke", ask("n1", 4));
        let mut ok = ask("n1", 4);
        ok["order_id"] = json!(88);
        ok["epoch"] = json!(9);
        ok["allocated"] = json!([[1, 1, 3, 7], [2, 1, 1, 4]]);
        ok["shipments"] = json!([[1, [[1, 3]]], [2, [[1, 1]]]]);
        push(7, "ok", ok);
        push(8, "invoke", ask("n2", 2));
        push(8, "info", ask("n2", 2));
        let i = events.len() as u64;
        for (n, kind, value) in [(0, "invoke", Value::Null), (1, "ok", final_read)] {
            events.push(Event {
                index: i + n,
                time_ns: i + n,
                process: Process::Client(6),
                kind: serde_json::from_value(json!(kind)).unwrap(),
                f: "final-read".into(),
                value,
                key: None,
            });
        }
        events
    }

    fn counts(events: &[Event]) -> BTreeMap<&'static str, usize> {
        check(events, &pair(events).unwrap()).unwrap().counts
    }

    #[test]
    fn a_split_order_takes_all_its_shipments_or_none() {
        // n1's both shipments taken (dc 1: 10 - 3 - 3, dc 2: 5 - 1 - 1); n2 did not commit.
        let lines = json!({"o1": [[1, 1, 3], [2, 1, 1]], "n1": [[1, 1, 3], [2, 1, 1]]});
        let all = with_nearby(json!({"stock": [[1, 1, 4], [2, 1, 3]],
                                     "orders": ["o1", "n1"], "order_lines": lines}));
        let report = check(&all, &pair(&all).unwrap()).unwrap();
        assert!(report.counts.is_empty(), "{:?}", report.anomalies);
        assert_eq!(report.nearby.stats.get("nearby-split"), Some(&1));
        assert_eq!(report.nearby.stats.get("nearby-info"), Some(&1));
        // Only dc 1's shipment reached the stock: dc 2 is a unit short of the order's effect.
        let some = with_nearby(json!({"stock": [[1, 1, 4], [2, 1, 4]],
                                      "orders": ["o1", "n1"], "order_lines": lines}));
        let a = anomalies(&some);
        assert!(
            a.iter()
                .any(|a| a.contains("dc 2 sku 1: final stock 4, expected 3")),
            "{a:?}"
        );
        // Neither: the order is missing, and its units are back.
        let none = with_nearby(json!({"stock": [[1, 1, 7], [2, 1, 4]], "orders": ["o1"],
                                      "order_lines": {"o1": [[1, 1, 3], [2, 1, 1]]}}));
        let c = counts(&none);
        assert_eq!(c.get("lost-order"), Some(&1), "{c:?}");
        // The final read listing other lines than the answer named.
        let moved = with_nearby(json!({"stock": [[1, 1, 4], [2, 1, 3]],
                                       "orders": ["o1", "n1"],
                                       "order_lines": {"o1": [[1, 1, 3], [2, 1, 1]],
                                                       "n1": [[1, 1, 4]]}}));
        let c = counts(&moved);
        assert_eq!(c.get("order-lines-mismatch"), Some(&1), "{c:?}");
        // The same order twice in the final orders.
        let twice = with_nearby(json!({"stock": [[1, 1, 4], [2, 1, 3]],
                                       "orders": ["o1", "n1", "n1"], "order_lines": lines}));
        assert_eq!(counts(&twice).get("duplicate-order"), Some(&1));
    }

    #[test]
    fn a_nearby_order_of_unknown_outcome_counts_with_the_lines_the_final_read_gives_it() {
        // n2 committed, from dc 2 and dc 3 (a row the dataset did not start with).
        let lines = json!({"o1": [[1, 1, 3], [2, 1, 1]], "n1": [[1, 1, 3], [2, 1, 1]],
                           "n2": [[2, 1, 1], [3, 1, 1]]});
        let h = with_nearby(json!({"stock": [[1, 1, 4], [2, 1, 2], [3, 1, -1]],
                                   "orders": ["o1", "n1", "n2"], "order_lines": lines}));
        let report = check(&h, &pair(&h).unwrap()).unwrap();
        assert_eq!(
            report.counts.keys().copied().collect::<Vec<_>>(),
            ["negative-read"],
            "only dc 3's row below zero: {:?}",
            report.anomalies
        );
        assert_eq!(report.nearby.stats.get("nearby-info-committed"), Some(&1));
        assert_eq!(report.nearby.stats.get("nearby-split"), Some(&2));
        // Without its lines, the rows it could have taken from are not checked, not guessed.
        let h = with_nearby(json!({"stock": [[1, 1, 4], [2, 1, 2], [3, 1, 0]],
                                   "orders": ["o1", "n1", "n2"]}));
        let report = check(&h, &pair(&h).unwrap()).unwrap();
        assert!(report.counts.is_empty(), "{:?}", report.anomalies);
        assert_eq!(report.unchecked.len(), 3, "{:?}", report.unchecked);
        // Lines that break what it asked: a store outside the radius, three stores for
        // max_dcs 2, three units for two.
        let lines = json!({"o1": [[1, 1, 3], [2, 1, 1]], "n1": [[1, 1, 3], [2, 1, 1]],
                           "n2": [[4, 1, 1], [2, 1, 1], [3, 1, 1]]});
        let stock = json!([[1, 1, 4], [2, 1, 2], [3, 1, -1], [4, 1, -1]]);
        let h = with_nearby(json!({"stock": stock, "orders": ["o1", "n1", "n2"],
                                   "order_lines": lines}));
        let c = counts(&h);
        for kind in [
            "nearby-outside-radius",
            "nearby-too-many-dcs",
            "nearby-wrong-units",
        ] {
            assert_eq!(c.get(kind), Some(&1), "{kind}: {c:?}");
        }
    }
}
