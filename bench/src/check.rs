//! Correctness after every run: no key sold more than it had, final stock = initial -
//! successful decrements (allowing indeterminate orders, whose outcome the client never
//! learned, to have applied or not), never negative; and counts of each outcome.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::targets::Outcome;
use crate::workload::{Dataset, Line};

/// What the clients saw, per key and per outcome.
#[derive(Default, Debug)]
pub struct Tally {
    /// Units decremented by acknowledged orders, per (dc, sku).
    pub sold: BTreeMap<(u32, u32), i64>,
    /// Units of orders whose outcome is unknown (errors, timeouts), per (dc, sku).
    pub indeterminate: BTreeMap<(u32, u32), i64>,
    pub orders_ok: u64,
    pub orders_rejected: BTreeMap<String, u64>,
    pub errors: BTreeMap<String, u64>,
    pub reads_ok: u64,
    /// The highest epoch any answer to the clients named (Ordo's targets): the final check
    /// reads at least this far, so it sees every acknowledged order on whichever node it asks.
    pub highest_epoch: u64,
}

/// Errors are grouped by their first words, so one kind of failure is one count.
pub(crate) fn error_kind(e: &str) -> String {
    e.split_whitespace().take(6).collect::<Vec<_>>().join(" ")
}

impl Tally {
    pub fn order(&mut self, lines: &[Line], outcome: &Outcome) {
        match outcome {
            Outcome::Ok => {
                self.orders_ok += 1;
                for &(dc, sku, qty) in lines {
                    *self.sold.entry((dc, sku)).or_default() += qty;
                }
            }
            Outcome::Rejected(reason) => {
                *self.orders_rejected.entry(reason.to_string()).or_default() += 1;
            }
            Outcome::Error(e) => {
                *self.errors.entry(error_kind(e)).or_default() += 1;
                for &(dc, sku, qty) in lines {
                    *self.indeterminate.entry((dc, sku)).or_default() += qty;
                }
            }
        }
    }

    pub fn read(&mut self, outcome: &Outcome) {
        match outcome {
            Outcome::Error(e) => *self.errors.entry(error_kind(e)).or_default() += 1,
            _ => self.reads_ok += 1,
        }
    }

