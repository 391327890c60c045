//! Property: the partitioned, lock-managed executor gives exactly the results and the final
//! stock of the simplest possible model, one that applies every transaction alone, in log
//! order. Random workloads (seeded, so a failure reproduces) mix single- and multi-partition
//! orders, partial orders, restocks and retries (the same request again, same request id),
//! reservations (holds in carts, confirms of all or part, cancels, extensions) whose TTLs lapse
//! at random epoch times with a sweep bound small enough to leave dead holds unswept, orders and
//! holds split across nearby stores (both fill policies, a shipment bound, candidates the
//! global tables do not know, retries resolved against another candidate list), and
//! price changes (global transactions that split an epoch into segments), and
//! transactions only the internal path can deliver: inadmissible ones (zero or negative
//! quantities, a transfer to the same DC, duplicate lines), ones naming unknown DCs or SKUs,
//! and request ids reused for a different request.
//!
//! The change events of every epoch are checked beside it: replayed from empty rows, each stock
//! event starts where the last one on its row ended (no gap, no duplicate) and the replay ends
//! at the stored rows; each committed order appears once; prices replay to the catalogue's.

use std::collections::BTreeMap;

mod common;

use common::{dataset, Rng};
use ordo_scheduler::*;
use ordo_storage::{EpochCommit, EpochStamp, Store};

const DCS: u32 = 8;
const SKUS: u32 = 4;

/// The reference: a map of stock, the reservations, and a map of remembered results. Holds
/// lapse exactly at their time here; nothing is swept, nothing is partitioned.
#[derive(Default)]
struct Model {
    stock: BTreeMap<(u32, u32), i64>,
    /// Every known SKU's price.
    prices: BTreeMap<u32, i64>,
    /// Subscriptions by (user, sku, kind): the spans they stood in, and their parameters.
    subs: BTreeMap<(String, u32, subs::SubTag), subs::SubscriptionRecord>,
    seen: BTreeMap<String, (Op, Outcome)>,
    holds: Holds,
    /// The execution settings in force this epoch (set at each epoch's start from
    /// `recorded`), and the last ones recorded: a record governs the epochs after its own.
    settings: Option<ExecSettings>,
    recorded: Option<ExecSettings>,
}

/// Reservations by id and each cart's latest one.
#[derive(Clone, Default)]
struct Holds {
    by_id: BTreeMap<u64, ReservationRecord>,
    carts: BTreeMap<String, u64>,
}

impl Holds {
    /// Units of the row held by live reservations at `now`, leaving out `except`.
    fn reserved(&self, dc: u32, sku: u32, now: u64, except: Option<u64>) -> i64 {
        self.by_id
            .values()
            .filter(|r| r.status_at(now) == HoldStatus::Live && Some(r.reservation_id) != except)
            .flat_map(|r| &r.lines)
            .filter(|l| l.dc == dc && l.sku == sku)
            .map(|l| l.held)
            .sum()
    }

    fn live(&self, id: u64, now: u64) -> bool {
        self.by_id
            .get(&id)
            .is_some_and(|r| r.status_at(now) == HoldStatus::Live)
    }
}

/// Where the transaction runs: its epoch, position, time, and the reservations as they
/// stood when its segment began (what routing saw).
struct At<'a> {
    epoch: u64,
    seq: usize,
    now: u64,
    segment_start: &'a Holds,
}

fn reject(code: RejectCode) -> Rejection {
    Rejection {
        code,
        dc: 0,
        sku: 0,
        available: 0,
        requested: 0,
    }
}

fn conflict() -> Outcome {
    Outcome::Refused {
        code: RefuseCode::Conflict,
        reason: String::new(),
    }
}

/// A DC and a SKU that do not exist.
const UNKNOWN: u32 = 99;

impl Model {
    /// A nearby order's shipments, written plainly: candidates the tables do not know are
    /// passed over; `FewestDcs` takes the nearest store with everything, else repeatedly the
    /// store giving the most missing units (the nearer on a tie), listed by distance;
    /// `NearestFirst` walks the stores in order. Refused: one line per SKU with `dc` 0 and
    /// the total available nearby.
    fn fill(&self, nearby: &Nearby, mode: Mode, now: u64) -> (Vec<LineAlloc>, Option<Rejection>) {
        let from: Vec<u32> = nearby
            .candidates
            .iter()
            .copied()
            .filter(|&dc| dc != UNKNOWN)
            .collect();
        let have = |dc: u32, sku: u32| self.row(dc, sku, now).available();
        let mut missing: BTreeMap<u32, i64> = nearby.lines.iter().map(|l| (l.sku, l.qty)).collect();
        let mut chosen: BTreeMap<usize, BTreeMap<u32, i64>> = BTreeMap::new();
        let give = |dc: u32, missing: &BTreeMap<u32, i64>| -> BTreeMap<u32, i64> {
            missing
                .iter()
                .map(|(&sku, &m)| (sku, m.min(have(dc, sku))))
                .collect()
        };
        let max = nearby.max_dcs as usize;
        let everything = from
            .iter()
            .position(|&dc| nearby.lines.iter().all(|l| have(dc, l.sku) >= l.qty));
        match (nearby.policy, everything) {
            (FillPolicy::FewestDcs, Some(at)) => {
                chosen.insert(at, missing.clone());
                missing.clear();
            }
            (FillPolicy::FewestDcs, None) => {
                while chosen.len() < max {
                    let best = (0..from.len())
                        .filter(|at| !chosen.contains_key(at))
                        .map(|at| (give(from[at], &missing).values().sum::<i64>(), at))
                        .filter(|&(units, _)| units > 0)
                        .max_by_key(|&(units, at)| (units, std::cmp::Reverse(at)));
                    let Some((_, at)) = best else { break };
                    let g = give(from[at], &missing);
                    for (sku, units) in &g {
                        *missing.get_mut(sku).unwrap() -= units;
                    }
                    chosen.insert(at, g);
                }
            }
            (FillPolicy::NearestFirst, _) => {
                for (at, &dc) in from.iter().enumerate() {
                    if chosen.len() == max {
                        break;
                    }
                    let g = give(dc, &missing);
                    if g.values().any(|&u| u > 0) {
                        for (sku, units) in &g {
                            *missing.get_mut(sku).unwrap() -= units;
                        }
                        chosen.insert(at, g);
                    }
                }
            }
        }
        let short = nearby
            .lines
            .iter()
            .find(|l| missing.get(&l.sku).copied().unwrap_or(0) > 0);
        let refuse = match mode {
            Mode::AllOrNothing => short,
            Mode::Partial => short.filter(|_| chosen.is_empty()),
        };
        if let Some(line) = refuse {
            let total = |sku| from.iter().map(|&dc| have(dc, sku)).sum::<i64>();
            let lines = nearby
                .lines
                .iter()
                .map(|l| LineAlloc {
                    dc: 0,
                    sku: l.sku,
                    requested: l.qty,
                    allocated: 0,
                    available: total(l.sku),
                })
                .collect();
            let rejection = Rejection {
                code: RejectCode::InsufficientStock,
                dc: 0,
                sku: line.sku,
                available: total(line.sku),
                requested: line.qty,
            };
            return (lines, Some(rejection));
        }
        let mut allocs = Vec::new();
        for (at, g) in chosen {
            // Lines in request order within a shipment.
            for l in &nearby.lines {
                let units = g.get(&l.sku).copied().unwrap_or(0);
                if units > 0 {
                    allocs.push(LineAlloc {
                        dc: from[at],
                        sku: l.sku,
                        requested: units,
                        allocated: units,
                        available: have(from[at], l.sku),
                    });
                }
            }
        }
        (allocs, None)
    }

