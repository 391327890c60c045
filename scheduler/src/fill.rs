//! Split fill: which nearby stores an order or reservation takes its units from. A pure
//! function of the lines, the candidate stores in distance order and their rows as they stand,
//! so every participant of the transaction reaches the same shipments without talking.

use std::collections::BTreeMap;

use crate::model::*;

/// What a nearby request gets: one allocation per (store, SKU) it takes units from, stores in
/// candidate (distance) order, with `requested` equal to what that store gives; or, refused,
/// one line per requested SKU with `dc` 0, `available` the total over every candidate, and
/// the rejection naming the first SKU that could not be filled.
pub(crate) fn fill(
    lines: &[SkuQty],
    policy: FillPolicy,
    max_dcs: u32,
    mode: Mode,
    from: &[u32],
    stock: &BTreeMap<(u32, u32), StockRecord>,
) -> (Vec<LineAlloc>, Option<Rejection>) {
    let available = |dc: u32, sku: u32| {
        stock
            .get(&(dc, sku))
            .copied()
            .unwrap_or_default()
            .available()
    };
    let mut remaining: Vec<i64> = lines.iter().map(|l| l.qty).collect();
    // Chosen stores as candidate positions, each with what it gives per line.
    let mut taken: Vec<(usize, Vec<i64>)> = Vec::new();
    let gives = |at: usize, remaining: &[i64]| -> Vec<i64> {
        lines
            .iter()
            .zip(remaining)
            .map(|(l, &r)| r.min(available(from[at], l.sku)))
            .collect()
    };
    let max_dcs = max_dcs as usize;
    match policy {
        FillPolicy::FewestDcs => {
            let whole = (0..from.len())
                .find(|&at| lines.iter().all(|l| available(from[at], l.sku) >= l.qty));
            if let Some(at) = whole {
                taken.push((at, remaining.clone()));
                remaining.iter_mut().for_each(|r| *r = 0);
            }
            while taken.len() < max_dcs && remaining.iter().any(|&r| r > 0) {
                // The store that gives the most of what is missing; the nearer on a tie.
                let mut best: Option<(usize, i64)> = None;
                for (at, &dc) in from.iter().enumerate() {
                    if taken.iter().any(|(t, _)| *t == at) {
                        continue;
                    }
                    let units: i64 = lines
                        .iter()
                        .zip(&remaining)
                        .map(|(l, &r)| r.min(available(dc, l.sku)))
                        .sum();
                    if units > 0 && best.is_none_or(|(_, b)| units > b) {
                        best = Some((at, units));
                    }
                }
                let Some((at, _)) = best else { break };
                let give = gives(at, &remaining);
                remaining.iter_mut().zip(&give).for_each(|(r, g)| *r -= g);
                taken.push((at, give));
            }
            taken.sort_by_key(|(at, _)| *at);
        }
        FillPolicy::NearestFirst => {
            for at in 0..from.len() {
                if taken.len() >= max_dcs || remaining.iter().all(|&r| r == 0) {
                    break;
                }
                let give = gives(at, &remaining);
                if give.iter().any(|&g| g > 0) {
                    remaining.iter_mut().zip(&give).for_each(|(r, g)| *r -= g);
                    taken.push((at, give));
                }
            }
        }
    }
    let short = lines
        .iter()
        .zip(&remaining)
        .position(|(_, &r)| r > 0)
        .filter(|_| mode == Mode::AllOrNothing || taken.is_empty());
    if let Some(first) = short {
        let nearby_total = |sku: u32| from.iter().map(|&dc| available(dc, sku)).sum::<i64>();
        let refused = lines
            .iter()
            .map(|l| LineAlloc {
                dc: 0,
                sku: l.sku,
                requested: l.qty,
                allocated: 0,
                available: nearby_total(l.sku),
            })
            .collect();
        let line = lines[first];
        return (
            refused,
            Some(Rejection {
                code: RejectCode::InsufficientStock,
                dc: 0,
                sku: line.sku,
                available: nearby_total(line.sku),
                requested: line.qty,
            }),
        );
    }
    let mut allocs = Vec::new();
    for (at, give) in taken {
        let dc = from[at];
        for (line, &units) in lines.iter().zip(&give) {
            if units > 0 {
                allocs.push(LineAlloc {
                    dc,
                    sku: line.sku,
                    requested: units,
                    allocated: units,
                    available: available(dc, line.sku),
                });
            }
        }
    }
    (allocs, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(list: &[(u32, u32, i64)]) -> BTreeMap<(u32, u32), StockRecord> {
        list.iter()
            .map(|&(dc, sku, on_hand)| {
                (
                    (dc, sku),
                    StockRecord {
                        on_hand,
                        reserved: 0,
                    },
                )
            })
            .collect()
    }

    fn want(list: &[(u32, i64)]) -> Vec<SkuQty> {
        list.iter().map(|&(sku, qty)| SkuQty { sku, qty }).collect()
    }

    fn shipments(allocs: &[LineAlloc]) -> Vec<(u32, u32, i64)> {
        allocs.iter().map(|a| (a.dc, a.sku, a.allocated)).collect()
    }

    #[test]
    fn fewest_dcs_takes_the_nearest_store_that_has_everything() {
        // Store 1 (nearest) has only sku 10; store 2 has both; store 3 has both too.
        let stock = rows(&[(1, 10, 5), (2, 10, 5), (2, 20, 5), (3, 10, 9), (3, 20, 9)]);
        let lines = want(&[(10, 2), (20, 2)]);
        let (allocs, reject) = fill(
            &lines,
            FillPolicy::FewestDcs,
            3,
            Mode::AllOrNothing,
            &[1, 2, 3],
            &stock,
        );
        assert_eq!(reject, None);
        assert_eq!(shipments(&allocs), vec![(2, 10, 2), (2, 20, 2)]);
        // Nearest first instead splits: store 1 gives sku 10, store 2 sku 20.
        let (allocs, _) = fill(
            &lines,
            FillPolicy::NearestFirst,
            3,
            Mode::AllOrNothing,
            &[1, 2, 3],
            &stock,
        );
        assert_eq!(shipments(&allocs), vec![(1, 10, 2), (2, 20, 2)]);
    }

    #[test]
    fn fewest_dcs_splits_greedily_by_units_then_distance() {
        // Nobody has all 10 of sku 10: store 3 has 6, stores 1 and 2 have 4 each.
        let stock = rows(&[(1, 10, 4), (2, 10, 4), (3, 10, 6)]);
        let lines = want(&[(10, 10)]);
        let (allocs, reject) = fill(
            &lines,
            FillPolicy::FewestDcs,
            2,
            Mode::AllOrNothing,
            &[1, 2, 3],
            &stock,
        );
        assert_eq!(reject, None);
        // Store 3 first (most units), then store 1 (nearer than 2); listed by distance.
        assert_eq!(shipments(&allocs), vec![(1, 10, 4), (3, 10, 6)]);
    }

    #[test]
    fn max_dcs_bounds_shipments_and_partial_takes_what_fits() {
        let stock = rows(&[(1, 10, 1), (2, 10, 1), (3, 10, 1)]);
        let lines = want(&[(10, 3)]);
        for policy in [FillPolicy::FewestDcs, FillPolicy::NearestFirst] {
            let (allocs, reject) = fill(&lines, policy, 2, Mode::AllOrNothing, &[1, 2, 3], &stock);
            let reject = reject.expect("three units need three stores");
            assert_eq!((reject.dc, reject.sku, reject.available), (0, 10, 3));
            assert!(allocs.iter().all(|a| a.allocated == 0 && a.dc == 0));
            let (allocs, reject) = fill(&lines, policy, 2, Mode::Partial, &[1, 2, 3], &stock);
            assert_eq!(reject, None);
            assert_eq!(shipments(&allocs), vec![(1, 10, 1), (2, 10, 1)]);
        }
    }

    #[test]
    fn nothing_nearby_is_insufficient_stock() {
        let (allocs, reject) = fill(
            &want(&[(10, 1)]),
            FillPolicy::FewestDcs,
            5,
            Mode::Partial,
            &[],
            &BTreeMap::new(),
        );
        assert_eq!(reject.map(|r| r.code), Some(RejectCode::InsufficientStock));
        assert_eq!(shipments(&allocs), vec![(0, 10, 0)]);
    }
}
