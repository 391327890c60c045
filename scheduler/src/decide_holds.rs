//! The decisions of reservation transactions: reserve, confirm, cancel, extend. Pure
//! functions of the transaction, its route and every participant's reads, like every other
//! decision; the rows they see are net of dead holds ([`crate::holds::effective`]).
//!
//! A hold is live exactly while the epoch's time is before its `expires_at`: a confirm,
//! cancel or extend in an epoch at or after it is refused as expired, whether or not the sweep
//! has returned its units yet.

use std::collections::BTreeMap;

use ordo_storage::Part;

use crate::decide::{grant, Decision, LocalReads, PartWrite};
use crate::exec::{ExecConfig, ExecError};
use crate::fill::fill;
use crate::holds;
use crate::model::*;
use crate::route::{HoldRoute, Route};
use crate::validate;

pub(crate) struct Ctx<'a> {
    pub(crate) cfg: &'a ExecConfig,
    pub(crate) txn: &'a Txn,
    pub(crate) route: &'a Route,
    pub(crate) seq: usize,
    pub(crate) epoch: u64,
    pub(crate) time_ms: u64,
}

type Stock = BTreeMap<(u32, u32), StockRecord>;

impl Ctx<'_> {
    /// A reserve's or extend's TTL: the cluster's default for 0.
    fn ttl_or_default(&self, ttl_ms: u64) -> u64 {
        match ttl_ms {
            0 => self.cfg.reservation_ttl_default_ms,
            ms => ms,
        }
    }

    fn result(&self, outcome: Outcome) -> TxnResult {
        TxnResult {
            request_id: self.txn.request_id.clone(),
            epoch: self.epoch,
            outcome,
        }
    }

    /// A decision that changes nothing but the dedupe entry.
    fn unchanged(&self, outcome: Outcome) -> Decision {
        Decision {
            result: self.result(outcome),
            stock: Vec::new(),
            order: None,
            kv: Vec::new(),
            remember: true,
            writes: Vec::new(),
        }
    }

    /// The reservation changed after routing: nothing happens, nothing is remembered, and the
    /// same request runs again in a later epoch.
    fn conflict(&self, what: &str) -> Decision {
        Decision {
            result: self.result(Outcome::Refused {
                code: RefuseCode::Conflict,
                reason: format!("{what} changed earlier in the same epoch; run it again"),
            }),
            stock: Vec::new(),
            order: None,
            kv: Vec::new(),
            remember: false,
            writes: Vec::new(),
        }
    }

    /// The reservation written back with the rows and hold writes that changed it, answered
    /// as it now is.
    fn stored(
        &self,
        record: ReservationRecord,
        stock: Stock,
        mut writes: Vec<PartWrite>,
    ) -> Decision {
        let home = self.route.hold.as_ref().map_or(Part::Global, |h| h.home);
        writes.push((
            home,
            holds::key::reservation(record.reservation_id),
            Some(encode(&record)),
        ));
        Decision {
            result: self.result(Outcome::Reservation {
                reservation: Some(record),
                rejection: None,
            }),
            stock: stock.into_iter().map(|((d, s), r)| (d, s, r)).collect(),
            order: None,
            kv: Vec::new(),
            remember: true,
            writes,
        }
    }

    fn row_part(&self, dc: u32, sku: u32) -> Result<Part, ExecError> {
        self.route.row_part(dc, sku).ok_or_else(|| {
            ExecError::Invariant(format!(
                "{}: dc {dc} sku {sku} is not among the rows it was routed with",
                self.txn.request_id
            ))
        })
    }
}

fn rejection(code: RejectCode) -> Rejection {
    Rejection {
        code,
        dc: 0,
        sku: 0,
        available: 0,
        requested: 0,
    }
}

/// The rejection for a reservation that is not live at `now_ms`.
fn not_live(record: &ReservationRecord, now_ms: u64) -> Option<Rejection> {
    match record.status_at(now_ms) {
        HoldStatus::Live => None,
        HoldStatus::Expired => Some(rejection(RejectCode::ReservationExpired)),
        HoldStatus::Confirmed => Some(rejection(RejectCode::ReservationConfirmed)),
        HoldStatus::Cancelled => Some(rejection(RejectCode::ReservationCancelled)),
    }
}

fn check_row(request_id: &str, dc: u32, sku: u32, row: &StockRecord) -> Result<(), ExecError> {
    if row.on_hand < 0 || row.reserved < 0 || row.reserved > row.on_hand {
        return Err(ExecError::Invariant(format!(
            "{request_id} would leave dc {dc} sku {sku} at on_hand {} reserved {}",
            row.on_hand, row.reserved
        )));
    }
    Ok(())
}