    fn row(&self, dc: u32, sku: u32, now: u64) -> StockRecord {
        StockRecord {
            on_hand: self.stock.get(&(dc, sku)).copied().unwrap_or(0),
            reserved: self.holds.reserved(dc, sku, now, None),
        }
    }

    fn apply(&mut self, txn: &Txn, at: &At<'_>) -> Outcome {
        let (epoch, seq, now) = (at.epoch, at.seq, at.now);
        // The cluster record bypasses dedupe: it is idempotent by itself.
        if let Op::ClusterConfig { .. } = txn.op {
            return Outcome::Upserted;
        }
        // Execution settings: the first record stands against later initial ones; a change
        // replaces it. Either way from the next epoch on.
        if let (Op::ExecSettings(settings), None) = (&txn.op, self.seen.get(&txn.request_id)) {
            if validate::validate(txn).is_ok() {
                if !(settings.initial && self.recorded.is_some()) {
                    self.recorded = Some(ExecSettings {
                        initial: false,
                        ..*settings
                    });
                }
                self.seen
                    .insert(txn.request_id.clone(), (txn.op.clone(), Outcome::Upserted));
                return Outcome::Upserted;
            }
        }
        if let Some((op, outcome)) = self.seen.get(&txn.request_id) {
            // The same request: the same body, save the candidates the edge resolved.
            if body_digest(op) != body_digest(&txn.op) {
                return Outcome::Refused {
                    code: RefuseCode::IdReused,
                    reason: String::new(),
                };
            }
            return outcome.clone();
        }
        if validate::validate(txn).is_err() {
            let outcome = Outcome::Refused {
                code: RefuseCode::Invalid,
                reason: String::new(),
            };
            self.seen
                .insert(txn.request_id.clone(), (txn.op.clone(), outcome.clone()));
            return outcome;
        }
        // Unknown DCs and SKUs are known from the global tables alone; nothing is read.
        let pairs: Vec<(u32, u32, i64)> = match &txn.op {
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
            _ => vec![],
        };
        let unknown = pairs.iter().find_map(|&(dc, sku, qty)| {
            let code = if dc == UNKNOWN {
                RejectCode::UnknownDc
            } else if sku == UNKNOWN {
                RejectCode::UnknownSku
            } else {
                return None;
            };
            Some(Rejection {
                code,
                dc,
                sku,
                available: 0,
                requested: qty,
            })
        });
        let unknown = unknown.or_else(|| match &txn.op {
            Op::PlaceOrderNearby { nearby, .. } | Op::ReserveNearby { nearby, .. } => nearby
                .lines
                .iter()
                .find(|l| l.sku == UNKNOWN)
                .map(|l| Rejection {
                    code: RejectCode::UnknownSku,
                    dc: 0,
                    sku: l.sku,
                    available: 0,
                    requested: l.qty,
                }),
            _ => None,
        });
        if let Some(rejection) = unknown {
            let outcome = match &txn.op {
                Op::PlaceOrder { .. } | Op::PlaceOrderNearby { .. } => Outcome::Order {
                    order_id: None,
                    lines: vec![],
                    rejection: Some(rejection),
                },
                Op::Restock { .. } => Outcome::Restock {
                    stock: StockRecord::default(),
                    rejection: Some(rejection),
                },
                Op::RestockDc { .. } => Outcome::RestockedDc {
                    rows: 0,
                    rejection: Some(rejection),
                },
                Op::Reserve { .. } | Op::ReserveNearby { .. } => Outcome::Reservation {
                    reservation: None,
                    rejection: Some(rejection),
                },
                _ => Outcome::Transfer {
                    from: StockRecord::default(),
                    to: StockRecord::default(),
                    rejection: Some(rejection),
                },
            };
            self.seen
                .insert(txn.request_id.clone(), (txn.op.clone(), outcome.clone()));
            return outcome;
        }
        let outcome = match &txn.op {
            Op::PlaceOrder { lines, mode, .. } => {
                let mut next = self.stock.clone();
                let mut allocs = Vec::new();
                let mut short = None;
                for l in lines {
                    let reserved = self.holds.reserved(l.dc, l.sku, now, None);
                    let on_hand = next.entry((l.dc, l.sku)).or_default();
                    let mut have = *on_hand - reserved;
                    let have = &mut have;
                    let got = match mode {
                        Mode::AllOrNothing if *have < l.qty => 0,
                        Mode::AllOrNothing => l.qty,
                        Mode::Partial => l.qty.min(*have),
                    };
                    if got < l.qty && short.is_none() {
                        short = Some((l.dc, l.sku, *have, l.qty));
                    }
                    allocs.push(LineAlloc {
                        dc: l.dc,
                        sku: l.sku,
                        requested: l.qty,
                        allocated: got,
                        available: *have,
                    });
                    *on_hand -= got;
                }
                let total: i64 = allocs.iter().map(|a| a.allocated).sum();
                let rejected = match mode {
                    Mode::AllOrNothing => short.is_some(),
                    Mode::Partial => total == 0,
                };
                if rejected {
                    let (dc, sku, available, requested) = short.unwrap();
                    allocs.iter_mut().for_each(|a| a.allocated = 0);
                    Outcome::Order {
                        order_id: None,
                        lines: allocs,
                        rejection: Some(Rejection {
                            code: RejectCode::InsufficientStock,
                            dc,
                            sku,
                            available,
                            requested,
                        }),
                    }
                } else {
                    self.stock = next;
                    Outcome::Order {
                        order_id: Some((epoch << ORDER_SEQ_BITS) | seq as u64),
                        lines: allocs,
                        rejection: None,
                    }
                }
            }
            Op::PlaceOrderNearby { nearby, mode, .. } => {
                let (allocs, rejection) = self.fill(nearby, *mode, now);
                if rejection.is_none() {
                    for a in &allocs {
                        *self.stock.entry((a.dc, a.sku)).or_default() -= a.allocated;
                    }
                }
                Outcome::Order {
                    order_id: rejection
                        .is_none()
                        .then_some((epoch << ORDER_SEQ_BITS) | seq as u64),
                    lines: allocs,
                    rejection,
                }
            }
            Op::RestockDc { dc, lines } => {
                // All or nothing: the first line that would go below what is reserved
                // rejects the whole transaction.
                let refused = lines.iter().find_map(|l| {
                    let row = self.row(*dc, l.sku, now);
                    (row.on_hand + l.delta < row.reserved).then(|| Rejection {
                        code: RejectCode::NegativeStock,
                        dc: *dc,
                        sku: l.sku,
                        available: row.available(),
                        requested: -l.delta,
                    })
                });
                if refused.is_none() {
                    for l in lines {
                        let on_hand = self.row(*dc, l.sku, now).on_hand + l.delta;
                        self.stock.insert((*dc, l.sku), on_hand);
                    }
                }
                Outcome::RestockedDc {
                    rows: if refused.is_none() {
                        lines.len() as u32
                    } else {
                        0
                    },
                    rejection: refused,
                }
            }
            Op::Restock { dc, sku, delta } => {
                let row = self.row(*dc, *sku, now);
                if row.on_hand + delta >= row.reserved {
                    self.stock.insert((*dc, *sku), row.on_hand + delta);
                    Outcome::Restock {
                        stock: self.row(*dc, *sku, now),
                        rejection: None,
                    }
                } else {
                    Outcome::Restock {
                        stock: row,
                        rejection: Some(Rejection {
                            code: RejectCode::NegativeStock,
                            dc: *dc,
                            sku: *sku,
                            available: row.available(),
                            requested: -delta,
                        }),
                    }
                }
            }
            Op::Transfer {
                sku,
                from_dc,
                to_dc,
                qty,
            } => {
                let from = self.row(*from_dc, *sku, now);
                let to = self.row(*to_dc, *sku, now);
                if from.available() < *qty {
                    Outcome::Transfer {
                        from,
                        to,
                        rejection: Some(Rejection {
                            code: RejectCode::InsufficientStock,
                            dc: *from_dc,
                            sku: *sku,
                            available: from.available(),
                            requested: *qty,
                        }),
                    }
                } else {
                    self.stock.insert((*from_dc, *sku), from.on_hand - qty);
                    self.stock.insert((*to_dc, *sku), to.on_hand + qty);
                    Outcome::Transfer {
                        from: self.row(*from_dc, *sku, now),
                        to: self.row(*to_dc, *sku, now),
                        rejection: None,
                    }
                }
            }
            Op::ClusterConfig { .. } => Outcome::Upserted,
            Op::Subscribe { user, sku, kind } => {
                if !self.prices.contains_key(sku) {
                    Outcome::Subscription {
                        record: None,
                        rejection: Some(Rejection {
                            code: RejectCode::UnknownSku,
                            dc: 0,
                            sku: *sku,
                            available: 0,
                            requested: 0,
                        }),
                    }
                } else {
                    let record = self
                        .subs
                        .entry((user.clone(), *sku, kind.tag()))
                        .or_insert_with(|| subs::SubscriptionRecord {
                            user: user.clone(),
                            sku: *sku,
                            kind: kind.clone(),
                            spans: vec![],
                            request_id: String::new(),
                        });
                    if record.spans.last().is_none_or(|s| s.until.is_some()) {
                        record.spans.push(subs::Span {
                            since: epoch,
                            until: None,
                        });
                        if record.spans.len() > subs::SPANS_MAX {
                            record.spans.remove(0);
                        }
                    }
                    record.kind = kind.clone();
                    record.request_id = txn.request_id.clone();
                    Outcome::Subscription {
                        record: Some(record.clone()),
                        rejection: None,
                    }
                }
            }
            Op::Unsubscribe { user, sku, tag } => {
                let record = self
                    .subs
                    .get_mut(&(user.clone(), *sku, *tag))
                    .filter(|r| r.spans.last().is_some_and(|s| s.until.is_none()));
                let record = record.map(|r| {
                    if let Some(span) = r.spans.last_mut() {
                        span.until = Some(epoch);
                    }
                    r.clone()
                });
                Outcome::Subscription {
                    record,
                    rejection: None,
                }
            }
            Op::SetPrices(prices) => {
                match prices.iter().find(|p| !self.prices.contains_key(&p.sku)) {
                    Some(unknown) => Outcome::Priced {
                        rejection: Some(Rejection {
                            code: RejectCode::UnknownSku,
                            dc: 0,
                            sku: unknown.sku,
                            available: 0,
                            requested: 0,
                        }),
                    },
                    None => {
                        for p in prices {
                            self.prices.insert(p.sku, p.price_cents);
                        }
                        Outcome::Priced { rejection: None }
                    }
                }
            }
            Op::Reserve { .. }
            | Op::ReserveNearby { .. }
            | Op::ConfirmReservation { .. }
            | Op::CancelReservation { .. }
            | Op::ExtendReservation { .. } => match self.apply_hold(txn, at) {
                Some(outcome) => outcome,
                // A conflict is not remembered: the request runs again later.
                None => return conflict(),
            },
            _ => unreachable!("the workload has no other global transactions after seeding"),
        };
        self.seen
            .insert(txn.request_id.clone(), (txn.op.clone(), outcome.clone()));
        outcome
    }