    pub fn merge(&mut self, other: Tally) {
        for (k, v) in other.sold {
            *self.sold.entry(k).or_default() += v;
        }
        for (k, v) in other.indeterminate {
            *self.indeterminate.entry(k).or_default() += v;
        }
        self.orders_ok += other.orders_ok;
        for (k, v) in other.orders_rejected {
            *self.orders_rejected.entry(k).or_default() += v;
        }
        for (k, v) in other.errors {
            *self.errors.entry(k).or_default() += v;
        }
        self.reads_ok += other.reads_ok;
        self.highest_epoch = self.highest_epoch.max(other.highest_epoch);
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Check {
    pub ok: bool,
    pub orders_ok: u64,
    pub orders_rejected: BTreeMap<String, u64>,
    pub errors: BTreeMap<String, u64>,
    pub reads_ok: u64,
    pub units_sold: i64,
    pub units_indeterminate: i64,
    /// What is wrong, one line per broken key (at most 20).
    pub problems: Vec<String>,
}

/// Problems listed per run, at most.
pub(crate) const PROBLEMS_MAX: usize = 20;

/// Datasets up to this many rows are checked whole after a run.
pub(crate) const FULL_CHECK_ROWS_MAX: u64 = 100_000;

/// Untouched rows checked in a larger dataset, spread evenly over it.
pub(crate) const SAMPLED_ROWS: u64 = 10_000;

/// The rows the final check reads back: every row of a dataset of at most
/// [`FULL_CHECK_ROWS_MAX`]; in a larger one, every row an acknowledged or indeterminate order
/// touched and [`SAMPLED_ROWS`] others spread over the dataset (they must still hold their
/// initial stock). Reading back 10⁷ rows would take longer than the run.
pub fn keys_to_check(dataset: &Dataset, tally: &Tally) -> Vec<(u32, u32)> {
    let rows = u64::from(dataset.dcs) * u64::from(dataset.skus);
    if rows <= FULL_CHECK_ROWS_MAX {
        return dataset.keys().collect();
    }
    let mut keys: std::collections::BTreeSet<(u32, u32)> = tally
        .sold
        .keys()
        .chain(tally.indeterminate.keys())
        .copied()
        .collect();
    let skus = u64::from(dataset.skus);
    for i in 0..SAMPLED_ROWS {
        let index = i * rows / SAMPLED_ROWS;
        keys.insert(((index / skus) as u32 + 1, (index % skus) as u32 + 1));
    }
    keys.into_iter().collect()
}

pub fn check(dataset: &Dataset, tally: &Tally, final_stock: &BTreeMap<(u32, u32), i64>) -> Check {
    let mut problems = Vec::new();
    for (dc, sku) in keys_to_check(dataset, tally) {
        let sold = tally.sold.get(&(dc, sku)).copied().unwrap_or(0);
        let unknown = tally.indeterminate.get(&(dc, sku)).copied().unwrap_or(0);
        let Some(&now) = final_stock.get(&(dc, sku)) else {
            problems.push(format!("dc {dc} sku {sku}: final stock missing"));
            continue;
        };
        if sold > dataset.stock {
            problems.push(format!(
                "dc {dc} sku {sku}: OVERSOLD: {sold} units acknowledged of {} in stock",
                dataset.stock
            ));
        }
        if now < 0 {
            problems.push(format!("dc {dc} sku {sku}: negative stock {now}"));
        }
        // Acknowledged orders took exactly `sold`; indeterminate ones may each have applied.
        let highest = dataset.stock - sold;
        let lowest = highest - unknown;
        if now > highest || now < lowest {
            problems.push(format!(
                "dc {dc} sku {sku}: final stock {now}, expected {} - {sold} acknowledged{}",
                dataset.stock,
                if unknown > 0 {
                    format!(" - up to {unknown} indeterminate")
                } else {
                    String::new()
                }
            ));
        }
    }
    problems.truncate(PROBLEMS_MAX);
    Check {
        ok: problems.is_empty(),
        orders_ok: tally.orders_ok,
        orders_rejected: tally.orders_rejected.clone(),
        errors: tally.errors.clone(),
        reads_ok: tally.reads_ok,
        units_sold: tally.sold.values().sum(),
        units_indeterminate: tally.indeterminate.values().sum(),
        problems,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dataset() -> Dataset {
        Dataset {
            dcs: 1,
            skus: 2,
            stock: 10,
            regions: 1,
        }
    }

    #[test]
    fn a_consistent_run_passes() {
        let mut t = Tally::default();
        for _ in 0..4 {
            t.order(&[(1, 1, 2)], &Outcome::Ok);
        }
        t.order(&[(1, 1, 5)], &Outcome::Rejected("insufficient-stock"));
        let fin = BTreeMap::from([((1, 1), 2), ((1, 2), 10)]);
        let c = check(&dataset(), &t, &fin);
        assert!(c.ok, "{:?}", c.problems);
        assert_eq!(c.units_sold, 8);
        assert_eq!(c.orders_rejected["insufficient-stock"], 1);
    }

    #[test]
    fn oversell_lost_and_double_applied_orders_are_caught() {
        let mut t = Tally::default();
        for _ in 0..6 {
            t.order(&[(1, 1, 2)], &Outcome::Ok);
        }
        let fin = BTreeMap::from([((1, 1), -2), ((1, 2), 9)]);
        let c = check(&dataset(), &t, &fin);
        assert!(!c.ok);
        let all = c.problems.join("\n");
        assert!(all.contains("OVERSOLD: 12 units"), "{all}");
        assert!(all.contains("negative stock -2"), "{all}");
        // Key (1,2): nothing sold but one unit gone.
        assert!(
            all.contains("dc 1 sku 2: final stock 9, expected 10 - 0"),
            "{all}"
        );
    }

    #[test]
    fn a_large_dataset_is_checked_where_orders_touched_it_and_on_a_sample() {
        let big = Dataset {
            dcs: 1_000,
            skus: 1_000,
            stock: 10,
            regions: 3,
        };
        let mut t = Tally::default();
        t.order(&[(500, 7, 1)], &Outcome::Ok);
        t.order(&[(999, 3, 1)], &Outcome::Error("deadline exceeded".into()));
        let keys = keys_to_check(&big, &t);
        assert!(keys.contains(&(500, 7)) && keys.contains(&(999, 3)));
        assert!(keys.contains(&(1, 1)) && keys.contains(&(1_000, 901)));
        assert_eq!(keys.len() as u64, SAMPLED_ROWS + 2);
        let mut fin: BTreeMap<_, _> = keys.iter().map(|&k| (k, 10)).collect();
        fin.insert((500, 7), 9);
        assert!(check(&big, &t, &fin).ok);
        // A sampled row that lost a unit nobody ordered is caught.
        fin.insert((1, 1), 9);
        let c = check(&big, &t, &fin);
        assert!(!c.ok && c.problems[0].starts_with("dc 1 sku 1: final stock 9"));
    }

    #[test]
    fn indeterminate_orders_may_or_may_not_have_applied() {
        let mut t = Tally::default();
        t.order(&[(1, 1, 3)], &Outcome::Ok);
        t.order(&[(1, 1, 2)], &Outcome::Error("deadline exceeded".into()));
        for final_qty in [7, 5] {
            let fin = BTreeMap::from([((1, 1), final_qty), ((1, 2), 10)]);
            assert!(check(&dataset(), &t, &fin).ok, "final {final_qty}");
        }
        let fin = BTreeMap::from([((1, 1), 4), ((1, 2), 10)]);
        assert!(
            !check(&dataset(), &t, &fin).ok,
            "more than acknowledged + indeterminate"
        );
    }
}
