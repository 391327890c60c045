//! Workloads: one seeded generator per client, the same for every target, so two targets run
//! with the same seed see the same stream of operations.

use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, Mutex};

/// SKUs per DC in the plain workloads' dataset.
pub const SKUS_PER_DC: u64 = 1_000;

/// One order line: `qty` of `sku` at `dc`.
pub type Line = (u32, u32, i64);

#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    /// An all-or-nothing order.
    Order(Vec<Line>),
    /// An availability check of one SKU at one DC.
    Read(u32, u32),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum WorkloadKind {
    /// One SKU at one DC, limited stock, every client after it.
    FlashSale,
    /// Zipfian over DC x SKU.
    HotItems,
    Uniform,
    /// Orders with 2-3 lines at different DCs, some across regions.
    MultiDc,
    /// Availability reads mixed with orders.
    Browse,
    /// Carts: reserve 1-3 zipf-hot lines with a short TTL, then confirm, cancel or let the
    /// hold lapse (`crate::cart`).
    Cart,
    /// Availability of 20 SKUs over the dark stores near a user (`crate::nearby`).
    BrowseNearby,
    /// Orders of 1-3 zipf-hot SKUs filled from the stores near a user (`crate::nearby`).
    OrderNearby,
    /// Orders while watchers follow the change feed (`crate::feed`).
    Feed,
    /// Orders while a price changes every few tens of milliseconds and watchers wait for the
    /// price events (`crate::feed`).
    PriceLatency,
}

impl WorkloadKind {
    /// The workloads with their own runner and dataset (`crate::nearby`).
    pub fn is_nearby(self) -> bool {
        matches!(self, WorkloadKind::BrowseNearby | WorkloadKind::OrderNearby)
    }

    /// The workloads with watchers beside the orders (`crate::feed`).
    pub fn is_feed(self) -> bool {
        matches!(self, WorkloadKind::Feed | WorkloadKind::PriceLatency)
    }
}

impl FromStr for WorkloadKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "flash-sale" => WorkloadKind::FlashSale,
            "hot-items" => WorkloadKind::HotItems,
            "uniform" => WorkloadKind::Uniform,
            "multi-dc" => WorkloadKind::MultiDc,
            "browse" => WorkloadKind::Browse,
            "cart" => WorkloadKind::Cart,
            "browse-nearby" => WorkloadKind::BrowseNearby,
            "order-nearby" => WorkloadKind::OrderNearby,
            "feed" => WorkloadKind::Feed,
            "price-latency" => WorkloadKind::PriceLatency,
            other => {
                return Err(format!(
                    "unknown workload {other:?}: flash-sale, hot-items, uniform, multi-dc, browse, \
                     cart, browse-nearby, order-nearby, feed or price-latency"
                ))
            }
        })
    }
}

impl fmt::Display for WorkloadKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            WorkloadKind::FlashSale => "flash-sale",
            WorkloadKind::HotItems => "hot-items",
            WorkloadKind::Uniform => "uniform",
            WorkloadKind::MultiDc => "multi-dc",
            WorkloadKind::Browse => "browse",
            WorkloadKind::Cart => "cart",
            WorkloadKind::BrowseNearby => "browse-nearby",
            WorkloadKind::OrderNearby => "order-nearby",
            WorkloadKind::Feed => "feed",
            WorkloadKind::PriceLatency => "price-latency",
        })
    }
}

/// What every target is loaded with before a run.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct Dataset {
    pub dcs: u32,
    pub skus: u32,
    /// Initial on-hand stock of every (dc, sku).
    pub stock: i64,
    /// DC `d` is in region `(d - 1) % regions`.
    pub regions: u32,
}

impl Dataset {
    pub fn keys(&self) -> impl Iterator<Item = (u32, u32)> + '_ {
        (1..=self.dcs).flat_map(move |dc| (1..=self.skus).map(move |sku| (dc, sku)))
    }

    pub fn region(&self, dc: u32) -> u32 {
        (dc - 1) % self.regions
    }
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct WorkloadSpec {
    pub kind: WorkloadKind,
    pub dataset: Dataset,
    /// Zipf exponent for hot-items.
    pub theta: f64,
    /// multi-dc: the fraction of orders that span regions.
    pub cross_region: f64,
    /// browse: reads per order.
    pub reads_per_order: u32,
}

impl WorkloadSpec {
    /// The workload with its default dataset: flash-sale is one DC and one SKU with `stock`
    /// units; cart is a small set of DCs (6 in 3 regions) with 1,000 SKUs; the others are
    /// `stock_rows / 1,000` DCs (12 by default) in 3 regions with 1,000 SKUs and `stock` of
    /// each.
    pub fn new(
        kind: WorkloadKind,
        stock: Option<i64>,
        stock_rows: Option<u64>,
        theta: f64,
        cross_region: f64,
        reads_per_order: u32,
    ) -> Self {
        let dataset = match kind {
            WorkloadKind::FlashSale => Dataset {
                dcs: 1,
                skus: 1,
                stock: stock.unwrap_or(10_000),
                regions: 1,
            },
            WorkloadKind::Cart => Dataset {
                dcs: 6,
                skus: 1_000,
                stock: stock.unwrap_or(1_000_000),
                regions: 3,
            },
            _ => Dataset {
                dcs: stock_rows.map_or(12, |rows| (rows / SKUS_PER_DC) as u32),
                skus: SKUS_PER_DC as u32,
                stock: stock.unwrap_or(1_000_000),
                regions: 3,
            },
        };
        Self {
            kind,
            dataset,
            theta,
            cross_region,
            reads_per_order,
        }
    }
}

