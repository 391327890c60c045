//! The write handlers of the `Ordo` service: orders, restocks, transfers, DC and catalogue
//! upserts, key-value transactions. Each validates its request, turns it into a transaction
//! and runs it through [`OrdoService::run`]; the `Ordo` impl in `mod.rs` marks their definite
//! failures.

use std::collections::BTreeSet;

use ordo_proto::v1;
use ordo_scheduler::{model, reads, validate, Op, Outcome, Txn, TxnResult};
use tonic::{Request, Response, Status};

use super::{internal, is_retry, OrdoService};
use crate::convert;

/// Whether an order's result belongs to this order request: the same lines (DC, SKU and
/// requested quantity, in order). A result without lines (rejected before allocation) cannot
/// tell and is accepted.
fn same_order(txn: &Txn, result: &v1::OrderResult) -> bool {
    let Op::PlaceOrder { lines, .. } = &txn.op else {
        return false;
    };
    result.lines.is_empty()
        || (result.lines.len() == lines.len()
            && lines
                .iter()
                .zip(&result.lines)
                .all(|(l, r)| (l.dc, l.sku, l.qty) == (r.dc_id, r.sku, r.requested)))
}

/// The wire results of orders, refusing any whose request id belongs to another request.
fn order_results(txns: &[Txn], results: &[TxnResult]) -> Result<Vec<v1::OrderResult>, Status> {
    txns.iter()
        .zip(results)
        .map(|(txn, result)| {
            convert::order_result(result)
                .filter(|wire| same_order(txn, wire))
                .ok_or_else(|| reused(result, "this order"))
        })
        .collect()
}

/// A restock's wire result, refusing one whose request id belongs to another request.
fn restock_response(result: &TxnResult) -> Result<v1::RestockResponse, Status> {
    let Outcome::Restock { stock, rejection } = &result.outcome else {
        return Err(reused(result, "a restock"));
    };
    Ok(v1::RestockResponse {
        request_id: result.request_id.clone(),
        applied: rejection.is_none(),
        epoch: result.epoch,
        on_hand: stock.on_hand,
        reserved: stock.reserved,
        available: stock.available(),
        reason: rejection.map(|r| r.to_string()).unwrap_or_default(),
    })
}

/// A DC's restock's wire result, refusing one whose request id belongs to another request.
fn restock_dc_response(result: &TxnResult) -> Result<v1::RestockDcResponse, Status> {
    let Outcome::RestockedDc { rows, rejection } = &result.outcome else {
        return Err(reused(result, "a DC's restock"));
    };
    Ok(v1::RestockDcResponse {
        request_id: result.request_id.clone(),
        applied: rejection.is_none(),
        epoch: result.epoch,
        rows: *rows,
        rejected_sku: rejection.map(|r| r.sku).unwrap_or_default(),
        available: rejection.map(|r| r.available).unwrap_or_default(),
        reason: rejection.map(|r| r.to_string()).unwrap_or_default(),
    })
}

pub(super) fn reused(result: &TxnResult, expected: &str) -> Status {
    Status::already_exists(format!(
        "request_id {:?} was already used for a different request than {expected}; use a new request_id",
        result.request_id
    ))
}

/// The write handlers; the `Ordo` impl marks their definite failures ([`mark_definite`]).
impl OrdoService {
    pub(super) async fn place_order_unmarked(
        &self,
        request: Request<v1::PlaceOrderRequest>,
    ) -> Result<Response<v1::PlaceOrderResponse>, Status> {
        let retry = is_retry(&request);
        let result = self.place_one_order(request.into_inner(), retry).await?;
        Ok(Response::new(v1::PlaceOrderResponse { result }))
    }

    /// One order, as PlaceOrder and each order of an OrderStream place it.
    pub(super) async fn place_one_order(
        &self,
        order: v1::PlaceOrderRequest,
        retry: bool,
    ) -> Result<Option<v1::OrderResult>, Status> {
        let txns = vec![self.order_txn(order, "order")?];
        let results = self.run(txns.clone(), retry).await?;
        Ok(order_results(&txns, &results)?.pop())
    }

    pub(super) async fn place_orders_unmarked(
        &self,
        request: Request<v1::PlaceOrdersRequest>,
    ) -> Result<Response<v1::PlaceOrdersResponse>, Status> {
        let retry = is_retry(&request);
        let orders = request.into_inner().orders;
        let txns = self.batch_txns(orders, "orders", Self::order_txn)?;
        let results = self.run(txns.clone(), retry).await?;
        let results = order_results(&txns, &results)?;
        Ok(Response::new(v1::PlaceOrdersResponse { results }))
    }

    pub(super) async fn restock_unmarked(
        &self,
        request: Request<v1::RestockRequest>,
    ) -> Result<Response<v1::RestockResponse>, Status> {
        let retry = is_retry(&request);
        let txn = self.restock_txn(request.into_inner(), "restock")?;
        let result = self.run(vec![txn], retry).await?.remove(0);
        Ok(Response::new(restock_response(&result)?))
    }

