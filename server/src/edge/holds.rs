//! The reservation handlers: reserve, confirm, cancel, extend (writes, run like every other
//! write through [`OrdoService::run`]) and the reads of reservations. The `Ordo` impl in
//! `mod.rs` calls them and marks the writes' definite failures.

use ordo_proto::v1;
use ordo_scheduler::reads::{self, ReservationsOf};
use ordo_scheduler::{validate, Op, Outcome, Txn, TxnResult};
use tonic::{Request, Response, Status};

use super::{internal, is_retry, order_mode, OrdoService};
use crate::convert;

/// Reservations in a ListReservations page when the request names no limit.
const LIST_RESERVATIONS_DEFAULT: usize = 100;

fn reused(result: &TxnResult, expected: &str) -> Status {
    Status::already_exists(format!(
        "request_id {:?} was already used for a different request than {expected}; use a new \
         request_id",
        result.request_id
    ))
}

/// A reservation transaction's result on the wire: the reservation as it left it.
fn reservation_of(result: &TxnResult, expected: &str) -> Result<v1::Reservation, Status> {
    let Outcome::Reservation {
        reservation,
        rejection,
    } = &result.outcome
    else {
        return Err(reused(result, expected));
    };
    Ok(convert::reservation(
        reservation.as_ref(),
        rejection.as_ref(),
        result.epoch,
        None,
    ))
}

impl OrdoService {
    pub(super) fn cart_id(&self, cart_id: &str, field: &str) -> Result<(), Status> {
        if cart_id.len() > validate::CART_ID_BYTES_MAX
            || cart_id.bytes().any(|b| !(0x21..=0x7e).contains(&b))
        {
            return Err(Status::invalid_argument(format!(
                "{field}: cart_id must be at most {} bytes of printable ASCII without spaces",
                validate::CART_ID_BYTES_MAX
            )));
        }
        Ok(())
    }

    /// A TTL in milliseconds as the caller asked (0: the cluster's default, resolved in
    /// execution), refused past the cluster's life cap. Nothing of this node's own flags goes
    /// into the transaction, so a retry has the same body on any node.
    pub(super) fn ttl_ms(&self, ttl_s: u32, field: &str) -> Result<u64, Status> {
        let max_ms = self.exec_settings()?.reservation_life_max_ms;
        let ttl_ms = u64::from(ttl_s) * 1000;
        if ttl_ms > max_ms {
            return Err(Status::invalid_argument(format!(
                "{field}: ttl_s must be at most {} (the cluster's reservation life cap), not \
                 {ttl_s}",
                max_ms / 1000
            )));
        }
        Ok(ttl_ms)
    }

    /// The cluster's recorded execution settings; this node's own where none is recorded.
    pub(super) fn exec_settings(&self) -> Result<ordo_scheduler::ExecSettings, Status> {
        Ok(reads::exec_settings(&self.node.store)
            .map_err(super::internal)?
            .map(|r| r.settings)
            .unwrap_or_else(|| self.exec.initial_settings()))
    }

    fn reservation_id(id: u64, field: &str) -> Result<u64, Status> {
        match id {
            0 => Err(Status::invalid_argument(format!(
                "{field}: reservation_id must be at least 1"
            ))),
            id => Ok(id),
        }
    }

    pub(super) async fn reserve_unmarked(
        &self,
        request: Request<v1::ReserveRequest>,
    ) -> Result<Response<v1::ReserveResponse>, Status> {
        let retry = is_retry(&request);
        let r = request.into_inner();
        let field = "reserve";
        let request_id = self.request_id(r.request_id, field)?;
        self.user(&r.user, field)?;
        self.cart_id(&r.cart_id, field)?;
        let mode = order_mode(r.mode, field)?;
        let lines = self.lines(&r.lines, field, false)?;
        let txn = Txn {
            request_id,
            op: Op::Reserve {
                cart_id: r.cart_id,
                user: r.user,
                lines,
                mode,
                ttl_ms: self.ttl_ms(r.ttl_s, field)?,
                // The cluster's life cap, resolved in execution.
                life_max_ms: 0,
            },
        };
        let result = self.run(vec![txn], retry).await?.remove(0);
        Ok(Response::new(v1::ReserveResponse {
            reservation: Some(reservation_of(&result, "a reservation")?),
        }))
    }

    pub(super) async fn confirm_reservation_unmarked(
        &self,
        request: Request<v1::ConfirmReservationRequest>,
    ) -> Result<Response<v1::ConfirmReservationResponse>, Status> {
        let retry = is_retry(&request);
        let r = request.into_inner();
        let field = "confirm_reservation";
        let request_id = self.request_id(r.request_id, field)?;
        let reservation_id = Self::reservation_id(r.reservation_id, field)?;
        let lines = self.lines(&r.lines, field, true)?;
        let txn = Txn {
            request_id,
            op: Op::ConfirmReservation {
                reservation_id,
                lines,
            },
        };
        let result = self.run(vec![txn], retry).await?.remove(0);
        let wire = convert::order_result(&result).ok_or_else(|| reused(&result, "a confirm"))?;
        // The order record carries its epoch's time: the proof that it beat the expiry.
        let epoch_time_ms = match wire.order_id {
            0 => 0,
            id => reads::order(&self.node.store, id)
                .map_err(internal)?
                .map_or(0, |o| o.time_ms),
        };
        Ok(Response::new(v1::ConfirmReservationResponse {
            result: Some(wire),
            epoch_time_ms,
        }))
    }

