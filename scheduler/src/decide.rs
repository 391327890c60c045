//! The decision: a pure function from a transaction and every participant's reads to its
//! result and new stock values. Every participant of a multi-partition transaction calls it
//! with the same inputs and so reaches the same commit or abort, without two-phase commit.

use std::collections::BTreeMap;

use ordo_storage::Part;

use crate::exec::{dedupe_answer, ExecConfig, ExecError};
use crate::fill::fill;
use crate::model::*;
use crate::route::Route;

/// One participant's reads for a transaction.
#[derive(Clone, Debug, Default)]
pub(crate) struct LocalReads {
    pub(crate) stock: Vec<(u32, u32, StockRecord)>,
    /// User keys this participant holds, with their values (absent: `None`).
    pub(crate) kv: Vec<(String, Option<KvValue>)>,
    /// Only the home partition reads the dedupe entry: `Some(found)`.
    pub(crate) dedupe: Option<Option<DedupeRecord>>,
    /// Only the reservation's home reads its record: `Some(found)`.
    pub(crate) reservation: Option<Option<ReservationRecord>>,
    /// Only the cart's partition reads its latest reservation: `Some(found)`.
    pub(crate) cart: Option<Option<u64>>,
    /// Only the subscription's partition reads it: `Some(found)`.
    pub(crate) subscription: Option<Option<crate::subs::SubscriptionRecord>>,
}

/// A write for whichever participant holds `Part`.
pub(crate) type PartWrite = (Part, Vec<u8>, Option<Vec<u8>>);

/// The decision every participant computes identically from all participants' reads.
pub(crate) struct Decision {
    pub(crate) result: TxnResult,
    /// New stock values, for every participant to write those in its partition.
    pub(crate) stock: Vec<(u32, u32, StockRecord)>,
    pub(crate) order: Option<OrderRecord>,
    /// New values of user keys, for every participant to write those it holds.
    pub(crate) kv: Vec<(String, KvValue)>,
    /// Whether the home partition records the result for dedupe (false for a dedupe hit and
    /// for a conflict, which runs again).
    pub(crate) remember: bool,
    /// Other writes, each for the participant that holds its partition.
    pub(crate) writes: Vec<PartWrite>,
}

/// What `mode` grants of each line from the rows as they stand (lines name distinct rows), and
/// the rejection when the request is refused as a whole: all-or-nothing with a line short, or
/// partial with nothing at all. Orders take the granted units; reservations hold them.
pub(crate) fn grant(
    lines: &[Line],
    mode: Mode,
    stock: &BTreeMap<(u32, u32), StockRecord>,
) -> (Vec<LineAlloc>, Option<Rejection>) {
    let mut allocs = Vec::with_capacity(lines.len());
    let mut first_short: Option<Rejection> = None;
    for line in lines {
        let available = stock
            .get(&(line.dc, line.sku))
            .copied()
            .unwrap_or_default()
            .available();
        let allocated = match mode {
            Mode::AllOrNothing if available < line.qty => 0,
            Mode::AllOrNothing => line.qty,
            Mode::Partial => line.qty.min(available),
        };
        if allocated < line.qty && first_short.is_none() {
            first_short = Some(Rejection {
                code: RejectCode::InsufficientStock,
                dc: line.dc,
                sku: line.sku,
                available,
                requested: line.qty,
            });
        }
        allocs.push(LineAlloc {
            dc: line.dc,
            sku: line.sku,
            requested: line.qty,
            allocated,
            available,
        });
    }
    let total: i64 = allocs.iter().map(|a| a.allocated).sum();
    let reject = match mode {
        Mode::AllOrNothing => first_short,
        Mode::Partial if total == 0 => first_short,
        Mode::Partial => None,
    };
    (allocs, reject)
}

