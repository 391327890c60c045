//! The checker of nearby (split-fill) orders, `PlaceOrderNearby` (the history shape is in
//! [`crate::nearby`]). [`crate::inventory`] runs it and folds its anomalies, and the units the
//! orders took, into its own verdict; a split order is a multi-line order whose lines the
//! server chose: all its shipments take effect, or none.
//!
//! What an order took: an acknowledged one, the allocation its answer named; one of unknown
//! outcome, the lines the final read of the orders (`ListOrders`) gives it if it is there, and
//! nothing if it is not, exactly as an ordinary order of unknown outcome counts iff the final
//! orders hold it. One of unknown outcome that is there but whose lines the final read does
//! not give (a history from before `order_lines`) leaves every row it could have taken from
//! (its candidate stores × its SKUs) unchecked, never guessed.
//!
//! Checks:
//! - an acknowledged order is in the final orders (`lost-order`), a rejected one is not
//!   (`rejected-order-present`);
//! - the final read gives an acknowledged order the lines its answer named
//!   (`order-lines-mismatch`); its shipments are those lines grouped by store
//!   (`shipment-mismatch`); no line takes more than its store had (`nearby-oversell`);
//! - what an order took keeps to what it asked: stores among the candidates within the radius
//!   (`nearby-outside-radius`), at most `max_dcs` of them (`nearby-too-many-dcs`), only the
//!   SKUs asked for, every unit of each for ALL_OR_NOTHING, no more than asked and something
//!   for PARTIAL (`nearby-wrong-units`);
//! - and, in [`crate::inventory`], the stock: every row's final value counts the units of every
//!   order that took effect, so an order only some of whose shipments reached the stock is a
//!   `stock-mismatch` on the rows of the others.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use crate::history::{EventType, Operation};

type Key = (u64, u64);
/// `[dc, sku, n]`: a quantity at a key.
pub type Row = (u64, u64, i64);

/// Anomalies listed at most.
const EXAMPLES_MAX: usize = 50;

/// What the final read says about the orders: the request ids of every committed order, and,
/// where the history has them, each one's lines.
pub struct FinalOrders<'a> {
    pub present: &'a BTreeSet<String>,
    pub lines: Option<&'a BTreeMap<String, Vec<Row>>>,
}

#[derive(Default)]
pub struct Report {
    /// Examples, at most [`EXAMPLES_MAX`], each `kind: explanation`.
    pub anomalies: Vec<String>,
    /// Every anomaly counted by kind (see the module's list).
    pub counts: BTreeMap<&'static str, usize>,
    /// Units taken by the nearby orders that took effect, by (dc, sku).
    pub taken_units: BTreeMap<Key, i64>,
    /// Rows whose stock cannot be checked, with why: an order of unknown outcome is committed
    /// but its lines are not known.
    pub unknown_keys: BTreeMap<Key, String>,
    /// The request ids of every nearby order: the final orders may hold them.
    pub request_ids: BTreeSet<String>,
    /// What happened, for the results: orders by outcome (`nearby-ok`, `-fail`, `-info`), those
    /// that took effect (`nearby-committed`, of them `nearby-info-committed` of unknown
    /// outcome), split over two or more stores (`nearby-split`, `nearby-split-3`), and PARTIAL
    /// ones that got less than they asked (`nearby-partial-short`).
    pub stats: BTreeMap<String, u64>,
}

impl Report {
    fn note(&mut self, kind: &'static str, explanation: String) {
        *self.counts.entry(kind).or_default() += 1;
        if self.anomalies.len() < EXAMPLES_MAX {
            self.anomalies.push(format!("{kind}: {explanation}"));
        }
    }

    fn count(&mut self, stat: &str) {
        *self.stats.entry(stat.to_string()).or_default() += 1;
    }
}

/// Units by key, rows of the same key summed, keys with nothing left out.
pub fn by_key(rows: &[Row]) -> BTreeMap<Key, i64> {
    let mut out: BTreeMap<Key, i64> = BTreeMap::new();
    for &(dc, sku, n) in rows {
        *out.entry((dc, sku)).or_default() += n;
    }
    out.retain(|_, n| *n != 0);
    out
}

fn u64_list(value: &Value, what: &str) -> Result<Vec<u64>, String> {
    value
        .as_array()
        .and_then(|l| l.iter().map(Value::as_u64).collect())
        .ok_or_else(|| format!("{what}: expected a list of integers"))
}

