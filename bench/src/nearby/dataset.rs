//! The nearby workloads' dataset: dark stores with real geography. Twelve cities (the demo's,
//! copied here because the bench must not depend on the server binary), DCs dealt to them in
//! turn and spread uniformly within [`DC_SPREAD_M`] of each centre, each stocking a seeded
//! sparse subset of the SKUs. Every target is loaded with the same DCs and rows.

use serde::Serialize;

use crate::workload::Rng;

/// The demo's cities: name, centre (degrees) and region (as `server/src/demo.rs` `CITIES`).
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

/// The sphere every target's distances are measured on (Ordo's `geo::EARTH_RADIUS_M`, the
/// mean Earth radius; PostGIS's sphere is the same, Redis's is 0.03% larger).
pub const EARTH_RADIUS_M: f64 = 6_371_008.8;
/// Dark stores lie within this distance of their city's centre.
pub const DC_SPREAD_M: f64 = 10_000.0;
/// Users stand within this distance of a city's centre.
pub const USER_SPREAD_M: f64 = 8_000.0;
/// "Near me": every operation asks for the stores within this radius.
pub const RADIUS_M: u32 = 5_000;
/// The share of (DC, SKU) pairs a DC stocks.
pub const STOCKED_SHARE: f64 = 0.2;
/// SKUs per availability read.
pub const BROWSE_SKUS: usize = 20;

/// Great-circle distance in metres (haversine), as Ordo computes it.
pub fn distance_m(lat1: f64, lon1: f64, lat2: f64, lon2: f64) -> f64 {
    let (phi1, phi2) = (lat1.to_radians(), lat2.to_radians());
    let s1 = ((phi2 - phi1) / 2.0).sin();
    let s2 = ((lon2 - lon1).to_radians() / 2.0).sin();
    let a = s1 * s1 + phi1.cos() * phi2.cos() * s2 * s2;
    2.0 * EARTH_RADIUS_M * a.clamp(0.0, 1.0).sqrt().asin()
}

/// A point uniform in the disk of `spread_m` around a centre (local flat approximation, good
/// to well under a metre at 10 km).
pub fn point_near(rng: &mut Rng, lat: f64, lon: f64, spread_m: f64) -> (f64, f64) {
    let r = spread_m * rng.unit().sqrt();
    let theta = 2.0 * std::f64::consts::PI * rng.unit();
    let dlat = (r * theta.cos() / EARTH_RADIUS_M).to_degrees();
    let dlon = (r * theta.sin() / (EARTH_RADIUS_M * lat.to_radians().cos())).to_degrees();
    (lat + dlat, lon + dlon)
}

/// One dark store.
#[derive(Clone, Debug)]
pub struct Site {
    pub dc: u32,
    /// Degrees, rounded to micro-degrees (Ordo stores integer micro-degrees, so every target
    /// gets exactly the coordinates Ordo keeps).
    pub lat: f64,
    pub lon: f64,
    pub region: u32,
}

/// The dataset's size, for the report.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct DatasetSummary {
    pub dcs: u32,
    pub skus: u32,
    pub cities: usize,
    pub stocked_share: f64,
    pub stock_rows: u64,
    /// A stocked row starts with 1..=stock_max units (uniform).
    pub stock_max: i64,
    pub units_total: i64,
    pub radius_m: u32,
    pub dc_spread_m: f64,
    pub user_spread_m: f64,
}

pub struct NearbyDataset {
    pub sites: Vec<Site>,
    pub skus: u32,
    pub stock_max: i64,
    /// Initial units of (dc, sku) at `(dc - 1) * skus + (sku - 1)`; 0 where the DC does not
    /// stock the SKU (and then the target has no row, except Ordo, which reads 0).
    units: Vec<i64>,
}

impl NearbyDataset {
    /// The same for every target with the same seed.
    pub fn new(dcs: u32, skus: u32, stock_max: i64, seed: u64) -> Self {
        assert!(
            dcs >= 1 && skus >= 1 && stock_max >= 1,
            "a non-empty dataset"
        );
        let mut rng = Rng::new(seed ^ 0x6E65_6172_6279);
        let sites = (1..=dcs)
            .map(|dc| {
                let (_, lat, lon, region) = CITIES[(dc as usize - 1) % CITIES.len()];
                let (lat, lon) = point_near(&mut rng, lat, lon, DC_SPREAD_M);
                Site {
                    dc,
                    lat: (lat * 1e6).round() / 1e6,
                    lon: (lon * 1e6).round() / 1e6,
                    region,
                }
            })
            .collect();
        let units = (0..dcs as u64 * skus as u64)
            .map(|_| {
                if rng.unit() < STOCKED_SHARE {
                    1 + rng.below(stock_max as u64) as i64
                } else {
                    0
                }
            })
            .collect();
        Self {
            sites,
            skus,
            stock_max,
            units,
        }
    }

