//! The cart workload's correctness check. Every hold a client made is one [`HoldRecord`] (its
//! units, its expiry as the target reported it, and what became of it); the tally counts them
//! as they come. After the run, once every hold that was not confirmed or cancelled has lapsed
//! and the target had time to give the units back, the final stock is compared with what the
//! clients saw:
//!
//! - **confirmed after expiry**: a confirm acknowledged as committed whose commit time (as the
//!   target reported it) is at or after the hold's expiry;
//! - **units lost**: units neither confirmed nor available (still reserved, or leaked by a
//!   release that never happened);
//! - **units oversold**: units available beyond initial − confirmed (released although they
//!   were sold), or a negative stock.
//!
//! Confirms whose outcome the client never learned may have committed or not; their units
//! widen the expected range, as in the order workloads' check.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::check::{error_kind, Check, PROBLEMS_MAX};
use crate::workload::{Dataset, Line};

/// What became of one hold.
#[derive(Clone, Debug, PartialEq)]
pub enum HoldEnd {
    /// The target said the confirm committed, at `commit_us` (µs since the Unix epoch);
    /// `None` when it did not say when (then nobody can tell whether it beat the expiry).
    Confirmed {
        commit_us: Option<i64>,
    },
    /// The target refused the confirm (e.g. `expired`).
    ConfirmRefused(&'static str),
    /// The confirm's outcome is unknown.
    ConfirmUnknown(String),
    Cancelled,
    /// The hold was not live any more when the cancel came (e.g. `expired`).
    CancelRefused(&'static str),
    CancelUnknown(String),
    /// Left alone: it must lapse.
    LeftToExpire,
}

/// One hold the client made, as the target reported it.
#[derive(Clone, Debug, PartialEq)]
pub struct HoldRecord {
    /// Units held per key.
    pub lines: Vec<Line>,
    /// The first µs (since the Unix epoch) at which the target treats the hold as expired.
    pub expires_at_us: i64,
    pub end: HoldEnd,
}

/// What one client (or all, merged) saw.
#[derive(Default, Debug)]
pub struct CartTally {
    pub holds: u64,
    pub reserve_refused: BTreeMap<String, u64>,
    pub confirmed: u64,
    pub confirm_refused: BTreeMap<String, u64>,
    pub cancelled: u64,
    pub cancel_refused: BTreeMap<String, u64>,
    pub left_to_expire: u64,
    pub errors: BTreeMap<String, u64>,
    /// Units of committed confirms, per (dc, sku).
    pub sold: BTreeMap<(u32, u32), i64>,
    /// Units of confirms whose outcome is unknown, per (dc, sku).
    pub indeterminate: BTreeMap<(u32, u32), i64>,
    pub confirmed_after_expiry: u64,
    pub units_confirmed_after_expiry: i64,
    /// Committed confirms the target gave no commit time for.
    pub confirmed_time_unknown: u64,
    /// The latest time (µs since the Unix epoch) at which a hold made or perhaps made may
    /// lapse: the check waits past it.
    pub latest_expiry_us: i64,
}

fn bump(map: &mut BTreeMap<String, u64>, key: &str) {
    *map.entry(key.to_string()).or_default() += 1;
}

impl CartTally {
    pub fn reserve_refused(&mut self, reason: &str) {
        bump(&mut self.reserve_refused, reason);
    }

    /// A reserve whose outcome is unknown: a hold may exist, lapsing by `expiry_bound_us`.
    pub fn reserve_error(&mut self, error: &str, expiry_bound_us: i64) {
        bump(&mut self.errors, &format!("reserve: {}", error_kind(error)));
        self.latest_expiry_us = self.latest_expiry_us.max(expiry_bound_us);
    }

    pub fn hold(&mut self, record: &HoldRecord) {
        self.holds += 1;
        self.latest_expiry_us = self.latest_expiry_us.max(record.expires_at_us);
        match &record.end {
            HoldEnd::Confirmed { commit_us } => {
                self.confirmed += 1;
                let units: i64 = record.lines.iter().map(|l| l.2).sum();
                for &(dc, sku, qty) in &record.lines {
                    *self.sold.entry((dc, sku)).or_default() += qty;
                }
                match commit_us {
                    Some(at) if *at >= record.expires_at_us => {
                        self.confirmed_after_expiry += 1;
                        self.units_confirmed_after_expiry += units;
                    }
                    Some(_) => {}
                    None => self.confirmed_time_unknown += 1,
                }
            }
            HoldEnd::ConfirmRefused(reason) => bump(&mut self.confirm_refused, reason),
            HoldEnd::ConfirmUnknown(e) => {
                bump(&mut self.errors, &format!("confirm: {}", error_kind(e)));
                for &(dc, sku, qty) in &record.lines {
                    *self.indeterminate.entry((dc, sku)).or_default() += qty;
                }
            }
            HoldEnd::Cancelled => self.cancelled += 1,
            HoldEnd::CancelRefused(reason) => bump(&mut self.cancel_refused, reason),
            HoldEnd::CancelUnknown(e) => {
                bump(&mut self.errors, &format!("cancel: {}", error_kind(e)))
            }
            HoldEnd::LeftToExpire => self.left_to_expire += 1,
        }
    }

    pub fn merge(&mut self, other: CartTally) {
        let add = |mine: &mut BTreeMap<String, u64>, theirs: BTreeMap<String, u64>| {
            for (k, v) in theirs {
                *mine.entry(k).or_default() += v;
            }
        };
        let add_units = |mine: &mut BTreeMap<(u32, u32), i64>, theirs| {
            for (k, v) in theirs {
                *mine.entry(k).or_default() += v;
            }
        };
        self.holds += other.holds;
        add(&mut self.reserve_refused, other.reserve_refused);
        self.confirmed += other.confirmed;
        add(&mut self.confirm_refused, other.confirm_refused);
        self.cancelled += other.cancelled;
        add(&mut self.cancel_refused, other.cancel_refused);
        self.left_to_expire += other.left_to_expire;
        add(&mut self.errors, other.errors);
        add_units(&mut self.sold, other.sold);
        add_units(&mut self.indeterminate, other.indeterminate);
        self.confirmed_after_expiry += other.confirmed_after_expiry;
        self.units_confirmed_after_expiry += other.units_confirmed_after_expiry;
        self.confirmed_time_unknown += other.confirmed_time_unknown;
        self.latest_expiry_us = self.latest_expiry_us.max(other.latest_expiry_us);
    }
}

/// One key's stock as the target reports it after the run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StockRow {
    pub on_hand: i64,
    /// Units the target still counts as held.
    pub reserved: i64,
    /// What a new reserve could take.
    pub available: i64,
}

/// The target's state after every hold lapsed.
#[derive(Clone, Debug, Default)]
pub struct FinalState {
    pub rows: BTreeMap<(u32, u32), StockRow>,
    /// Holds past their expiry whose units the target never gave back (Redis: hold records
    /// no release reached; PostgreSQL: live rows past expires_at); 0 where the target has no
    /// such list (Ordo: its reads count live holds only, so `reserved` shows them instead).
    pub holds_unreleased: u64,
}

impl FinalState {
    pub fn reserved(&self) -> i64 {
        self.rows.values().map(|r| r.reserved).sum()
    }
}

/// The cart check's counts, reported for every target.
#[derive(Clone, Debug, Default, Serialize)]
pub struct CartCheck {
    /// Whether any anomaly fails the run (Ordo, and PostgreSQL whose design rules them out);
    /// a baseline whose design predicts them (Redis) has them reported, not failed.
    pub anomalies_fail: bool,
    pub holds_confirmed_after_expiry: u64,
    pub units_confirmed_after_expiry: i64,
    /// Committed confirms without a commit time: not verifiable, so an anomaly too.
    pub holds_confirmed_time_unknown: u64,
    /// Units neither confirmed nor available after every hold lapsed.
    pub units_lost: i64,
    /// Units available although they were confirmed (released twice), or below zero.
    pub units_oversold: i64,
    /// Units still counted as held after every hold lapsed (part of `units_lost`).
    pub units_still_reserved: i64,
    /// Holds whose release never happened.
    pub holds_leaked: u64,
    /// One line per anomaly (at most 20), failing or not.
    pub anomalies: Vec<String>,
}

/// Counts the anomalies; the `Check` fails on any when `anomalies_fail`.
pub fn check(
    dataset: &Dataset,
    tally: &CartTally,
    last: &FinalState,
    anomalies_fail: bool,
) -> (Check, CartCheck) {
    let mut c = CartCheck {
        anomalies_fail,
        holds_confirmed_after_expiry: tally.confirmed_after_expiry,
        units_confirmed_after_expiry: tally.units_confirmed_after_expiry,
        holds_confirmed_time_unknown: tally.confirmed_time_unknown,
        holds_leaked: last.holds_unreleased,
        ..CartCheck::default()
    };
    if tally.confirmed_after_expiry > 0 {
        c.anomalies.push(format!(
            "{} holds ({} units) confirmed at or after their expiry",
            tally.confirmed_after_expiry, tally.units_confirmed_after_expiry
        ));
    }
    if tally.confirmed_time_unknown > 0 {
        c.anomalies.push(format!(
            "{} confirms committed without a commit time: whether they beat the expiry is unknown",
            tally.confirmed_time_unknown
        ));
    }
    if last.holds_unreleased > 0 {
        c.anomalies.push(format!(
            "{} holds past their expiry were never released",
            last.holds_unreleased
        ));
    }
    let mut key_lines = Vec::new();
    for (dc, sku) in dataset.keys() {
        let sold = tally.sold.get(&(dc, sku)).copied().unwrap_or(0);
        let unknown = tally.indeterminate.get(&(dc, sku)).copied().unwrap_or(0);
        let Some(row) = last.rows.get(&(dc, sku)) else {
            key_lines.push(format!("dc {dc} sku {sku}: final stock missing"));
            continue;
        };
        // Acknowledged confirms took exactly `sold`; unknown ones may each have committed.
        let highest = dataset.stock - sold;
        let lowest = highest - unknown;
        let lost = (lowest - row.available.max(0)).max(0);
        let oversold = (row.available - highest).max(0) + (-row.available).max(0);
        c.units_lost += lost;
        c.units_oversold += oversold;
        c.units_still_reserved += row.reserved.max(0);
        if lost > 0 || oversold > 0 || row.reserved != 0 {
            key_lines.push(format!(
                "dc {dc} sku {sku}: available {} (on hand {}, reserved {}), expected {} - {sold} confirmed{}",
                row.available,
                row.on_hand,
                row.reserved,
                dataset.stock,
                if unknown > 0 {
                    format!(" - up to {unknown} indeterminate")
                } else {
                    String::new()
                }
            ));
        }
    }
    if c.units_lost > 0 || c.units_oversold > 0 {
        c.anomalies.push(format!(
            "{} units lost ({} still reserved), {} units oversold",
            c.units_lost, c.units_still_reserved, c.units_oversold
        ));
    }
    c.anomalies.extend(key_lines);
    c.anomalies.truncate(PROBLEMS_MAX);

    let mut rejected = BTreeMap::new();
    for (prefix, map) in [
        ("reserve", &tally.reserve_refused),
        ("confirm", &tally.confirm_refused),
        ("cancel", &tally.cancel_refused),
    ] {
        for (reason, n) in map {
            rejected.insert(format!("{prefix}: {reason}"), *n);
        }
    }
    let problems = if anomalies_fail {
        c.anomalies.clone()
    } else {
        Vec::new()
    };
    let check = Check {
        ok: problems.is_empty(),
        orders_ok: tally.confirmed,
        orders_rejected: rejected,
        errors: tally.errors.clone(),
        reads_ok: 0,
        units_sold: tally.sold.values().sum(),
        units_indeterminate: tally.indeterminate.values().sum(),
        problems,
    };
    (check, c)
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

    const EXPIRES_US: i64 = 1_000_000;

    fn hold(lines: &[Line], end: HoldEnd) -> HoldRecord {
        HoldRecord {
            lines: lines.to_vec(),
            expires_at_us: EXPIRES_US,
            end,
        }
    }

    fn rows(a: i64, b: i64) -> FinalState {
        let row = |available| StockRow {
            on_hand: available,
            reserved: 0,
            available,
        };
        FinalState {
            rows: BTreeMap::from([((1, 1), row(a)), ((1, 2), row(b))]),
            holds_unreleased: 0,
        }
    }

    #[test]
    fn a_clean_history_passes_and_counts_its_outcomes() {
        let mut t = CartTally::default();
        t.hold(&hold(
            &[(1, 1, 2), (1, 2, 1)],
            HoldEnd::Confirmed {
                commit_us: Some(EXPIRES_US - 1),
            },
        ));
        t.hold(&hold(&[(1, 1, 1)], HoldEnd::Cancelled));
        t.hold(&hold(&[(1, 2, 2)], HoldEnd::LeftToExpire));
        t.hold(&hold(&[(1, 2, 2)], HoldEnd::ConfirmRefused("expired")));
        t.reserve_refused("insufficient-stock");
        let (check, cart) = check(&dataset(), &t, &rows(8, 9), true);
        assert!(check.ok, "{:?}", check.problems);
        assert_eq!(cart.holds_confirmed_after_expiry, 0);
        assert_eq!((cart.units_lost, cart.units_oversold), (0, 0));
        assert_eq!(check.units_sold, 3);
        assert_eq!(check.orders_rejected["confirm: expired"], 1);
        assert_eq!(check.orders_rejected["reserve: insufficient-stock"], 1);
        assert_eq!(t.latest_expiry_us, EXPIRES_US);
    }

    #[test]
    fn a_confirm_committed_at_or_after_expiry_is_counted_and_fails_an_exact_target() {
        let mut t = CartTally::default();
        for at in [EXPIRES_US, EXPIRES_US + 40_000, EXPIRES_US - 1] {
            t.hold(&hold(
                &[(1, 1, 1)],
                HoldEnd::Confirmed {
                    commit_us: Some(at),
                },
            ));
        }
        let (check_exact, cart) = check(&dataset(), &t, &rows(7, 10), true);
        assert_eq!(cart.holds_confirmed_after_expiry, 2);
        assert_eq!(cart.holds_confirmed_time_unknown, 0);
        assert_eq!(cart.units_confirmed_after_expiry, 2);
        assert!(!check_exact.ok);
        assert!(check_exact.problems[0].contains("2 holds (2 units) confirmed at or after"));
        // A baseline whose design predicts it: counted the same, reported, not failed.
        let (check_baseline, cart) = check(&dataset(), &t, &rows(7, 10), false);
        assert!(check_baseline.ok);
        assert_eq!(cart.holds_confirmed_after_expiry, 2);
        assert!(!cart.anomalies.is_empty());
    }

    #[test]
    fn a_committed_confirm_without_a_commit_time_cannot_pass_an_exact_target() {
        let mut t = CartTally::default();
        t.hold(&hold(&[(1, 1, 1)], HoldEnd::Confirmed { commit_us: None }));
        let (check, cart) = check(&dataset(), &t, &rows(9, 10), true);
        assert!(!check.ok);
        assert_eq!(cart.holds_confirmed_time_unknown, 1);
        assert_eq!(cart.holds_confirmed_after_expiry, 0);
    }

    #[test]
    fn leaked_and_double_released_units_are_counted_per_key() {
        let mut t = CartTally::default();
        // Key (1,1): 3 units confirmed, but the expiry release gave them back as well.
        t.hold(&hold(
            &[(1, 1, 3)],
            HoldEnd::Confirmed {
                commit_us: Some(EXPIRES_US + 5),
            },
        ));
        // Key (1,2): a hold of 2 lapsed and its release never happened.
        t.hold(&hold(&[(1, 2, 2)], HoldEnd::LeftToExpire));
        let mut last = rows(10, 8);
        last.holds_unreleased = 1;
        let (check, cart) = check(&dataset(), &t, &last, false);
        assert!(check.ok, "a baseline's anomalies are reported, not failed");
        assert_eq!(cart.units_oversold, 3);
        assert_eq!(cart.units_lost, 2);
        assert_eq!(cart.holds_leaked, 1);
        assert_eq!(cart.holds_confirmed_after_expiry, 1);
        let all = cart.anomalies.join("\n");
        assert!(all.contains("dc 1 sku 1: available 10"), "{all}");
        assert!(all.contains("dc 1 sku 2: available 8"), "{all}");
    }

    #[test]
    fn units_still_reserved_after_every_expiry_are_lost_and_unknown_confirms_widen_the_range() {
        let mut t = CartTally::default();
        t.hold(&hold(
            &[(1, 1, 2)],
            HoldEnd::ConfirmUnknown("deadline".into()),
        ));
        // The unknown confirm may have committed (8) or not (10): both pass.
        for available in [8, 10] {
            assert!(check(&dataset(), &t, &rows(available, 10), true).0.ok);
        }
        let mut last = rows(10, 9);
        last.rows.insert(
            (1, 2),
            StockRow {
                on_hand: 10,
                reserved: 1,
                available: 9,
            },
        );
        let (check, cart) = check(&dataset(), &t, &last, true);
        assert!(!check.ok);
        assert_eq!((cart.units_lost, cart.units_still_reserved), (1, 1));
    }
}