    /// A reservation transaction, or `None` for a conflict: what routing saw at the start of
    /// the segment is not what the transaction finds.
    fn apply_hold(&mut self, txn: &Txn, at: &At<'_>) -> Option<Outcome> {
        let now = at.now;
        let rows = |r: Option<&ReservationRecord>| r.map(ReservationRecord::rows);
        match &txn.op {
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
                let mut target = None;
                if !cart_id.is_empty() {
                    let seen = at.segment_start.carts.get(cart_id).copied();
                    if self.holds.carts.get(cart_id).copied() != seen {
                        return None;
                    }
                    target = seen.filter(|&id| at.segment_start.live(id, now));
                    if target.is_some_and(|id| !self.holds.live(id, now)) {
                        return None;
                    }
                }
                let mut granted = Vec::new();
                let mut short = None;
                let lines = match &txn.op {
                    Op::Reserve { lines, .. } => lines.clone(),
                    _ => vec![],
                };
                if let Op::ReserveNearby { nearby, .. } = &txn.op {
                    let (allocs, rejection) = self.fill(nearby, *mode, now);
                    if rejection.is_some() {
                        return Some(Outcome::Reservation {
                            reservation: None,
                            rejection,
                        });
                    }
                    for a in allocs {
                        let line = Line {
                            dc: a.dc,
                            sku: a.sku,
                            qty: a.requested,
                        };
                        granted.push((line, a.allocated));
                    }
                }
                for l in &lines {
                    let available = self.row(l.dc, l.sku, now).available();
                    let held = match mode {
                        Mode::AllOrNothing if available < l.qty => 0,
                        Mode::AllOrNothing => l.qty,
                        Mode::Partial => l.qty.min(available),
                    };
                    if held < l.qty && short.is_none() {
                        short = Some(Rejection {
                            code: RejectCode::InsufficientStock,
                            dc: l.dc,
                            sku: l.sku,
                            available,
                            requested: l.qty,
                        });
                    }
                    granted.push((*l, held));
                }
                let total: i64 = granted.iter().map(|g| g.1).sum();
                let refused = match mode {
                    Mode::AllOrNothing => short.is_some(),
                    Mode::Partial => total == 0,
                };
                if refused {
                    return Some(Outcome::Reservation {
                        reservation: None,
                        rejection: short,
                    });
                }
                let id = target.unwrap_or((at.epoch << ORDER_SEQ_BITS) | at.seq as u64);
                let settings = self.settings.expect("settings set at the epoch's start");
                let ttl_ms = match *ttl_ms {
                    0 => settings.reservation_ttl_default_ms,
                    ms => ms,
                };
                let life_max_ms = match *life_max_ms {
                    0 => settings.reservation_life_max_ms,
                    ms => ms,
                };
                let record = self.holds.by_id.entry(id).or_insert_with(|| {
                    let life_cap_ms = now + life_max_ms;
                    ReservationRecord {
                        reservation_id: id,
                        request_id: txn.request_id.clone(),
                        cart_id: cart_id.clone(),
                        user: user.clone(),
                        lines: vec![],
                        created_epoch: at.epoch,
                        created_ms: now,
                        expires_at_ms: (now + ttl_ms).min(life_cap_ms),
                        life_cap_ms,
                        state: HoldState::Live,
                    }
                });
                for (l, held) in granted {
                    match record
                        .lines
                        .iter_mut()
                        .find(|h| h.dc == l.dc && h.sku == l.sku)
                    {
                        Some(h) => {
                            h.requested += l.qty;
                            h.held += held;
                        }
                        None => record.lines.push(HoldLine {
                            dc: l.dc,
                            sku: l.sku,
                            requested: l.qty,
                            held,
                        }),
                    }
                }
                let record = record.clone();
                if !cart_id.is_empty() {
                    self.holds.carts.insert(cart_id.clone(), id);
                }
                Some(Outcome::Reservation {
                    reservation: Some(record),
                    rejection: None,
                })
            }
            Op::ConfirmReservation {
                reservation_id,
                lines,
            } => {
                let found = self.holds.by_id.get(reservation_id).cloned();
                if rows(found.as_ref()) != rows(at.segment_start.by_id.get(reservation_id)) {
                    return None;
                }
                let refuse = |code| Outcome::Order {
                    order_id: None,
                    lines: vec![],
                    rejection: Some(reject(code)),
                };
                let Some(mut record) = found else {
                    return Some(refuse(RejectCode::ReservationUnknown));
                };
                if let Some(code) = not_live(&record, now) {
                    return Some(refuse(code));
                }
                let mut take = BTreeMap::new();
                for h in &record.lines {
                    take.insert((h.dc, h.sku), if lines.is_empty() { h.held } else { 0 });
                }
                for l in lines {
                    let held = take_held(&record, l.dc, l.sku);
                    if l.qty > held {
                        return Some(Outcome::Order {
                            order_id: None,
                            lines: vec![],
                            rejection: Some(Rejection {
                                code: RejectCode::NotHeld,
                                dc: l.dc,
                                sku: l.sku,
                                available: held,
                                requested: l.qty,
                            }),
                        });
                    }
                    take.insert((l.dc, l.sku), l.qty);
                }
                let mut allocs = Vec::new();
                for h in &record.lines {
                    let qty = take[&(h.dc, h.sku)];
                    if qty == 0 {
                        continue;
                    }
                    let reserved =
                        self.holds
                            .reserved(h.dc, h.sku, now, Some(record.reservation_id));
                    let on_hand = self.stock.entry((h.dc, h.sku)).or_default();
                    allocs.push(LineAlloc {
                        dc: h.dc,
                        sku: h.sku,
                        requested: qty,
                        allocated: qty,
                        available: *on_hand - reserved,
                    });
                    *on_hand -= qty;
                }
                let order_id = (at.epoch << ORDER_SEQ_BITS) | at.seq as u64;
                record.state = HoldState::Confirmed {
                    order_id,
                    epoch: at.epoch,
                };
                self.holds.by_id.insert(record.reservation_id, record);
                Some(Outcome::Order {
                    order_id: Some(order_id),
                    lines: allocs,
                    rejection: None,
                })
            }
            Op::CancelReservation { reservation_id }
            | Op::ExtendReservation { reservation_id, .. } => {
                let found = self.holds.by_id.get(reservation_id).cloned();
                if rows(found.as_ref()) != rows(at.segment_start.by_id.get(reservation_id)) {
                    return None;
                }
                let Some(mut record) = found else {
                    return Some(Outcome::Reservation {
                        reservation: None,
                        rejection: Some(reject(RejectCode::ReservationUnknown)),
                    });
                };
                if let Some(code) = not_live(&record, now) {
                    return Some(Outcome::Reservation {
                        reservation: Some(record),
                        rejection: Some(reject(code)),
                    });
                }
                match &txn.op {
                    Op::ExtendReservation { ttl_ms, .. } => {
                        let ttl_ms = match *ttl_ms {
                            0 => self.settings.expect("settings").reservation_ttl_default_ms,
                            ms => ms,
                        };
                        record.expires_at_ms = record
                            .expires_at_ms
                            .max((now + ttl_ms).min(record.life_cap_ms));
                    }
                    _ => record.state = HoldState::Cancelled { epoch: at.epoch },
                }
                self.holds
                    .by_id
                    .insert(record.reservation_id, record.clone());
                Some(Outcome::Reservation {
                    reservation: Some(record),
                    rejection: None,
                })
            }
            _ => unreachable!(),
        }
    }
}

