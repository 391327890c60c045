//! The `inventory` workload's reservations: reserve, confirm, cancel and extend with short
//! TTLs (1-5 s, so holds lapse while faults are in force), the stock reads that show what is
//! reserved, and the final reads of every hold. [`crate::reservations`] checks what they record.
//!
//! History shape (added to [`crate::inventory`]'s):
//! - `f = "reserve"`: invoke `{"request_id", "lines": [[dc, sku, qty], ...], "ttl_s", "cart_id",
//!   "partial"}`, or for a hold filled from nearby stores (`ReserveNearby`, one reserve in
//!   four) `"items": [[sku, qty], ...]` and `"near": {"at", "lat", "lon", "radius_m"}` instead
//!   of `"lines"` (the checker takes what a reserve holds from its answer either way); `ok` adds `{"id", "expires_at_ms", "created_ms", "held": [[dc, sku, held]],
//!   "epoch"}` (the whole reservation as the answer left it: with a cart, earlier lines too);
//!   `fail` adds `{"reason", "code"}` (rejected) or `{"error": "not-applied"}`.
//! - `f = "confirm"`: invoke `{"request_id", "id"}`; `ok` adds `{"order_id", "epoch_time_ms",
//!   "lines": [[dc, sku, qty]]}`; `fail` adds `{"reason", "code"}` or the `error`.
//! - `f = "cancel"`: invoke `{"request_id", "id"}`; `ok` adds `{"status": "cancelled"}`; `fail`
//!   adds the status it had (`expired`, `confirmed`, `cancelled`, `rejected` when unknown) and
//!   the `reason`, or the `error`.
//! - `f = "extend"`: invoke `{"request_id", "id", "ttl_s"}`; `ok` adds `{"expires_at_ms"}`;
//!   `fail` as for cancel.
//! - `f = "read"` rows and `final-read` `stock` rows are `[dc, sku, on_hand, reserved]`; the
//!   `final-read` adds `"holds"`: every reservation the history names, read by id (one that
//!   is not found is `{"id", "status": "not-found"}`), and `"listed"`: every reservation of the
//!   workload's user, which finds those of reserves whose answer was lost.
//!
//! `info` completions carry the invocation's value, like every other operation's.