    pub(super) async fn cancel_reservation_unmarked(
        &self,
        request: Request<v1::CancelReservationRequest>,
    ) -> Result<Response<v1::CancelReservationResponse>, Status> {
        let retry = is_retry(&request);
        let r = request.into_inner();
        let field = "cancel_reservation";
        let request_id = self.request_id(r.request_id, field)?;
        let reservation_id = Self::reservation_id(r.reservation_id, field)?;
        let txn = Txn {
            request_id,
            op: Op::CancelReservation { reservation_id },
        };
        let result = self.run(vec![txn], retry).await?.remove(0);
        Ok(Response::new(v1::CancelReservationResponse {
            reservation: Some(reservation_of(&result, "a cancel")?),
        }))
    }

    pub(super) async fn extend_reservation_unmarked(
        &self,
        request: Request<v1::ExtendReservationRequest>,
    ) -> Result<Response<v1::ExtendReservationResponse>, Status> {
        let retry = is_retry(&request);
        let r = request.into_inner();
        let field = "extend_reservation";
        let request_id = self.request_id(r.request_id, field)?;
        let reservation_id = Self::reservation_id(r.reservation_id, field)?;
        let txn = Txn {
            request_id,
            op: Op::ExtendReservation {
                reservation_id,
                ttl_ms: self.ttl_ms(r.ttl_s, field)?,
            },
        };
        let result = self.run(vec![txn], retry).await?.remove(0);
        Ok(Response::new(v1::ExtendReservationResponse {
            reservation: Some(reservation_of(&result, "an extend")?),
        }))
    }

    pub(super) async fn get_reservation_inner(
        &self,
        request: Request<v1::GetReservationRequest>,
    ) -> Result<Response<v1::GetReservationResponse>, Status> {
        let r = request.into_inner();
        let id = Self::reservation_id(r.reservation_id, "get_reservation")?;
        self.read_barrier(r.consistency, r.at_least_epoch).await?;
        self.wait_for_id_epoch(id).await?;
        let store = &self.node.store;
        let (epoch, now_ms, found) = store.consistent(|epoch| {
            reads::reservation(store, id)
                .map(|found| (epoch, store.applied_time_ms(), found))
                .map_err(internal)
        })?;
        let record = found.ok_or_else(|| {
            Status::not_found(format!(
                "reservation {id} does not exist (or its record was dropped after its \
                 retention)"
            ))
        })?;
        Ok(Response::new(v1::GetReservationResponse {
            reservation: Some(convert::reservation(
                Some(&record),
                None,
                epoch,
                Some(now_ms),
            )),
        }))
    }

    pub(super) async fn list_reservations_inner(
        &self,
        request: Request<v1::ListReservationsRequest>,
    ) -> Result<Response<v1::ListReservationsResponse>, Status> {
        let r = request.into_inner();
        let of = match (r.cart_id.is_empty(), r.user.is_empty()) {
            (false, true) => ReservationsOf::Cart(&r.cart_id),
            (true, false) => ReservationsOf::User(&r.user),
            _ => {
                return Err(Status::invalid_argument(
                    "list_reservations: give exactly one of cart_id and user",
                ))
            }
        };
        let limit = match r.limit {
            0 => LIST_RESERVATIONS_DEFAULT,
            n if n as usize <= self.limits.list_reservations_max => n as usize,
            n => {
                return Err(Status::invalid_argument(format!(
                    "list_reservations: limit must be 1 to {}, not {n}",
                    self.limits.list_reservations_max
                )))
            }
        };
        self.read_barrier(r.consistency, r.at_least_epoch).await?;
        let store = &self.node.store;
        let (epoch, now_ms, mut page) = store.consistent(|epoch| {
            reads::reservations(store, of, r.after_reservation_id, limit + 1)
                .map(|page| (epoch, store.applied_time_ms(), page))
                .map_err(internal)
        })?;
        let next_after_reservation_id = if page.len() > limit {
            page.truncate(limit);
            page.last().map_or(0, |r| r.reservation_id)
        } else {
            0
        };
        Ok(Response::new(v1::ListReservationsResponse {
            reservations: page
                .iter()
                .map(|r| convert::reservation(Some(r), None, epoch, Some(now_ms)))
                .collect(),
            next_after_reservation_id,
            epoch,
        }))
    }
}
