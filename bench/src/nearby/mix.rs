//! What one client asks near a point, seeded like every other workload: a user somewhere in
//! one of the cities, then either the availability of [`BROWSE_SKUS`] random SKUs
//! (browse-nearby) or an order of 1-3 zipf-hot SKUs (order-nearby).

use super::dataset::{point_near, BROWSE_SKUS, CITIES, USER_SPREAD_M};
use crate::workload::{Rng, Zipf};

/// Lines per nearby order, at most; every order has at least one.
pub const LINES_MAX: u64 = 3;
/// Units per line, at most.
pub const QTY_MAX: u64 = 2;
/// Draws of a distinct hot SKU per line before the order settles for fewer lines (with a
/// steep zipf the hottest SKU comes up again and again).
const SKU_DRAWS_MAX: u32 = 16;

#[derive(Clone, Debug, PartialEq)]
pub enum NearbyOp {
    /// Availability of distinct `skus` near a point.
    Browse { lat: f64, lon: f64, skus: Vec<u32> },
    /// An order of distinct SKUs (sku, qty), filled from the stores near a point.
    Order {
        lat: f64,
        lon: f64,
        lines: Vec<(u32, i64)>,
    },
}

pub struct NearbyMix {
    rng: Rng,
    skus: u32,
    /// Orders draw SKUs from it (SKU 1 the hottest); browses draw uniformly.
    zipf: Option<Zipf>,
}

impl NearbyMix {
    /// `orders`: order-nearby's stream, else browse-nearby's. The same `seed` and `client`
    /// give the same stream on every target.
    pub fn new(orders: bool, skus: u32, theta: f64, seed: u64, client: u64) -> Self {
        Self {
            rng: Rng::new(
                seed.wrapping_mul(0x100_0000_01B3)
                    ^ client.wrapping_add(7).wrapping_mul(0x9E37_79B9),
            ),
            skus,
            zipf: orders.then(|| Zipf::new(skus as u64, theta)),
        }
    }

    fn point(&mut self) -> (f64, f64) {
        let (_, lat, lon, _) = CITIES[self.rng.below(CITIES.len() as u64) as usize];
        point_near(&mut self.rng, lat, lon, USER_SPREAD_M)
    }

    pub fn next_op(&mut self) -> NearbyOp {
        let (lat, lon) = self.point();
        let Some(zipf) = &self.zipf else {
            // A partial shuffle: the first BROWSE_SKUS of a random permutation.
            let mut all: Vec<u32> = (1..=self.skus).collect();
            let count = BROWSE_SKUS.min(all.len());
            for i in 0..count {
                let j = i + self.rng.below((all.len() - i) as u64) as usize;
                all.swap(i, j);
            }
            all.truncate(count);
            return NearbyOp::Browse {
                lat,
                lon,
                skus: all,
            };
        };
        let count = 1 + self.rng.below(LINES_MAX) as usize;
        let mut lines: Vec<(u32, i64)> = Vec::with_capacity(count);
        let mut draws = 0;
        while lines.len() < count && draws < SKU_DRAWS_MAX {
            draws += 1;
            let sku = zipf.sample(&mut self.rng) as u32 + 1;
            if lines.iter().any(|l| l.0 == sku) {
                continue;
            }
            lines.push((sku, 1 + self.rng.below(QTY_MAX) as i64));
        }
        NearbyOp::Order { lat, lon, lines }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nearby::dataset::distance_m;

    #[test]
    fn browses_ask_distinct_skus_near_a_city() {
        let mut mix = NearbyMix::new(false, 100, 0.99, 42, 0);
        for _ in 0..1_000 {
            let NearbyOp::Browse { lat, lon, skus } = mix.next_op() else {
                panic!("browse-nearby only browses")
            };
            let mut sorted = skus.clone();
            sorted.sort_unstable();
            sorted.dedup();
            assert_eq!(sorted.len(), BROWSE_SKUS);
            assert!(sorted.iter().all(|&s| (1..=100).contains(&s)));
            let nearest = CITIES
                .iter()
                .map(|c| distance_m(lat, lon, c.1, c.2))
                .fold(f64::MAX, f64::min);
            assert!(nearest <= USER_SPREAD_M + 1.0, "{nearest}");
        }
    }

    #[test]
    fn orders_hold_one_to_three_distinct_skus_with_the_hot_ones_first() {
        let mut mix = NearbyMix::new(true, 100, 0.99, 42, 3);
        let mut hottest = 0;
        for _ in 0..10_000 {
            let NearbyOp::Order { lines, .. } = mix.next_op() else {
                panic!("order-nearby only orders")
            };
            assert!((1..=LINES_MAX as usize).contains(&lines.len()));
            let mut skus: Vec<u32> = lines.iter().map(|l| l.0).collect();
            skus.sort_unstable();
            skus.dedup();
            assert_eq!(skus.len(), lines.len());
            assert!(lines.iter().all(|l| (1..=QTY_MAX as i64).contains(&l.1)));
            hottest += lines.iter().filter(|l| l.0 == 1).count();
        }
        // SKU 1 takes about a fifth of the draws with theta 0.99 over 100 SKUs.
        assert!(hottest > 2_500, "sku 1 in {hottest} of 10000 orders");
    }

    #[test]
    fn the_same_seed_gives_the_same_stream() {
        let run = |seed| {
            let mut mix = NearbyMix::new(true, 100, 0.99, seed, 1);
            (0..100).map(|_| mix.next_op()).collect::<Vec<_>>()
        };
        assert_eq!(run(5), run(5));
        assert_ne!(run(5), run(6));
    }
}
