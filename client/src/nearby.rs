//! Reads near a point: the DCs around it, and availability over them.

use crate::{v1, Client, Error};

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
}
