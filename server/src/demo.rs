//! The demo dataset `ordo dev` loads on first start: in each of 12 real cities (three regions)
//! a hub DC that stocks every SKU and 15 to 25 dark stores within about 10 km of the centre,
//! each stocking about a fifth of the catalogue; 1,000 named SKUs with prices. DC ids and SKU
//! ids start at 1 (the hubs are DCs 1 to 12, in city order). `--demo-dcs N --demo-skus M`
//! builds a larger synthetic dataset the same way for scale runs, in which every dark store
//! stocks every SKU (at most 10,000 of them): `--demo-dcs 10000 --demo-skus 10000` is 10⁸
//! stock rows. It goes through the log like any other write, so every replica has it: each
//! DC's stock as one `RestockDc` transaction per 10,000 SKUs (one request id, one log record).

use ordo_scheduler::{validate, DcRecord, ItemRecord, Op, SkuDelta, Txn};
use ordo_sequencer::Node;

/// (name, lat, lon, region)
pub const CITIES: &[(&str, f64, f64, u32)] = &[
    ("Berlin", 52.5200, 13.4050, 0),
    ("Paris", 48.8566, 2.3522, 0),
    ("London", 51.5074, -0.1278, 0),
    ("Madrid", 40.4168, -3.7038, 0),
    ("New York", 40.7128, -74.0060, 1),
    ("Chicago", 41.8781, -87.6298, 1),
    ("Toronto", 43.6532, -79.3832, 1),
    ("San Francisco", 37.7749, -122.4194, 1),
    ("Bengaluru", 12.9716, 77.5946, 2),
    ("Mumbai", 19.0760, 72.8777, 2),
    ("Singapore", 1.3521, 103.8198, 2),
    ("Tokyo", 35.6762, 139.6503, 2),
];

const PRODUCTS: &[&str] = &[
    "Potato Chips",
    "Tortilla Chips",
    "Cola",
    "Orange Soda",
    "Sparkling Water",
    "Still Water",
    "Whole Milk",
    "Oat Milk",
    "Greek Yogurt",
    "Cheddar",
    "Butter",
    "Eggs",
    "Sourdough Bread",
    "Bagels",
    "Croissants",
    "Bananas",
    "Apples",
    "Avocados",
    "Tomatoes",
    "Onions",
    "Basmati Rice",
    "Spaghetti",
    "Penne",
    "Olive Oil",
    "Peanut Butter",
    "Strawberry Jam",
    "Honey",
    "Ground Coffee",
    "Green Tea",
    "Dark Chocolate",
    "Ice Cream",
    "Frozen Pizza",
    "Instant Noodles",
    "Cereal",
    "Granola",
    "Toothpaste",
    "Shampoo",
    "Dish Soap",
    "Paper Towels",
    "Batteries",
];

const VARIANTS: &[&str] = &[
    "Classic",
    "Lite",
    "Organic",
    "Family Size",
    "Mini",
    "Spicy",
    "Sea Salt",
    "Smoked",
    "Vanilla",
    "Extra Large",
    "Budget",
    "Premium",
    "Gluten-Free",
    "Vegan",
    "Local",
    "Double Pack",
    "Party Pack",
    "Zero Sugar",
    "Whole Grain",
    "Fresh",
    "Frozen",
    "Imported",
    "Limited Edition",
    "Travel Size",
    "Bulk",
];

/// The named SKUs; a larger catalogue numbers them again (`… #2`, `… #3`).
pub const SKUS: u32 = (PRODUCTS.len() * VARIANTS.len()) as u32;
/// The largest synthetic dataset: dark stores and SKUs.
pub const DCS_MAX: u32 = 10_000;
pub const SKUS_MAX: u32 = 100_000;
/// In the default demo, dark stores stock about one SKU in this many, at most
/// `STOCKED_PER_STORE_MAX` of them.
const STOCKED_ONE_IN: u32 = 5;
const STOCKED_PER_STORE_MAX: u32 = 250;
/// In a synthetic dataset (`--demo-dcs`), dark stores stock every SKU, at most this many.
pub const SYNTHETIC_STOCKED_MAX: u32 = 10_000;
/// Dark stores lie within this distance of their city's centre.
const CITY_RADIUS_M: f64 = 10_000.0;
/// Hubs stock at most the first this many SKUs.
const HUB_SKUS_MAX: u32 = 1_000;

/// What to load: dark stores (`None`: 15 to 25 per city), SKUs, and SKUs per dark store
/// (`None`: the default of the layout, [`Spec::per_store`]).
#[derive(Clone, Copy, Debug)]
pub struct Spec {
    pub dark_stores: Option<u32>,
    pub skus: u32,
    pub per_store: Option<u32>,
}

