//! The cart mix: what one client puts in each cart (1-3 zipf-hot lines) and what it then does
//! with the hold (confirm 70%, cancel 10%, leave it to lapse 20%). Seeded like every other
//! workload, so two targets run with the same seed see the same carts.

use serde::Serialize;

use crate::workload::{Generator, Line, WorkloadSpec};

/// The share of carts confirmed, cancelled and left to expire (the contract).
pub const CONFIRM_SHARE: f64 = 0.7;
pub const CANCEL_SHARE: f64 = 0.1;
pub const EXPIRE_SHARE: f64 = 0.2;

/// Lines per cart, at most; every cart has at least one.
pub const LINES_MAX: u64 = 3;
/// Units per line, at most.
pub const QTY_MAX: u64 = 2;
/// Draws of a distinct hot key per line before the cart settles for fewer lines (with a
/// steep zipf the hottest key comes up again and again).
const KEY_DRAWS_MAX: u32 = 16;
/// A late confirm is sent this close to its hold's expiry, before or after (uniform).
pub const LATE_WINDOW_MS: i64 = 100;

/// What the client does with a cart once its hold is made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fate {
    /// Confirm at once.
    Confirm,
    /// Confirm at the hold's expiry plus `offset_ms` (within ±[`LATE_WINDOW_MS`]): the
    /// check-out that races the expiry.
    ConfirmLate { offset_ms: i64 },
    /// Cancel at once.
    Cancel,
    /// Never come back: the hold must lapse and its units come back.
    Expire,
}

impl Fate {
    pub fn name(self) -> &'static str {
        match self {
            Fate::Confirm => "confirm",
            Fate::ConfirmLate { .. } => "confirm-late",
            Fate::Cancel => "cancel",
            Fate::Expire => "expire",
        }
    }
}

/// One cart: its lines (distinct keys) and its fate.
#[derive(Clone, Debug, PartialEq)]
pub struct CartPlan {
    pub lines: Vec<Line>,
    pub fate: Fate,
}

/// The cart workload's knobs beyond the dataset.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct CartKnobs {
    /// Every hold's TTL, whole seconds (Ordo's API takes no less than 1).
    pub ttl_s: u32,
    /// The share of confirms sent at the hold's expiry ± [`LATE_WINDOW_MS`] instead of at once.
    pub late_confirm_share: f64,
}

impl Default for CartKnobs {
    fn default() -> Self {
        Self {
            ttl_s: 2,
            late_confirm_share: 0.1,
        }
    }
}

/// One client's stream of carts.
pub struct Mix {
    gen: Generator,
    knobs: CartKnobs,
}

impl Mix {
    pub fn new(spec: &WorkloadSpec, knobs: CartKnobs, seed: u64, client: u64) -> Self {
        // Expire takes what confirm and cancel leave.
        debug_assert!((CONFIRM_SHARE + CANCEL_SHARE + EXPIRE_SHARE - 1.0).abs() < 1e-9);
        Self {
            gen: Generator::new(spec, seed, client),
            knobs,
        }
    }

    pub fn next_cart(&mut self) -> CartPlan {
        let count = 1 + self.gen.rng().below(LINES_MAX) as usize;
        let mut lines: Vec<Line> = Vec::with_capacity(count);
        let mut draws = 0;
        while lines.len() < count && draws < KEY_DRAWS_MAX {
            draws += 1;
            let (dc, sku) = self.gen.hot_key();
            if lines.iter().any(|l| (l.0, l.1) == (dc, sku)) {
                continue;
            }
            let qty = 1 + self.gen.rng().below(QTY_MAX) as i64;
            lines.push((dc, sku, qty));
        }
        let rng = self.gen.rng();
        let u = rng.unit();
        let fate = if u < CONFIRM_SHARE {
            if rng.unit() < self.knobs.late_confirm_share {
                let offset_ms = rng.below(2 * LATE_WINDOW_MS as u64 + 1) as i64 - LATE_WINDOW_MS;
                Fate::ConfirmLate { offset_ms }
            } else {
                Fate::Confirm
            }
        } else if u < CONFIRM_SHARE + CANCEL_SHARE {
            Fate::Cancel
        } else {
            Fate::Expire
        };
        CartPlan { lines, fate }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::WorkloadKind;

    fn mix(seed: u64, client: u64) -> Mix {
        let spec = WorkloadSpec::new(WorkloadKind::Cart, None, None, 0.99, 0.2, 100);
        Mix::new(&spec, CartKnobs::default(), seed, client)
    }

    #[test]
    fn fates_follow_the_contract_shares() {
        let mut m = mix(42, 0);
        let n = 100_000;
        let mut counts = std::collections::BTreeMap::<&str, u64>::new();
        for _ in 0..n {
            *counts.entry(m.next_cart().fate.name()).or_default() += 1;
        }
        let share = |name: &str| counts.get(name).copied().unwrap_or(0) as f64 / n as f64;
        let confirms = share("confirm") + share("confirm-late");
        assert!((confirms - CONFIRM_SHARE).abs() < 0.01, "{counts:?}");
        assert!((share("cancel") - CANCEL_SHARE).abs() < 0.01, "{counts:?}");
        assert!((share("expire") - EXPIRE_SHARE).abs() < 0.01, "{counts:?}");
        // 10% of the confirms are sent at the expiry.
        let late = share("confirm-late") / confirms;
        assert!((late - 0.1).abs() < 0.01, "late share {late}");
    }

    #[test]
    fn carts_hold_one_to_three_distinct_hot_lines_and_late_confirms_stay_in_the_window() {
        let mut m = mix(7, 3);
        let mut sizes = [0u64; LINES_MAX as usize + 1];
        let mut hottest = std::collections::BTreeMap::<(u32, u32), u64>::new();
        for _ in 0..20_000 {
            let cart = m.next_cart();
            assert!((1..=LINES_MAX as usize).contains(&cart.lines.len()));
            sizes[cart.lines.len()] += 1;
            let mut keys: Vec<(u32, u32)> = cart.lines.iter().map(|l| (l.0, l.1)).collect();
            keys.sort_unstable();
            keys.dedup();
            assert_eq!(keys.len(), cart.lines.len(), "distinct keys: {cart:?}");
            for &(dc, sku, qty) in &cart.lines {
                assert!((1..=6).contains(&dc) && (1..=1_000).contains(&sku));
                assert!((1..=QTY_MAX as i64).contains(&qty));
                *hottest.entry((dc, sku)).or_default() += 1;
            }
            if let Fate::ConfirmLate { offset_ms } = cart.fate {
                assert!(offset_ms.abs() <= LATE_WINDOW_MS);
            }
        }
        // Every size occurs, and the hottest key is in a large share of the carts (zipf).
        assert!(sizes[1..].iter().all(|&n| n > 1_000), "{sizes:?}");
        let top = hottest.values().max().copied().unwrap_or(0);
        assert!(top > 2_000, "hottest key in {top} of 20000 carts");
    }

    #[test]
    fn the_same_seed_gives_the_same_carts() {
        let a: Vec<CartPlan> = (0..200)
            .scan(mix(5, 1), |m, _| Some(m.next_cart()))
            .collect();
        let b: Vec<CartPlan> = (0..200)
            .scan(mix(5, 1), |m, _| Some(m.next_cart()))
            .collect();
        let c: Vec<CartPlan> = (0..200)
            .scan(mix(6, 1), |m, _| Some(m.next_cart()))
            .collect();
        assert_eq!(a, b);
        assert_ne!(a, c);
    }
}
