//! Nearby reads on real `ordo server` processes: two nodes given the same table of 10,000 DCs
//! (written in opposite orders) answer identical nearby lists for 100,000 random points,
//! including near the poles, across the antimeridian and far from any DC; and availability
//! near a point sums the rows of exactly those DCs at one epoch.

mod common;

use common::*;
use futures::stream::{self, StreamExt};
use ordo_client::{v1, Client};

/// splitmix64: seeded, so a failure reproduces.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [lo, hi).
    fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (self.next() >> 11) as f64 / (1u64 << 53) as f64 * (hi - lo)
    }
}

/// Where DCs cluster: a few cities, the antimeridian, near both poles.
const PLACES: [(f64, f64); 8] = [
    (52.52, 13.405),
    (48.8566, 2.3522),
    (40.7128, -74.006),
    (19.076, 72.8777),
    (35.6762, 139.6503),
    (-16.5, 179.9),
    (89.9, 0.0),
    (-89.9, 0.0),
];

fn wrap_lon(lon: f64) -> f64 {
    ((lon + 540.0) % 360.0) - 180.0
}

fn random_point(rng: &mut Rng, spread: f64) -> (f64, f64) {
    if rng.next().is_multiple_of(10) {
        // Anywhere, mostly far from any DC.
        return (rng.range(-90.0, 90.0), rng.range(-180.0, 180.0));
    }
    let (lat, lon) = PLACES[(rng.next() % PLACES.len() as u64) as usize];
    let lat = (lat + rng.range(-spread, spread)).clamp(-90.0, 90.0);
    (lat, wrap_lon(lon + rng.range(-2.0 * spread, 2.0 * spread)))
}

fn dc_table(count: u32) -> Vec<v1::Dc> {
    let mut rng = Rng(42);
    (1..=count)
        .map(|dc_id| {
            let (lat, lon) = random_point(&mut rng, 0.3);
            v1::Dc {
                dc_id,
                name: format!("dc {dc_id}"),
                lat,
                lon,
                region: Some(dc_id % 3),
                // One in twenty closed: the index leaves them out.
                active: dc_id % 20 != 0,
            }
        })
        .collect()
}

async fn load(client: &Client, dcs: Vec<v1::Dc>) {
    stream::iter(dcs)
        .for_each_concurrent(64, |dc| {
            let client = client.clone();
            async move {
                client.upsert_dc(dc).await.expect("upsert dc");
            }
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_nodes_with_the_same_dcs_answer_the_same_nearby_lists() {
    let dir_a = tempfile::tempdir().unwrap();
    let dir_b = tempfile::tempdir().unwrap();
    let a = TestNode::start(dir_a.path(), &[]);
    let b = TestNode::start(dir_b.path(), &[]);
    let (ca, cb) = (a.client().await, b.client().await);
    let table = dc_table(10_000);
    let started = std::time::Instant::now();
    load(&ca, table.clone()).await;
    load(&cb, table.into_iter().rev().collect()).await;
    eprintln!("loaded 2 x 10,000 DCs in {:?}", started.elapsed());

    let mut rng = Rng(7);
    let queries: Vec<(f64, f64, u32, u32)> = (0..100_000)
        .map(|_| {
            let (lat, lon) = random_point(&mut rng, 0.5);
            let radius_m = [1_000, 5_000, 20_000, 50_000][(rng.next() % 4) as usize];
            let limit = [1, 5, 20][(rng.next() % 3) as usize];
            (lat, lon, radius_m, limit)
        })
        .collect();
    let answers = stream::iter(queries)
        .map(|(lat, lon, radius_m, limit)| {
            let (ca, cb) = (ca.clone(), cb.clone());
            async move {
                let ra = ca.find_nearby_dcs(lat, lon, radius_m, limit).await.unwrap();
                let rb = cb.find_nearby_dcs(lat, lon, radius_m, limit).await.unwrap();
                let list = |r: &v1::FindNearbyDcsResponse| -> Vec<(u32, u64)> {
                    r.dcs.iter().map(|d| (d.dc_id, d.distance_m)).collect()
                };
                (lat, lon, radius_m, list(&ra), list(&rb))
            }
        })
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await;
    eprintln!("queried both nodes in {:?}", started.elapsed());
    let mut empty = 0;
    let mut found = 0;
    for (lat, lon, radius_m, la, lb) in &answers {
        assert_eq!(la, lb, "at {lat},{lon} within {radius_m} m");
        assert!(la.windows(2).all(|w| (w[0].1, w[0].0) < (w[1].1, w[1].0)));
        assert!(la
            .iter()
            .all(|&(dc, d)| d <= u64::from(*radius_m) && dc % 20 != 0));
        if la.is_empty() {
            empty += 1;
        }
        found += la.len();
    }
    eprintln!("100,000 points: {empty} with no DC nearby, {found} DCs listed in all");
    assert!(
        empty > 1_000 && empty < 90_000,
        "the points test both cases"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nearby_availability_sums_the_nearby_rows_at_one_epoch() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(dir.path(), &[]);
    let client = node.client().await;
    // The test dataset: DCs 1-4 at latitudes 53-56 on longitude 13, 10 of each SKU.
    seed(&client, 10).await;
    client.restock(1, 1, 5, None).await.unwrap();
    let mut reserve = ordo_client::Reserve::new(&[line(2, 1, 4)]);
    reserve.ttl_s = 600;
    client.reserve(reserve).await.unwrap();

    // From latitude 53.5: DCs 1 and 2 are about 55.6 km away, 3 and 4 farther.
    let near = client
        .get_nearby_availability(53.5, 13.0, 60_000, vec![1, 2])
        .await
        .unwrap();
    let ids: Vec<u32> = near.dcs.iter().map(|d| d.dc_id).collect();
    assert_eq!(ids, vec![1, 2], "equal distances, by id");
    assert_eq!(near.items[0].available_total, 15 + 6);
    assert_eq!(near.items[1].available_total, 20);
    let dcs = client
        .find_nearby_dcs(53.5, 13.0, 200_000, 0)
        .await
        .unwrap();
    assert_eq!(
        dcs.dcs.iter().map(|d| d.dc_id).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    assert!(
        dcs.dcs[0].distance_m.abs_diff(55_597) < 50,
        "{:?}",
        dcs.dcs[0]
    );

    // Bad input is refused with the field named.
    let (code, _, err) = ordo_cli(&["nearby", "91", "0", "--endpoint", &node.endpoint]);
    assert_eq!(code, 1);
    assert!(err.contains("lat must be between -90 and 90"), "{err}");
    let (code, out, _) = ordo_cli(&[
        "nearby",
        "53.5",
        "13",
        "--radius-m",
        "60000",
        "--sku",
        "1",
        "--json",
        "--endpoint",
        &node.endpoint,
    ]);
    assert_eq!(code, 0);
    let json: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(json["items"][0]["available_total"], 21);
}
