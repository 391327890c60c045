//! The nearby workloads' checks. Browse-nearby: a sample of answers (every
//! [`VERIFY_EVERY`]-th of each client) is compared with the dataset, which no operation
//! changes: the stores counted are the ones within the radius (up to the limit), every row is
//! the store's stock, every total is the sum over the stores counted. Order-nearby: every
//! committed order takes exactly its lines from at most `max_dcs` stores within the radius,
//! and after the run no row is below zero and each row went down by exactly what the
//! committed orders took from it (orders whose outcome is unknown may each have taken theirs).

use std::collections::{BTreeMap, BTreeSet};

use super::dataset::{NearbyDataset, RADIUS_M};
use super::fill::MAX_DCS;
use super::session::Availability;
use crate::check::{error_kind, Check, PROBLEMS_MAX};
use crate::workload::Line;

/// One browse answer in this many (per client) is compared with the dataset: the comparison
/// costs the client a scan of the DCs, on the machine the servers share.
pub const VERIFY_EVERY: u64 = 16;
/// Distances may differ this much between the bench's haversine and a target's (Redis's
/// sphere is 0.03% larger and its geohash cells about half a metre; PostGIS and Ordo round
/// differently): a store this close to the radius may be in or out.
const DISTANCE_SLACK_M: f64 = 10.0;

/// What one client saw (merged over clients after the run).
#[derive(Default)]
pub struct NearbyTally {
    pub answers: u64,
    pub answers_verified: u64,
    /// Stores counted, summed over answers (for the mean).
    pub dcs_counted: u64,
    pub committed: u64,
    pub rejected: BTreeMap<String, u64>,
    pub errors: BTreeMap<String, u64>,
    /// Units committed orders took, per (dc, sku).
    pub sold: BTreeMap<(u32, u32), i64>,
    /// Units asked by orders whose outcome is unknown (an error after the request left).
    pub units_indeterminate: i64,
    /// Committed orders by how many stores they shipped from.
    pub shipments: BTreeMap<usize, u64>,
    pub problems: Vec<String>,
    pub problems_total: u64,
}

impl NearbyTally {
    fn problem(&mut self, p: String) {
        self.problems_total += 1;
        if self.problems.len() < PROBLEMS_MAX {
            self.problems.push(p);
        }
    }

    pub fn error(&mut self, e: &str) {
        *self.errors.entry(error_kind(e)).or_default() += 1;
    }

    /// A browse answer; `verify` compares it with the dataset.
    pub fn answer(
        &mut self,
        data: &NearbyDataset,
        at: (f64, f64),
        skus: &[u32],
        answer: &Availability,
        verify: bool,
    ) {
        self.answers += 1;
        self.dcs_counted += answer.dcs.len() as u64;
        if verify {
            self.answers_verified += 1;
            if let Err(p) = verify_answer(data, at, skus, answer) {
                self.problem(format!("answer at ({:.6}, {:.6}): {p}", at.0, at.1));
            }
        }
    }

    pub fn order_committed(
        &mut self,
        data: &NearbyDataset,
        at: (f64, f64),
        lines: &[(u32, i64)],
        taken: &[Line],
    ) {
        self.committed += 1;
        let stores: BTreeSet<u32> = taken.iter().map(|t| t.0).collect();
        *self.shipments.entry(stores.len()).or_default() += 1;
        for &(dc, sku, units) in taken {
            *self.sold.entry((dc, sku)).or_default() += units;
        }
        if let Err(p) = verify_order(data, at, lines, taken, &stores) {
            self.problem(format!(
                "order at ({:.6}, {:.6}) of {lines:?}: {p}",
                at.0, at.1
            ));
        }
    }

    pub fn order_rejected(&mut self, reason: &str) {
        *self.rejected.entry(reason.to_string()).or_default() += 1;
    }

    pub fn order_unknown(&mut self, lines: &[(u32, i64)], e: &str) {
        self.error(e);
        self.units_indeterminate += lines.iter().map(|l| l.1).sum::<i64>();
    }

    pub fn merge(&mut self, other: NearbyTally) {
        self.answers += other.answers;
        self.answers_verified += other.answers_verified;
        self.dcs_counted += other.dcs_counted;
        self.committed += other.committed;
        for (k, v) in other.rejected {
            *self.rejected.entry(k).or_default() += v;
        }
        for (k, v) in other.errors {
            *self.errors.entry(k).or_default() += v;
        }
        for (k, v) in other.sold {
            *self.sold.entry(k).or_default() += v;
        }
        self.units_indeterminate += other.units_indeterminate;
        for (k, v) in other.shipments {
            *self.shipments.entry(k).or_default() += v;
        }
        for p in other.problems {
            if self.problems.len() < PROBLEMS_MAX {
                self.problems.push(p);
            }
        }
        self.problems_total += other.problems_total;
    }
}