    pub fn dcs(&self) -> u32 {
        self.sites.len() as u32
    }

    /// Initial units of a (dc, sku); 0 when not stocked or out of range.
    pub fn units(&self, dc: u32, sku: u32) -> i64 {
        if dc == 0 || sku == 0 || dc > self.dcs() || sku > self.skus {
            return 0;
        }
        self.units[(dc as usize - 1) * self.skus as usize + (sku as usize - 1)]
    }

    /// The stocked rows (dc, sku, units) of one DC.
    pub fn rows_of(&self, dc: u32) -> impl Iterator<Item = (u32, u32, i64)> + '_ {
        (1..=self.skus).filter_map(move |sku| {
            let units = self.units(dc, sku);
            (units > 0).then_some((dc, sku, units))
        })
    }

    /// Every stocked row, by DC then SKU.
    pub fn rows(&self) -> impl Iterator<Item = (u32, u32, i64)> + '_ {
        (1..=self.dcs()).flat_map(|dc| self.rows_of(dc))
    }

    /// The DCs within `radius_m` of a point by the bench's own haversine, nearest first, with
    /// their distances: what the check compares an answer with.
    pub fn within(&self, lat: f64, lon: f64, radius_m: f64) -> Vec<(u32, f64)> {
        // A degree of latitude is ~111 km: skip what cannot be close before the haversine.
        let dlat = (radius_m / EARTH_RADIUS_M).to_degrees() + 1e-3;
        let mut out: Vec<(u32, f64)> = self
            .sites
            .iter()
            .filter(|s| (s.lat - lat).abs() <= dlat)
            .map(|s| (s.dc, distance_m(lat, lon, s.lat, s.lon)))
            .filter(|&(_, d)| d <= radius_m)
            .collect();
        out.sort_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)));
        out
    }

    pub fn summary(&self) -> DatasetSummary {
        DatasetSummary {
            dcs: self.dcs(),
            skus: self.skus,
            cities: CITIES.len(),
            stocked_share: STOCKED_SHARE,
            stock_rows: self.units.iter().filter(|&&u| u > 0).count() as u64,
            stock_max: self.stock_max,
            units_total: self.units.iter().sum(),
            radius_m: RADIUS_M,
            dc_spread_m: DC_SPREAD_M,
            user_spread_m: USER_SPREAD_M,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn haversine_matches_known_distances() {
        // Berlin to Paris is about 878 km; one degree of latitude about 111.2 km.
        let d = distance_m(52.52, 13.405, 48.8566, 2.3522);
        assert!((870_000.0..885_000.0).contains(&d), "{d}");
        let d = distance_m(0.0, 0.0, 1.0, 0.0);
        assert!((d - 111_195.0).abs() < 5.0, "{d}");
    }

    #[test]
    fn stores_lie_around_their_city_and_stock_a_sparse_share() {
        let data = NearbyDataset::new(1_200, 100, 10, 42);
        for site in &data.sites {
            let (_, lat, lon, region) = CITIES[(site.dc as usize - 1) % CITIES.len()];
            assert_eq!(site.region, region);
            assert!(distance_m(lat, lon, site.lat, site.lon) <= DC_SPREAD_M + 1.0);
        }
        let s = data.summary();
        let share = s.stock_rows as f64 / (1_200.0 * 100.0);
        assert!((share - STOCKED_SHARE).abs() < 0.01, "{share}");
        assert!(data.rows().all(|(_, _, u)| (1..=10).contains(&u)));
        // The same seed, the same dataset.
        let again = NearbyDataset::new(1_200, 100, 10, 42);
        assert!(data.rows().eq(again.rows()));
    }

    #[test]
    fn within_finds_the_stores_of_the_city_nearest_first() {
        let data = NearbyDataset::new(12_000, 10, 5, 1);
        let (_, lat, lon, _) = CITIES[0];
        let near = data.within(lat, lon, RADIUS_M as f64);
        // A quarter of a city's 1,000 stores lie within half its spread of the centre.
        assert!((200..300).contains(&near.len()), "{}", near.len());
        assert!(near.windows(2).all(|w| w[0].1 <= w[1].1));
        assert!(near.iter().all(|&(dc, _)| (dc - 1) % 12 == 0));
    }
}