/// SplitMix64: small, fast, seedable; the bench's only source of randomness.
#[derive(Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// YCSB's Zipfian generator over `0..n`: item 0 is the hottest.
#[derive(Clone)]
pub struct Zipf {
    n: u64,
    theta: f64,
    alpha: f64,
    zeta_n: f64,
    eta: f64,
}

impl Zipf {
    pub fn new(n: u64, theta: f64) -> Self {
        assert!(
            n >= 1 && theta > 0.0 && theta < 1.0,
            "zipf needs n >= 1 and 0 < theta < 1"
        );
        let zeta = |m: u64| (1..=m).map(|i| 1.0 / (i as f64).powf(theta)).sum::<f64>();
        let zeta_n = zeta(n);
        let zeta_2 = zeta(2.min(n));
        Self {
            n,
            theta,
            alpha: 1.0 / (1.0 - theta),
            zeta_n,
            eta: (1.0 - (2.0 / n as f64).powf(1.0 - theta)) / (1.0 - zeta_2 / zeta_n),
        }
    }

    pub fn sample(&self, rng: &mut Rng) -> u64 {
        let u = rng.unit();
        let uz = u * self.zeta_n;
        if uz < 1.0 {
            return 0;
        }
        if uz < 1.0 + 0.5f64.powf(self.theta) {
            return 1.min(self.n - 1);
        }
        let v = (self.n as f64 * (self.eta * u - self.eta + 1.0).powf(self.alpha)) as u64;
        v.min(self.n - 1)
    }
}

/// One client's stream of operations.
pub struct Generator {
    spec: WorkloadSpec,
    rng: Rng,
    /// hot-items and cart: the zipf and the hot keys, shared by every client.
    hot: Option<Arc<HotKeys>>,
}

/// The zipf over a dataset's keys and a fixed shuffle of the key indexes, so the hottest keys
/// are spread over DCs. It depends only on the seed, the key count and theta, so every client
/// (and target) agrees on which keys are hot; it is built once per run (10⁷ keys take 40 MB
/// and a second or two), not once per client.
pub struct HotKeys {
    zipf: Zipf,
    order: Vec<u32>,
}

impl HotKeys {
    fn shared(seed: u64, keys: u64, theta: f64) -> Arc<HotKeys> {
        type Built = Option<((u64, u64, u64), Arc<HotKeys>)>;
        static LAST: Mutex<Built> = Mutex::new(None);
        let id = (seed, keys, theta.to_bits());
        let mut last = LAST.lock().expect("hot keys lock");
        if let Some((built, hot)) = last.as_ref() {
            if *built == id {
                return hot.clone();
            }
        }
        let mut perm_rng = Rng::new(seed ^ 0xA5A5_5A5A);
        let mut order: Vec<u32> = (0..keys as u32).collect();
        for i in (1..order.len()).rev() {
            let j = perm_rng.below(i as u64 + 1) as usize;
            order.swap(i, j);
        }
        let hot = Arc::new(HotKeys {
            zipf: Zipf::new(keys, theta),
            order,
        });
        *last = Some((id, hot.clone()));
        hot
    }
}

impl Generator {
    pub fn new(spec: &WorkloadSpec, seed: u64, client: u64) -> Self {
        let keys = spec.dataset.dcs as u64 * spec.dataset.skus as u64;
        let hot = matches!(spec.kind, WorkloadKind::HotItems | WorkloadKind::Cart)
            .then(|| HotKeys::shared(seed, keys, spec.theta));
        Self {
            spec: spec.clone(),
            rng: Rng::new(
                seed.wrapping_mul(0x100_0000_01B3)
                    ^ client.wrapping_add(1).wrapping_mul(0x9E37_79B9),
            ),
            hot,
        }
    }

    fn key(&self, index: u32) -> (u32, u32) {
        let skus = self.spec.dataset.skus;
        (index / skus + 1, index % skus + 1)
    }

    fn uniform_key(&mut self) -> (u32, u32) {
        let d = &self.spec.dataset;
        (
            self.rng.below(d.dcs as u64) as u32 + 1,
            self.rng.below(d.skus as u64) as u32 + 1,
        )
    }

    /// A zipf-hot key (hot-items and cart): the same keys are hot for every client.
    pub fn hot_key(&mut self) -> (u32, u32) {
        let hot = self.hot.as_ref().expect("hot-items and cart have hot keys");
        let rank = hot.zipf.sample(&mut self.rng);
        self.key(hot.order[rank as usize])
    }

