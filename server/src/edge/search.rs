//! SearchItems: the catalogue's keyword index ([`crate::search`]) and, with a location, each
//! hit's availability over the stores near it, read like every other read: after the
//! consistency barrier, every row at one epoch.

use std::sync::Arc;

use ordo_proto::v1;
use ordo_scheduler::reads;
use tonic::{Request, Response, Status};

use super::indexes::Indexes;
use super::nearby::{point, radius};
use super::{internal, OrdoService};
use crate::search::Rank;

/// Hits in a page when the request names no limit, and at most.
const SEARCH_LIMIT_DEFAULT: usize = 20;
const SEARCH_LIMIT_MAX: usize = 100;
/// Stores counted for a hit's availability nearby: the nearest this many.
const SEARCH_STORES_MAX: usize = 100;
/// Matching items one page looks at when filtering to those in stock nearby. A page that
/// reaches it may hold fewer than `limit` items; its token continues the scan.
const SEARCH_SCAN_MAX: usize = 2_000;

impl OrdoService {
    pub(super) async fn search_items_inner(
        &self,
        request: Request<v1::SearchItemsRequest>,
    ) -> Result<Response<v1::SearchItemsResponse>, Status> {
        let r = request.into_inner();
        let field = "search_items";
        let near = match r.near {
            true => Some((point(r.lat, r.lon, field)?, radius(r.radius_m, field)?)),
            false => None,
        };
        if r.in_stock_only && near.is_none() {
            return Err(Status::invalid_argument(format!(
                "{field}: in_stock_only needs a location (near, lat, lon)"
            )));
        }
        let limit = match r.limit as usize {
            0 => SEARCH_LIMIT_DEFAULT,
            n if n <= SEARCH_LIMIT_MAX => n,
            n => {
                return Err(Status::invalid_argument(format!(
                    "{field}: limit must be at most {SEARCH_LIMIT_MAX}, not {n}"
                )))
            }
        };
        let after = match r.page_token.as_str() {
            "" => None,
            token => Some(Rank::parse(token).ok_or_else(|| {
                Status::invalid_argument(format!(
                    "{field}: page_token {token:?} is not one this server gave"
                ))
            })?),
        };
        self.read_barrier(r.consistency, r.at_least_epoch).await?;
        let store = &self.node.store;
        // The indexes are built, and the query matched, before the read's epoch is taken; at
        // it, the same index is used again unless the names changed in between.
        let query = |e: String| Status::invalid_argument(format!("{field}: {e}"));
        let needs = Indexes {
            nearby: near.is_some(),
            search: true,
        };
        let warm = self.search_index_warm().await?;
        let warm_hits = warm.search(&r.query).map_err(query)?;
        // Each hit looked at reads every store near the point.
        let rows = match near {
            Some(_) => SEARCH_SCAN_MAX.saturating_mul(SEARCH_STORES_MAX),
            None => limit,
        };
        self.consistent_indexed(needs, rows, |epoch| {
            let index = self.search_index(store)?;
            let fresh;
            let hits = match Arc::ptr_eq(&index, &warm) {
                true => &warm_hits,
                false => {
                    fresh = index.search(&r.query).map_err(query)?;
                    &fresh
                }
            };
            let start = after.map_or(0, |after| hits.partition_point(|(rank, _)| *rank <= after));
            let stores = match near {
                Some((at, radius_m)) => self.nearby_dcs(store, at, radius_m, SEARCH_STORES_MAX)?,
                None => Vec::new(),
            };
            let mut stocks = reads::Stocks::new(store);
            let mut items = Vec::with_capacity(limit);
            let mut last: Option<Rank> = None;
            let mut scanned = 0;
            for (rank, entry) in &hits[start..] {
                if items.len() == limit || scanned == SEARCH_SCAN_MAX {
                    break;
                }
                scanned += 1;
                last = Some(*rank);
                let (mut available, mut with_stock) = (0i64, 0u32);
                for (dc, _) in &stores {
                    let units = stocks.get(dc, entry.sku).map_err(internal)?.available();
                    available = available.saturating_add(units);
                    with_stock += u32::from(units > 0);
                }
                if r.in_stock_only && available == 0 {
                    continue;
                }
                // The price as of this epoch: the index follows the names, not the prices.
                let price_cents = reads::item(store, entry.sku)
                    .map_err(internal)?
                    .map_or(entry.price_cents, |item| item.price_cents);
                items.push(v1::SearchHit {
                    sku: entry.sku,
                    name: entry.name.clone(),
                    price_cents,
                    score: rank.score(),
                    available_nearby: available,
                    stores_with_stock: with_stock,
                });
            }
            let more = start + scanned < hits.len();
            Ok(Response::new(v1::SearchItemsResponse {
                items,
                next_page_token: match (more, last) {
                    (true, Some(last)) => last.token(),
                    _ => String::new(),
                },
                epoch,
                stores_nearby: stores.len() as u32,
            }))
        })
        .await
    }
}
