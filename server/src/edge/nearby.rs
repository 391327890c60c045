//! Reads near a point: the DCs around it and their availability. They use the node's nearby
//! index ([`crate::geo`]), a cache of the DC table at the edge, and read stock like every
//! other read: after the consistency barrier, every row at one epoch.

use std::collections::BTreeSet;
use std::sync::Arc;

use ordo_proto::v1;
use ordo_scheduler::{reads, DcRecord};
use ordo_storage::Store;
use tonic::{Request, Response, Status};

use super::indexes::Indexes;
use super::{internal, OrdoService};
use crate::geo::RADIUS_M_MAX;

/// The radius when a request names none, in metres.
const RADIUS_M_DEFAULT: u32 = 10_000;
/// DCs in a FindNearbyDcs answer when the request names no limit, and at most.
const NEARBY_DCS_DEFAULT: usize = 20;
const NEARBY_DCS_MAX: usize = 1_000;
/// DCs counted by GetNearbyAvailability when the request names no limit, and at most.
const AVAILABILITY_DCS_DEFAULT: usize = 100;

/// A point's coordinates in micro-degrees, refused unless finite and on the globe.
pub(super) fn point(lat: f64, lon: f64, field: &str) -> Result<(i32, i32), Status> {
    if !lat.is_finite() || !(-90.0..=90.0).contains(&lat) {
        return Err(Status::invalid_argument(format!(
            "{field}: lat must be between -90 and 90, not {lat}"
        )));
    }
    if !lon.is_finite() || !(-180.0..=180.0).contains(&lon) {
        return Err(Status::invalid_argument(format!(
            "{field}: lon must be between -180 and 180, not {lon}"
        )));
    }
    Ok(((lat * 1e6).round() as i32, (lon * 1e6).round() as i32))
}

pub(super) fn radius(radius_m: u32, field: &str) -> Result<u32, Status> {
    match radius_m {
        0 => Ok(RADIUS_M_DEFAULT),
        r if r <= RADIUS_M_MAX => Ok(r),
        r => Err(Status::invalid_argument(format!(
            "{field}: radius_m must be at most {RADIUS_M_MAX}, not {r}"
        ))),
    }
}

fn limit(given: u32, default: usize, max: usize, field: &str) -> Result<usize, Status> {
    match given as usize {
        0 => Ok(default),
        n if n <= max => Ok(n),
        n => Err(Status::invalid_argument(format!(
            "{field}: the limit is 1 to {max}, not {n}"
        ))),
    }
}

fn nearby_dc(dc: &DcRecord, distance_m: u64) -> v1::NearbyDc {
    v1::NearbyDc {
        dc_id: dc.dc,
        name: dc.name.clone(),
        lat: f64::from(dc.lat_e6) / 1e6,
        lon: f64::from(dc.lon_e6) / 1e6,
        region: dc.region,
        distance_m,
    }
}

impl OrdoService {
    /// The DCs near a point with their records, nearest first, as of the epoch the closure of
    /// [`Store::consistent`] runs at.
    pub(super) fn nearby_dcs(
        &self,
        store: &Store,
        at: (i32, i32),
        radius_m: u32,
        limit: usize,
    ) -> Result<Vec<(Arc<DcRecord>, u64)>, Status> {
        let index = self.nearby_index(store)?;
        Ok(index.find_records(at.0, at.1, radius_m, limit))
    }

    pub(super) async fn find_nearby_dcs_inner(
        &self,
        request: Request<v1::FindNearbyDcsRequest>,
    ) -> Result<Response<v1::FindNearbyDcsResponse>, Status> {
        let r = request.into_inner();
        let field = "find_nearby_dcs";
        let at = point(r.lat, r.lon, field)?;
        let radius_m = radius(r.radius_m, field)?;
        let limit = limit(r.limit, NEARBY_DCS_DEFAULT, NEARBY_DCS_MAX, field)?;
        self.read_barrier(r.consistency, r.at_least_epoch).await?;
        let store = &self.node.store;
        let (epoch, dcs) = self
            .consistent_indexed(Indexes::NEARBY, limit, |epoch| {
                self.nearby_dcs(store, at, radius_m, limit)
                    .map(|dcs| (epoch, dcs))
            })
            .await?;
        Ok(Response::new(v1::FindNearbyDcsResponse {
            dcs: dcs.iter().map(|(dc, d)| nearby_dc(dc, *d)).collect(),
            epoch,
        }))
    }

    pub(super) async fn get_nearby_availability_inner(
        &self,
        request: Request<v1::GetNearbyAvailabilityRequest>,
    ) -> Result<Response<v1::GetNearbyAvailabilityResponse>, Status> {
        let r = request.into_inner();
        let field = "get_nearby_availability";
        let at = point(r.lat, r.lon, field)?;
        let radius_m = radius(r.radius_m, field)?;
        let dcs_limit = limit(
            r.dcs_limit,
            AVAILABILITY_DCS_DEFAULT,
            self.limits.availability_dcs_max,
            field,
        )?;
        if r.skus.is_empty() || r.skus.len() > self.limits.availability_skus_max {
            return Err(Status::invalid_argument(format!(
                "{field}: between 1 and {} skus, not {}",
                self.limits.availability_skus_max,
                r.skus.len()
            )));
        }
        if r.skus.iter().collect::<BTreeSet<_>>().len() != r.skus.len() {
            return Err(Status::invalid_argument(format!(
                "{field}: skus must not repeat"
            )));
        }
        for (i, &sku) in r.skus.iter().enumerate() {
            self.known_sku(sku, &format!("{field}.skus[{i}]"))?;
        }
        self.read_barrier(r.consistency, r.at_least_epoch).await?;
        let store = &self.node.store;
        // The DCs and every row from one epoch.
        let rows = dcs_limit.saturating_mul(r.skus.len());
        let (epoch, dcs, items) = self
            .consistent_indexed(Indexes::NEARBY, rows, |epoch| {
                let dcs = self.nearby_dcs(store, at, radius_m, dcs_limit)?;
                let mut stocks = reads::Stocks::new(store);
                let mut items: Vec<v1::NearbySkuAvailability> = r
                    .skus
                    .iter()
                    .map(|&sku| v1::NearbySkuAvailability {
                        sku,
                        available_total: 0,
                        dcs: Vec::with_capacity(dcs.len()),
                    })
                    .collect();
                // Store by store: one store's rows sit together in memory.
                for (dc, distance_m) in &dcs {
                    for item in &mut items {
                        let stock = stocks.get(dc, item.sku).map_err(internal)?;
                        item.available_total += stock.available();
                        item.dcs.push(v1::NearbyDcAvailability {
                            dc_id: dc.dc,
                            distance_m: *distance_m,
                            on_hand: stock.on_hand,
                            reserved: stock.reserved,
                            available: stock.available(),
                        });
                    }
                }
                Ok::<_, Status>((epoch, dcs, items))
            })
            .await?;
        Ok(Response::new(v1::GetNearbyAvailabilityResponse {
            epoch,
            dcs: dcs.iter().map(|(dc, d)| nearby_dc(dc, *d)).collect(),
            items,
        }))
    }
}