    /// The client's own random stream, for mixes drawn beside the keys (cart).
    pub fn rng(&mut self) -> &mut Rng {
        &mut self.rng
    }

    pub fn next_op(&mut self) -> Op {
        let d = self.spec.dataset;
        match self.spec.kind {
            WorkloadKind::FlashSale => Op::Order(vec![(1, 1, 1)]),
            // As plain orders a cart is one hot line; `crate::cart` draws the real carts.
            WorkloadKind::HotItems | WorkloadKind::Cart => {
                let (dc, sku) = self.hot_key();
                Op::Order(vec![(dc, sku, 1)])
            }
            WorkloadKind::Uniform => {
                let (dc, sku) = self.uniform_key();
                Op::Order(vec![(dc, sku, 1)])
            }
            WorkloadKind::MultiDc => {
                let count = 2 + self.rng.below(2) as usize;
                let cross = self.rng.unit() < self.spec.cross_region;
                let first = self.rng.below(d.dcs as u64) as u32 + 1;
                let mut dcs = vec![first];
                while dcs.len() < count.min(d.dcs as usize) {
                    let dc = self.rng.below(d.dcs as u64) as u32 + 1;
                    let same = d.region(dc) == d.region(first);
                    if !dcs.contains(&dc) && (same != cross || d.regions == 1) {
                        dcs.push(dc);
                    }
                }
                let sku = self.rng.below(d.skus as u64) as u32 + 1;
                Op::Order(dcs.into_iter().map(|dc| (dc, sku, 1)).collect())
            }
            WorkloadKind::Browse => {
                let (dc, sku) = self.uniform_key();
                if self.rng.below(self.spec.reads_per_order as u64 + 1) == 0 {
                    Op::Order(vec![(dc, sku, 1)])
                } else {
                    Op::Read(dc, sku)
                }
            }
            WorkloadKind::BrowseNearby | WorkloadKind::OrderNearby => {
                unreachable!("the nearby workloads draw their own operations (crate::nearby)")
            }
            WorkloadKind::Feed | WorkloadKind::PriceLatency => {
                unreachable!("the feed workloads draw their own orders (crate::feed)")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(kind: WorkloadKind) -> WorkloadSpec {
        WorkloadSpec::new(kind, None, None, 0.99, 0.3, 100)
    }

    #[test]
    fn the_same_seed_gives_the_same_stream() {
        for kind in [
            WorkloadKind::HotItems,
            WorkloadKind::MultiDc,
            WorkloadKind::Browse,
        ] {
            let s = spec(kind);
            let a: Vec<Op> = (0..500)
                .scan(Generator::new(&s, 7, 3), |g, _| Some(g.next_op()))
                .collect();
            let b: Vec<Op> = (0..500)
                .scan(Generator::new(&s, 7, 3), |g, _| Some(g.next_op()))
                .collect();
            let c: Vec<Op> = (0..500)
                .scan(Generator::new(&s, 8, 3), |g, _| Some(g.next_op()))
                .collect();
            assert_eq!(a, b);
            assert_ne!(a, c);
        }
    }

    #[test]
    fn zipf_is_skewed_toward_the_head() {
        let z = Zipf::new(12_000, 0.99);
        let mut rng = Rng::new(1);
        let n = 100_000;
        let head = (0..n).filter(|_| z.sample(&mut rng) < 12).count();
        // With theta 0.99 the top 0.1% of 12,000 keys take roughly a quarter of the draws.
        assert!(head > n / 6 && head < n / 2, "top-12 share {head} of {n}");
    }

    #[test]
    fn multi_dc_orders_span_distinct_dcs_and_the_asked_share_crosses_regions() {
        let s = spec(WorkloadKind::MultiDc);
        let mut g = Generator::new(&s, 1, 0);
        let mut cross = 0;
        for _ in 0..2_000 {
            let Op::Order(lines) = g.next_op() else {
                panic!("multi-dc only orders")
            };
            assert!((2..=3).contains(&lines.len()));
            let mut dcs: Vec<u32> = lines.iter().map(|l| l.0).collect();
            dcs.sort_unstable();
            dcs.dedup();
            assert_eq!(dcs.len(), lines.len());
            let regions: std::collections::BTreeSet<u32> =
                dcs.iter().map(|&d| s.dataset.region(d)).collect();
            if regions.len() > 1 {
                cross += 1;
            }
        }
        assert!(
            (450..750).contains(&cross),
            "about 30% cross regions: {cross} of 2000"
        );
    }

    #[test]
    fn browse_mixes_reads_and_orders_at_the_asked_ratio() {
        let s = spec(WorkloadKind::Browse);
        let mut g = Generator::new(&s, 3, 1);
        let orders = (0..101_000)
            .filter(|_| matches!(g.next_op(), Op::Order(_)))
            .count();
        assert!((800..1_200).contains(&orders), "about 1 in 101: {orders}");
    }
}