pub(crate) fn decide(
    ctx: &Ctx<'_>,
    stock: Stock,
    reads: &[LocalReads],
) -> Result<Decision, ExecError> {
    let hold_route = ctx.route.hold.as_ref();
    let record = reads.iter().find_map(|r| r.reservation.clone()).flatten();
    match &ctx.txn.op {
        Op::Reserve {
            cart_id,
            user,
            mode,
            ttl_ms,
            life_max_ms,
            ..
        }
        | Op::ReserveNearby {
            cart_id,
            user,
            mode,
            ttl_ms,
            life_max_ms,
            ..
        } => {
            if let Some(rejection) = ctx.route.pre_rejection {
                return Ok(ctx.unchanged(Outcome::Reservation {
                    reservation: None,
                    rejection: Some(rejection),
                }));
            }
            let hold = hold_route.ok_or_else(|| {
                ExecError::Invariant(format!("{}: reserve without a route", ctx.txn.request_id))
            })?;
            if let Some((_, _, seen_latest)) = &hold.cart {
                let latest = reads.iter().find_map(|r| r.cart).flatten();
                if latest != *seen_latest {
                    return Ok(ctx.conflict(&format!("cart {cart_id:?}")));
                }
            }
            let existing = if hold.adds {
                match record {
                    Some(r) if r.status_at(ctx.time_ms) == HoldStatus::Live => Some(r),
                    _ => return Ok(ctx.conflict(&format!("reservation {}", hold.id))),
                }
            } else {
                if record.is_some() {
                    return Err(ExecError::Invariant(format!(
                        "new reservation {} already exists",
                        hold.id
                    )));
                }
                None
            };
            let granted = match &ctx.txn.op {
                Op::ReserveNearby { nearby, .. } => fill(
                    &nearby.lines,
                    nearby.policy,
                    nearby.max_dcs,
                    *mode,
                    &ctx.route.fill_from,
                    &stock,
                ),
                Op::Reserve { lines, .. } => grant(lines, *mode, &stock),
                other => {
                    return Err(ExecError::Invariant(format!("{other:?} is not a reserve")));
                }
            };
            reserve(
                ctx,
                hold,
                existing,
                stock,
                granted,
                (cart_id, user, *ttl_ms, *life_max_ms),
            )
        }
        Op::ConfirmReservation { lines, .. } => {
            let Some(live) = target(ctx, record)? else {
                return Ok(ctx.conflict("the reservation"));
            };
            match live {
                Err(rejection) => Ok(ctx.unchanged(Outcome::Order {
                    order_id: None,
                    lines: Vec::new(),
                    rejection: Some(rejection),
                })),
                Ok(record) => confirm(ctx, record, stock, lines),
            }
        }
        Op::CancelReservation { .. } | Op::ExtendReservation { .. } => {
            let Some(live) = target(ctx, record.clone())? else {
                return Ok(ctx.conflict("the reservation"));
            };
            match (live, &ctx.txn.op) {
                (Err(rejection), _) => Ok(ctx.unchanged(Outcome::Reservation {
                    reservation: record,
                    rejection: Some(rejection),
                })),
                (Ok(record), Op::ExtendReservation { ttl_ms, .. }) => extend(ctx, record, *ttl_ms),
                (Ok(record), _) => cancel(ctx, record, stock),
            }
        }
        other => Err(ExecError::Invariant(format!(
            "{other:?} is not a reservation transaction"
        ))),
    }
}

/// The reservation a confirm, cancel or extend acts on: `None` when it is not what routing
/// saw (a conflict), `Err` when it is unknown or no longer live.
fn target(
    ctx: &Ctx<'_>,
    record: Option<ReservationRecord>,
) -> Result<Option<Result<ReservationRecord, Rejection>>, ExecError> {
    let hold = ctx.route.hold.as_ref().ok_or_else(|| {
        ExecError::Invariant(format!(
            "{}: reservation transaction without a route",
            ctx.txn.request_id
        ))
    })?;
    let seen_rows = hold.seen.as_ref().map(ReservationRecord::rows);
    if record.as_ref().map(ReservationRecord::rows) != seen_rows {
        return Ok(None);
    }
    Ok(Some(match record {
        None => Err(rejection(RejectCode::ReservationUnknown)),
        Some(r) => match not_live(&r, ctx.time_ms) {
            Some(rejection) => Err(rejection),
            None => Ok(r),
        },
    }))
}

/// A reserve's cart, user, ttl and life cap.
type ReserveArgs<'a> = (&'a String, &'a String, u64, u64);