use std::collections::{BTreeSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ordo_client::{v1, Client, Line, Reserve};
use serde_json::{json, Value};

use crate::history::{Event, EventType};
use crate::runner::Rng;

/// Shortest and longest TTL of a reserve or extend: short, so holds lapse during faults.
pub const TTL_S_MIN: u32 = 1;
pub const TTL_S_MAX: u32 = 5;
/// Tenths of the inventory workload's operations that are reservation operations.
pub const HOLD_OPS_TENTHS: u64 = 4;
/// The user every reservation is made for: the final reads list its reservations.
const USER: &str = "jepsen";
/// Carts shared by every client process: reserves into one cart race to add to the same hold.
const CARTS: u64 = 6;
/// Reservation ids the generator remembers (the most recent), at most. Confirms, cancels and
/// extends pick any of them, over or not: about half are live at a time, so about half of the
/// holds lapse before an operation ends them, and refusals (expired, confirmed, cancelled) are
/// tried as often as successes.
const KNOWN_HOLDS_MAX: usize = 12;
/// Reservations read per ListReservations page in the final read.
const LIST_PAGE: u32 = 1_000;
/// gRPC's NOT_FOUND status code (`tonic::Code::NotFound`; this crate needs no tonic of its own).
const GRPC_NOT_FOUND: i32 = 5;
/// After the run, how long the final read waits for every hold to lapse (no row has units
/// reserved) beyond the longest TTL; past it, the final read goes on and the checker reports
/// whatever is still live.
const SETTLE_MARGIN: Duration = Duration::from_secs(10);

/// Holds acknowledged to the clients, shared by every process: what confirm, cancel and extend
/// act on.
#[derive(Default)]
pub(crate) struct Holds {
    known: Mutex<VecDeque<u64>>,
}

impl Holds {
    fn add(&self, id: u64) {
        let mut known = self.known.lock().expect("holds");
        if !known.contains(&id) {
            known.push_back(id);
        }
        while known.len() > KNOWN_HOLDS_MAX {
            known.pop_front();
        }
    }

    fn pick(&self, rng: &mut Rng) -> Option<u64> {
        let known = self.known.lock().expect("holds");
        match known.len() {
            0 => None,
            n => Some(known[rng.below(n as u64) as usize]),
        }
    }
}

/// What a reservation operation does against Ordo.
pub(crate) enum Action {
    Reserve {
        lines: Vec<(u32, u32, i64)>,
        ttl_s: u32,
        cart_id: String,
        partial: bool,
    },
    /// `ReserveNearby`: `(sku, qty)` items from the stores near a point the server picks.
    ReserveNearby {
        items: Vec<(u32, i64)>,
        near: (f64, f64, u32),
        ttl_s: u32,
        cart_id: String,
        partial: bool,
    },
    Confirm(u64),
    Cancel(u64),
    Extend {
        id: u64,
        ttl_s: u32,
    },
}

/// One reservation operation: its action, its request id (kept across the client's retries)
/// and the shared holds it learns from.
pub(crate) struct HoldCall {
    action: Action,
    request_id: String,
    holds: Arc<Holds>,
}

/// The next reservation operation: `(f, invoke value, call)`. Confirms, cancels and extends
/// need a known hold; until there is one, it reserves.
pub(crate) fn next(
    rng: &mut Rng,
    holds: &Arc<Holds>,
    request_id: String,
    dcs: &[u32],
    skus: &[u32],
) -> (&'static str, Value, HoldCall) {
    let ttl = |rng: &mut Rng| TTL_S_MIN + rng.below(u64::from(TTL_S_MAX - TTL_S_MIN + 1)) as u32;
    // Of twenty: 10 reserves, 3 confirms, 2 cancels, 5 extends; so that many holds are neither
    // confirmed nor cancelled, but lapse (extends keep some alive through a fault).
    let roll = rng.below(20);
    let target = if roll < 10 { None } else { holds.pick(rng) };
    let (f, value, action) = match target {
        None => {
            let mut lines = vec![(*rng.pick(dcs), *rng.pick(skus), 1 + rng.below(2) as i64)];
            if rng.below(3) == 0 {
                let (dc, sku) = (*rng.pick(dcs), *rng.pick(skus));
                if !lines.iter().any(|l| (l.0, l.1) == (dc, sku)) {
                    lines.push((dc, sku, 1));
                }
            }
            let ttl_s = ttl(rng);
            let cart_id = match rng.below(2) {
                0 => String::new(),
                _ => format!("c{}", rng.below(CARTS)),
            };
            let partial = rng.below(4) == 0;
            if rng.below(4) == 0 {
                // The same SKUs and quantities, from whichever stores near a point have them.
                let (at, lat, lon, radius_m) = crate::nearby::point(rng);
                let mut items_distinct: Vec<(u32, i64)> = Vec::new();
                for &(_, sku, qty) in &lines {
                    if items_distinct.iter().all(|i| i.0 != sku) {
                        items_distinct.push((sku, qty));
                    }
                }
                let value = json!({"request_id": request_id, "items": items_distinct,
                                   "near": {"at": at, "lat": lat, "lon": lon,
                                            "radius_m": radius_m},
                                   "ttl_s": ttl_s, "cart_id": cart_id, "partial": partial});
                let action = Action::ReserveNearby {
                    items: items_distinct,
                    near: (lat, lon, radius_m),
                    ttl_s,
                    cart_id,
                    partial,
                };
                ("reserve", value, action)
            } else {
                let value = json!({"request_id": request_id, "lines": lines, "ttl_s": ttl_s,
                                   "cart_id": cart_id, "partial": partial});
                let action = Action::Reserve {
                    lines,
                    ttl_s,
                    cart_id,
                    partial,
                };
                ("reserve", value, action)
            }
        }
        Some(id) => match roll {
            10..=12 => (
                "confirm",
                json!({"request_id": request_id, "id": id}),
                Action::Confirm(id),
            ),
            13..=14 => (
                "cancel",
                json!({"request_id": request_id, "id": id}),
                Action::Cancel(id),
            ),
            _ => {
                let ttl_s = ttl(rng);
                (
                    "extend",
                    json!({"request_id": request_id, "id": id, "ttl_s": ttl_s}),
                    Action::Extend { id, ttl_s },
                )
            }
        },
    };
    let call = HoldCall {
        action,
        request_id,
        holds: holds.clone(),
    };
    (f, value, call)
}

fn status_name(status: v1::ReservationStatus) -> &'static str {
    match status {
        v1::ReservationStatus::Live => "live",
        v1::ReservationStatus::Expired => "expired",
        v1::ReservationStatus::Confirmed => "confirmed",
        v1::ReservationStatus::Cancelled => "cancelled",
        v1::ReservationStatus::Rejected => "rejected",
        v1::ReservationStatus::Unspecified => "unspecified",
    }
}

fn code_name(rejection: &Option<v1::Rejection>) -> &'static str {
    rejection
        .as_ref()
        .map_or("", |r| r.code().as_str_name())
        .trim_start_matches("REJECT_CODE_")
}

