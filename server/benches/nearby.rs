//! FindNearbyDcs at the edge, without gRPC: the R-tree lookup, great-circle distances and
//! ordering over 10,000 DCs spread over twelve cities (about 830 per city), for points in
//! those cities and a radius of 5 km. `cargo bench -p ordo-server --bench nearby`.

// The index lives in the `ordo` binary crate; the bench compiles the same file.
#[path = "../src/geo.rs"]
#[allow(dead_code)]
mod geo;

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use ordo_scheduler::DcRecord;

const CITIES: [(f64, f64); 12] = [
    (52.52, 13.405),
    (48.8566, 2.3522),
    (51.5074, -0.1278),
    (40.4168, -3.7038),
    (40.7128, -74.006),
    (41.8781, -87.6298),
    (43.6532, -79.3832),
    (37.7749, -122.4194),
    (12.9716, 77.5946),
    (19.076, 72.8777),
    (1.3521, 103.8198),
    (35.6762, 139.6503),
];

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A point within about `km` of a random city's centre, in micro-degrees.
    fn near_city(&mut self, km: f64) -> (i32, i32) {
        let (lat, lon) = CITIES[(self.next() % 12) as usize];
        let unit = |r: &mut Rng| (r.next() >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0;
        let dlat = unit(self) * km / 111.2;
        let dlon = unit(self) * km / (111.2 * lat.to_radians().cos());
        (
            ((lat + dlat) * 1e6).round() as i32,
            ((lon + dlon) * 1e6).round() as i32,
        )
    }
}

fn nearby(c: &mut Criterion) {
    let mut rng = Rng(7);
    let dcs: Vec<DcRecord> = (1..=10_000)
        .map(|dc| {
            let (lat_e6, lon_e6) = rng.near_city(10.0);
            DcRecord {
                dc,
                name: format!("dc {dc}"),
                lat_e6,
                lon_e6,
                region: dc % 3,
                active: true,
            }
        })
        .collect();
    let index = geo::NearbyIndex::build(&dcs, 1);
    let points: Vec<(i32, i32)> = (0..4_096).map(|_| rng.near_city(8.0)).collect();
    let mut group = c.benchmark_group("find_nearby_dcs");
    group.throughput(Throughput::Elements(1));
    for (radius_m, limit) in [(5_000, 20), (5_000, 100), (2_000, 20)] {
        let mut at = 0;
        group.bench_function(format!("10k_dcs_r{radius_m}m_limit{limit}"), |b| {
            b.iter(|| {
                at = (at + 1) % points.len();
                let (lat, lon) = points[at];
                black_box(index.find_records(lat, lon, radius_m, limit).len())
            })
        });
    }
    group.finish();
}

criterion_group!(benches, nearby);
criterion_main!(benches);
