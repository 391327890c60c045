//! Prices and the change feed: SetPrice(s), GetPriceHistory, Watch.

use crate::{v1, Client, Error};

impl Client {
    /// Sets an item's price (`currency` empty: the item's current one).
    pub async fn set_price(
        &self,
        sku: u32,
        price_cents: i64,
        currency: &str,
    ) -> Result<v1::SetPriceResponse, Error> {
        let request = v1::SetPriceRequest {
            request_id: self.new_request_id(),
            sku,
            price_cents,
            currency: currency.to_string(),
        };
        let response = self
            .with_retries(|| {
                let mut ordo = self.ordo();
                let request = request.clone();
                async move { ordo.set_price(request).await }
            })
            .await?;
        self.saw_epoch(response.epoch);
        Ok(response)
    }

    /// Sets many prices in one transaction, all or none.
    pub async fn set_prices(
        &self,
        prices: Vec<v1::PriceSet>,
    ) -> Result<v1::SetPricesResponse, Error> {
        let request = v1::SetPricesRequest {
            request_id: self.new_request_id(),
            prices,
        };
        let response = self
            .with_retries(|| {
                let mut ordo = self.ordo();
                let request = request.clone();
                async move { ordo.set_prices(request).await }
            })
            .await?;
        self.saw_epoch(response.epoch);
        Ok(response)
    }

    /// An item's current price and its history, newest first, from before `before_epoch`
    /// (0: the newest), at most `limit` (0: 100).
    pub async fn get_price_history(
        &self,
        sku: u32,
        before_epoch: u64,
        limit: u32,
    ) -> Result<v1::GetPriceHistoryResponse, Error> {
        let (consistency, at_least_epoch) = self.read_fields();
        let request = v1::GetPriceHistoryRequest {
            sku,
            before_epoch,
            limit,
            consistency,
            at_least_epoch,
        };
        let response = self
            .with_retries(|| {
                let mut ordo = self.ordo();
                async move { ordo.get_price_history(request).await }
            })
            .await?;
        self.saw_epoch(response.epoch);
        Ok(response)
    }

    /// Opens a Watch stream on the current endpoint. It is not retried: when the stream ends
    /// with an error, open another (on this node, or after [`Client::next_endpoint`] on
    /// another) from the last resume token received; the events continue with no gap and no
    /// duplicate.
    pub async fn watch(
        &self,
        request: v1::WatchRequest,
    ) -> Result<tonic::Streaming<v1::WatchResponse>, Error> {
        let mut ordo = self.ordo();
        Ok(ordo.watch(request).await?.into_inner())
    }
}