pub(crate) fn decide(
    cfg: &ExecConfig,
    txn: &Txn,
    route: &Route,
    seq: usize,
    epoch: u64,
    time_ms: u64,
    reads: &[LocalReads],
) -> Result<Decision, ExecError> {
    if let Some(Some(record)) = reads.iter().find_map(|r| r.dedupe.clone()) {
        return Ok(Decision {
            result: dedupe_answer(txn, record, epoch),
            stock: Vec::new(),
            order: None,
            kv: Vec::new(),
            remember: false,
            writes: Vec::new(),
        });
    }
    let mut stock: BTreeMap<(u32, u32), StockRecord> = BTreeMap::new();
    for r in reads {
        for &(dc, sku, record) in &r.stock {
            stock.insert((dc, sku), record);
        }
    }
    let result = |outcome| TxnResult {
        request_id: txn.request_id.clone(),
        epoch,
        outcome,
    };
    let rejected = |outcome| Decision {
        result: result(outcome),
        stock: Vec::new(),
        order: None,
        kv: Vec::new(),
        remember: true,
        writes: Vec::new(),
    };
    if let Some(reason) = &route.invalid {
        return Ok(rejected(Outcome::Refused {
            code: RefuseCode::Invalid,
            reason: reason.clone(),
        }));
    }
    match &txn.op {
        Op::PlaceOrder { lines, mode, user } => {
            if let Some(rejection) = route.pre_rejection {
                return Ok(rejected(Outcome::Order {
                    order_id: None,
                    lines: Vec::new(),
                    rejection: Some(rejection),
                }));
            }
            let granted = grant(lines, *mode, &stock);
            place(txn, user, granted, stock, (seq, epoch, time_ms))
        }
        Op::PlaceOrderNearby { user, nearby, mode } => {
            if let Some(rejection) = route.pre_rejection {
                return Ok(rejected(Outcome::Order {
                    order_id: None,
                    lines: Vec::new(),
                    rejection: Some(rejection),
                }));
            }
            let filled = fill(
                &nearby.lines,
                nearby.policy,
                nearby.max_dcs,
                *mode,
                &route.fill_from,
                &stock,
            );
            place(txn, user, filled, stock, (seq, epoch, time_ms))
        }
        Op::Restock { dc, sku, delta } => {
            if let Some(rejection) = route.pre_rejection {
                // Nothing was read: the row is not reported.
                return Ok(rejected(Outcome::Restock {
                    stock: StockRecord::default(),
                    rejection: Some(rejection),
                }));
            }
            let current = stock.get(&(*dc, *sku)).copied().unwrap_or_default();
            let on_hand = current.on_hand.checked_add(*delta);
            match on_hand {
                Some(on_hand) if on_hand >= current.reserved && on_hand >= 0 => {
                    let next = StockRecord {
                        on_hand,
                        reserved: current.reserved,
                    };
                    Ok(Decision {
                        result: result(Outcome::Restock {
                            stock: next,
                            rejection: None,
                        }),
                        stock: vec![(*dc, *sku, next)],
                        order: None,
                        kv: Vec::new(),
                        remember: true,
                        writes: Vec::new(),
                    })
                }
                _ => Ok(rejected(Outcome::Restock {
                    stock: current,
                    rejection: Some(Rejection {
                        code: RejectCode::NegativeStock,
                        dc: *dc,
                        sku: *sku,
                        available: current.available(),
                        requested: delta.saturating_neg(),
                    }),
                })),
            }
        }
        Op::RestockDc { dc, lines } => {
            if let Some(rejection) = route.pre_rejection {
                return Ok(rejected(Outcome::RestockedDc {
                    rows: 0,
                    rejection: Some(rejection),
                }));
            }
            let mut rows = Vec::with_capacity(lines.len());
            for line in lines {
                let current = stock.get(&(*dc, line.sku)).copied().unwrap_or_default();
                match current.on_hand.checked_add(line.delta) {
                    Some(on_hand) if on_hand >= current.reserved && on_hand >= 0 => {
                        let next = StockRecord {
                            on_hand,
                            reserved: current.reserved,
                        };
                        rows.push((*dc, line.sku, next));
                    }
                    _ => {
                        return Ok(rejected(Outcome::RestockedDc {
                            rows: 0,
                            rejection: Some(Rejection {
                                code: RejectCode::NegativeStock,
                                dc: *dc,
                                sku: line.sku,
                                available: current.available(),
                                requested: line.delta.saturating_neg(),
                            }),
                        }))
                    }
                }
            }
            Ok(Decision {
                result: result(Outcome::RestockedDc {
                    rows: rows.len() as u32,
                    rejection: None,
                }),
                stock: rows,
                order: None,
                kv: Vec::new(),
                remember: true,
                writes: Vec::new(),
            })
        }
        Op::Transfer {
            sku,
            from_dc,
            to_dc,
            qty,
        } => {
            let from = stock.get(&(*from_dc, *sku)).copied().unwrap_or_default();
            let to = stock.get(&(*to_dc, *sku)).copied().unwrap_or_default();
            let refuse = |code, dc, available| {
                rejected(Outcome::Transfer {
                    from,
                    to,
                    rejection: Some(Rejection {
                        code,
                        dc,
                        sku: *sku,
                        available,
                        requested: *qty,
                    }),
                })
            };
            if let Some(rejection) = route.pre_rejection {
                // Nothing was read: the rows are not reported.
                return Ok(rejected(Outcome::Transfer {
                    from: StockRecord::default(),
                    to: StockRecord::default(),
                    rejection: Some(rejection),
                }));
            }
            // The edge admits only positive transfers between two DCs; anything else is
            // refused here too (deterministically, on every replica) rather than applied.
            if from.available() < *qty || from_dc == to_dc || *qty <= 0 {
                return Ok(refuse(
                    RejectCode::InsufficientStock,
                    *from_dc,
                    from.available(),
                ));
            }
            let Some(to_on_hand) = to.on_hand.checked_add(*qty) else {
                return Ok(refuse(RejectCode::StockOverflow, *to_dc, to.available()));
            };
            let from_next = StockRecord {
                on_hand: from.on_hand - qty,
                reserved: from.reserved,
            };
            let to_next = StockRecord {
                on_hand: to_on_hand,
                reserved: to.reserved,
            };
            Ok(Decision {
                result: result(Outcome::Transfer {
                    from: from_next,
                    to: to_next,
                    rejection: None,
                }),
                stock: vec![(*from_dc, *sku, from_next), (*to_dc, *sku, to_next)],
                order: None,
                kv: Vec::new(),
                remember: true,
                writes: Vec::new(),
            })
        }
        Op::Kv(ops) => Ok(decide_kv(ops, reads, result)),
        Op::Subscribe { .. } | Op::Unsubscribe { .. } => {
            if let Some(rejection) = route.pre_rejection {
                return Ok(rejected(Outcome::Subscription {
                    record: None,
                    rejection: Some(rejection),
                }));
            }
            let sub = route.sub.as_ref().ok_or_else(|| {
                ExecError::Invariant("a subscription transaction routed without one".into())
            })?;
            let existing = reads
                .iter()
                .find_map(|r| r.subscription.clone())
                .ok_or_else(|| {
                    ExecError::Invariant("no participant read the subscription".into())
                })?;
            let record = match &txn.op {
                Op::Subscribe { user, sku, kind } => Some(crate::subs::subscribed(
                    existing,
                    user,
                    *sku,
                    kind,
                    epoch,
                    &txn.request_id,
                )),
                _ => crate::subs::unsubscribed(existing, epoch),
            };
            let mut writes = Vec::new();
            if let Some(record) = &record {
                writes.push((
                    sub.part,
                    crate::subs::key::subscription(sub.sku, sub.tag, &sub.user),
                    Some(encode(record)),
                ));
                writes.push((
                    sub.part,
                    crate::subs::key::by_user(&sub.user, sub.sku, sub.tag),
                    Some(Vec::new()),
                ));
            }
            Ok(Decision {
                result: result(Outcome::Subscription {
                    record,
                    rejection: None,
                }),
                stock: Vec::new(),
                order: None,
                kv: Vec::new(),
                remember: true,
                writes,
            })
        }
        Op::Reserve { .. }
        | Op::ReserveNearby { .. }
        | Op::ConfirmReservation { .. }
        | Op::CancelReservation { .. }
        | Op::ExtendReservation { .. } => crate::decide_holds::decide(
            &crate::decide_holds::Ctx {
                cfg,
                txn,
                route,
                seq,
                epoch,
                time_ms,
            },
            stock,
            reads,
        ),
        Op::UpsertDc(_)
        | Op::UpsertItem(_)
        | Op::ClusterConfig { .. }
        | Op::SetPrices(_)
        | Op::ExecSettings(_) => Err(ExecError::Invariant(
            "global transaction in a partition executor".into(),
        )),
    }
}