fn take_held(record: &ReservationRecord, dc: u32, sku: u32) -> i64 {
    record
        .lines
        .iter()
        .find(|h| h.dc == dc && h.sku == sku)
        .map_or(0, |h| h.held)
}

fn not_live(record: &ReservationRecord, now: u64) -> Option<RejectCode> {
    match record.status_at(now) {
        HoldStatus::Live => None,
        HoldStatus::Expired => Some(RejectCode::ReservationExpired),
        HoldStatus::Confirmed => Some(RejectCode::ReservationConfirmed),
        HoldStatus::Cancelled => Some(RejectCode::ReservationCancelled),
    }
}

/// Refusals are compared by code: their reasons are prose.
fn comparable(outcome: &Outcome) -> Outcome {
    match outcome {
        Outcome::Refused { code, .. } => Outcome::Refused {
            code: *code,
            reason: String::new(),
        },
        other => other.clone(),
    }
}

/// What only the internal path can deliver: inadmissible transactions and unknown DCs/SKUs.
fn hostile_txn(rng: &mut Rng, id: String) -> Txn {
    let dc = rng.below(DCS as u64) as u32 + 1;
    let sku = rng.below(SKUS as u64) as u32 + 1;
    let qty = [0, -5, i64::MIN, i64::MAX, 1_000_001][rng.below(5) as usize];
    let line = |dc, sku, qty| Line { dc, sku, qty };
    let order = |lines| Op::PlaceOrder {
        lines,
        mode: Mode::AllOrNothing,
        user: String::new(),
    };
    let op = match rng.below(10) {
        0 => order(vec![line(dc, sku, qty)]),
        1 => order(vec![line(dc, sku, 1), line(dc, sku, 1)]),
        2 => order(vec![line(dc, sku, 1), line(UNKNOWN, sku, 1)]),
        3 => order(vec![line(dc, UNKNOWN, 1)]),
        4 => Op::Restock { dc, sku, delta: 0 },
        // A SKU twice (inadmissible), and a DC nobody knows.
        8 => Op::RestockDc {
            dc,
            lines: vec![SkuDelta { sku, delta: 1 }, SkuDelta { sku, delta: 1 }],
        },
        9 => Op::RestockDc {
            dc: UNKNOWN,
            lines: vec![SkuDelta { sku, delta: 2 }],
        },
        5 => Op::Restock {
            dc: UNKNOWN,
            sku,
            delta: 1,
        },
        6 => Op::Transfer {
            sku,
            from_dc: dc,
            to_dc: dc,
            qty: 1,
        },
        _ => Op::Transfer {
            sku,
            from_dc: dc,
            to_dc: UNKNOWN,
            qty: 1,
        },
    };
    Txn { request_id: id, op }
}

