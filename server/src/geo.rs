//! The nearby index: every active DC in an R-tree (`rstar`) over integer micro-degree
//! coordinates, on every node, at the edge. It is a cache of the global DC table, rebuilt when
//! the store's global version moves, and never part of execution: floats live here only, and a
//! geo write will carry the ordered DC list the edge resolved.
//!
//! Distances are great-circle metres on a sphere of radius [`EARTH_RADIUS_M`], computed with
//! the `libm` crate's pure-Rust functions (not the platform's libm, whose last bits may differ
//! between systems) and rounded to whole metres; ties are broken by DC id. So every node, on
//! any platform, answers the same list for the same DC table and point.
//!
//! A lookup orders the DCs in the search boxes by a cheap key first, the squared chord between
//! unit vectors (no trigonometry per DC, monotone in the distance), and computes exact metres
//! only for the nearest `limit` plus any within two metres of the last of them, which covers
//! every DC that could tie with it once rounded to metres.

use std::sync::Arc;

use rstar::{RTree, RTreeObject, AABB};

use ordo_scheduler::DcRecord;

/// The mean Earth radius (IUGG), in metres.
pub const EARTH_RADIUS_M: f64 = 6_371_008.8;
/// The largest search radius: 1,000 km.
pub const RADIUS_M_MAX: u32 = 1_000_000;

/// A DC as the index holds it: where it is, and its record (answers need no store reads).
#[derive(Clone, Debug, PartialEq)]
pub struct GeoDc {
    pub dc: u32,
    pub lat_e6: i32,
    pub lon_e6: i32,
    /// The point on the unit sphere, for the chord key.
    unit: [f64; 3],
    pub record: Arc<DcRecord>,
}

impl RTreeObject for GeoDc {
    type Envelope = AABB<[i64; 2]>;

    fn envelope(&self) -> Self::Envelope {
        AABB::from_point([i64::from(self.lat_e6), i64::from(self.lon_e6)])
    }
}

/// A DC found near a point (what the tests compare).
#[cfg(test)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Nearby {
    pub dc: u32,
    pub distance_m: u64,
}

/// The active DCs of one version of the DC table.
pub struct NearbyIndex {
    tree: RTree<GeoDc>,
    /// The store's global version it was built from.
    pub version: u64,
}

fn radians(e6: i32) -> f64 {
    f64::from(e6) / 1e6 * std::f64::consts::PI / 180.0
}

/// The point on the unit sphere.
fn unit(lat_e6: i32, lon_e6: i32) -> [f64; 3] {
    let (phi, lambda) = (radians(lat_e6), radians(lon_e6));
    let c = libm::cos(phi);
    [c * libm::cos(lambda), c * libm::sin(lambda), libm::sin(phi)]
}

/// The squared chord between two unit vectors: `4 sin²(θ/2)`, increasing with the angle θ.
fn chord2(a: &[f64; 3], b: &[f64; 3]) -> f64 {
    let d = [a[0] - b[0], a[1] - b[1], a[2] - b[2]];
    d[0] * d[0] + d[1] * d[1] + d[2] * d[2]
}

/// The squared chord of a great-circle distance in metres.
fn chord2_of_m(metres: f64) -> f64 {
    let c = 2.0 * libm::sin((metres / EARTH_RADIUS_M).min(std::f64::consts::PI) / 2.0);
    c * c
}

/// The great-circle distance in metres of a squared chord.
fn m_of_chord2(c2: f64) -> f64 {
    2.0 * libm::asin((libm::sqrt(c2) / 2.0).min(1.0)) * EARTH_RADIUS_M
}

/// Great-circle distance in whole metres between two points in micro-degrees: the angle from
/// the chord between their unit vectors (`2 asin(chord / 2)`, as accurate as haversine and
/// well-conditioned at every distance).
pub fn distance_m(lat1_e6: i32, lon1_e6: i32, lat2_e6: i32, lon2_e6: i32) -> u64 {
    metres(chord2(&unit(lat1_e6, lon1_e6), &unit(lat2_e6, lon2_e6)))
}