impl Default for Spec {
    fn default() -> Self {
        Self {
            dark_stores: None,
            skus: SKUS,
            per_store: None,
        }
    }
}

impl Spec {
    /// Checks the bounds of `--demo-dcs`, `--demo-skus` and `--demo-skus-per-store`.
    pub fn new(
        dark_stores: Option<u32>,
        skus: Option<u32>,
        per_store: Option<u32>,
    ) -> anyhow::Result<Spec> {
        if let Some(n) = dark_stores.filter(|&n| n > DCS_MAX) {
            anyhow::bail!("--demo-dcs is at most {DCS_MAX}, not {n}");
        }
        let skus = skus.unwrap_or(SKUS);
        if !(1..=SKUS_MAX).contains(&skus) {
            anyhow::bail!("--demo-skus is 1 to {SKUS_MAX}, not {skus}");
        }
        if let Some(n) = per_store.filter(|n| !(1..=SYNTHETIC_STOCKED_MAX.min(skus)).contains(n)) {
            anyhow::bail!(
                "--demo-skus-per-store is 1 to {} (and at most --demo-skus), not {n}",
                SYNTHETIC_STOCKED_MAX
            );
        }
        Ok(Spec {
            dark_stores,
            skus,
            per_store,
        })
    }

    /// SKUs each dark store stocks: as asked, or about a fifth of the catalogue and at most
    /// 250 in the default demo, every SKU (at most 10,000) in a synthetic one.
    pub fn per_store(&self) -> u32 {
        match (self.per_store, self.dark_stores) {
            (Some(n), _) => n,
            (None, None) => (self.skus / STOCKED_ONE_IN).clamp(1, STOCKED_PER_STORE_MAX),
            (None, Some(_)) => self.skus.min(SYNTHETIC_STOCKED_MAX),
        }
    }

    /// Dark stores in the city at `city` (an index into [`CITIES`]).
    fn stores_in(&self, city: usize) -> u32 {
        let cities = CITIES.len() as u32;
        match self.dark_stores {
            None => 15 + (city as u32 * 7) % 11,
            Some(n) => n / cities + u32::from((city as u32) < n % cities),
        }
    }

    /// Every DC: the hubs, then each city's dark stores.
    pub fn dcs(&self) -> Vec<DcRecord> {
        let mut out = Vec::new();
        for &(name, lat, lon, region) in CITIES {
            out.push(DcRecord {
                dc: out.len() as u32 + 1,
                name: format!("{name} Hub"),
                lat_e6: (lat * 1e6).round() as i32,
                lon_e6: (lon * 1e6).round() as i32,
                region,
                active: true,
            });
        }
        for (city, &(name, lat, lon, region)) in CITIES.iter().enumerate() {
            for k in 1..=self.stores_in(city) {
                let dc = out.len() as u32 + 1;
                let mut rng = Mix(u64::from(dc) * 0x9E37_79B9);
                // Uniform over the disc: radius by the square root.
                let r = CITY_RADIUS_M * rng.unit().sqrt();
                let angle = std::f64::consts::TAU * rng.unit();
                let dlat = r * angle.cos() / 111_320.0;
                let dlon = r * angle.sin() / (111_320.0 * lat.to_radians().cos());
                out.push(DcRecord {
                    dc,
                    name: format!("{name} Dark Store {k}"),
                    lat_e6: ((lat + dlat) * 1e6).round() as i32,
                    lon_e6: ((lon + dlon) * 1e6).round() as i32,
                    region,
                    active: true,
                });
            }
        }
        out
    }

    /// The SKUs a dark store stocks, ascending, with the units of each.
    fn dark_stock(&self, dc: u32) -> Vec<(u32, i64)> {
        let want = self.per_store();
        let mut rng = Mix(u64::from(dc) << 20);
        if want == self.skus {
            return (1..=self.skus)
                .map(|sku| (sku, rng.below(40) as i64 + 1))
                .collect();
        }
        let mut skus = std::collections::BTreeSet::new();
        while skus.len() < want as usize {
            skus.insert(rng.below(u64::from(self.skus)) as u32 + 1);
        }
        skus.into_iter()
            .map(|sku| (sku, rng.below(40) as i64 + 1))
            .collect()
    }

    /// Stock rows the dataset holds.
    #[cfg(test)]
    fn stock_rows(&self) -> u64 {
        let hubs = CITIES.len() as u64 * u64::from(self.skus.min(HUB_SKUS_MAX));
        let dark: u64 = self.dcs()[CITIES.len()..]
            .iter()
            .map(|_| u64::from(self.per_store()))
            .sum();
        hubs + dark
    }
}

