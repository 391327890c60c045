//! Reservations: hold units for a cart, then confirm, cancel or extend the hold. Every write
//! carries one request id across its retries, like orders.

use crate::{retry_marked, v1, Client, Error, Line};

/// What to reserve; `Reserve::new(lines)` with the server's default TTL and no cart.
#[derive(Clone, Debug, Default)]
pub struct Reserve {
    pub lines: Vec<Line>,
    /// Seconds; 0: the server's default.
    pub ttl_s: u32,
    /// A cart whose reservation is live gets these lines added to it.
    pub cart_id: String,
    pub user: String,
    /// Hold what is available of each line instead of all or nothing.
    pub partial: bool,
    /// `None`: a new request id (kept across retries).
    pub request_id: Option<String>,
}

impl Reserve {
    pub fn new(lines: &[Line]) -> Self {
        Self {
            lines: lines.to_vec(),
            ..Self::default()
        }
    }
}

impl Client {
    /// Holds units; the answer says LIVE with the reservation, or REJECTED with the reason.
    pub async fn reserve(&self, reserve: Reserve) -> Result<v1::Reservation, Error> {
        let known_id = reserve.request_id.is_some();
        let request = v1::ReserveRequest {
            request_id: reserve.request_id.unwrap_or_else(|| self.new_request_id()),
            cart_id: reserve.cart_id,
            user: reserve.user,
            lines: reserve.lines.into_iter().map(Into::into).collect(),
            ttl_s: reserve.ttl_s,
            mode: if reserve.partial {
                v1::OrderMode::Partial
            } else {
                v1::OrderMode::AllOrNothing
            } as i32,
        };
        let response = self
            .with_write_retries(known_id, |retry| {
                let mut ordo = self.ordo();
                let request = retry_marked(request.clone(), retry);
                async move { ordo.reserve(request).await }
            })
            .await?;
        self.reservation_answer(response.reservation)
    }

    /// Confirms a reservation as an order: every held unit (`lines` empty) or those lines.
    pub async fn confirm_reservation(
        &self,
        reservation_id: u64,
        lines: &[Line],
        request_id: Option<String>,
    ) -> Result<v1::ConfirmReservationResponse, Error> {
        let known_id = request_id.is_some();
        let request = v1::ConfirmReservationRequest {
            request_id: request_id.unwrap_or_else(|| self.new_request_id()),
            reservation_id,
            lines: lines.iter().copied().map(Into::into).collect(),
        };
        let response = self
            .with_write_retries(known_id, |retry| {
                let mut ordo = self.ordo();
                let request = retry_marked(request.clone(), retry);
                async move { ordo.confirm_reservation(request).await }
            })
            .await?;
        let result = response.result.as_ref().ok_or_else(|| {
            Error::Protocol("ConfirmReservation response without a result".into())
        })?;
        self.saw_epoch(result.epoch);
        Ok(response)
    }

    pub async fn cancel_reservation(
        &self,
        reservation_id: u64,
        request_id: Option<String>,
    ) -> Result<v1::Reservation, Error> {
        let known_id = request_id.is_some();
        let request = v1::CancelReservationRequest {
            request_id: request_id.unwrap_or_else(|| self.new_request_id()),
            reservation_id,
        };
        let response = self
            .with_write_retries(known_id, |retry| {
                let mut ordo = self.ordo();
                let request = retry_marked(request.clone(), retry);
                async move { ordo.cancel_reservation(request).await }
            })
            .await?;
        self.reservation_answer(response.reservation)
    }

    /// Moves a live reservation's expiry to now + `ttl_s` (0: the server's default).
    pub async fn extend_reservation(
        &self,
        reservation_id: u64,
        ttl_s: u32,
        request_id: Option<String>,
    ) -> Result<v1::Reservation, Error> {
        let known_id = request_id.is_some();
        let request = v1::ExtendReservationRequest {
            request_id: request_id.unwrap_or_else(|| self.new_request_id()),
            reservation_id,
            ttl_s,
        };
        let response = self
            .with_write_retries(known_id, |retry| {
                let mut ordo = self.ordo();
                let request = retry_marked(request.clone(), retry);
                async move { ordo.extend_reservation(request).await }
            })
            .await?;
        self.reservation_answer(response.reservation)
    }

    pub async fn get_reservation(&self, reservation_id: u64) -> Result<v1::Reservation, Error> {
        let (consistency, at_least_epoch) = self.read_fields();
        let request = v1::GetReservationRequest {
            reservation_id,
            consistency,
            at_least_epoch,
        };
        let response = self
            .with_retries(|| {
                let mut ordo = self.ordo();
                async move { ordo.get_reservation(request).await }
            })
            .await?;
        self.reservation_answer(response.reservation)
    }

    /// One page of a cart's (or, with `cart_id` empty, a user's) reservations.
    pub async fn list_reservations(
        &self,
        cart_id: &str,
        user: &str,
        after_reservation_id: u64,
        limit: u32,
    ) -> Result<v1::ListReservationsResponse, Error> {
        let (consistency, at_least_epoch) = self.read_fields();
        let request = v1::ListReservationsRequest {
            cart_id: cart_id.to_string(),
            user: user.to_string(),
            after_reservation_id,
            limit,
            consistency,
            at_least_epoch,
        };
        let response = self
            .with_retries(|| {
                let mut ordo = self.ordo();
                let request = request.clone();
                async move { ordo.list_reservations(request).await }
            })
            .await?;
        self.saw_epoch(response.epoch);
        Ok(response)
    }

    fn reservation_answer(
        &self,
        reservation: Option<v1::Reservation>,
    ) -> Result<v1::Reservation, Error> {
        let reservation =
            reservation.ok_or_else(|| Error::Protocol("response without a reservation".into()))?;
        self.saw_epoch(reservation.epoch);
        Ok(reservation)
    }
}
