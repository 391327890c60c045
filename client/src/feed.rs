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
        self.set_price_request(v1::SetPriceRequest {
            request_id: String::new(),
            sku,
            price_cents,
            currency: currency.to_string(),
        })
        .await
    }

    /// Sets an item's price from a full request. A caller's request id makes the change
    /// exactly-once across the caller's own retries (a restarted caller sending the same id
    /// gets the first answer back); an empty one is filled in.
    pub async fn set_price_request(
        &self,
        mut request: v1::SetPriceRequest,
    ) -> Result<v1::SetPriceResponse, Error> {
        let known_id = self.fill_request_ids([&mut request.request_id]);
        let response = self
            .with_write_retries(known_id, |retry| {
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
        self.set_prices_request(v1::SetPricesRequest {
            request_id: String::new(),
            prices,
        })
        .await
    }

    /// [`Client::set_prices`] from a full request (an empty request id is filled in).
    pub async fn set_prices_request(
        &self,
        mut request: v1::SetPricesRequest,
    ) -> Result<v1::SetPricesResponse, Error> {
        let known_id = self.fill_request_ids([&mut request.request_id]);
        let response = self
            .with_write_retries(known_id, |retry| {
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

impl Subscription {
    /// The SubscribeRequest for this subscription, with `request_id` (empty: the client fills
    /// one in).
    pub fn request(self, request_id: &str) -> v1::SubscribeRequest {
        let (near, (lat, lon, radius_m)) = match self.near {
            Some(n) => (true, n),
            None => (false, (0.0, 0.0, 0)),
        };
        v1::SubscribeRequest {
            request_id: request_id.into(),
            user: self.user,
            sku: self.sku,
            kind: self.kind as i32,
            price_below_cents: self.price_below_cents,
            dc_ids: self.dc_ids,
            near,
            lat,
            lon,
            radius_m,
        }
    }
}

impl Client {
    pub async fn subscribe(&self, s: Subscription) -> Result<v1::SubscribeResponse, Error> {
        self.subscribe_request(s.request("")).await
    }

    /// Subscribes from a full request: a caller's request id makes it exactly-once across the
    /// caller's own retries; an empty one is filled in.
    pub async fn subscribe_request(
        &self,
        mut request: v1::SubscribeRequest,
    ) -> Result<v1::SubscribeResponse, Error> {
        let known_id = self.fill_request_ids([&mut request.request_id]);
        let response = self
            .with_write_retries(known_id, |retry| {
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
        self.unsubscribe_request(v1::UnsubscribeRequest {
            request_id: String::new(),
            user: user.into(),
            sku,
            kind: kind as i32,
        })
        .await
    }

    /// Unsubscribes from a full request (an empty request id is filled in).
    pub async fn unsubscribe_request(
        &self,
        mut request: v1::UnsubscribeRequest,
    ) -> Result<v1::UnsubscribeResponse, Error> {
        let known_id = self.fill_request_ids([&mut request.request_id]);
        let response = self
            .with_write_retries(known_id, |retry| {
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
