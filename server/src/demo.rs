//! The demo dataset `ordo dev` loads on first start: in each of 12 real cities (three regions)
//! a hub DC that stocks every SKU and 15 to 25 dark stores within about 10 km of the centre,
//! each stocking about a fifth of the catalogue; 1,000 named SKUs with prices. DC ids and SKU
//! ids start at 1 (the hubs are DCs 1 to 12, in city order). `--demo-dcs N --demo-skus M`
//! builds a larger synthetic dataset the same way for scale runs. It goes through the log like
//! any other write, so every replica has it.

use ordo_scheduler::{DcRecord, ItemRecord, Op, Txn};
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
/// Dark stores stock about one SKU in this many, at most `STOCKED_PER_STORE_MAX` of them.
const STOCKED_ONE_IN: u32 = 5;
const STOCKED_PER_STORE_MAX: u32 = 250;
/// Dark stores lie within this distance of their city's centre.
const CITY_RADIUS_M: f64 = 10_000.0;
/// Hubs stock at most the first this many SKUs.
const HUB_SKUS_MAX: u32 = 1_000;

/// What to load: dark stores (`None`: 15 to 25 per city) and SKUs.
#[derive(Clone, Copy, Debug)]
pub struct Spec {
    pub dark_stores: Option<u32>,
    pub skus: u32,
}

impl Default for Spec {
    fn default() -> Self {
        Self {
            dark_stores: None,
            skus: SKUS,
        }
    }
}

impl Spec {
    /// Checks the bounds of `--demo-dcs` and `--demo-skus`.
    pub fn new(dark_stores: Option<u32>, skus: Option<u32>) -> anyhow::Result<Spec> {
        if let Some(n) = dark_stores.filter(|&n| n > DCS_MAX) {
            anyhow::bail!("--demo-dcs is at most {DCS_MAX}, not {n}");
        }
        let skus = skus.unwrap_or(SKUS);
        if !(1..=SKUS_MAX).contains(&skus) {
            anyhow::bail!("--demo-skus is 1 to {SKUS_MAX}, not {skus}");
        }
        Ok(Spec { dark_stores, skus })
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
        let want = (self.skus / STOCKED_ONE_IN).clamp(1, STOCKED_PER_STORE_MAX);
        let mut rng = Mix(u64::from(dc) << 20);
        let mut skus = std::collections::BTreeSet::new();
        while skus.len() < want as usize {
            skus.insert(rng.below(u64::from(self.skus)) as u32 + 1);
        }
        skus.into_iter()
            .map(|sku| (sku, rng.below(40) as i64 + 1))
            .collect()
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

pub fn transactions(spec: &Spec) -> Vec<Txn> {
    let mut txns = Vec::new();
    let dcs = spec.dcs();
    for dc in &dcs {
        txns.push(Txn {
            request_id: format!("demo-dc-{}", dc.dc),
            op: Op::UpsertDc(dc.clone()),
        });
    }
    for sku in 1..=spec.skus {
        txns.push(Txn {
            request_id: format!("demo-item-{sku}"),
            op: Op::UpsertItem(item(sku)),
        });
    }
    let restock = |dc: u32, sku: u32, delta: i64| Txn {
        request_id: format!("demo-stock-{dc}-{sku}"),
        op: Op::Restock { dc, sku, delta },
    };
    for dc in 1..=CITIES.len() as u32 {
        for sku in 1..=spec.skus.min(HUB_SKUS_MAX) {
            txns.push(restock(dc, sku, initial_stock(dc, sku)));
        }
    }
    for dc in dcs.iter().skip(CITIES.len()) {
        for (sku, units) in spec.dark_stock(dc.dc) {
            txns.push(restock(dc.dc, sku, units));
        }
    }
    txns
}

pub async fn seed(node: &Node, queue_txns_max: usize, spec: &Spec) -> anyhow::Result<usize> {
    let txns = transactions(spec);
    let count = txns.len();
    let chunk = (queue_txns_max / 2).clamp(1, 5_000);
    let mut rest = txns.into_iter().peekable();
    while rest.peek().is_some() {
        let part: Vec<Txn> = rest.by_ref().take(chunk).collect();
        let waits = node.sequencer.submit(part)?;
        for wait in waits {
            let result = wait
                .rx
                .await
                .map_err(|_| anyhow::anyhow!("the node stopped while loading demo data"))?
                .map_err(|e| anyhow::anyhow!("loading demo data: {e}"))?;
            if let Some(rejection) = result.outcome.rejection() {
                anyhow::bail!("demo data {} rejected: {rejection}", result.request_id);
            }
        }
    }
    Ok(count)
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

    #[test]
    fn a_synthetic_dataset_has_what_was_asked() {
        let spec = Spec::new(Some(1_000), Some(5_000)).unwrap();
        assert_eq!(spec.dcs().len(), 1_000 + CITIES.len());
        let stocked = spec.dark_stock(500);
        assert_eq!(stocked.len(), 250);
        assert!(stocked
            .iter()
            .all(|&(sku, units)| sku <= 5_000 && units >= 1));
        assert_eq!(item(1_001).name, format!("{} #2", item(1).name));
        assert!(Spec::new(Some(10_001), None).is_err());
        assert!(Spec::new(None, Some(0)).is_err());
    }
}