/// An order from what `grant` or `fill` allocated: committed with the rows it took, or
/// rejected with nothing taken. `at` is the transaction's (log position, epoch, epoch time).
fn place(
    txn: &Txn,
    user: &str,
    (mut allocs, reject): (Vec<LineAlloc>, Option<Rejection>),
    mut stock: BTreeMap<(u32, u32), StockRecord>,
    (seq, epoch, time_ms): (usize, u64, u64),
) -> Result<Decision, ExecError> {
    let decision = |outcome, stock, order| Decision {
        result: TxnResult {
            request_id: txn.request_id.clone(),
            epoch,
            outcome,
        },
        stock,
        order,
        kv: Vec::new(),
        remember: true,
        writes: Vec::new(),
    };
    if let Some(rejection) = reject {
        for a in &mut allocs {
            a.allocated = 0;
        }
        return Ok(decision(
            Outcome::Order {
                order_id: None,
                lines: allocs,
                rejection: Some(rejection),
            },
            Vec::new(),
            None,
        ));
    }
    let mut rows = Vec::with_capacity(allocs.len());
    for a in &allocs {
        let record = stock.entry((a.dc, a.sku)).or_default();
        record.on_hand -= a.allocated;
        if record.on_hand < 0 || record.on_hand < record.reserved {
            return Err(ExecError::Invariant(format!(
                "order {} would leave dc {} sku {} at on_hand {} reserved {}",
                txn.request_id, a.dc, a.sku, record.on_hand, record.reserved
            )));
        }
        rows.push((a.dc, a.sku, *record));
    }
    let order_id = (epoch << ORDER_SEQ_BITS) | seq as u64;
    let order = OrderRecord {
        order_id,
        request_id: txn.request_id.clone(),
        user: user.to_string(),
        epoch,
        time_ms,
        lines: allocs.clone(),
    };
    Ok(decision(
        Outcome::Order {
            order_id: Some(order_id),
            lines: allocs,
            rejection: None,
        },
        rows,
        Some(order),
    ))
}