/// `[[dc, sku, held], ...]` of a reservation.
fn held(r: &v1::Reservation) -> Value {
    Value::Array(
        r.lines
            .iter()
            .map(|l| json!([l.dc_id, l.sku, l.held]))
            .collect(),
    )
}

/// `value` with `extra`'s fields added.
fn with(value: &Value, extra: Value) -> Value {
    let mut v = value.clone();
    if let (Some(v), Value::Object(extra)) = (v.as_object_mut(), extra) {
        v.extend(extra);
    }
    v
}

/// Runs one reservation operation: its completion type and value (see the module's history
/// shape). A refusal before sequencing is `fail`; any other error is `info`.
pub(crate) async fn execute(
    client: &Client,
    call: &HoldCall,
    invoke: &Value,
) -> (EventType, Value) {
    let request_id = Some(call.request_id.clone());
    let error = |e: ordo_client::Error| match e.not_applied() {
        true => (
            EventType::Fail,
            with(invoke, json!({"error": "not-applied"})),
        ),
        false => (EventType::Info, invoke.clone()),
    };
    // A reserve's answer, whichever kind: what it holds now, or why it holds nothing.
    let reserved = |answer: Result<v1::Reservation, ordo_client::Error>| match answer {
        Ok(r) if r.status() == v1::ReservationStatus::Live && r.reservation_id > 0 => {
            call.holds.add(r.reservation_id);
            let extra = json!({"id": r.reservation_id, "expires_at_ms": r.expires_at_ms,
                               "created_ms": r.created_ms, "held": held(&r),
                               "epoch": r.epoch});
            (EventType::Ok, with(invoke, extra))
        }
        Ok(r) if r.status() == v1::ReservationStatus::Rejected => {
            let extra = json!({"reason": r.reason, "code": code_name(&r.rejection)});
            (EventType::Fail, with(invoke, extra))
        }
        // A reserve answered with anything else says nothing definite.
        Ok(r) => (
            EventType::Info,
            with(invoke, json!({"unexpected": status_name(r.status())})),
        ),
        Err(e) => error(e),
    };
    // A refused cancel or extend: the hold is over (or unknown), and says how.
    let refused = |r: &v1::Reservation| {
        let extra = json!({"status": status_name(r.status()), "reason": r.reason,
                           "code": code_name(&r.rejection)});
        (EventType::Fail, with(invoke, extra))
    };
    match &call.action {
        Action::Reserve {
            lines,
            ttl_s,
            cart_id,
            partial,
        } => {
            let lines: Vec<Line> = lines
                .iter()
                .map(|&(dc_id, sku, qty)| Line { dc_id, sku, qty })
                .collect();
            let reserve = Reserve {
                ttl_s: *ttl_s,
                cart_id: cart_id.clone(),
                user: USER.into(),
                partial: *partial,
                request_id,
                ..Reserve::new(&lines)
            };
            reserved(client.reserve(reserve).await)
        }
        Action::ReserveNearby {
            items,
            near: (lat, lon, radius_m),
            ttl_s,
            cart_id,
            partial,
        } => {
            let request = v1::ReserveNearbyRequest {
                request_id: call.request_id.clone(),
                cart_id: cart_id.clone(),
                user: USER.into(),
                lat: *lat,
                lon: *lon,
                radius_m: *radius_m,
                lines: items
                    .iter()
                    .map(|&(sku, qty)| v1::ItemQty { sku, qty })
                    .collect(),
                mode: if *partial {
                    v1::OrderMode::Partial
                } else {
                    v1::OrderMode::AllOrNothing
                } as i32,
                ttl_s: *ttl_s,
                ..Default::default()
            };
            let answer = client.reserve_nearby(request).await;
            reserved(answer.map(|r| r.reservation.unwrap_or_default()))
        }
        Action::Confirm(id) => match client.confirm_reservation(*id, &[], request_id).await {
            Ok(r) => {
                let result = r.result.unwrap_or_default();
                if result.status() == v1::OrderStatus::Committed {
                    let lines: Vec<Value> = result
                        .lines
                        .iter()
                        .map(|l| json!([l.dc_id, l.sku, l.allocated]))
                        .collect();
                    let extra = json!({"order_id": result.order_id,
                                       "epoch_time_ms": r.epoch_time_ms, "lines": lines});
                    (EventType::Ok, with(invoke, extra))
                } else {
                    let extra =
                        json!({"reason": result.reason, "code": code_name(&result.rejection)});
                    (EventType::Fail, with(invoke, extra))
                }
            }
            Err(e) => error(e),
        },
        Action::Cancel(id) => match client.cancel_reservation(*id, request_id).await {
            Ok(r) if r.reason.is_empty() && r.status() == v1::ReservationStatus::Cancelled => {
                (EventType::Ok, with(invoke, json!({"status": "cancelled"})))
            }
            Ok(r) if !r.reason.is_empty() => refused(&r),
            Ok(r) => (
                EventType::Info,
                with(invoke, json!({"unexpected": status_name(r.status())})),
            ),
            Err(e) => error(e),
        },
        Action::Extend { id, ttl_s } => {
            match client.extend_reservation(*id, *ttl_s, request_id).await {
                Ok(r) if r.reason.is_empty() && r.status() == v1::ReservationStatus::Live => (
                    EventType::Ok,
                    with(invoke, json!({"expires_at_ms": r.expires_at_ms})),
                ),
                Ok(r) if !r.reason.is_empty() => refused(&r),
                Ok(r) => (
                    EventType::Info,
                    with(invoke, json!({"unexpected": status_name(r.status())})),
                ),
                Err(e) => error(e),
            }
        }
    }
}

