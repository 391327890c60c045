//! Prices and the change feed: SetPrice(s), GetPriceHistory, Watch.

use crate::{retry_marked, v1, Client, Error};

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
            .with_write_retries(false, |retry| {
                let mut ordo = self.ordo();
                let request = retry_marked(request.clone(), retry);
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
            .with_write_retries(false, |retry| {
                let mut ordo = self.ordo();
                let request = retry_marked(request.clone(), retry);
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

/// What to subscribe to: `Subscription::price_drop(user, sku)` or `::back_in_stock`.
#[derive(Clone, Debug, Default)]
pub struct Subscription {
    pub user: String,
    pub sku: u32,
    pub kind: v1::SubscriptionKind,
    /// PRICE_DROP: only below this (0: any drop).
    pub price_below_cents: i64,
    /// BACK_IN_STOCK: only at these DCs.
    pub dc_ids: Vec<u32>,
    /// BACK_IN_STOCK: only within `radius_m` of (lat, lon).
    pub near: Option<(f64, f64, u32)>,
}

impl Subscription {
    pub fn price_drop(user: &str, sku: u32) -> Self {
        Self {
            user: user.into(),
            sku,
            kind: v1::SubscriptionKind::PriceDrop,
            ..Self::default()
        }
    }

    pub fn back_in_stock(user: &str, sku: u32) -> Self {
        Self {
            user: user.into(),
            sku,
            kind: v1::SubscriptionKind::BackInStock,
            ..Self::default()
        }
    }
}

impl Client {
    pub async fn subscribe(&self, s: Subscription) -> Result<v1::SubscribeResponse, Error> {
        let (near, (lat, lon, radius_m)) = match s.near {
            Some(n) => (true, n),
            None => (false, (0.0, 0.0, 0)),
        };
        let request = v1::SubscribeRequest {
            request_id: self.new_request_id(),
            user: s.user,
            sku: s.sku,
            kind: s.kind as i32,
            price_below_cents: s.price_below_cents,
            dc_ids: s.dc_ids,
            near,
            lat,
            lon,
            radius_m,
        };
        let response = self
            .with_write_retries(false, |retry| {
                let mut ordo = self.ordo();
                let request = retry_marked(request.clone(), retry);
                async move { ordo.subscribe(request).await }
            })
            .await?;
        self.saw_epoch(response.epoch);
        Ok(response)
    }

    pub async fn unsubscribe(
        &self,
        user: &str,
        sku: u32,
        kind: v1::SubscriptionKind,
    ) -> Result<v1::UnsubscribeResponse, Error> {
        let request = v1::UnsubscribeRequest {
            request_id: self.new_request_id(),
            user: user.into(),
            sku,
            kind: kind as i32,
        };
        let response = self
            .with_write_retries(false, |retry| {
                let mut ordo = self.ordo();
                let request = retry_marked(request.clone(), retry);
                async move { ordo.unsubscribe(request).await }
            })
            .await?;
        self.saw_epoch(response.epoch);
        Ok(response)
    }

    pub async fn list_subscriptions(
        &self,
        user: &str,
        include_ended: bool,
    ) -> Result<v1::ListSubscriptionsResponse, Error> {
        let (consistency, at_least_epoch) = self.read_fields();
        let request = v1::ListSubscriptionsRequest {
            user: user.into(),
            include_ended,
            consistency,
            at_least_epoch,
        };
        let response = self
            .with_retries(|| {
                let mut ordo = self.ordo();
                let request = request.clone();
                async move { ordo.list_subscriptions(request).await }
            })
            .await?;
        self.saw_epoch(response.epoch);
        Ok(response)
    }

    /// Opens a WatchNotifications stream on the current endpoint; like [`Client::watch`], it
    /// is resumed by the caller from the last resume token.
    pub async fn watch_notifications(
        &self,
        request: v1::WatchNotificationsRequest,
    ) -> Result<tonic::Streaming<v1::WatchNotificationsResponse>, Error> {
        let mut ordo = self.ordo();
        Ok(ordo.watch_notifications(request).await?.into_inner())
    }
}
