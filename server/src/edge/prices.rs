//! Prices: SetPrice, SetPrices (one transaction, all or none) and GetPriceHistory.

use ordo_proto::v1;
use ordo_scheduler::model::{Op, Outcome, PriceSet, RejectCode, Txn};
use ordo_scheduler::{reads, validate};
use tonic::{Request, Response, Status};

use super::{internal, is_retry, writes::reused, OrdoService};

/// Entries in one GetPriceHistory page.
const PRICE_HISTORY_PAGE_MAX: usize = 100;

impl OrdoService {
    fn price_set(&self, set: v1::PriceSet, field: &str) -> Result<PriceSet, Status> {
        self.known_sku(set.sku, field)?;
        if !(0..=self.limits.price_cents_max).contains(&set.price_cents) {
            return Err(Status::invalid_argument(format!(
                "{field}: price_cents must be between 0 and {}, not {}",
                self.limits.price_cents_max, set.price_cents
            )));
        }
        validate::currency_ok(&set.currency)
            .map_err(|e| Status::invalid_argument(format!("{field}: {e}")))?;
        Ok(PriceSet {
            sku: set.sku,
            price_cents: set.price_cents,
            currency: set.currency,
        })
    }

    /// Runs one price change and answers its epoch.
    async fn set_prices_txn(
        &self,
        request_id: String,
        prices: Vec<PriceSet>,
        retry: bool,
    ) -> Result<(String, u64), Status> {
        let result = self
            .run(
                vec![Txn {
                    request_id,
                    op: Op::SetPrices(prices),
                }],
                retry,
            )
            .await?
            .remove(0);
        match &result.outcome {
            Outcome::Priced { rejection: None } => Ok((result.request_id, result.epoch)),
            // The catalogue changed between the edge's check and execution.
            Outcome::Priced { rejection: Some(r) } if r.code == RejectCode::UnknownSku => Err(
                Status::not_found(format!("unknown sku {}; no price was set", r.sku)),
            ),
            _ => Err(reused(&result, "a price change")),
        }
    }

    pub(super) async fn set_price_unmarked(
        &self,
        request: Request<v1::SetPriceRequest>,
    ) -> Result<Response<v1::SetPriceResponse>, Status> {
        let retry = is_retry(&request);
        let r = request.into_inner();
        let request_id = self.request_id(r.request_id, "set_price")?;
        let set = self.price_set(
            v1::PriceSet {
                sku: r.sku,
                price_cents: r.price_cents,
                currency: r.currency,
            },
            "set_price",
        )?;
        let (request_id, epoch) = self.set_prices_txn(request_id, vec![set], retry).await?;
        Ok(Response::new(v1::SetPriceResponse { request_id, epoch }))
    }

    pub(super) async fn set_prices_unmarked(
        &self,
        request: Request<v1::SetPricesRequest>,
    ) -> Result<Response<v1::SetPricesResponse>, Status> {
        let retry = is_retry(&request);
        let r = request.into_inner();
        let request_id = self.request_id(r.request_id, "set_prices")?;
        if r.prices.is_empty() || r.prices.len() > validate::PRICES_PER_TXN_MAX {
            return Err(Status::invalid_argument(format!(
                "set_prices: between 1 and {} prices, not {}",
                validate::PRICES_PER_TXN_MAX,
                r.prices.len()
            )));
        }
        let mut prices = Vec::with_capacity(r.prices.len());
        for (i, set) in r.prices.into_iter().enumerate() {
            let field = format!("set_prices: prices[{i}]");
            if prices.iter().any(|p: &PriceSet| p.sku == set.sku) {
                return Err(Status::invalid_argument(format!(
                    "{field}: sku {} appears twice",
                    set.sku
                )));
            }
            prices.push(self.price_set(set, &field)?);
        }
        let (request_id, epoch) = self.set_prices_txn(request_id, prices, retry).await?;
        Ok(Response::new(v1::SetPricesResponse { request_id, epoch }))
    }

    pub(super) async fn get_price_history_inner(
        &self,
        request: Request<v1::GetPriceHistoryRequest>,
    ) -> Result<Response<v1::GetPriceHistoryResponse>, Status> {
        let r = request.into_inner();
        if r.sku == 0 {
            return Err(Status::invalid_argument(
                "get_price_history: sku must be at least 1",
            ));
        }
        let limit = match r.limit as usize {
            0 => PRICE_HISTORY_PAGE_MAX,
            n => n.min(PRICE_HISTORY_PAGE_MAX),
        };
        self.read_barrier(r.consistency, r.at_least_epoch).await?;
        let store = &self.node.store;
        let (epoch, item, current, history) = store
            .consistent(|epoch| {
                let item = reads::item(store, r.sku)?;
                let current = reads::price(store, r.sku)?;
                let history = reads::price_history(store, r.sku, r.before_epoch, limit)?;
                Ok::<_, reads::ReadError>((epoch, item, current, history))
            })
            .map_err(internal)?;
        let item = item.ok_or_else(|| {
            Status::not_found(format!("get_price_history: unknown sku {}", r.sku))
        })?;
        Ok(Response::new(v1::GetPriceHistoryResponse {
            item: Some(v1::Item {
                sku: item.sku,
                name: item.name,
                price_cents: item.price_cents,
            }),
            currency: current.map(|p| p.currency).unwrap_or_default(),
            history: history
                .into_iter()
                .map(|p| v1::Price {
                    sku: p.sku,
                    price_cents: p.price_cents,
                    currency: p.currency,
                    epoch: p.epoch,
                    time_ms: p.time_ms,
                    request_id: p.request_id,
                })
                .collect(),
            epoch,
        }))
    }
}
