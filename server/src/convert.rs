//! Conversions between the scheduler's model and the wire types.

use ordo_proto::v1;
use ordo_scheduler::model::*;
use tonic::Status;

use crate::limits::Limits;

fn line_allocation(a: &LineAlloc) -> v1::LineAllocation {
    v1::LineAllocation {
        dc_id: a.dc,
        sku: a.sku,
        requested: a.requested,
        allocated: a.allocated,
        available: a.available,
    }
}

fn reject_code(code: RejectCode) -> v1::RejectCode {
    match code {
        RejectCode::InsufficientStock => v1::RejectCode::InsufficientStock,
        RejectCode::UnknownDc => v1::RejectCode::UnknownDc,
        RejectCode::UnknownSku => v1::RejectCode::UnknownSku,
        RejectCode::DcInactive => v1::RejectCode::DcInactive,
        RejectCode::NegativeStock => v1::RejectCode::NegativeStock,
        RejectCode::StockOverflow => v1::RejectCode::StockOverflow,
        RejectCode::ReservationExpired => v1::RejectCode::ReservationExpired,
        RejectCode::ReservationConfirmed => v1::RejectCode::ReservationConfirmed,
        RejectCode::ReservationCancelled => v1::RejectCode::ReservationCancelled,
        RejectCode::ReservationUnknown => v1::RejectCode::ReservationUnknown,
        RejectCode::NotHeld => v1::RejectCode::NotHeld,
    }
}

fn rejection(r: &Rejection) -> v1::Rejection {
    v1::Rejection {
        code: reject_code(r.code) as i32,
        dc_id: r.dc,
        sku: r.sku,
        available: r.available,
        requested: r.requested,
    }
}

/// The wire form of a reservation: as a transaction left it (`now_ms` `None`: its stored
/// state, or what its rejection says), or as read at an epoch whose time is `now_ms`.
pub fn reservation(
    record: Option<&ReservationRecord>,
    refused: Option<&Rejection>,
    epoch: u64,
    now_ms: Option<u64>,
) -> v1::Reservation {
    use v1::ReservationStatus as S;
    let status = match (refused.map(|r| r.code), record) {
        (Some(RejectCode::ReservationExpired), _) => S::Expired,
        (Some(RejectCode::ReservationConfirmed), _) => S::Confirmed,
        (Some(RejectCode::ReservationCancelled), _) => S::Cancelled,
        (Some(_), _) | (None, None) => S::Rejected,
        (None, Some(r)) => match now_ms.map(|now| r.status_at(now)) {
            Some(HoldStatus::Expired) => S::Expired,
            _ => match r.state {
                HoldState::Live => S::Live,
                HoldState::Confirmed { .. } => S::Confirmed,
                HoldState::Cancelled { .. } => S::Cancelled,
            },
        },
    };
    let mut wire = v1::Reservation {
        status: status as i32,
        epoch,
        reason: refused.map(|r| r.to_string()).unwrap_or_default(),
        rejection: refused.map(rejection),
        ..Default::default()
    };
    if let Some(r) = record {
        wire.reservation_id = r.reservation_id;
        wire.lines = r
            .lines
            .iter()
            .map(|l| v1::HoldLine {
                dc_id: l.dc,
                sku: l.sku,
                requested: l.requested,
                held: l.held,
            })
            .collect();
        wire.created_epoch = r.created_epoch;
        wire.expires_at_ms = r.expires_at_ms;
        wire.request_id = r.request_id.clone();
        wire.cart_id = r.cart_id.clone();
        wire.user = r.user.clone();
        wire.created_ms = r.created_ms;
        wire.life_cap_ms = r.life_cap_ms;
        if let HoldState::Confirmed { order_id, .. } = r.state {
            wire.order_id = order_id;
        }
    }
    wire
}

/// The wire form of an order's result; `None` if the result is not an order's.
pub fn order_result(result: &TxnResult) -> Option<v1::OrderResult> {
    let Outcome::Order {
        order_id,
        lines,
        rejection,
    } = &result.outcome
    else {
        return None;
    };
    let status = if order_id.is_some() {
        v1::OrderStatus::Committed
    } else {
        v1::OrderStatus::Rejected
    };
    Some(v1::OrderResult {
        request_id: result.request_id.clone(),
        status: status as i32,
        order_id: order_id.unwrap_or(0),
        epoch: result.epoch,
        lines: lines.iter().map(line_allocation).collect(),
        reason: rejection.map(|r| r.to_string()).unwrap_or_default(),
        rejection: rejection.as_ref().map(self::rejection),
    })
}

pub fn order(o: &OrderRecord) -> v1::Order {
    v1::Order {
        order_id: o.order_id,
        request_id: o.request_id.clone(),
        user: o.user.clone(),
        status: v1::OrderStatus::Committed as i32,
        epoch: o.epoch,
        time_ms: o.time_ms,
        lines: o.lines.iter().map(line_allocation).collect(),
    }
}

