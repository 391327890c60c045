//! The read handlers of the `Ordo` service: stock, availability, orders. They read this
//! node's applied state after the barrier the request's consistency asks for; a multi-row read
//! reads every row at one epoch.

use std::collections::BTreeSet;

use ordo_proto::v1;
use ordo_scheduler::reads;
use tonic::{Request, Response, Status};

use super::{internal, OrdoService};
use crate::convert;

/// Orders in a ListOrders page when the request names no limit.
const LIST_ORDERS_DEFAULT: usize = 100;

impl OrdoService {
    pub(super) async fn list_orders_inner(
        &self,
        request: Request<v1::ListOrdersRequest>,
    ) -> Result<Response<v1::ListOrdersResponse>, Status> {
        let r = request.into_inner();
        let limit = match r.limit {
            0 => LIST_ORDERS_DEFAULT,
            n if n as usize <= self.limits.list_orders_max => n as usize,
            n => {
                return Err(Status::invalid_argument(format!(
                    "list_orders: limit must be 1 to {}, not {n}",
                    self.limits.list_orders_max
                )))
            }
        };
        self.read_barrier(r.consistency, r.at_least_epoch).await?;
        let store = &self.node.store;
        // One more than asked, to know whether another page follows.
        let (epoch, mut orders) = store.consistent(|epoch| {
            reads::orders_after(store, r.after_order_id, limit + 1)
                .map(|o| (epoch, o))
                .map_err(internal)
        })?;
        let next_after_order_id = if orders.len() > limit {
            orders.truncate(limit);
            orders.last().map(|o| o.order_id).unwrap_or(0)
        } else {
            0
        };
        Ok(Response::new(v1::ListOrdersResponse {
            orders: orders.iter().map(convert::order).collect(),
            next_after_order_id,
            epoch,
        }))
    }

    pub(super) async fn get_stock_inner(
        &self,
        request: Request<v1::GetStockRequest>,
    ) -> Result<Response<v1::GetStockResponse>, Status> {
        let r = request.into_inner();
        self.read_barrier(r.consistency, r.at_least_epoch).await?;
        let dc = self.known_dc(r.dc_id, "get_stock")?;
        self.known_sku(r.sku, "get_stock")?;
        let store = &self.node.store;
        let (epoch, stock) = store.consistent(|epoch| {
            reads::stock(store, &dc, r.sku)
                .map(|s| (epoch, s))
                .map_err(internal)
        })?;
        Ok(Response::new(v1::GetStockResponse {
            dc_id: r.dc_id,
            sku: r.sku,
            on_hand: stock.on_hand,
            reserved: stock.reserved,
            available: stock.available(),
            epoch,
        }))
    }

    pub(super) async fn get_order_inner(
        &self,
        request: Request<v1::GetOrderRequest>,
    ) -> Result<Response<v1::GetOrderResponse>, Status> {
        let r = request.into_inner();
        let order_id = r.order_id;
        if order_id == 0 {
            return Err(Status::invalid_argument(
                "get_order: order_id must be non-zero",
            ));
        }
        self.read_barrier(r.consistency, r.at_least_epoch).await?;
        self.wait_for_id_epoch(order_id).await?;
        let order = reads::order(&self.node.store, order_id)
            .map_err(internal)?
            .ok_or_else(|| Status::not_found(format!("order {order_id} does not exist")))?;
        Ok(Response::new(v1::GetOrderResponse {
            order: Some(convert::order(&order)),
        }))
    }

    pub(super) async fn get_availability_inner(
        &self,
        request: Request<v1::GetAvailabilityRequest>,
    ) -> Result<Response<v1::GetAvailabilityResponse>, Status> {
        let r = request.into_inner();
        let limits = &self.limits;
        if r.dc_ids.is_empty() || r.dc_ids.len() > limits.availability_dcs_max {
            return Err(Status::invalid_argument(format!(
                "get_availability: between 1 and {} dc_ids, not {}",
                limits.availability_dcs_max,
                r.dc_ids.len()
            )));
        }
        if r.skus.is_empty() || r.skus.len() > limits.availability_skus_max {
            return Err(Status::invalid_argument(format!(
                "get_availability: between 1 and {} skus, not {}",
                limits.availability_skus_max,
                r.skus.len()
            )));
        }
        if r.dc_ids.iter().collect::<BTreeSet<_>>().len() != r.dc_ids.len()
            || r.skus.iter().collect::<BTreeSet<_>>().len() != r.skus.len()
        {
            return Err(Status::invalid_argument(
                "get_availability: dc_ids and skus must not repeat",
            ));
        }
        self.read_barrier(r.consistency, r.at_least_epoch).await?;
        let dcs = r
            .dc_ids
            .iter()
            .enumerate()
            .map(|(i, &dc)| self.known_dc(dc, &format!("dc_ids[{i}]")))
            .collect::<Result<Vec<_>, _>>()?;
        for (i, &sku) in r.skus.iter().enumerate() {
            self.known_sku(sku, &format!("skus[{i}]"))?;
        }
        // Every row from one epoch: the answer is a snapshot at a point of the serial order.
        let store = &self.node.store;
        let rows = dcs.len() * r.skus.len();
        let (epoch, items) = self.consistent_sized(rows, |epoch| {
            let mut stocks = reads::Stocks::new(store);
            let mut items = Vec::with_capacity(r.skus.len());
            for &sku in &r.skus {
                let mut per_dc = Vec::with_capacity(dcs.len());
                for dc in &dcs {
                    let stock = stocks.get(dc, sku).map_err(internal)?;
                    per_dc.push(v1::DcAvailability {
                        dc_id: dc.dc,
                        on_hand: stock.on_hand,
                        reserved: stock.reserved,
                        available: stock.available(),
                    });
                }
                items.push(v1::SkuAvailability {
                    sku,
                    available_total: per_dc.iter().map(|d| d.available).sum(),
                    dcs: per_dc,
                });
            }
            Ok::<_, Status>((epoch, items))
        })?;
        Ok(Response::new(v1::GetAvailabilityResponse { epoch, items }))
    }
}