/// A reservation transaction: a hold (often into one of three carts) with a TTL of a few
/// epochs, or a confirm, cancel or extend of a reservation seen earlier (or of none).
fn hold_txn(rng: &mut Rng, id: String, known: &[u64]) -> Txn {
    // Mostly recent reservations, so many are still live.
    let recent = &known[known.len().saturating_sub(30)..];
    let target = if recent.is_empty() || rng.below(12) == 0 {
        rng.below(1 << 30) + 1
    } else {
        recent[rng.below(recent.len() as u64) as usize]
    };
    let lines = |rng: &mut Rng, n: u64| {
        let mut lines: Vec<Line> = Vec::new();
        while lines.len() < n as usize {
            let dc = rng.below(DCS as u64) as u32 + 1;
            let sku = rng.below(SKUS as u64) as u32 + 1;
            if !lines.iter().any(|l| l.dc == dc && l.sku == sku) {
                lines.push(Line {
                    dc,
                    sku,
                    qty: rng.below(3) as i64 + 1,
                });
            }
        }
        lines
    };
    let op = match rng.below(10) {
        0..=4 => {
            let n = rng.below(3) + 1;
            let ttl_ms = rng.below(90) + 10;
            Op::Reserve {
                cart_id: match rng.below(4) {
                    0 => String::new(),
                    c => format!("cart{c}"),
                },
                user: "u".into(),
                lines: lines(rng, n),
                mode: if rng.below(4) == 0 {
                    Mode::Partial
                } else {
                    Mode::AllOrNothing
                },
                // Now and then the cluster's default TTL or life cap (0).
                ttl_ms: if rng.below(5) == 0 { 0 } else { ttl_ms },
                life_max_ms: if rng.below(5) == 0 {
                    0
                } else {
                    ttl_ms + rng.below(80)
                },
            }
        }
        5 | 6 => Op::ConfirmReservation {
            reservation_id: target,
            lines: if rng.below(3) == 0 {
                lines(rng, 1)
            } else {
                Vec::new()
            },
        },
        7 => Op::CancelReservation {
            reservation_id: target,
        },
        _ => Op::ExtendReservation {
            reservation_id: target,
            ttl_ms: match rng.below(5) {
                0 => 0,
                _ => rng.below(60) + 1,
            },
        },
    };
    Txn { request_id: id, op }
}

