//! The `inventory` workload's nearby (split-fill) orders: where its DCs stand, the points
//! `PlaceOrderNearby` orders are placed at, and how one is generated, run and recorded.
//! [`crate::split`] checks what they record.
//!
//! The four DCs stand within about 4 km of one another (in Berlin), so a circle of a few km
//! around a point holds three or four of them, and an order the nearest store cannot fill
//! alone is split over several. Each order goes to one of three points, each with its radius;
//! every DC is at least [`RADIUS_MARGIN_M`] inside or outside each circle, so the candidate
//! stores the runner records are the ones the server resolves.
//!
//! History shape (added to [`crate::inventory`]'s):
//! - `f = "nearby-order"`: invoke `{"request_id", "at", "lat", "lon", "radius_m", "lines":
//!   [[sku, qty], ...], "policy": "fewest-dcs" | "nearest-first", "max_dcs", "partial",
//!   "candidates": [dc, ...]}` (candidates nearest first, as the runner computes them);
//! - `ok` (committed) adds `{"order_id", "epoch", "allocated": [[dc, sku, allocated,
//!   available], ...], "shipments": [[dc, [[sku, qty], ...]], ...]}`;
//! - `fail` adds `{"reason", "code"}` (rejected) or `{"error": "not-applied"}`;
//! - `info` carries the invocation's value, like every other operation's.

use ordo_client::{v1, Client};
use serde_json::{json, Value};

use crate::history::EventType;
use crate::runner::Rng;

/// Each DC's place, `(dc, lat, lon)` in degrees: DC 2 about 2.2 km north of DC 1, DC 3 about
/// 4.1 km east of it, DC 4 about 2.2 km south-west.
const DC_LOCATIONS: [(u32, f64, f64); 4] = [
    (1, 52.500, 13.400),
    (2, 52.520, 13.400),
    (3, 52.500, 13.460),
    (4, 52.485, 13.380),
];
/// Where nearby orders go, `(name, lat, lon, radius_m)`: the middle reaches all four DCs;
/// the west point DCs 4, 1 and 2; the east point DCs 3, 1 and 2.
const POINTS: [(&str, f64, f64, u32); 3] = [
    ("middle", 52.505, 13.415, 5_000),
    ("west", 52.492, 13.385, 4_500),
    ("east", 52.508, 13.450, 4_500),
];
/// No DC is nearer than this to the edge of any point's circle, so rounding (the server works
/// in micro-degrees and whole metres) cannot move a DC in or out.
const RADIUS_MARGIN_M: f64 = 200.0;
/// The mean Earth radius (IUGG), metres: what the server's distances use.
const EARTH_RADIUS_M: f64 = 6_371_008.8;
/// Fifths of the inventory workload's order operations that are nearby orders.
pub const NEARBY_ORDER_FIFTHS: u64 = 1;
/// Most shipments a nearby order allows (its `max_dcs` is 1 to this).
const MAX_DCS_MAX: u64 = 3;
/// Most units of one SKU a nearby order asks for: more than a DC often has left, so orders
/// split.
const QTY_MAX: u64 = 6;
/// The user nearby orders are placed for.
const USER: &str = "jepsen";

/// Where DC `dc` stands, `(lat, lon)`; DCs the list does not name stand far away.
pub fn dc_location(dc: u32) -> (f64, f64) {
    DC_LOCATIONS
        .iter()
        .find(|d| d.0 == dc)
        .map_or((0.0, 0.0), |d| (d.1, d.2))
}

/// Great-circle metres between two points (haversine).
fn distance_m(lat_a: f64, lon_a: f64, lat_b: f64, lon_b: f64) -> f64 {
    let (phi_a, phi_b) = (lat_a.to_radians(), lat_b.to_radians());
    let d_phi = phi_b - phi_a;
    let d_lambda = (lon_b - lon_a).to_radians();
    let h =
        (d_phi / 2.0).sin().powi(2) + phi_a.cos() * phi_b.cos() * (d_lambda / 2.0).sin().powi(2);
    2.0 * EARTH_RADIUS_M * h.sqrt().asin()
}

/// The DCs within `radius_m` of a point, nearest first.
fn candidates(lat: f64, lon: f64, radius_m: u32) -> Vec<u32> {
    let mut near: Vec<(f64, u32)> = DC_LOCATIONS
        .iter()
        .map(|&(dc, dlat, dlon)| (distance_m(lat, lon, dlat, dlon), dc))
        .inspect(|&(d, dc)| {
            debug_assert!(
                (d - f64::from(radius_m)).abs() >= RADIUS_MARGIN_M,
                "dc {dc} is {d:.0} m from the point, too near the radius {radius_m} m to be sure \
                 the server counts it the same way"
            )
        })
        .filter(|&(d, _)| d <= f64::from(radius_m))
        .collect();
    near.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    near.into_iter().map(|(_, dc)| dc).collect()
}

/// A point nearby orders and holds go to: `(name, lat, lon, radius_m)`.
pub(crate) fn point(rng: &mut Rng) -> (&'static str, f64, f64, u32) {
    *rng.pick(&POINTS)
}

