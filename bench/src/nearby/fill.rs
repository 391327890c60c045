//! FEWEST_DCS, all or nothing, for the baselines (Ordo's is `ordo_scheduler`'s `fill`; the
//! Redis script in `redis.rs` is this function in Lua): the nearest candidate store that has
//! every line in full; otherwise, up to `max_dcs` stores, repeatedly the unused store that
//! gives the most of the still-missing units, the nearer on a tie.

/// Stores an order ships from, at most (the workload's `max_dcs`).
pub const MAX_DCS: usize = 3;

/// `have[c][i]`: units of line `i` available at candidate `c`, candidates nearest first.
/// Returns what each chosen store gives, `(candidate, line, units)` with units > 0, or `None`
/// when the lines cannot all be filled in full.
pub fn fewest_dcs(
    want: &[i64],
    max_dcs: usize,
    have: &[Vec<i64>],
) -> Option<Vec<(usize, usize, i64)>> {
    let gives = |c: usize, remaining: &[i64]| -> Vec<i64> {
        remaining
            .iter()
            .zip(&have[c])
            .map(|(&r, &h)| r.min(h.max(0)))
            .collect()
    };
    let mut remaining = want.to_vec();
    let mut taken: Vec<(usize, Vec<i64>)> = Vec::new();
    if let Some(c) = (0..have.len()).find(|&c| want.iter().zip(&have[c]).all(|(w, h)| h >= w)) {
        taken.push((c, want.to_vec()));
        remaining.iter_mut().for_each(|r| *r = 0);
    }
    while taken.len() < max_dcs && remaining.iter().any(|&r| r > 0) {
        let mut best: Option<(usize, i64)> = None;
        for c in 0..have.len() {
            if taken.iter().any(|(t, _)| *t == c) {
                continue;
            }
            let units: i64 = gives(c, &remaining).iter().sum();
            if units > 0 && best.is_none_or(|(_, b)| units > b) {
                best = Some((c, units));
            }
        }
        let Some((c, _)) = best else { break };
        let give = gives(c, &remaining);
        remaining.iter_mut().zip(&give).for_each(|(r, g)| *r -= g);
        taken.push((c, give));
    }
    if remaining.iter().any(|&r| r > 0) {
        return None;
    }
    Some(
        taken
            .into_iter()
            .flat_map(|(c, give)| {
                give.into_iter()
                    .enumerate()
                    .filter(|&(_, units)| units > 0)
                    .map(move |(i, units)| (c, i, units))
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    // The cases of `ordo_scheduler`'s fill tests, so the baselines pick what Ordo picks.

    #[test]
    fn the_nearest_store_that_has_everything() {
        // Store 0 (nearest) has only the first line; stores 1 and 2 have both.
        let have = vec![vec![5, 0], vec![5, 5], vec![9, 9]];
        assert_eq!(
            fewest_dcs(&[2, 2], 3, &have),
            Some(vec![(1, 0, 2), (1, 1, 2)])
        );
    }

    #[test]
    fn otherwise_greedily_by_units_then_distance() {
        // Nobody has all 10: store 2 has 6, stores 0 and 1 have 4 each.
        let have = vec![vec![4], vec![4], vec![6]];
        assert_eq!(
            fewest_dcs(&[10], 2, &have),
            Some(vec![(2, 0, 6), (0, 0, 4)])
        );
        // One store too few: nothing.
        assert_eq!(fewest_dcs(&[10], 1, &have), None);
        assert_eq!(fewest_dcs(&[15], 3, &have), None);
    }

    #[test]
    fn a_split_over_lines_counts_every_missing_unit() {
        // Store 0 gives 1 of sku a; store 1 gives 2 of b and 1 of a; store 1 goes first.
        let have = vec![vec![1, 0], vec![1, 2], vec![0, 0]];
        assert_eq!(
            fewest_dcs(&[2, 2], 3, &have),
            Some(vec![(1, 0, 1), (1, 1, 2), (0, 0, 1)])
        );
        assert_eq!(fewest_dcs(&[1], 3, &[]), None);
    }
}
