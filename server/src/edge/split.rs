//! Writes filled from nearby stores: PlaceOrderNearby and ReserveNearby. The edge turns the
//! user's point into the ordered list of candidate stores (its nearby index, nearest first);
//! execution picks the shipments from that list by the fill policy, with integers only
//! (`ordo_scheduler`'s `fill`). The answer groups what was taken by store.

use std::collections::BTreeSet;

use ordo_proto::v1;
use ordo_scheduler::{
    validate, FillPolicy, LineAlloc, Mode, Nearby, Op, Outcome, SkuQty, Txn, TxnResult,
};
use tonic::{Request, Response, Status};

use super::nearby::{point, radius};
use super::{is_retry, order_mode, OrdoService};
use crate::{convert, geo};

/// The candidate stores of a nearby write: the nearest this many within the radius.
const CANDIDATES_MAX: usize = validate::NEARBY_CANDIDATES_MAX;

fn reused(result: &TxnResult, expected: &str) -> Status {
    Status::already_exists(format!(
        "request_id {:?} was already used for a different request than {expected}; use a new \
         request_id",
        result.request_id
    ))
}

fn policy(policy: i32, field: &str) -> Result<FillPolicy, Status> {
    match v1::FillPolicy::try_from(policy) {
        Ok(v1::FillPolicy::Unspecified | v1::FillPolicy::FewestDcs) => Ok(FillPolicy::FewestDcs),
        Ok(v1::FillPolicy::NearestFirst) => Ok(FillPolicy::NearestFirst),
        Err(_) => Err(Status::invalid_argument(format!(
            "{field}: unknown fill policy {policy}"
        ))),
    }
}

/// What a nearby request asks, before the edge resolves its candidates.
struct Ask<'a> {
    lat: f64,
    lon: f64,
    radius_m: u32,
    lines: &'a [v1::ItemQty],
    policy: i32,
    max_dcs: u32,
}

impl OrdoService {
    /// Validates a nearby request and resolves its candidate stores.
    fn nearby(&self, ask: Ask<'_>, field: &str) -> Result<Nearby, Status> {
        let (lat_e6, lon_e6) = point(ask.lat, ask.lon, field)?;
        let radius_m = radius(ask.radius_m, field)?;
        let policy = policy(ask.policy, field)?;
        let max_dcs = match ask.max_dcs as usize {
            0 => CANDIDATES_MAX as u32,
            n if n <= CANDIDATES_MAX => ask.max_dcs,
            n => {
                return Err(Status::invalid_argument(format!(
                    "{field}: max_dcs must be at most {CANDIDATES_MAX}, not {n}"
                )))
            }
        };
        if ask.lines.is_empty() || ask.lines.len() > validate::NEARBY_LINES_MAX {
            return Err(Status::invalid_argument(format!(
                "{field}: 1 to {} lines, not {}",
                validate::NEARBY_LINES_MAX,
                ask.lines.len()
            )));
        }
        let mut seen = BTreeSet::new();
        let mut lines = Vec::with_capacity(ask.lines.len());
        for (i, line) in ask.lines.iter().enumerate() {
            let at = format!("{field}.lines[{i}]");
            if line.qty <= 0 || line.qty > self.limits.qty_per_line_max {
                return Err(Status::invalid_argument(format!(
                    "{at}: qty must be between 1 and {}, not {}",
                    self.limits.qty_per_line_max, line.qty
                )));
            }
            if !seen.insert(line.sku) {
                return Err(Status::invalid_argument(format!(
                    "{at}: sku {} appears twice; merge the quantities into one line",
                    line.sku
                )));
            }
            self.known_sku(line.sku, &at)?;
            lines.push(SkuQty {
                sku: line.sku,
                qty: line.qty,
            });
        }
        let index = self.nearby_index(&self.node.store)?;
        let candidates = index
            .find_records(lat_e6, lon_e6, radius_m, CANDIDATES_MAX)
            .iter()
            .map(|(dc, _)| dc.dc)
            .collect();
        Ok(Nearby {
            lines,
            lat_e6,
            lon_e6,
            radius_m,
            candidates,
            policy,
            max_dcs,
        })
    }

