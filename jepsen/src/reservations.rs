//! The reservations checker: the holds of the `inventory` workload (reserve, confirm, cancel,
//! extend; the history shape is in [`crate::cart`]). [`crate::inventory`] runs it and folds its
//! anomalies, and the units of confirmed holds, into its own verdict.
//!
//! Checks:
//! - every read: reserved is never negative (`negative-reserved`) and never above on_hand
//!   (`reserved-exceeds-on-hand`);
//! - no confirm is acknowledged at or after its hold's expiry, by the server's times: the
//!   epoch time the confirm reports against the latest `expires_at_ms` the reserve and the
//!   acknowledged extends reported, or the final one when an extend's outcome is unknown
//!   (`confirm-after-expiry`); the final expiry is no earlier than an acknowledged one and no
//!   later without an extend that could have moved it (`expiry-mismatch`);
//! - every hold ends exactly once: two acknowledged confirms with different orders, or an
//!   acknowledged confirm and cancel, or two orders from its confirms (`hold-resolved-twice`);
//!   a final status that no acknowledged or indeterminate operation explains, or that
//!   contradicts an acknowledged one (`hold-status-mismatch`); still live in the final read,
//!   taken after every hold had its longest TTL to lapse (`hold-unresolved`);
//! - holds are neither lost nor made up: an acknowledged reserve's hold exists at the end
//!   (`lost-hold`) with at least the units it acknowledged (`lost-hold-units`); every hold at
//!   the end comes from a reserve that was invoked and did not definitely fail (`phantom-hold`);
//!   an acknowledged confirm's order exists (`lost-confirm`), a refused one's does not
//!   (`rejected-confirm-present`); with no hold live at the end, nothing is reserved
//!   (`reserved-leak`).
//!
//! Stock conservation is [`crate::inventory`]'s: it subtracts the units of the holds whose
//! final status is confirmed ([`Report::confirmed_units`]).

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use crate::history::{Event, EventType, Operation};

type Key = (u64, u64);
/// `[dc, sku, n]`: a quantity at a key.
type Row = (u64, u64, i64);

/// Anomalies listed at most.
const EXAMPLES_MAX: usize = 50;

#[derive(Default)]
pub struct Report {
    /// Examples, at most [`EXAMPLES_MAX`], each `kind: explanation`.
    pub anomalies: Vec<String>,
    /// Every anomaly counted by kind (see the module's list).
    pub counts: BTreeMap<&'static str, usize>,
    /// Units of the holds confirmed per the final reads, by (dc, sku): orders as much as the
    /// order workload's are.
    pub confirmed_units: BTreeMap<Key, i64>,
    /// The request ids of every confirm: the orders they made are the holds', not the order
    /// workload's.
    pub confirm_request_ids: BTreeSet<String>,
    /// What happened, for the results: operations by outcome, holds by final status, holds
    /// that ended while a fault was in force, how close to expiry confirms got.
    pub stats: BTreeMap<String, u64>,
    /// Reservations the final read saw.
    pub holds: usize,
}

impl Report {
    fn note(&mut self, kind: &'static str, explanation: String) {
        *self.counts.entry(kind).or_default() += 1;
        if self.anomalies.len() < EXAMPLES_MAX {
            self.anomalies.push(format!("{kind}: {explanation}"));
        }
    }

    fn count(&mut self, stat: impl Into<String>) {
        *self.stats.entry(stat.into()).or_default() += 1;
    }
}

fn rows(value: &Value, what: &str) -> Result<Vec<Row>, String> {
    let list = value
        .as_array()
        .ok_or_else(|| format!("{what}: expected [[dc, sku, n], ...]"))?;
    list.iter()
        .map(|r| {
            let r = r.as_array().filter(|r| r.len() == 3);
            match r.map(|r| (r[0].as_u64(), r[1].as_u64(), r[2].as_i64())) {
                Some((Some(dc), Some(sku), Some(n))) => Ok((dc, sku, n)),
                _ => Err(format!("{what}: each row is [dc, sku, n] of integers")),
            }
        })
        .collect()
}

/// Stock rows `[dc, sku, on_hand, reserved]`; rows without `reserved` (older histories) are
/// left out.
fn stock_rows(value: &Value, what: &str) -> Result<Vec<(u64, u64, i64, i64)>, String> {
    let list = value
        .as_array()
        .ok_or_else(|| format!("{what}: expected [[dc, sku, on_hand, reserved], ...]"))?;
    let mut out = Vec::new();
    for r in list {
        let Some(r) = r.as_array().filter(|r| r.len() >= 4) else {
            continue;
        };
        match (r[0].as_u64(), r[1].as_u64(), r[2].as_i64(), r[3].as_i64()) {
            (Some(dc), Some(sku), Some(on_hand), Some(reserved)) => {
                out.push((dc, sku, on_hand, reserved))
            }
            _ => return Err(format!("{what}: each row is [dc, sku, on_hand, reserved]")),
        }
    }
    Ok(out)
}

