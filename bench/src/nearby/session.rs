//! One client's connection for the nearby workloads, per target, and the answers every target
//! gives in the same shape. Ordo's adapter is here (its API resolves the stores itself);
//! PostgreSQL's and Redis's designs are in their own files.

use std::collections::BTreeMap;

use anyhow::Context;
use ordo_client::{v1, Client, Consistency};

use super::dataset::{NearbyDataset, RADIUS_M};
use super::fill::MAX_DCS;
use super::{postgres, redis, PgGeo};
use crate::targets::{in_parallel, upsert_bench_items, Endpoints, Target};
use crate::workload::Line;

/// Nearby availability answers count at most this many stores, nearest first (Ordo's default
/// and limit for GetNearbyAvailability; the baselines ask for the same).
pub const BROWSE_DCS_MAX: usize = 100;
/// A nearby order's candidate stores, nearest first, at most (Ordo's edge takes the nearest
/// 50; the baselines the same).
pub const ORDER_CANDIDATES_MAX: usize = 50;
/// Restocks and DC upserts in flight while loading Ordo.
const LOAD_CALLS_IN_FLIGHT: usize = 128;
/// DCs per GetAvailability call when reading the final stock back (the edge's limit).
const FINAL_DCS_PER_CALL: usize = 100;

/// One SKU's availability near a point.
#[derive(Clone, Debug, Default)]
pub struct SkuNearby {
    pub sku: u32,
    /// Units available over the stores counted, as the target summed them.
    pub available_total: i64,
    /// (dc, available) of the stores counted; a store without a row may be left out.
    pub rows: Vec<(u32, i64)>,
}

/// A nearby availability answer: the stores counted, nearest first, with their distance in
/// metres as the target measured it, and per requested SKU the total and the rows.
#[derive(Clone, Debug, Default)]
pub struct Availability {
    pub dcs: Vec<(u32, f64)>,
    pub items: Vec<SkuNearby>,
}

pub enum OrderOutcome {
    /// What was taken, (dc, sku, units) per store and SKU.
    Committed(Vec<Line>),
    Rejected(&'static str),
    Error(String),
}

/// Why a target cannot run the nearby workloads; `Ok` for those that can.
pub fn supported(target: Target) -> Result<(), String> {
    match target {
        Target::Ordo1
        | Target::Ordo3
        | Target::Postgres
        | Target::Redis
        | Target::RedisEverysec => Ok(()),
        Target::Ordo1Batch | Target::Ordo3Batch | Target::Ordo1Stream | Target::Ordo3Stream => {
            Err(target.orders_only("the nearby workloads"))
        }
        Target::PostgresCond => Err(
            "postgres-cond is an order design (one conditional UPDATE); the nearby workloads' \
             PostgreSQL design runs as `postgres`"
                .into(),
        ),
        Target::Etcd => Err("there is no etcd adapter for the nearby workloads".into()),
    }
}

pub enum NearbySession {
    Ordo(Client),
    Postgres(Box<postgres::PgNearby>),
    Redis(redis::RedisNearby),
}

impl NearbySession {
    /// Client number `index`'s session. Ordo clients are spread over a cluster's nodes and
    /// read at `Local` consistency, as the browse workload's do, so on ordo-3 two thirds of
    /// the reads are answered by followers.
    pub async fn open(ep: &Endpoints, index: usize, pg_geo: PgGeo) -> anyhow::Result<Self> {
        Ok(match ep.target {
            t if t.is_ordo() => {
                let mut urls = ep.urls.clone();
                urls.rotate_left(index % ep.urls.len());
                NearbySession::Ordo(
                    Client::connect_many(urls)
                        .await?
                        .with_consistency(Consistency::Local),
                )
            }
            Target::Postgres => NearbySession::Postgres(Box::new(
                postgres::PgNearby::open(&ep.urls[0], pg_geo).await?,
            )),
            Target::Redis | Target::RedisEverysec => {
                NearbySession::Redis(redis::RedisNearby::open(&ep.urls[0]).await?)
            }
            other => anyhow::bail!("{}", supported(other).err().unwrap_or_default()),
        })
    }

    /// Loads the DCs with their coordinates, the catalogue and the stocked rows.
    pub async fn load(&mut self, ep: &Endpoints, data: &NearbyDataset) -> anyhow::Result<()> {
        match self {
            NearbySession::Ordo(client) => ordo_load(client, ep, data).await,
            NearbySession::Postgres(pg) => pg.load(data).await,
            NearbySession::Redis(r) => r.load(data).await,
        }
    }

    /// The availability of `skus` at the stores within [`RADIUS_M`] of a point.
    pub async fn browse(
        &mut self,
        lat: f64,
        lon: f64,
        skus: &[u32],
    ) -> anyhow::Result<Availability> {
        match self {
            NearbySession::Ordo(client) => {
                let r = client
                    .get_nearby_availability(lat, lon, RADIUS_M, skus.to_vec())
                    .await?;
                Ok(Availability {
                    dcs: r
                        .dcs
                        .iter()
                        .map(|d| (d.dc_id, d.distance_m as f64))
                        .collect(),
                    items: r
                        .items
                        .into_iter()
                        .map(|item| SkuNearby {
                            sku: item.sku,
                            available_total: item.available_total,
                            rows: item.dcs.iter().map(|d| (d.dc_id, d.available)).collect(),
                        })
                        .collect(),
                })
            }
            NearbySession::Postgres(pg) => pg.browse(lat, lon, skus).await,
            NearbySession::Redis(r) => r.browse(lat, lon, skus).await,
        }
    }