/// Whole metres of a squared chord: what [`distance_m`] answers for it.
fn metres(c2: f64) -> u64 {
    libm::round(m_of_chord2(c2)) as u64
}

/// Micro-degree boxes `[lat_min, lon_min] ..= [lat_max, lon_max]` that together cover every
/// point within `radius_m` of the centre: one box, or two when the circle crosses the
/// antimeridian, or a full band of longitudes when it reaches a pole. Slightly larger than
/// needed; the exact distance filters.
fn boxes(lat_e6: i32, lon_e6: i32, radius_m: u32) -> Vec<AABB<[i64; 2]>> {
    const E6: f64 = 1e6;
    let delta = f64::from(radius_m) / EARTH_RADIUS_M; // angular radius
    let delta_deg = delta * 180.0 / std::f64::consts::PI;
    let lat = f64::from(lat_e6) / E6;
    // One micro-degree of slack each way, for rounding.
    let lat_min = ((lat - delta_deg) * E6).floor() as i64 - 1;
    let lat_max = ((lat + delta_deg) * E6).ceil() as i64 + 1;
    let full = |lat_min: i64, lat_max: i64| {
        vec![AABB::from_corners(
            [lat_min.max(-90_000_000), -180_000_000],
            [lat_max.min(90_000_000), 180_000_000],
        )]
    };
    if lat_max >= 90_000_000 || lat_min <= -90_000_000 {
        return full(lat_min, lat_max);
    }
    // The widest longitude difference on the circle, at latitude asin(sin lat / cos delta).
    let sin_dlon = libm::sin(delta) / libm::cos(radians(lat_e6));
    if sin_dlon.is_nan() || sin_dlon >= 1.0 {
        return full(lat_min, lat_max);
    }
    let dlon_deg = libm::asin(sin_dlon) * 180.0 / std::f64::consts::PI;
    let lon = f64::from(lon_e6) / E6;
    let lon_min = ((lon - dlon_deg) * E6).floor() as i64 - 1;
    let lon_max = ((lon + dlon_deg) * E6).ceil() as i64 + 1;
    let mut out = vec![AABB::from_corners(
        [lat_min, lon_min.max(-180_000_000)],
        [lat_max, lon_max.min(180_000_000)],
    )];
    if lon_min < -180_000_000 {
        out.push(AABB::from_corners(
            [lat_min, lon_min + 360_000_000],
            [lat_max, 180_000_000],
        ));
    }
    if lon_max > 180_000_000 {
        out.push(AABB::from_corners(
            [lat_min, -180_000_000],
            [lat_max, lon_max - 360_000_000],
        ));
    }
    out
}

impl NearbyIndex {
    /// The index of the active DCs among `dcs`.
    pub fn build(dcs: &[DcRecord], version: u64) -> Self {
        let points = dcs
            .iter()
            .filter(|d| d.active)
            .map(|d| GeoDc {
                dc: d.dc,
                lat_e6: d.lat_e6,
                lon_e6: d.lon_e6,
                unit: unit(d.lat_e6, d.lon_e6),
                record: Arc::new(d.clone()),
            })
            .collect();
        Self {
            tree: RTree::bulk_load(points),
            version,
        }
    }

    /// Active DCs within `radius_m` of the point, nearest first (ties by DC id), at most
    /// `limit`.
    #[cfg(test)]
    pub fn find(&self, lat_e6: i32, lon_e6: i32, radius_m: u32, limit: usize) -> Vec<Nearby> {
        self.find_records(lat_e6, lon_e6, radius_m, limit)
            .into_iter()
            .map(|(dc, distance_m)| Nearby {
                dc: dc.dc,
                distance_m,
            })
            .collect()
    }

