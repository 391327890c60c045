//! Near a point: the DCs around it, availability over them, keyword search with it, and
//! orders and reservations filled from those stores.

use crate::{retry_marked, v1, Client, Error};

impl Client {
    /// Active DCs within `radius_m` (0: the server's default, 10 km) of a point, nearest first,
    /// at most `limit` (0: 20).
    pub async fn find_nearby_dcs(
        &self,
        lat: f64,
        lon: f64,
        radius_m: u32,
        limit: u32,
    ) -> Result<v1::FindNearbyDcsResponse, Error> {
        let (consistency, at_least_epoch) = self.read_fields();
        let request = v1::FindNearbyDcsRequest {
            lat,
            lon,
            radius_m,
            limit,
            consistency,
            at_least_epoch,
        };
        let response = self
            .with_retries(|| {
                let mut ordo = self.ordo();
                async move { ordo.find_nearby_dcs(request).await }
            })
            .await?;
        self.saw_epoch(response.epoch);
        Ok(response)
    }

    /// Availability of `skus` over the active DCs within `radius_m` of a point (the nearest
    /// 100 at most), every row at one epoch.
    pub async fn get_nearby_availability(
        &self,
        lat: f64,
        lon: f64,
        radius_m: u32,
        skus: Vec<u32>,
    ) -> Result<v1::GetNearbyAvailabilityResponse, Error> {
        let (consistency, at_least_epoch) = self.read_fields();
        let request = v1::GetNearbyAvailabilityRequest {
            lat,
            lon,
            radius_m,
            skus,
            dcs_limit: 0,
            consistency,
            at_least_epoch,
        };
        let response = self
            .with_retries(|| {
                let mut ordo = self.ordo();
                let request = request.clone();
                async move { ordo.get_nearby_availability(request).await }
            })
            .await?;
        self.saw_epoch(response.epoch);
        Ok(response)
    }

    /// An order filled from the stores near a point (an empty request id is filled in and kept
    /// across retries). The result is COMMITTED with its shipments, or REJECTED with the reason.
    pub async fn place_order_nearby(
        &self,
        mut request: v1::PlaceOrderNearbyRequest,
    ) -> Result<v1::PlaceOrderNearbyResponse, Error> {
        let known_id = self.fill_request_ids([&mut request.request_id]);
        let response = self
            .with_write_retries(known_id, |retry| {
                let mut ordo = self.ordo();
                let request = retry_marked(request.clone(), retry);
                async move { ordo.place_order_nearby(request).await }
            })
            .await?;
        let epoch =
            response.result.as_ref().map(|r| r.epoch).ok_or_else(|| {
                Error::Protocol("PlaceOrderNearby response without a result".into())
            })?;
        self.saw_epoch(epoch);
        Ok(response)
    }

    /// A reservation filled from the stores near a point, like [`Client::place_order_nearby`].
    pub async fn reserve_nearby(
        &self,
        mut request: v1::ReserveNearbyRequest,
    ) -> Result<v1::ReserveNearbyResponse, Error> {
        let known_id = self.fill_request_ids([&mut request.request_id]);
        let response = self
            .with_write_retries(known_id, |retry| {
                let mut ordo = self.ordo();
                let request = retry_marked(request.clone(), retry);
                async move { ordo.reserve_nearby(request).await }
            })
            .await?;
        let epoch = response
            .reservation
            .as_ref()
            .map(|r| r.epoch)
            .ok_or_else(|| {
                Error::Protocol("ReserveNearby response without a reservation".into())
            })?;
        self.saw_epoch(epoch);
        Ok(response)
    }

    /// Catalogue items matching `request.query`; this client's read consistency is filled in.
    pub async fn search_items(
        &self,
        mut request: v1::SearchItemsRequest,
    ) -> Result<v1::SearchItemsResponse, Error> {
        (request.consistency, request.at_least_epoch) = self.read_fields();
        let response = self
            .with_retries(|| {
                let mut ordo = self.ordo();
                let request = request.clone();
                async move { ordo.search_items(request).await }
            })
            .await?;
        self.saw_epoch(response.epoch);
        Ok(response)
    }
}