fn verify_answer(
    data: &NearbyDataset,
    (lat, lon): (f64, f64),
    skus: &[u32],
    answer: &Availability,
) -> Result<(), String> {
    let radius = f64::from(RADIUS_M);
    let near = data.within(lat, lon, radius + DISTANCE_SLACK_M);
    let sure = near
        .iter()
        .filter(|n| n.1 <= radius - DISTANCE_SLACK_M)
        .count();
    let limit = super::session::BROWSE_DCS_MAX;
    let counted: BTreeSet<u32> = answer.dcs.iter().map(|d| d.0).collect();
    if counted.len() != answer.dcs.len() {
        return Err("a store is counted twice".into());
    }
    let (low, high) = (sure.min(limit), near.len().min(limit));
    if !(low..=high).contains(&counted.len()) {
        return Err(format!(
            "{} stores counted, expected {low}..={high}",
            counted.len()
        ));
    }
    if let Some(far) = counted.iter().find(|dc| !near.iter().any(|n| n.0 == **dc)) {
        return Err(format!("dc {far} is counted but not within {RADIUS_M} m"));
    }
    for &sku in skus {
        let Some(item) = answer.items.iter().find(|i| i.sku == sku) else {
            return Err(format!("sku {sku} is missing"));
        };
        for &(dc, units) in &item.rows {
            if !counted.contains(&dc) {
                return Err(format!(
                    "sku {sku} has a row of dc {dc}, which is not counted"
                ));
            }
            if units != data.units(dc, sku) {
                return Err(format!(
                    "dc {dc} sku {sku}: {units} available, the dataset has {}",
                    data.units(dc, sku)
                ));
            }
        }
        let rows: i64 = item.rows.iter().map(|r| r.1).sum();
        let expected: i64 = counted.iter().map(|&dc| data.units(dc, sku)).sum();
        if item.available_total != expected || rows != expected {
            return Err(format!(
                "sku {sku}: total {} (rows sum to {rows}), the stores counted have {expected}",
                item.available_total
            ));
        }
    }
    Ok(())
}

fn verify_order(
    data: &NearbyDataset,
    (lat, lon): (f64, f64),
    lines: &[(u32, i64)],
    taken: &[Line],
    stores: &BTreeSet<u32>,
) -> Result<(), String> {
    if stores.len() > MAX_DCS {
        return Err(format!(
            "shipped from {} stores, at most {MAX_DCS}",
            stores.len()
        ));
    }
    let radius = f64::from(RADIUS_M) + DISTANCE_SLACK_M;
    for &dc in stores {
        let site = data
            .sites
            .get(dc as usize - 1)
            .ok_or_else(|| format!("unknown dc {dc}"))?;
        let d = super::dataset::distance_m(lat, lon, site.lat, site.lon);
        if d > radius {
            return Err(format!("dc {dc} is {d:.0} m away"));
        }
    }
    for &(sku, qty) in lines {
        let got: i64 = taken.iter().filter(|t| t.1 == sku).map(|t| t.2).sum();
        if got != qty {
            return Err(format!("sku {sku}: {got} units taken of {qty}"));
        }
    }
    if let Some(t) = taken
        .iter()
        .find(|t| !lines.iter().any(|l| l.0 == t.1) || t.2 <= 0)
    {
        return Err(format!("took {t:?}, which was not ordered"));
    }
    Ok(())
}

/// Order-nearby's final check: every row at or above zero and down by exactly what was
/// committed from it (within what unknown outcomes may have taken); rows the dataset does not
/// stock never sold anything and stay at zero.
pub fn check_final(
    data: &NearbyDataset,
    tally: &NearbyTally,
    final_stock: &BTreeMap<(u32, u32), i64>,
) -> FinalFigures {
    let mut problems = Vec::new();
    let unknown = tally.units_indeterminate;
    let (mut decremented, mut negative) = (0i64, 0u64);
    for (dc, sku, initial) in data.rows() {
        let sold = tally.sold.get(&(dc, sku)).copied().unwrap_or(0);
        let Some(&now) = final_stock.get(&(dc, sku)) else {
            problems.push(format!("dc {dc} sku {sku}: final stock missing"));
            continue;
        };
        decremented += initial - now;
        if now < 0 {
            negative += 1;
            problems.push(format!("dc {dc} sku {sku}: negative stock {now}"));
        }
        let highest = initial - sold;
        if now > highest || now < highest - unknown {
            problems.push(format!(
                "dc {dc} sku {sku}: final stock {now}, expected {initial} - {sold} committed{}",
                if unknown > 0 {
                    format!(" - up to {unknown} of unknown orders")
                } else {
                    String::new()
                }
            ));
        }
    }
    for (&(dc, sku), &now) in final_stock {
        if data.units(dc, sku) == 0 && now != 0 {
            problems.push(format!(
                "dc {dc} sku {sku}: not stocked, yet {now} available"
            ));
        }
    }
    for &(dc, sku) in tally.sold.keys() {
        if data.units(dc, sku) == 0 {
            problems.push(format!("dc {dc} sku {sku}: sold, but never stocked"));
        }
    }
    let sold: i64 = tally.sold.values().sum();
    if decremented < sold || decremented > sold + unknown {
        problems.push(format!(
            "stock went down by {decremented} units in all, committed orders took {sold}{}",
            if unknown > 0 {
                format!(" (and unknown ones up to {unknown})")
            } else {
                String::new()
            }
        ));
    }
    FinalFigures {
        units_sold: sold,
        units_decremented: decremented,
        rows_negative: negative,
        problems,
    }
}