/// A nearby order or hold: a few SKUs (now and then one the tables do not know) from a
/// shuffled subset of the DCs as candidates (now and then one that does not exist), either
/// policy, a shipment bound of 1 to 3; now and then inadmissible.
fn nearby_txn(rng: &mut Rng, id: String) -> Txn {
    let mut lines: Vec<SkuQty> = Vec::new();
    let n = rng.below(3) + 1;
    while lines.len() < n as usize {
        let sku = match rng.below(40) {
            0 => UNKNOWN,
            _ => rng.below(SKUS as u64) as u32 + 1,
        };
        if !lines.iter().any(|l| l.sku == sku) {
            lines.push(SkuQty {
                sku,
                qty: rng.below(14) as i64 + 1,
            });
        }
    }
    let mut candidates: Vec<u32> = (1..=DCS).collect();
    for i in (1..candidates.len()).rev() {
        candidates.swap(i, rng.below(i as u64 + 1) as usize);
    }
    candidates.truncate(rng.below(DCS as u64) as usize + 1);
    if rng.below(8) == 0 {
        candidates.insert(rng.below(candidates.len() as u64) as usize, UNKNOWN);
    }
    let mut nearby = Nearby {
        lines,
        lat_e6: 12_970_000,
        lon_e6: 77_590_000,
        radius_m: 5_000,
        candidates,
        policy: if rng.below(2) == 0 {
            FillPolicy::FewestDcs
        } else {
            FillPolicy::NearestFirst
        },
        max_dcs: rng.below(3) as u32 + 1,
    };
    match rng.below(30) {
        0 => nearby.max_dcs = 0,
        1 => nearby.lines[0].qty = 0,
        2 => nearby.candidates.push(nearby.candidates[0]),
        _ => {}
    }
    let mode = if rng.below(4) == 0 {
        Mode::Partial
    } else {
        Mode::AllOrNothing
    };
    let op = if rng.below(3) == 0 {
        let ttl_ms = rng.below(90) + 10;
        Op::ReserveNearby {
            cart_id: match rng.below(4) {
                0 => String::new(),
                c => format!("cart{c}"),
            },
            user: "u".into(),
            nearby,
            mode,
            ttl_ms,
            life_max_ms: ttl_ms + rng.below(80),
        }
    } else {
        Op::PlaceOrderNearby {
            user: "u".into(),
            nearby,
            mode,
        }
    };
    Txn { request_id: id, op }
}

fn random_txn(rng: &mut Rng, id: String, known: &[u64]) -> Txn {
    if rng.below(10) == 0 {
        return hostile_txn(rng, id);
    }
    if rng.below(6) == 0 {
        return nearby_txn(rng, id);
    }
    if rng.below(2) == 0 {
        return hold_txn(rng, id, known);
    }
    if rng.below(60) == 0 {
        // A global transaction in the middle of an epoch splits it into segments.
        return Txn {
            request_id: id,
            op: Op::ClusterConfig { partitions: 3 },
        };
    }
    if rng.below(8) == 0 {
        // Few users and SKUs, so the same subscription is made, changed and ended often.
        let user = format!("user{}", rng.below(3));
        let sku = [1, 2, 2, UNKNOWN][rng.below(4) as usize];
        let op = match rng.below(3) {
            0 => Op::Unsubscribe {
                user,
                sku,
                tag: [subs::SubTag::PriceDrop, subs::SubTag::BackInStock][rng.below(2) as usize],
            },
            1 => Op::Subscribe {
                user,
                sku,
                kind: subs::SubKind::PriceDrop {
                    below_cents: [None, Some(100)][rng.below(2) as usize],
                },
            },
            _ => Op::Subscribe {
                user,
                sku,
                kind: subs::SubKind::BackInStock {
                    near: None,
                    dcs: vec![1, 2],
                },
            },
        };
        return Txn { request_id: id, op };
    }
    if rng.below(60) == 0 {
        // The execution settings: short default TTLs and life caps, small sweep bounds, now
        // and then a node's initial record (which stands only if none is), now and then out
        // of range (refused).
        let ttl = rng.below(30) + 1;
        return Txn {
            request_id: id,
            op: Op::ExecSettings(ExecSettings {
                reservation_ttl_default_ms: ttl,
                reservation_life_max_ms: match rng.below(10) {
                    0 => ttl - 1,
                    _ => ttl + rng.below(80),
                },
                expiry_per_epoch_max: rng.below(4) + 1,
                initial: rng.below(3) == 0,
            }),
        };
    }
    if rng.below(40) == 0 {
        let first = rng.below(SKUS as u64) as u32 + 1;
        let mut prices = vec![PriceSet {
            sku: first,
            price_cents: rng.below(500) as i64,
            currency: ["", "INR"][rng.below(2) as usize].into(),
        }];
        match rng.below(3) {
            0 => prices.push(PriceSet {
                sku: UNKNOWN,
                price_cents: 1,
                currency: String::new(),
            }),
            1 => prices.push(PriceSet {
                sku: first % SKUS + 1,
                price_cents: rng.below(500) as i64,
                currency: String::new(),
            }),
            _ => {}
        }
        return Txn {
            request_id: id,
            op: Op::SetPrices(prices),
        };
    }
    let from_dc = rng.below(DCS as u64) as u32 + 1;
    let op = if rng.below(8) == 0 {
        Op::Transfer {
            sku: rng.below(SKUS as u64) as u32 + 1,
            from_dc,
            // Any other DC, often in another partition.
            to_dc: (from_dc + rng.below(DCS as u64 - 1) as u32) % DCS + 1,
            qty: rng.below(4) as i64 + 1,
        }
    } else if rng.below(8) == 0 {
        Op::Restock {
            dc: rng.below(DCS as u64) as u32 + 1,
            sku: rng.below(SKUS as u64) as u32 + 1,
            delta: rng.below(9) as i64 - 3,
        }
    } else if rng.below(10) == 0 {
        // A DC's restock: a few SKUs in ascending order, some taking stock away.
        let mut skus: Vec<u32> = (0..rng.below(4) + 1)
            .map(|_| rng.below(SKUS as u64) as u32 + 1)
            .collect();
        skus.sort_unstable();
        skus.dedup();
        let lines = skus
            .into_iter()
            .map(|sku| SkuDelta {
                sku,
                delta: [-4, -1, 1, 2, 5][rng.below(5) as usize],
            })
            .collect();
        Op::RestockDc {
            dc: rng.below(DCS as u64) as u32 + 1,
            lines,
        }
    } else {
        let n = rng.below(3) + 1;
        let mut lines: Vec<Line> = Vec::new();
        while lines.len() < n as usize {
            let dc = rng.below(DCS as u64) as u32 + 1;
            let sku = rng.below(SKUS as u64) as u32 + 1;
            if !lines.iter().any(|l| l.dc == dc && l.sku == sku) {
                lines.push(Line {
                    dc,
                    sku,
                    qty: rng.below(4) as i64 + 1,
                });
            }
        }
        let mode = if rng.below(4) == 0 {
            Mode::Partial
        } else {
            Mode::AllOrNothing
        };
        Op::PlaceOrder {
            lines,
            mode,
            user: String::new(),
        }
    };
    Txn { request_id: id, op }
}

