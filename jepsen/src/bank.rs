//! The bank checker: transfers move stock between (dc, sku) rows and preserve the total, so
//! every read (all balances from one transaction) must sum to the initial total, and no
//! balance may be negative.
//!
//! History shape: `f = "read"` with `ok` value `[[dc, sku, qty], ...]` (or, as Jepsen's bank
//! test writes it, a map of account to balance, `{"a": 10, "b": 7}`); `f = "transfer"` with
//! value `{"from": [dc, sku], "to": [dc, sku], "amount": n}` (not needed for the check).
//! The initial total comes from an `f = "init"` event of process `"setup"` with value
//! `{"total": N}`; without one, the first complete read sets it.

use serde_json::Value;

use crate::history::{Event, EventType, Process};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BankAnomaly {
    pub event_index: u64,
    /// `wrong-total` or `negative-balance`.
    pub kind: &'static str,
    pub message: String,
}

#[derive(Clone, Debug, Default)]
pub struct BankReport {
    pub reads: usize,
    pub total: Option<i64>,
    pub anomalies: Vec<BankAnomaly>,
    /// Every anomaly, counted by kind.
    pub counts: std::collections::BTreeMap<&'static str, usize>,
}

/// Anomalies listed at most (the count is always exact).
const EXAMPLES_MAX: usize = 50;

/// A read's balances, each named: `dc D sku S` rows, or a map's accounts.
fn balances(value: &Value) -> Result<Vec<(String, i64)>, String> {
    if let Some(accounts) = value.as_object() {
        return accounts
            .iter()
            .map(|(account, n)| match n.as_i64() {
                Some(n) => Ok((format!("account {account}"), n)),
                None => Err(format!("account {account}: the balance must be an integer")),
            })
            .collect();
    }
    let rows = value
        .as_array()
        .ok_or("a read's value must be [[dc, sku, qty], ...] or {account: balance}")?;
    rows.iter()
        .map(|row| {
            let r = row
                .as_array()
                .filter(|r| r.len() == 3)
                .ok_or("each balance is [dc, sku, qty]")?;
            match (r[0].as_u64(), r[1].as_u64(), r[2].as_i64()) {
                (Some(dc), Some(sku), Some(qty)) => Ok((format!("dc {dc} sku {sku}"), qty)),
                _ => Err("each balance is [dc, sku, qty] of integers".to_string()),
            }
        })
        .collect()
}

pub fn check(events: &[Event]) -> Result<(BankReport, usize), String> {
    let mut report = BankReport::default();
    let mut count = 0;
    for e in events {
        if e.process == Process::Named("setup".into()) && e.f == "init" {
            report.total = Some(
                e.value["total"]
                    .as_i64()
                    .ok_or_else(|| format!("event {}: init needs {{\"total\": N}}", e.index))?,
            );
        }
    }
    for e in events {
        if e.f != "read" || e.kind != EventType::Ok || e.process.is_nemesis() {
            continue;
        }
        let rows = balances(&e.value).map_err(|m| format!("event {}: {m}", e.index))?;
        report.reads += 1;
        let sum: i64 = rows.iter().map(|r| r.1).sum();
        let total = *report.total.get_or_insert(sum);
        let mut problems = Vec::new();
        if sum != total {
            problems.push(("wrong-total", format!("read total {sum}, expected {total}")));
        }
        for (name, qty) in &rows {
            if *qty < 0 {
                problems.push(("negative-balance", format!("{name} at {qty}")));
            }
        }
        for (kind, message) in problems {
            count += 1;
            *report.counts.entry(kind).or_default() += 1;
            if report.anomalies.len() < EXAMPLES_MAX {
                report.anomalies.push(BankAnomaly {
                    event_index: e.index,
                    kind,
                    message,
                });
            }
        }
    }
    Ok((report, count))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ev(index: u64, process: Process, kind: EventType, f: &str, value: Value) -> Event {
        Event {
            index,
            time_ns: index,
            process,
            kind,
            f: f.into(),
            value,
            key: None,
        }
    }

    #[test]
    fn totals_must_hold_in_every_read() {
        let setup = Process::Named("setup".into());
        let good = vec![
            ev(
                0,
                setup.clone(),
                EventType::Ok,
                "init",
                json!({"total": 30}),
            ),
            ev(
                1,
                Process::Client(1),
                EventType::Invoke,
                "read",
                Value::Null,
            ),
            ev(
                2,
                Process::Client(1),
                EventType::Ok,
                "read",
                json!([[1, 1, 10], [2, 1, 20]]),
            ),
            ev(
                3,
                Process::Client(2),
                EventType::Invoke,
                "transfer",
                json!({"from": [1, 1], "to": [2, 1], "amount": 5}),
            ),
            ev(
                4,
                Process::Client(2),
                EventType::Ok,
                "transfer",
                json!({"from": [1, 1], "to": [2, 1], "amount": 5}),
            ),
            ev(
                5,
                Process::Client(1),
                EventType::Invoke,
                "read",
                Value::Null,
            ),
            ev(
                6,
                Process::Client(1),
                EventType::Ok,
                "read",
                json!([[1, 1, 5], [2, 1, 25]]),
            ),
        ];
        let (report, count) = check(&good).unwrap();
        assert_eq!((report.reads, count), (2, 0));

        // A read that sees a transfer half-applied: money created.
        let mut bad = good.clone();
        bad[6].value = json!([[1, 1, 10], [2, 1, 25]]);
        let (report, count) = check(&bad).unwrap();
        assert_eq!(count, 1);
        assert_eq!(report.anomalies[0].event_index, 6);
        assert!(report.anomalies[0]
            .message
            .contains("read total 35, expected 30"));

        // A negative balance, even with the right total.
        let mut negative = good;
        negative[6].value = json!([[1, 1, -5], [2, 1, 35]]);
        let (report, _) = check(&negative).unwrap();
        assert!(report.anomalies[0].message.contains("at -5"));
    }
}