/// splitmix64: the demo's layout is fixed by the DC id, the same on every run.
struct Mix(u64);

impl Mix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    /// In [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

pub fn item(sku: u32) -> ItemRecord {
    let i = (sku - 1) as usize % SKUS as usize;
    let round = (sku - 1) / SKUS + 1;
    let name = format!(
        "{} {}",
        VARIANTS[i % VARIANTS.len()],
        PRODUCTS[i / VARIANTS.len()]
    );
    ItemRecord {
        sku,
        name: match round {
            1 => name,
            n => format!("{name} #{n}"),
        },
        price_cents: 99 + (sku as i64 * 37) % 1_500,
    }
}

/// Initial on-hand stock of `sku` at `dc`: 20 to 200, varied.
pub fn initial_stock(dc: u32, sku: u32) -> i64 {
    20 + ((dc as i64) * 31 + (sku as i64) * 17) % 181
}

/// The DCs and the catalogue, as transactions.
pub fn tables(spec: &Spec) -> Vec<Txn> {
    let mut txns = Vec::new();
    for dc in spec.dcs() {
        txns.push(Txn {
            request_id: format!("demo-dc-{}", dc.dc),
            op: Op::UpsertDc(dc),
        });
    }
    for sku in 1..=spec.skus {
        txns.push(Txn {
            request_id: format!("demo-item-{sku}"),
            op: Op::UpsertItem(item(sku)),
        });
    }
    txns
}

/// The stock, DC by DC, as `RestockDc` transactions of at most
/// [`validate::RESTOCK_DC_LINES_MAX`] lines: built as they are taken, so a dataset of 10⁸ rows
/// is never whole in memory.
pub fn stock(spec: &Spec) -> impl Iterator<Item = Txn> + '_ {
    let hubs = (1..=CITIES.len() as u32).map(|dc| {
        let lines = (1..=spec.skus.min(HUB_SKUS_MAX))
            .map(|sku| (sku, initial_stock(dc, sku)))
            .collect::<Vec<_>>();
        (dc, lines)
    });
    let dark =
        (CITIES.len() as u32 + 1..=spec.dcs().len() as u32).map(|dc| (dc, spec.dark_stock(dc)));
    hubs.chain(dark).flat_map(|(dc, lines)| {
        lines
            .chunks(validate::RESTOCK_DC_LINES_MAX)
            .map(|chunk| Txn {
                request_id: format!("demo-stock-{dc}-{}", chunk[0].0),
                op: Op::RestockDc {
                    dc,
                    lines: chunk
                        .iter()
                        .map(|&(sku, delta)| SkuDelta { sku, delta })
                        .collect(),
                },
            })
            .collect::<Vec<_>>()
    })
}

/// Stock lines in flight at once while seeding: a few epochs' worth, so the log stays busy
/// and the queue holds little.
const SEED_LINES_IN_FLIGHT: usize = 400_000;

/// Loads the dataset through the log; returns the transactions and stock rows it wrote.
pub async fn seed(node: &Node, queue_txns_max: usize, spec: &Spec) -> anyhow::Result<(usize, u64)> {
    let mut count = 0;
    let chunk = (queue_txns_max / 2).clamp(1, 5_000);
    let tables = tables(spec);
    for part in tables.chunks(chunk) {
        count += part.len();
        let waits = node.sequencer.submit(part.to_vec())?;
        for wait in waits {
            settle(wait).await?;
        }
    }
    // Stock: submit while fewer than SEED_LINES_IN_FLIGHT lines wait, oldest answer first.
    let mut in_flight = std::collections::VecDeque::new();
    let (mut lines_in_flight, mut rows) = (0usize, 0u64);
    for txn in stock(spec) {
        let lines = match &txn.op {
            Op::RestockDc { lines, .. } => lines.len(),
            _ => 1,
        };
        while (lines_in_flight + lines > SEED_LINES_IN_FLIGHT || in_flight.len() >= chunk)
            && !in_flight.is_empty()
        {
            let (wait, n) = in_flight.pop_front().expect("non-empty");
            settle(wait).await?;
            lines_in_flight -= n;
        }
        count += 1;
        rows += lines as u64;
        lines_in_flight += lines;
        let wait = node
            .sequencer
            .submit(vec![txn])?
            .pop()
            .expect("one wait per txn");
        in_flight.push_back((wait, lines));
    }
    for (wait, _) in in_flight {
        settle(wait).await?;
    }
    Ok((count, rows))
}