    /// Active DCs within `radius_m` of the point with their records, nearest first (ties by
    /// DC id), at most `limit`.
    pub fn find_records(
        &self,
        lat_e6: i32,
        lon_e6: i32,
        radius_m: u32,
        limit: usize,
    ) -> Vec<(Arc<DcRecord>, u64)> {
        let radius_m = radius_m.min(RADIUS_M_MAX);
        if limit == 0 {
            return Vec::new();
        }
        let at = unit(lat_e6, lon_e6);
        // A metre past the radius: the exact distance decides at the edge of the circle.
        let within = chord2_of_m(f64::from(radius_m) + 1.0);
        let mut keyed: Vec<(f64, &GeoDc)> = Vec::new();
        for envelope in boxes(lat_e6, lon_e6, radius_m) {
            for dc in self.tree.locate_in_envelope(envelope) {
                let key = chord2(&at, &dc.unit);
                if key <= within {
                    keyed.push((key, dc));
                }
            }
        }
        if keyed.len() > limit {
            // The nearest `limit` by key, and whatever lies within two metres of the last of
            // them: it may round to the same metre and win the tie by id.
            let (_, kth, _) = keyed.select_nth_unstable_by(limit - 1, |a, b| a.0.total_cmp(&b.0));
            let reach = chord2_of_m(m_of_chord2(kth.0) + 2.0);
            keyed.retain(|(key, _)| *key <= reach);
        }
        let mut found: Vec<(&GeoDc, u64)> = keyed
            .into_iter()
            .map(|(key, dc)| (dc, metres(key)))
            .filter(|(_, d)| *d <= u64::from(radius_m))
            .collect();
        found.sort_unstable_by_key(|(dc, d)| (*d, dc.dc));
        // Boxes never overlap, but a DC must count once whatever they do.
        found.dedup_by_key(|(dc, _)| dc.dc);
        found.truncate(limit);
        found
            .into_iter()
            .map(|(dc, d)| (dc.record.clone(), d))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dc(dc: u32, lat: f64, lon: f64) -> DcRecord {
        DcRecord {
            dc,
            name: format!("dc {dc}"),
            lat_e6: (lat * 1e6).round() as i32,
            lon_e6: (lon * 1e6).round() as i32,
            region: 0,
            active: true,
        }
    }

    fn e6(x: f64) -> i32 {
        (x * 1e6).round() as i32
    }

    #[test]
    fn distances_are_great_circle_metres() {
        // Berlin - Paris: about 878 km.
        let d = distance_m(e6(52.52), e6(13.405), e6(48.8566), e6(2.3522));
        assert!((876_000..=880_000).contains(&d), "{d}");
        assert_eq!(distance_m(e6(10.0), e6(20.0), e6(10.0), e6(20.0)), 0);
        // Across the antimeridian: 0.02 degrees of longitude at the equator, about 2.2 km.
        let d = distance_m(0, e6(179.99), 0, e6(-179.99));
        assert!((2_200..=2_250).contains(&d), "{d}");
        // Pole to pole.
        let d = distance_m(e6(90.0), 0, e6(-90.0), e6(123.0));
        assert_eq!(d, libm::round(EARTH_RADIUS_M * std::f64::consts::PI) as u64);
    }

    #[test]
    fn nearest_first_ties_by_id_inactive_left_out() {
        let mut dcs = vec![
            dc(3, 52.52, 13.41),
            dc(1, 52.52, 13.41),
            dc(2, 52.50, 13.40),
            dc(4, 48.85, 2.35),
        ];
        dcs.push(DcRecord {
            active: false,
            ..dc(5, 52.52, 13.405)
        });
        let index = NearbyIndex::build(&dcs, 1);
        let found = index.find(e6(52.52), e6(13.405), 10_000, 10);
        let ids: Vec<u32> = found.iter().map(|n| n.dc).collect();
        assert_eq!(ids, vec![1, 3, 2]);
        assert_eq!(found[0].distance_m, found[1].distance_m);
        assert!(index.find(e6(52.52), e6(13.405), 10_000, 2).len() == 2);
        // Far from every DC: nothing.
        assert!(index.find(e6(-40.0), e6(-100.0), 100_000, 10).is_empty());
    }

    #[test]
    fn circles_across_the_antimeridian_and_over_the_poles() {
        let dcs = vec![
            dc(1, 0.0, 179.995),
            dc(2, 0.0, -179.995),
            dc(3, 89.99, 0.0),
            dc(4, 89.99, 180.0),
            dc(5, -89.995, 45.0),
        ];
        let index = NearbyIndex::build(&dcs, 1);
        let ids = |lat, lon, r| -> Vec<u32> {
            index
                .find(e6(lat), e6(lon), r, 10)
                .iter()
                .map(|n| n.dc)
                .collect()
        };
        assert_eq!(ids(0.0, 180.0, 2_000), vec![1, 2]);
        assert_eq!(ids(0.0, -179.999, 2_000), vec![2, 1]);
        assert_eq!(ids(90.0, 0.0, 5_000), vec![3, 4]);
        assert_eq!(ids(-90.0, -135.0, 1_000), vec![5]);
    }

    #[test]
    fn the_index_agrees_with_a_scan_of_every_dc() {
        // A seeded cloud of DCs around a few places, the antimeridian and a pole.
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let centres = [(52.5, 13.4), (0.0, 179.9), (89.9, 10.0), (-33.9, 151.2)];
        let mut dcs = Vec::new();
        for i in 0..2_000u32 {
            let (lat, lon) = centres[i as usize % centres.len()];
            let dlat = (next() % 2_000_000) as f64 / 1e6 - 1.0;
            let dlon = (next() % 4_000_000) as f64 / 1e6 - 2.0;
            let lon = ((lon + dlon + 540.0) % 360.0) - 180.0;
            dcs.push(dc(i + 1, (lat + dlat).clamp(-90.0, 90.0), lon));
        }
        let index = NearbyIndex::build(&dcs, 1);
        for _ in 0..500 {
            let (lat, lon) = centres[(next() % 4) as usize];
            let lat_e6 = e6(lat) + (next() % 3_000_000) as i32 - 1_500_000;
            let lat_e6 = lat_e6.clamp(-90_000_000, 90_000_000);
            let lon_e6 = e6(lon) + (next() % 5_000_000) as i32 - 2_500_000;
            let lon_e6 = if lon_e6 > 180_000_000 {
                lon_e6 - 360_000_000
            } else {
                lon_e6
            };
            let radius = (next() % 200_000) as u32 + 1;
            let mut want: Vec<Nearby> = dcs
                .iter()
                .map(|d| Nearby {
                    dc: d.dc,
                    distance_m: distance_m(lat_e6, lon_e6, d.lat_e6, d.lon_e6),
                })
                .filter(|n| n.distance_m <= u64::from(radius))
                .collect();
            want.sort_by_key(|n| (n.distance_m, n.dc));
            want.truncate(25);
            assert_eq!(index.find(lat_e6, lon_e6, radius, 25), want);
        }
    }

    #[test]
    fn the_cut_at_limit_keeps_every_tie_by_metre() {
        // 200 DCs about 5 km north, 2 micro-degrees (about 0.22 m) apart, ids in reverse of
        // distance, and 20 more on one spot: many round to the same metre around any cut.
        let mut dcs: Vec<DcRecord> = (0..200u32)
            .map(|i| DcRecord {
                dc: 1_000 - i,
                name: String::new(),
                lat_e6: 45_000_000 + (5_000.0 / 0.111_195) as i32 + 2 * i as i32,
                lon_e6: 7_000_000,
                region: 0,
                active: true,
            })
            .collect();
        for i in 0..20u32 {
            let mut d = dcs[100].clone();
            d.dc = 2_000 + (i * 7919) % 20;
            dcs.push(d);
        }
        let index = NearbyIndex::build(&dcs, 1);
        for limit in 1..=240 {
            let mut want: Vec<Nearby> = dcs
                .iter()
                .map(|d| Nearby {
                    dc: d.dc,
                    distance_m: distance_m(45_000_000, 7_000_000, d.lat_e6, d.lon_e6),
                })
                .collect();
            want.sort_by_key(|n| (n.distance_m, n.dc));
            want.truncate(limit);
            assert_eq!(
                index.find(45_000_000, 7_000_000, 10_000, limit),
                want,
                "limit {limit}"
            );
        }
    }
}