/// Holds what `grant` or `fill` allocated, in a new reservation or the cart's live one.
fn reserve(
    ctx: &Ctx<'_>,
    hold: &HoldRoute,
    existing: Option<ReservationRecord>,
    mut stock: Stock,
    (granted, refuse): (Vec<LineAlloc>, Option<Rejection>),
    (cart_id, user, ttl_ms, life_max_ms): ReserveArgs<'_>,
) -> Result<Decision, ExecError> {
    if let Some(rejection) = refuse {
        return Ok(ctx.unchanged(Outcome::Reservation {
            reservation: None,
            rejection: Some(rejection),
        }));
    }
    let now = ctx.time_ms;
    // 0: the cluster's recorded settings (`ExecConfig::under`).
    let ttl_ms = ctx.ttl_or_default(ttl_ms);
    let life_max_ms = match life_max_ms {
        0 => ctx.cfg.reservation_life_max_ms,
        ms => ms,
    };
    let mut record = existing.unwrap_or_else(|| {
        let life_cap_ms = now.saturating_add(life_max_ms);
        ReservationRecord {
            reservation_id: hold.id,
            request_id: ctx.txn.request_id.clone(),
            cart_id: cart_id.clone(),
            user: user.clone(),
            lines: Vec::new(),
            created_epoch: ctx.epoch,
            created_ms: now,
            expires_at_ms: now.saturating_add(ttl_ms).min(life_cap_ms),
            life_cap_ms,
            state: HoldState::Live,
        }
    });
    let fresh = record.lines.is_empty();
    let rows_after = record.lines.len()
        + granted
            .iter()
            .filter(|l| !record.lines.iter().any(|h| h.dc == l.dc && h.sku == l.sku))
            .count();
    if rows_after > validate::LINES_PER_ORDER_MAX {
        // A cart grows by adds; it stays within what one order may hold.
        return Ok(ctx.unchanged(Outcome::Refused {
            code: RefuseCode::Invalid,
            reason: format!(
                "reservation {} would hold {rows_after} lines; a reservation holds at most {}",
                record.reservation_id,
                validate::LINES_PER_ORDER_MAX
            ),
        }));
    }
    let mut writes = Vec::new();
    let mut rows = Vec::new();
    for g in granted {
        let (dc, sku, held) = (g.dc, g.sku, g.allocated);
        let at = match record.lines.iter().position(|l| l.dc == dc && l.sku == sku) {
            Some(at) => at,
            None => {
                record.lines.push(HoldLine {
                    dc,
                    sku,
                    requested: 0,
                    held: 0,
                });
                record.lines.len() - 1
            }
        };
        let kept = &mut record.lines[at];
        kept.requested = kept.requested.saturating_add(g.requested);
        kept.held = kept.held.saturating_add(held);
        if held == 0 {
            continue;
        }
        let row = stock.entry((dc, sku)).or_default();
        row.reserved += held;
        check_row(&ctx.txn.request_id, dc, sku, row)?;
        rows.push((dc, sku, *row));
        let part = ctx.row_part(dc, sku)?;
        for (key, value) in holds::hold_writes(
            record.reservation_id,
            record.expires_at_ms,
            dc,
            sku,
            kept.held,
        ) {
            writes.push((part, key, value));
        }
    }
    let id = record.reservation_id;
    if fresh {
        let prune_at = record
            .life_cap_ms
            .saturating_add(ctx.cfg.reservation_retention_ms);
        writes.push((hold.home, holds::key::prune(prune_at, id), Some(Vec::new())));
        writes.push((
            hold.home,
            holds::key::by_id(keys::RESERVATION_BY_USER, &record.user, id),
            Some(Vec::new()),
        ));
        if let Some((cart_id, cart_part, _)) = &hold.cart {
            writes.push((
                hold.home,
                holds::key::by_id(keys::RESERVATION_BY_CART, cart_id, id),
                Some(Vec::new()),
            ));
            writes.push((*cart_part, holds::key::cart(cart_id), Some(encode(&id))));
        }
    }
    writes.push((
        hold.home,
        holds::key::reservation(id),
        Some(encode(&record)),
    ));
    Ok(Decision {
        result: ctx.result(Outcome::Reservation {
            reservation: Some(record),
            rejection: None,
        }),
        stock: rows,
        order: None,
        kv: Vec::new(),
        remember: true,
        writes,
    })
}

/// The writes that end a live reservation's holds, and its rows with the held units released.
fn release(
    ctx: &Ctx<'_>,
    record: &ReservationRecord,
    stock: &mut Stock,
    writes: &mut Vec<PartWrite>,
) -> Result<(), ExecError> {
    for line in record.lines.iter().filter(|l| l.held > 0) {
        let row = stock.entry((line.dc, line.sku)).or_default();
        row.reserved -= line.held;
        let part = ctx.row_part(line.dc, line.sku)?;
        for (key, value) in holds::hold_writes(
            record.reservation_id,
            record.expires_at_ms,
            line.dc,
            line.sku,
            0,
        ) {
            writes.push((part, key, value));
        }
    }
    Ok(())
}