fn field_u64(value: &Value, field: &str, what: &str) -> Result<u64, String> {
    value[field]
        .as_u64()
        .ok_or_else(|| format!("{what}: needs {field:?} (an integer)"))
}

fn field_str(value: &Value, field: &str, what: &str) -> Result<String, String> {
    value[field]
        .as_str()
        .map(String::from)
        .ok_or_else(|| format!("{what}: needs {field:?} (a string)"))
}

/// Ignoring lines of zero units, sorted.
fn nonzero(lines: &[Row]) -> Vec<Row> {
    let mut v: Vec<Row> = lines.iter().copied().filter(|l| l.2 != 0).collect();
    v.sort();
    v
}

struct ReserveOp {
    what: String,
    request_id: String,
    completion: EventType,
    /// Set when acknowledged.
    id: Option<u64>,
    expires_at_ms: u64,
    created_ms: u64,
    held: Vec<Row>,
    ack_ns: Option<u64>,
}

struct Confirm {
    what: String,
    request_id: String,
    completion: EventType,
    order_id: u64,
    epoch_time_ms: u64,
    lines: Vec<Row>,
    ack_ns: Option<u64>,
}

struct Extend {
    completion: EventType,
    expires_at_ms: u64,
    ttl_s: u64,
    ack_ns: Option<u64>,
}

/// Everything the history says about one hold.
#[derive(Default)]
struct HoldOps {
    /// Indexes into the acknowledged reserves.
    reserves: Vec<usize>,
    confirms: Vec<Confirm>,
    /// (completion, acknowledgement time).
    cancels: Vec<(EventType, Option<u64>)>,
    extends: Vec<Extend>,
}

/// A reservation as the final read saw it.
struct FinalHold {
    request_id: String,
    status: String,
    expires_at_ms: u64,
    order_id: u64,
    held: Vec<Row>,
}

fn final_hold(v: &Value, what: &str) -> Result<(u64, Option<FinalHold>), String> {
    let id = field_u64(v, "id", what)?;
    let status = field_str(v, "status", what)?;
    if status == "not-found" {
        return Ok((id, None));
    }
    Ok((
        id,
        Some(FinalHold {
            request_id: field_str(v, "request_id", what)?,
            status,
            expires_at_ms: field_u64(v, "expires_at_ms", what)?,
            order_id: v["order_id"].as_u64().unwrap_or(0),
            held: rows(&v["held"], what)?,
        }),
    ))
}

/// The time of each event, by index.
fn times(events: &[Event]) -> BTreeMap<u64, u64> {
    events.iter().map(|e| (e.index, e.time_ns)).collect()
}

/// Fault windows `[start, heal]` in history time (ns), from the nemesis events.
fn fault_windows(events: &[Event]) -> Vec<(u64, u64)> {
    let mut open: Vec<(String, u64)> = Vec::new();
    let mut windows = Vec::new();
    for e in events.iter().filter(|e| e.process.is_nemesis()) {
        match e.f.strip_prefix("heal-") {
            Some(kind) => {
                if let Some(at) = open.iter().position(|(k, _)| k == kind) {
                    let (_, start) = open.remove(at);
                    windows.push((start, e.time_ns));
                }
            }
            None => open.push((e.f.clone(), e.time_ns)),
        }
    }
    let end = events.iter().map(|e| e.time_ns).max().unwrap_or(0);
    windows.extend(open.into_iter().map(|(_, start)| (start, end)));
    windows
}

fn during(windows: &[(u64, u64)], t_ns: i128) -> bool {
    windows
        .iter()
        .any(|&(a, b)| i128::from(a) <= t_ns && t_ns <= i128::from(b))
}