/// A key-value transaction: its ops in order against the participants' reads; a failed cas,
/// or an append to an integer or past the list limit, aborts it with nothing written.
fn decide_kv(
    ops: &[KvOp],
    reads: &[LocalReads],
    result: impl Fn(Outcome) -> TxnResult,
) -> Decision {
    let mut state: BTreeMap<String, Option<KvValue>> = BTreeMap::new();
    for r in reads {
        for (k, v) in &r.kv {
            state.insert(k.clone(), v.clone());
        }
    }
    let mut changed: BTreeMap<String, KvValue> = BTreeMap::new();
    let mut results = Vec::with_capacity(ops.len());
    let mut abort = None;
    for op in ops {
        let current = state.get(op.key()).cloned().flatten();
        let next = match op {
            KvOp::Read(_) => {
                results.push(current);
                continue;
            }
            KvOp::Write(_, v) => KvValue::Int(*v),
            KvOp::Cas { key, from, to } => match current {
                Some(KvValue::Int(x)) if x == *from => KvValue::Int(*to),
                other => {
                    abort = Some(format!(
                        "cas on key {key:?} expected {from}, found {}",
                        describe(&other)
                    ));
                    break;
                }
            },
            KvOp::Append(key, v) => match current {
                None => KvValue::List(vec![*v]),
                Some(KvValue::List(mut list)) if list.len() < KV_LIST_LEN_MAX => {
                    list.push(*v);
                    KvValue::List(list)
                }
                Some(KvValue::List(_)) => {
                    abort = Some(format!(
                        "key {key:?} already holds {KV_LIST_LEN_MAX} elements"
                    ));
                    break;
                }
                Some(KvValue::Int(_)) => {
                    abort = Some(format!("key {key:?} holds an integer; cannot append to it"));
                    break;
                }
            },
        };
        results.push(None);
        state.insert(op.key().to_string(), Some(next.clone()));
        changed.insert(op.key().to_string(), next);
    }
    match abort {
        Some(reason) => Decision {
            result: result(Outcome::Kv {
                results: Vec::new(),
                abort: Some(reason),
            }),
            stock: Vec::new(),
            order: None,
            kv: Vec::new(),
            remember: true,
            writes: Vec::new(),
        },
        None => Decision {
            result: result(Outcome::Kv {
                results,
                abort: None,
            }),
            stock: Vec::new(),
            order: None,
            kv: changed.into_iter().collect(),
            remember: true,
            writes: Vec::new(),
        },
    }
}

fn describe(v: &Option<KvValue>) -> String {
    match v {
        None => "nothing".into(),
        Some(KvValue::Int(x)) => x.to_string(),
        Some(KvValue::List(l)) => format!("a list of {}", l.len()),
    }
}