/// Waits for one seeded transaction's result; a rejection fails the seeding.
async fn settle(wait: ordo_sequencer::Wait) -> anyhow::Result<()> {
    let result = wait
        .rx
        .await
        .map_err(|_| anyhow::anyhow!("the node stopped while loading demo data"))?
        .map_err(|e| anyhow::anyhow!("loading demo data: {e}"))?;
    if let Some(rejection) = result.outcome.rejection() {
        anyhow::bail!("demo data {} rejected: {rejection}", result.request_id);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::geo::distance_m;

    #[test]
    fn every_city_has_15_to_25_dark_stores_within_10_km() {
        let spec = Spec::default();
        let dcs = spec.dcs();
        for (city, &(name, lat, lon, _)) in CITIES.iter().enumerate() {
            let stores: Vec<&DcRecord> = dcs
                .iter()
                .filter(|d| d.name.starts_with(&format!("{name} Dark Store")))
                .collect();
            assert!(
                (15..=25).contains(&stores.len()),
                "{name}: {}",
                stores.len()
            );
            assert_eq!(stores.len() as u32, spec.stores_in(city));
            for d in stores {
                let m = distance_m((lat * 1e6) as i32, (lon * 1e6) as i32, d.lat_e6, d.lon_e6);
                assert!(m <= 10_050, "{}: {m} m from the centre", d.name);
            }
        }
        // Hubs keep DC ids 1 to 12; ids are dense.
        assert_eq!(dcs[0].name, "Berlin Hub");
        assert!(dcs.iter().enumerate().all(|(i, d)| d.dc == i as u32 + 1));
    }

    /// The stock transactions hold every row once, each DC's in ascending SKU order, in
    /// transactions execution admits.
    #[test]
    fn the_stock_goes_in_as_valid_restocks_of_whole_dcs() {
        let spec = Spec::new(Some(30), Some(12_000), None).unwrap();
        let mut rows = 0u64;
        let mut seen = std::collections::BTreeSet::new();
        for txn in stock(&spec) {
            validate::validate(&txn).unwrap();
            let Op::RestockDc { dc, lines } = &txn.op else {
                panic!("{txn:?}")
            };
            assert!(seen.insert(txn.request_id.clone()), "{}", txn.request_id);
            assert!(lines.len() <= validate::RESTOCK_DC_LINES_MAX);
            assert!(lines.iter().all(|l| l.delta > 0));
            rows += lines.len() as u64;
            let _ = dc;
        }
        assert_eq!(rows, spec.stock_rows());
    }

    #[test]
    fn a_synthetic_dataset_has_what_was_asked() {
        let spec = Spec::new(Some(1_000), Some(5_000), None).unwrap();
        assert_eq!(spec.dcs().len(), 1_000 + CITIES.len());
        // Every dark store stocks every SKU.
        let stocked = spec.dark_stock(500);
        assert_eq!(stocked.len(), 5_000);
        assert!(stocked
            .iter()
            .enumerate()
            .all(|(i, &(sku, units))| sku == i as u32 + 1 && (1..=40).contains(&units)));
        assert_eq!(spec.stock_rows(), 12 * 1_000 + 1_000 * 5_000);
        // The world: 10,000 stores of 10,000 SKUs, and past 10,000 SKUs a sample.
        let world = Spec::new(Some(10_000), Some(10_000), None).unwrap();
        assert_eq!(world.stock_rows(), 12 * 1_000 + 100_000_000);
        let wide = Spec::new(Some(10), Some(50_000), None).unwrap();
        let sample = wide.dark_stock(13);
        assert_eq!(sample.len(), 10_000);
        assert!(sample.windows(2).all(|w| w[0].0 < w[1].0));
        // The default demo keeps a fifth of the catalogue per store, at most 250.
        assert_eq!(Spec::default().dark_stock(13).len(), 200);
        assert_eq!(item(1_001).name, format!("{} #2", item(1).name));
        assert!(Spec::new(Some(10_001), None, None).is_err());
        assert!(Spec::new(None, Some(0), None).is_err());
        // As asked: the density of the default demo over a synthetic set.
        let thin = Spec::new(Some(100), Some(10_000), Some(250)).unwrap();
        assert_eq!(thin.dark_stock(40).len(), 250);
        assert_eq!(thin.stock_rows(), 12 * 1_000 + 100 * 250);
        assert!(Spec::new(Some(100), Some(100), Some(101)).is_err());
        assert!(Spec::new(Some(100), Some(100), Some(0)).is_err());
    }
}