/// What a nearby order asked, from its invocation.
struct Ask {
    request_id: String,
    /// `(sku, qty)`.
    lines: Vec<(u64, i64)>,
    max_dcs: u64,
    partial: bool,
    /// DC ids within the radius, nearest first.
    candidates: Vec<u64>,
}

fn ask(value: &Value, what: &str) -> Result<Ask, String> {
    let request_id = value["request_id"]
        .as_str()
        .ok_or_else(|| format!("{what}: a nearby order needs a request_id"))?
        .to_string();
    let lines = value["lines"]
        .as_array()
        .and_then(|l| {
            l.iter()
                .map(|x| match x.as_array().map(|x| x.as_slice()) {
                    Some([sku, qty]) => Some((sku.as_u64()?, qty.as_i64()?)),
                    _ => None,
                })
                .collect::<Option<Vec<_>>>()
        })
        .ok_or_else(|| format!("{what}: a nearby order's lines are [[sku, qty], ...]"))?;
    Ok(Ask {
        request_id,
        lines,
        max_dcs: value["max_dcs"]
            .as_u64()
            .ok_or_else(|| format!("{what}: needs max_dcs"))?,
        partial: value["partial"].as_bool().unwrap_or(false),
        candidates: u64_list(&value["candidates"], &format!("{what}: candidates"))?,
    })
}

/// `[[dc, sku, allocated, available], ...]` of an acknowledged order: its rows and the lines
/// that took more than their store had.
fn allocated(value: &Value, what: &str) -> Result<(Vec<Row>, Vec<String>), String> {
    let list = value["allocated"]
        .as_array()
        .ok_or_else(|| format!("{what}: an acknowledged nearby order needs allocated"))?;
    let mut rows = Vec::new();
    let mut over = Vec::new();
    for r in list {
        let r = r.as_array().filter(|r| r.len() >= 3);
        let Some((Some(dc), Some(sku), Some(n))) =
            r.map(|r| (r[0].as_u64(), r[1].as_u64(), r[2].as_i64()))
        else {
            return Err(format!(
                "{what}: allocated rows are [dc, sku, allocated, available]"
            ));
        };
        if let Some(available) = r.and_then(|r| r.get(3)).and_then(Value::as_i64) {
            if n > available {
                over.push(format!("dc {dc} sku {sku} allocated {n} of {available}"));
            }
        }
        rows.push((dc, sku, n));
    }
    Ok((rows, over))
}

/// `[[dc, [[sku, qty], ...]], ...]`: the shipments flattened to rows.
fn shipments(value: &Value, what: &str) -> Result<Vec<Row>, String> {
    let Some(list) = value["shipments"].as_array() else {
        return Ok(Vec::new());
    };
    let mut rows = Vec::new();
    for s in list {
        let bad = || format!("{what}: shipments are [[dc, [[sku, qty], ...]], ...]");
        let s = s.as_array().filter(|s| s.len() == 2).ok_or_else(bad)?;
        let dc = s[0].as_u64().ok_or_else(bad)?;
        for l in s[1].as_array().ok_or_else(bad)? {
            match l.as_array().map(|l| l.as_slice()) {
                Some([sku, qty]) => rows.push((
                    dc,
                    sku.as_u64().ok_or_else(bad)?,
                    qty.as_i64().ok_or_else(bad)?,
                )),
                _ => return Err(bad()),
            }
        }
    }
    Ok(rows)
}

/// `[dc 1 sku 2 x3, ...]`.
pub fn render(rows: &BTreeMap<Key, i64>) -> String {
    let parts: Vec<String> = rows
        .iter()
        .map(|((dc, sku), n)| format!("dc {dc} sku {sku} x{n}"))
        .collect();
    format!("[{}]", parts.join(", "))
}