/// One nearby order, as it goes to the server (its request id kept across retries).
pub(crate) struct NearbyCall {
    request: v1::PlaceOrderNearbyRequest,
}

/// The next nearby order: `(invoke value, call)`. One or two SKUs, 1 to [`QTY_MAX`] units
/// each, either policy, `max_dcs` 1 to [`MAX_DCS_MAX`], a quarter of them PARTIAL.
pub(crate) fn next(rng: &mut Rng, request_id: String, skus: &[u32]) -> (Value, NearbyCall) {
    let (at, lat, lon, radius_m) = point(rng);
    let mut lines = vec![(*rng.pick(skus), 1 + rng.below(QTY_MAX) as i64)];
    if rng.below(3) == 0 {
        let sku = *rng.pick(skus);
        if lines.iter().all(|l| l.0 != sku) {
            lines.push((sku, 1 + rng.below(QTY_MAX / 2) as i64));
        }
    }
    let (policy, policy_name) = match rng.below(2) {
        0 => (v1::FillPolicy::FewestDcs, "fewest-dcs"),
        _ => (v1::FillPolicy::NearestFirst, "nearest-first"),
    };
    let max_dcs = 1 + rng.below(MAX_DCS_MAX) as u32;
    let partial = rng.below(4) == 0;
    let value = json!({"request_id": request_id, "at": at, "lat": lat, "lon": lon,
                       "radius_m": radius_m, "lines": lines, "policy": policy_name,
                       "max_dcs": max_dcs, "partial": partial,
                       "candidates": candidates(lat, lon, radius_m)});
    let request = v1::PlaceOrderNearbyRequest {
        request_id,
        user: USER.into(),
        lat,
        lon,
        radius_m,
        lines: lines
            .iter()
            .map(|&(sku, qty)| v1::ItemQty { sku, qty })
            .collect(),
        policy: policy as i32,
        max_dcs,
        mode: if partial {
            v1::OrderMode::Partial
        } else {
            v1::OrderMode::AllOrNothing
        } as i32,
    };
    (value, NearbyCall { request })
}

/// `value` with `extra`'s fields added.
pub(crate) fn with(value: &Value, extra: Value) -> Value {
    let mut v = value.clone();
    if let (Some(v), Value::Object(extra)) = (v.as_object_mut(), extra) {
        v.extend(extra);
    }
    v
}

/// Runs one nearby order: its completion type and value (see the module's history shape). A
/// refusal before sequencing is `fail`; any other error is `info`.
pub(crate) async fn execute(
    client: &Client,
    call: &NearbyCall,
    invoke: &Value,
) -> (EventType, Value) {
    let response = match client.place_order_nearby(call.request.clone()).await {
        Ok(r) => r,
        Err(e) if e.not_applied() => {
            return (
                EventType::Fail,
                with(invoke, json!({"error": "not-applied"})),
            )
        }
        Err(_) => return (EventType::Info, invoke.clone()),
    };
    let result = response.result.unwrap_or_default();
    match result.status() {
        v1::OrderStatus::Committed => {
            let allocated: Vec<Value> = result
                .lines
                .iter()
                .map(|l| json!([l.dc_id, l.sku, l.allocated, l.available]))
                .collect();
            let shipments: Vec<Value> = response
                .shipments
                .iter()
                .map(|s| {
                    let lines: Vec<Value> = s.lines.iter().map(|l| json!([l.sku, l.qty])).collect();
                    json!([s.dc_id, lines])
                })
                .collect();
            let extra = json!({"order_id": result.order_id, "epoch": result.epoch,
                               "allocated": allocated, "shipments": shipments});
            (EventType::Ok, with(invoke, extra))
        }
        v1::OrderStatus::Rejected => {
            let code = result
                .rejection
                .as_ref()
                .map_or("", |r| r.code().as_str_name())
                .trim_start_matches("REJECT_CODE_");
            let extra = json!({"reason": result.reason, "code": code});
            (EventType::Fail, with(invoke, extra))
        }
        // An answer with any other status says nothing definite.
        other => (
            EventType::Info,
            with(invoke, json!({"unexpected": other.as_str_name()})),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_point_reaches_several_dcs_and_no_dc_sits_on_a_circle_edge() {
        for &(at, lat, lon, radius_m) in &POINTS {
            for &(dc, dlat, dlon) in &DC_LOCATIONS {
                let d = distance_m(lat, lon, dlat, dlon);
                assert!(
                    (d - f64::from(radius_m)).abs() >= RADIUS_MARGIN_M,
                    "dc {dc} is {d:.0} m from {at}, too near its radius {radius_m} m"
                );
            }
            assert!(candidates(lat, lon, radius_m).len() >= 3, "{at}");
        }
        assert_eq!(candidates(52.505, 13.415, 5_000), [1, 2, 3, 4]);
        assert_eq!(candidates(52.492, 13.385, 4_500), [4, 1, 2]);
        assert_eq!(candidates(52.508, 13.450, 4_500), [3, 1, 2]);
        // About 2.2 km between DCs 1 and 2 (0.02 degrees of latitude).
        let d = distance_m(52.500, 13.400, 52.520, 13.400);
        assert!((d - 2_224.0).abs() < 5.0, "{d}");
    }
}