    /// What each store gives, nearest first, with its distance from the request's point
    /// (stores are looked up in the DC table as it is now: a retry's answer names the stores
    /// of the first allocation).
    fn shipments(&self, nearby: &Nearby, taken: &[LineAlloc]) -> Result<Vec<v1::Shipment>, Status> {
        let mut out: Vec<v1::Shipment> = Vec::new();
        for a in taken.iter().filter(|a| a.allocated > 0 && a.dc != 0) {
            if out.last().is_none_or(|s| s.dc_id != a.dc) {
                let dc = self.known_dc(a.dc, "shipment")?;
                out.push(v1::Shipment {
                    dc_id: a.dc,
                    name: dc.name,
                    distance_m: geo::distance_m(nearby.lat_e6, nearby.lon_e6, dc.lat_e6, dc.lon_e6),
                    lines: Vec::new(),
                });
            }
            if let Some(shipment) = out.last_mut() {
                shipment.lines.push(v1::ItemQty {
                    sku: a.sku,
                    qty: a.allocated,
                });
            }
        }
        out.sort_by_key(|s| (s.distance_m, s.dc_id));
        Ok(out)
    }

    pub(super) async fn place_order_nearby_unmarked(
        &self,
        request: Request<v1::PlaceOrderNearbyRequest>,
    ) -> Result<Response<v1::PlaceOrderNearbyResponse>, Status> {
        let retry = is_retry(&request);
        let r = request.into_inner();
        let field = "place_order_nearby";
        let request_id = self.request_id(r.request_id, field)?;
        self.user(&r.user, field)?;
        let mode = order_mode(r.mode, field)?;
        let nearby = self.nearby(
            Ask {
                lat: r.lat,
                lon: r.lon,
                radius_m: r.radius_m,
                lines: &r.lines,
                policy: r.policy,
                max_dcs: r.max_dcs,
            },
            field,
        )?;
        let txn = Txn {
            request_id,
            op: Op::PlaceOrderNearby {
                user: r.user,
                nearby: nearby.clone(),
                mode,
            },
        };
        let result = self.run(vec![txn], retry).await?.remove(0);
        let Outcome::Order { lines, .. } = &result.outcome else {
            return Err(reused(&result, "this nearby order"));
        };
        let shipments = self.shipments(&nearby, lines)?;
        let wire = convert::order_result(&result).ok_or_else(|| reused(&result, "an order"))?;
        Ok(Response::new(v1::PlaceOrderNearbyResponse {
            result: Some(wire),
            shipments,
        }))
    }

    pub(super) async fn reserve_nearby_unmarked(
        &self,
        request: Request<v1::ReserveNearbyRequest>,
    ) -> Result<Response<v1::ReserveNearbyResponse>, Status> {
        let retry = is_retry(&request);
        let r = request.into_inner();
        let field = "reserve_nearby";
        let request_id = self.request_id(r.request_id, field)?;
        self.user(&r.user, field)?;
        self.cart_id(&r.cart_id, field)?;
        let mode: Mode = order_mode(r.mode, field)?;
        let nearby = self.nearby(
            Ask {
                lat: r.lat,
                lon: r.lon,
                radius_m: r.radius_m,
                lines: &r.lines,
                policy: r.policy,
                max_dcs: r.max_dcs,
            },
            field,
        )?;
        let txn = Txn {
            request_id,
            op: Op::ReserveNearby {
                cart_id: r.cart_id,
                user: r.user,
                nearby: nearby.clone(),
                mode,
                ttl_ms: self.ttl_ms(r.ttl_s, field)?,
                // The cluster's life cap, resolved in execution.
                life_max_ms: 0,
            },
        };
        let result = self.run(vec![txn], retry).await?.remove(0);
        let Outcome::Reservation {
            reservation,
            rejection,
        } = &result.outcome
        else {
            return Err(reused(&result, "this nearby reservation"));
        };
        // What this request held: its lines' rows, as the reservation now holds them.
        let mut held: Vec<LineAlloc> = match (reservation, rejection) {
            (Some(record), None) => record
                .lines
                .iter()
                .map(|h| LineAlloc {
                    dc: h.dc,
                    sku: h.sku,
                    requested: h.requested,
                    allocated: h.held,
                    available: 0,
                })
                .filter(|h| nearby.lines.iter().any(|l| l.sku == h.sku))
                .collect(),
            _ => Vec::new(),
        };
        held.sort_by_key(|h| h.dc);
        Ok(Response::new(v1::ReserveNearbyResponse {
            reservation: Some(convert::reservation(
                reservation.as_ref(),
                rejection.as_ref(),
                result.epoch,
                None,
            )),
            shipments: self.shipments(&nearby, &held)?,
        }))
    }
}