    /// An all-or-nothing FEWEST_DCS order of `lines` (sku, qty) from at most [`MAX_DCS`]
    /// stores within [`RADIUS_M`] of a point.
    pub async fn order(&mut self, lat: f64, lon: f64, lines: &[(u32, i64)]) -> OrderOutcome {
        match self {
            NearbySession::Ordo(client) => ordo_order(client, lat, lon, lines).await,
            NearbySession::Postgres(pg) => pg.order(lat, lon, lines).await,
            NearbySession::Redis(r) => r.order(lat, lon, lines).await,
        }
    }

    /// Every (dc, sku) row's available units after the run (rows the target does not have
    /// are left out).
    pub async fn final_stock(
        &mut self,
        data: &NearbyDataset,
    ) -> anyhow::Result<BTreeMap<(u32, u32), i64>> {
        match self {
            NearbySession::Ordo(client) => ordo_final_stock(client, data).await,
            NearbySession::Postgres(pg) => pg.final_stock().await,
            NearbySession::Redis(r) => r.final_stock(data).await,
        }
    }
}

async fn ordo_order(client: &Client, lat: f64, lon: f64, lines: &[(u32, i64)]) -> OrderOutcome {
    let request = v1::PlaceOrderNearbyRequest {
        lat,
        lon,
        radius_m: RADIUS_M,
        lines: lines
            .iter()
            .map(|&(sku, qty)| v1::ItemQty { sku, qty })
            .collect(),
        policy: v1::FillPolicy::FewestDcs as i32,
        max_dcs: MAX_DCS as u32,
        mode: v1::OrderMode::AllOrNothing as i32,
        ..Default::default()
    };
    let response = match client.place_order_nearby(request).await {
        Ok(r) => r,
        Err(e) => return OrderOutcome::Error(e.to_string()),
    };
    let Some(result) = response.result else {
        return OrderOutcome::Error("PlaceOrderNearby answered without a result".into());
    };
    if result.status() == v1::OrderStatus::Committed {
        OrderOutcome::Committed(
            result
                .lines
                .iter()
                .filter(|l| l.allocated > 0)
                .map(|l| (l.dc_id, l.sku, l.allocated))
                .collect(),
        )
    } else {
        OrderOutcome::Rejected(match result.rejection.map(|r| r.code()) {
            Some(v1::RejectCode::InsufficientStock) => "insufficient-stock",
            _ => "other-rejection",
        })
    }
}

async fn ordo_load(client: &Client, ep: &Endpoints, data: &NearbyDataset) -> anyhow::Result<()> {
    in_parallel(
        LOAD_CALLS_IN_FLIGHT,
        data.sites.iter().map(|site| {
            let client = client.clone();
            let dc = v1::Dc {
                dc_id: site.dc,
                name: format!("bench dark store {}", site.dc),
                lat: site.lat,
                lon: site.lon,
                region: Some(site.region),
                active: true,
            };
            async move {
                client.upsert_dc(dc).await?;
                Ok(())
            }
        }),
    )
    .await
    .context("upserting the DCs")?;
    upsert_bench_items(client, data.skus, LOAD_CALLS_IN_FLIGHT)
        .await
        .context("upserting the items")?;
    in_parallel(
        LOAD_CALLS_IN_FLIGHT,
        data.rows().map(|(dc, sku, units)| {
            let client = client.clone();
            async move {
                let r = client.restock(dc, sku, units, None).await?;
                anyhow::ensure!(r.applied, "restock of dc {dc} sku {sku} refused");
                Ok(())
            }
        }),
    )
    .await
    .context("restocking")?;
    // Every node has applied the load before the clients start: a linearizable read on each
    // waits for that node to catch up with the leader's commit.
    for url in &ep.urls {
        let node = Client::connect(url.clone())
            .await?
            .with_consistency(Consistency::Linearizable);
        let site = &data.sites[0];
        node.find_nearby_dcs(site.lat, site.lon, RADIUS_M, 1)
            .await
            .with_context(|| format!("waiting for {url} to apply the load"))?;
    }
    Ok(())
}

async fn ordo_final_stock(
    client: &Client,
    data: &NearbyDataset,
) -> anyhow::Result<BTreeMap<(u32, u32), i64>> {
    // Confirmed with the leader, so a follower's lag cannot pass for a lost decrement.
    let client = client.clone().with_consistency(Consistency::Linearizable);
    let dcs: Vec<u32> = (1..=data.dcs()).collect();
    let skus: Vec<u32> = (1..=data.skus).collect();
    let mut out = BTreeMap::new();
    for chunk in dcs.chunks(FINAL_DCS_PER_CALL) {
        let answer = client
            .get_availability(chunk.to_vec(), skus.clone())
            .await
            .context("reading availability")?;
        for item in answer.items {
            for dc in item.dcs {
                out.insert((dc.dc_id, item.sku), dc.available);
            }
        }
    }
    Ok(out)
}