/// Every row as `[[dc, sku, on_hand, reserved], ...]`, from one snapshot.
pub async fn read_stock(
    client: &Client,
    dcs: &[u32],
    skus: &[u32],
) -> Result<Value, ordo_client::Error> {
    let r = client.get_availability(dcs.to_vec(), skus.to_vec()).await?;
    let mut rows = Vec::new();
    for item in &r.items {
        for d in &item.dcs {
            rows.push(json!([d.dc_id, item.sku, d.on_hand, d.reserved]));
        }
    }
    Ok(Value::Array(rows))
}

/// After the run: waits until no row has units reserved (every hold has lapsed or ended), at
/// most the longest TTL plus [`SETTLE_MARGIN`]. Returns how long it waited, in ms.
pub async fn settle(client: &Client, dcs: &[u32], skus: &[u32]) -> u64 {
    let started = Instant::now();
    let deadline = started + Duration::from_secs(u64::from(TTL_S_MAX)) + SETTLE_MARGIN;
    while Instant::now() < deadline {
        let clear = read_stock(client, dcs, skus).await.is_ok_and(|rows| {
            rows.as_array()
                .is_some_and(|rows| rows.iter().all(|r| r[3].as_i64() == Some(0)))
        });
        if clear {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    started.elapsed().as_millis() as u64
}

/// One reservation as the final read records it.
fn final_hold(r: &v1::Reservation) -> Value {
    json!({"id": r.reservation_id, "request_id": r.request_id, "status": status_name(r.status()),
           "expires_at_ms": r.expires_at_ms, "created_ms": r.created_ms, "order_id": r.order_id,
           "cart_id": r.cart_id, "held": held(r), "epoch": r.epoch})
}

/// Every reservation id the history names: acknowledged reserves and the targets of confirms,
/// cancels and extends.
fn known_ids(events: &[Event]) -> BTreeSet<u64> {
    events
        .iter()
        .filter(|e| matches!(e.f.as_str(), "reserve" | "confirm" | "cancel" | "extend"))
        .filter(|e| e.f != "reserve" || e.kind == EventType::Ok)
        .filter_map(|e| e.value["id"].as_u64())
        .collect()
}

/// The final read's `holds` and `listed` (see the module's history shape), through a client
/// that reads linearizably; each read retried until `timeout`.
pub async fn final_holds(
    client: &Client,
    events: &[Event],
    timeout: Duration,
) -> anyhow::Result<(Value, Value)> {
    let mut holds = Vec::new();
    for id in known_ids(events) {
        let deadline = Instant::now() + timeout;
        let hold = loop {
            match client.get_reservation(id).await {
                Ok(r) => break final_hold(&r),
                Err(e) if e.code().is_some_and(|c| c as i32 == GRPC_NOT_FOUND) => {
                    break json!({"id": id, "status": "not-found"})
                }
                Err(e) if Instant::now() > deadline => {
                    anyhow::bail!("reading reservation {id}: still failing after {timeout:?}: {e}")
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(300)).await,
            }
        };
        holds.push(hold);
    }
    let mut listed = Vec::new();
    let mut after = 0;
    loop {
        let deadline = Instant::now() + timeout;
        let page = loop {
            match client.list_reservations("", USER, after, LIST_PAGE).await {
                Ok(page) => break page,
                Err(e) if Instant::now() > deadline => {
                    anyhow::bail!("listing reservations: still failing after {timeout:?}: {e}")
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(300)).await,
            }
        };
        listed.extend(page.reservations.iter().map(final_hold));
        if page.next_after_reservation_id == 0 {
            break;
        }
        after = page.next_after_reservation_id;
    }
    Ok((Value::Array(holds), Value::Array(listed)))
}