pub struct FinalFigures {
    pub units_sold: i64,
    pub units_decremented: i64,
    pub rows_negative: u64,
    pub problems: Vec<String>,
}

/// The run's verdict in the shape every workload reports.
pub fn verdict(tally: &NearbyTally, mut final_problems: Vec<String>) -> Check {
    let mut problems = tally.problems.clone();
    problems.append(&mut final_problems);
    if tally.problems_total > tally.problems.len() as u64 {
        problems.push(format!(
            "{} answer and order problems in all",
            tally.problems_total
        ));
    }
    problems.truncate(PROBLEMS_MAX);
    Check {
        ok: problems.is_empty(),
        orders_ok: tally.committed,
        orders_rejected: tally.rejected.clone(),
        errors: tally.errors.clone(),
        reads_ok: tally.answers,
        units_sold: tally.sold.values().sum(),
        units_indeterminate: tally.units_indeterminate,
        problems,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nearby::session::SkuNearby;

    fn answer_from_dataset(data: &NearbyDataset, at: (f64, f64), skus: &[u32]) -> Availability {
        let dcs: Vec<(u32, f64)> = data
            .within(at.0, at.1, f64::from(RADIUS_M))
            .into_iter()
            .take(super::super::session::BROWSE_DCS_MAX)
            .collect();
        let items = skus
            .iter()
            .map(|&sku| {
                let rows: Vec<(u32, i64)> = dcs
                    .iter()
                    .map(|&(dc, _)| (dc, data.units(dc, sku)))
                    .filter(|r| r.1 > 0)
                    .collect();
                SkuNearby {
                    sku,
                    available_total: rows.iter().map(|r| r.1).sum(),
                    rows,
                }
            })
            .collect();
        Availability { dcs, items }
    }

    #[test]
    fn a_right_answer_passes_and_wrong_ones_are_caught() {
        let data = NearbyDataset::new(1_200, 50, 10, 3);
        let (_, lat, lon, _) = super::super::dataset::CITIES[2];
        let at = (lat + 0.01, lon - 0.01);
        let skus = [1, 7, 9];
        let good = answer_from_dataset(&data, at, &skus);
        assert!(!good.dcs.is_empty());
        assert_eq!(verify_answer(&data, at, &skus, &good), Ok(()));

        let mut short = good.clone();
        short.dcs.truncate(good.dcs.len() / 2);
        assert!(verify_answer(&data, at, &skus, &short).is_err());

        let mut wrong = good.clone();
        let item = wrong.items.iter_mut().find(|i| !i.rows.is_empty()).unwrap();
        item.rows[0].1 += 1;
        item.available_total += 1;
        let e = verify_answer(&data, at, &skus, &wrong).unwrap_err();
        assert!(e.contains("available, the dataset has"), "{e}");
    }

    #[test]
    fn oversold_and_lost_units_fail_the_final_check() {
        let data = NearbyDataset::new(24, 5, 3, 9);
        let (dc, sku, initial) = data.rows().next().unwrap();
        let site = &data.sites[dc as usize - 1];
        let at = (site.lat, site.lon);
        let mut tally = NearbyTally::default();
        tally.order_committed(&data, at, &[(sku, 1)], &[(dc, sku, 1)]);
        assert!(tally.problems.is_empty(), "{:?}", tally.problems);
        let mut stock: BTreeMap<(u32, u32), i64> =
            data.rows().map(|(d, s, u)| ((d, s), u)).collect();
        stock.insert((dc, sku), initial - 1);
        let good = check_final(&data, &tally, &stock);
        assert!(good.problems.is_empty(), "{:?}", good.problems);
        assert_eq!((good.units_sold, good.units_decremented), (1, 1));

        stock.insert((dc, sku), initial - 2);
        let lost = check_final(&data, &tally, &stock);
        assert!(!lost.problems.is_empty());
        // An unknown outcome may account for one more unit.
        tally.order_unknown(&[(sku, 1)], "deadline exceeded");
        assert!(check_final(&data, &tally, &stock).problems.is_empty());

        stock.insert((dc, sku), -1);
        let negative = check_final(&data, &tally, &stock);
        assert_eq!(negative.rows_negative, 1);
    }

    #[test]
    fn an_order_taking_other_than_it_asked_is_caught() {
        let data = NearbyDataset::new(24, 5, 3, 9);
        let (dc, sku, _) = data.rows().next().unwrap();
        let site = &data.sites[dc as usize - 1];
        let mut tally = NearbyTally::default();
        tally.order_committed(&data, (site.lat, site.lon), &[(sku, 2)], &[(dc, sku, 1)]);
        assert_eq!(tally.problems_total, 1, "{:?}", tally.problems);
    }
}