    pub(super) async fn restocks_unmarked(
        &self,
        request: Request<v1::RestocksRequest>,
    ) -> Result<Response<v1::RestocksResponse>, Status> {
        let retry = is_retry(&request);
        let restocks = request.into_inner().restocks;
        let txns = self.batch_txns(restocks, "restocks", Self::restock_txn)?;
        let results = self.run(txns, retry).await?;
        let results = results
            .iter()
            .map(restock_response)
            .collect::<Result<_, _>>()?;
        Ok(Response::new(v1::RestocksResponse { results }))
    }

    /// The transactions of a batched call (PlaceOrders, Restocks), validated as a whole:
    /// between 1 and the batch limit of them, each one valid (`txn`), no request id twice.
    /// `what` names the list in errors (`orders`, `orders[3]`).
    fn batch_txns<T>(
        &self,
        items: Vec<T>,
        what: &str,
        txn: impl Fn(&Self, T, &str) -> Result<Txn, Status>,
    ) -> Result<Vec<Txn>, Status> {
        let max = self.limits.orders_per_call_max;
        if items.is_empty() || items.len() > max {
            return Err(Status::invalid_argument(format!(
                "{what}: between 1 and {max} {what} per call, not {}",
                items.len()
            )));
        }
        let mut txns = Vec::with_capacity(items.len());
        let mut ids = BTreeSet::new();
        for (i, item) in items.into_iter().enumerate() {
            let txn = txn(self, item, &format!("{what}[{i}]"))?;
            if !ids.insert(txn.request_id.clone()) {
                return Err(Status::invalid_argument(format!(
                    "{what}[{i}]: request_id {:?} appears twice in one call",
                    txn.request_id
                )));
            }
            txns.push(txn);
        }
        Ok(txns)
    }

    pub(super) async fn restock_dc_unmarked(
        &self,
        request: Request<v1::RestockDcRequest>,
    ) -> Result<Response<v1::RestockDcResponse>, Status> {
        let retry = is_retry(&request);
        let r = request.into_inner();
        let request_id = self.request_id(r.request_id, "restock_dc")?;
        let max = validate::RESTOCK_DC_LINES_MAX;
        if r.lines.is_empty() || r.lines.len() > max {
            return Err(Status::invalid_argument(format!(
                "restock_dc: between 1 and {max} lines, not {}",
                r.lines.len()
            )));
        }
        self.known_dc(r.dc_id, "restock_dc")?;
        let mut last = 0;
        let mut lines = Vec::with_capacity(r.lines.len());
        for (i, line) in r.lines.into_iter().enumerate() {
            let what = format!("restock_dc lines[{i}]");
            if line.delta == 0 || line.delta.unsigned_abs() > self.limits.restock_delta_max as u64 {
                return Err(Status::invalid_argument(format!(
                    "{what}: delta must be non-zero and at most {} in magnitude, not {}",
                    self.limits.restock_delta_max, line.delta
                )));
            }
            if line.sku <= last && line.sku != 0 {
                return Err(Status::invalid_argument(format!(
                    "{what}: sku {} after sku {last}: lines go in ascending SKU order, each SKU \
                     once",
                    line.sku
                )));
            }
            self.known_sku(line.sku, &what)?;
            last = line.sku;
            lines.push(model::SkuDelta {
                sku: line.sku,
                delta: line.delta,
            });
        }
        let txn = Txn {
            request_id,
            op: Op::RestockDc { dc: r.dc_id, lines },
        };
        let result = self.run(vec![txn], retry).await?.remove(0);
        Ok(Response::new(restock_dc_response(&result)?))
    }

    /// A restock's transaction, validated; `what` names it in errors.
    fn restock_txn(&self, r: v1::RestockRequest, what: &str) -> Result<Txn, Status> {
        let request_id = self.request_id(r.request_id, what)?;
        if r.delta == 0 || r.delta.unsigned_abs() > self.limits.restock_delta_max as u64 {
            return Err(Status::invalid_argument(format!(
                "{what}: delta must be non-zero and at most {} in magnitude, not {}",
                self.limits.restock_delta_max, r.delta
            )));
        }
        self.known_dc(r.dc_id, what)?;
        self.known_sku(r.sku, what)?;
        Ok(Txn {
            request_id,
            op: Op::Restock {
                dc: r.dc_id,
                sku: r.sku,
                delta: r.delta,
            },
        })
    }

