//! Routing: where a transaction runs (its home, its participants, the rows and keys it locks),
//! decided before a segment executes from the log, the global tables and, for reservations,
//! the state at the segment's start.

use std::collections::{BTreeMap, BTreeSet};

use ordo_storage::{Part, Store};

use crate::exec::{read_record, ExecError, Layered, Overlay};
use crate::holds;
use crate::model::*;
use crate::subs::{subs_part, SubTag};
use crate::validate;

/// Where a transaction runs: its home partition (dedupe, order record) and every participant.
#[derive(Clone, Debug)]
pub(crate) struct Route {
    /// The partition of the request id ([`request_part`]).
    pub(crate) home: Part,
    /// Every partition the transaction touches, the home included, ascending.
    pub(crate) participants: Vec<Part>,
    /// The stock rows it locks and reads, each with its partition: an order's lines, the
    /// restock's row, the transfer's two rows, a reservation's rows.
    pub(crate) rows: Vec<(u32, u32, Part)>,
    /// The partition of each user key of a key-value transaction, keys in first-use order.
    pub(crate) kv_parts: Vec<(String, Part)>,
    /// For reservation transactions: the reservation, as routing saw it.
    pub(crate) hold: Option<HoldRoute>,
    /// For nearby orders and reservations: the candidate stores that are known and active in
    /// the global tables, nearest first; their rows of every requested SKU are in `rows`.
    pub(crate) fill_from: Vec<u32>,
    /// A rejection known from the global tables alone (unknown DC or SKU, inactive DC). Such a
    /// transaction runs in its home only and reads nothing but its dedupe entry, so its answer
    /// cannot depend on when other transactions ran.
    pub(crate) pre_rejection: Option<Rejection>,
    /// Why the transaction is inadmissible ([`validate::validate`]); like a pre-rejection, it
    /// runs in its home only and reads nothing else.
    pub(crate) invalid: Option<validate::Invalid>,
    /// Whether the request id is admissible, and so looked up in and recorded for dedupe.
    pub(crate) dedupe: bool,
    /// For a subscribe or unsubscribe: the subscription and the partition it lives in.
    pub(crate) sub: Option<SubRoute>,
}

/// The subscription a subscribe or unsubscribe acts on.
#[derive(Clone, Debug)]
pub(crate) struct SubRoute {
    pub(crate) sku: u32,
    pub(crate) tag: SubTag,
    pub(crate) user: String,
    /// [`crate::subs::subs_part`] of the SKU.
    pub(crate) part: Part,
}

/// A reservation transaction's target, read when the segment was routed (its start). The
/// rows a transaction locks must be known before it runs; they come from this reading, and
/// the decision refuses the transaction as a conflict (to run again in a later epoch) when
/// what it finds under its locks differs from it.
#[derive(Clone, Debug)]
pub(crate) struct HoldRoute {
    /// The reservation acted on; for a `Reserve` that starts one, its new id.
    pub(crate) id: u64,
    /// Its home partition ([`reservation_part`]).
    pub(crate) home: Part,
    /// Its record at routing (`None`: unknown, or a new reservation).
    pub(crate) seen: Option<ReservationRecord>,
    /// A `Reserve` with a cart: the cart's partition and its latest reservation at routing.
    pub(crate) cart: Option<(String, Part, Option<u64>)>,
    /// A `Reserve` that adds to the cart's live reservation (`id`) instead of starting one.
    pub(crate) adds: bool,
}

impl Route {
    /// Whether the transaction is decided without reading any stock or user key.
    pub(crate) fn decided_early(&self) -> bool {
        self.pre_rejection.is_some() || self.invalid.is_some()
    }

    /// The partition of a stock row this transaction touches.
    pub(crate) fn row_part(&self, dc: u32, sku: u32) -> Option<Part> {
        self.rows
            .iter()
            .find(|&&(d, s, _)| d == dc && s == sku)
            .map(|&(_, _, p)| p)
    }
}

pub(crate) fn dc_part(dc: &DcRecord, partitions: u32) -> Part {
    Part::Region(dc.region % partitions)
}

fn ascending(parts: impl IntoIterator<Item = Part>) -> Vec<Part> {
    parts
        .into_iter()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}