/// An epoch's transactions; about one in ten is a retry (the same request again) of an
/// earlier one, from this epoch or an earlier one, and one in thirty reuses an earlier id
/// for a new body.
fn random_epoch(
    rng: &mut Rng,
    history: &mut Vec<Txn>,
    known: &[u64],
    epoch: u64,
    count: usize,
) -> Vec<Txn> {
    let mut txns = Vec::with_capacity(count);
    for i in 0..count {
        if !history.is_empty() && rng.below(10) == 0 {
            let mut earlier = history[rng.below(history.len() as u64) as usize].clone();
            // A nearby retry resolved against another DC table is still the same request.
            if let Op::PlaceOrderNearby { nearby, .. } | Op::ReserveNearby { nearby, .. } =
                &mut earlier.op
            {
                if rng.below(2) == 0 {
                    nearby.candidates.reverse();
                }
            }
            txns.push(earlier);
        } else if !history.is_empty() && rng.below(30) == 0 {
            let earlier = &history[rng.below(history.len() as u64) as usize];
            txns.push(random_txn(rng, earlier.request_id.clone(), known));
        } else {
            let txn = random_txn(rng, format!("e{epoch}-t{i}"), known);
            history.push(txn.clone());
            txns.push(txn);
        }
    }
    txns
}