/// Whether what an order took keeps to what it asked; the anomalies it finds are noted.
fn keeps_to(report: &mut Report, ask: &Ask, took: &BTreeMap<Key, i64>, what: &str) {
    let id = &ask.request_id;
    let outside: Vec<u64> = took
        .keys()
        .map(|&(dc, _)| dc)
        .filter(|dc| !ask.candidates.contains(dc))
        .collect();
    if !outside.is_empty() {
        report.note(
            "nearby-outside-radius",
            format!(
                "{what}: order {id} took {} from dc {outside:?}, not among the stores within \
                 its radius {:?}",
                render(took),
                ask.candidates
            ),
        );
    }
    let dcs: BTreeSet<u64> = took.keys().map(|&(dc, _)| dc).collect();
    if dcs.len() as u64 > ask.max_dcs {
        report.note(
            "nearby-too-many-dcs",
            format!(
                "{what}: order {id} took {} from {} stores, max_dcs {}",
                render(took),
                dcs.len(),
                ask.max_dcs
            ),
        );
    }
    let mut per_sku: BTreeMap<u64, i64> = BTreeMap::new();
    for (&(_, sku), &n) in took {
        *per_sku.entry(sku).or_default() += n;
    }
    let asked: BTreeMap<u64, i64> = ask.lines.iter().copied().collect();
    let wrong = per_sku.keys().any(|sku| !asked.contains_key(sku))
        || took.values().any(|&n| n < 0)
        || per_sku.is_empty()
        || asked.iter().any(|(sku, &qty)| {
            let got = per_sku.get(sku).copied().unwrap_or(0);
            if ask.partial {
                got > qty
            } else {
                got != qty
            }
        });
    if wrong {
        report.note(
            "nearby-wrong-units",
            format!(
                "{what}: order {id} ({}) asked {:?} (sku, qty) and took {}",
                if ask.partial {
                    "PARTIAL"
                } else {
                    "ALL_OR_NOTHING"
                },
                ask.lines,
                render(took)
            ),
        );
    }
    report.count("nearby-committed");
    if dcs.len() > 1 {
        report.count("nearby-split");
    }
    if dcs.len() > 2 {
        report.count("nearby-split-3");
    }
    if ask.partial
        && asked
            .iter()
            .any(|(sku, &qty)| per_sku.get(sku) != Some(&qty))
    {
        report.count("nearby-partial-short");
    }
}

pub fn check(ops: &[Operation], orders: &FinalOrders<'_>) -> Result<Report, String> {
    let mut report = Report::default();
    for (i, op) in ops.iter().enumerate() {
        if op.f != "nearby-order" {
            continue;
        }
        let what = format!("operation {i} ({} at event {})", op.f, op.invoke_index);
        let ask = ask(&op.invoke_value, &what)?;
        let id = ask.request_id.clone();
        report.request_ids.insert(id.clone());
        let present = orders.present.contains(&id);
        let final_lines = orders.lines.and_then(|l| l.get(&id)).map(|l| by_key(l));
        let completion = if op.is_indeterminate() {
            EventType::Info
        } else {
            op.completion.expect("completed")
        };
        match completion {
            EventType::Ok => {
                report.count("nearby-ok");
                let (rows, over) = allocated(&op.complete_value, &what)?;
                let acked = by_key(&rows);
                for o in over {
                    report.note(
                        "nearby-oversell",
                        format!("{what}: order {id}: {o} available before it"),
                    );
                }
                let shipped = by_key(&shipments(&op.complete_value, &what)?);
                if shipped != acked {
                    report.note(
                        "shipment-mismatch",
                        format!(
                            "{what}: order {id} allocated {} but its shipments are {}",
                            render(&acked),
                            render(&shipped)
                        ),
                    );
                }
                if !present {
                    report.note(
                        "lost-order",
                        format!("order {id} was acknowledged but is missing (lost)"),
                    );
                    continue;
                }
                if let Some(listed) = &final_lines {
                    if *listed != acked {
                        report.note(
                            "order-lines-mismatch",
                            format!(
                                "order {id} was acknowledged with {} but the final read lists {}",
                                render(&acked),
                                render(listed)
                            ),
                        );
                    }
                }
                keeps_to(&mut report, &ask, &acked, &what);
                for (key, n) in acked {
                    *report.taken_units.entry(key).or_default() += n;
                }
            }
            EventType::Fail => {
                report.count("nearby-fail");
                if present {
                    report.note(
                        "rejected-order-present",
                        format!("order {id} was rejected but is present"),
                    );
                }
            }
            _ => {
                report.count("nearby-info");
                if !present {
                    continue;
                }
                report.count("nearby-info-committed");
                match final_lines {
                    Some(listed) => {
                        keeps_to(&mut report, &ask, &listed, &what);
                        for (key, n) in listed {
                            *report.taken_units.entry(key).or_default() += n;
                        }
                    }
                    None => {
                        for &dc in &ask.candidates {
                            for &(sku, _) in &ask.lines {
                                report.unknown_keys.insert(
                                    (dc, sku),
                                    format!(
                                        "nearby order {id} of unknown outcome is committed but \
                                         the final read does not give its lines"
                                    ),
                                );
                            }
                        }
                    }
                }
            }
        }
    }
    Ok(report)
}