fn name(field: &str, name: String, limits: &Limits) -> Result<String, Status> {
    if name.is_empty() || name.len() > limits.name_bytes_max {
        return Err(Status::invalid_argument(format!(
            "{field}: name must be 1 to {} bytes, not {}",
            limits.name_bytes_max,
            name.len()
        )));
    }
    Ok(name)
}

/// Degrees to integer micro-degrees, at the edge: floating point never reaches execution.
pub fn micro_degrees(field: &str, degrees: f64, bound: f64) -> Result<i32, Status> {
    if !degrees.is_finite() || degrees.abs() > bound {
        return Err(Status::invalid_argument(format!(
            "{field}: must be a number between -{bound} and {bound}, not {degrees}"
        )));
    }
    Ok((degrees * 1e6).round() as i32)
}

/// The wire form of a DC.
pub fn dc(d: &DcRecord) -> v1::Dc {
    v1::Dc {
        dc_id: d.dc,
        name: d.name.clone(),
        lat: f64::from(d.lat_e6) / 1e6,
        lon: f64::from(d.lon_e6) / 1e6,
        region: Some(d.region),
        active: d.active,
    }
}

/// The DC record an upsert asks for. `existing` is the DC as this node knows it: an upsert
/// may leave the region out for a known DC, and may not change it.
pub fn dc_record(
    dc: v1::Dc,
    existing: Option<&DcRecord>,
    limits: &Limits,
) -> Result<DcRecord, Status> {
    if dc.dc_id == 0 {
        return Err(Status::invalid_argument(
            "upsert_dc: dc_id must be at least 1",
        ));
    }
    let region = match (dc.region, existing) {
        (Some(asked), Some(old)) if asked != old.region => {
            return Err(Status::failed_precondition(format!(
                "upsert_dc: dc {} is in region {}; its stock and orders live there, so it cannot \
                 move to region {asked} (create a new DC instead)",
                dc.dc_id, old.region
            )))
        }
        (Some(region), _) => region,
        (None, Some(old)) => old.region,
        (None, None) => {
            return Err(Status::invalid_argument(format!(
                "upsert_dc: dc {} is new, so its region is required",
                dc.dc_id
            )))
        }
    };
    Ok(DcRecord {
        dc: dc.dc_id,
        name: name("upsert_dc", dc.name, limits)?,
        lat_e6: micro_degrees("upsert_dc: lat", dc.lat, 90.0)?,
        lon_e6: micro_degrees("upsert_dc: lon", dc.lon, 180.0)?,
        region,
        active: dc.active,
    })
}

pub fn item_record(item: v1::Item, limits: &Limits) -> Result<ItemRecord, Status> {
    if item.sku == 0 {
        return Err(Status::invalid_argument(
            "upsert_item: sku must be at least 1",
        ));
    }
    if item.price_cents < 0 || item.price_cents > limits.price_cents_max {
        return Err(Status::invalid_argument(format!(
            "upsert_item: price_cents must be between 0 and {}, not {}",
            limits.price_cents_max, item.price_cents
        )));
    }
    Ok(ItemRecord {
        sku: item.sku,
        name: name("upsert_item", item.name, limits)?,
        price_cents: item.price_cents,
    })
}

pub fn kv_value(v: &KvValue) -> v1::KvValue {
    v1::KvValue {
        value: Some(match v {
            KvValue::Int(x) => v1::kv_value::Value::Int(*x),
            KvValue::List(l) => v1::kv_value::Value::List(v1::KvList { values: l.clone() }),
        }),
    }
}

/// Validates one key-value operation.
pub fn kv_op(op: v1::KvOp, field: &str, limits: &Limits) -> Result<KvOp, Status> {
    use v1::kv_op::Op as P;
    let check_key = |key: &str| -> Result<(), Status> {
        if key.is_empty() || key.len() > limits.kv_key_bytes_max {
            return Err(Status::invalid_argument(format!(
                "{field}: key must be 1 to {} bytes, not {}",
                limits.kv_key_bytes_max,
                key.len()
            )));
        }
        if let Some(bad) = key.bytes().find(|b| !(0x21..=0x7e).contains(b)) {
            return Err(Status::invalid_argument(format!(
                "{field}: key may hold only printable ASCII without spaces; found byte 0x{bad:02x}"
            )));
        }
        Ok(())
    };
    let op = op
        .op
        .ok_or_else(|| Status::invalid_argument(format!("{field}: an operation is required")))?;
    Ok(match op {
        P::Read(key) => {
            check_key(&key)?;
            KvOp::Read(key)
        }
        P::Write(w) => {
            check_key(&w.key)?;
            KvOp::Write(w.key, w.value)
        }
        P::Cas(c) => {
            check_key(&c.key)?;
            KvOp::Cas {
                key: c.key,
                from: c.from,
                to: c.to,
            }
        }
        P::Append(a) => {
            check_key(&a.key)?;
            KvOp::Append(a.key, a.value)
        }
    })
}