    pub(super) async fn transfer_stock_unmarked(
        &self,
        request: Request<v1::TransferStockRequest>,
    ) -> Result<Response<v1::TransferStockResponse>, Status> {
        let retry = is_retry(&request);
        let r = request.into_inner();
        let request_id = self.request_id(r.request_id, "transfer_stock")?;
        if r.qty <= 0 || r.qty > self.limits.restock_delta_max {
            return Err(Status::invalid_argument(format!(
                "transfer_stock: qty must be 1 to {}, not {}",
                self.limits.restock_delta_max, r.qty
            )));
        }
        if r.from_dc_id == r.to_dc_id {
            return Err(Status::invalid_argument(format!(
                "transfer_stock: from_dc_id and to_dc_id are both {}; a transfer moves stock \
                 between two DCs",
                r.from_dc_id
            )));
        }
        self.known_dc(r.from_dc_id, "transfer_stock from_dc_id")?;
        self.known_dc(r.to_dc_id, "transfer_stock to_dc_id")?;
        self.known_sku(r.sku, "transfer_stock")?;
        let txn = Txn {
            request_id,
            op: Op::Transfer {
                sku: r.sku,
                from_dc: r.from_dc_id,
                to_dc: r.to_dc_id,
                qty: r.qty,
            },
        };
        let result = self.run(vec![txn], retry).await?.remove(0);
        let Outcome::Transfer {
            from,
            to,
            rejection,
        } = &result.outcome
        else {
            return Err(reused(&result, "a transfer"));
        };
        let row = |dc_id, s: &model::StockRecord| v1::DcAvailability {
            dc_id,
            on_hand: s.on_hand,
            reserved: s.reserved,
            available: s.available(),
        };
        Ok(Response::new(v1::TransferStockResponse {
            request_id: result.request_id.clone(),
            applied: rejection.is_none(),
            epoch: result.epoch,
            from: Some(row(r.from_dc_id, from)),
            to: Some(row(r.to_dc_id, to)),
            reason: rejection.map(|r| r.to_string()).unwrap_or_default(),
        }))
    }

    pub(super) async fn upsert_dc_unmarked(
        &self,
        request: Request<v1::UpsertDcRequest>,
    ) -> Result<Response<v1::UpsertDcResponse>, Status> {
        let retry = is_retry(&request);
        let r = request.into_inner();
        let request_id = self.request_id(r.request_id, "upsert_dc")?;
        let dc =
            r.dc.ok_or_else(|| Status::invalid_argument("upsert_dc: dc is required"))?;
        let existing = match dc.dc_id {
            0 => None,
            id => reads::dc(&self.node.store, id).map_err(internal)?,
        };
        let record = convert::dc_record(dc, existing.as_ref(), &self.limits)?;
        let result = self
            .run(
                vec![Txn {
                    request_id,
                    op: Op::UpsertDc(record),
                }],
                retry,
            )
            .await?
            .remove(0);
        if result.outcome != Outcome::Upserted {
            return Err(reused(&result, "an upsert"));
        }
        Ok(Response::new(v1::UpsertDcResponse {
            request_id: result.request_id,
            epoch: result.epoch,
        }))
    }

    pub(super) async fn upsert_item_unmarked(
        &self,
        request: Request<v1::UpsertItemRequest>,
    ) -> Result<Response<v1::UpsertItemResponse>, Status> {
        let retry = is_retry(&request);
        let r = request.into_inner();
        let request_id = self.request_id(r.request_id, "upsert_item")?;
        let item = r
            .item
            .ok_or_else(|| Status::invalid_argument("upsert_item: item is required"))?;
        let record = convert::item_record(item, &self.limits)?;
        let result = self
            .run(
                vec![Txn {
                    request_id,
                    op: Op::UpsertItem(record),
                }],
                retry,
            )
            .await?
            .remove(0);
        if result.outcome != Outcome::Upserted {
            return Err(reused(&result, "an upsert"));
        }
        Ok(Response::new(v1::UpsertItemResponse {
            request_id: result.request_id,
            epoch: result.epoch,
        }))
    }

    pub(super) async fn transact_unmarked(
        &self,
        request: Request<v1::TransactRequest>,
    ) -> Result<Response<v1::TransactResponse>, Status> {
        let retry = is_retry(&request);
        let r = request.into_inner();
        let request_id = self.request_id(r.request_id, "transact")?;
        if r.ops.is_empty() || r.ops.len() > self.limits.kv_ops_per_txn_max {
            return Err(Status::invalid_argument(format!(
                "transact: between 1 and {} operations, not {}",
                self.limits.kv_ops_per_txn_max,
                r.ops.len()
            )));
        }
        let ops = r
            .ops
            .into_iter()
            .enumerate()
            .map(|(i, op)| convert::kv_op(op, &format!("ops[{i}]"), &self.limits))
            .collect::<Result<Vec<_>, _>>()?;
        let txn = Txn {
            request_id,
            op: Op::Kv(ops),
        };
        let result = self.run(vec![txn], retry).await?.remove(0);
        let Outcome::Kv { results, abort } = &result.outcome else {
            return Err(reused(&result, "this transaction"));
        };
        // A committed transaction has one result per operation, unless it answers a retry
        // whose read values were not kept (see `DedupeRecord::new`).
        let results_not_kept = abort.is_none() && results.is_empty();
        Ok(Response::new(v1::TransactResponse {
            request_id: result.request_id.clone(),
            committed: abort.is_none(),
            epoch: result.epoch,
            results: results
                .iter()
                .map(|v| v1::KvResult {
                    value: v.as_ref().map(convert::kv_value),
                })
                .collect(),
            reason: abort.clone().unwrap_or_default(),
            results_not_kept,
        }))
    }
}