fn confirm(
    ctx: &Ctx<'_>,
    mut record: ReservationRecord,
    mut stock: Stock,
    lines: &[Line],
) -> Result<Decision, ExecError> {
    // What to take of each held line: everything, or what the request names.
    let mut take: BTreeMap<(u32, u32), i64> = BTreeMap::new();
    if lines.is_empty() {
        for l in &record.lines {
            take.insert((l.dc, l.sku), l.held);
        }
    } else {
        for line in lines {
            let held = record
                .lines
                .iter()
                .find(|l| l.dc == line.dc && l.sku == line.sku)
                .map_or(0, |l| l.held);
            if line.qty > held {
                return Ok(ctx.unchanged(Outcome::Order {
                    order_id: None,
                    lines: Vec::new(),
                    rejection: Some(Rejection {
                        code: RejectCode::NotHeld,
                        dc: line.dc,
                        sku: line.sku,
                        available: held,
                        requested: line.qty,
                    }),
                }));
            }
            take.insert((line.dc, line.sku), line.qty);
        }
    }
    let mut writes = Vec::new();
    release(ctx, &record, &mut stock, &mut writes)?;
    let mut allocs = Vec::new();
    for line in &record.lines {
        let qty = take.get(&(line.dc, line.sku)).copied().unwrap_or(0);
        if qty == 0 {
            continue;
        }
        let row = stock.entry((line.dc, line.sku)).or_default();
        // The units were held, so they are there: what is available now includes them.
        let available = row.available();
        row.on_hand -= qty;
        allocs.push(LineAlloc {
            dc: line.dc,
            sku: line.sku,
            requested: qty,
            allocated: qty,
            available,
        });
    }
    for (&(dc, sku), row) in &stock {
        check_row(&ctx.txn.request_id, dc, sku, row)?;
    }
    let order_id = (ctx.epoch << ORDER_SEQ_BITS) | ctx.seq as u64;
    record.state = HoldState::Confirmed {
        order_id,
        epoch: ctx.epoch,
    };
    let home = ctx.route.hold.as_ref().map_or(Part::Global, |h| h.home);
    writes.push((
        home,
        holds::key::reservation(record.reservation_id),
        Some(encode(&record)),
    ));
    let order = OrderRecord {
        order_id,
        request_id: ctx.txn.request_id.clone(),
        user: record.user.clone(),
        epoch: ctx.epoch,
        time_ms: ctx.time_ms,
        lines: allocs.clone(),
    };
    Ok(Decision {
        result: ctx.result(Outcome::Order {
            order_id: Some(order_id),
            lines: allocs,
            rejection: None,
        }),
        stock: stock.into_iter().map(|((d, s), r)| (d, s, r)).collect(),
        order: Some(order),
        kv: Vec::new(),
        remember: true,
        writes,
    })
}

fn cancel(
    ctx: &Ctx<'_>,
    mut record: ReservationRecord,
    mut stock: Stock,
) -> Result<Decision, ExecError> {
    let mut writes = Vec::new();
    release(ctx, &record, &mut stock, &mut writes)?;
    for (&(dc, sku), row) in &stock {
        check_row(&ctx.txn.request_id, dc, sku, row)?;
    }
    record.state = HoldState::Cancelled { epoch: ctx.epoch };
    Ok(ctx.stored(record, stock, writes))
}

fn extend(
    ctx: &Ctx<'_>,
    mut record: ReservationRecord,
    ttl_ms: u64,
) -> Result<Decision, ExecError> {
    let wanted = ctx
        .time_ms
        .saturating_add(ctx.ttl_or_default(ttl_ms))
        .min(record.life_cap_ms);
    let expires_at = record.expires_at_ms.max(wanted);
    let mut writes = Vec::new();
    if expires_at != record.expires_at_ms {
        for line in record.lines.iter().filter(|l| l.held > 0) {
            let part = ctx.row_part(line.dc, line.sku)?;
            let id = record.reservation_id;
            let old = holds::hold_writes(id, record.expires_at_ms, line.dc, line.sku, 0);
            let new = holds::hold_writes(id, expires_at, line.dc, line.sku, line.held);
            for (key, value) in old.into_iter().chain(new) {
                writes.push((part, key, value));
            }
        }
        record.expires_at_ms = expires_at;
    }
    Ok(ctx.stored(record, Stock::new(), writes))
}