/// What routing reads: the store under the global overlay and the region overlays as they
/// stand at the segment's start (deterministic: earlier segments and the prologue only).
pub(crate) struct RouteCtx<'a> {
    pub(crate) store: &'a Store,
    pub(crate) global: &'a Overlay,
    pub(crate) regions: &'a BTreeMap<Part, Overlay>,
    pub(crate) epoch: u64,
    pub(crate) time_ms: u64,
}

impl RouteCtx<'_> {
    fn view(&self, part: Part) -> Result<Layered<'_>, ExecError> {
        let overlay = self
            .regions
            .get(&part)
            .ok_or_else(|| ExecError::Invariant(format!("no overlay for {part}")))?;
        Ok(Layered {
            store: self.store,
            part,
            overlay,
        })
    }

    fn dc(&self, dc: u32) -> Result<Option<DcRecord>, ExecError> {
        read_record(self.store, self.global, Part::Global, &keys::dc(dc), || {
            format!("dc {dc}")
        })
    }
}

pub(crate) fn route(ctx: &RouteCtx<'_>, seq: usize, txn: &Txn) -> Result<Route, ExecError> {
    let store = ctx.store;
    let partitions = store.partitions();
    let home = request_part(&txn.request_id, partitions);
    let dedupe = validate::request_id_ok(&txn.request_id).is_ok();
    let mut route = Route {
        home,
        participants: vec![home],
        rows: Vec::new(),
        kv_parts: Vec::new(),
        hold: None,
        fill_from: Vec::new(),
        pre_rejection: None,
        invalid: None,
        dedupe,
        sub: None,
    };
    if let Err(reason) = validate::validate(txn) {
        route.invalid = Some(reason);
        return Ok(route);
    }
    let item_known = |sku: u32| -> Result<bool, ExecError> {
        Ok(ctx
            .global
            .get(store, Part::Global, &keys::item(sku))?
            .is_some())
    };
    if let Op::Kv(ops) = &txn.op {
        for op in ops {
            if !route.kv_parts.iter().any(|(k, _)| k == op.key()) {
                route
                    .kv_parts
                    .push((op.key().to_string(), kv_part(op.key(), partitions)));
            }
        }
        route.participants = ascending(route.kv_parts.iter().map(|(_, p)| *p).chain([home]));
        return Ok(route);
    }
    let sub = match &txn.op {
        Op::Subscribe { user, sku, kind } => Some((user, *sku, kind.tag(), true)),
        Op::Unsubscribe { user, sku, tag } => Some((user, *sku, *tag, false)),
        _ => None,
    };
    if let Some((user, sku, tag, subscribe)) = sub {
        // Unsubscribing from an unknown SKU only finds nothing to remove.
        if subscribe && !item_known(sku)? {
            route.pre_rejection = Some(Rejection {
                code: RejectCode::UnknownSku,
                dc: 0,
                sku,
                available: 0,
                requested: 0,
            });
            return Ok(route);
        }
        let part = subs_part(sku, partitions);
        route.sub = Some(SubRoute {
            sku,
            tag,
            user: user.clone(),
            part,
        });
        route.participants = ascending([home, part]);
        return Ok(route);
    }
    if let Some(id) = txn.op.reservation_id() {
        // Confirm, cancel, extend: the rows are the reservation's, as it stands now.
        let res_home = reservation_part(id, partitions);
        let seen = holds::reservation(&ctx.view(res_home)?, res_home, id)?;
        for (dc, sku) in seen.as_ref().map(|r| r.rows()).unwrap_or_default() {
            let record = ctx.dc(dc)?.ok_or_else(|| {
                ExecError::Invariant(format!("reservation {id} holds stock of unknown dc {dc}"))
            })?;
            route.rows.push((dc, sku, dc_part(&record, partitions)));
        }
        route.hold = Some(HoldRoute {
            id,
            home: res_home,
            seen,
            cart: None,
            adds: false,
        });
        route.participants = ascending(route.rows.iter().map(|r| r.2).chain([home, res_home]));
        return Ok(route);
    }
    if let Op::PlaceOrderNearby { nearby, .. } | Op::ReserveNearby { nearby, .. } = &txn.op {
        // An unknown SKU refuses the request; an unknown or inactive candidate is passed over
        // (the edge resolved the list from its cache of the DC table, which may be older).
        for line in &nearby.lines {
            if !item_known(line.sku)? {
                route.pre_rejection = Some(Rejection {
                    code: RejectCode::UnknownSku,
                    dc: 0,
                    sku: line.sku,
                    available: 0,
                    requested: line.qty,
                });
                return Ok(route);
            }
        }
        for &dc in &nearby.candidates {
            let Some(record) = ctx.dc(dc)?.filter(|r| r.active) else {
                continue;
            };
            let part = dc_part(&record, partitions);
            route.fill_from.push(dc);
            for line in &nearby.lines {
                route.rows.push((dc, line.sku, part));
            }
        }
    }
    let pairs: Vec<(u32, u32, i64)> = match &txn.op {
        Op::PlaceOrderNearby { .. } | Op::ReserveNearby { .. } => Vec::new(),
        Op::PlaceOrder { lines, .. } | Op::Reserve { lines, .. } => {
            lines.iter().map(|l| (l.dc, l.sku, l.qty)).collect()
        }
        Op::Restock { dc, sku, delta } => vec![(*dc, *sku, *delta)],
        Op::RestockDc { dc, lines } => lines.iter().map(|l| (*dc, l.sku, l.delta)).collect(),
        Op::Transfer {
            sku,
            from_dc,
            to_dc,
            qty,
        } => vec![(*from_dc, *sku, *qty), (*to_dc, *sku, *qty)],
        other => {
            return Err(ExecError::Invariant(format!(
                "transaction {other:?} has no stock rows to route"
            )))
        }
    };
    let takes_stock = matches!(txn.op, Op::PlaceOrder { .. } | Op::Reserve { .. });
    for &(dc, sku, qty) in &pairs {
        let reject = |code| Rejection {
            code,
            dc,
            sku,
            available: 0,
            requested: qty,
        };
        match ctx.dc(dc)? {
            None => {
                route
                    .pre_rejection
                    .get_or_insert(reject(RejectCode::UnknownDc));
                route.rows.push((dc, sku, home));
            }
            Some(record) => {
                if !record.active && takes_stock {
                    route
                        .pre_rejection
                        .get_or_insert(reject(RejectCode::DcInactive));
                }
                if !item_known(sku)? {
                    route
                        .pre_rejection
                        .get_or_insert(reject(RejectCode::UnknownSku));
                }
                route.rows.push((dc, sku, dc_part(&record, partitions)));
            }
        }
    }
    if route.pre_rejection.is_some() {
        return Ok(route);
    }
    let mut parts: Vec<Part> = route.rows.iter().map(|r| r.2).chain([home]).collect();
    if let Op::Reserve { cart_id, .. } | Op::ReserveNearby { cart_id, .. } = &txn.op {
        // A new reservation's id is its order-id-like position in the log; with a cart whose
        // latest reservation is live at this epoch's time, the lines join that one.
        let mut hold = HoldRoute {
            id: (ctx.epoch << ORDER_SEQ_BITS) | seq as u64,
            home: Part::Global,
            seen: None,
            cart: None,
            adds: false,
        };
        if !cart_id.is_empty() {
            let cart = cart_part(cart_id, partitions);
            let latest = holds::cart(&ctx.view(cart)?, cart, cart_id)?;
            if let Some(latest) = latest {
                let latest_home = reservation_part(latest, partitions);
                let seen = holds::reservation(&ctx.view(latest_home)?, latest_home, latest)?;
                if seen
                    .as_ref()
                    .is_some_and(|r| r.status_at(ctx.time_ms) == HoldStatus::Live)
                {
                    hold.id = latest;
                    hold.seen = seen;
                    hold.adds = true;
                }
            }
            hold.cart = Some((cart_id.clone(), cart, latest));
            parts.push(cart);
        }
        hold.home = reservation_part(hold.id, partitions);
        parts.push(hold.home);
        route.hold = Some(hold);
    }
    route.participants = ascending(parts);
    Ok(route)
}