fn run_case(seed: u64, jitter: Option<u64>) {
    let dir = tempfile::tempdir().unwrap();
    // DCs spread over 4 regions, executed on 3 partitions.
    let store = Store::open(dir.path(), 3).unwrap();
    // Under perturbed timing, stock rows are read from the store's packed table and request
    // ids through its known-key counts.
    if jitter.is_some() {
        store.keep_packed(keys::stock_packing()).unwrap();
        store.keep_known(&[keys::DEDUPE]).unwrap();
    }
    // A small sweep bound, so holds are often dead and not swept yet.
    let cfg = ExecConfig {
        timing_jitter_seed: jitter,
        expiry_per_epoch_max: 3,
        // Until a transaction records others: holds of the cluster's default TTL lapse
        // within the run too.
        reservation_ttl_default_ms: 40,
        reservation_life_max_ms: 120,
        ..ExecConfig::default()
    };
    let mut model = Model::default();
    for sku in 1..=SKUS {
        model.prices.insert(sku, 1);
    }
    let mut feed = FeedReplay::default();
    let mut commit = |epoch: u64, time_ms: u64, txns: &[Txn]| {
        let out = execute_epoch(&store, &cfg, epoch, time_ms, txns).unwrap();
        feed.absorb(seed, epoch, &out.events, &out.results);
        store
            .commit(EpochCommit {
                stamp: Some(EpochStamp { epoch, time_ms }),
                writes: out.writes,
                raft_meta: vec![],
                feed: None,
            })
            .unwrap();
        out.results
    };
    let seed_txns = dataset(DCS, SKUS, 40);
    let start = Holds::default();
    for (seq, t) in seed_txns.iter().enumerate() {
        if matches!(t.op, Op::Restock { .. }) {
            let at = At {
                epoch: 1,
                seq,
                now: 11,
                segment_start: &start,
            };
            model.apply(t, &at);
        }
    }
    commit(1, 11, &seed_txns);

    let mut rng = Rng(seed | 1);
    let mut history = Vec::new();
    let mut known = Vec::new();
    let mut now = 11;
    let mut seen_kinds: BTreeMap<&str, usize> = BTreeMap::new();
    for epoch in 2..=14 {
        // Epoch times move on by 1 to 30 ms: holds of 1 to 60 ms lapse at random epochs.
        now += rng.below(30) + 1;
        // The settings recorded by the epochs before govern this one.
        model.settings = Some(model.recorded.unwrap_or(cfg.initial_settings()));
        let txns = random_epoch(&mut rng, &mut history, &known, epoch, 120);
        let results = commit(epoch, now, &txns);
        let mut segment_start = model.holds.clone();
        for (seq, (txn, got)) in txns.iter().zip(&results).enumerate() {
            let at = At {
                epoch,
                seq,
                now,
                segment_start: &segment_start,
            };
            let want = model.apply(txn, &at);
            assert_eq!(
                comparable(&got.outcome),
                want,
                "seed {seed} epoch {epoch} txn {seq} ({txn:?})"
            );
            if let Outcome::Reservation {
                reservation: Some(r),
                ..
            } = &got.outcome
            {
                known.push(r.reservation_id);
            }
            let kind = match (&txn.op, &got.outcome) {
                (
                    Op::ConfirmReservation { .. },
                    Outcome::Order {
                        order_id: Some(_), ..
                    },
                ) => "confirmed",
                (
                    Op::PlaceOrderNearby { .. },
                    Outcome::Order {
                        order_id: Some(_),
                        lines,
                        ..
                    },
                ) if lines.iter().any(|l| l.dc != lines[0].dc) => "split",
                (
                    Op::PlaceOrderNearby { .. },
                    Outcome::Order {
                        rejection: None, ..
                    },
                ) => "nearby-order",
                (
                    Op::ReserveNearby { .. },
                    Outcome::Reservation {
                        rejection: None, ..
                    },
                ) => "nearby-held",
                (
                    _,
                    Outcome::Refused {
                        code: RefuseCode::Conflict,
                        ..
                    },
                ) => "conflict",
                (
                    Op::Reserve { .. },
                    Outcome::Reservation {
                        rejection: None, ..
                    },
                ) => "held",
                (
                    Op::ExtendReservation { .. },
                    Outcome::Reservation {
                        rejection: None, ..
                    },
                ) => "extended",
                (
                    Op::CancelReservation { .. },
                    Outcome::Reservation {
                        rejection: None, ..
                    },
                ) => "cancelled",
                (
                    Op::SetPrices(_),
                    Outcome::Priced {
                        rejection: None, ..
                    },
                ) => "priced",
                (Op::ExecSettings(_), Outcome::Upserted) => "settings",
                (
                    Op::Subscribe { .. },
                    Outcome::Subscription {
                        record: Some(_), ..
                    },
                ) => "subscribed",
                (
                    Op::Unsubscribe { .. },
                    Outcome::Subscription {
                        record: Some(_), ..
                    },
                ) => "unsubscribed",
                _ => match got.outcome.rejection().map(|r| r.code) {
                    Some(RejectCode::ReservationExpired) => "expired",
                    _ => "other",
                },
            };
            *seen_kinds.entry(kind).or_default() += 1;
            if txn.op.is_global() {
                segment_start = model.holds.clone();
            }
        }
    }
    // The workload did what it is for.
    for kind in [
        "held",
        "confirmed",
        "cancelled",
        "extended",
        "expired",
        "conflict",
        "split",
        "nearby-order",
        "nearby-held",
        "priced",
        "subscribed",
        "unsubscribed",
        "settings",
    ] {
        assert!(
            seen_kinds.get(kind).copied().unwrap_or(0) >= 1,
            "seed {seed}: too few {kind} in {seen_kinds:?}"
        );
    }
    for dc in 1..=DCS {
        let record = reads::dc(&store, dc).unwrap().unwrap();
        for sku in 1..=SKUS {
            let got = reads::stock(&store, &record, sku).unwrap();
            assert_eq!(
                got,
                model.row(dc, sku, now),
                "seed {seed}: final stock dc {dc} sku {sku}"
            );
            assert!(got.on_hand >= 0 && got.reserved >= 0 && got.reserved <= got.on_hand);
            let part = reads::part_of(&store, &record);
            let stored: StockRecord = store
                .get(part, &keys::stock(dc, sku))
                .unwrap()
                .map(|v| decode(&v).unwrap())
                .unwrap_or_default();
            assert_eq!(
                feed.rows.get(&(dc, sku)).copied().unwrap_or_default(),
                stored,
                "seed {seed}: the stock events replay to the stored row dc {dc} sku {sku}"
            );
        }
    }
    for sku in 1..=SKUS {
        let price = reads::item(&store, sku).unwrap().unwrap().price_cents;
        assert_eq!(price, model.prices[&sku], "seed {seed}: price of sku {sku}");
        assert_eq!(
            feed.prices.get(&sku),
            Some(&price),
            "seed {seed}: price events"
        );
    }
    for ((user, sku, tag), want) in &model.subs {
        let got = reads::subscription(&store, *sku, *tag, user).unwrap();
        assert_eq!(got.as_ref(), Some(want), "seed {seed}: subscription");
    }
    for user in ["user0", "user1", "user2"] {
        let listed = reads::user_subscriptions(&store, user, 100).unwrap();
        let want: Vec<_> = model.subs.values().filter(|r| r.user == user).collect();
        assert_eq!(
            listed.iter().collect::<Vec<_>>(),
            want,
            "seed {seed}: {user}'s list"
        );
    }
    assert_eq!(
        feed.orders, feed.committed,
        "seed {seed}: order events are the committed orders, once each"
    );
    assert!(
        feed.causes.is_subset(&feed.orders),
        "seed {seed}: stock changed for orders that were not committed"
    );
}

/// The change events replayed: rows, prices and orders as the events say.
#[derive(Default)]
struct FeedReplay {
    rows: BTreeMap<(u32, u32), StockRecord>,
    prices: BTreeMap<u32, i64>,
    orders: std::collections::BTreeSet<u64>,
    /// Order ids in the results (a retry answers an existing one again).
    committed: std::collections::BTreeSet<u64>,
    /// Order ids named as the cause of a stock change.
    causes: std::collections::BTreeSet<u64>,
}

impl FeedReplay {
    fn absorb(&mut self, seed: u64, epoch: u64, events: &[feed::Event], results: &[TxnResult]) {
        for event in events {
            match event {
                feed::Event::Stock(change) => {
                    let row = self.rows.entry((change.dc, change.sku)).or_default();
                    assert_eq!(
                        *row, change.before,
                        "seed {seed} epoch {epoch}: {change:?} does not start where the row's last event ended"
                    );
                    *row = change.after;
                    if let feed::Cause::Order { order_id } | feed::Cause::Confirm { order_id, .. } =
                        change.cause
                    {
                        self.causes.insert(order_id);
                    }
                }
                feed::Event::Price(change) => {
                    let before = self.prices.get(&change.sku).copied().unwrap_or(1);
                    assert_eq!(before, change.before_cents, "seed {seed} epoch {epoch}");
                    self.prices.insert(change.sku, change.after_cents);
                }
                feed::Event::Item(item) => {
                    self.prices.insert(item.sku, item.price_cents);
                }
                feed::Event::Order(order) => {
                    assert!(
                        self.orders.insert(order.order_id),
                        "seed {seed} epoch {epoch}: order {} twice in the feed",
                        order.order_id
                    );
                }
                feed::Event::Reservation(_) | feed::Event::Dc(_) => {}
            }
        }
        for result in results {
            if let Outcome::Order {
                order_id: Some(id), ..
            } = result.outcome
            {
                self.committed.insert(id);
            }
        }
    }
}

#[test]
fn partitioned_execution_equals_one_at_a_time_in_log_order() {
    for seed in 1..=12u64 {
        run_case(seed * 0x9E37_79B9, None);
    }
}

#[test]
fn the_same_holds_under_perturbed_thread_timing() {
    for seed in [3u64, 17, 41] {
        run_case(seed * 0x9E37_79B9, Some(seed));
    }
}