pub fn check(events: &[Event], ops: &[Operation]) -> Result<Report, String> {
    let mut report = Report::default();
    let time_of = times(events);
    let ack_ns = |op: &Operation| {
        (op.complete_index != u64::MAX)
            .then(|| time_of.get(&op.complete_index).copied())
            .flatten()
    };
    let mut reserves: Vec<ReserveOp> = Vec::new();
    let mut holds: BTreeMap<u64, HoldOps> = BTreeMap::new();
    let mut final_read: Option<&Value> = None;

    for (i, op) in ops.iter().enumerate() {
        let what = format!("operation {i} ({} at event {})", op.f, op.invoke_index);
        let completion = if op.is_indeterminate() {
            EventType::Info
        } else {
            op.completion.expect("completed")
        };
        let done = &op.complete_value;
        if matches!(op.f.as_str(), "reserve" | "confirm" | "cancel" | "extend") {
            let outcome = match completion {
                EventType::Ok => "ok",
                EventType::Fail => "fail",
                _ => "info",
            };
            report.count(format!("{}-{outcome}", op.f));
            if op.invoke_value.get("near").is_some() {
                report.count(format!("{}-nearby-{outcome}", op.f));
            }
        }
        match op.f.as_str() {
            "reserve" => {
                let request_id = field_str(&op.invoke_value, "request_id", &what)?;
                let mut r = ReserveOp {
                    what: what.clone(),
                    request_id,
                    completion,
                    id: None,
                    expires_at_ms: 0,
                    created_ms: 0,
                    held: Vec::new(),
                    ack_ns: ack_ns(op),
                };
                if completion == EventType::Ok {
                    let id = field_u64(done, "id", &what)?;
                    r.id = Some(id);
                    r.expires_at_ms = field_u64(done, "expires_at_ms", &what)?;
                    r.created_ms = field_u64(done, "created_ms", &what)?;
                    r.held = rows(&done["held"], &what)?;
                    holds.entry(id).or_default().reserves.push(reserves.len());
                }
                reserves.push(r);
            }
            "confirm" => {
                let request_id = field_str(&op.invoke_value, "request_id", &what)?;
                let id = field_u64(&op.invoke_value, "id", &what)?;
                report.confirm_request_ids.insert(request_id.clone());
                let mut c = Confirm {
                    what: what.clone(),
                    request_id,
                    completion,
                    order_id: 0,
                    epoch_time_ms: 0,
                    lines: Vec::new(),
                    ack_ns: ack_ns(op),
                };
                if completion == EventType::Ok {
                    c.order_id = field_u64(done, "order_id", &what)?;
                    c.epoch_time_ms = done["epoch_time_ms"].as_u64().unwrap_or(0);
                    c.lines = rows(&done["lines"], &what)?;
                } else if completion == EventType::Fail && done["code"] == "RESERVATION_EXPIRED" {
                    report.count("confirm-refused-expired");
                }
                holds.entry(id).or_default().confirms.push(c);
            }
            "cancel" => {
                let id = field_u64(&op.invoke_value, "id", &what)?;
                holds
                    .entry(id)
                    .or_default()
                    .cancels
                    .push((completion, ack_ns(op)));
            }
            "extend" => {
                let id = field_u64(&op.invoke_value, "id", &what)?;
                let expires_at_ms = match completion {
                    EventType::Ok => field_u64(done, "expires_at_ms", &what)?,
                    _ => 0,
                };
                holds.entry(id).or_default().extends.push(Extend {
                    completion,
                    expires_at_ms,
                    ttl_s: op.invoke_value["ttl_s"].as_u64().unwrap_or(0),
                    ack_ns: ack_ns(op),
                });
            }
            "read" if completion == EventType::Ok => {
                for row in stock_rows(done, &what)? {
                    check_row(&mut report, row, &what);
                }
            }
            "final-read" if completion == EventType::Ok => final_read = Some(done),
            _ => {}
        }
    }
    let Some(final_read) = final_read else {
        return Err("the history has no final-read: nothing to check the holds against".into());
    };
    let final_stock = stock_rows(&final_read["stock"], "final-read stock")?;
    for &row in &final_stock {
        check_row(&mut report, row, "the final read");
    }
    if reserves.is_empty() && holds.is_empty() {
        return Ok(report);
    }

    // The final reads: by id (authoritative), then listed (holds nobody was told about).
    let mut finals: BTreeMap<u64, Option<FinalHold>> = BTreeMap::new();
    for (field, by_id) in [("holds", true), ("listed", false)] {
        let list = final_read[field]
            .as_array()
            .ok_or_else(|| format!("the final-read has no {field:?}: cannot check the holds"))?;
        for v in list {
            let (id, hold) = final_hold(v, &format!("final-read {field}"))?;
            if by_id || !finals.contains_key(&id) {
                finals.insert(id, hold);
            }
        }
    }
    let final_orders: BTreeSet<&str> = final_read["orders"]
        .as_array()
        .map(|o| o.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    report.holds = finals.values().flatten().count();

    // Reserves: acknowledged holds exist with their units; every hold has a possible creator.
    let creators: BTreeMap<&str, EventType> = reserves
        .iter()
        .map(|r| (r.request_id.as_str(), r.completion))
        .collect();
    for r in &reserves {
        let Some(id) = r.id else { continue };
        match finals.get(&id) {
            Some(Some(f)) => {
                let final_held: BTreeMap<Key, i64> =
                    f.held.iter().map(|&(d, s, n)| ((d, s), n)).collect();
                for &(dc, sku, held) in &r.held {
                    let now = final_held.get(&(dc, sku)).copied().unwrap_or(0);
                    if now < held {
                        report.note("lost-hold-units", format!(
                            "{}: reserve {} was acknowledged holding {held} of dc {dc} sku {sku} \
                             in hold {id}, which ends holding {now}", r.what, r.request_id));
                    }
                }
            }
            _ => report.note(
                "lost-hold",
                format!(
                    "{}: reserve {} was acknowledged as hold {id}, which the final read does not find",
                    r.what, r.request_id
                ),
            ),
        }
    }
    for (id, f) in finals.iter().filter_map(|(id, f)| Some((id, f.as_ref()?))) {
        match creators.get(f.request_id.as_str()) {
            Some(EventType::Fail) => report.note(
                "phantom-hold",
                format!(
                    "hold {id} was made by reserve {}, which definitely failed",
                    f.request_id
                ),
            ),
            None => report.note(
                "phantom-hold",
                format!(
                    "hold {id} was made by request {:?}, which no reserve invoked",
                    f.request_id
                ),
            ),
            _ => {}
        }
    }

    // Each hold: one end, at the right time, matching what was acknowledged.
    let windows = fault_windows(events);
    let mut any_live = false;
    for (&id, f) in finals.iter().filter_map(|(id, f)| Some((id, f.as_ref()?))) {
        let none = HoldOps::default();
        let ops = holds.get(&id).unwrap_or(&none);
        report.count(format!("holds-{}", f.status));
        any_live |= f.status == "live";
        if f.status == "confirmed" {
            for &(dc, sku, held) in &f.held {
                *report.confirmed_units.entry((dc, sku)).or_default() += held;
            }
        }
        check_hold(&mut report, id, f, ops, &reserves, &final_orders, &windows);
    }
    if !any_live {
        for &(dc, sku, _, reserved) in &final_stock {
            if reserved != 0 {
                report.note(
                    "reserved-leak",
                    format!(
                        "dc {dc} sku {sku}: no hold is live at the end, yet {reserved} units are \
                         reserved"
                    ),
                );
            }
        }
    }
    Ok(report)
}

fn check_row(report: &mut Report, (dc, sku, on_hand, reserved): (u64, u64, i64, i64), what: &str) {
    if reserved < 0 {
        report.note(
            "negative-reserved",
            format!("{what}: dc {dc} sku {sku} read reserved {reserved}, below zero"),
        );
    }
    if reserved > on_hand {
        report.note(
            "reserved-exceeds-on-hand",
            format!("{what}: dc {dc} sku {sku} read reserved {reserved} above on_hand {on_hand}"),
        );
    }
}

fn check_hold(
    report: &mut Report,
    id: u64,
    f: &FinalHold,
    ops: &HoldOps,
    reserves: &[ReserveOp],
    final_orders: &BTreeSet<&str>,
    windows: &[(u64, u64)],
) {
    let ok_confirms: Vec<&Confirm> = ops
        .confirms
        .iter()
        .filter(|c| c.completion == EventType::Ok)
        .collect();
    let ok_cancels = ops.cancels.iter().filter(|c| c.0 == EventType::Ok).count();
    let maybe = |c: EventType| c == EventType::Info;

    // Ended twice, by what was acknowledged or by the orders its confirms left.
    let order_ids: BTreeSet<u64> = ok_confirms.iter().map(|c| c.order_id).collect();
    let with_orders: Vec<&Confirm> = ops
        .confirms
        .iter()
        .filter(|c| final_orders.contains(c.request_id.as_str()))
        .collect();
    let twice = if order_ids.len() > 1 {
        Some(format!(
            "two confirms were acknowledged with orders {order_ids:?}"
        ))
    } else if !ok_confirms.is_empty() && ok_cancels > 0 {
        Some(format!(
            "confirm {} and a cancel were both acknowledged",
            ok_confirms[0].request_id
        ))
    } else if with_orders.len() > 1 {
        let ids: Vec<&str> = with_orders.iter().map(|c| c.request_id.as_str()).collect();
        Some(format!("confirms {ids:?} each left an order"))
    } else {
        None
    };
    if let Some(why) = &twice {
        report.note(
            "hold-resolved-twice",
            format!("hold {id} (final status {}): {why}", f.status),
        );
    }
    for c in &ops.confirms {
        let present = final_orders.contains(c.request_id.as_str());
        if c.completion == EventType::Ok && !present {
            report.note(
                "lost-confirm",
                format!(
                    "{}: confirm {} of hold {id} was acknowledged as order {}, which is missing",
                    c.what, c.request_id, c.order_id
                ),
            );
        }
        if c.completion == EventType::Fail && present {
            report.note(
                "rejected-confirm-present",
                format!(
                    "{}: confirm {} of hold {id} failed, yet its order is present",
                    c.what, c.request_id
                ),
            );
        }
    }

    // The final status against what was acknowledged.
    let mismatch = match f.status.as_str() {
        _ if twice.is_some() => None,
        "confirmed" => {
            if ok_confirms.is_empty() && !ops.confirms.iter().any(|c| maybe(c.completion)) {
                Some("no confirm of it could have succeeded".to_string())
            } else if let Some(c) = ok_confirms.iter().find(|c| c.order_id != f.order_id) {
                Some(format!(
                    "confirm {} was acknowledged as order {}, the hold names order {}",
                    c.request_id, c.order_id, f.order_id
                ))
            } else if with_orders.is_empty() {
                Some("no order of any of its confirms exists".to_string())
            } else {
                ok_confirms
                    .iter()
                    .find(|c| nonzero(&c.lines) != nonzero(&f.held))
                    .map(|c| {
                        format!(
                            "confirm {} was acknowledged for {:?}, the hold held {:?}",
                            c.request_id, c.lines, f.held
                        )
                    })
            }
        }
        "cancelled" if !ok_confirms.is_empty() => Some(format!(
            "confirm {} was acknowledged",
            ok_confirms[0].request_id
        )),
        "cancelled" if ok_cancels == 0 && !ops.cancels.iter().any(|c| maybe(c.0)) => {
            Some("no cancel of it could have succeeded".to_string())
        }
        "expired" | "live" if !ok_confirms.is_empty() => Some(format!(
            "confirm {} was acknowledged",
            ok_confirms[0].request_id
        )),
        "expired" | "live" if ok_cancels > 0 => Some("a cancel was acknowledged".to_string()),
        "cancelled" | "expired" | "live" => None,
        other => Some(format!("a reservation cannot end {other:?}")),
    };
    if let Some(why) = mismatch {
        report.note(
            "hold-status-mismatch",
            format!("hold {id} ends {}: {why}", f.status),
        );
    } else if f.status != "confirmed" && !with_orders.is_empty() && twice.is_none() {
        report.note(
            "hold-status-mismatch",
            format!(
                "hold {id} ends {}, yet confirm {} left an order",
                f.status, with_orders[0].request_id
            ),
        );
    }

    // Expiry: the latest acknowledged, or the final one when an extend's outcome is unknown.
    let acknowledged = ops
        .reserves
        .iter()
        .map(|&r| reserves[r].expires_at_ms)
        .chain(
            ops.extends
                .iter()
                .filter(|e| e.completion == EventType::Ok)
                .map(|e| e.expires_at_ms),
        )
        .max();
    let unknown_extend = ops.extends.iter().any(|e| maybe(e.completion));
    let expiry = match acknowledged {
        Some(a) if unknown_extend => a.max(f.expires_at_ms),
        Some(a) => a,
        None => f.expires_at_ms,
    };
    if let Some(a) = acknowledged {
        if f.expires_at_ms < a {
            report.note(
                "expiry-mismatch",
                format!(
                    "hold {id} ends expiring at {} ms, before the acknowledged {a} ms",
                    f.expires_at_ms
                ),
            );
        } else if f.expires_at_ms > a && !unknown_extend {
            report.note(
                "expiry-mismatch",
                format!(
                    "hold {id} ends expiring at {} ms, later than any extend could have moved it \
                     (the last acknowledged: {a} ms)",
                    f.expires_at_ms
                ),
            );
        }
    }
    for c in &ok_confirms {
        if c.epoch_time_ms == 0 {
            report.count("confirms-without-epoch-time");
            continue;
        }
        if c.epoch_time_ms >= expiry {
            report.note(
                "confirm-after-expiry",
                format!(
                    "{}: confirm {} of hold {id} committed at epoch time {} ms, {} ms at or after \
                     the hold's expiry {expiry} ms",
                    c.what,
                    c.request_id,
                    c.epoch_time_ms,
                    c.epoch_time_ms - expiry
                ),
            );
        } else {
            let margin = expiry - c.epoch_time_ms;
            let least = report
                .stats
                .entry("confirm-margin-ms-min".into())
                .or_insert(u64::MAX);
            *least = (*least).min(margin);
        }
    }
    if f.status == "live" {
        let latest_seen = reserves
            .iter()
            .map(|r| r.created_ms)
            .chain(ok_confirms.iter().map(|c| c.epoch_time_ms))
            .max()
            .unwrap_or(0);
        let why = if latest_seen >= f.expires_at_ms {
            format!(
                "live although the cluster's epoch time had passed its expiry {} ms (the history \
                 saw epoch time {latest_seen} ms)",
                f.expires_at_ms
            )
        } else {
            format!(
                "its expiry {} ms is {} ms past the latest epoch time the history saw: epoch time \
                 never reached it (a forward clock leap?)",
                f.expires_at_ms,
                f.expires_at_ms - latest_seen
            )
        };
        report.note(
            "hold-unresolved",
            format!("hold {id} is still live after the run and the longest TTL: {why}"),
        );
    }

    // Ended while a fault was in force (by the runner's clock; expiry estimated from the
    // acknowledgement of the reserve that made it or of the last extend, plus the TTL).
    let ended_ns: Option<i128> = match f.status.as_str() {
        "confirmed" => ok_confirms
            .iter()
            .filter_map(|c| c.ack_ns)
            .min()
            .map(i128::from),
        "cancelled" => ops
            .cancels
            .iter()
            .filter(|c| c.0 == EventType::Ok)
            .filter_map(|c| c.1)
            .min()
            .map(i128::from),
        "expired" => {
            // Server ms -> runner ns: runner time of an acknowledgement minus the server time
            // it reported.
            let creator = ops
                .reserves
                .iter()
                .map(|&r| &reserves[r])
                .filter(|r| r.request_id == f.request_id)
                .filter_map(|r| Some((r.ack_ns?, r.created_ms)));
            let extended = ops
                .extends
                .iter()
                .filter(|e| e.completion == EventType::Ok)
                .filter_map(|e| Some((e.ack_ns?, e.expires_at_ms.saturating_sub(e.ttl_s * 1000))));
            creator.chain(extended).max().map(|(ack, server_ms)| {
                i128::from(ack) + (i128::from(f.expires_at_ms) - i128::from(server_ms)) * 1_000_000
            })
        }
        _ => None,
    };
    if ended_ns.is_some_and(|t| during(windows, t)) {
        report.count(format!("holds-{}-during-faults", f.status));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{pair, Process};
    use serde_json::json;

    /// A history of holds, built event by event.
    struct H {
        events: Vec<Event>,
    }

    impl H {
        fn new() -> Self {
            let mut h = H { events: Vec::new() };
            h.push(
                Process::Named("setup".into()),
                "ok",
                "init",
                json!({"stock": [[1, 1, 10], [2, 1, 10]]}),
            );
            h
        }

        fn push(&mut self, p: Process, kind: &str, f: &str, value: Value) {
            let i = self.events.len() as u64;
            self.events.push(Event {
                index: i,
                time_ns: i * 1_000_000,
                process: p,
                kind: serde_json::from_value(json!(kind)).unwrap(),
                f: f.into(),
                value,
                key: None,
            });
        }

        /// An invocation and its completion by process `p`.
        fn op(&mut self, p: u64, kind: &str, f: &str, invoke: Value, done: Value) -> &mut Self {
            self.push(Process::Client(p), "invoke", f, invoke.clone());
            let mut v = invoke;
            if let (Some(v), Value::Object(extra)) = (v.as_object_mut(), done) {
                v.extend(extra);
            }
            self.push(Process::Client(p), kind, f, v);
            self
        }

        fn reserve(&mut self, kind: &str, rid: &str, id: u64, lines: Value) -> &mut Self {
            let invoke = json!({"request_id": rid, "lines": lines, "ttl_s": 2, "cart_id": "",
                                "partial": false});
            let done = match kind {
                "ok" => json!({"id": id, "expires_at_ms": 10_000, "created_ms": 8_000,
                               "held": lines, "epoch": 3}),
                "fail" => json!({"reason": "insufficient stock", "code": "INSUFFICIENT_STOCK"}),
                _ => json!({}),
            };
            self.op(1, kind, "reserve", invoke, done)
        }

        fn confirm(
            &mut self,
            kind: &str,
            rid: &str,
            id: u64,
            at_ms: u64,
            lines: Value,
        ) -> &mut Self {
            let done = match kind {
                "ok" => json!({"order_id": 100 + id, "epoch_time_ms": at_ms, "lines": lines}),
                "fail" => json!({"reason": "expired", "code": "RESERVATION_EXPIRED"}),
                _ => json!({}),
            };
            self.op(
                2,
                kind,
                "confirm",
                json!({"request_id": rid, "id": id}),
                done,
            )
        }

        fn simple(&mut self, kind: &str, f: &str, rid: &str, id: u64, done: Value) -> &mut Self {
            self.op(
                3,
                kind,
                f,
                json!({"request_id": rid, "id": id, "ttl_s": 2}),
                done,
            )
        }

        /// The final read: stock rows, orders, holds by id.
        fn finish(&mut self, stock: Value, orders: Value, holds: Value) -> Vec<Event> {
            self.push(Process::Client(99), "invoke", "final-read", Value::Null);
            self.push(
                Process::Client(99),
                "ok",
                "final-read",
                json!({"stock": stock, "orders": orders, "holds": holds, "listed": holds}),
            );
            self.events.clone()
        }
    }

    fn hold(id: u64, rid: &str, status: &str, order_id: u64, held: Value) -> Value {
        json!({"id": id, "request_id": rid, "status": status, "expires_at_ms": 10_000,
               "created_ms": 8_000, "order_id": order_id, "cart_id": "", "held": held})
    }

    fn report(events: &[Event]) -> Report {
        check(events, &pair(events).unwrap()).unwrap()
    }

    fn kinds(events: &[Event]) -> BTreeMap<&'static str, usize> {
        report(events).counts
    }

    /// Hold 1 confirmed, hold 2 cancelled, hold 3 expired; one rejected reserve.
    fn clean() -> H {
        let mut h = H::new();
        h.reserve("ok", "r1", 1, json!([[1, 1, 2]]))
            .reserve("ok", "r2", 2, json!([[2, 1, 1]]))
            .reserve("ok", "r3", 3, json!([[1, 1, 1], [2, 1, 1]]))
            .reserve("fail", "r4", 0, json!([[1, 1, 50]]))
            .op(4, "ok", "read", Value::Null, Value::Null);
        h.events.last_mut().unwrap().value = json!([[1, 1, 10, 4], [2, 1, 10, 2]]);
        h.simple("ok", "extend", "e1", 1, json!({"expires_at_ms": 10_000}))
            .confirm("ok", "c1", 1, 9_999, json!([[1, 1, 2]]))
            .simple("ok", "cancel", "k2", 2, json!({"status": "cancelled"}))
            .confirm("fail", "c3", 3, 0, json!([]));
        h
    }

    fn clean_final(h: &mut H) -> Vec<Event> {
        h.finish(
            json!([[1, 1, 8, 0], [2, 1, 10, 0]]),
            json!(["c1"]),
            json!([
                hold(1, "r1", "confirmed", 101, json!([[1, 1, 2]])),
                hold(2, "r2", "cancelled", 0, json!([[2, 1, 1]])),
                hold(3, "r3", "expired", 0, json!([[1, 1, 1], [2, 1, 1]])),
            ]),
        )
    }

    #[test]
    fn a_clean_history_passes_and_counts_confirmed_units() {
        let events = clean_final(&mut clean());
        let r = report(&events);
        assert!(r.counts.is_empty(), "{:?}", r.anomalies);
        assert_eq!(r.confirmed_units, BTreeMap::from([((1, 1), 2)]));
        assert!(r.confirm_request_ids.contains("c1"));
        assert_eq!(r.stats["holds-confirmed"], 1);
        assert_eq!(r.stats["holds-expired"], 1);
        assert_eq!(r.stats["confirm-refused-expired"], 1);
        assert_eq!(r.stats["confirm-margin-ms-min"], 1);
        assert_eq!(r.holds, 3);
    }

    #[test]
    fn reads_with_reserved_out_of_bounds_are_caught() {
        let mut h = clean();
        h.op(5, "ok", "read", Value::Null, Value::Null);
        h.events.last_mut().unwrap().value = json!([[1, 1, 3, 4], [2, 1, 10, -1]]);
        let k = kinds(&clean_final(&mut h));
        assert_eq!(k.get("reserved-exceeds-on-hand"), Some(&1), "{k:?}");
        assert_eq!(k.get("negative-reserved"), Some(&1), "{k:?}");
    }

    #[test]
    fn a_confirm_at_or_after_expiry_is_caught_by_server_time() {
        let mut h = H::new();
        h.reserve("ok", "r1", 1, json!([[1, 1, 2]])).confirm(
            "ok",
            "c1",
            1,
            10_000,
            json!([[1, 1, 2]]),
        );
        let events = h.finish(
            json!([[1, 1, 8, 0]]),
            json!(["c1"]),
            json!([hold(1, "r1", "confirmed", 101, json!([[1, 1, 2]]))]),
        );
        let r = report(&events);
        assert_eq!(
            r.counts.get("confirm-after-expiry"),
            Some(&1),
            "{:?}",
            r.anomalies
        );
        assert!(
            r.anomalies[0].contains("0 ms at or after"),
            "{:?}",
            r.anomalies
        );

        // An acknowledged extend moves the expiry: the same confirm is then in time.
        let mut h = H::new();
        h.reserve("ok", "r1", 1, json!([[1, 1, 2]]))
            .simple("ok", "extend", "e1", 1, json!({"expires_at_ms": 12_000}))
            .confirm("ok", "c1", 1, 10_000, json!([[1, 1, 2]]));
        let mut final_hold = hold(1, "r1", "confirmed", 101, json!([[1, 1, 2]]));
        final_hold["expires_at_ms"] = json!(12_000);
        let events = h.finish(json!([[1, 1, 8, 0]]), json!(["c1"]), json!([final_hold]));
        assert!(kinds(&events).is_empty(), "{:?}", report(&events).anomalies);
    }

    #[test]
    fn a_hold_ended_twice_is_caught() {
        // Confirmed and cancelled, both acknowledged.
        let mut h = H::new();
        h.reserve("ok", "r1", 1, json!([[1, 1, 2]]))
            .confirm("ok", "c1", 1, 9_000, json!([[1, 1, 2]]))
            .simple("ok", "cancel", "k1", 1, json!({"status": "cancelled"}));
        let events = h.finish(
            json!([[1, 1, 8, 0]]),
            json!(["c1"]),
            json!([hold(1, "r1", "confirmed", 101, json!([[1, 1, 2]]))]),
        );
        assert_eq!(kinds(&events).get("hold-resolved-twice"), Some(&1));
        // Two confirms, each leaving an order (one acknowledged, one indeterminate).
        let mut h = H::new();
        h.reserve("ok", "r1", 1, json!([[1, 1, 2]]))
            .confirm("ok", "c1", 1, 9_000, json!([[1, 1, 2]]))
            .confirm("info", "c2", 1, 0, json!({}));
        let events = h.finish(
            json!([[1, 1, 6, 0]]),
            json!(["c1", "c2"]),
            json!([hold(1, "r1", "confirmed", 101, json!([[1, 1, 2]]))]),
        );
        assert_eq!(kinds(&events).get("hold-resolved-twice"), Some(&1));
    }

    #[test]
    fn final_statuses_that_contradict_the_acknowledgements_are_caught() {
        // Acknowledged confirm, but the hold ends expired and its order is gone.
        let mut h = H::new();
        h.reserve("ok", "r1", 1, json!([[1, 1, 2]])).confirm(
            "ok",
            "c1",
            1,
            9_000,
            json!([[1, 1, 2]]),
        );
        let events = h.finish(
            json!([[1, 1, 10, 0]]),
            json!([]),
            json!([hold(1, "r1", "expired", 0, json!([[1, 1, 2]]))]),
        );
        let k = kinds(&events);
        assert_eq!(k.get("hold-status-mismatch"), Some(&1), "{k:?}");
        assert_eq!(k.get("lost-confirm"), Some(&1), "{k:?}");
        // Confirmed though its only confirm was refused, and that confirm's order exists.
        let mut h = H::new();
        h.reserve("ok", "r1", 1, json!([[1, 1, 2]]))
            .confirm("fail", "c1", 1, 0, json!({}));
        let events = h.finish(
            json!([[1, 1, 8, 0]]),
            json!(["c1"]),
            json!([hold(1, "r1", "confirmed", 101, json!([[1, 1, 2]]))]),
        );
        let k = kinds(&events);
        assert_eq!(k.get("hold-status-mismatch"), Some(&1), "{k:?}");
        assert_eq!(k.get("rejected-confirm-present"), Some(&1), "{k:?}");
        // Cancelled with no cancel at all.
        let mut h = H::new();
        h.reserve("ok", "r1", 1, json!([[1, 1, 2]]));
        let events = h.finish(
            json!([[1, 1, 10, 0]]),
            json!([]),
            json!([hold(1, "r1", "cancelled", 0, json!([[1, 1, 2]]))]),
        );
        assert_eq!(kinds(&events).get("hold-status-mismatch"), Some(&1));
    }

    #[test]
    fn an_indeterminate_confirm_may_have_confirmed_the_hold() {
        let mut h = H::new();
        h.reserve("ok", "r1", 1, json!([[1, 1, 2]]))
            .confirm("info", "c1", 1, 0, json!({}));
        let events = h.finish(
            json!([[1, 1, 8, 0]]),
            json!(["c1"]),
            json!([hold(1, "r1", "confirmed", 101, json!([[1, 1, 2]]))]),
        );
        let r = report(&events);
        assert!(r.counts.is_empty(), "{:?}", r.anomalies);
        assert_eq!(r.confirmed_units, BTreeMap::from([((1, 1), 2)]));
    }

    #[test]
    fn a_hold_still_live_after_the_run_is_unresolved() {
        let mut h = H::new();
        h.reserve("ok", "r1", 1, json!([[1, 1, 2]]))
            .confirm("ok", "cx", 9, 0, json!([]));
        // Hold 9 is confirmed by cx at epoch time 0 (unknown), and made by no reserve.
        let events = h.finish(
            json!([[1, 1, 10, 2]]),
            json!(["cx"]),
            json!([
                hold(1, "r1", "live", 0, json!([[1, 1, 2]])),
                hold(9, "zz", "confirmed", 109, json!([])),
            ]),
        );
        let r = report(&events);
        assert_eq!(
            r.counts.get("hold-unresolved"),
            Some(&1),
            "{:?}",
            r.anomalies
        );
        assert_eq!(r.counts.get("phantom-hold"), Some(&1), "{:?}", r.anomalies);
        assert!(
            r.anomalies.iter().any(|a| a.contains("never reached it")),
            "{:?}",
            r.anomalies
        );
    }

    #[test]
    fn lost_holds_units_expiries_and_leaked_reservations_are_caught() {
        let mut h = H::new();
        h.reserve("ok", "r1", 1, json!([[1, 1, 2]]))
            .reserve("ok", "r2", 2, json!([[2, 1, 3]]))
            .reserve("ok", "r3", 3, json!([[2, 1, 1]]))
            .simple("ok", "extend", "e3", 3, json!({"expires_at_ms": 11_000}));
        let events = h.finish(
            json!([[1, 1, 10, 0], [2, 1, 10, 1]]),
            json!([]),
            json!([
                {"id": 1, "status": "not-found"},
                hold(2, "r2", "expired", 0, json!([[2, 1, 2]])),
                hold(3, "r3", "expired", 0, json!([[2, 1, 1]])),
            ]),
        );
        let k = kinds(&events);
        assert_eq!(k.get("lost-hold"), Some(&1), "{k:?}");
        assert_eq!(k.get("lost-hold-units"), Some(&1), "{k:?}");
        assert_eq!(k.get("expiry-mismatch"), Some(&1), "{k:?}");
        assert_eq!(k.get("reserved-leak"), Some(&1), "{k:?}");
    }

    #[test]
    fn a_hold_made_by_a_rejected_reserve_is_a_phantom() {
        let mut h = H::new();
        h.reserve("fail", "r1", 0, json!([[1, 1, 2]]))
            .reserve("info", "r2", 0, json!([[1, 1, 1]]));
        let events = h.finish(
            json!([[1, 1, 10, 0]]),
            json!([]),
            json!([
                hold(5, "r1", "expired", 0, json!([[1, 1, 2]])),
                hold(6, "r2", "expired", 0, json!([[1, 1, 1]])),
            ]),
        );
        let r = report(&events);
        assert_eq!(r.counts.get("phantom-hold"), Some(&1), "{:?}", r.anomalies);
        assert!(r.anomalies[0].contains("r1"), "{:?}", r.anomalies);
    }
}
